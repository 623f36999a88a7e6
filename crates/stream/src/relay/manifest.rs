//! What the sealed objects hold, once opened: the stream's header, a data
//! object's frames and digests, the end's count, length and digest. Fixed
//! little-endian layouts; decoding checks every count and length against
//! the layout and the bytes left before it slices anything.
//!
//! ```text
//! header  object_size u64 | frame_size u32 | started (unix seconds) u64
//! data    before [32] | after [32] | frames u32 | frames × (encoding u8 | raw_len u32 | len u32 | payload)
//! end     objects u64 | bytes u64 | digest [32]
//! ```
//!
//! `before` and `after` are the BLAKE3 of the stream from its first byte
//! to this object's first and past its last byte.
//!
//! Must never: allocate or slice by a length it has not bounded.

use bytes::Bytes;
use pareco_proto::Digest;
use pareco_proto::stream::Encoding;

use super::Layout;

/// Bytes of a data object's plaintext before its frames.
pub const OBJECT_OVERHEAD: usize = 32 + 32 + 4;

/// Bytes of a frame's framing in a data object.
pub const FRAME_OVERHEAD: usize = 1 + 4 + 4;

/// Why an opened object's content is not what its kind must hold. (Its tag
/// checked, so the sender wrote it: a bug or another format, not an attack.)
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {what}: {why}")]
pub struct ManifestError {
    what: &'static str,
    why: &'static str,
}

fn malformed(what: &'static str, why: &'static str) -> ManifestError {
    ManifestError { what, why }
}

/// The stream's header object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamHeader {
    /// How the stream is cut.
    pub layout: Layout,
    /// When the sender started it (seconds since 1970), for messages.
    pub started: u64,
}

impl StreamHeader {
    /// The plaintext.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(20);
        out.extend_from_slice(&self.layout.object_size().to_le_bytes());
        out.extend_from_slice(&(self.layout.frame_size() as u32).to_le_bytes());
        out.extend_from_slice(&self.started.to_le_bytes());
        out
    }

    /// Parses a header's plaintext.
    pub fn decode(plain: &[u8]) -> Result<StreamHeader, ManifestError> {
        let what = "stream header";
        let mut r = Cursor { buf: plain, what };
        let (object_size, frame_size, started) = (r.u64()?, r.u32()?, r.u64()?);
        r.finish()?;
        let layout = Layout::new(object_size).map_err(|_| malformed(what, "object size out of range"))?;
        if frame_size as usize != layout.frame_size() {
            return Err(malformed(what, "frame size other than this pareco's"));
        }
        Ok(StreamHeader { layout, started })
    }
}

/// One frame of a data object, encoded as the sender compressed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedFrame {
    /// How `payload` is encoded.
    pub encoding: Encoding,
    /// Bytes once decoded.
    pub raw_len: u32,
    /// The encoded bytes.
    pub payload: Bytes,
}

/// A data object's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectBody {
    /// BLAKE3 of the stream before this object.
    pub before: Digest,
    /// BLAKE3 of the stream up to the end of this object.
    pub after: Digest,
    /// Its frames, in order.
    pub frames: Vec<EncodedFrame>,
}

impl ObjectBody {
    /// Bytes of the stream this object holds.
    pub fn raw_len(&self) -> u64 {
        self.frames.iter().map(|f| f.raw_len as u64).sum()
    }

    /// The plaintext of an object made of `frames`.
    pub fn encode(before: &Digest, after: &Digest, frames: &[EncodedFrame]) -> Vec<u8> {
        let len = OBJECT_OVERHEAD + frames.iter().map(|f| FRAME_OVERHEAD + f.payload.len()).sum::<usize>();
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&before.0);
        out.extend_from_slice(&after.0);
        out.extend_from_slice(&(frames.len() as u32).to_le_bytes());
        for f in frames {
            out.push(match f.encoding {
                Encoding::Raw => 0,
                Encoding::Zstd => 1,
            });
            out.extend_from_slice(&f.raw_len.to_le_bytes());
            out.extend_from_slice(&(f.payload.len() as u32).to_le_bytes());
            out.extend_from_slice(&f.payload);
        }
        out
    }

    /// Parses a data object's plaintext, bounded by `layout`: at most a full
    /// object's frames, each at most a frame of input, at most an object in
    /// all, payloads within the bytes there are.
    pub fn decode(plain: Bytes, layout: &Layout) -> Result<ObjectBody, ManifestError> {
        let what = "data object";
        let mut r = Cursor { buf: &plain, what };
        let (before, after) = (Digest(r.array()?), Digest(r.array()?));
        let count = r.u32()? as u64;
        if count == 0 || count > layout.frames_per_object() {
            return Err(malformed(what, "frame count out of range"));
        }
        let mut frames = Vec::with_capacity(count as usize);
        let mut total = 0u64;
        for _ in 0..count {
            let encoding = match r.u8()? {
                0 => Encoding::Raw,
                1 => Encoding::Zstd,
                _ => return Err(malformed(what, "unknown frame encoding")),
            };
            let (raw_len, len) = (r.u32()?, r.u32()? as usize);
            if raw_len == 0 || raw_len as usize > layout.frame_size() {
                return Err(malformed(what, "frame length out of range"));
            }
            if encoding == Encoding::Raw && len != raw_len as usize {
                return Err(malformed(what, "raw frame of another length than announced"));
            }
            let start = plain.len() - r.buf.len();
            r.take(len)?;
            total += raw_len as u64;
            frames.push(EncodedFrame { encoding, raw_len, payload: plain.slice(start..start + len) });
        }
        r.finish()?;
        if total > layout.object_size() {
            return Err(malformed(what, "more than an object of input"));
        }
        Ok(ObjectBody { before, after, frames })
    }
}

/// The final object: what the whole stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamEnd {
    /// Data objects.
    pub objects: u64,
    /// Bytes of the stream.
    pub bytes: u64,
    /// BLAKE3 of the stream.
    pub digest: Digest,
}

impl StreamEnd {
    /// The plaintext.
    pub fn encode(&self) -> Vec<u8> {
        [&self.objects.to_le_bytes()[..], &self.bytes.to_le_bytes(), &self.digest.0].concat()
    }

    /// Parses an end's plaintext; the count must be the one `layout` makes
    /// of the length.
    pub fn decode(plain: &[u8], layout: &Layout) -> Result<StreamEnd, ManifestError> {
        let what = "end object";
        let mut r = Cursor { buf: plain, what };
        let end = StreamEnd { objects: r.u64()?, bytes: r.u64()?, digest: Digest(r.array()?) };
        r.finish()?;
        if layout.objects_for(end.bytes) != end.objects {
            return Err(malformed(what, "object count does not match the length"));
        }
        Ok(end)
    }
}

/// Reads fixed fields off a plaintext, never past its end.
struct Cursor<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ManifestError> {
        if n > self.buf.len() {
            return Err(malformed(self.what, "truncated"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ManifestError> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }

    fn u8(&mut self) -> Result<u8, ManifestError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, ManifestError> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, ManifestError> {
        self.array().map(u64::from_le_bytes)
    }

    fn finish(&self) -> Result<(), ManifestError> {
        if self.buf.is_empty() { Ok(()) } else { Err(malformed(self.what, "trailing bytes")) }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn layout() -> Layout {
        Layout::new(2 << 20).unwrap()
    }

    fn frame(encoding: Encoding, raw_len: u32, payload: &[u8]) -> EncodedFrame {
        EncodedFrame { encoding, raw_len, payload: Bytes::copy_from_slice(payload) }
    }

    #[test]
    fn headers_and_ends_round_trip_and_lies_are_refused() {
        let header = StreamHeader { layout: layout(), started: 1_764_000_000 };
        assert_eq!(StreamHeader::decode(&header.encode()), Ok(header));
        let mut bad = header.encode();
        bad[0] = 1; // an object size that is no layout
        assert!(StreamHeader::decode(&bad).is_err());
        assert!(StreamHeader::decode(&header.encode()[..19]).is_err());

        let end = StreamEnd { objects: 3, bytes: (4 << 20) + 1, digest: Digest([5; 32]) };
        assert_eq!(StreamEnd::decode(&end.encode(), &layout()), Ok(end));
        let lie = StreamEnd { objects: 2, ..end };
        assert!(StreamEnd::decode(&lie.encode(), &layout()).is_err(), "3 objects' worth of bytes in 2");
        let empty = StreamEnd { objects: 0, bytes: 0, digest: Digest([0; 32]) };
        assert_eq!(StreamEnd::decode(&empty.encode(), &layout()), Ok(empty));
        assert!(StreamEnd::decode(&[end.encode(), vec![0]].concat(), &layout()).is_err());
    }

    #[test]
    fn data_objects_round_trip_and_are_bounded_by_the_layout() {
        let frames = vec![frame(Encoding::Raw, 3, b"abc"), frame(Encoding::Zstd, 1 << 20, b"zstd bytes")];
        let plain = ObjectBody::encode(&Digest([1; 32]), &Digest([2; 32]), &frames);
        let body = ObjectBody::decode(Bytes::from(plain.clone()), &layout()).unwrap();
        assert_eq!(body.frames, frames);
        assert_eq!((body.before, body.after, body.raw_len()), (Digest([1; 32]), Digest([2; 32]), 3 + (1 << 20)));

        let three = vec![frame(Encoding::Raw, 1, b"a"); 3];
        let plain3 = ObjectBody::encode(&Digest([0; 32]), &Digest([0; 32]), &three);
        assert!(ObjectBody::decode(Bytes::from(plain3), &layout()).is_err(), "3 frames in a 2-frame object");
        let big = vec![frame(Encoding::Zstd, (1 << 20) + 1, b"x")];
        let plain_big = ObjectBody::encode(&Digest([0; 32]), &Digest([0; 32]), &big);
        assert!(ObjectBody::decode(Bytes::from(plain_big), &layout()).is_err(), "a frame over a frame's size");
        let liar = vec![frame(Encoding::Raw, 4, b"abc")];
        let plain_liar = ObjectBody::encode(&Digest([0; 32]), &Digest([0; 32]), &liar);
        assert!(ObjectBody::decode(Bytes::from(plain_liar), &layout()).is_err(), "raw of the wrong length");
        let none = ObjectBody::encode(&Digest([0; 32]), &Digest([0; 32]), &[]);
        assert!(ObjectBody::decode(Bytes::from(none), &layout()).is_err(), "an object holds a frame at least");
        for cut in [0, 40, 68, 70, plain.len() - 1] {
            assert!(ObjectBody::decode(Bytes::copy_from_slice(&plain[..cut]), &layout()).is_err(), "cut at {cut}");
        }
    }

    proptest! {
        /// Whatever an object's plaintext claims, decoding it never panics
        /// and never returns more than the layout allows.
        #[test]
        fn arbitrary_plaintexts_decode_within_bounds(mut bytes in proptest::collection::vec(any::<u8>(), 0..400),
                                                     count in 0u32..4, raw_len in 0u32..(3 << 20)) {
            if bytes.len() >= 77 {
                bytes[64..68].copy_from_slice(&count.to_le_bytes());
                bytes[69..73].copy_from_slice(&raw_len.to_le_bytes());
            }
            if let Ok(body) = ObjectBody::decode(Bytes::from(bytes), &layout()) {
                prop_assert!(body.raw_len() <= layout().object_size());
                prop_assert!(body.frames.len() as u64 <= layout().frames_per_object());
            }
            let _ = StreamHeader::decode(&[]);
        }
    }
}
