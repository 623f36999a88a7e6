//! Content-defined pieces of a file: FastCDC (v2020) cut points, each piece
//! named by the first 8 bytes of its BLAKE3. Both sides of a sync cut their
//! own copy with the same parameters, so that content the two versions
//! share, wherever it sits, comes out as the same pieces (see
//! `pareco_plan::delta`).

use std::fs::File;
use std::io::Read;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::FileExt;

use fastcdc::v2020::StreamCDC;
use pareco_proto::{Piece, RelPath};

use crate::error::FsError;
use crate::read::open_read;

/// The pieces of `[offset, offset + len)` (fewer bytes if the file is
/// shorter), cut from `offset` on with the average size `avg` (validated by
/// the codec: a power of two in the protocol's limits).
pub(crate) fn pieces(
    root: BorrowedFd<'_>,
    path: &RelPath,
    offset: u64,
    len: u64,
    avg: u32,
) -> Result<Vec<Piece>, FsError> {
    let file = open_read(root, path)?;
    let (avg, reader) = (avg as usize, Range { file: &file, at: offset, end: offset.saturating_add(len) });
    let mut pieces = Vec::new();
    for chunk in StreamCDC::new(reader, avg / 4, avg, avg * 4) {
        let chunk = chunk.map_err(|e| match e {
            fastcdc::v2020::Error::IoError(e) => FsError::std("read", e),
            other => FsError::bad_request("cut into pieces", other.to_string()),
        })?;
        let digest = blake3::hash(&chunk.data);
        let digest = u64::from_le_bytes(digest.as_bytes()[..8].try_into().expect("eight bytes"));
        pieces.push(Piece { len: chunk.length as u32, digest });
    }
    Ok(pieces)
}

/// A range of a file as a reader (positioned reads: the file is shared).
struct Range<'a> {
    file: &'a File,
    at: u64,
    end: u64,
}

impl Read for Range<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = (self.end.saturating_sub(self.at)).min(buf.len() as u64) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}
