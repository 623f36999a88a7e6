//! One file's content: how it is cut into chunks (the unit of comparison and
//! of parallelism) and blocks (the unit a differing chunk is refined to), and
//! what digests say about which parts must travel.
//!
//! A chunk (default 1 MiB) is compared by one digest from each side. A chunk
//! that differs is refined with per-block digests (default 4 KiB, the page
//! size of most databases), so a changed page costs about a page on the wire,
//! not a chunk.

use std::ops::Range;

use pareco_proto::Digest;

/// How a file of a given size is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// File size in bytes.
    pub size: u64,
    /// Chunk size in bytes.
    pub chunk: u32,
}

impl Layout {
    /// Number of chunks (the last one may be short).
    pub fn chunks(&self) -> u64 {
        self.size.div_ceil(self.chunk as u64)
    }

    /// Byte range of chunk `i`.
    pub fn chunk_range(&self, i: u64) -> Range<u64> {
        let start = i * self.chunk as u64;
        start..(start + self.chunk as u64).min(self.size)
    }

    /// Byte range covered by chunks `chunks`.
    pub fn span(&self, chunks: &Range<u64>) -> Range<u64> {
        self.chunk_range(chunks.start).start..self.chunk_range(chunks.end - 1).end
    }

    /// Consecutive groups of at most `per_group` chunks covering the file:
    /// the unit of one digest request.
    pub fn groups(&self, per_group: u64) -> impl Iterator<Item = Range<u64>> + use<> {
        let n = self.chunks();
        let per_group = per_group.max(1);
        (0..n.div_ceil(per_group)).map(move |g| g * per_group..((g + 1) * per_group).min(n))
    }
}

/// Cuts `range` into pieces of at most `piece` bytes: the unit of one data
/// message when content is sent whole.
pub fn pieces(range: Range<u64>, piece: u32) -> impl Iterator<Item = Range<u64>> {
    let piece = piece.max(1) as u64;
    let start = range.start;
    let n = (range.end - range.start).div_ceil(piece);
    (0..n).map(move |i| start + i * piece..(start + (i + 1) * piece).min(range.end))
}

/// What one chunk needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkPlan {
    /// Same digest on both sides.
    Same,
    /// Present on both sides but different: refine block by block.
    Refine,
    /// Not present (whole) at the destination: send it whole.
    Send,
}

/// Compares one group of chunks. `src` holds the source digests of the
/// group; `dst` the destination's, only for chunks that lie entirely inside
/// the destination file (so it may be shorter). Chunks no larger than
/// `block` gain nothing from refinement and are sent whole.
pub fn diff_chunks(layout: &Layout, group: &Range<u64>, src: &[Digest], dst: &[Digest], block: u32) -> Vec<ChunkPlan> {
    group
        .clone()
        .enumerate()
        .map(|(k, i)| match (src.get(k), dst.get(k)) {
            (Some(s), Some(d)) if s == d => ChunkPlan::Same,
            (_, Some(_)) if layout.chunk_range(i).end - layout.chunk_range(i).start > block as u64 => ChunkPlan::Refine,
            _ => ChunkPlan::Send,
        })
        .collect()
}

/// Indices of the blocks that differ between the source's and the
/// destination's digests of one chunk (a block the destination lacks differs).
pub fn diff_blocks(src: &[Digest], dst: &[Digest]) -> Vec<u32> {
    src.iter().enumerate().filter(|(i, s)| dst.get(*i) != Some(s)).map(|(i, _)| i as u32).collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn d(b: u8) -> Digest {
        Digest([b; 32])
    }

    #[test]
    fn layout_cuts_chunks_and_groups() {
        let l = Layout { size: 10, chunk: 4 };
        assert_eq!(l.chunks(), 3);
        assert_eq!(l.chunk_range(2), 8..10);
        assert_eq!(l.groups(2).collect::<Vec<_>>(), vec![0..2, 2..3]);
        assert_eq!(l.span(&(1..3)), 4..10);
        assert_eq!(Layout { size: 0, chunk: 4 }.groups(2).count(), 0);
        assert_eq!(pieces(5..17, 4).collect::<Vec<_>>(), vec![5..9, 9..13, 13..17]);
        assert_eq!(pieces(5..5, 4).count(), 0);
    }

    #[test]
    fn chunks_match_refine_or_send() {
        let l = Layout { size: 4096 * 3 + 100, chunk: 4096 };
        let plan = diff_chunks(&l, &(0..4), &[d(1), d(2), d(3), d(4)], &[d(1), d(9)], 1024);
        assert_eq!(plan, vec![ChunkPlan::Same, ChunkPlan::Refine, ChunkPlan::Send, ChunkPlan::Send]);
        // A 100-byte tail chunk is not worth refining even if present.
        let tail = diff_chunks(&l, &(3..4), &[d(4)], &[d(5)], 1024);
        assert_eq!(tail, vec![ChunkPlan::Send]);
    }

    #[test]
    fn blocks_differ_where_digests_differ_or_are_missing() {
        assert_eq!(diff_blocks(&[d(1), d(2), d(3)], &[d(1), d(0)]), vec![1, 2]);
        assert!(diff_blocks(&[d(1)], &[d(1)]).is_empty());
    }

    proptest! {
        #[test]
        fn groups_and_pieces_tile_the_file_exactly(size in 0u64..1 << 40, chunk in 1u32..1 << 24, per in 1u64..100) {
            let l = Layout { size, chunk };
            let mut next = 0;
            for g in l.groups(per).take(1000) {
                let span = l.span(&g);
                prop_assert_eq!(span.start, next);
                next = span.end;
            }
            if l.chunks().div_ceil(per) <= 1000 {
                prop_assert_eq!(next, size);
            }
            let mut next = 0;
            for p in pieces(0..size.min(1 << 30), chunk).take(1000) {
                prop_assert_eq!(p.start, next);
                prop_assert!(p.end - p.start <= chunk as u64);
                next = p.end;
            }
        }
    }
}
