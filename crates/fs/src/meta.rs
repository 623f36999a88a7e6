//! Metadata: `lstat` results in protocol form, the clock, and setting times
//! and permissions without following symlinks.

use std::os::fd::{AsFd, BorrowedFd};
use std::time::{SystemTime, UNIX_EPOCH};

use pareco_proto::{Kind, Name, Stat, Timestamp};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, UTIME_OMIT};
use rustix::io::Errno;

use crate::error::FsError;

/// This machine's clock now.
pub fn now() -> Timestamp {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp { secs: d.as_secs() as i64, nanos: d.subsec_nanos() }
}

/// Converts an `lstat` result; `target` is the symlink target for links.
#[allow(clippy::unnecessary_cast)] // the field types differ between architectures
pub fn to_stat(st: &rustix::fs::Stat, target: Option<Box<[u8]>>) -> Stat {
    let kind = match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => Kind::Dir,
        FileType::Symlink => Kind::Symlink,
        FileType::Fifo => Kind::Fifo,
        FileType::Socket => Kind::Socket,
        FileType::CharacterDevice => Kind::CharDevice,
        FileType::BlockDevice => Kind::BlockDevice,
        _ => Kind::File,
    };
    let ts = |secs: i64, nanos: i64| Timestamp { secs, nanos: nanos.clamp(0, 999_999_999) as u32 };
    Stat {
        kind,
        size: st.st_size.max(0) as u64,
        mode: st.st_mode & 0o7777,
        mtime: ts(st.st_mtime as i64, st.st_mtime_nsec as i64),
        ctime: ts(st.st_ctime as i64, st.st_ctime_nsec as i64),
        ino: st.st_ino,
        dev: st.st_dev,
        nlink: st.st_nlink as u64,
        blocks: st.st_blocks.max(0) as u64,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev,
        target: if kind == Kind::Symlink { target } else { None },
    }
}

/// `lstat` of `name` in `dir`, with the target read for symlinks.
pub fn stat_at(dir: BorrowedFd<'_>, name: &[u8]) -> Result<Stat, Errno> {
    let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    let target = if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
        Some(rustix::fs::readlinkat(dir, name, Vec::new())?.into_bytes().into_boxed_slice())
    } else {
        None
    };
    Ok(to_stat(&st, target))
}

/// `fstat` of an open descriptor.
pub fn stat_fd(fd: BorrowedFd<'_>) -> Result<Stat, Errno> {
    Ok(to_stat(&rustix::fs::fstat(fd)?, None))
}

fn timespec(t: Option<Timestamp>) -> Timespec {
    match t {
        Some(t) => Timespec { tv_sec: t.secs, tv_nsec: t.nanos as _ },
        None => Timespec { tv_sec: 0, tv_nsec: UTIME_OMIT },
    }
}

/// Sets the mtime of an open file (atime untouched).
pub fn set_mtime_fd(fd: BorrowedFd<'_>, mtime: Timestamp) -> Result<(), FsError> {
    let times = Timestamps { last_access: timespec(None), last_modification: timespec(Some(mtime)) };
    rustix::fs::futimens(fd, &times).map_err(|e| FsError::io("set mtime", e))
}

/// Sets permissions and/or mtime of `name` in `dir`, never following a
/// symlink (a symlink's own mtime is set; it has no permissions of its own).
pub fn set_attrs_at(
    dir: BorrowedFd<'_>,
    name: &Name,
    mode: Option<u32>,
    mtime: Option<Timestamp>,
) -> Result<(), FsError> {
    let name = name.as_bytes();
    if let Some(mode) = mode {
        // An O_PATH descriptor pins the entry itself (O_NOFOLLOW: a symlink is
        // refused, not followed); chmod goes through its /proc handle, so a
        // symlink swapped in meanwhile cannot redirect it.
        let fd = rustix::fs::openat(dir, name, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| FsError::io("open to set permissions", e))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| FsError::io("stat", e))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::Symlink {
            chmod_pinned(fd.as_fd(), dir, name, mode)?;
        }
    }
    if mtime.is_some() {
        let times = Timestamps { last_access: timespec(None), last_modification: timespec(mtime) };
        rustix::fs::utimensat(dir, name, &times, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| FsError::io("set mtime", e))?;
    }
    Ok(())
}

fn chmod_pinned(fd: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &[u8], mode: u32) -> Result<(), FsError> {
    let proc_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
    match rustix::fs::chmodat(rustix::fs::CWD, proc_path.as_str(), Mode::from_raw_mode(mode), AtFlags::empty()) {
        // Without /proc, fall back to the name (it was not a symlink a moment ago).
        Err(Errno::NOENT) => rustix::fs::chmodat(dir, name, Mode::from_raw_mode(mode), AtFlags::empty()),
        other => other,
    }
    .map_err(|e| FsError::io("set permissions", e))
}
