//! End-to-end reliability: syncs through the WAN emulator cutting and
//! refusing connections, a server killed and restarted mid-run, a client
//! killed mid-run and run again. Every run must end byte-identical.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

fn dirs() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let (src, srv) = (tmp.path().join("src"), tmp.path().join("srv"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&srv).unwrap();
    (tmp, src, srv)
}

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
