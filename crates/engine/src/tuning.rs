//! `-j auto` at work: the controller (`pareco_plan::connections`) fed with
//! what a transfer completes, ten times a second, and its verdicts carried
//! out. [`Auto`] is the part every transfer shares (the clock, the notices
//! for `-v`); [`spawn`] drives a sync's connection pool with it, for as long
//! as the pool lives (across the rounds of a live migration too); the stream
//! pipe drives its own links (`crate::pipe`).
//!
//! A pool counts as busy (its throughput worth judging) while requests
//! wait on its connections: each holds at least [`BUSY_PER_CONNECTION`] on
//! average. A transfer held back by its own source (a slow walk, the last
//! few files) is not busy, and its count is left alone.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use pareco_net::{Notices, Pool};
use pareco_plan::connections::Tuner;

/// How often a transfer is sampled.
const TICK: Duration = Duration::from_millis(100);

/// Bytes waiting per connection, on average, for the pool to count as busy.
const BUSY_PER_CONNECTION: u64 = 64 << 10;

/// How a connection count is chosen.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Connections to start with.
    pub start: usize,
    /// Fewest connections.
    pub min: usize,
    /// Most connections.
    pub max: usize,
    /// Told of every change (`-v`).
    pub notices: Notices,
}

/// The controller of one transfer, on the wall clock.
pub struct Auto {
    tuner: Tuner,
    started: Instant,
    notices: Notices,
}

impl Auto {
    /// Starts at `tuning.start` connections.
    pub fn new(tuning: Tuning) -> Auto {
        Auto {
            tuner: Tuner::new(tuning.start, tuning.min, tuning.max),
            started: Instant::now(),
            notices: tuning.notices,
        }
    }

    /// The count the transfer should have.
    pub fn count(&self) -> usize {
        self.tuner.count()
    }

    /// `total` bytes completed so far; whether the transfer was busy since
    /// the last call. Returns the new count when it changes (and says so).
    pub fn observe(&mut self, total: u64, busy: bool) -> Option<usize> {
        let step = self.tuner.observe(self.started.elapsed(), total, busy)?;
        let rate = pareco_plan::human_size(step.rate as u64);
        self.notices.tell(&format!("connections: {} -> {} ({rate}/s with {})", step.from, step.to, step.from));
        Some(step.to)
    }
}

/// Starts tuning `pool` until it is dropped.
pub fn spawn(pool: &Arc<Pool>, tuning: Tuning) {
    tokio::spawn(run(Arc::downgrade(pool), Auto::new(tuning)));
}

async fn run(pool: Weak<Pool>, mut auto: Auto) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        let busy = pool.outstanding() >= pool.size() as u64 * BUSY_PER_CONNECTION;
        if let Some(count) = auto.observe(pool.completed(), busy) {
            pool.resize(count);
        }
    }
}
