//! The load generator of the forwarder benchmark (bench/bench.py, scenario
//! `forward`): a server and clients on loopback, so that what is measured
//! is the forwarder between them, not the speed of a Python loop.
//!
//! ```text
//! loadgen server                      # prints `listening on ADDR`; echoes, or counts with the `bulk` preamble
//! loadgen bulk ADDR BYTES CONNECTIONS # BYTES in all, spread over CONNECTIONS, each counted by the server
//! loadgen rr ADDR CONNECTIONS SIZE MILLIS    # request/response of SIZE bytes on held connections
//! loadgen connect ADDR WORKERS MILLIS        # new connection, one byte there and back, close
//! loadgen hold ADDR CONNECTIONS       # open them all, one byte there and back on each, hold, close
//! ```
//! Every client mode prints one JSON object on stdout and exits 1 if a byte
//! came back wrong.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The first byte of a bulk connection (an echo connection starts with anything else).
const BULK: u8 = b'B';

/// `hold` stops opening connections after this many failed (a forwarder
/// that broke need not be shown ten thousand times).
const GIVE_UP_AFTER: u64 = 100;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let arg = |i: usize| args.get(i).unwrap_or_else(|| usage());
    let num = |i: usize| arg(i).parse::<u64>().unwrap_or_else(|_| usage());
    let addr = || arg(1).parse::<SocketAddr>().unwrap_or_else(|_| usage());
    let report = match arg(0).as_str() {
        "server" => runtime.block_on(server()),
        "bulk" => runtime.block_on(bulk(addr(), num(2), num(3) as usize)),
        "rr" => runtime.block_on(request_response(addr(), num(2) as usize, num(3) as usize, millis(num(4)))),
        "connect" => runtime.block_on(connect_rate(addr(), num(2) as usize, millis(num(3)))),
        "hold" => runtime.block_on(hold(addr(), num(2) as usize)),
        _ => usage(),
    };
    println!("{report}");
    runtime.shutdown_timeout(Duration::from_millis(100));
}

fn millis(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn usage() -> ! {
    eprintln!(
        "usage: loadgen server | bulk ADDR BYTES CONNECTIONS | rr ADDR CONNECTIONS SIZE MILLIS | connect ADDR WORKERS MILLIS | hold ADDR CONNECTIONS"
    );
    std::process::exit(2)
}

fn fail(what: String) -> ! {
    eprintln!("loadgen: {what}");
    std::process::exit(1)
}

async fn server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("listening on {}", listener.local_addr().unwrap());
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        tokio::spawn(async move {
            let _ = serve(stream).await;
        });
    }
}

/// A bulk connection (`B`, then the length as 8 bytes): that many bytes are
/// counted and dropped, and the count is the answer (no half-close needed:
/// some forwarders close both ways on the first EOF). Anything else is echoed.
async fn serve(mut stream: TcpStream) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; 256 << 10];
    let n = stream.read(&mut buf).await?;
    if n == 0 {
        return Ok(());
    }
    if buf[0] == BULK {
        let mut have = n;
        while have < 9 {
            match stream.read(&mut buf[have..]).await? {
                0 => return Ok(()),
                m => have += m,
            }
        }
        let length = u64::from_le_bytes(buf[1..9].try_into().unwrap());
        let mut count = (have - 9) as u64;
        while count < length {
            match stream.read(&mut buf).await? {
                0 => break,
                m => count += m as u64,
            }
        }
        return stream.write_all(&count.to_le_bytes()).await;
    }
    stream.write_all(&buf[..n]).await?;
    loop {
        match stream.read(&mut buf).await? {
            0 => return stream.shutdown().await,
            n => stream.write_all(&buf[..n]).await?,
        }
    }
}

async fn bulk(addr: SocketAddr, bytes: u64, connections: usize) -> String {
    let each = bytes / connections as u64;
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr).await.unwrap_or_else(|e| fail(format!("connect: {e}")));
                let block = vec![0x5au8; 1 << 20];
                let mut preamble = vec![BULK];
                preamble.extend_from_slice(&each.to_le_bytes());
                stream.write_all(&preamble).await.unwrap();
                let mut left = each;
                while left > 0 {
                    let n = left.min(block.len() as u64) as usize;
                    stream.write_all(&block[..n]).await.unwrap_or_else(|e| fail(format!("write: {e}")));
                    left -= n as u64;
                }
                let mut count = [0u8; 8];
                stream.read_exact(&mut count).await.unwrap_or_else(|e| fail(format!("answer: {e}")));
                if u64::from_le_bytes(count) != each {
                    fail(format!("the server counted {} bytes of {each}", u64::from_le_bytes(count)));
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let seconds = started.elapsed().as_secs_f64();
    format!("{{\"seconds\": {seconds:.6}, \"bytes\": {}}}", each * connections as u64)
}

async fn request_response(addr: SocketAddr, connections: usize, size: usize, duration: Duration) -> String {
    let mut streams = Vec::new();
    for _ in 0..connections {
        let stream = TcpStream::connect(addr).await.unwrap_or_else(|e| fail(format!("connect: {e}")));
        stream.set_nodelay(true).unwrap();
        streams.push(stream);
    }
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, mut stream)| {
            tokio::spawn(async move {
                let request: Vec<u8> = (0..size).map(|j| (i + j) as u8 | 1).collect();
                let mut answer = vec![0u8; size];
                let mut micros = Vec::new();
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    stream.write_all(&request).await.unwrap_or_else(|e| fail(format!("write: {e}")));
                    stream.read_exact(&mut answer).await.unwrap_or_else(|e| fail(format!("read: {e}")));
                    micros.push(sent.elapsed().as_micros() as u64);
                    if answer != request {
                        fail("an answer differs from its request".into());
                    }
                }
                micros
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let seconds = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct =
        |p: f64| all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1))).copied().unwrap_or(0);
    format!(
        "{{\"requests\": {}, \"seconds\": {seconds:.6}, \"rps\": {:.1}, \"p50_us\": {}, \"p99_us\": {}}}",
        all.len(),
        all.len() as f64 / seconds,
        pct(0.50),
        pct(0.99)
    )
}

async fn connect_rate(addr: SocketAddr, workers: usize, duration: Duration) -> String {
    let (done, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (done, failed, stop) = (done.clone(), failed.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Relaxed) {
                    match ping(addr).await {
                        Ok(()) => done.fetch_add(1, Relaxed),
                        Err(_) => failed.fetch_add(1, Relaxed),
                    };
                }
            })
        })
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(true, Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let seconds = start.elapsed().as_secs_f64();
    let (done, failed) = (done.load(Relaxed), failed.load(Relaxed));
    format!(
        "{{\"connections\": {done}, \"failed\": {failed}, \"seconds\": {seconds:.6}, \"per_second\": {:.1}}}",
        done as f64 / seconds
    )
}

/// One connection: a byte there and back, then close.
async fn ping(addr: SocketAddr) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(b"p").await?;
    let mut back = [0u8];
    stream.read_exact(&mut back).await?;
    if back != *b"p" {
        fail("a ping came back wrong".into());
    }
    Ok(())
}

async fn hold(addr: SocketAddr, connections: usize) -> String {
    let start = Instant::now();
    // At most this many connects in flight, so that the listen queue is not flooded.
    let opening = Arc::new(tokio::sync::Semaphore::new(256));
    let (release, released) = tokio::sync::watch::channel(false);
    let (opened, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (opening, mut released) = (opening.clone(), released.clone());
            let (opened, failed) = (opened.clone(), failed.clone());
            tokio::spawn(async move {
                let permit = opening.acquire_owned().await.unwrap();
                if failed.load(Relaxed) >= GIVE_UP_AFTER {
                    failed.fetch_add(1, Relaxed);
                    return Err("not tried (too many failures)".to_owned());
                }
                let attempt = tokio::time::timeout(Duration::from_secs(10), async {
                    let mut stream = TcpStream::connect(addr).await?;
                    stream.write_all(b"h").await?;
                    let mut back = [0u8];
                    stream.read_exact(&mut back).await?;
                    Ok::<_, std::io::Error>(stream)
                });
                let result = attempt.await;
                drop(permit);
                let mut stream = match result {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        failed.fetch_add(1, Relaxed);
                        return Err(e.kind().to_string());
                    }
                    Err(_) => {
                        failed.fetch_add(1, Relaxed);
                        return Err("no echo in 10 s".to_owned());
                    }
                };
                opened.fetch_add(1, Relaxed);
                // Held until all are open, then one more byte on each.
                let _ = released.wait_for(|&go| go).await;
                let mut back = [0u8];
                let still = stream.write_all(b"x").await.is_ok() && stream.read_exact(&mut back).await.is_ok();
                Ok(still)
            })
        })
        .collect();
    while opened.load(Relaxed) + failed.load(Relaxed) < connections as u64 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seconds = start.elapsed().as_secs_f64();
    release.send_replace(true);
    let (mut still, mut failures) = (0, std::collections::BTreeMap::<String, u64>::new());
    for t in tasks {
        match t.await.unwrap() {
            Ok(true) => still += 1,
            Ok(false) => *failures.entry("broken while held".into()).or_default() += 1,
            Err(kind) => *failures.entry(kind).or_default() += 1,
        }
    }
    let failures: Vec<String> = failures.iter().map(|(k, n)| format!("\"{k}\": {n}")).collect();
    format!(
        "{{\"held\": {}, \"still_working\": {still}, \"failures\": {{{}}}, \"seconds\": {seconds:.6}}}",
        opened.load(Relaxed),
        failures.join(", ")
    )
}
