//! What the two ends agree on when a connection opens: the protocol version
//! and the optional features. The client's [`Hello`] and the server's
//! [`Welcome`] travel as the payloads of the secure channel's handshake
//! (`pareco_net::channel`), so they are encrypted and authenticated like
//! everything else; this module only encodes them and decides.

use crate::codec::CodecError;
use crate::wire::{Reader, Writer};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 8;

/// The oldest protocol version this build accepts.
pub const MIN_PROTOCOL_VERSION: u16 = 8;

/// Feature: either side may send frame bodies compressed with zstd (frame
/// type 9, see [`crate::codec`]).
pub const FEATURE_COMPRESSED_FRAMES: u64 = 1;

/// Feature: the server sends [`Frame::Working`](crate::Frame::Working)
/// every [`KEEPALIVE_EVERY`] while it answers requests of a connection and
/// sends nothing else, so that a long request (copying or hashing gigabytes
/// on a slow disk) is not taken for a dead connection and sent again.
pub const FEATURE_KEEPALIVE: u64 = 2;

/// How often a busy server says it is working: a quarter of the shortest
/// stall timeout a client may set (1 s).
pub const KEEPALIVE_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Optional protocol features this build knows, negotiated as the
/// intersection of both sides'.
pub const FEATURES: u64 = FEATURE_COMPRESSED_FRAMES | FEATURE_KEEPALIVE;

/// The client's offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Oldest version the client speaks.
    pub min_version: u16,
    /// Newest version the client speaks.
    pub max_version: u16,
    /// Features the client supports.
    pub features: u64,
}

/// The server's choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The version both will speak.
    pub version: u16,
    /// Features both support.
    pub features: u64,
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
    #[error("authentication failed: the two sides do not have the same token")]
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

impl Hello {
    /// What this build offers: `features` (among [`FEATURES`]).
    pub fn ours(features: u64) -> Hello {
        Hello { min_version: MIN_PROTOCOL_VERSION, max_version: PROTOCOL_VERSION, features: features & FEATURES }
    }

    /// The payload bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = bytes::BytesMut::new();
        let mut w = Writer(&mut buf);
        w.u16(self.min_version);
        w.u16(self.max_version);
        w.varint(self.features);
        buf.to_vec()
    }

    /// Parses a payload.
    pub fn decode(payload: &[u8]) -> Result<Hello, CodecError> {
        let mut r = Reader::new(bytes::Bytes::copy_from_slice(payload));
        let hello =
            Hello { min_version: r.u16("version")?, max_version: r.u16("version")?, features: r.varint("features")? };
        r.finish()?;
        Ok(hello)
    }

    /// The server's decision: the newest version both speak.
    pub fn negotiate(&self) -> Result<Welcome, HandshakeError> {
        let version = PROTOCOL_VERSION.min(self.max_version);
        if version < self.min_version || version < MIN_PROTOCOL_VERSION {
            return Err(HandshakeError::Version {
                ours: format!("{MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}"),
                theirs: format!("{}..={}", self.min_version, self.max_version),
            });
        }
        Ok(Welcome { version, features: FEATURES & self.features })
    }
}

impl Welcome {
    /// The payload bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = bytes::BytesMut::new();
        let mut w = Writer(&mut buf);
        w.u16(self.version);
        w.varint(self.features);
        buf.to_vec()
    }

    /// Parses a payload.
    pub fn decode(payload: &[u8]) -> Result<Welcome, CodecError> {
        let mut r = Reader::new(bytes::Bytes::copy_from_slice(payload));
        let welcome = Welcome { version: r.u16("version")?, features: r.varint("features")? };
        r.finish()?;
        Ok(welcome)
    }

    /// The client's check of the server's choice against its offer.
    pub fn accept(&self, hello: &Hello) -> Result<Session, HandshakeError> {
        if !(hello.min_version..=hello.max_version).contains(&self.version) {
            return Err(HandshakeError::Version {
                ours: format!("{}..={}", hello.min_version, hello.max_version),
                theirs: self.version.to_string(),
            });
        }
        Ok(Session { version: self.version, features: self.features & hello.features })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_common_version_is_chosen() {
        let hello = Hello::ours(FEATURES);
        let welcome = hello.negotiate().unwrap();
        assert_eq!(welcome.accept(&hello).unwrap(), Session { version: PROTOCOL_VERSION, features: FEATURES });
        let plain = Hello::ours(0);
        assert_eq!(plain.negotiate().unwrap().accept(&plain).unwrap().features, 0, "a feature one side lacks is off");
        let newer = Hello { min_version: 2, max_version: 9, features: u64::MAX };
        assert_eq!(newer.negotiate().unwrap(), Welcome { version: PROTOCOL_VERSION, features: FEATURES });
    }

    #[test]
    fn disjoint_versions_are_refused_on_both_sides() {
        let future = Hello { min_version: 90, max_version: 99, features: 0 };
        assert!(matches!(future.negotiate(), Err(HandshakeError::Version { .. })));
        let old_server = Welcome { version: 1, features: 0 };
        assert!(matches!(old_server.accept(&Hello::ours(FEATURES)), Err(HandshakeError::Version { .. })));
    }

    #[test]
    fn payloads_round_trip_and_reject_garbage() {
        let hello = Hello { min_version: 2, max_version: 3, features: 5 };
        assert_eq!(Hello::decode(&hello.encode()).unwrap(), hello);
        let welcome = Welcome { version: 2, features: 1 };
        assert_eq!(Welcome::decode(&welcome.encode()).unwrap(), welcome);
        assert!(Hello::decode(&[1]).is_err());
        assert!(Welcome::decode(&[2, 0, 0, 9]).is_err());
    }
}
