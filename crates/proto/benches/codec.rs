//! Hot paths of the protocol: digests (every byte sent is hashed on both
//! sides) and the codec (every request and response).

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pareco_proto::codec::{self, Frame};
use pareco_proto::{Checksum, Digest, Entry, Kind, Name, RelPath, Request, Response, Stat, Timestamp};

fn hashing(c: &mut Criterion) {
    let chunk = vec![0x5au8; 1 << 20];
    let mut g = c.benchmark_group("hashing");
    g.throughput(Throughput::Bytes(chunk.len() as u64));
    g.bench_function("chunk digest (1 MiB)", |b| b.iter(|| Digest::of(black_box(&chunk))));
    g.bench_function("transit checksum (1 MiB)", |b| b.iter(|| Checksum::of(black_box(&chunk))));
    g.bench_function("block digests (1 MiB as 4 KiB blocks)", |b| {
        b.iter(|| black_box(&chunk).chunks(4096).map(Digest::of).fold(0u8, |acc, d| acc ^ d.0[0]))
    });
    g.finish();
}

fn listing(n: usize) -> Frame {
    let stat = Stat {
        mtime: Timestamp { secs: 1_790_000_000, nanos: 123_456_789 },
        ctime: Timestamp { secs: 1_790_000_000, nanos: 123_456_789 },
        ino: 987_654,
        dev: 2049,
        ..Stat::new(Kind::File, 123_456)
    };
    let entries =
        (0..n).map(|i| Entry { name: Name::new(format!("file-{i:07}.dat").as_bytes()).unwrap(), stat: stat.clone() });
    Frame::Response {
        id: 7,
        response: Response::Listing {
            entries: entries.collect(),
            partials: Vec::new(),
            now: Timestamp::default(),
            more: false,
        },
    }
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    let data = Bytes::from(vec![1u8; 128 << 10]);
    let write = Frame::Request {
        id: 1,
        request: Request::WriteData {
            path: RelPath::new(b"some/dir/file").unwrap(),
            offset: 1 << 30,
            checksum: Some(Checksum::of(&data)),
            data,
        },
    };
    let list = listing(1000);
    for (name, frame) in [("data frame (128 KiB)", &write), ("listing (1,000 entries)", &list)] {
        let bytes = codec::encode_to_vec(frame);
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function(format!("encode {name}"), |b| {
            let mut out = BytesMut::with_capacity(bytes.len());
            b.iter(|| {
                out.clear();
                black_box(codec::encode(black_box(frame), &mut out));
            })
        });
        g.bench_function(format!("decode {name}"), |b| {
            b.iter(|| {
                let mut buf = BytesMut::from(&bytes[..]);
                black_box(codec::decode(&mut buf).unwrap())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, hashing, codec);
criterion_main!(benches);
