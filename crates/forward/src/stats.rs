//! Per-rule counters: connections open now and in all, refused, failed
//! connects, bytes each way. Updated by the relay as bytes move (so that a
//! SIGUSR1 in the middle of a long transfer shows it), read as snapshots.
//!
//! Never blocks, never allocates on the counting path, and knows nothing of
//! sockets: the I/O layers count, this module adds up.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

/// The live counters of one rule.
#[derive(Debug, Default)]
pub struct RuleStats {
    active: AtomicU64,
    total: AtomicU64,
    refused: AtomicU64,
    failed_connects: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

impl RuleStats {
    /// A connection was accepted; returns how many are open now.
    pub fn opened(&self) -> u64 {
        self.total.fetch_add(1, Relaxed);
        self.active.fetch_add(1, Relaxed) + 1
    }

    /// An accepted connection is gone.
    pub fn closed(&self) {
        self.active.fetch_sub(1, Relaxed);
    }

    /// Connections open now.
    pub fn active(&self) -> u64 {
        self.active.load(Relaxed)
    }

    /// A connection turned away (allow/deny, or the rule is full).
    pub fn refused(&self) {
        self.refused.fetch_add(1, Relaxed);
    }

    /// No target could be reached for a connection.
    pub fn failed_connect(&self) {
        self.failed_connects.fetch_add(1, Relaxed);
    }

    /// Bytes moved from a client to its target.
    pub fn up(&self, n: u64) {
        self.bytes_up.fetch_add(n, Relaxed);
    }

    /// Bytes moved from a target to its client.
    pub fn down(&self, n: u64) {
        self.bytes_down.fetch_add(n, Relaxed);
    }

    /// The counters now, for the rule described by `listen`, `local` and `targets`.
    pub fn snapshot(&self, listen: String, local: String, targets: String, removed: bool) -> RuleSnapshot {
        RuleSnapshot {
            listen,
            local,
            targets,
            removed,
            active: self.active.load(Relaxed),
            total: self.total.load(Relaxed),
            refused: self.refused.load(Relaxed),
            failed_connects: self.failed_connects.load(Relaxed),
            bytes_up: self.bytes_up.load(Relaxed),
            bytes_down: self.bytes_down.load(Relaxed),
        }
    }
}

/// One rule's counters at one moment (a row of `--stats-json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleSnapshot {
    /// The listen address as configured.
    pub listen: String,
    /// The address actually bound (the port chosen for port 0).
    pub local: String,
    /// The targets, in order.
    pub targets: String,
    /// Removed by a reload, still finishing its connections.
    pub removed: bool,
    /// Connections open now.
    pub active: u64,
    /// Connections accepted in all (refused ones included).
    pub total: u64,
    /// Turned away by allow/deny or because the rule was full.
    pub refused: u64,
    /// Connections for which no target could be reached.
    pub failed_connects: u64,
    /// Bytes from clients to targets.
    pub bytes_up: u64,
    /// Bytes from targets to clients.
    pub bytes_down: u64,
}

impl fmt::Display for RuleSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> {}{}: {} active, {} total, {} refused, {} failed connects, {} bytes up, {} bytes down",
            self.local,
            self.targets,
            if self.removed { " (removed, draining)" } else { "" },
            self.active,
            self.total,
            self.refused,
            self.failed_connects,
            self.bytes_up,
            self.bytes_down
        )
    }
}

/// Every rule's counters at one moment: what `--stats-json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ForwardSnapshot {
    /// Connections open now, all rules together.
    pub active: u64,
    /// The most connections open at once since the start.
    pub connections: u64,
    /// One entry per rule, in configuration order (removed ones last).
    pub rules: Vec<RuleSnapshot>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_up() {
        let s = RuleStats::default();
        assert_eq!(s.opened(), 1);
        assert_eq!(s.opened(), 2);
        s.closed();
        s.refused();
        s.failed_connect();
        s.up(10);
        s.up(5);
        s.down(7);
        let snap = s.snapshot("0.0.0.0:0".into(), "0.0.0.0:4000".into(), "db:5432".into(), false);
        assert_eq!((snap.active, snap.total, snap.refused, snap.failed_connects), (1, 2, 1, 1));
        assert_eq!((snap.bytes_up, snap.bytes_down), (15, 7));
        assert_eq!(
            snap.to_string(),
            "0.0.0.0:4000 -> db:5432: 1 active, 2 total, 1 refused, 1 failed connects, 15 bytes up, 7 bytes down"
        );
    }
}
