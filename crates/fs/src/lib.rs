//! pareco's filesystem layer: a directory tree addressed by [`RelPath`]s,
//! answering protocol [`Request`]s.
//!
//! The same [`FsTree`] serves a remote peer (inside `pareco serve`) and the
//! local side of a sync, so both sides behave identically.
//!
//! What it must never do:
//! - touch anything outside its root: every path is resolved with `openat2`
//!   beneath the root, refusing `..` and every symlink (see [`beneath`]);
//! - follow a symlink: links are listed, created and removed as links;
//! - write data it has not checked against the sender's checksum, unless it
//!   came through AES-GCM (which proves more) or from this process
//!   ([`FsTree::trust_transit`], which also stops it computing checksums of
//!   what it reads for sending).
//!
//! Everything here is blocking; callers run it on a blocking thread pool.

mod beneath;
mod cache;
mod claims;
mod copy;
mod error;
mod meta;
mod pieces;
mod read;
mod temp;
mod write;
mod xattr;

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pareco_proto::path::is_partial;
use pareco_proto::{RelPath, Request, Response};
use rustix::fs::{Mode, OFlags};

pub use cache::DigestCache;
pub use claims::LEASE as CLAIM_LEASE;
pub use error::FsError;
pub use meta::now;

/// A directory tree rooted at a directory opened once; nothing outside it is
/// reachable through this value.
#[derive(Debug)]
pub struct FsTree {
    root: OwnedFd,
    path: PathBuf,
    cache: Arc<DigestCache>,
    /// Whether data read for sending gets a checksum, and data to be written
    /// is checked against the checksum it came with.
    checksums: bool,
    /// Which run writes each partial file now.
    claims: claims::Claims,
}

impl FsTree {
    /// Opens the tree rooted at the directory `path` (which may itself be
    /// reached through symlinks: the root is the caller's choice).
    pub fn open(path: &Path) -> std::io::Result<FsTree> {
        let root = rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        Ok(FsTree {
            root,
            path: path.to_path_buf(),
            cache: Arc::default(),
            checksums: true,
            claims: Default::default(),
        })
    }

    /// Reads data for sending without a checksum, and writes data without
    /// checking one: for a tree whose requests come over an encrypted
    /// channel (whose AEAD already proves every byte is what the sender
    /// read) or from this process. Data that crosses a plaintext channel
    /// (TCP's checksum misses one corrupted segment in millions) must keep
    /// both; both ends of a transfer decide alike, from the channel's
    /// security. Patches are checked either way: there the digest proves
    /// the patched result, not the transit.
    pub fn trust_transit(mut self) -> FsTree {
        self.checksums = false;
        self
    }

    /// The tree's digest cache.
    pub fn cache(&self) -> &Arc<DigestCache> {
        &self.cache
    }

    /// Keeps this tree's digest cache in `state_dir` (outside the tree),
    /// in a file named after the root's device and inode.
    pub fn keep_digests_in(&self, state_dir: &Path) -> std::io::Result<()> {
        let st = rustix::fs::fstat(&self.root)?;
        self.cache.attach(state_dir, &format!("digests-{:x}-{:x}", st.st_dev, st.st_ino))
    }

    /// The root directory's path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Performs one request. Failures are answered as [`Response::Failed`];
    /// this never panics on any request, however hostile.
    pub fn execute(&self, request: &Request) -> Response {
        self.try_execute(request).unwrap_or_else(|e| Response::Failed(e.into()))
    }

    fn try_execute(&self, request: &Request) -> Result<Response, FsError> {
        let root = self.root.as_fd();
        Ok(match request {
            Request::Stat { path } => {
                let now = meta::now();
                let stat = match path.split_last() {
                    None => Some(meta::stat_fd(root).map_err(|e| FsError::io("stat", e))?),
                    Some(_) => {
                        let (dir, name) = match beneath::parent(root, path, "stat") {
                            Ok(found) => found,
                            Err(e) if e.kind == pareco_proto::FailureKind::NotFound => {
                                return Ok(Response::Stat { stat: None, now });
                            }
                            Err(e) => return Err(e),
                        };
                        match meta::stat_at(dir.as_fd(), name.as_bytes()) {
                            Ok(stat) => Some(stat),
                            Err(rustix::io::Errno::NOENT) => None,
                            Err(e) => return Err(FsError::io("stat", e)),
                        }
                    }
                };
                Response::Stat { stat, now }
            }
            Request::ListDir { path } => {
                let now = meta::now();
                let (entries, partials) = read::list_dir(root, path)?;
                Response::Listing { entries, partials, now, more: false }
            }
            Request::HashChunks { path, offset, len, chunk_size } => {
                Response::Digests(read::hash_pieces(root, path, *offset, *len, *chunk_size, Some(&self.cache))?)
            }
            Request::DataExtents { path, offset, len } => {
                Response::Extents(read::data_extents(root, path, *offset, *len, pareco_proto::limits::MAX_EXTENTS)?)
            }
            Request::HashBlocks { path, offset, len, block_size } => {
                let digests = read::hash_pieces(root, path, *offset, *len as u64, *block_size, None)?;
                if (digests.len() as u64) < (*len as u64).div_ceil(*block_size as u64) {
                    return Err(FsError::changed("hash blocks", "the file is shorter than the chunk"));
                }
                Response::Digests(digests)
            }
            Request::ReadData { path, offset, len } => {
                let (checksum, data) = read::read_data(root, path, *offset, *len, self.checksums)?;
                Response::Data { checksum, data }
            }
            Request::ReadPatch { path, offset, len, block_size, dest_blocks } => {
                let (chunk_digest, blocks) = read::read_patch(root, path, *offset, *len, *block_size, dest_blocks)?;
                Response::Patch { chunk_digest, blocks }
            }
            Request::ReadFiles { paths, max_size } => {
                Response::Files(read::read_files(root, paths, *max_size, self.checksums))
            }
            Request::WriteData { path, offset, checksum, data } => {
                self.claims.renew(path);
                write::write_data(root, path, *offset, *checksum, self.checksums, data)?;
                Response::Done
            }
            Request::ApplyPatch { path, offset, len, block_size, chunk_digest, blocks } => {
                self.claims.renew(path);
                write::apply_patch(root, path, *offset, *len, *block_size, chunk_digest, blocks)?;
                Response::Done
            }
            Request::WriteFiles { files, dirs } => {
                Response::Outcomes(write::write_files(root, files, dirs, self.checksums))
            }
            Request::PrepareFile { path, claim } => {
                let stat = write::prepare_file(root, path)?;
                if *claim != 0 && claimed(path) {
                    self.claims.claim(root, path, *claim)?;
                }
                Response::Stat { stat: Some(stat), now: meta::now() }
            }
            Request::FinishFile { path, size, mode, mtime, place_at, dir, check } => {
                write::finish_file(root, path, *size, *mode, *mtime, place_at.as_ref(), check.as_ref())?;
                if place_at.is_some() {
                    self.claims.release(path);
                }
                if let Some(d) = dir {
                    write::set_attrs(root, &d.path, Some(d.mode), Some(d.mtime))?;
                }
                Response::Done
            }
            Request::Pieces { path, offset, len, avg } => {
                Response::Pieces(pieces::pieces(root, path, *offset, *len, *avg)?)
            }
            Request::ReadRanges { path, ranges } => {
                let (checksum, data) = read::read_ranges(root, path, ranges, self.checksums)?;
                Response::Data { checksum, data }
            }
            Request::WriteRanges { path, ranges, checksum, data } => {
                self.claims.renew(path);
                write::write_ranges(root, path, ranges, *checksum, self.checksums, data)?;
                Response::Done
            }
            Request::CloneFiles { files } => Response::Outcomes(copy::clone_files(root, files)),
            Request::CopyRanges { path, from, ranges } => {
                self.claims.renew(path);
                copy::copy_ranges(root, path, from, ranges)?;
                Response::Done
            }
            Request::Unshare { path, mode, mtime } => {
                Response::Stat { stat: Some(write::unshare(root, path, *mode, *mtime)?), now: meta::now() }
            }
            Request::MakeDir { path, mode } => {
                write::make_dir(root, path, *mode)?;
                Response::Done
            }
            Request::EnsureDir { path, mode } => {
                let now = meta::now();
                Response::Stat { stat: write::ensure_dir(root, path, *mode)?, now }
            }
            Request::MakeSymlink { path, target, mtime } => {
                write::make_symlink(root, path, target, *mtime)?;
                Response::Done
            }
            Request::MakeSpecial { path, kind, mode, rdev, mtime } => {
                write::make_special(root, path, *kind, *mode, *rdev, *mtime)?;
                Response::Done
            }
            Request::DirXattrs { path } => Response::DirXattrs(xattr::dir_xattrs(root, path)?),
            Request::SetXattrs { path, xattrs } => {
                xattr::set_xattrs(root, path, xattrs)?;
                Response::Done
            }
            Request::SetOwner { path, uid, gid } => {
                write::set_owner(root, path, *uid, *gid)?;
                Response::Done
            }
            Request::MakeLink { path, existing } => {
                write::make_link(root, path, existing)?;
                Response::Done
            }
            Request::Release { path, claim } => {
                self.claims.give_up(path, *claim);
                Response::Done
            }
            Request::Renew { path, claim } => {
                if *claim != 0 && claimed(path) {
                    self.claims.claim(root, path, *claim)?;
                }
                Response::Done
            }
            Request::Unlink { path } => {
                self.claims.release(path);
                write::unlink(root, path)?;
                Response::Done
            }
            Request::Remove { path } => {
                self.claims.release(path);
                write::remove(root, path)?;
                Response::Done
            }
            Request::SetAttrs { path, mode, mtime } => {
                write::set_attrs(root, path, *mode, *mtime)?;
                Response::Done
            }
        })
    }
}

/// Whether writes into `path` are claimed by one run at a time: partial
/// files only (a file updated in place is torn by any second writer).
fn claimed(path: &RelPath) -> bool {
    path.split_last().is_some_and(|(_, name)| is_partial(name.as_bytes()))
}
