//! Hard bounds on everything that crosses the wire. A peer that exceeds one is
//! broken or hostile; the codec refuses the frame before allocating for it.

/// Largest frame body accepted or produced (length prefix excluded).
pub const MAX_FRAME: usize = 24 << 20;

/// Largest chunk (and so the largest single data read or write).
pub const MAX_CHUNK: u32 = 16 << 20;

/// Smallest block size used to refine a differing chunk.
pub const MIN_BLOCK: u32 = 512;

/// Longest relative path, in bytes (Linux `PATH_MAX`).
pub const MAX_PATH: usize = 4096;

/// Longest single path component, in bytes (Linux `NAME_MAX`).
pub const MAX_NAME: usize = 255;

/// Longest symlink target, in bytes.
pub const MAX_LINK_TARGET: usize = 4096;

/// Most digests in one message.
pub const MAX_DIGESTS: usize = 1 << 16;

/// Longest extended attribute name.
pub const MAX_XATTR_NAME: usize = 255;

/// Largest extended attribute value (the Linux limit).
pub const MAX_XATTR_VALUE: usize = 64 << 10;

/// Most extended attributes of one entry.
pub const MAX_XATTRS: usize = 1024;

/// Most data extents in one answer.
pub const MAX_EXTENTS: usize = 1 << 16;

/// Most files in one batched read or write.
pub const MAX_BATCH_FILES: usize = 1024;

/// Largest total payload of one batched read or write.
pub const MAX_BATCH_BYTES: usize = 16 << 20;

/// Longest human-readable message (error text, refusal reason).
pub const MAX_MESSAGE: usize = 4096;

/// Smallest average size of a content-defined piece (FastCDC's own limit).
pub const MIN_PIECE_AVG: u32 = 256;

/// Largest average size of a content-defined piece.
pub const MAX_PIECE_AVG: u32 = 256 << 10;

/// Whether `avg` is an average piece size both sides accept: a power of two
/// in [`MIN_PIECE_AVG`]`..=`[`MAX_PIECE_AVG`]. Pieces are cut between a
/// quarter of it and four times it.
pub fn valid_piece_avg(avg: u32) -> bool {
    avg.is_power_of_two() && (MIN_PIECE_AVG..=MAX_PIECE_AVG).contains(&avg)
}

/// Most ranges in one local copy request.
pub const MAX_COPY_RANGES: usize = 1 << 16;

/// Most files a copy may be made from (tried in order).
pub const MAX_CLONE_CANDIDATES: usize = 8;
