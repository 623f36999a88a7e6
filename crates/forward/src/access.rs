//! Who may connect: rinetd's `allow`/`deny` patterns (`*` and `?` over the
//! address as text) and CIDR blocks of our own (`10.0.0.0/8`, `2001:db8::/32`).
//!
//! Pure: an address and the lists in, a verdict out. Never resolves names
//! (rinetd refuses host names in patterns for the same reason: a lookup per
//! connection would stall the others and could be spoofed).

use std::fmt;
use std::net::IpAddr;

/// One `allow` or `deny` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// rinetd's glob over the address as text: `?` one character, `*` any run.
    Glob(String),
    /// An address block: the first `prefix` bits must match.
    Cidr {
        /// The block's address.
        network: IpAddr,
        /// How many leading bits must match.
        prefix: u8,
    },
}

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// Neither a glob of address characters nor a CIDR block.
    #[error(
        "{0:?} is not an address pattern (use digits, '.', ':', hex letters, '*' and '?', or a CIDR block such as \
         10.0.0.0/8; host names are not allowed)"
    )]
    NotAPattern(String),
    /// A CIDR block whose address or prefix length does not parse.
    #[error("{0:?} is not a CIDR block (ADDRESS/BITS, at most 32 bits for IPv4, 128 for IPv6)")]
    BadCidr(String),
}

impl Pattern {
    /// Parses an `allow`/`deny` argument.
    pub fn parse(text: &str) -> Result<Pattern, PatternError> {
        if let Some((addr, bits)) = text.split_once('/') {
            let bad = || PatternError::BadCidr(text.to_owned());
            let network: IpAddr = addr.parse().map_err(|_| bad())?;
            let prefix: u8 = bits.parse().map_err(|_| bad())?;
            let max = if network.is_ipv4() { 32 } else { 128 };
            if prefix > max {
                return Err(bad());
            }
            return Ok(Pattern::Cidr { network: network.to_canonical(), prefix });
        }
        let glob_char = |c: char| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '*' | '?');
        if text.is_empty() || !text.chars().all(glob_char) {
            return Err(PatternError::NotAPattern(text.to_owned()));
        }
        Ok(Pattern::Glob(text.to_ascii_lowercase()))
    }

    /// Whether `addr` (already canonical: IPv4-mapped IPv6 shown as IPv4) matches.
    pub fn matches(&self, addr: IpAddr) -> bool {
        match *self {
            Pattern::Glob(ref glob) => glob_matches(glob.as_bytes(), addr.to_string().as_bytes()),
            Pattern::Cidr { network, prefix } => match (network, addr) {
                (IpAddr::V4(n), IpAddr::V4(a)) => same_prefix(n.to_bits().into(), a.to_bits().into(), prefix, 32),
                (IpAddr::V6(n), IpAddr::V6(a)) => same_prefix(n.to_bits(), a.to_bits(), prefix, 128),
                _ => false,
            },
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Glob(g) => f.write_str(g),
            Pattern::Cidr { network, prefix } => write!(f, "{network}/{prefix}"),
        }
    }
}

fn same_prefix(a: u128, b: u128, prefix: u8, width: u32) -> bool {
    let shift = width - u32::from(prefix);
    // A shift by the full width (prefix 0) matches everything.
    shift >= width || (a >> shift) == (b >> shift)
}

/// `*` matches any run (including none), `?` exactly one character.
fn glob_matches(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was, and the text position it is trying to absorb up to.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// The `allow` and `deny` patterns of one scope (global, or one rule).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessList {
    /// If any, an address must match one of them.
    pub allow: Vec<Pattern>,
    /// An address that matches any of them is refused.
    pub deny: Vec<Pattern>,
}

/// What the access lists say about a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let it through.
    Admitted,
    /// There are allow patterns and it matches none (rinetd's `not-allowed`).
    NotAllowed,
    /// It matches a deny pattern (rinetd's `denied`).
    Denied,
}

impl AccessList {
    /// Whether both lists are empty.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    fn verdict(&self, addr: IpAddr) -> Verdict {
        if !self.allow.is_empty() && !self.allow.iter().any(|p| p.matches(addr)) {
            Verdict::NotAllowed
        } else if self.deny.iter().any(|p| p.matches(addr)) {
            Verdict::Denied
        } else {
            Verdict::Admitted
        }
    }
}

/// rinetd's order: global allow, global deny, then the rule's allow and
/// deny; the first that refuses decides.
pub fn check(global: &AccessList, rule: &AccessList, addr: IpAddr) -> Verdict {
    let addr = addr.to_canonical();
    match global.verdict(addr) {
        Verdict::Admitted => rule.verdict(addr),
        refused => refused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn list(allow: &[&str], deny: &[&str]) -> AccessList {
        let p = |v: &[&str]| v.iter().map(|s| Pattern::parse(s).unwrap()).collect();
        AccessList { allow: p(allow), deny: p(deny) }
    }

    #[test]
    fn globs_follow_rinetd() {
        let m = |p: &str, a: &str| Pattern::parse(p).unwrap().matches(ip(a));
        assert!(m("206.125.69.*", "206.125.69.81"));
        assert!(!m("206.125.69.*", "206.125.70.81"));
        assert!(m("192.168.2.1?", "192.168.2.15"));
        assert!(!m("192.168.2.1?", "192.168.2.1"));
        assert!(!m("192.168.2.1?", "192.168.2.150"));
        assert!(m("*", "::1"));
        assert!(m("fe80:*", "fe80::1"));
        assert!(m("2001:618:*:e43f", "2001:618:1:2::e43f"));
        assert!(m("FE80:*", "fe80::1"), "hex letters in either case");
        assert!(m("1*1", "1.1.1.1"));
        assert!(m("*.1", "10.0.0.1"));
        assert!(!m("*.1", "10.0.0.12"));
        assert!(m("10.0.0.1**", "10.0.0.1"));
    }

    #[test]
    fn cidr_blocks_match_by_prefix() {
        let m = |p: &str, a: &str| Pattern::parse(p).unwrap().matches(ip(a));
        assert!(m("10.0.0.0/8", "10.200.3.4"));
        assert!(!m("10.0.0.0/8", "11.0.0.1"));
        assert!(m("0.0.0.0/0", "203.0.113.9"));
        assert!(m("192.168.1.7/32", "192.168.1.7"));
        assert!(!m("192.168.1.7/32", "192.168.1.8"));
        assert!(m("2001:db8::/32", "2001:db8:ffff::1"));
        assert!(!m("2001:db8::/32", "2001:db9::1"));
        assert!(m("::/0", "::1"));
        assert!(!m("10.0.0.0/8", "::ffff:10.0.0.1"), "addresses reach patterns canonical, see check()");
        assert!(!m("::/0", "10.0.0.1"), "families never mix");
    }

    #[test]
    fn bad_patterns_are_named() {
        assert_eq!(Pattern::parse("example.com"), Err(PatternError::NotAPattern("example.com".into())));
        assert_eq!(Pattern::parse(""), Err(PatternError::NotAPattern("".into())));
        assert!(matches!(Pattern::parse("10.0.0.0/33"), Err(PatternError::BadCidr(_))));
        assert!(matches!(Pattern::parse("10.0.0/8"), Err(PatternError::BadCidr(_))));
        assert!(matches!(Pattern::parse("::/129"), Err(PatternError::BadCidr(_))));
        assert!(matches!(Pattern::parse("10.0.0.0/x"), Err(PatternError::BadCidr(_))));
    }

    #[test]
    fn global_rules_come_first_and_allow_lists_are_exclusive() {
        let none = AccessList::default();
        assert_eq!(check(&none, &none, ip("1.2.3.4")), Verdict::Admitted);
        let global = list(&["10.*"], &["10.0.0.66"]);
        assert_eq!(check(&global, &none, ip("10.1.1.1")), Verdict::Admitted);
        assert_eq!(check(&global, &none, ip("192.168.0.1")), Verdict::NotAllowed);
        assert_eq!(check(&global, &none, ip("10.0.0.66")), Verdict::Denied);
        // A rule's own allow list narrows further; it cannot widen the global one.
        let rule = list(&["10.0.0.0/24"], &[]);
        assert_eq!(check(&global, &rule, ip("10.0.0.5")), Verdict::Admitted);
        assert_eq!(check(&global, &rule, ip("10.0.1.5")), Verdict::NotAllowed);
        assert_eq!(check(&none, &list(&["192.168.*"], &[]), ip("10.0.0.5")), Verdict::NotAllowed);
        assert_eq!(check(&global, &list(&["192.168.*"], &[]), ip("192.168.0.1")), Verdict::NotAllowed);
        // Deny wins over the rule's allow.
        assert_eq!(check(&none, &list(&["*"], &["127.0.0.1"]), ip("127.0.0.1")), Verdict::Denied);
    }

    #[test]
    fn mapped_ipv4_clients_are_matched_as_ipv4() {
        let none = AccessList::default();
        let rule = list(&["127.0.0.0/8"], &[]);
        assert_eq!(check(&none, &rule, ip("::ffff:127.0.0.1")), Verdict::Admitted);
        let rule = list(&["127.0.0.*"], &[]);
        assert_eq!(check(&none, &rule, ip("::ffff:127.0.0.1")), Verdict::Admitted);
    }
}
