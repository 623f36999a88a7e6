//! Reading a configuration file: the file itself and the services
//! database for port names, then the pure parser (`config`).

use std::path::{Path, PathBuf};

use crate::config::{self, Config, ConfigError, RuleOptions};

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// A line does not parse.
    #[error(transparent)]
    Parse(#[from] ConfigError),
}

/// Reads and parses `path`; `defaults` are the options of rules that do not set their own.
pub fn load(path: &Path, defaults: &RuleOptions) -> Result<Config, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|error| LoadError::Read { path: path.to_owned(), error })?;
    let services = std::fs::read_to_string("/etc/services").unwrap_or_default();
    Ok(config::parse(&text, path, defaults, &|name| service_port(&services, name))?)
}

/// The TCP port of a service name (or alias) in `/etc/services` text.
fn service_port(services: &str, name: &str) -> Option<u16> {
    services.lines().find_map(|line| {
        let mut words = line.split('#').next()?.split_whitespace();
        let official = words.next()?;
        let (port, protocol) = words.next()?.split_once('/')?;
        let named = official == name || words.any(|alias| alias == name);
        (named && protocol == "tcp").then(|| port.parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_and_aliases_give_tcp_ports() {
        let services = "# comment\nhttp\t\t80/tcp\t\twww\t# WorldWideWeb HTTP\nhttp 80/udp\ndomain\t53/udp\npostgresql\t5432/tcp\tpostgres\n";
        assert_eq!(service_port(services, "http"), Some(80));
        assert_eq!(service_port(services, "www"), Some(80));
        assert_eq!(service_port(services, "postgres"), Some(5432));
        assert_eq!(service_port(services, "domain"), None, "UDP only");
        assert_eq!(service_port(services, "gopher"), None);
    }
}
