//! `pareco forward`: the command line and the signals around the
//! forwarder (pareco-forward): SIGHUP reloads, SIGUSR1 prints the
//! counters, SIGTERM or SIGINT drains (a second one cuts what is left).

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use pareco_forward::config::{self, Endpoint};
use pareco_forward::stats::ForwardSnapshot;
use pareco_forward::{Config, Cut, Forwarder, ForwarderOptions, Listening, RuleOptions};
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::ForwardArgs;
use crate::output::{human, write_json};

pub async fn run(args: ForwardArgs) -> Result<u8> {
    let defaults = RuleOptions {
        proxy: args.proxy_protocol,
        max_connections: args.max_connections,
        when_full: args.when_full,
        idle_timeout: args.idle_timeout.0,
        connect_timeout: args.connect_timeout,
        source: None,
    };
    let load = || -> Result<Config> {
        let config = match &args.config {
            Some(path) => pareco_forward::load(path, &defaults)?,
            None => rules_from_args(&args.rules, &defaults)?,
        };
        for warning in &config.warnings {
            tracing::warn!("{warning}");
        }
        Ok(config)
    };
    let config = load()?;
    if args.check {
        for rule in &config.rules {
            println!("{} -> {}", rule.listen, rule.targets_text());
        }
        return Ok(0);
    }
    // Handlers first: a signal right after the announcement must be handled, not kill us.
    let (mut hup, mut usr1) = (signal(SignalKind::hangup())?, signal(SignalKind::user_defined1())?);
    let (mut term, mut int) = (signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?);
    let pid_file = config.pid_file.clone();
    let mut forwarder = Forwarder::start(config, ForwarderOptions { splice: !args.no_splice }).await?;
    // Everything that can fail to start before anything says it started.
    let published = Arc::new(Mutex::new(forwarder.snapshot()));
    crate::metrics::serve(args.metrics.metrics_listen, {
        let published = published.clone();
        move |f| forward_metrics(&published.lock().expect("snapshot lock"), f)
    })
    .await?;
    if let Some(path) = &pid_file {
        std::fs::write(path, format!("{}\n", std::process::id()))
            .with_context(|| format!("cannot write the pid file {}", path.display()))?;
    }
    announce(&forwarder.listening(), &args)?;
    let mut publish_tick = tokio::time::interval(PUBLISH_EVERY);
    let publish = |forwarder: &Forwarder| *published.lock().expect("snapshot lock") = forwarder.snapshot();
    let every = std::time::Duration::from_secs(args.progress_interval.max(1));
    let mut progress_tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut stats_tick = tokio::time::interval(args.stats_interval);
    let write_stats = |forwarder: &Forwarder| {
        if let Some(path) = &args.stats_json
            && let Err(e) = write_json_atomically(path, &forwarder.snapshot())
        {
            tracing::warn!("{e:#}");
        }
    };
    loop {
        tokio::select! {
            _ = hup.recv() => match &args.config {
                None => tracing::info!("SIGHUP: no --config file, nothing to reload"),
                Some(path) => match load() {
                    Err(e) => tracing::error!("reload failed, the running rules stay: {e:#}"),
                    Ok(config) => {
                        let report = forwarder.reload(config).await;
                        announce(&report.started, &args)?;
                        for listen in &report.changed {
                            tracing::info!("{listen}: rule changed; new connections follow it");
                        }
                        for listen in &report.stopped {
                            tracing::info!("{listen}: rule removed; no new connections, open ones go on");
                        }
                        for e in &report.failed {
                            tracing::error!("{e}");
                        }
                        tracing::info!("reloaded {}", path.display());
                    }
                },
            },
            _ = usr1.recv() => print_stats(&forwarder),
            _ = stats_tick.tick(), if args.stats_json.is_some() => write_stats(&forwarder),
            _ = publish_tick.tick() => publish(&forwarder),
            _ = progress_tick.tick(), if args.progress_interval > 0 => progress_line(&forwarder),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    forwarder.stop_accepting().await;
    let open = forwarder.snapshot().active;
    tracing::info!("draining: listeners closed, waiting for {open} open connections to finish");
    let mut deadline = args.drain_timeout.0.map(|t| tokio::time::Instant::now() + t);
    let cut_now = |forwarder: &Forwarder, why: Cut| {
        let n = forwarder.cut(why);
        if n > 0 {
            let why = match why {
                Cut::DrainTimeout => "drain timeout",
                Cut::Signal => "second signal",
            };
            tracing::warn!("{why}: resetting {n} connections still open");
        }
    };
    loop {
        tokio::select! {
            () = forwarder.closed() => break,
            () = sleep_until(deadline) => {
                cut_now(&forwarder, Cut::DrainTimeout);
                deadline = None;
            }
            _ = term.recv() => cut_now(&forwarder, Cut::Signal),
            _ = int.recv() => cut_now(&forwarder, Cut::Signal),
            _ = hup.recv() => tracing::info!("SIGHUP while draining: not reloading"),
            _ = usr1.recv() => print_stats(&forwarder),
            _ = stats_tick.tick(), if args.stats_json.is_some() => write_stats(&forwarder),
            _ = publish_tick.tick() => publish(&forwarder),
            _ = progress_tick.tick(), if args.progress_interval > 0 => progress_line(&forwarder),
        }
    }
    write_stats(&forwarder);
    if let Some(path) = &pid_file {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!("stopped: every connection closed");
    Ok(0)
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// The rules of the command line: LISTEN TARGET[,TARGET…] pairs.
fn rules_from_args(words: &[String], defaults: &RuleOptions) -> Result<Config> {
    if words.len() % 2 == 1 {
        bail!("{:?} has no TARGET (rules are LISTEN TARGET pairs)", words[words.len() - 1]);
    }
    let mut config = Config::default();
    for pair in words.chunks(2) {
        let listen = Endpoint::parse_listen(&pair[0]).context("bad LISTEN")?;
        let targets = config::parse_targets(&pair[1]).context("bad TARGET")?;
        if listen.port != 0 && config.rules.iter().any(|r| r.listen == listen) {
            bail!("{listen} is given twice");
        }
        let access = Default::default();
        config.rules.push(pareco_forward::Rule { listen, targets, access, options: defaults.clone(), line: 0 });
    }
    Ok(config)
}

/// `listening on HOST:PORT -> TARGET`, one line per rule, on stdout (on
/// stderr when stdout carries `--stats-json -`).
fn announce(rules: &[Listening], args: &ForwardArgs) -> Result<()> {
    let mut out: Box<dyn Write> = match crate::output::json_on_stdout(args.stats_json.as_deref()) {
        true => Box::new(std::io::stderr().lock()),
        false => Box::new(std::io::stdout().lock()),
    };
    for l in rules {
        writeln!(out, "listening on {} -> {}", l.local, l.rule.targets_text())?;
    }
    out.flush()?;
    Ok(())
}

/// The counters on stderr (SIGUSR1), whatever the log level.
fn print_stats(forwarder: &Forwarder) {
    let s = forwarder.snapshot();
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "pareco forward: {} connections open, at most {} at once", s.active, s.connections);
    for rule in &s.rules {
        let _ = writeln!(err, "pareco forward: {rule}");
    }
}

/// How often the counters that `--metrics-listen` shows are refreshed.
const PUBLISH_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// One line of counters on stderr (`--progress-interval`).
fn progress_line(forwarder: &Forwarder) {
    let s = forwarder.snapshot();
    let sum = |f: fn(&pareco_forward::stats::RuleSnapshot) -> u64| s.rules.iter().map(f).sum::<u64>();
    eprintln!(
        "pareco: forward: {} connections open, {} in all, {} refused, {} failed to connect; {} up, {} down",
        s.active,
        sum(|r| r.total),
        sum(|r| r.refused),
        sum(|r| r.failed_connects),
        human(sum(|r| r.bytes_up)),
        human(sum(|r| r.bytes_down)),
    );
}

/// What `--metrics-listen` shows of the forwarder: per rule (label
/// `listen`, the rule's listen address as configured, and `local`, the
/// address bound).
fn forward_metrics(s: &ForwardSnapshot, f: &mut crate::metrics::Families) {
    f.gauge("pareco_connections", "Connections open now, all rules.", s.active);
    f.gauge("pareco_connections_peak", "The most connections open at once.", s.connections);
    for r in &s.rules {
        let labels = || vec![("listen", r.listen.clone()), ("local", r.local.clone())];
        f.gauge_with("pareco_forward_active", "Connections open now, per rule.", labels(), r.active as f64);
        f.counter_with("pareco_forward_connections", "Connections accepted, per rule.", labels(), r.total);
        f.counter_with(
            "pareco_forward_refused",
            "Connections refused (access rules, limits), per rule.",
            labels(),
            r.refused,
        );
        f.counter_with(
            "pareco_forward_failed_connects",
            "Connections whose every target failed, per rule.",
            labels(),
            r.failed_connects,
        );
        f.counter_with("pareco_forward_up_bytes", "Bytes from clients to targets, per rule.", labels(), r.bytes_up);
        f.counter_with("pareco_forward_down_bytes", "Bytes from targets to clients, per rule.", labels(), r.bytes_down);
    }
}

/// Written whole then renamed, so that a reader never sees half a file
/// (`-`: standard output, one object each time).
fn write_json_atomically(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    if path == Path::new("-") {
        return write_json(path, value);
    }
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    write_json(Path::new(&temporary), value)?;
    std::fs::rename(&temporary, path).with_context(|| format!("writing {}", path.display()))
}
