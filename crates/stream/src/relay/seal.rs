//! Sealing of relayed objects: the storage provider sees ciphertext only,
//! and an object that is altered, truncated, swapped with another, replayed
//! from another stream or position, or sealed with another token does not
//! open.
//!
//! # Construction
//!
//! - Key: `HKDF-SHA256(salt = "pareco relay object key v1", ikm = token,
//!   info = stream id)`, 32 bytes: one key per stream, never the token
//!   itself, and unrelated to the key of the TCP channel (which derives
//!   its own from the token with another label).
//! - Cipher: XChaCha20-Poly1305 (RustCrypto `chacha20poly1305`) with a
//!   fresh random 24-byte nonce per object, drawn by the caller and stored
//!   in the envelope. Never derived from the object's index: a resumed
//!   sender seals the same index again over bytes compressed differently,
//!   and 192 random bits never repeat in practice.
//! - Associated data: the clear envelope (magic, format version, kind,
//!   stream id) followed by the object's index (8 bytes, big-endian). So a
//!   data object moved to another index, an end object passed off as a
//!   data object, or an object of another stream fails its tag.
//!
//! ```text
//! envelope (clear)                                  sealed
//! magic "PARECORL" | version u8 | kind u8 | stream id [16] | nonce [24] | ciphertext | tag [16]
//! ```
//!
//! The envelope holds no plaintext of the stream: only what tells a pareco
//! object from a foreign one, and which stream and key it belongs to.
//!
//! Must never: return plaintext whose tag did not check, or choose a nonce.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};

/// A stream's id: random, chosen by the sender that starts it.
pub type StreamId = [u8; 16];

/// First bytes of every sealed object.
pub const MAGIC: [u8; 8] = *b"PARECORL";

/// The format this code writes and reads.
pub const VERSION: u8 = 1;

/// Bytes of a nonce.
pub const NONCE_LEN: usize = 24;

/// Bytes before the ciphertext.
pub const ENVELOPE_LEN: usize = MAGIC.len() + 2 + 16 + NONCE_LEN;

/// Bytes of the authentication tag.
pub const TAG_LEN: usize = 16;

/// HKDF salt: keys for relayed objects and nothing else.
const KEY_LABEL: &[u8] = b"pareco relay object key v1";

/// What an object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The stream's header: id and layout.
    Header = 1,
    /// A run of the stream.
    Data = 2,
    /// The final object: count, length and digest.
    End = 3,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        match v {
            1 => Some(Kind::Header),
            2 => Some(Kind::Data),
            3 => Some(Kind::End),
            _ => None,
        }
    }
}

/// The clear part of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope {
    /// What the object is.
    pub kind: Kind,
    /// The stream it belongs to.
    pub stream: StreamId,
}

/// Why an object does not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// No pareco envelope: something else was stored under this name.
    #[error("not an object of a pareco stream")]
    Foreign,
    /// A pareco object of a format this code does not read.
    #[error(
        "written in relay format {0} (this pareco reads format {VERSION}): use the same pareco version on both ends"
    )]
    Version(u8),
    /// An object of the wrong kind (a data object where the end should be…).
    #[error("holds a {found:?} object where a {expected:?} object belongs")]
    WrongKind {
        /// What was expected.
        expected: Kind,
        /// What the envelope says.
        found: Kind,
    },
    /// An object of another stream.
    #[error("belongs to another stream (left over, or copied here from another prefix)")]
    OtherStream,
    /// The tag does not check: altered, truncated, moved, or another token.
    #[error("does not authenticate: altered, truncated or moved in the bucket, or sealed with another token")]
    Unauthentic,
}

/// The key of one stream's objects.
#[derive(Clone)]
pub struct ObjectKey {
    cipher: XChaCha20Poly1305,
    stream: StreamId,
}

impl std::fmt::Debug for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ObjectKey(…)")
    }
}

impl ObjectKey {
    /// Derives the key of stream `stream` from the token.
    pub fn derive(token: &[u8], stream: StreamId) -> ObjectKey {
        let mut key = Key::default();
        hkdf::Hkdf::<sha2::Sha256>::new(Some(KEY_LABEL), token)
            .expand(&stream, &mut key)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        ObjectKey { cipher: XChaCha20Poly1305::new(&key), stream }
    }

    /// The stream this key seals.
    pub fn stream(&self) -> StreamId {
        self.stream
    }

    /// Seals `plaintext` as object `index` of kind `kind`, with `nonce`
    /// (fresh random bytes: never reuse one).
    pub fn seal(&self, kind: Kind, index: u64, nonce: [u8; NONCE_LEN], plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENVELOPE_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&[VERSION, kind as u8]);
        out.extend_from_slice(&self.stream);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let aad = associated_data(&out[..ENVELOPE_LEN - NONCE_LEN], index);
        let (head, body) = out.split_at_mut(ENVELOPE_LEN);
        let nonce = XNonce::from_slice(&head[ENVELOPE_LEN - NONCE_LEN..]);
        let tag =
            self.cipher.encrypt_in_place_detached(nonce, &aad, body).expect("objects are far below the cipher's limit");
        out.extend_from_slice(&tag);
        out
    }

    /// Opens `object`, expected to be object `index` of kind `kind` of this
    /// key's stream; its plaintext only if the tag checks.
    pub fn open(&self, kind: Kind, index: u64, object: &[u8]) -> Result<Vec<u8>, SealError> {
        let envelope = peek(object)?;
        if envelope.kind != kind {
            return Err(SealError::WrongKind { expected: kind, found: envelope.kind });
        }
        if envelope.stream != self.stream {
            return Err(SealError::OtherStream);
        }
        if object.len() < ENVELOPE_LEN + TAG_LEN {
            return Err(SealError::Unauthentic);
        }
        let aad = associated_data(&object[..ENVELOPE_LEN - NONCE_LEN], index);
        let nonce = XNonce::from_slice(&object[ENVELOPE_LEN - NONCE_LEN..ENVELOPE_LEN]);
        let (body, tag) = object[ENVELOPE_LEN..].split_at(object.len() - ENVELOPE_LEN - TAG_LEN);
        let mut plain = body.to_vec();
        self.cipher
            .decrypt_in_place_detached(nonce, &aad, &mut plain, Tag::from_slice(tag))
            .map_err(|_| SealError::Unauthentic)?;
        Ok(plain)
    }
}

/// Reads the clear envelope of `object` (no key needed: which stream it
/// belongs to, and so which key opens it). Nothing in it is authenticated
/// until [`ObjectKey::open`] says so.
pub fn peek(object: &[u8]) -> Result<Envelope, SealError> {
    if object.len() < ENVELOPE_LEN || object[..MAGIC.len()] != MAGIC {
        return Err(SealError::Foreign);
    }
    let (version, kind) = (object[MAGIC.len()], object[MAGIC.len() + 1]);
    if version != VERSION {
        return Err(SealError::Version(version));
    }
    let kind = Kind::from_u8(kind).ok_or(SealError::Foreign)?;
    let mut stream = StreamId::default();
    stream.copy_from_slice(&object[MAGIC.len() + 2..MAGIC.len() + 18]);
    Ok(Envelope { kind, stream })
}

fn associated_data(envelope: &[u8], index: u64) -> Vec<u8> {
    [envelope, &index.to_be_bytes()].concat()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const STREAM: StreamId = [7; 16];

    fn key() -> ObjectKey {
        ObjectKey::derive(b"the token", STREAM)
    }

    #[test]
    fn an_object_opens_with_its_key_at_its_index_only() {
        let plain = b"the quick brown fox jumps over the lazy database page".repeat(20);
        let object = key().seal(Kind::Data, 5, [1; NONCE_LEN], &plain);
        assert_eq!(key().open(Kind::Data, 5, &object).unwrap(), plain);
        assert_eq!(peek(&object).unwrap(), Envelope { kind: Kind::Data, stream: STREAM });
        assert_eq!(key().open(Kind::Data, 6, &object), Err(SealError::Unauthentic), "moved to another index");
        assert_eq!(
            key().open(Kind::End, 5, &object),
            Err(SealError::WrongKind { expected: Kind::End, found: Kind::Data })
        );
        let other_token = ObjectKey::derive(b"another token", STREAM);
        assert_eq!(other_token.open(Kind::Data, 5, &object), Err(SealError::Unauthentic));
        let other_stream = ObjectKey::derive(b"the token", [8; 16]);
        assert_eq!(other_stream.open(Kind::Data, 5, &object), Err(SealError::OtherStream));
        // Relabelled as the other stream's: the envelope is authenticated too.
        let mut relabelled = object.clone();
        relabelled[10..26].copy_from_slice(&[8; 16]);
        assert_eq!(other_stream.open(Kind::Data, 5, &relabelled), Err(SealError::Unauthentic));
        for cut in [0, 10, ENVELOPE_LEN, ENVELOPE_LEN + TAG_LEN - 1, object.len() - 1] {
            assert!(key().open(Kind::Data, 5, &object[..cut]).is_err(), "truncated to {cut}");
        }
    }

    #[test]
    fn foreign_and_future_objects_are_told_apart() {
        assert_eq!(peek(b"<?xml version=\"1.0\"?><Error>NoSuchKey</Error>"), Err(SealError::Foreign));
        assert_eq!(peek(&[0; 100]), Err(SealError::Foreign));
        let mut object = key().seal(Kind::Header, 0, [2; NONCE_LEN], b"x");
        object[8] = 2;
        assert_eq!(peek(&object), Err(SealError::Version(2)));
        object[8] = VERSION;
        object[9] = 9;
        assert_eq!(peek(&object), Err(SealError::Foreign));
    }

    #[test]
    fn the_ciphertext_shows_neither_the_plaintext_nor_the_token_and_nonces_differ() {
        let plain = b"PLAINTEXT-PROBE-0123456789".repeat(100);
        let a = key().seal(Kind::Data, 0, [3; NONCE_LEN], &plain);
        let b = key().seal(Kind::Data, 0, [4; NONCE_LEN], &plain);
        assert_ne!(a[ENVELOPE_LEN..], b[ENVELOPE_LEN..], "another nonce, another ciphertext");
        for object in [&a, &b] {
            assert!(!object.windows(15).any(|w| w == b"PLAINTEXT-PROBE"));
            assert!(!object.windows(9).any(|w| w == b"the token"));
        }
    }

    proptest! {
        /// Any single flipped bit, anywhere, and the object does not open.
        #[test]
        fn every_altered_bit_is_detected(len in 0usize..300, at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let plain = vec![0x5a; len];
            let mut object = key().seal(Kind::Data, 1, [9; NONCE_LEN], &plain);
            let i = at.index(object.len());
            object[i] ^= 1 << bit;
            prop_assert!(key().open(Kind::Data, 1, &object).is_err());
        }

        /// Whatever the bytes, opening them never panics and never succeeds.
        #[test]
        fn arbitrary_bytes_never_open(bytes in proptest::collection::vec(any::<u8>(), 0..200), prefix in any::<bool>()) {
            let mut object = bytes;
            if prefix && object.len() >= ENVELOPE_LEN {
                object[..8].copy_from_slice(&MAGIC);
                object[8] = VERSION;
                object[9] = Kind::Data as u8;
                object[10..26].copy_from_slice(&STREAM);
            }
            prop_assert!(key().open(Kind::Data, 0, &object).is_err());
        }
    }
}
