//! Temporary names. Every file, link or special file pareco creates first
//! appears as `.pareco-tmp.<pid>.<n>` in its final directory and is then
//! renamed into place, so nobody ever sees half of it under its real name.
//!
//! Names of exactly these forms belong to pareco: listings leave them out
//! (they are never copied, planned for or verified; a source that is itself
//! being written by pareco does not pass on its half-made files). Other
//! names that merely begin with `.pareco-tmp.` are the user's and are listed
//! like any other. A process killed in the middle of a
//! write leaves its temporary behind; the next process that creates one in
//! the same directory first removes those whose process no longer exists on
//! this host. Temporaries of live processes (a concurrent run, a recycled
//! pid) are left alone: removing one would only make that write fail.
//!
//! Partial files (`.pareco-tmp.part.<hash of the final name>`, see
//! `pareco_proto::path::partial_of`) hold new large files while they are
//! written; an interrupted one is kept, as the basis of the next attempt,
//! unless nothing has touched it for [`PARTIAL_MAX_AGE`].

use std::collections::HashSet;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, Dir, Mode, OFlags};
use rustix::io::Errno;
use rustix::process::Pid;

use pareco_proto::path::{TEMP_PREFIX, is_partial};

/// A partial file unchanged for this long is litter (its source is gone, or
/// nobody resumed it): the sweep removes it.
const PARTIAL_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// Directories (device, inode) this process has already cleaned. Bounded:
/// past the limit it starts over, which only costs a directory read.
static SWEPT: Mutex<Option<HashSet<(u64, u64)>>> = Mutex::new(None);
const MAX_SWEPT: usize = 1 << 16;

/// Whether a directory entry is one of pareco's temporaries: a partial file
/// or exactly what [`new_name`] makes.
pub(crate) fn is_temp(name: &[u8]) -> bool {
    is_partial(name) || owner(name).is_some()
}

/// A fresh temporary name in `dir`, after removing (once per directory per
/// process) the temporaries that dead processes left there.
pub(crate) fn new_name(dir: BorrowedFd<'_>) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    sweep_once(dir);
    format!("{TEMP_PREFIX}{}.{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

fn sweep_once(dir: BorrowedFd<'_>) {
    let Ok(st) = rustix::fs::fstat(dir) else { return };
    {
        let mut swept = SWEPT.lock().unwrap_or_else(|e| e.into_inner());
        let swept = swept.get_or_insert_with(HashSet::new);
        if swept.len() >= MAX_SWEPT {
            swept.clear();
        }
        if !swept.insert((st.st_dev, st.st_ino)) {
            return;
        }
    }
    // Best effort: a directory that cannot be read or an entry that cannot be
    // removed only means the litter stays (hidden from listings).
    let Ok(readable) =
        rustix::fs::openat(dir, ".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
    else {
        return;
    };
    let Ok(entries) = Dir::read_from(&readable) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let litter = if is_partial(name.to_bytes()) {
            stale(readable.as_fd(), name)
        } else {
            owner(name.to_bytes()).is_some_and(is_gone)
        };
        if litter {
            let _ = rustix::fs::unlinkat(readable.as_fd(), name, AtFlags::empty());
        }
    }
}

/// Whether a partial file has not been written for [`PARTIAL_MAX_AGE`].
fn stale(dir: BorrowedFd<'_>, name: &std::ffi::CStr) -> bool {
    let Ok(st) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) else { return false };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (now.as_secs() as i64).saturating_sub(st.st_mtime) > PARTIAL_MAX_AGE.as_secs() as i64
}

/// The process id in a name of [`new_name`]'s form, `<prefix><pid>.<n>`
/// (decimal digits only); `None` for any other name.
fn owner(name: &[u8]) -> Option<Pid> {
    let digits = |s: &[u8]| !s.is_empty() && s.len() <= 20 && s.iter().all(u8::is_ascii_digit);
    let rest = name.strip_prefix(TEMP_PREFIX.as_bytes())?;
    let dot = rest.iter().position(|&b| b == b'.')?;
    let (pid, n) = (&rest[..dot], &rest[dot + 1..]);
    if !digits(pid) || !digits(n) {
        return None;
    }
    Pid::from_raw(std::str::from_utf8(pid).ok()?.parse().ok()?)
}

fn is_gone(pid: Pid) -> bool {
    pid.as_raw_nonzero().get() as u32 != std::process::id()
        && rustix::process::test_kill_process(pid) == Err(Errno::SRCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_of_pareco_s_own_forms_are_temporaries() {
        let partial = pareco_proto::path::partial_name(&pareco_proto::path::Name::new(b"a.db").unwrap());
        for ours in [b".pareco-tmp.1234.0".as_slice(), b".pareco-tmp.7.18446744073709551615", partial.as_bytes()] {
            assert!(is_temp(ours), "{:?}", String::from_utf8_lossy(ours));
        }
        let users = [
            b".pareco-tmp.".as_slice(),
            b".pareco-tmp.c",
            b".pareco-tmp.12",
            b".pareco-tmp.12.",
            b".pareco-tmp.12.3.bak",
            b".pareco-tmp.-1.3",
            b".pareco-tmp.0.3",
            b".pareco-tmp.part.notes",
            b"x.pareco-tmp.1.2",
        ];
        for name in users {
            assert!(!is_temp(name), "{:?}", String::from_utf8_lossy(name));
        }
    }

    #[test]
    fn temporaries_of_dead_processes_are_removed_and_others_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let ours = std::process::id();
        let keep = [
            format!("{TEMP_PREFIX}{ours}.7"),      // this process: maybe being written now
            format!("{TEMP_PREFIX}1.3"),           // init is alive
            format!("{TEMP_PREFIX}x.1"),           // the user's, not a temporary
            format!("{TEMP_PREFIX}{dead}.12.bak"), // the user's, not a temporary
            "data".to_string(),
        ];
        let gone = format!("{TEMP_PREFIX}{dead}.12");
        let partial = |n: &[u8]| {
            let name = pareco_proto::path::partial_name(&pareco_proto::path::Name::new(n).unwrap());
            String::from_utf8(name.as_bytes().to_vec()).unwrap()
        };
        let (fresh, stale) = (partial(b"a"), partial(b"b"));
        for name in keep.iter().chain([&gone, &fresh, &stale]) {
            std::fs::write(tmp.path().join(name), b"x").unwrap();
        }
        let old = std::time::SystemTime::now() - PARTIAL_MAX_AGE - std::time::Duration::from_secs(60);
        std::fs::File::options().write(true).open(tmp.path().join(&stale)).unwrap().set_modified(old).unwrap();
        let dir = rustix::fs::open(tmp.path(), OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let name = new_name(dir.as_fd());
        assert!(
            is_temp(name.as_bytes()) && owner(name.as_bytes()).is_some_and(|p| p.as_raw_nonzero().get() as u32 == ours)
        );
        assert!(!tmp.path().join(&gone).exists());
        assert!(!tmp.path().join(&stale).exists(), "a partial untouched for a week is litter");
        for name in keep.iter().chain([&fresh]) {
            assert!(tmp.path().join(name).exists(), "{name}");
        }
        // Once per directory: litter appearing later is left for the next process.
        std::fs::write(tmp.path().join(&gone), b"x").unwrap();
        new_name(dir.as_fd());
        assert!(tmp.path().join(&gone).exists());
    }
}
