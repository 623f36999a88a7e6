//! Progress while a command runs: a bar on a terminal, or one plain line per
//! `--progress-interval` when stderr is a file, a pipe or journald.
//!
//! Both show the same figures, made by one pure function ([`Figures::line`])
//! from one counter of bytes done and one of bytes known so far, so the
//! percent, the sizes, the rate and the ETA always agree. What is shown is
//! polled from the command's counters; this module never changes them.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::output::human;

/// What a running command has done, read from its counters at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    /// Bytes done (compared, sent, received, forwarded…): the one counter
    /// that the percent, the rate and the ETA follow.
    pub done: u64,
    /// Bytes to do, as known so far (`None`: not known at all, a stream).
    pub total: Option<u64>,
    /// Whether `total` may still grow (the walk is still listing the tree).
    pub growing: bool,
    /// Files done and files known so far.
    pub files: Option<(u64, u64)>,
    /// What `done` is: "done", "sent", "received".
    pub verb: &'static str,
    /// Anything else worth a glance, already worded.
    pub extra: String,
}

impl Figures {
    /// The progress figures as one line: `45% 1.2 GiB of 2.6 GiB done, 120
    /// of 300 files, 48.2 MiB/s, eta 27s` (`rate` in bytes per second).
    pub fn line(&self, rate: Option<f64>) -> String {
        let mut parts = Vec::new();
        match self.total {
            Some(total) => {
                let done = self.done.min(total);
                parts.push(format!("{}% {} of {} {}", percent(done, total), human(done), human(total), self.verb));
            }
            None => parts.push(format!("{} {}", human(self.done), self.verb)),
        }
        if let Some((done, total)) = self.files {
            parts.push(format!("{} of {total} files", done.min(total)));
        }
        if self.growing {
            // The totals are what the walk has found so far.
            let last = parts.last_mut().expect("one part at least");
            last.push_str(" (still listing)");
        }
        if let Some(rate) = rate {
            parts.push(format!("{}/s", human(rate as u64)));
            if let Some(total) = self.total {
                let left = total.saturating_sub(self.done);
                match eta(left, rate) {
                    Some(eta) if self.growing => parts.push(format!("eta {} or more", duration(eta))),
                    Some(eta) => parts.push(format!("eta {}", duration(eta))),
                    None => {}
                }
            }
        }
        if !self.extra.is_empty() {
            parts.push(self.extra.clone());
        }
        parts.join(", ")
    }
}

/// Percent done, rounded down (so that 100 % means all of it).
fn percent(done: u64, total: u64) -> u64 {
    if total == 0 { 100 } else { (done as u128 * 100 / total as u128) as u64 }
}

/// Time to do `left` bytes at `rate`, if the rate says anything.
fn eta(left: u64, rate: f64) -> Option<Duration> {
    (rate >= 1.0).then(|| Duration::from_secs_f64((left as f64 / rate).min(1e9)))
}

/// `27s`, `4m05s`, `3h12m`, `2d04h`.
pub fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// The rate of a counter over a recent window of samples.
#[derive(Debug)]
pub struct Rate {
    window: Duration,
    samples: VecDeque<(Instant, u64)>,
}

impl Rate {
    /// A rate over the last `window`.
    pub fn new(window: Duration) -> Rate {
        Rate { window, samples: VecDeque::new() }
    }

    /// Takes the counter's value `at` a moment and returns its rate (bytes
    /// per second) since the oldest sample still in the window, once there
    /// is one.
    pub fn sample(&mut self, at: Instant, value: u64) -> Option<f64> {
        while self.samples.len() > 1 && at.duration_since(self.samples[1].0) >= self.window {
            self.samples.pop_front();
        }
        self.samples.push_back((at, value));
        let &(t0, v0) = self.samples.front()?;
        let dt = at.duration_since(t0).as_secs_f64();
        (dt > 0.0).then(|| value.saturating_sub(v0) as f64 / dt)
    }
}

/// How progress is shown.
#[derive(Debug, Clone, Copy)]
pub struct Mode {
    /// Show nothing (`-q`).
    pub quiet: bool,
    /// Without a terminal, a line this often (`None`: no lines).
    pub interval: Option<Duration>,
}

impl Mode {
    /// `-q` and `--progress-interval SECONDS` (0: no lines).
    pub fn new(quiet: bool, seconds: u64) -> Mode {
        Mode { quiet, interval: (seconds > 0).then(|| Duration::from_secs(seconds)) }
    }
}

/// A running display of progress; [`Display::finish`] ends it.
pub struct Display {
    bar: Option<ProgressBar>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Display {
    /// Shows what `figures` says: as a bar if stderr is a terminal, else as
    /// `pareco: {label}: …` every `mode.interval`; nothing if quiet.
    pub fn start(mode: Mode, label: &'static str, figures: impl Fn() -> Figures + Send + 'static) -> Display {
        if mode.quiet {
            return Display { bar: None, task: None };
        }
        if std::io::stderr().is_terminal() {
            // Hidden until the first figures are in: no `0 B of 1 B` frame.
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
            let bar2 = bar.clone();
            let task = tokio::spawn(async move {
                let mut rate = Rate::new(Duration::from_secs(10));
                let mut shown = false;
                loop {
                    let f = figures();
                    let r = rate.sample(Instant::now(), f.done);
                    let style = match f.total {
                        Some(_) => "{percent:>3}% [{bar:30}] {msg}",
                        None => "{spinner} {msg}",
                    };
                    if !shown && (f.total.is_some_and(|t| t > 0) || f.done > 0) {
                        bar2.set_style(ProgressStyle::with_template(style).expect("valid template"));
                        bar2.set_draw_target(ProgressDrawTarget::stderr_with_hz(5));
                        shown = true;
                    }
                    if let Some(total) = f.total {
                        bar2.set_length(total.max(f.done));
                    }
                    bar2.set_position(f.done);
                    bar2.set_message(f.line(r).split_once(' ').filter(|_| f.total.is_some()).map_or_else(
                        || f.line(r),
                        // The bar shows the percent already.
                        |(_, rest)| rest.to_owned(),
                    ));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
            return Display { bar: Some(bar), task: Some(task) };
        }
        let Some(interval) = mode.interval else { return Display { bar: None, task: None } };
        let task = tokio::spawn(async move {
            let mut rate = Rate::new(interval);
            rate.sample(Instant::now(), figures().done);
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let f = figures();
                let r = rate.sample(Instant::now(), f.done);
                eprintln!("pareco: {label}: {}", f.line(r));
            }
        });
        Display { bar: None, task: Some(task) }
    }

    /// The bar to print around (`suspend`), if one is drawn.
    pub fn bar(&self) -> Option<ProgressBar> {
        self.bar.clone()
    }

    /// Stops the display and clears the bar.
    pub fn finish(self) {
        if let Some(task) = &self.task {
            task.abort();
        }
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures() -> Figures {
        Figures {
            done: 3 << 30,
            total: Some(4 << 30),
            growing: false,
            files: Some((120, 300)),
            verb: "done",
            extra: String::new(),
        }
    }

    #[test]
    fn a_line_has_percent_sizes_files_rate_and_eta_from_one_counter() {
        let line = figures().line(Some((512 << 20) as f64));
        assert_eq!(line, "75% 3.0 GiB of 4.0 GiB done, 120 of 300 files, 512.0 MiB/s, eta 2s");
    }

    #[test]
    fn a_total_still_growing_says_so_and_the_eta_is_a_floor() {
        let f = Figures { growing: true, ..figures() };
        let line = f.line(Some((1 << 20) as f64));
        assert_eq!(
            line,
            "75% 3.0 GiB of 4.0 GiB done, 120 of 300 files (still listing), 1.0 MiB/s, eta 17m04s or more"
        );
    }

    #[test]
    fn done_never_shows_more_than_the_total() {
        let f = Figures { done: 5, total: Some(4), files: Some((3, 2)), ..figures() };
        assert!(f.line(None).starts_with("100% 4 B of 4 B done, 2 of 2 files"), "{}", f.line(None));
        let empty = Figures { done: 0, total: Some(0), ..figures() };
        assert!(empty.line(None).starts_with("100% "));
    }

    #[test]
    fn a_stream_has_no_total_and_no_eta() {
        let f = Figures { done: 2048, total: None, files: None, verb: "sent", extra: "x".into(), ..figures() };
        assert_eq!(f.line(Some(1024.0)), "2.0 KiB sent, 1.0 KiB/s, x");
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(duration(Duration::from_secs(27)), "27s");
        assert_eq!(duration(Duration::from_secs(245)), "4m05s");
        assert_eq!(duration(Duration::from_secs(3 * 3600 + 12 * 60)), "3h12m");
        assert_eq!(duration(Duration::from_secs(2 * 86400 + 4 * 3600)), "2d04h");
    }

    #[test]
    fn the_rate_follows_a_window_of_samples() {
        let t0 = Instant::now();
        let mut rate = Rate::new(Duration::from_secs(10));
        assert_eq!(rate.sample(t0, 0), None);
        assert_eq!(rate.sample(t0 + Duration::from_secs(2), 200), Some(100.0));
        // Samples older than the window are dropped: the rate is recent.
        rate.sample(t0 + Duration::from_secs(12), 1200);
        let r = rate.sample(t0 + Duration::from_secs(22), 1200).unwrap();
        assert_eq!(r, 0.0);
    }
}
