//! Frames: the unit that crosses the channel once it is established.
//!
//! ```text
//! frame = length:u32le body[length]          length <= MAX_FRAME
//! body  = type:u8 id:varint message          type 6 request, 7 response
//!       | 8 stream-message
//!       | 9 raw_length:varint zstd(body)     raw_length <= MAX_FRAME, not nested
//!       | 10                                  working (server to client)
//! ```
//! Requests and responses carry the id that pairs them, so any number may be
//! in flight on one connection and answered in any order. Compressed bodies
//! (type 9) are sent only when the handshake agreed on
//! [`FEATURE_COMPRESSED_FRAMES`](crate::handshake::FEATURE_COMPRESSED_FRAMES);
//! this module frames them, the connection compresses and decompresses.
//! Working frames (type 10) are sent only when it agreed on
//! [`FEATURE_KEEPALIVE`](crate::handshake::FEATURE_KEEPALIVE).

use bytes::{Bytes, BytesMut};

use crate::limits::MAX_FRAME;
use crate::message::{Request, Response};
use crate::path::PathError;
use crate::stream::StreamMessage;
use crate::wire::{Reader, Writer};

/// Length of the frame header.
pub const HEADER_LEN: usize = 4;

const COMPRESSED: u8 = 9;
const WORKING: u8 = 10;

/// What [`split`] takes off the front of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// A frame body, for [`decode_body`].
    Plain(Bytes),
    /// A frame body compressed with zstd, `raw_len` bytes once decompressed.
    Compressed {
        /// Announced size of the body (at most [`MAX_FRAME`]).
        raw_len: u32,
        /// The zstd frame.
        payload: Bytes,
    },
}

/// Everything that crosses an established connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A request.
    Request {
        /// Pairs the response with the request.
        id: u32,
        /// The request.
        request: Request,
    },
    /// A response.
    Response {
        /// Id of the request answered.
        id: u32,
        /// The response.
        response: Response,
    },
    /// A message of the stream pipe.
    Stream(StreamMessage),
    /// The server is still answering requests of this connection: sent
    /// while one takes long and nothing else went out (see
    /// [`KEEPALIVE_EVERY`](crate::handshake::KEEPALIVE_EVERY)), so that a
    /// client's stall timeout measures silence, not work.
    Working,
}

/// Why bytes could not be decoded. Any of these means the peer is broken or
/// hostile: drop the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The length prefix exceeds [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME}")]
    TooLarge(u64),
    /// A field is malformed or out of bounds.
    #[error("malformed frame: {0}")]
    Invalid(&'static str),
    /// A path in the frame is invalid (escape attempt or malformed).
    #[error("invalid path in frame: {0}")]
    Path(#[from] PathError),
}

/// Encodes `frame` into `out`. Large payloads (file data) are not copied:
/// they are returned and must be written right after what was appended to
/// `out`; the length prefix already accounts for them.
pub fn encode(frame: &Frame, out: &mut BytesMut) -> Option<Bytes> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    let mut w = Writer(out);
    let tail = match frame {
        Frame::Request { id, request } => {
            w.u8(6);
            w.varint(*id as u64);
            request.encode(&mut w)
        }
        Frame::Response { id, response } => {
            w.u8(7);
            w.varint(*id as u64);
            response.encode(&mut w)
        }
        Frame::Stream(message) => {
            w.u8(8);
            message.encode(&mut w)
        }
        Frame::Working => {
            w.u8(WORKING);
            None
        }
    };
    let len = out.len() - start - HEADER_LEN + tail.as_ref().map_or(0, Bytes::len);
    debug_assert!(len <= MAX_FRAME, "encoded a frame of {len} bytes");
    out[start..start + HEADER_LEN].copy_from_slice(&(len as u32).to_le_bytes());
    tail
}

/// Encodes `frame` into one contiguous buffer (tests, small frames).
pub fn encode_to_vec(frame: &Frame) -> Vec<u8> {
    let mut out = BytesMut::new();
    let tail = encode(frame, &mut out);
    let mut v = out.to_vec();
    if let Some(t) = tail {
        v.extend_from_slice(&t);
    }
    v
}

/// How many bytes the frame at the start of `buf` needs in total, once its
/// header is there; refuses oversized frames before anything is allocated.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, CodecError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as u64;
    if len > MAX_FRAME as u64 {
        return Err(CodecError::TooLarge(len));
    }
    Ok(Some(HEADER_LEN + len as usize))
}

/// Appends a frame holding a compressed body (`payload`, the zstd frame of
/// a body of `raw_len` bytes).
pub fn encode_compressed(raw_len: u32, payload: &[u8], out: &mut BytesMut) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    let mut w = Writer(out);
    w.u8(COMPRESSED);
    w.varint(raw_len as u64);
    out.extend_from_slice(payload);
    let len = out.len() - start - HEADER_LEN;
    debug_assert!(len <= MAX_FRAME, "encoded a frame of {len} bytes");
    out[start..start + HEADER_LEN].copy_from_slice(&(len as u32).to_le_bytes());
}

/// Takes one frame off the front of `buf`, plain or compressed. `Ok(None)`
/// means the frame is not complete yet (read more); an error means the peer
/// is broken.
pub fn split(buf: &mut BytesMut) -> Result<Option<Body>, CodecError> {
    let avail = buf.len();
    split_within(buf, avail)
}

/// [`split`] where only `buf[..avail]` holds frames (what follows is not
/// decoded yet, such as records still sealed). Making room for the rest of
/// an incomplete frame is the caller's.
pub fn split_within(buf: &mut BytesMut, avail: usize) -> Result<Option<Body>, CodecError> {
    let Some(total) = frame_len(&buf[..avail])? else { return Ok(None) };
    if avail < total {
        return Ok(None);
    }
    body(buf.split_to(total).freeze()).map(Some)
}

/// The body of one complete frame, `frame` (header included, as
/// [`frame_len`] measured it).
pub fn body(mut frame: Bytes) -> Result<Body, CodecError> {
    if frame.len() < HEADER_LEN {
        return Err(CodecError::Invalid("frame shorter than its header"));
    }
    let body = frame.split_off(HEADER_LEN);
    if body.first() != Some(&COMPRESSED) {
        return Ok(Body::Plain(body));
    }
    let mut r = Reader::new(body);
    r.u8("frame type")?;
    let raw_len = r.u32v("compressed length")?;
    if raw_len as usize > MAX_FRAME {
        return Err(CodecError::TooLarge(raw_len as u64));
    }
    Ok(Body::Compressed { raw_len, payload: r.rest() })
}

/// Takes one plain frame off the front of `buf` (a compressed one is an
/// error here). `Ok(None)` means the frame is not complete yet.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
    match split(buf)? {
        None => Ok(None),
        Some(Body::Plain(body)) => decode_body(body).map(Some),
        Some(Body::Compressed { .. }) => Err(CodecError::Invalid("compressed frame where none was agreed")),
    }
}

/// Decodes one plain frame body (without its length prefix).
pub fn decode_body(body: Bytes) -> Result<Frame, CodecError> {
    let mut r = Reader::new(body);
    let frame = match r.u8("frame type")? {
        6 => {
            let id = r.u32v("request id")?;
            Frame::Request { id, request: Request::decode(&mut r)? }
        }
        7 => {
            let id = r.u32v("request id")?;
            Frame::Response { id, response: Response::decode(&mut r)? }
        }
        8 => Frame::Stream(StreamMessage::decode(&mut r)?),
        WORKING => Frame::Working,
        _ => return Err(CodecError::Invalid("unknown frame type")),
    };
    r.finish()?;
    Ok(frame)
}
