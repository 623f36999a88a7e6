//! End-to-end: the real binary, a real server on 127.0.0.1, real files.
//! Every destination is checked entry by entry (content hash, mode, mtime).

mod support;

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::time::Duration;

use support::*;

#[test]
fn initial_push_then_noop_resync_transfers_nothing() {
    let (_tmp, src, srv) = dirs();
    awkward_tree(&src);
    age(&src);
    let server = Server::start(&srv);
    let run = sync(&src, server.url("copy"), &["-q"]).ok();
    assert_same_tree(&src, &srv.join("copy"));
    assert_eq!(run.stat("files_total"), 315);
    assert_eq!(run.stat("files_transferred"), 315);
    assert_eq!(run.stat("bytes_transferred"), run.stat("bytes_total"));

    let again = sync(&src, server.url("copy"), &["-q"]).ok();
    assert_eq!(again.stat("bytes_transferred"), 0);
    assert_eq!(again.stat("files_transferred"), 0);
    assert_same_tree(&src, &srv.join("copy"));
}

#[test]
fn initial_pull_copies_the_awkward_tree() {
    let (tmp, _src, srv) = dirs();
    awkward_tree(&srv.join("data"));
    age(&srv.join("data"));
    let server = Server::start(&srv);
    let dst = tmp.path().join("pulled/into/new/dirs");
    let run = sync(server.url("data"), &dst, &["-q"]).ok();
    assert_same_tree(&srv.join("data"), &dst);
    assert!(run.stat("wire_bytes_received") >= run.stat("bytes_total"));
    let again = sync(server.url("data"), &dst, &["-q"]).ok();
    assert_eq!(again.stat("bytes_transferred"), 0);
}

/// Text crosses the wire compressed both ways (big files, small files and
/// listings), random data as it is; `--compress none` sends every byte. The
/// copies are identical either way.
#[test]
fn compressible_data_is_compressed_on_the_wire_both_ways() {
    let (tmp, src, srv) = dirs();
    std::fs::create_dir_all(src.join("small")).unwrap();
    let text: Vec<u8> =
        (0..200_000u32).flat_map(|i| format!("{i}\tpareco\t{}\t2026-11-22\n", i % 97).into_bytes()).collect();
    std::fs::write(src.join("table.tsv"), &text).unwrap();
    std::fs::write(src.join("random.bin"), bytes(9, 2 << 20)).unwrap();
    for i in 0..200 {
        std::fs::write(src.join(format!("small/{i}.log")), &text[i * 1000..i * 1000 + 8000]).unwrap();
    }
    age(&src);
    let payload = (text.len() + (2 << 20) + 200 * 8000) as u64;
    let server = Server::start(&srv);
    for (mode, copy) in [("auto", "auto"), ("zstd:9", "zstd"), ("none", "none")] {
        let push = sync(&src, server.url(copy), &["-q", "--compress", mode]).ok();
        let pulled = tmp.path().join(format!("pulled-{copy}"));
        let pull = sync(server.url(copy), &pulled, &["-q", "--compress", mode]).ok();
        assert_same_tree(&src, &srv.join(copy));
        assert_same_tree(&src, &pulled);
        assert_eq!(push.stat("bytes_transferred"), payload);
        let (sent, received) = (push.stat("wire_bytes_sent"), pull.stat("wire_bytes_received"));
        if mode == "none" {
            assert!(sent > payload && received > payload, "{mode}: {sent} sent, {received} received");
        } else {
            // The random 2 MiB cannot shrink; the rest shrinks several times.
            let most = (2 << 20) + (payload - (2 << 20)) / 3;
            assert!(sent < most && received < most, "{mode}: {sent} sent, {received} received of {payload}");
        }
    }
}

/// Two 4 KiB pages changed in different chunks of an 8 MiB file: only those
/// two blocks travel, both pushing and pulling.
#[test]
fn delta_resync_sends_only_the_changed_pages() {
    let (tmp, src, srv) = dirs();
    std::fs::create_dir_all(&src).unwrap();
    let mut data = bytes(7, 8 << 20);
    std::fs::write(src.join("db"), &data).unwrap();
    age(&src);
    let server = Server::start(&srv);
    let pulled = tmp.path().join("pulled");
    sync(&src, server.url("db"), &["-q"]).ok();
    sync(server.url("db"), &pulled, &["-q"]).ok();

    data[3 * 4096 + 100] ^= 1; // page 3 of chunk 0
    data[(5 << 20) + 7 * 4096] ^= 1; // page 7 of chunk 5
    std::fs::write(src.join("db"), &data).unwrap();
    age(&src);

    let push = sync(&src, server.url("db"), &["-q"]).ok();
    assert_same_tree(&src, &srv.join("db"));
    assert_eq!(push.stat("blocks_sent"), 2);
    assert_eq!(push.stat("bytes_transferred"), 8192);
    assert_eq!(push.stat("chunks_matched"), 6);
    assert_eq!(push.stat("chunks_sent"), 2);
    // Everything on the wire, both ways: digests, two blocks, overhead.
    let wire = push.stat("wire_bytes_sent") + push.stat("wire_bytes_received");
    assert!(wire < 64 << 10, "{wire} bytes on the wire for 8 KiB of changes");

    let pull = sync(server.url("db"), &pulled, &["-q"]).ok();
    assert_same_tree(&srv.join("db"), &pulled);
    assert_eq!((pull.stat("blocks_sent"), pull.stat("bytes_transferred")), (2, 8192));
}

#[test]
fn files_are_truncated_and_extended_to_the_source_size() {
    let (_tmp, src, srv) = dirs();
    std::fs::create_dir_all(&src).unwrap();
    let long = bytes(1, 3 << 20);
    std::fs::write(src.join("shrinks"), &long).unwrap();
    std::fs::write(src.join("grows"), &long[..(1 << 20) + 5]).unwrap();
    std::fs::write(src.join("small-grows-big"), b"tiny").unwrap();
    age(&src);
    let server = Server::start(&srv);
    sync(&src, server.url("t"), &["-q"]).ok();

    std::fs::write(src.join("shrinks"), &long[..(1 << 20) + 3]).unwrap();
    std::fs::write(src.join("grows"), &long).unwrap();
    std::fs::write(src.join("small-grows-big"), &long[..200_000]).unwrap();
    age(&src);
    let run = sync(&src, server.url("t"), &["-q"]).ok();
    assert_same_tree(&src, &srv.join("t"));
    // The unchanged prefix of "grows" was matched, not sent.
    assert!(run.stat("bytes_transferred") < (2 << 20) + 200_000 + 4096, "{}", run.stat("bytes_transferred"));
}

#[test]
fn delete_removes_extraneous_entries_only_inside_the_target() {
    let (_tmp, src, srv) = dirs();
    awkward_tree(&src);
    age(&src);
    std::fs::create_dir_all(srv.join("neighbour")).unwrap();
    std::fs::write(srv.join("neighbour/keep"), b"not ours").unwrap();
    let server = Server::start(&srv);
    sync(&src, server.url("t"), &["-q"]).ok();

    let t = srv.join("t");
    std::fs::write(t.join("extra-file"), b"x").unwrap();
    std::fs::create_dir_all(t.join("extra-dir/sub/sub")).unwrap();
    std::fs::write(t.join("extra-dir/sub/sub/f"), b"x").unwrap();
    symlink(srv.join("neighbour"), t.join("extra-link")).unwrap();
    std::fs::write(t.join("many/extra"), b"x").unwrap();

    // Without --delete, extraneous entries stay.
    sync(&src, server.url("t"), &["-q"]).ok();
    assert!(t.join("extra-file").exists());

    let run = sync(&src, server.url("t"), &["-q", "--delete"]).ok();
    assert_eq!(run.stat("entries_deleted"), 4);
    assert_same_tree(&src, &t);
    assert_eq!(std::fs::read(srv.join("neighbour/keep")).unwrap(), b"not ours");
}

#[test]
fn dry_run_lists_changes_and_writes_nothing() {
    let (_tmp, src, srv) = dirs();
    awkward_tree(&src);
    age(&src);
    let server = Server::start(&srv);
    sync(&src, server.url("t"), &["-q"]).ok();
    std::fs::write(src.join("plain.txt"), b"changed\n").unwrap();
    std::fs::write(src.join("brand-new"), b"new").unwrap();
    std::fs::remove_file(src.join("empty")).unwrap();
    std::fs::write(srv.join("t/extraneous"), b"x").unwrap();
    set_mtime(&src.join("plain.txt"), 1_500_000_000, 0);
    set_mtime(&src.join("brand-new"), 1_500_000_000, 0);

    let before = snapshot(&srv);
    let run = sync(&src, server.url("t"), &["-n", "--delete"]).ok();
    assert_eq!(snapshot(&srv), before, "a dry run changed the destination");
    let out = run.stdout();
    for line in ["update plain.txt", "new    brand-new", "delete empty", "delete extraneous"] {
        assert!(out.lines().any(|l| l == line), "missing {line:?} in:\n{out}");
    }
    assert!(!out.contains("many/"), "unchanged entries are not listed:\n{out}");

    // A dry run into a destination that does not exist creates nothing.
    sync(&src, server.url("nowhere/deeper"), &["-n", "-q"]).ok();
    assert!(!srv.join("nowhere").exists());
}

#[test]
fn symlinks_are_copied_as_links_and_never_followed_at_the_destination() {
    let (tmp, src, srv) = dirs();
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("sub/file"), b"must land inside the target").unwrap();
    symlink("/", src.join("root-link")).unwrap();
    age(&src);
    // The destination has a symlink where the source has a directory, and
    // a symlink where the source has a file: both point outside.
    std::fs::create_dir_all(srv.join("t")).unwrap();
    symlink(&outside, srv.join("t/sub")).unwrap();
    std::fs::write(outside.join("victim"), b"precious").unwrap();
    symlink(outside.join("victim"), srv.join("t/root-link")).unwrap();

    let server = Server::start(&srv);
    sync(&src, server.url("t"), &["-q"]).ok();
    assert_same_tree(&src, &srv.join("t"));
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1, "nothing was written outside");
    assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"precious");
}

/// Runs `change` on another thread 1.5 s from now: within a 4 MiB copy at
/// 1 MiB/s.
fn in_the_middle_of_the_copy(change: impl FnOnce() + Send + 'static) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        change();
    })
}

#[test]
fn a_file_modified_during_the_copy_is_reported_and_recopied_by_the_next_run() {
    let (_tmp, src, srv) = dirs();
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("live.db"), bytes(1, 4 << 20)).unwrap();
    age(&src);
    let server = Server::start(&srv);
    // 4 MiB at 1 MiB/s: the copy takes about four seconds.
    let wan = Wan::start(server.port, &["--link-rate", "1M"]);
    let path = src.join("live.db");
    let writer = in_the_middle_of_the_copy(move || {
        let mut data = std::fs::read(&path).unwrap();
        data[10] ^= 0xff;
        std::fs::write(&path, data).unwrap();
    });
    let run = sync(&src, wan.url("t"), &["-q"]);
    writer.join().unwrap();
    assert_eq!(run.code(), 24, "{}", run.stderr());
    assert!(run.stderr().contains("live.db: changed while being copied"), "{}", run.stderr());
    assert_eq!(run.stat("files_changed"), 1);
    // New at the destination, it is not put in place (it may mix two
    // versions): its partial file stays, the basis of the next run.
    assert!(!srv.join("t/live.db").exists(), "a copy that mixes versions is under the real name");
    let partial = std::fs::read_dir(srv.join("t")).unwrap().count();
    assert_eq!(partial, 1, "the partial file is kept");

    // The next run resumes from it and puts it in place.
    drop(wan);
    let again = sync(&src, server.url("t"), &["-q"]).ok();
    assert_same_tree(&src, &srv.join("t"));
    assert!(again.stat("bytes_transferred") < 2 << 20, "{:?}", again.stats);
}

/// A tree of `files` (`size` bytes each) pushed to a server, or pulled from
/// one, over a 1 MiB/s link, with `change` made to it in the middle of the
/// copy.
struct MidCopy {
    _tmp: tempfile::TempDir,
    tree: std::path::PathBuf,
    dst: std::path::PathBuf,
    server: Server,
    pull: bool,
}

impl MidCopy {
    /// The copy, and how its run went.
    fn run(pull: bool, files: &[&str], size: usize, change: impl FnOnce(&Path) + Send + 'static) -> (MidCopy, Run) {
        let (tmp, src, srv) = dirs();
        let tree = if pull { srv.join("tree") } else { src };
        std::fs::create_dir_all(&tree).unwrap();
        for name in files {
            std::fs::write(tree.join(name), bytes(1, size)).unwrap();
        }
        age(&tree);
        let dst = if pull { tmp.path().join("pulled") } else { srv.join("t") };
        let copy = MidCopy { _tmp: tmp, tree, dst, server: Server::start(&srv), pull };
        let wan = Wan::start(copy.server.port, &["--link-rate", "1M"]);
        let dir = copy.tree.clone();
        let changer = in_the_middle_of_the_copy(move || change(&dir));
        let run = copy.sync(|path| wan.url(path), &["-q"]);
        changer.join().unwrap();
        (copy, run)
    }

    /// Syncs once more at full speed; the copy is then the tree.
    fn again(&self, extra: &[&str]) {
        self.sync(|path| self.server.url(path), extra).ok();
        assert_same_tree(&self.tree, &self.dst);
    }

    fn sync(&self, url: impl Fn(&str) -> String, extra: &[&str]) -> Run {
        match self.pull {
            true => sync(url("tree"), &self.dst, extra),
            false => sync(&self.tree, url("t"), extra),
        }
    }
}

/// A new file replaced by rename while it is copied (an editor's save, a
/// dump written aside and moved over) never lands under its name as a mix
/// of the two files, pushed or pulled.
#[test]
fn a_file_replaced_by_rename_during_the_copy_is_not_put_in_place() {
    for pull in [false, true] {
        let (copy, run) = MidCopy::run(pull, &["dump"], 4 << 20, |dir| {
            std::fs::write(dir.join(".dump.new"), bytes(2, 4 << 20)).unwrap();
            std::fs::rename(dir.join(".dump.new"), dir.join("dump")).unwrap();
        });
        assert_eq!(run.code(), 24, "pull={pull}: {}", run.stderr());
        assert!(!copy.dst.join("dump").exists(), "pull={pull}: a mix of two files is under the real name");
        age(&copy.tree);
        copy.again(&["-q"]);
    }
}

#[test]
fn files_replaced_by_a_symlink_or_a_fifo_during_the_copy_are_changes_not_failures_or_hangs() {
    for pull in [false, true] {
        // (Opening a fifo to read would wait for a writer that never comes.)
        let (copy, run) = MidCopy::run(pull, &["to-link", "to-fifo"], 3 << 20, |dir| {
            std::fs::remove_file(dir.join("to-link")).unwrap();
            std::os::unix::fs::symlink("elsewhere", dir.join("to-link")).unwrap();
            std::fs::remove_file(dir.join("to-fifo")).unwrap();
            let fifo = rustix::fs::FileType::Fifo;
            rustix::fs::mknodat(rustix::fs::CWD, dir.join("to-fifo"), fifo, rustix::fs::Mode::from(0o644), 0).unwrap();
        });
        assert_eq!(run.code(), 24, "pull={pull}: {}", run.stderr());
        for name in ["to-link", "to-fifo"] {
            assert!(run.stderr().contains(&format!("{name}: changed while being copied")), "{}", run.stderr());
        }
        assert_eq!(run.stat("files_changed"), 2);
        copy.again(&["-q", "--specials"]);
    }
}

/// The racy timestamp problem: a change that lands in the same clock tick as
/// the version being copied leaves the mtime unchanged. pareco does not read
/// a file before its mtime has settled, so the second version is the one
/// copied, and a later quick check is right to trust the mtime.
#[test]
fn a_change_within_the_same_timestamp_is_not_missed() {
    let (_tmp, src, srv) = dirs();
    std::fs::create_dir_all(&src).unwrap();
    let server = Server::start(&srv);
    for (name, size) in [("small", 1000), ("large", 3 << 20)] {
        let path = src.join(name);
        std::fs::write(&path, bytes(1, size)).unwrap();
        let m = std::fs::metadata(&path).unwrap();
        let (secs, nanos) = (std::os::unix::fs::MetadataExt::mtime(&m), std::os::unix::fs::MetadataExt::mtime_nsec(&m));
        let child = std::process::Command::new(bin())
            .args(["sync", "-q"])
            .arg(&src)
            .arg(server.url(name))
            .env("PARECO_TOKEN", TOKEN)
            .spawn()
            .unwrap();
        // Same size, same mtime (as if written in the same tick), other content.
        std::thread::sleep(Duration::from_millis(300));
        std::fs::write(&path, bytes(2, size)).unwrap();
        set_mtime(&path, secs, nanos);
        let _ = child.wait_with_output().unwrap();
        sync(&src, server.url(name), &["-q"]).ok();
        assert_same_tree(&src, &srv.join(name));
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
fn a_wrong_or_missing_token_is_refused_and_nothing_is_written() {
    let (_tmp, src, srv) = dirs();
    awkward_tree(&src);
    let server = Server::start(&srv);
    let run = sync_with_token(&src, server.url("t"), &["-q"], WRONG_TOKEN);
    assert_eq!(run.code(), 2);
    assert!(run.stderr().contains("authentication failed"), "{}", run.stderr());
    let output = std::process::Command::new(bin())
        .arg("sync")
        .arg(&src)
        .arg(server.url("t"))
        .env_remove("PARECO_TOKEN")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("PARECO_TOKEN"));
    assert_eq!(std::fs::read_dir(&srv).unwrap().count(), 0);
    assert!(wait_until(Duration::from_secs(5), || server.log().contains("authentication failed")), "{}", server.log());
}

#[test]
fn paths_that_escape_the_server_root_are_refused() {
    let (tmp, src, srv) = dirs();
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"payload").unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    symlink(&outside, srv.join("link-out")).unwrap();
    let server = Server::start(&srv);

    for target in ["../outside", "a/../../outside", "link-out", "link-out/sub"] {
        let run = sync(&src, server.url(target), &["-q"]);
        assert_ne!(run.code(), 0, "{target} was accepted");
    }
    std::fs::write(outside.join("secret"), b"outside the root").unwrap();
    let pull = sync(server.url("link-out/secret"), tmp.path().join("pulled"), &["-q"]);
    assert_ne!(pull.code(), 0);
    assert!(!tmp.path().join("pulled").exists());
    // Pulling the link itself copies the link, not what it points to.
    sync(server.url("link-out"), tmp.path().join("link-copy"), &["-q"]).ok();
    assert_eq!(std::fs::read_link(tmp.path().join("link-copy")).unwrap(), outside);
    std::fs::remove_file(outside.join("secret")).unwrap();
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "something was written outside the root");
}

#[test]
fn single_files_sync_to_a_path_or_into_a_directory() {
    let (tmp, src, srv) = dirs();
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("one"), bytes(5, 100_000)).unwrap();
    std::fs::set_permissions(src.join("one"), std::fs::Permissions::from_mode(0o640)).unwrap();
    age(&src);
    std::fs::create_dir_all(srv.join("existing-dir")).unwrap();
    let server = Server::start(&srv);
    sync(src.join("one"), server.url("renamed"), &["-q"]).ok();
    sync(src.join("one"), server.url("existing-dir"), &["-q"]).ok();
    sync(server.url("renamed"), tmp.path().join("back"), &["-q"]).ok();
    let want = &snapshot(&src)[&b"one".to_vec()];
    assert_eq!(&snapshot(&srv)[&b"renamed".to_vec()], want);
    assert_eq!(&snapshot(&srv)[&b"existing-dir/one".to_vec()], want);
    assert_eq!(&snapshot(tmp.path())[&b"back".to_vec()], want);
}

#[test]
fn kind_changes_replace_destination_entries() {
    let (_tmp, src, srv) = dirs();
    std::fs::create_dir_all(src.join("was-file")).unwrap();
    std::fs::write(src.join("was-file/inside"), b"x").unwrap();
    std::fs::write(src.join("was-dir"), b"now a file").unwrap();
    symlink("target", src.join("was-big-file")).unwrap();
    std::fs::write(src.join("was-link"), bytes(3, 200_000)).unwrap();
    symlink("target", src.join("was-dir-too")).unwrap();
    age(&src);
    let t = srv.join("t");
    std::fs::create_dir_all(t.join("was-dir/with/content")).unwrap();
    std::fs::create_dir_all(t.join("was-dir-too/x")).unwrap();
    std::fs::write(t.join("was-file"), b"old").unwrap();
    std::fs::write(t.join("was-big-file"), bytes(4, 300_000)).unwrap();
    symlink("elsewhere", t.join("was-link")).unwrap();
    let server = Server::start(&srv);

    // A directory in the way of a file needs --delete; the other entries
    // are synced all the same.
    let run = sync(&src, server.url("t"), &["-q"]);
    assert_eq!(run.code(), 1);
    assert!(run.stderr().contains("was-dir: a directory is in the way"), "{}", run.stderr());
    assert!(run.stderr().contains("was-dir-too: a directory is in the way"), "{}", run.stderr());
    assert_eq!(run.stat("errors"), 2);
    assert_eq!(std::fs::read(t.join("was-file/inside")).unwrap(), b"x");
    assert_eq!(std::fs::read(t.join("was-link")).unwrap(), bytes(3, 200_000));
    // A directory that gives way goes with all it holds: said as a deletion,
    // in a dry run as in the real one.
    let said = |run: &Run| {
        let lines: Vec<Vec<String>> =
            run.stdout().lines().map(|l| l.split_whitespace().map(str::to_string).collect()).collect();
        let mut deleted: Vec<_> = lines.iter().filter(|w| w[0] == "delete").map(|w| w[1].clone()).collect();
        deleted.sort();
        (deleted, run.stat("entries_deleted"))
    };
    let want = (vec!["was-dir".to_string(), "was-dir-too".to_string()], 2);
    let dry = sync(&src, server.url("t"), &["-n", "--delete"]).ok();
    assert_eq!(said(&dry), want, "{}", dry.stdout());
    assert!(t.join("was-dir/with/content").is_dir() && t.join("was-dir-too/x").is_dir());
    let run = sync(&src, server.url("t"), &["-v", "--delete"]).ok();
    assert_eq!(said(&run), want, "{}", run.stdout());
    assert_same_tree(&src, &t);
}

#[test]
fn checksum_mode_fixes_metadata_without_resending_equal_content() {
    let (_tmp, src, srv) = dirs();
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("big"), bytes(9, 3 << 20)).unwrap();
    std::fs::write(src.join("small"), b"same").unwrap();
    age(&src);
    let server = Server::start(&srv);
    sync(&src, server.url("t"), &["-q"]).ok();
    // Same content, different mtimes at the destination.
    set_mtime(&srv.join("t/big"), 1_000_000_000, 0);
    set_mtime(&srv.join("t/small"), 1_000_000_000, 0);
    let run = sync(&src, server.url("t"), &["-q", "--checksum"]).ok();
    assert_eq!(run.stat("bytes_transferred"), 0);
    assert_same_tree(&src, &srv.join("t"));
    // And a same-size, same-mtime change is found only by --checksum.
    std::fs::write(srv.join("t/small"), b"SAME").unwrap();
    let m = std::fs::metadata(src.join("small")).unwrap();
    set_mtime(
        &srv.join("t/small"),
        std::os::unix::fs::MetadataExt::mtime(&m),
        std::os::unix::fs::MetadataExt::mtime_nsec(&m),
    );
    sync(&src, server.url("t"), &["-q"]).ok();
    assert_ne!(snapshot(&src), snapshot(&srv.join("t")));
    sync(&src, server.url("t"), &["-q", "-c"]).ok();
    assert_same_tree(&src, &srv.join("t"));
}

#[test]
fn special_files_are_skipped_with_a_warning() {
    let (_tmp, src, srv) = dirs();
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("regular"), b"r").unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        src.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    age(&src);
    let server = Server::start(&srv);
    let run = sync(&src, server.url("t"), &["-q"]).ok();
    assert!(run.stderr().contains("fifo: skipped: fifo"), "{}", run.stderr());
    assert_eq!(run.stat("warnings"), 1);
    assert!(srv.join("t/regular").exists() && !srv.join("t/fifo").exists());
}

#[test]
fn local_to_local_sync_works_too() {
    let (tmp, src, _srv) = dirs();
    awkward_tree(&src);
    age(&src);
    let dst = tmp.path().join("local-copy");
    sync(&src, &dst, &["-q"]).ok();
    assert_same_tree(&src, &dst);
}

#[test]
fn the_server_drains_and_exits_cleanly_on_sigterm() {
    let (_tmp, _src, srv) = dirs();
    let server = Server::start(&srv);
    let status = server.stop();
    assert!(status.success(), "{status:?}");
}

/// A file whose mtime never settles (it is written all the time) is read
/// again a few times, then copied without its mtime and reported; one that
/// disappears meanwhile is reported as vanished.
#[test]
fn unsettled_and_vanishing_files_are_reported() {
    let (_tmp, src, srv) = dirs();
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("busy"), b"written all the time").unwrap();
    std::fs::write(src.join("steady"), b"steady").unwrap();
    age(&src);
    // Written a moment ago: waited for (their mtime must settle), and gone
    // meanwhile.
    std::fs::write(src.join("doomed"), b"about to vanish").unwrap();
    std::fs::write(src.join("doomed-big"), bytes(1, 200_000)).unwrap();
    // (Just under a second ahead: unsettled for the longest, two seconds.)
    let soon = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap() + Duration::from_millis(990);
    for name in ["doomed", "doomed-big"] {
        set_mtime(&src.join(name), soon.as_secs() as i64, soon.subsec_nanos() as i64);
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (writer, killer) = {
        let (busy, stop) = (src.join("busy"), stop.clone());
        let writer = std::thread::spawn(move || {
            for i in 0u64.. {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                std::fs::write(&busy, format!("version {i}")).unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let (src, started) = (src.clone(), srv.join("t"));
        let killer = std::thread::spawn(move || {
            // Once the sync has made its destination (it lists the source
            // next), within the second it waits for their mtimes to settle.
            assert!(wait_until(Duration::from_secs(30), || started.exists()));
            std::thread::sleep(Duration::from_millis(200));
            std::fs::remove_file(src.join("doomed")).unwrap();
            std::fs::remove_file(src.join("doomed-big")).unwrap();
        });
        (writer, killer)
    };
    let server = Server::start(&srv);
    let run = sync(&src, server.url("t"), &["-q"]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    killer.join().unwrap();
    writer.join().unwrap();
    assert_eq!(run.code(), 24, "{}", run.stderr());
    let err = run.stderr();
    assert!(err.contains("busy: changed while being copied"), "{err}");
    assert!(err.contains("doomed: vanished from the source"), "{err}");
    assert!(err.contains("doomed-big: vanished from the source"), "{err}");
    assert_eq!((run.stat("files_changed"), run.stat("files_vanished"), run.stat("errors")), (1, 2, 0));
    // The busy file is there (some moment of it: the writer truncates, then
    // writes), without the source's mtime: the next run compares it again.
    let busy = std::fs::read_to_string(srv.join("t/busy")).unwrap();
    assert!(busy.is_empty() || busy.starts_with("version "), "{busy:?}");
    assert_eq!(std::fs::read(srv.join("t/steady")).unwrap(), b"steady");
    assert!(!srv.join("t/doomed-big").exists(), "nothing half-made under the real name");
}

/// Directories missing above the destination are made 0o755 (as `mkdir -p`
/// under the usual umask), for a tree and for a single file; the tree's own
/// root gets the source's mode.
#[test]
fn missing_parents_of_the_destination_are_made_readable() {
    use std::os::unix::fs::PermissionsExt;
    let (_tmp, src, srv) = dirs();
    std::fs::write(src.join("f"), b"f").unwrap();
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o750)).unwrap();
    let server = Server::start(&srv);
    sync(&src, server.url("p1/p2/p3"), &["-q"]).ok();
    sync(src.join("f"), server.url("q1/q2/f"), &["-q"]).ok();
    assert_same_tree(&src, &srv.join("p1/p2/p3"));
    assert_eq!(std::fs::read(srv.join("q1/q2/f")).unwrap(), b"f");
    let mode = |p: &str| std::fs::metadata(srv.join(p)).unwrap().permissions().mode() & 0o7777;
    for dir in ["p1", "p1/p2", "q1", "q1/q2"] {
        assert_eq!(mode(dir), 0o755, "{dir}");
    }
    assert_eq!(mode("p1/p2/p3"), 0o750);
}

/// On a long link the data kept in flight grows past the 8 MiB a run
/// starts with (8 MiB per 200 ms round trip is at most 40 MiB/s), and `-v`
/// says so.
#[test]
fn verbose_says_how_the_data_in_flight_grows_on_a_long_link() {
    let (_tmp, src, srv) = dirs();
    std::fs::write(src.join("big"), bytes(5, 48 << 20)).unwrap();
    let server = Server::start(&srv);
    let wan = Wan::start(server.port, &["--delay-ms", "100"]);
    let run = sync(&src, wan.url("t"), &["-v", "-j", "16"]).ok();
    assert_same_tree(&src, &srv.join("t"));
    assert!(run.stderr().contains("pareco: data in flight: 8.0 MiB -> 16.0 MiB ("), "{}", run.stderr());
}

/// `-j auto` (the default), on a link where each connection gets 512 KiB/s:
/// the count grows past the 8 it starts with, `-v` says how it moved, the
/// stats say the most open at once, and the copy is exact.
#[test]
fn auto_connections_grow_where_each_connection_is_capped() {
    let (_tmp, src, srv) = dirs();
    std::fs::create_dir_all(src.join("small")).unwrap();
    std::fs::write(src.join("big"), bytes(3, 24 << 20)).unwrap();
    for i in 0..200 {
        std::fs::write(src.join(format!("small/{i}")), bytes(i, 4096)).unwrap();
    }
    let server = Server::start(&srv);
    let wan = Wan::start(server.port, &["--conn-rate", "512K", "--delay-ms", "5"]);
    let run = sync(&src, wan.url("t"), &["-v"]).ok();
    assert_same_tree(&src, &srv.join("t"));
    let connections = run.stat("connections");
    assert!(connections > 8, "kept {connections} connections\n{}", run.stderr());
    assert!(run.stderr().contains("connections: 8 -> "), "{}", run.stderr());
    assert!(run.stderr().contains(&format!("over {connections} connections")), "{}", run.stderr());
}
