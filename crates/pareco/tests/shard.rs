//! One tree split across processes (`--shard I/N`): N syncs at once, each
//! doing its part, together an exact copy with each file sent once; changes
//! and `--delete` the same; a shard killed and run again alone; verify split
//! the same way.

mod support;

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::*;

const N: u32 = 4;

/// A tree with odd names, hard links across directories, many small files
/// and a big one.
fn tree(root: &Path) {
    awkward_tree(root);
    for i in 0..3000 {
        let dir = root.join(format!("small/d{}", i % 37));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("f{i}")), bytes(i, 100 + (i as usize % 900))).unwrap();
    }
    std::fs::write(root.join("big.bin"), bytes(7, 6 << 20)).unwrap();
    for (i, name) in ["links/a", "links/far/b", "small/d3/c", "deep/a/d"].iter().enumerate() {
        let p = root.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        if i == 0 {
            std::fs::write(&p, bytes(99, 200_000)).unwrap();
        } else {
            std::fs::hard_link(root.join("links/a"), &p).unwrap();
        }
    }
    age(root);
}

/// Bytes of file content in a tree, each inode once.
fn content_bytes(root: &Path) -> u64 {
    let mut seen = std::collections::HashSet::new();
    snapshot(root)
        .into_iter()
        .filter_map(|(rel, node)| match node {
            Node::File { size, .. } => {
                let m = std::fs::symlink_metadata(root.join(OsStr::from_bytes(&rel))).unwrap();
                seen.insert(m.ino()).then_some(size)
            }
            _ => None,
        })
        .sum()
}

use std::os::unix::ffi::OsStrExt;

fn shard_cmd(command: &str, src: &str, dst: &str, i: u32, extra: &[&str], stats: &Path) -> Child {
    Command::new(bin())
        .args([command, src, dst, "--shard", &format!("{i}/{N}"), "--stats-json"])
        .arg(stats)
        .args(extra)
        .env("PARECO_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Runs all shards at once; returns each one's statistics.
fn all_shards(command: &str, src: &str, dst: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    let tmp = tempfile::tempdir().unwrap();
    let stats: Vec<_> = (0..N).map(|i| tmp.path().join(format!("{i}.json"))).collect();
    let children: Vec<Child> = (0..N).map(|i| shard_cmd(command, src, dst, i, extra, &stats[i as usize])).collect();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "shard {i}/{N}: {}", String::from_utf8_lossy(&out.stderr));
    }
    stats.iter().map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()).collect()
}

fn total(stats: &[serde_json::Value], name: &str) -> u64 {
    stats.iter().map(|s| s[name].as_u64().unwrap_or_else(|| panic!("no {name}"))).sum()
}

#[test]
fn four_shards_copy_a_tree_once_then_its_changes_and_deletions() {
    let (_tmp, src, srv) = dirs();
    tree(&src);
    let server = Server::start(&srv);
    let (from, to) = (src.to_str().unwrap().to_string(), server.url("copy"));
    let copy = srv.join("copy");

    let first = all_shards("sync", &from, &to, &[]);
    assert_same_tree_and_links(&src, &copy);
    assert_eq!(total(&first, "bytes_transferred"), content_bytes(&src), "each file's content sent once");
    let files: u64 = first.iter().map(|s| s["files_total"].as_u64().unwrap()).sum();
    assert_eq!(files as usize, snapshot(&src).values().filter(|n| matches!(n, Node::File { .. })).count());
    assert!(first.iter().all(|s| s["files_total"].as_u64().unwrap() > 300), "the work is spread: {first:?}");

    // Changes: edits, new files, a renamed directory, removals (a file, a
    // tree), a link split; then every shard with --delete.
    std::fs::write(src.join("small/d1/f1"), b"edited").unwrap();
    std::fs::write(src.join("small/d2/new"), b"new").unwrap();
    std::fs::rename(src.join("deep"), src.join("deeper")).unwrap();
    std::fs::remove_file(src.join("small/d5/f5")).unwrap();
    std::fs::remove_dir_all(src.join("many")).unwrap();
    std::fs::remove_file(src.join("links/far/b")).unwrap();
    std::fs::write(src.join("links/far/b"), bytes(99, 200_000)).unwrap();
    age(&src);
    let second = all_shards("sync", &from, &to, &["--delete"]);
    assert_same_tree_and_links(&src, &copy);
    // Each extraneous entry removed once, by one shard: the file, the
    // removed tree, the renamed directory's old name.
    assert_eq!(total(&second, "entries_deleted"), 3, "{second:?}");
    let again = all_shards("sync", &from, &to, &["--delete"]);
    assert_eq!(total(&again, "files_transferred") + total(&again, "entries_deleted"), 0);

    // Verify split the same way: all identical, then one difference found
    // by exactly one shard.
    let checks = all_shards("verify", &from, &to, &[]);
    assert_eq!(total(&checks, "differences"), 0);
    // Each entry compared by one shard, the root too.
    assert_eq!(total(&checks, "entries") as usize, count_entries(&src) + 1, "{checks:?}");
    let victim = copy.join("small/d9/f9");
    let m = std::fs::metadata(&victim).unwrap();
    let mut data = std::fs::read(&victim).unwrap();
    data[3] ^= 1;
    std::fs::write(&victim, &data).unwrap();
    set_mtime(&victim, m.mtime(), m.mtime_nsec());
    let tmp = tempfile::tempdir().unwrap();
    let found: Vec<u64> = (0..N)
        .map(|i| {
            let stats = tmp.path().join(format!("{i}.json"));
            let out = shard_cmd("verify", &from, &to, i, &[], &stats).wait_with_output().unwrap();
            let differences = serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&stats).unwrap())
                .unwrap()["differences"]
                .as_u64()
                .unwrap();
            assert_eq!(out.status.code(), Some(if differences > 0 { 1 } else { 0 }));
            differences
        })
        .collect();
    assert_eq!(found.iter().filter(|&&d| d > 0).count(), 1, "{found:?}");
    assert_eq!(found.iter().sum::<u64>(), 1);

    // Links that differ, the destination's group spanning entries of
    // several shards (b, a file of its own in the source, linked to the
    // others there): the shards together find what one verify does.
    data[3] ^= 1;
    std::fs::write(&victim, &data).unwrap();
    set_mtime(&victim, m.mtime(), m.mtime_nsec());
    let far = std::fs::metadata(copy.join("links/far")).unwrap();
    std::fs::remove_file(copy.join("links/far/b")).unwrap();
    std::fs::hard_link(copy.join("links/a"), copy.join("links/far/b")).unwrap();
    set_mtime(&copy.join("links/far"), far.mtime(), far.mtime_nsec());
    let links = |out: &str| out.lines().filter(|l| l.contains("hard links")).map(str::to_string).collect::<Vec<_>>();
    let whole = verify(&from, &to, &[]);
    assert_eq!(whole.code(), 1, "{}", whole.stdout());
    let mut lines = links(&whole.stdout());
    assert_eq!(lines.len(), 4, "{}", whole.stdout());
    let mut split: Vec<String> = (0..N)
        .flat_map(|i| {
            let out = shard_cmd("verify", &from, &to, i, &[], &tmp.path().join("links.json")).wait_with_output();
            links(&String::from_utf8(out.unwrap().stdout).unwrap())
        })
        .collect();
    lines.sort();
    split.sort();
    assert_eq!(split, lines);
}

#[test]
fn a_shard_killed_mid_run_and_run_again_alone_finishes_its_part() {
    let (_tmp, src, srv) = dirs();
    tree(&src);
    let server = Server::start(&srv);
    let wan = Wan::start(server.port, &["--link-rate", "1M"]);
    let (from, slow) = (src.to_str().unwrap().to_string(), wan.url("copy"));
    let tmp = tempfile::tempdir().unwrap();
    let mut children: Vec<Child> =
        (0..N).map(|i| shard_cmd("sync", &from, &slow, i, &[], &tmp.path().join(format!("{i}.json")))).collect();
    // Once something has arrived, well before all of it can (about 10 s).
    assert!(wait_until(Duration::from_secs(30), || count_entries(&srv) > 200));
    children[2].kill().unwrap();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        if i != 2 {
            assert!(out.status.success(), "shard {i}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    let stats = tmp.path().join("again.json");
    let out = shard_cmd("sync", &from, &server.url("copy"), 2, &[], &stats).wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rerun: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert!(rerun["files_transferred"].as_u64().unwrap() > 0, "the kill came too late to test anything");
    assert_same_tree_and_links(&src, &srv.join("copy"));
}
