//! The content-defined delta: how a file whose content moved (bytes inserted
//! or removed, records rewritten with other lengths, an archive with a member
//! changed) is rebuilt at the destination from pieces of its old version,
//! found at whatever offset, plus only the bytes that are new.
//!
//! Fixed-offset chunks (see [`crate::file`]) are the right unit for files
//! updated in place, and stay the first pass. When the first chunk that
//! differs turns out to hold content the old version has at *another*
//! offset ([`shifted`]), the file is rebuilt instead: runs of chunks that
//! match stay copies at their offset; each run that differs is cut, on both
//! sides, at content-defined boundaries (FastCDC, computed where the file
//! is), each piece named by a short digest. A piece of the new version found
//! among the old version's pieces becomes a copy from the old file
//! ([`Op::Reuse`]); the pieces found nowhere form gaps, and a gap's
//! counterpart in the old version (between the copies around it) is cut
//! again, finer ([`finer`]), and matched again, until the gaps are small.
//! What is left travels ([`Op::Literal`]).
//!
//! Short digests are enough because nothing is trusted on their word: the
//! rebuilt file is checked against the source's full chunk digests before
//! it replaces the old one, and a chunk that does not match is sent whole.
//!
//! Never here: reading files, choosing which file is the old version.

use std::collections::HashMap;
use std::ops::Range;

use pareco_proto::Piece;

use crate::file::ChunkPlan;
use pareco_proto::limits::{MAX_PIECE_AVG as MAX_AVG, MIN_PIECE_AVG as MIN_AVG};

/// Pieces per region on a first cut: about this many, so that the old
/// version's list costs ~11 bytes per piece on the wire, a small fraction
/// of the region.
const FIRST_CUT_PIECES: u64 = 2048;

/// A gap is cut again only if it is at least this many finer pieces long.
const REFINE_MIN_PIECES: u64 = 8;

/// How much finer each cut of a gap is.
const REFINE_FACTOR: u32 = 16;

/// The average piece size of a first cut of `len` bytes: a power of two.
pub fn first_avg(len: u64) -> u32 {
    let want = (len / FIRST_CUT_PIECES).max(1);
    (want.next_power_of_two().min(MAX_AVG as u64) as u32).max(MIN_AVG * 4)
}

/// The next, finer average for a gap of `gap` bytes cut at `avg`; `None`
/// when the gap is too small to gain from it.
pub fn finer(avg: u32, gap: u64) -> Option<u32> {
    let next = (avg / REFINE_FACTOR).max(MIN_AVG);
    (next < avg && gap >= next as u64 * REFINE_MIN_PIECES).then_some(next)
}

/// A piece at its place in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Located {
    /// Offset in the file.
    pub offset: u64,
    /// Length.
    pub len: u32,
    /// Short digest of its bytes.
    pub digest: u64,
}

/// Pieces as one side lists them for a region starting at `start`, placed.
pub fn locate(start: u64, pieces: &[Piece]) -> Vec<Located> {
    let mut at = start;
    pieces
        .iter()
        .map(|p| {
            let located = Located { offset: at, len: p.len, digest: p.digest };
            at += p.len as u64;
            located
        })
        .collect()
}

/// One step of rebuilding: where a range of the new file comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `len` bytes at `at` in the new file are the old file's at `from`.
    Reuse {
        /// Offset in the new file.
        at: u64,
        /// Offset in the old file.
        from: u64,
        /// Length.
        len: u64,
    },
    /// These bytes of the new file travel.
    Literal(Range<u64>),
}

impl Op {
    /// The range of the new file it fills.
    pub fn range(&self) -> Range<u64> {
        match self {
            Op::Reuse { at, len, .. } => *at..at + len,
            Op::Literal(r) => r.clone(),
        }
    }
}

/// A run of the new file not found among the old version's pieces, and
/// where in the old version its content would be if it moved there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// The range in the new file.
    pub src: Range<u64>,
    /// The range of the old file between the copies around it.
    pub dst: Range<u64>,
}

/// The first step of a rebuild, from the fixed-chunk comparison of the
/// span both versions have (`plans`, one per chunk of `chunk` bytes, see
/// [`crate::file::diff_chunks`]): runs of chunks found equal are copies at
/// their own offset; each run of chunks that differ is a gap whose
/// counterpart is the old version's same span, except that the last one
/// reaches the ends of both files (what was inserted or removed before it
/// shifts it there). A new version longer than both spans ends in a gap.
pub fn regions(plans: &[ChunkPlan], chunk: u32, src_size: u64, old_size: u64) -> (Vec<Op>, Vec<Gap>) {
    let (chunk, n) = (chunk as u64, plans.len());
    let (mut ops, mut gaps) = (Vec::new(), Vec::new());
    let mut i = 0;
    while i < n {
        let same = plans[i] == ChunkPlan::Same;
        let j = (i..n).find(|&k| (plans[k] == ChunkPlan::Same) != same).unwrap_or(n);
        let start = i as u64 * chunk;
        if same {
            let len = (j as u64 * chunk).min(src_size) - start;
            ops.push(Op::Reuse { at: start, from: start, len });
        } else if j == n {
            gaps.push(Gap { src: start..src_size, dst: start..old_size.max(start) });
        } else {
            gaps.push(Gap { src: start..j as u64 * chunk, dst: start..j as u64 * chunk });
        }
        i = j;
    }
    let covered = (n as u64 * chunk).min(src_size);
    if plans.last().is_none_or(|p| *p == ChunkPlan::Same) && covered < src_size {
        gaps.push(Gap { src: covered..src_size, dst: covered.min(old_size)..old_size });
    }
    (ops, gaps)
}

/// Matches the new version's pieces of a region against the old version's
/// pieces of its counterpart `dst` (a range of the old file): copies for
/// what is found (adjacent ones merged), gaps for the rest. The ops and
/// gaps together tile the region exactly.
pub fn match_pieces(src: &[Located], dst: &[Located], dst_range: Range<u64>) -> (Vec<Op>, Vec<Gap>) {
    let mut by_digest: HashMap<(u64, u32), Vec<u64>> = HashMap::new();
    for p in dst {
        by_digest.entry((p.digest, p.len)).or_default().push(p.offset);
    }
    let (mut ops, mut gaps) = (Vec::new(), Vec::new());
    // Where the old version continues after the last copy: the preferred
    // match among pieces that occur several times (zeros, repeated records).
    let mut expected = dst_range.start;
    let mut gap_start: Option<u64> = None;
    for p in src {
        let found = by_digest
            .get(&(p.digest, p.len))
            .and_then(|offsets| offsets.iter().copied().min_by_key(|&o| o.abs_diff(expected)));
        let Some(from) = found else {
            gap_start.get_or_insert(p.offset);
            continue;
        };
        if let Some(start) = gap_start.take() {
            gaps.push(Gap { src: start..p.offset, dst: expected.min(from)..from.max(expected.min(from)) });
        }
        let len = p.len as u64;
        match ops.last_mut() {
            Some(Op::Reuse { at, from: f, len: l }) if *at + *l == p.offset && *f + *l == from => *l += len,
            _ => ops.push(Op::Reuse { at: p.offset, from, len }),
        }
        expected = from + len;
    }
    if let (Some(start), Some(last)) = (gap_start, src.last()) {
        gaps.push(Gap { src: start..last.offset + last.len as u64, dst: expected.min(dst_range.end)..dst_range.end });
    }
    (ops, gaps)
}

/// Whether a differing chunk holds content the old version has at another
/// offset: from the pieces of the new chunk and of the old version around
/// it, the share of the chunk found shifted (as opposed to at the same
/// offset, which an in-place block patch handles best, or not at all).
pub fn shifted(src: &[Located], dst: &[Located]) -> bool {
    let at: HashMap<(u64, u32), Vec<u64>> = dst.iter().fold(HashMap::new(), |mut m, p| {
        m.entry((p.digest, p.len)).or_default().push(p.offset);
        m
    });
    let (mut same, mut moved, mut total) = (0u64, 0u64, 0u64);
    for p in src {
        total += p.len as u64;
        match at.get(&(p.digest, p.len)) {
            Some(offsets) if offsets.contains(&p.offset) => same += p.len as u64,
            Some(_) => moved += p.len as u64,
            None => {}
        }
    }
    moved * 4 >= total && moved > same
}

/// Bytes of `ops` copied from the old version at another offset than their
/// own (for the statistics).
pub fn moved_bytes(ops: &[Op]) -> u64 {
    ops.iter().map(|op| if let Op::Reuse { at, from, len } = op { if at != from { *len } else { 0 } } else { 0 }).sum()
}

#[cfg(test)]
mod tests {
    use pareco_proto::limits::valid_piece_avg as valid_avg;
    use proptest::prelude::*;

    use super::*;

    /// Cuts `data` into pieces ending after each `|` boundary byte: a
    /// stand-in for content-defined cutting (boundaries follow content).
    fn cut(start: u64, data: &[u8]) -> Vec<Located> {
        let mut pieces = Vec::new();
        let mut from = 0;
        for (i, &b) in data.iter().enumerate() {
            if b == b'|' || i + 1 == data.len() {
                let bytes = &data[from..=i];
                let digest = u64::from_le_bytes(blake3::hash(bytes).as_bytes()[..8].try_into().unwrap());
                pieces.push(Located { offset: start + from as u64, len: bytes.len() as u32, digest });
                from = i + 1;
            }
        }
        pieces
    }

    /// Applies ops (and literal bytes from `new`) to `old`: what the
    /// destination does.
    fn rebuild(old: &[u8], new: &[u8], ops: &[Op]) -> Vec<u8> {
        let mut out = vec![0u8; new.len()];
        for op in ops {
            match op {
                Op::Reuse { at, from, len } => {
                    out[*at as usize..(at + len) as usize].copy_from_slice(&old[*from as usize..(from + len) as usize])
                }
                Op::Literal(r) => {
                    out[r.start as usize..r.end as usize].copy_from_slice(&new[r.start as usize..r.end as usize])
                }
            }
        }
        out
    }

    fn tiles(ops: &[Op], gaps: &[Gap], range: Range<u64>) -> bool {
        let mut all: Vec<Range<u64>> = ops.iter().map(Op::range).chain(gaps.iter().map(|g| g.src.clone())).collect();
        all.sort_by_key(|r| r.start);
        let mut next = range.start;
        for r in all {
            if r.start != next || r.end <= r.start {
                return false;
            }
            next = r.end;
        }
        next == range.end
    }

    #[test]
    fn an_insertion_costs_only_the_piece_it_lands_in() {
        let old = b"alpha|beta|gamma|delta|epsilon|".to_vec();
        let new = b"alpha|beta|gaXmma|delta|epsilon|".to_vec();
        let (ops, gaps) = match_pieces(&cut(0, &new), &cut(0, &old), 0..old.len() as u64);
        assert_eq!(gaps, vec![Gap { src: 11..18, dst: 11..17 }]);
        assert_eq!(ops, vec![Op::Reuse { at: 0, from: 0, len: 11 }, Op::Reuse { at: 18, from: 17, len: 14 }]);
        assert_eq!(moved_bytes(&ops), 14);
    }

    #[test]
    fn moved_and_repeated_content_is_found_near_where_it_was() {
        let old = b"x|x|x|head|x|x|tail|".to_vec();
        let new = b"tail|x|x|head|".to_vec();
        let (ops, gaps) = match_pieces(&cut(0, &new), &cut(0, &old), 0..old.len() as u64);
        assert!(gaps.is_empty());
        assert_eq!(rebuild(&old, &new, &ops), new);
        // After "tail" (ending the old file), the x's nearest are the last ones.
        assert_eq!(ops[1], Op::Reuse { at: 5, from: 13, len: 2 });
    }

    #[test]
    fn a_gap_at_either_end_points_at_the_rest_of_the_old_range() {
        let old = b"keep|old end|".to_vec();
        let new = b"new start|keep|".to_vec();
        let (_, gaps) = match_pieces(&cut(100, &new), &cut(100, &old), 100..100 + old.len() as u64);
        assert_eq!(gaps, vec![Gap { src: 100..110, dst: 100..100 }]);
        let new = b"keep|new end|".to_vec();
        let (_, gaps) = match_pieces(&cut(0, &new), &cut(0, &old), 0..old.len() as u64);
        assert_eq!(gaps, vec![Gap { src: 5..13, dst: 5..13 }]);
    }

    #[test]
    fn shifted_content_is_told_from_content_changed_in_place() {
        let old = b"one|two|three|four|five|six|".to_vec();
        let inserted = b"!one|two|three|four|five|six|".to_vec();
        assert!(shifted(&cut(0, &inserted[..15]), &cut(0, &old)));
        let in_place = b"one|TWO|three|four|five|six|".to_vec();
        assert!(!shifted(&cut(0, &in_place), &cut(0, &old)));
        let unrelated = b"abc|def|ghi|jkl|mno|pqr|".to_vec();
        assert!(!shifted(&cut(0, &unrelated), &cut(0, &old)));
    }

    #[test]
    fn regions_copy_equal_chunks_in_place_and_the_last_reaches_both_ends() {
        use ChunkPlan::*;
        let (ops, gaps) = regions(&[Same, Refine, Refine, Same, Send], 10, 48, 45);
        assert_eq!(ops, vec![Op::Reuse { at: 0, from: 0, len: 10 }, Op::Reuse { at: 30, from: 30, len: 10 }]);
        assert_eq!(gaps, vec![Gap { src: 10..30, dst: 10..30 }, Gap { src: 40..48, dst: 40..45 }]);
        // A longer new version whose common span all matched: the rest is new.
        let (ops, gaps) = regions(&[Same, Same], 10, 35, 20);
        assert_eq!(ops, vec![Op::Reuse { at: 0, from: 0, len: 20 }]);
        assert_eq!(gaps, vec![Gap { src: 20..35, dst: 20..20 }]);
        // A shorter new version: its last chunk is short.
        let (ops, gaps) = regions(&[Refine, Same], 10, 15, 40);
        assert_eq!((ops, gaps), (vec![Op::Reuse { at: 10, from: 10, len: 5 }], vec![Gap { src: 0..10, dst: 0..10 }]));
    }

    #[test]
    fn piece_sizes_are_powers_of_two_within_limits_and_refining_stops() {
        for len in [0, 1, 4096, 1 << 20, 255 << 20, 1 << 40] {
            assert!(valid_avg(first_avg(len)), "{len}: {}", first_avg(len));
        }
        assert_eq!(first_avg(255 << 20), 128 << 10);
        assert_eq!(finer(128 << 10, 1 << 20), Some(8 << 10));
        assert_eq!(finer(8 << 10, 4000), None, "too small a gap");
        assert_eq!(finer(MIN_AVG, 1 << 20), None, "no finer cut");
        assert!(!valid_avg(3000) && !valid_avg(128) && !valid_avg(512 << 10));
    }

    proptest! {
        #[test]
        fn matching_tiles_the_region_and_copies_only_equal_bytes(
            old in proptest::collection::vec(prop_oneof![Just(b'|'), any::<u8>()], 0..400),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 0..6),
        ) {
            let mut new = old.clone();
            for (at, byte, kind) in edits {
                let i = if new.is_empty() { 0 } else { at.index(new.len()) };
                match kind {
                    0 => new.insert(i, byte),
                    1 if !new.is_empty() => { new.remove(i); }
                    _ if !new.is_empty() => new[i] = byte,
                    _ => new.push(byte),
                }
            }
            let (src, dst) = (cut(0, &new), cut(0, &old));
            let (mut ops, gaps) = match_pieces(&src, &dst, 0..old.len() as u64);
            prop_assert!(tiles(&ops, &gaps, 0..new.len() as u64));
            for g in &gaps {
                prop_assert!(g.dst.start <= g.dst.end && g.dst.end <= old.len() as u64);
            }
            ops.extend(gaps.into_iter().map(|g| Op::Literal(g.src)));
            prop_assert_eq!(rebuild(&old, &new, &ops), new);
        }
    }
}
