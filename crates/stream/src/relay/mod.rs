//! The object-storage relay's pure parts: a stream relayed through a
//! bucket (`pareco send s3://BUCKET/PREFIX`, `pareco recv s3://…`) as
//! sealed objects, named so that anyone holding the token can find and
//! check them in stream order. No I/O: the store, the clock and the
//! randomness (nonces, stream ids) are the caller's.
//!
//! The stream is the same as over TCP links: frames of at most
//! [`crate::FRAME_SIZE`] bytes, each compressed on its own, counted and
//! hashed by a [`crate::Tally`]. An object is a run of consecutive frames,
//! [`Layout::object_size`] bytes of input (the last one shorter), so that
//! byte offset `B` of the stream is in object `B / object_size`.
//!
//! Under `PREFIX/` ([`naming`]):
//!
//! ```text
//! header                          stream id, object size     created once (conditional PUT)
//! data/00000000000000000000       object 0                   one plain PUT each
//! data/00000000000000000001       object 1
//! …
//! end                             objects, bytes, BLAKE3     after the last object
//! ```
//!
//! Every object is sealed ([`seal`]): a clear envelope (magic, format
//! version, kind, stream id, nonce) then XChaCha20-Poly1305 ciphertext.
//! What the plaintexts hold is in [`manifest`]. Each data object also
//! carries the BLAKE3 of the stream up to its start and up to its end, a
//! chain that lets a sender resumed on the same input prove that its input
//! starts with what was uploaded, and a receiver resumed with `--skip`
//! check that every object it writes follows the one before.
//!
//! Must never: trust a byte read from a bucket before its tag is checked,
//! allocate by a length read from a bucket before bounding it, or derive a
//! nonce from anything but fresh randomness.

pub mod manifest;
pub mod naming;
pub mod seal;

use crate::FRAME_SIZE;

/// Smallest object: small enough for tests with many objects.
pub const MIN_OBJECT_SIZE: u64 = 4 << 10;

/// Largest object (one plain PUT holds up to 5 GiB; memory holds a few).
pub const MAX_OBJECT_SIZE: u64 = 1 << 30;

/// The default: few requests per GiB, and an object lands within seconds
/// on a connection of a few MB/s.
pub const DEFAULT_OBJECT_SIZE: u64 = 16 << 20;

/// How a stream is cut into objects and frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    object_size: u64,
}

impl Layout {
    /// Objects of `object_size` bytes of input: from 4 KiB to 1 GiB, a
    /// multiple of 4 KiB below 1 MiB and of 1 MiB from there on (an object
    /// is whole frames).
    pub fn new(object_size: u64) -> Result<Layout, String> {
        let unit = if object_size < FRAME_SIZE as u64 { MIN_OBJECT_SIZE } else { FRAME_SIZE as u64 };
        if !(MIN_OBJECT_SIZE..=MAX_OBJECT_SIZE).contains(&object_size) || !object_size.is_multiple_of(unit) {
            return Err(format!(
                "object size {object_size} is not one of 4K, 8K, … 1020K (multiples of 4 KiB) or 1M, 2M, … 1G (multiples of 1 MiB)"
            ));
        }
        Ok(Layout { object_size })
    }

    /// Bytes of input per object (the last object may hold fewer).
    pub fn object_size(&self) -> u64 {
        self.object_size
    }

    /// Bytes of input per frame: whole frames, or one frame per small object.
    pub fn frame_size(&self) -> usize {
        (self.object_size as usize).min(FRAME_SIZE)
    }

    /// Frames per full object.
    pub fn frames_per_object(&self) -> u64 {
        self.object_size / self.frame_size() as u64
    }

    /// The object holding byte `offset` of the stream, and where in it.
    pub fn position(&self, offset: u64) -> (u64, u64) {
        (offset / self.object_size, offset % self.object_size)
    }

    /// How many objects a stream of `bytes` bytes makes.
    pub fn objects_for(&self, bytes: u64) -> u64 {
        bytes.div_ceil(self.object_size)
    }

    /// The most bytes a sealed data object can take: every frame stored
    /// raw (compressed ones are smaller), its framing, envelope and tag.
    pub fn sealed_limit(&self) -> u64 {
        let per_frame = manifest::FRAME_OVERHEAD as u64 + self.frame_size() as u64;
        (seal::ENVELOPE_LEN + seal::TAG_LEN + manifest::OBJECT_OVERHEAD) as u64 + self.frames_per_object() * per_frame
    }
}

/// The most bytes a sealed header or end object takes (far more than they
/// need: room for later formats to say more).
pub const SMALL_OBJECT_LIMIT: u64 = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_sizes_are_whole_frames_or_small_multiples_of_4k() {
        for ok in [4 << 10, 12 << 10, 1020 << 10, 1 << 20, 16 << 20, 1 << 30] {
            assert!(Layout::new(ok).is_ok(), "{ok}");
        }
        for bad in [0, 4095, 5000, (1 << 20) + 4096, (3 << 20) / 2, 2 << 30] {
            assert!(Layout::new(bad).is_err(), "{bad}");
        }
        let small = Layout::new(8 << 10).unwrap();
        assert_eq!((small.frame_size(), small.frames_per_object()), (8 << 10, 1));
        let big = Layout::new(16 << 20).unwrap();
        assert_eq!((big.frame_size(), big.frames_per_object()), (FRAME_SIZE, 16));
        assert_eq!(big.position((16 << 20) * 3 + 5), (3, 5));
        assert_eq!((big.objects_for(0), big.objects_for(1), big.objects_for(16 << 20)), (0, 1, 1));
        assert_eq!(big.objects_for((16 << 20) + 1), 2);
        assert!(big.sealed_limit() > 16 << 20 && big.sealed_limit() < (16 << 20) + 4096);
    }
}
