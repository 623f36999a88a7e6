//! Frames over a connection, through the channel's record layer when it is
//! encrypted: a frame may span records and a record may hold many frames.
//! When the handshake agreed on compressed frames, bodies of at least
//! [`COMPRESS_MIN`] bytes go out zstd-compressed if that pays (a sample of
//! incompressible data, such as random or already compressed file content,
//! rules it out cheaply); compression happens before encryption. Under
//! `auto`, not at all while sending frames as they are carries more
//! ([`pareco_compress::gate`]: a link faster than the cores compress).

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use pareco_compress::gate::{self, Gate};
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

/// A frame at least this large that does not fit the room left is received
/// into a buffer of its own (see [`BigFrame`]).
const BIG_FRAME: usize = 64 << 10;

/// Buffers for large frames are taken from the pool in multiples of this,
/// so that frames of nearly the same size (the same data, other paths) use
/// the same buffers again.
const BIG_GRAIN: usize = 64 << 10;

/// Plaintext per record.
const RECORD_PLAIN: usize = MAX_RECORD - TAG;

/// A large payload is sealed this many bytes at a time (whole records: they
/// come out as if sealed at once).
const SEAL_RUN: usize = 4 * RECORD_PLAIN;

/// Smaller frame bodies are never compressed.
pub const COMPRESS_MIN: usize = 1 << 10;

/// Reads frames. Cancel-safe: partial frames and records stay buffered.
pub struct FrameReader<R> {
    inner: R,
    /// What was received: plaintext not yet decoded into frames
    /// (`buf[..plain]`), then records not yet opened (encrypted channels).
    /// Empty while a large frame is received into `big`.
    buf: BytesMut,
    plain: usize,
    big: Option<BigFrame>,
    opener: Option<RecordCipher>,
    counters: Arc<WireCounters>,
    /// Whether the peer may send compressed frames.
    inflate: bool,
}

/// A large frame received into a buffer of its own, from the pool of data
/// buffers ([`pareco_proto::recycle`]) and given back to it when the last
/// part of the frame is dropped. Frames are handed out as slices of the
/// buffer they arrived in, and a write's data lives until it is on disk: in
/// a buffer shared with the frames around it, memory could only be given
/// back to the allocator, which hands it to the kernel, and every large
/// frame arrived in fresh pages (a fault and a zeroed page per 4 KiB).
struct BigFrame {
    /// The frame's plaintext so far (`buf[..plain]`), then records not yet
    /// opened; after the frame's end, what follows it.
    buf: Vec<u8>,
    plain: usize,
    /// The frame's length, header included.
    total: usize,
}

impl BigFrame {
    /// Moves the start of a frame of `total` bytes out of `buf` (whose first
    /// `plain` bytes are plaintext) into a buffer with room for the rest.
    fn begin(buf: &mut BytesMut, plain: usize, total: usize, encrypted: bool) -> BigFrame {
        let unopened = buf.len() - plain;
        // Room for the frame and, encrypted, its records' lengths and tags,
        // with room for one whole record more: the last one may hold the
        // start of what follows.
        let room = match encrypted {
            false => total,
            true => plain + unopened + wire_len(total - plain) + 2 + MAX_RECORD,
        };
        let mut big = pareco_proto::recycle::take(room.next_multiple_of(BIG_GRAIN));
        big.extend_from_slice(buf);
        buf.clear();
        BigFrame { buf: big, plain, total }
    }

    /// How much to read next: the rest of the frame (encrypted: the rest of
    /// the record begun, then the records the rest of the frame's plaintext
    /// makes if the records are full, as this writer seals large frames), so
    /// that little of what follows is read into this buffer.
    fn want(&self, encrypted: bool) -> usize {
        let rest = self.total.saturating_sub(self.plain);
        if !encrypted {
            return rest;
        }
        let held = &self.buf[self.plain..];
        let want = match held {
            [a, b, ..] => {
                let record = u16::from_le_bytes([*a, *b]) as usize;
                (2 + record).saturating_sub(held.len()) + wire_len(rest.saturating_sub(record.saturating_sub(TAG)))
            }
            _ => wire_len(rest).saturating_sub(held.len()),
        };
        // Never nothing: a read of no bytes would look like the end.
        want.max(1)
    }
}

/// Bytes on the wire for `plain` bytes of plaintext in full records.
fn wire_len(plain: usize) -> usize {
    plain + plain.div_ceil(RECORD_PLAIN) * (2 + TAG)
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps a read half; with an `opener`, the stream is a sequence of
    /// encrypted records. Received bytes are added to `counters`.
    pub(crate) fn new(inner: R, counters: Arc<WireCounters>, opener: Option<RecordCipher>) -> Self {
        let buf = BytesMut::with_capacity(64 << 10);
        FrameReader { inner, buf, plain: 0, big: None, opener, counters, inflate: false }
    }

    /// Accepts compressed frames from now on (the handshake agreed on them).
    pub(crate) fn inflate(&mut self) {
        self.inflate = true;
    }

    /// The next frame; `None` when the peer closed cleanly between frames.
    pub async fn next(&mut self) -> Result<Option<Frame>, NetError> {
        loop {
            if let Some(body) = self.complete()? {
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
            let encrypted = self.opener.is_some();
            let n = match &mut self.big {
                Some(big) => {
                    let want = big.want(encrypted).min(big.buf.capacity() - big.buf.len());
                    let n = self.inner.read_buf(&mut (&mut big.buf).limit(want)).await?;
                    if !encrypted {
                        big.plain += n;
                    }
                    n
                }
                None => {
                    let n = self.inner.read_buf(&mut self.buf).await?;
                    if !encrypted {
                        self.plain += n;
                    }
                    n
                }
            };
            if n == 0 {
                return if self.buf.is_empty() && self.big.is_none() {
                    Ok(None)
                } else {
                    Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed mid-frame").into())
                };
            }
            self.counters.received.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// The body of the next frame if it is all here.
    fn complete(&mut self) -> Result<Option<Body>, NetError> {
        match &self.big {
            None => {
                let before = self.buf.len();
                let body = codec::split_within(&mut self.buf, self.plain)?;
                self.plain -= before - self.buf.len();
                return Ok(body);
            }
            Some(big) if big.plain < big.total => return Ok(None),
            Some(_) => {}
        }
        // What follows the frame goes back to the main buffer (empty while
        // the frame was received).
        let mut big = self.big.take().expect("a large frame is complete");
        self.buf.extend_from_slice(&big.buf[big.total..]);
        self.plain = big.plain - big.total;
        big.buf.truncate(big.total);
        Ok(Some(codec::body(pareco_proto::recycle::bytes(big.buf))?))
    }

    /// Makes room to read into. Frames go out as slices of the buffer, so
    /// it grows by moving to a new one, copying what it holds of the frame
    /// not complete yet. A large frame begun that does not fit the room
    /// left moves to a buffer of its own ([`BigFrame`]); the first read into
    /// an empty buffer is small, so that little of a large frame is copied
    /// when its length is known.
    fn make_room(&mut self) -> Result<(), NetError> {
        let encrypted = self.opener.is_some();
        if let Some(big) = &mut self.big {
            // Only records far smaller than this writer's can fill it.
            if big.buf.len() == big.buf.capacity() {
                big.buf.reserve(2 + MAX_RECORD);
            }
            return Ok(());
        }
        let room = self.buf.capacity() - self.buf.len();
        if let Some(total) = codec::frame_len(&self.buf[..self.plain])?.filter(|&total| total >= BIG_FRAME) {
            let rest = total - self.plain;
            let wire = if encrypted { wire_len(rest) + 2 + TAG } else { rest };
            if room < wire.saturating_sub(self.buf.len() - self.plain) {
                self.big = Some(BigFrame::begin(&mut self.buf, self.plain, total, encrypted));
                self.plain = 0;
            }
            return Ok(());
        }
        let want = if self.buf.is_empty() { READ_MIN } else { READ_RESERVE };
        if room < READ_MIN {
            self.buf.reserve(want);
        }
        Ok(())
    }

    /// Opens every complete record received, in the large frame's buffer
    /// if one is being received; whether any was.
    fn open_records(&mut self) -> Result<bool, NetError> {
        let Some(opener) = &mut self.opener else { return Ok(false) };
        match &mut self.big {
            Some(big) => {
                let Some(len) = open_within(opener, &mut big.buf, &mut big.plain)? else { return Ok(false) };
                big.buf.truncate(len);
            }
            None => {
                let Some(len) = open_within(opener, &mut self.buf, &mut self.plain)? else { return Ok(false) };
                self.buf.truncate(len);
            }
        }
        Ok(true)
    }
}

/// Opens every complete record in `buf[*plain..]`, each plaintext moved
/// down by the cipher itself to follow the plaintext before it, so that a
/// frame spanning records is contiguous and its data is never copied in
/// user space; only the part of a record not received yet is moved down
/// after them. The new length of `buf`, if any record was opened.
fn open_within(opener: &mut RecordCipher, buf: &mut [u8], plain: &mut usize) -> Result<Option<usize>, NetError> {
    let (start, mut at) = (*plain, *plain);
    while buf.len() - at >= 2 {
        let len = u16::from_le_bytes([buf[at], buf[at + 1]]) as usize;
        let end = at + 2 + len;
        if buf.len() < end {
            break;
        }
        *plain += opener.open_within(&mut buf[..end], *plain, at + 2)?;
        at = end;
    }
    if at == start {
        return Ok(None);
    }
    let rest = buf.len() - at;
    buf.copy_within(at.., *plain);
    Ok(Some(*plain + rest))
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
    /// The last window of the [`GAUGE`] this writer counted itself in
    /// (plus one: 0 is none).
    seen: u64,
}

/// The process's [`Gate`] and what it is told: every `auto` writer adds
/// the time it spent compressing and the bytes it wrote (and counts itself
/// once per window), and the first to write after a window's end hands the
/// window to the gate. One for the process, as the cores are what
/// compression competes for.
struct Gauge {
    open: AtomicBool,
    busy_ns: AtomicU64,
    bytes: AtomicU64,
    writers: AtomicU64,
    /// Windows ended so far.
    seq: AtomicU64,
    /// When the window ends, in nanoseconds from `start` (looked at by
    /// every frame: the lock is taken only then).
    due_ns: AtomicU64,
    start: Instant,
    /// The gate, and when the window began (from `start`).
    window: Mutex<(Gate, Duration)>,
}

static GAUGE: LazyLock<Gauge> = LazyLock::new(|| {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    Gauge {
        open: AtomicBool::new(true),
        busy_ns: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        writers: AtomicU64::new(0),
        seq: AtomicU64::new(0),
        due_ns: AtomicU64::new(0),
        start: Instant::now(),
        window: Mutex::new((Gate::new(cores), Duration::ZERO)),
    }
});

impl Gauge {
    /// Whether to compress, after counting `bytes` written by the writer
    /// that last counted itself in window `seen`, and perhaps ending the
    /// window.
    fn open(&self, bytes: usize, seen: &mut u64) -> bool {
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        let seq = self.seq.load(Ordering::Relaxed);
        if *seen != seq + 1 {
            *seen = seq + 1;
            self.writers.fetch_add(1, Ordering::Relaxed);
        }
        let now = self.start.elapsed();
        if now.as_nanos() as u64 >= self.due_ns.load(Ordering::Relaxed)
            && let Ok(mut window) = self.window.try_lock()
        {
            let (gate, began) = &mut *window;
            let wall = now.saturating_sub(*began);
            if wall >= gate.window() {
                let busy = Duration::from_nanos(self.busy_ns.swap(0, Ordering::Relaxed));
                let bytes = self.bytes.swap(0, Ordering::Relaxed);
                let writers = self.writers.swap(0, Ordering::Relaxed);
                self.open.store(gate.observe(gate::Window { wall, busy, bytes, writers }), Ordering::Relaxed);
                self.seq.fetch_add(1, Ordering::Relaxed);
                *began = now;
            }
            self.due_ns.store((*began + gate.window()).as_nanos() as u64, Ordering::Relaxed);
        }
        self.open.load(Ordering::Relaxed)
    }

    fn busy(&self, spent: Duration) {
        self.busy_ns.fetch_add(spent.as_nanos() as u64, Ordering::Relaxed);
    }
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Wraps a write half; with a `sealer`, everything goes out as encrypted
    /// records. Sent bytes are added to `counters`.
    pub(crate) fn new(inner: W, counters: Arc<WireCounters>, sealer: Option<RecordCipher>) -> Self {
        let buf = BytesMut::with_capacity(FLUSH_AT);
        FrameWriter { inner, buf, sealer, sealed: Vec::new(), used: 0, counters, compression: None, seen: 0 }
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
        match self.compression {
            Some(Compression::Auto) => {
                let len = self.buf.len() - start + tail.as_ref().map_or(0, Bytes::len);
                if GAUGE.open(len, &mut self.seen) {
                    let started = Instant::now();
                    tail = squeeze(Compression::Auto, &mut self.buf, start, tail);
                    GAUGE.busy(started.elapsed());
                }
            }
            Some(policy) => tail = squeeze(policy, &mut self.buf, start, tail),
            None => {}
        }
        if let Some(tail) = tail {
            if tail.len() < ZERO_COPY_MIN {
                self.buf.extend_from_slice(&tail);
            } else if self.sealer.is_some() {
                // A few records at a time, each run written before the next
                // is sealed: the seal buffer stays in the cache for the copy
                // in, the cipher and the socket's copy out (sealed whole, a
                // large frame went through memory three times).
                for run in tail.chunks(SEAL_RUN) {
                    let sealer = self.sealer.as_mut().expect("sealed connection");
                    seal_all(sealer, &self.buf, &mut self.sealed, &mut self.used);
                    self.buf.clear();
                    seal_all(sealer, run, &mut self.sealed, &mut self.used);
                    if self.used >= FLUSH_AT {
                        self.write_out().await?;
                    }
                }
            } else {
                self.write_out().await?;
                self.counters.sent.fetch_add(tail.len() as u64, Ordering::Relaxed);
                self.inner.write_all(&tail).await?;
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
            // Counted before it is written: the peer's answer may come, and
            // the caller's statistics be taken, before this task runs again.
            self.counters.sent.fetch_add(pending.len() as u64, Ordering::Relaxed);
            self.inner.write_all(pending).await?;
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
        through(&mut writer, &mut reader, &frames()).await
    }

    /// What `reader` makes of `sent`, written through `writer`.
    async fn through<W: AsyncWrite + Unpin, R: AsyncRead + Unpin>(
        writer: &mut FrameWriter<W>,
        reader: &mut FrameReader<R>,
        sent: &[Frame],
    ) -> Vec<Frame> {
        let write = async {
            for f in sent {
                writer.write(f).await.unwrap();
            }
            writer.shutdown().await.unwrap();
        };
        tokio::join!(write, collect(reader)).1
    }

    /// Every frame until the peer closes.
    async fn collect<R: AsyncRead + Unpin>(reader: &mut FrameReader<R>) -> Vec<Frame> {
        let mut got = Vec::new();
        while let Some(f) = reader.next().await.unwrap() {
            got.push(f);
        }
        got
    }

    /// `frames` encoded, as they are before sealing.
    fn encoded(frames: &[Frame]) -> BytesMut {
        let mut plain = BytesMut::new();
        for f in frames {
            let tail = codec::encode(f, &mut plain);
            plain.extend_from_slice(tail.as_deref().unwrap_or_default());
        }
        plain
    }

    /// `plain` sealed in records of the sizes given, in turn.
    fn sealed(key: &[u8; 32], plain: &[u8], records: &[usize]) -> Vec<u8> {
        let (mut sealer, mut wire, mut used, mut at) = (RecordCipher::new(key), Vec::new(), 0, 0);
        for &record in records.iter().cycle() {
            if at == plain.len() {
                break;
            }
            let end = (at + record).min(plain.len());
            sealer.seal(&plain[at..end], &mut wire, &mut used);
            at = end;
        }
        wire.truncate(used);
        wire
    }

    /// What a reader makes of `wire`, written in bits of `chunk` bytes.
    async fn read_all(wire: Vec<u8>, chunk: usize, opener: Option<RecordCipher>) -> Vec<Frame> {
        let (mut a, b) = tokio::io::duplex(chunk);
        let mut reader = FrameReader::new(b, Arc::new(WireCounters::default()), opener);
        let write = async move {
            for piece in wire.chunks(chunk) {
                a.write_all(piece).await.unwrap();
            }
        };
        tokio::join!(write, collect(&mut reader)).1
    }

    #[tokio::test]
    async fn frames_arrive_whole_in_records_of_any_size() {
        // Another writer may seal records of any size, a large frame's end
        // in the middle of one and the next frames after it.
        let (key, plain) = ([5u8; 32], encoded(&frames()));
        for record in [1, 1000, 30_000, RECORD_PLAIN] {
            let wire = sealed(&key, &plain, &[record]);
            for chunk in [4096, 70_001] {
                let got = read_all(wire.clone(), chunk, Some(RecordCipher::new(&key))).await;
                assert!(got == frames(), "records of {record}, reads of {chunk}");
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

        /// Frames of any sizes, small and large, in records of any sizes,
        /// read in pieces of any size, arrive whole and in order.
        #[test]
        fn frames_survive_any_records_and_reads(
            sizes in proptest::collection::vec(0usize..200_000, 1..8),
            records in proptest::collection::vec(1usize..=RECORD_PLAIN, 1..6),
            chunk in 1usize..100_000,
        ) {
            let sent: Vec<Frame> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| {
                    let data = Bytes::from((0..n).map(|j| (i * 13 + j * 5) as u8).collect::<Vec<u8>>());
                    let request = Request::WriteData { path: RelPath::new(b"p").unwrap(), offset: i as u64, checksum: None, data };
                    Frame::Request { id: i as u32, request }
                })
                .collect();
            let plain = encoded(&sent);
            let wire = sealed(&[8u8; 32], &plain, &records);
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let got = runtime.block_on(read_all(wire, chunk, Some(RecordCipher::new(&[8u8; 32]))));
            proptest::prop_assert!(got == sent);
            let plain_got = runtime.block_on(read_all(plain.to_vec(), chunk, None));
            proptest::prop_assert!(plain_got == sent);
        }
    }

    #[tokio::test]
    async fn large_compressed_frames_arrive_whole() {
        // A compressed frame is sealed with the frames around it, so its end
        // is not a record's.
        // Sixteen letters in a random order: about half of it after zstd,
        // still a large frame.
        let mut state = 1u32;
        let text: Vec<u8> = (0..3 << 20)
            .map(|_| {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                b"abcdefghijklmnop"[(state >> 28) as usize]
            })
            .collect();
        let (path, data) = (RelPath::new(b"t").unwrap(), Bytes::from(text));
        let sent: Vec<Frame> = (0..4)
            .map(|id| Frame::Request {
                id,
                request: Request::WriteData {
                    path: path.clone(),
                    offset: 0,
                    checksum: None,
                    data: data.slice(id as usize..),
                },
            })
            .chain(frames())
            .collect();
        for encrypted in [false, true] {
            let (a, b) = tokio::io::duplex(1 << 16);
            let cipher = || encrypted.then(|| RecordCipher::new(&[3u8; 32]));
            let counters = Arc::new(WireCounters::default());
            let mut writer = FrameWriter::new(a, counters.clone(), cipher());
            writer.compress(Compression::Zstd(1));
            let mut reader = FrameReader::new(b, counters.clone(), cipher());
            reader.inflate();
            let got = through(&mut writer, &mut reader, &sent).await;
            assert!(got == sent, "encrypted {encrypted}");
            assert!(counters.sent.load(Ordering::Relaxed) < 8 << 20, "the text went compressed");
        }
    }

    #[tokio::test]
    async fn a_connection_closed_in_a_large_frame_is_an_error() {
        let mut plain = BytesMut::new();
        let tail = codec::encode(&frames()[3], &mut plain).expect("a large frame's data is its tail");
        plain.extend_from_slice(&tail[..tail.len() / 2]);
        let (mut a, b) = tokio::io::duplex(1 << 16);
        let mut reader = FrameReader::new(b, Arc::new(WireCounters::default()), None);
        let write = async move {
            a.write_all(&plain).await.unwrap();
        };
        let (_, got) = tokio::join!(write, reader.next());
        let err = got.expect_err("half a frame");
        assert!(err.to_string().contains("closed mid-frame"), "{err}");
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
