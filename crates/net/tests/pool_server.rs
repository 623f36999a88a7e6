//! Client pool against the real server loop over TCP on 127.0.0.1.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pareco_compress::Compression;
use pareco_net::{NetError, Pool, PoolOptions, ServerConfig, Service, serve};
use pareco_net::{Security, TokenKey};
use pareco_proto::handshake::HandshakeError;
use pareco_proto::{Checksum, Entry, Kind, Name, RelPath, Request, Response, Stat, Timestamp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Answers ReadData with `len` bytes of the path's first byte, ListDir with
/// many entries, a Stat of `slow` after 3 s, anything else with Done.
struct Echo;

impl Service for Echo {
    async fn call(&self, request: Request) -> Response {
        match request {
            Request::ReadData { path, len, .. } => {
                tokio::time::sleep(Duration::from_millis(1)).await;
                let data = Bytes::from(vec![path.as_bytes()[0]; len as usize]);
                Response::Data { checksum: Some(Checksum::of(&data)), data }
            }
            Request::ListDir { .. } => {
                let stat = Stat::new(Kind::File, 0);
                let entries = (0..50_000)
                    .map(|i| Entry { name: Name::new(format!("entry-{i:06}").as_bytes()).unwrap(), stat: stat.clone() })
                    .collect();
                Response::Listing { entries, partials: Vec::new(), now: Timestamp::default(), more: false }
            }
            Request::Stat { path } if path.as_bytes() == b"slow" => {
                tokio::time::sleep(Duration::from_secs(3)).await;
                Response::Done
            }
            _ => Response::Done,
        }
    }
}

async fn start(token: &[u8]) -> (String, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    start_with(token, Security::Encrypted).await
}

async fn start_with(
    token: &[u8],
    security: Security,
) -> (String, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    serve_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), token, security).await
}

async fn serve_on(
    listener: TcpListener,
    token: &[u8],
    security: Security,
) -> (String, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let addr = listener.local_addr().unwrap().to_string();
    let mut config = ServerConfig::new(TokenKey::from_token(token));
    config.security = security;
    config.idle_timeout = Duration::from_secs(2);
    config.handshake_timeout = Duration::from_millis(500);
    config.auth_failure_delay = Duration::from_millis(10);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, config, Arc::new(Echo), async {
        let _ = stopped.await;
    }));
    (addr, stop, server)
}

fn options(connections: usize) -> PoolOptions {
    PoolOptions { connect_timeout: Duration::from_secs(5), ..PoolOptions::new(connections) }
}

/// Completes a real handshake (offering compressed frames unless
/// `compression` is none), then hands back the frame reader and the raw
/// write half of the socket.
async fn authenticated_socket(
    addr: &str,
    security: Security,
    compression: Compression,
) -> (pareco_net::framed::FrameReader<tokio::net::tcp::OwnedReadHalf>, tokio::net::tcp::OwnedWriteHalf) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let counters = std::sync::Arc::new(pareco_net::WireCounters::default());
    let key = TokenKey::from_token(b"t");
    let channel = pareco_net::channel::connect(stream, &key, security, compression, counters).await.unwrap();
    (channel.reader, channel.writer.into_inner())
}

/// A plaintext frame of type 9 (compressed) announcing `raw_len` bytes.
fn compressed_frame(raw_len: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    pareco_proto::codec::encode_compressed(raw_len, payload, &mut out);
    out.to_vec()
}

/// After a genuine handshake, a peer that sends an oversized frame, garbage,
/// or a forged record loses its connection; everyone else is still served.
#[tokio::test]
async fn authenticated_peers_that_misbehave_are_disconnected() {
    for security in [Security::Plaintext, Security::Encrypted] {
        let (addr, _stop, _server) = start_with(b"t", security).await;
        // Plaintext: an oversized frame, an unknown frame type. Encrypted:
        // records that fail authentication (the largest, and a small one).
        let huge_record: Vec<u8> = [&[0xff, 0xff][..], &[7; 65535]].concat();
        let small_record: Vec<u8> = [&[40, 0][..], &[7; 40]].concat();
        // Compressed frames: where none were agreed, one that does not
        // decompress to its announced size, one announcing more than a frame.
        let text = zstd::bulk::compress(&[b'x'; 5000], 3).unwrap();
        let attacks: Vec<(Vec<u8>, Compression)> = match security {
            Security::Plaintext => vec![
                (u32::MAX.to_le_bytes().to_vec(), Compression::None),
                (vec![8, 0, 0, 0, 99, 0, 0, 0, 0, 0, 0, 0], Compression::None),
                (compressed_frame(5000, &text), Compression::None),
                (compressed_frame(4000, &text), Compression::Auto),
                (compressed_frame(6000, &text), Compression::Auto),
                (compressed_frame(5000, b"not zstd at all"), Compression::Auto),
                (compressed_frame(u32::MAX, &text), Compression::Auto),
            ],
            Security::Encrypted => vec![(huge_record, Compression::None), (small_record, Compression::Auto)],
        };
        for (attack, compression) in attacks {
            let (mut reader, mut socket) = authenticated_socket(&addr, security, compression).await;
            socket.write_all(&attack).await.unwrap();
            let outcome = tokio::time::timeout(Duration::from_secs(5), reader.next()).await;
            let closed = matches!(outcome, Ok(Ok(None)) | Ok(Err(_)));
            assert!(closed, "{security:?}: the server kept the connection: {outcome:?}");
        }
        let pool =
            Pool::connect(&addr, TokenKey::from_token(b"t"), &PoolOptions { security, ..options(2) }).await.unwrap();
        assert_eq!(pool.call(Request::Stat { path: RelPath::root() }).await.unwrap(), Response::Done);
    }
}

/// Encryption is never negotiated away: a plaintext client and an
/// encrypting server (or the reverse) refuse each other, saying why.
#[tokio::test]
async fn channel_modes_must_match() {
    for (server, client, why) in [
        (Security::Encrypted, Security::Plaintext, "requires encryption"),
        (Security::Plaintext, Security::Encrypted, "--insecure-no-encryption"),
    ] {
        let (addr, _stop, _server) = start_with(b"t", server).await;
        let err = Pool::connect(&addr, TokenKey::from_token(b"t"), &PoolOptions { security: client, ..options(1) })
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains(why), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_requests_over_a_pool_get_their_own_answers() {
    let (addr, stop, server) = start(b"token").await;
    // Uncompressed, so that the wire carries every byte of the answers.
    let options = PoolOptions { compression: Compression::None, ..options(8) };
    let pool = Arc::new(Pool::connect(&addr, TokenKey::from_token(b"token"), &options).await.unwrap());
    assert_eq!(pool.size(), 8);
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..2000u32 {
        let pool = pool.clone();
        calls.spawn(async move {
            let name = [b'a' + (i % 26) as u8];
            let len = 1 + (i * 7919) % 200_000;
            let path = RelPath::new(&name).unwrap();
            match pool.call(Request::ReadData { path, offset: 0, len }).await.unwrap() {
                Response::Data { data, checksum } => {
                    assert_eq!(data.len() as u32, len);
                    assert!(data.iter().all(|b| *b == name[0]));
                    assert_eq!(Some(Checksum::of(&data)), checksum);
                }
                other => panic!("{other:?}"),
            }
        });
    }
    while let Some(r) = calls.join_next().await {
        r.unwrap();
    }
    let (sent, received) = pool.wire_bytes();
    assert!(received > 100 << 20 && sent > 0);
    // A listing far larger than one page arrives whole.
    let Response::Listing { entries, more, .. } = pool.call(Request::ListDir { path: RelPath::root() }).await.unwrap()
    else {
        panic!()
    };
    assert_eq!((entries.len(), more), (50_000, false));
    drop(pool);
    stop.send(()).unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn a_wrong_token_is_refused_with_a_clear_error() {
    let (addr, _stop, _server) = start(b"right").await;
    let err = Pool::connect(&addr, TokenKey::from_token(b"wrong"), &options(2)).await.err().unwrap();
    assert!(matches!(err, NetError::Handshake(HandshakeError::Refused(_))), "{err}");
    assert!(err.to_string().contains("authentication failed"), "{err}");
}

#[tokio::test]
async fn garbage_oversized_frames_and_idle_connections_do_not_stop_the_server() {
    let (addr, _stop, _server) = start(b"t").await;
    // 200 connections that never say anything.
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(TcpStream::connect(&addr).await.unwrap());
    }
    // An HTTP client, and a frame claiming 4 GiB.
    let mut http = TcpStream::connect(&addr).await.unwrap();
    http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut huge = TcpStream::connect(&addr).await.unwrap();
    huge.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
    for s in [&mut http, &mut huge] {
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap_or(0);
        assert_eq!(n, 0, "the server closes on garbage");
    }
    // A real client still gets served while the idle ones are pending...
    let pool = Pool::connect(&addr, TokenKey::from_token(b"t"), &options(2)).await.unwrap();
    assert_eq!(pool.call(Request::Stat { path: RelPath::root() }).await.unwrap(), Response::Done);
    // ...and the idle ones are dropped after the handshake timeout.
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), idle[0].read(&mut buf)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn shutdown_drains_and_clients_see_the_connection_close() {
    let (addr, stop, server) = start(b"t").await;
    let options = PoolOptions { retry_for: Duration::from_secs(1), ..options(1) };
    let pool = Pool::connect(&addr, TokenKey::from_token(b"t"), &options).await.unwrap();
    assert_eq!(pool.call(Request::Stat { path: RelPath::root() }).await.unwrap(), Response::Done);
    stop.send(()).unwrap();
    server.await.unwrap();
    let started = std::time::Instant::now();
    let err = pool.call(Request::Stat { path: RelPath::root() }).await.unwrap_err();
    assert!(matches!(err, NetError::GaveUp(_)), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(900), "gave up before --retry-for");
}

#[tokio::test]
async fn a_server_restarted_on_its_port_is_reconnected_and_requests_go_on() {
    let (addr, stop, server) = start(b"t").await;
    let pool = Arc::new(Pool::connect(&addr, TokenKey::from_token(b"t"), &options(4)).await.unwrap());
    assert_eq!(pool.call(Request::Stat { path: RelPath::root() }).await.unwrap(), Response::Done);
    stop.send(()).unwrap();
    server.await.unwrap();
    // Requests made while the server is down wait for it.
    let waiting = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.call(Request::Stat { path: RelPath::root() }).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_addr, _stop, _server) = serve_on(TcpListener::bind(&addr).await.unwrap(), b"t", Security::Encrypted).await;
    assert_eq!(waiting.await.unwrap().unwrap(), Response::Done);
    for _ in 0..20 {
        assert_eq!(pool.call(Request::Stat { path: RelPath::root() }).await.unwrap(), Response::Done);
    }
    assert!(pool.recoveries().0 >= 1, "{:?}", pool.recoveries());
}

/// A request that takes longer than the stall timeout, given to a
/// connection that has been quiet for most of it, is waited for: the server
/// says it is working, so the connection is neither taken for dead nor the
/// request sent again (before, it was, every second, until `retry_for`).
#[tokio::test]
async fn a_request_longer_than_the_stall_timeout_is_waited_for_not_sent_again() {
    let (addr, _stop, _server) = start(b"t").await;
    let options =
        PoolOptions { stall_timeout: Duration::from_secs(1), retry_for: Duration::from_secs(5), ..options(1) };
    let pool = Pool::connect(&addr, TokenKey::from_token(b"t"), &options).await.unwrap();
    assert_eq!(pool.call(Request::Stat { path: RelPath::root() }).await.unwrap(), Response::Done);
    tokio::time::sleep(Duration::from_millis(900)).await;
    let slow = Request::Stat { path: RelPath::new(b"slow").unwrap() };
    assert_eq!(pool.call(slow).await.unwrap(), Response::Done);
    assert_eq!(pool.recoveries(), (0, 0), "(reconnects, requests sent again)");
}

#[tokio::test]
async fn authenticated_connections_that_stay_idle_are_closed() {
    let (addr, _stop, _server) = start(b"t").await;
    let (mut reader, _socket) = authenticated_socket(&addr, Security::Encrypted, Compression::Auto).await;
    let started = std::time::Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(10), reader.next()).await;
    assert!(matches!(outcome, Ok(Ok(None)) | Ok(Err(_))), "{outcome:?}");
    assert!(started.elapsed() >= Duration::from_secs(1), "closed before the idle timeout");
}

/// Compressed frames, where both sides agreed on them: text shrinks on the
/// wire both ways, random data goes as it is, and `none` on the client turns
/// compression off in both directions. What arrives is what was sent.
#[tokio::test]
async fn frames_are_compressed_where_it_pays_both_ways() {
    let (addr, _stop, _server) = start(b"t").await;
    let text = Bytes::from(b"INSERT INTO accounts VALUES (42, 'pareco', 1000);\n".repeat(20_000));
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let noise: Bytes = (0..text.len())
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect::<Vec<u8>>()
        .into();
    let write = |data: &Bytes| Request::WriteData {
        path: RelPath::new(b"f").unwrap(),
        offset: 0,
        checksum: Some(Checksum::of(data)),
        data: data.clone(),
    };
    let read = Request::ReadData { path: RelPath::new(b"a").unwrap(), offset: 0, len: 1 << 20 };
    for compression in [Compression::Auto, Compression::Zstd(9), Compression::None] {
        let pool =
            Pool::connect(&addr, TokenKey::from_token(b"t"), &PoolOptions { compression, ..options(1) }).await.unwrap();
        let wire = |before: (u64, u64)| {
            let now = pool.wire_bytes();
            (now.0 - before.0, now.1 - before.1)
        };
        let start = pool.wire_bytes();
        assert_eq!(pool.call(write(&text)).await.unwrap(), Response::Done);
        let (text_sent, _) = wire(start);
        let start = pool.wire_bytes();
        assert_eq!(pool.call(write(&noise)).await.unwrap(), Response::Done);
        let (noise_sent, _) = wire(start);
        let start = pool.wire_bytes();
        let Response::Data { data, checksum } = pool.call(read.clone()).await.unwrap() else { panic!() };
        assert!(data.len() == 1 << 20 && data.iter().all(|&b| b == b'a') && Some(Checksum::of(&data)) == checksum);
        let (_, read_received) = wire(start);
        assert!(noise_sent > noise.len() as u64, "{compression:?}: random data cannot shrink");
        if compression == Compression::None {
            assert!(text_sent > text.len() as u64 && read_received > 1 << 20, "{compression:?}");
        } else {
            assert!(text_sent < text.len() as u64 / 20, "{compression:?}: text sent as {text_sent} bytes");
            assert!(read_received < 64 << 10, "{compression:?}: the answer took {read_received} bytes");
        }
    }
}

/// A pool grows and shrinks while it works: new connections open at once,
/// those no longer wanted close once their requests are answered, and
/// nothing fails meanwhile.
#[tokio::test]
async fn a_pool_is_resized_while_requests_flow() {
    let (addr, _stop, _server) = start(b"t").await;
    let options = PoolOptions { max_connections: 16, ..options(2) };
    let pool = Arc::new(Pool::connect(&addr, TokenKey::from_token(b"t"), &options).await.unwrap());
    // Ready at its first connection; the second joins as its handshake ends.
    assert!(pool.open_connections().0 >= 1);
    let both = async {
        while pool.open_connections().0 < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), both).await.expect("second connection");
    assert_eq!((pool.size(), pool.open_connections()), (2, (2, 2)));
    let traffic = {
        let pool = pool.clone();
        tokio::spawn(async move {
            for _ in 0..400 {
                let reply = pool.call(Request::Stat { path: RelPath::root() }).await;
                assert_eq!(reply.unwrap(), Response::Done);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    pool.resize(12);
    let opened = async {
        while pool.open_connections().0 < 12 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), opened).await.expect("grown");
    pool.resize(3);
    let closed = async {
        while pool.open_connections().0 > 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), closed).await.expect("shrunk");
    traffic.await.unwrap();
    assert_eq!(pool.open_connections(), (3, 12));
    assert_eq!(pool.recoveries(), (0, 0), "growing is not reconnecting, and nothing was lost");
    pool.resize(1000);
    assert_eq!(pool.size(), 16, "never beyond the maximum");
}
