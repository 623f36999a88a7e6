//! Resolving a [`RelPath`] under a root directory without ever leaving it.
//!
//! Every open goes through `openat2` with `RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`: the kernel itself refuses a
//! `..`, an absolute path or a symlink anywhere in the path, including the last
//! component, atomically with the lookup. A symlink planted inside the tree, or
//! swapped in while a transfer runs, therefore cannot redirect a read or a
//! write outside the root; the operation fails with [`FailureKind::SymlinkInPath`].
//!
//! Where `openat2` does not exist (Linux before 5.6, some sandboxes and
//! seccomp profiles, valgrind), the same guarantee comes from walking the
//! path one component at a time, each opened relative to the previous one
//! with `O_NOFOLLOW`: a [`RelPath`] has no `..` and no empty component, and no
//! step can follow a symlink, so no step can leave the tree.
//!
//! Operations on a directory entry itself (create, rename, remove, set times)
//! open its parent this way and then use the `*at` system calls with the
//! entry's single name, which cannot contain `/`.
//!
//! [`FailureKind::SymlinkInPath`]: pareco_proto::FailureKind::SymlinkInPath

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use pareco_proto::{Name, RelPath};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::error::FsError;

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_SYMLINKS).union(ResolveFlags::NO_MAGICLINKS);

/// Set once `openat2` turned out not to exist here.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Opens `path` under `root` with `flags` (plus `O_CLOEXEC`). A symlink as
/// the last component is refused like any other (`ELOOP`).
pub fn open(root: BorrowedFd<'_>, path: &RelPath, flags: OFlags, mode: Mode) -> Result<OwnedFd, Errno> {
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        match open_beneath(root, path, flags, mode) {
            Err(Errno::NOSYS) | Err(Errno::PERM) if probe_openat2_missing(root) => {
                NO_OPENAT2.store(true, Ordering::Relaxed);
            }
            other => return other,
        }
    }
    open_walking(root, path, flags, mode)
}

/// `openat2` with every escape refused by the kernel.
fn open_beneath(root: BorrowedFd<'_>, path: &RelPath, flags: OFlags, mode: Mode) -> Result<OwnedFd, Errno> {
    // Not O_NOFOLLOW: with O_PATH it would open a trailing symlink itself
    // instead of refusing it; RESOLVE_NO_SYMLINKS already refuses every link.
    let flags = flags | OFlags::CLOEXEC;
    let bytes = if path.is_root() { &b"."[..] } else { path.as_bytes() };
    loop {
        match rustix::fs::openat2(root, bytes, flags, mode, RESOLVE) {
            // The kernel asks to retry when a rename raced with the lookup.
            Err(Errno::AGAIN) | Err(Errno::INTR) => continue,
            other => return other,
        }
    }
}

/// Whether `openat2` itself is missing (as opposed to refusing one path with
/// EPERM, which a read-only or immutable file may also cause).
fn probe_openat2_missing(root: BorrowedFd<'_>) -> bool {
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    matches!(rustix::fs::openat2(root, ".", flags, Mode::empty(), RESOLVE), Err(Errno::NOSYS) | Err(Errno::PERM))
}

/// The same guarantee without `openat2`: one component at a time, never
/// following a symlink, reporting one as `ELOOP` like `openat2` does.
pub(crate) fn open_walking(root: BorrowedFd<'_>, path: &RelPath, flags: OFlags, mode: Mode) -> Result<OwnedFd, Errno> {
    let components: Vec<&[u8]> = path.components().collect();
    let Some((last, parents)) = components.split_last() else {
        return rustix::fs::openat(root, ".", flags | OFlags::CLOEXEC, mode);
    };
    let step = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut dir: Option<OwnedFd> = None;
    for component in parents {
        let at = dir.as_ref().map_or(root, |d| d.as_fd());
        let next =
            rustix::fs::openat(at, *component, step, Mode::empty()).map_err(|e| symlink_as_loop(at, component, e))?;
        dir = Some(next);
    }
    let at = dir.as_ref().map_or(root, |d| d.as_fd());
    let target = rustix::fs::openat(at, *last, flags | OFlags::NOFOLLOW | OFlags::CLOEXEC, mode)
        .map_err(|e| symlink_as_loop(at, last, e))?;
    // O_PATH with O_NOFOLLOW opens a trailing symlink itself: refuse it.
    if flags.contains(OFlags::PATH) && FileType::from_raw_mode(rustix::fs::fstat(&target)?.st_mode) == FileType::Symlink
    {
        return Err(Errno::LOOP);
    }
    Ok(target)
}

/// `O_NOFOLLOW` with `O_DIRECTORY` reports a symlink as "not a directory";
/// say what it is.
fn symlink_as_loop(dir: BorrowedFd<'_>, name: &[u8], e: Errno) -> Errno {
    if e == Errno::NOTDIR
        && let Ok(st) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        && FileType::from_raw_mode(st.st_mode) == FileType::Symlink
    {
        return Errno::LOOP;
    }
    e
}

/// The parent directory of a non-root `path` (opened `O_PATH`) and the
/// entry's name within it.
pub fn parent(root: BorrowedFd<'_>, path: &RelPath, op: &'static str) -> Result<(OwnedFd, Name), FsError> {
    let (parent, name) = path.split_last().ok_or_else(|| FsError::bad_request(op, "not allowed on the root"))?;
    let fd = open(root, &parent, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())
        .map_err(|e| FsError::io(op, e).parent())?;
    Ok((fd, name))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// Both ways of resolving give the same answers, escapes included.
    #[test]
    fn walking_resolves_like_openat2() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, outside) = (tmp.path().join("root"), tmp.path().join("outside"));
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join("a/b/f"), b"x").unwrap();
        std::fs::write(outside.join("secret"), b"s").unwrap();
        symlink(&outside, root.join("a/out")).unwrap();
        symlink("b", root.join("a/inside")).unwrap();
        symlink(outside.join("secret"), root.join("a/b/link")).unwrap();
        let fd = rustix::fs::open(&root, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let p = |s: &str| RelPath::new(s.as_bytes()).unwrap();
        let cases = [
            ("a/b/f", OFlags::RDONLY, Ok(())),
            ("a/b", OFlags::PATH | OFlags::DIRECTORY, Ok(())),
            ("", OFlags::RDONLY | OFlags::DIRECTORY, Ok(())),
            ("a/out/secret", OFlags::RDONLY, Err(Errno::LOOP)),
            ("a/out", OFlags::PATH | OFlags::DIRECTORY, Err(Errno::LOOP)),
            ("a/inside/f", OFlags::RDONLY, Err(Errno::LOOP)),
            ("a/b/link", OFlags::RDONLY, Err(Errno::LOOP)),
            ("a/b/link", OFlags::WRONLY | OFlags::CREATE, Err(Errno::LOOP)),
            ("a/b/f/x", OFlags::RDONLY, Err(Errno::NOTDIR)),
            ("a/missing/x", OFlags::RDONLY, Err(Errno::NOENT)),
        ];
        for (path, flags, want) in cases {
            // openat2 insists on no mode unless a file may be created.
            let mode = if flags.contains(OFlags::CREATE) { Mode::from_raw_mode(0o600) } else { Mode::empty() };
            let beneath = open_beneath(fd.as_fd(), &p(path), flags, mode).map(drop);
            let walking = open_walking(fd.as_fd(), &p(path), flags, mode).map(drop);
            assert_eq!(beneath, want, "openat2: {path}");
            assert_eq!(walking, want, "walking: {path}");
        }
        assert_eq!(std::fs::read(outside.join("secret")).unwrap(), b"s");
    }
}
