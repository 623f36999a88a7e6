//! When metadata can stand in for content.
//!
//! The quick check says a file is unchanged when size and mtime (to the
//! nanosecond) are equal on both sides. That is only sound if every change to
//! the source moves its mtime, and a change that lands in the same clock tick
//! as the version we copied does not: filesystems stamp mtimes from a coarse
//! clock (a few milliseconds on Linux, seconds on some network and FAT
//! filesystems). Git calls this the racy timestamp problem; rsync's quick
//! check misses such changes.
//!
//! The rule here: a timestamp is trusted only once it is clearly apart from
//! the moment it was read, by [`SETTLE_NANOS`]: older, or in the future. A
//! write stamps the file with the clock's current tick, so an mtime far from
//! "now" cannot be the result of a write in the same tick as our read, and
//! any later write moves it. An mtime in the future (an archive's dates, a
//! host whose clock runs ahead, `touch -d`) is therefore as safe as an old
//! one; only one within a window of "now", on either side, is *unsettled*:
//! we wait until it settles before reading it, and if it is still moving
//! after that we copy it but do not stamp the destination with its mtime, so
//! the next run compares content instead of trusting metadata.

use std::time::Duration;

use pareco_proto::{Stat, Timestamp};

/// How far from "now" (older, or in the future) an mtime must be before it
/// is trusted (1 s: coarser than any local filesystem's timestamp
/// granularity, and than the 1-second granularity of the coarsest common
/// network filesystems).
pub const SETTLE_NANOS: i128 = 1_000_000_000;

/// How many times a small file that moved while it was read is read again
/// before it is reported as changing.
pub const MAX_READ_ATTEMPTS: u32 = 3;

/// How long to wait until `stat`'s mtime is settled, seen at `now` on the
/// same machine's clock; `None` if it already is.
pub fn settle_delay(stat: &Stat, now: Timestamp) -> Option<Duration> {
    let age = now.nanos_since(stat.mtime);
    if age >= SETTLE_NANOS || age <= -SETTLE_NANOS {
        return None;
    }
    // Within the window on either side of now: wait until the mtime is a
    // whole window old (at most twice the window, for one just ahead).
    Some(Duration::from_nanos((SETTLE_NANOS - age) as u64))
}

/// Whether `src` (read at `src_now`) and `dst` can be declared identical
/// without reading them: same size, same mtime to the nanosecond, and a
/// settled source mtime.
pub fn quick_check_equal(src: &Stat, src_now: Timestamp, dst: &Stat) -> bool {
    src.size == dst.size && src.mtime == dst.mtime && settle_delay(src, src_now).is_none()
}

/// What to do with a file that was just read whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadVerdict {
    /// The content is a consistent, settled version: write it and stamp it
    /// with the source's mtime.
    Stamp,
    /// Read it again after this delay.
    Retry(Duration),
    /// Write the content but leave the mtime, so the next run re-checks it;
    /// report the file as changing while copied.
    Unstamped,
}

/// Judges one whole-file read: `before` is the stat taken just before reading
/// at `now`, `stable` says whether the stat was the same afterwards, and
/// `attempt` counts reads of this file so far (1 for the first).
pub fn judge_read(before: &Stat, now: Timestamp, stable: bool, attempt: u32) -> ReadVerdict {
    let last = attempt >= MAX_READ_ATTEMPTS;
    if !stable {
        return if last { ReadVerdict::Unstamped } else { ReadVerdict::Retry(Duration::ZERO) };
    }
    match settle_delay(before, now) {
        None => ReadVerdict::Stamp,
        Some(_) if last => ReadVerdict::Unstamped,
        Some(wait) => ReadVerdict::Retry(wait),
    }
}

#[cfg(test)]
mod tests {
    use pareco_proto::Kind;

    use super::*;

    fn stat_at(secs: i64, nanos: u32) -> Stat {
        Stat {
            mtime: Timestamp { secs, nanos },
            ctime: Timestamp { secs, nanos },
            ino: 1,
            dev: 1,
            ..Stat::new(Kind::File, 10)
        }
    }

    const NOW: Timestamp = Timestamp { secs: 1000, nanos: 0 };

    #[test]
    fn old_mtimes_are_settled_recent_ones_wait_out_the_window() {
        assert_eq!(settle_delay(&stat_at(999, 0), NOW), None);
        assert_eq!(settle_delay(&stat_at(999, 500_000_000), NOW), Some(Duration::from_millis(500)));
        assert_eq!(settle_delay(&stat_at(1000, 0), NOW), Some(Duration::from_secs(1)));
        // Clearly in the future (an archive's dates, a clock ahead): no
        // write of now can produce it, and any write moves it: trusted.
        assert_eq!(settle_delay(&stat_at(5000, 0), NOW), None);
        assert_eq!(settle_delay(&stat_at(1001, 0), NOW), None);
        // Just ahead: as unsettled as just behind, until a window old.
        assert_eq!(settle_delay(&stat_at(1000, 500_000_000), NOW), Some(Duration::from_millis(1500)));
    }

    #[test]
    fn quick_check_needs_equal_size_mtime_to_the_nanosecond_and_a_settled_source() {
        let src = stat_at(500, 7);
        assert!(quick_check_equal(&src, NOW, &stat_at(500, 7)));
        assert!(!quick_check_equal(&src, NOW, &stat_at(500, 8)), "nanoseconds count");
        let mut bigger = stat_at(500, 7);
        bigger.size = 11;
        assert!(!quick_check_equal(&src, NOW, &bigger));
        // Equal metadata but the source was modified a moment ago: the same
        // tick may hide a second change, so metadata is not trusted.
        let racy = stat_at(999, 900_000_000);
        assert!(!quick_check_equal(&racy, NOW, &racy.clone()));
        // A future mtime that both sides carry is as good as an old one.
        let future = stat_at(4_102_444_800, 0);
        assert!(quick_check_equal(&future, NOW, &future.clone()));
    }

    #[test]
    fn reads_are_stamped_only_when_stable_and_settled() {
        assert_eq!(judge_read(&stat_at(1, 0), NOW, true, 1), ReadVerdict::Stamp);
        assert_eq!(judge_read(&stat_at(1, 0), NOW, false, 1), ReadVerdict::Retry(Duration::ZERO));
        assert_eq!(judge_read(&stat_at(1, 0), NOW, false, MAX_READ_ATTEMPTS), ReadVerdict::Unstamped);
        assert_eq!(
            judge_read(&stat_at(999, 250_000_000), NOW, true, 1),
            ReadVerdict::Retry(Duration::from_millis(250))
        );
        assert_eq!(judge_read(&stat_at(1000, 0), NOW, true, MAX_READ_ATTEMPTS), ReadVerdict::Unstamped);
        assert_eq!(judge_read(&stat_at(4_102_444_800, 0), NOW, true, 1), ReadVerdict::Stamp);
    }
}
