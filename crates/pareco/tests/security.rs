//! End-to-end security: what crosses the wire, who may connect, what a
//! server in read-only or write-only mode allows, and hostile peers.

mod support;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

const MARKER: &[u8] = b"CONFIDENTIAL-CUSTOMER-RECORD-4fd2a9";

/// A tree whose content, names and token must not appear on the wire.
fn secret_tree(src: &std::path::Path) {
    let mut content = Vec::new();
    for i in 0..2000 {
        content.extend_from_slice(MARKER);
        content.extend_from_slice(format!(" row {i}\n").as_bytes());
    }
    std::fs::write(src.join("small-secret.txt"), &content[..4000]).unwrap();
    std::fs::write(src.join("big-secret.txt"), &content).unwrap();
    std::fs::write(src.join("name-of-a-secret-project"), b"x").unwrap();
    age(src);
}

#[test]
fn the_wire_carries_neither_content_nor_names_nor_the_token() {
    let (_tmp, src, srv) = dirs();
    secret_tree(&src);
    let server = Server::start(&srv);
    let wire = Recorder::start(server.port);
    // Uncompressed: what hides the content must be the encryption.
    sync(&src, wire.url("push"), &["-q", "--compress", "none"]).ok();
    sync(wire.url("push"), srv.join("pulled-back"), &["-q", "--compress", "none"]).ok();
    assert_same_tree(&src, &srv.join("push"));
    assert!(wire.len() > 2 * 70_000, "the recorder saw the transfers ({} bytes)", wire.len());
    for needle in [MARKER, b"name-of-a-secret-project", TOKEN.as_bytes()] {
        assert!(!wire.saw(needle), "{:?} is readable on the wire", String::from_utf8_lossy(needle));
    }

    // The same check sees plaintext when encryption is off on both ends, so
    // it is not blind.
    let (_tmp2, src2, srv2) = dirs();
    secret_tree(&src2);
    let plain = Server::start_with(&srv2, TOKEN, &["--insecure-no-encryption"]);
    let wire = Recorder::start(plain.port);
    sync(&src2, wire.url("push"), &["-q", "--insecure-no-encryption", "--compress", "none"]).ok();
    assert!(wire.saw(MARKER));
    assert!(!wire.saw(TOKEN.as_bytes()), "even in plaintext mode the token never crosses the wire");
}

#[test]
fn encryption_is_never_silently_dropped() {
    let (_tmp, src, srv) = dirs();
    secret_tree(&src);
    let encrypted = Server::start(&srv);
    let run = sync(&src, encrypted.url("t"), &["-q", "--insecure-no-encryption"]);
    assert_eq!(run.code(), 2);
    assert!(run.stderr().contains("requires encryption"), "{}", run.stderr());

    let plain = Server::start_with(&srv, TOKEN, &["--insecure-no-encryption"]);
    let run = sync(&src, plain.url("t"), &["-q"]);
    assert_eq!(run.code(), 2);
    assert!(run.stderr().contains("--insecure-no-encryption"), "{}", run.stderr());
    assert_eq!(std::fs::read_dir(&srv).unwrap().count(), 0, "nothing was written");
}

#[test]
fn read_only_and_write_only_servers_refuse_the_other_direction() {
    let (tmp, src, srv) = dirs();
    secret_tree(&src);
    std::fs::create_dir_all(srv.join("existing")).unwrap();
    std::fs::write(srv.join("existing/file"), b"served").unwrap();
    age(&srv);

    let read_only = Server::start_with(&srv, TOKEN, &["--read-only"]);
    // A dry run fails as the real run does, before listing what it would do.
    for flags in [&["-q"][..], &["-n", "--delete"]] {
        let push = sync(&src, read_only.url("new"), flags);
        assert_eq!(push.code(), 2, "{flags:?}: {}", push.stderr());
        assert_eq!(push.stderr().matches("read-only").count(), 1, "{}", push.stderr());
        assert!(!push.stdout().contains("new"), "{}", push.stdout());
    }
    assert!(!srv.join("new").exists());
    sync(read_only.url("existing"), tmp.path().join("pulled"), &["-q"]).ok();
    assert_eq!(std::fs::read(tmp.path().join("pulled/file")).unwrap(), b"served");
    drop(read_only);

    let write_only = Server::start_with(&srv, TOKEN, &["--write-only"]);
    sync(&src, write_only.url("pushed"), &["-q"]).ok();
    assert_same_tree(&src, &srv.join("pushed"));
    // Refused up front, said once (not once per file).
    for flags in [&["-q"][..], &["-n"]] {
        let pull = sync(write_only.url("existing"), tmp.path().join("pulled2"), flags);
        assert_eq!(pull.code(), 2, "{flags:?}: {}", pull.stderr());
        assert_eq!(pull.stderr().matches("write-only").count(), 1, "{}", pull.stderr());
        assert!(!pull.stdout().contains("new"), "{}", pull.stdout());
    }
    assert!(!tmp.path().join("pulled2/file").exists());
}

#[test]
fn garbage_oversized_frames_and_idle_connections_do_not_stop_service() {
    let (_tmp, src, srv) = dirs();
    secret_tree(&src);
    let server = Server::start_with(&srv, TOKEN, &["--handshake-timeout", "2"]);
    let addr = ("127.0.0.1", server.port);
    let mut idle: Vec<_> = (0..200).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
    // Garbage, a huge length prefix, a stall in the middle of an opening:
    // each is dropped (at once, or when the handshake times out).
    let junk: [&[u8]; 4] =
        [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &u32::MAX.to_le_bytes(), b"PARECO\0\x02\xff\xff", &[0u8; 4096]];
    let hostile: Vec<_> = junk
        .iter()
        .map(|junk| {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            let _ = s.write_all(junk);
            s
        })
        .collect();
    // Meanwhile, a real client is served.
    sync(&src, server.url("t"), &["-q"]).ok();
    assert_same_tree(&src, &srv.join("t"));
    for mut s in hostile.into_iter().chain(idle.drain(..1)) {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut rest = Vec::new();
        // EOF, or a reset when the server closed with our junk unread; a
        // timeout would mean the connection was kept.
        match s.read_to_end(&mut rest) {
            Ok(_) => {}
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
    }
    let log = server.log();
    assert!(log.contains("not a pareco client") && log.contains("handshake timed out"), "{log}");
}

#[test]
fn a_server_without_a_token_makes_one_and_saves_it_privately() {
    let (tmp, src, srv) = dirs();
    secret_tree(&src);
    let token_file = tmp.path().join("server.token");
    let (child, port) = serve_without_token(&srv, &["--token-file", token_file.to_str().unwrap()]);
    let token = std::fs::read_to_string(&token_file).unwrap().trim().to_string();
    assert!(token.len() >= 32 && token.chars().all(|c| c.is_ascii_hexdigit()), "{token:?}");
    assert_eq!(std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777, 0o600);
    let url = format!("pareco://127.0.0.1:{port}/t");
    sync_with_token(&src, &url, &["-q"], &token).ok();
    let stats = std::process::Command::new(bin())
        .args(["sync", "-q"])
        .arg(&src)
        .arg(&url)
        .arg("--token-file")
        .arg(&token_file)
        .env_remove("PARECO_TOKEN")
        .status()
        .unwrap();
    assert!(stats.success());
    let log = stop_and_read_log(child);
    assert!(log.contains("saved it to") && !log.contains(&token), "the token is not printed when saved: {log}");

    // Without a file, the generated token is printed once.
    let (child, _) = serve_without_token(&srv, &[]);
    let log = stop_and_read_log(child);
    let printed = log.lines().find_map(|l| l.split("PARECO_TOKEN): ").nth(1)).unwrap_or_else(|| panic!("{log}"));
    assert!(printed.trim().len() >= 32);
}

/// `pareco serve` with no token in its environment; returns it and its port.
fn serve_without_token(root: &std::path::Path, extra: &[&str]) -> (std::process::Child, u16) {
    let mut child = Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--root"])
        .arg(root)
        .args(extra)
        .env_remove("PARECO_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.as_mut().unwrap()), &mut line).unwrap();
    let port = line.trim().rsplit(':').next().unwrap().parse().unwrap();
    (child, port)
}

fn stop_and_read_log(child: std::process::Child) -> String {
    rustix::process::kill_process(rustix::process::Pid::from_child(&child), rustix::process::Signal::TERM).unwrap();
    String::from_utf8_lossy(&child.wait_with_output().unwrap().stderr).into_owned()
}

#[test]
fn a_bit_flipped_in_transit_is_never_written_encrypted_or_not() {
    let (_tmp, src, srv) = dirs();
    std::fs::write(src.join("big.bin"), bytes(7, 8 << 20)).unwrap();
    for i in 0..50 {
        std::fs::write(src.join(format!("small-{i}")), bytes(i, 3000)).unwrap();
    }
    age(&src);
    let one_connection = ["-q", "-j", "1", "--compress", "none"];

    // Plaintext: the piece fails its checksum at the server, is not written,
    // and is read and sent again.
    let plain = Server::start_with(&srv, TOKEN, &["--insecure-no-encryption"]);
    let wire = Recorder::start_flipping(plain.port, 4 << 20);
    let run = sync(&src, wire.url("plain"), &[&one_connection[..], &["--insecure-no-encryption"]].concat()).ok();
    assert!(run.stderr().contains("failed their checksum in transit; sending them again"), "{}", run.stderr());
    assert_same_tree(&src, &srv.join("plain"));

    // The same for a whole small file in a batch (files of 60 KB, so that
    // the flipped bit lands in content, not in a name or a length).
    let (_tmp2, small, srv2) = dirs();
    for i in 0..20 {
        std::fs::write(small.join(format!("f{i}")), bytes(100 + i, 60_000)).unwrap();
    }
    age(&small);
    let plain = Server::start_with(&srv2, TOKEN, &["--insecure-no-encryption"]);
    let wire = Recorder::start_flipping(plain.port, 600_000);
    let run = sync(&small, wire.url("small"), &[&one_connection[..], &["--insecure-no-encryption"]].concat()).ok();
    assert!(run.stderr().contains("failed its checksum in transit; sending it again"), "{}", run.stderr());
    assert_same_tree(&small, &srv2.join("small"));

    // Encrypted: the record fails its tag, the server drops the connection,
    // and what was in flight on it goes again on a new one.
    let encrypted = Server::start(&srv);
    let wire = Recorder::start_flipping(encrypted.port, 4 << 20);
    sync(&src, wire.url("sealed"), &one_connection).ok();
    assert_same_tree(&src, &srv.join("sealed"));
    assert!(encrypted.log().contains("a record failed authentication"), "{}", encrypted.log());
}

/// A short token and a token file others can read work, but each is said
/// once, with what to do about it.
#[test]
fn a_short_token_and_a_readable_token_file_are_warned_about() {
    let (tmp, src, srv) = dirs();
    std::fs::write(src.join("f"), b"x").unwrap();
    age(&src);
    let server = Server::start_with(&srv, "abc", &[]);
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, "abc\n").unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = sync(&src, server.url("t"), &["-q", "--token-file", token_file.to_str().unwrap()]).ok();
    let err = run.stderr();
    assert_eq!(err.matches("has only 3 characters; use one of at least 16").count(), 1, "{err}");
    assert_eq!(err.matches("can be read by other users (mode 0644); chmod 600 it").count(), 1, "{err}");
    assert!(server.log().contains("the token from PARECO_TOKEN has only 3 characters"), "{}", server.log());
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let good = Server::start(&srv);
    let quiet =
        sync(good.url("t"), tmp.path().join("back"), &["-q", "--token-file", token_file.to_str().unwrap()]).ok();
    assert!(!quiet.stderr().contains("warning"), "{}", quiet.stderr());
}
