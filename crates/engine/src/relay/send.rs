//! The sending end of a relay: input → frames → compressors → objects,
//! each sealed and stored with one PUT as soon as its frames are ready
//! (several at once, lowest first), then the end object.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use pareco_compress::Compression;
use pareco_proto::Digest;
use pareco_proto::stream::Encoding;
use pareco_stream::Tally;
use pareco_stream::relay::manifest::{EncodedFrame, ObjectBody, StreamEnd, StreamHeader};
use pareco_stream::relay::naming::Names;
use pareco_stream::relay::seal::{Kind, ObjectKey, StreamId};
use pareco_stream::relay::{Layout, SMALL_OBJECT_LIMIT};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::{Bucket, RelayError, RelayOptions, RelayStats, RelaySummary, nonce, open_data, open_header, retrying};
use crate::frames::{Cut, Input, InputSide, Pending};

/// What the sender is asked to do.
#[derive(Debug, Clone)]
pub struct SendPlan {
    /// How a new stream is cut (a resumed one keeps its own).
    pub layout: Layout,
    /// `--compress`.
    pub compression: Compression,
    /// Continue the stream under the prefix instead of starting one.
    pub resume: bool,
}

/// Where the upload starts.
struct Start {
    key: ObjectKey,
    layout: Layout,
    /// Objects 0.. already stored, in a row.
    uploaded: u64,
    /// The digest the input must have at the end of those objects.
    check: Option<Digest>,
}

/// An object being put together from its frames.
#[derive(Default)]
struct Assembly {
    frames: Vec<(u64, Pending)>,
    /// Digests before and after it, and its frame count, once read.
    marked: Option<(Digest, Digest, u64)>,
}

/// Sends `input` as a stream of objects into `bucket` under `names`;
/// returns once every object and the end object are stored.
pub async fn send<B: Bucket>(
    input: impl Read + Send + 'static,
    bucket: Arc<B>,
    names: Names,
    plan: SendPlan,
    options: RelayOptions,
    stats: Arc<RelayStats>,
) -> Result<RelaySummary, RelayError> {
    let started = Instant::now();
    let start = begin(&*bucket, &names, &plan, &options, &stats).await.map_err(RelayError::cannot_start)?;
    let layout = start.layout;
    let per_object = layout.frames_per_object();
    let cut = Cut { frame_size: layout.frame_size(), mark_every: per_object, skip_frames: start.uploaded * per_object };
    let buffer = options.buffer.max(2 * layout.object_size() as usize);
    let mut input = InputSide::start(input, cut, plan.compression, buffer, stats.clone());
    let requests = Arc::new(Semaphore::new(options.requests.max(1)));
    // (Dropped on failure: uploads in flight stop with the sender.)
    let mut uploads: JoinSet<Result<u64, RelayError>> = JoinSet::new();

    let mut objects: BTreeMap<u64, Assembly> = BTreeMap::new();
    let mut before = Tally::default().digest();
    let mut checked = start.check.is_none();
    let mut end: Option<StreamEnd> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let header_url = || bucket.url(&names.header());
    loop {
        tokio::select! {
            Some(event) = input.events.recv() => match event {
                Input::Frame(seq, pending) => objects.entry(seq / per_object).or_default().frames.push((seq, pending)),
                Input::Mark { frames, bytes, digest } => {
                    let index = (frames - 1) / per_object;
                    let previous = std::mem::replace(&mut before, digest);
                    if index >= start.uploaded {
                        objects.entry(index).or_default().marked = Some((previous, digest, frames - index * per_object));
                    } else if index + 1 == start.uploaded {
                        if Some(digest) != start.check {
                            return Err(RelayError::InputChanged { url: header_url(), bytes });
                        }
                        checked = true;
                        stats.skipped_bytes.store(bytes, Ordering::Relaxed);
                    }
                }
                Input::End(tally) => {
                    if !checked {
                        let (read, objects) = (tally.bytes(), start.uploaded);
                        return Err(RelayError::InputShort { url: header_url(), read, objects });
                    }
                    let objects = layout.objects_for(tally.bytes());
                    end = Some(StreamEnd { objects, bytes: tally.bytes(), digest: tally.digest() });
                }
                Input::Failed(e) => {
                    // What is on its way is kept for a resume.
                    while let Some(done) = uploads.join_next().await {
                        done.map_err(|e| std::io::Error::other(e.to_string()))??;
                    }
                    return Err(RelayError::Io(e));
                }
            },
            Some(done) = uploads.join_next(), if !uploads.is_empty() => {
                done.map_err(|e| std::io::Error::other(e.to_string()))??;
            }
            _ = tick.tick() => input.observe(),
        }
        let ready: Vec<u64> = objects
            .iter()
            .filter(|(_, o)| o.marked.is_some_and(|(_, _, count)| o.frames.len() as u64 == count))
            .map(|(index, _)| *index)
            .collect();
        for index in ready {
            let assembly = objects.remove(&index).expect("listed");
            let upload = Upload { index, bucket: bucket.clone(), names: names.clone(), key: start.key.clone() };
            let (requests, stats, retry_for) = (requests.clone(), stats.clone(), options.retry_for);
            uploads.spawn(async move { upload.run(assembly, requests, retry_for, &stats).await });
        }
        if let Some(end) = end.filter(|_| objects.is_empty() && uploads.is_empty()) {
            let sealed = Bytes::from(start.key.seal(Kind::End, 0, nonce()?, &end.encode()));
            let name = names.end();
            retrying(|| bucket.url(&name), options.retry_for, &stats, || bucket.put(&name, sealed.clone())).await?;
            let carried = end.bytes - stats.skipped_bytes.load(Ordering::Relaxed);
            return Ok(stats.summary(&end.digest, started, carried, 0));
        }
    }
}

/// One data object on its way to the bucket.
struct Upload<B> {
    index: u64,
    bucket: Arc<B>,
    names: Names,
    key: ObjectKey,
}

impl<B: Bucket> Upload<B> {
    /// Seals and stores the object, once a request slot is free (slots go
    /// in the order asked: lowest objects first); its frames' share of the
    /// window is released once it is stored.
    async fn run(
        self,
        mut assembly: Assembly,
        requests: Arc<Semaphore>,
        retry_for: Duration,
        stats: &RelayStats,
    ) -> Result<u64, RelayError> {
        let _slot = requests.acquire_owned().await.expect("never closed");
        let (before, after, _) = assembly.marked.expect("only marked objects are uploaded");
        assembly.frames.sort_by_key(|(seq, _)| *seq);
        let (frames, window): (Vec<EncodedFrame>, Vec<OwnedSemaphorePermit>) = assembly
            .frames
            .into_iter()
            .map(|(_, p)| (EncodedFrame { encoding: p.encoding, raw_len: p.raw_len, payload: p.payload }, p.window))
            .unzip();
        let compressed = frames.iter().filter(|f| f.encoding == Encoding::Zstd).count() as u64;
        let (key, index, nonce) = (self.key.clone(), self.index, nonce()?);
        let sealed = tokio::task::spawn_blocking(move || {
            key.seal(Kind::Data, index, nonce, &ObjectBody::encode(&before, &after, &frames))
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        let (len, sealed) = (sealed.len() as u64, Bytes::from(sealed));
        let name = self.names.data(index);
        retrying(|| self.bucket.url(&name), retry_for, stats, || self.bucket.put(&name, sealed.clone())).await?;
        drop(window);
        stats.objects_put.fetch_add(1, Ordering::Relaxed);
        stats.payload_bytes.fetch_add(len, Ordering::Relaxed);
        stats.compressed_frames.fetch_add(compressed, Ordering::Relaxed);
        Ok(index)
    }
}

/// Claims the prefix for a new stream, or finds where a resumed one stands.
async fn begin<B: Bucket>(
    bucket: &B,
    names: &Names,
    plan: &SendPlan,
    options: &RelayOptions,
    stats: &RelayStats,
) -> Result<Start, RelayError> {
    let retry_for = options.retry_for;
    let (header, data) = (names.header(), names.data_prefix());
    // Also tells a missing bucket from a missing object.
    let first = retrying(|| bucket.url(&data), retry_for, stats, || bucket.list(&data, Some(1))).await?;
    if !plan.resume {
        if !first.is_empty() {
            return Err(RelayError::InUse { url: bucket.url(names.base()) });
        }
        let mut stream = StreamId::default();
        getrandom::fill(&mut stream)
            .map_err(|e| std::io::Error::other(format!("no randomness for a stream id: {e}")))?;
        let key = ObjectKey::derive(&options.token, stream);
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let plain = StreamHeader { layout: plan.layout, started: now }.encode();
        let sealed = Bytes::from(key.seal(Kind::Header, 0, nonce()?, &plain));
        let created =
            retrying(|| bucket.url(&header), retry_for, stats, || bucket.create(&header, sealed.clone())).await?;
        // A create whose answer was lost and was sent again finds its own
        // header there (the stream id and nonce are new: no other is the same).
        let ours = || bucket.get(&header, SMALL_OBJECT_LIMIT, &stats.retries);
        if !created && retrying(|| bucket.url(&header), retry_for, stats, ours).await?.as_ref() != Some(&sealed) {
            return Err(RelayError::InUse { url: bucket.url(names.base()) });
        }
        // An end left by an earlier stream whose removal was interrupted.
        let end = names.end();
        retrying(|| bucket.url(&end), retry_for, stats, || bucket.delete(vec![end.clone()])).await?;
        return Ok(Start { key, layout: plan.layout, uploaded: 0, check: None });
    }
    let sealed =
        retrying(|| bucket.url(&header), retry_for, stats, || bucket.get(&header, SMALL_OBJECT_LIMIT, &stats.retries))
            .await?;
    let Some(sealed) = sealed else { return Err(RelayError::NothingToResume { url: bucket.url(&header) }) };
    let (key, stream_header) = open_header(&sealed, &options.token, bucket.url(&header))?;
    let layout = stream_header.layout;
    if layout != plan.layout {
        tracing::info!("the stream's objects are {} bytes: resuming with that size", layout.object_size());
    }
    let listed = retrying(|| bucket.url(&data), retry_for, stats, || bucket.list(&data, None)).await?;
    let uploaded = names.contiguous(listed.iter().map(String::as_str));
    let check = match uploaded {
        0 => None,
        n => {
            let name = names.data(n - 1);
            let limit = layout.sealed_limit();
            let sealed =
                retrying(|| bucket.url(&name), retry_for, stats, || bucket.get(&name, limit, &stats.retries)).await?;
            let Some(sealed) = sealed else { return Err(RelayError::Missing { url: bucket.url(&name) }) };
            Some(open_data(&key, &layout, n - 1, sealed, bucket.url(&name))?.after)
        }
    };
    Ok(Start { key, layout, uploaded, check })
}
