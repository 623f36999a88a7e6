//! The two ends of a stream, whatever carries it (TCP links in [`crate::pipe`],
//! objects in [`crate::relay`]): the input cut into frames, read, numbered
//! and hashed in order by one thread and compressed on every core within a
//! bounded window; and the output, hashed and written in order by one
//! thread that stops at once when told to, so that the bytes it reports are
//! exactly the bytes delivered.
//!
//! Must never: let the input run further ahead than the window, or write a
//! frame out of the order it was given.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use pareco_compress::{Compression, Encoder};
use pareco_proto::Digest;
use pareco_proto::stream::Encoding;
use pareco_stream::Tally;
use pareco_stream::compress::LevelControl;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

/// How the input is cut.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cut {
    /// Bytes per frame (fewer only at the end of the input).
    pub frame_size: usize,
    /// Report the digest of the stream so far every this many frames, and
    /// at the end (the objects of a relay); 0: never.
    pub mark_every: u64,
    /// Frames read and hashed but not compressed nor handed on (a resumed
    /// relay sender's input that is already uploaded).
    pub skip_frames: u64,
}

/// A frame compressed and waiting to be delivered; its share of the window
/// is released when it is dropped.
pub(crate) struct Pending {
    pub raw_len: u32,
    pub encoding: Encoding,
    pub payload: Bytes,
    pub window: OwnedSemaphorePermit,
}

/// What the input side reports, in the order frames were read (compressed
/// frames may overtake each other).
pub(crate) enum Input {
    /// Frame `seq`, compressed.
    Frame(u64, Pending),
    /// The stream's first `frames` frames, `bytes` bytes, hash to `digest`.
    Mark { frames: u64, bytes: u64, digest: Digest },
    /// The input ended: count and digest of all of it.
    End(Box<Tally>),
    /// Reading the input failed.
    Failed(std::io::Error),
}

/// Counts what the input thread reads.
pub(crate) trait InputCounter: Send + Sync + 'static {
    /// A frame of `len` bytes was read.
    fn frame_read(&self, len: usize);
}

/// The reading and compressing side of a stream.
pub(crate) struct InputSide {
    /// Frames and marks, as they are ready.
    pub events: mpsc::UnboundedReceiver<Input>,
    window: Arc<Semaphore>,
    window_kib: usize,
    level: Arc<AtomicI32>,
    queued: Arc<AtomicU64>,
    control: LevelControl,
    compression: Compression,
}

impl InputSide {
    /// Starts the reader (one thread: reads, numbers and hashes frames in
    /// order, within a window of `buffer` bytes of input, at least two
    /// frames) and the compressors (one per core).
    pub fn start(
        mut input: impl Read + Send + 'static,
        cut: Cut,
        compression: Compression,
        buffer: usize,
        counter: Arc<impl InputCounter>,
    ) -> InputSide {
        let kib_per_frame = cut.frame_size.div_ceil(1024) as u32;
        let window_kib = (buffer / 1024).max(kib_per_frame as usize * 2);
        let window = Arc::new(Semaphore::new(window_kib));
        let level = Arc::new(AtomicI32::new(LevelControl::default().level()));
        let queued = Arc::new(AtomicU64::new(0));
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        let (jobs_tx, jobs_rx) = std::sync::mpsc::sync_channel::<Job>(workers * 2);
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let runtime = tokio::runtime::Handle::current();
        let (reader_out, reader_queued, reader_window) = (out_tx.clone(), queued.clone(), window.clone());
        tokio::task::spawn_blocking(move || {
            let mut tally = Tally::default();
            let mark =
                |tally: &Tally| Input::Mark { frames: tally.frames(), bytes: tally.bytes(), digest: tally.digest() };
            for seq in 0.. {
                let Ok(permit) = runtime.block_on(reader_window.clone().acquire_many_owned(kib_per_frame)) else {
                    return;
                };
                let raw = match read_frame(&mut input, cut.frame_size) {
                    Ok(raw) => raw,
                    Err(e) => {
                        let _ = reader_out.send(Input::Failed(e));
                        return;
                    }
                };
                if raw.is_empty() {
                    break;
                }
                let last = raw.len() < cut.frame_size;
                tally.add(&raw);
                counter.frame_read(raw.len());
                if seq >= cut.skip_frames {
                    reader_queued.fetch_add(1, Ordering::Relaxed);
                    if jobs_tx.send(Job { seq, raw: Bytes::from(raw), window: permit }).is_err() {
                        return;
                    }
                }
                if cut.mark_every > 0 && (seq + 1) % cut.mark_every == 0 && reader_out.send(mark(&tally)).is_err() {
                    return;
                }
                if last {
                    break;
                }
            }
            if cut.mark_every > 0 && tally.frames() % cut.mark_every != 0 {
                let _ = reader_out.send(mark(&tally));
            }
            // Compressors may still be at work: the consumer holds the end
            // until it has received as many frames as it announces.
            let _ = reader_out.send(Input::End(Box::new(tally)));
        });
        let jobs = Arc::new(Mutex::new(jobs_rx));
        for _ in 0..workers {
            let (jobs, done, level, queued) = (jobs.clone(), out_tx.clone(), level.clone(), queued.clone());
            tokio::task::spawn_blocking(move || {
                let mut encoder = Encoder::default();
                loop {
                    let job = jobs.lock().expect("jobs lock").recv();
                    let Ok(job) = job else { return };
                    queued.fetch_sub(1, Ordering::Relaxed);
                    let raw_len = job.raw.len() as u32;
                    let (encoding, payload) = encoder.encode(job.raw, compression, level.load(Ordering::Relaxed));
                    let pending = Pending { raw_len, encoding, payload, window: job.window };
                    if done.send(Input::Frame(job.seq, pending)).is_err() {
                        return;
                    }
                }
            });
        }
        InputSide { events: out_rx, window, window_kib, level, queued, control: LevelControl::default(), compression }
    }

    /// Moves `auto`'s level one step after a look at where the stream
    /// waits: on the carrier (the window is full of frames not yet
    /// delivered: compress harder) or on the CPU (frames wait for a
    /// compressor while the window has room: compress faster).
    pub fn observe(&mut self) {
        if self.compression == Compression::Auto {
            let free = self.window.available_permits() as f64 / self.window_kib as f64;
            let carrier_bound = free < 0.25;
            let cpu_bound = free > 0.5 && self.queued.load(Ordering::Relaxed) > 0;
            self.level.store(self.control.observe(carrier_bound, cpu_bound), Ordering::Relaxed);
        }
    }
}

/// A frame read and numbered, on its way to a compressor.
struct Job {
    seq: u64,
    raw: Bytes,
    window: OwnedSemaphorePermit,
}

/// Reads up to one frame, fewer bytes only at the end of the input.
fn read_frame(input: &mut impl Read, frame_size: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(frame_size);
    input.take(frame_size as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Work for the output thread.
enum Work<T> {
    Frame(T, Bytes),
    Flush,
}

/// What the output thread reports.
pub(crate) enum Written<T> {
    /// A frame is written: its tag and length.
    Frame(T, usize),
    /// The first bytes of a frame were written, then writing failed (the
    /// error follows).
    Part(usize),
    /// Everything is written and flushed; the count and digest of all of it.
    Flushed(Box<Tally>),
}

/// The writing side of a stream: frames in order, each tagged with what
/// the caller needs back when it is written.
pub(crate) struct OutputSide<T> {
    work: mpsc::Sender<Work<T>>,
    /// Reports, one per frame written, then one for the flush.
    pub written: mpsc::UnboundedReceiver<std::io::Result<Written<T>>>,
    stop: Arc<AtomicBool>,
}

/// `write_all` that says, when it fails, how many bytes it wrote first.
fn write_counted(output: &mut impl Write, data: &[u8]) -> Result<(), (usize, std::io::Error)> {
    let mut written = 0;
    while written < data.len() {
        match output.write(&data[written..]) {
            Ok(0) => return Err((written, std::io::ErrorKind::WriteZero.into())),
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err((written, e)),
        }
    }
    Ok(())
}

impl<T: Send + 'static> OutputSide<T> {
    /// Starts the output thread.
    pub fn start(mut output: impl Write + Send + 'static) -> OutputSide<T> {
        let (tx, mut rx) = mpsc::channel::<Work<T>>(8);
        let (report, reports) = mpsc::unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        tokio::task::spawn_blocking(move || {
            let mut tally = Tally::default();
            while let Some(work) = rx.blocking_recv() {
                if stopped.load(Ordering::Relaxed) {
                    return;
                }
                let done = match work {
                    Work::Frame(tag, data) => {
                        // Hashed first: the write then copies from the cache.
                        tally.add(&data);
                        match write_counted(&mut output, &data) {
                            Ok(()) => Ok(Written::Frame(tag, data.len())),
                            Err((written, e)) => {
                                if written > 0 {
                                    let _ = report.send(Ok(Written::Part(written)));
                                }
                                Err(e)
                            }
                        }
                    }
                    Work::Flush => output.flush().map(|()| Written::Flushed(Box::new(std::mem::take(&mut tally)))),
                };
                let failed = done.is_err();
                if report.send(done).is_err() || failed {
                    return;
                }
            }
        });
        OutputSide { work: tx, written: reports, stop }
    }

    /// Queues a frame if the thread has room; gives it back if not.
    pub fn try_write(&self, tag: T, data: Bytes) -> Result<(), (T, Bytes)> {
        match self.work.try_reserve() {
            Ok(slot) => {
                slot.send(Work::Frame(tag, data));
                Ok(())
            }
            Err(_) => Err((tag, data)),
        }
    }

    /// Whether the thread has room for another frame.
    pub fn has_room(&self) -> bool {
        self.work.capacity() > 0
    }

    /// Asks for the flush, after every frame queued.
    pub async fn flush(&self) {
        let _ = self.work.send(Work::Flush).await;
    }

    /// Stops writing at once and adds the bytes of the frames the thread
    /// still completes to `delivered` (within `limit`), so that it counts
    /// exactly the bytes delivered.
    pub async fn stop(mut self, delivered: &AtomicU64, limit: std::time::Duration) {
        self.stop.store(true, Ordering::Relaxed);
        drop(self.work);
        let _ = tokio::time::timeout(limit, async {
            while let Some(Ok(Written::Frame(_, len) | Written::Part(len))) = self.written.recv().await {
                delivered.fetch_add(len as u64, Ordering::Relaxed);
            }
        })
        .await;
    }
}
