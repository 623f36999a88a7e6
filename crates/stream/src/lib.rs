//! The stream's state, without I/O, over TCP links or through object
//! storage: what the sender has out and must be ready to send again, what
//! the receiver holds and may write next, at which level frames are
//! compressed, and how a relayed stream's objects are named and sealed.
//!
//! - [`outstanding`]: the sender's frames not yet acknowledged, and on which
//!   connection each travels, so that a lost connection's frames are sent
//!   again on the others.
//! - [`stripe`]: which connection carries the next frame, so that every
//!   connection is kept busy and none holds much of the stream back.
//! - [`reorder`]: the receiver's frames waiting for their turn, delivered in
//!   order exactly once, duplicates recognised.
//! - [`compress`]: the zstd level of `auto` (see `pareco_compress`), following
//!   whichever of the link and the CPU is the bottleneck.
//! - [`Tally`]: count and digest of a stream, checked at the end.
//! - [`relay`]: a stream relayed through object storage: how it is cut into
//!   objects, how they are named, sealed and described.

pub mod compress;
pub mod outstanding;
pub mod relay;
pub mod reorder;
pub mod stripe;

use pareco_proto::Digest;

/// Frames of a stream hold at most this many bytes of input.
pub const FRAME_SIZE: usize = 1 << 20;

/// Frames, bytes and BLAKE3 of a stream, fed in order.
#[derive(Default, Clone)]
pub struct Tally {
    frames: u64,
    bytes: u64,
    hasher: blake3::Hasher,
}

impl Tally {
    /// Counts the next frame.
    pub fn add(&mut self, frame: &[u8]) {
        self.frames += 1;
        self.bytes += frame.len() as u64;
        self.hasher.update(frame);
    }

    /// Frames counted so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Bytes counted so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The digest of everything counted.
    pub fn digest(&self) -> Digest {
        Digest(*self.hasher.finalize().as_bytes())
    }

    /// Whether this is the stream the sender announced.
    pub fn matches(&self, frames: u64, bytes: u64, digest: &Digest) -> bool {
        self.frames == frames && self.bytes == bytes && self.digest() == *digest
    }
}
