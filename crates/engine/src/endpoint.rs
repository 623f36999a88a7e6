//! Where a sync reads from or writes to: a local path or a `pareco://` URL,
//! turned into a [`Tree`] and a base path inside it.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use pareco_fs::FsTree;
use pareco_net::{NetError, Pool, PoolOptions, Security, TokenKey};
use pareco_proto::RelPath;

use crate::tree::{BlockingTree, Tree};

/// Port used when a URL names none.
pub const DEFAULT_PORT: u16 = 7700;

/// Operations on local files that may run at once (reads, writes, hashing).
const LOCAL_PARALLELISM: usize = 16;

/// A location as the user wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A path on this machine.
    Local(PathBuf),
    /// `pareco://HOST[:PORT]/PATH`: PATH under a server's root.
    Remote {
        /// `host:port`, ready to connect to.
        addr: String,
        /// Path under the server's root.
        path: RelPath,
    },
}

/// A location that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocationError {
    /// The URL is malformed.
    #[error("invalid URL {url:?}: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A local path cannot be opened.
    #[error("{path}: {source}")]
    Local {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Connecting to the server failed.
    #[error(transparent)]
    Connect(#[from] NetError),
}

/// How remote locations are written, for error messages.
const URL_FORMS: &str =
    "expected a local path or pareco://HOST[:PORT]/PATH; write a local name with a colon as ./NAME:…";

impl Location {
    /// Parses a command-line argument naming a tree (or an entry in one).
    ///
    /// Anything that looks like a URL or a remote path (`word://…`,
    /// `pareco:…`, rsync's `HOST:PATH`) and is not a valid `pareco://`
    /// location is refused rather than taken for a local name: a typo must
    /// not create a local directory called `http:`. A `pareco://` URL must
    /// name a path: an empty one would silently mean the server's whole
    /// root (which `--delete` would then prune); `/.` names the root.
    pub fn parse(arg: &OsStr) -> Result<Location, LocationError> {
        let Some((addr, path)) = split_url(arg)? else {
            return Ok(Location::Local(PathBuf::from(arg)));
        };
        let path = match path.split(|&b| b == b'/').filter(|c| !c.is_empty()).collect::<Vec<_>>()[..] {
            [] => return Err(url_error(arg, "no path after the server (use pareco://HOST[:PORT]/. to name its root)")),
            [b"."] => RelPath::root(),
            _ => RelPath::from_user(path).map_err(|e| url_error(arg, &e.to_string()))?,
        };
        Ok(Location::Remote { addr, path })
    }

    /// Parses the other end of a stream: `pareco://HOST[:PORT]`, with no path.
    pub fn parse_peer(arg: &OsStr) -> Result<String, LocationError> {
        match split_url(arg)? {
            Some((addr, path)) if path.iter().all(|&b| b == b'/') => Ok(addr),
            Some(_) => Err(url_error(arg, "the other end of a stream is pareco://HOST:PORT, without a path")),
            None => Err(url_error(arg, "the other end of a stream is pareco://HOST:PORT (or use --listen)")),
        }
    }
}

fn url_error(arg: &OsStr, reason: &str) -> LocationError {
    LocationError::Url { url: arg.to_string_lossy().into(), reason: reason.into() }
}

/// `pareco://HOST[:PORT]/PATH` as `host:port` and the raw path; `None` for
/// a local path; an error for anything URL-like that is not one.
fn split_url(arg: &OsStr) -> Result<Option<(String, &[u8])>, LocationError> {
    let bytes = arg.as_bytes();
    // Schemes are case-insensitive.
    let scheme = b"pareco://";
    let rest = bytes.get(..scheme.len()).filter(|s| s.eq_ignore_ascii_case(scheme)).map(|_| &bytes[scheme.len()..]);
    let Some(rest) = rest else {
        return match url_like(bytes) {
            Some(reason) => Err(url_error(arg, &format!("{reason} ({URL_FORMS})"))),
            None => Ok(None),
        };
    };
    let (authority, path) = match rest.iter().position(|&b| b == b'/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, &b""[..]),
    };
    let authority = std::str::from_utf8(authority).map_err(|_| url_error(arg, "host is not UTF-8"))?;
    let (host, port) = split_host_port(authority)
        .ok_or_else(|| url_error(arg, "expected pareco://HOST[:PORT]/PATH (a host name or address, a port number)"))?;
    Ok(Some((format!("{host}:{port}"), path)))
}

/// Why an argument that is not a `pareco://` URL still cannot be a local
/// path: it starts with `SCHEME:` (letters, digits, `+-.`, before any `/`).
fn url_like(arg: &[u8]) -> Option<String> {
    let colon = arg.iter().position(|&b| b == b':')?;
    let word = &arg[..colon];
    let schemey = |b: &u8| b.is_ascii_alphanumeric() || b"+-._[]".contains(b);
    if word.is_empty() || !word.iter().all(schemey) {
        return None;
    }
    let word = String::from_utf8_lossy(word);
    let rest = &arg[colon + 1..];
    Some(if word.eq_ignore_ascii_case("pareco") {
        "malformed pareco URL: it starts with pareco:// (two slashes)".to_string()
    } else if rest.starts_with(b"//") {
        let hint = match word.to_ascii_lowercase().as_str() {
            "s3" | "gs" | "az" => " (object storage is reached with pareco send / pareco recv)",
            _ => "",
        };
        format!("{word}:// locations are not supported here{hint}")
    } else {
        format!("{word}:… looks like a remote HOST:PATH (as rsync and scp write it)")
    })
}

fn split_host_port(authority: &str) -> Option<(&str, u16)> {
    if let Some(v6) = authority.strip_prefix('[') {
        let end = v6.find(']')?;
        let port = match &v6[end + 1..] {
            "" => DEFAULT_PORT,
            p => p.strip_prefix(':')?.parse().ok()?,
        };
        return Some((&authority[..end + 2], port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !host.contains(':') => Some((host, port.parse().ok()?)),
        None if !authority.is_empty() => Some((authority, DEFAULT_PORT)),
        _ => None,
    }
}

/// One side of a sync: a tree and the path of the synced entry inside it.
#[derive(Clone)]
pub struct Endpoint {
    /// The tree.
    pub tree: Tree,
    /// The synced entry, relative to the tree's root.
    pub base: RelPath,
}

impl Endpoint {
    /// Opens a location as the source of a sync (or a side of a verify)
    /// whose data goes to `peer`.
    pub async fn source(
        location: &Location,
        peer: &Location,
        remote: &RemoteOptions,
    ) -> Result<Endpoint, LocationError> {
        match location {
            Location::Local(path) => local_source(path, trusts_transit(peer, remote)),
            Location::Remote { addr, path } => Endpoint::remote(addr, path, remote).await,
        }
    }

    /// Opens a location as the destination of a sync (which may not exist
    /// yet) whose data comes from `peer`.
    pub async fn destination(
        location: &Location,
        peer: &Location,
        remote: &RemoteOptions,
    ) -> Result<Endpoint, LocationError> {
        match location {
            Location::Local(path) => local_destination(path, trusts_transit(peer, remote)),
            Location::Remote { addr, path } => Endpoint::remote(addr, path, remote).await,
        }
    }

    async fn remote(addr: &str, path: &RelPath, options: &RemoteOptions) -> Result<Endpoint, LocationError> {
        let pool = Arc::new(Pool::connect(addr, options.key.clone(), &options.pool).await?);
        if let Some(tuning) = &options.tuning {
            crate::tuning::spawn(&pool, tuning.clone());
        }
        Ok(Endpoint { tree: Tree::Remote(pool), base: path.clone() })
    }

    /// Keeps a local tree's digest cache in `state_dir` (a remote tree's is
    /// its server's business).
    pub fn keep_digests_in(&self, state_dir: &Path) -> std::io::Result<()> {
        match &self.tree {
            Tree::Local(t) => t.fs().keep_digests_in(state_dir),
            Tree::Remote(_) => Ok(()),
        }
    }

    /// Saves a local tree's digest cache, if it is kept in a state directory.
    pub fn save_digests(&self) -> std::io::Result<()> {
        match &self.tree {
            Tree::Local(t) => t.fs().cache().save(),
            Tree::Remote(_) => Ok(()),
        }
    }

    /// The path of `rel` (relative to the synced entry) inside the tree.
    pub fn path(&self, rel: &RelPath) -> RelPath {
        self.base.join_path(rel).unwrap_or_else(|_| rel.clone())
    }
}

/// What is needed to reach a server.
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    /// Key derived from the shared token.
    pub key: TokenKey,
    /// Connections and timeouts.
    pub pool: PoolOptions,
    /// The connection count follows the throughput (`-j auto`), if set;
    /// else it stays `pool.connections`.
    pub tuning: Option<crate::tuning::Tuning>,
}

fn local_error(path: &Path) -> impl FnOnce(std::io::Error) -> LocationError + '_ {
    move |source| LocationError::Local { path: path.to_path_buf(), source }
}

/// Whether a local tree's data needs no checksums (`FsTree::trust_transit`):
/// it comes from or goes to this process, or crosses the pool's channels
/// encrypted. Only plaintext channels leave checksums worth computing and
/// checking, and the server decides alike from the same channel.
fn trusts_transit(peer: &Location, remote: &RemoteOptions) -> bool {
    matches!(peer, Location::Local(_)) || remote.pool.security == Security::Encrypted
}

fn open_tree(dir: &Path, trust_transit: bool) -> Result<Tree, LocationError> {
    let mut tree = FsTree::open(dir).map_err(local_error(dir))?;
    if trust_transit {
        tree = tree.trust_transit();
    }
    Ok(Tree::Local(BlockingTree::new(tree, LOCAL_PARALLELISM)))
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn name_of(path: &Path) -> Result<RelPath, LocationError> {
    let invalid = || LocationError::Local {
        path: path.to_path_buf(),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the path must end with a file or directory name",
        ),
    };
    let name = path.file_name().ok_or_else(invalid)?;
    RelPath::new(name.as_bytes()).map_err(|_| invalid())
}

/// A source directory is the root of its tree; a source file (or symlink)
/// is an entry of its parent directory.
fn local_source(path: &Path, trust_transit: bool) -> Result<Endpoint, LocationError> {
    let meta = std::fs::metadata(path).map_err(local_error(path))?;
    if meta.is_dir() {
        return Ok(Endpoint { tree: open_tree(path, trust_transit)?, base: RelPath::root() });
    }
    Ok(Endpoint { tree: open_tree(parent_of(path), trust_transit)?, base: name_of(path)? })
}

/// The tree is rooted at the deepest directory of `path` that exists; the
/// rest of the path (created by the sync) is the base.
fn local_destination(path: &Path, trust_transit: bool) -> Result<Endpoint, LocationError> {
    let mut existing = path.to_path_buf();
    let mut missing = Vec::new();
    loop {
        match std::fs::metadata(&existing) {
            Ok(m) if m.is_dir() => break,
            Ok(_) if missing.is_empty() => {
                // An existing file: replaced by the sync.
                return Ok(Endpoint { tree: open_tree(parent_of(path), trust_transit)?, base: name_of(path)? });
            }
            Ok(_) => {
                let source = std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory");
                return Err(LocationError::Local { path: existing, source });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                match existing.components().next_back() {
                    Some(Component::Normal(name)) => missing.push(name.to_os_string()),
                    _ => return Err(local_error(path)(e)),
                }
                existing = parent_of(&existing).to_path_buf();
            }
            Err(e) => return Err(local_error(&existing)(e)),
        }
    }
    missing.reverse();
    let joined = missing.iter().map(|n| n.as_bytes()).collect::<Vec<_>>().join(&b'/');
    let base = RelPath::new(&joined).map_err(|e| LocationError::Local {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()),
    })?;
    Ok(Endpoint { tree: open_tree(&existing, trust_transit)?, base })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(s: &str) -> (String, String) {
        match Location::parse(OsStr::new(s)).unwrap() {
            Location::Remote { addr, path } => (addr, path.to_string()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn urls_name_host_port_and_path() {
        assert_eq!(remote("pareco://h:9/a/b"), ("h:9".into(), "a/b".into()));
        assert_eq!(remote("pareco://h/a/"), ("h:7700".into(), "a".into()));
        assert_eq!(remote("pareco://[::1]:8/x"), ("[::1]:8".into(), "x".into()));
        assert_eq!(remote("pareco://[::1]/x"), ("[::1]:7700".into(), "x".into()));
        assert_eq!(Location::parse(OsStr::new("/tmp/x")).unwrap(), Location::Local("/tmp/x".into()));
    }

    #[test]
    fn bad_urls_are_refused() {
        for bad in ["pareco://", "pareco://h:port/x", "pareco://h:1/../etc", "pareco://:7/x", "pareco://h:99999/x"] {
            assert!(Location::parse(OsStr::new(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn anything_url_like_is_refused_rather_than_taken_for_a_local_name() {
        for (bad, says) in [
            ("http://h:7700/y", "http:// locations are not supported"),
            ("pareco:/h:7700/y", "two slashes"),
            ("PARECO:h/y", "two slashes"),
            ("pareco:///x", "a host name"),
            ("s3://bucket/x", "pareco send / pareco recv"),
            ("host:/data", "HOST:PATH"),
            ("backup:2024", "./NAME:"),
        ] {
            let err = Location::parse(OsStr::new(bad)).unwrap_err().to_string();
            assert!(err.contains(says) && err.contains("pareco://HOST[:PORT]/PATH"), "{bad}: {err}");
        }
        for local in ["./host:/data", "/tmp/a:b", "dir/x:y", "plain", "../up", "a b:c"] {
            assert_eq!(Location::parse(OsStr::new(local)).unwrap(), Location::Local(local.into()), "{local}");
        }
    }

    #[test]
    fn a_url_must_name_a_path_and_dot_names_the_root() {
        for empty in ["pareco://h:7700", "pareco://h:7700/", "pareco://h//"] {
            let err = Location::parse(OsStr::new(empty)).unwrap_err().to_string();
            assert!(err.contains("no path after the server"), "{empty}: {err}");
        }
        assert_eq!(remote("pareco://h/."), ("h:7700".into(), ".".into()));
        assert_eq!(remote("PAREco://h/x"), ("h:7700".into(), "x".into()));
        assert_eq!(remote("pareco://h:1/./"), ("h:1".into(), ".".into()));
        assert_eq!(Location::parse_peer(OsStr::new("pareco://h:9")).unwrap(), "h:9");
        assert_eq!(Location::parse_peer(OsStr::new("pareco://h:9/")).unwrap(), "h:9");
        assert!(Location::parse_peer(OsStr::new("pareco://h:9/x")).is_err());
        assert!(Location::parse_peer(OsStr::new("h:9")).is_err());
    }

    #[test]
    fn a_missing_destination_is_rooted_at_its_deepest_existing_parent() {
        let dir = tempfile::tempdir().unwrap();
        let e = local_destination(&dir.path().join("a/b/c"), true).unwrap();
        assert_eq!(e.base.to_string(), "a/b/c");
        std::fs::write(dir.path().join("f"), b"").unwrap();
        assert_eq!(local_destination(&dir.path().join("f"), true).unwrap().base.to_string(), "f");
        assert!(local_destination(&dir.path().join("f/x"), true).is_err());
        assert!(local_destination(dir.path(), true).unwrap().base.is_root());
    }
}
