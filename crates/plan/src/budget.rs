//! How much file data a run keeps in flight (read, sent, not yet answered):
//! what the link needs to stay full, and no more. Answers in, a budget out,
//! in virtual time (the caller says what time it is), so that every rule
//! here is tested without a network.
//!
//! Data beyond what the link needs only waits in queues, and costs memory
//! that is cold by the time it is used again: a 64 MiB budget on loopback
//! touched a fresh page every 32 KiB sent and put every copy of the data
//! out of the CPU's caches (8 MiB took a fifth off the CPU per byte of a
//! plaintext push). A long, fat link needs its bandwidth times its round
//! trip in flight, and a link of slow connections a piece on each.
//!
//! - **Trials.** It starts at a floor that fills the links we know of.
//!   While transfers wait for the budget (it holds them back), it doubles
//!   the budget, lets the answers of what was sent before the change go by
//!   (one round trip), and measures the rate answers come at for a window
//!   (two round trips, and at least [`MIN_WINDOW`]).
//! - **Keep or go back.** A doubling is kept if the rate grew by at least
//!   [`KEEP_GAIN`], and then it doubles again; otherwise the budget goes
//!   back (where the link, a disk or a CPU was the limit already). A larger
//!   budget costs only memory and a missed one costs throughput, so the bar
//!   is low: at worst the budget stops where the rate is within `KEEP_GAIN`
//!   of the link's.
//! - **Steady state.** Every [`PROBE_EVERY`] (and [`STEADY_RTTS`] round
//!   trips) it tries again, so that a run whose limit moves (small files,
//!   then a big one; another transfer leaving the link) follows it. It
//!   never goes below the floor or above the ceiling.
//!
//! Never here: clocks, semaphores, or the transfers themselves.

use std::time::Duration;

/// A doubling is kept if the rate grew by at least this share.
pub const KEEP_GAIN: f64 = 0.1;

/// The shortest measurement window: loopback round trips are
/// milliseconds, and a rate over fewer answers is noise.
pub const MIN_WINDOW: Duration = Duration::from_millis(100);

/// How often the steady state tries a larger budget.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);

/// The steady state lasts at least this many round trips between trials
/// (a trial lasts about three: on a slow link with a queue, seconds).
pub const STEADY_RTTS: u32 = 16;

/// What the controller is doing.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Measuring the floor.
    Start,
    /// Measuring a doubled budget against `base` bytes at `base_rate`.
    Trial { base: u64, base_rate: f64 },
    /// Settled since `since`.
    Steady { since: Duration },
}

/// The answers of one measurement window.
#[derive(Debug, Clone, Copy)]
struct Window {
    /// The first answer's time (its bytes are not counted: the rate is
    /// taken between the first answer and the last).
    start: Duration,
    bytes: u64,
    answers: u32,
    rtts: Duration,
}

/// A change the controller made, for the log.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// The budget before, in bytes.
    pub from: u64,
    /// The budget now.
    pub to: u64,
    /// Bytes per second answered at `from`.
    pub rate: f64,
}

/// The data budget of one run.
#[derive(Debug, Clone)]
pub struct Budget {
    floor: u64,
    ceiling: u64,
    budget: u64,
    phase: Phase,
    window: Option<Window>,
    /// Whether a transfer waited for the budget since the window began
    /// (before its first answer too).
    blocked: bool,
    /// Answers before this time were sent under the budget before the last
    /// change, and are not measured.
    settle_until: Duration,
    /// The average round trip of the last window (or of the first answer).
    rtt: Option<Duration>,
}

impl Budget {
    /// A budget of `floor` bytes that may grow to `ceiling`.
    pub fn new(floor: u64, ceiling: u64) -> Self {
        Budget {
            floor,
            ceiling: ceiling.max(floor),
            budget: floor,
            phase: Phase::Start,
            window: None,
            blocked: false,
            settle_until: Duration::ZERO,
            rtt: None,
        }
    }

    /// The budget now, in bytes.
    pub fn bytes(&self) -> u64 {
        self.budget
    }

    /// What one transfer of `bytes` takes of the budget: the floor at most,
    /// so that one larger than the budget still goes (alone).
    pub fn share(&self, bytes: u64) -> u64 {
        bytes.min(self.floor)
    }

    /// A transfer had to wait for the budget.
    pub fn blocked(&mut self) {
        self.blocked = true;
    }

    /// `bytes` were answered at `now`, `rtt` after they were sent. Returns
    /// the change to make, if any.
    pub fn answered(&mut self, now: Duration, bytes: u64, rtt: Duration) -> Option<Step> {
        let rtt_now = *self.rtt.get_or_insert(rtt);
        if now < self.settle_until {
            return None;
        }
        let Some(window) = &mut self.window else {
            self.window = Some(Window { start: now, bytes: 0, answers: 1, rtts: rtt });
            return None;
        };
        window.bytes += bytes;
        window.answers += 1;
        window.rtts += rtt;
        let length = now.saturating_sub(window.start);
        let average = window.rtts / window.answers;
        if length < MIN_WINDOW.max(2 * average.max(rtt_now)) {
            return None;
        }
        let rate = window.bytes as f64 / length.as_secs_f64();
        let blocked = std::mem::take(&mut self.blocked);
        self.window = None;
        self.rtt = Some(average);
        let from = self.budget;
        match self.phase {
            Phase::Start if blocked => self.double(rate, now),
            Phase::Start => self.phase = Phase::Steady { since: now },
            Phase::Trial { base, base_rate } => {
                if rate >= base_rate * (1.0 + KEEP_GAIN) && blocked {
                    self.double(rate, now);
                } else {
                    if rate < base_rate * (1.0 + KEEP_GAIN) {
                        self.budget = base;
                    }
                    self.phase = Phase::Steady { since: now };
                }
            }
            Phase::Steady { since }
                if blocked && now.saturating_sub(since) >= PROBE_EVERY.max(STEADY_RTTS * average) =>
            {
                self.double(rate, now)
            }
            Phase::Steady { .. } => {}
        }
        if self.budget == from {
            return None;
        }
        self.settle_until = now + average;
        Some(Step { from, to: self.budget, rate })
    }

    /// Tries twice the budget, against `rate` at this one; settles if it is
    /// at the ceiling.
    fn double(&mut self, rate: f64, now: Duration) {
        let to = self.budget.saturating_mul(2).min(self.ceiling);
        if to == self.budget {
            self.phase = Phase::Steady { since: now };
            return;
        }
        self.phase = Phase::Trial { base: self.budget, base_rate: rate };
        self.budget = to;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// A path of `rate` bytes a second whose answers come `latency` after a
    /// transfer when nothing waits; what is in flight beyond `rate ×
    /// latency` waits in a queue (round trips grow, the rate does not).
    /// `noise` (a share) moves the rate up and down window by window, as
    /// other work on a shared machine does.
    struct Path {
        rate: f64,
        latency: Duration,
        noise: f64,
    }

    /// A path without noise: `rate` bytes a second, `ms` of latency.
    fn steady(rate: f64, ms: u64) -> Path {
        Path { rate, latency: Duration::from_millis(ms), noise: 0.0 }
    }

    /// A sender that keeps the budget in flight for `seconds` from `from`
    /// (answers every millisecond, or twice per round trip if that is
    /// shorter). Returns the budgets it had, one per step, and the bytes
    /// answered.
    fn run(budget: &mut Budget, path: &Path, from: Duration, seconds: f64) -> (Vec<u64>, f64) {
        let dt = Duration::from_millis(1).min(path.latency / 2);
        let steps = (seconds / dt.as_secs_f64()) as u32;
        let delay = (path.latency.as_secs_f64() / dt.as_secs_f64()).ceil() as usize;
        // What was in flight a round trip ago is what is answered now.
        let mut sent = std::collections::VecDeque::from(vec![budget.bytes(); delay]);
        let (mut history, mut moved, mut seed) = (Vec::new(), 0.0, 7u64);
        let mut wobble = 1.0;
        for step in 0..steps {
            let now = from + dt * step;
            if step % 50 == 0 {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                wobble = 1.0 + path.noise * ((seed >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0);
            }
            let in_flight = sent.pop_front().expect("a round trip of history") as f64;
            let rate = (in_flight / path.latency.as_secs_f64()).min(path.rate * wobble);
            let rtt = Duration::from_secs_f64(in_flight / rate);
            budget.blocked();
            budget.answered(now, (rate * dt.as_secs_f64()) as u64, rtt);
            moved += rate * dt.as_secs_f64();
            sent.push_back(budget.bytes());
            history.push(budget.bytes());
        }
        (history, moved)
    }

    /// The share of steps at the floor.
    fn at(history: &[u64], bytes: u64) -> f64 {
        history.iter().filter(|&&b| b == bytes).count() as f64 / history.len() as f64
    }

    #[test]
    fn a_fast_short_link_keeps_the_floor() {
        // Loopback: 2 GB/s, answers in a millisecond when nothing waits:
        // 2 MB fill it.
        let mut b = Budget::new(8 * MIB, 64 * MIB);
        let path = steady(2e9, 1);
        let (history, _) = run(&mut b, &path, Duration::ZERO, 10.0);
        assert!(at(&history, 8 * MIB) >= 0.9, "{:.2} at the floor", at(&history, 8 * MIB));
        assert!(history.iter().all(|&b| b <= 16 * MIB));
    }

    #[test]
    fn noise_does_not_ratchet_it_up() {
        // The same with the rate moving ±5 % every 50 ms, for a minute.
        let mut b = Budget::new(8 * MIB, 64 * MIB);
        let path = Path { noise: 0.05, ..steady(2e9, 1) };
        let (history, _) = run(&mut b, &path, Duration::ZERO, 60.0);
        assert!(at(&history, 8 * MIB) >= 0.8, "{:.2} at the floor", at(&history, 8 * MIB));
    }

    #[test]
    fn a_long_fat_link_gets_what_it_holds_within_seconds() {
        // 200 MB/s, 100 ms round trips: 20 MB in flight fill it.
        let mut b = Budget::new(8 * MIB, 512 * MIB);
        let path = steady(200e6, 100);
        let (history, _) = run(&mut b, &path, Duration::ZERO, 3.0);
        let got = *history.last().unwrap() as f64;
        assert!((20e6..=4.0 * 20e6).contains(&got), "{got} for a path that holds 20 MB");
        // Full from then on.
        let (_, moved) = run(&mut b, &path, Duration::from_secs(3), 10.0);
        assert!(moved / 10.0 >= 0.95 * path.rate, "{} MB/s", moved / 10.0 / 1e6);
    }

    #[test]
    fn it_stops_at_the_ceiling() {
        // 1 GB/s over 100 ms holds 100 MB, more than the ceiling.
        let mut b = Budget::new(8 * MIB, 64 * MIB);
        let path = steady(1e9, 100);
        let (history, _) = run(&mut b, &path, Duration::ZERO, 5.0);
        assert_eq!(*history.last().unwrap(), 64 * MIB);
        assert!(history.iter().all(|&b| b <= 64 * MIB));
    }

    #[test]
    fn a_slow_link_keeps_the_floor_but_for_trials() {
        // 16 MiB/s over 100 ms holds 1.6 MiB: most of the floor waits, and
        // a trial's round trips are long (half a second, then a second).
        let mut b = Budget::new(8 * MIB, 512 * MIB);
        let path = steady(16e6, 100);
        let (history, _) = run(&mut b, &path, Duration::ZERO, 30.0);
        assert!(at(&history, 8 * MIB) >= 0.6, "{:.2} at the floor", at(&history, 8 * MIB));
        assert!(history.iter().all(|&b| b <= 16 * MIB));
    }

    #[test]
    fn it_follows_a_link_that_gets_faster_and_never_leaves_the_floor() {
        let mut b = Budget::new(8 * MIB, 512 * MIB);
        let slow = steady(16e6, 100);
        run(&mut b, &slow, Duration::ZERO, 5.0);
        let fast = Path { rate: 400e6, ..slow };
        let (history, moved) = run(&mut b, &fast, Duration::from_secs(5), 10.0);
        assert!(*history.last().unwrap() as f64 >= 40e6, "{:?}", history.last());
        assert!(moved / 10.0 >= 0.8 * fast.rate, "{} MB/s", moved / 10.0 / 1e6);
        assert!(history.iter().all(|&b| b >= 8 * MIB));
    }

    #[test]
    fn a_transfer_takes_no_more_than_the_floor_and_idle_time_is_not_judged() {
        let mut b = Budget::new(8 * MIB, 512 * MIB);
        assert_eq!(b.share(16 * MIB), 8 * MIB);
        assert_eq!(b.share(MIB), MIB);
        // Answers without waiting for the budget: it was not the limit.
        for i in 0..10_000u32 {
            assert_eq!(b.answered(Duration::from_millis(i as u64), MIB, Duration::from_micros(500)), None);
        }
        assert_eq!(b.bytes(), 8 * MIB);
    }
}
