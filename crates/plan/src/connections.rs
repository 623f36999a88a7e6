//! How many connections a transfer keeps open (`-j auto`): throughput
//! samples in, a connection count out, in virtual time (the caller says what
//! time it is), so that every rule here is tested without a network.
//!
//! One connection on a long, fat link is held back by its own window and by
//! per-connection limits along the way; many connections add up until the
//! link (or a CPU, or a disk) is the limit. The controller finds that point
//! and keeps following it:
//!
//! - **Trials.** It changes the count, lets the new connections settle
//!   ([`SETTLE`]), measures the rate for a [`WINDOW`] (and at least
//!   [`WINDOW_BYTES`]), and compares it with
//!   the rate before. A count is only judged while the transfer is busy
//!   (more work waiting than the connections carry); idle time is skipped.
//! - **Growth** starts at ×4 (as azcopy's AUTO mode): a step is kept only if
//!   each connection it added brought at least [`KEEP_GAIN`] of what an
//!   average connection carried before; otherwise the count goes back and
//!   the next step is smaller, until a step would add less than one.
//! - **Steady state** follows the link as TCP follows its path: every
//!   [`PROBE_EVERY`] it adds [`PROBE_STEP`] connections; if they pay (same
//!   rule), they stay; if not, the link is full and the count backs off to
//!   [`BACK_OFF`] of what it was. Conditions change during a long run (a
//!   route, another transfer on the link), and the count follows.
//! - **Sharing a link.** Adding the same number and taking off the same
//!   share makes two transfers on one link converge to equal counts that
//!   together keep it nearly full (additive increase, multiplicative
//!   decrease); each extra connection must carry a good share of the
//!   average, so neither grows without bound.
//!
//! Never here: clocks, sockets, or the pool itself.

use std::time::Duration;

/// Time for new connections to open and ramp up before they are measured.
pub const SETTLE: Duration = Duration::from_millis(1000);

/// How long a count is measured (long enough that a few pieces more or less
/// in the window are noise).
pub const WINDOW: Duration = Duration::from_millis(2000);

/// While the count grows by large steps (×2 or more), whose effect stands
/// out of the noise, settling and measuring take half as long.
const GROWTH_SPEEDUP: u32 = 2;

/// A measurement also lasts until this much has moved: work completes in
/// pieces (128 KiB), and a rate from a handful of them is mostly noise.
pub const WINDOW_BYTES: u64 = 4 << 20;

/// How often the steady state probes for more.
pub const PROBE_EVERY: Duration = Duration::from_secs(4);

/// Connections a steady-state probe adds (the same for every transfer:
/// additive increase).
pub const PROBE_STEP: usize = 2;

/// Connections added must each carry at least this share of what an
/// average connection carried before.
pub const KEEP_GAIN: f64 = 0.75;

/// What is left when a probe finds the link full (multiplicative decrease).
pub const BACK_OFF: f64 = 0.85;

/// The first growth step.
const FIRST_FACTOR: f64 = 4.0;

/// Most connections one growth step opens (each costs a handshake on both
/// ends; a step too far is paid in full before it is taken back).
const MAX_GROWTH: usize = 64;

/// What the controller is doing.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Measuring the first count.
    Start,
    /// Measuring a trial count against `base` connections at `base_rate`;
    /// `growing` while the first growth lasts.
    Trial { base: usize, base_rate: f64, growing: bool },
    /// Settled since `since`; the next probe comes [`PROBE_EVERY`] later.
    Steady { since: Duration },
}

/// The connection count controller of one transfer.
#[derive(Debug, Clone)]
pub struct Tuner {
    count: usize,
    min: usize,
    max: usize,
    /// The growth step while growing.
    factor: f64,
    phase: Phase,
    /// Busy time spent settling since the count last changed.
    settled: Duration,
    /// Busy time and bytes of the current measurement (after settling).
    measured: Duration,
    bytes: u64,
    /// The first and the last burst of work seen in the measurement, as
    /// (time measured, bytes) when they came.
    bursts: (Option<(Duration, u64)>, (Duration, u64)),
    /// The last observation (time, total bytes), to compute deltas.
    last: Option<(Duration, u64)>,
    /// The last rate measured at the current count.
    rate: f64,
}

/// A change the controller made, for the record (`-v`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// Connections before.
    pub from: usize,
    /// Connections now.
    pub to: usize,
    /// Bytes per second measured at `from`.
    pub rate: f64,
}

impl Tuner {
    /// Starts at `start` connections, never going below `min` or above `max`.
    pub fn new(start: usize, min: usize, max: usize) -> Tuner {
        let max = max.max(1);
        let min = min.clamp(1, max);
        Tuner {
            count: start.clamp(min, max),
            min,
            max,
            factor: FIRST_FACTOR,
            phase: Phase::Start,
            settled: Duration::ZERO,
            measured: Duration::ZERO,
            bytes: 0,
            bursts: (None, (Duration::ZERO, 0)),
            last: None,
            rate: 0.0,
        }
    }

    /// The count the transfer should have.
    pub fn count(&self) -> usize {
        self.count
    }

    /// An observation at `now`: `total` bytes moved so far, and whether the
    /// transfer was busy since the last observation. Returns the change to
    /// make, if any.
    pub fn observe(&mut self, now: Duration, total: u64, busy: bool) -> Option<Step> {
        let (then, before) = self.last.replace((now, total))?;
        let (elapsed, moved) = (now.saturating_sub(then), total.saturating_sub(before));
        if !busy {
            return None;
        }
        let quick = match self.phase {
            Phase::Start => true,
            Phase::Trial { growing, .. } => growing && self.factor >= 2.0,
            Phase::Steady { .. } => false,
        };
        let speedup = if quick { GROWTH_SPEEDUP } else { 1 };
        if self.settled < SETTLE / speedup {
            self.settled += elapsed;
            return None;
        }
        self.measured += elapsed;
        self.bytes += moved;
        // Work completes in bursts (pieces answered together): the rate is
        // taken between the first and the last burst of the window, so that
        // where the window happens to end does not count.
        if moved > 0 {
            self.bursts.0.get_or_insert((self.measured, self.bytes));
            self.bursts.1 = (self.measured, self.bytes);
        }
        let (first, last) = (self.bursts.0.unwrap_or_default(), self.bursts.1);
        if self.measured < WINDOW / speedup || self.bytes < WINDOW_BYTES / speedup as u64 || last.0 <= first.0 {
            return None;
        }
        let rate = (last.1 - first.1) as f64 / (last.0 - first.0).as_secs_f64();
        self.measured = Duration::ZERO;
        self.bytes = 0;
        self.bursts = (None, (Duration::ZERO, 0));
        let from = self.count;
        match self.phase {
            Phase::Start => {
                self.rate = rate;
                self.grow(now);
            }
            Phase::Trial { base, base_rate, growing } => {
                let (n, b) = (self.count as f64, base as f64);
                let kept = rate - base_rate >= KEEP_GAIN * (base_rate / b) * (n - b);
                if kept {
                    self.rate = rate;
                } else if growing {
                    self.count = base;
                    self.rate = base_rate;
                    self.factor = 1.0 + (self.factor - 1.0) / 2.0;
                } else {
                    // The link (or the other end) is full: back off below
                    // where it was, as TCP does, so that transfers sharing
                    // the link converge to equal shares.
                    self.count = ((b * BACK_OFF).round() as usize).clamp(self.min, self.max);
                    self.rate = base_rate;
                }
                if growing {
                    self.grow(now);
                } else {
                    self.phase = Phase::Steady { since: now };
                }
            }
            Phase::Steady { since } => {
                self.rate = rate;
                if now.saturating_sub(since) >= PROBE_EVERY {
                    let to = (self.count + PROBE_STEP).min(self.max);
                    if to == self.count {
                        self.phase = Phase::Steady { since: now };
                    } else {
                        self.phase = Phase::Trial { base: self.count, base_rate: rate, growing: false };
                        self.count = to;
                    }
                }
            }
        }
        if self.count == from {
            return None;
        }
        self.settled = Duration::ZERO;
        Some(Step { from, to: self.count, rate })
    }

    /// The next growth trial from the current count, or the steady state if
    /// a step would add less than one connection.
    fn grow(&mut self, now: Duration) {
        let to = ((self.count as f64 * self.factor).round() as usize).min(self.count + MAX_GROWTH).min(self.max);
        if to <= self.count {
            self.phase = Phase::Steady { since: now };
            return;
        }
        self.phase = Phase::Trial { base: self.count, base_rate: self.rate, growing: true };
        self.count = to;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A link: each connection carries at most `per_connection` bytes per
    /// second, all of them together at most `link` (shared in proportion
    /// to connections, as TCP shares a bottleneck).
    #[derive(Clone, Copy)]
    struct Link {
        per_connection: f64,
        link: f64,
    }

    /// Rates of transfers with these counts on one link.
    fn rates(link: Link, counts: &[usize]) -> Vec<f64> {
        let wanted: Vec<f64> = counts.iter().map(|&n| n as f64 * link.per_connection).collect();
        let total: f64 = wanted.iter().sum();
        let scale = if total > link.link { link.link / total } else { 1.0 };
        wanted.iter().map(|w| w * scale).collect()
    }

    /// Runs tuners on one link in steps of 100 ms for `seconds`, each from
    /// its start time (before it, it has no connections); returns their
    /// counts over time and the bytes each moved in the last `tail` seconds.
    fn run_from(link: Link, tuners: &mut [(Tuner, f64)], seconds: f64, tail: f64) -> (Vec<Vec<usize>>, Vec<f64>) {
        let dt = Duration::from_millis(100);
        let mut totals = vec![0u64; tuners.len()];
        let mut moved_tail = vec![0f64; tuners.len()];
        let mut history = vec![Vec::new(); tuners.len()];
        let steps = (seconds * 10.0) as usize;
        for step in 0..=steps {
            let now = dt * step as u32;
            let on = |start: f64| now.as_secs_f64() >= start;
            let counts: Vec<usize> = tuners.iter().map(|(t, start)| if on(*start) { t.count() } else { 0 }).collect();
            for (i, rate) in rates(link, &counts).into_iter().enumerate() {
                let bytes = rate * dt.as_secs_f64();
                totals[i] += bytes as u64;
                if now.as_secs_f64() > seconds - tail {
                    moved_tail[i] += bytes;
                }
            }
            for (i, (t, start)) in tuners.iter_mut().enumerate() {
                if on(*start) {
                    t.observe(now, totals[i], true);
                }
                history[i].push(t.count());
            }
        }
        (history, moved_tail)
    }

    fn run(link: Link, tuners: &mut [Tuner], seconds: f64, tail: f64) -> (Vec<Vec<usize>>, Vec<f64>) {
        let mut with_start: Vec<(Tuner, f64)> = tuners.iter().cloned().map(|t| (t, 0.0)).collect();
        let out = run_from(link, &mut with_start, seconds, tail);
        for (t, (done, _)) in tuners.iter_mut().zip(with_start) {
            *t = done;
        }
        out
    }

    const MIB: f64 = 1048576.0;

    #[test]
    fn a_link_that_needs_64_connections_gets_them_soon() {
        let link = Link { per_connection: 0.25 * MIB, link: 16.0 * MIB };
        let mut t = [Tuner::new(4, 4, 256)];
        let (history, tail) = run(link, &mut t, 60.0, 50.0);
        let reached = history[0].iter().position(|&n| n >= 56).expect("reaches the link's 64");
        assert!(reached <= 100, "after {} s", reached as f64 / 10.0);
        assert!(tail[0] / 50.0 >= 0.9 * link.link, "{} MiB/s", tail[0] / 50.0 / MIB);
        assert!(history[0].iter().all(|&n| n <= 256));
    }

    /// Work completes in pieces: each connection's 128 KiB piece is answered
    /// at once when it has all arrived, the connections in step (as they
    /// are on a link that paces them alike).
    #[test]
    fn pieces_answered_in_bursts_do_not_fool_the_measurement() {
        let per_connection = 0.25 * MIB;
        let piece = 128.0 * 1024.0;
        let mut t = Tuner::new(4, 4, 256);
        let dt = Duration::from_millis(100);
        let (mut total, mut credit) = (0u64, 0f64);
        let mut history = Vec::new();
        for step in 0..300u32 {
            let n = t.count() as f64;
            credit += (n * per_connection).min(16.0 * MIB) / n * dt.as_secs_f64();
            if credit >= piece {
                credit -= piece;
                total += (piece * n) as u64;
            }
            t.observe(dt * step, total, true);
            history.push(t.count());
        }
        assert!(history.iter().any(|&n| n >= 56), "{history:?}");
    }

    #[test]
    fn a_link_that_needs_16_connections_gets_about_16() {
        let link = Link { per_connection: 0.5 * MIB, link: 8.0 * MIB };
        let mut t = [Tuner::new(4, 4, 256)];
        let (history, tail) = run(link, &mut t, 60.0, 40.0);
        assert!(tail[0] / 40.0 >= 0.9 * link.link);
        // About 16: probes a little above, backs off a little below.
        let late = &history[0][300..];
        assert!(late.iter().all(|&n| (12..=20).contains(&n)), "{late:?}");
    }

    #[test]
    fn where_more_connections_do_not_help_the_count_stays_low() {
        // Loopback: the CPU is the limit from the first connections on.
        let link = Link { per_connection: 400.0 * MIB, link: 600.0 * MIB };
        let mut t = [Tuner::new(4, 4, 256)];
        let (history, _) = run(link, &mut t, 30.0, 10.0);
        assert!(history[0].iter().skip(50).all(|&n| n <= 16), "{:?}", &history[0]);
    }

    #[test]
    fn two_transfers_on_one_link_share_it_fairly_and_fill_it() {
        let link = Link { per_connection: 0.25 * MIB, link: 16.0 * MIB };
        let mut t = [Tuner::new(4, 4, 256), Tuner::new(4, 4, 256)];
        let (_, tail) = run(link, &mut t, 180.0, 60.0);
        let (a, b) = (tail[0] / 60.0, tail[1] / 60.0);
        assert!((a - b).abs() <= 0.25 * a.max(b), "{} vs {} MiB/s", a / MIB, b / MIB);
        assert!(a + b >= 0.85 * link.link, "together {} MiB/s", (a + b) / MIB);
    }

    #[test]
    fn a_transfer_that_starts_late_gets_its_share_from_one_that_filled_the_link() {
        let link = Link { per_connection: 0.25 * MIB, link: 16.0 * MIB };
        let mut both = [(Tuner::new(4, 4, 256), 0.0), (Tuner::new(4, 4, 256), 40.0)];
        let (_, tail) = run_from(link, &mut both, 240.0, 60.0);
        let (a, b) = (tail[0] / 60.0, tail[1] / 60.0);
        assert!((a - b).abs() <= 0.25 * a.max(b), "{} vs {} MiB/s", a / MIB, b / MIB);
        assert!(a + b >= 0.85 * link.link);
    }

    #[test]
    fn the_count_follows_a_link_that_changes() {
        let fast = Link { per_connection: 0.25 * MIB, link: 16.0 * MIB };
        let mut t = [Tuner::new(4, 4, 256)];
        run(fast, &mut t, 40.0, 1.0);
        let high = t[0].count();
        let slow = Link { per_connection: 0.25 * MIB, link: 4.0 * MIB };
        let (history, _) = run(slow, &mut t, 120.0, 1.0);
        assert!(*history[0].last().unwrap() <= high / 2, "{high} -> {:?}", history[0].last());
    }

    #[test]
    fn idle_time_is_not_judged_and_limits_hold() {
        let mut t = Tuner::new(4, 4, 8);
        for i in 0..100 {
            assert_eq!(t.observe(Duration::from_millis(100 * i), 0, false), None);
        }
        assert_eq!(t.count(), 4);
        let link = Link { per_connection: 0.25 * MIB, link: 16.0 * MIB };
        let mut t = [Tuner::new(1, 4, 8)];
        let (history, _) = run(link, &mut t, 30.0, 1.0);
        assert!(history[0].iter().all(|&n| (4..=8).contains(&n)), "{:?}", history[0]);
    }
}
