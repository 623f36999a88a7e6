//! The configuration: rinetd's file format, so that an existing
//! `rinetd.conf` works as it is, plus options of our own.
//!
//! ```text
//! # comments run from '#' to the end of the line
//! allow 10.*                    # before any rule: global (rinetd's * and ? over the address)
//! deny 10.0.0.0/24              # CIDR blocks too (ours)
//! logfile /var/log/forward.log  # one line per connection, rinetd's tab-separated format
//! logcommon                     # ... or the web servers' common log format
//! pidlogfile /run/forward.pid   # the process id, for `kill -HUP`
//!
//! # bindaddress bindport connectaddress connectport [connectaddress connectport ...] [options]
//! 0.0.0.0 80    www.new-site 80
//! ::      5432  db1.new 5432  db2.new 5432  [proxy=v2, max=1000, full=refuse, idle=8h, connect-timeout=3s]
//! allow 192.168.0.0/16          # after a rule: that rule only
//! 127.0.0.1 4000 127.0.0.1 3000 [src=127.0.0.1]
//! ```
//!
//! Ports may be numbers, `N/tcp`, or service names (looked up by the
//! caller: this module reads no file). Several targets are tried in order
//! for each new connection until one accepts. Options, between brackets at
//! the end of a rule: `proxy=v1|v2|none` (send a PROXY protocol header),
//! `max=N` (connections at once), `full=wait|refuse` (what happens past
//! `max`), `idle=DURATION|off`, `connect-timeout=DURATION`, `src=ADDRESS`
//! (source address of connections to the targets, as in rinetd);
//! `timeout=` (rinetd's UDP timeout) is accepted and ignored with a warning,
//! and UDP rules (`53/udp`) are skipped with a warning, with their
//! allow/deny lines.
//! Durations are `500ms`, `30s`, `5m`, `8h`, `2d` or plain seconds.
//!
//! Pure: text in, a [`Config`] or an error naming file, line and reason
//! out. Never resolves names, opens sockets or reads files.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::access::{AccessList, Pattern, PatternError};
use crate::proxy_header::ProxyVersion;

/// A host (name or address, as written) and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    /// A host name, an IPv4 address or an IPv6 address (without brackets).
    pub host: String,
    /// The TCP port (0 for a listen address: any free port).
    pub port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl Endpoint {
    /// `HOST:PORT`, `[IPV6]:PORT`, or a bare `PORT` (all IPv4 addresses,
    /// as `0.0.0.0 PORT` in rinetd): a listen address of the command line.
    pub fn parse_listen(text: &str) -> Result<Endpoint, Problem> {
        match text.parse::<u16>() {
            Ok(port) => Ok(Endpoint { host: "0.0.0.0".into(), port }),
            Err(_) => Endpoint::parse_host_port(text, PortUse::Listen),
        }
    }

    /// `HOST:PORT` or `[IPV6]:PORT`: a target of the command line.
    pub fn parse_target(text: &str) -> Result<Endpoint, Problem> {
        Endpoint::parse_host_port(text, PortUse::Connect)
    }

    fn parse_host_port(text: &str, use_: PortUse) -> Result<Endpoint, Problem> {
        let (host, port) = match text.strip_prefix('[') {
            Some(rest) => rest.split_once("]:").ok_or_else(|| Problem::NotHostPort(text.to_owned()))?,
            None => text
                .rsplit_once(':')
                .filter(|(h, _)| !h.contains(':'))
                .ok_or_else(|| Problem::NotHostPort(text.to_owned()))?,
        };
        let port = port.parse().map_err(|_| Problem::BadPort(port.to_owned()))?;
        Endpoint::new(host, port, use_)
    }

    fn new(host: &str, port: u16, use_: PortUse) -> Result<Endpoint, Problem> {
        if use_ == PortUse::Connect && port == 0 {
            return Err(Problem::BadPort("0 (a target needs a port)".into()));
        }
        Ok(Endpoint { host: parse_host(host)?, port })
    }
}

/// Parses a comma-separated list of targets (`a:80,b:80`) of the command line.
pub fn parse_targets(text: &str) -> Result<Vec<Endpoint>, Problem> {
    text.split(',').map(|t| Endpoint::parse_target(t.trim())).collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortUse {
    Listen,
    Connect,
}

fn parse_host(text: &str) -> Result<String, Problem> {
    let bare = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')).unwrap_or(text);
    if bare.contains(':') {
        return bare.parse::<Ipv6Addr>().map(|_| bare.to_owned()).map_err(|_| Problem::BadAddress(text.to_owned()));
    }
    let name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    // Digits and dots only: an IPv4 address, or a mistake (not a name).
    let dotted = bare.chars().all(|c| c.is_ascii_digit() || c == '.');
    if bare.is_empty()
        || bare.len() > 253
        || !bare.chars().all(name_char)
        || bare.starts_with(['.', '-'])
        || (dotted && bare.parse::<std::net::Ipv4Addr>().is_err())
    {
        return Err(Problem::BadAddress(text.to_owned()));
    }
    Ok(bare.to_owned())
}

/// What happens to a connection that arrives when a rule has `max` open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhenFull {
    /// It is not accepted until one closes: it waits in the kernel's listen
    /// queue (as with haproxy's `maxconn`), and clients see a slow connect.
    #[default]
    Wait,
    /// It is accepted and reset at once, and counted as refused.
    Refuse,
}

impl std::str::FromStr for WhenFull {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "wait" => Ok(WhenFull::Wait),
            "refuse" => Ok(WhenFull::Refuse),
            _ => Err(format!("{s:?} is neither wait nor refuse")),
        }
    }
}

/// How a rule forwards: the command line's options are the defaults, a
/// rule's `[...]` overrides them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleOptions {
    /// A PROXY protocol header first, on every connection to a target.
    pub proxy: Option<ProxyVersion>,
    /// Connections at once through the rule (none: the descriptor limit).
    pub max_connections: Option<u32>,
    /// What happens past `max_connections`.
    pub when_full: WhenFull,
    /// Close a connection after this long with nothing moving either way.
    pub idle_timeout: Option<Duration>,
    /// How long one attempt to reach one target address may take.
    pub connect_timeout: Duration,
    /// The local address connections to targets are made from.
    pub source: Option<IpAddr>,
}

/// The connect timeout when none is given.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Default for RuleOptions {
    fn default() -> Self {
        RuleOptions {
            proxy: None,
            max_connections: None,
            when_full: WhenFull::Wait,
            idle_timeout: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            source: None,
        }
    }
}

/// One forwarding rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Where to listen.
    pub listen: Endpoint,
    /// Where to forward, tried in order.
    pub targets: Vec<Endpoint>,
    /// The rule's own allow and deny patterns (the global ones apply first).
    pub access: AccessList,
    /// How it forwards.
    pub options: RuleOptions,
    /// Where it was written (0: on the command line).
    pub line: usize,
}

impl Rule {
    /// Whether `other` forwards the same way (wherever each was written).
    pub fn same_as(&self, other: &Rule) -> bool {
        Rule { line: other.line, ..self.clone() } == *other
    }
}

impl Rule {
    /// The targets as the `listening on … -> …` line shows them.
    pub fn targets_text(&self) -> String {
        self.targets.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(",")
    }
}

/// Everything a configuration says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// The forwarding rules, in order.
    pub rules: Vec<Rule>,
    /// The global allow and deny patterns.
    pub access: AccessList,
    /// rinetd's `logfile`: one line per connection, appended there.
    pub logfile: Option<PathBuf>,
    /// rinetd's `logcommon`: that file in the common log format.
    pub log_common: bool,
    /// rinetd's `pidlogfile`.
    pub pid_file: Option<PathBuf>,
    /// Lines that were accepted but do nothing here (`file:line: what`).
    pub warnings: Vec<String>,
}

/// A configuration line that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {problem}", file.display())]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// The line, from 1.
    pub line: usize,
    /// What is wrong with it.
    pub problem: Problem,
}

/// What is wrong with a line (or a command-line rule).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    /// Too few words for a forwarding rule.
    #[error("a forwarding rule is: bindaddress bindport connectaddress connectport [options]")]
    ShortRule,
    /// A target address without its port.
    #[error("target {0:?} has no port (targets come in pairs: connectaddress connectport)")]
    TargetWithoutPort(String),
    /// Not an IP address nor a host name.
    #[error("{0:?} is not an IP address or a host name")]
    BadAddress(String),
    /// Not `HOST:PORT`.
    #[error("{0:?} is not HOST:PORT ([ADDRESS]:PORT for IPv6)")]
    NotHostPort(String),
    /// Not a port number.
    #[error("bad port {0}")]
    BadPort(String),
    /// A service name that the services database does not know.
    #[error("unknown service name {0:?} (not in /etc/services; use a port number)")]
    UnknownService(String),
    /// rinetd forwards UDP too; this forwarder does not (such rules are
    /// skipped with a warning).
    #[error("{0}: UDP is not forwarded (TCP only)")]
    Udp(String),
    /// A bad allow or deny pattern.
    #[error(transparent)]
    Pattern(#[from] PatternError),
    /// A directive without its argument.
    #[error("{0} needs an argument")]
    MissingArgument(&'static str),
    /// A directive with words it does not take.
    #[error("{0} takes no argument")]
    UnexpectedArgument(&'static str),
    /// `[` without `]`, or words after `]`.
    #[error("options go between [ and ] at the end of the rule")]
    Brackets,
    /// An option this forwarder does not know.
    #[error("unknown option {0:?} (known: proxy, max, full, idle, connect-timeout, src, timeout)")]
    UnknownOption(String),
    /// A known option with a bad value.
    #[error("option {key}: {reason}")]
    BadOption {
        /// The option.
        key: String,
        /// What is wrong with its value.
        reason: String,
    },
    /// Two rules on one listen address.
    #[error("{listen} is already forwarded by line {first}")]
    DuplicateListen {
        /// The listen address.
        listen: Endpoint,
        /// The line of the first rule.
        first: usize,
    },
}

/// Parses a configuration file's text. `file` only names it in errors;
/// `services` maps a service name (`http`) to its port, if it knows it.
pub fn parse(
    text: &str,
    file: &Path,
    defaults: &RuleOptions,
    services: &dyn Fn(&str) -> Option<u16>,
) -> Result<Config, ConfigError> {
    let mut config = Config::default();
    // After a rule that is skipped, its allow and deny lines are skipped too.
    let mut skipping = false;
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let fail = |problem| ConfigError { file: file.to_owned(), line, problem };
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let (words, options) = split_options(content).map_err(fail)?;
        let keyword = words[0].to_ascii_lowercase();
        let rest = &words[1..];
        let only_words = || if options.is_some() { Err(fail(Problem::Brackets)) } else { Ok(()) };
        match keyword.as_str() {
            "allow" | "deny" => {
                only_words()?;
                let name = if keyword == "allow" { "allow" } else { "deny" };
                if rest.is_empty() {
                    return Err(fail(Problem::MissingArgument(name)));
                }
                let mut scope = match (config.rules.last_mut(), skipping) {
                    (_, true) => None, // the patterns of a skipped (UDP) rule
                    (Some(rule), false) => Some(&mut rule.access),
                    (None, false) => Some(&mut config.access),
                };
                for word in rest {
                    let pattern = Pattern::parse(word).map_err(|e| fail(e.into()))?;
                    match scope.as_deref_mut() {
                        Some(scope) if name == "allow" => scope.allow.push(pattern),
                        Some(scope) => scope.deny.push(pattern),
                        None => {}
                    }
                }
            }
            "logfile" | "pidlogfile" => {
                only_words()?;
                let name = if keyword == "logfile" { "logfile" } else { "pidlogfile" };
                let path = content[words[0].len()..].trim();
                if path.is_empty() {
                    return Err(fail(Problem::MissingArgument(name)));
                }
                let slot = if name == "logfile" { &mut config.logfile } else { &mut config.pid_file };
                *slot = Some(PathBuf::from(path));
            }
            "logcommon" => {
                only_words()?;
                if !rest.is_empty() {
                    return Err(fail(Problem::UnexpectedArgument("logcommon")));
                }
                config.log_common = true;
            }
            _ => {
                let mut rule = match parse_rule(&words, defaults, services) {
                    Err(Problem::Udp(port)) => {
                        config
                            .warnings
                            .push(format!("{}:{line}: {port}: UDP is not forwarded, rule skipped", file.display()));
                        skipping = true;
                        continue;
                    }
                    parsed => parsed.map_err(fail)?,
                };
                skipping = false;
                rule.line = line;
                if let Some(options) = options {
                    apply_options(options, &mut rule.options, |w| {
                        config.warnings.push(format!("{}:{line}: {w}", file.display()))
                    })
                    .map_err(fail)?;
                }
                // (Port 0 picks a new port for each rule.)
                if let Some(first) = config.rules.iter().find(|r| r.listen == rule.listen && r.listen.port != 0) {
                    return Err(fail(Problem::DuplicateListen { listen: rule.listen, first: first.line }));
                }
                config.rules.push(rule);
            }
        }
    }
    Ok(config)
}

/// Splits `words [options]` into the words and the text between the
/// brackets. A bracketed IPv6 address (`[::1]`) is a word, not options.
fn split_options(content: &str) -> Result<(Vec<&str>, Option<&str>), Problem> {
    let mut from = 0;
    let (head, options) = loop {
        let Some(open) = content[from..].find('[').map(|i| from + i) else {
            if content[from..].contains(']') {
                return Err(Problem::Brackets);
            }
            break (content, None);
        };
        let close = content[open..].find(']').map(|i| open + i).ok_or(Problem::Brackets)?;
        let inner = &content[open + 1..close];
        if inner.parse::<Ipv6Addr>().is_ok() {
            from = close + 1;
            continue;
        }
        if !content[close + 1..].trim().is_empty() || inner.contains('[') {
            return Err(Problem::Brackets);
        }
        break (&content[..open], Some(inner));
    };
    let words: Vec<&str> = head.split_whitespace().collect();
    if words.is_empty() {
        return Err(Problem::ShortRule);
    }
    Ok((words, options))
}

fn parse_rule(words: &[&str], defaults: &RuleOptions, services: &dyn Fn(&str) -> Option<u16>) -> Result<Rule, Problem> {
    if words.len() < 4 {
        return Err(Problem::ShortRule);
    }
    let endpoint = |host: &str, port: &str, use_| Endpoint::new(host, parse_port(port, services)?, use_);
    let listen = endpoint(words[0], words[1], PortUse::Listen)?;
    let mut targets = Vec::new();
    for pair in words[2..].chunks(2) {
        match pair {
            [host, port] => targets.push(endpoint(host, port, PortUse::Connect)?),
            [host] => return Err(Problem::TargetWithoutPort((*host).to_owned())),
            _ => unreachable!("chunks of two"),
        }
    }
    Ok(Rule { listen, targets, access: AccessList::default(), options: defaults.clone(), line: 0 })
}

fn parse_port(text: &str, services: &dyn Fn(&str) -> Option<u16>) -> Result<u16, Problem> {
    let (port, protocol) = text.split_once('/').unwrap_or((text, "tcp"));
    match protocol.to_ascii_lowercase().as_str() {
        "tcp" => {}
        "udp" => return Err(Problem::Udp(text.to_owned())),
        _ => return Err(Problem::BadPort(format!("{text:?} (a number, a service name, or either with /tcp)"))),
    }
    if port.bytes().all(|b| b.is_ascii_digit()) {
        return port.parse().map_err(|_| Problem::BadPort(format!("{text:?} (at most 65535)")));
    }
    services(port).ok_or_else(|| Problem::UnknownService(port.to_owned()))
}

fn apply_options(text: &str, options: &mut RuleOptions, mut warn: impl FnMut(String)) -> Result<(), Problem> {
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (key, value) = item.split_once('=').map(|(k, v)| (k.trim(), v.trim())).unwrap_or((item, ""));
        let key = key.to_ascii_lowercase();
        let bad = |reason: String| Problem::BadOption { key: key.clone(), reason };
        match key.as_str() {
            "proxy" => {
                options.proxy = match value.to_ascii_lowercase().as_str() {
                    "none" | "off" => None,
                    v => Some(v.parse().map_err(bad)?),
                }
            }
            "max" => {
                let n: u32 = value.parse().map_err(|_| bad(format!("{value:?} is not a count")))?;
                if n == 0 {
                    return Err(bad("must be at least 1".into()));
                }
                options.max_connections = Some(n);
            }
            "full" => options.when_full = value.parse().map_err(bad)?,
            "idle" => options.idle_timeout = parse_optional_duration(value).map_err(bad)?,
            "connect-timeout" => {
                options.connect_timeout = parse_duration(value)
                    .map_err(bad)?
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| bad("must be positive".into()))?
            }
            "src" => options.source = Some(value.parse().map_err(|_| bad(format!("{value:?} is not an IP address")))?),
            "timeout" => warn(format!("timeout={value} is rinetd's UDP timeout: ignored for TCP (idle= is ours)")),
            _ => return Err(Problem::UnknownOption(key)),
        }
    }
    Ok(())
}

/// Parses `500ms`, `30s`, `5m`, `8h`, `2d` or plain seconds; `off`,
/// `none` and `0` are no duration.
pub fn parse_optional_duration(text: &str) -> Result<Option<Duration>, String> {
    match text.to_ascii_lowercase().as_str() {
        "off" | "none" => Ok(None),
        _ => Ok(parse_duration(text)?.filter(|d| !d.is_zero())),
    }
}

/// Parses `500ms`, `30s`, `5m`, `8h`, `2d` or plain seconds (`Some(0)` for zero).
pub fn parse_duration(text: &str) -> Result<Option<Duration>, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let bad = || format!("{text:?} is not a duration (500ms, 30s, 5m, 8h, 2d or seconds)");
    let n: u64 = number.parse().map_err(|_| bad())?;
    let millis = match unit.trim().to_ascii_lowercase().as_str() {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    n.checked_mul(millis).map(|ms| Some(Duration::from_millis(ms))).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services(name: &str) -> Option<u16> {
        match name {
            "http" => Some(80),
            "postgresql" => Some(5432),
            _ => None,
        }
    }

    fn load(text: &str) -> Result<Config, ConfigError> {
        parse(text, Path::new("/etc/rinetd.conf"), &RuleOptions::default(), &services)
    }

    fn error(text: &str) -> String {
        load(text).unwrap_err().to_string()
    }

    fn ep(host: &str, port: u16) -> Endpoint {
        Endpoint { host: host.into(), port }
    }

    #[test]
    fn rinetd_man_page_examples_load() {
        // The examples of rinetd(8) and of Debian's /etc/rinetd.conf (TCP ones).
        let text = "\
# this is the configuration file for rinetd
allow 192.168.2.*
deny 192.168.2.1?
allow fe80:*
deny 2001:618:*:e43f

206.125.69.81 80  10.1.1.2 80
0.0.0.0 23  10.1.1.2 23
206.125.69.81 81/tcp	 10.1.1.2 8000
192.168.1.1 80  10.1.1.127 80  [src=10.1.1.2]
::1         80        192.168.1.2     80
0.0.0.0     8080      fe80::1         80
127.0.0.1   4000      127.0.0.1       3000
allow 206.125.69.*
logfile /var/log/rinetd.log
logcommon
";
        let c = load(text).unwrap();
        assert_eq!(c.rules.len(), 7);
        assert_eq!(c.rules[0].listen, ep("206.125.69.81", 80));
        assert_eq!(c.rules[0].targets, vec![ep("10.1.1.2", 80)]);
        assert_eq!(c.rules[2].listen, ep("206.125.69.81", 81));
        assert_eq!(c.rules[3].options.source, Some("10.1.1.2".parse().unwrap()));
        assert_eq!(c.rules[4].listen, ep("::1", 80));
        assert_eq!(c.rules[5].targets, vec![ep("fe80::1", 80)]);
        assert_eq!(c.rules[6].line, 13);
        assert_eq!(c.access.allow.len(), 2);
        assert_eq!(c.access.deny.len(), 2);
        assert_eq!(c.rules[6].access.allow, vec![Pattern::parse("206.125.69.*").unwrap()]);
        assert!(c.rules[5].access.is_empty());
        assert_eq!(c.logfile, Some(PathBuf::from("/var/log/rinetd.log")));
        assert!(c.log_common);
    }

    #[test]
    fn our_extensions_parse() {
        let text = "0.0.0.0 5432 db1.new 5432 db2.new postgresql [proxy=v2, max=1000, full=refuse, idle=8h, connect-timeout=3s]
deny 10.0.0.0/8
[::] 80 [2001:db8::1] http [ PROXY = v1 ]
127.0.0.1 0 localhost 9 [idle=off,max=5]
pidlogfile /run/forward.pid
";
        let c = load(text).unwrap();
        let r = &c.rules[0];
        assert_eq!(r.targets, vec![ep("db1.new", 5432), ep("db2.new", 5432)]);
        assert_eq!(r.options.proxy, Some(ProxyVersion::V2));
        assert_eq!(r.options.max_connections, Some(1000));
        assert_eq!(r.options.when_full, WhenFull::Refuse);
        assert_eq!(r.options.idle_timeout, Some(Duration::from_secs(8 * 3600)));
        assert_eq!(r.options.connect_timeout, Duration::from_secs(3));
        assert_eq!(r.access.deny, vec![Pattern::parse("10.0.0.0/8").unwrap()]);
        assert_eq!(c.rules[1].listen, ep("::", 80));
        assert_eq!(c.rules[1].targets, vec![ep("2001:db8::1", 80)]);
        assert_eq!(c.rules[1].options.proxy, Some(ProxyVersion::V1));
        assert_eq!(c.rules[2].listen.port, 0);
        assert_eq!(c.rules[2].options.idle_timeout, None);
        assert_eq!(c.pid_file, Some(PathBuf::from("/run/forward.pid")));
        assert_eq!(c.rules[0].targets_text(), "db1.new:5432,db2.new:5432");
        assert_eq!(c.rules[1].targets_text(), "[2001:db8::1]:80");
    }

    #[test]
    fn defaults_come_from_the_command_line_and_rules_override_them() {
        let defaults =
            RuleOptions { proxy: Some(ProxyVersion::V1), max_connections: Some(7), ..RuleOptions::default() };
        let c = parse("1.2.3.4 1 5.6.7.8 2\n1.2.3.4 3 5.6.7.8 4 [proxy=none]\n", Path::new("f"), &defaults, &services)
            .unwrap();
        assert_eq!(c.rules[0].options, defaults);
        assert_eq!(c.rules[1].options.proxy, None);
        assert_eq!(c.rules[1].options.max_connections, Some(7));
    }

    #[test]
    fn rinetd_udp_timeout_is_a_warning() {
        let c = load("\n0.0.0.0 80 10.0.0.1 80 [timeout=1200]\n").unwrap();
        assert_eq!(
            c.warnings,
            vec!["/etc/rinetd.conf:2: timeout=1200 is rinetd's UDP timeout: ignored for TCP (idle= is ours)"]
        );
    }

    #[test]
    fn udp_rules_are_skipped_with_their_patterns() {
        let text = "0.0.0.0 80 10.0.0.1 80\n0.0.0.0 53/udp 10.0.0.1 53\nallow 10.*\n0.0.0.0 81/tcp 10.0.0.1 8000/udp\n\
                    0.0.0.0 82 a 1\ndeny 1.2.3.4\n";
        let c = load(text).unwrap();
        assert_eq!(c.rules.len(), 2);
        assert!(c.rules[0].access.is_empty(), "the skipped rule's allow is not the one before's");
        assert_eq!(c.rules[1].access.deny.len(), 1);
        assert_eq!(
            c.warnings,
            vec![
                "/etc/rinetd.conf:2: 53/udp: UDP is not forwarded, rule skipped",
                "/etc/rinetd.conf:4: 8000/udp: UDP is not forwarded, rule skipped"
            ]
        );
    }

    #[test]
    fn malformed_lines_name_file_line_and_reason() {
        let cases = [
            (
                "0.0.0.0 80 10.0.0.1\n",
                "/etc/rinetd.conf:1: a forwarding rule is: bindaddress bindport connectaddress connectport [options]",
            ),
            (
                "# c\n\n0.0.0.0 80 10.0.0.1 80 10.0.0.2\n",
                "/etc/rinetd.conf:3: target \"10.0.0.2\" has no port (targets come in pairs: connectaddress connectport)",
            ),
            ("0.0.0.0 99999 10.0.0.1 80\n", "/etc/rinetd.conf:1: bad port \"99999\" (at most 65535)"),
            ("0.0.0.0 80 10.0.0.1 0\n", "/etc/rinetd.conf:1: bad port 0 (a target needs a port)"),
            (
                "0.0.0.0 gopher 10.0.0.1 80\n",
                "/etc/rinetd.conf:1: unknown service name \"gopher\" (not in /etc/services; use a port number)",
            ),
            (
                "0.0.0.0 80/sctp 10.0.0.1 80\n",
                "/etc/rinetd.conf:1: bad port \"80/sctp\" (a number, a service name, or either with /tcp)",
            ),
            ("0.0.0.0 80 bad!host 80\n", "/etc/rinetd.conf:1: \"bad!host\" is not an IP address or a host name"),
            ("fe80::zz 80 10.0.0.1 80\n", "/etc/rinetd.conf:1: \"fe80::zz\" is not an IP address or a host name"),
            ("allow\n", "/etc/rinetd.conf:1: allow needs an argument"),
            (
                "deny example.com\n",
                "/etc/rinetd.conf:1: \"example.com\" is not an address pattern (use digits, '.', ':', hex letters, '*' and '?', or a CIDR block such as 10.0.0.0/8; host names are not allowed)",
            ),
            (
                "allow 10.0.0.0/40\n",
                "/etc/rinetd.conf:1: \"10.0.0.0/40\" is not a CIDR block (ADDRESS/BITS, at most 32 bits for IPv4, 128 for IPv6)",
            ),
            ("logfile\n", "/etc/rinetd.conf:1: logfile needs an argument"),
            ("logcommon yes\n", "/etc/rinetd.conf:1: logcommon takes no argument"),
            (
                "0.0.0.0 80 10.0.0.1 80 [proxy=v2\n",
                "/etc/rinetd.conf:1: options go between [ and ] at the end of the rule",
            ),
            (
                "0.0.0.0 80 10.0.0.1 80 [proxy=v2] x\n",
                "/etc/rinetd.conf:1: options go between [ and ] at the end of the rule",
            ),
            (
                "0.0.0.0 80 10.0.0.1 80 [color=red]\n",
                "/etc/rinetd.conf:1: unknown option \"color\" (known: proxy, max, full, idle, connect-timeout, src, timeout)",
            ),
            (
                "0.0.0.0 80 10.0.0.1 80 [proxy=v3]\n",
                "/etc/rinetd.conf:1: option proxy: unknown PROXY protocol version \"v3\" (use v1 or v2)",
            ),
            ("0.0.0.0 80 10.0.0.1 80 [max=0]\n", "/etc/rinetd.conf:1: option max: must be at least 1"),
            (
                "0.0.0.0 80 10.0.0.1 80 [idle=soon]\n",
                "/etc/rinetd.conf:1: option idle: \"soon\" is not a duration (500ms, 30s, 5m, 8h, 2d or seconds)",
            ),
            (
                "0.0.0.0 80 10.0.0.1 80 [connect-timeout=0]\n",
                "/etc/rinetd.conf:1: option connect-timeout: must be positive",
            ),
            ("0.0.0.0 80 10.0.0.1 80 [src=here]\n", "/etc/rinetd.conf:1: option src: \"here\" is not an IP address"),
            (
                "0.0.0.0 80 10.0.0.1 80 [full=maybe]\n",
                "/etc/rinetd.conf:1: option full: \"maybe\" is neither wait nor refuse",
            ),
            ("0.0.0.0 80 a 1\n\n0.0.0.0 80 b 2\n", "/etc/rinetd.conf:3: 0.0.0.0:80 is already forwarded by line 1"),
            (
                "0.0.0.0 0 a 1\n0.0.0.0 0 b 2\n0.0.0.0 80 b 2\n0.0.0.0 0x a 1\n",
                "/etc/rinetd.conf:4: unknown service name \"0x\" (not in /etc/services; use a port number)",
            ),
            ("allow 10.* [x]\n", "/etc/rinetd.conf:1: options go between [ and ] at the end of the rule"),
        ];
        for (text, expected) in cases {
            assert_eq!(error(text), expected, "for {text:?}");
        }
    }

    #[test]
    fn comments_and_blank_lines_are_skipped() {
        let c = load("   # only a comment\n\t\n1.2.3.4 80 5.6.7.8 80 # trailing comment\n").unwrap();
        assert_eq!(c.rules.len(), 1);
        assert_eq!(c.rules[0].line, 3);
        assert_eq!(load("").unwrap(), Config::default());
    }

    #[test]
    fn command_line_endpoints_parse() {
        assert_eq!(Endpoint::parse_listen("8080"), Ok(ep("0.0.0.0", 8080)));
        assert_eq!(Endpoint::parse_listen("127.0.0.1:0"), Ok(ep("127.0.0.1", 0)));
        assert_eq!(Endpoint::parse_listen("[::]:443"), Ok(ep("::", 443)));
        assert_eq!(Endpoint::parse_target("db.new:5432"), Ok(ep("db.new", 5432)));
        assert_eq!(Endpoint::parse_target("[::1]:5432").unwrap().to_string(), "[::1]:5432");
        assert_eq!(Endpoint::parse_target("db.new"), Err(Problem::NotHostPort("db.new".into())));
        assert_eq!(Endpoint::parse_target("::1:80"), Err(Problem::NotHostPort("::1:80".into())));
        assert_eq!(Endpoint::parse_target("db:0"), Err(Problem::BadPort("0 (a target needs a port)".into())));
        assert_eq!(Endpoint::parse_target("db:x"), Err(Problem::BadPort("x".into())));
        assert_eq!(parse_targets("a:1, b:2").unwrap(), vec![ep("a", 1), ep("b", 2)]);
        assert_eq!(Endpoint::parse_listen("999.1.1.1:80"), Err(Problem::BadAddress("999.1.1.1".into())));
        assert_eq!(Endpoint::parse_target("10.0.0:80"), Err(Problem::BadAddress("10.0.0".into())));
        assert_eq!(Endpoint::parse_target("web-1.new_site:80"), Ok(ep("web-1.new_site", 80)));
        assert!(parse_targets("a:1,").is_err());
    }

    proptest::proptest! {
        #[test]
        fn no_text_makes_the_parser_panic(text in r"(?s)[ -~\t\n\[\]#/:.*?,=0-9a-fA-F\u{e9}]{0,200}") {
            let _ = load(&text);
        }

        #[test]
        fn rule_like_lines_parse_or_name_line_one(words in proptest::collection::vec(r"[0-9a-z.:\[\]*/=,-]{1,12}", 0..8)) {
            let line = words.join(" ");
            if let Err(e) = load(&line) {
                proptest::prop_assert_eq!(e.line, 1);
            }
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90"), Ok(Some(Duration::from_secs(90))));
        assert_eq!(parse_duration("250ms"), Ok(Some(Duration::from_millis(250))));
        assert_eq!(parse_duration("5m"), Ok(Some(Duration::from_secs(300))));
        assert_eq!(parse_duration("2d"), Ok(Some(Duration::from_secs(172_800))));
        assert_eq!(parse_optional_duration("off"), Ok(None));
        assert_eq!(parse_optional_duration("0"), Ok(None));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("1y").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }
}
