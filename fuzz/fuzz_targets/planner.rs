//! The planner on listings a hostile peer could send (duplicates, odd
//! kinds, any sizes and times): never a panic, every name planned once, and
//! chunk plans as long as their groups.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pareco_plan::dir::{DirOptions, plan_dir};
use pareco_plan::file::{Layout, diff_chunks};
use pareco_proto::{Digest, Entry, Kind, Name, Stat, Timestamp};

fn entries(data: &[u8]) -> Vec<Entry> {
    data.chunks(6)
        .filter_map(|c| {
            let kind = match c[0] % 4 {
                0 => Kind::File,
                1 => Kind::Dir,
                2 => Kind::Symlink,
                _ => Kind::Fifo,
            };
            let name = Name::new(&[b'a' + c.get(1).copied().unwrap_or(0) % 8]).ok()?;
            let t = Timestamp { secs: *c.get(2).unwrap_or(&0) as i64, nanos: 0 };
            let stat = Stat {
                mode: (*c.get(4).unwrap_or(&0) as u32) & 0o7777,
                mtime: t,
                ctime: t,
                ino: 1,
                dev: 1,
                rdev: *c.get(5).unwrap_or(&0) as u64 % 3,
                target: (kind == Kind::Symlink).then(|| Box::from(&c[..1])),
                ..Stat::new(kind, *c.get(3).unwrap_or(&0) as u64)
            };
            Some(Entry { name, stat })
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let half = data.len() / 2;
    let (src, dst) = (entries(&data[..half]), entries(&data[half..]));
    let options = DirOptions { checksum: data[0] & 1 == 1, delete: data[0] & 2 == 2, specials: data[0] & 4 == 4 };
    let dst = (data[1] & 1 == 1).then_some(dst);
    let plan = plan_dir(src, Timestamp { secs: 100, nanos: 0 }, dst, options);
    let mut names: Vec<_> = plan.iter().map(|p| p.name.clone()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), plan.len(), "a name planned twice");

    let layout = Layout { size: u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as u64, chunk: 4096 };
    let digests: Vec<Digest> = data.iter().map(|b| Digest([*b; 32])).collect();
    for group in layout.groups(16).take(8) {
        let n = (group.end - group.start) as usize;
        let plans = diff_chunks(&layout, &group, &digests[..n.min(digests.len())], &digests[half.min(digests.len())..], 512);
        assert_eq!(plans.len(), n);
    }
});
