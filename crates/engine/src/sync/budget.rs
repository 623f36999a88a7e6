//! The data budget at work: file data in flight is held to what the
//! controller (`pareco_plan::budget`) finds the link needs. Every transfer
//! of data takes a [`Share`] before it reads and gives it back when the
//! destination has answered; the answers feed the controller, and its
//! verdicts grow or shrink the semaphore the shares come from.
//!
//! A semaphore cannot take back permits that are out: a smaller budget is
//! owed, and paid as shares come back.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use pareco_plan::budget::Budget;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The budget's floor, in bytes: what the links we measured need and more
/// (64 MiB/s over 100 ms holds 6.7 MB; loopback, 2 MB).
pub const FLOOR: u64 = 8 << 20;

/// The data budget of one run.
pub(super) struct DataBudget {
    permits: Arc<Semaphore>,
    state: Mutex<State>,
    started: Instant,
}

struct State {
    budget: Budget,
    /// KiB the semaphore holds beyond the budget, to forget as they return.
    owed: usize,
}

/// One transfer's part of the budget, given back with [`DataBudget::done`]
/// (answered) or by dropping it (failed: not measured).
pub(super) struct Share {
    permit: OwnedSemaphorePermit,
    bytes: u64,
    since: Instant,
}

impl DataBudget {
    /// A budget from [`FLOOR`] up to `ceiling` bytes.
    pub(super) fn new(ceiling: u64) -> Self {
        let budget = Budget::new(FLOOR, ceiling);
        DataBudget {
            permits: Arc::new(Semaphore::new(kib(budget.bytes()))),
            state: Mutex::new(State { budget, owed: 0 }),
            started: Instant::now(),
        }
    }

    /// Waits for the share of a transfer of `bytes`.
    pub(super) async fn take(&self, bytes: u64) -> Share {
        let n = kib(self.state.lock().expect("budget lock").budget.share(bytes.max(1))) as u32;
        let permit = match self.permits.clone().try_acquire_many_owned(n) {
            Ok(permit) => permit,
            Err(_) => {
                self.state.lock().expect("budget lock").budget.blocked();
                self.permits.clone().acquire_many_owned(n).await.expect("never closed")
            }
        };
        Share { permit, bytes, since: Instant::now() }
    }

    /// The transfer `share` was for was answered.
    pub(super) fn done(&self, share: Share) {
        let Share { permit, bytes, since } = share;
        drop(permit);
        let now = self.started.elapsed();
        let mut state = self.state.lock().expect("budget lock");
        if let Some(step) = state.budget.answered(now, bytes, since.elapsed()) {
            let (from, to) = (kib(step.from), kib(step.to));
            tracing::debug!(
                "data in flight: {} -> {} ({}/s with {})",
                pareco_plan::human_size(step.from),
                pareco_plan::human_size(step.to),
                pareco_plan::human_size(step.rate as u64),
                pareco_plan::human_size(step.from)
            );
            if to > from {
                let paid = state.owed.min(to - from);
                state.owed -= paid;
                self.permits.add_permits(to - from - paid);
            } else {
                state.owed += from - to;
            }
        }
        if state.owed > 0 {
            state.owed -= self.permits.forget_permits(state.owed);
        }
    }
}

/// KiB for `bytes` (at least one).
fn kib(bytes: u64) -> usize {
    bytes.div_ceil(1024).max(1) as usize
}
