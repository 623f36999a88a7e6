//! What is said about a connection when it ends: the one log line per
//! connection (client, rule, target, bytes each way, duration, how it
//! ended), and the same facts in rinetd's `logfile` formats (tab-separated,
//! or the web servers' common log format with `logcommon`).
//!
//! Pure: a record in, text out (the clock is passed in). Never writes.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

/// Which end of a forwarded connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client that connected to the forwarder.
    Client,
    /// The target the forwarder connected to.
    Target,
}

impl Side {
    /// The other end.
    pub fn other(self) -> Side {
        match self {
            Side::Client => Side::Target,
            Side::Target => Side::Client,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Client => "client",
            Side::Target => "target",
        })
    }
}

/// How a connection ended.
#[derive(Debug)]
pub enum Ending {
    /// Both sides finished sending; `first` finished first.
    Closed {
        /// The side whose EOF came first.
        first: Side,
    },
    /// A side reset the connection or failed; the other was reset too.
    Broken {
        /// The side that failed.
        side: Side,
        /// Its error (ECONNRESET for a reset).
        error: io::Error,
    },
    /// Nothing moved either way for the rule's idle timeout.
    IdleTimeout,
    /// Reset at shutdown while still open: why.
    Cut(Cut),
    /// No target accepted: the reason for each attempt.
    ConnectFailed(String),
    /// The allow patterns did not admit the client.
    NotAllowed,
    /// A deny pattern matched the client.
    Denied,
    /// The rule had `max` connections open (with `full=refuse`).
    Full,
}

/// Why the connections still open at shutdown were reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The drain timeout ran out.
    DrainTimeout,
    /// A second SIGTERM or SIGINT came.
    Signal,
}

impl Ending {
    /// rinetd's result word for its log file. In rinetd's words the target
    /// is the "local" server and the client the "remote" end.
    pub fn rinetd_word(&self) -> &'static str {
        match self {
            Ending::Closed { first: Side::Client } => "done-remote-closed",
            Ending::Closed { first: Side::Target } => "done-local-closed",
            Ending::Broken { side: Side::Client, .. } => "remote-reset",
            Ending::Broken { side: Side::Target, .. } => "local-reset",
            Ending::IdleTimeout => "idle-timeout",
            Ending::Cut(Cut::DrainTimeout) => "drain-timeout",
            Ending::Cut(Cut::Signal) => "cut",
            Ending::ConnectFailed(_) => "local-connect-failed",
            Ending::NotAllowed => "not-allowed",
            Ending::Denied => "denied",
            Ending::Full => "full",
        }
    }

    /// Whether the log line is a warning (the forwarder could not do its job).
    pub fn is_failure(&self) -> bool {
        matches!(self, Ending::ConnectFailed(_))
    }
}

impl fmt::Display for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ending::Closed { first } => write!(f, "closed by {first}"),
            Ending::Broken { side, error } if error.kind() == io::ErrorKind::ConnectionReset => {
                write!(f, "reset by {side}")
            }
            Ending::Broken { side, error } => write!(f, "{side} failed: {error}"),
            Ending::IdleTimeout => f.write_str("idle timeout"),
            Ending::Cut(Cut::DrainTimeout) => f.write_str("drain timeout"),
            Ending::Cut(Cut::Signal) => f.write_str("cut by a second signal"),
            Ending::ConnectFailed(why) => write!(f, "no target reachable: {why}"),
            Ending::NotAllowed => f.write_str("refused: not allowed"),
            Ending::Denied => f.write_str("refused: denied"),
            Ending::Full => f.write_str("refused: rule full"),
        }
    }
}

/// The facts of one finished connection.
#[derive(Debug)]
pub struct ConnectionRecord {
    /// The rule's listen address (as bound: the port chosen for port 0).
    pub rule: SocketAddr,
    /// The client.
    pub client: SocketAddr,
    /// The target address that accepted, if one did.
    pub target: Option<SocketAddr>,
    /// Bytes from the client to the target.
    pub up: u64,
    /// Bytes from the target to the client.
    pub down: u64,
    /// From accept to close.
    pub duration: Duration,
    /// How it ended.
    pub ending: Ending,
}

impl ConnectionRecord {
    /// A line of rinetd's log file, for a connection that ended at `now`.
    pub fn rinetd_line(&self, common: bool, now: SystemTime) -> String {
        let client = self.client.ip().to_canonical();
        let (to_host, to_port) = match self.target {
            Some(t) => (t.ip().to_canonical().to_string(), t.port()),
            None => ("-".to_owned(), 0),
        };
        let (host, port, word) = (self.rule.ip(), self.rule.port(), self.ending.rinetd_word());
        let stamp = common_log_time(now);
        if common {
            format!(
                "{client} - - [{stamp} +0000] \"GET /rinetd-services/{host}/{port}/{to_host}/{to_port}/{word} HTTP/1.0\" \
                 200 {} - - - {}\n",
                self.down, self.up
            )
        } else {
            format!("{stamp}\t{client}\t{host}\t{port}\t{to_host}\t{to_port}\t{}\t{}\t{word}\n", self.up, self.down)
        }
    }
}

impl fmt::Display for ConnectionRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = self.target.map_or_else(|| "-".to_owned(), |t| t.to_string());
        write!(
            f,
            "client={} rule={} target={} up={} down={} duration={:.3}s end=\"{}\"",
            self.client,
            self.rule,
            target,
            self.up,
            self.down,
            self.duration.as_secs_f64(),
            self.ending
        )
    }
}

/// `01/Dec/2026:08:41:47`, in UTC.
fn common_log_time(t: SystemTime) -> String {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{day:02}/{}/{year:04}:{:02}:{:02}:{:02}",
        MONTHS[(month - 1) as usize],
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ending: Ending) -> ConnectionRecord {
        ConnectionRecord {
            rule: "0.0.0.0:80".parse().unwrap(),
            client: "[::ffff:203.0.113.7]:51000".parse().unwrap(),
            target: Some("10.1.1.2:8080".parse().unwrap()),
            up: 120,
            down: 4567,
            duration: Duration::from_millis(1500),
            ending,
        }
    }

    // 2026-12-01 08:41:47 UTC.
    fn when() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_114_507)
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_788), (2026, 12, 1));
        assert_eq!(common_log_time(when()), "01/Dec/2026:08:41:47");
    }

    #[test]
    fn rinetd_formats() {
        let r = record(Ending::Closed { first: Side::Client });
        assert_eq!(
            r.rinetd_line(false, when()),
            "01/Dec/2026:08:41:47\t203.0.113.7\t0.0.0.0\t80\t10.1.1.2\t8080\t120\t4567\tdone-remote-closed\n"
        );
        assert_eq!(
            r.rinetd_line(true, when()),
            "203.0.113.7 - - [01/Dec/2026:08:41:47 +0000] \"GET /rinetd-services/0.0.0.0/80/10.1.1.2/8080/done-remote-closed \
             HTTP/1.0\" 200 4567 - - - 120\n"
        );
    }

    #[test]
    fn the_log_line_says_how_it_ended() {
        let r = record(Ending::Broken { side: Side::Client, error: io::ErrorKind::ConnectionReset.into() });
        assert_eq!(
            r.to_string(),
            "client=[::ffff:203.0.113.7]:51000 rule=0.0.0.0:80 target=10.1.1.2:8080 up=120 down=4567 duration=1.500s \
             end=\"reset by client\""
        );
        let mut r = record(Ending::ConnectFailed("10.1.1.2:8080: connection refused".into()));
        r.target = None;
        assert!(r.to_string().contains("target=- "));
        assert!(r.to_string().ends_with("end=\"no target reachable: 10.1.1.2:8080: connection refused\""));
        assert!(r.rinetd_line(false, when()).ends_with("\t-\t0\t120\t4567\tlocal-connect-failed\n"));
        assert_eq!(Ending::Closed { first: Side::Client }.to_string(), "closed by client");
        assert_eq!(
            Ending::Broken { side: Side::Target, error: io::Error::other("boom") }.to_string(),
            "target failed: boom"
        );
    }
}
