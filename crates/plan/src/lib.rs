//! The planner: pure decisions about what a sync must do, made from what
//! each side reports (listings, stats, digests). It never touches a file or a
//! socket, so every rule here is tested with plain values.
//!
//! - [`dir`]: compare the listings of one directory on both sides and decide,
//!   entry by entry, what to create, update, replace, delete or descend into.
//! - [`file`]: cut a file into chunks and blocks and decide, from digests,
//!   which chunks match, which to refine block by block, and which to send.
//! - [`delta`]: rebuild a file whose content moved from pieces of its old
//!   version cut at content-defined boundaries.
//! - [`reuse`]: which file the destination already has holds the content
//!   of a file it lacks (renamed, moved, rotated, copied).
//! - [`shard`]: which part of a tree one of N processes does (`--shard`).
//! - [`budget`]: how much file data a run keeps in flight, from the round
//!   trips and rate of its answers.
//! - [`connections`]: how many connections a transfer keeps open
//!   (`-j auto`), from the throughput it measures.
//! - [`verify`]: how two entries differ, how hard links differ, and why the
//!   same content takes different space on two filesystems.
//! - [`downtime`]: how long the final round of a live migration (the
//!   downtime) will take, predicted from the rounds before it.
//! - [`freshness`]: when a file's metadata can be trusted — the quick check
//!   and the "racy timestamp" rule that keeps it safe on live data.

pub mod budget;
pub mod connections;
pub mod delta;
pub mod dir;
pub mod downtime;
pub mod file;
pub mod freshness;
pub mod reuse;
pub mod shard;
pub mod verify;

/// A byte count for people: `512 B`, `1.5 MiB` (binary units, one decimal).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}
