//! The sending end: input → frames → compressors → connections, with every
//! frame kept until the receiver has written it.

use std::io::Read;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pareco_compress::{Compression, Encoder};
use pareco_proto::stream::{Encoding, StreamMessage, StreamRole};
use pareco_stream::compress::LevelControl;
use pareco_stream::outstanding::Outstanding;
use pareco_stream::stripe::Stripe;
use pareco_stream::{FRAME_SIZE, Tally};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::{LinkEvent, LinkTable, Links, PipeError, PipeOptions, PipeStats, PipeSummary, Rendezvous, abort};

/// How often rates, the compression level and the peer's presence are checked.
const TICK: Duration = Duration::from_millis(100);

/// The window is counted in KiB of input.
const KIB_PER_FRAME: u32 = (FRAME_SIZE / 1024) as u32;

/// A frame read and numbered, on its way to a compressor.
struct Job {
    seq: u64,
    raw: Bytes,
    window: OwnedSemaphorePermit,
}

/// What the input side reports to the main loop.
enum Input {
    Frame(u64, Pending),
    End(Box<Tally>),
    Failed(std::io::Error),
}

/// A frame not yet acknowledged; its window share is released with it.
struct Pending {
    raw_len: u32,
    encoding: Encoding,
    payload: Bytes,
    _window: OwnedSemaphorePermit,
}

/// Sends `input` as a stream; returns once the receiver has written and
/// verified all of it.
pub async fn send(
    input: impl Read + Send + 'static,
    rendezvous: Rendezvous,
    compression: Compression,
    options: PipeOptions,
    stats: Arc<PipeStats>,
) -> Result<PipeSummary, PipeError> {
    let started = Instant::now();
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).map_err(|e| std::io::Error::other(format!("no randomness for a stream id: {e}")))?;
    let (links, mut events) = Links::open(StreamRole::Sender, Some(id), rendezvous, options.clone());

    let window_kib = (options.buffer / 1024).max(KIB_PER_FRAME as usize * 2);
    let window = Arc::new(Semaphore::new(window_kib));
    let level = Arc::new(AtomicI32::new(LevelControl::default().level()));
    let queued = Arc::new(AtomicU64::new(0));
    let mut inputs = start_input(input, compression, window.clone(), level.clone(), queued.clone(), stats.clone());

    let mut out: Outstanding<Pending> = Outstanding::default();
    let mut table = LinkTable::new(stats.clone());
    let mut stripe = Stripe::default();
    let mut end: Option<StreamMessage> = None;
    let mut tally: Option<Tally> = None;
    let mut received = 0u64;
    let mut control = LevelControl::default();
    let mut tick = tokio::time::interval(TICK);
    let mut last_tick = Instant::now();
    let result = loop {
        tokio::select! {
            Some(input) = inputs.recv() => match input {
                Input::Frame(seq, pending) => {
                    out.add(seq, pending);
                    received += 1;
                }
                Input::End(t) => tally = Some(*t),
                Input::Failed(e) => {
                    table.broadcast(&StreamMessage::Abort { reason: format!("the sender's input failed: {e}") });
                    break Err(PipeError::Io(e));
                }
            },
            Some(event) = events.recv() => match event {
                LinkEvent::Opened(id, tx, _) => {
                    table.opened(id, tx);
                    stripe.open(id);
                    if let Some(end) = &end {
                        table.send(id, end.clone());
                    }
                }
                LinkEvent::Message(_, StreamMessage::Ack { seq }) => {
                    if let Some((pending, Some(link))) = out.ack(seq) {
                        stripe.acked(link, pending.payload.len() as u64);
                    }
                }
                LinkEvent::Message(_, StreamMessage::Done) => {
                    // The receiver checked count, length and digest against
                    // our End: everything arrived, whatever acknowledgements
                    // are still on their way on other connections.
                    if end.is_some() {
                        break Ok(());
                    }
                    break Err(PipeError::Protocol("the receiver said Done before the stream ended".into()));
                }
                LinkEvent::Message(_, StreamMessage::Abort { reason }) => break Err(PipeError::Aborted(reason)),
                LinkEvent::Message(id, other) => {
                    tracing::warn!("link {id}: unexpected {other:?} from the receiver");
                    break Err(PipeError::Protocol("unexpected message from the receiver".into()));
                }
                LinkEvent::Closed(id) => {
                    if table.closed(id) {
                        stripe.close(id);
                        stats.resent_frames.fetch_add(out.orphan(id) as u64, Ordering::Relaxed);
                        links.replace();
                    }
                }
                LinkEvent::Failed(e) => break Err(e),
            },
            _ = tick.tick() => {
                stripe.tick(last_tick.elapsed());
                last_tick = Instant::now();
                if let Err(e) = table.check_alive(options.retry_for) {
                    break Err(e);
                }
                if compression == Compression::Auto {
                    let free = window.available_permits() as f64 / window_kib as f64;
                    let link_bound = free < 0.25;
                    let cpu_bound = free > 0.5 && queued.load(Ordering::Relaxed) > 0;
                    level.store(control.observe(link_bound, cpu_bound), Ordering::Relaxed);
                }
            }
        }
        if end.is_none()
            && let Some(t) = tally.as_ref().filter(|t| t.frames() == received)
        {
            let message = StreamMessage::End { frames: t.frames(), bytes: t.bytes(), digest: t.digest() };
            table.broadcast(&message);
            end = Some(message);
        }
        dispatch(&mut out, &table, &mut stripe, &stats);
    };
    if let Err(e) = &result {
        abort(&mut table, e);
    }
    table.close_all();
    result?;
    let tally = tally.expect("the stream ended before the receiver said Done");
    Ok(stats.summary(&links.counters, &tally.digest(), started))
}

/// Sends frames waiting for a connection, in order, while a connection has
/// room for them.
fn dispatch(out: &mut Outstanding<Pending>, table: &LinkTable, stripe: &mut Stripe, stats: &PipeStats) {
    while let Some(next) = out.next_unsent() {
        let len = next.payload.len() as u64;
        let Some(link) = stripe.pick(len) else { return };
        let Some((seq, pending)) = out.send_next(link) else { return };
        table.send(
            link,
            StreamMessage::Data {
                seq,
                raw_len: pending.raw_len,
                encoding: pending.encoding,
                payload: pending.payload.clone(),
            },
        );
        stripe.sent(link, len);
        stats.payload_bytes.fetch_add(len, Ordering::Relaxed);
        if pending.encoding == Encoding::Zstd {
            stats.compressed_frames.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Starts the reader (one thread: reads, numbers and hashes frames in
/// order, within the window) and the compressors (one per core).
fn start_input(
    mut input: impl Read + Send + 'static,
    compression: Compression,
    window: Arc<Semaphore>,
    level: Arc<AtomicI32>,
    queued: Arc<AtomicU64>,
    stats: Arc<PipeStats>,
) -> mpsc::UnboundedReceiver<Input> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let (jobs_tx, jobs_rx) = std::sync::mpsc::sync_channel::<Job>(workers * 2);
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let runtime = tokio::runtime::Handle::current();
    let (reader_out, reader_queued) = (out_tx.clone(), queued.clone());
    tokio::task::spawn_blocking(move || {
        let mut tally = Tally::default();
        for seq in 0.. {
            let Ok(permit) = runtime.block_on(window.clone().acquire_many_owned(KIB_PER_FRAME)) else { return };
            let raw = match read_frame(&mut input) {
                Ok(raw) => raw,
                Err(e) => {
                    let _ = reader_out.send(Input::Failed(e));
                    return;
                }
            };
            if raw.is_empty() {
                break;
            }
            let last = raw.len() < FRAME_SIZE;
            tally.add(&raw);
            stats.bytes.fetch_add(raw.len() as u64, Ordering::Relaxed);
            stats.frames.fetch_add(1, Ordering::Relaxed);
            reader_queued.fetch_add(1, Ordering::Relaxed);
            if jobs_tx.send(Job { seq, raw: Bytes::from(raw), window: permit }).is_err() {
                return;
            }
            if last {
                break;
            }
        }
        // Compressors may still be at work: the main loop holds the end
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
                let pending = Pending { raw_len, encoding, payload, _window: job.window };
                if done.send(Input::Frame(job.seq, pending)).is_err() {
                    return;
                }
            }
        });
    }
    out_rx
}

/// Reads up to one frame, fewer bytes only at the end of the input.
fn read_frame(input: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(FRAME_SIZE);
    input.take(FRAME_SIZE as u64).read_to_end(&mut buf)?;
    Ok(buf)
}
