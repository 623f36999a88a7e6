//! Where a relayed stream's objects are kept: a bucket behind a small
//! trait, so that the relay runs the same over S3 ([`super::s3`]) and over a
//! local directory ([`DirBucket`]: tests, or a shared file system).
//!
//! Must never: make a half-written object visible under its name (a PUT is
//! all or nothing), or read more of an object than the caller allows.

use std::future::Future;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;

use bytes::Bytes;

/// Why a request to the store failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The bucket is not there.
    #[error("the bucket does not exist")]
    NoBucket,
    /// The credentials are refused, or do not allow this.
    #[error(
        "access denied ({0}): check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), and the bucket's policy"
    )]
    Denied(String),
    /// An object larger than anything of a stream.
    #[error("{0} bytes, more than any object of a pareco stream: not a pareco object")]
    TooLarge(u64),
    /// A failure worth retrying: the server busy or failing (5xx, SlowDown),
    /// a timeout, a connection refused or reset.
    #[error("{0}")]
    Transient(String),
    /// A failure that retrying cannot mend.
    #[error("{0}")]
    Failed(String),
}

impl StoreError {
    /// Whether the same request may succeed later.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Transient(_))
    }
}

/// A bucket of objects with flat names (`/` is only a character), as
/// object stores have: one plain PUT, GET, list and delete.
pub trait Bucket: Send + Sync + 'static {
    /// Stores `body` under `name`, replacing what was there.
    fn put(&self, name: &str, body: Bytes) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Stores `body` under `name` only if nothing is there (a conditional
    /// create); `false` if something is.
    fn create(&self, name: &str, body: Bytes) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The object under `name`; `None` if there is none. Refused, unread,
    /// if it is larger than `limit` bytes. A body cut short may be asked
    /// for again from where it stopped: each such request is counted in
    /// `retried`.
    fn get(
        &self,
        name: &str,
        limit: u64,
        retried: &AtomicU64,
    ) -> impl Future<Output = Result<Option<Bytes>, StoreError>> + Send;

    /// Names that start with `prefix`, in lexicographic order, every page
    /// of the listing followed (at most `limit` names if given). Fails
    /// with [`StoreError::NoBucket`] if the bucket is not there.
    fn list(&self, prefix: &str, limit: Option<usize>) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// Removes the objects named; missing ones are no error.
    fn delete(&self, names: Vec<String>) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Where an object is, for messages (`s3://bucket/name`).
    fn url(&self, name: &str) -> String;
}

/// A directory as a bucket: names are paths below it, written to a
/// temporary file and renamed into place, so that a reader sees whole
/// objects or none.
pub struct DirBucket {
    root: PathBuf,
}

/// Temporary files: never listed.
const TEMP_MARK: &str = ".pareco-tmp.";

impl DirBucket {
    /// The bucket at directory `root` (which must exist).
    pub fn new(root: impl Into<PathBuf>) -> DirBucket {
        DirBucket { root: root.into() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Path) -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            if !root.is_dir() {
                return Err(StoreError::NoBucket);
            }
            f(&root).map_err(|e| StoreError::Failed(e.to_string()))
        })
        .await
        .map_err(|e| StoreError::Failed(e.to_string()))?
    }

    /// Writes `body` to a new temporary file beside `path`.
    fn temp(path: &Path, body: &[u8]) -> std::io::Result<PathBuf> {
        let dir = path.parent().expect("names are below the root");
        std::fs::create_dir_all(dir)?;
        let mut suffix = [0u8; 8];
        getrandom::fill(&mut suffix).map_err(|e| std::io::Error::other(e.to_string()))?;
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let temp = dir.join(format!("{TEMP_MARK}{name}.{}", u64::from_le_bytes(suffix)));
        std::fs::write(&temp, body)?;
        Ok(temp)
    }
}

impl Bucket for DirBucket {
    async fn put(&self, name: &str, body: Bytes) -> Result<(), StoreError> {
        let path = self.path(name);
        self.blocking(move |_| {
            let temp = DirBucket::temp(&path, &body)?;
            std::fs::rename(&temp, &path)
        })
        .await
    }

    async fn create(&self, name: &str, body: Bytes) -> Result<bool, StoreError> {
        let path = self.path(name);
        self.blocking(move |_| {
            let temp = DirBucket::temp(&path, &body)?;
            // A hard link is created only where nothing is: atomic.
            let linked = std::fs::hard_link(&temp, &path);
            std::fs::remove_file(&temp)?;
            match linked {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(e),
            }
        })
        .await
    }

    async fn get(&self, name: &str, limit: u64, _retried: &AtomicU64) -> Result<Option<Bytes>, StoreError> {
        let path = self.path(name);
        let read = self
            .blocking(move |_| {
                use std::io::Read;
                let mut file = match std::fs::File::open(&path) {
                    Ok(file) => file,
                    Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Err(None)),
                    Err(e) => return Err(e),
                };
                let len = file.metadata()?.len();
                if len > limit {
                    return Ok(Err(Some(len)));
                }
                let mut body = Vec::with_capacity(len as usize);
                file.read_to_end(&mut body)?;
                Ok(Ok(Bytes::from(body)))
            })
            .await?;
        match read {
            Ok(body) => Ok(Some(body)),
            Err(None) => Ok(None),
            Err(Some(len)) => Err(StoreError::TooLarge(len)),
        }
    }

    async fn list(&self, prefix: &str, limit: Option<usize>) -> Result<Vec<String>, StoreError> {
        let prefix = prefix.to_string();
        self.blocking(move |root| {
            // Walk from the deepest directory the prefix names.
            let dir = match prefix.rfind('/') {
                Some(i) => root.join(&prefix[..i]),
                None => root.to_path_buf(),
            };
            let mut names = Vec::new();
            let mut todo = vec![dir];
            while let Some(dir) = todo.pop() {
                let entries = match std::fs::read_dir(&dir) {
                    Ok(entries) => entries,
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                for entry in entries {
                    let entry = entry?;
                    let path = entry.path();
                    if entry.file_type()?.is_dir() {
                        todo.push(path);
                        continue;
                    }
                    let Ok(rel) = path.strip_prefix(root) else { continue };
                    let name = rel.to_string_lossy().into_owned();
                    if name.starts_with(&prefix) && !entry.file_name().to_string_lossy().starts_with(TEMP_MARK) {
                        names.push(name);
                    }
                }
            }
            names.sort();
            names.truncate(limit.unwrap_or(usize::MAX));
            Ok(names)
        })
        .await
    }

    async fn delete(&self, names: Vec<String>) -> Result<(), StoreError> {
        let paths: Vec<PathBuf> = names.iter().map(|n| self.path(n)).collect();
        self.blocking(move |_| {
            for path in paths {
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            Ok(())
        })
        .await
    }

    fn url(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_directory_keeps_objects_as_a_bucket_does() {
        let tmp = tempfile::tempdir().unwrap();
        let bucket = DirBucket::new(tmp.path());
        assert!(bucket.create("p/header", Bytes::from_static(b"one")).await.unwrap());
        assert!(!bucket.create("p/header", Bytes::from_static(b"two")).await.unwrap(), "created once");
        bucket.put("p/data/2", Bytes::from_static(b"b")).await.unwrap();
        bucket.put("p/data/1", Bytes::from_static(b"a")).await.unwrap();
        bucket.put("p/data/1", Bytes::from_static(b"A")).await.unwrap();
        bucket.put("q/other", Bytes::from_static(b"q")).await.unwrap();
        assert_eq!(bucket.get("p/header", 10, &AtomicU64::new(0)).await.unwrap().unwrap(), &b"one"[..]);
        assert_eq!(bucket.get("p/data/1", 10, &AtomicU64::new(0)).await.unwrap().unwrap(), &b"A"[..]);
        assert_eq!(bucket.get("p/nothing", 10, &AtomicU64::new(0)).await.unwrap(), None);
        assert!(matches!(bucket.get("p/header", 2, &AtomicU64::new(0)).await, Err(StoreError::TooLarge(3))));
        assert_eq!(bucket.list("p/", None).await.unwrap(), ["p/data/1", "p/data/2", "p/header"]);
        assert_eq!(bucket.list("p/data/", Some(1)).await.unwrap(), ["p/data/1"]);
        bucket.delete(vec!["p/data/1".into(), "p/missing".into()]).await.unwrap();
        assert_eq!(bucket.list("p/", None).await.unwrap(), ["p/data/2", "p/header"]);
        let gone = DirBucket::new(tmp.path().join("none"));
        assert!(matches!(gone.list("", None).await, Err(StoreError::NoBucket)));
    }
}
