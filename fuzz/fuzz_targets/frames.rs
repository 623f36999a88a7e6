//! The frame decoder and message parser on arbitrary bytes, fed in arbitrary
//! pieces: never a panic, never a frame from an incomplete prefix, and every
//! frame that decodes re-encodes to bytes that decode to the same frame.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pareco_proto::codec;

fuzz_target!(|data: &[u8]| {
    let cut = data.first().map_or(0, |b| *b as usize % (data.len().max(1)));
    let mut buf = BytesMut::from(&data[..cut]);
    let mut rest = &data[cut..];
    loop {
        match codec::decode(&mut buf) {
            Ok(Some(frame)) => {
                let again = codec::encode_to_vec(&frame);
                let mut check = BytesMut::from(&again[..]);
                assert_eq!(codec::decode(&mut check).expect("re-encoded frame decodes"), Some(frame));
            }
            Ok(None) if rest.is_empty() => break,
            Ok(None) => {
                let n = rest.len().min(1 + rest[0] as usize * 7);
                buf.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
            }
            Err(_) => break,
        }
    }
});
