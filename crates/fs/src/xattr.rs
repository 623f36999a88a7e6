//! Extended attributes, read and written through the directory's descriptor
//! (`/proc/self/fd/N/NAME` with the `l*xattr` calls), so that neither a
//! symlink in the path nor one at the entry itself is ever followed.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use bytes::Bytes;
use pareco_proto::limits::{MAX_BATCH_BYTES, MAX_XATTR_VALUE, MAX_XATTRS};
use pareco_proto::{Name, RelPath, Xattrs};
use rustix::fs::{Dir, Mode, OFlags, XattrFlags};
use rustix::io::Errno;

use crate::beneath;
use crate::error::FsError;
use crate::temp;

/// Names left alone: ACLs, whose values are not portable byte strings.
fn copied(name: &[u8]) -> bool {
    !name.starts_with(b"system.")
}

fn entry_path(dir: BorrowedFd<'_>, name: &[u8]) -> PathBuf {
    let mut path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    path.extend_from_slice(name);
    PathBuf::from(OsStr::from_bytes(&path))
}

/// The extended attributes of one entry, sorted by name.
fn read(path: &PathBuf) -> Result<Xattrs, Errno> {
    let size = match rustix::fs::llistxattr_query(path) {
        Ok(size) => size,
        Err(Errno::OPNOTSUPP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut list = vec![0u8; size];
    let len = rustix::fs::llistxattr(path, &mut list[..])?;
    list.truncate(len);
    let mut out = Vec::new();
    // One buffer for every value; each value is copied out at its own size
    // (a Bytes made from a truncated Vec would keep the whole buffer).
    let mut value = vec![0u8; MAX_XATTR_VALUE];
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty() && copied(n)) {
        let n = match rustix::fs::lgetxattr(path, name, &mut value[..]) {
            Ok(n) => n,
            // Removed meanwhile.
            Err(Errno::NODATA) => continue,
            Err(e) => return Err(e),
        };
        out.push((Bytes::copy_from_slice(name), Bytes::copy_from_slice(&value[..n])));
    }
    out.truncate(MAX_XATTRS);
    out.sort();
    Ok(out)
}

/// The extended attributes of every entry of a directory that has some.
pub(crate) fn dir_xattrs(root: BorrowedFd<'_>, path: &RelPath) -> Result<Vec<(Name, Xattrs)>, FsError> {
    let dir = beneath::open(root, path, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
        .map_err(|e| FsError::io("open directory", e))?;
    let entries = Dir::read_from(&dir).map_err(|e| FsError::io("read directory", e))?;
    let (mut out, mut total) = (Vec::new(), 0usize);
    for entry in entries {
        let entry = entry.map_err(|e| FsError::io("read directory", e))?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." || temp::is_temp(name) {
            continue;
        }
        let xattrs = match read(&entry_path(dir.as_fd(), name)) {
            Ok(x) => x,
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(FsError::io("read extended attributes", e)),
        };
        if xattrs.is_empty() {
            continue;
        }
        total += xattrs.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>();
        if total > MAX_BATCH_BYTES {
            return Err(FsError::bad_request("read extended attributes", "too many of them in one directory"));
        }
        let Ok(name) = Name::new(name) else { continue };
        out.push((name, xattrs));
    }
    Ok(out)
}

/// Gives an entry exactly `xattrs` (besides `system.*` ones).
pub(crate) fn set_xattrs(root: BorrowedFd<'_>, path: &RelPath, xattrs: &Xattrs) -> Result<(), FsError> {
    let (dir, name) = beneath::parent(root, path, "set extended attributes")?;
    let path = entry_path(dir.as_fd(), name.as_bytes());
    let have = read(&path).map_err(|e| FsError::io("read extended attributes", e))?;
    for (old, _) in &have {
        if !xattrs.iter().any(|(n, _)| n == old) {
            rustix::fs::lremovexattr(&path, &old[..]).map_err(|e| FsError::io("remove extended attribute", e))?;
        }
    }
    for (n, v) in xattrs {
        if copied(n) && !have.iter().any(|(hn, hv)| hn == n && hv == v) {
            rustix::fs::lsetxattr(&path, &n[..], v, XattrFlags::empty())
                .map_err(|e| FsError::io("set extended attribute", e))?;
        }
    }
    Ok(())
}
