//! What the user sees: itemized changes on stdout, one line per problem on
//! stderr, progress (see [`crate::progress`]), a summary at the end.

use std::io::Write;

use indicatif::ProgressBar;
use pareco_engine::{Change, Location, Problem, Reporter, Stats, Summary};
use pareco_proto::RelPath;

use crate::progress::Figures;

/// Prints events as they happen.
pub struct Console {
    /// Print itemized changes.
    pub itemize: bool,
    /// Itemized changes go to stderr (stdout carries `--stats-json -`).
    pub changes_to_stderr: bool,
    /// The progress bar to print around, if any.
    pub bar: Option<ProgressBar>,
    /// What to call the top of the tree: the file's name when the source is
    /// one file (its path relative to itself is empty).
    pub root_name: Option<String>,
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

    fn name(&self, path: &RelPath) -> String {
        match &self.root_name {
            Some(name) if path.is_root() => name.clone(),
            _ => path.to_string(),
        }
    }
}

impl Reporter for Console {
    fn change(&self, path: &RelPath, change: Change) {
        if self.itemize {
            let suffix = if change == Change::NewDir { "/" } else { "" };
            self.print(
                self.changes_to_stderr,
                format!("{:<6} {}{suffix}{}", change.word(), self.name(path), change.detail()),
            );
        }
    }

    fn problem(&self, path: &RelPath, problem: &Problem) {
        self.print(true, format!("pareco: {}: {problem}", self.name(path)));
    }
}

/// The name a single-file source goes by: the last component of its path.
pub fn file_name(location: &Location) -> Option<String> {
    match location {
        Location::Local(path) => path.file_name().map(|n| n.to_string_lossy().into_owned()),
        Location::Remote { path, .. } => path.split_last().map(|(_, name)| name.to_string()),
    }
}

/// The figures of a running sync: bytes done (compared or sent: one
/// counter) of bytes listed, files done of files listed.
pub fn sync_figures(stats: &Stats) -> Figures {
    let s = stats.snapshot();
    Figures {
        done: s.bytes_processed + s.bytes_in_progress,
        total: Some(s.bytes_total),
        growing: !stats.listed.load(std::sync::atomic::Ordering::Relaxed),
        files: Some((s.files_done, s.files_total)),
        verb: "done",
        extra: format!("{} of content sent", human(s.bytes_transferred)),
    }
}

/// `1.5 GiB`-style sizes.
pub use pareco_plan::human_size as human;

/// The one-line summary printed at the end: `synced: 28 files (1.2 GiB), 3
/// transferred: 2.0 MiB of content sent, …`; a dry run says what would be
/// done, never that it was.
pub fn summary_line(s: &Summary, dry_run: bool) -> String {
    let plural = if s.files_total == 1 { "" } else { "s" };
    let files = format!("{} file{plural} ({})", s.files_total, human(s.bytes_total));
    let mut line = if dry_run {
        format!("dry run: {files}, {} would be transferred; nothing was changed", s.files_transferred)
    } else {
        let rate = s.bytes_transferred as f64 / s.duration_s.max(1e-9);
        let over = match s.connections {
            0 => String::new(),
            1 => " over 1 connection".to_string(),
            n => format!(" over {n} connections"),
        };
        format!(
            "synced: {files}, {} transferred: {} of content sent, {} on the wire{over}, in {:.1} s ({}/s)",
            s.files_transferred,
            human(s.bytes_transferred.min(s.bytes_total)),
            human(s.wire_bytes_sent + s.wire_bytes_received),
            s.duration_s,
            human(rate as u64),
        )
    };
    let deleted = if dry_run { "would be deleted" } else { "deleted" };
    for (n, what) in [
        (s.entries_deleted, deleted),
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

/// Whether `--stats-json` is `-`: standard output is then the statistics'
/// alone, and what else would go there goes to standard error.
pub fn json_on_stdout(stats_json: Option<&std::path::Path>) -> bool {
    stats_json == Some(std::path::Path::new("-"))
}

/// Writes `value` as pretty JSON (one trailing newline) to `path`: the
/// `--stats-json` file of every command.
/// `-` is standard output.
pub fn write_json(path: &std::path::Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    use anyhow::Context;
    let text = serde_json::to_string_pretty(value)? + "\n";
    if path == std::path::Path::new("-") {
        let mut out = std::io::stdout().lock();
        return out
            .write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .context("writing the statistics to standard output");
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
