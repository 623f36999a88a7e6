//! pareco's network layer: turns a TCP stream into an authenticated,
//! multiplexed request/response channel, on both ends.
//!
//! - [`framed`]: frames in and out of a byte stream, with coalesced writes
//!   and zero-copy data payloads.
//! - [`auth`]: drives the protocol crate's handshake state machine over a
//!   connection (version negotiation and mutual token proof).
//! - [`pool`]: the client side: N connections, each carrying many requests
//!   at once, with each request sent on the least loaded connection.
//! - [`server`]: the server side: accept loop with bounded connections,
//!   handshake timeouts, bounded requests in flight per connection, and a
//!   draining shutdown.
//!
//! This layer knows nothing about files: the server answers requests through
//! a [`server::Service`] supplied by the caller.

pub mod auth;
pub mod framed;
pub mod pool;
pub mod server;

mod error;

pub use error::NetError;
pub use pool::{Pool, PoolOptions};
pub use server::{ServerConfig, Service, serve};

/// Byte counters of one side's connections (everything on the wire).
#[derive(Debug, Default)]
pub struct WireCounters {
    /// Bytes written to sockets.
    pub sent: std::sync::atomic::AtomicU64,
    /// Bytes read from sockets.
    pub received: std::sync::atomic::AtomicU64,
}
