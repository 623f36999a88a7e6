//! End-to-end tests of `pareco forward`: the real binary between real
//! clients and servers on 127.0.0.1 (and ::1): curl and python's
//! http.server, psql and PostgreSQL 15, echo servers, a PROXY protocol
//! target, thousands of connections, signals.

mod support;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rustix::process::Signal;
use support::postgres::Postgres;
use support::{bin, wait_until};

const WAIT: Duration = Duration::from_secs(20);

/// A `pareco forward` process; killed on drop.
struct Forward {
    child: Child,
    stdout: BufReader<ChildStdout>,
    /// The address of each rule, in order.
    addrs: Vec<SocketAddr>,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Forward {
    /// Starts `pareco forward ARGS` and reads the `listening on` lines of its `rules` rules.
    fn start(args: &[&str], rules: usize) -> Forward {
        let dir = tempfile::tempdir().unwrap();
        let stderr = dir.path().join("stderr.log");
        let mut child = Command::new(bin())
            .arg("forward")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("start pareco forward");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut forward = Forward { child, stdout, addrs: Vec::new(), stderr, _dir: dir };
        for _ in 0..rules {
            let addr = forward.next_listening();
            forward.addrs.push(addr);
        }
        forward
    }

    /// The address of the next `listening on HOST:PORT -> TARGET` line.
    fn next_listening(&mut self) -> SocketAddr {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let addr = line.strip_prefix("listening on ").and_then(|rest| rest.split(" -> ").next());
        addr.and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("unexpected line {line:?}; log:\n{}", self.log()))
    }

    fn port(&self, rule: usize) -> u16 {
        self.addrs[rule].port()
    }

    fn signal(&self, signal: Signal) {
        rustix::process::kill_process(rustix::process::Pid::from_child(&self.child), signal).unwrap();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until the log holds `needle`; panics with the log if it does not.
    #[track_caller]
    fn expect_log(&self, needle: &str) {
        if !wait_until(WAIT, || self.log().contains(needle)) {
            panic!("the log never said {needle:?}:\n{}", self.log());
        }
    }

    fn wait(&mut self) -> ExitStatus {
        self.child.wait().unwrap()
    }

    /// SIGTERM, then the exit status once it drained.
    fn stop(mut self) -> ExitStatus {
        self.signal(Signal::TERM);
        self.wait()
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `pareco forward ARGS` expecting it to end by itself.
fn forward_output(args: &[&str]) -> std::process::Output {
    Command::new(bin()).arg("forward").args(args).stdin(Stdio::null()).output().unwrap()
}

/// A thread-per-connection echo server on `addr` (port 0: any).
fn echo_server_on(addr: &str) -> SocketAddr {
    let listener = TcpListener::bind(addr).unwrap();
    let local = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = stream.try_clone().unwrap();
                let mut writer = stream;
                let _ = std::io::copy(&mut reader, &mut writer);
                let _ = writer.shutdown(Shutdown::Write);
            });
        }
    });
    local
}

fn echo_server() -> SocketAddr {
    echo_server_on("127.0.0.1:0")
}

/// A port nothing listens on (something did a moment ago).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    // Only so that a broken forwarder fails the test instead of hanging it.
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
}

/// Writes `message` and reads as many bytes back.
#[track_caller]
fn round_trip(stream: &mut TcpStream, message: &[u8]) {
    stream.write_all(message).unwrap();
    let mut back = vec![0; message.len()];
    stream.read_exact(&mut back).unwrap();
    assert_eq!(back, message);
}

/// What a read says once the peer is gone: the error kind, or `None` for a clean EOF.
fn read_end(stream: &mut TcpStream) -> Option<ErrorKind> {
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return None,
            Ok(_) => continue,
            Err(e) => return Some(e.kind()),
        }
    }
}

#[track_caller]
fn assert_reset(stream: &mut TcpStream) {
    assert_eq!(read_end(stream), Some(ErrorKind::ConnectionReset), "expected a reset");
}

/// Closes with a reset (SO_LINGER 0) instead of a FIN.
fn close_with_reset(stream: TcpStream) {
    rustix::net::sockopt::set_socket_linger(&stream, Some(Duration::ZERO)).unwrap();
    drop(stream);
}

fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Raises this process's descriptor limit to at least `want` (the hard
/// limit too, where that is allowed); the forwarder it starts inherits it.
fn raise_fd_limit(want: u64) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.maximum.is_some_and(|hard| hard < want) {
        limit.maximum = Some(want);
    }
    limit.current = limit.maximum;
    setrlimit(Resource::Nofile, limit).unwrap_or_else(|e| panic!("cannot raise the descriptor limit to {want}: {e}"));
}

fn stats(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_default()).unwrap_or_default()
}

#[test]
fn curl_fetches_through_the_forwarder_from_python_http_server() {
    let curl = Command::new("curl").arg("--version").output();
    assert!(curl.is_ok_and(|o| o.status.success()), "curl is missing (scripts/test installs it)");
    let dir = tempfile::tempdir().unwrap();
    let content = support::bytes(7, (3 << 20) + 17);
    std::fs::write(dir.path().join("file.bin"), &content).unwrap();
    let mut server = Command::new("python3")
        .args(["-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 -m http.server");
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut line).unwrap();
    // "Serving HTTP on 127.0.0.1 port 40321 (http://127.0.0.1:40321/) ..."
    let port = line.split_whitespace().nth(5).and_then(|p| p.parse::<u16>().ok()).unwrap_or_else(|| panic!("{line:?}"));
    let forward = Forward::start(&["127.0.0.1:0", &format!("localhost:{port}")], 1);
    let out = dir.path().join("downloaded");
    let status = Command::new("curl")
        .args(["-sS", "--fail", "-o"])
        .arg(&out)
        .arg(format!("http://127.0.0.1:{}/file.bin", forward.port(0)))
        .status()
        .unwrap();
    assert!(status.success(), "curl failed; log:\n{}", forward.log());
    assert_eq!(blake3::hash(&std::fs::read(&out).unwrap()), blake3::hash(&content));
    forward.expect_log("end=\"closed by");
    let _ = server.kill();
    let _ = server.wait();
    assert!(forward.stop().success());
}

#[test]
fn psql_queries_postgresql_through_the_forwarder() {
    let pg = Postgres::start();
    let forward = Forward::start(&["127.0.0.1:0", &format!("127.0.0.1:{}", pg.port)], 1);
    let sql = "select 6 * 7; select md5(string_agg(i::text, ',')) from generate_series(1, 200000) i;";
    let through = pg.psql(forward.port(0), sql);
    assert!(through.starts_with("42\n"), "{through:?}");
    assert_eq!(through, pg.psql(pg.port, sql), "the same answer as a direct connection");
    pg.psql(
        forward.port(0),
        "create table t (v text); insert into t select repeat('x', 1000) from generate_series(1, 2000);",
    );
    assert_eq!(pg.psql(forward.port(0), "select count(*), sum(length(v)) from t"), "2000|2000000\n");
    forward.expect_log("end=\"closed by client\"");
    assert!(forward.stop().success());
}

/// Sends `size` deterministic bytes (seeded) and returns their BLAKE3.
fn send_pattern(stream: &mut TcpStream, seed: u64, size: usize) -> blake3::Hash {
    let mut block = support::bytes(seed, 1 << 20);
    let mut hasher = blake3::Hasher::new();
    let mut sent = 0;
    let mut index = 0u64;
    while sent < size {
        block[..8].copy_from_slice(&index.to_le_bytes());
        let n = block.len().min(size - sent);
        stream.write_all(&block[..n]).unwrap();
        hasher.update(&block[..n]);
        sent += n;
        index += 1;
    }
    stream.shutdown(Shutdown::Write).unwrap();
    hasher.finalize()
}

/// Reads to EOF; returns (bytes, BLAKE3).
fn receive_all(stream: &mut TcpStream) -> (usize, blake3::Hash) {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0; 1 << 20];
    let mut total = 0;
    loop {
        let n = stream.read(&mut buf).unwrap();
        if n == 0 {
            return (total, hasher.finalize());
        }
        hasher.update(&buf[..n]);
        total += n;
    }
}

/// `size` bytes each way at once through a forwarder started with `extra`;
/// each side hashes what it sent and what it received.
fn both_ways(size: usize, extra: &[&str]) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut writer = stream.try_clone().unwrap();
        let sending = std::thread::spawn(move || send_pattern(&mut writer, 2, size));
        let mut reader = stream;
        let received = receive_all(&mut reader);
        (received, sending.join().unwrap())
    });
    let mut args = vec!["127.0.0.1:0".to_owned(), target.to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let forward = Forward::start(&args.iter().map(String::as_str).collect::<Vec<_>>(), 1);
    let stream = connect(forward.addrs[0]);
    let mut writer = stream.try_clone().unwrap();
    let sending = std::thread::spawn(move || send_pattern(&mut writer, 1, size));
    let mut reader = stream;
    let (down_len, down_hash) = receive_all(&mut reader);
    let up_hash = sending.join().unwrap();
    let ((up_len, up_received), down_sent) = server.join().unwrap();
    assert_eq!((up_len, down_len), (size, size));
    assert_eq!(up_received, up_hash, "client to target altered");
    assert_eq!(down_hash, down_sent, "target to client altered");
    forward.expect_log(&format!("up={size} down={size}"));
    assert!(forward.stop().success());
}

#[test]
fn a_gibibyte_each_way_arrives_byte_identical() {
    both_ways(1 << 30, &[]);
}

#[test]
fn the_user_memory_copy_is_byte_identical_too() {
    both_ways(64 << 20, &["--no-splice"]);
}

#[test]
fn five_thousand_connections_open_at_once_each_echo_exactly() {
    const N: usize = 5000;
    // This process holds both ends (client and echo server), as does the forwarder.
    raise_fd_limit(2 * N as u64 + 1000);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let echo = runtime.block_on(async {
        // A listen queue as long as the forwarder's: 5,000 connects arrive at once.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(4096).unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut w).await;
                });
            }
        });
        addr
    });
    let dir = tempfile::tempdir().unwrap();
    let stats_path = dir.path().join("stats.json");
    let forward = Forward::start(
        &["127.0.0.1:0", &echo.to_string(), "--stats-json", stats_path.to_str().unwrap(), "--stats-interval", "100ms"],
        1,
    );
    let addr = forward.addrs[0];
    runtime.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut streams = Vec::with_capacity(N);
        for _ in 0..N {
            streams.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        // Every one of them accepted and open at the same time.
        let all_open = async {
            while stats(&stats_path)["active"].as_u64() != Some(N as u64) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(WAIT, all_open).await.unwrap_or_else(|_| panic!("not all open: {}", stats(&stats_path)));
        let tasks: Vec<_> = streams
            .into_iter()
            .enumerate()
            .map(|(i, mut stream)| {
                tokio::spawn(async move {
                    let message = format!("connection {i}: {}\n", "x".repeat(i % 997)).into_bytes();
                    let mut back = Vec::new();
                    let exchange = async {
                        stream.write_all(&message).await?;
                        stream.shutdown().await?;
                        stream.read_to_end(&mut back).await
                    };
                    match exchange.await {
                        Ok(_) if back == message => Ok(()),
                        Ok(_) => Err(format!("connection {i}: {} bytes back, not its {}", back.len(), message.len())),
                        Err(e) => Err(format!("connection {i} (local {:?}): {e}", stream.local_addr())),
                    }
                })
            })
            .collect();
        let mut failures = Vec::new();
        for task in tasks {
            if let Err(e) = tokio::time::timeout(WAIT, task).await.expect("an echo hung").unwrap() {
                failures.push(e);
            }
        }
        if !failures.is_empty() {
            let log = forward.log();
            let unusual: Vec<&str> = log.lines().filter(|l| !l.contains("end=\"closed by")).take(20).collect();
            panic!(
                "{} echoes failed, first {:?}; unusual log lines:\n{}",
                failures.len(),
                &failures[..failures.len().min(5)],
                unusual.join("\n")
            );
        }
    });
    assert!(wait_until(WAIT, || stats(&stats_path)["active"].as_u64() == Some(0)));
    let s = stats(&stats_path);
    assert_eq!(s["connections"].as_u64(), Some(N as u64), "{s}");
    assert_eq!(s["rules"][0]["total"].as_u64(), Some(N as u64));
    assert_eq!(s["rules"][0]["failed_connects"].as_u64(), Some(0));
    assert!(forward.stop().success());
    // Written once more at exit, every rule's counters still in it.
    let last = stats(&stats_path);
    assert_eq!(last["rules"][0]["total"].as_u64(), Some(N as u64), "{last}");
}

#[test]
fn half_close_reaches_each_side_while_the_other_direction_flows() {
    // The target reads to EOF, then answers with what it got (the client
    // has shut down its sending side by then).
    let counter = TcpListener::bind("127.0.0.1:0").unwrap();
    let counter_addr = counter.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut stream, _) = counter.accept().unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).unwrap();
        stream.write_all(format!("got {} bytes: {}", got.len(), String::from_utf8_lossy(&got)).as_bytes()).unwrap();
    });
    // This target says hello, shuts down its side first, then still reads.
    let greeter = TcpListener::bind("127.0.0.1:0").unwrap();
    let greeter_addr = greeter.local_addr().unwrap();
    let greeter_thread = std::thread::spawn(move || {
        let (mut stream, _) = greeter.accept().unwrap();
        stream.write_all(b"hello, then EOF").unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).unwrap();
        got
    });
    let forward =
        Forward::start(&["127.0.0.1:0", &counter_addr.to_string(), "127.0.0.1:0", &greeter_addr.to_string()], 2);

    let mut client = connect(forward.addrs[0]);
    client.write_all(b"request").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let mut answer = String::new();
    client.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "got 7 bytes: request");

    let mut client = connect(forward.addrs[1]);
    let mut greeting = String::new();
    client.read_to_string(&mut greeting).unwrap();
    assert_eq!(greeting, "hello, then EOF");
    client.write_all(b"still talking after the target's EOF").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(greeter_thread.join().unwrap(), b"still talking after the target's EOF");
    forward.expect_log("end=\"closed by client\"");
    forward.expect_log("end=\"closed by target\"");
    assert!(forward.stop().success());
}

#[test]
fn a_reset_is_passed_on_as_a_reset() {
    // Target side: accept, read what comes, report how the read ended.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap();
    let (ended_tx, ended_rx) = std::sync::mpsc::channel();
    let (accepted_tx, accepted_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // First connection: the client resets it.
        let (mut stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut first = [0u8; 5];
        stream.read_exact(&mut first).unwrap();
        accepted_tx.send(()).unwrap();
        ended_tx.send(read_end(&mut stream)).unwrap();
        // Second connection: the target resets it.
        let (mut stream, _) = listener.accept().unwrap();
        let mut first = [0u8; 5];
        stream.read_exact(&mut first).unwrap();
        stream.write_all(b"bye").unwrap();
        close_with_reset(stream);
    });
    let forward = Forward::start(&["127.0.0.1:0", &target.to_string()], 1);

    let mut client = connect(forward.addrs[0]);
    client.write_all(b"hello").unwrap();
    accepted_rx.recv().unwrap();
    close_with_reset(client);
    assert_eq!(ended_rx.recv().unwrap(), Some(ErrorKind::ConnectionReset), "the target must see a reset, not an EOF");
    forward.expect_log("end=\"reset by client\"");

    let mut client = connect(forward.addrs[0]);
    client.write_all(b"hello").unwrap();
    // "bye" may or may not arrive before the reset; the end must be a reset.
    assert_reset(&mut client);
    forward.expect_log("end=\"reset by target\"");
    assert!(forward.stop().success());
}

#[test]
fn a_refused_target_resets_the_client_and_the_next_target_is_tried() {
    let echo = echo_server();
    let dead = free_port();
    let forward = Forward::start(
        &["127.0.0.1:0", &format!("127.0.0.1:{dead}"), "127.0.0.1:0", &format!("127.0.0.1:{dead},{echo}")],
        2,
    );
    let mut client = connect(forward.addrs[0]);
    assert_reset(&mut client);
    forward.expect_log(&format!("end=\"no target reachable: 127.0.0.1:{dead}: Connection refused (os error 111)\""));
    let mut client = connect(forward.addrs[1]);
    round_trip(&mut client, b"through the second target");
    drop(client);
    forward.expect_log(&format!("target={echo} up=25 down=25"));
    assert!(forward.stop().success());
}

#[test]
fn an_unreachable_target_times_out_into_a_reset() {
    // A listener that never accepts, with the smallest queue: once the
    // queue is full, SYNs are dropped, as on a host that does not answer.
    use rustix::net::{AddressFamily, SocketType, bind, listen, socket};
    let blackhole = socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
    bind(&blackhole, &"127.0.0.1:0".parse::<SocketAddr>().unwrap()).unwrap();
    listen(&blackhole, 0).unwrap();
    let addr = rustix::net::getsockname(&blackhole).unwrap();
    let addr: SocketAddr = addr.try_into().unwrap();
    let mut queued = Vec::new();
    while let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
        queued.push(s);
        assert!(queued.len() < 64, "the listen queue never filled");
    }
    let forward = Forward::start(
        &["127.0.0.1:0", &addr.to_string(), "127.0.0.1:0", "nowhere.invalid:80", "--connect-timeout", "300ms"],
        2,
    );
    let mut client = connect(forward.addrs[0]);
    assert_reset(&mut client);
    forward.expect_log(&format!("end=\"no target reachable: {addr}: no answer in 300ms\""));
    // A name that does not resolve (at once, or not within the connect timeout).
    let mut client = connect(forward.addrs[1]);
    assert_reset(&mut client);
    forward.expect_log("end=\"no target reachable: nowhere.invalid:80: ");
    assert!(forward.stop().success());
}

#[test]
fn ipv6_on_both_ends() {
    let echo6 = echo_server_on("[::1]:0");
    let forward = Forward::start(&["[::1]:0", &echo6.to_string()], 1);
    assert!(forward.addrs[0].is_ipv6());
    let mut client = connect(forward.addrs[0]);
    round_trip(&mut client, b"over IPv6 both ways");
    drop(client);
    forward.expect_log(&format!("target={echo6} up=19 down=19"));
    assert!(forward.stop().success());
}

/// Reads a PROXY protocol header (v1 or v2) the way a target would.
/// Returns (source, destination).
fn read_proxy_header(stream: &mut TcpStream) -> (SocketAddr, SocketAddr) {
    let mut start = [0u8; 5];
    stream.read_exact(&mut start).unwrap();
    if &start == b"PROXY" {
        let mut line = start.to_vec();
        while !line.ends_with(b"\r\n") {
            assert!(line.len() <= 107, "a v1 header is at most 107 bytes");
            let mut byte = [0u8];
            stream.read_exact(&mut byte).unwrap();
            line.push(byte[0]);
        }
        let text = String::from_utf8(line).unwrap();
        let f: Vec<&str> = text.trim_end().split(' ').collect();
        assert!(f[1] == "TCP4" || f[1] == "TCP6", "{text:?}");
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let port = |s: &str| s.parse::<u16>().unwrap();
        return (SocketAddr::new(ip(f[2]), port(f[4])), SocketAddr::new(ip(f[3]), port(f[5])));
    }
    let mut rest = [0u8; 11];
    stream.read_exact(&mut rest).unwrap();
    let head = [&start[..], &rest[..]].concat();
    assert_eq!(&head[..12], b"\r\n\r\n\0\r\nQUIT\n", "v2 signature");
    assert_eq!(head[12], 0x21, "version 2, PROXY command");
    let mut body = vec![0u8; u16::from_be_bytes([head[14], head[15]]) as usize];
    stream.read_exact(&mut body).unwrap();
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    match head[13] {
        0x11 => {
            let ip = |b: &[u8]| std::net::IpAddr::from(<[u8; 4]>::try_from(b).unwrap());
            (SocketAddr::new(ip(&body[0..4]), port(&body[8..])), SocketAddr::new(ip(&body[4..8]), port(&body[10..])))
        }
        0x21 => {
            let ip = |b: &[u8]| std::net::IpAddr::from(<[u8; 16]>::try_from(b).unwrap());
            (
                SocketAddr::new(ip(&body[0..16]), port(&body[32..])),
                SocketAddr::new(ip(&body[16..32]), port(&body[34..])),
            )
        }
        family => panic!("unexpected family {family:#x}"),
    }
}

#[test]
fn proxy_protocol_v1_and_v2_carry_the_client_address() {
    // The target answers with the addresses its header named, then echoes.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let (src, dst) = read_proxy_header(&mut stream);
                stream.write_all(format!("{src} {dst}\n").as_bytes()).unwrap();
                let mut reader = stream.try_clone().unwrap();
                let _ = std::io::copy(&mut reader, &mut stream);
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(
        dir.path(),
        "forward.conf",
        &format!(
            "127.0.0.1 0 {ip} {port} [proxy=v1]\n127.0.0.1 0 {ip} {port} [proxy=v2]\n::1 0 {ip} {port} [proxy=v2]\n\
             ::1 0 {ip} {port} [proxy=v1]\n",
            ip = target.ip(),
            port = target.port()
        ),
    );
    let forward = Forward::start(&["--config", config.to_str().unwrap()], 4);
    for addr in &forward.addrs {
        let mut client = connect(*addr);
        let mut line = String::new();
        BufReader::new(client.try_clone().unwrap()).read_line(&mut line).unwrap();
        let expected = format!("{} {}\n", client.local_addr().unwrap(), client.peer_addr().unwrap());
        assert_eq!(line, expected, "the header names the client and the address it reached");
        round_trip(&mut client, b"and the bytes after the header are the client's");
    }
    assert!(forward.stop().success());
}

#[test]
fn allow_and_deny_refuse_with_a_reset_and_a_log_line() {
    let echo = echo_server();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "deny 10.0.0.0/8\n\
         127.0.0.1 0 127.0.0.1 {p}\ndeny 127.0.0.0/8\n\
         127.0.0.1 0 127.0.0.1 {p}\nallow 192.168.*\n\
         127.0.0.1 0 127.0.0.1 {p}\nallow 127.0.0.?\ndeny 127.0.0.2\n",
        p = echo.port()
    );
    let config = write_file(dir.path(), "forward.conf", &text);
    let forward = Forward::start(&["-c", config.to_str().unwrap()], 3);
    assert_reset(&mut connect(forward.addrs[0]));
    forward.expect_log("end=\"refused: denied\"");
    assert_reset(&mut connect(forward.addrs[1]));
    forward.expect_log("end=\"refused: not allowed\"");
    round_trip(&mut connect(forward.addrs[2]), b"allowed");
    assert!(forward.stop().success());
}

#[test]
fn the_rinetd_man_page_configuration_loads() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let man = fixtures.join("rinetd-man-page.conf");
    let out = forward_output(&["--check", "--config", man.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "206.125.69.81:80 -> 10.1.1.2:80\n0.0.0.0:23 -> 10.1.1.2:23\n192.168.1.1:80 -> 10.1.1.127:80\n"
    );
    // The two UDP rules are named, each once.
    assert!(stderr.contains("rinetd-man-page.conf:5: 8000/udp: UDP is not forwarded, rule skipped"), "{stderr}");
    assert!(stderr.contains("rinetd-man-page.conf:6: 8000/udp: UDP is not forwarded, rule skipped"), "{stderr}");
    // Debian's own /etc/rinetd.conf, as installed: comments and a log file.
    let debian = fixtures.join("debian-rinetd.conf");
    let out = forward_output(&["--check", "--config", debian.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_rinetd_configuration_forwards_and_writes_rinetd_log_lines() {
    let echo = echo_server();
    let dir = tempfile::tempdir().unwrap();
    let (log, pid) = (dir.path().join("rinetd.log"), dir.path().join("rinetd.pid"));
    let text = format!(
        "# rinetd.conf\nallow 127.0.0.*\n127.0.0.1 0 127.0.0.1 {}\nlogfile {}\npidlogfile {}\n",
        echo.port(),
        log.display(),
        pid.display()
    );
    let config = write_file(dir.path(), "rinetd.conf", &text);
    let forward = Forward::start(&["--config", config.to_str().unwrap()], 1);
    assert_eq!(std::fs::read_to_string(&pid).unwrap(), format!("{}\n", forward.child.id()));
    let last_line = |log: &Path| {
        let mut line = String::new();
        assert!(
            wait_until(WAIT, || {
                line = std::fs::read_to_string(log).unwrap_or_default().lines().last().unwrap_or("").to_string();
                !line.is_empty()
            }),
            "nothing in {}",
            log.display()
        );
        line
    };
    // The client closes first, then the target (the echo server, at EOF);
    // then the target does, after the client's last read.
    round_trip(&mut connect(forward.addrs[0]), b"12345");
    let ours = last_line(&log);
    let (port, to) = (forward.port(0), echo.port());
    assert!(ours.ends_with(&format!("\t127.0.0.1\t127.0.0.1\t{port}\t127.0.0.1\t{to}\t5\t5\tdone-remote-closed")));
    assert!(forward.stop().success());
    assert!(!pid.exists(), "the pid file is removed at exit");

    // rinetd itself says the same of the same connection.
    let rinetd = ["rinetd", "/usr/sbin/rinetd"].into_iter().find(|r| Command::new(r).arg("--version").output().is_ok());
    let rinetd = rinetd.expect("rinetd is missing (scripts/test installs it)");
    let (log, port) = (dir.path().join("real-rinetd.log"), free_port());
    let text = format!("allow 127.0.0.*\n127.0.0.1 {port} 127.0.0.1 {to}\nlogfile {}\n", log.display());
    let config = write_file(dir.path(), "real-rinetd.conf", &text);
    let mut rinetd = Command::new(rinetd).args(["-f", "-c"]).arg(&config).stderr(Stdio::null()).spawn().unwrap();
    assert!(wait_until(WAIT, || TcpStream::connect(("127.0.0.1", port)).is_ok()));
    round_trip(&mut connect(SocketAddr::from(([127, 0, 0, 1], port))), b"12345");
    // (The probe is logged too: the line of the round trip is the one with its bytes.)
    let mut theirs = String::new();
    assert!(wait_until(WAIT, || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        theirs = text.lines().find(|l| l.contains("\t5\t5\t")).unwrap_or("").to_string();
        !theirs.is_empty()
    }));
    let _ = rinetd.kill();
    let _ = rinetd.wait();
    let fields = |line: &str| line.split('\t').skip(1).map(String::from).collect::<Vec<_>>();
    let (mut a, mut b) = (fields(&ours), fields(&theirs));
    (a[2], b[2]) = (String::new(), String::new());
    assert_eq!(a, b, "ours: {ours}\nrinetd's: {theirs}");
}

#[test]
fn a_malformed_configuration_names_its_line_and_nothing_starts() {
    let dir = tempfile::tempdir().unwrap();
    let config =
        write_file(dir.path(), "bad.conf", "127.0.0.1 0 127.0.0.1 80\n\n127.0.0.1 0 127.0.0.1 80 [proxy=v9]\n");
    let out = forward_output(&["--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(out.stdout, b"", "nothing listens");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("pareco: {}:3: option proxy: unknown PROXY protocol version \"v9\" (use v1 or v2)\n", config.display())
    );
    let out = forward_output(&["--config", dir.path().join("missing.conf").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("pareco: cannot read ")
            && stderr.ends_with("missing.conf: No such file or directory (os error 2)\n")
    );
    let out = forward_output(&["127.0.0.1:0", "nowhere"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "pareco: bad TARGET: \"nowhere\" is not HOST:PORT ([ADDRESS]:PORT for IPv6)\n"
    );
}

#[test]
fn a_bad_or_foreign_address_is_one_clear_error() {
    let out = forward_output(&["999.1.1.1:80", "127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "pareco: bad LISTEN: \"999.1.1.1\" is not an IP address or a host name\n"
    );
    // 192.0.2.1 (TEST-NET-1) is nobody's address here: binding it fails, no packet leaves.
    let out = forward_output(&["192.0.2.1:8080", "127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "pareco: cannot listen on 192.0.2.1:8080: Cannot assign requested address (os error 99)\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(dir.path(), "f.conf", "# targets\n127.0.0.1 0 10.0.0.256 80\n");
    let out = forward_output(&["-c", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("pareco: {}:2: \"10.0.0.256\" is not an IP address or a host name\n", config.display())
    );
}

#[test]
fn a_listen_address_in_use_is_one_clear_error() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = forward_output(&["127.0.0.1:0", "127.0.0.1:1", &format!("127.0.0.1:{port}"), "127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(out.stdout, b"", "no rule starts when one cannot");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("pareco: cannot listen on 127.0.0.1:{port}: Address already in use (os error 98)\n")
    );
}

#[test]
fn max_connections_wait_or_refuse_and_the_counters_show_it() {
    let echo = echo_server();
    let dir = tempfile::tempdir().unwrap();
    let stats_path = dir.path().join("stats.json");
    let (ip, port) = (echo.ip(), echo.port());
    let text = format!("127.0.0.1 0 {ip} {port} [max=1, full=refuse]\n127.0.0.1 0 {ip} {port} [max=1]\n");
    let config = write_file(dir.path(), "f.conf", &text);
    let forward = Forward::start(
        &["-c", config.to_str().unwrap(), "--stats-json", stats_path.to_str().unwrap(), "--stats-interval", "100ms"],
        2,
    );
    // full=refuse: the second connection is reset at once.
    let mut first = connect(forward.addrs[0]);
    round_trip(&mut first, b"one");
    assert_reset(&mut connect(forward.addrs[0]));
    forward.expect_log("end=\"refused: rule full\"");
    // full=wait (the default): the second waits in the queue until the first ends.
    let mut held = connect(forward.addrs[1]);
    round_trip(&mut held, b"held");
    let mut waiting = connect(forward.addrs[1]);
    waiting.write_all(b"waited").unwrap();
    let rule = |s: &serde_json::Value, i: usize, k: &str| s["rules"][i][k].as_u64();
    assert!(wait_until(WAIT, || rule(&stats(&stats_path), 1, "active") == Some(1)));
    assert_eq!(rule(&stats(&stats_path), 1, "total"), Some(1), "the waiting one is not accepted yet");
    drop(held);
    let mut back = [0u8; 6];
    waiting.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"waited");
    let s = stats(&stats_path);
    assert_eq!(
        (rule(&s, 0, "total"), rule(&s, 0, "refused"), rule(&s, 0, "active")),
        (Some(2), Some(1), Some(1)),
        "{s}"
    );
    // SIGUSR1 prints the same counters.
    forward.signal(Signal::USR1);
    forward.expect_log(&format!(
        "pareco forward: {} -> {echo}: 1 active, 2 total, 1 refused, 0 failed connects, 3 bytes up, 3 bytes down",
        forward.addrs[0]
    ));
    drop((first, waiting));
    assert!(forward.stop().success());
}

/// A connection through `addr` that keeps echoing until told to stop;
/// returns whether every byte came back as sent.
fn steady_load(addr: SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut stream = connect(addr);
        let mut rounds = 0u64;
        let block = support::bytes(9, 256 << 10);
        while !stop.load(Ordering::Relaxed) || rounds == 0 {
            round_trip(&mut stream, &block);
            rounds += 1;
        }
        rounds
    })
}

#[test]
fn sighup_under_load_keeps_connections_starts_new_rules_and_stops_removed_ones() {
    let echo = echo_server();
    let (a, b, c) = (free_port(), free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let rule = |port: u16| format!("127.0.0.1 {port} 127.0.0.1 {}\n", echo.port());
    let config = write_file(dir.path(), "forward.conf", &(rule(a) + &rule(b)));
    let mut forward = Forward::start(&["--config", config.to_str().unwrap()], 2);
    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(forward.addrs[0], stop.clone());
    let mut before = connect(forward.addrs[1]);
    round_trip(&mut before, b"before the reload");

    write_file(dir.path(), "forward.conf", &(rule(a) + &rule(c)));
    forward.signal(Signal::HUP);
    assert_eq!(forward.next_listening().port(), c, "the new rule is announced");
    forward.expect_log(&format!("127.0.0.1:{b}: rule removed"));
    round_trip(&mut before, b"after the reload, on the removed rule");
    let refused = TcpStream::connect(("127.0.0.1", b)).map(|_| ()).map_err(|e| e.kind());
    assert_eq!(refused, Err(ErrorKind::ConnectionRefused), "a removed rule no longer accepts");
    round_trip(&mut connect(SocketAddr::from(([127, 0, 0, 1], c))), b"the new rule works");

    // The same rules on other lines (a comment added) change nothing.
    write_file(dir.path(), "forward.conf", &("# moved down a line\n".to_string() + &rule(a) + &rule(c)));
    forward.signal(Signal::HUP);
    assert!(wait_until(WAIT, || forward.log().matches("reloaded").count() == 2), "{}", forward.log());
    assert!(!forward.log().contains("rule changed"), "{}", forward.log());

    // A configuration that does not parse keeps the running rules.
    write_file(dir.path(), "forward.conf", &(rule(a) + "127.0.0.1 9 127.0.0.1\n"));
    forward.signal(Signal::HUP);
    forward.expect_log(&format!(
        "reload failed, the running rules stay: {}:2: a forwarding rule is: bindaddress bindport connectaddress connectport",
        config.display()
    ));
    round_trip(&mut connect(SocketAddr::from(([127, 0, 0, 1], c))), b"still there");
    round_trip(&mut before, b"and so is this one");

    stop.store(true, Ordering::Relaxed);
    assert!(load.join().unwrap() > 0, "the load ran across both reloads, every byte echoed");
    drop(before);
    assert!(forward.stop().success());
}

/// A forwarder to an echo server (with `extra` options), one connection
/// through it open, sent SIGTERM.
fn terminated_with_one_open(extra: &[&str]) -> (Forward, TcpStream) {
    let echo = echo_server().to_string();
    let forward = Forward::start(&[&["127.0.0.1:0", echo.as_str()], extra].concat(), 1);
    let mut open = connect(forward.addrs[0]);
    round_trip(&mut open, b"before SIGTERM");
    forward.signal(Signal::TERM);
    (forward, open)
}

#[test]
fn sigterm_drains_open_connections_then_exits_zero() {
    let (mut forward, mut open) = terminated_with_one_open(&[]);
    forward.expect_log("draining: listeners closed, waiting for 1 open connections to finish");
    let refused = TcpStream::connect(forward.addrs[0]).map(|_| ()).map_err(|e| e.kind());
    assert_eq!(refused, Err(ErrorKind::ConnectionRefused), "no new connection while draining");
    round_trip(&mut open, b"while draining");
    assert_eq!(forward.child.try_wait().unwrap(), None, "still running for the open connection");
    drop(open);
    let status = forward.wait();
    assert_eq!(status.code(), Some(0), "{}", forward.log());
    assert!(forward.log().contains("stopped: every connection closed"));
}

#[test]
fn the_drain_timeout_resets_what_is_left_and_exits_zero() {
    let (mut forward, mut open) = terminated_with_one_open(&["--drain-timeout", "200ms"]);
    assert_reset(&mut open);
    assert_eq!(forward.wait().code(), Some(0));
    let log = forward.log();
    assert!(log.contains("drain timeout: resetting 1 connections still open"), "{log}");
    assert!(log.contains("end=\"drain timeout\""), "{log}");
}

#[test]
fn a_second_signal_resets_what_is_left_and_says_so() {
    let (mut forward, mut open) = terminated_with_one_open(&[]);
    forward.expect_log("draining: listeners closed");
    forward.signal(Signal::INT);
    assert_reset(&mut open);
    assert_eq!(forward.wait().code(), Some(0));
    let log = forward.log();
    assert!(log.contains("second signal: resetting 1 connections still open"), "{log}");
    assert!(log.contains("end=\"cut by a second signal\"") && !log.contains("drain timeout"), "{log}");
}

#[test]
fn a_metrics_port_in_use_stops_the_start_before_anything_is_announced() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let pid = dir.path().join("forward.pid");
    let config = write_file(dir.path(), "f.conf", &format!("127.0.0.1 0 127.0.0.1 9\npidlogfile {}\n", pid.display()));
    let out = forward_output(&["--config", config.to_str().unwrap(), "--metrics-listen", &metrics]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(err.contains(&format!("--metrics-listen {metrics}")) && err.contains("in use"), "{err}");
    assert!(!pid.exists(), "no pid file for a forwarder that did not start");
}

#[test]
fn stats_json_on_standard_output_is_json_alone() {
    let echo = echo_server();
    let dir = tempfile::tempdir().unwrap();
    let stderr = dir.path().join("stderr.log");
    let child = Command::new(bin())
        .args(["forward", "127.0.0.1:0", &echo.to_string(), "--stats-json", "-", "--stats-interval", "100ms"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(&stderr).unwrap_or_default();
    assert!(wait_until(WAIT, || log().contains("listening on 127.0.0.1:")), "{}", log());
    std::thread::sleep(Duration::from_millis(300));
    rustix::process::kill_process(rustix::process::Pid::from_child(&child), Signal::TERM).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", log());
    // Each write one whole object; the last is the one written at exit.
    let objects: Vec<serde_json::Value> =
        serde_json::Deserializer::from_slice(&out.stdout).into_iter().collect::<Result<_, _>>().unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&out.stdout));
        });
    assert!(objects.len() >= 2 && objects.iter().all(|o| o["rules"].is_array()), "{objects:?}");
}
