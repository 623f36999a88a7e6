//! The forwarder driven through its library API, on real sockets on
//! 127.0.0.1: what the binary's signals do (reload, drain, cut) and what
//! the end-to-end tests cannot reach cheaply (the idle timeout, a changed
//! target, both relay modes on the same connection patterns).

use std::net::SocketAddr;
use std::time::Duration;

use pareco_forward::config::{self, Endpoint};
use pareco_forward::{Config, Forwarder, ForwarderOptions, Rule, RuleOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(20);

/// An echo server that prefixes every answer with `tag`.
async fn tagged_echo(tag: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let mut answer = tag.as_bytes().to_vec();
                            answer.extend_from_slice(&buf[..n]);
                            if stream.write_all(&answer).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

fn rule(listen: &str, targets: &[SocketAddr], options: RuleOptions) -> Rule {
    let targets = targets.iter().map(|t| Endpoint::parse_target(&t.to_string()).unwrap()).collect();
    Rule { listen: Endpoint::parse_listen(listen).unwrap(), targets, access: Default::default(), options, line: 0 }
}

fn config(rules: Vec<Rule>) -> Config {
    Config { rules, ..Config::default() }
}

async fn ask(stream: &mut TcpStream, message: &str) -> String {
    stream.write_all(message.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(WAIT, stream.read(&mut buf)).await.expect("an answer").unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

async fn start(rules: Vec<Rule>, splice: bool) -> (Forwarder, Vec<SocketAddr>) {
    let forwarder = Forwarder::start(config(rules), ForwarderOptions { splice }).await.unwrap();
    let addrs = forwarder.listening().iter().map(|l| l.local).collect();
    (forwarder, addrs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_target_applies_to_new_connections_only() {
    let (old, new) = (tagged_echo("old:").await, tagged_echo("new:").await);
    let (mut forwarder, addrs) = start(vec![rule("127.0.0.1:0", &[old], RuleOptions::default())], true).await;
    let mut before = TcpStream::connect(addrs[0]).await.unwrap();
    assert_eq!(ask(&mut before, "a").await, "old:a");

    let report = forwarder.reload(config(vec![rule("127.0.0.1:0", &[new], RuleOptions::default())])).await;
    assert!(report.started.is_empty() && report.stopped.is_empty() && report.failed.is_empty());
    assert_eq!(report.changed.len(), 1);
    assert_eq!(forwarder.listening()[0].local, addrs[0], "the same listener, the same port");

    let mut after = TcpStream::connect(addrs[0]).await.unwrap();
    assert_eq!(ask(&mut after, "b").await, "new:b");
    assert_eq!(ask(&mut before, "c").await, "old:c", "an established connection keeps its target");
    let snapshot = forwarder.snapshot();
    assert_eq!((snapshot.active, snapshot.rules[0].total), (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_timeout_closes_quiet_connections_in_both_relay_modes() {
    for splice in [true, false] {
        let echo = tagged_echo("").await;
        let options = RuleOptions { idle_timeout: Some(Duration::from_millis(200)), ..RuleOptions::default() };
        let (forwarder, addrs) = start(vec![rule("127.0.0.1:0", &[echo], options)], splice).await;
        let mut client = TcpStream::connect(addrs[0]).await.unwrap();
        assert_eq!(ask(&mut client, "ping").await, "ping");
        let mut rest = Vec::new();
        let end = tokio::time::timeout(WAIT, client.read_to_end(&mut rest)).await.expect("closed by the idle timeout");
        assert!(end.is_ok() && rest.is_empty(), "a clean close after the timeout: {end:?}");
        tokio::time::timeout(WAIT, forwarder.closed()).await.unwrap();
        assert_eq!(forwarder.snapshot().rules[0].bytes_up, 4);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_refuses_new_connections_and_cut_resets_the_rest() {
    let echo = tagged_echo("").await;
    let (mut forwarder, addrs) = start(vec![rule("127.0.0.1:0", &[echo], RuleOptions::default())], true).await;
    let mut open = TcpStream::connect(addrs[0]).await.unwrap();
    assert_eq!(ask(&mut open, "x").await, "x");
    forwarder.stop_accepting().await;
    let refused = TcpStream::connect(addrs[0]).await.map(|_| ()).map_err(|e| e.kind());
    assert_eq!(refused, Err(std::io::ErrorKind::ConnectionRefused));
    assert_eq!(ask(&mut open, "y").await, "y", "still relayed while draining");
    let snapshot = forwarder.snapshot();
    assert!(snapshot.rules[0].removed, "a stopped rule is shown while its connections last");
    assert_eq!(forwarder.cut(pareco_forward::Cut::DrainTimeout), 1);
    let mut rest = Vec::new();
    let end = tokio::time::timeout(WAIT, open.read_to_end(&mut rest)).await.unwrap();
    assert_eq!(end.map_err(|e| e.kind()), Err(std::io::ErrorKind::ConnectionReset));
    tokio::time::timeout(WAIT, forwarder.closed()).await.unwrap();
    // Its counters stay to the end: the last statistics written at exit have them.
    let last = forwarder.snapshot();
    assert_eq!((last.rules.len(), last.rules[0].active, last.rules[0].total), (1, 0, 1), "{last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_bursts_cross_both_relay_modes_intact() {
    // Writes of every size from 1 byte to a few pipes' worth, interleaved
    // with answers: the relay must never merge, drop or reorder.
    for splice in [true, false] {
        let echo = tagged_echo("").await;
        let (_forwarder, addrs) = start(vec![rule("127.0.0.1:0", &[echo], RuleOptions::default())], splice).await;
        let client = TcpStream::connect(addrs[0]).await.unwrap();
        let (mut reader, mut writer) = client.into_split();
        let sizes: Vec<usize> = (0..120).map(|i| 1 + (i * 7919) % (600 << 10)).collect();
        let total: usize = sizes.iter().sum();
        let data: Vec<u8> = (0..total).map(|i| (i * 31 + i / 4096) as u8).collect();
        let expected = data.clone();
        let sending = tokio::spawn(async move {
            let mut at = 0;
            for n in sizes {
                writer.write_all(&data[at..at + n]).await.unwrap();
                at += n;
            }
            writer.shutdown().await.unwrap();
        });
        let mut back = Vec::new();
        tokio::time::timeout(WAIT, reader.read_to_end(&mut back)).await.unwrap().unwrap();
        sending.await.unwrap();
        assert!(back == expected, "splice={splice}: {} bytes back of {}", back.len(), expected.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_that_cannot_listen_stops_the_start_and_is_skipped_by_a_reload() {
    let echo = tagged_echo("").await;
    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    let rules =
        vec![rule("127.0.0.1:0", &[echo], RuleOptions::default()), rule(&busy, &[echo], RuleOptions::default())];
    let error = Forwarder::start(config(rules.clone()), ForwarderOptions::default()).await.err().unwrap();
    assert_eq!(error.to_string(), format!("cannot listen on {busy}: Address already in use (os error 98)"));
    let (mut forwarder, _) = start(rules[..1].to_vec(), true).await;
    let report = forwarder.reload(config(rules)).await;
    assert_eq!(report.failed.len(), 1);
    assert_eq!(forwarder.listening().len(), 1, "the rules that could listen still do");
    let nothing = Forwarder::start(Config::default(), ForwarderOptions::default()).await.err().unwrap();
    assert_eq!(nothing.to_string(), "nothing to forward: no rules");
}

#[test]
fn command_line_targets_keep_their_order() {
    let targets = config::parse_targets("db1.new:5432,db2.new:5432,[::1]:5432").unwrap();
    let shown: Vec<String> = targets.iter().map(ToString::to_string).collect();
    assert_eq!(shown, ["db1.new:5432", "db2.new:5432", "[::1]:5432"]);
}
