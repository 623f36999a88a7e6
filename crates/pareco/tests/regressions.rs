//! One regression test per defect found by trying pareco as a new user
//! would (issue 11): hard links split in the source, future mtimes, URLs
//! that are not `pareco://`, a URL without a path, attribute-only changes in
//! dry runs, verify's first differing byte, failing well when nobody listens
//! or the server stops mid-push; directory attributes whatever wrote into a
//! directory last; partial files an interrupted run left for names that
//! get their entries some other way.

mod support;

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use support::*;

/// How a sync runs: pushed to a server, pulled from one, or local.
#[derive(Clone, Copy, Debug)]
enum Way {
    Push,
    Pull,
    Local,
}

const WAYS: [Way; 3] = [Way::Push, Way::Pull, Way::Local];

/// A source tree, a destination tree, and the server between them if any.
struct Pair {
    _tmp: tempfile::TempDir,
    src: PathBuf,
    dst: PathBuf,
    server: Option<Server>,
    way: Way,
}

impl Pair {
    fn new(way: Way) -> Pair {
        let tmp = tempfile::tempdir().unwrap();
        let (src, dst, root) = match way {
            Way::Push => (tmp.path().join("src"), tmp.path().join("srv/copy"), Some(tmp.path().join("srv"))),
            Way::Pull => (tmp.path().join("srv/tree"), tmp.path().join("dst"), Some(tmp.path().join("srv"))),
            Way::Local => (tmp.path().join("src"), tmp.path().join("dst"), None),
        };
        std::fs::create_dir_all(&src).unwrap();
        let server = root.map(|root| {
            std::fs::create_dir_all(&root).unwrap();
            Server::start(&root)
        });
        Pair { _tmp: tmp, src, dst, server, way }
    }

    fn ends(&self) -> (String, String) {
        let local = |p: &Path| p.to_string_lossy().into_owned();
        match (self.way, &self.server) {
            (Way::Push, Some(s)) => (local(&self.src), s.url("copy")),
            (Way::Pull, Some(s)) => (s.url("tree"), local(&self.dst)),
            _ => (local(&self.src), local(&self.dst)),
        }
    }

    fn sync(&self, extra: &[&str]) -> Run {
        let (src, dst) = self.ends();
        sync(src, dst, extra)
    }

    fn verify(&self, extra: &[&str]) -> Run {
        let (src, dst) = self.ends();
        verify(src, dst, extra)
    }
}

fn write(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

fn append(path: &Path, data: &[u8]) {
    use std::io::Write;
    std::fs::OpenOptions::new().append(true).open(path).unwrap().write_all(data).unwrap();
}

/// `cp -p`: a separate file with the same content, mode and mtime.
fn copy_keeping_mtime(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
    let m = std::fs::metadata(from).unwrap();
    set_mtime(to, m.mtime(), m.mtime_nsec());
}

// ---- 1. the copy's link structure equals the source's ----------------------

#[test]
fn a_hard_link_split_in_the_source_is_split_in_the_copy() {
    for way in WAYS {
        for extra in [&[][..], &["-c"][..]] {
            let t = Pair::new(way);
            write(&t.src.join("a"), b"content\n");
            std::fs::hard_link(t.src.join("a"), t.src.join("b")).unwrap();
            write(&t.src.join("d/big"), &bytes(1, 3 << 20));
            std::fs::hard_link(t.src.join("d/big"), t.src.join("big2")).unwrap();
            age(&t.src);
            t.sync(&["-q"]).ok();
            assert_same_tree_and_links(&t.src, &t.dst);

            // Split both links: each name a separate file of the same content.
            for (a, b) in [("a", "b"), ("d/big", "big2")] {
                std::fs::remove_file(t.src.join(b)).unwrap();
                copy_keeping_mtime(&t.src.join(a), &t.src.join(b));
            }
            let run = t.sync(&[&["--delete", "-v"][..], extra].concat()).ok();
            assert_same_tree_and_links(&t.src, &t.dst);
            assert!(run.stdout().contains("split"), "{way:?} {extra:?}: {}", run.stdout());
            assert_eq!(run.stat("bytes_transferred"), 0, "{way:?} {extra:?}: the content was there already");
            // Writing to one name of the copy no longer changes the other.
            append(&t.dst.join("b"), b"more\n");
            append(&t.dst.join("big2"), b"more\n");
            assert_eq!(std::fs::read(t.dst.join("a")).unwrap(), b"content\n");
            assert_eq!(std::fs::read(t.dst.join("d/big")).unwrap(), bytes(1, 3 << 20));

            // Nothing left to split.
            t.sync(&["-q"]).ok();
            assert_same_tree_and_links(&t.src, &t.dst);
            let again = t.sync(&[&["-v"][..], extra].concat()).ok();
            assert!(!again.stdout().contains("split") && !again.stdout().contains("hardlink"), "{}", again.stdout());
            t.verify(&[]).ok();
        }
    }
}

#[test]
fn the_link_structure_follows_links_added_moved_and_replaced() {
    for way in WAYS {
        let t = Pair::new(way);
        let (s, d) = (&t.src, &t.dst);
        for name in ["a", "c", "e"] {
            write(&s.join(name), b"same content");
        }
        write(&s.join("g"), &bytes(2, 200_000));
        std::fs::hard_link(s.join("a"), s.join("b")).unwrap();
        std::fs::hard_link(s.join("e"), s.join("f")).unwrap();
        std::fs::hard_link(s.join("g"), s.join("h")).unwrap();
        age(&t.src);
        t.sync(&["-q"]).ok();
        assert_same_tree_and_links(s, d);

        // Added (c joins a), moved (f leaves e for g), and a linked name
        // replaced by a file (h) and by a directory (b).
        std::fs::remove_file(s.join("c")).unwrap();
        std::fs::hard_link(s.join("a"), s.join("c")).unwrap();
        std::fs::remove_file(s.join("f")).unwrap();
        std::fs::hard_link(s.join("g"), s.join("f")).unwrap();
        std::fs::remove_file(s.join("h")).unwrap();
        write(&s.join("h"), &bytes(3, 200_000));
        std::fs::remove_file(s.join("b")).unwrap();
        write(&s.join("b/inside"), b"x");
        age(&t.src);
        t.sync(&["-q", "--delete"]).ok();
        assert_same_tree_and_links(s, d);
        t.verify(&[]).ok();
        append(&d.join("h"), b"!");
        assert_eq!(std::fs::read(d.join("g")).unwrap(), bytes(2, 200_000), "{way:?}: h still linked to g");
    }
}

/// A snapshot made with `cp -al` (every file a new name of one the
/// destination has) is made of links there: no content travels, whichever
/// name the walk meets first.
#[test]
fn new_names_of_files_the_destination_has_are_linked_not_sent() {
    for way in WAYS {
        let t = Pair::new(way);
        let (s, d) = (&t.src, &t.dst);
        write(&s.join("m/big"), &bytes(4, 3 << 20));
        write(&s.join("m/small"), b"a small file");
        age(&t.src);
        t.sync(&["-q"]).ok();
        for snapshot in ["a", "z"] {
            for name in ["big", "small"] {
                std::fs::create_dir_all(s.join(snapshot)).unwrap();
                std::fs::hard_link(s.join("m").join(name), s.join(snapshot).join(name)).unwrap();
            }
        }
        // (Not aged again: that would give the files other mtimes.)
        let run = t.sync(&["-q"]).ok();
        assert_eq!(run.stat("bytes_transferred"), 0, "{way:?}");
        assert_same_tree_and_links(s, d);
    }
}

#[test]
fn names_linked_only_at_the_destination_are_split_whatever_their_groups() {
    let t = Pair::new(Way::Push);
    let (s, d) = (&t.src, &t.dst);
    // Two separate groups of the same content in the source...
    for name in ["a", "c", "lone"] {
        write(&s.join(name), &bytes(5, 150_000));
    }
    std::fs::hard_link(s.join("a"), s.join("b")).unwrap();
    std::fs::hard_link(s.join("c"), s.join("d")).unwrap();
    age(s);
    let a = std::fs::metadata(s.join("a")).unwrap();
    for name in ["c", "lone"] {
        set_mtime(&s.join(name), a.mtime(), a.mtime_nsec());
    }
    // ...and all five names one inode at the destination, plus a name
    // outside the synced tree linked to it too.
    write(&d.join("a"), &bytes(5, 150_000));
    set_mtime(&d.join("a"), a.mtime(), a.mtime_nsec());
    for name in ["b", "c", "d", "lone"] {
        std::fs::hard_link(d.join("a"), d.join(name)).unwrap();
    }
    let outside = d.parent().unwrap().join("outside");
    std::fs::hard_link(d.join("a"), &outside).unwrap();
    t.sync(&["-q"]).ok();
    assert_same_tree_and_links(s, d);
    assert_eq!(std::fs::metadata(&outside).unwrap().nlink(), 3, "the outside name keeps one of the groups");

    // A linked file whose content changes is changed for its own group only:
    // never through a name outside the tree.
    let mut changed = bytes(5, 150_000);
    changed[70_000] ^= 1;
    std::fs::write(s.join("a"), &changed).unwrap();
    age(s);
    t.sync(&["-q"]).ok();
    assert_same_tree_and_links(s, d);
    assert_eq!(std::fs::read(&outside).unwrap(), bytes(5, 150_000), "a file outside the tree was changed");
    t.verify(&[]).ok();
}

// ---- 2. future mtimes ------------------------------------------------------

#[test]
fn a_file_with_a_future_mtime_is_copied_once_then_skipped() {
    for way in WAYS {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
        let futures =
            [("year-2100", 4_102_444_800), ("in-10-s", now + 10), ("tomorrow", now + 86_400), ("2030", 1_893_456_000)];
        let t = Pair::new(way);
        for (i, (name, secs)) in futures.iter().enumerate() {
            write(&t.src.join(name), &bytes(i as u64, 1000 + i * 100_000));
            set_mtime(&t.src.join(name), *secs, 123);
        }
        set_mtime(&t.src, now - 3600, 0);
        let first = t.sync(&[]);
        assert_eq!(first.code(), 0, "{way:?}: {}", first.stderr());
        assert_eq!(first.stat("files_changed"), 0);
        assert_same_tree(&t.src, &t.dst);
        for (name, secs) in futures {
            let m = std::fs::metadata(t.dst.join(name)).unwrap();
            assert_eq!((m.mtime(), m.mtime_nsec()), (secs, 123), "{way:?} {name}");
        }
        let second = t.sync(&[]).ok();
        assert_eq!(second.stat("files_transferred"), 0, "{way:?}: the quick check trusts them now");
        assert_eq!(second.stat("bytes_hashed"), 0);
    }
}

// ---- 3, 4. locations -------------------------------------------------------

#[test]
fn a_location_that_looks_like_a_url_is_refused_not_created() {
    let (tmp, src, _) = dirs();
    write(&src.join("f"), b"x");
    let cwd = tmp.path().join("cwd");
    std::fs::create_dir_all(&cwd).unwrap();
    for bad in ["http://h:7700/y", "pareco:/h:7700/y", "s3://bucket/y", "h:/y"] {
        let out = std::process::Command::new(bin())
            .current_dir(&cwd)
            .args([OsStr::new("sync"), src.as_os_str(), OsStr::new(bad)])
            .env("PARECO_TOKEN", TOKEN)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {err}");
        assert!(err.contains("pareco://HOST[:PORT]/PATH") && err.contains("./NAME:"), "{bad}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert_eq!(std::fs::read_dir(&cwd).unwrap().count(), 0, "{bad} created something");
    }
    // A local name with a colon, written as ./NAME:.
    let out = std::process::Command::new(bin())
        .current_dir(&cwd)
        .args([OsStr::new("sync"), OsStr::new("-q"), src.as_os_str(), OsStr::new("./h:y")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(cwd.join("h:y/f")).unwrap(), b"x");
}

#[test]
fn a_url_without_a_path_is_refused_and_dot_names_the_root() {
    let (_tmp, src, srv) = dirs();
    write(&src.join("f"), b"x");
    write(&srv.join("other-tree/precious"), b"keep me");
    let server = Server::start(&srv);
    let root = format!("pareco://127.0.0.1:{}", server.port);
    for url in [root.clone(), format!("{root}/")] {
        let run = sync(&src, &url, &["--delete"]);
        assert_eq!(run.code(), 2, "{url}: {}", run.stderr());
        assert!(run.stderr().contains("no path after the server") && run.stderr().contains("/."), "{}", run.stderr());
    }
    assert!(srv.join("other-tree/precious").exists());
    // Named on purpose, the root is a destination like any other.
    let dry = sync(&src, format!("{root}/."), &["-n", "--delete"]).ok();
    assert!(dry.stdout().contains("delete other-tree"), "{}", dry.stdout());
    assert!(srv.join("other-tree/precious").exists(), "a dry run deleted something");
}

// ---- 5. dry run and -v itemize owner and xattr changes ---------------------

#[test]
fn dry_run_and_verbose_list_owner_and_xattr_only_changes() {
    let (_tmp, src, dst) = dirs();
    write(&src.join("f"), b"f");
    write(&src.join("g"), b"g");
    write(&src.join("h"), b"h");
    age(&src);
    let xattrs = rustix::fs::lsetxattr(src.join("h"), "user.probe", b"1", rustix::fs::XattrFlags::empty()).is_ok();
    let root = rustix::process::geteuid().is_root();
    sync(&src, &dst, &["-q", "-a", "-X"]).ok();

    let mut expected = Vec::new();
    if xattrs {
        rustix::fs::lsetxattr(src.join("f"), "user.k", b"v", rustix::fs::XattrFlags::empty()).unwrap();
        expected.push("attrs  f (xattrs)");
    }
    if root {
        let id = Some(rustix::fs::Uid::from_raw(777));
        rustix::fs::chownat(rustix::fs::CWD, src.join("g"), id, None, rustix::fs::AtFlags::empty()).unwrap();
        expected.push("attrs  g (owner)");
    }
    if expected.is_empty() {
        eprintln!("neither root nor user extended attributes here: nothing to test");
        return;
    }
    let lines = |run: &Run| {
        let mut lines: Vec<String> = run.stdout().lines().map(String::from).collect();
        lines.sort();
        lines
    };
    let dry = sync(&src, &dst, &["-n", "-a", "-X"]).ok();
    assert_eq!(lines(&dry), expected, "{}", dry.stderr());
    let real = sync(&src, &dst, &["-v", "-a", "-X"]).ok();
    assert_eq!(lines(&real), expected);
    let after = sync(&src, &dst, &["-n", "-a", "-X"]).ok();
    assert_eq!(after.stdout(), "", "the real run applied everything");
    verify(&src, &dst, &["-a", "-X"]).ok();

    // A file whose content changes is replaced whole, and the new file gets
    // the owner and extended attributes after: one `update` line says it all.
    write(&src.join("f"), b"new content");
    write(&src.join("g"), b"new content");
    let dry = sync(&src, &dst, &["-n", "-a", "-X"]).ok();
    let real = sync(&src, &dst, &["-v", "-a", "-X"]).ok();
    for run in [&dry, &real] {
        assert_eq!(lines(run), ["update f", "update g"], "{}", run.stderr());
    }
    verify(&src, &dst, &["-a", "-X"]).ok();
}

// ---- 6. verify names the first differing byte ------------------------------

#[test]
fn verify_names_the_exact_first_differing_byte() {
    let (_tmp, src, srv) = dirs();
    let data = bytes(7, 6_000_000);
    for name in ["at-5000000", "at-200000", "at-0", "at-last", "tiny"] {
        let len = if name == "tiny" { 100 } else { data.len() };
        write(&src.join(name), &data[..len]);
    }
    age(&src);
    let server = Server::start(&srv);
    sync(&src, server.url("copy"), &["-q"]).ok();
    let copy = srv.join("copy");
    for (name, at) in
        [("at-5000000", 5_000_000), ("at-200000", 200_000), ("at-0", 0), ("at-last", 5_999_999), ("tiny", 42)]
    {
        let path = copy.join(name);
        let m = std::fs::metadata(&path).unwrap();
        let mut content = std::fs::read(&path).unwrap();
        content[at] ^= 0x40;
        if let Some(later) = content.get_mut(at + 30) {
            *later ^= 0x40; // a later difference too
        }
        std::fs::write(&path, &content).unwrap();
        set_mtime(&path, m.mtime(), m.mtime_nsec());
    }
    let expect = |run: &Run| {
        for (name, at) in [("at-5000000", 5_000_000), ("at-200000", 200_000), ("at-0", 0), ("at-last", 5_999_999)] {
            let line = format!("{name}: content: differs from byte {at}");
            assert!(run.stdout().lines().any(|l| l == line), "missing {line:?} in\n{}", run.stdout());
        }
        assert!(run.stdout().lines().any(|l| l == "tiny: content: differs from byte 42"), "{}", run.stdout());
        assert_eq!(run.code(), 1);
    };
    expect(&verify(&src, &copy, &[]));
    expect(&verify(&src, server.url("copy"), &[]));
    // A server that never sends content can only say which block.
    drop(server);
    let write_only = Server::start_with(&srv, TOKEN, &["--write-only"]);
    let run = verify(&src, write_only.url("copy"), &[]);
    assert!(run.stdout().contains("at-200000: content: differs from a byte in 199680..200192"), "{}", run.stdout());
}

// ---- 7. failing well: nobody listening; each cause once --------------------

#[test]
fn nobody_listening_is_said_at_once_and_retry_for_bounds_the_wait() {
    let (_tmp, src, _) = dirs();
    write(&src.join("f"), b"x");
    let (_held, port) = refusing_port();
    let started = Instant::now();
    let run = sync(&src, format!("pareco://127.0.0.1:{port}/x"), &["--retry-for", "2"]);
    // Not a timing measurement: without the fix this waits for the 30 s
    // default connect timeout.
    assert!(started.elapsed() < Duration::from_secs(20), "--retry-for 2 was not honoured");
    assert_eq!(run.code(), 2);
    let err = run.stderr();
    assert!(err.contains(&format!("waiting for the server at 127.0.0.1:{port}")), "{err}");
    let last = err.lines().last().unwrap();
    assert_eq!(last.matches("refused").count(), 1, "cause said more than once: {last}");
}

#[test]
fn each_cause_of_a_fatal_error_is_said_once() {
    let (_tmp, src, srv) = dirs();
    let missing = run_pareco(&[OsStr::new("sync"), src.join("nope").as_os_str(), srv.as_os_str()]);
    assert_eq!(missing.code(), 2);
    assert_eq!(missing.stderr().matches("No such file or directory").count(), 1, "{}", missing.stderr());
    let server = Server::start(&srv);
    let wrong = sync_with_token(&src, server.url("x"), &[], WRONG_TOKEN);
    assert_eq!(wrong.code(), 2);
    assert_eq!(wrong.stderr().matches("authentication failed").count(), 1, "{}", wrong.stderr());
}

// ---- 8. a server stopped mid-push --------------------------------------------

#[test]
fn a_server_stopped_mid_push_leaves_no_half_made_file_and_says_so_once() {
    let (_tmp, src, srv) = dirs();
    let sizes: Vec<usize> = (0..120).map(|i| 100_000 + (i % 7) * 30_000).collect();
    for (i, size) in sizes.iter().enumerate() {
        write(&src.join(format!("d{}/f{i:03}", i % 3)), &bytes(i as u64, *size));
    }
    write(&src.join("old"), b"there before");
    age(&src);
    let copy = srv.join("copy");
    std::fs::create_dir_all(&copy).unwrap();
    let server = Server::start(&srv);
    sync(src.join("old"), server.url("copy/old"), &["-q"]).ok();
    let port = server.port;
    let wan = Wan::start(port, &["--link-rate", "2M"]);
    let client = std::process::Command::new(bin())
        .args([
            OsStr::new("sync"),
            src.as_os_str(),
            OsStr::new(&wan.url("copy")),
            OsStr::new("--retry-for"),
            OsStr::new("3"),
        ])
        .env("PARECO_TOKEN", TOKEN)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(30), || allocated_bytes(&copy) > 2 << 20), "nothing arrived");
    assert_eq!(server.stop().code(), Some(0), "the server drains and exits");
    let out = client.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let giving_up: Vec<_> = err.lines().filter(|l| l.contains("no connection to the server")).collect();
    assert_eq!(giving_up.len(), 1, "one line for the cause, not one per file:\n{err}");
    assert!(giving_up[0].contains("giving up") && giving_up[0].contains("entries not synced"), "{err}");
    assert!(err.lines().count() <= 3, "{err}");

    // Every file under its final name is whole; the rest is hidden.
    let mut snap = snapshot(&copy);
    snap.retain(|rel, _| !String::from_utf8_lossy(rel).contains(".pareco-tmp."));
    assert!(snap.len() < sizes.len(), "the stop came too late to test anything: {} entries\n{err}", snap.len());
    for (rel, node) in &snap {
        let rel = String::from_utf8_lossy(rel);
        if let Node::File { blake3, .. } = node {
            let want = blake3::hash(&std::fs::read(src.join(&*rel)).unwrap()).to_hex().to_string();
            assert_eq!(blake3, &want, "{rel} is under its final name but not complete");
        }
    }
    // The next run finishes from what arrived, and leaves no temporaries.
    let server = Server::start_on(&srv, port, TOKEN, &[]);
    let done = sync(&src, server.url("copy"), &["-q"]).ok();
    assert!(done.stat("bytes_transferred") < sizes.iter().sum::<usize>() as u64);
    assert_same_tree(&src, &copy);
    let litter: Vec<_> = walk_names(&copy).into_iter().filter(|n| n.contains(".pareco-tmp.")).collect();
    assert!(litter.is_empty(), "{litter:?}");
}

// ---- 9. directory attributes, whatever wrote into a directory last -------

/// A directory's mode and mtime are the source's after a sync whatever wrote
/// into it last: batches of small files (which set them after their writes,
/// saving a round trip at the end), a large file, a symlink, a new
/// subdirectory; in a directory whose mode lacks the owner's write bit (not
/// set early: it would stop the writes after it); and in a directory that
/// was already right and only gains a subdirectory, whose creation moves the
/// directory's mtime (it was left moved before).
#[test]
fn directory_attributes_are_the_source_s_whatever_wrote_into_it_last() {
    for way in WAYS {
        let pair = Pair::new(way);
        let src = &pair.src;
        // 300 files of 700 bytes: two batches or more per directory.
        for dir in ["small", "mixed", "locked", "deep/er"] {
            for i in 0..300 {
                write(&src.join(dir).join(format!("f{i:03}")), &bytes(i, 700));
            }
        }
        write(&src.join("mixed/big"), &bytes(1, 300 << 10));
        std::os::unix::fs::symlink("f000", src.join("mixed/link")).unwrap();
        write(&src.join("mixed/sub/x"), b"x");
        for (dir, mode) in [("small", 0o755), ("mixed", 0o750), ("locked", 0o555), ("deep/er", 0o711)] {
            std::fs::set_permissions(src.join(dir), std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
        }
        age(src);
        pair.sync(&["-q", "-j", "8"]).ok();
        assert_same_tree(src, &pair.dst);

        // Right already, then missing a subdirectory.
        std::fs::remove_dir_all(pair.dst.join("mixed/sub")).unwrap();
        let m = std::fs::metadata(src.join("mixed")).unwrap();
        set_mtime(&pair.dst.join("mixed"), m.mtime(), m.mtime_nsec());
        pair.sync(&["-q"]).ok();
        assert_same_tree(src, &pair.dst);
    }
}

/// A killed run leaves the partial file of a new large file for the next to
/// resume. If the next run makes that name another way (a hard link whose
/// first path is another this time, a file now small, a symlink, a
/// directory, a file already there), the partial file was litter left in
/// the copy (found by CI: a killed shard run again left one); one of a name
/// the source no longer has is extraneous, removed with `--delete`.
#[test]
fn partial_files_an_interrupted_run_left_are_resumed_or_removed() {
    use pareco_proto::{Name, path::partial_name};
    let partial = |rel: &str| {
        let (dir, name) = rel.rsplit_once('/').unwrap();
        let name = partial_name(&Name::new(name.as_bytes()).unwrap());
        format!("{dir}/{}", String::from_utf8_lossy(name.as_bytes()))
    };
    for way in WAYS {
        for shards in [1, 2] {
            let pair = Pair::new(way);
            let (src, dst) = (&pair.src, &pair.dst);
            write(&src.join("d/big"), &bytes(1, 300 << 10));
            write(&src.join("d/small"), &bytes(2, 700));
            write(&src.join("d/same"), &bytes(3, 100 << 10));
            std::os::unix::fs::symlink("big", src.join("d/link")).unwrap();
            write(&src.join("d/sub/x"), b"x");
            write(&src.join("h/one"), &bytes(4, 200 << 10));
            std::fs::create_dir_all(src.join("k")).unwrap();
            std::fs::hard_link(src.join("h/one"), src.join("k/two")).unwrap();
            age(src);
            write(&dst.join("d/same"), &bytes(3, 100 << 10));
            copy_keeping_mtime(&src.join("d/same"), &dst.join("d/same"));
            std::fs::create_dir_all(dst.join("h")).unwrap();
            std::fs::create_dir_all(dst.join("k")).unwrap();
            // What an earlier run killed mid-copy would have left: a start of
            // each file's content under its partial name.
            let left = ["d/big", "d/small", "d/same", "d/link", "d/sub", "h/one", "k/two", "d/gone"];
            for rel in left {
                let content = std::fs::read(src.join(rel)).unwrap_or_else(|_| bytes(5, 100 << 10));
                write(&dst.join(partial(rel)), &content[..content.len().min(64 << 10)]);
            }
            let each_shard = |extra: &[&str]| {
                for i in 0..shards {
                    let shard = format!("{i}/{shards}");
                    pair.sync(&[&["-q", "--shard", &shard], extra].concat()).ok();
                }
            };
            each_shard(&[]);
            let mut copy = snapshot(dst);
            assert!(copy.remove(partial("d/gone").as_bytes()).is_some(), "{way:?}: kept without --delete");
            assert_eq!(snapshot(src), copy, "{way:?}, {shards} shards");
            assert_eq!(link_groups(src), link_groups(dst));
            each_shard(&["--delete"]);
            assert_same_tree_and_links(src, dst);
        }
    }
}

fn allocated_bytes(root: &Path) -> u64 {
    walk_names(root).iter().map(|p| std::fs::symlink_metadata(p).map_or(0, |m| m.blocks() * 512)).sum()
}

/// Every path below `root`, temporaries included.
fn walk_names(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(root) else { return out };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk_names(&path));
        }
        out.push(path.to_string_lossy().into_owned());
    }
    out
}

// ---- 10. a source and a destination that overlap -----------------------------

#[test]
fn overlapping_source_and_destination_are_refused_before_anything_is_written() {
    let (tmp, src, _) = dirs();
    write(&src.join("a/f"), b"f");
    write(&src.join("g"), b"g");
    let before = snapshot(&src);
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&src, &link).unwrap();
    let cases: [(&Path, PathBuf, &[&str], &str); 4] = [
        (&src, src.join("copy"), &[], "is inside the source"),
        (&src, src.join("a/../new/deeper"), &[], "is inside the source"),
        (&link, src.join("copy"), &[], "is inside the source"),
        (&src.join("a"), src.clone(), &["--delete"], "--delete would remove the source itself"),
    ];
    for (from, to, extra, expect) in cases {
        let run = sync(from, &to, extra);
        assert_eq!(run.code(), 2, "{from:?} -> {to:?}: {}", run.stderr());
        assert!(run.stderr().contains(expect), "{}", run.stderr());
        assert_eq!(snapshot(&src), before, "{from:?} -> {to:?} changed the tree");
    }
    // A subdirectory into its parent (without --delete), or a tree onto
    // itself, is no loop.
    sync(src.join("a"), &src, &[]).ok();
    assert_eq!(std::fs::read(src.join("f")).unwrap(), b"f");
    sync(&src, &src, &["--delete"]).ok();
    assert!(src.join("a/f").exists() && src.join("g").exists());
}
