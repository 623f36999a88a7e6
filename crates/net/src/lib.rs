//! pareco's network layer: turns a TCP stream into an authenticated,
//! multiplexed request/response channel, on both ends.
//!
//! - [`channel`]: the secure channel every connection opens with: a Noise
//!   handshake keyed by the shared token (mutual authentication, version
//!   and feature negotiation, fresh keys), then AES-GCM records.
//! - [`framed`]: frames in and out of a channel, with coalesced writes,
//!   large payloads sealed (or written) straight from their buffers, and
//!   bodies compressed where it pays once the handshake agreed on it.
//! - [`pool`]: the client side: N connections, each carrying many requests
//!   at once, with each request sent on the least loaded connection.
//! - [`server`]: the server side: accept loop with bounded connections,
//!   handshake timeouts, bounded requests in flight per connection, and a
//!   draining shutdown.
//!
//! This layer knows nothing about files: the server answers requests through
//! a [`server::Service`] supplied by the caller.

pub mod channel;
pub mod framed;
pub mod pool;
pub mod server;

mod error;

pub use channel::{Security, TokenKey};
pub use error::NetError;
pub use pool::{Notices, Pool, PoolOptions};
pub use server::{ServerConfig, ServerStats, Service, accept, serve};

/// Byte counters of one side's connections (everything on the wire).
#[derive(Debug, Default)]
pub struct WireCounters {
    /// Bytes written to sockets.
    pub sent: std::sync::atomic::AtomicU64,
    /// Bytes read from sockets.
    pub received: std::sync::atomic::AtomicU64,
}
