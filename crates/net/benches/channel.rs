//! The channel alone: 128 KiB data frames through one connection over
//! loopback TCP, encrypted (AES-GCM records) and in the clear.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pareco_compress::Compression;
use pareco_net::WireCounters;
use pareco_net::channel::{self, Security, TokenKey};
use pareco_proto::{Checksum, Frame, RelPath, Request};
use tokio::net::{TcpListener, TcpStream};

const FRAMES: u64 = 512; // 64 MiB per iteration

async fn transfer(security: Security) -> Duration {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let key = TokenKey::from_token(b"t");
    let receiver = {
        let key = key.clone();
        tokio::spawn(async move {
            let (stream, peer) = listener.accept().await.unwrap();
            let mut ch =
                channel::accept(stream, peer, &key, security, Compression::None, Duration::ZERO).await.unwrap();
            while ch.reader.next().await.unwrap().is_some() {}
        })
    };
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut ch =
        channel::connect(stream, &key, security, Compression::None, Arc::new(WireCounters::default())).await.unwrap();
    let data = Bytes::from(vec![7u8; 128 << 10]);
    let (checksum, path) = (Some(Checksum::of(&data)), RelPath::new(b"f").unwrap());
    let start = Instant::now();
    for i in 0..FRAMES {
        let request = Request::WriteData { path: path.clone(), offset: i << 17, checksum, data: data.clone() };
        ch.writer.write(&Frame::Request { id: i as u32, request }).await.unwrap();
    }
    ch.writer.shutdown().await.unwrap();
    receiver.await.unwrap();
    start.elapsed()
}

fn channel(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let mut g = c.benchmark_group("channel");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(FRAMES << 17));
    for (name, security) in [("encrypted", Security::Encrypted), ("plaintext", Security::Plaintext)] {
        g.bench_function(format!("128 KiB frames, {name}"), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| runtime.block_on(transfer(security))).sum())
        });
    }
    g.finish();
}

criterion_group!(benches, channel);
criterion_main!(benches);
