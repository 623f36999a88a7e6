//! The opening of every connection: version negotiation and mutual proof of
//! the shared token, as a typestate machine with no I/O.
//!
//! ```text
//! client                                   server
//!   Hello { versions, features, nonce_c } ->
//!                                       <- Welcome { version, features, nonce_s,
//!                                                    proof: MAC(k, "server", T) }
//!   ClientProof { MAC(k, "client", T) }  ->
//!   requests…                            ->  (read only once the proof checks out)
//! ```
//! `k` is derived from the token with BLAKE3's key derivation, `T` is the
//! BLAKE3 hash of the encoded Hello and Welcome (without the proof), and MAC
//! is BLAKE3 in keyed mode. Both nonces are fresh random values, so a
//! recorded proof is useless on another connection, and the token itself
//! never crosses the wire.
//!
//! The server proves itself first, so the client knows it talks to a holder
//! of the token before it sends anything else, and can send its own proof and
//! its first requests together: the handshake costs one round trip. The
//! server reads no request before the client's proof checks out; to a wrong
//! proof it answers only `Refused`. MACs are compared in constant time.
//!
//! This authenticates both ends; it does not encrypt. Encryption belongs in a
//! secure channel under the framing, bound to the same token.

use crate::codec::CodecError;
use crate::wire::{Reader, Writer};

/// Bytes that open a Hello, so that a stray client is recognised at once.
pub const MAGIC: [u8; 8] = *b"PARECO\r\n";

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// The oldest protocol version this build accepts.
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// Optional protocol features, negotiated as the intersection of both sides'.
pub const FEATURES: u64 = 0;

/// The client's opening message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Oldest version the client speaks.
    pub min_version: u16,
    /// Newest version the client speaks.
    pub max_version: u16,
    /// Features the client supports.
    pub features: u64,
    /// Fresh random nonce.
    pub nonce: [u8; 32],
}

/// The server's answer to a Hello it can serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The version both will speak.
    pub version: u16,
    /// Features both support.
    pub features: u64,
    /// Fresh random nonce.
    pub nonce: [u8; 32],
    /// The server's proof of the token, over the transcript.
    pub proof: [u8; 32],
}

/// What a successful handshake agreed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    /// Protocol version.
    pub version: u16,
    /// Common features.
    pub features: u64,
}

/// Why a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The other side does not know the token.
    #[error("authentication failed: the peer does not have the same token")]
    AuthenticationFailed,
    /// The versions the two sides speak do not overlap.
    #[error("no common protocol version: this side speaks {ours}, the peer {theirs}")]
    Version {
        /// Our range, for the message.
        ours: String,
        /// Their range.
        theirs: String,
    },
    /// The peer refused the connection and said why.
    #[error("refused by the peer: {0}")]
    Refused(String),
}

/// The key both sides derive from the shared token.
#[derive(Clone)]
pub struct AuthKey([u8; 32]);

impl AuthKey {
    /// Derives the key from the token's bytes.
    pub fn from_token(token: &[u8]) -> AuthKey {
        AuthKey(blake3::derive_key("pareco 2026-11-22 connection authentication v1", token))
    }

    fn mac(&self, label: &[u8], transcript: &blake3::Hash) -> blake3::Hash {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        h.update(label);
        h.update(transcript.as_bytes());
        h.finalize()
    }
}

impl std::fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthKey(…)")
    }
}

fn transcript(hello: &Hello, welcome: &Welcome) -> blake3::Hash {
    let mut buf = bytes::BytesMut::new();
    let mut w = Writer(&mut buf);
    hello.encode(&mut w);
    w.u16(welcome.version);
    w.varint(welcome.features);
    w.raw(&welcome.nonce);
    blake3::hash(&buf)
}

/// Client side, before the Welcome.
pub struct ClientHandshake {
    key: AuthKey,
    hello: Hello,
}

impl ClientHandshake {
    /// Starts a handshake; send [`ClientHandshake::hello`] first.
    pub fn new(key: AuthKey, nonce: [u8; 32]) -> Self {
        let hello =
            Hello { min_version: MIN_PROTOCOL_VERSION, max_version: PROTOCOL_VERSION, features: FEATURES, nonce };
        ClientHandshake { key, hello }
    }

    /// The Hello to send.
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// Checks the Welcome, including the server's proof; on success the
    /// session is established and the client's proof is to be sent (followed
    /// at once by requests).
    pub fn on_welcome(self, welcome: Welcome) -> Result<(Session, [u8; 32]), HandshakeError> {
        if !(self.hello.min_version..=self.hello.max_version).contains(&welcome.version) {
            return Err(HandshakeError::Version {
                ours: format!("{}..={}", self.hello.min_version, self.hello.max_version),
                theirs: welcome.version.to_string(),
            });
        }
        let t = transcript(&self.hello, &welcome);
        // blake3::Hash compares in constant time.
        if self.key.mac(b"server", &t) != blake3::Hash::from(welcome.proof) {
            return Err(HandshakeError::AuthenticationFailed);
        }
        let session = Session { version: welcome.version, features: welcome.features & self.hello.features };
        Ok((session, *self.key.mac(b"client", &t).as_bytes()))
    }
}

/// Server side, before the Hello.
pub struct ServerHandshake {
    key: AuthKey,
    nonce: [u8; 32],
}

impl ServerHandshake {
    /// Starts the server side with a fresh nonce.
    pub fn new(key: AuthKey, nonce: [u8; 32]) -> Self {
        ServerHandshake { key, nonce }
    }

    /// Negotiates the version and produces the Welcome (with the server's
    /// proof) to send.
    pub fn on_hello(self, hello: Hello) -> Result<(ServerAwaitingProof, Welcome), HandshakeError> {
        let version = PROTOCOL_VERSION.min(hello.max_version);
        if version < hello.min_version || version < MIN_PROTOCOL_VERSION {
            return Err(HandshakeError::Version {
                ours: format!("{MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}"),
                theirs: format!("{}..={}", hello.min_version, hello.max_version),
            });
        }
        let mut welcome = Welcome { version, features: FEATURES & hello.features, nonce: self.nonce, proof: [0; 32] };
        let t = transcript(&hello, &welcome);
        welcome.proof = *self.key.mac(b"server", &t).as_bytes();
        let session = Session { version, features: welcome.features };
        Ok((ServerAwaitingProof { key: self.key, transcript: t, session }, welcome))
    }
}

/// Server side, waiting for the client's proof.
pub struct ServerAwaitingProof {
    key: AuthKey,
    transcript: blake3::Hash,
    session: Session,
}

impl ServerAwaitingProof {
    /// Checks the client's proof; success means both sides hold the token.
    pub fn on_client_proof(self, proof: [u8; 32]) -> Result<Session, HandshakeError> {
        if self.key.mac(b"client", &self.transcript) != blake3::Hash::from(proof) {
            return Err(HandshakeError::AuthenticationFailed);
        }
        Ok(self.session)
    }
}

impl Hello {
    pub(crate) fn encode(&self, w: &mut Writer<'_>) {
        w.raw(&MAGIC);
        w.u16(self.min_version);
        w.u16(self.max_version);
        w.varint(self.features);
        w.raw(&self.nonce);
    }

    pub(crate) fn decode(r: &mut Reader) -> Result<Hello, CodecError> {
        let mut magic = [0u8; 8];
        for b in &mut magic {
            *b = r.u8("magic")?;
        }
        if magic != MAGIC {
            return Err(CodecError::Invalid("not a pareco client (bad magic)"));
        }
        Ok(Hello {
            min_version: r.u16("version")?,
            max_version: r.u16("version")?,
            features: r.varint("features")?,
            nonce: r.array32("nonce")?,
        })
    }
}

impl Welcome {
    pub(crate) fn encode(&self, w: &mut Writer<'_>) {
        w.u16(self.version);
        w.varint(self.features);
        w.raw(&self.nonce);
        w.raw(&self.proof);
    }

    pub(crate) fn decode(r: &mut Reader) -> Result<Welcome, CodecError> {
        Ok(Welcome {
            version: r.u16("version")?,
            features: r.varint("features")?,
            nonce: r.array32("nonce")?,
            proof: r.array32("proof")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a handshake; returns what the client and the server concluded.
    fn run(
        client_token: &[u8],
        server_token: &[u8],
    ) -> (Result<Session, HandshakeError>, Option<Result<Session, HandshakeError>>) {
        let client = ClientHandshake::new(AuthKey::from_token(client_token), [1; 32]);
        let server = ServerHandshake::new(AuthKey::from_token(server_token), [2; 32]);
        let (server, welcome) = server.on_hello(client.hello().clone()).unwrap();
        match client.on_welcome(welcome) {
            Ok((session, proof)) => (Ok(session), Some(server.on_client_proof(proof))),
            Err(e) => (Err(e), None),
        }
    }

    #[test]
    fn same_token_authenticates_both_ways() {
        let (client, server) = run(b"s3cret", b"s3cret");
        let want = Session { version: PROTOCOL_VERSION, features: FEATURES };
        assert_eq!(client.unwrap(), want);
        assert_eq!(server.unwrap().unwrap(), want);
    }

    #[test]
    fn a_client_with_the_wrong_token_stops_before_sending_anything() {
        let (client, server) = run(b"guess", b"s3cret");
        assert_eq!(client.unwrap_err(), HandshakeError::AuthenticationFailed);
        assert!(server.is_none());
    }

    #[test]
    fn the_server_refuses_a_forged_client_proof() {
        let server = ServerHandshake::new(AuthKey::from_token(b"t"), [2; 32]);
        let hello = ClientHandshake::new(AuthKey::from_token(b"x"), [1; 32]).hello().clone();
        let (server, _) = server.on_hello(hello).unwrap();
        assert_eq!(server.on_client_proof([7; 32]).unwrap_err(), HandshakeError::AuthenticationFailed);
    }

    #[test]
    fn disjoint_versions_are_refused() {
        let server = ServerHandshake::new(AuthKey::from_token(b"t"), [2; 32]);
        let hello = Hello { min_version: 90, max_version: 99, features: 0, nonce: [0; 32] };
        assert!(matches!(server.on_hello(hello), Err(HandshakeError::Version { .. })));
    }

    #[test]
    fn a_proof_is_bound_to_the_nonces() {
        let key = AuthKey::from_token(b"t");
        // A proof recorded on one connection...
        let (_, welcome_a) = ServerHandshake::new(key.clone(), [3; 32])
            .on_hello(ClientHandshake::new(key.clone(), [1; 32]).hello().clone())
            .unwrap();
        let (_, proof_a) = ClientHandshake::new(key.clone(), [1; 32]).on_welcome(welcome_a).unwrap();
        // ...is refused on another (the server chose another nonce).
        let (server_b, _) = ServerHandshake::new(key.clone(), [4; 32])
            .on_hello(ClientHandshake::new(key, [1; 32]).hello().clone())
            .unwrap();
        assert!(server_b.on_client_proof(proof_a).is_err());
    }
}
