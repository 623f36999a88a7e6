//! End-to-end relay: `pareco send s3://…` and `pareco recv s3://…` as real
//! processes against a real S3 API server (moto's) on 127.0.0.1, a bucket
//! per test, with every output compared to its input by BLAKE3.

mod support;

use std::io::{Read, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use futures_util::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use support::*;

/// The server, a bucket on it, and the environment of the clients.
struct Relay {
    moto: Moto,
    bucket: String,
    env: Vec<(&'static str, String)>,
}

impl Relay {
    fn new(bucket: &str) -> Relay {
        let moto = Moto::start();
        moto.bucket(bucket);
        let env = Moto::env(&moto.endpoint());
        Relay { moto, bucket: bucket.to_string(), env }
    }

    fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    fn spawn(&self, command: &str, args: &[&str], stdin: Stdio, stdout: Stdio) -> End {
        End::spawn_with(command, args, stdin, stdout, TOKEN, &self.env)
    }

    /// Runs one end to its exit: status and stderr.
    fn run(&self, command: &str, args: &[&str], stdin: Stdio, stdout: Stdio) -> (Option<i32>, String) {
        let (status, stderr) = self.spawn(command, args, stdin, stdout).finish();
        (status.code(), stderr)
    }

    fn block_on<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
    }

    fn client(&self) -> object_store::aws::AmazonS3 {
        let _ = rustls::crypto::ring::default_provider().install_default();
        self.moto.client(&self.bucket)
    }

    /// Every name under `prefix`, in listing order.
    fn list(&self, prefix: &str) -> Vec<String> {
        let client = self.client();
        let prefix = object_store::path::Path::from(prefix);
        self.block_on(async {
            let listing = client.list(Some(&prefix)).map_ok(|m| m.location.to_string());
            listing.try_collect::<Vec<_>>().await.unwrap()
        })
    }

    fn get(&self, name: &str) -> Vec<u8> {
        let client = self.client();
        self.block_on(async { client.get(&name.into()).await.unwrap().bytes().await.unwrap().to_vec() })
    }

    fn put(&self, name: &str, body: Vec<u8>) {
        let client = self.client();
        self.block_on(async { client.put(&name.into(), body.into()).await.unwrap() });
    }

    fn delete(&self, name: &str) {
        let client = self.client();
        self.block_on(async { client.delete(&name.into()).await.unwrap() });
    }
}

fn data(prefix: &str, index: u64) -> String {
    format!("{prefix}/data/{index:020}")
}

/// Sends `input` to `prefix` (to its end) with `extra` arguments.
fn send_all(relay: &Relay, prefix: &str, input: &Path, extra: &[&str]) -> String {
    let url = relay.url(prefix);
    let (code, stderr) = relay.run("send", &[&[url.as_str()], extra].concat(), file_in(input), Stdio::null());
    assert_eq!(code, Some(0), "send failed: {stderr}");
    stderr
}

#[test]
fn a_256_mib_mixed_stream_arrives_identical_with_recv_started_before_send() {
    let relay = Relay::new("before");
    let tmp = tempfile::tempdir().unwrap();
    let input = mixed(tmp.path(), 256);
    let (output, recv_json, send_json) = (tmp.path().join("out"), tmp.path().join("r.json"), tmp.path().join("s.json"));
    let url = relay.url("pg/base");
    let recv =
        relay.spawn("recv", &[&url, "--stats-json", recv_json.to_str().unwrap()], Stdio::null(), file_out(&output));
    // The receiver waits for a stream that does not exist yet.
    std::thread::sleep(Duration::from_millis(500));
    let send =
        relay.spawn("send", &[&url, "--stats-json", send_json.to_str().unwrap()], file_in(&input), Stdio::null());
    let (send_status, send_err) = send.finish();
    assert!(send_status.success(), "{send_err}");
    let (recv_status, recv_err) = recv.finish();
    assert!(recv_status.success(), "{recv_err}");
    assert_eq!(hash(&input), hash(&output));

    let (sent, received) = (stats(&send_json), stats(&recv_json));
    let len = std::fs::metadata(&input).unwrap().len();
    assert_eq!(sent["bytes"], len);
    assert_eq!(received["bytes"], len);
    assert_eq!(received["digest"].as_str().unwrap(), hash(&input).to_hex().as_str());
    assert_eq!(sent["objects_put"], 17, "16 MiB objects: 16 full, one short");
    assert_eq!(received["objects_got"], 17);
    assert_eq!(received["frames"], sent["frames"], "{received}");
    assert!(sent["compression_ratio"].as_f64().unwrap() > 1.3, "{sent}");
    assert!(recv_err.contains("verified"), "{recv_err}");
    assert!(relay.list("pg/base").is_empty(), "a verified stream's objects are removed");
}

#[test]
fn a_256_mib_mixed_stream_arrives_identical_with_recv_started_after_send_finished() {
    let relay = Relay::new("after");
    let tmp = tempfile::tempdir().unwrap();
    let input = mixed(tmp.path(), 256);
    send_all(&relay, "later", &input, &["--object-size", "8M", "-j", "8"]);
    assert_eq!(relay.list("later").len(), 32 + 1 + 2, "data objects, header and end");
    let output = tmp.path().join("out");
    let (code, stderr) = relay.run("recv", &[&relay.url("later"), "--keep"], Stdio::null(), file_out(&output));
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(hash(&input), hash(&output));
    assert_eq!(relay.list("later").len(), 35, "--keep leaves them");
}

#[test]
fn the_objects_hold_neither_the_input_nor_the_token() {
    let relay = Relay::new("sealed");
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input");
    let probe = b"PLAINTEXT-PROBE-4f1d ";
    std::fs::write(&input, probe.repeat((3 << 20) / probe.len())).unwrap();
    // Uncompressed, so that only the sealing can hide the probe.
    send_all(&relay, "p", &input, &["--compress", "none", "--object-size", "1M"]);
    let names = relay.list("p");
    assert_eq!(names.len(), 3 + 2);
    let mut stored = 0;
    for name in &names {
        let object = relay.get(name);
        stored += object.len();
        assert!(object.starts_with(b"PARECORL"), "{name} has the envelope");
        assert!(!object.windows(16).any(|w| w == &probe[..16]), "{name} shows the input");
        assert!(!object.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()), "{name} shows the token");
    }
    assert!(stored >= 3 << 20, "the data is all there, sealed ({stored} bytes)");
}

#[test]
fn a_wrong_token_fails_at_the_first_object_with_nothing_on_stdout() {
    let relay = Relay::new("token");
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input");
    std::fs::write(&input, text(1 << 20)).unwrap();
    send_all(&relay, "t", &input, &["--object-size", "64K"]);
    let output = tmp.path().join("out");
    let recv = End::spawn_with("recv", &[&relay.url("t")], Stdio::null(), file_out(&output), WRONG_TOKEN, &relay.env);
    let (status, stderr) = recv.finish();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("header does not open with this token"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert_eq!(std::fs::metadata(&output).unwrap().len(), 0);
    // A resumed sender with the wrong token is refused the same way.
    let send = End::spawn_with(
        "send",
        &[&relay.url("t"), "--resume"],
        file_in(&input),
        Stdio::null(),
        WRONG_TOKEN,
        &relay.env,
    );
    let (status, stderr) = send.finish();
    assert_eq!(status.code(), Some(2), "{stderr}");
    // The right token still opens it all.
    let (code, stderr) = relay.run("recv", &[&relay.url("t")], Stdio::null(), file_out(&output));
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(hash(&input), hash(&output));
}

/// Sends 8 objects of 64 KiB (and a short ninth) under `prefix`, changes
/// the bucket with `tamper`, and receives: the receiver must fail naming
/// object 3, having written exactly objects 0 to 2.
fn receive_after(relay: &Relay, prefix: &str, tamper: impl FnOnce(&Relay), expect: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input");
    let content = bytes(7, 8 * (64 << 10) + 100);
    std::fs::write(&input, &content).unwrap();
    send_all(relay, prefix, &input, &["--object-size", "64K"]);
    tamper(relay);
    let output = tmp.path().join("out");
    let (code, stderr) = relay.run("recv", &[&relay.url(prefix)], Stdio::null(), file_out(&output));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(&data(prefix, 3)) && stderr.contains(expect), "{stderr}");
    assert!(stderr.contains(&format!("stream incomplete: {} bytes delivered", 3 * (64 << 10))), "{stderr}");
    assert_eq!(std::fs::read(&output).unwrap(), content[..3 * (64 << 10)], "only what authenticated, in order");
    assert!(!relay.list(prefix).is_empty(), "a failed stream's objects stay");
}

#[test]
fn an_overwritten_or_deleted_object_is_named_and_nothing_of_it_is_written() {
    let relay = Relay::new("tamper");
    receive_after(
        &relay,
        "overwritten",
        |r| {
            let mut object = r.get(&data("overwritten", 3));
            let middle = object.len() / 2;
            object[middle] ^= 1;
            r.put(&data("overwritten", 3), object);
        },
        "does not authenticate",
    );
    receive_after(
        &relay,
        "swapped",
        |r| r.put(&data("swapped", 3), r.get(&data("swapped", 5))),
        "does not authenticate",
    );
    receive_after(&relay, "deleted", |r| r.delete(&data("deleted", 3)), "is missing from the bucket");
    receive_after(
        &relay,
        "foreign",
        |r| r.put(&data("foreign", 3), b"<html>not ours</html>".to_vec()),
        "not an object of a pareco stream",
    );
}

/// A sender fed from a pipe, in 1 MiB pieces of `content`, `fed_first`
/// of them at once, the rest only when `more` is told to.
fn piped_sender(relay: &Relay, args: &[&str], content: Vec<u8>) -> (End, std::sync::mpsc::Sender<usize>) {
    let mut send = relay.spawn("send", args, Stdio::piped(), Stdio::null());
    let mut stdin = send.child.stdin.take().unwrap();
    let (more, want) = std::sync::mpsc::channel::<usize>();
    std::thread::spawn(move || {
        let mut pieces = content.chunks(1 << 20);
        while let Ok(n) = want.recv() {
            for piece in pieces.by_ref().take(n) {
                if stdin.write_all(piece).is_err() {
                    return;
                }
            }
        }
    });
    (send, more)
}

#[test]
fn a_sender_killed_mid_stream_resumes_on_the_same_input() {
    let relay = Relay::new("resume-send");
    let tmp = tempfile::tempdir().unwrap();
    let content = [text(8 << 20), bytes(3, 8 << 20), text(8 << 20)].concat();
    let input = tmp.path().join("input");
    std::fs::write(&input, &content).unwrap();
    let url = relay.url("r");
    let (mut send, more) = piped_sender(&relay, &[&url, "--object-size", "1M"], content.clone());
    more.send(10).unwrap();
    assert!(wait_until(Duration::from_secs(60), || relay.list("r/data").len() >= 6), "objects are uploaded");
    send.kill();
    let (status, _) = send.finish();
    assert!(!status.success());
    // The unbroken run from object 0 is what a resume can skip (PUTs in
    // flight at the kill may leave holes after it, and the server may still
    // complete one it had taken in: counted again just before the resume).
    let unbroken = || {
        let stored = relay.list("r/data");
        assert!(stored.len() < 24, "killed mid-stream ({} objects)", stored.len());
        stored.iter().enumerate().take_while(|(i, name)| **name == data("r", *i as u64)).count() as u64
    };
    assert!(unbroken() >= 1, "{:?}", relay.list("r/data"));

    // Another input is refused: its first bytes differ.
    let other = tmp.path().join("other");
    std::fs::write(&other, bytes(4, 24 << 20)).unwrap();
    let (code, stderr) = relay.run("send", &[&url, "--resume"], file_in(&other), Stdio::null());
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("the input is not the one being uploaded"), "{stderr}");
    assert!(!stderr.contains("incomplete"), "{stderr}");

    let run = unbroken();
    let json = tmp.path().join("send.json");
    send_all(&relay, "r", &input, &["--resume", "--stats-json", json.to_str().unwrap()]);
    let sent = stats(&json);
    assert_eq!(sent["skipped_bytes"], run << 20, "what was uploaded is not sent again: {sent}");
    assert_eq!(sent["objects_put"], 24 - run);
    let output = tmp.path().join("out");
    let (code, stderr) = relay.run("recv", &[&url], Stdio::null(), file_out(&output));
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(hash(&input), hash(&output));
}

#[test]
fn a_receiver_killed_mid_stream_resumes_with_skip_and_the_output_is_whole() {
    let relay = Relay::new("resume-recv");
    let tmp = tempfile::tempdir().unwrap();
    let input = mixed(tmp.path(), 24);
    send_all(&relay, "k", &input, &["--object-size", "1M"]);
    let url = relay.url("k");
    let mut recv = relay.spawn("recv", &[&url], Stdio::null(), Stdio::piped());
    let mut consumer = recv.child.stdout.take().unwrap();
    // The consumer takes 5 MiB and a bit, then the receiver dies.
    let mut have = vec![0u8; (5 << 20) + 12345];
    consumer.read_exact(&mut have).unwrap();
    recv.kill();
    drop(recv);
    // A skip past the end is a mistake of the command line: exit 2, and
    // nothing delivered or removed.
    let past = (std::fs::metadata(&input).unwrap().len() + 1).to_string();
    let (code, stderr) = relay.run("recv", &[&url, "--skip", &past], Stdio::null(), Stdio::piped());
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("is past the end of the stream"), "{stderr}");
    let rest = tmp.path().join("rest");
    let skip = have.len().to_string();
    let (code, stderr) = relay.run("recv", &[&url, "--skip", &skip], Stdio::null(), file_out(&rest));
    assert_eq!(code, Some(0), "{stderr}");
    have.extend(std::fs::read(&rest).unwrap());
    assert_eq!(blake3::hash(&have), hash(&input), "what the consumer had, then the rest");
    assert!(relay.list("k").is_empty());
}

/// A sender and a receiver of one stream at once (arguments, environment
/// each: their endpoints may differ); both must succeed, the output be the
/// input.
fn send_and_receive_at_once(
    send: (&[&str], &[(&str, String)]),
    recv: (&[&str], &[(&str, String)]),
    input: &Path,
    output: &Path,
) {
    let recv = End::spawn_with("recv", recv.0, Stdio::null(), file_out(output), TOKEN, recv.1);
    let send = End::spawn_with("send", send.0, file_in(input), Stdio::null(), TOKEN, send.1);
    for end in [send, recv] {
        let (status, stderr) = end.finish();
        assert!(status.success(), "{stderr}");
    }
    assert_eq!(hash(input), hash(output));
}

#[test]
fn connections_cut_by_the_wan_emulator_are_retried_and_nothing_is_lost() {
    let relay = Relay::new("cuts");
    let tmp = tempfile::tempdir().unwrap();
    // One live connection is cut every 0.3 s from the emulator's start: 96
    // MiB last long enough for several cuts (32 MiB could be through in 0.6
    // s). The rate lets an object through between two cuts even when its
    // connection is the only one left (at 1 MiB/s none could be).
    let input = mixed(tmp.path(), 96);
    let wan = Wan::start(relay.moto.port, &["--cut-every", "0.3", "--conn-rate", "8M", "--delay-ms", "2"]);
    let env = Moto::env(&format!("http://127.0.0.1:{}", wan.port));
    let (send_json, recv_json, output) = (tmp.path().join("s.json"), tmp.path().join("r.json"), tmp.path().join("out"));
    let url = relay.url("c");
    let recv_args = [url.as_str(), "-j", "8", "--stats-json", recv_json.to_str().unwrap()];
    let send_args = [url.as_str(), "-j", "8", "--object-size", "1M", "--stats-json", send_json.to_str().unwrap()];
    send_and_receive_at_once((&send_args, &env), (&recv_args, &env), &input, &output);
    // Its final counters: a fast run can end before the periodic ones show a cut.
    let cuts = wan.stop()["cut"].as_u64().unwrap_or(0);
    assert!(cuts >= 2, "the emulator cut {cuts} connections");
    let retries = stats(&send_json)["retries"].as_u64().unwrap() + stats(&recv_json)["retries"].as_u64().unwrap();
    assert!(retries >= 1, "cut requests were retried");
}

/// Every connection of the receiver's is cut after 600 KB, less than one
/// object: only a GET that continues from where it was cut gets any.
#[test]
fn objects_longer_than_any_connection_lasts_arrive_in_parts() {
    let relay = Relay::new("parts");
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input");
    std::fs::write(&input, bytes(8, 6 << 20)).unwrap();
    let wan = Wan::start(relay.moto.port, &["--cut-after", "600K"]);
    let cut = Moto::env(&format!("http://127.0.0.1:{}", wan.port));
    let (url, output, json) = (relay.url("p"), tmp.path().join("out"), tmp.path().join("recv.json"));
    let send_args = [url.as_str(), "-j", "4", "--object-size", "1M"];
    let recv_args = [url.as_str(), "-j", "4", "--stats-json", json.to_str().unwrap()];
    send_and_receive_at_once((&send_args, &relay.env), (&recv_args, &cut), &input, &output);
    // No connection carries a whole 1 MiB object, so each of the six was cut
    // at least once on its way (how many more depends on how many
    // connections were still open at the end: 7 to 11 have been seen).
    let cuts = wan.stop()["cut"].as_u64().unwrap_or(0);
    assert!(cuts >= 6, "the emulator cut {cuts} connections");
    // Each continuation is a request made again: a retry.
    let retries = stats(&json)["retries"].as_u64().unwrap();
    assert!(retries >= 6, "{retries} retries counted");
}

#[test]
fn more_objects_than_a_listing_page_are_all_found_and_removed() {
    let relay = Relay::new("pages");
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input");
    // 1,200 objects of 4 KiB: moto lists 1,000 names a page.
    std::fs::write(&input, bytes(5, 1200 * 4096 - 7)).unwrap();
    send_all(&relay, "many", &input, &["--object-size", "4K", "-j", "32"]);
    assert_eq!(relay.list("many").len(), 1202);
    // A resumed sender lists them all: nothing is left to send.
    let json = tmp.path().join("send.json");
    send_all(&relay, "many", &input, &["--resume", "--stats-json", json.to_str().unwrap()]);
    assert_eq!(stats(&json)["objects_put"], 0);
    assert_eq!(stats(&json)["skipped_bytes"], 1200 * 4096 - 7);
    let (output, recv_json) = (tmp.path().join("out"), tmp.path().join("recv.json"));
    let args = [relay.url("many"), "-j".into(), "32".into(), "--stats-json".into(), recv_json.display().to_string()];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stderr) = relay.run("recv", &args, Stdio::null(), file_out(&output));
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(hash(&input), hash(&output));
    assert_eq!(stats(&recv_json)["objects_removed"], 1202);
    assert!(relay.list("many").is_empty());
}

#[test]
fn a_second_sender_on_a_prefix_in_use_is_refused() {
    let relay = Relay::new("second");
    let tmp = tempfile::tempdir().unwrap();
    let url = relay.url("busy");
    let content = text(4 << 20);
    let (first, more) = piped_sender(&relay, &[&url, "--object-size", "1M"], content.clone());
    more.send(2).unwrap();
    assert!(wait_until(Duration::from_secs(30), || !relay.list("busy/data").is_empty()));
    let other = tmp.path().join("other");
    std::fs::write(&other, b"another stream").unwrap();
    let (code, stderr) = relay.run("send", &[&url], file_in(&other), Stdio::null());
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains(&format!("{url}/ already holds a stream")) && stderr.contains("--resume"), "{stderr}");
    // The first one is unharmed.
    more.send(usize::MAX).unwrap();
    drop(more);
    let (status, stderr) = first.finish();
    assert!(status.success(), "{stderr}");
    let output = tmp.path().join("out");
    let (code, stderr) = relay.run("recv", &[&url], Stdio::null(), file_out(&output));
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(std::fs::read(&output).unwrap(), content);
}

#[test]
fn bad_locations_credentials_and_endpoints_are_one_clear_line_and_exit_2() {
    let relay = Relay::new("errors");
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input");
    std::fs::write(&input, b"x").unwrap();
    let unreachable = Moto::env("http://127.0.0.1:1");
    let mut no_keys = relay.env.clone();
    no_keys.retain(|(k, _)| !k.starts_with("AWS_ACCESS"));
    type Case<'a> = (&'a str, &'a [&'a str], &'a [(&'a str, String)], &'a str);
    let cases: [Case; 8] = [
        ("recv", &["s3:/errors/x"], &relay.env, "malformed URL \"s3:/errors/x\": write s3://BUCKET/PREFIX"),
        ("recv", &["s3://nobucket/x"], &relay.env, "s3://nobucket/x/: the bucket does not exist"),
        ("send", &["s3://"], &relay.env, "no bucket in \"s3://\""),
        ("recv", &["s3://Bad_Name/x"], &relay.env, "is not a bucket name"),
        ("send", &["s3://nobucket/x"], &relay.env, "s3://nobucket/x/data/: the bucket does not exist"),
        ("recv", &["s3://errors/x"], &no_keys, "no AWS credentials: set AWS_ACCESS_KEY_ID"),
        ("recv", &["s3://errors/x", "--retry-for", "1"], &unreachable, "Connection refused"),
        ("send", &["s3://errors/x", "--resume"], &relay.env, "nothing to resume"),
    ];
    for (command, args, env, expect) in cases {
        let end = End::spawn_with(command, args, file_in(&input), Stdio::null(), TOKEN, env);
        let (status, stderr) = end.finish();
        assert_eq!(status.code(), Some(2), "{command} {args:?}: {stderr}");
        assert!(stderr.contains(expect), "{command} {args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{command} {args:?}: one line: {stderr}");
    }
}

#[test]
fn a_bucket_removed_while_recv_waits_is_said_not_blamed_on_the_sender() {
    let relay = Relay::new("vanishing");
    let recv = relay.spawn("recv", &[&relay.url("p")], Stdio::null(), Stdio::null());
    // Once it is waiting for a sender (its first listing done).
    std::thread::sleep(Duration::from_millis(1500));
    relay.moto.remove_bucket("vanishing");
    let (status, stderr) = recv.finish();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("the bucket does not exist"), "{stderr}");
    assert!(!stderr.contains("sender"), "{stderr}");
}

#[test]
fn a_slow_consumer_is_waited_for_not_taken_for_a_stopped_sender() {
    let relay = Relay::new("slow");
    let tmp = tempfile::tempdir().unwrap();
    let input = mixed(tmp.path(), 8);
    send_all(&relay, "s", &input, &["--object-size", "1M"]);
    let args = [relay.url("s"), "--retry-for".into(), "1".into(), "--buffer".into(), "2M".into()];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut recv = relay.spawn("recv", &args, Stdio::null(), Stdio::piped());
    let mut consumer = recv.child.stdout.take().unwrap();
    // Nothing is read for three times --retry-for: the receiver must wait.
    std::thread::sleep(Duration::from_secs(3));
    let mut out = Vec::new();
    consumer.read_to_end(&mut out).unwrap();
    let (status, stderr) = recv.finish();
    assert!(status.success(), "{stderr}");
    assert_eq!(blake3::hash(&out), hash(&input));
}
