//! Pushes 1 GiB of 128 KiB data frames through one channel over loopback
//! TCP, encrypted and not, and prints the throughput of each.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use pareco_net::WireCounters;
use pareco_net::channel::{self, Security, TokenKey};
use pareco_proto::{Digest, Frame, RelPath, Request};
use tokio::net::{TcpListener, TcpStream};

#[tokio::main]
async fn main() {
    for security in [Security::Plaintext, Security::Encrypted, Security::Plaintext, Security::Encrypted] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let key = TokenKey::from_token(b"t");
        let server = {
            let key = key.clone();
            tokio::spawn(async move {
                let (stream, peer) = listener.accept().await.unwrap();
                let mut ch = channel::accept(stream, peer, &key, security, std::time::Duration::ZERO).await.unwrap();
                let mut bytes = 0u64;
                while let Some(frame) = ch.reader.next().await.unwrap() {
                    if let Frame::Request { request: Request::WriteData { data, .. }, .. } = frame {
                        bytes += data.len() as u64;
                    }
                }
                bytes
            })
        };
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut ch = channel::connect(stream, &key, security, Arc::new(WireCounters::default())).await.unwrap();
        let data = Bytes::from(vec![7u8; 128 << 10]);
        let digest = Digest::of(&data);
        let path = RelPath::new(b"f").unwrap();
        let start = Instant::now();
        for i in 0..8192u64 {
            let request = Request::WriteData { path: path.clone(), offset: i << 17, digest, data: data.clone() };
            ch.writer.write(&Frame::Request { id: i as u32, request }).await.unwrap();
        }
        ch.writer.shutdown().await.unwrap();
        let got = server.await.unwrap();
        let secs = start.elapsed().as_secs_f64();
        println!("{security:?}: {:.0} MiB/s ({got} bytes)", got as f64 / secs / (1 << 20) as f64);
    }
}
