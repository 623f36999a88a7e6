//! Shared parts of the end-to-end tests: the real `pareco` binary, a real
//! server on 127.0.0.1 port 0, the WAN emulator, and trees compared entry by
//! entry (type, mode, mtime to the nanosecond, BLAKE3 of content, link target).
#![allow(dead_code)]

pub mod postgres;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

pub const TOKEN: &str = "e2e-test-token-5d41402abc4b2a76";
/// A token of the same strength that is not [`TOKEN`].
pub const WRONG_TOKEN: &str = "not-the-token-9f86d081884c7d65";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_pareco")
}

/// A `pareco serve` process; killed (SIGTERM) on drop.
pub struct Server {
    child: Child,
    pub port: u16,
    pub stderr: PathBuf,
}

impl Server {
    pub fn start(root: &Path) -> Server {
        Server::start_with(root, TOKEN, &[])
    }

    pub fn start_with(root: &Path, token: &str, extra: &[&str]) -> Server {
        Server::start_on(root, 0, token, extra)
    }

    /// A server on a given port (0: any free one).
    pub fn start_on(root: &Path, port: u16, token: &str, extra: &[&str]) -> Server {
        let stderr = root.with_extension(format!("serve-{}-{port}.log", std::process::id()));
        let mut child = Command::new(bin())
            .args(["serve", "--root"])
            .arg(root)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(extra)
            .env("PARECO_TOKEN", token)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("start pareco serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line
            .trim()
            .strip_prefix("listening on 127.0.0.1:")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        Server { child, port, stderr }
    }

    pub fn url(&self, path: &str) -> String {
        format!("pareco://127.0.0.1:{}/{path}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the server to drain and exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        terminate(&mut self.child)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let pid = rustix::process::Pid::from_child(child);
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    child.wait().unwrap()
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            terminate(&mut self.child);
        }
        let _ = std::fs::remove_file(&self.stderr);
    }
}

/// A finished `pareco sync` run.
pub struct Run {
    pub output: Output,
    pub stats: Option<serde_json::Value>,
}

impl Run {
    pub fn code(&self) -> i32 {
        self.output.status.code().unwrap_or(-1)
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub fn stat(&self, name: &str) -> u64 {
        self.stats.as_ref().and_then(|s| s[name].as_u64()).unwrap_or_else(|| panic!("no stat {name}"))
    }

    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(self.code(), 0, "pareco failed:\n{}", self.stderr());
        self
    }
}

/// Runs `pareco sync` with the test token and extra arguments; collects
/// the JSON statistics.
pub fn sync(src: impl AsRef<OsStr>, dst: impl AsRef<OsStr>, extra: &[&str]) -> Run {
    sync_with_token(src, dst, extra, TOKEN)
}

pub fn sync_with_token(src: impl AsRef<OsStr>, dst: impl AsRef<OsStr>, extra: &[&str], token: &str) -> Run {
    pareco("sync", src, dst, extra, token)
}

/// Runs `pareco verify A B` with the test token and extra arguments.
pub fn verify(a: impl AsRef<OsStr>, b: impl AsRef<OsStr>, extra: &[&str]) -> Run {
    pareco("verify", a, b, extra, TOKEN)
}

/// Runs `pareco COMMAND SRC DST --stats-json FILE EXTRA…`; collects the statistics.
pub fn pareco(command: &str, src: impl AsRef<OsStr>, dst: impl AsRef<OsStr>, extra: &[&str], token: &str) -> Run {
    let stats = tempfile::NamedTempFile::new().unwrap();
    let output = Command::new(bin())
        .arg(command)
        .arg(src)
        .arg(dst)
        .arg("--stats-json")
        .arg(stats.path())
        .args(extra)
        .env("PARECO_TOKEN", token)
        .output()
        .unwrap();
    let text = std::fs::read_to_string(stats.path()).unwrap_or_default();
    Run { output, stats: serde_json::from_str(&text).ok() }
}

/// What a tree looks like, entry by entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    File { mode: u32, mtime: (i64, i64), blake3: String, size: u64 },
    Dir { mode: u32, mtime: (i64, i64) },
    Link { target: Vec<u8>, mtime: (i64, i64) },
    Special { mode: u32, mtime: (i64, i64) },
}

pub type Snapshot = BTreeMap<Vec<u8>, Node>;

/// Entries below `root` now, counted while something may be writing there
/// (entries that vanish as they are looked at are not counted).
pub fn count_entries(root: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(root) else { return 0 };
    entries
        .flatten()
        .map(|e| 1 + if e.file_type().is_ok_and(|t| t.is_dir()) { count_entries(&e.path()) } else { 0 })
        .sum()
}

/// Every entry below `root` (not following symlinks), keyed by relative path.
pub fn snapshot(root: &Path) -> Snapshot {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut Snapshot) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let rel = path.strip_prefix(root).unwrap().as_os_str().as_bytes().to_vec();
        let m = std::fs::symlink_metadata(&path).unwrap();
        let mtime = (m.mtime(), m.mtime_nsec());
        let mode = m.permissions().mode() & 0o7777;
        let node = if m.file_type().is_symlink() {
            Node::Link { target: std::fs::read_link(&path).unwrap().as_os_str().as_bytes().to_vec(), mtime }
        } else if m.is_dir() {
            walk(root, &path, out);
            Node::Dir { mode, mtime }
        } else if !m.is_file() {
            Node::Special { mode, mtime }
        } else {
            let hash = blake3::hash(&std::fs::read(&path).unwrap()).to_hex().to_string();
            Node::File { mode, mtime, blake3: hash, size: m.len() }
        };
        out.insert(rel, node);
    }
}

/// Asserts two trees are identical, naming the first differences.
#[track_caller]
pub fn assert_same_tree(src: &Path, dst: &Path) {
    let (a, b) = (snapshot(src), snapshot(dst));
    if a == b {
        return;
    }
    let mut diffs = Vec::new();
    for (k, v) in &a {
        match b.get(k) {
            None => diffs.push(format!("missing at destination: {}", String::from_utf8_lossy(k))),
            Some(w) if w != v => diffs.push(format!("{}: source {v:?}, destination {w:?}", String::from_utf8_lossy(k))),
            _ => {}
        }
    }
    for k in b.keys().filter(|k| !a.contains_key(*k)) {
        diffs.push(format!("extra at destination: {}", String::from_utf8_lossy(k)));
    }
    // Directory mtimes are compared too, but report content first.
    panic!(
        "trees differ ({} differences):\n{}",
        diffs.len(),
        diffs.into_iter().take(20).collect::<Vec<_>>().join("\n")
    );
}

/// Sets the mtime of `path` itself (not following symlinks).
pub fn set_mtime(path: &Path, secs: i64, nanos: i64) {
    let t = rustix::fs::Timespec { tv_sec: secs, tv_nsec: nanos as _ };
    let times = rustix::fs::Timestamps { last_access: t, last_modification: t };
    rustix::fs::utimensat(rustix::fs::CWD, path, &times, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).unwrap();
}

/// Moves every mtime in the tree an hour into the past, so that syncs of a
/// tree just written need not wait for its timestamps to settle.
/// Each call gives different mtimes (the nanoseconds of the current time).
pub fn age(root: &Path) {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap();
    let (an_hour_ago, nanos) = (now.as_secs() as i64 - 3600, now.subsec_nanos() as i64);
    let mut paths: Vec<_> = snapshot(root).into_keys().map(|k| root.join(OsStr::from_bytes(&k))).collect();
    // Deepest first, so that setting a file's time does not move its directory's.
    paths.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, p) in paths.iter().enumerate() {
        set_mtime(p, an_hour_ago - i as i64, nanos);
    }
    set_mtime(root, an_hour_ago, nanos);
}

/// Deterministic pseudo-random bytes.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut counter = 0u64;
    while out.len() < len {
        let mut h = blake3::Hasher::new();
        h.update(&seed.to_le_bytes());
        h.update(&counter.to_le_bytes());
        let mut reader = h.finalize_xof();
        let mut block = [0u8; 4096];
        reader.fill(&mut block);
        out.extend_from_slice(&block);
        counter += 1;
    }
    out.truncate(len);
    out
}

/// A tree with everything that tends to break copy tools: odd names, empty
/// files and directories, symlinks (dangling, absolute, escaping), modes,
/// files larger than a chunk and a batch.
pub fn awkward_tree(root: &Path) {
    let w = |rel: &[u8], data: &[u8]| {
        let p = root.join(OsStr::from_bytes(rel));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
    };
    std::fs::create_dir_all(root).unwrap();
    w(b"plain.txt", b"hello\n");
    w(b"empty", b"");
    w(b"with space and \xc3\xa9t\xc3\xa9 \xe2\x9c\x93", b"unicode");
    w(b"new\nline", b"newline in name");
    w(b"not-utf8-\xff\xfe", b"raw bytes in name");
    w(b"-starts-with-dash", b"dash");
    w(b".hidden", b"dot");
    w(b"deep/a/b/c/d/e/f/leaf", b"leaf");
    w(b"big/2.5MiB.bin", &bytes(1, 5 << 19));
    w(b"big/exactly-1MiB.bin", &bytes(2, 1 << 20));
    w(b"big/64KiB+1.bin", &bytes(3, (64 << 10) + 1));
    w(b"big/64KiB.bin", &bytes(4, 64 << 10));
    for i in 0..300 {
        w(format!("many/file-{i:03}").as_bytes(), format!("small file {i}\n").as_bytes());
    }
    std::fs::create_dir_all(root.join("empty-dir")).unwrap();
    std::fs::create_dir_all(root.join("modes/locked")).unwrap();
    w(b"modes/read-only", b"r");
    w(b"modes/exec.sh", b"#!/bin/sh\n");
    w(b"modes/private", b"p");
    symlink("../plain.txt", root.join("deep/link-to-plain")).unwrap();
    symlink("/etc/passwd", root.join("absolute-link")).unwrap();
    symlink("does/not/exist", root.join("dangling-link")).unwrap();
    symlink("../../../../outside", root.join("escaping-link")).unwrap();
    symlink("deep", root.join("dir-link")).unwrap();
    for (p, mode) in
        [("modes/read-only", 0o444), ("modes/exec.sh", 0o755), ("modes/private", 0o600), ("modes/locked", 0o500)]
    {
        std::fs::set_permissions(root.join(p), std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

/// A WAN emulator proxy in front of `target_port`; killed on drop.
pub struct Wan {
    child: Child,
    pub port: u16,
    pub stats: PathBuf,
}

impl Wan {
    pub fn start(target_port: u16, args: &[&str]) -> Wan {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/wanem.py");
        let stats = std::env::temp_dir().join(format!("wanem-{}-{target_port}.json", std::process::id()));
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--listen", "127.0.0.1:0", "--target"])
            .arg(format!("127.0.0.1:{target_port}"))
            .arg("--stats")
            .arg(&stats)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start wanem.py (python3)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.split_whitespace().nth(1).unwrap_or_else(|| panic!("wanem said {line:?}")).parse().unwrap();
        Wan { child, port, stats }
    }

    pub fn url(&self, path: &str) -> String {
        format!("pareco://127.0.0.1:{}/{path}", self.port)
    }

    /// The emulator's counters (written every `--stats-interval`, and at exit).
    pub fn stats(&self) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(&self.stats).unwrap_or_default()).unwrap_or_default()
    }

    /// Stops the emulator; its final counters.
    pub fn stop(mut self) -> serde_json::Value {
        terminate(&mut self.child);
        self.stats()
    }
}

impl Drop for Wan {
    fn drop(&mut self) {
        terminate(&mut self.child);
        let _ = std::fs::remove_file(&self.stats);
    }
}

/// A temporary directory holding two empty directories, `src` and `srv`
/// (a source tree and a server root, or a local destination).
pub fn dirs() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let (src, srv) = (tmp.path().join("src"), tmp.path().join("srv"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&srv).unwrap();
    (tmp, src, srv)
}

/// Waits until `cond` holds or `limit` passes.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// A TCP proxy in front of `target_port` that records every byte it
/// forwards, both directions, into one buffer; it can also flip one bit on
/// the way to the server.
pub struct Recorder {
    pub port: u16,
    captured: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Recorder {
    pub fn start(target_port: u16) -> Recorder {
        Recorder::start_flipping(target_port, usize::MAX)
    }

    /// Flips the lowest bit of byte `at` of the client's bytes to the server
    /// (all connections counted together, in the order they are forwarded).
    pub fn start_flipping(target_port: u16, at: usize) -> Recorder {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let captured = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let shared = captured.clone();
        let upstream = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target_port)) else { continue };
                for (mut from, mut to, to_server) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap(), true),
                    (server.try_clone().unwrap(), client.try_clone().unwrap(), false),
                ] {
                    let (shared, upstream) = (shared.clone(), upstream.clone());
                    std::thread::spawn(move || {
                        use std::io::{Read, Write};
                        let mut buf = [0u8; 64 << 10];
                        while let Ok(n) = from.read(&mut buf) {
                            if to_server {
                                let before = upstream.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
                                if (before..before + n).contains(&at) {
                                    buf[at - before] ^= 1;
                                }
                            }
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                            shared.lock().unwrap().extend_from_slice(&buf[..n]);
                        }
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        Recorder { port, captured }
    }

    pub fn url(&self, path: &str) -> String {
        format!("pareco://127.0.0.1:{}/{path}", self.port)
    }

    /// Whether `needle` appears anywhere in what was recorded.
    pub fn saw(&self, needle: &[u8]) -> bool {
        self.captured.lock().unwrap().windows(needle.len()).any(|w| w == needle)
    }

    pub fn len(&self) -> usize {
        self.captured.lock().unwrap().len()
    }
}

/// The hard-link structure of a tree: the sets of paths (relative, two or
/// more) that share an inode.
pub fn link_groups(root: &Path) -> std::collections::BTreeSet<std::collections::BTreeSet<Vec<u8>>> {
    let mut by_inode: BTreeMap<(u64, u64), std::collections::BTreeSet<Vec<u8>>> = BTreeMap::new();
    for (rel, node) in snapshot(root) {
        if let Node::File { .. } = node {
            let m = std::fs::symlink_metadata(root.join(OsStr::from_bytes(&rel))).unwrap();
            by_inode.entry((m.dev(), m.ino())).or_default().insert(rel);
        }
    }
    by_inode.into_values().filter(|g| g.len() > 1).collect()
}

/// Asserts that two trees are identical and linked the same way.
#[track_caller]
pub fn assert_same_tree_and_links(src: &Path, dst: &Path) {
    assert_same_tree(src, dst);
    assert_eq!(link_groups(src), link_groups(dst), "hard-link structure differs");
}

/// Runs the pareco binary with arbitrary arguments and the test token.
pub fn run_pareco(args: &[&OsStr]) -> Run {
    let output = Command::new(bin()).args(args).env("PARECO_TOKEN", TOKEN).output().unwrap();
    Run { output, stats: None }
}

/// One end of a stream, as a child process whose stderr is collected.
pub struct End {
    pub child: Child,
    stderr: Arc<Mutex<String>>,
    /// The port it listens on (listening ends only).
    pub port: u16,
}

impl End {
    /// `pareco send|recv ARGS`, with the given standard input and output.
    pub fn spawn(command: &str, args: &[&str], stdin: Stdio, stdout: Stdio, token: &str) -> End {
        End::spawn_with(command, args, stdin, stdout, token, &[])
    }

    /// The same, with more environment variables.
    pub fn spawn_with(
        command: &str,
        args: &[&str],
        stdin: Stdio,
        stdout: Stdio,
        token: &str,
        env: &[(&str, String)],
    ) -> End {
        let mut child = Command::new(bin())
            .arg(command)
            .args(args)
            .env("PARECO_TOKEN", token)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(stdin)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .expect("start pareco");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut lines = BufReader::new(child.stderr.take().unwrap());
        let mut port = 0;
        if args.contains(&"--listen") {
            let mut line = String::new();
            lines.read_line(&mut line).unwrap();
            port = line
                .trim()
                .strip_prefix("listening on 127.0.0.1:")
                .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
                .parse()
                .unwrap();
        }
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = lines.read_to_string(&mut rest);
            sink.lock().unwrap().push_str(&rest);
        });
        End { child, stderr, port }
    }

    pub fn url(&self) -> String {
        format!("pareco://127.0.0.1:{}", self.port)
    }

    /// Waits for the exit; returns the status and everything said on stderr.
    pub fn finish(mut self) -> (ExitStatus, String) {
        let status = self.child.wait().unwrap();
        // The reader thread ends with the pipe; give it a moment to store.
        wait_until(Duration::from_secs(5), || Arc::strong_count(&self.stderr) == 1);
        let stderr = self.stderr.lock().unwrap().clone();
        (status, stderr)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
    }
}

impl Drop for End {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn file_in(path: &Path) -> Stdio {
    Stdio::from(std::fs::File::open(path).unwrap())
}

pub fn file_out(path: &Path) -> Stdio {
    Stdio::from(std::fs::File::create(path).unwrap())
}

pub fn hash(path: &Path) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(std::fs::File::open(path).unwrap()).unwrap();
    hasher.finalize()
}

/// Text that compresses well (a log-like mix of words and numbers).
pub fn text(len: usize) -> Vec<u8> {
    const WORDS: [&str; 8] = ["checkpoint", "replica", "segment", "vacuum", "page", "wal", "commit", "index"];
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0u64;
    while out.len() < len {
        let word = WORDS[(i.wrapping_mul(2654435761) >> 7) as usize % WORDS.len()];
        out.extend_from_slice(format!("{i:08} {word} lsn={:x}\n", i * 8192).as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

/// A stream of `mib` MiB: two thirds text, one third random, interleaved in
/// 4 MiB runs so that every part of the stream mixes both.
pub fn mixed(dir: &Path, mib: usize) -> PathBuf {
    let path = dir.join("input");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    for run in 0..mib / 4 {
        let part = if run % 3 == 2 { bytes(run as u64, 4 << 20) } else { text(4 << 20) };
        file.write_all(&part).unwrap();
    }
    file.write_all(&bytes(99, 12345)).unwrap();
    file.flush().unwrap();
    path
}

/// The JSON a run wrote with --stats-json.
pub fn stats(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A real S3 API server (moto's, from PyPI `moto[server]`, which
/// scripts/test installs) on 127.0.0.1; killed on drop.
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    pub fn start() -> Moto {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start moto_server ({e}): scripts/test installs it (pip install 'moto[server]')")
            });
        let moto = Moto { child, port };
        assert!(
            wait_until(Duration::from_secs(30), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()),
            "moto_server did not start listening on port {port}"
        );
        moto
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket (moto does not check signatures: a bare PUT does).
    pub fn bucket(&self, name: &str) {
        self.bare("PUT", name, "200");
    }

    /// Removes an empty bucket.
    pub fn remove_bucket(&self, name: &str) {
        self.bare("DELETE", name, "204");
    }

    fn bare(&self, method: &str, name: &str, status: &str) {
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            conn,
            "{method} /{name} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with(&format!("HTTP/1.1 {status}")), "{method} bucket {name}: {answer}");
    }

    /// The environment a client needs (AWS_ENDPOINT_URL may be another
    /// address, such as the WAN emulator's in front of this server).
    pub fn env(endpoint: &str) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "test-key".into()),
            ("AWS_SECRET_ACCESS_KEY", "test-secret".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT_URL", endpoint.into()),
        ]
    }

    /// An S3 client of its own, to look at and tamper with the bucket.
    pub fn client(&self, bucket: &str) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region("us-east-1")
            .with_access_key_id("test-key")
            .with_secret_access_key("test-secret")
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .build()
            .unwrap()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port on 127.0.0.1 where nobody listens: a socket bound to it that
/// never listens, so that connections are refused and no other test's
/// server can take the port while the socket lives (a port merely found
/// free could be, by a test running alongside).
pub fn refusing_port() -> (rustix::fd::OwnedFd, u16) {
    use rustix::net::{AddressFamily, SocketType};
    let fd = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
    rustix::net::bind(&fd, &std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = std::net::SocketAddrV4::try_from(rustix::net::getsockname(&fd).unwrap()).unwrap();
    (fd, addr.port())
}
