//! End-to-end reliability: syncs through the WAN emulator cutting and
//! refusing connections, a server killed and restarted mid-run, a client
//! killed mid-run and run again. Every run must end byte-identical.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

/// A 64 MiB tree: two 16 MiB files and 1,000 files of 32 KiB in 10 directories.
fn tree_64m(src: &Path) -> u64 {
    for i in 0..2 {
        std::fs::write(src.join(format!("big{i}.bin")), bytes(i, 16 << 20)).unwrap();
    }
    for d in 0..10 {
        let dir = src.join(format!("d{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            std::fs::write(dir.join(format!("f{f}")), bytes(100 + d * 100 + f, 32 << 10)).unwrap();
        }
    }
    age(src);
    64 << 20
}

#[test]
fn a_connection_cut_every_second_loses_nothing() {
    let (_tmp, src, srv) = dirs();
    tree_64m(&src);
    let server = Server::start(&srv);
    let wan = Wan::start(server.port, &["--cut-every", "1", "--conn-rate", "2M", "--delay-ms", "5"]);
    let run = sync(&src, wan.url("copy"), &["-q", "-j", "8"]).ok();
    assert_same_tree(&src, &srv.join("copy"));
    assert!(run.stat("reconnects") >= 1, "{:?}", run.stats);
    drop(wan);
    let again = sync(&src, server.url("copy"), &["-q"]).ok();
    assert_eq!(again.stat("files_transferred"), 0);
}

#[test]
fn refused_and_cut_after_connections_are_retried() {
    let (_tmp, src, srv) = dirs();
    tree_64m(&src);
    let server = Server::start(&srv);
    // Every first attempt refused: the pool keeps trying.
    let wan = Wan::start(server.port, &["--refuse-first", "3"]);
    sync(&src, wan.url("refused"), &["-q", "-j", "2"]).ok();
    assert_same_tree(&src, &srv.join("refused"));
    drop(wan);
    // Every connection cut after 4 MiB: progress continues on new ones.
    let wan = Wan::start(server.port, &["--cut-after", "4M", "--cut-jitter", "0.5"]);
    let run = sync(&src, wan.url("cut"), &["-q", "-j", "4"]).ok();
    assert_same_tree(&src, &srv.join("cut"));
    assert!(run.stat("reconnects") >= 10, "{:?}", run.stats);
}

#[test]
fn a_server_killed_and_restarted_mid_run_is_waited_for() {
    let (_tmp, src, srv) = dirs();
    tree_64m(&src);
    let server = Server::start(&srv);
    let port = server.port;
    // Slow enough that the run is still going when the server dies.
    let wan = Wan::start(port, &["--conn-rate", "1M", "--delay-ms", "5"]);
    let client = Command::new(bin())
        .args(["sync", "-q", "-j", "8"])
        .arg(&src)
        .arg(wan.url("copy"))
        .env("PARECO_TOKEN", TOKEN)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(30), || du(&srv) > 8 << 20), "the sync did not start");
    server.kill();
    std::thread::sleep(Duration::from_millis(1500));
    let _server = Server::start_on(&srv, port, TOKEN, &[]);
    let out = client.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_same_tree(&src, &srv.join("copy"));
}

/// A process killed mid-write leaves `.pareco-tmp.<pid>.<n>` behind. Such
/// names are never listed (so never copied, deleted by plan or verified),
/// and the next process that writes into that directory removes those of
/// dead processes; a live process's temporary is left alone.
#[test]
fn temporaries_left_by_a_killed_process_are_hidden_and_cleaned_up() {
    let (_tmp, src, srv) = dirs();
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/new"), b"new").unwrap();
    age(&src);
    let mut gone = Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    let dst = srv.join("copy");
    std::fs::create_dir_all(dst.join("d")).unwrap();
    let stale = dst.join(format!("d/.pareco-tmp.{dead}.3"));
    let live = dst.join(format!("d/.pareco-tmp.{}.4", std::process::id()));
    std::fs::write(&stale, b"half a file").unwrap();
    std::fs::write(&live, b"being written").unwrap();
    // A source holding temporaries (it was itself a destination) does not copy them.
    std::fs::write(src.join(format!("d/.pareco-tmp.{dead}.5")), b"partial").unwrap();

    let server = Server::start(&srv);
    let run = sync(&src, server.url("copy"), &["-q", "--delete"]).ok();
    assert_eq!(run.stat("entries_deleted"), 0, "{:?}", run.stats);
    assert!(!stale.exists(), "the dead process's temporary is still there");
    assert!(live.exists(), "a live process's temporary was removed");
    assert_eq!(std::fs::read(dst.join("d/new")).unwrap(), b"new");
    assert!(!dst.join(format!("d/.pareco-tmp.{dead}.5")).exists());
    verify(&src, &dst, &[]).ok();
}

/// Only names of pareco's own forms are hidden: the user's files and
/// directories that merely begin with `.pareco-tmp.` are copied, verified
/// and deleted like any other.
#[test]
fn names_that_only_look_like_temporaries_are_copied_and_deleted() {
    let (_tmp, src, srv) = dirs();
    let users = [".pareco-tmp.c/d", ".pareco-tmp.notes", ".pareco-tmp.12.3.bak", ".pareco-tmp.part.x"];
    for name in users {
        let path = src.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, name).unwrap();
    }
    age(&src);
    let dst = srv.join("copy");
    std::fs::create_dir_all(dst.join(".pareco-tmp.old")).unwrap();
    std::fs::write(dst.join(".pareco-tmp.old/x"), b"extraneous").unwrap();
    let server = Server::start(&srv);
    let run = sync(&src, server.url("copy"), &["-q", "--delete"]).ok();
    assert_eq!(run.stat("entries_deleted"), 1, "{:?}", run.stats);
    assert!(!dst.join(".pareco-tmp.old").exists());
    assert_same_tree(&src, &dst);
    verify(&src, &dst, &[]).ok();
    std::fs::write(src.join(".pareco-tmp.c/d"), b".pareco-tmp.c/D").unwrap();
    assert_eq!(verify(&src, &dst, &[]).code(), 1, "verify did not see the difference");
}

/// Bytes allocated to regular files below `root` (partial and temporary
/// ones too; what has really arrived, holes not counted).
fn du(root: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fn walk(dir: &Path, total: &mut u64) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => walk(&entry.path(), total),
                Ok(t) if t.is_file() => *total += entry.metadata().map_or(0, |m| m.blocks() * 512),
                _ => {}
            }
        }
    }
    let mut total = 0;
    walk(root, &mut total);
    total
}

#[test]
fn a_client_killed_mid_run_resumes_without_sending_much_again() {
    let (_tmp, src, srv) = dirs();
    let total = tree_64m(&src);
    let server = Server::start(&srv);
    let wan = Wan::start(server.port, &["--conn-rate", "2M", "--delay-ms", "5", "--stats-interval", "0.2"]);
    let mut client = Command::new(bin())
        .args(["sync", "-q", "-j", "8"])
        .arg(&src)
        .arg(wan.url("copy"))
        .env("PARECO_TOKEN", TOKEN)
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(60), || du(&srv) > total * 2 / 5), "the sync did not get far");
    client.kill().unwrap(); // SIGKILL
    client.wait().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let up_before = wan.stats()["up_bytes"].as_u64().unwrap();
    let rerun = sync(&src, wan.url("copy"), &["-q", "-j", "8"]).ok();
    assert_same_tree(&src, &srv.join("copy"));
    // What the rerun sent beyond what was still missing.
    let arrived = total.saturating_sub(rerun.stat("bytes_transferred"));
    let resent = (up_before + rerun.stat("bytes_transferred")).saturating_sub(total);
    eprintln!("before the kill {up_before} bytes went up; the rerun sent {}", rerun.stat("bytes_transferred"));
    assert!(arrived > total / 4, "only {arrived} bytes had arrived: the test killed too early");
    assert!(resent <= arrived / 10 + (2 << 20), "{resent} bytes sent twice of {arrived} that had arrived");
}

/// A `pareco serve` started through `sh -c PREFIX; exec pareco serve …`
/// (for limits set by the shell); returns the child and its port.
fn serve_via_shell(prefix: &str, root: &Path) -> (std::process::Child, u16) {
    serve_via_shell_with(prefix, "", root)
}

/// The same, the server run through `wrapper` (e.g. setpriv).
fn serve_via_shell_with(prefix: &str, wrapper: &str, root: &Path) -> (std::process::Child, u16) {
    use std::io::BufRead;
    let script = format!("{prefix}; exec {wrapper} {} serve --root '{}' --listen 127.0.0.1:0", bin(), root.display());
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .env("PARECO_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let port = line.trim().rsplit(':').next().unwrap().parse().unwrap_or_else(|_| panic!("server said {line:?}"));
    (child, port)
}

/// Pushes a tree with one file too big for the destination; checks the
/// error names a path and the cause, an existing file is untouched, and the
/// server goes on serving once space is freed. With a size limit (as
/// opposed to a full disk) the other files must arrive too.
fn full_destination(srv: &Path, port: u16, expect: &str, others_fit: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("small")).unwrap();
    std::fs::write(src.join("big.bin"), bytes(1, 12 << 20)).unwrap();
    for i in 0..20 {
        std::fs::write(src.join(format!("small/f{i}")), bytes(i, 4096)).unwrap();
    }
    age(&src);
    std::fs::create_dir_all(srv.join("copy")).unwrap();
    std::fs::write(srv.join("copy/keep.txt"), b"precious").unwrap();
    let url = format!("pareco://127.0.0.1:{port}/copy");
    let run = sync(&src, &url, &[]);
    assert_eq!(run.code(), 1, "{}", run.stderr());
    let err = run.stderr();
    assert!(err.contains(expect), "{err}");
    if others_fit {
        assert!(err.contains("big.bin"), "{err}");
        for i in 0..20 {
            assert_eq!(std::fs::read(srv.join(format!("copy/small/f{i}"))).unwrap(), bytes(i, 4096));
        }
    }
    assert_eq!(std::fs::read(srv.join("copy/keep.txt")).unwrap(), b"precious");
    // What did not fit is not there half-made, and gave its space back.
    let names: Vec<_> = std::fs::read_dir(srv.join("copy")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(!names.iter().any(|n| n == "big.bin" || n.to_string_lossy().contains(".pareco-tmp.")), "{names:?}");
    // Space freed, the same server finishes the job.
    std::fs::remove_file(src.join("big.bin")).unwrap();
    sync(&src, &url, &["-q"]).ok();
    assert_eq!(std::fs::read(srv.join("copy/small/f7")).unwrap(), bytes(7, 4096));
}

#[test]
fn a_full_destination_names_the_file_and_damages_nothing() {
    // Without root: the file size limit stands in for a full disk.
    let (_tmp, _src, srv) = dirs();
    let (mut child, port) = serve_via_shell("ulimit -f 16384; trap '' XFSZ", &srv);
    full_destination(&srv, port, "File too large", true);
    let _ = child.kill();
    let _ = child.wait();

    // As root, a real full filesystem: a 6 MiB tmpfs.
    if !rustix::process::geteuid().is_root() {
        return;
    }
    let (_tmp, _src, mnt) = dirs();
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=6m", "tmpfs"]).arg(&mnt).status();
    if !mounted.is_ok_and(|s| s.success()) {
        eprintln!("cannot mount a tmpfs here; the size limit case above stands in");
        return;
    }
    let (mut child, port) = serve_via_shell("true", &mnt);
    full_destination(&mnt, port, "No space left", false);
    let _ = child.kill();
    let _ = child.wait();
    let _ = Command::new("umount").arg(&mnt).status();
}

/// A file whose content shifted is rebuilt beside its old version; where the
/// disk has no room for both, the old version is updated in place instead.
#[test]
fn a_rebuild_without_room_for_a_second_copy_updates_in_place() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("not root: cannot mount a small filesystem; nothing to test");
        return;
    }
    let (_tmp, src, mnt) = dirs();
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=6m", "tmpfs"]).arg(&mnt).status();
    if !mounted.is_ok_and(|s| s.success()) {
        eprintln!("cannot mount a tmpfs here; nothing to test");
        return;
    }
    let mut data = bytes(4, 3_600_000);
    std::fs::write(src.join("dump"), &data).unwrap();
    age(&src);
    let server = Server::start(&mnt);
    sync(&src, server.url("copy"), &["-q"]).ok();
    data.splice(100_000..100_000, *b"0123456789");
    std::fs::write(src.join("dump"), &data).unwrap();
    age(&src);
    let run = sync(&src, server.url("copy"), &["-q"]).ok();
    assert_same_tree(&src, &mnt.join("copy"));
    assert!(run.stat("bytes_transferred") > 3_000_000, "sent in place after the rebuild found no room");
    let names: Vec<_> = std::fs::read_dir(mnt.join("copy")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["dump"], "the partial file gave its space back");
    drop(server);
    let _ = Command::new("umount").arg(&mnt).status();
}

#[test]
fn an_unreadable_source_file_is_reported_and_the_others_are_synced() {
    use std::os::unix::fs::PermissionsExt;
    let (tmp, src, srv) = dirs();
    std::fs::write(src.join("ok.txt"), b"fine").unwrap();
    std::fs::write(src.join("secret.txt"), b"no").unwrap();
    std::fs::write(src.join("big.bin"), bytes(2, 3 << 20)).unwrap();
    std::fs::set_permissions(src.join("secret.txt"), std::fs::Permissions::from_mode(0o000)).unwrap();
    age(&src);
    let server = Server::start(&srv);
    let mut command = Command::new(bin());
    // Root reads anything: run the client as nobody instead.
    if rustix::process::geteuid().is_root() {
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        command = Command::new("setpriv");
        command.args(["--reuid=65534", "--regid=65534", "--clear-groups", bin()]);
    }
    let out = command.arg("sync").arg(&src).arg(server.url("copy")).env("PARECO_TOKEN", TOKEN).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("secret.txt") && err.contains("ermission denied"), "{err}");
    assert_eq!(std::fs::read(srv.join("copy/ok.txt")).unwrap(), b"fine");
    assert_eq!(std::fs::read(srv.join("copy/big.bin")).unwrap(), bytes(2, 3 << 20));
    assert!(!srv.join("copy/secret.txt").exists());

    // Live rounds stop once the failure is all that is left, twice.
    let rounds = ["--until-converged", "--converge-bytes", "0", "--max-rounds", "6", "--stats-json", "-"];
    let out = command.args(rounds).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["rounds"].as_array().map(Vec::len), Some(2), "{err}");
    assert!(err.contains("did not converge after 2 round(s): 1 path(s) failed in each of the last two"), "{err}");
}

#[test]
fn a_destination_directory_that_cannot_be_created_is_reported() {
    use std::os::unix::fs::PermissionsExt;
    let (tmp, src, srv) = dirs();
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("sub/a"), b"a").unwrap();
    std::fs::write(src.join("b"), b"b").unwrap();
    age(&src);
    // The destination directory may not be written to: read-only for the
    // server (run as nobody when the tests run as root, whom modes do not stop).
    std::fs::create_dir_all(srv.join("copy")).unwrap();
    std::fs::write(srv.join("copy/b"), b"old").unwrap();
    std::fs::set_permissions(srv.join("copy"), std::fs::Permissions::from_mode(0o555)).unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let wrapper =
        if rustix::process::geteuid().is_root() { "setpriv --reuid=65534 --regid=65534 --clear-groups" } else { "" };
    let (mut child, port) = serve_via_shell_with("true", wrapper, &srv);
    let run = sync(&src, format!("pareco://127.0.0.1:{port}/copy"), &[]);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(run.code(), 1, "{}", run.stderr());
    let err = run.stderr();
    assert!(err.contains("sub") && err.contains("ermission denied"), "{err}");
    assert_eq!(std::fs::read(srv.join("copy/b")).unwrap(), b"old", "nothing else was damaged");
}

#[test]
fn the_server_survives_many_clients_killed_mid_transfer() {
    let (_tmp, src, srv) = dirs();
    tree_64m(&src);
    let server = Server::start(&srv);
    // (Partial files a killed client was writing stay claimed, and open,
    // until the claim's lease runs out: not counted.)
    let fds = || {
        let open = std::fs::read_dir(format!("/proc/{}/fd", server.pid())).unwrap();
        let claimed = |e: &std::fs::DirEntry| {
            std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().contains(".pareco-tmp.part."))
        };
        open.flatten().filter(|e| !claimed(e)).count()
    };
    let baseline = fds();
    for i in 0..20u64 {
        let mut client = Command::new(bin())
            .args(["sync", "-q", "-j", "8"])
            .arg(&src)
            .arg(server.url(&format!("c{}", i % 3)))
            .env("PARECO_TOKEN", TOKEN)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(20 + (i * 37) % 200));
        let _ = client.kill();
        let _ = client.wait();
    }
    // Connections close, their requests finish, their files are closed.
    assert!(
        wait_until(Duration::from_secs(20), || fds() <= baseline + 2),
        "the server holds {} descriptors, {baseline} before",
        fds()
    );
    sync(&src, server.url("c0"), &["-q"]).ok();
    assert_same_tree(&src, &srv.join("c0"));
}

/// Two runs into one destination at once (overlapping cron jobs): each new
/// large file comes out whole, one run's or the other's, with that run's
/// mtime, never a mix of the two; a run waits while the other writes a
/// file. The next run makes the copy exact.
#[test]
fn two_runs_into_one_destination_at_once_never_mix_a_file() {
    use std::os::unix::fs::MetadataExt;
    let (tmp, a, srv) = dirs();
    let b = tmp.path().join("b");
    std::fs::create_dir_all(&b).unwrap();
    for i in 0..4 {
        std::fs::write(a.join(format!("f{i}")), bytes(10 + i, 8 << 20)).unwrap();
        std::fs::write(b.join(format!("f{i}")), bytes(20 + i, 8 << 20)).unwrap();
    }
    age(&a);
    set_mtime(&b, 1_600_000_000, 0);
    for i in 0..4 {
        set_mtime(&b.join(format!("f{i}")), 1_600_000_000, 0);
    }
    let server = Server::start(&srv);
    let wan = Wan::start(server.port, &["--link-rate", "24M"]);
    let url = wan.url("t");
    let (ra, rb) = std::thread::scope(|s| {
        let ta = s.spawn(|| sync(&a, &url, &["-q"]));
        let tb = s.spawn(|| sync(&b, &url, &["-q"]));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    assert_eq!((ra.code(), rb.code()), (0, 0), "{}\n{}", ra.stderr(), rb.stderr());
    let t = srv.join("t");
    for i in 0..4 {
        let (name, got) = (format!("f{i}"), hash(&t.join(format!("f{i}"))));
        let mtime = std::fs::metadata(t.join(&name)).unwrap().mtime();
        let from = [&a, &b].into_iter().find(|side| hash(&side.join(&name)) == got);
        let from = from.unwrap_or_else(|| panic!("{name} is a mix of the two sources"));
        assert_eq!(mtime, std::fs::metadata(from.join(&name)).unwrap().mtime(), "{name}: another run's mtime");
    }
    drop(wan);
    sync(&a, server.url("t"), &["-q"]).ok();
    assert_same_tree(&a, &t);
}
