//! The secure channel: how every pareco connection opens, authenticates both
//! ends and protects what follows.
//!
//! # Design note
//!
//! Both ends share one secret, the token, and nothing else. The Noise
//! protocol framework fits that exactly: `Noise_NNpsk0_25519_AESGCM_SHA256`
//! takes the token (through BLAKE3's key derivation) as a pre-shared key.
//! Each side contributes a fresh X25519 key, so every connection gets its own
//! keys and past traffic stays secret even if the token leaks later; the
//! pre-shared key is mixed in before the first payload, so only holders of
//! the token can complete the handshake, in either direction, and a man in
//! the middle without it fails. It costs one round trip, needs no
//! certificates, and the implementation (the `snow` crate, with `ring` for
//! AES-GCM and SHA-256) is a well-reviewed one. TLS 1.3 would also do, but
//! it authenticates with certificates that pareco would have to generate,
//! store and then ignore in favour of a second, token-bound proof. AES-GCM
//! runs at several GB/s per core with AES-NI (7.7 GB/s measured here), so
//! encryption costs little next to the copies a transfer makes anyway.
//!
//! # Wire format
//!
//! ```text
//! client -> server   "PARECO\0" mode   u16 len   Noise message 1 (payload: Hello)
//! server -> client   "PARECO\0" mode   u16 len   Noise message 2 (payload: Welcome)
//!                    or "PARECO\0\xff" u16 len   reason (UTF-8), then close
//! then, both ways    u16 len   record (AES-GCM: at most 65,535 bytes, 16 of them tag)
//! ```
//! The mode byte says whether records are encrypted (`2`, the default) or
//! whether the frames follow in the clear (`1`, only when both ends pass
//! `--insecure-no-encryption`; the handshake still authenticates both).
//! A server refuses a client of the other mode with a reason, never silently
//! downgrading. Lengths are 16 bits, so nothing here can ask for more than
//! 64 KiB before being authenticated.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pareco_compress::Compression;
use pareco_proto::handshake::{FEATURE_COMPRESSED_FRAMES, FEATURES, HandshakeError, Hello, Session, Welcome};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::framed::{FrameReader, FrameWriter};
use crate::{NetError, WireCounters};

const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_AESGCM_SHA256";
const PROLOGUE: &[u8] = b"pareco secure channel, 2026-11-22";
const MAGIC: &[u8; 7] = b"PARECO\0";
const REFUSAL: u8 = 0xff;

/// Largest Noise message, and so largest record.
pub const MAX_RECORD: usize = 65535;

/// Authentication tag length of a record.
pub const TAG: usize = 16;

/// What a server answers to a client with another token.
pub const AUTH_FAILED: &str = "authentication failed: the two sides do not have the same token";

/// Whether records are encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// AES-GCM records (the default).
    Encrypted,
    /// Frames in the clear after an authenticated handshake
    /// (`--insecure-no-encryption` on both ends).
    Plaintext,
}

impl Security {
    fn mode(self) -> u8 {
        match self {
            Security::Encrypted => 2,
            Security::Plaintext => 1,
        }
    }

    fn from_mode(mode: u8) -> Option<Security> {
        match mode {
            2 => Some(Security::Encrypted),
            1 => Some(Security::Plaintext),
            _ => None,
        }
    }
}

/// The pre-shared key both ends derive from the token.
#[derive(Clone)]
pub struct TokenKey([u8; 32]);

impl TokenKey {
    /// Derives the key from the token's bytes.
    pub fn from_token(token: &[u8]) -> TokenKey {
        TokenKey(blake3::derive_key("pareco 2026-11-22 secure channel pre-shared key", token))
    }
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(…)")
    }
}

/// An open, authenticated connection.
pub struct Channel {
    /// Frames in.
    pub reader: FrameReader<OwnedReadHalf>,
    /// Frames out.
    pub writer: FrameWriter<OwnedWriteHalf>,
    /// What the handshake agreed on.
    pub session: Session,
}

/// One direction's cipher: that direction's key from the handshake and its
/// record counter (the AES-GCM nonce, never reused). Records are exactly
/// what snow's transport mode makes of them (AES-256-GCM, no associated
/// data, the nonce four zero bytes and the counter big-endian, as the Noise
/// specification has it; the tests hold the two side by side), but are
/// sealed and opened in place with ring, which snow's interface does not
/// allow: opening through snow zero-fills a buffer and copies every record
/// into it before decrypting.
pub(crate) struct RecordCipher {
    key: LessSafeKey,
    nonce: u64,
}

impl RecordCipher {
    pub(crate) fn new(key: &[u8; 32]) -> RecordCipher {
        let key = UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte key fits AES-256-GCM");
        RecordCipher { key: LessSafeKey::new(key), nonce: 0 }
    }

    fn next_nonce(&mut self) -> Nonce {
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&self.nonce.to_be_bytes());
        self.nonce += 1;
        Nonce::assume_unique_for_key(nonce)
    }

    /// Encrypts `plain` (at most `MAX_RECORD - TAG` bytes) as one record,
    /// length prefix included, at `out[*used..]`; `out` only grows (so its
    /// memory is initialised once, not zeroed for every record).
    pub(crate) fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>, used: &mut usize) {
        debug_assert!(plain.len() <= MAX_RECORD - TAG);
        let end = *used + 2 + plain.len() + TAG;
        if out.len() < end {
            out.resize(end, 0);
        }
        let nonce = self.next_nonce();
        let body = &mut out[*used + 2..end - TAG];
        body.copy_from_slice(plain);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::empty(), body)
            .expect("a record within MAX_RECORD always encrypts");
        out[end - TAG..end].copy_from_slice(tag.as_ref());
        out[*used..*used + 2].copy_from_slice(&((plain.len() + TAG) as u16).to_le_bytes());
        *used = end;
    }

    /// Opens the record whose ciphertext and tag are `buf[at..]`, leaving
    /// its plaintext at `buf[to..]` (`to <= at`: the cipher moves it down as
    /// it decrypts, in the same pass); returns the plaintext's length.
    pub(crate) fn open_within(&mut self, buf: &mut [u8], to: usize, at: usize) -> Result<usize, NetError> {
        if buf.len() - at < TAG {
            return Err(NetError::Protocol("record shorter than its tag"));
        }
        let nonce = self.next_nonce();
        let plain = self
            .key
            .open_within(nonce, Aad::empty(), &mut buf[to..], at - to..)
            .map_err(|_| NetError::Protocol("a record failed authentication (tampered or corrupted)"))?;
        Ok(plain.len())
    }
}

/// The two directions' ciphers after a handshake: (this side's sealer, its
/// opener).
fn ciphers(hs: &mut snow::HandshakeState) -> (RecordCipher, RecordCipher) {
    let (initiator, responder) = hs.dangerously_get_raw_split();
    let (out, inn) = if hs.is_initiator() { (initiator, responder) } else { (responder, initiator) };
    (RecordCipher::new(&out), RecordCipher::new(&inn))
}

fn noise_builder(key: &TokenKey) -> snow::Builder<'_> {
    snow::Builder::new(NOISE_PARAMS.parse().expect("valid Noise parameters"))
        .psk(0, &key.0)
        .expect("psk position 0 exists in NNpsk0")
        .prologue(PROLOGUE)
        .expect("prologue is set once")
}

fn split(
    stream: TcpStream,
    mut hs: snow::HandshakeState,
    security: Security,
    session: Session,
    compression: Compression,
    counters: Arc<WireCounters>,
) -> Result<Channel, NetError> {
    if !hs.is_handshake_finished() {
        return Err(NetError::Protocol("handshake state error"));
    }
    let (r, w) = stream.into_split();
    let (sealer, opener) = match security {
        Security::Encrypted => {
            let (sealer, opener) = ciphers(&mut hs);
            (Some(sealer), Some(opener))
        }
        Security::Plaintext => (None, None),
    };
    let mut reader = FrameReader::new(r, counters.clone(), opener);
    let mut writer = FrameWriter::new(w, counters, sealer);
    if session.features & FEATURE_COMPRESSED_FRAMES != 0 {
        reader.inflate();
        writer.compress(compression);
    }
    Ok(Channel { reader, writer, session })
}

async fn read_message(stream: &mut TcpStream, counters: &WireCounters) -> Result<Vec<u8>, NetError> {
    let len = stream.read_u16_le().await? as usize;
    let mut message = vec![0; len];
    stream.read_exact(&mut message).await?;
    counters.received.fetch_add(2 + len as u64, Ordering::Relaxed);
    Ok(message)
}

async fn write_all(stream: &mut TcpStream, bytes: &[u8], counters: &WireCounters) -> Result<(), NetError> {
    counters.sent.fetch_add(bytes.len() as u64, Ordering::Relaxed);
    stream.write_all(bytes).await?;
    Ok(())
}

fn opening(mode: u8, message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + message.len());
    out.extend_from_slice(MAGIC);
    out.push(mode);
    out.extend_from_slice(&(message.len() as u16).to_le_bytes());
    out.extend_from_slice(message);
    out
}

/// Client side: opens the channel on a connected stream. Compressed frames
/// are offered unless `compression` is none (then neither side compresses).
pub async fn connect(
    mut stream: TcpStream,
    key: &TokenKey,
    security: Security,
    compression: Compression,
    counters: Arc<WireCounters>,
) -> Result<Channel, NetError> {
    stream.set_nodelay(true)?;
    let mut hs = noise_builder(key).build_initiator().map_err(noise_bug)?;
    let features = if compression == Compression::None { 0 } else { FEATURES };
    let hello = Hello::ours(features);
    let mut message = vec![0; MAX_RECORD];
    let n = hs.write_message(&hello.encode(), &mut message).map_err(noise_bug)?;
    write_all(&mut stream, &opening(security.mode(), &message[..n]), &counters).await?;

    let mut preamble = [0u8; 8];
    stream.read_exact(&mut preamble).await.map_err(|e| closed_during_handshake(e.into()))?;
    counters.received.fetch_add(preamble.len() as u64, Ordering::Relaxed);
    if &preamble[..7] != MAGIC {
        return Err(NetError::Protocol("the server is not a pareco server (or an incompatible version)"));
    }
    let reply = read_message(&mut stream, &counters).await.map_err(closed_during_handshake)?;
    match preamble[7] {
        REFUSAL => return Err(HandshakeError::Refused(String::from_utf8_lossy(&reply).into_owned()).into()),
        mode if mode == security.mode() => {}
        _ => return Err(NetError::Protocol("the server answered in another channel mode")),
    }
    let mut payload = vec![0; MAX_RECORD];
    let n = hs.read_message(&reply, &mut payload).map_err(|_| HandshakeError::AuthenticationFailed)?;
    let welcome = Welcome::decode(&payload[..n])?;
    let session = welcome.accept(&hello)?;
    split(stream, hs, security, session, compression, counters)
}

/// Server side: checks the client's opening, authenticates it and answers.
/// A client of the other mode, another version or another token gets a
/// reason and the connection is closed; one with another token only after
/// `refusal_delay`, to slow down guessing. Frames to the client are
/// compressed under `compression` if it offered compressed frames.
pub async fn accept(
    stream: TcpStream,
    peer: SocketAddr,
    key: &TokenKey,
    security: Security,
    compression: Compression,
    refusal_delay: Duration,
) -> Result<Channel, NetError> {
    let _ = peer;
    accept_counted(stream, key, security, compression, refusal_delay, Arc::default()).await
}

/// [`accept`], counting the connection's bytes in `counters` (a server's
/// totals over all its connections).
pub async fn accept_counted(
    mut stream: TcpStream,
    key: &TokenKey,
    security: Security,
    compression: Compression,
    refusal_delay: Duration,
    counters: Arc<WireCounters>,
) -> Result<Channel, NetError> {
    stream.set_nodelay(true)?;
    let mut preamble = [0u8; 8];
    stream.read_exact(&mut preamble).await?;
    counters.received.fetch_add(preamble.len() as u64, Ordering::Relaxed);
    if &preamble[..7] != MAGIC {
        return Err(NetError::Protocol("not a pareco client"));
    }
    let theirs = Security::from_mode(preamble[7]);
    if theirs != Some(security) {
        let reason = match (security, theirs) {
            (Security::Encrypted, Some(Security::Plaintext)) => {
                "this server requires encryption; the client asked for --insecure-no-encryption"
            }
            (Security::Plaintext, Some(Security::Encrypted)) => {
                "this server runs with --insecure-no-encryption; the client must pass it too"
            }
            _ => "unknown channel mode (incompatible pareco version)",
        };
        refuse(&mut stream, reason, &counters).await;
        return Err(HandshakeError::Refused(reason.into()).into());
    }
    let opening = read_message(&mut stream, &counters).await?;
    let mut hs = noise_builder(key).build_responder().map_err(noise_bug)?;
    let mut payload = vec![0; MAX_RECORD];
    let n = match hs.read_message(&opening, &mut payload) {
        Ok(n) => n,
        Err(_) => {
            // Logged by the server, once per client (not per connection).
            tokio::time::sleep(refusal_delay).await;
            refuse(&mut stream, AUTH_FAILED, &counters).await;
            return Err(HandshakeError::AuthenticationFailed.into());
        }
    };
    let hello = Hello::decode(&payload[..n])?;
    let welcome = match hello.negotiate() {
        Ok(welcome) => welcome,
        Err(e) => {
            refuse(&mut stream, &e.to_string(), &counters).await;
            return Err(e.into());
        }
    };
    let mut message = vec![0; MAX_RECORD];
    let n = hs.write_message(&welcome.encode(), &mut message).map_err(noise_bug)?;
    write_all(&mut stream, &self::opening(security.mode(), &message[..n]), &counters).await?;
    let session = welcome.accept(&hello)?;
    split(stream, hs, security, session, compression, counters)
}

async fn refuse(stream: &mut TcpStream, reason: &str, counters: &WireCounters) {
    let _ = write_all(stream, &opening(REFUSAL, reason.as_bytes()), counters).await;
    let _ = stream.shutdown().await;
}

fn closed_during_handshake(e: NetError) -> NetError {
    match e {
        NetError::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => NetError::Closed,
        other => other,
    }
}

fn noise_bug(e: snow::Error) -> NetError {
    NetError::Protocol(match e {
        snow::Error::Input => "handshake message out of bounds",
        _ => "handshake state error",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A finished NNpsk0 handshake: (initiator, responder).
    fn handshake() -> (snow::HandshakeState, snow::HandshakeState) {
        let key = TokenKey::from_token(b"token");
        let mut i = noise_builder(&key).build_initiator().unwrap();
        let mut r = noise_builder(&key).build_responder().unwrap();
        let (mut m, mut p) = (vec![0; MAX_RECORD], vec![0; MAX_RECORD]);
        let n = i.write_message(b"hello", &mut m).unwrap();
        r.read_message(&m[..n], &mut p).unwrap();
        let n = r.write_message(b"welcome", &mut m).unwrap();
        i.read_message(&m[..n], &mut p).unwrap();
        (i, r)
    }

    /// Opens the records `sealed` holds, one after the other, with ours.
    fn open_all(opener: &mut RecordCipher, mut sealed: Vec<u8>) -> Vec<u8> {
        let (mut opened, mut at) = (0, 0);
        while at < sealed.len() {
            let len = u16::from_le_bytes([sealed[at], sealed[at + 1]]) as usize;
            opened += opener.open_within(&mut sealed[..at + 2 + len], opened, at + 2).unwrap();
            at += 2 + len;
        }
        sealed.truncate(opened);
        sealed
    }

    /// Our records are snow's, both ways: the wire format did not change
    /// when sealing and opening moved to ring.
    #[test]
    fn records_are_those_of_snow_transport_mode() {
        let (mut i, mut r) = handshake();
        let (mut i_seal, mut i_open) = ciphers(&mut i);
        let (mut r_seal, mut r_open) = ciphers(&mut r);
        let i = i.into_stateless_transport_mode().unwrap();
        let r = r.into_stateless_transport_mode().unwrap();
        let messages: Vec<Vec<u8>> =
            (0..5u8).map(|k| vec![k; [0, 1, 1000, MAX_RECORD - TAG, 77][k as usize]]).collect();

        // Ours sealed (initiator to responder), snow opens.
        let (mut sealed, mut used) = (Vec::new(), 0);
        for m in &messages {
            i_seal.seal(m, &mut sealed, &mut used);
        }
        let (mut at, mut out) = (0, vec![0; MAX_RECORD]);
        for (nonce, m) in messages.iter().enumerate() {
            let len = u16::from_le_bytes([sealed[at], sealed[at + 1]]) as usize;
            let n = r.read_message(nonce as u64, &sealed[at + 2..at + 2 + len], &mut out).unwrap();
            assert_eq!(&out[..n], &m[..]);
            at += 2 + len;
        }
        assert_eq!(at, used);

        // snow sealed (responder to initiator), ours opens, several records in one buffer.
        let mut sealed = Vec::new();
        for (nonce, m) in messages.iter().enumerate() {
            let n = r.write_message(nonce as u64, m, &mut out).unwrap();
            sealed.extend_from_slice(&(n as u16).to_le_bytes());
            sealed.extend_from_slice(&out[..n]);
        }
        assert_eq!(open_all(&mut i_open, sealed), messages.concat());

        // A flipped bit fails authentication.
        let (mut sealed, mut used) = (Vec::new(), 0);
        r_seal.seal(b"payload", &mut sealed, &mut used);
        sealed[5] ^= 1;
        assert!(r_open.open_within(&mut sealed[..used], 0, 2).is_err());
        let _ = i;
    }
}
