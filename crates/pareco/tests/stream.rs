//! End-to-end stream mode: `pareco send` and `pareco recv` as two real
//! processes over 127.0.0.1, directly or through the WAN emulator, with
//! every output compared to its input by BLAKE3.

mod support;

use std::io::{Read, Write};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use support::*;

/// Sends `input` from `send` to `recv` (already listening), or the reverse
/// when the sender listens; asserts both exit 0 and the output is identical.
fn transfer(input: &Path, output: &Path, send_args: &[&str], recv_args: &[&str]) -> (String, String) {
    let (send, recv) = if send_args.contains(&"--listen") {
        let send = End::spawn("send", send_args, file_in(input), Stdio::null(), TOKEN);
        let url = send.url();
        let recv_args = [&[url.as_str()], recv_args].concat();
        let recv = End::spawn("recv", &recv_args, Stdio::null(), file_out(output), TOKEN);
        (send, recv)
    } else {
        let recv = End::spawn("recv", recv_args, Stdio::null(), file_out(output), TOKEN);
        let url = recv.url();
        let send_args = [&[url.as_str()], send_args].concat();
        let send = End::spawn("send", &send_args, file_in(input), Stdio::null(), TOKEN);
        (send, recv)
    };
    both_succeed(send, recv, input, output)
}

/// Waits for both ends; asserts both exit 0 and the output is the input.
fn both_succeed(send: End, recv: End, input: &Path, output: &Path) -> (String, String) {
    let (send_status, send_err) = send.finish();
    let (recv_status, recv_err) = recv.finish();
    assert!(send_status.success(), "send failed: {send_err}");
    assert!(recv_status.success(), "recv failed: {recv_err}");
    assert_eq!(hash(input), hash(output), "the output differs from the input");
    (send_err, recv_err)
}

const LISTEN: [&str; 2] = ["--listen", "127.0.0.1:0"];

#[test]
fn a_256_mib_mixed_stream_arrives_identical_and_the_text_compresses() {
    let tmp = tempfile::tempdir().unwrap();
    let input = mixed(tmp.path(), 256);
    let (send_json, recv_json) = (tmp.path().join("send.json"), tmp.path().join("recv.json"));
    let send_args = ["--stats-json", send_json.to_str().unwrap()];
    let recv_args = [&LISTEN[..], &["--stats-json", recv_json.to_str().unwrap()]].concat();
    let (send_err, recv_err) = transfer(&input, &tmp.path().join("output"), &send_args, &recv_args);

    let (sent, received) = (stats(&send_json), stats(&recv_json));
    let len = std::fs::metadata(&input).unwrap().len();
    assert_eq!(sent["bytes"], len);
    assert_eq!(received["bytes"], len);
    assert_eq!(sent["digest"], received["digest"]);
    assert_eq!(sent["digest"].as_str().unwrap(), hash(&input).to_hex().as_str());
    // Both ends count what crossed the wire, the listening one too; the
    // ends see the same bytes (the receiver's last acknowledgement may
    // still be on its way when the sender counts).
    let (wire_sent, wire_received) = (sent["wire_bytes"].as_u64().unwrap(), received["wire_bytes"].as_u64().unwrap());
    let payload = received["payload_bytes"].as_u64().unwrap();
    assert!(wire_received > payload && wire_received.abs_diff(wire_sent) < 64 << 10, "{wire_sent} vs {wire_received}");
    // Two thirds text: compressed well over 1.3:1; the random third is sent raw.
    let ratio = sent["compression_ratio"].as_f64().unwrap();
    assert!(ratio > 1.3, "compression ratio {ratio}");
    assert!(sent["compressed_frames"].as_u64().unwrap() < sent["frames"].as_u64().unwrap());
    assert!(send_err.contains("compression") && send_err.contains("verified"), "{send_err}");
    assert!(recv_err.contains("received") && recv_err.contains("verified"), "{recv_err}");
}

#[test]
fn text_alone_compresses_several_times_and_none_sends_it_raw() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input");
    std::fs::write(&input, text(24 << 20)).unwrap();
    let json = tmp.path().join("send.json");
    transfer(&input, &tmp.path().join("out"), &["--stats-json", json.to_str().unwrap()], &LISTEN);
    let ratio = stats(&json)["compression_ratio"].as_f64().unwrap();
    assert!(ratio > 4.0, "compression ratio {ratio}");

    transfer(
        &input,
        &tmp.path().join("out2"),
        &["--compress", "none", "--stats-json", json.to_str().unwrap()],
        &LISTEN,
    );
    assert_eq!(stats(&json)["compressed_frames"], 0);
    assert_eq!(stats(&json)["compression_ratio"], 1.0);

    transfer(&input, &tmp.path().join("out3"), &["--compress", "zstd:19", "-j", "2"], &LISTEN);
}

#[test]
fn empty_and_tiny_streams() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, content) in
        [("empty", Vec::new()), ("one", vec![b'x']), ("frame", bytes(1, 1 << 20)), ("frame+1", bytes(2, (1 << 20) + 1))]
    {
        let input = tmp.path().join(name);
        std::fs::write(&input, &content).unwrap();
        let output = tmp.path().join(format!("{name}.out"));
        transfer(&input, &output, &[], &LISTEN);
        assert_eq!(std::fs::read(&output).unwrap(), content, "{name}");
    }
}

#[test]
fn reverse_roles_the_sender_listens() {
    let tmp = tempfile::tempdir().unwrap();
    let input = mixed(tmp.path(), 16);
    transfer(&input, &tmp.path().join("output"), &LISTEN, &["-j", "4"]);
}

/// `-j auto` (the default), on a link where each connection gets 512 KiB/s:
/// whichever end connects opens more connections than the 8 it starts with
/// (as the stats say), and the stream arrives whole.
#[test]
fn auto_connections_grow_where_each_connection_is_capped() {
    for sender_connects in [true, false] {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("input");
        std::fs::write(&input, bytes(7, 32 << 20)).unwrap();
        let output = tmp.path().join("output");
        let json = tmp.path().join("connecting.json");
        let json_args = ["--stats-json", json.to_str().unwrap()];
        let (listener, connector) = if sender_connects { ("recv", "send") } else { ("send", "recv") };
        let ends = |name: &str| {
            if name == "send" { (file_in(&input), Stdio::null()) } else { (Stdio::null(), file_out(&output)) }
        };
        let (i, o) = ends(listener);
        let listening = End::spawn(listener, &LISTEN, i, o, TOKEN);
        let wan = Wan::start(listening.port, &["--conn-rate", "512K", "--delay-ms", "5"]);
        let url = format!("pareco://127.0.0.1:{}", wan.port);
        let (i, o) = ends(connector);
        let connecting = End::spawn(connector, &[&[url.as_str()][..], &json_args].concat(), i, o, TOKEN);
        let (send, recv) = if sender_connects { (connecting, listening) } else { (listening, connecting) };
        both_succeed(send, recv, &input, &output);
        let connections = stats(&json)["connections"].as_u64().unwrap();
        assert!(connections > 8, "{connector} connecting kept {connections} connections");
    }
}

#[test]
fn a_connection_cut_every_half_second_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let input = mixed(tmp.path(), 256);
    let output = tmp.path().join("output");
    let json = tmp.path().join("send.json");
    let recv = End::spawn("recv", &LISTEN, Stdio::null(), file_out(&output), TOKEN);
    // Slow enough per connection that the transfer outlives several cuts.
    let wan = Wan::start(recv.port, &["--cut-every", "0.5", "--conn-rate", "4M", "--delay-ms", "5"]);
    let url = format!("pareco://127.0.0.1:{}", wan.port);
    let send = End::spawn(
        "send",
        &[&url, "-j", "8", "--stats-json", json.to_str().unwrap()],
        file_in(&input),
        Stdio::null(),
        TOKEN,
    );
    both_succeed(send, recv, &input, &output);

    let proxy: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&wan.stats).unwrap()).unwrap();
    let cuts = proxy["cut"].as_u64().unwrap();
    assert!(cuts >= 2, "the proxy cut {cuts} connections");
    let sent = stats(&json);
    assert!(sent["reconnects"].as_u64().unwrap() >= 1, "{sent}");
}

#[test]
fn a_link_that_cuts_every_connection_before_a_frame_is_through_is_given_up_on() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input");
    std::fs::write(&input, bytes(3, 8 << 20)).unwrap();
    let output = tmp.path().join("output");
    let recv =
        End::spawn("recv", &[&LISTEN[..], &["--retry-for", "2"]].concat(), Stdio::null(), file_out(&output), TOKEN);
    // Every connection is cut after 200 KB: no 1 MiB frame ever arrives.
    let wan = Wan::start(recv.port, &["--cut-after", "200K"]);
    let url = format!("pareco://127.0.0.1:{}", wan.port);
    let send = End::spawn("send", &[&url, "--retry-for", "2"], file_in(&input), Stdio::null(), TOKEN);
    let (status, stderr) = send.finish();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no frame got through for 2 s while") && stderr.contains("connections were lost"),
        "{stderr}"
    );
    let (status, stderr) = recv.finish();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("stream incomplete: 0 bytes delivered"), "{stderr}");
}

/// A sender fed `total` MiB of text through a pipe, counting into `fed`;
/// its input ends when the returned handle is dropped.
fn feeding_sender(url: &str, extra: &[&str], fed: Arc<AtomicU64>, total: usize) -> (End, mpsc::Sender<()>) {
    let mut send = End::spawn("send", &[&[url], extra].concat(), Stdio::piped(), Stdio::null(), TOKEN);
    let mut stdin = send.child.stdin.take().unwrap();
    let (release, released) = mpsc::channel();
    std::thread::spawn(move || {
        let chunk = text(1 << 20);
        for _ in 0..total {
            if stdin.write_all(&chunk).is_err() {
                return;
            }
            fed.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        let _ = released.recv();
    });
    (send, release)
}

fn delivered(stderr: &str) -> u64 {
    let tail = stderr.split("stream incomplete: ").nth(1).unwrap_or_else(|| panic!("no incomplete report: {stderr}"));
    tail.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn killing_the_sender_makes_the_receiver_fail_and_say_how_much_arrived() {
    let tmp = tempfile::tempdir().unwrap();
    let output = tmp.path().join("output");
    let recv =
        End::spawn("recv", &[&LISTEN[..], &["--retry-for", "1"]].concat(), Stdio::null(), file_out(&output), TOKEN);
    let fed = Arc::new(AtomicU64::new(0));
    // The input never ends: the sender is killed while it waits for more.
    let (mut send, _input_open) = feeding_sender(&recv.url(), &[], fed.clone(), 8);
    assert!(wait_until(Duration::from_secs(30), || std::fs::metadata(&output).map_or(0, |m| m.len()) >= 4 << 20));
    send.kill();
    let (status, stderr) = recv.finish();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("gone for"), "{stderr}");
    assert_eq!(delivered(&stderr), std::fs::metadata(&output).unwrap().len(), "{stderr}");
    // What did arrive is an exact prefix of what was sent.
    let out = std::fs::read(&output).unwrap();
    let chunk = text(1 << 20);
    assert!(out.chunks(1 << 20).all(|c| c == &chunk[..c.len()]));
}

/// The sender says the receiver is gone (not that the link cuts
/// connections), with frames still unacknowledged when it went.
#[test]
fn killing_the_receiver_makes_the_sender_fail() {
    let tmp = tempfile::tempdir().unwrap();
    let output = tmp.path().join("output");
    let mut recv = End::spawn("recv", &LISTEN, Stdio::null(), file_out(&output), TOKEN);
    let fed = Arc::new(AtomicU64::new(0));
    let (send, _input_open) = feeding_sender(&recv.url(), &["--retry-for", "1"], fed, 256);
    assert!(wait_until(Duration::from_secs(30), || std::fs::metadata(&output).map_or(0, |m| m.len()) > 0));
    recv.kill();
    let (status, stderr) = send.finish();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("stream incomplete") && stderr.contains("the peer has been gone for 1 s"), "{stderr}");
}

/// A consumer that stops reading (`recv | head -c 1000`) ends the stream at
/// once: the receiver's abort reaches the sender before the receiver exits,
/// so the sender says why and does not wait out `--retry-for` for a
/// receiver that is never coming back (a race, so tried a few times); the
/// receiver counts the bytes its output took.
#[test]
fn a_receiver_whose_output_closes_tells_the_sender_before_it_exits() {
    for _ in 0..4 {
        let mut recv = End::spawn("recv", &LISTEN, Stdio::null(), Stdio::piped(), TOKEN);
        let mut consumer = recv.child.stdout.take().unwrap();
        let fed = Arc::new(AtomicU64::new(0));
        let (send, _input_open) = feeding_sender(&recv.url(), &["--retry-for", "120"], fed, 64);
        let mut head = [0u8; 1000];
        consumer.read_exact(&mut head).unwrap();
        assert_eq!(&head[..], &text(1000)[..]);
        drop(consumer);
        let (status, stderr) = recv.finish();
        assert_eq!(status.code(), Some(1), "{stderr}");
        // Counted as written: at least what was read (the pipe took more).
        assert!(delivered(&stderr) >= 1000, "{stderr}");
        let (status, stderr) = send.finish();
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("aborted") && stderr.contains("output failed"), "{stderr}");
    }
}

#[test]
fn a_slow_consumer_holds_the_sender_back_instead_of_growing_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let buffer = 8u64 << 20;
    let args = [&LISTEN[..], &["--buffer", "8M"]].concat();
    let mut recv = End::spawn("recv", &args, Stdio::null(), Stdio::piped(), TOKEN);
    let mut consumer = recv.child.stdout.take().unwrap();
    let fed = Arc::new(AtomicU64::new(0));
    let total = 128;
    let (send, input_open) = feeding_sender(&recv.url(), &["--buffer", "8M"], fed.clone(), total);
    drop(input_open);

    // Nobody reads the receiver's output: the input must stall once the
    // window is full, and stay stalled.
    let mut last = u64::MAX;
    assert!(wait_until(Duration::from_secs(30), || {
        std::thread::sleep(Duration::from_millis(500));
        let now = fed.load(Ordering::Relaxed);
        std::mem::replace(&mut last, now) == now && now > 0
    }));
    let stalled = fed.load(Ordering::Relaxed);
    // The window, one frame being read, and the pipes' own buffers.
    assert!(stalled <= buffer + (4 << 20), "the sender took {stalled} bytes while nothing was consumed");

    // Now consume: everything arrives, in order.
    let mut out = Vec::new();
    consumer.read_to_end(&mut out).unwrap();
    let (status, stderr) = send.finish();
    assert!(status.success(), "{stderr}");
    let (status, stderr) = recv.finish();
    assert!(status.success(), "{stderr}");
    assert_eq!(out.len(), total << 20);
    let chunk = text(1 << 20);
    assert!(out.chunks(1 << 20).all(|c| c == chunk));
    let _ = tmp;
}

#[test]
fn a_wrong_token_is_refused_and_the_receiver_still_takes_the_right_sender() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input");
    std::fs::write(&input, text(3 << 20)).unwrap();
    let output = tmp.path().join("output");
    let recv = End::spawn("recv", &LISTEN, Stdio::null(), file_out(&output), TOKEN);
    let intruder = End::spawn("send", &[&recv.url(), "-j", "2"], file_in(&input), Stdio::null(), WRONG_TOKEN);
    let (status, stderr) = intruder.finish();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("authentication failed"), "{stderr}");

    let send = End::spawn("send", &[&recv.url()], file_in(&input), Stdio::null(), TOKEN);
    let (status, stderr) = send.finish();
    assert!(status.success(), "{stderr}");
    let (status, stderr) = recv.finish();
    assert!(status.success(), "{stderr}");
    assert_eq!(hash(&input), hash(&output));
}

#[test]
fn a_second_sender_cannot_join_a_stream_in_progress() {
    let tmp = tempfile::tempdir().unwrap();
    let output = tmp.path().join("output");
    let recv = End::spawn("recv", &LISTEN, Stdio::null(), file_out(&output), TOKEN);
    let fed = Arc::new(AtomicU64::new(0));
    let (first, input_open) = feeding_sender(&recv.url(), &[], fed.clone(), 4);
    assert!(wait_until(Duration::from_secs(30), || std::fs::metadata(&output).map_or(0, |m| m.len()) > 0));

    let input = tmp.path().join("other");
    std::fs::write(&input, b"another stream").unwrap();
    let second = End::spawn("send", &[&recv.url(), "--retry-for", "1"], file_in(&input), Stdio::null(), TOKEN);
    let (status, stderr) = second.finish();
    assert_ne!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("another stream"), "{stderr}");

    // The first one is unharmed.
    drop(input_open);
    let (status, stderr) = first.finish();
    assert!(status.success(), "{stderr}");
    let (status, stderr) = recv.finish();
    assert!(status.success(), "{stderr}");
    let chunk = text(1 << 20);
    assert!(std::fs::read(&output).unwrap().chunks(1 << 20).all(|c| c == chunk));
}

#[test]
fn a_receiver_with_a_smaller_buffer_than_the_sender_adapts() {
    let tmp = tempfile::tempdir().unwrap();
    let input = mixed(tmp.path(), 64);
    let output = tmp.path().join("output");
    let recv =
        End::spawn("recv", &[&LISTEN[..], &["--buffer", "2M"]].concat(), Stdio::null(), file_out(&output), TOKEN);
    // Cuts make frames arrive far out of turn: up to the sender's window.
    let wan = Wan::start(recv.port, &["--cut-every", "0.3", "--conn-rate", "2M", "--delay-ms", "5"]);
    let url = format!("pareco://127.0.0.1:{}", wan.port);
    let send =
        End::spawn("send", &[&url, "--buffer", "64M", "--compress", "none"], file_in(&input), Stdio::null(), TOKEN);
    both_succeed(send, recv, &input, &output);
}
