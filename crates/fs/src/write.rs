//! Operations that change the tree. Data is checked against its checksum
//! before it is written; small files appear atomically (a temporary file
//! renamed over the target); large files are written at offsets, new ones
//! under their partial name (renamed into place once complete), existing
//! ones in place, and only get their final mode and mtime once complete.
//! A file with other hard links is given a copy of its own before anything
//! changes it, so that no other name (in the tree or outside it) changes.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;

use bytes::Bytes;
use pareco_proto::{
    Block, Checksum, Digest, DirAttrs, Failure, FileCheck, FileContent, Kind, Name, RelPath, Stat, Timestamp,
};
use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use crate::beneath;
use crate::copy;
use crate::error::FsError;
use crate::meta;
use crate::read::{self, open_file, read_range};
use crate::temp;

/// Checks `data` against the `checksum` it came with, if the tree `checks`
/// them (it does unless it trusts its transit: see `FsTree::trust_transit`);
/// data without one is then refused.
fn check_checksum(data: &[u8], checksum: Option<Checksum>, checks: bool) -> Result<(), FsError> {
    match checksum {
        _ if !checks => Ok(()),
        Some(checksum) if Checksum::of(data) == checksum => Ok(()),
        Some(_) => Err(FsError::mismatch("verify", "data does not match its checksum (corrupted in transit?)")),
        None => Err(FsError::mismatch("verify", "data came without its checksum over a plaintext channel")),
    }
}

/// Writers of one file take turns here. Concurrent `pwrite`s to one inode
/// are serialised by its lock in the kernel anyway, where the waiting
/// threads spin while the owner copies (on 2 cores a tenth of the
/// receiver's CPU went to that); on this lock they sleep instead.
fn turn(path: &RelPath) -> std::sync::MutexGuard<'static, ()> {
    use std::hash::{Hash, Hasher};
    static TURNS: [std::sync::Mutex<()>; 16] = [const { std::sync::Mutex::new(()) }; 16];
    let mut h = std::collections::hash_map::DefaultHasher::new();
    path.as_bytes().hash(&mut h);
    TURNS[h.finish() as usize % TURNS.len()].lock().unwrap_or_else(|e| e.into_inner())
}

/// Opens a file for writing at offsets; `create` it if missing (only
/// `PrepareFile` does: a late write to a file removed meanwhile, a partial
/// file given up on, must fail rather than bring it back).
fn open_write(root: BorrowedFd<'_>, path: &RelPath, create: bool) -> Result<File, FsError> {
    if !create {
        return open_file(root, path, OFlags::WRONLY, "open for writing");
    }
    // (openat2 refuses a mode without O_CREAT.)
    let (flags, mode) = (OFlags::WRONLY | OFlags::CREATE | OFlags::NONBLOCK, Mode::from_raw_mode(0o600));
    let fd = beneath::open(root, path, flags, mode).map_err(|e| FsError::io("open for writing", e))?;
    Ok(File::from(fd))
}

/// Writes one verified piece of a file in place (its checksum checked if
/// the tree `checks` them).
pub(crate) fn write_data(
    root: BorrowedFd<'_>,
    path: &RelPath,
    offset: u64,
    checksum: Option<Checksum>,
    checks: bool,
    data: &[u8],
) -> Result<(), FsError> {
    write_ranges(root, path, std::slice::from_ref(&(offset..offset + data.len() as u64)), checksum, checks, data)
}

/// Writes verified bytes to several ranges of a file.
pub(crate) fn write_ranges(
    root: BorrowedFd<'_>,
    path: &RelPath,
    ranges: &[std::ops::Range<u64>],
    checksum: Option<Checksum>,
    checks: bool,
    data: &[u8],
) -> Result<(), FsError> {
    check_checksum(data, checksum, checks)?;
    let file = open_write(root, path, false)?;
    let _turn = turn(path);
    let mut at = 0;
    for r in ranges {
        let len = (r.end - r.start) as usize;
        file.write_all_at(&data[at..at + len], r.start).map_err(|e| FsError::std("write", e))?;
        at += len;
    }
    Ok(())
}

/// The destination half of a block delta: the patched chunk must have the
/// source's digest before a single block is written.
pub(crate) fn apply_patch(
    root: BorrowedFd<'_>,
    path: &RelPath,
    offset: u64,
    len: u32,
    block: u32,
    chunk_digest: &Digest,
    blocks: &[Block],
) -> Result<(), FsError> {
    let fd = beneath::open(root, path, OFlags::RDWR, Mode::empty()).map_err(|e| FsError::io("open for writing", e))?;
    let file = File::from(fd);
    let mut chunk = read_range(&file, offset, len as usize)?;
    for b in blocks {
        let start = b.index as usize * block as usize;
        let slot = start..(start + block as usize).min(len as usize);
        if slot.start >= slot.end || b.data.len() != slot.len() {
            return Err(FsError::bad_request("patch", "block does not fit its slot"));
        }
        chunk[slot].copy_from_slice(&b.data);
    }
    if Digest::of(&chunk) != *chunk_digest {
        return Err(FsError::mismatch(
            "patch",
            "the patched chunk does not match the source (one side changed during the sync)",
        ));
    }
    for b in blocks {
        let at = offset + b.index as u64 * block as u64;
        file.write_all_at(&b.data, at).map_err(|e| FsError::std("write", e))?;
    }
    Ok(())
}

/// Writes whole files, each atomically, then sets the directories'
/// attributes: one outcome each, files first.
pub(crate) fn write_files(
    root: BorrowedFd<'_>,
    files: &[FileContent],
    dirs: &[DirAttrs],
    checks: bool,
) -> Vec<Result<(), Failure>> {
    let mut outcomes: Vec<_> = files.iter().map(|f| write_file(root, f, checks).map_err(Failure::from)).collect();
    let set = |d: &DirAttrs| set_attrs(root, &d.path, Some(d.mode), Some(d.mtime)).map_err(Failure::from);
    outcomes.extend(dirs.iter().map(set));
    outcomes
}

fn write_file(root: BorrowedFd<'_>, f: &FileContent, checks: bool) -> Result<(), FsError> {
    check_checksum(&f.data, f.checksum, checks)?;
    let (dir, name) = parent_made(root, &f.path, "create file")?;
    let temp = temp::new_name(dir.as_fd());
    let result = (|| {
        let fd = rustix::fs::openat(
            &dir,
            temp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| FsError::io("create temporary file", e))?;
        let file = File::from(fd);
        std::io::Write::write_all(&mut &file, &f.data).map_err(|e| FsError::std("write", e))?;
        rustix::fs::fchmod(&file, Mode::from_raw_mode(f.mode)).map_err(|e| FsError::io("set permissions", e))?;
        if let Some(mtime) = f.mtime {
            meta::set_mtime_fd(file.as_fd(), mtime)?;
        }
        rustix::fs::renameat(&dir, temp.as_str(), &dir, name.as_bytes())
            .map_err(|e| FsError::io("rename into place", e))
    })();
    if result.is_err() {
        let _ = rustix::fs::unlinkat(&dir, temp.as_str(), AtFlags::empty());
    }
    result
}

/// Makes sure `path` is a regular file that can be written at offsets.
pub(crate) fn prepare_file(root: BorrowedFd<'_>, path: &RelPath) -> Result<Stat, FsError> {
    let file = match open_write(root, path, true) {
        Err(e) if e.kind == pareco_proto::FailureKind::NotFound => {
            parent_made(root, path, "open for writing")?;
            open_write(root, path, true)?
        }
        Err(e) if e.kind == pareco_proto::FailureKind::PermissionDenied => {
            // An existing read-only file we own: make it writable for now;
            // FinishFile sets the final mode.
            let (dir, name) = beneath::parent(root, path, "open for writing")?;
            let st = meta::stat_at(dir.as_fd(), name.as_bytes()).map_err(|_| e.clone())?;
            if st.kind != Kind::File {
                return Err(e);
            }
            meta::set_attrs_at(dir.as_fd(), &name, Some(st.mode | 0o200), None)?;
            open_write(root, path, true)?
        }
        other => other?,
    };
    let stat = meta::stat_fd(file.as_fd()).map_err(|e| FsError::io("stat", e))?;
    if stat.kind != Kind::File {
        return Err(FsError::bad_request("open for writing", format!("not a regular file but a {}", stat.kind.name())));
    }
    Ok(stat)
}

/// Sets the final size of a complete file, checks that it holds what
/// `check` says (if given; nothing else changes if not), sets its mode and
/// (if given) mtime, then renames it to `place_at` if given.
pub(crate) fn finish_file(
    root: BorrowedFd<'_>,
    path: &RelPath,
    size: u64,
    mode: u32,
    mtime: Option<Timestamp>,
    place_at: Option<&RelPath>,
    check: Option<&FileCheck>,
) -> Result<(), FsError> {
    let access = if check.is_some() { OFlags::RDWR } else { OFlags::WRONLY };
    let file = match beneath::open(root, path, access | OFlags::NONBLOCK, Mode::empty()) {
        // A retry of a finish whose answer was lost: already in place.
        Err(Errno::NOENT) if let Some(dst) = place_at => return already_placed(root, dst, size, mtime),
        other => File::from(other.map_err(|e| FsError::io("open for writing", e))?),
    };
    let st = rustix::fs::fstat(&file).map_err(|e| FsError::io("stat", e))?;
    if st.st_size as u64 != size {
        rustix::fs::ftruncate(&file, size).map_err(|e| FsError::io("set size", e))?;
    }
    if let Some(check) = check
        && !read::holds(&file, size, check)?
    {
        return Err(FsError::mismatch("verify", "the finished file does not hold what its source does"));
    }
    rustix::fs::fchmod(&file, Mode::from_raw_mode(mode)).map_err(|e| FsError::io("set permissions", e))?;
    if let Some(mtime) = mtime {
        meta::set_mtime_fd(file.as_fd(), mtime)?;
    }
    if let Some(dst) = place_at {
        let (from_dir, from) = beneath::parent(root, path, "put the file in place")?;
        let (to_dir, to) = beneath::parent(root, dst, "put the file in place")?;
        rustix::fs::renameat(&from_dir, from.as_bytes(), &to_dir, to.as_bytes())
            .map_err(|e| FsError::io("put the file in place", e))?;
    }
    Ok(())
}

fn already_placed(root: BorrowedFd<'_>, dst: &RelPath, size: u64, mtime: Option<Timestamp>) -> Result<(), FsError> {
    let (dir, name) = beneath::parent(root, dst, "put the file in place")?;
    match meta::stat_at(dir.as_fd(), name.as_bytes()) {
        Ok(st) if st.kind == Kind::File && st.size == size && mtime.is_none_or(|m| m == st.mtime) => Ok(()),
        _ => Err(FsError::io("open for writing", Errno::NOENT)),
    }
}

/// Gives `path` a copy of its own if the file has other hard links (holes
/// kept, owner kept where permitted), renamed over it atomically; sets
/// `mode` and `mtime` if given. Returns the entry's stat afterwards.
pub(crate) fn unshare(
    root: BorrowedFd<'_>,
    path: &RelPath,
    mode: Option<u32>,
    mtime: Option<Timestamp>,
) -> Result<Stat, FsError> {
    let (dir, name) = beneath::parent(root, path, "unshare")?;
    let fd = rustix::fs::openat(
        &dir,
        name.as_bytes(),
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| FsError::io("open to unshare", e))?;
    let file = File::from(fd);
    let st = meta::stat_fd(file.as_fd()).map_err(|e| FsError::io("stat", e))?;
    if st.kind != Kind::File {
        return Err(FsError::bad_request("unshare", format!("not a regular file but a {}", st.kind.name())));
    }
    if st.nlink <= 1 {
        meta::set_attrs_at(dir.as_fd(), &name, mode, mtime)?;
    } else {
        place(&dir, &name, Some(mode.unwrap_or(st.mode)), Some(mtime.unwrap_or(st.mtime)), |temp| {
            let out = rustix::fs::openat(
                &dir,
                temp,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
            .map_err(|e| FsError::io("create temporary file", e))?;
            let out = File::from(out);
            copy::sparse(&file, &out, 0, 0, st.size)?;
            rustix::fs::ftruncate(&out, st.size).map_err(|e| FsError::io("set size", e))?;
            // Where permitted (as root, or keeping one's own); a new file is
            // the server's otherwise, as every file it creates.
            let ids = (Some(rustix::fs::Uid::from_raw(st.uid)), Some(rustix::fs::Gid::from_raw(st.gid)));
            let _ = rustix::fs::fchown(&out, ids.0, ids.1);
            Ok(())
        })?;
    }
    meta::stat_at(dir.as_fd(), name.as_bytes()).map_err(|e| FsError::io("stat", e))
}

/// Creates a directory. A directory already there is fine (the request may
/// be a retry of one whose answer was lost).
pub(crate) fn make_dir(root: BorrowedFd<'_>, path: &RelPath, mode: u32) -> Result<(), FsError> {
    let (dir, name) = parent_made(root, path, "create directory")?;
    match rustix::fs::mkdirat(&dir, name.as_bytes(), Mode::from_raw_mode(mode)) {
        Err(Errno::EXIST) if meta::stat_at(dir.as_fd(), name.as_bytes()).is_ok_and(|s| s.kind == Kind::Dir) => Ok(()),
        other => other.map_err(|e| FsError::io("create directory", e)),
    }
}

/// Makes sure `path` is a directory; returns what was there before (`None`
/// if it was created, with any missing parents). Anything else that is
/// there is left alone, and returned.
pub(crate) fn ensure_dir(root: BorrowedFd<'_>, path: &RelPath, mode: u32) -> Result<Option<Stat>, FsError> {
    let existing = match path.split_last() {
        None => Some(meta::stat_fd(root).map_err(|e| FsError::io("stat", e))?),
        Some(_) => match beneath::parent(root, path, "stat") {
            Ok((dir, name)) => match meta::stat_at(dir.as_fd(), name.as_bytes()) {
                Ok(stat) => Some(stat),
                Err(Errno::NOENT) => None,
                Err(e) => return Err(FsError::io("stat", e)),
            },
            Err(e) if e.kind == pareco_proto::FailureKind::NotFound => None,
            Err(e) => return Err(e),
        },
    };
    if existing.is_none() {
        make_dirs(root, path, mode)?;
    }
    Ok(existing)
}

/// The parent directory of a new entry `path`, made first if it is missing
/// (with any missing parents, `0o700` until the sync sets their mode): a
/// client sends the entries of a new directory without waiting for the
/// directory itself, a round trip per level saved.
pub(crate) fn parent_made(root: BorrowedFd<'_>, path: &RelPath, op: &'static str) -> Result<(OwnedFd, Name), FsError> {
    match beneath::parent(root, path, op) {
        Err(e) if e.kind == pareco_proto::FailureKind::NotFound => {
            let (dir, _) = path.split_last().expect("the root has no parent");
            make_dirs(root, &dir, 0o700)?;
            beneath::parent(root, path, op)
        }
        other => other,
    }
}

/// `mkdir -p`, one component at a time, never through a symlink.
fn make_dirs(root: BorrowedFd<'_>, path: &RelPath, mode: u32) -> Result<(), FsError> {
    let mut at = RelPath::root();
    for component in path.components() {
        let name = Name::new(component).map_err(|e| FsError::bad_request("create directory", e.to_string()))?;
        let dir = beneath::open(root, &at, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())
            .map_err(|e| FsError::io("create directory", e))?;
        match rustix::fs::mkdirat(&dir, name.as_bytes(), Mode::from_raw_mode(mode)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(FsError::io("create directory", e)),
        }
        at = at.join(&name).map_err(|e| FsError::bad_request("create directory", e.to_string()))?;
    }
    // Whatever existed must be a real directory (not a symlink to one).
    beneath::open(root, path, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())
        .map(drop)
        .map_err(|e| FsError::io("create directory", e))
}

/// Creates or atomically replaces a symlink.
pub(crate) fn make_symlink(
    root: BorrowedFd<'_>,
    path: &RelPath,
    target: &Bytes,
    mtime: Option<Timestamp>,
) -> Result<(), FsError> {
    let (dir, name) = parent_made(root, path, "create symlink")?;
    place(&dir, &name, None, mtime, |temp| {
        rustix::fs::symlinkat(&target[..], &dir, temp).map_err(|e| FsError::io("create symlink", e))
    })
}

/// Puts a new entry in place of `name` in `dir` atomically: `create` makes
/// it under a temporary name, it gets `mode` and `mtime`, and it is renamed
/// over whatever non-directory is there. The temporary name never remains.
fn place(
    dir: &OwnedFd,
    name: &Name,
    mode: Option<u32>,
    mtime: Option<Timestamp>,
    create: impl FnOnce(&str) -> Result<(), FsError>,
) -> Result<(), FsError> {
    let temp = temp::new_name(dir.as_fd());
    create(&temp)?;
    let temp_name = Name::new(temp.as_bytes()).expect("temporary names are valid");
    let result = meta::set_attrs_at(dir.as_fd(), &temp_name, mode, mtime).and_then(|()| {
        rustix::fs::renameat(dir, temp.as_str(), dir, name.as_bytes()).map_err(|e| FsError::io("rename into place", e))
    });
    // Gone after a rename, except when a hard link was renamed onto another
    // link of the same file (which does nothing): remove it in every case.
    let _ = rustix::fs::unlinkat(dir, temp.as_str(), AtFlags::empty());
    result
}

/// Creates a fifo or device file (under a temporary name, then renamed over
/// whatever non-directory is there).
pub(crate) fn make_special(
    root: BorrowedFd<'_>,
    path: &RelPath,
    kind: Kind,
    mode: u32,
    rdev: u64,
    mtime: Timestamp,
) -> Result<(), FsError> {
    let file_type = match kind {
        Kind::Fifo => rustix::fs::FileType::Fifo,
        Kind::CharDevice => rustix::fs::FileType::CharacterDevice,
        Kind::BlockDevice => rustix::fs::FileType::BlockDevice,
        other => return Err(FsError::bad_request("create special file", format!("cannot create a {}", other.name()))),
    };
    let (dir, name) = parent_made(root, path, "create special file")?;
    place(&dir, &name, Some(mode), Some(mtime), |temp| {
        rustix::fs::mknodat(&dir, temp, file_type, Mode::from_raw_mode(mode & 0o7777), rdev)
            .map_err(|e| FsError::io("create special file", e))
    })
}

/// Makes `path` a hard link to `existing` (never following a symlink),
/// replacing what is there unless it is a directory.
pub(crate) fn make_link(root: BorrowedFd<'_>, path: &RelPath, existing: &RelPath) -> Result<(), FsError> {
    let (from_dir, from) = beneath::parent(root, existing, "open the file to link")?;
    let (dir, name) = parent_made(root, path, "create hard link")?;
    place(&dir, &name, None, None, |temp| {
        rustix::fs::linkat(&from_dir, from.as_bytes(), &dir, temp, AtFlags::empty())
            .map_err(|e| FsError::io("create hard link", e))
    })
}

/// Removes an entry unless it is a directory.
pub(crate) fn unlink(root: BorrowedFd<'_>, path: &RelPath) -> Result<(), FsError> {
    let (dir, name) = beneath::parent(root, path, "remove")?;
    match rustix::fs::unlinkat(&dir, name.as_bytes(), AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT | Errno::ISDIR) => Ok(()),
        Err(e) => Err(FsError::io("remove", e)),
    }
}

/// Removes an entry, directories recursively, never following a symlink.
pub(crate) fn remove(root: BorrowedFd<'_>, path: &RelPath) -> Result<(), FsError> {
    let (dir, name) = beneath::parent(root, path, "remove")?;
    remove_at(dir.as_fd(), name.as_bytes())
}

fn remove_at(dir: BorrowedFd<'_>, name: &[u8]) -> Result<(), FsError> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        Err(Errno::ISDIR) => {}
        Err(e) => return Err(FsError::io("remove", e)),
    }
    let sub: OwnedFd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| FsError::io("open directory to remove", e))?;
    let entries = rustix::fs::Dir::read_from(&sub).map_err(|e| FsError::io("read directory", e))?;
    for item in entries {
        let item = item.map_err(|e| FsError::io("read directory", e))?;
        let child = item.file_name().to_bytes();
        if child != b"." && child != b".." {
            remove_at(sub.as_fd(), child)?;
        }
    }
    match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(FsError::io("remove directory", e)),
    }
}

/// Sets the owner and/or group of an entry (never following a symlink),
/// restoring set-user-ID and set-group-ID bits that the change clears.
pub(crate) fn set_owner(
    root: BorrowedFd<'_>,
    path: &RelPath,
    uid: Option<u32>,
    gid: Option<u32>,
) -> Result<(), FsError> {
    let (uid, gid) = (uid.map(rustix::fs::Uid::from_raw), gid.map(rustix::fs::Gid::from_raw));
    match path.split_last() {
        Some(_) => {
            let (dir, name) = beneath::parent(root, path, "set owner")?;
            let before = meta::stat_at(dir.as_fd(), name.as_bytes()).map_err(|e| FsError::io("stat", e))?;
            rustix::fs::chownat(&dir, name.as_bytes(), uid, gid, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| FsError::io("set owner", e))?;
            if before.kind != Kind::Symlink && before.mode & 0o6000 != 0 {
                meta::set_attrs_at(dir.as_fd(), &name, Some(before.mode), None)?;
            }
            Ok(())
        }
        None => {
            let fd = beneath::open(root, path, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
                .map_err(|e| FsError::io("open directory", e))?;
            let before = meta::stat_fd(fd.as_fd()).map_err(|e| FsError::io("stat", e))?;
            rustix::fs::fchown(&fd, uid, gid).map_err(|e| FsError::io("set owner", e))?;
            if before.mode & 0o6000 != 0 {
                rustix::fs::fchmod(&fd, Mode::from_raw_mode(before.mode))
                    .map_err(|e| FsError::io("set permissions", e))?;
            }
            Ok(())
        }
    }
}

/// Sets permissions and/or mtime of an existing entry.
pub(crate) fn set_attrs(
    root: BorrowedFd<'_>,
    path: &RelPath,
    mode: Option<u32>,
    mtime: Option<Timestamp>,
) -> Result<(), FsError> {
    match path.split_last() {
        Some(_) => {
            let (dir, name) = beneath::parent(root, path, "set attributes")?;
            meta::set_attrs_at(dir.as_fd(), &name, mode, mtime)
        }
        None => {
            // The root itself: open it as a directory.
            let fd = beneath::open(root, path, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
                .map_err(|e| FsError::io("open directory", e))?;
            if let Some(mode) = mode {
                rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(|e| FsError::io("set permissions", e))?;
            }
            if let Some(mtime) = mtime {
                meta::set_mtime_fd(fd.as_fd(), mtime)?;
            }
            Ok(())
        }
    }
}
