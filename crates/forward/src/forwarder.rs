//! The forwarder at work: a listener per rule, a task per connection, and
//! the rule set swapped on reload without touching established connections.
//!
//! - Each rule's listener runs an accept loop; each accepted connection is
//!   checked against allow/deny and the rule's `max`, then connected to the
//!   first target that accepts (host names resolved anew for each
//!   connection: DNS is what changes on a cutover night), then relayed.
//! - A reload keeps the listeners of rules that stay (a changed rule's
//!   targets and options apply to new connections), binds new ones, and
//!   closes removed ones; connections in progress are never touched, and a
//!   removed rule's counters stay visible until its last connection ends.
//! - A drain closes every listener ([`Forwarder::stop_accepting`]), then
//!   waits for connections to end ([`Forwarder::closed`]), or resets those
//!   left when the caller's drain timeout runs out ([`Forwarder::cut`]).
//!
//! Never blocks a runtime thread (names are resolved by tokio's resolver
//! pool, log files take one short write per connection) and never gives a
//! connection a thread of its own.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::access::{self, AccessList, Verdict};
use crate::config::{Config, Endpoint, Rule, WhenFull};
use crate::pipes::{BufferPool, PipePool};
use crate::proxy_header;
use crate::record::{ConnectionRecord, Cut, Ending, Side};
use crate::relay::{self, RelayContext};
use crate::stats::{ForwardSnapshot, RuleStats};

/// Connections a listener's kernel queue holds before clients are told to
/// retry (capped by `net.core.somaxconn`).
const LISTEN_BACKLOG: u32 = 4096;

/// Why the forwarder could not start (or a rule could not be added).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A listen address could not be bound (in use, not local, no permission).
    #[error("cannot listen on {listen}: {error}")]
    Listen {
        /// The rule's listen address.
        listen: Endpoint,
        /// Why.
        error: io::Error,
    },
    /// The log file could not be opened.
    #[error("cannot open log file {}: {error}", path.display())]
    LogFile {
        /// The `logfile` of the configuration.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// A configuration without any rule.
    #[error("nothing to forward: no rules")]
    NoRules,
}

/// Forwarder-wide settings that no configuration file changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwarderOptions {
    /// Move bytes with splice(2) (else through a user-memory buffer).
    pub splice: bool,
}

impl Default for ForwarderOptions {
    fn default() -> Self {
        ForwarderOptions { splice: true }
    }
}

/// A rule that is listening.
#[derive(Debug, Clone)]
pub struct Listening {
    /// The address bound (the port chosen for port 0).
    pub local: SocketAddr,
    /// The rule.
    pub rule: Rule,
}

/// What a reload did.
#[derive(Debug, Default)]
pub struct Reloaded {
    /// Rules that started listening.
    pub started: Vec<Listening>,
    /// Rules whose targets or options changed (for new connections).
    pub changed: Vec<Endpoint>,
    /// Rules that stopped accepting (their connections go on).
    pub stopped: Vec<Endpoint>,
    /// New rules that could not listen; the others were applied.
    pub failed: Vec<StartError>,
}

/// The running forwarder. Dropping it closes the listeners; connections
/// in progress run on until they end.
pub struct Forwarder {
    listeners: Vec<Listener>,
    /// Removed rules whose connections are still open.
    retired: Vec<Listener>,
    /// The rules of a forwarder that stopped accepting (it drains): still
    /// counted, to the end.
    stopped: Vec<Listener>,
    shared: Arc<Shared>,
}

/// What a rule's connections see of it, replaced whole on reload.
struct Settings {
    rule: Rule,
    global: AccessList,
}

struct Listener {
    rule: Rule,
    local: SocketAddr,
    settings: watch::Sender<Arc<Settings>>,
    state: Arc<RuleState>,
    accept: JoinHandle<()>,
}

/// A rule's counters, and the wake-up of an accept loop waiting for a slot.
#[derive(Default)]
struct RuleState {
    stats: RuleStats,
    slot_freed: Notify,
}

/// What every connection shares.
struct Shared {
    pipes: Option<PipePool>,
    buffers: BufferPool,
    log: Mutex<Option<LogFile>>,
    abort: watch::Sender<Option<Cut>>,
    active: AtomicU64,
    peak: AtomicU64,
    all_closed: Notify,
}

struct LogFile {
    path: PathBuf,
    file: std::fs::File,
    common: bool,
}

impl Forwarder {
    /// Binds every rule of `config` and starts accepting. Nothing runs if
    /// any rule cannot listen.
    pub async fn start(config: Config, options: ForwarderOptions) -> Result<Forwarder, StartError> {
        if config.rules.is_empty() {
            return Err(StartError::NoRules);
        }
        let shared = Arc::new(Shared {
            pipes: options.splice.then(PipePool::default),
            buffers: BufferPool::default(),
            log: Mutex::new(open_log(&config)?),
            abort: watch::channel(None).0,
            active: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            all_closed: Notify::new(),
        });
        let mut forwarder = Forwarder { listeners: Vec::new(), retired: Vec::new(), stopped: Vec::new(), shared };
        let global = config.access.clone();
        for rule in config.rules {
            let listener = forwarder.listen(rule, &global).await?;
            forwarder.listeners.push(listener);
        }
        Ok(forwarder)
    }

    /// The rules listening now, in configuration order.
    pub fn listening(&self) -> Vec<Listening> {
        self.listeners.iter().map(|l| Listening { local: l.local, rule: l.rule.clone() }).collect()
    }

    /// Applies a new configuration: see the module documentation. The log
    /// file is reopened (so that log rotation works as with rinetd).
    pub async fn reload(&mut self, config: Config) -> Reloaded {
        let mut report = Reloaded::default();
        match open_log(&config) {
            Ok(log) => *self.shared.log.lock().unwrap_or_else(|e| e.into_inner()) = log,
            Err(e) => report.failed.push(e),
        }
        // Close removed listeners first: a new rule may want their port.
        let (kept, removed): (Vec<_>, Vec<_>) = std::mem::take(&mut self.listeners)
            .into_iter()
            .partition(|l| config.rules.iter().any(|r| r.listen == l.rule.listen));
        for listener in removed {
            report.stopped.push(listener.rule.listen.clone());
            self.retire(listener).await;
        }
        self.retired.retain(|l| l.state.stats.active() > 0);
        let mut kept: Vec<Option<Listener>> = kept.into_iter().map(Some).collect();
        for rule in config.rules {
            let slot = kept.iter_mut().find(|l| l.as_ref().is_some_and(|l| l.rule.listen == rule.listen));
            match slot.and_then(Option::take) {
                Some(mut listener) => {
                    let old = listener.settings.borrow().clone();
                    if old.rule != rule || old.global != config.access {
                        if !old.rule.same_as(&rule) {
                            report.changed.push(rule.listen.clone());
                        }
                        listener
                            .settings
                            .send_replace(Arc::new(Settings { rule: rule.clone(), global: config.access.clone() }));
                        listener.rule = rule;
                    }
                    self.listeners.push(listener);
                }
                None => match self.listen(rule, &config.access).await {
                    Ok(listener) => {
                        report.started.push(Listening { local: listener.local, rule: listener.rule.clone() });
                        self.listeners.push(listener);
                    }
                    Err(e) => report.failed.push(e),
                },
            }
        }
        // Rules on port 0 pair up in order; one left over was removed.
        for listener in kept.into_iter().flatten() {
            report.stopped.push(listener.rule.listen.clone());
            self.retire(listener).await;
        }
        report
    }

    /// Every rule's counters now.
    pub fn snapshot(&self) -> ForwardSnapshot {
        let row = |l: &Listener, removed| {
            l.state.stats.snapshot(l.rule.listen.to_string(), l.local.to_string(), l.rule.targets_text(), removed)
        };
        let mut rules: Vec<_> = self.listeners.iter().map(|l| row(l, false)).collect();
        rules.extend(self.stopped.iter().map(|l| row(l, true)));
        rules.extend(self.retired.iter().filter(|l| l.state.stats.active() > 0).map(|l| row(l, true)));
        ForwardSnapshot { active: self.shared.active.load(Relaxed), connections: self.shared.peak.load(Relaxed), rules }
    }

    /// Closes every listener (new connections are refused by the kernel);
    /// connections in progress go on. The first step of a drain.
    pub async fn stop_accepting(&mut self) {
        for mut listener in std::mem::take(&mut self.listeners) {
            close(&mut listener).await;
            self.stopped.push(listener);
        }
    }

    /// Closes a listener whose rule was removed, and keeps its counters
    /// while its connections last.
    async fn retire(&mut self, mut listener: Listener) {
        close(&mut listener).await;
        self.retired.push(listener);
    }

    /// Completes when no connection is open.
    pub async fn closed(&self) {
        self.shared.all_closed().await
    }

    /// Resets every open connection, for `why`; returns how many there
    /// were. They are gone soon after: see [`Forwarder::closed`].
    pub fn cut(&self, why: Cut) -> u64 {
        let open = self.shared.active.load(Relaxed);
        self.shared.abort.send_replace(Some(why));
        open
    }

    async fn listen(&self, rule: Rule, global: &AccessList) -> Result<Listener, StartError> {
        let fail = |error| StartError::Listen { listen: rule.listen.clone(), error };
        let socket = bind(&rule.listen).await.map_err(fail)?;
        let local = socket.local_addr().map_err(fail)?;
        let settings = Arc::new(Settings { rule: rule.clone(), global: global.clone() });
        let (sender, receiver) = watch::channel(settings);
        let state = Arc::new(RuleState::default());
        let accept = tokio::spawn(accept_loop(socket, local, receiver, state.clone(), self.shared.clone()));
        Ok(Listener { rule, local, settings: sender, state, accept })
    }
}

/// Stops a listener accepting: its socket is gone when this returns, so
/// that its port is free.
async fn close(listener: &mut Listener) {
    listener.accept.abort();
    let _ = (&mut listener.accept).await;
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        for listener in &self.listeners {
            listener.accept.abort();
        }
    }
}

fn open_log(config: &Config) -> Result<Option<LogFile>, StartError> {
    let Some(path) = &config.logfile else { return Ok(None) };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|error| StartError::LogFile { path: path.clone(), error })?;
    Ok(Some(LogFile { path: path.clone(), file, common: config.log_common }))
}

async fn bind(listen: &Endpoint) -> io::Result<TcpListener> {
    let addr = tokio::net::lookup_host((listen.host.as_str(), listen.port))
        .await?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the name has no address"))?;
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

impl Shared {
    async fn all_closed(&self) {
        loop {
            let notified = self.all_closed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.active.load(Relaxed) == 0 {
                return;
            }
            notified.await;
        }
    }

    fn log(&self, record: &ConnectionRecord) {
        if record.ending.is_failure() {
            tracing::warn!("{record}");
        } else {
            tracing::info!("{record}");
        }
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(log) = log.as_mut() {
            let line = record.rinetd_line(log.common, SystemTime::now());
            if let Err(e) = log.file.write_all(line.as_bytes()) {
                tracing::warn!("cannot write to log file {}: {e}", log.path.display());
            }
        }
    }
}

/// Counts a connection from accept to close, in its rule and in all.
struct Admission {
    state: Arc<RuleState>,
    shared: Arc<Shared>,
    /// The rule's open connections, this one included, when it was accepted.
    open: u64,
}

impl Admission {
    fn new(state: Arc<RuleState>, shared: Arc<Shared>) -> Admission {
        let open = state.stats.opened();
        let all = shared.active.fetch_add(1, Relaxed) + 1;
        shared.peak.fetch_max(all, Relaxed);
        Admission { state, shared, open }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.state.stats.closed();
        self.state.slot_freed.notify_one();
        if self.shared.active.fetch_sub(1, Relaxed) == 1 {
            self.shared.all_closed.notify_waiters();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    local: SocketAddr,
    mut settings: watch::Receiver<Arc<Settings>>,
    state: Arc<RuleState>,
    shared: Arc<Shared>,
) {
    let mut warned: Option<Instant> = None;
    loop {
        let limit = {
            let now = settings.borrow_and_update();
            (now.rule.options.max_connections, now.rule.options.when_full)
        };
        if let (Some(max), WhenFull::Wait) = limit
            && state.stats.active() >= u64::from(max)
        {
            tokio::select! {
                () = state.slot_freed.notified() => {}
                changed = settings.changed() => if changed.is_err() { return },
            }
            continue;
        }
        let (socket, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if out_of_resources(&e) => {
                    // Say so now and then, and let connections close before
                    // trying again (the kernel keeps the new ones queued).
                    if warned.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        tracing::warn!("{local}: cannot accept connections: {e}");
                        warned = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(e) => {
                    // A client that gave up while queued, and the like.
                    tracing::debug!("{local}: accept: {e}");
                    continue;
                }
            },
            // A reload may have lowered `max`: look again.
            changed = settings.changed() => if changed.is_err() { return } else { continue },
        };
        // The rule as it is now: a reload may have come while this waited.
        let current = settings.borrow_and_update().clone();
        let admission = Admission::new(state.clone(), shared.clone());
        tokio::spawn(forward(socket, client, local, current, admission));
    }
}

/// Out of descriptors or memory: waiting helps, retrying at once does not.
fn out_of_resources(e: &io::Error) -> bool {
    use rustix::io::Errno;
    let resource = [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM].map(|e| e.raw_os_error());
    e.raw_os_error().is_some_and(|code| resource.contains(&code))
}

/// One connection from accept to close.
async fn forward(
    client: TcpStream,
    peer: SocketAddr,
    listen: SocketAddr,
    settings: Arc<Settings>,
    admission: Admission,
) {
    let started = Instant::now();
    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
    let rule = &settings.rule;
    let stats = &admission.state.stats;
    let shared = &admission.shared;
    let log = |target, up, down, ending| {
        let record =
            ConnectionRecord { rule: listen, client: peer, target, up, down, duration: started.elapsed(), ending };
        shared.log(&record);
    };
    // (With full=wait the accept loop keeps within max.)
    let full = rule.options.when_full == WhenFull::Refuse
        && rule.options.max_connections.is_some_and(|max| admission.open > u64::from(max));
    let refusal = match access::check(&settings.global, &rule.access, peer.ip()) {
        Verdict::NotAllowed => Some(Ending::NotAllowed),
        Verdict::Denied => Some(Ending::Denied),
        Verdict::Admitted if full => Some(Ending::Full),
        Verdict::Admitted => None,
    };
    if let Some(ending) = refusal {
        stats.refused();
        relay::reset(&client);
        drop(client);
        return log(None, 0, 0, ending);
    }
    let (target, target_addr) = match connect(rule).await {
        Ok(connected) => connected,
        Err(why) => {
            stats.failed_connect();
            relay::reset(&client);
            drop(client);
            return log(None, 0, 0, Ending::ConnectFailed(why));
        }
    };
    // Forwarded bytes go out as they come: the sender already chose how to
    // batch them.
    let _ = client.set_nodelay(true);
    let _ = target.set_nodelay(true);
    if let Some(version) = rule.options.proxy {
        let local = client.local_addr().unwrap_or(peer);
        if let Err(error) = write_all(&target, &proxy_header::encode(version, peer, local)).await {
            relay::reset(&client);
            return log(Some(target_addr), 0, 0, Ending::Broken { side: Side::Target, error });
        }
    }
    let cx = RelayContext {
        stats,
        pipes: shared.pipes.as_ref(),
        buffers: &shared.buffers,
        idle_timeout: rule.options.idle_timeout,
        abort: shared.abort.subscribe(),
    };
    let outcome = relay::relay(&client, &target, cx).await;
    drop((client, target));
    log(Some(target_addr), outcome.up, outcome.down, outcome.ending);
}

/// The first target address that accepts, in the rule's order (each name
/// resolved now); else why each failed.
async fn connect(rule: &Rule) -> Result<(TcpStream, SocketAddr), String> {
    let timeout = rule.options.connect_timeout;
    let mut reasons = Vec::new();
    for target in &rule.targets {
        let lookup = tokio::net::lookup_host((target.host.as_str(), target.port));
        let addrs: Vec<SocketAddr> = match tokio::time::timeout(timeout, lookup).await {
            Ok(Ok(addrs)) => addrs.collect(),
            Ok(Err(e)) => {
                reasons.push(format!("{target}: cannot resolve: {e}"));
                continue;
            }
            Err(_) => {
                reasons.push(format!("{target}: name lookup took over {timeout:?}"));
                continue;
            }
        };
        for addr in addrs {
            let name =
                if target.host == addr.ip().to_string() { addr.to_string() } else { format!("{target} ({addr})") };
            match tokio::time::timeout(timeout, connect_from(addr, rule.options.source)).await {
                Ok(Ok(stream)) => return Ok((stream, addr)),
                Ok(Err(e)) => reasons.push(format!("{name}: {e}")),
                Err(_) => reasons.push(format!("{name}: no answer in {timeout:?}")),
            }
        }
    }
    Err(reasons.join("; "))
}

async fn connect_from(addr: SocketAddr, source: Option<std::net::IpAddr>) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some(source) = source {
        socket.bind(SocketAddr::new(source, 0))?;
    }
    socket.connect(addr).await
}

async fn write_all(socket: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        socket.writable().await?;
        match socket.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_lack_of_resources_makes_accept_back_off() {
        use rustix::io::Errno;
        let error = |e: Errno| io::Error::from_raw_os_error(e.raw_os_error());
        assert!(out_of_resources(&error(Errno::MFILE)));
        assert!(out_of_resources(&error(Errno::NOBUFS)));
        assert!(!out_of_resources(&error(Errno::CONNABORTED)));
        assert!(!out_of_resources(&io::Error::other("no code")));
    }
}
