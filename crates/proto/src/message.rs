//! Requests one side asks of the other side's tree, and their responses.
//!
//! The vocabulary is the set of operations a sync needs on a *source* tree
//! (stat, list, hash, read) and on a *destination* tree (hash, write, patch,
//! create, remove, set attributes). The client sends requests over any of its
//! connections, each tagged with an id; the server answers each with one
//! response (a directory listing may take several pages). Every request is
//! self-contained: there are no open-file handles or cursors on the server.
//!
//! Data is verified end to end. Over a plaintext channel, whoever reads data
//! computes its [`Checksum`] at read time and whoever writes data checks it
//! before writing (TCP's checksum misses one corrupted segment in millions).
//! Over an encrypted channel the AEAD already proves every byte is what the
//! sender sealed, so data goes without a checksum and neither side computes
//! one; a writer that expects checksums refuses data without one. Patches
//! always carry the BLAKE3 digest of their result: there it proves that
//! what is rebuilt from the destination's blocks is the source's content.
//!
//! Requests that create an entry (`WriteFiles`, `PrepareFile`, `CloneFiles`,
//! `MakeDir`, `MakeSymlink`, `MakeSpecial`, `MakeLink`) first make its
//! missing parent directories (mode 0700, until the client sets their
//! attributes), so a client may send the entries of a new directory without
//! waiting for the directory.

use bytes::Bytes;

use crate::codec::CodecError;
use crate::limits::{
    MAX_BATCH_BYTES, MAX_BATCH_FILES, MAX_CHUNK, MAX_DIGESTS, MAX_EXTENTS, MAX_LINK_TARGET, MAX_MESSAGE,
    MAX_XATTR_NAME, MAX_XATTR_VALUE, MAX_XATTRS, MIN_BLOCK,
};
use crate::path::{Name, RelPath};
use crate::stat::{Checksum, Digest, Entry, FileCheck, Kind, Stat, Timestamp};
use crate::wire::{Reader, Writer};

/// An operation on the peer's tree. Paths are relative to the server's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `lstat` one path. Answer: [`Response::Stat`].
    Stat {
        /// Entry to stat.
        path: RelPath,
    },
    /// List a directory, `lstat`-ing every entry. Answer: one or more
    /// [`Response::Listing`] pages, the last with `more == false`.
    ListDir {
        /// Directory to list.
        path: RelPath,
    },
    /// Digest consecutive pieces of `chunk_size` bytes covering
    /// `[offset, offset + len)`. Answer: [`Response::Digests`] with one digest
    /// per piece that lies entirely inside the file, from the first on.
    HashChunks {
        /// File to hash.
        path: RelPath,
        /// Start of the range.
        offset: u64,
        /// Length of the range.
        len: u64,
        /// Piece size.
        chunk_size: u32,
    },
    /// Where a (sparse) file holds data within `[offset, offset + len)`,
    /// found with `SEEK_DATA`/`SEEK_HOLE`; the rest is holes. Answer:
    /// [`Response::Extents`], at most [`MAX_EXTENTS`] of them: if there are
    /// more, ask again from the end of the last one.
    DataExtents {
        /// File to map.
        path: RelPath,
        /// Start of the range.
        offset: u64,
        /// Length of the range.
        len: u64,
    },
    /// Like `HashChunks` for one chunk cut into blocks, to refine a chunk that
    /// differs. Answer: [`Response::Digests`].
    HashBlocks {
        /// File to hash.
        path: RelPath,
        /// Start of the chunk.
        offset: u64,
        /// Length of the chunk.
        len: u32,
        /// Block size.
        block_size: u32,
    },
    /// Read `[offset, offset + len)`, which must lie inside the file.
    /// Answer: [`Response::Data`].
    ReadData {
        /// File to read.
        path: RelPath,
        /// Start of the range.
        offset: u64,
        /// Length of the range.
        len: u32,
    },
    /// The source half of a block delta: read the chunk
    /// `[offset, offset + len)`, compare its blocks with the destination's
    /// `dest_blocks`, answer [`Response::Patch`] with the blocks that differ
    /// and the digest of the whole chunk as read.
    ReadPatch {
        /// File to read.
        path: RelPath,
        /// Start of the chunk.
        offset: u64,
        /// Length of the chunk.
        len: u32,
        /// Block size the destination digests were computed with.
        block_size: u32,
        /// The destination's block digests of the same chunk.
        dest_blocks: Vec<Digest>,
    },
    /// Write `data` at `offset` after checking it against `checksum`, into a
    /// file that exists (see [`Request::PrepareFile`]): a write that arrives
    /// after its file was removed fails instead of bringing it back. Answer:
    /// [`Response::Done`].
    WriteData {
        /// File to write.
        path: RelPath,
        /// Where the data goes.
        offset: u64,
        /// Checksum of `data` as the source read it; none over an encrypted
        /// channel (see the module docs).
        checksum: Option<Checksum>,
        /// The data.
        data: Bytes,
    },
    /// The destination half of a block delta: overlay `blocks` on the chunk
    /// `[offset, offset + len)`, check that the result has `chunk_digest`, and
    /// only then write the blocks. Answer: [`Response::Done`].
    ApplyPatch {
        /// File to patch.
        path: RelPath,
        /// Start of the chunk.
        offset: u64,
        /// Length of the chunk.
        len: u32,
        /// Block size the patch was computed with.
        block_size: u32,
        /// Digest of the whole chunk after patching.
        chunk_digest: Digest,
        /// Blocks that differ.
        blocks: Vec<Block>,
    },
    /// Read several whole small files at once. Answer: [`Response::Files`],
    /// one [`FileRead`] per path, in order.
    ReadFiles {
        /// Files to read.
        paths: Vec<RelPath>,
        /// Files larger than this are not read but answered `TooBig`.
        max_size: u32,
    },
    /// Write several whole small files at once, each atomically (a temporary
    /// file renamed over the target); then give each of `dirs` its mode and
    /// mtime, whatever the files' outcomes. A client that sends every write
    /// into a directory this way leaves it with those attributes once the
    /// last of them is done, without setting them in a round trip of its
    /// own. On the wire, each file's path is what it shares with the one
    /// before and the rest. Answer: [`Response::Outcomes`], one per file,
    /// then one per directory.
    WriteFiles {
        /// The files.
        files: Vec<FileContent>,
        /// Directories (at most one per file) whose attributes are set after.
        dirs: Vec<DirAttrs>,
    },
    /// Make sure `path` is a regular file that can be written at offsets,
    /// creating it empty (mode 0600) if missing. A partial file is claimed
    /// for the run `claim` (unless 0) until it is finished or removed: while
    /// another run's claim on it is alive (it wrote there lately), this
    /// fails with [`FailureKind::Busy`], so that two runs never mix their
    /// writes in one file. Answer: [`Response::Stat`].
    PrepareFile {
        /// File to prepare.
        path: RelPath,
        /// The writing run's random id (0: no claim).
        claim: u64,
    },
    /// The file's data is complete: set its size and mode, and its mtime if
    /// given; then, with `place_at`, rename it there (over a non-directory).
    /// A new file is written under its [`partial`](crate::path::partial_of)
    /// name and placed this way, so that it never appears half-made under
    /// its final name. Done again after success (the answer was lost), it
    /// succeeds if the file is in place with that size (and mtime). Answer:
    /// [`Response::Done`].
    FinishFile {
        /// File to finish.
        path: RelPath,
        /// Final size (truncates or extends).
        size: u64,
        /// Final permission bits.
        mode: u32,
        /// Final mtime; `None` leaves the write time, so that the next run
        /// re-checks the file.
        mtime: Option<Timestamp>,
        /// Where the finished file goes.
        place_at: Option<RelPath>,
        /// The directory it goes into, with the attributes to set once it is
        /// there (as [`Request::WriteFiles`]' `dirs`: when every write into
        /// a directory sets them after, no round trip at the end is needed).
        dir: Option<DirAttrs>,
        /// What the file must hold, checked (once its size is final)
        /// before anything else is done: else the answer is a `Mismatch`
        /// failure, and the file is left as it was, under its name.
        check: Option<FileCheck>,
    },
    /// Cut `[offset, offset + len)` of a file at content-defined boundaries
    /// (FastCDC v2020, normalization level 1, pieces between `avg / 4` and
    /// `avg * 4` bytes, the cut starting at `offset`), each piece with a
    /// short digest. Answer: [`Response::Pieces`], tiling the range (shorter
    /// if the file is).
    Pieces {
        /// File to cut.
        path: RelPath,
        /// Where to start.
        offset: u64,
        /// How much.
        len: u64,
        /// Average piece size (see [`crate::limits::valid_piece_avg`]).
        avg: u32,
    },
    /// Remove `path` if it is not a directory (a directory there is left
    /// alone; nothing there is fine). Answer: [`Response::Done`].
    Unlink {
        /// Entry to remove.
        path: RelPath,
    },
    /// Read several ranges of a file at once (the scattered new bytes of a
    /// rebuilt file travel together, compressed as one). Answer:
    /// [`Response::Data`] with the ranges' bytes one after the other and
    /// their digest.
    ReadRanges {
        /// File to read.
        path: RelPath,
        /// The ranges (at most [`MAX_CHUNK`] bytes in all).
        ranges: Vec<std::ops::Range<u64>>,
    },
    /// Write `data`, the bytes of `ranges` one after the other, after
    /// checking it against `checksum`, into a file that exists. Answer:
    /// [`Response::Done`].
    WriteRanges {
        /// File to write.
        path: RelPath,
        /// Where the bytes go.
        ranges: Vec<std::ops::Range<u64>>,
        /// Checksum of `data`; none over an encrypted channel.
        checksum: Option<Checksum>,
        /// The bytes.
        data: Bytes,
    },
    /// Copy ranges of the file `from` into the existing file `path`, both on
    /// this side (holes of `from` stay holes where `path` has none). Answer:
    /// [`Response::Done`].
    CopyRanges {
        /// File written.
        path: RelPath,
        /// File read.
        from: RelPath,
        /// What goes where.
        ranges: Vec<CopyRange>,
    },
    /// Make files as copies of others on this side (a renamed, moved or
    /// copied file: no content on the wire): each copied, holes kept, from
    /// the first of its candidates that holds the content wanted (by its
    /// digests; if none does, it is not made: `Mismatch`), under a temporary
    /// name, given its mode and mtime; then all
    /// renamed into place, so that files whose contents swap or rotate in
    /// one batch are each copied from the old version. Answer:
    /// [`Response::Outcomes`], one per file.
    CloneFiles {
        /// The files.
        files: Vec<CloneFile>,
    },
    /// If the regular file at `path` has other hard links, give `path` a
    /// copy of its own (same content, owner where permitted, holes kept),
    /// atomically, so that writing to it, or changing its mode, cannot
    /// change another name. The copy gets `mode` and `mtime` if given (else
    /// the file's). A file with no other link only gets them. Answer:
    /// [`Response::Stat`] of the entry afterwards.
    Unshare {
        /// The file.
        path: RelPath,
        /// Permission bits for the copy.
        mode: Option<u32>,
        /// mtime for the copy.
        mtime: Option<Timestamp>,
    },
    /// Create a directory. Answer: [`Response::Done`].
    MakeDir {
        /// Directory to create.
        path: RelPath,
        /// Permission bits to create it with.
        mode: u32,
    },
    /// Make sure `path` is a directory, creating it and any missing parents
    /// (with `mode`) if nothing is there; something else there is left
    /// alone. Answer: [`Response::Stat`] of what was there before (`None` if
    /// the directory was created), so one round trip both looks and creates.
    EnsureDir {
        /// Directory to ensure.
        path: RelPath,
        /// Permission bits for what is created.
        mode: u32,
    },
    /// Create a symlink, atomically replacing a non-directory entry.
    /// Answer: [`Response::Done`].
    MakeSymlink {
        /// Where the link goes.
        path: RelPath,
        /// What it points to (never interpreted, never followed).
        target: Bytes,
        /// mtime of the link itself, if it is to be set.
        mtime: Option<Timestamp>,
    },
    /// Make `path` a hard link to the existing file `existing` (both inside
    /// the tree), atomically replacing a non-directory entry. Answer:
    /// [`Response::Done`].
    MakeLink {
        /// Where the link goes.
        path: RelPath,
        /// The file it shares.
        existing: RelPath,
    },
    /// Create a fifo or a device file, atomically replacing a non-directory
    /// entry. Answer: [`Response::Done`].
    MakeSpecial {
        /// Where it goes.
        path: RelPath,
        /// [`Kind::Fifo`], [`Kind::CharDevice`] or [`Kind::BlockDevice`].
        kind: Kind,
        /// Permission bits.
        mode: u32,
        /// Device number (devices only).
        rdev: u64,
        /// Its mtime.
        mtime: Timestamp,
    },
    /// The extended attributes of every entry of a directory (those that
    /// have any; `system.*` names, which hold ACLs, are not included).
    /// Answer: [`Response::DirXattrs`].
    DirXattrs {
        /// The directory.
        path: RelPath,
    },
    /// Give an entry exactly these extended attributes (others it has, but
    /// `system.*`, are removed). Answer: [`Response::Done`].
    SetXattrs {
        /// Entry to change.
        path: RelPath,
        /// Names and values.
        xattrs: Xattrs,
    },
    /// Set the owner and/or group of an entry, never following a symlink
    /// (set-user-ID and set-group-ID bits, which the kernel clears, are kept).
    /// Answer: [`Response::Done`].
    SetOwner {
        /// Entry to change.
        path: RelPath,
        /// New owner, if it is to change.
        uid: Option<u32>,
        /// New group, if it is to change.
        gid: Option<u32>,
    },
    /// The run `claim` stops writing the partial file `path` and keeps it
    /// (the basis of a later attempt): its claim ends now, not once its lease
    /// runs out (see [`Request::PrepareFile`]). Answer: [`Response::Done`].
    Release {
        /// The partial file.
        path: RelPath,
        /// The run that claimed it.
        claim: u64,
    },
    /// The run `claim` is still writing the partial file `path` (sent while
    /// no write renews the claim for a while: a slow link shared by many
    /// files): its claim lasts on, or is taken again if it ran out and no
    /// other run took it. Fails with [`FailureKind::Busy`] if another run
    /// holds it; never creates the file. Answer: [`Response::Done`].
    Renew {
        /// The partial file.
        path: RelPath,
        /// The run that claimed it.
        claim: u64,
    },
    /// Remove an entry; directories recursively, never following symlinks.
    /// Answer: [`Response::Done`].
    Remove {
        /// Entry to remove.
        path: RelPath,
    },
    /// Set permissions and/or mtime of an existing entry.
    /// Answer: [`Response::Done`].
    SetAttrs {
        /// Entry to change.
        path: RelPath,
        /// New permission bits (ignored for symlinks).
        mode: Option<u32>,
        /// New mtime.
        mtime: Option<Timestamp>,
    },
}

/// One content-defined piece of a file (see [`Request::Pieces`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// Its length.
    pub len: u32,
    /// The first 8 bytes of its BLAKE3, little-endian: enough to find
    /// candidates, never trusted on its own (what is rebuilt from pieces is
    /// checked against full digests).
    pub digest: u64,
}

/// A range copied from one file to another on the same side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyRange {
    /// Offset in the file written.
    pub to: u64,
    /// Offset in the file read.
    pub from: u64,
    /// Length.
    pub len: u64,
}

/// A file made as a copy of another of the same side (see
/// [`Request::CloneFiles`]), if that one holds the content wanted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloneFile {
    /// The files that may hold the content, tried in order (at most
    /// [`crate::limits::MAX_CLONE_CANDIDATES`]).
    pub from: Vec<RelPath>,
    /// The file made (or replaced).
    pub path: RelPath,
    /// The content wanted: its size...
    pub size: u64,
    /// ...and the digest of each chunk of this size...
    pub chunk_size: u32,
    /// ...in order.
    pub digests: Vec<Digest>,
    /// Its permission bits.
    pub mode: u32,
    /// Its mtime, if it is to be set.
    pub mtime: Option<Timestamp>,
}

/// One block of a patch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// Index of the block within its chunk.
    pub index: u32,
    /// Its new content.
    pub data: Bytes,
}

/// One whole file to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileContent {
    /// Where it goes.
    pub path: RelPath,
    /// Permission bits.
    pub mode: u32,
    /// mtime to set, if the source was stable while read.
    pub mtime: Option<Timestamp>,
    /// Checksum of `data` as the source read it; none over an encrypted channel.
    pub checksum: Option<Checksum>,
    /// The content.
    pub data: Bytes,
}

/// The final attributes of a directory, set after a [`Request::WriteFiles`]
/// or a [`Request::FinishFile`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirAttrs {
    /// The directory.
    pub path: RelPath,
    /// Permission bits.
    pub mode: u32,
    /// mtime.
    pub mtime: Timestamp,
}

/// The answer to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// The operation was done.
    Done,
    /// Metadata of one entry, `None` if it does not exist.
    Stat {
        /// The entry's metadata.
        stat: Option<Stat>,
        /// The answering side's clock when it looked.
        now: Timestamp,
    },
    /// One page of a directory listing.
    Listing {
        /// Entries of this page.
        entries: Vec<Entry>,
        /// Partial files in the directory (see [`crate::path::partial_name`]),
        /// which `entries` leaves out: an interrupted run's new files. On the
        /// last page.
        partials: Vec<Entry>,
        /// The answering side's clock when it started listing.
        now: Timestamp,
        /// Whether more pages follow.
        more: bool,
    },
    /// Digests, in order.
    Digests(Vec<Digest>),
    /// Content-defined pieces of a range, in order.
    Pieces(Vec<Piece>),
    /// Byte ranges holding data, in increasing order, not overlapping.
    Extents(Vec<std::ops::Range<u64>>),
    /// Extended attributes of the entries of a directory, by name.
    DirXattrs(Vec<(Name, Xattrs)>),
    /// Data with its checksum.
    Data {
        /// Checksum of `data`, computed when it was read; none over an
        /// encrypted channel.
        checksum: Option<Checksum>,
        /// The data.
        data: Bytes,
    },
    /// The blocks of a chunk that differ.
    Patch {
        /// Digest of the whole chunk as read.
        chunk_digest: Digest,
        /// The differing blocks, in increasing index order.
        blocks: Vec<Block>,
    },
    /// Results of a `ReadFiles`, one per path, in order.
    Files(Vec<FileRead>),
    /// Results of a `WriteFiles` (one per file, then one per directory) or
    /// a `CloneFiles` (one per file), in order.
    Outcomes(Vec<Result<(), Failure>>),
    /// The request failed.
    Failed(Failure),
}

/// The result of reading one whole file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileRead {
    /// The file's content.
    Content {
        /// Metadata taken just before reading.
        stat: Stat,
        /// The reader's clock when it took `stat`.
        now: Timestamp,
        /// Whether the metadata was the same after reading; if not, the file
        /// changed while it was read.
        stable: bool,
        /// Checksum of `data`; none over an encrypted channel.
        checksum: Option<Checksum>,
        /// The content.
        data: Bytes,
    },
    /// The file is larger than the requested maximum (or not a regular file).
    NotSmall(Stat),
    /// Reading failed.
    Failed(Failure),
}

/// Why an operation failed, in a form both sides understand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The class of failure, for the engine to decide what to do.
    pub kind: FailureKind,
    /// What happened, for humans.
    pub message: String,
}

impl Failure {
    /// A failure of `kind` with a message.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        let mut message: String = message.into();
        if message.len() > MAX_MESSAGE {
            let mut end = MAX_MESSAGE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        Failure { kind, message }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// Classes of failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureKind {
    /// The entry does not exist (or vanished).
    NotFound,
    /// Permission denied.
    PermissionDenied,
    /// No space left on the device (or quota exceeded).
    NoSpace,
    /// The file changed while it was being read.
    Changed,
    /// Data did not match its checksum or digest.
    Mismatch,
    /// A component of the path is not a directory.
    NotADirectory,
    /// The entry is a directory where something else was expected.
    IsADirectory,
    /// A symlink inside the tree stands where a directory is needed; pareco
    /// never follows one.
    SymlinkInPath,
    /// The request is malformed or out of bounds.
    BadRequest,
    /// The server refuses this operation (policy).
    Refused,
    /// Any other I/O error.
    Io,
    /// Another run is writing this file now.
    Busy,
}

impl FailureKind {
    fn code(self) -> u8 {
        match self {
            FailureKind::NotFound => 1,
            FailureKind::PermissionDenied => 2,
            FailureKind::NoSpace => 3,
            FailureKind::Changed => 4,
            FailureKind::Mismatch => 5,
            FailureKind::NotADirectory => 6,
            FailureKind::IsADirectory => 7,
            FailureKind::SymlinkInPath => 8,
            FailureKind::BadRequest => 9,
            FailureKind::Refused => 10,
            FailureKind::Io => 11,
            FailureKind::Busy => 12,
        }
    }

    fn from_code(code: u8) -> FailureKind {
        match code {
            1 => FailureKind::NotFound,
            2 => FailureKind::PermissionDenied,
            3 => FailureKind::NoSpace,
            4 => FailureKind::Changed,
            5 => FailureKind::Mismatch,
            6 => FailureKind::NotADirectory,
            7 => FailureKind::IsADirectory,
            8 => FailureKind::SymlinkInPath,
            9 => FailureKind::BadRequest,
            10 => FailureKind::Refused,
            12 => FailureKind::Busy,
            // A newer peer's kind we do not know is still an I/O failure.
            _ => FailureKind::Io,
        }
    }
}

impl Request {
    /// The path the request is about (the first one for batches).
    pub fn path(&self) -> Option<&RelPath> {
        match self {
            Request::Stat { path }
            | Request::ListDir { path }
            | Request::HashChunks { path, .. }
            | Request::DataExtents { path, .. }
            | Request::HashBlocks { path, .. }
            | Request::ReadData { path, .. }
            | Request::ReadPatch { path, .. }
            | Request::WriteData { path, .. }
            | Request::ApplyPatch { path, .. }
            | Request::PrepareFile { path, .. }
            | Request::Release { path, .. }
            | Request::Renew { path, .. }
            | Request::FinishFile { path, .. }
            | Request::Unshare { path, .. }
            | Request::Pieces { path, .. }
            | Request::ReadRanges { path, .. }
            | Request::Unlink { path }
            | Request::WriteRanges { path, .. }
            | Request::CopyRanges { path, .. }
            | Request::MakeDir { path, .. }
            | Request::EnsureDir { path, .. }
            | Request::MakeSymlink { path, .. }
            | Request::MakeLink { path, .. }
            | Request::SetOwner { path, .. }
            | Request::DirXattrs { path }
            | Request::SetXattrs { path, .. }
            | Request::MakeSpecial { path, .. }
            | Request::Remove { path }
            | Request::SetAttrs { path, .. } => Some(path),
            Request::ReadFiles { paths, .. } => paths.first(),
            Request::CloneFiles { files } => files.first().map(|f| &f.path),
            Request::WriteFiles { files, .. } => files.first().map(|f| &f.path),
        }
    }

    /// Whether the request changes the tree (as opposed to only reading it).
    pub fn writes(&self) -> bool {
        !matches!(
            self,
            Request::Stat { .. }
                | Request::ListDir { .. }
                | Request::HashChunks { .. }
                | Request::DataExtents { .. }
                | Request::DirXattrs { .. }
                | Request::HashBlocks { .. }
                | Request::Pieces { .. }
                | Request::ReadRanges { .. }
                | Request::ReadData { .. }
                | Request::ReadPatch { .. }
                | Request::ReadFiles { .. }
        )
    }

    pub(crate) fn encode(&self, w: &mut Writer<'_>) -> Option<Bytes> {
        match self {
            Request::Stat { path } => {
                w.u8(1);
                w.path(path);
            }
            Request::ListDir { path } => {
                w.u8(2);
                w.path(path);
            }
            Request::HashChunks { path, offset, len, chunk_size } => {
                w.u8(3);
                w.path(path);
                w.varint(*offset);
                w.varint(*len);
                w.varint(*chunk_size as u64);
            }
            Request::HashBlocks { path, offset, len, block_size } => {
                w.u8(4);
                w.path(path);
                w.varint(*offset);
                w.varint(*len as u64);
                w.varint(*block_size as u64);
            }
            Request::ReadData { path, offset, len } => {
                w.u8(5);
                w.path(path);
                w.varint(*offset);
                w.varint(*len as u64);
            }
            Request::ReadPatch { path, offset, len, block_size, dest_blocks } => {
                w.u8(6);
                w.path(path);
                w.varint(*offset);
                w.varint(*len as u64);
                w.varint(*block_size as u64);
                w.varint(dest_blocks.len() as u64);
                dest_blocks.iter().for_each(|d| w.digest(d));
            }
            Request::WriteData { path, offset, checksum, data } => {
                w.u8(7);
                w.path(path);
                w.varint(*offset);
                w.opt_checksum(*checksum);
                return Some(data.clone());
            }
            Request::ApplyPatch { path, offset, len, block_size, chunk_digest, blocks } => {
                w.u8(8);
                w.path(path);
                w.varint(*offset);
                w.varint(*len as u64);
                w.varint(*block_size as u64);
                w.digest(chunk_digest);
                encode_blocks(w, blocks);
            }
            Request::ReadFiles { paths, max_size } => {
                w.u8(9);
                w.varint(*max_size as u64);
                w.varint(paths.len() as u64);
                paths.iter().for_each(|p| w.path(p));
            }
            Request::WriteFiles { files, dirs } => {
                w.u8(10);
                w.varint(files.len() as u64);
                let mut before: &[u8] = &[];
                for f in files {
                    w.path_after(before, &f.path);
                    before = f.path.as_bytes();
                    w.varint(f.mode as u64);
                    w.opt_timestamp(f.mtime);
                    w.opt_checksum(f.checksum);
                    w.bytes(&f.data);
                }
                w.varint(dirs.len() as u64);
                for d in dirs {
                    w.path(&d.path);
                    w.varint(d.mode as u64);
                    w.timestamp(d.mtime);
                }
            }
            Request::PrepareFile { path, claim } => {
                w.u8(11);
                w.path(path);
                w.u64(*claim);
            }
            Request::FinishFile { path, size, mode, mtime, place_at, dir, check } => {
                w.u8(12);
                w.path(path);
                w.varint(*size);
                w.varint(*mode as u64);
                w.opt_timestamp(*mtime);
                match place_at {
                    Some(p) => {
                        w.u8(1);
                        w.path(p);
                    }
                    None => w.u8(0),
                }
                match dir {
                    Some(d) => {
                        w.u8(1);
                        w.path(&d.path);
                        w.varint(d.mode as u64);
                        w.timestamp(d.mtime);
                    }
                    None => w.u8(0),
                }
                match check {
                    Some(c) => {
                        w.u8(1);
                        w.varint(c.chunk_size as u64);
                        w.digest(&c.digest);
                    }
                    None => w.u8(0),
                }
            }
            Request::Unshare { path, mode, mtime } => {
                w.u8(24);
                w.path(path);
                opt_mode(w, *mode);
                w.opt_timestamp(*mtime);
            }
            Request::CloneFiles { files } => {
                w.u8(27);
                w.varint(files.len() as u64);
                for f in files {
                    w.varint(f.from.len() as u64);
                    f.from.iter().for_each(|p| w.path(p));
                    w.path(&f.path);
                    w.varint(f.size);
                    w.varint(f.chunk_size as u64);
                    w.varint(f.digests.len() as u64);
                    f.digests.iter().for_each(|d| w.digest(d));
                    w.varint(f.mode as u64);
                    w.opt_timestamp(f.mtime);
                }
            }
            Request::Pieces { path, offset, len, avg } => {
                w.u8(25);
                w.path(path);
                w.varint(*offset);
                w.varint(*len);
                w.varint(*avg as u64);
            }
            Request::Release { path, claim } => {
                w.u8(31);
                w.path(path);
                w.u64(*claim);
            }
            Request::Renew { path, claim } => {
                w.u8(32);
                w.path(path);
                w.u64(*claim);
            }
            Request::Unlink { path } => {
                w.u8(30);
                w.path(path);
            }
            Request::ReadRanges { path, ranges } => {
                w.u8(28);
                w.path(path);
                encode_ranges(w, ranges);
            }
            Request::WriteRanges { path, ranges, checksum, data } => {
                w.u8(29);
                w.path(path);
                encode_ranges(w, ranges);
                w.opt_checksum(*checksum);
                return Some(data.clone());
            }
            Request::CopyRanges { path, from, ranges } => {
                w.u8(26);
                w.path(path);
                w.path(from);
                w.varint(ranges.len() as u64);
                for r in ranges {
                    w.varint(r.to);
                    w.varint(r.from);
                    w.varint(r.len);
                }
            }
            Request::MakeDir { path, mode } => {
                w.u8(13);
                w.path(path);
                w.varint(*mode as u64);
            }
            Request::EnsureDir { path, mode } => {
                w.u8(17);
                w.path(path);
                w.varint(*mode as u64);
            }
            Request::MakeSymlink { path, target, mtime } => {
                w.u8(14);
                w.path(path);
                w.bytes(target);
                w.opt_timestamp(*mtime);
            }
            Request::Remove { path } => {
                w.u8(15);
                w.path(path);
            }
            Request::DataExtents { path, offset, len } => {
                w.u8(18);
                w.path(path);
                w.varint(*offset);
                w.varint(*len);
            }
            Request::DirXattrs { path } => {
                w.u8(22);
                w.path(path);
            }
            Request::SetXattrs { path, xattrs } => {
                w.u8(23);
                w.path(path);
                encode_xattrs(w, xattrs);
            }
            Request::MakeSpecial { path, kind, mode, rdev, mtime } => {
                w.u8(21);
                w.path(path);
                encode_kind(w, *kind);
                w.varint(*mode as u64);
                w.varint(*rdev);
                w.timestamp(*mtime);
            }
            Request::SetOwner { path, uid, gid } => {
                w.u8(20);
                w.path(path);
                for id in [uid, gid] {
                    match id {
                        Some(id) => {
                            w.u8(1);
                            w.varint(*id as u64);
                        }
                        None => w.u8(0),
                    }
                }
            }
            Request::MakeLink { path, existing } => {
                w.u8(19);
                w.path(path);
                w.path(existing);
            }
            Request::SetAttrs { path, mode, mtime } => {
                w.u8(16);
                w.path(path);
                opt_mode(w, *mode);
                w.opt_timestamp(*mtime);
            }
        }
        None
    }

    pub(crate) fn decode(r: &mut Reader) -> Result<Request, CodecError> {
        let op = r.u8("request type")?;
        let req = match op {
            1 => Request::Stat { path: r.path()? },
            2 => Request::ListDir { path: r.path()? },
            3 => {
                let path = r.path()?;
                let offset = r.varint("offset")?;
                let len = r.varint("length")?;
                let chunk_size = chunk_size(r)?;
                if len.div_ceil(chunk_size as u64) > MAX_DIGESTS as u64 {
                    return Err(CodecError::Invalid("too many chunks in one request"));
                }
                Request::HashChunks { path, offset, len, chunk_size }
            }
            4 => {
                let path = r.path()?;
                let offset = r.varint("offset")?;
                let len = data_len(r)?;
                let block_size = block_size(r, len)?;
                Request::HashBlocks { path, offset, len, block_size }
            }
            5 => Request::ReadData { path: r.path()?, offset: r.varint("offset")?, len: data_len(r)? },
            6 => {
                let path = r.path()?;
                let offset = r.varint("offset")?;
                let len = data_len(r)?;
                let block_size = block_size(r, len)?;
                let n = r.count(32, len.div_ceil(block_size) as usize, "block digests")?;
                let dest_blocks = (0..n).map(|_| r.digest("block digest")).collect::<Result<_, _>>()?;
                Request::ReadPatch { path, offset, len, block_size, dest_blocks }
            }
            7 => {
                let path = r.path()?;
                let offset = r.varint("offset")?;
                let checksum = r.opt_checksum("checksum")?;
                let data = r.rest();
                if data.len() > MAX_CHUNK as usize {
                    return Err(CodecError::Invalid("data larger than the largest chunk"));
                }
                Request::WriteData { path, offset, checksum, data }
            }
            8 => {
                let path = r.path()?;
                let offset = r.varint("offset")?;
                let len = data_len(r)?;
                let block_size = block_size(r, len)?;
                let chunk_digest = r.digest("chunk digest")?;
                let blocks = decode_blocks(r, len.div_ceil(block_size), block_size as usize)?;
                Request::ApplyPatch { path, offset, len, block_size, chunk_digest, blocks }
            }
            9 => {
                let max_size = r.u32v("max size")?;
                let n = r.count(1, MAX_BATCH_FILES, "file count")?;
                if (n as u64).saturating_mul(max_size as u64) > MAX_BATCH_BYTES as u64 {
                    return Err(CodecError::Invalid("batch read could exceed the batch size limit"));
                }
                let paths = (0..n).map(|_| r.path()).collect::<Result<_, _>>()?;
                Request::ReadFiles { paths, max_size }
            }
            10 => {
                let n = r.count(5, MAX_BATCH_FILES, "file count")?;
                let mut files: Vec<FileContent> = Vec::with_capacity(n);
                for _ in 0..n {
                    let before = files.last().map_or(&[][..], |f| f.path.as_bytes());
                    files.push(FileContent {
                        path: r.path_after(before)?,
                        mode: mode(r)?,
                        mtime: r.opt_timestamp("mtime")?,
                        checksum: r.opt_checksum("checksum")?,
                        data: r.bytes(MAX_BATCH_BYTES, "file data")?,
                    });
                }
                let n = r.count(3, files.len(), "directory count")?;
                let mut dirs = Vec::with_capacity(n);
                for _ in 0..n {
                    dirs.push(DirAttrs { path: r.path()?, mode: mode(r)?, mtime: r.timestamp("mtime")? });
                }
                Request::WriteFiles { files, dirs }
            }
            11 => Request::PrepareFile { path: r.path()?, claim: r.u64("claim")? },
            12 => Request::FinishFile {
                path: r.path()?,
                size: r.varint("size")?,
                mode: mode(r)?,
                mtime: r.opt_timestamp("mtime")?,
                place_at: if r.bool("place flag")? { Some(r.path()?) } else { None },
                dir: if r.bool("directory flag")? {
                    Some(DirAttrs { path: r.path()?, mode: mode(r)?, mtime: r.timestamp("mtime")? })
                } else {
                    None
                },
                check: if r.bool("check flag")? {
                    Some(FileCheck { chunk_size: chunk_size(r)?, digest: r.digest("file check")? })
                } else {
                    None
                },
            },
            25 => {
                let (path, offset, len) = (r.path()?, r.varint("offset")?, r.varint("length")?);
                let avg = r.u32v("average piece size")?;
                if !crate::limits::valid_piece_avg(avg) {
                    return Err(CodecError::Invalid("average piece size out of range"));
                }
                if len / (avg as u64 / 4) >= MAX_DIGESTS as u64 {
                    return Err(CodecError::Invalid("too many pieces in one request"));
                }
                Request::Pieces { path, offset, len, avg }
            }
            27 => {
                let n = r.count(6, MAX_BATCH_FILES, "file count")?;
                let mut files = Vec::with_capacity(n);
                for _ in 0..n {
                    let candidates = r.count(1, crate::limits::MAX_CLONE_CANDIDATES, "candidate count")?;
                    if candidates == 0 {
                        return Err(CodecError::Invalid("a copy from nowhere"));
                    }
                    let from = (0..candidates).map(|_| r.path()).collect::<Result<_, _>>()?;
                    let (path, size) = (r.path()?, r.varint("size")?);
                    let chunk_size = chunk_size(r)?;
                    let count = r.count(32, MAX_DIGESTS, "digest count")?;
                    if count as u64 != size.div_ceil(chunk_size as u64) {
                        return Err(CodecError::Invalid("not one digest per chunk"));
                    }
                    let digests = (0..count).map(|_| r.digest("digest")).collect::<Result<_, _>>()?;
                    files.push(CloneFile {
                        from,
                        path,
                        size,
                        chunk_size,
                        digests,
                        mode: mode(r)?,
                        mtime: r.opt_timestamp("mtime")?,
                    });
                }
                Request::CloneFiles { files }
            }
            28 => Request::ReadRanges { path: r.path()?, ranges: decode_ranges(r)? },
            30 => Request::Unlink { path: r.path()? },
            31 => Request::Release { path: r.path()?, claim: r.u64("claim")? },
            32 => Request::Renew { path: r.path()?, claim: r.u64("claim")? },
            29 => {
                let (path, ranges, checksum) = (r.path()?, decode_ranges(r)?, r.opt_checksum("checksum")?);
                let data = r.rest();
                if data.len() as u64 != ranges.iter().map(|r| r.end - r.start).sum::<u64>() {
                    return Err(CodecError::Invalid("data does not fill its ranges"));
                }
                Request::WriteRanges { path, ranges, checksum, data }
            }
            26 => {
                let (path, from) = (r.path()?, r.path()?);
                let n = r.count(3, crate::limits::MAX_COPY_RANGES, "range count")?;
                let mut ranges = Vec::with_capacity(n);
                for _ in 0..n {
                    let range =
                        CopyRange { to: r.varint("offset")?, from: r.varint("offset")?, len: r.varint("length")? };
                    if range.to.checked_add(range.len).is_none() || range.from.checked_add(range.len).is_none() {
                        return Err(CodecError::Invalid("range beyond the largest file"));
                    }
                    ranges.push(range);
                }
                Request::CopyRanges { path, from, ranges }
            }
            24 => Request::Unshare {
                path: r.path()?,
                mode: if r.bool("mode flag")? { Some(mode(r)?) } else { None },
                mtime: r.opt_timestamp("mtime")?,
            },
            13 => Request::MakeDir { path: r.path()?, mode: mode(r)? },
            14 => Request::MakeSymlink { path: r.path()?, target: link_target(r)?, mtime: r.opt_timestamp("mtime")? },
            15 => Request::Remove { path: r.path()? },
            17 => Request::EnsureDir { path: r.path()?, mode: mode(r)? },
            22 => Request::DirXattrs { path: r.path()? },
            23 => Request::SetXattrs { path: r.path()?, xattrs: decode_xattrs(r)? },
            21 => {
                let path = r.path()?;
                let kind = decode_kind(r)?;
                if !matches!(kind, Kind::Fifo | Kind::CharDevice | Kind::BlockDevice) {
                    return Err(CodecError::Invalid("not a fifo or a device"));
                }
                Request::MakeSpecial {
                    path,
                    kind,
                    mode: mode(r)?,
                    rdev: r.varint("device number")?,
                    mtime: r.timestamp("mtime")?,
                }
            }
            20 => Request::SetOwner {
                path: r.path()?,
                uid: if r.bool("owner flag")? { Some(r.u32v("owner")?) } else { None },
                gid: if r.bool("group flag")? { Some(r.u32v("group")?) } else { None },
            },
            19 => Request::MakeLink { path: r.path()?, existing: r.path()? },
            18 => Request::DataExtents { path: r.path()?, offset: r.varint("offset")?, len: r.varint("length")? },
            16 => Request::SetAttrs {
                path: r.path()?,
                mode: if r.bool("mode flag")? { Some(mode(r)?) } else { None },
                mtime: r.opt_timestamp("mtime")?,
            },
            _ => return Err(CodecError::Invalid("unknown request type")),
        };
        Ok(req)
    }
}

impl Response {
    /// Splits a large listing into pages of about `page_bytes` encoded bytes
    /// each (other responses are returned as they are).
    pub fn into_pages(self, page_bytes: usize) -> Vec<Response> {
        let Response::Listing { entries, partials, now, more: _ } = self else { return vec![self] };
        let mut pages = Vec::new();
        let mut page = Vec::new();
        let mut size = 0;
        for e in entries {
            let entry_size = 64 + e.name.as_bytes().len() + e.stat.target.as_ref().map_or(0, |t| t.len());
            if size + entry_size > page_bytes && !page.is_empty() {
                pages.push(Response::Listing {
                    entries: std::mem::take(&mut page),
                    partials: Vec::new(),
                    now,
                    more: true,
                });
                size = 0;
            }
            size += entry_size;
            page.push(e);
        }
        pages.push(Response::Listing { entries: page, partials, now, more: false });
        pages
    }

    pub(crate) fn encode(&self, w: &mut Writer<'_>) -> Option<Bytes> {
        match self {
            Response::Done => w.u8(1),
            Response::Stat { stat, now } => {
                w.u8(2);
                w.timestamp(*now);
                match stat {
                    Some(s) => {
                        w.u8(1);
                        encode_stat(w, s);
                    }
                    None => w.u8(0),
                }
            }
            Response::Listing { entries, partials, now, more } => {
                w.u8(3);
                w.timestamp(*now);
                w.bool(*more);
                for list in [entries, partials] {
                    w.varint(list.len() as u64);
                    for e in list {
                        w.bytes(e.name.as_bytes());
                        encode_stat(w, &e.stat);
                    }
                }
            }
            Response::Digests(digests) => {
                w.u8(4);
                w.varint(digests.len() as u64);
                digests.iter().for_each(|d| w.digest(d));
            }
            Response::Pieces(pieces) => {
                w.u8(12);
                w.varint(pieces.len() as u64);
                for p in pieces {
                    w.varint(p.len as u64);
                    w.u64(p.digest);
                }
            }
            Response::Data { checksum, data } => {
                w.u8(5);
                w.opt_checksum(*checksum);
                return Some(data.clone());
            }
            Response::Patch { chunk_digest, blocks } => {
                w.u8(6);
                w.digest(chunk_digest);
                encode_blocks(w, blocks);
            }
            Response::Files(files) => {
                w.u8(7);
                w.varint(files.len() as u64);
                for f in files {
                    match f {
                        FileRead::Content { stat, now, stable, checksum, data } => {
                            w.u8(1);
                            encode_stat(w, stat);
                            w.timestamp(*now);
                            w.bool(*stable);
                            w.opt_checksum(*checksum);
                            w.bytes(data);
                        }
                        FileRead::NotSmall(stat) => {
                            w.u8(2);
                            encode_stat(w, stat);
                        }
                        FileRead::Failed(failure) => {
                            w.u8(3);
                            encode_failure(w, failure);
                        }
                    }
                }
            }
            Response::Outcomes(outcomes) => {
                w.u8(8);
                w.varint(outcomes.len() as u64);
                for o in outcomes {
                    match o {
                        Ok(()) => w.u8(0),
                        Err(failure) => {
                            w.u8(1);
                            encode_failure(w, failure);
                        }
                    }
                }
            }
            Response::Failed(failure) => {
                w.u8(9);
                encode_failure(w, failure);
            }
            Response::DirXattrs(entries) => {
                w.u8(11);
                w.varint(entries.len() as u64);
                for (name, xattrs) in entries {
                    w.bytes(name.as_bytes());
                    encode_xattrs(w, xattrs);
                }
            }
            Response::Extents(extents) => {
                w.u8(10);
                w.varint(extents.len() as u64);
                for e in extents {
                    w.varint(e.start);
                    w.varint(e.end - e.start);
                }
            }
        }
        None
    }

    pub(crate) fn decode(r: &mut Reader) -> Result<Response, CodecError> {
        let op = r.u8("response type")?;
        let resp = match op {
            1 => Response::Done,
            2 => {
                let now = r.timestamp("clock")?;
                let stat = if r.bool("stat flag")? { Some(decode_stat(r)?) } else { None };
                Response::Stat { stat, now }
            }
            3 => {
                let now = r.timestamp("clock")?;
                let more = r.bool("more flag")?;
                let n = r.count(9, usize::MAX, "entry count")?;
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    entries.push(Entry { name: r.name()?, stat: decode_stat(r)? });
                }
                let n = r.count(9, usize::MAX, "partial file count")?;
                let mut partials = Vec::with_capacity(n);
                for _ in 0..n {
                    let name = r.name()?;
                    if !crate::path::is_partial(name.as_bytes()) {
                        return Err(CodecError::Invalid("a partial file's name expected"));
                    }
                    partials.push(Entry { name, stat: decode_stat(r)? });
                }
                Response::Listing { entries, partials, now, more }
            }
            4 => {
                let n = r.count(32, MAX_DIGESTS, "digest count")?;
                Response::Digests((0..n).map(|_| r.digest("digest")).collect::<Result<_, _>>()?)
            }
            12 => {
                let n = r.count(9, MAX_DIGESTS, "piece count")?;
                let mut pieces = Vec::with_capacity(n);
                for _ in 0..n {
                    let len = r.u32v("piece length")?;
                    if len == 0 || len > 4 * crate::limits::MAX_PIECE_AVG {
                        return Err(CodecError::Invalid("piece length out of range"));
                    }
                    pieces.push(Piece { len, digest: r.u64("piece digest")? });
                }
                Response::Pieces(pieces)
            }
            5 => {
                let checksum = r.opt_checksum("checksum")?;
                let data = r.rest();
                if data.len() > MAX_CHUNK as usize {
                    return Err(CodecError::Invalid("data larger than the largest chunk"));
                }
                Response::Data { checksum, data }
            }
            6 => {
                let chunk_digest = r.digest("chunk digest")?;
                // The block size is the requester's; it checks that blocks fit.
                Response::Patch { chunk_digest, blocks: decode_blocks(r, MAX_DIGESTS as u32, MAX_CHUNK as usize)? }
            }
            7 => {
                let n = r.count(2, MAX_BATCH_FILES, "file count")?;
                let mut files = Vec::with_capacity(n);
                for _ in 0..n {
                    files.push(match r.u8("file result")? {
                        1 => FileRead::Content {
                            stat: decode_stat(r)?,
                            now: r.timestamp("clock")?,
                            stable: r.bool("stable flag")?,
                            checksum: r.opt_checksum("checksum")?,
                            data: r.bytes(MAX_BATCH_BYTES, "file data")?,
                        },
                        2 => FileRead::NotSmall(decode_stat(r)?),
                        3 => FileRead::Failed(decode_failure(r)?),
                        _ => return Err(CodecError::Invalid("unknown file result")),
                    });
                }
                Response::Files(files)
            }
            8 => {
                let n = r.count(1, 2 * MAX_BATCH_FILES, "outcome count")?;
                let mut outcomes = Vec::with_capacity(n);
                for _ in 0..n {
                    outcomes.push(match r.bool("outcome")? {
                        false => Ok(()),
                        true => Err(decode_failure(r)?),
                    });
                }
                Response::Outcomes(outcomes)
            }
            9 => Response::Failed(decode_failure(r)?),
            11 => {
                let n = r.count(3, usize::MAX, "entry count")?;
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    entries.push((r.name()?, decode_xattrs(r)?));
                }
                Response::DirXattrs(entries)
            }
            10 => {
                let n = r.count(2, MAX_EXTENTS, "extent count")?;
                let mut extents: Vec<std::ops::Range<u64>> = Vec::with_capacity(n);
                for _ in 0..n {
                    let start = r.varint("extent start")?;
                    let end =
                        start.checked_add(r.varint("extent length")?).ok_or(CodecError::Invalid("extent past 2^64"))?;
                    if extents.last().is_some_and(|last| last.end > start) || end <= start {
                        return Err(CodecError::Invalid("extents out of order, overlapping or empty"));
                    }
                    extents.push(start..end);
                }
                Response::Extents(extents)
            }
            _ => return Err(CodecError::Invalid("unknown response type")),
        };
        Ok(resp)
    }
}

fn chunk_size(r: &mut Reader) -> Result<u32, CodecError> {
    let v = r.u32v("chunk size")?;
    if !(MIN_BLOCK..=MAX_CHUNK).contains(&v) {
        return Err(CodecError::Invalid("chunk size out of range"));
    }
    Ok(v)
}

fn data_len(r: &mut Reader) -> Result<u32, CodecError> {
    let v = r.u32v("length")?;
    if v > MAX_CHUNK {
        return Err(CodecError::Invalid("length larger than the largest chunk"));
    }
    Ok(v)
}

fn block_size(r: &mut Reader, len: u32) -> Result<u32, CodecError> {
    let v = r.u32v("block size")?;
    if !(MIN_BLOCK..=MAX_CHUNK).contains(&v) || len.div_ceil(v) as usize > MAX_DIGESTS {
        return Err(CodecError::Invalid("block size out of range"));
    }
    Ok(v)
}

fn encode_ranges(w: &mut Writer<'_>, ranges: &[std::ops::Range<u64>]) {
    w.varint(ranges.len() as u64);
    for r in ranges {
        w.varint(r.start);
        w.varint(r.end - r.start);
    }
}

/// Ranges of one file, at most [`MAX_CHUNK`] bytes in all.
fn decode_ranges(r: &mut Reader) -> Result<Vec<std::ops::Range<u64>>, CodecError> {
    let n = r.count(2, crate::limits::MAX_COPY_RANGES, "range count")?;
    let (mut ranges, mut total) = (Vec::with_capacity(n), 0u64);
    for _ in 0..n {
        let (start, len) = (r.varint("offset")?, r.varint("length")?);
        total += len.min(MAX_CHUNK as u64 + 1);
        if total > MAX_CHUNK as u64 || start.checked_add(len).is_none() {
            return Err(CodecError::Invalid("ranges larger than the largest chunk"));
        }
        ranges.push(start..start + len);
    }
    Ok(ranges)
}

fn opt_mode(w: &mut Writer<'_>, mode: Option<u32>) {
    match mode {
        Some(m) => {
            w.u8(1);
            w.varint(m as u64);
        }
        None => w.u8(0),
    }
}

fn mode(r: &mut Reader) -> Result<u32, CodecError> {
    let v = r.u32v("mode")?;
    if v > 0o7777 {
        return Err(CodecError::Invalid("mode has bits beyond 0o7777"));
    }
    Ok(v)
}

/// Extended attributes of one entry: names and values, sorted by name.
pub type Xattrs = Vec<(Bytes, Bytes)>;

fn encode_xattrs(w: &mut Writer<'_>, xattrs: &Xattrs) {
    w.varint(xattrs.len() as u64);
    for (name, value) in xattrs {
        w.bytes(name);
        w.bytes(value);
    }
}

fn decode_xattrs(r: &mut Reader) -> Result<Xattrs, CodecError> {
    let n = r.count(3, MAX_XATTRS, "extended attribute count")?;
    let mut xattrs = Vec::with_capacity(n);
    for _ in 0..n {
        let name = r.bytes(MAX_XATTR_NAME, "extended attribute name")?;
        if name.is_empty() || name.contains(&0) {
            return Err(CodecError::Invalid("empty extended attribute name or NUL in it"));
        }
        xattrs.push((name, r.bytes(MAX_XATTR_VALUE, "extended attribute value")?));
    }
    Ok(xattrs)
}

fn link_target(r: &mut Reader) -> Result<Bytes, CodecError> {
    let t = r.bytes(MAX_LINK_TARGET, "symlink target")?;
    if t.is_empty() || t.contains(&0) {
        return Err(CodecError::Invalid("empty symlink target or NUL in it"));
    }
    Ok(t)
}

fn encode_blocks(w: &mut Writer<'_>, blocks: &[Block]) {
    w.varint(blocks.len() as u64);
    for b in blocks {
        w.varint(b.index as u64);
        w.bytes(&b.data);
    }
}

/// At most `slots` blocks of at most `max_block` bytes each, indices
/// strictly increasing and below `slots`.
fn decode_blocks(r: &mut Reader, slots: u32, max_block: usize) -> Result<Vec<Block>, CodecError> {
    let n = r.count(2, slots as usize, "block count")?;
    let mut blocks = Vec::with_capacity(n);
    let mut next = 0u32;
    for _ in 0..n {
        let index = r.u32v("block index")?;
        if index < next || index >= slots {
            return Err(CodecError::Invalid("block index out of order or range"));
        }
        next = index + 1;
        let data = r.bytes(max_block, "block data")?;
        blocks.push(Block { index, data });
    }
    Ok(blocks)
}

fn encode_kind(w: &mut Writer<'_>, kind: Kind) {
    w.u8(match kind {
        Kind::File => 1,
        Kind::Dir => 2,
        Kind::Symlink => 3,
        Kind::Fifo => 4,
        Kind::Socket => 5,
        Kind::CharDevice => 6,
        Kind::BlockDevice => 7,
    });
}

fn decode_kind(r: &mut Reader) -> Result<Kind, CodecError> {
    Ok(match r.u8("entry kind")? {
        1 => Kind::File,
        2 => Kind::Dir,
        3 => Kind::Symlink,
        4 => Kind::Fifo,
        5 => Kind::Socket,
        6 => Kind::CharDevice,
        7 => Kind::BlockDevice,
        _ => return Err(CodecError::Invalid("unknown entry kind")),
    })
}

fn encode_stat(w: &mut Writer<'_>, s: &Stat) {
    encode_kind(w, s.kind);
    w.varint(s.size);
    w.varint(s.mode as u64);
    w.timestamp(s.mtime);
    w.timestamp(s.ctime);
    w.varint(s.ino);
    w.varint(s.dev);
    w.varint(s.nlink);
    w.varint(s.blocks);
    w.varint(s.uid as u64);
    w.varint(s.gid as u64);
    w.varint(s.rdev);
    if let Some(t) = &s.target {
        w.bytes(t);
    }
}

fn decode_stat(r: &mut Reader) -> Result<Stat, CodecError> {
    let kind = decode_kind(r)?;
    let size = r.varint("size")?;
    let mode = mode(r)?;
    let mtime = r.timestamp("mtime")?;
    let ctime = r.timestamp("ctime")?;
    let ino = r.varint("inode")?;
    let dev = r.varint("device")?;
    let nlink = r.varint("link count")?;
    let blocks = r.varint("allocated blocks")?;
    let uid = r.u32v("owner")?;
    let gid = r.u32v("group")?;
    let rdev = r.varint("device number")?;
    let target = match kind {
        Kind::Symlink => Some(Box::from(&link_target(r)?[..])),
        _ => None,
    };
    Ok(Stat { kind, size, mode, mtime, ctime, ino, dev, nlink, blocks, uid, gid, rdev, target })
}

fn encode_failure(w: &mut Writer<'_>, f: &Failure) {
    w.u8(f.kind.code());
    w.bytes(f.message.as_bytes());
}

fn decode_failure(r: &mut Reader) -> Result<Failure, CodecError> {
    let kind = FailureKind::from_code(r.u8("failure kind")?);
    Ok(Failure { kind, message: r.message()? })
}
