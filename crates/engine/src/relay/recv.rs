//! The receiving end of a relay: objects fetched by name as soon as they
//! exist (several at once, polling with backoff while one is not there
//! yet), opened, checked to follow one another, decoded, and written in
//! order; the end object's count, length and digest checked last.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pareco_proto::Digest;
use pareco_proto::stream::Encoding;
use pareco_stream::Tally;
use pareco_stream::relay::manifest::StreamEnd;
use pareco_stream::relay::naming::Names;
use pareco_stream::relay::seal::{Kind, ObjectKey};
use pareco_stream::relay::{Layout, SMALL_OBJECT_LIMIT};
use pareco_stream::reorder::Reorder;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use super::{Bucket, RelayError, RelayOptions, RelayStats, RelaySummary, open_data, open_header, retrying};
use crate::frames::{OutputSide, Written};

/// What the receiver is asked to do.
#[derive(Debug, Clone, Copy)]
pub struct ReceivePlan {
    /// Bytes of the stream the consumer already has: not written again.
    pub skip: u64,
    /// Leave the objects in the bucket once the stream is verified.
    pub keep: bool,
}

/// Polling for an object not there yet: from this, doubling, up to the max.
const FIRST_POLL: Duration = Duration::from_millis(50);
const MAX_POLL: Duration = Duration::from_secs(1);

/// Polling for the end: often, since the receiver cannot finish before it
/// sees it (one small GET per interval).
const END_POLL: Duration = Duration::from_millis(250);

/// Polling for the header of a stream not started yet.
const MAX_HEADER_POLL: Duration = Duration::from_secs(2);

/// How long output may take to finish a frame after a failure.
const FAREWELL: Duration = Duration::from_secs(5);

/// A data object fetched, opened and decoded.
struct Fetched {
    before: Digest,
    after: Digest,
    frames: Vec<Bytes>,
    raw_len: u64,
}

/// What the fetchers and the end's poller report.
enum Event {
    /// Object `index`, holding its memory slot, or why it cannot be had
    /// (reported in its turn, after the objects before it are written).
    Fetched(u64, Result<Fetched, RelayError>, OwnedSemaphorePermit),
    /// Past the end: nothing there to fetch.
    Beyond,
    /// The end object, checked.
    End(StreamEnd),
    Failed(RelayError),
}

/// Receives the stream under `names` into `output`; returns once all of
/// it is written and verified (and, unless `keep`, its objects removed).
/// On failure, what was written stays written (the stats say how much) and
/// the error says why the rest is missing.
pub async fn receive<B: Bucket>(
    output: impl Write + Send + 'static,
    bucket: Arc<B>,
    names: Names,
    plan: ReceivePlan,
    options: RelayOptions,
    stats: Arc<RelayStats>,
) -> Result<RelaySummary, RelayError> {
    let started = Instant::now();
    let (key, layout) = begin(&*bucket, &names, &options, &stats).await.map_err(RelayError::cannot_start)?;
    let (first, mut drop_bytes) = layout.position(plan.skip);
    stats.skipped_bytes.store(plan.skip, Ordering::Relaxed);
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (end_tx, end_rx) = watch::channel(None);
    tokio::spawn(poll_end(
        bucket.clone(),
        names.clone(),
        key.clone(),
        layout,
        events_tx.clone(),
        options.retry_for,
        stats.clone(),
    ));
    let fetch =
        Fetch { bucket: bucket.clone(), names: names.clone(), key, layout, end: end_rx, retry_for: options.retry_for };
    let fetch = Arc::new(fetch);
    let slots = Arc::new(Semaphore::new((options.buffer / layout.object_size() as usize).max(2)));
    let mut output = OutputSide::<(u64, bool)>::start(output);

    let mut reorder: Reorder<(Result<Fetched, RelayError>, OwnedSemaphorePermit)> = Reorder::new(usize::MAX);
    let mut queued: VecDeque<((u64, bool), Bytes)> = VecDeque::new();
    let mut writing: HashMap<u64, OwnedSemaphorePermit> = HashMap::new();
    let (mut next_fetch, mut fetching, mut written) = (first, 0usize, first);
    let mut end: Option<StreamEnd> = None;
    let mut expected_before = (first == 0).then(|| Tally::default().digest());
    let mut last_after: Option<Digest> = None;
    let mut short: Option<u64> = None;
    let mut flushing = false;
    // An object that cannot be had, once every object before it is out.
    let mut failure: Option<RelayError> = None;
    let mut last_progress = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let result = 'main: loop {
        while failure.is_none() && fetching < options.requests.max(1) && end.is_none_or(|e| next_fetch < e.objects) {
            let Ok(slot) = slots.clone().try_acquire_owned() else { break };
            let (fetch, events, stats) = (fetch.clone(), events_tx.clone(), stats.clone());
            let index = next_fetch;
            tokio::spawn(async move {
                let _ = events.send(match fetch.object(index, &stats).await {
                    Ok(Some(fetched)) => Event::Fetched(index, Ok(fetched), slot),
                    Ok(None) => Event::Beyond,
                    Err(e) => Event::Fetched(index, Err(e), slot),
                });
            });
            next_fetch += 1;
            fetching += 1;
        }
        tokio::select! {
            Some(event) = events.recv() => match event {
                Event::Fetched(index, fetched, slot) => {
                    fetching -= 1;
                    last_progress = Instant::now();
                    reorder.offer(index - first, (fetched, slot), 1);
                }
                Event::Beyond => fetching -= 1,
                Event::End(found) => {
                    if plan.skip > found.bytes {
                        break Err(RelayError::SkipPastEnd { skip: plan.skip, bytes: found.bytes });
                    }
                    end = Some(found);
                    let _ = end_tx.send(end);
                    last_progress = Instant::now();
                }
                Event::Failed(e) => break Err(e),
            },
            Some(report) = output.written.recv() => match report {
                Ok(Written::Frame((index, last), len)) => {
                    stats.bytes.fetch_add(len as u64, Ordering::Relaxed);
                    if last {
                        writing.remove(&index);
                        written = index + 1;
                    }
                }
                Ok(Written::Part(len)) => {
                    stats.bytes.fetch_add(len as u64, Ordering::Relaxed);
                }
                Ok(Written::Flushed(tally)) => {
                    if let Some(e) = failure.take() {
                        break Err(e);
                    }
                    let end = end.expect("flushed only once the end is known or an object failed");
                    break verify(&tally, &end, plan.skip, last_after).map(|()| end);
                }
                Err(e) => break Err(RelayError::Io(e)),
            },
            _ = tick.tick() => {
                // Only a fetch still out waits on the sender (a slow consumer
                // leaves none out: every slot holds an object to write).
                if fetching == 0 {
                    last_progress = Instant::now();
                }
                if last_progress.elapsed() > options.retry_for && !flushing {
                    let url = bucket.url(&names.data(written));
                    break Err(RelayError::GaveUp { url, waited: options.retry_for });
                }
            }
        }
        // Into the output, in order, as far as it takes.
        while failure.is_none() || !queued.is_empty() {
            while let Some((tag, data)) = queued.pop_front() {
                if let Err(back) = output.try_write(tag, data) {
                    queued.push_front(back);
                    break;
                }
            }
            if !queued.is_empty() || failure.is_some() {
                break;
            }
            let Some((seq, (fetched, slot))) = reorder.pop() else { break };
            let fetched = match fetched {
                Ok(fetched) => fetched,
                Err(e) => {
                    // Everything before it is good: let it out first.
                    failure = Some(e);
                    break;
                }
            };
            let index = first + seq;
            let url = || bucket.url(&names.data(index));
            if expected_before.is_some_and(|d| d != fetched.before) || short.is_some() {
                break 'main Err(RelayError::Corrupt(format!(
                    "{} does not follow the object before it: the stream was changed (a sender resumed on other input?)",
                    url()
                )));
            }
            if fetched.raw_len < layout.object_size() {
                short = Some(index);
            }
            expected_before = Some(fetched.after);
            last_after = Some(fetched.after);
            let mut frames = fetched.frames;
            // The consumer's part of the first object is not written again.
            while drop_bytes > 0 && !frames.is_empty() {
                let cut = (drop_bytes as usize).min(frames[0].len());
                frames[0] = frames[0].slice(cut..);
                drop_bytes -= cut as u64;
                if frames[0].is_empty() {
                    frames.remove(0);
                }
            }
            if frames.is_empty() {
                frames.push(Bytes::new());
            }
            let count = frames.len();
            queued.extend(frames.into_iter().enumerate().map(|(i, data)| ((index, i + 1 == count), data)));
            writing.insert(index, slot);
        }
        let complete = end.is_some_and(|e| written.max(first) >= e.objects) || failure.is_some();
        if complete && queued.is_empty() && !flushing {
            flushing = true;
            output.flush().await;
        }
    };
    let end = match result {
        Ok(end) => end,
        Err(e) => {
            output.stop(&stats.bytes, FAREWELL).await;
            return Err(e);
        }
    };
    let removed = if plan.keep { 0 } else { remove(&*bucket, &names, &options, &stats).await };
    let delivered = stats.bytes.load(Ordering::Relaxed);
    Ok(stats.summary(&end.digest, started, delivered, removed))
}

/// The stream delivered is the one the end describes: all of it hashed
/// here, or, after `--skip`, its length and the chain's last link.
fn verify(tally: &Tally, end: &StreamEnd, skip: u64, last_after: Option<Digest>) -> Result<(), RelayError> {
    let expected = end.bytes - skip;
    if tally.bytes() != expected {
        return Err(RelayError::Corrupt(format!(
            "the stream does not match its end object: {} bytes delivered, {expected} expected",
            tally.bytes()
        )));
    }
    let digest = if skip == 0 { Some(tally.digest()) } else { last_after };
    if digest.is_some_and(|d| d != end.digest) {
        return Err(RelayError::Corrupt("the stream does not match its end object: its digest differs".into()));
    }
    Ok(())
}

/// Removes the stream's objects, the header last (so that a prefix never
/// looks free while it is not). Failures are reported, not fatal: the
/// stream itself is delivered.
async fn remove<B: Bucket>(bucket: &B, names: &Names, options: &RelayOptions, stats: &RelayStats) -> u64 {
    let base = names.base().to_string();
    let removal = async {
        let listed = retrying(|| bucket.url(&base), options.retry_for, stats, || bucket.list(&base, None)).await?;
        let (header, ours): (Vec<String>, Vec<String>) =
            listed.into_iter().filter(|n| names.is_ours(n)).partition(|n| *n == names.header());
        let count = (ours.len() + header.len()) as u64;
        for batch in [ours, header] {
            retrying(|| bucket.url(&base), options.retry_for, stats, || bucket.delete(batch.clone())).await?;
        }
        Ok::<_, RelayError>(count)
    };
    match removal.await {
        Ok(count) => count,
        Err(e) => {
            tracing::warn!("the stream is delivered and verified, but its objects could not be removed: {e}");
            0
        }
    }
}

/// Waits for the stream's header (the sender may not have started yet)
/// and opens it: the stream's key and layout.
async fn begin<B: Bucket>(
    bucket: &B,
    names: &Names,
    options: &RelayOptions,
    stats: &RelayStats,
) -> Result<(ObjectKey, Layout), RelayError> {
    let (base, header) = (names.base().to_string(), names.header());
    // Tells a missing bucket from a stream not started yet.
    retrying(|| bucket.url(&base), options.retry_for, stats, || bucket.list(&base, Some(1))).await?;
    let mut poll = FIRST_POLL;
    loop {
        let found = retrying(
            || bucket.url(&header),
            options.retry_for,
            stats,
            || bucket.get(&header, SMALL_OBJECT_LIMIT, &stats.retries),
        )
        .await?;
        if let Some(sealed) = found {
            let (key, header) = open_header(&sealed, &options.token, bucket.url(&header))?;
            return Ok((key, header.layout));
        }
        if poll == FIRST_POLL {
            tracing::info!("waiting for {} (the sender has not started)", bucket.url(&header));
        }
        tokio::time::sleep(poll).await;
        poll = (poll * 2).min(MAX_HEADER_POLL);
    }
}

/// Polls for the end object until it is there, then reports it checked.
async fn poll_end<B: Bucket>(
    bucket: Arc<B>,
    names: Names,
    key: ObjectKey,
    layout: Layout,
    events: mpsc::UnboundedSender<Event>,
    retry_for: Duration,
    stats: Arc<RelayStats>,
) {
    let name = names.end();
    let url = || bucket.url(&name);
    while !events.is_closed() {
        let event =
            match retrying(url, retry_for, &stats, || bucket.get(&name, SMALL_OBJECT_LIMIT, &stats.retries)).await {
                Ok(Some(sealed)) => match key.open(Kind::End, 0, &sealed) {
                    Ok(plain) => match StreamEnd::decode(&plain, &layout) {
                        Ok(end) => Event::End(end),
                        Err(source) => Event::Failed(RelayError::Malformed { url: url(), source }),
                    },
                    Err(e) => Event::Failed(RelayError::unsealed(url(), e)),
                },
                Ok(None) => {
                    tokio::time::sleep(END_POLL).await;
                    continue;
                }
                Err(e) => Event::Failed(e),
            };
        let _ = events.send(event);
        return;
    }
}

/// What every fetcher shares.
struct Fetch<B> {
    bucket: Arc<B>,
    names: Names,
    key: ObjectKey,
    layout: Layout,
    end: watch::Receiver<Option<StreamEnd>>,
    retry_for: Duration,
}

impl<B: Bucket> Fetch<B> {
    /// Object `index`, once it exists, opened and decoded; `None` if the
    /// stream ends before it.
    async fn object(&self, index: u64, stats: &RelayStats) -> Result<Option<Fetched>, RelayError> {
        let name = self.names.data(index);
        let url = || self.bucket.url(&name);
        let limit = self.layout.sealed_limit();
        let mut end = self.end.clone();
        let mut poll = FIRST_POLL;
        let sealed = loop {
            let found = retrying(url, self.retry_for, stats, || self.bucket.get(&name, limit, &stats.retries)).await?;
            if let Some(sealed) = found {
                break sealed;
            }
            // The end is stored after every data object: an object it
            // counts that is not there was removed.
            match *end.borrow_and_update() {
                Some(e) if index >= e.objects => return Ok(None),
                Some(_) => return Err(RelayError::Missing { url: url() }),
                None => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = end.changed() => {}
            }
            poll = (poll * 2).min(MAX_POLL);
        };
        stats.payload_bytes.fetch_add(sealed.len() as u64, Ordering::Relaxed);
        let (key, layout, url) = (self.key.clone(), self.layout, url());
        let fetched = tokio::task::spawn_blocking(move || {
            let body = open_data(&key, &layout, index, sealed, url.clone())?;
            let compressed = body.frames.iter().filter(|f| f.encoding == Encoding::Zstd).count() as u64;
            let count = (body.frames.len() as u64, compressed);
            let raw_len = body.raw_len();
            let frames = body
                .frames
                .into_iter()
                .map(|f| pareco_compress::decode(f.encoding, f.payload, f.raw_len))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| RelayError::Corrupt(format!("{url}: {e}")))?;
            Ok::<_, RelayError>((Fetched { before: body.before, after: body.after, frames, raw_len }, count))
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))??;
        stats.objects_got.fetch_add(1, Ordering::Relaxed);
        stats.frames.fetch_add(fetched.1.0, Ordering::Relaxed);
        stats.compressed_frames.fetch_add(fetched.1.1, Ordering::Relaxed);
        Ok(Some(fetched.0))
    }
}
