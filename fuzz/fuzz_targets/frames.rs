//! The frame decoder and message parser on arbitrary bytes, fed in arbitrary
//! pieces, compressed bodies decompressed as a connection does: never a
//! panic, never a frame from an incomplete prefix, never a body larger than
//! announced, and every frame that decodes re-encodes to bytes that decode
//! to the same frame.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pareco_proto::codec::{self, Body};
use pareco_proto::stream::Encoding;

fuzz_target!(|data: &[u8]| {
    let cut = data.first().map_or(0, |b| *b as usize % (data.len().max(1)));
    let mut buf = BytesMut::from(&data[..cut]);
    let mut rest = &data[cut..];
    loop {
        match codec::split(&mut buf) {
            Ok(Some(body)) => {
                let body = match body {
                    Body::Plain(body) => body,
                    Body::Compressed { raw_len, payload } => match pareco_compress::decode(Encoding::Zstd, payload, raw_len) {
                        Ok(body) => {
                            assert_eq!(body.len(), raw_len as usize);
                            body
                        }
                        Err(_) => break,
                    },
                };
                let Ok(frame) = codec::decode_body(body) else { break };
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
