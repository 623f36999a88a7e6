//! The handshake payloads (the first bytes a server reads from anyone,
//! once decrypted): parsing and version negotiation never panic, and what
//! negotiates is accepted by the offer it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pareco_proto::handshake::{Hello, Welcome};

fuzz_target!(|data: &[u8]| {
    if let Ok(hello) = Hello::decode(data) {
        assert_eq!(Hello::decode(&hello.encode()).unwrap(), hello);
        if let Ok(welcome) = hello.negotiate() {
            welcome.accept(&hello).expect("a negotiated version is acceptable to the offer");
        }
    }
    if let Ok(welcome) = Welcome::decode(data) {
        let _ = welcome.accept(&Hello::ours(pareco_proto::handshake::FEATURES));
    }
});
