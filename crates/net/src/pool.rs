//! The client side: a pool of authenticated connections to one server, each
//! carrying many requests at once.
//!
//! Every request gets an id and a waiter; a writer task per connection sends
//! frames as they come (coalescing small ones), a reader task matches
//! responses to waiters. A request goes to the connection with the fewest
//! bytes outstanding, so that on a link where each connection is capped, all
//! of them stay busy and round trips overlap instead of adding up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pareco_proto::handshake::Session;
use pareco_proto::{Entry, Frame, Request, Response};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};

use crate::channel::{self, Channel, Security, TokenKey};
use crate::framed::{self, FrameReader, FrameWriter};
use crate::{NetError, WireCounters};

/// Most entries accepted in one (multi-page) directory listing.
const MAX_LISTING_ENTRIES: usize = 16 << 20;

/// How to connect.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// Number of connections.
    pub connections: usize,
    /// Limit for TCP connect plus handshake, per connection.
    pub connect_timeout: Duration,
    /// Encrypted (the default) or, only when the server agrees, plaintext.
    pub security: Security,
}

struct Waiter {
    reply: oneshot::Sender<Result<Response, NetError>>,
    /// Entries of the listing pages received so far.
    pages: Vec<Entry>,
}

#[derive(Default)]
struct Shared {
    waiters: Mutex<HashMap<u32, Waiter>>,
    /// Bytes of requests and expected responses not yet answered.
    load: AtomicU64,
    alive: AtomicBool,
}

impl Shared {
    /// Fails every outstanding request (the connection is gone).
    fn fail_all(&self, err: &NetError) {
        self.alive.store(false, Ordering::Release);
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
            Response::Listing { entries, now, more } => {
                if waiter.pages.len() + entries.len() > MAX_LISTING_ENTRIES {
                    return Err(NetError::Protocol("directory listing larger than the limit"));
                }
                waiter.pages.extend(entries);
                if more {
                    return Ok(());
                }
                Response::Listing { entries: std::mem::take(&mut waiter.pages), now, more: false }
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
        Request::WriteFiles { files } => files.iter().map(|f| f.data.len() as u64 + 64).sum(),
        Request::ReadFiles { paths, max_size } => paths.len() as u64 * (*max_size as u64 / 2 + 64),
        Request::HashChunks { len, chunk_size, .. } => len / *chunk_size as u64 * 32,
        Request::HashBlocks { len, block_size, .. } => (*len / *block_size) as u64 * 32,
        Request::ListDir { .. } => 64 << 10,
        _ => 0,
    }
}

impl Connection {
    async fn open(
        addr: std::net::SocketAddr,
        key: TokenKey,
        security: Security,
        counters: Arc<WireCounters>,
    ) -> Result<(Connection, Session), NetError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| NetError::Connect { addr: addr.to_string(), source: Arc::new(e) })?;
        let Channel { reader, writer, session } = channel::connect(stream, &key, security, counters).await?;

        let shared = Arc::new(Shared { alive: AtomicBool::new(true), ..Shared::default() });
        let (frames, rx) = mpsc::channel(1024);
        tokio::spawn(write_loop(writer, rx, shared.clone()));
        tokio::spawn(read_loop(reader, shared.clone()));
        Ok((Connection { frames, shared, next_id: AtomicU32::new(0) }, session))
    }

    fn alive(&self) -> bool {
        self.shared.alive.load(Ordering::Acquire)
    }

    async fn call(&self, request: Request) -> Result<Response, NetError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        self.shared.waiters.lock().expect("waiters lock").insert(id, Waiter { reply, pages: Vec::new() });
        let cost = cost(&request);
        self.shared.load.fetch_add(cost, Ordering::Relaxed);
        let _load = LoadGuard { shared: &self.shared, cost };
        if self.frames.send(Frame::Request { id, request }).await.is_err() {
            self.shared.waiters.lock().expect("waiters lock").remove(&id);
            return Err(NetError::Closed);
        }
        answer.await.unwrap_or(Err(NetError::Closed))
    }
}

struct LoadGuard<'a> {
    shared: &'a Shared,
    cost: u64,
}

impl Drop for LoadGuard<'_> {
    fn drop(&mut self) {
        self.shared.load.fetch_sub(self.cost, Ordering::Relaxed);
    }
}

async fn write_loop(mut writer: FrameWriter<OwnedWriteHalf>, mut rx: mpsc::Receiver<Frame>, shared: Arc<Shared>) {
    // Ends when the pool is dropped: the server then sees EOF.
    if let Err(e) = framed::pump(&mut writer, &mut rx).await {
        shared.fail_all(&e);
    }
}

async fn read_loop(mut reader: FrameReader<OwnedReadHalf>, shared: Arc<Shared>) {
    let err = loop {
        match reader.next().await {
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

/// N connections to one server.
pub struct Pool {
    connections: Vec<Connection>,
    counters: Arc<WireCounters>,
    session: Session,
}

impl Pool {
    /// Opens `options.connections` connections to `addr` in parallel. Fails
    /// if none can be opened; works with fewer if only some can.
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
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..options.connections.max(1) {
            let (key, counters, limit, security) =
                (key.clone(), counters.clone(), options.connect_timeout, options.security);
            tasks.spawn(async move {
                tokio::time::timeout(limit, Connection::open(target, key, security, counters))
                    .await
                    .unwrap_or(Err(NetError::Timeout("connecting and authenticating")))
            });
        }
        let mut connections = Vec::new();
        let mut first_error = None;
        let mut session = None;
        while let Some(joined) = tasks.join_next().await {
            match joined.expect("connection task panicked") {
                Ok((c, s)) => {
                    connections.push(c);
                    session = Some(s);
                }
                Err(e) => {
                    tracing::debug!("connection to {target} failed: {e}");
                    first_error.get_or_insert(e);
                }
            }
        }
        match session {
            Some(session) => {
                if let Some(e) = first_error {
                    tracing::warn!(
                        "only {} of {} connections to {target} opened: {e}",
                        connections.len(),
                        options.connections
                    );
                }
                Ok(Pool { connections, counters, session })
            }
            None => Err(first_error.expect("at least one connection attempted")),
        }
    }

    /// Sends a request on the least loaded live connection and waits for its
    /// response (all pages of a listing, merged).
    pub async fn call(&self, request: Request) -> Result<Response, NetError> {
        let connection = self
            .connections
            .iter()
            .filter(|c| c.alive())
            .min_by_key(|c| c.shared.load.load(Ordering::Relaxed))
            .ok_or(NetError::Closed)?;
        connection.call(request).await
    }

    /// Number of connections open (alive or not).
    pub fn size(&self) -> usize {
        self.connections.len()
    }

    /// The negotiated session.
    pub fn session(&self) -> Session {
        self.session
    }

    /// Bytes sent and received on all connections so far.
    pub fn wire_bytes(&self) -> (u64, u64) {
        (self.counters.sent.load(Ordering::Relaxed), self.counters.received.load(Ordering::Relaxed))
    }
}
