//! Filesystem errors, classified the way the protocol reports them.

use pareco_proto::{Failure, FailureKind};
use rustix::io::Errno;

/// A failed filesystem operation: what was being done, and why it failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{op}: {detail}")]
pub struct FsError {
    /// The class of failure.
    pub kind: FailureKind,
    /// The operation, in a few words (`"open for writing"`).
    pub op: &'static str,
    /// The cause, for humans.
    pub detail: String,
}

impl FsError {
    /// An error from a system call.
    pub fn io(op: &'static str, errno: Errno) -> FsError {
        let kind = match errno {
            Errno::NOENT => FailureKind::NotFound,
            Errno::ACCESS | Errno::PERM => FailureKind::PermissionDenied,
            Errno::NOSPC | Errno::DQUOT | Errno::FBIG => FailureKind::NoSpace,
            Errno::NOTDIR => FailureKind::NotADirectory,
            Errno::ISDIR => FailureKind::IsADirectory,
            // RESOLVE_NO_SYMLINKS reports a symlink in the path as ELOOP,
            // RESOLVE_BENEATH an escape attempt as EXDEV.
            Errno::LOOP | Errno::XDEV => FailureKind::SymlinkInPath,
            _ => FailureKind::Io,
        };
        let detail = match kind {
            FailureKind::SymlinkInPath => "a symlink is in the way (pareco never follows symlinks)".to_string(),
            _ => std::io::Error::from(errno).to_string(),
        };
        FsError { kind, op, detail }
    }

    /// An error from `std::io`.
    pub fn std(op: &'static str, err: std::io::Error) -> FsError {
        match err.raw_os_error() {
            Some(code) => FsError::io(op, Errno::from_raw_os_error(code)),
            None => FsError { kind: FailureKind::Io, op, detail: err.to_string() },
        }
    }

    /// The file changed while it was being read.
    pub fn changed(op: &'static str, detail: impl Into<String>) -> FsError {
        FsError { kind: FailureKind::Changed, op, detail: detail.into() }
    }

    /// Data that does not match its checksum or digest.
    pub fn mismatch(op: &'static str, detail: impl Into<String>) -> FsError {
        FsError { kind: FailureKind::Mismatch, op, detail: detail.into() }
    }

    /// Another run is writing this file now.
    pub fn busy(op: &'static str, detail: impl Into<String>) -> FsError {
        FsError { kind: FailureKind::Busy, op, detail: detail.into() }
    }

    /// A request that makes no sense for this entry.
    pub fn bad_request(op: &'static str, detail: impl Into<String>) -> FsError {
        FsError { kind: FailureKind::BadRequest, op, detail: detail.into() }
    }

    /// Marks the error as one of resolving the parent directory.
    pub fn parent(mut self) -> FsError {
        if self.kind == FailureKind::NotFound {
            self.detail = "parent directory does not exist".into();
        }
        self
    }
}

impl From<FsError> for Failure {
    fn from(e: FsError) -> Failure {
        Failure::new(e.kind, e.to_string())
    }
}
