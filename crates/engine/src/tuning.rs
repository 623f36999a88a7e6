//! `-j auto` at work: a task beside a connection pool that samples the work
//! it completes (bytes of answered requests) ten times a second and
//! resizes it as the controller
//! (`pareco_plan::connections`) says, for as long as the pool lives (across
//! the rounds of a live migration too).
//!
//! The pool counts as busy (its throughput worth judging) while requests
//! wait on its connections: each holds at least [`BUSY_PER_CONNECTION`] on
//! average. A transfer held back by its own source (a slow walk, the last
//! few files) is not busy, and its count is left alone.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use pareco_net::{Notices, Pool};
use pareco_plan::connections::Tuner;

/// How often the pool is sampled.
const TICK: Duration = Duration::from_millis(100);

/// Bytes waiting per connection, on average, for the pool to count as busy.
const BUSY_PER_CONNECTION: u64 = 64 << 10;

/// How a pool's size is chosen.
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

/// Starts tuning `pool` until it is dropped.
pub fn spawn(pool: &Arc<Pool>, tuning: Tuning) {
    let weak = Arc::downgrade(pool);
    let tuner = Tuner::new(tuning.start, tuning.min, tuning.max);
    tokio::spawn(run(weak, tuner, tuning.notices));
}

async fn run(pool: Weak<Pool>, mut tuner: Tuner, notices: Notices) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        let busy = pool.outstanding() >= pool.size() as u64 * BUSY_PER_CONNECTION;
        tracing::trace!(
            "{:?}: {} completed, busy {busy}, {} connections",
            started.elapsed(),
            pool.completed(),
            pool.size()
        );
        if let Some(step) = tuner.observe(started.elapsed(), pool.completed(), busy) {
            pool.resize(step.to);
            let rate = pareco_plan::human_size(step.rate as u64);
            notices.tell(&format!("connections: {} -> {} ({rate}/s with {})", step.from, step.to, step.from));
        }
    }
}
