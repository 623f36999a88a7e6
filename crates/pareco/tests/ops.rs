//! Operability (issue 16): progress without a terminal, Prometheus metrics,
//! completions and the man page, logs for machines, and output that says
//! what is true (dry runs, single files, refused clients, a server that
//! cannot start).

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

/// `GET /metrics` from `addr`: the status line and the body.
fn get(addr: &str, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

/// A parsed exposition: each family's type, and each sample's value by its
/// name with labels (`name{k="v"}`).
#[derive(Debug, Default)]
struct Exposition {
    types: BTreeMap<String, String>,
    samples: BTreeMap<String, f64>,
}

/// Parses the OpenMetrics / Prometheus text format strictly enough that a
/// malformed line fails the test.
fn parse(text: &str) -> Exposition {
    let mut e = Exposition::default();
    assert!(text.ends_with("# EOF\n"), "no # EOF at the end:\n{text}");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("bad TYPE line {line:?}"));
            assert!(["counter", "gauge"].contains(&kind), "{line}");
            e.types.insert(name.to_owned(), kind.to_owned());
        } else if line.starts_with("# HELP ") || line == "# EOF" {
        } else {
            let (name, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample line {line:?}"));
            let bare = name.split('{').next().unwrap();
            assert!(bare.starts_with("pareco_"), "{line}");
            assert!(bare.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{line}");
            let family = bare.strip_suffix("_total").filter(|f| e.types.get(*f).is_some_and(|t| t == "counter"));
            assert!(e.types.contains_key(family.unwrap_or(bare)), "a sample before its TYPE: {line}");
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
            e.samples.insert(name.to_owned(), value);
        }
    }
    e
}

impl Exposition {
    #[track_caller]
    fn value(&self, name: &str) -> u64 {
        *self.samples.get(name).unwrap_or_else(|| panic!("no {name} in {:?}", self.samples)) as u64
    }
}

/// The address a command announced with `metrics on HOST:PORT` in `log`.
fn metrics_address(log: &str) -> Option<String> {
    log.lines().find_map(|l| l.strip_prefix("metrics on ")).map(str::to_owned)
}

#[test]
fn a_server_s_metrics_parse_and_its_byte_counters_match_the_client_s_stats() {
    let (_tmp, src, srv) = dirs();
    std::fs::write(src.join("big"), bytes(7, 3 << 20)).unwrap();
    std::fs::write(src.join("small"), b"hello").unwrap();
    age(&src);
    let server = Server::start_with(&srv, TOKEN, &["--metrics-listen", "127.0.0.1:0"]);
    let mut addr = None;
    assert!(wait_until(Duration::from_secs(10), || {
        addr = metrics_address(&server.log());
        addr.is_some()
    }));
    let addr = addr.unwrap();
    let run = sync(&src, server.url("copy"), &["-q", "-j", "4"]).ok();
    // The client has exited, but the server may still be reading what the
    // kernel holds of its last connections: the counters catch up (or the
    // test fails after 10 s).
    let mut metrics = Exposition::default();
    let (sent, received) = (run.stat("wire_bytes_sent"), run.stat("wire_bytes_received"));
    let caught_up = wait_until(Duration::from_secs(10), || {
        let (status, body) = get(&addr, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK");
        metrics = parse(&body);
        metrics.value("pareco_connections") == 0 && metrics.value("pareco_wire_received_bytes_total") >= sent
    });
    assert!(caught_up, "{metrics:?} vs {:?}", run.stats);
    assert_eq!(metrics.types["pareco_wire_received_bytes"], "counter");
    assert_eq!(metrics.types["pareco_connections"], "gauge");
    let extra = metrics.value("pareco_connections_accepted_total") - run.stat("connections");
    if extra == 0 {
        assert_eq!(metrics.value("pareco_wire_received_bytes_total"), sent, "{metrics:?}");
        assert_eq!(metrics.value("pareco_wire_sent_bytes_total"), received, "{metrics:?}");
    } else {
        // A connection the client's pool began to re-open as the process
        // exited (after its statistics were written): only its handshake
        // is on the server's side of the count.
        eprintln!("{extra} connection(s) opened after the client's statistics were taken");
        let over = metrics.value("pareco_wire_received_bytes_total") - sent;
        assert!(over <= 128 * extra, "{over} bytes more than the client sent: {metrics:?}");
        assert!(metrics.value("pareco_wire_sent_bytes_total") - received <= 256 * extra, "{metrics:?}");
    }
    assert!(metrics.value("pareco_requests_total") > 0);
    assert_eq!(metrics.value("pareco_errors_total{kind=\"refused\"}"), 0);
    assert_eq!(get(&addr, "/").0, "HTTP/1.1 404 Not Found");
}

#[test]
fn progress_lines_appear_without_a_terminal_and_metrics_are_served_during_a_sync() {
    let (_tmp, src, srv) = dirs();
    std::fs::write(src.join("big"), bytes(8, 6 << 20)).unwrap();
    for i in 0..20 {
        std::fs::write(src.join(format!("f{i}")), bytes(i, 10_000)).unwrap();
    }
    age(&src);
    let server = Server::start(&srv);
    // A slow link: the sync takes a few seconds.
    let wan = Wan::start(server.port, &["--link-rate", "2M"]);
    let stats = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(bin())
        .args(["sync", "-j", "2", "--progress-interval", "1", "--metrics-listen", "127.0.0.1:0", "--stats-json"])
        .arg(stats.path())
        .arg(&src)
        .arg(wan.url("copy"))
        .env("PARECO_TOKEN", TOKEN)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let addr = metrics_address(&first).unwrap_or_else(|| panic!("first line {first:?}"));
    // Scraped while the first round runs (the link makes it last seconds).
    let (mut body, mut metrics) = (String::new(), Exposition::default());
    assert!(wait_until(Duration::from_secs(10), || {
        let (status, text) = get(&addr, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK");
        (body, metrics) = (text.clone(), parse(&text));
        metrics.value("pareco_round") == 1
    }));
    for (name, kind) in [
        ("pareco_bytes_done", "gauge"),
        ("pareco_bytes", "gauge"),
        ("pareco_files_done", "gauge"),
        ("pareco_files", "gauge"),
        ("pareco_content_sent_bytes", "counter"),
        ("pareco_wire_sent_bytes", "counter"),
        ("pareco_wire_received_bytes", "counter"),
        ("pareco_connections", "gauge"),
        ("pareco_connections_peak", "gauge"),
        ("pareco_retries", "counter"),
        ("pareco_reconnects", "counter"),
        ("pareco_errors", "counter"),
        ("pareco_round", "gauge"),
    ] {
        assert_eq!(metrics.types.get(name).map(String::as_str), Some(kind), "{name} in {body}");
    }
    assert!(metrics.value("pareco_connections") >= 1, "{body}");
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    assert!(child.wait().unwrap().success(), "{rest:?}");
    let progress: Vec<&String> = rest.iter().filter(|l| l.starts_with("pareco: progress: ")).collect();
    assert!(!progress.is_empty(), "no progress line in {rest:?}");
    assert!(progress[0].contains("% ") && progress[0].contains(" files"), "{}", progress[0]);
    // Progress never goes back (a big file leaves "in progress" only as it
    // is counted done).
    let percents: Vec<u32> = progress
        .iter()
        .filter_map(|l| l.strip_prefix("pareco: progress: ")?.split('%').next()?.trim().parse().ok())
        .collect();
    assert!(percents.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");
    let summary = rest.iter().find(|l| l.starts_with("pareco: synced: ")).expect("a summary");
    assert!(summary.contains("21 files (6.2 MiB), 21 transferred"), "{summary}");
    let stats = support::stats(stats.path());
    assert_eq!(stats["files_done"], stats["files_total"]);
    assert!(stats["bytes_transferred"].as_u64() <= stats["bytes_total"].as_u64());
}

#[test]
fn completions_and_the_man_page_come_from_the_command_line_definition() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(bin()).args(["completions", shell]).output().unwrap();
        assert!(out.status.success());
        let script = String::from_utf8(out.stdout).unwrap();
        for word in ["sync", "serve", "forward", "progress-interval", "metrics-listen"] {
            assert!(script.contains(word), "{shell} completions lack {word}");
        }
    }
    let out = Command::new(bin()).arg("man").output().unwrap();
    assert!(out.status.success());
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(page.starts_with(".ie") || page.contains(".TH pareco"), "{}", &page[..200.min(page.len())]);
    for section in ["PARECO SYNC", "PARECO SERVE", "PARECO FORWARD", "converge\\-seconds"] {
        assert!(page.contains(section), "the man page lacks {section}");
    }
    let bad = Command::new(bin()).args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn a_client_with_a_wrong_token_is_logged_once_not_once_per_connection() {
    let (_tmp, src, srv) = dirs();
    std::fs::write(src.join("f"), b"x").unwrap();
    let server = Server::start(&srv);
    let run = sync_with_token(&src, server.url("copy"), &["-q", "-j", "16"], WRONG_TOKEN);
    assert_ne!(run.code(), 0);
    // And a second attempt within the minute is counted, not logged.
    sync_with_token(&src, server.url("copy"), &["-q", "-j", "16"], WRONG_TOKEN);
    let log = server.log();
    let refusals: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(refusals.len(), 1, "{log}");
    assert!(refusals[0].contains("refused a client") && refusals[0].contains("127.0.0.1"), "{log}");
    // Written to a file: no colour codes.
    assert!(!log.contains('\u{1b}'), "{log:?}");
}

#[test]
fn a_server_that_cannot_start_prints_no_token() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--root"])
        .arg(dir.path().join("nonexistent"))
        .env_remove("PARECO_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot serve"), "{err}");
    assert!(!err.contains("token"), "{err}");
    assert!(out.stdout.is_empty());
    // The address taken: no token either.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let out = Command::new(bin())
        .args(["serve", "--listen", &taken.local_addr().unwrap().to_string(), "--root"])
        .arg(dir.path())
        .env_remove("PARECO_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot listen") && !err.contains("token"), "{err}");
}

#[test]
fn logs_are_json_objects_when_asked() {
    let (_tmp, src, srv) = dirs();
    std::fs::write(src.join("f"), b"x").unwrap();
    let stderr = srv.with_extension("json.log");
    let mut child = Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--root"])
        .arg(&srv)
        .env("PARECO_TOKEN", TOKEN)
        .env("PARECO_LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let port = line.trim().rsplit(':').next().unwrap().to_owned();
    sync_with_token(&src, format!("pareco://127.0.0.1:{port}/x"), &["-q"], WRONG_TOKEN);
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    child.wait().unwrap();
    let log = std::fs::read_to_string(&stderr).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() >= 2, "{log}");
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        assert!(v["level"].is_string() && v["fields"]["message"].is_string(), "{line}");
    }
}

#[test]
fn stats_json_dash_is_standard_output_and_nothing_else() {
    let (_tmp, src, dst) = dirs();
    std::fs::write(src.join("f"), b"abc").unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(bin()).args(args).args(["--stats-json", "-"]).arg(&src).arg(&dst).output().unwrap();
        let stats: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&out.stdout)));
        (out.status.code(), stats, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // What -v itemizes and verify finds goes to stderr instead.
    let (code, stats, err) = run(&["verify"]);
    assert_eq!((code, &stats["differences"]), (Some(1), &serde_json::json!(1)), "{err}");
    assert!(err.lines().any(|l| l.starts_with("f: ")), "{err}");
    let (code, stats, err) = run(&["sync", "-v"]);
    assert_eq!((code, &stats["files_transferred"]), (Some(0), &serde_json::json!(1)), "{err}");
    assert!(err.lines().any(|l| l == "new    f"), "{err}");
    assert!(!std::path::Path::new("-").exists() && !src.parent().unwrap().join("-").exists());

    // Where standard output is the stream, it is refused before any work.
    let out = Command::new(bin()).args(["recv", "--listen", "127.0.0.1:0", "--stats-json", "-"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(out.stdout.is_empty() && err.contains("standard output carries the stream"), "{err}");
}

#[test]
fn a_dry_run_says_what_it_would_do_and_a_single_file_goes_by_its_name() {
    let (_tmp, src, dst) = dirs();
    std::fs::write(src.join("kept"), b"abc").unwrap();
    sync(&src, &dst, &["-q"]).ok();
    std::fs::write(dst.join("extra"), b"x").unwrap();
    let run = sync(&src, &dst, &["-n", "--delete"]).ok();
    assert!(run.stdout().lines().any(|l| l == "delete extra"), "{}", run.stdout());
    let err = run.stderr();
    assert!(err.contains("dry run: ") && err.contains("1 would be deleted"), "{err}");
    assert!(!err.contains("; 1 deleted") && !err.contains("synced"), "{err}");
    assert!(dst.join("extra").exists());

    std::fs::write(src.join("report.pdf"), b"%PDF").unwrap();
    let run = sync(src.join("report.pdf"), dst.join("copy.pdf"), &["-v"]).ok();
    assert!(run.stdout().lines().any(|l| l == "new    report.pdf"), "{:?}", run.stdout());
    assert!(run.stderr().contains("synced: 1 file (4 B), 1 transferred"), "{}", run.stderr());
}

#[test]
fn forward_metrics_count_each_rule_and_match_its_stats() {
    let echo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = echo.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in echo.incoming() {
            let mut s = stream.unwrap();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let stats = dir.path().join("stats.json");
    let mut child = Command::new(bin())
        .args(["forward", "127.0.0.1:0", &target.to_string(), "--metrics-listen", "127.0.0.1:0"])
        .args(["--progress-interval", "1", "--stats-interval", "100ms", "--stats-json"])
        .arg(&stats)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let listen = line.split_whitespace().nth(2).unwrap().to_owned();
    let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = err.by_ref().map(Result::unwrap).find_map(|l| metrics_address(&l)).unwrap();
    for _ in 0..3 {
        let mut s = TcpStream::connect(&listen).unwrap();
        s.write_all(&[7u8; 10_000]).unwrap();
        let mut back = vec![0u8; 10_000];
        s.read_exact(&mut back).unwrap();
    }
    // Once every connection is closed, the counters stand still.
    let mut metrics = Exposition::default();
    assert!(wait_until(Duration::from_secs(10), || {
        metrics = parse(&get(&addr, "/metrics").1);
        metrics.value("pareco_connections") == 0
            && metrics.samples.iter().any(|(k, v)| k.starts_with("pareco_forward_connections_total") && *v == 3.0)
    }));
    // A progress line appears at the interval.
    assert!(err.by_ref().map(Result::unwrap).any(|l| l.starts_with("pareco: forward: ")));
    std::thread::sleep(Duration::from_millis(300));
    let json = support::stats(&stats);
    let rule = &json["rules"][0];
    let labels = format!("{{listen=\"127.0.0.1:0\",local=\"{listen}\"}}");
    assert_eq!(metrics.value(&format!("pareco_forward_up_bytes_total{labels}")), rule["bytes_up"].as_u64().unwrap());
    assert_eq!(metrics.value(&format!("pareco_forward_down_bytes_total{labels}")), 30_000);
    assert_eq!(rule["bytes_down"], 30_000);
    assert_eq!(metrics.types["pareco_forward_active"], "gauge");
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    child.wait().unwrap();
}

#[test]
fn a_stream_prints_progress_lines_without_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let recv = End::spawn(
        "recv",
        &["--listen", "127.0.0.1:0", "--progress-interval", "1"],
        Stdio::null(),
        file_out(&out),
        TOKEN,
    );
    // A producer that takes about three seconds: at least one interval passes.
    let mut producer = Command::new("python3")
        .args(["-c", "import sys, time\nfor i in range(30):\n    sys.stdout.buffer.write(bytes([i]) * 65536); sys.stdout.flush(); time.sleep(0.1)"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = Stdio::from(producer.stdout.take().unwrap());
    let mut send = Command::new(bin())
        .args(["send", &recv.url(), "--progress-interval", "1", "--metrics-listen", "127.0.0.1:0"])
        .env("PARECO_TOKEN", TOKEN)
        .stdin(stdin)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(send.stderr.take().unwrap());
    let mut first = String::new();
    err.read_line(&mut first).unwrap();
    let addr = metrics_address(first.trim()).unwrap_or_else(|| panic!("{first:?}"));
    let metrics = parse(&get(&addr, "/metrics").1);
    for name in ["pareco_stream_bytes", "pareco_wire_payload_bytes", "pareco_retries", "pareco_reconnects"] {
        assert_eq!(metrics.types.get(name).map(String::as_str), Some("counter"), "{name}: {metrics:?}");
    }
    let mut send_err = String::new();
    err.read_to_string(&mut send_err).unwrap();
    let sent = send.wait().unwrap();
    assert!(producer.wait().unwrap().success());
    let (received, recv_err) = recv.finish();
    assert!(sent.success() && received.success(), "{send_err}\n{recv_err}");
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 30 * 65536);
    let line = send_err.lines().find(|l| l.starts_with("pareco: progress: ")).unwrap_or_else(|| panic!("{send_err}"));
    assert!(line.contains(" sent, ") && line.contains(" read, ") && line.contains("/s"), "{line}");
    assert!(recv_err.lines().any(|l| l.starts_with("pareco: progress: ") && l.contains(" received")), "{recv_err}");
}

#[test]
fn verify_prints_progress_lines_and_serves_metrics() {
    let (_tmp, src, srv) = dirs();
    // A deep chain of directories behind a slow link: listing them one
    // after the other takes seconds.
    let mut dir = src.clone();
    for i in 0..12 {
        dir = dir.join(format!("d{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("f"), bytes(i, 100_000)).unwrap();
    }
    age(&src);
    let server = Server::start(&srv);
    sync(&src, server.url("copy"), &["-q"]).ok();
    let wan = Wan::start(server.port, &["--delay-ms", "150"]);
    let mut child = Command::new(bin())
        .args(["verify", "--progress-interval", "1", "--metrics-listen", "127.0.0.1:0"])
        .arg(&src)
        .arg(wan.url("copy"))
        .env("PARECO_TOKEN", TOKEN)
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    err.read_line(&mut first).unwrap();
    let addr = metrics_address(first.trim()).unwrap_or_else(|| panic!("{first:?}"));
    let metrics = parse(&get(&addr, "/metrics").1);
    for (name, kind) in
        [("pareco_bytes_done", "gauge"), ("pareco_differences", "counter"), ("pareco_wire_sent_bytes", "counter")]
    {
        assert_eq!(metrics.types.get(name).map(String::as_str), Some(kind), "{name}: {metrics:?}");
    }
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    assert!(child.wait().unwrap().success(), "{rest}");
    let line = rest.lines().find(|l| l.starts_with("pareco: progress: ")).unwrap_or_else(|| panic!("{rest}"));
    assert!(line.contains(" compared") && line.contains(" entries"), "{line}");
    assert!(rest.contains("verify: identical"), "{rest}");
}

/// A `--stats-json` file that could not be written is refused before any
/// work, by every command (not after a finished run, whose exit status
/// would then say it failed).
#[test]
fn a_stats_file_that_cannot_be_written_is_refused_up_front() {
    let (tmp, src, dst) = dirs();
    std::fs::write(src.join("f"), b"x").unwrap();
    let nowhere = tmp.path().join("missing/stats.json");
    let nowhere = nowhere.to_str().unwrap();
    for args in [
        vec!["sync", src.to_str().unwrap(), dst.to_str().unwrap(), "--stats-json", nowhere],
        vec!["verify", src.to_str().unwrap(), src.to_str().unwrap(), "--stats-json", nowhere],
        vec!["recv", "127.0.0.1:1", "--stats-json", nowhere],
        vec!["forward", "127.0.0.1:0", "127.0.0.1:1", "--stats-json", nowhere],
    ] {
        let out = Command::new(bin()).args(&args).env("PARECO_TOKEN", TOKEN).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("is not a directory"), "{args:?}");
    }
    assert!(!dst.join("f").exists(), "the sync ran");
}
