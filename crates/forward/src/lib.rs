//! `pareco forward`: the TCP forwarder of the cutover night.
//!
//! The last step of a migration points DNS at the new site; clients that
//! keep the old address (cached DNS, hard-coded addresses, long-lived
//! connections) are forwarded by the old hosts to the new site. This crate
//! does that job, reading rinetd's configuration format, without rinetd's
//! limits.
//!
//! Goals:
//! - Byte-exact in both directions, half-close kept, resets passed on as
//!   resets: the forwarder must be invisible to the protocol inside.
//! - As fast as the machine: `splice(2)` moves bytes inside the kernel; one
//!   event loop (tokio) for tens of thousands of connections, bounded only
//!   by the descriptor limit.
//! - Operable at 3 a.m.: reload without dropping a connection, drain on
//!   stop, one log line per connection, counters on demand, and a
//!   configuration error that names its file and line.
//! - The new site sees who the client is (PROXY protocol v1/v2).
//!
//! Non-goals: systems other than Linux (splice), UDP, TLS termination, load balancing beyond "the first target
//! that accepts", looking inside the bytes.
//!
//! Modules, pure first:
//! - [`config`]: rinetd's format plus our options (pure).
//! - [`access`]: allow/deny patterns and CIDR blocks (pure).
//! - [`proxy_header`]: PROXY protocol headers (pure).
//! - [`record`]: the per-connection log line and rinetd's log formats (pure).
//! - [`stats`]: per-rule counters.
//! - `load`: reads a configuration file (and /etc/services).
//! - `pipes`, `relay`: splice(2) and the per-connection relay.
//! - [`forwarder`]: listeners, connections, reload and drain.
#![forbid(unsafe_code)]

pub mod access;
pub mod config;
pub mod forwarder;
mod load;
mod pipes;
pub mod proxy_header;
pub mod record;
mod relay;
pub mod stats;

pub use config::{Config, ConfigError, Endpoint, Rule, RuleOptions, WhenFull};
pub use forwarder::{Forwarder, ForwarderOptions, Listening, Reloaded, StartError};
pub use load::{LoadError, load};
pub use proxy_header::ProxyVersion;
pub use record::Cut;
pub use stats::{ForwardSnapshot, RuleSnapshot};
