//! Whether `auto` compresses at all. Compressing costs CPU (zstd level 3
//! runs at a few hundred MB/s per core) to save link time: on a link faster
//! than the cores can compress (loopback, 10 Gbit/s and more between small
//! hosts) it makes a transfer slower, not faster; on any slower link it
//! makes it faster, however busy the CPU.
//!
//! So the decision is made on throughput, window by window: once
//! compressing has kept at least half of the threads that can do it busy
//! (the cores, or the connections writing if they are fewer: a connection
//! compresses its frames one after the other) for two windows in a row,
//! the gate tries a window without, and keeps that only if it carried more than [`GAIN`]
//! times what the window before did. Closed, it tries compressing again now
//! and then, kept on the same terms. A trial that does not pay is undone,
//! and doubles the windows before the next. No I/O: the caller measures
//! (one gate per process: the cores are what is shared).

use std::time::Duration;

/// How long a window lasts; a trial's lasts half as long (what it costs
/// where it does not pay), long enough to show: sending as is, or not, shows
/// in what the connections are given to write within a round trip or two.
const WINDOW: Duration = Duration::from_secs(1);

/// Compressing is worth a trial without once it takes this share of the
/// threads that compress for this many windows in a row (one may be a
/// burst).
const BUSY: f64 = 0.5;
const BUSY_WINDOWS: u32 = 2;

/// A trial is kept when its window carried this many times the bytes per
/// second of the window before it.
const GAIN: f64 = 1.1;

/// Windows between trials at first, and at most.
const FIRST_REST: u32 = 4;
const MAX_REST: u32 = 256;

/// One window's figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct Window {
    /// How long the window lasted.
    pub wall: Duration,
    /// Time spent compressing (sampling included), all threads together.
    pub busy: Duration,
    /// Bytes of frames written, before compression.
    pub bytes: u64,
    /// Connections that compressed in it.
    pub writers: u64,
}

/// The gate; open at first (most links are slower than the compressor).
#[derive(Debug, Clone)]
pub struct Gate {
    cores: f64,
    open: bool,
    /// The rate of the window before a trial, while one runs.
    trial: Option<f64>,
    /// Busy windows in a row, open.
    busy: u32,
    /// Windows before the next trial may start, and how many a trial that
    /// does not pay leaves (doubling each time).
    rest: u32,
    backoff: u32,
}

impl Gate {
    /// A gate for a process that compresses on up to `cores` threads.
    pub fn new(cores: usize) -> Gate {
        Gate { cores: cores.max(1) as f64, open: true, trial: None, busy: 0, rest: 0, backoff: FIRST_REST }
    }

    /// Whether frames are compressed now.
    pub fn open(&self) -> bool {
        self.open
    }

    /// How long the window now lasts.
    pub fn window(&self) -> Duration {
        if self.trial.is_some() { WINDOW / 2 } else { WINDOW }
    }

    /// Takes one window's figures; returns whether frames are compressed
    /// in the next.
    pub fn observe(&mut self, w: Window) -> bool {
        let wall = w.wall.as_secs_f64().max(1e-9);
        let rate = w.bytes as f64 / wall;
        if let Some(before) = self.trial.take() {
            if rate > before * GAIN {
                self.backoff = FIRST_REST;
            } else {
                self.open = !self.open;
                self.backoff = (self.backoff * 2).min(MAX_REST);
            }
            self.rest = self.backoff;
            return self.open;
        }
        if self.rest > 0 {
            self.rest -= 1;
            return self.open;
        }
        let threads = self.cores.min(w.writers.max(1) as f64);
        let busy = w.busy.as_secs_f64() / (wall * threads) >= BUSY;
        self.busy = if busy { self.busy + 1 } else { 0 };
        // Open, a trial without only where compressing is a large cost;
        // closed, a trial with it whenever the rest is over.
        if !self.open || self.busy >= BUSY_WINDOWS {
            self.open = !self.open;
            self.trial = Some(rate);
            self.busy = 0;
        }
        self.open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A window of one second: `busy` seconds compressing, `mb` MB written,
    /// by many connections.
    fn window(busy: f64, mb: u64) -> Window {
        Window { wall: WINDOW, busy: Duration::from_secs_f64(busy), bytes: mb << 20, writers: 32 }
    }

    /// Runs `windows` windows on a link where compressing carries `with`
    /// MB/s taking `busy` seconds per second and sending as is `without`;
    /// returns the share of windows with compression.
    fn share_open(gate: &mut Gate, windows: usize, with: u64, busy: f64, without: u64) -> f64 {
        let mut open = 0;
        for _ in 0..windows {
            let w = if gate.open() { window(busy, with) } else { window(0.0, without) };
            open += gate.open() as usize;
            gate.observe(w);
        }
        open as f64 / windows as f64
    }

    #[test]
    fn cheap_compression_is_never_put_to_trial() {
        let mut g = Gate::new(2);
        for i in 0..100 {
            let busy = if i % 2 == 0 { 0.9 } else { 1.3 };
            assert!(g.observe(window(busy, 100)), "under half of two cores, bursts above");
        }
    }

    #[test]
    fn one_connection_compressing_most_of_the_time_is_put_to_trial() {
        let (mut one, mut eight) = (Gate::new(8), Gate::new(8));
        for (gate, writers) in [(&mut one, 1), (&mut eight, 8)] {
            for _ in 0..2 {
                gate.observe(Window { writers, ..window(0.7, 300) });
            }
        }
        assert!(!one.open(), "one of eight cores, but most of what one connection has: a trial");
        assert!(eight.open(), "eight connections with most of the cores idle");
    }

    #[test]
    fn a_link_faster_than_the_compressor_ends_up_without() {
        let mut g = Gate::new(2);
        let open = share_open(&mut g, 1000, 150, 1.8, 600);
        assert!(!g.open());
        assert!(open < 0.02, "compressed in {open} of the windows");
    }

    #[test]
    fn compression_that_pays_survives_its_trials_with_ever_longer_rests() {
        // A 300 MB/s link: raw 300, compressed (3x) as fast as two cores go.
        let mut g = Gate::new(2);
        assert!(g.observe(window(1.9, 700)), "busy cores, once");
        assert!(!g.observe(window(1.9, 700)), "twice: a trial without");
        assert!(g.observe(window(0.0, 300)), "it did not pay: undone");
        let mut trials = 0;
        let mut open_before = true;
        for _ in 0..2000 {
            let open = g.open();
            g.observe(if open { window(1.9, 700) } else { window(0.0, 300) });
            trials += (open_before && !open) as usize;
            open_before = open;
        }
        assert!(g.open());
        // Rests of 8, 16, … 256 windows, then one trial every 257.
        assert!((6..=12).contains(&trials), "{trials} trials");
    }

    #[test]
    fn a_closed_gate_opens_again_when_the_link_becomes_the_limit() {
        let mut g = Gate::new(2);
        share_open(&mut g, 100, 150, 1.8, 600);
        assert!(!g.open());
        // The link slows down: 50 MB/s raw, 150 compressed.
        share_open(&mut g, 300, 150, 0.8, 50);
        assert!(g.open(), "a trial with compression carried three times as much");
    }

    #[test]
    fn idle_windows_change_nothing() {
        let mut g = Gate::new(2);
        for _ in 0..10 {
            assert!(g.observe(window(0.0, 0)));
        }
    }
}
