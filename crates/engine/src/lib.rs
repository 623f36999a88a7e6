//! pareco's engine: ties the planner, the filesystem and the network
//! together.
//!
//! - [`tree`]: one side of a sync, local or remote, behind one interface.
//! - [`endpoint`]: locations as users write them, opened as trees.
//! - [`sync`]: the sync itself: a streaming, bounded, concurrent walk that
//!   sends only what differs.
//! - [`verify`]: two trees compared entry by entry, content included.
//! - [`serve`]: the server side: a tree answering remote requests.
//! - [`pipe`]: the stream pipe (`pareco send` / `pareco recv`) over TCP links.
//! - [`relay`]: the same stream through object storage (`s3://`).
//! - `frames`: both ends of any stream: the input cut, hashed and
//!   compressed; the output written in order.
//! - [`report`]: counters and events for the caller to display.

pub mod endpoint;
mod frames;
pub mod pipe;
pub mod relay;
pub mod report;
pub mod serve;
pub mod sync;
pub mod tree;
pub mod tuning;
pub mod verify;

pub use endpoint::{Endpoint, Location, LocationError, RemoteOptions};
pub use report::{Change, Problem, Reporter, Stats, Summary};
pub use sync::{SyncError, SyncOptions, sync};
