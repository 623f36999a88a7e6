//! What the user sees: itemized changes on stdout, one line per problem on
//! stderr, a progress bar on a terminal, a summary at the end.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pareco_engine::{Change, Problem, Reporter, Stats, Summary};
use pareco_proto::RelPath;

/// Prints events as they happen.
pub struct Console {
    /// Print itemized changes.
    pub itemize: bool,
    /// The progress bar to print around, if any.
    pub bar: Option<ProgressBar>,
}

impl Console {
    fn print(&self, to_stderr: bool, line: String) {
        let write = || {
            if to_stderr {
                eprintln!("{line}");
            } else {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
            }
        };
        match &self.bar {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
    }
}

impl Reporter for Console {
    fn change(&self, path: &RelPath, change: Change) {
        if self.itemize {
            let suffix = if change == Change::NewDir { "/" } else { "" };
            self.print(false, format!("{:<6} {path}{suffix}{}", change.word(), change.detail()));
        }
    }

    fn problem(&self, path: &RelPath, problem: &Problem) {
        self.print(true, format!("pareco: {path}: {problem}"));
    }
}

/// A progress bar on stderr that follows the counters, if stderr is a terminal.
pub fn progress(stats: &Arc<Stats>, quiet: bool) -> Option<ProgressBar> {
    if quiet || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(5));
    bar.set_style(
        ProgressStyle::with_template("{spinner} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}")
            .expect("valid template"),
    );
    let (bar2, stats) = (bar.clone(), stats.clone());
    tokio::spawn(async move {
        while !bar2.is_finished() {
            let s = stats.snapshot();
            bar2.set_length(s.bytes_total.max(1));
            bar2.set_position(s.bytes_processed + s.bytes_in_progress);
            bar2.set_message(format!("{} files, {} sent", s.files_total, human(s.bytes_transferred)));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    Some(bar)
}

/// `1.5 GiB`-style sizes.
pub use pareco_plan::human_size as human;

/// The one-line summary printed at the end.
pub fn summary_line(s: &Summary, dry_run: bool) -> String {
    let rate = s.bytes_transferred as f64 / s.duration_s.max(1e-9);
    let over = match s.connections {
        0 => String::new(),
        1 => " over 1 connection".to_string(),
        n => format!(" over {n} connections"),
    };
    let mut line = format!(
        "{} {} of {} files ({} of {} sent, {} on the wire{over}) in {:.1} s, {}/s",
        if dry_run { "would sync" } else { "synced" },
        s.files_transferred,
        s.files_total,
        human(s.bytes_transferred),
        human(s.bytes_total),
        human(s.wire_bytes_sent + s.wire_bytes_received),
        s.duration_s,
        human(rate as u64),
    );
    for (n, what) in [
        (s.entries_deleted, "deleted"),
        (s.files_changed, "changed while copied"),
        (s.files_vanished, "vanished"),
        (s.warnings, "skipped"),
        (s.errors, "failed"),
    ] {
        if n > 0 {
            line.push_str(&format!("; {n} {what}"));
        }
    }
    line
}

/// Writes `value` as pretty JSON (one trailing newline) to `path`: the
/// `--stats-json` file of every command.
pub fn write_json(path: &std::path::Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::write(path, serde_json::to_string_pretty(value)? + "\n")
        .with_context(|| format!("writing {}", path.display()))
}
