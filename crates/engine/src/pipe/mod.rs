//! The stream pipe: `pareco send` reads its input, cuts it into frames and
//! stripes them over several connections; `pareco recv` puts them back in
//! order and writes its output. Either side may listen or connect.
//!
//! - [`send`]: input → frames (hashed in order) → compressors (all cores) →
//!   connections; every frame is kept until the receiver has written it, so
//!   a lost connection costs only the frames it carried, sent again on the
//!   others; a bounded window (`--buffer`) stops the input when the receiver
//!   or the link falls behind.
//! - [`recv`]: connections → decompressors → reorder buffer → output, each
//!   frame acknowledged once written; at the end the count, length and
//!   BLAKE3 of the whole stream must match the sender's.
//! - this module: the connections themselves ([`Links`]): opened by dialling
//!   (and re-dialling with backoff when one drops) or by accepting, each
//!   introduced with a `Join` naming the stream, so that a reconnecting
//!   sender resumes the stream and a restarted one is refused. With `-j
//!   auto` the connecting side sizes its links as the controller says
//!   ([`crate::tuning`]): the sender retires a link once its frames are
//!   acknowledged; a receiver simply closes it (the sender sends again what
//!   was in flight there).

mod recv;
mod send;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pareco_compress::Compression;
use pareco_net::channel::{self, Channel, Security, TokenKey};
use pareco_net::{NetError, ServerConfig, ServerStats, WireCounters};
use pareco_plan::human_size;
use pareco_proto::Frame;
use pareco_proto::stream::{StreamId, StreamMessage, StreamRole};
use pareco_stream::outstanding::LinkId;
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::tuning::{Auto, Tuning};

pub use recv::receive;
pub use send::send;

/// How the two ends find each other.
pub enum Rendezvous {
    /// Connect to `addr` with this many connections.
    Connect {
        /// `host:port`.
        addr: String,
        /// Connections to keep open.
        connections: usize,
        /// With `-j auto`: how the count moves (starting from `connections`).
        tuning: Option<Tuning>,
    },
    /// Accept connections on a listener.
    Listen(TcpListener),
}

/// Options of either end.
#[derive(Debug, Clone)]
pub struct PipeOptions {
    /// Key derived from the shared token.
    pub key: TokenKey,
    /// Encrypted or not.
    pub security: Security,
    /// Bytes of frames in flight (sender) or held out of order (receiver).
    pub buffer: usize,
    /// How long to wait for a lost peer to come back before giving up.
    pub retry_for: Duration,
    /// Time allowed for a connection's handshake.
    pub connect_timeout: Duration,
}

/// Why a stream failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipeError {
    /// No connection could be made or kept.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The peer was gone for longer than `--retry-for`.
    #[error("the peer has been gone for {} s; giving up", .0.as_secs())]
    GaveUp(Duration),
    /// Connections kept being lost and no frame got through for longer
    /// than `--retry-for`.
    #[error(
        "no frame got through for {} s while {lost} connections were lost: the link cuts every connection \
         before a frame of {} gets across; giving up",
        .waited.as_secs(),
        human_size(pareco_stream::FRAME_SIZE as u64)
    )]
    NoProgress {
        /// How long nothing got through.
        waited: Duration,
        /// Connections lost meanwhile.
        lost: u64,
    },
    /// The peer said the stream cannot go on.
    #[error("the peer aborted the stream: {0}")]
    Aborted(String),
    /// The peer broke the stream protocol.
    #[error("protocol violation by the peer: {0}")]
    Protocol(String),
    /// Reading the input or writing the output failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The data arrived but is not what was sent.
    #[error("{0}")]
    Corrupt(String),
}

/// Counters of a stream, for progress and the final report.
#[derive(Debug, Default)]
pub struct PipeStats {
    /// Bytes of the stream (as read by the sender, as written by the receiver).
    pub bytes: AtomicU64,
    /// Bytes of the stream the receiver acknowledged (sender only).
    pub acked: AtomicU64,
    /// Frames of the stream.
    pub frames: AtomicU64,
    /// Bytes of frame payloads sent or received (after compression), resends included.
    pub payload_bytes: AtomicU64,
    /// Frames sent again after their connection was lost.
    pub resent_frames: AtomicU64,
    /// Connections opened after the first ones (reconnects or late joiners).
    pub reconnects: AtomicU64,
    /// Frames sent (or received) compressed.
    pub compressed_frames: AtomicU64,
    /// The most connections open at once.
    pub connections: AtomicU64,
}

/// What a finished stream reports (`--stats-json`).
#[derive(Debug, Clone, Serialize)]
pub struct PipeSummary {
    /// Bytes of the stream.
    pub bytes: u64,
    /// Frames.
    pub frames: u64,
    /// Frame payload bytes on the wire (after compression), resends included.
    pub payload_bytes: u64,
    /// `bytes / payload_bytes`.
    pub compression_ratio: f64,
    /// Frames sent compressed.
    pub compressed_frames: u64,
    /// Frames sent again after a connection was lost.
    pub resent_frames: u64,
    /// Connections opened after the first ones.
    pub reconnects: u64,
    /// The most connections open at once.
    pub connections: u64,
    /// Everything on the wire, both directions.
    pub wire_bytes: u64,
    /// BLAKE3 of the whole stream, hex.
    pub digest: String,
    /// Wall-clock duration in seconds.
    pub duration_s: f64,
}

impl crate::frames::InputCounter for PipeStats {
    fn frame_read(&self, len: usize) {
        self.bytes.fetch_add(len as u64, Ordering::Relaxed);
        self.frames.fetch_add(1, Ordering::Relaxed);
    }
}

impl PipeStats {
    fn summary(&self, wire: &WireCounters, digest: &pareco_proto::Digest, started: std::time::Instant) -> PipeSummary {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (bytes, payload) = (load(&self.bytes), load(&self.payload_bytes));
        PipeSummary {
            bytes,
            frames: load(&self.frames),
            payload_bytes: payload,
            compression_ratio: if payload == 0 { 1.0 } else { bytes as f64 / payload as f64 },
            compressed_frames: load(&self.compressed_frames),
            resent_frames: load(&self.resent_frames),
            reconnects: load(&self.reconnects),
            connections: load(&self.connections),
            wire_bytes: load(&wire.sent) + load(&wire.received),
            digest: digest.0.iter().map(|b| format!("{b:02x}")).collect(),
            duration_s: started.elapsed().as_secs_f64(),
        }
    }
}

/// What happens on the links, as the pipe's main loop sees it.
enum LinkEvent {
    /// A new connection joined the stream; the peer's announced window.
    Opened(LinkId, mpsc::UnboundedSender<Frame>, u64),
    /// A stream message arrived on a connection.
    Message(LinkId, StreamMessage),
    /// A connection is gone.
    Closed(LinkId),
    /// Opening connections failed for good.
    Failed(PipeError),
}

/// The connections of one stream, as one end sees them.
struct Links {
    role: StreamRole,
    /// The stream's id: the sender's own; learnt by the receiver from the
    /// first sender it meets.
    stream: Arc<Mutex<Option<StreamId>>>,
    options: PipeOptions,
    counters: Arc<WireCounters>,
    events: mpsc::UnboundedSender<LinkEvent>,
    next_id: Arc<AtomicU64>,
    /// Asks the dialler for one more connection (connecting side only).
    redial: Option<mpsc::UnboundedSender<()>>,
    /// `-j auto` (connecting side only).
    auto: Option<Auto>,
    /// Links whose writer still runs.
    writing: Arc<Writing>,
}

/// How long an end that stops waits for its last words (an `Abort`) to
/// leave: the process exits right after, and what is still queued is lost.
const LAST_WORDS: Duration = Duration::from_secs(2);

/// Counts the links' writer tasks, so that an end can wait for them to
/// drain.
#[derive(Default)]
struct Writing {
    count: AtomicU64,
    idle: tokio::sync::Notify,
}

/// Held by a writer task while it runs.
struct Writer(Arc<Writing>);

impl Writer {
    fn new(writing: &Arc<Writing>) -> Writer {
        writing.count.fetch_add(1, Ordering::AcqRel);
        Writer(writing.clone())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Links {
    /// Starts opening links; events arrive on the returned receiver.
    fn open(
        role: StreamRole,
        stream: Option<StreamId>,
        rendezvous: Rendezvous,
        options: PipeOptions,
    ) -> (Links, mpsc::UnboundedReceiver<LinkEvent>) {
        let (events, rx) = mpsc::unbounded_channel();
        let mut links = Links {
            role,
            stream: Arc::new(Mutex::new(stream)),
            options,
            counters: Arc::new(WireCounters::default()),
            events,
            next_id: Arc::new(AtomicU64::new(0)),
            redial: None,
            auto: None,
            writing: Arc::default(),
        };
        match rendezvous {
            Rendezvous::Connect { addr, connections, tuning } => {
                let (redial, requests) = mpsc::unbounded_channel();
                links.redial = Some(redial);
                links.more(connections.max(1));
                links.auto = tuning.map(Auto::new);
                tokio::spawn(links.clone_parts().dial(addr, requests));
            }
            Rendezvous::Listen(listener) => {
                tokio::spawn(links.clone_parts().listen(listener));
            }
        }
        (links, rx)
    }

    fn clone_parts(&self) -> Links {
        Links {
            role: self.role,
            stream: self.stream.clone(),
            options: self.options.clone(),
            counters: self.counters.clone(),
            events: self.events.clone(),
            next_id: self.next_id.clone(),
            redial: None,
            auto: None,
            writing: self.writing.clone(),
        }
    }

    /// Waits (at most `limit`) until every link's writer has sent what was
    /// queued on it and closed it.
    async fn drained(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            loop {
                let idle = self.writing.idle.notified();
                tokio::pin!(idle);
                idle.as_mut().enable();
                if self.writing.count.load(Ordering::Acquire) == 0 {
                    return;
                }
                idle.await;
            }
        })
        .await;
    }

    /// A link was lost: the connecting side opens another.
    fn replace(&self) {
        self.more(1);
    }

    /// The connecting side opens `n` more links.
    fn more(&self, n: usize) {
        if let Some(redial) = &self.redial {
            for _ in 0..n {
                let _ = redial.send(());
            }
        }
    }

    /// With `-j auto`, what the controller makes of `total` bytes moved so
    /// far: how many links to add (positive) or retire (negative).
    fn retune(&mut self, total: u64, busy: bool) -> isize {
        let Some(auto) = self.auto.as_mut() else { return 0 };
        let before = auto.count();
        auto.observe(total, busy).map_or(0, |count| count as isize - before as isize)
    }

    /// Opens a connection for every request, all at once, each retrying
    /// with backoff.
    async fn dial(self, addr: String, mut requests: mpsc::UnboundedReceiver<()>) {
        let links = Arc::new(self);
        let addr: Arc<str> = addr.into();
        while requests.recv().await.is_some() {
            tokio::spawn(links.clone().dial_until_joined(addr.clone()));
        }
    }

    async fn dial_until_joined(self: Arc<Self>, addr: Arc<str>) {
        let mut backoff = Duration::from_millis(100);
        let started = tokio::time::Instant::now();
        loop {
            let failed = match self.dial_once(&addr).await {
                Ok(()) => return,
                // The other side refused the stream or the token: retrying cannot help.
                Err(e @ (PipeError::Aborted(_) | PipeError::Protocol(_) | PipeError::Net(NetError::Handshake(_)))) => e,
                Err(e) if started.elapsed() >= self.options.retry_for => e,
                Err(e) => {
                    tracing::debug!("connecting to {addr} failed ({e}); retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            let _ = self.events.send(LinkEvent::Failed(failed));
            return;
        }
    }

    async fn dial_once(&self, addr: &str) -> Result<(), PipeError> {
        let connect = async {
            let stream = TcpStream::connect(addr)
                .await
                .map_err(|e| NetError::Connect { addr: addr.to_string(), source: Arc::new(e) })?;
            // Stream frames are compressed one by one already: not the channel.
            let (key, security) = (&self.options.key, self.options.security);
            let mut channel = channel::connect(stream, key, security, Compression::None, self.counters.clone()).await?;
            let window = self.join_as_connector(&mut channel).await?;
            Ok::<_, PipeError>((channel, window))
        };
        let (channel, window) = tokio::time::timeout(self.options.connect_timeout, connect)
            .await
            .map_err(|_| PipeError::Net(NetError::Timeout("connecting")))??;
        self.start(channel, window);
        Ok(())
    }

    /// Accepts connections (authenticated by the server loop) and admits
    /// those that belong to this stream.
    async fn listen(self, listener: TcpListener) {
        let mut config = ServerConfig::new(self.options.key.clone());
        config.security = self.options.security;
        config.compression = Compression::None;
        config.handshake_timeout = self.options.connect_timeout;
        // What connections carry counts in this end's figures, as a
        // connecting end's does.
        config.stats = Arc::new(ServerStats { wire: self.counters.clone(), ..ServerStats::default() });
        let links = Arc::new(self);
        let events = links.events.clone();
        pareco_net::accept(listener, Arc::new(config), events.closed(), move |mut channel, peer, _stop| {
            let links = links.clone();
            async move {
                match links.join_as_listener(&mut channel).await {
                    Ok(window) => links.start(channel, window),
                    Err(e) => tracing::warn!(%peer, "refused a connection: {e}"),
                }
            }
        })
        .await;
    }

    /// What this end announces as its window (a receiver holds none).
    fn window(&self) -> u64 {
        match self.role {
            StreamRole::Sender => self.options.buffer as u64,
            StreamRole::Receiver => 0,
        }
    }

    /// The connecting side introduces itself and learns the stream, and
    /// the peer's window.
    async fn join_as_connector(&self, channel: &mut Channel) -> Result<u64, PipeError> {
        let known = *self.stream.lock().expect("stream lock");
        let join = StreamMessage::Join { stream: known.unwrap_or_default(), role: self.role, window: self.window() };
        channel.writer.write(&Frame::Stream(join)).await?;
        channel.writer.flush().await?;
        match channel.reader.next().await? {
            Some(Frame::Stream(StreamMessage::Joined { stream, window })) => {
                let mut known = self.stream.lock().expect("stream lock");
                match *known {
                    Some(id) if id != stream => Err(PipeError::Aborted(
                        "the sender restarted: this is another stream, the one in progress cannot resume".into(),
                    )),
                    _ => {
                        *known = Some(stream);
                        Ok(window)
                    }
                }
            }
            Some(Frame::Stream(StreamMessage::Abort { reason })) => Err(PipeError::Aborted(reason)),
            None => Err(NetError::Closed.into()),
            Some(_) => Err(PipeError::Protocol("expected Joined".into())),
        }
    }

    /// The listening side checks a newcomer and answers; the newcomer's
    /// window.
    async fn join_as_listener(&self, channel: &mut Channel) -> Result<u64, PipeError> {
        let Some(Frame::Stream(StreamMessage::Join { stream, role, window })) = channel.reader.next().await? else {
            return Err(PipeError::Protocol("expected Join".into()));
        };
        let verdict = {
            let mut known = self.stream.lock().expect("stream lock");
            if role == self.role {
                Err(format!("both ends are {}s", if role == StreamRole::Sender { "sender" } else { "receiver" }))
            } else {
                match (*known, self.role) {
                    // A receiver adopts the first sender's stream.
                    (None, StreamRole::Receiver) => {
                        *known = Some(stream);
                        Ok(stream)
                    }
                    (Some(id), StreamRole::Receiver) if id == stream => Ok(id),
                    (Some(id), StreamRole::Sender) if stream == StreamId::default() || stream == id => Ok(id),
                    _ => Err("another stream is in progress here".to_string()),
                }
            }
        };
        let reply = match &verdict {
            Ok(stream) => StreamMessage::Joined { stream: *stream, window: self.window() },
            Err(reason) => StreamMessage::Abort { reason: reason.clone() },
        };
        channel.writer.write(&Frame::Stream(reply)).await?;
        channel.writer.flush().await?;
        verdict.map(|_| window).map_err(PipeError::Aborted)
    }

    /// Runs a joined connection: a task writing what the pipe queues, a task
    /// reading what the peer sends.
    fn start(&self, channel: Channel, peer_window: u64) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::unbounded_channel::<Frame>();
        let Channel { mut reader, mut writer, .. } = channel;
        let events = self.events.clone();
        if events.send(LinkEvent::Opened(id, tx, peer_window)).is_err() {
            return;
        }
        let (closed, writing) = (events.clone(), Writer::new(&self.writing));
        tokio::spawn(async move {
            let _writing = writing;
            if let Err(e) = pareco_net::framed::pump(&mut writer, &mut rx).await {
                tracing::debug!("link {id}: writing failed: {e}");
                let _ = closed.send(LinkEvent::Closed(id));
            }
        });
        tokio::spawn(async move {
            loop {
                match reader.next().await {
                    Ok(Some(Frame::Stream(message))) => {
                        if events.send(LinkEvent::Message(id, message)).is_err() {
                            return;
                        }
                    }
                    Ok(Some(_)) => {
                        tracing::warn!("link {id}: a non-stream frame on a stream connection");
                        break;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!("link {id}: {e}");
                        break;
                    }
                }
            }
            let _ = events.send(LinkEvent::Closed(id));
        });
    }
}

/// Tells the peer why this end stops (unless the peer said so first), and
/// closes the links, waiting a little for the message to go out: else the
/// process may exit first, and the peer, seeing only connections drop,
/// waits `--retry-for` for this end to come back.
async fn abort(links: &Links, table: &mut LinkTable, e: &PipeError) {
    if !matches!(e, PipeError::Aborted(_)) {
        table.broadcast(&StreamMessage::Abort { reason: e.to_string() });
    }
    table.close_all();
    links.drained(LAST_WORDS).await;
}

/// The open links of one end, by id.
struct LinkTable {
    links: HashMap<LinkId, mpsc::UnboundedSender<Frame>>,
    /// When the last link closed (`None` while some are open).
    empty_since: Option<tokio::time::Instant>,
    /// Whether a link was ever lost: later ones are reconnections.
    lost_one: bool,
    stats: Arc<PipeStats>,
}

impl LinkTable {
    fn new(stats: Arc<PipeStats>) -> Self {
        LinkTable { links: HashMap::new(), empty_since: None, lost_one: false, stats }
    }

    fn opened(&mut self, id: LinkId, tx: mpsc::UnboundedSender<Frame>) {
        self.links.insert(id, tx);
        self.stats.connections.fetch_max(self.links.len() as u64, Ordering::Relaxed);
        self.empty_since = None;
        if self.lost_one {
            self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Forgets a link; whether it was known.
    fn closed(&mut self, id: LinkId) -> bool {
        let known = self.links.remove(&id).is_some();
        self.lost_one |= known;
        if self.links.is_empty() && self.empty_since.is_none() {
            self.empty_since = Some(tokio::time::Instant::now());
        }
        known
    }

    /// Closes a link this end no longer wants (not a loss).
    fn retire(&mut self, id: LinkId) {
        self.links.remove(&id);
    }

    fn send(&self, id: LinkId, message: StreamMessage) {
        if let Some(tx) = self.links.get(&id) {
            let _ = tx.send(Frame::Stream(message));
        }
    }

    fn broadcast(&self, message: &StreamMessage) {
        for tx in self.links.values() {
            let _ = tx.send(Frame::Stream(message.clone()));
        }
    }

    /// Fails once the peer has been gone for `limit` (after it first came).
    fn check_alive(&self, limit: Duration) -> Result<(), PipeError> {
        match self.empty_since {
            Some(since) if since.elapsed() >= limit => Err(PipeError::GaveUp(limit)),
            _ => Ok(()),
        }
    }

    /// Closes every link (its writer flushes and sends EOF).
    fn close_all(&mut self) {
        self.links.clear();
    }
}
