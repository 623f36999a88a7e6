//! Primitive encodings shared by every message: little-endian integers,
//! LEB128 varints, length-prefixed byte strings. The [`Reader`] checks every
//! length against the bytes actually left in the frame before it slices or
//! allocates, so a forged count can never cost memory.

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::CodecError;
use crate::path::{Name, RelPath};
use crate::stat::{Checksum, Digest, Timestamp};

pub(crate) struct Writer<'a>(pub &'a mut BytesMut);

impl Writer<'_> {
    pub fn u8(&mut self, v: u8) {
        self.0.put_u8(v);
    }

    pub fn u16(&mut self, v: u16) {
        self.0.put_u16_le(v);
    }

    pub fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.put_u8(v as u8 | 0x80);
            v >>= 7;
        }
        self.0.put_u8(v as u8);
    }

    pub fn bool(&mut self, v: bool) {
        self.u8(v as u8);
    }

    pub fn bytes(&mut self, v: &[u8]) {
        self.varint(v.len() as u64);
        self.0.put_slice(v);
    }

    pub fn raw16(&mut self, v: &[u8; 16]) {
        self.0.put_slice(v);
    }

    pub fn u64(&mut self, v: u64) {
        self.0.put_u64_le(v);
    }

    pub fn digest(&mut self, d: &Digest) {
        self.0.put_slice(&d.0);
    }

    pub fn opt_checksum(&mut self, c: Option<Checksum>) {
        match c {
            Some(c) => {
                self.u8(1);
                self.raw16(&c.0.to_le_bytes());
            }
            None => self.u8(0),
        }
    }

    pub fn timestamp(&mut self, t: Timestamp) {
        // Zigzag, so that times before 1970 stay short.
        self.varint(((t.secs << 1) ^ (t.secs >> 63)) as u64);
        self.varint(t.nanos as u64);
    }

    pub fn opt_timestamp(&mut self, t: Option<Timestamp>) {
        match t {
            Some(t) => {
                self.u8(1);
                self.timestamp(t);
            }
            None => self.u8(0),
        }
    }

    pub fn path(&mut self, p: &RelPath) {
        self.bytes(p.as_bytes());
    }

    /// A path in a list, as the length of what it shares with the one
    /// before and the rest (a batch's files are mostly in one directory).
    pub fn path_after(&mut self, before: &[u8], p: &RelPath) {
        let shared = before.iter().zip(p.as_bytes()).take_while(|(a, b)| a == b).count();
        self.varint(shared as u64);
        self.bytes(&p.as_bytes()[shared..]);
    }
}

pub(crate) struct Reader {
    buf: Bytes,
    pos: usize,
}

fn invalid(what: &'static str) -> CodecError {
    CodecError::Invalid(what)
}

impl Reader {
    pub fn new(buf: Bytes) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&[u8], CodecError> {
        if n > self.remaining() {
            return Err(invalid(what));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, CodecError> {
        Ok(self.take(1, what)?[0])
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16, CodecError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub fn varint(&mut self, what: &'static str) -> Result<u64, CodecError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.u8(what)?;
            let bits = (b & 0x7f) as u64;
            if i == 9 && bits > 1 {
                return Err(invalid(what));
            }
            v |= bits << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(invalid(what))
    }

    pub fn u32v(&mut self, what: &'static str) -> Result<u32, CodecError> {
        u32::try_from(self.varint(what)?).map_err(|_| invalid(what))
    }

    pub fn bool(&mut self, what: &'static str) -> Result<bool, CodecError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(invalid(what)),
        }
    }

    /// A length-prefixed byte string of at most `max` bytes, as a zero-copy slice.
    pub fn bytes(&mut self, max: usize, what: &'static str) -> Result<Bytes, CodecError> {
        let len = self.varint(what)?;
        if len > max as u64 || len > self.remaining() as u64 {
            return Err(invalid(what));
        }
        let start = self.pos;
        self.pos += len as usize;
        Ok(self.buf.slice(start..self.pos))
    }

    /// Everything left in the frame, as a zero-copy slice.
    pub fn rest(&mut self) -> Bytes {
        let start = self.pos;
        self.pos = self.buf.len();
        self.buf.slice(start..)
    }

    /// A count of items that each take at least `min_size` bytes on the wire;
    /// refused if that many items could not possibly fit in what is left.
    pub fn count(&mut self, min_size: usize, max: usize, what: &'static str) -> Result<usize, CodecError> {
        let n = self.varint(what)?;
        if n > max as u64 || n.saturating_mul(min_size as u64) > self.remaining() as u64 {
            return Err(invalid(what));
        }
        Ok(n as usize)
    }

    pub fn digest(&mut self, what: &'static str) -> Result<Digest, CodecError> {
        let b = self.take(32, what)?;
        let mut d = [0u8; 32];
        d.copy_from_slice(b);
        Ok(Digest(d))
    }

    pub fn u64(&mut self, what: &'static str) -> Result<u64, CodecError> {
        let b = self.take(8, what)?;
        Ok(u64::from_le_bytes(b.try_into().expect("eight bytes")))
    }

    pub fn raw16(&mut self, what: &'static str) -> Result<[u8; 16], CodecError> {
        let b = self.take(16, what)?;
        let mut v = [0u8; 16];
        v.copy_from_slice(b);
        Ok(v)
    }

    pub fn timestamp(&mut self, what: &'static str) -> Result<Timestamp, CodecError> {
        let z = self.varint(what)?;
        let secs = ((z >> 1) as i64) ^ -((z & 1) as i64);
        let nanos = self.u32v(what)?;
        if nanos >= 1_000_000_000 {
            return Err(invalid(what));
        }
        Ok(Timestamp { secs, nanos })
    }

    pub fn opt_checksum(&mut self, what: &'static str) -> Result<Option<Checksum>, CodecError> {
        Ok(if self.bool(what)? { Some(Checksum(u128::from_le_bytes(self.raw16(what)?))) } else { None })
    }

    pub fn opt_timestamp(&mut self, what: &'static str) -> Result<Option<Timestamp>, CodecError> {
        Ok(if self.bool(what)? { Some(self.timestamp(what)?) } else { None })
    }

    pub fn path(&mut self) -> Result<RelPath, CodecError> {
        let raw = self.bytes(crate::limits::MAX_PATH, "path")?;
        RelPath::new(&raw).map_err(CodecError::Path)
    }

    /// The counterpart of [`Writer::path_after`].
    pub fn path_after(&mut self, before: &[u8]) -> Result<RelPath, CodecError> {
        let shared = self.varint("shared path length")?;
        if shared > before.len() as u64 {
            return Err(invalid("shared path length"));
        }
        let rest = self.bytes(crate::limits::MAX_PATH, "path")?;
        RelPath::new(&[&before[..shared as usize], &rest[..]].concat()).map_err(CodecError::Path)
    }

    pub fn name(&mut self) -> Result<Name, CodecError> {
        let raw = self.bytes(crate::limits::MAX_NAME, "name")?;
        Name::new(&raw).map_err(CodecError::Path)
    }

    pub fn message(&mut self) -> Result<String, CodecError> {
        let raw = self.bytes(crate::limits::MAX_MESSAGE, "message")?;
        Ok(String::from_utf8_lossy(&raw).into_owned())
    }

    pub fn finish(self) -> Result<(), CodecError> {
        if self.remaining() != 0 {
            return Err(invalid("trailing bytes after message"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_and_reject_overflow() {
        for v in [0, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut b = BytesMut::new();
            Writer(&mut b).varint(v);
            let mut r = Reader::new(b.freeze());
            assert_eq!(r.varint("v").unwrap(), v);
            r.finish().unwrap();
        }
        let overflow = Bytes::from_static(&[0xff; 9]).iter().copied().chain([0x02]).collect::<Vec<_>>();
        assert!(Reader::new(overflow.into()).varint("v").is_err());
        assert!(Reader::new(Bytes::from_static(&[0x80; 11])).varint("v").is_err());
    }

    #[test]
    fn counts_are_checked_against_remaining_bytes() {
        let mut b = BytesMut::new();
        Writer(&mut b).varint(1_000_000);
        b.extend_from_slice(&[0; 64]);
        let mut r = Reader::new(b.freeze());
        assert!(r.count(32, usize::MAX, "digests").is_err());
    }

    #[test]
    fn timestamps_round_trip_including_negative() {
        for t in [
            Timestamp { secs: 0, nanos: 0 },
            Timestamp { secs: -1, nanos: 999_999_999 },
            Timestamp { secs: 1_790_000_000, nanos: 123 },
            Timestamp { secs: i64::MIN, nanos: 0 },
            Timestamp { secs: i64::MAX, nanos: 1 },
        ] {
            let mut b = BytesMut::new();
            Writer(&mut b).timestamp(t);
            assert_eq!(Reader::new(b.freeze()).timestamp("t").unwrap(), t);
        }
    }
}
