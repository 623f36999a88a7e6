//! Claims on partial files: which run is writing each one now, so that two
//! runs into the same destination (overlapping cron jobs, a run restarted
//! while the old one still goes) never mix their writes in one file.
//!
//! A run claims a partial file when it prepares it. The claim is held in
//! this process (a server's clients all meet here) and as an exclusive
//! `flock` on the file (other processes: local syncs, another server on
//! the same directory). It lasts until the file is finished or removed, and
//! is renewed by every write into it and by the run's renewals while it
//! writes (every third of the lease); a claim nobody renewed for [`LEASE`]
//! belongs to a run that is gone (killed, disconnected) and is taken over.

use std::collections::HashMap;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pareco_proto::RelPath;
use rustix::fs::{FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use crate::beneath;
use crate::error::FsError;

/// How long a claim lasts without a write.
pub const LEASE: Duration = Duration::from_secs(30);

struct Claim {
    run: u64,
    /// Holds the `flock`.
    _lock: OwnedFd,
    renewed: Instant,
}

/// The claims held by this process.
#[derive(Default)]
pub(crate) struct Claims(Mutex<HashMap<RelPath, Claim>>);

impl std::fmt::Debug for Claims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Claims")
    }
}

impl Claims {
    /// Claims the file at `path` for `run`: a renewal if `run` holds it.
    pub(crate) fn claim(&self, root: BorrowedFd<'_>, path: &RelPath, run: u64) -> Result<(), FsError> {
        let mut claims = self.0.lock().unwrap_or_else(|e| e.into_inner());
        claims.retain(|_, c| c.renewed.elapsed() < LEASE);
        if let Some(held) = claims.get_mut(path) {
            if held.run != run {
                return Err(busy());
            }
            held.renewed = Instant::now();
            return Ok(());
        }
        let file =
            beneath::open(root, path, OFlags::RDONLY, Mode::empty()).map_err(|e| FsError::io("open for writing", e))?;
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(Errno::WOULDBLOCK) => return Err(busy()),
            // A filesystem without locks (some network ones): the claim
            // holds in this process only.
            Err(e) => tracing::debug!("{path}: no lock on this filesystem ({e}); claimed here only"),
        }
        claims.insert(path.clone(), Claim { run, _lock: file, renewed: Instant::now() });
        Ok(())
    }

    /// A write into `path`: its claim, if any, lasts on.
    pub(crate) fn renew(&self, path: &RelPath) {
        let mut claims = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = claims.get_mut(path) {
            held.renewed = Instant::now();
        }
    }

    /// `run` stops writing `path`: its claim (if it holds it) ends.
    pub(crate) fn give_up(&self, path: &RelPath, run: u64) {
        let mut claims = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if claims.get(path).is_some_and(|held| held.run == run) {
            claims.remove(path);
        }
    }

    /// `path` was finished or removed: its claim ends.
    pub(crate) fn release(&self, path: &RelPath) {
        let mut claims = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !claims.is_empty() {
            claims.remove(path);
        }
    }
}

fn busy() -> FsError {
    FsError::busy("claim", "another run is writing this file now (two syncs into one destination at once?)")
}
