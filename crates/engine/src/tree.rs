//! One side of a sync: a tree that answers protocol requests, either here
//! (a [`FsTree`] on a bounded blocking pool) or on a server (through a
//! connection [`Pool`]). The engine speaks to both the same way, so push,
//! pull and local-to-local syncs are one algorithm.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pareco_fs::FsTree;
use pareco_net::{NetError, Pool};
use pareco_proto::{
    Block, Checksum, CloneFile, CopyRange, Digest, DirAttrs, Entry, Failure, FailureKind, FileCheck, FileContent,
    FileRead, Name, Piece, RelPath, Request, Response, Stat, Timestamp, Xattrs,
};
use tokio::sync::Semaphore;

/// Why an operation on a tree failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TreeError {
    /// The side that owns the files could not do it.
    #[error(transparent)]
    Failed(#[from] Failure),
    /// The connection to the server failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The peer answered with the wrong kind of response.
    #[error("the peer answered {0} with an unexpected response")]
    Unexpected(&'static str),
}

impl TreeError {
    /// The failure class, if the operation itself failed.
    pub fn kind(&self) -> Option<FailureKind> {
        match self {
            TreeError::Failed(f) => Some(f.kind),
            _ => None,
        }
    }

    /// Whether the connection pool gave up on the server (so every other
    /// request fails the same way).
    pub fn gave_up(&self) -> bool {
        matches!(self, TreeError::Net(NetError::GaveUp(_)))
    }
}

/// A filesystem tree served from a bounded pool of blocking threads, so that
/// a flood of requests queues instead of spawning hundreds of threads that
/// fight over the disk and the CPU.
#[derive(Debug, Clone)]
pub struct BlockingTree {
    tree: Arc<FsTree>,
    permits: Arc<Semaphore>,
}

impl BlockingTree {
    /// Wraps a tree; at most `parallel` operations run at once.
    pub fn new(tree: FsTree, parallel: usize) -> Self {
        BlockingTree { tree: Arc::new(tree), permits: Arc::new(Semaphore::new(parallel.max(1))) }
    }

    /// Performs one request on a blocking thread.
    pub async fn execute(&self, request: Request) -> Response {
        let _permit = self.permits.acquire().await.expect("never closed");
        let tree = self.tree.clone();
        tokio::task::spawn_blocking(move || tree.execute(&request))
            .await
            .unwrap_or_else(|e| Response::Failed(Failure::new(FailureKind::Io, format!("internal error: {e}"))))
    }

    /// The root directory, for messages.
    pub fn path(&self) -> &std::path::Path {
        self.tree.path()
    }

    /// The tree itself.
    pub fn fs(&self) -> &FsTree {
        &self.tree
    }
}

/// The outcomes of [`Tree::write_files`].
pub struct Written {
    /// One per file, in order.
    pub files: Vec<Result<(), Failure>>,
    /// One per directory whose attributes were to be set, in order.
    pub dirs: Vec<Result<(), Failure>>,
}

/// A tree, here or there.
#[derive(Clone)]
pub enum Tree {
    /// On this machine.
    Local(BlockingTree),
    /// On a server.
    Remote(Arc<Pool>),
}

/// How a complete file is finished (see [`Tree::finish_file`]).
#[derive(Clone)]
pub struct Finish {
    /// Its size (it is truncated or extended to it).
    pub size: u64,
    /// Its permission bits.
    pub mode: u32,
    /// Its mtime; `None` leaves the write time (the next run re-checks it).
    pub mtime: Option<Timestamp>,
    /// Where it goes (a partial file becoming the real one).
    pub place_at: Option<RelPath>,
    /// The directory it goes into, with the attributes to set after.
    pub dir: Option<DirAttrs>,
    /// What it must hold, checked before anything else is done (else a
    /// `Mismatch` failure, and the file is left as it was).
    pub check: Option<FileCheck>,
}

/// A directory's entries.
pub struct Listing {
    /// Its entries, in no particular order.
    pub entries: Vec<Entry>,
    /// Its partial files (new files an interrupted run was writing), which
    /// `entries` leaves out.
    pub partials: Vec<Entry>,
    /// The tree's clock when it started listing.
    pub now: Timestamp,
}

macro_rules! expect {
    ($response:expr, $what:literal, $pattern:pat => $value:expr) => {
        match $response {
            $pattern => Ok($value),
            Response::Failed(f) => Err(TreeError::Failed(f)),
            _ => Err(TreeError::Unexpected($what)),
        }
    };
}

impl Tree {
    async fn call(&self, request: Request) -> Result<Response, TreeError> {
        match self {
            Tree::Local(t) => Ok(t.execute(request).await),
            Tree::Remote(pool) => Ok(pool.call(request).await?),
        }
    }

    /// Bytes sent and received on the wire for this tree (zero if local).
    pub fn wire_bytes(&self) -> (u64, u64) {
        match self {
            Tree::Local(_) => (0, 0),
            Tree::Remote(pool) => pool.wire_bytes(),
        }
    }

    /// Bytes this machine read to compute digests of a local tree (0 for a
    /// remote one: its server counts its own).
    pub fn bytes_hashed(&self) -> u64 {
        match self {
            Tree::Local(t) => t.fs().cache().hashed.load(std::sync::atomic::Ordering::Relaxed),
            Tree::Remote(_) => 0,
        }
    }

    /// Connections open now (0 for a local tree).
    pub fn open_connections(&self) -> u64 {
        match self {
            Tree::Local(_) => 0,
            Tree::Remote(pool) => pool.open_connections().0,
        }
    }

    /// The most connections that were open at once (0 for a local tree).
    pub fn peak_connections(&self) -> u64 {
        match self {
            Tree::Local(_) => 0,
            Tree::Remote(pool) => pool.open_connections().1,
        }
    }

    /// Connections re-opened and requests sent again (remote trees).
    pub fn recoveries(&self) -> (u64, u64) {
        match self {
            Tree::Local(_) => (0, 0),
            Tree::Remote(pool) => pool.recoveries(),
        }
    }

    /// `lstat`, with the tree's clock at the time.
    pub async fn stat(&self, path: RelPath) -> Result<(Option<Stat>, Timestamp), TreeError> {
        expect!(self.call(Request::Stat { path }).await?, "stat", Response::Stat { stat, now } => (stat, now))
    }

    /// Lists a directory, with the tree's clock at the time.
    pub async fn list(&self, path: RelPath) -> Result<Listing, TreeError> {
        expect!(self.call(Request::ListDir { path }).await?, "list",
            Response::Listing { entries, partials, now, .. } => Listing { entries, partials, now })
    }

    /// Digests of the whole chunks of a range present in the file.
    pub async fn hash_chunks(
        &self,
        path: RelPath,
        offset: u64,
        len: u64,
        chunk_size: u32,
    ) -> Result<Vec<Digest>, TreeError> {
        let request = Request::HashChunks { path, offset, len, chunk_size };
        expect!(self.call(request).await?, "hash", Response::Digests(d) => d)
    }

    /// The ranges of `range` where the file holds data (the rest is holes).
    pub async fn data_extents(&self, path: RelPath, range: Range<u64>) -> Result<Vec<Range<u64>>, TreeError> {
        let mut extents: Vec<Range<u64>> = Vec::new();
        let mut at = range.start;
        loop {
            let request = Request::DataExtents { path: path.clone(), offset: at, len: range.end - at };
            let page = expect!(self.call(request).await?, "map", Response::Extents(e) => e)?;
            let full = page.len() >= pareco_proto::limits::MAX_EXTENTS;
            // Each page must continue where the last ended, inside the range.
            match (page.first(), page.last()) {
                (Some(first), Some(last)) if first.start >= at && last.end <= range.end => at = last.end,
                (None, _) => return Ok(extents),
                _ => return Err(TreeError::Unexpected("map (extents outside the range asked)")),
            }
            extents.extend(page);
            if !full || at >= range.end {
                return Ok(extents);
            }
        }
    }

    /// Block digests of one chunk.
    pub async fn hash_blocks(
        &self,
        path: RelPath,
        offset: u64,
        len: u32,
        block_size: u32,
    ) -> Result<Vec<Digest>, TreeError> {
        let request = Request::HashBlocks { path, offset, len, block_size };
        expect!(self.call(request).await?, "hash", Response::Digests(d) => d)
    }

    /// Content-defined pieces of a range (see [`Request::Pieces`]), checked
    /// to lie within it.
    pub async fn pieces(&self, path: RelPath, offset: u64, len: u64, avg: u32) -> Result<Vec<Piece>, TreeError> {
        let pieces =
            expect!(self.call(Request::Pieces { path, offset, len, avg }).await?, "cut", Response::Pieces(p) => p)?;
        if pieces.iter().map(|p| p.len as u64).sum::<u64>() > len {
            return Err(TreeError::Unexpected("cut (pieces beyond the range asked)"));
        }
        Ok(pieces)
    }

    /// Reads several ranges of a file, one after the other, with their checksum
    /// (if the channel needs one).
    pub async fn read_ranges(
        &self,
        path: RelPath,
        ranges: Vec<Range<u64>>,
    ) -> Result<(Option<Checksum>, Bytes), TreeError> {
        let want: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        let (checksum, data) = expect!(self.call(Request::ReadRanges { path, ranges }).await?, "read", Response::Data { checksum, data } => (checksum, data))?;
        if data.len() as u64 != want {
            return Err(TreeError::Unexpected("read (not the bytes asked for)"));
        }
        Ok((checksum, data))
    }

    /// Writes verified bytes to several ranges of a file.
    pub async fn write_ranges(
        &self,
        path: RelPath,
        ranges: Vec<Range<u64>>,
        checksum: Option<Checksum>,
        data: Bytes,
    ) -> Result<(), TreeError> {
        expect!(self.call(Request::WriteRanges { path, ranges, checksum, data }).await?, "write", Response::Done => ())
    }

    /// Copies ranges of `from` into the existing file `path`, on that side.
    pub async fn copy_ranges(&self, path: RelPath, from: RelPath, ranges: Vec<CopyRange>) -> Result<(), TreeError> {
        expect!(self.call(Request::CopyRanges { path, from, ranges }).await?, "copy", Response::Done => ())
    }

    /// Reads a range with its checksum (if the channel needs one).
    pub async fn read_data(
        &self,
        path: RelPath,
        offset: u64,
        len: u32,
    ) -> Result<(Option<Checksum>, Bytes), TreeError> {
        expect!(self.call(Request::ReadData { path, offset, len }).await?, "read", Response::Data { checksum, data } => (checksum, data))
    }

    /// The blocks of a chunk that differ from `dest_blocks`, and the chunk's digest.
    pub async fn read_patch(
        &self,
        path: RelPath,
        offset: u64,
        len: u32,
        block_size: u32,
        dest_blocks: Vec<Digest>,
    ) -> Result<(Digest, Vec<Block>), TreeError> {
        let request = Request::ReadPatch { path, offset, len, block_size, dest_blocks };
        expect!(self.call(request).await?, "read patch", Response::Patch { chunk_digest, blocks } => (chunk_digest, blocks))
    }

    /// Writes a verified range in place.
    pub async fn write_data(
        &self,
        path: RelPath,
        offset: u64,
        checksum: Option<Checksum>,
        data: Bytes,
    ) -> Result<(), TreeError> {
        expect!(self.call(Request::WriteData { path, offset, checksum, data }).await?, "write", Response::Done => ())
    }

    /// Applies a verified block patch to one chunk.
    pub async fn apply_patch(
        &self,
        path: RelPath,
        offset: u64,
        len: u32,
        block_size: u32,
        chunk_digest: Digest,
        blocks: Vec<Block>,
    ) -> Result<(), TreeError> {
        let request = Request::ApplyPatch { path, offset, len, block_size, chunk_digest, blocks };
        expect!(self.call(request).await?, "patch", Response::Done => ())
    }

    /// Reads whole small files.
    pub async fn read_files(&self, paths: Vec<RelPath>, max_size: u32) -> Result<Vec<FileRead>, TreeError> {
        let n = paths.len();
        let files =
            expect!(self.call(Request::ReadFiles { paths, max_size }).await?, "read files", Response::Files(f) => f)?;
        if files.len() != n {
            return Err(TreeError::Unexpected("read files"));
        }
        Ok(files)
    }

    /// Writes whole small files, each atomically, then sets the attributes
    /// of `dirs`. Returns the files' outcomes and the directories'.
    pub async fn write_files(&self, files: Vec<FileContent>, dirs: Vec<DirAttrs>) -> Result<Written, TreeError> {
        let n = files.len();
        let all = dirs.len() + n;
        let mut files = expect!(
            self.call(Request::WriteFiles { files, dirs }).await?, "write files", Response::Outcomes(o) => o
        )?;
        if files.len() != all {
            return Err(TreeError::Unexpected("write files"));
        }
        let dirs = files.split_off(n);
        Ok(Written { files, dirs })
    }

    /// Makes files as copies of others on that side; one outcome per file.
    pub async fn clone_files(&self, files: Vec<CloneFile>) -> Result<Vec<Result<(), Failure>>, TreeError> {
        let n = files.len();
        let outcomes =
            expect!(self.call(Request::CloneFiles { files }).await?, "copy files", Response::Outcomes(o) => o)?;
        if outcomes.len() != n {
            return Err(TreeError::Unexpected("copy files"));
        }
        Ok(outcomes)
    }

    /// Makes sure a regular file exists and can be written at offsets; a
    /// partial file is claimed for this process's runs. While another run
    /// writes it, this waits (as long as a claim lasts unrenewed: a run that
    /// is gone leaves it then), then fails.
    pub async fn prepare_file(&self, path: RelPath) -> Result<Stat, TreeError> {
        let waited = std::time::Instant::now();
        loop {
            let request = Request::PrepareFile { path: path.clone(), claim: run_claim() };
            match expect!(self.call(request).await?, "prepare", Response::Stat { stat: Some(s), .. } => s) {
                Err(e)
                    if e.kind() == Some(FailureKind::Busy)
                        && waited.elapsed() < pareco_fs::CLAIM_LEASE + Duration::from_secs(5) =>
                {
                    tracing::debug!("{path}: another run is writing it; waiting");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                other => return other,
            }
        }
    }

    /// Stops writing a partial file this process prepared, and keeps it for
    /// a later attempt: another run may take it over at once.
    pub async fn release(&self, path: RelPath) -> Result<(), TreeError> {
        expect!(self.call(Request::Release { path, claim: run_claim() }).await?, "release", Response::Done => ())
    }

    /// Says that this process still writes the partial file `path` it
    /// prepared (fails with [`FailureKind::Busy`] if another run took it).
    pub async fn renew(&self, path: RelPath) -> Result<(), TreeError> {
        expect!(self.call(Request::Renew { path, claim: run_claim() }).await?, "renew", Response::Done => ())
    }

    /// Finishes a complete file as `finish` says.
    pub async fn finish_file(&self, path: RelPath, finish: Finish) -> Result<(), TreeError> {
        let Finish { size, mode, mtime, place_at, dir, check } = finish;
        let request = Request::FinishFile { path, size, mode, mtime, place_at, dir, check };
        expect!(self.call(request).await?, "finish", Response::Done => ())
    }

    /// Gives a file that has other hard links a copy of its own (with `mode`
    /// and `mtime` if given); returns its stat afterwards.
    pub async fn unshare(&self, path: RelPath, mode: Option<u32>, mtime: Option<Timestamp>) -> Result<Stat, TreeError> {
        expect!(self.call(Request::Unshare { path, mode, mtime }).await?, "unshare", Response::Stat { stat: Some(s), .. } => s)
    }

    /// Creates a directory.
    pub async fn make_dir(&self, path: RelPath, mode: u32) -> Result<(), TreeError> {
        expect!(self.call(Request::MakeDir { path, mode }).await?, "mkdir", Response::Done => ())
    }

    /// Makes sure a directory exists (with its parents); returns what was
    /// there before (`None` if it was created).
    pub async fn ensure_dir(&self, path: RelPath, mode: u32) -> Result<Option<Stat>, TreeError> {
        expect!(self.call(Request::EnsureDir { path, mode }).await?, "ensure directory", Response::Stat { stat, .. } => stat)
    }

    /// Creates or replaces a symlink.
    pub async fn make_symlink(&self, path: RelPath, target: Bytes, mtime: Option<Timestamp>) -> Result<(), TreeError> {
        expect!(self.call(Request::MakeSymlink { path, target, mtime }).await?, "symlink", Response::Done => ())
    }

    /// Creates (or replaces) a fifo or device file.
    pub async fn make_special(&self, path: RelPath, src: &Stat) -> Result<(), TreeError> {
        let request = Request::MakeSpecial { path, kind: src.kind, mode: src.mode, rdev: src.rdev, mtime: src.mtime };
        expect!(self.call(request).await?, "create special file", Response::Done => ())
    }

    /// The extended attributes of the entries of a directory.
    pub async fn dir_xattrs(&self, path: RelPath) -> Result<Vec<(Name, Xattrs)>, TreeError> {
        expect!(self.call(Request::DirXattrs { path }).await?, "extended attributes", Response::DirXattrs(x) => x)
    }

    /// Gives an entry exactly these extended attributes.
    pub async fn set_xattrs(&self, path: RelPath, xattrs: Xattrs) -> Result<(), TreeError> {
        expect!(self.call(Request::SetXattrs { path, xattrs }).await?, "set extended attributes", Response::Done => ())
    }

    /// Sets the owner and/or group of an entry.
    pub async fn set_owner(&self, path: RelPath, uid: Option<u32>, gid: Option<u32>) -> Result<(), TreeError> {
        expect!(self.call(Request::SetOwner { path, uid, gid }).await?, "set owner", Response::Done => ())
    }

    /// Makes `path` a hard link to `existing`.
    pub async fn make_link(&self, path: RelPath, existing: RelPath) -> Result<(), TreeError> {
        expect!(self.call(Request::MakeLink { path, existing }).await?, "link", Response::Done => ())
    }

    /// Removes an entry unless it is a directory.
    pub async fn unlink(&self, path: RelPath) -> Result<(), TreeError> {
        expect!(self.call(Request::Unlink { path }).await?, "remove", Response::Done => ())
    }

    /// Removes an entry (recursively).
    pub async fn remove(&self, path: RelPath) -> Result<(), TreeError> {
        expect!(self.call(Request::Remove { path }).await?, "remove", Response::Done => ())
    }

    /// Sets permissions and/or mtime.
    pub async fn set_attrs(&self, path: RelPath, mode: Option<u32>, mtime: Option<Timestamp>) -> Result<(), TreeError> {
        expect!(self.call(Request::SetAttrs { path, mode, mtime }).await?, "set attributes", Response::Done => ())
    }
}

/// This process's claim on the partial files it writes: random, the same for
/// all its runs (rounds follow each other, and resume each other's files).
fn run_claim() -> u64 {
    static CLAIM: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *CLAIM.get_or_init(|| {
        let mut bytes = [0u8; 8];
        // Without randomness, the process id still tells runs apart here.
        match getrandom::fill(&mut bytes) {
            Ok(()) => u64::from_le_bytes(bytes) | 1,
            Err(_) => std::process::id() as u64 | 1 << 63,
        }
    })
}
