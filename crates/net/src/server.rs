//! The server side: accept, authenticate, answer requests concurrently,
//! drain on shutdown.
//!
//! Defences against peers that misbehave, each bounded so that one client
//! cannot deny service to the others: a cap on open connections and on
//! handshakes in progress (their key exchanges cost CPU), a deadline on the
//! handshake (an idle or slow connection is dropped), a delay before
//! answering a wrong token (slows guessing), a cap on requests in flight per
//! connection (back-pressure instead of memory growth), an idle timeout, and
//! a malformed frame ends that connection only. A connection whose requests
//! take long hears that the server is working (keepalive frames), so that
//! the client does not take it for dead and ask again.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pareco_compress::Compression;
use pareco_proto::handshake::{FEATURE_KEEPALIVE, KEEPALIVE_EVERY};
use pareco_proto::{Frame, Request, Response};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

use crate::WireCounters;
use crate::channel::{self, Channel, Security, TokenKey};
use crate::framed::{self, FrameWriter};

/// Listing pages are cut to about this many bytes.
const LISTING_PAGE: usize = 1 << 20;

/// Answers requests; implemented by the layer that owns the files.
pub trait Service: Send + Sync + 'static {
    /// Answers one request. Failures are answered as [`Response::Failed`].
    fn call(&self, request: Request) -> impl Future<Output = Response> + Send;
}

/// Server limits and secrets.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Key derived from the shared token.
    pub key: TokenKey,
    /// Encrypted (the default), or plaintext for clients that ask for it too.
    pub security: Security,
    /// How frames to clients that accept compressed frames are compressed
    /// (auto: where it pays).
    pub compression: Compression,
    /// A connection must complete the handshake within this time.
    pub handshake_timeout: Duration,
    /// Delay before refusing a client that failed authentication.
    pub auth_failure_delay: Duration,
    /// Connections served at once; more are closed at once.
    pub max_connections: usize,
    /// Handshakes in progress at once; more wait (within their deadline).
    pub max_handshakes: usize,
    /// Requests of one connection being answered at once.
    pub max_requests_per_connection: usize,
    /// How long shutdown waits for connections to finish their requests.
    pub drain_timeout: Duration,
    /// A connection with no request in flight that sends nothing for this
    /// long is closed.
    pub idle_timeout: Duration,
    /// What the server has done so far (for metrics), shared with the caller.
    pub stats: Arc<ServerStats>,
}

/// Counters of a server, over all its connections.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Bytes on the wire, both ways, handshakes included.
    pub wire: Arc<WireCounters>,
    /// Connections accepted (before authentication).
    pub accepted: AtomicU64,
    /// Connections authenticated and being served now.
    pub open: AtomicU64,
    /// Connections whose handshake failed: wrong token, another mode or
    /// version, not a pareco client.
    pub refused: AtomicU64,
    /// Connections that did not finish the handshake in time.
    pub timed_out: AtomicU64,
    /// Connections closed because the server had too many.
    pub over_limit: AtomicU64,
    /// Requests answered.
    pub requests: AtomicU64,
}

/// How often a refused client is logged: once, then a count per window.
const REFUSAL_LOG_WINDOW: Duration = Duration::from_secs(60);

/// Refused handshakes, logged once per client address and cause per
/// window rather than once per connection (a client opens many at once).
#[derive(Debug, Default)]
struct Refusals(Mutex<HashMap<(IpAddr, String), (Instant, u64)>>);

impl Refusals {
    fn log(&self, peer: SocketAddr, why: String) {
        let now = Instant::now();
        let mut seen = self.0.lock().expect("refusals lock");
        seen.retain(|_, (at, _)| now.duration_since(*at) < REFUSAL_LOG_WINDOW * 10);
        let key = (peer.ip(), why);
        match seen.get_mut(&key) {
            Some((at, more)) if now.duration_since(*at) < REFUSAL_LOG_WINDOW => *more += 1,
            previous => {
                let more = previous.map_or(0, |(_, more)| *more);
                let since = if more > 0 { format!(" ({more} more since the last such line)") } else { String::new() };
                tracing::warn!(
                    peer = %peer.ip(),
                    "refused a client: {}{since}; more of the same from this address are counted, \
                     not logged, for {}s",
                    key.1,
                    REFUSAL_LOG_WINDOW.as_secs()
                );
                seen.insert(key, (now, 0));
            }
        }
    }
}

impl ServerConfig {
    /// Defaults suitable for a server on the open internet.
    pub fn new(key: TokenKey) -> ServerConfig {
        ServerConfig {
            key,
            security: Security::Encrypted,
            compression: Compression::Auto,
            handshake_timeout: Duration::from_secs(10),
            auth_failure_delay: Duration::from_secs(1),
            max_connections: 1024,
            max_handshakes: 128,
            max_requests_per_connection: 64,
            drain_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(600),
            stats: Arc::default(),
        }
    }
}

/// Serves `listener` until `shutdown` completes, then stops accepting, lets
/// every connection finish the requests it has started, and returns.
pub async fn serve<S: Service>(
    listener: TcpListener,
    config: ServerConfig,
    service: Arc<S>,
    shutdown: impl Future<Output = ()>,
) {
    let config = Arc::new(config);
    let requests = config.clone();
    accept(listener, config, shutdown, move |channel, peer, stopping| {
        serve_requests(channel, peer, requests.clone(), service.clone(), stopping)
    })
    .await
}

/// Accepts connections until `shutdown` completes, authenticates each
/// (bounded, timed out), and runs `handle` on every open channel with a
/// signal that says when to stop. On shutdown, waits (up to the drain
/// timeout) for the handlers to finish.
pub async fn accept<H, F>(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    shutdown: impl Future<Output = ()>,
    handle: H,
) where
    H: Fn(Channel, SocketAddr, watch::Receiver<bool>) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let handle = Arc::new(handle);
    let refusals = Arc::new(Refusals::default());
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let handshakes = Arc::new(Semaphore::new(config.max_handshakes));
    let (stop, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(ok) => ok,
                    Err(e) => {
                        // Out of file descriptors, typically: back off briefly.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                config.stats.accepted.fetch_add(1, Ordering::Relaxed);
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    config.stats.over_limit.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, "too many connections ({}); closing this one", config.max_connections);
                    continue;
                };
                let (config, handle, handshakes, stopping) = (config.clone(), handle.clone(), handshakes.clone(), stopping.clone());
                let refusals = refusals.clone();
                connections.spawn(async move {
                    if let Some(channel) = authenticate(stream, peer, &config, &handshakes, &refusals).await {
                        config.stats.open.fetch_add(1, Ordering::Relaxed);
                        handle(channel, peer, stopping).await;
                        config.stats.open.fetch_sub(1, Ordering::Relaxed);
                    }
                    drop(slot);
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    let _ = stop.send(true);
    let drained =
        tokio::time::timeout(config.drain_timeout, async { while connections.join_next().await.is_some() {} });
    if drained.await.is_err() {
        tracing::warn!("{} connections did not finish in time; closing them", connections.len());
        connections.shutdown().await;
    }
}

/// The handshake of one connection, within its deadline and a bounded
/// number of concurrent handshakes; failures are logged.
async fn authenticate(
    stream: TcpStream,
    peer: SocketAddr,
    config: &ServerConfig,
    handshakes: &Semaphore,
    refusals: &Refusals,
) -> Option<Channel> {
    let accepting = async {
        let _slot = handshakes.acquire().await.expect("never closed");
        let wire = config.stats.wire.clone();
        channel::accept_counted(
            stream,
            &config.key,
            config.security,
            config.compression,
            config.auth_failure_delay,
            wire,
        )
        .await
    };
    match tokio::time::timeout(config.handshake_timeout, accepting).await {
        Ok(Ok(channel)) => {
            tracing::debug!(%peer, version = channel.session.version, "client authenticated");
            Some(channel)
        }
        Ok(Err(e)) => {
            config.stats.refused.fetch_add(1, Ordering::Relaxed);
            refusals.log(peer, format!("handshake failed: {e}"));
            None
        }
        Err(_) => {
            config.stats.timed_out.fetch_add(1, Ordering::Relaxed);
            refusals.log(peer, format!("handshake timed out after {:?}", config.handshake_timeout));
            None
        }
    }
}

/// Answers the requests of one authenticated connection until it closes,
/// idles out or the server stops.
async fn serve_requests<S: Service>(
    channel: Channel,
    peer: SocketAddr,
    config: Arc<ServerConfig>,
    service: Arc<S>,
    mut stopping: watch::Receiver<bool>,
) {
    let Channel { mut reader, writer, session } = channel;

    let (frames, rx) = mpsc::channel::<Frame>(256);
    let writing = tokio::spawn(write_loop(writer, rx, peer));
    let in_flight = Arc::new(Semaphore::new(config.max_requests_per_connection));
    let busy = || in_flight.available_permits() < config.max_requests_per_connection;
    // Whether an answer went out since the last keepalive tick.
    let answered = Arc::new(AtomicBool::new(false));
    let keepalive = session.features & FEATURE_KEEPALIVE != 0;
    let mut ticks = tokio::time::interval(KEEPALIVE_EVERY);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let idle = tokio::time::sleep(config.idle_timeout);
    tokio::pin!(idle);
    loop {
        let next = tokio::select! {
            next = reader.next() => next,
            _ = stopping.wait_for(|stop| *stop) => break,
            // (Only while requests are in flight: idle connections sleep.)
            _ = ticks.tick(), if keepalive && busy() => {
                if busy() && !answered.swap(false, Ordering::Relaxed) {
                    // A full queue means frames are going out anyway.
                    let _ = frames.try_send(Frame::Working);
                }
                continue;
            }
            () = &mut idle => {
                idle.as_mut().reset(tokio::time::Instant::now() + config.idle_timeout);
                if busy() {
                    continue; // the client waits for answers, not idle
                }
                tracing::info!(%peer, "closing a connection idle for {:?}", config.idle_timeout);
                break;
            }
        };
        idle.as_mut().reset(tokio::time::Instant::now() + config.idle_timeout);
        match next {
            Ok(Some(Frame::Request { id, request })) => {
                config.stats.requests.fetch_add(1, Ordering::Relaxed);
                let permit = in_flight.clone().acquire_owned().await.expect("semaphore never closed");
                let (service, frames, answered) = (service.clone(), frames.clone(), answered.clone());
                tokio::spawn(async move {
                    let response = service.call(request).await;
                    for page in response.into_pages(LISTING_PAGE) {
                        if frames.send(Frame::Response { id, response: page }).await.is_err() {
                            break;
                        }
                    }
                    answered.store(true, Ordering::Relaxed);
                    drop(permit);
                });
            }
            Ok(Some(_)) => {
                tracing::warn!(%peer, "unexpected frame after the handshake; closing");
                break;
            }
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(%peer, "closing connection: {e}");
                break;
            }
        }
    }
    // Let the requests already started finish and their answers go out.
    let _ = in_flight.acquire_many(config.max_requests_per_connection as u32).await;
    drop(frames);
    let _ = writing.await;
}

async fn write_loop(mut writer: FrameWriter<OwnedWriteHalf>, mut rx: mpsc::Receiver<Frame>, peer: SocketAddr) {
    if let Err(e) = framed::pump(&mut writer, &mut rx).await {
        tracing::debug!(%peer, "writing to the client failed: {e}");
        // Keep draining so that request tasks never block on a dead writer.
        while rx.recv().await.is_some() {}
    }
}
