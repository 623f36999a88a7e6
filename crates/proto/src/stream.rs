//! The stream pipe's messages (`pareco send` / `pareco recv`): a byte
//! stream cut into numbered frames, striped over several connections, each
//! frame acknowledged once the receiver has delivered it.
//!
//! ```text
//! connector -> listener   Join { stream, role, window }    first message on every connection
//! listener -> connector   Joined { stream, window }        or Abort { reason }
//! sender -> receiver      Data { seq, raw_len, encoding, payload }
//! receiver -> sender      Ack { seq }                   after the frame is written out
//! sender -> receiver      End { frames, bytes, digest } once the input has ended
//! receiver -> sender      Done                          all delivered and verified
//! either                  Abort { reason }              the stream cannot go on
//! ```
//! The sender names the stream with a random id, so a receiver recognises a
//! sender that reconnects (resume) and refuses one that restarted (the bytes
//! it already wrote cannot be taken back).

use bytes::Bytes;

use crate::codec::CodecError;
use crate::limits::{MAX_CHUNK, MAX_MESSAGE};
use crate::stat::Digest;
use crate::wire::{Reader, Writer};

/// Which end of a stream a process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamRole {
    /// Reads its input and sends it.
    Sender,
    /// Receives and writes its output.
    Receiver,
}

/// How a frame's payload is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// The bytes as read.
    Raw,
    /// A zstd frame of the bytes.
    Zstd,
}

/// A stream id: random, chosen by the sender.
pub type StreamId = [u8; 16];

/// One message of the stream protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamMessage {
    /// First message of the side that connected: which stream it belongs
    /// to (a receiver that has not seen its sender yet sends zeros) and what
    /// it is.
    Join {
        /// The stream.
        stream: StreamId,
        /// The connecting side's role.
        role: StreamRole,
        /// A sender's window (bytes of frames it may have in flight), so that
        /// the receiver can hold that many out of turn; 0 from a receiver.
        window: u64,
    },
    /// The listening side accepts the connection into stream `stream`.
    Joined {
        /// The stream.
        stream: StreamId,
        /// The listening side's window, as in `Join`.
        window: u64,
    },
    /// One frame of the stream.
    Data {
        /// Position of the frame in the stream, from 0.
        seq: u64,
        /// Length of the frame once decoded.
        raw_len: u32,
        /// How `payload` is encoded.
        encoding: Encoding,
        /// The frame's bytes, encoded.
        payload: Bytes,
    },
    /// Frame `seq` has been delivered (written out in order).
    Ack {
        /// The frame.
        seq: u64,
    },
    /// The input has ended after `frames` frames and `bytes` bytes with
    /// BLAKE3 `digest`.
    End {
        /// Number of frames.
        frames: u64,
        /// Total length of the stream.
        bytes: u64,
        /// BLAKE3 of the whole stream.
        digest: Digest,
    },
    /// Everything was delivered and the digest matched.
    Done,
    /// The stream cannot go on.
    Abort {
        /// Why, for humans.
        reason: String,
    },
}

impl StreamMessage {
    pub(crate) fn encode(&self, w: &mut Writer<'_>) -> Option<Bytes> {
        match self {
            StreamMessage::Join { stream, role, window } => {
                w.u8(1);
                w.raw16(stream);
                w.u8(match role {
                    StreamRole::Sender => 1,
                    StreamRole::Receiver => 2,
                });
                w.varint(*window);
            }
            StreamMessage::Joined { stream, window } => {
                w.u8(2);
                w.raw16(stream);
                w.varint(*window);
            }
            StreamMessage::Data { seq, raw_len, encoding, payload } => {
                w.u8(3);
                w.varint(*seq);
                w.varint(*raw_len as u64);
                w.u8(match encoding {
                    Encoding::Raw => 0,
                    Encoding::Zstd => 1,
                });
                return Some(payload.clone());
            }
            StreamMessage::Ack { seq } => {
                w.u8(4);
                w.varint(*seq);
            }
            StreamMessage::End { frames, bytes, digest } => {
                w.u8(5);
                w.varint(*frames);
                w.varint(*bytes);
                w.digest(digest);
            }
            StreamMessage::Done => w.u8(6),
            StreamMessage::Abort { reason } => {
                w.u8(7);
                w.bytes(&reason.as_bytes()[..reason.len().min(MAX_MESSAGE)]);
            }
        }
        None
    }

    pub(crate) fn decode(r: &mut Reader) -> Result<StreamMessage, CodecError> {
        Ok(match r.u8("stream message type")? {
            1 => StreamMessage::Join {
                stream: r.raw16("stream id")?,
                role: match r.u8("role")? {
                    1 => StreamRole::Sender,
                    2 => StreamRole::Receiver,
                    _ => return Err(CodecError::Invalid("unknown stream role")),
                },
                window: r.varint("window")?,
            },
            2 => StreamMessage::Joined { stream: r.raw16("stream id")?, window: r.varint("window")? },
            3 => {
                let seq = r.varint("sequence number")?;
                let raw_len = r.u32v("frame length")?;
                let encoding = match r.u8("encoding")? {
                    0 => Encoding::Raw,
                    1 => Encoding::Zstd,
                    _ => return Err(CodecError::Invalid("unknown encoding")),
                };
                let payload = r.rest();
                let raw_ok = encoding != Encoding::Raw || payload.len() == raw_len as usize;
                if raw_len > MAX_CHUNK || payload.len() > MAX_CHUNK as usize || !raw_ok {
                    return Err(CodecError::Invalid("stream frame out of bounds"));
                }
                StreamMessage::Data { seq, raw_len, encoding, payload }
            }
            4 => StreamMessage::Ack { seq: r.varint("sequence number")? },
            5 => StreamMessage::End {
                frames: r.varint("frame count")?,
                bytes: r.varint("stream length")?,
                digest: r.digest("digest")?,
            },
            6 => StreamMessage::Done,
            7 => StreamMessage::Abort { reason: r.message()? },
            _ => return Err(CodecError::Invalid("unknown stream message type")),
        })
    }
}
