//! pareco's wire protocol: what two pareco processes say to each other, and
//! how it is turned into bytes and back.
//!
//! # Goals
//! - **Be paranoid about input.** Everything here may come from a hostile or
//!   broken peer. Every length and count is checked against the bytes that are
//!   actually present (and against [`limits`]) before anything is allocated;
//!   every path is validated into a [`RelPath`] that cannot name anything
//!   outside the tree it is relative to. Decoding never panics.
//! - **Separate "need more bytes" from "the peer is broken".** [`codec::decode`]
//!   returns `Ok(None)` for an incomplete frame and an error only for invalid
//!   input, after which the connection must be dropped.
//! - **Zero-copy payloads.** File data travels as [`bytes::Bytes`] slices of
//!   the received frame, and the encoder hands large payloads back to the
//!   caller instead of copying them.
//! - **Explicit versions.** The [`handshake`] payloads negotiate a protocol
//!   version and a feature set before any request is accepted.
//!
//! # Non-goals
//! - No sockets, no filesystem, no async runtime: this crate is pure and is
//!   tested (and fuzzed) entirely in memory.
//! - No policy: which requests to send, and what to do with the answers, is the
//!   planner's and the engine's business.

pub mod codec;
pub mod handshake;
pub mod limits;
pub mod message;
pub mod path;
pub mod recycle;
pub mod stat;
pub mod stream;
mod wire;

pub use codec::{CodecError, Frame};
pub use message::{
    Block, CloneFile, CopyRange, DirAttrs, Failure, FailureKind, FileContent, FileRead, Piece, Request, Response,
    Xattrs,
};
pub use path::{Name, PathError, RelPath};
pub use stat::{Checksum, Digest, Entry, FileCheck, FileChecker, Kind, Stat, Timestamp};
