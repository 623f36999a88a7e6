//! End-to-end live migration: rounds until converged, `pareco verify`, and a
//! real SQLite database in WAL mode copied while a writer updates it.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use support::postgres::Postgres;
use support::*;

#[test]
fn verify_finds_a_one_byte_difference_a_mode_change_and_a_missing_file() {
    let (_tmp, src, dst) = dirs();
    awkward_tree(&src);
    std::fs::write(src.join("big.bin"), bytes(1, 5 << 20)).unwrap();
    age(&src);
    sync(&src, &dst, &["-q"]).ok();
    let same = verify(&src, &dst, &[]).ok();
    assert!(same.stdout().is_empty(), "{}", same.stdout());
    assert!(same.stderr().contains("verify: identical"), "{}", same.stderr());
    assert!(same.stat("bytes_hashed") >= 5 << 20);

    // One byte in the fourth chunk, keeping size and mtime: only content shows it.
    let big = dst.join("big.bin");
    let mtime = std::fs::metadata(&big).unwrap();
    let mut data = std::fs::read(&big).unwrap();
    data[(3 << 20) + 17] ^= 1;
    std::fs::write(&big, &data).unwrap();
    set_mtime(&big, filetime(&mtime).0, filetime(&mtime).1);
    std::fs::set_permissions(dst.join("plain.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::remove_file(dst.join("empty")).unwrap();
    std::fs::write(dst.join("extra"), b"x").unwrap();

    let run = verify(&src, &dst, &[]);
    assert_eq!(run.code(), 1, "{}", run.stderr());
    let out = run.stdout();
    for line in [
        "big.bin: content: differs from byte 3145745",
        "plain.txt: mode: 0644 vs 0600",
        "empty: only in A",
        "extra: only in B",
    ] {
        assert!(out.lines().any(|l| l == line), "missing {line:?} in:\n{out}");
    }
    // And the top directory's mtime, moved by the removal and the new file.
    assert!(out.lines().any(|l| l.starts_with(".: mtime: ")), "{out}");
    assert_eq!(run.stat("differences"), 5, "{out}");
    assert!(run.stderr().contains("5 difference(s)"), "{}", run.stderr());
    // Each side's files add up, those on one side only included.
    let files = |root: &Path| {
        use std::os::unix::fs::MetadataExt;
        let inodes = walkdir(root).map(|p| std::fs::symlink_metadata(p).unwrap()).filter(|m| m.is_file());
        inodes.map(|m| m.ino()).collect::<std::collections::HashSet<_>>().len()
    };
    for (side, root) in [("A", &src), ("B", &dst)] {
        let line = format!("pareco: {side}: {} files, apparent size ", files(root));
        assert!(run.stderr().contains(&line), "missing {line:?} in:\n{}", run.stderr());
    }
}

/// Every path below `root`.
fn walkdir(root: &Path) -> impl Iterator<Item = std::path::PathBuf> {
    let mut paths = Vec::new();
    for e in std::fs::read_dir(root).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            paths.extend(walkdir(&e.path()));
        }
        paths.push(e.path());
    }
    paths.into_iter()
}

fn filetime(m: &std::fs::Metadata) -> (i64, i64) {
    use std::os::unix::fs::MetadataExt;
    (m.mtime(), m.mtime_nsec())
}

#[test]
fn verify_against_a_server_and_sizes_on_disk_explained() {
    let (_tmp, src, srv) = dirs();
    std::fs::create_dir_all(&srv).unwrap();
    // A sparse file: 64 MiB apparent, 1 MiB of data.
    let sparse = std::fs::File::create(src.join("sparse.img")).unwrap();
    sparse.set_len(64 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, &bytes(2, 1 << 20), 8 << 20).unwrap();
    std::fs::write(src.join("small"), b"abc").unwrap();
    age(&src);
    let server = Server::start(&srv);
    sync(&src, server.url("copy"), &["-q"]).ok();

    let run = verify(&src, server.url("copy"), &[]).ok();
    let err = run.stderr();
    assert!(err.contains("verify: identical"), "{err}");
    assert!(err.contains("A: 2 files, apparent size 64.0 MiB"), "{err}");
    // The copy kept the holes: both sides allocate the same.
    assert!(!err.contains("more than"), "{err}");

    // A copy that filled the holes has the same content, and the report
    // says where the space went.
    let filled = src.with_file_name("filled");
    std::fs::create_dir_all(&filled).unwrap();
    let status = Command::new("cp")
        .args(["-a", "--sparse=never"])
        .arg(src.join("sparse.img"))
        .arg(src.join("small"))
        .arg(&filled)
        .status();
    assert!(status.unwrap().success());
    let (secs, nanos) = filetime(&std::fs::metadata(&src).unwrap());
    set_mtime(&filled, secs, nanos);
    let run = verify(&src, &filled, &[]).ok();
    let err = run.stderr();
    if allocated(&src.join("sparse.img")) < 8 << 20 {
        assert!(err.contains("B allocates 63.0 MiB more than A: A has 63.0 MiB in holes"), "{err}");
    }

    std::fs::write(srv.join("copy/small"), b"abd").unwrap();
    let run = verify(&src, server.url("copy"), &[]);
    assert_eq!(run.code(), 1);
    assert!(run.stdout().contains("small: "), "{}", run.stdout());
}

#[test]
fn verify_compares_hard_link_structure() {
    let (_tmp, a, b) = dirs();
    std::fs::create_dir_all(&b).unwrap();
    for root in [&a, &b] {
        std::fs::write(root.join("x"), b"same").unwrap();
    }
    std::fs::hard_link(a.join("x"), a.join("y")).unwrap();
    std::fs::write(b.join("y"), b"same").unwrap();
    age(&a);
    age(&b);
    for root in [&a, &b] {
        set_mtime(root, 1_700_000_000, 0);
        set_mtime(&root.join("x"), 1_700_000_000, 0);
        set_mtime(&root.join("y"), 1_700_000_000, 0);
    }
    let run = verify(&a, &b, &[]);
    assert_eq!(run.code(), 1, "{}", run.stderr());
    assert!(run.stdout().contains("x: hard links: y vs -"), "{}", run.stdout());
    assert!(run.stdout().contains("y: hard links: x vs -"), "{}", run.stdout());
}

#[test]
fn rounds_repeat_until_one_sends_little() {
    let (_tmp, src, dst) = dirs();
    awkward_tree(&src);
    std::fs::write(src.join("big.bin"), bytes(3, 3 << 20)).unwrap();
    age(&src);
    let run = sync(&src, &dst, &["--until-converged", "--converge-bytes", "0"]).ok();
    let err = run.stderr();
    assert!(err.contains("round 1: synced") && err.contains("round 2: synced"), "{err}");
    assert!(err.contains("converged after 2 round(s)"), "{err}");
    let stats = run.stats.as_ref().unwrap();
    assert_eq!(stats["converged"], true);
    let rounds = stats["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 2);
    assert!(rounds[0]["bytes_transferred"].as_u64().unwrap() >= 3 << 20);
    assert_eq!(rounds[1]["bytes_transferred"], 0);
    assert_eq!(rounds[1]["files_transferred"], 0);
    assert_same_tree(&src, &dst);

    // A round that still sends more than allowed, with no rounds left.
    std::fs::write(src.join("big.bin"), bytes(4, 3 << 20)).unwrap();
    age(&src);
    let run = sync(&src, &dst, &["--until-converged", "--converge-bytes", "0", "--max-rounds", "1"]);
    assert_eq!(run.code(), 24, "{}", run.stderr());
    assert!(run.stderr().contains("did not converge after 1 round(s)"), "{}", run.stderr());
    assert_same_tree(&src, &dst);
}

/// A writer updating random rows of a SQLite database in WAL mode until the
/// file `stop` appears.
fn start_writer(db: &Path, stop: &Path) -> Child {
    let script = r#"
import random, sqlite3, sys, os, time
db, stop = sys.argv[1], sys.argv[2]
con = sqlite3.connect(db, isolation_level=None)
con.execute("PRAGMA journal_mode=WAL")
rng = random.Random(os.getpid())
while not os.path.exists(stop):
    con.execute("BEGIN")
    for _ in range(50):
        row = rng.randint(1, 20000)
        con.execute("UPDATE t SET v = ?, n = n + 1 WHERE id = ?", (os.urandom(rng.randint(10, 300)).hex(), row))
    con.execute("INSERT INTO t (v, n) VALUES (?, 0)", ("new " * rng.randint(1, 40),))
    con.execute("COMMIT")
    time.sleep(0.002)
con.close()
"#;
    Command::new("python3").args(["-c", script]).arg(db).arg(stop).stdin(Stdio::null()).spawn().expect("python3")
}

fn sqlite(db: &Path, script: &str) -> String {
    let out = Command::new("python3").args(["-c", script]).arg(db).output().expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

const CREATE: &str = r#"
import sqlite3, sys
con = sqlite3.connect(sys.argv[1])
con.execute("PRAGMA journal_mode=WAL")
con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, n INTEGER)")
con.executemany("INSERT INTO t (v, n) VALUES (?, 0)", [("row %d " % i * 8,) for i in range(20000)])
con.commit()
con.close()
"#;

const CHECK: &str = r#"
import sqlite3, sys, hashlib
con = sqlite3.connect(sys.argv[1])
print(con.execute("PRAGMA integrity_check").fetchone()[0])
h = hashlib.blake2b()
for line in con.iterdump():
    h.update(line.encode() + b"\n")
print(h.hexdigest(), con.execute("SELECT count(*), sum(n) FROM t").fetchone())
"#;

#[test]
fn a_sqlite_database_copied_while_written_then_finished_with_delete_is_intact() {
    for attempt in 0..3 {
        let (tmp, src, srv) = dirs();
        std::fs::create_dir_all(&srv).unwrap();
        let db = src.join("app.db");
        sqlite(&db, CREATE);
        let server = Server::start(&srv);
        let stop = tmp.path().join("stop");
        let mut writer = start_writer(&db, &stop);
        // Rounds while live: the copy is whatever the files were, the
        // database is still changing.
        std::thread::sleep(std::time::Duration::from_millis(300));
        let rounds = ["-q", "--until-converged", "--converge-bytes", "0", "--max-rounds", "2"];
        let live = sync(&src, server.url("copy"), &rounds);
        assert!([0, 24].contains(&live.code()), "attempt {attempt}: {}", live.stderr());
        // Stop the database, then the final round.
        std::fs::write(&stop, b"").unwrap();
        assert!(writer.wait().unwrap().success());
        let last = sync(&src, server.url("copy"), &["-q", "--delete"]);
        assert!([0, 24].contains(&last.code()), "attempt {attempt}: {}", last.stderr());
        // Settled sources give a clean final round.
        if last.code() == 24 {
            sync(&src, server.url("copy"), &["-q", "--delete"]).ok();
        }
        verify(&src, server.url("copy"), &["-q"]).ok();
        let (want, got) = (sqlite(&db, CHECK), sqlite(&srv.join("copy/app.db"), CHECK));
        assert!(got.starts_with("ok\n"), "attempt {attempt}: integrity check of the copy: {got}");
        assert_eq!(got, want, "attempt {attempt}: the copy's dump differs from the source's");
    }
}

fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn sparse_files_keep_their_holes_and_cost_only_their_data_on_the_wire() {
    let (_tmp, src, srv) = dirs();
    std::fs::create_dir_all(&srv).unwrap();
    let file = std::fs::File::create(src.join("disk.img")).unwrap();
    file.set_len(256 << 20).unwrap();
    for (i, at) in [0u64, 100 << 20, (256 << 20) - (1 << 20)].into_iter().enumerate() {
        std::os::unix::fs::FileExt::write_all_at(&file, &bytes(i as u64, 1 << 20), at).unwrap();
    }
    drop(file);
    if allocated(&src.join("disk.img")) > 16 << 20 {
        eprintln!("this filesystem does not keep holes; nothing to test");
        return;
    }
    age(&src);
    let server = Server::start(&srv);
    let push = sync(&src, server.url("copy"), &["-q"]).ok();
    assert!(push.stat("bytes_sparse") >= 250 << 20);
    assert!(push.stat("wire_bytes_sent") < 8 << 20, "{} bytes on the wire", push.stat("wire_bytes_sent"));
    let copy = srv.join("copy/disk.img");
    assert!(allocated(&copy) < 16 << 20, "the copy allocates {} bytes", allocated(&copy));
    assert_same_tree(&src, &srv.join("copy"));

    // And back: a pull from the server keeps them too.
    let back = src.with_file_name("back");
    let pull = sync(server.url("copy"), &back, &["-q"]).ok();
    assert!(pull.stat("wire_bytes_received") < 8 << 20);
    assert!(allocated(&back.join("disk.img")) < 16 << 20);
    assert_same_tree(&src, &back);
}

#[test]
fn sparse_option_leaves_zero_runs_of_a_full_file_as_holes() {
    let (_tmp, src, dst) = dirs();
    let mut data = bytes(7, 1 << 20);
    data.extend(std::iter::repeat_n(0u8, 8 << 20));
    data.extend(bytes(8, 1 << 20));
    std::fs::write(src.join("zeros.bin"), &data).unwrap();
    age(&src);
    let run = sync(&src, &dst, &["-q", "--sparse"]).ok();
    assert_eq!(run.stat("bytes_sparse"), 8 << 20);
    assert_same_tree(&src, &dst);
    let a = allocated(&dst.join("zeros.bin"));
    if a > 4 << 20 {
        eprintln!("this filesystem does not keep holes ({a} bytes allocated)");
    }
    // A second run with a change in the zeros writes real data there.
    data[(4 << 20) + 5] = 1;
    std::fs::write(src.join("zeros.bin"), &data).unwrap();
    age(&src);
    sync(&src, &dst, &["-q", "--sparse"]).ok();
    assert_same_tree(&src, &dst);
}

#[test]
fn hard_links_inside_the_tree_stay_hard_links() {
    use std::os::unix::fs::MetadataExt;
    let (_tmp, src, srv) = dirs();
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::create_dir_all(&srv).unwrap();
    std::fs::write(src.join("x"), b"shared small").unwrap();
    std::fs::hard_link(src.join("x"), src.join("y")).unwrap();
    std::fs::hard_link(src.join("x"), src.join("sub/z")).unwrap();
    std::fs::write(src.join("big"), bytes(9, 3 << 20)).unwrap();
    std::fs::hard_link(src.join("big"), src.join("sub/big2")).unwrap();
    age(&src);
    let server = Server::start(&srv);
    let copy = srv.join("copy");
    sync(&src, server.url("copy"), &["-q"]).ok();
    let ino = |p: &str| std::fs::metadata(copy.join(p)).unwrap().ino();
    assert_eq!(ino("x"), ino("y"));
    assert_eq!(ino("x"), ino("sub/z"));
    assert_eq!(ino("big"), ino("sub/big2"));
    assert_ne!(ino("x"), ino("big"));
    verify(&src, server.url("copy"), &[]).ok();
    assert_same_tree(&src, &copy);

    // Nothing to do the second time.
    let again = sync(&src, server.url("copy"), &["-v"]).ok();
    assert_eq!(again.stat("files_transferred"), 0);
    assert!(!again.stdout().contains("hardlink"), "{}", again.stdout());

    // A link broken at the destination is made again.
    std::fs::remove_file(copy.join("y")).unwrap();
    std::fs::write(copy.join("y"), b"shared small").unwrap();
    let fix = sync(&src, server.url("copy"), &["-v"]).ok();
    assert!(fix.stdout().contains("hardlink y"), "{}", fix.stdout());
    assert_eq!(ino("x"), ino("y"));
    verify(&src, server.url("copy"), &[]).ok();
}

#[test]
fn archive_mode_keeps_owners_groups_and_setuid_bits() {
    use std::os::unix::fs::MetadataExt;
    if !rustix::process::geteuid().is_root() {
        eprintln!("not root: owners cannot be given away here; nothing to test");
        return;
    }
    let (_tmp, src, srv) = dirs();
    std::fs::create_dir_all(src.join("data/base")).unwrap();
    std::fs::create_dir_all(&srv).unwrap();
    std::fs::write(src.join("data/base/16384"), bytes(1, 200_000)).unwrap();
    std::fs::write(src.join("data/PG_VERSION"), b"15\n").unwrap();
    std::fs::write(src.join("tool"), b"#!/bin/sh\n").unwrap();
    std::os::unix::fs::symlink("data/PG_VERSION", src.join("link")).unwrap();
    for (path, uid, gid) in [
        ("data", 1234, 2345),
        ("data/base", 1234, 2345),
        ("data/base/16384", 1234, 2345),
        ("data/PG_VERSION", 1234, 99),
        ("tool", 0, 2345),
        ("link", 77, 78),
        ("", 1234, 2345),
    ] {
        rustix::fs::chownat(
            rustix::fs::CWD,
            src.join(path),
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
    }
    std::fs::set_permissions(src.join("tool"), std::fs::Permissions::from_mode(0o6755)).unwrap();
    age(&src);
    let server = Server::start(&srv);
    sync(&src, server.url("copy"), &["-q", "-a"]).ok();
    let owner = |root: &Path, p: &str| {
        let m = std::fs::symlink_metadata(root.join(p)).unwrap();
        (m.uid(), m.gid(), m.mode() & 0o7777)
    };
    for p in ["", "data", "data/base", "data/base/16384", "data/PG_VERSION", "tool", "link"] {
        let (want, got) = (owner(&src, p), owner(&srv.join("copy"), p));
        if p == "link" {
            assert_eq!((want.0, want.1), (got.0, got.1), "{p}");
        } else {
            assert_eq!(want, got, "{p:?}");
        }
    }
    assert_same_tree(&src, &srv.join("copy"));

    // Without -a, owners are left as the receiver makes them; with it, a
    // changed owner alone is fixed by the next round.
    rustix::fs::chownat(
        rustix::fs::CWD,
        src.join("data/PG_VERSION"),
        Some(rustix::fs::Uid::from_raw(4321)),
        None,
        rustix::fs::AtFlags::empty(),
    )
    .unwrap();
    verify(&src, server.url("copy"), &["-q"]).ok();
    let found = verify(&src, server.url("copy"), &["-q", "-a"]);
    assert_eq!((found.code(), found.stdout().as_str()), (1, "data/PG_VERSION: owner: 4321 vs 1234\n"));
    sync(&src, server.url("copy"), &["-q", "-a"]).ok();
    assert_eq!(owner(&srv.join("copy"), "data/PG_VERSION").0, 4321);
    verify(&src, server.url("copy"), &["-q", "-a"]).ok();
}

#[test]
fn fifos_and_devices_are_recreated_with_archive_sockets_are_skipped_and_named() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let (_tmp, src, srv) = dirs();
    std::fs::create_dir_all(&srv).unwrap();
    let mknod = |name: &str, kind, rdev| {
        rustix::fs::mknodat(rustix::fs::CWD, src.join(name), kind, rustix::fs::Mode::from_raw_mode(0o640), rdev)
    };
    mknod("pipe", rustix::fs::FileType::Fifo, 0).unwrap();
    let root = rustix::process::geteuid().is_root();
    if root {
        mknod("null", rustix::fs::FileType::CharacterDevice, rustix::fs::makedev(1, 3)).unwrap();
    }
    let _socket = std::os::unix::net::UnixListener::bind(src.join("sock")).unwrap();
    std::fs::write(src.join("file"), b"x").unwrap();
    age(&src);
    let server = Server::start(&srv);
    let copy = srv.join("copy");

    // Without -a: skipped, each named with the reason.
    let plain = sync(&src, server.url("copy"), &[]).ok();
    let err = plain.stderr();
    assert!(err.contains("pipe") && err.contains("fifo skipped (--specials or -a recreates it)"), "{err}");
    assert!(err.contains("sock") && err.contains("socket skipped"), "{err}");
    assert!(!copy.join("pipe").exists());
    // Verify leaves out what sync did, and says so; with -a it compares the fifo.
    let same = verify(&src, &copy, &[]).ok();
    let skipped = if root { 3 } else { 2 };
    let said = format!("{skipped} entries not compared, as sync skips them (sockets, fifos and devices;");
    assert!(same.stderr().contains(&said), "{}", same.stderr());
    assert_eq!(same.stats.as_ref().unwrap()["skipped"], skipped);
    assert_eq!(verify(&src, &copy, &["-a"]).code(), 1, "-a compares the fifo");

    let archive = sync(&src, server.url("copy"), &["-a", "-v"]).ok();
    assert!(archive.stdout().contains("special pipe"), "{}", archive.stdout());
    let meta = std::fs::symlink_metadata(copy.join("pipe")).unwrap();
    assert!(meta.file_type().is_fifo());
    assert_eq!(meta.mode() & 0o7777, 0o640);
    if root {
        let null = std::fs::symlink_metadata(copy.join("null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
    }
    assert!(!copy.join("sock").exists());
    assert!(archive.stderr().contains("socket skipped"), "{}", archive.stderr());
    let same = verify(&src, &copy, &["-a"]).ok();
    assert!(same.stderr().contains("1 entry not compared, as sync skips them (sockets)"), "{}", same.stderr());
    // Without -a, a fifo on both sides is one entry left out, not two.
    let plain = verify(&src, &copy, &[]).ok();
    assert_eq!(plain.stats.as_ref().unwrap()["skipped"], skipped, "{}", plain.stderr());

    // Nothing left to do.
    let again = sync(&src, server.url("copy"), &["-a", "-v"]).ok();
    assert!(!again.stdout().contains("special"), "{}", again.stdout());
}

#[test]
fn extended_attributes_are_kept_updated_and_removed_with_xattrs() {
    let (_tmp, src, srv) = dirs();
    std::fs::create_dir_all(src.join("dir")).unwrap();
    std::fs::create_dir_all(&srv).unwrap();
    std::fs::write(src.join("dir/a"), b"a").unwrap();
    std::fs::write(src.join("b"), bytes(3, 100_000)).unwrap();
    let set = |p: &str, n: &str, v: &[u8]| rustix::fs::lsetxattr(src.join(p), n, v, rustix::fs::XattrFlags::empty());
    if set("dir/a", "user.checksum", b"abc").is_err() {
        eprintln!("this filesystem has no user extended attributes; nothing to test");
        return;
    }
    set("dir", "user.project", b"pg").unwrap();
    set("b", "user.big", &[7u8; 3000]).unwrap();
    set("b", "user.other", b"").unwrap();
    age(&src);
    let server = Server::start(&srv);
    let copy = srv.join("copy");
    let get = |root: &Path, p: &str| {
        let mut names = vec![0u8; 4096];
        let n = rustix::fs::llistxattr(root.join(p), &mut names[..]).unwrap();
        let mut out: Vec<(String, Vec<u8>)> = names[..n]
            .split(|&b| b == 0)
            .filter(|n| n.starts_with(b"user."))
            .map(|n| {
                let mut v = vec![0u8; 65536];
                let len = rustix::fs::lgetxattr(root.join(p), n, &mut v[..]).unwrap();
                (String::from_utf8_lossy(n).into_owned(), v[..len].to_vec())
            })
            .collect();
        out.sort();
        out
    };
    sync(&src, server.url("copy"), &["-q", "-X"]).ok();
    for p in ["dir", "dir/a", "b"] {
        assert_eq!(get(&src, p), get(&copy, p), "{p}");
    }
    assert_eq!(get(&copy, "b").len(), 2);
    assert_same_tree(&src, &copy);
    verify(&src, server.url("copy"), &["-q", "-X"]).ok();

    // Changed and removed attributes follow, with nothing else to do.
    set("dir/a", "user.checksum", b"xyz").unwrap();
    rustix::fs::lremovexattr(src.join("b"), "user.other").unwrap();
    verify(&src, server.url("copy"), &["-q"]).ok();
    let found = verify(&src, server.url("copy"), &["-q", "-X"]);
    let stdout = found.stdout();
    let mut lines: Vec<&str> = stdout.lines().collect();
    lines.sort();
    assert_eq!(found.code(), 1);
    assert_eq!(lines, ["b: extended attributes: user.other", "dir/a: extended attributes: user.checksum"]);
    sync(&src, server.url("copy"), &["-q", "-X"]).ok();
    for p in ["dir", "dir/a", "b"] {
        assert_eq!(get(&src, p), get(&copy, p), "{p}");
    }
    assert_same_tree(&src, &copy);
    verify(&src, server.url("copy"), &["-q", "-X"]).ok();
}

#[test]
fn the_digest_cache_spares_reading_unchanged_files_and_notices_any_change() {
    let (tmp, src, dst) = dirs();
    awkward_tree(&src);
    std::fs::write(src.join("big.bin"), bytes(5, 3 << 20)).unwrap();
    age(&src);
    sync(&src, &dst, &["-q"]).ok();
    let state = tmp.path().join("state");
    let state = state.to_str().unwrap();
    // Digests of files changed less than a second ago are not kept.
    std::thread::sleep(std::time::Duration::from_millis(1100));

    let first = sync(&src, &dst, &["-q", "--checksum", "--state-dir", state]).ok();
    assert!(first.stat("bytes_hashed") >= 2 * (3 << 20), "{}", first.stat("bytes_hashed"));
    assert_eq!(first.stat("files_transferred"), 0);
    // A new process, the cache read back from the state directory: nothing is read.
    let second = sync(&src, &dst, &["-q", "--checksum", "--state-dir", state]).ok();
    assert_eq!(second.stat("bytes_hashed"), 0);
    assert_eq!(second.stat("files_transferred"), 0);

    // Same size, same mtime, other content: only ctime tells, and it is enough.
    let big = src.join("big.bin");
    let (secs, nanos) = filetime(&std::fs::metadata(&big).unwrap());
    let mut data = std::fs::read(&big).unwrap();
    data[12345] ^= 0xff;
    std::fs::write(&big, &data).unwrap();
    set_mtime(&big, secs, nanos);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let third = sync(&src, &dst, &["-q", "--checksum", "--state-dir", state]).ok();
    assert_eq!(third.stat("bytes_hashed"), 3 << 20, "only the changed source file is read");
    assert_eq!(third.stat("files_transferred"), 1);
    assert_same_tree(&src, &dst);

    // The state directory must stay outside the trees, however it is
    // named: through a symlink, through `..` (of a directory that exists or
    // not), and for a server too.
    let link = tmp.path().join("link-to-src");
    std::os::unix::fs::symlink(&src, &link).unwrap();
    let named = |rest: &str| format!("{}/{rest}", tmp.path().display());
    for inside in [
        dst.join("state").display().to_string(),
        format!("{}/state", link.display()),
        named("src/../srv/state"),
        named("not-there/../src/state"),
    ] {
        let refused = sync(&src, &dst, &["-q", "--state-dir", &inside]);
        assert_eq!(refused.code(), 2, "{inside}: {}", refused.stderr());
        assert_eq!(refused.stderr().matches("keep it outside").count(), 1, "{}", refused.stderr());
    }
    let serve = run_pareco(&[
        "serve".as_ref(),
        "--root".as_ref(),
        src.as_os_str(),
        "--state-dir".as_ref(),
        named("src/.state").as_ref(),
    ]);
    assert_eq!(serve.code(), 2, "{}", serve.stderr());
    assert!(serve.stderr().contains("keep it outside"), "{}", serve.stderr());
    assert!(!dst.join("state").exists() && !src.join("state").exists() && !src.join(".state").exists());
}

#[test]
fn a_server_keeps_its_digests_in_its_state_directory() {
    let (tmp, src, srv) = dirs();
    std::fs::create_dir_all(&srv).unwrap();
    std::fs::write(src.join("f"), bytes(6, 2 << 20)).unwrap();
    age(&src);
    let state = tmp.path().join("server-state");
    let server = Server::start_with(&srv, TOKEN, &["--state-dir", state.to_str().unwrap()]);
    sync(&src, server.url("copy"), &["-q"]).ok();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    sync(&src, server.url("copy"), &["-q", "--checksum"]).ok();
    assert!(server.stop().success());
    let saved: Vec<_> = std::fs::read_dir(&state).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(saved.len(), 1, "{saved:?}");
    assert!(saved[0].to_string_lossy().starts_with("digests-"));
    assert!(std::fs::metadata(state.join(&saved[0])).unwrap().len() > 16 + 52);
}

/// PostgreSQL under pgbench, copied in rounds until one is short, then
/// stopped for the final round: every live round predicts the final one
/// (the downtime), which is then measured. Both are printed (the README
/// quotes them); only that the prediction is there and sane is asserted.
#[test]
fn postgresql_under_pgbench_rounds_predict_the_final_round() {
    let pg = Postgres::start();
    let init = pg.pgbench(&["-i", "-q", "-s", "10"]).output().unwrap();
    assert!(init.status.success(), "pgbench -i: {}", String::from_utf8_lossy(&init.stderr));
    let (tmp, _, srv) = dirs();
    std::fs::create_dir_all(&srv).unwrap();
    let server = Server::start(&srv);
    let mut load =
        pg.pgbench(&["-c", "4", "-T", "600", "-n"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let rounds = ["--until-converged", "--converge-seconds", "0.5", "--converge-bytes", "0", "--max-rounds", "4"];
    let live = sync(&pg.data, server.url("copy"), &rounds);
    let _ = load.kill();
    let _ = load.wait();
    let balances = "select count(*), sum(abalance), (select sum(delta) from pgbench_history) from pgbench_accounts";
    let want = pg.psql(pg.port, balances);
    assert!([0, 24].contains(&live.code()), "{}", live.stderr());
    let err = live.stderr();
    eprintln!("{err}");
    assert!(err.contains("round 1: final round (downtime): no prediction yet"), "{err}");
    assert!(err.contains("round 2: final round (downtime) predicted: "), "{err}");
    let stats = live.stats.as_ref().unwrap();
    let rounds = stats["rounds"].as_array().unwrap();
    let predicted = rounds.last().unwrap()["predicted_final_round_s"].as_f64().expect("a prediction");
    assert!(predicted.is_finite() && predicted >= 0.0, "{predicted}");
    // The downtime: the database stops, the final round runs.
    pg.stop();
    let last = sync(&pg.data, server.url("copy"), &["-q", "--delete"]);
    assert!([0, 24].contains(&last.code()), "{}", last.stderr());
    let measured = last.stats.as_ref().unwrap()["duration_s"].as_f64().unwrap();
    let sent = |r: &serde_json::Value| r["bytes_transferred"].as_u64().unwrap();
    eprintln!(
        "live rounds: {} (content sent per round: {:?}); final round predicted {predicted:.2} s, measured {measured:.2} s \
         ({} of content sent)",
        rounds.len(),
        rounds.iter().map(sent).collect::<Vec<_>>(),
        sent(last.stats.as_ref().unwrap()),
    );
    // The copy is a database that starts and holds what the source held.
    let copy = srv.join("copy");
    if let Some(user) = &pg.user {
        assert!(Command::new("chown").args(["-R", &format!("{user}:")]).arg(&copy).status().unwrap().success());
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    pg.launch(&copy, port);
    let got = pg.psql(port, balances);
    pg.run("pg_ctl", &["-D", copy.to_str().unwrap(), "-m", "fast", "-w", "stop"]);
    assert_eq!(got, want, "the copy's balances differ from the source's");
    drop(tmp);
}
