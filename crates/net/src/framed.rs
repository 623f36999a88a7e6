//! Frames over a connection, through the channel's record layer when it is
//! encrypted: a frame may span records and a record may hold many frames.
//! When the handshake agreed on compressed frames, bodies of at least
//! [`COMPRESS_MIN`] bytes go out zstd-compressed if that pays (a sample of
//! incompressible data, such as random or already compressed file content,
//! rules it out cheaply); compression happens before encryption.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use pareco_compress::{Compression, DEFAULT_LEVEL, Encoder};
use pareco_proto::codec::{self, Body, Frame, HEADER_LEN};
use pareco_proto::stream::Encoding;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::channel::{MAX_RECORD, RecordCipher, TAG};
use crate::{NetError, WireCounters};

/// Payloads at least this large are written (or sealed) straight from their
/// buffer rather than copied next to their header first.
const ZERO_COPY_MIN: usize = 64 << 10;

/// Buffered bytes are written out beyond this size.
const FLUSH_AT: usize = 256 << 10;

/// Reads into at least this much room…
const READ_MIN: usize = 64 << 10;

/// …made this large when less is left: few reads, and few reallocations of
/// the buffer, the only times received bytes are copied.
const READ_RESERVE: usize = 512 << 10;

/// A frame at least this large, once begun, gets room for the rest of it
/// and no more (see [`FrameReader::make_room`]).
const BIG_FRAME: usize = 64 << 10;

/// Plaintext per record.
const RECORD_PLAIN: usize = MAX_RECORD - TAG;

/// Smaller frame bodies are never compressed.
pub const COMPRESS_MIN: usize = 1 << 10;

/// Reads frames. Cancel-safe: partial frames and records stay buffered.
pub struct FrameReader<R> {
    inner: R,
    /// What was received: plaintext not yet decoded into frames
    /// (`buf[..plain]`), then records not yet opened (encrypted channels).
    buf: BytesMut,
    plain: usize,
    opener: Option<RecordCipher>,
    counters: Arc<WireCounters>,
    /// Whether the peer may send compressed frames.
    inflate: bool,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps a read half; with an `opener`, the stream is a sequence of
    /// encrypted records. Received bytes are added to `counters`.
    pub(crate) fn new(inner: R, counters: Arc<WireCounters>, opener: Option<RecordCipher>) -> Self {
        let buf = BytesMut::with_capacity(64 << 10);
        FrameReader { inner, buf, plain: 0, opener, counters, inflate: false }
    }

    /// Accepts compressed frames from now on (the handshake agreed on them).
    pub(crate) fn inflate(&mut self) {
        self.inflate = true;
    }

    /// The next frame; `None` when the peer closed cleanly between frames.
    pub async fn next(&mut self) -> Result<Option<Frame>, NetError> {
        loop {
            let before = self.buf.len();
            if let Some(body) = codec::split_within(&mut self.buf, self.plain)? {
                self.plain -= before - self.buf.len();
                let body = match body {
                    Body::Plain(body) => body,
                    Body::Compressed { raw_len, payload } if self.inflate => {
                        pareco_compress::decode(Encoding::Zstd, payload, raw_len)
                            .map_err(|_| NetError::Protocol("a compressed frame does not decode to its size"))?
                    }
                    Body::Compressed { .. } => {
                        return Err(NetError::Protocol("a compressed frame where none was agreed"));
                    }
                };
                return Ok(Some(codec::decode_body(body)?));
            }
            if self.open_records()? {
                continue;
            }
            self.make_room()?;
            let n = self.inner.read_buf(&mut self.buf).await?;
            if self.opener.is_none() {
                self.plain += n;
            }
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed mid-frame").into())
                };
            }
            self.counters.received.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// Makes room to read into. Frames go out as slices of the buffer, so
    /// it grows by moving to a new one, copying what it holds of the frame
    /// not complete yet. A large frame begun gets room for the rest of it
    /// only, made once: it then ends at the end of its buffer, and the next
    /// frame starts in a new one with nothing to copy. The first read into an
    /// empty buffer is small, so that little of a large frame is copied
    /// when its length is known.
    fn make_room(&mut self) -> Result<(), NetError> {
        let room = self.buf.capacity() - self.buf.len();
        let big = codec::frame_len(&self.buf[..self.plain])?.filter(|&total| total >= BIG_FRAME);
        let Some(total) = big else {
            let want = if self.buf.is_empty() { READ_MIN } else { READ_RESERVE };
            if room < READ_MIN {
                self.buf.reserve(want);
            }
            return Ok(());
        };
        // Plaintext still to come, then as it arrives: in whole records if
        // encrypted (the writer seals a large frame's data in records of its
        // own), less the sealed bytes received already.
        let rest = total - self.plain;
        let wire = match self.opener {
            None => rest,
            Some(_) => rest + (rest.div_ceil(RECORD_PLAIN) + 1) * (2 + TAG),
        };
        let need = wire.saturating_sub(self.buf.len() - self.plain).max(MAX_RECORD.min(rest));
        if room < need {
            self.buf.reserve(need);
        }
        Ok(())
    }

    /// Opens every complete record received; whether any was. Records are
    /// opened where they arrived, each plaintext moved down by the cipher
    /// itself to follow the plaintext before it, so that a frame spanning
    /// records is contiguous and its data is never copied in user space;
    /// only the part of a record not received yet is moved down after them.
    fn open_records(&mut self) -> Result<bool, NetError> {
        let Some(opener) = &mut self.opener else { return Ok(false) };
        let (start, mut at) = (self.plain, self.plain);
        while self.buf.len() - at >= 2 {
            let len = u16::from_le_bytes([self.buf[at], self.buf[at + 1]]) as usize;
            let end = at + 2 + len;
            if self.buf.len() < end {
                break;
            }
            self.plain += opener.open_within(&mut self.buf[..end], self.plain, at + 2)?;
            at = end;
        }
        if at == start {
            return Ok(false);
        }
        let rest = self.buf.len() - at;
        self.buf.copy_within(at.., self.plain);
        self.buf.truncate(self.plain + rest);
        Ok(true)
    }
}

/// Writes frames, coalescing small ones into few system calls (and, when
/// encrypted, few records).
pub struct FrameWriter<W> {
    inner: W,
    /// Plaintext not yet written (or sealed).
    buf: BytesMut,
    sealer: Option<RecordCipher>,
    /// Records not yet written: `sealed[..used]`.
    sealed: Vec<u8>,
    used: usize,
    counters: Arc<WireCounters>,
    /// How frames are compressed, once the handshake agreed on it.
    compression: Option<Compression>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Wraps a write half; with a `sealer`, everything goes out as encrypted
    /// records. Sent bytes are added to `counters`.
    pub(crate) fn new(inner: W, counters: Arc<WireCounters>, sealer: Option<RecordCipher>) -> Self {
        let buf = BytesMut::with_capacity(FLUSH_AT);
        FrameWriter { inner, buf, sealer, sealed: Vec::new(), used: 0, counters, compression: None }
    }

    /// Compresses frames under `policy` from now on (the handshake agreed on
    /// compressed frames).
    pub(crate) fn compress(&mut self, policy: Compression) {
        if policy != Compression::None {
            self.compression = Some(policy);
        }
    }

    /// Queues a frame; it may stay buffered until [`FrameWriter::flush`].
    pub async fn write(&mut self, frame: &Frame) -> Result<(), NetError> {
        let start = self.buf.len();
        let mut tail = codec::encode(frame, &mut self.buf);
        if let Some(policy) = self.compression {
            tail = squeeze(policy, &mut self.buf, start, tail);
        }
        if let Some(tail) = tail {
            if tail.len() < ZERO_COPY_MIN {
                self.buf.extend_from_slice(&tail);
            } else if let Some(sealer) = &mut self.sealer {
                seal_all(sealer, &self.buf, &mut self.sealed, &mut self.used);
                self.buf.clear();
                seal_all(sealer, &tail, &mut self.sealed, &mut self.used);
            } else {
                self.write_out().await?;
                self.inner.write_all(&tail).await?;
                self.counters.sent.fetch_add(tail.len() as u64, Ordering::Relaxed);
            }
        }
        if self.buf.len() + self.used >= FLUSH_AT {
            self.write_out().await?;
        }
        Ok(())
    }

    /// Writes out everything queued.
    pub async fn flush(&mut self) -> Result<(), NetError> {
        self.write_out().await?;
        self.inner.flush().await?;
        Ok(())
    }

    /// The underlying stream, for writing raw bytes (tests of hostile peers).
    pub fn into_inner(self) -> W {
        self.inner
    }

    /// Flushes and closes the write direction (the peer sees EOF).
    pub async fn shutdown(&mut self) -> Result<(), NetError> {
        self.flush().await?;
        self.inner.shutdown().await?;
        Ok(())
    }

    async fn write_out(&mut self) -> Result<(), NetError> {
        if let Some(sealer) = &mut self.sealer {
            seal_all(sealer, &self.buf, &mut self.sealed, &mut self.used);
            self.buf.clear();
        }
        let pending: &[u8] = if self.sealer.is_some() { &self.sealed[..self.used] } else { &self.buf };
        if !pending.is_empty() {
            self.inner.write_all(pending).await?;
            self.counters.sent.fetch_add(pending.len() as u64, Ordering::Relaxed);
        }
        self.buf.clear();
        self.used = 0;
        Ok(())
    }
}

thread_local! {
    /// One encoder (zstd contexts, a few MiB once used) per thread, not per
    /// connection: a frame is compressed between two awaits, so a thread
    /// never needs two at once, and a server with a thousand connections
    /// holds as many encoders as it has worker threads.
    static ENCODER: RefCell<Encoder> = RefCell::new(Encoder::default());
}

/// Replaces the frame just encoded at `buf[start..]` (and its `tail`) by
/// its compressed form when that pays under `policy`; returns the tail still
/// to be written after `buf`.
fn squeeze(policy: Compression, buf: &mut BytesMut, start: usize, tail: Option<Bytes>) -> Option<Bytes> {
    let head = &buf[start + HEADER_LEN..];
    let len = head.len() + tail.as_ref().map_or(0, Bytes::len);
    if len < COMPRESS_MIN {
        return tail;
    }
    let level = match policy {
        Compression::Zstd(level) => level,
        _ => DEFAULT_LEVEL,
    };
    // Under auto, a sample of the bulk of the frame decides.
    let bulk = match &tail {
        Some(t) if t.len() >= head.len() => &t[..],
        _ => head,
    };
    let auto = policy == Compression::Auto;
    let compressed = ENCODER.with_borrow_mut(|encoder| {
        if auto && !encoder.sample_pays(bulk) {
            return None;
        }
        let mut raw = Vec::with_capacity(len);
        raw.extend_from_slice(head);
        raw.extend_from_slice(tail.as_deref().unwrap_or_default());
        match encoder.encode(Bytes::from(raw), Compression::Zstd(level), level) {
            (Encoding::Zstd, payload) => Some(payload),
            (Encoding::Raw, _) => None,
        }
    });
    match compressed {
        Some(payload) => {
            buf.truncate(start);
            codec::encode_compressed(len as u32, &payload, buf);
            None
        }
        None => tail,
    }
}

fn seal_all(sealer: &mut RecordCipher, plain: &[u8], out: &mut Vec<u8>, used: &mut usize) {
    for record in plain.chunks(RECORD_PLAIN) {
        sealer.seal(record, out, used);
    }
}

/// A queue of frames to write: a bounded or an unbounded channel.
pub trait FrameQueue {
    /// The next frame, waiting for it; `None` once every sender is gone.
    fn recv(&mut self) -> impl std::future::Future<Output = Option<Frame>> + Send;
    /// The next frame if one is already there.
    fn try_recv(&mut self) -> Result<Frame, mpsc::error::TryRecvError>;
}

impl FrameQueue for mpsc::Receiver<Frame> {
    fn recv(&mut self) -> impl std::future::Future<Output = Option<Frame>> + Send {
        mpsc::Receiver::recv(self)
    }

    fn try_recv(&mut self) -> Result<Frame, mpsc::error::TryRecvError> {
        mpsc::Receiver::try_recv(self)
    }
}

impl FrameQueue for mpsc::UnboundedReceiver<Frame> {
    fn recv(&mut self) -> impl std::future::Future<Output = Option<Frame>> + Send {
        mpsc::UnboundedReceiver::recv(self)
    }

    fn try_recv(&mut self) -> Result<Frame, mpsc::error::TryRecvError> {
        mpsc::UnboundedReceiver::try_recv(self)
    }
}

/// Writes frames from `rx` as they come, flushing whenever the queue runs
/// dry, until every sender is gone; then closes the write direction.
pub async fn pump<W: AsyncWrite + Unpin>(
    writer: &mut FrameWriter<W>,
    rx: &mut impl FrameQueue,
) -> Result<(), NetError> {
    while let Some(frame) = rx.recv().await {
        writer.write(&frame).await?;
        while let Ok(frame) = rx.try_recv() {
            writer.write(&frame).await?;
        }
        writer.flush().await?;
    }
    writer.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use pareco_proto::{Checksum, RelPath, Request};

    fn frames() -> Vec<Frame> {
        // Bodies from a few bytes to several records, so frames span records
        // and records hold several frames.
        [3usize, 70_000, 10, 1 << 20, 65_517, 200_000, 1]
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let data = Bytes::from((0..n).map(|j| (i * 31 + j * 7) as u8).collect::<Vec<u8>>());
                let (path, checksum) = (RelPath::new(b"f").unwrap(), Some(Checksum::of(&data)));
                Frame::Request { id: i as u32, request: Request::WriteData { path, offset: 0, checksum, data } }
            })
            .collect()
    }

    /// What a reader makes of what a writer wrote, read in bits of `chunk`
    /// bytes (so records and frames arrive in pieces).
    async fn round_trip(encrypted: bool, chunk: usize) -> Vec<Frame> {
        let (a, b) = tokio::io::duplex(chunk);
        let key = [9u8; 32];
        let cipher = || encrypted.then(|| RecordCipher::new(&key));
        let counters = Arc::new(WireCounters::default());
        let mut writer = FrameWriter::new(a, counters.clone(), cipher());
        let mut reader = FrameReader::new(b, counters, cipher());
        let sent = frames();
        let write = async {
            for f in &sent {
                writer.write(f).await.unwrap();
            }
            writer.shutdown().await.unwrap();
        };
        let read = async {
            let mut got = Vec::new();
            while let Some(f) = reader.next().await.unwrap() {
                got.push(f);
            }
            got
        };
        tokio::join!(write, read).1
    }

    #[tokio::test]
    async fn frames_arrive_whole_and_in_order_however_the_bytes_are_cut() {
        for encrypted in [false, true] {
            for chunk in [7, 4096, 65_537, 1 << 20] {
                assert!(round_trip(encrypted, chunk).await == frames(), "encrypted {encrypted}, reads of {chunk}");
            }
        }
    }
}
