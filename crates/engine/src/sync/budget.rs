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

use pareco_net::Notices;
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
    notices: Notices,
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
    /// A budget from [`FLOOR`] up to `ceiling` bytes, its changes told to
    /// `notices`.
    pub(super) fn new(ceiling: u64, notices: Notices) -> Self {
        let budget = Budget::new(FLOOR, ceiling);
        DataBudget {
            permits: Arc::new(Semaphore::new(kib(budget.bytes()))),
            state: Mutex::new(State { budget, owed: 0 }),
            started: Instant::now(),
            notices,
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
        let Share { mut permit, bytes, since } = share;
        let mut state = self.state.lock().expect("budget lock");
        if let Some(step) = state.budget.answered(self.started.elapsed(), bytes, since.elapsed()) {
            let size = pareco_plan::human_size;
            let line = format!(
                "data in flight: {} -> {} ({}/s with {})",
                size(step.from),
                size(step.to),
                size(step.rate as u64),
                size(step.from)
            );
            tracing::debug!("{line}");
            self.notices.tell(&line);
            self.resize(&mut state, kib(step.from), kib(step.to));
        }
        // Paid out of what comes back, before it goes back: transfers
        // waiting would take it first.
        let pay = state.owed.min(permit.num_permits());
        if pay > 0 {
            permit.split(pay).expect("no more than the share holds").forget();
            state.owed -= pay;
        }
        drop(state);
        drop(permit);
    }

    /// The budget goes from `from` to `to` KiB: more permits at once, or
    /// fewer as shares come back.
    fn resize(&self, state: &mut State, from: usize, to: usize) {
        if to > from {
            let paid = state.owed.min(to - from);
            state.owed -= paid;
            self.permits.add_permits(to - from - paid);
        } else {
            state.owed += from - to;
        }
    }
}

/// KiB for `bytes` (at least one).
fn kib(bytes: u64) -> usize {
    bytes.div_ceil(1024).max(1) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 10; // in KiB

    #[tokio::test]
    async fn a_smaller_budget_is_paid_by_the_shares_that_come_back_not_handed_to_waiters() {
        let budget = Arc::new(DataBudget::new(64 << 20, Notices::default()));
        budget.resize(&mut budget.state.lock().unwrap(), 8 * MIB, 16 * MIB);
        let mut out = Vec::new();
        for _ in 0..16 {
            out.push(budget.take(1 << 20).await);
        }
        assert_eq!(budget.permits.available_permits(), 0);
        // Back to 8 MiB while 16 are out, and a transfer waits.
        budget.resize(&mut budget.state.lock().unwrap(), 16 * MIB, 8 * MIB);
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.take(1 << 20).await }
        });
        tokio::task::yield_now().await;
        for share in out.drain(..8) {
            budget.done(share);
        }
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "the first 8 MiB back pay what the budget owes");
        budget.done(out.remove(0));
        let share = waiting.await.unwrap();
        assert_eq!(budget.state.lock().unwrap().owed, 0);
        for share in out.drain(..).chain([share]) {
            budget.done(share);
        }
        assert_eq!(budget.permits.available_permits(), 8 * MIB);
    }

    #[tokio::test]
    async fn a_transfer_larger_than_the_budget_takes_all_of_it() {
        let budget = DataBudget::new(64 << 20, Notices::default());
        let share = budget.take(16 << 20).await;
        assert_eq!(share.permit.num_permits(), kib(FLOOR));
        budget.done(share);
        assert_eq!(budget.permits.available_permits(), kib(FLOOR));
    }
}
