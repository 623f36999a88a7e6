//! The client side: a pool of authenticated connections to one server, each
//! carrying many requests at once, each replaced when it dies or stalls.
//!
//! Every request gets an id and a waiter; a writer task per connection sends
//! frames as they come (coalescing small ones), a reader task matches
//! responses to waiters. A request goes to the connection with the fewest
//! bytes outstanding, so that on a link where each connection is capped, all
//! of them stay busy and round trips overlap instead of adding up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use pareco_compress::Compression;
use pareco_proto::handshake::Session;
use pareco_proto::{Entry, Frame, Request, Response};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, mpsc, oneshot, watch};

use crate::channel::{self, Channel, Security, TokenKey};
use crate::framed::{self, FrameReader, FrameWriter};
use crate::{NetError, WireCounters};

/// Most entries accepted in one (multi-page) directory listing.
const MAX_LISTING_ENTRIES: usize = 16 << 20;

/// How to connect, and how long to keep trying.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// Number of connections to open first.
    pub connections: usize,
    /// Most connections the pool may be resized to (see [`Pool::resize`]).
    pub max_connections: usize,
    /// Limit for TCP connect plus handshake, per connection.
    pub connect_timeout: Duration,
    /// Encrypted (the default) or, only when the server agrees, plaintext.
    pub security: Security,
    /// Compression of frames in both directions (none turns it off for
    /// both; otherwise the server compresses its own way, where it pays).
    pub compression: Compression,
    /// How long the pool may be without any connection (the server gone,
    /// restarting, or the network down) before requests fail.
    pub retry_for: Duration,
    /// A connection with requests outstanding and nothing received for this
    /// long is considered dead (and replaced).
    pub stall_timeout: Duration,
    /// Told, once, when the first connections keep failing for a while (so
    /// that a user is not left waiting in silence).
    pub notices: Notices,
}

/// Receives a line of text for the user.
type Tell = dyn Fn(&str) + Send + Sync;

/// Where a pool says what it is waiting for: a line of text for the user.
#[derive(Clone, Default)]
pub struct Notices(Option<Arc<Tell>>);

impl Notices {
    /// Notices go to `tell`.
    pub fn to(tell: impl Fn(&str) + Send + Sync + 'static) -> Notices {
        Notices(Some(Arc::new(tell)))
    }

    /// Tells `line`, if anyone listens.
    pub fn tell(&self, line: &str) {
        if let Some(tell) = &self.0 {
            tell(line);
        }
    }
}

impl std::fmt::Debug for Notices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Notices(on)" } else { "Notices(off)" })
    }
}

/// How long the first connections fail before the pool says it is waiting.
const WAITING_NOTICE_AFTER: Duration = Duration::from_secs(1);

impl PoolOptions {
    /// `connections` connections with the default timeouts.
    pub fn new(connections: usize) -> PoolOptions {
        PoolOptions {
            connections,
            max_connections: connections,
            connect_timeout: Duration::from_secs(30),
            security: Security::Encrypted,
            compression: Compression::Auto,
            retry_for: Duration::from_secs(300),
            stall_timeout: Duration::from_secs(60),
            notices: Notices::default(),
        }
    }
}

struct Waiter {
    reply: oneshot::Sender<Result<Response, NetError>>,
    /// When the request was given to the connection.
    since: tokio::time::Instant,
    /// Entries of the listing pages received so far.
    pages: Vec<Entry>,
}

struct Shared {
    waiters: Mutex<HashMap<u32, Waiter>>,
    /// Bytes of requests and expected responses not yet answered.
    load: AtomicU64,
    /// What this connection carries per second, lately (see `room`).
    pace: Mutex<Pace>,
    /// Turns false once, when the connection is gone.
    alive: watch::Sender<bool>,
}

/// A connection's recent throughput: the work answered in the last whole
/// second, and in the current one.
struct Pace {
    since: Instant,
    current: u64,
    last: u64,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            waiters: Mutex::default(),
            load: AtomicU64::new(0),
            pace: Mutex::new(Pace { since: Instant::now(), current: 0, last: 0 }),
            alive: watch::Sender::new(true),
        }
    }

    /// Counts `cost` of answered work.
    fn answered(&self, cost: u64) {
        let mut pace = self.pace.lock().expect("pace lock");
        if pace.since.elapsed() >= Duration::from_secs(1) {
            pace.last = std::mem::take(&mut pace.current);
            pace.since = Instant::now();
        }
        pace.current += cost;
    }

    /// Bytes that may wait on this connection: about [`QUEUE_TIME`] of what
    /// it carries (at least [`MIN_LOAD`]), so that a slow connection does
    /// not hoard work a new or faster one could carry.
    fn room(&self) -> u64 {
        let pace = self.pace.lock().expect("pace lock");
        let rate = pace.last.max(pace.current);
        (rate as f64 * QUEUE_TIME.as_secs_f64()) as u64
    }

    /// Fails every outstanding request (the connection is gone).
    fn fail_all(&self, err: &NetError) {
        self.alive.send_replace(false);
        let waiters = std::mem::take(&mut *self.waiters.lock().expect("waiters lock"));
        for (_, w) in waiters {
            let _ = w.reply.send(Err(err.clone()));
        }
    }

    fn deliver(&self, id: u32, response: Response) -> Result<(), NetError> {
        let mut waiters = self.waiters.lock().expect("waiters lock");
        let Some(waiter) = waiters.get_mut(&id) else {
            return Err(NetError::Protocol("response to an unknown request"));
        };
        let response = match response {
            Response::Listing { entries, partials, now, more } => {
                if waiter.pages.len() + entries.len() + partials.len() > MAX_LISTING_ENTRIES {
                    return Err(NetError::Protocol("directory listing larger than the limit"));
                }
                waiter.pages.extend(entries);
                if more {
                    return Ok(());
                }
                Response::Listing { entries: std::mem::take(&mut waiter.pages), partials, now, more: false }
            }
            other => other,
        };
        let waiter = waiters.remove(&id).expect("waiter present");
        let _ = waiter.reply.send(Ok(response));
        Ok(())
    }
}

/// One authenticated connection carrying concurrent requests.
struct Connection {
    frames: mpsc::Sender<Frame>,
    shared: Arc<Shared>,
    next_id: AtomicU32,
}

/// Bytes a request will put on the wire in both directions, roughly: what
/// load balancing weighs.
fn cost(request: &Request) -> u64 {
    const BASE: u64 = 128;
    BASE + match request {
        Request::WriteData { data, .. } => data.len() as u64,
        Request::ReadData { len, .. } => *len as u64,
        Request::ApplyPatch { blocks, .. } => blocks.iter().map(|b| b.data.len() as u64).sum(),
        Request::ReadPatch { dest_blocks, .. } => dest_blocks.len() as u64 * 32 + (64 << 10),
        Request::WriteFiles { files, .. } => files.iter().map(|f| f.data.len() as u64 + 64).sum(),
        Request::ReadFiles { paths, max_size } => paths.len() as u64 * (*max_size as u64 / 2 + 64),
        Request::HashChunks { len, chunk_size, .. } => len / *chunk_size as u64 * 32,
        Request::HashBlocks { len, block_size, .. } => (*len / *block_size) as u64 * 32,
        Request::Pieces { len, avg, .. } => len / *avg as u64 * 12,
        Request::ReadRanges { ranges, .. } => ranges.iter().map(|r| r.end - r.start).sum(),
        Request::WriteRanges { data, .. } => data.len() as u64,
        Request::ListDir { .. } => 64 << 10,
        _ => 0,
    }
}

impl Connection {
    /// A connection that is already dead (a slot waiting for its first).
    fn dead() -> Connection {
        let shared = Arc::new(Shared::new());
        shared.alive.send_replace(false);
        let (frames, _) = mpsc::channel(1);
        Connection { frames, shared, next_id: AtomicU32::new(0) }
    }

    /// Connects and authenticates, within the connect timeout.
    async fn open(
        addr: std::net::SocketAddr,
        key: &TokenKey,
        options: &PoolOptions,
        counters: Arc<WireCounters>,
    ) -> Result<(Connection, Session), NetError> {
        let open = async {
            let stream = TcpStream::connect(addr)
                .await
                .map_err(|e| NetError::Connect { addr: addr.to_string(), source: Arc::new(e) })?;
            channel::connect(stream, key, options.security, options.compression, counters).await
        };
        let Channel { reader, writer, session } = tokio::time::timeout(options.connect_timeout, open)
            .await
            .unwrap_or(Err(NetError::Timeout("connecting and authenticating")))?;
        let shared = Arc::new(Shared::new());
        let (frames, rx) = mpsc::channel(1024);
        tokio::spawn(write_loop(writer, rx, shared.clone()));
        tokio::spawn(read_loop(reader, shared.clone(), options.stall_timeout));
        Ok((Connection { frames, shared, next_id: AtomicU32::new(0) }, session))
    }

    fn alive(&self) -> bool {
        *self.shared.alive.borrow()
    }

    async fn call(&self, request: Request) -> Result<Response, NetError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        self.shared
            .waiters
            .lock()
            .expect("waiters lock")
            .insert(id, Waiter { reply, since: tokio::time::Instant::now(), pages: Vec::new() });
        // Dead since it was picked: its waiters were failed already, and
        // nothing would ever answer or fail this one (the writer may still
        // take frames into a socket the peer closed).
        if !self.alive() || self.frames.send(Frame::Request { id, request }).await.is_err() {
            self.shared.waiters.lock().expect("waiters lock").remove(&id);
            return Err(NetError::Closed);
        }
        answer.await.unwrap_or(Err(NetError::Closed))
    }
}

/// A request's share of its connection's load, given back when it ends;
/// a request waiting for room is then woken.
struct LoadGuard<'a> {
    shared: &'a Shared,
    cost: u64,
    drained: &'a Notify,
}

impl Drop for LoadGuard<'_> {
    fn drop(&mut self) {
        self.shared.load.fetch_sub(self.cost, Ordering::Relaxed);
        self.shared.answered(self.cost);
        self.drained.notify_one();
    }
}

/// Work waiting on one connection, in seconds of what it carries: enough to
/// keep it busy, not so much that new connections (`-j auto` growing the
/// pool, a replacement) or faster ones find nothing left to carry.
const QUEUE_TIME: Duration = Duration::from_secs(2);

/// Work that may always wait on a connection (a new one proves its pace).
const MIN_LOAD: u64 = 512 << 10;

async fn write_loop(mut writer: FrameWriter<OwnedWriteHalf>, mut rx: mpsc::Receiver<Frame>, shared: Arc<Shared>) {
    // Ends when the pool is dropped: the server then sees EOF.
    if let Err(e) = framed::pump(&mut writer, &mut rx).await {
        shared.fail_all(&e);
    }
}

/// Reads answers until the connection fails. It is taken for dead once
/// nothing has come for `stall` while a request has waited that long (a
/// request given to a connection quiet for a while gets its own `stall`; a
/// server busy with a long one says so with keepalive frames).
async fn read_loop(mut reader: FrameReader<OwnedReadHalf>, shared: Arc<Shared>, stall: Duration) {
    let mut deadline = tokio::time::Instant::now() + stall;
    let err = loop {
        // (`next` keeps what it has read when the wait is cut short.)
        let next = match tokio::time::timeout_at(deadline, reader.next()).await {
            Ok(next) => next,
            Err(_) => {
                let oldest = shared.waiters.lock().expect("waiters lock").values().map(|w| w.since).min();
                match oldest {
                    Some(since) if since.elapsed() >= stall => {
                        break NetError::Timeout("waiting for the server (no progress)");
                    }
                    Some(since) => deadline = since + stall,
                    None => deadline = tokio::time::Instant::now() + stall,
                }
                continue;
            }
        };
        deadline = tokio::time::Instant::now() + stall;
        match next {
            Ok(Some(Frame::Working)) => {}
            Ok(Some(Frame::Response { id, response })) => {
                if let Err(e) = shared.deliver(id, response) {
                    break e;
                }
            }
            Ok(Some(_)) => break NetError::Protocol("unexpected frame type"),
            Ok(None) => break NetError::Closed,
            Err(e) => break e,
        }
    };
    shared.fail_all(&err);
}

/// N connections to one server, each replaced (with backoff) when it dies;
/// a request whose connection dies under it is sent again on another.
/// Every request is idempotent, so sending one twice is harmless.
pub struct Pool {
    inner: Arc<Inner>,
    session: Session,
}

struct Inner {
    target: std::net::SocketAddr,
    key: TokenKey,
    options: PoolOptions,
    /// Room for the most connections; the first `active` are in use.
    slots: Vec<Mutex<Arc<Connection>>>,
    /// How many slots are in use (their supervisors keep them connected;
    /// the others close once idle).
    active: watch::Sender<usize>,
    /// Connections open now, and the most open at once.
    open: AtomicU64,
    peak: AtomicU64,
    counters: Arc<WireCounters>,
    /// A slot got a new connection.
    changed: Notify,
    /// A connection's load went down (room for a request that waits).
    drained: Notify,
    /// When the last live connection died (`None` while one lives).
    down_since: Mutex<Option<Instant>>,
    /// Connections opened to replace dead ones.
    reconnects: AtomicU64,
    /// Requests sent again after their connection died.
    retries: AtomicU64,
    /// What the answered requests moved (their cost, see `cost`): the
    /// pool's throughput, counted as work completes.
    completed: AtomicU64,
}

impl Inner {
    fn pick(&self) -> Option<Arc<Connection>> {
        let active = *self.active.borrow();
        self.slots[..active.min(self.slots.len())]
            .iter()
            .map(|slot| slot.lock().expect("slot lock").clone())
            .filter(|c| c.alive())
            .min_by_key(|c| c.shared.load.load(Ordering::Relaxed))
    }

    /// Notes that a connection died; starts the clock if none is left.
    fn lost(&self) {
        if self.pick().is_none() {
            self.down_since.lock().expect("down lock").get_or_insert_with(Instant::now);
        }
    }
}

impl Inner {
    fn opened(&self) {
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(open, Ordering::Relaxed);
    }

    fn closed(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Keeps slot `i` connected while it is in use: waits for its connection to
/// die, then opens another, with exponential backoff; once the slot is no
/// longer in use (the pool shrank), closes its connection as soon as no
/// request is waiting on it.
async fn supervise(pool: Weak<Inner>, i: usize, mut active: watch::Receiver<usize>, mut opening: Option<Opening>) {
    // Whether the slot's last connection died (its next one is a reconnect).
    let mut lost = false;
    loop {
        if active.wait_for(|&n| i < n).await.map(drop).is_err() {
            return;
        }
        let Some(inner) = pool.upgrade() else { return };
        let connection = inner.slots[i].lock().expect("slot lock").clone();
        drop(inner);
        if connection.alive() {
            let mut alive = connection.shared.alive.subscribe();
            let died = async { alive.wait_for(|alive| !alive).await.map(drop) };
            let unwanted = async { active.wait_for(|&n| i >= n).await.map(drop) };
            let retired = tokio::select! {
                _ = died => false,
                unwanted = unwanted => match unwanted {
                    Ok(()) => true,
                    Err(_) => return,
                },
            };
            if retired {
                retire(&pool, i, &connection).await;
                lost = false;
                continue;
            }
            lost = true;
            if let Some(inner) = pool.upgrade() {
                inner.closed();
            }
        }
        let mut backoff = Duration::from_millis(100);
        loop {
            if *active.borrow() <= i {
                // (No longer wanted: an attempt started for it is given up.)
                if let Some(attempt) = opening.take() {
                    attempt.abort();
                }
                break;
            }
            let Some(inner) = pool.upgrade() else { return };
            if lost {
                inner.lost();
            }
            // (The first attempt may be one the pool started before it was ready.)
            let attempt = match opening.take() {
                Some(handle) => handle.await.expect("connection task panicked"),
                None => Connection::open(inner.target, &inner.key, &inner.options, inner.counters.clone()).await,
            };
            match attempt {
                Ok((connection, _)) => {
                    *inner.slots[i].lock().expect("slot lock") = Arc::new(connection);
                    *inner.down_since.lock().expect("down lock") = None;
                    inner.opened();
                    if lost {
                        inner.reconnects.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!("connection {i} to {} open again", inner.target);
                    }
                    inner.changed.notify_waiters();
                    inner.drained.notify_waiters();
                    break;
                }
                Err(e) => {
                    tracing::debug!("connecting to {} failed ({e}); next try in {backoff:?}", inner.target);
                    drop(inner);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// A connection's handshake under way.
type Opening = tokio::task::JoinHandle<Result<(Connection, Session), NetError>>;

/// Closes slot `i`'s connection once no request waits on it (new requests
/// already go elsewhere), unless it dies first.
async fn retire(pool: &Weak<Inner>, i: usize, connection: &Arc<Connection>) {
    while connection.alive() && !connection.shared.waiters.lock().expect("waiters lock").is_empty() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let Some(inner) = pool.upgrade() else { return };
    let mut slot = inner.slots[i].lock().expect("slot lock");
    if Arc::ptr_eq(&slot, connection) {
        // Dropping the last handle ends its writer: the server sees EOF.
        *slot = Arc::new(Connection::dead());
        inner.closed();
    }
}

/// Whether an error means the connection is gone (as opposed to the peer
/// misbehaving), so that the request may be sent again elsewhere.
fn lost_connection(e: &NetError) -> bool {
    matches!(e, NetError::Io(_) | NetError::Closed | NetError::Timeout(_))
}

impl Pool {
    /// Opens `options.connections` connections to `addr` in parallel, and is
    /// ready as soon as one is (the others join as their handshakes end: the
    /// first requests need not wait for the slowest of many). Fails if none
    /// can be opened; works with fewer if only some can (the others keep
    /// being retried in the background).
    pub async fn connect(addr: &str, key: TokenKey, options: &PoolOptions) -> Result<Pool, NetError> {
        let target = tokio::net::lookup_host(addr)
            .await
            .map_err(|e| NetError::Connect { addr: addr.to_string(), source: Arc::new(e) })?
            .next()
            .ok_or_else(|| NetError::Connect {
                addr: addr.to_string(),
                source: Arc::new(std::io::Error::new(std::io::ErrorKind::NotFound, "no address found")),
            })?;
        let counters = Arc::new(WireCounters::default());
        // Refused or unreachable: try again (with backoff) for up to the
        // connect timeout or `retry_for`, whichever is shorter (nobody
        // listening yet is the case both bound); an authentication failure
        // is final at once.
        let started = Instant::now();
        let limit = options.connect_timeout.min(options.retry_for);
        let mut backoff = Duration::from_millis(100);
        let mut told = false;
        let (first, session, mut opening) = loop {
            let attempt = limit.saturating_sub(started.elapsed()).max(Duration::from_millis(100));
            let attempt = PoolOptions { connect_timeout: attempt.min(options.connect_timeout), ..options.clone() };
            let (first, opening, first_error) = Self::open_first(target, &key, &attempt, &counters).await;
            match (first, first_error) {
                (Some((first, session)), _) => break (first, session, opening),
                (None, Some(e)) if !lost_connection(&e) && !matches!(e, NetError::Connect { .. }) => return Err(e),
                (None, Some(e)) if started.elapsed() >= limit => return Err(e),
                (None, e) => {
                    tracing::debug!("no connection to {target} yet ({e:?}); retrying in {backoff:?}");
                    if !told && started.elapsed() + backoff >= WAITING_NOTICE_AFTER {
                        told = true;
                        let why = match e {
                            Some(NetError::Connect { source, .. }) => format!(" ({source})"),
                            Some(e) => format!(" ({e})"),
                            None => String::new(),
                        };
                        options.notices.tell(&format!(
                            "waiting for the server at {addr}{why}; trying for up to {} s",
                            limit.as_secs_f64().round()
                        ));
                    }
                    tokio::time::sleep(backoff.min(limit.saturating_sub(started.elapsed()))).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        };
        let wanted = options.connections.max(1);
        // The other slots start with a dead connection: their supervisor
        // takes over the attempt already under way (then keeps trying); the
        // slots beyond the first count wait to be used.
        let mut connections = vec![Arc::new(first)];
        while connections.len() < options.max_connections.max(wanted) {
            connections.push(Arc::new(Connection::dead()));
        }
        let inner = Arc::new(Inner {
            target,
            key,
            options: options.clone(),
            slots: connections.into_iter().map(Mutex::new).collect(),
            active: watch::Sender::new(wanted),
            open: AtomicU64::new(1),
            peak: AtomicU64::new(1),
            counters,
            changed: Notify::new(),
            drained: Notify::new(),
            down_since: Mutex::new(None),
            reconnects: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            completed: AtomicU64::new(0),
        });
        for i in 0..inner.slots.len() {
            let attempt = if i > 0 { opening.pop() } else { None };
            tokio::spawn(supervise(Arc::downgrade(&inner), i, inner.active.subscribe(), attempt));
        }
        Ok(Pool { inner, session })
    }

    /// Starts `options.connections` handshakes in parallel and waits for the
    /// first to succeed: that connection (with its session), the attempts
    /// still under way, and the first error if all failed.
    async fn open_first(
        target: std::net::SocketAddr,
        key: &TokenKey,
        options: &PoolOptions,
        counters: &Arc<WireCounters>,
    ) -> (Option<(Connection, Session)>, Vec<Opening>, Option<NetError>) {
        let mut attempts: Vec<Opening> = (0..options.connections.max(1))
            .map(|_| {
                let (key, counters, options) = (key.clone(), counters.clone(), options.clone());
                tokio::spawn(async move { Connection::open(target, &key, &options, counters).await })
            })
            .collect();
        let mut first_error = None;
        while !attempts.is_empty() {
            let (done, _, rest) = futures_util::future::select_all(attempts).await;
            attempts = rest;
            match done.expect("connection task panicked") {
                Ok(opened) => return (Some(opened), attempts, None),
                Err(e) => {
                    tracing::debug!("connection to {target} failed: {e}");
                    first_error.get_or_insert(e);
                }
            }
        }
        (None, attempts, first_error)
    }

    /// Sends a request on the least loaded live connection and waits for its
    /// response (all pages of a listing, merged). If the connection dies
    /// first, the request goes again on another (waiting, up to
    /// `retry_for`, for one to be back if none is).
    pub async fn call(&self, request: Request) -> Result<Response, NetError> {
        let inner = &self.inner;
        // Retried for as long as `retry_for` from the first loss (requests
        // lost together tend to move together: a fixed number of attempts
        // would fail them on a link that cuts often), with a short pause
        // that grows.
        let mut first_loss: Option<Instant> = None;
        let mut pause = Duration::from_millis(20);
        let work = cost(&request);
        loop {
            let drained = inner.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            let Some(connection) = inner.pick() else {
                self.wait_for_connection().await?;
                continue;
            };
            let load = connection.shared.load.load(Ordering::Relaxed);
            if load > 0 && load + work > connection.shared.room().max(MIN_LOAD) {
                // Every connection has enough waiting on it: wait for room
                // (an answer, or a new connection). The timeout only guards
                // against a wake-up that went to a request that left.
                let _ = tokio::time::timeout(Duration::from_millis(50), drained).await;
                continue;
            }
            connection.shared.load.fetch_add(work, Ordering::Relaxed);
            let guard = LoadGuard { shared: &connection.shared, cost: work, drained: &inner.drained };
            let answer = connection.call(request.clone()).await;
            drop(guard);
            match answer {
                Err(e)
                    if lost_connection(&e)
                        && first_loss.get_or_insert_with(Instant::now).elapsed() < inner.options.retry_for =>
                {
                    inner.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("a connection died under a request ({e}); sending it again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                other => {
                    if other.is_ok() {
                        inner.completed.fetch_add(work, Ordering::Relaxed);
                    }
                    return other;
                }
            }
        }
    }

    /// Bytes the answered requests moved so far, both ways (payloads and a
    /// little for each request): the pool's throughput, counted as work
    /// completes, not as buffers drain.
    pub fn completed(&self) -> u64 {
        self.inner.completed.load(Ordering::Relaxed)
    }

    /// Waits until some connection is alive, or fails once the pool has
    /// been without one for `retry_for`.
    async fn wait_for_connection(&self) -> Result<(), NetError> {
        let inner = &self.inner;
        loop {
            let changed = inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if inner.pick().is_some() {
                return Ok(());
            }
            let since = *inner.down_since.lock().expect("down lock").get_or_insert_with(Instant::now);
            let left = inner.options.retry_for.saturating_sub(since.elapsed());
            if left.is_zero() {
                return Err(NetError::GaveUp(inner.options.retry_for));
            }
            let _ = tokio::time::timeout(left.min(Duration::from_secs(1)), changed).await;
        }
    }

    /// Number of connections in use (alive or being replaced).
    pub fn size(&self) -> usize {
        *self.inner.active.borrow()
    }

    /// Uses `n` connections from now on (between 1 and the maximum): new
    /// ones are opened at once; those beyond `n` take no new requests and
    /// close once their requests are answered.
    pub fn resize(&self, n: usize) {
        let n = n.clamp(1, self.inner.slots.len());
        self.inner.active.send_replace(n);
    }

    /// Connections open now, and the most that were open at once.
    pub fn open_connections(&self) -> (u64, u64) {
        (self.inner.open.load(Ordering::Relaxed), self.inner.peak.load(Ordering::Relaxed))
    }

    /// Bytes of requests (and expected answers) not yet answered, over all
    /// connections: how much the transfer has waiting on the network.
    pub fn outstanding(&self) -> u64 {
        self.inner.slots.iter().map(|s| s.lock().expect("slot lock").shared.load.load(Ordering::Relaxed)).sum()
    }

    /// The negotiated session.
    pub fn session(&self) -> Session {
        self.session
    }

    /// Bytes sent and received on all connections so far.
    pub fn wire_bytes(&self) -> (u64, u64) {
        let c = &self.inner.counters;
        (c.sent.load(Ordering::Relaxed), c.received.load(Ordering::Relaxed))
    }

    /// Connections opened to replace dead ones, and requests sent again.
    pub fn recoveries(&self) -> (u64, u64) {
        (self.inner.reconnects.load(Ordering::Relaxed), self.inner.retries.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use pareco_proto::RelPath;

    use super::*;

    /// A connection that died between being picked and taking a request (its
    /// reader gone and its waiters failed, its writer still taking frames)
    /// fails the request at once: nothing would ever answer it there.
    #[tokio::test]
    async fn a_request_given_to_a_connection_that_just_died_fails_at_once() {
        let shared = Arc::new(Shared::new());
        shared.fail_all(&NetError::Closed);
        let (frames, _writer) = mpsc::channel(8);
        let connection = Connection { frames, shared, next_id: AtomicU32::new(0) };
        let call = connection.call(Request::Stat { path: RelPath::root() });
        let answer = tokio::time::timeout(Duration::from_secs(10), call).await;
        assert!(matches!(answer, Ok(Err(NetError::Closed))), "{answer:?}");
    }
}
