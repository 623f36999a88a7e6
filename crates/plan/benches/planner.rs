//! The planner on a directory of a million entries: what a final round
//! costs before any byte moves.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use pareco_plan::dir::{DirOptions, plan_dir};
use pareco_proto::{Entry, Kind, Name, Stat, Timestamp};

fn entries(n: usize, seed: u64) -> Vec<Entry> {
    let stat = |i: u64| Stat {
        mtime: Timestamp { secs: 1_700_000_000 + (i % 1000) as i64, nanos: 5 },
        ino: i,
        dev: 1,
        ..Stat::new(Kind::File, 100 + i % 7)
    };
    // Listing order is the filesystem's, not sorted: shuffle deterministically.
    let mut v: Vec<Entry> = (0..n as u64)
        .map(|i| Entry { name: Name::new(format!("f{i:08}").as_bytes()).unwrap(), stat: stat(i) })
        .collect();
    let mut x = seed;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

fn planner(c: &mut Criterion) {
    let n = 1_000_000;
    let (src, dst) = (entries(n, 1), entries(n, 2));
    let now = Timestamp { secs: 1_800_000_000, nanos: 0 };
    let mut g = c.benchmark_group("planner");
    g.sample_size(10);
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("diff of 1M unchanged entries", |b| {
        b.iter_batched(
            || (src.clone(), dst.clone()),
            |(s, d)| black_box(plan_dir(s, now, Some(d), DirOptions::default())),
            BatchSize::LargeInput,
        )
    });
    g.bench_function("plan of 1M new entries", |b| {
        b.iter_batched(
            || src.clone(),
            |s| black_box(plan_dir(s, now, None, DirOptions::default())),
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, planner);
criterion_main!(benches);
