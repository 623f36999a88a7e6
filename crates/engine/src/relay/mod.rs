//! The relay through object storage (`pareco send s3://BUCKET/PREFIX`,
//! `pareco recv s3://…`): another carrier of the same stream as
//! [`crate::pipe`]'s TCP links. The input is cut, hashed and compressed as
//! there ([`crate::frames`]); runs of frames become objects, each sealed
//! with the token and stored with one plain PUT, many at once; the receiver
//! fetches them by name as soon as they exist, opens them, and writes them
//! in order. Naming, sealing and the objects' layout are pure, in
//! [`pareco_stream::relay`].
//!
//! - [`send`]: input → frames → compressors → objects sealed and PUT (at
//!   most `requests` at once, memory within the window) → end object.
//!   Starting claims the prefix with a conditional create of its header;
//!   `resume` continues a stream whose sender died: it finds the uploaded
//!   objects (listing), checks that its input starts with them (the digest
//!   the last of them records), and uploads the rest.
//! - [`receive`]: header → objects fetched by name (polling with backoff
//!   until each exists) → opened, chain-checked, decoded → output in order;
//!   ends once the end object's count, length and digest match, then
//!   removes the stream's objects (unless `keep`). `skip` resumes after the
//!   bytes a consumer already has.
//! - [`store`]: the bucket behind a small trait; [`s3`]: the S3 one.
//!
//! Must never: write out a byte whose object did not authenticate, report
//! success before the end object was checked, or start a second stream on
//! a prefix in use.

mod recv;
mod s3;
mod send;
pub mod store;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pareco_proto::Digest;
use pareco_stream::relay::Layout;
use pareco_stream::relay::manifest::{ManifestError, ObjectBody, StreamHeader};
use pareco_stream::relay::seal::{Kind, ObjectKey, SealError, peek};
pub use recv::{ReceivePlan, receive};
pub use s3::{S3Bucket, S3Config};
pub use send::{SendPlan, send};
use serde::Serialize;
pub use store::{Bucket, DirBucket, StoreError};

/// Options of either end.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// The shared secret the objects are sealed with.
    pub token: Vec<u8>,
    /// Requests (PUTs or GETs) in flight at once.
    pub requests: usize,
    /// Bytes of the stream held in memory (objects being made, sent,
    /// fetched or written); at least two objects' worth is used.
    pub buffer: usize,
    /// How long a failing request is retried, and how long the receiver
    /// waits for a sender that stopped uploading.
    pub retry_for: Duration,
}

/// Why a relayed stream failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// Nothing could start (no bucket, no access, wrong token, prefix in
    /// use…): nothing was uploaded or delivered.
    #[error(transparent)]
    CannotStart(Box<RelayError>),
    /// A request failed for good (after retries, if it was worth retrying).
    #[error("{url}: {source}{}", retried_note(*.retried))]
    Store {
        /// The object or listing.
        url: String,
        /// Why.
        source: StoreError,
        /// How long it was retried.
        retried: Duration,
    },
    /// The header does not open with this token.
    #[error("{url} does not open with this token: wrong PARECO_TOKEN or --token-file (or the object was altered)")]
    WrongToken {
        /// The header.
        url: String,
    },
    /// An object does not open: foreign, altered, misplaced.
    #[error("{url} {source}")]
    Unsealed {
        /// The object.
        url: String,
        /// Why.
        source: SealError,
    },
    /// An object opened but does not hold what its kind must.
    #[error("{url}: {source}")]
    Malformed {
        /// The object.
        url: String,
        /// Why.
        source: ManifestError,
    },
    /// A data object the end counts is not in the bucket.
    #[error("{url} is missing from the bucket (deleted before it was read)")]
    Missing {
        /// The object.
        url: String,
    },
    /// A sender without `--resume` on a prefix that holds a stream.
    #[error(
        "{url} already holds a stream: continue it with `pareco send --resume` on the same input, or use another prefix"
    )]
    InUse {
        /// The prefix.
        url: String,
    },
    /// `--resume` where no stream was started.
    #[error("nothing to resume: {url} does not exist (start the stream without --resume)")]
    NothingToResume {
        /// The header looked for.
        url: String,
    },
    /// A resumed sender's input is not the one uploaded.
    #[error(
        "the input is not the one being uploaded to {url}: its first {bytes} bytes differ from what was uploaded (resume needs the same input)"
    )]
    InputChanged {
        /// The stream's header.
        url: String,
        /// Bytes compared.
        bytes: u64,
    },
    /// A resumed sender's input is shorter than what was uploaded.
    #[error("the input ends after {read} bytes, before the end of the {objects} objects already uploaded to {url}")]
    InputShort {
        /// The stream's header.
        url: String,
        /// Bytes of the input.
        read: u64,
        /// Objects uploaded before.
        objects: u64,
    },
    /// The receiver waited for the next object for longer than `--retry-for`.
    #[error(
        "{url} did not appear for {waited:?}: the sender stopped (resume it with `pareco send --resume`, and this end with `pareco recv --skip BYTES`)"
    )]
    GaveUp {
        /// The object waited for.
        url: String,
        /// How long.
        waited: Duration,
    },
    /// `--skip` beyond the stream.
    #[error("--skip {skip} is past the end of the stream ({bytes} bytes)")]
    SkipPastEnd {
        /// Asked.
        skip: u64,
        /// The stream's length.
        bytes: u64,
    },
    /// Objects that authenticate but do not make the stream the end
    /// describes (a sender resumed on other input, or a bug).
    #[error("{0}")]
    Corrupt(String),
    /// Reading the input or writing the output failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn retried_note(retried: Duration) -> String {
    if retried.is_zero() { String::new() } else { format!(" (retried for {:.0} s)", retried.as_secs_f64()) }
}

impl RelayError {
    fn store(url: String, source: StoreError, retried: Duration) -> RelayError {
        RelayError::Store { url, source, retried }
    }

    fn unsealed(url: String, source: SealError) -> RelayError {
        RelayError::Unsealed { url, source }
    }

    fn cannot_start(self) -> RelayError {
        match self {
            e @ RelayError::CannotStart(_) => e,
            e => RelayError::CannotStart(Box::new(e)),
        }
    }
}

/// Counters of a relayed stream, for progress and the final report.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Bytes of the stream read (sender) or delivered (receiver).
    pub bytes: AtomicU64,
    /// Frames of the stream.
    pub frames: AtomicU64,
    /// Bytes of data objects stored or fetched (sealed, after compression).
    pub payload_bytes: AtomicU64,
    /// Frames stored compressed.
    pub compressed_frames: AtomicU64,
    /// Data objects stored.
    pub objects_put: AtomicU64,
    /// Data objects fetched.
    pub objects_got: AtomicU64,
    /// Requests retried after a transient failure.
    pub retries: AtomicU64,
    /// Bytes not uploaded again (resumed sender) or not written (`--skip`).
    pub skipped_bytes: AtomicU64,
}

impl crate::frames::InputCounter for RelayStats {
    fn frame_read(&self, len: usize) {
        self.bytes.fetch_add(len as u64, Ordering::Relaxed);
        self.frames.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a finished relayed stream reports (`--stats-json`).
#[derive(Debug, Clone, Serialize)]
pub struct RelaySummary {
    /// Bytes of the stream read (sender) or delivered (receiver).
    pub bytes: u64,
    /// Frames.
    pub frames: u64,
    /// Data objects stored.
    pub objects_put: u64,
    /// Data objects fetched.
    pub objects_got: u64,
    /// Bytes of data objects stored or fetched.
    pub payload_bytes: u64,
    /// Stream bytes over the data objects' bytes that carried them.
    pub compression_ratio: f64,
    /// Frames stored compressed.
    pub compressed_frames: u64,
    /// Requests retried after a transient failure.
    pub retries: u64,
    /// Bytes not uploaded again (resumed sender) or not written (`--skip`).
    pub skipped_bytes: u64,
    /// Objects removed from the bucket after the stream was verified.
    pub objects_removed: u64,
    /// BLAKE3 of the whole stream, hex.
    pub digest: String,
    /// Wall-clock duration in seconds.
    pub duration_s: f64,
}

impl RelayStats {
    /// The report; `carried`: the bytes of the stream the data objects
    /// stored or fetched here hold.
    fn summary(&self, digest: &Digest, started: Instant, carried: u64, objects_removed: u64) -> RelaySummary {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (bytes, payload, skipped) = (load(&self.bytes), load(&self.payload_bytes), load(&self.skipped_bytes));
        RelaySummary {
            bytes,
            frames: load(&self.frames),
            objects_put: load(&self.objects_put),
            objects_got: load(&self.objects_got),
            payload_bytes: payload,
            compression_ratio: if payload == 0 { 1.0 } else { carried as f64 / payload as f64 },
            compressed_frames: load(&self.compressed_frames),
            retries: load(&self.retries),
            skipped_bytes: skipped,
            objects_removed,
            digest: digest.0.iter().map(|b| format!("{b:02x}")).collect(),
            duration_s: started.elapsed().as_secs_f64(),
        }
    }
}

/// Backoff between retries of a failing request.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Runs `request` until it succeeds, fails for good, or has failed
/// transiently for `retry_for`; each retry is counted.
async fn retrying<T, F, Fut>(
    url: impl FnOnce() -> String,
    retry_for: Duration,
    stats: &RelayStats,
    mut request: F,
) -> Result<T, RelayError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let started = Instant::now();
    let mut backoff = FIRST_BACKOFF;
    loop {
        match request().await {
            Ok(value) => return Ok(value),
            Err(e) if e.is_transient() && started.elapsed() < retry_for => {
                stats.retries.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("retrying in {backoff:?}: {e}");
                tokio::time::sleep(jitter(backoff)).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(e) => {
                let retried = if e.is_transient() { started.elapsed() } else { Duration::ZERO };
                return Err(RelayError::store(url(), e, retried));
            }
        }
    }
}

/// `d` moved by up to a quarter either way, so that requests that failed
/// together do not all come back at once.
fn jitter(d: Duration) -> Duration {
    let mut byte = [0u8; 1];
    let _ = getrandom::fill(&mut byte);
    d.mul_f64(0.75 + byte[0] as f64 / 510.0)
}

/// A fresh nonce.
fn nonce() -> Result<[u8; pareco_stream::relay::seal::NONCE_LEN], RelayError> {
    let mut nonce = [0u8; pareco_stream::relay::seal::NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|e| std::io::Error::other(format!("no randomness for a nonce: {e}")))?;
    Ok(nonce)
}

/// Opens a stream's header with the token: the stream's key and layout.
fn open_header(sealed: &[u8], token: &[u8], url: String) -> Result<(ObjectKey, StreamHeader), RelayError> {
    let envelope = peek(sealed).map_err(|e| RelayError::unsealed(url.clone(), e))?;
    let key = ObjectKey::derive(token, envelope.stream);
    let plain = key.open(Kind::Header, 0, sealed).map_err(|e| match e {
        SealError::Unauthentic => RelayError::WrongToken { url: url.clone() },
        e => RelayError::unsealed(url.clone(), e),
    })?;
    let header = StreamHeader::decode(&plain).map_err(|source| RelayError::Malformed { url, source })?;
    Ok((key, header))
}

/// Opens data object `index` and parses what it holds.
fn open_data(
    key: &ObjectKey,
    layout: &Layout,
    index: u64,
    sealed: Bytes,
    url: String,
) -> Result<ObjectBody, RelayError> {
    let plain = key.open(Kind::Data, index, &sealed).map_err(|e| RelayError::unsealed(url.clone(), e))?;
    ObjectBody::decode(Bytes::from(plain), layout).map_err(|source| RelayError::Malformed { url, source })
}

#[cfg(test)]
mod tests {
    use std::io::{Cursor, Read, Write};
    use std::sync::{Arc, Mutex};

    use pareco_compress::Compression;
    use pareco_stream::relay::naming::Names;

    use super::*;

    /// An input that fails after `fail_at` bytes once the gate opens, as a
    /// dying sender's input does.
    struct FailingAfter(Cursor<Vec<u8>>, u64, Arc<std::sync::atomic::AtomicBool>);

    impl Read for FailingAfter {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0.position() >= self.1 {
                while !self.2.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                return Err(std::io::Error::other("the input broke"));
            }
            let room = (self.1 - self.0.position()).min(buf.len() as u64) as usize;
            self.0.read(&mut buf[..room])
        }
    }

    #[derive(Clone, Default)]
    struct Output(Arc<Mutex<Vec<u8>>>);

    impl Write for Output {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn options() -> RelayOptions {
        RelayOptions { token: b"token".to_vec(), requests: 4, buffer: 1 << 20, retry_for: Duration::from_secs(5) }
    }

    fn plan(resume: bool) -> SendPlan {
        SendPlan { layout: Layout::new(16 << 10).unwrap(), compression: Compression::Auto, resume }
    }

    fn content() -> Vec<u8> {
        let text = b"segment vacuum checkpoint page 0042 ".repeat(4000);
        let noise: Vec<u8> = (0..150_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        [text, noise].concat()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_stream_through_a_directory_survives_a_dead_sender_and_a_skipping_receiver() {
        let tmp = tempfile::tempdir().unwrap();
        let bucket = Arc::new(DirBucket::new(tmp.path()));
        let (names, data) = (Names::new("s"), content());
        let stats = || Arc::new(RelayStats::default());

        let gate = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let broken = FailingAfter(Cursor::new(data.clone()), 100_000, gate.clone());
        let dying = tokio::spawn(send(broken, bucket.clone(), names.clone(), plan(false), options(), stats()));
        let data_prefix = names.data_prefix();
        while names.contiguous(bucket.list(&data_prefix, None).await.unwrap().iter().map(String::as_str)) < 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        gate.store(true, Ordering::Relaxed);
        let died = dying.await.unwrap();
        assert!(matches!(died, Err(RelayError::Io(_))), "{died:?}");
        let again =
            send(Cursor::new(data.clone()), bucket.clone(), names.clone(), plan(false), options(), stats()).await;
        assert!(matches!(again, Err(RelayError::CannotStart(e)) if matches!(*e, RelayError::InUse { .. })));
        let other =
            send(Cursor::new(vec![1; data.len()]), bucket.clone(), names.clone(), plan(true), options(), stats());
        assert!(matches!(other.await, Err(RelayError::InputChanged { .. })));

        let sent = send(Cursor::new(data.clone()), bucket.clone(), names.clone(), plan(true), options(), stats());
        let sent = sent.await.unwrap();
        assert!(sent.skipped_bytes >= 16 << 10, "{sent:?}");
        assert_eq!(sent.digest, blake3::hash(&data).to_hex().as_str());

        let whole = Output::default();
        let keep = ReceivePlan { skip: 0, keep: true };
        let got = receive(whole.clone(), bucket.clone(), names.clone(), keep, options(), stats()).await.unwrap();
        assert_eq!(*whole.0.lock().unwrap(), data);
        assert_eq!(
            (got.objects_got, got.objects_removed),
            (Layout::new(16 << 10).unwrap().objects_for(data.len() as u64), 0)
        );

        let rest = Output::default();
        let skip = ReceivePlan { skip: 50_001, keep: false };
        let got = receive(rest.clone(), bucket.clone(), names.clone(), skip, options(), stats()).await.unwrap();
        assert_eq!(*rest.0.lock().unwrap(), data[50_001..]);
        assert!(got.objects_removed > 0);
        assert!(bucket.list("s/", None).await.unwrap().is_empty(), "the verified stream's objects are removed");
    }

    /// A bucket whose first create is made but its answer lost (the
    /// connection cut on its way back), as a flaky link does.
    struct FirstAnswerLost(DirBucket, std::sync::atomic::AtomicBool);

    impl Bucket for FirstAnswerLost {
        async fn put(&self, name: &str, body: Bytes) -> Result<(), StoreError> {
            self.0.put(name, body).await
        }
        async fn create(&self, name: &str, body: Bytes) -> Result<bool, StoreError> {
            let created = self.0.create(name, body).await?;
            match self.1.swap(true, Ordering::Relaxed) {
                false => Err(StoreError::Transient("Connection reset by peer".into())),
                true => Ok(created),
            }
        }
        async fn get(&self, name: &str, limit: u64, retried: &AtomicU64) -> Result<Option<Bytes>, StoreError> {
            self.0.get(name, limit, retried).await
        }
        async fn list(&self, prefix: &str, limit: Option<usize>) -> Result<Vec<String>, StoreError> {
            self.0.list(prefix, limit).await
        }
        async fn delete(&self, names: Vec<String>) -> Result<(), StoreError> {
            self.0.delete(names).await
        }
        fn url(&self, name: &str) -> String {
            self.0.url(name)
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_sender_whose_claim_was_made_but_not_answered_finds_its_own_header() {
        let tmp = tempfile::tempdir().unwrap();
        let bucket = Arc::new(FirstAnswerLost(DirBucket::new(tmp.path()), Default::default()));
        let (names, data, stats) = (Names::new("s"), content(), Arc::new(RelayStats::default()));
        let sent =
            send(Cursor::new(data.clone()), bucket.clone(), names.clone(), plan(false), options(), stats.clone());
        sent.await.unwrap();
        assert_eq!(stats.retries.load(Ordering::Relaxed), 1);
        let out = Output::default();
        let plan = ReceivePlan { skip: 0, keep: false };
        receive(out.clone(), bucket.clone(), names, plan, options(), stats).await.unwrap();
        assert_eq!(*out.0.lock().unwrap(), data);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn empty_streams_and_streams_of_whole_objects_arrive_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let bucket = Arc::new(DirBucket::new(tmp.path()));
        for (prefix, len) in [("empty", 0usize), ("one", 1), ("whole", 3 * (16 << 10)), ("whole+1", 3 * (16 << 10) + 1)]
        {
            let data = content()[..len].to_vec();
            let names = Names::new(prefix);
            let stats = || Arc::new(RelayStats::default());
            let sent = send(Cursor::new(data.clone()), bucket.clone(), names.clone(), plan(false), options(), stats());
            assert_eq!(sent.await.unwrap().objects_put, Layout::new(16 << 10).unwrap().objects_for(len as u64));
            let out = Output::default();
            let plan = ReceivePlan { skip: 0, keep: false };
            receive(out.clone(), bucket.clone(), names, plan, options(), stats()).await.unwrap();
            assert_eq!(*out.0.lock().unwrap(), data, "{prefix}");
        }
    }
}
