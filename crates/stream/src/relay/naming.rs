//! Where a relayed stream lives: the `s3://BUCKET/PREFIX` a user writes,
//! and the names of its objects under PREFIX, chosen so that a listing
//! (lexicographic, as every object store lists) returns the data objects
//! in stream order, and a receiver can ask for the next one by name before
//! it exists.
//!
//! Must never: accept a URL it cannot name the bucket of, or take a name
//! it did not make for one of its own.

/// An object-storage location, as parsed from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayUrl {
    /// The bucket.
    pub bucket: String,
    /// The prefix inside it, without leading or trailing `/` (may be empty).
    pub prefix: String,
}

/// Why a location is not a usable `s3://BUCKET/PREFIX`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UrlError {
    /// Not of the form `s3://…`.
    #[error("malformed URL {0:?}: write s3://BUCKET/PREFIX")]
    Malformed(String),
    /// A scheme this build does not speak.
    #[error("{0}:// is not supported: use s3:// (any S3-compatible server, with --endpoint or AWS_ENDPOINT_URL)")]
    Unsupported(String),
    /// `s3://` without a bucket.
    #[error("no bucket in {0:?}: write s3://BUCKET/PREFIX")]
    NoBucket(String),
    /// A bucket name S3 would refuse.
    #[error(
        "{0:?} is not a bucket name (3 to 63 lowercase letters, digits, dots and hyphens, starting and ending with a letter or digit)"
    )]
    BadBucket(String),
    /// A prefix with an empty, `.` or `..` segment.
    #[error("the prefix {0:?} has an empty, . or .. part")]
    BadPrefix(String),
}

/// Schemes of object stores, spoken or not.
const OBJECT_SCHEMES: [&str; 5] = ["s3", "gs", "az", "abfs", "r2"];

impl RelayUrl {
    /// Whether `location` is meant as an object-storage URL (even a
    /// mistyped one: `s3:/bucket`, `s3:bucket`), rather than a peer.
    pub fn is_object_url(location: &str) -> bool {
        location
            .split_once(':')
            .is_some_and(|(scheme, _)| OBJECT_SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()))
    }

    /// Parses `s3://BUCKET[/PREFIX]`.
    pub fn parse(location: &str) -> Result<RelayUrl, UrlError> {
        let malformed = || UrlError::Malformed(location.to_string());
        let (scheme, rest) = location.split_once(':').ok_or_else(malformed)?;
        let scheme = scheme.to_ascii_lowercase();
        let rest = rest.strip_prefix("//").ok_or_else(malformed)?;
        if scheme != "s3" {
            return Err(if OBJECT_SCHEMES.contains(&scheme.as_str()) {
                UrlError::Unsupported(scheme)
            } else {
                malformed()
            });
        }
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(UrlError::NoBucket(location.to_string()));
        }
        if !valid_bucket(bucket) {
            return Err(UrlError::BadBucket(bucket.to_string()));
        }
        let prefix = prefix.trim_end_matches('/');
        if !prefix.is_empty() && prefix.split('/').any(|part| part.is_empty() || part == "." || part == "..") {
            return Err(UrlError::BadPrefix(prefix.to_string()));
        }
        Ok(RelayUrl { bucket: bucket.to_string(), prefix: prefix.to_string() })
    }
}

impl std::fmt::Display for RelayUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.prefix.as_str() {
            "" => write!(f, "s3://{}", self.bucket),
            prefix => write!(f, "s3://{}/{prefix}", self.bucket),
        }
    }
}

fn valid_bucket(name: &str) -> bool {
    let edge = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let bytes = name.as_bytes();
    (3..=63).contains(&bytes.len())
        && bytes.iter().all(|&c| edge(c) || c == b'.' || c == b'-')
        && edge(bytes[0])
        && edge(bytes[bytes.len() - 1])
        && !name.contains("..")
}

/// Digits of an object's index in its name: every `u64` fits, so names
/// sort as their indices do.
const INDEX_DIGITS: usize = 20;

/// The names of one stream's objects, under a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// `""` or `"PREFIX/"`.
    base: String,
}

impl Names {
    /// Names under `prefix` (as in [`RelayUrl::prefix`]).
    pub fn new(prefix: &str) -> Names {
        let prefix = prefix.trim_matches('/');
        Names { base: if prefix.is_empty() { String::new() } else { format!("{prefix}/") } }
    }

    /// Everything of the stream starts with this (to list it).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The header object: stream id and layout, created once.
    pub fn header(&self) -> String {
        format!("{}header", self.base)
    }

    /// The final object: count, length and digest of the whole stream.
    pub fn end(&self) -> String {
        format!("{}end", self.base)
    }

    /// The data objects start with this (to list them).
    pub fn data_prefix(&self) -> String {
        format!("{}data/", self.base)
    }

    /// Data object `index`.
    pub fn data(&self, index: u64) -> String {
        format!("{}data/{index:0INDEX_DIGITS$}", self.base)
    }

    /// The index of a data object's name; `None` for any other name.
    pub fn index_of(&self, name: &str) -> Option<u64> {
        let digits = name.strip_prefix(&self.base)?.strip_prefix("data/")?;
        if digits.len() != INDEX_DIGITS || !digits.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }

    /// Whether `name` is one of the objects a stream is made of (what a
    /// finished receiver removes; nothing else under the prefix is touched).
    pub fn is_ours(&self, name: &str) -> bool {
        name == self.header() || name == self.end() || self.index_of(name).is_some()
    }

    /// How many data objects, from 0 on, are all in `listed` (any order).
    pub fn contiguous<'a>(&self, listed: impl IntoIterator<Item = &'a str>) -> u64 {
        let mut indices: Vec<u64> = listed.into_iter().filter_map(|n| self.index_of(n)).collect();
        indices.sort_unstable();
        indices.dedup();
        indices.iter().enumerate().take_while(|(i, index)| *i as u64 == **index).count() as u64
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn urls_parse_into_bucket_and_prefix() {
        let url = RelayUrl::parse("s3://backups/pg/2026-11-30/").unwrap();
        assert_eq!((url.bucket.as_str(), url.prefix.as_str()), ("backups", "pg/2026-11-30"));
        assert_eq!(url.to_string(), "s3://backups/pg/2026-11-30");
        assert_eq!(RelayUrl::parse("s3://my.bucket-1").unwrap().prefix, "");
        assert_eq!(RelayUrl::parse("S3://abc/x").unwrap().bucket, "abc");
    }

    #[test]
    fn mistyped_urls_are_refused_with_the_reason() {
        for (url, expect) in [
            ("s3:/bucket/x", UrlError::Malformed("s3:/bucket/x".into())),
            ("s3:bucket", UrlError::Malformed("s3:bucket".into())),
            ("s3://", UrlError::NoBucket("s3://".into())),
            ("s3:///prefix", UrlError::NoBucket("s3:///prefix".into())),
            ("s3://Bad_Bucket/x", UrlError::BadBucket("Bad_Bucket".into())),
            ("s3://ab/x", UrlError::BadBucket("ab".into())),
            ("s3://-abc/x", UrlError::BadBucket("-abc".into())),
            ("s3://a..b/x", UrlError::BadBucket("a..b".into())),
            ("s3://abc/x//y", UrlError::BadPrefix("x//y".into())),
            ("s3://abc/x/../y", UrlError::BadPrefix("x/../y".into())),
            ("gs://abc/x", UrlError::Unsupported("gs".into())),
        ] {
            assert_eq!(RelayUrl::parse(url), Err(expect), "{url}");
        }
        for object in ["s3://b", "s3:/b", "S3:b", "gs://b", "az://b"] {
            assert!(RelayUrl::is_object_url(object), "{object}");
        }
        for other in ["pareco://host:7700", "/tmp/x", "host:7700", "s3"] {
            assert!(!RelayUrl::is_object_url(other), "{other}");
        }
    }

    #[test]
    fn names_live_under_the_prefix_and_are_recognised() {
        let names = Names::new("pg/base");
        assert_eq!(names.header(), "pg/base/header");
        assert_eq!(names.end(), "pg/base/end");
        assert_eq!(names.data(42), "pg/base/data/00000000000000000042");
        assert_eq!(names.index_of(&names.data(42)), Some(42));
        assert_eq!(names.index_of(&names.data(u64::MAX)), Some(u64::MAX));
        for foreign in ["pg/base/data/42", "pg/base/data/0000000000000000004x", "other/data/00000000000000000042"] {
            assert_eq!(names.index_of(foreign), None, "{foreign}");
            assert!(!names.is_ours(foreign));
        }
        assert!(names.is_ours("pg/base/header") && names.is_ours("pg/base/end"));
        assert!(!names.is_ours("pg/base/notes.txt"));
        assert_eq!(Names::new("").data(1), "data/00000000000000000001");
        assert_eq!(Names::new("/x/").header(), "x/header");
    }

    #[test]
    fn the_contiguous_run_stops_at_the_first_hole() {
        let names = Names::new("p");
        let listed: Vec<String> = [0, 1, 2, 4, 5].iter().map(|&i| names.data(i)).chain([names.header()]).collect();
        assert_eq!(names.contiguous(listed.iter().map(String::as_str)), 3);
        assert_eq!(names.contiguous([names.header().as_str()]), 0);
    }

    proptest! {
        /// A listing (lexicographic) returns data objects in stream order.
        #[test]
        fn names_sort_as_their_indices(mut indices in proptest::collection::vec(any::<u64>(), 1..50)) {
            let names = Names::new("prefix");
            let mut listed: Vec<String> = indices.iter().map(|&i| names.data(i)).collect();
            listed.sort();
            indices.sort_unstable();
            let back: Vec<u64> = listed.iter().map(|n| names.index_of(n).unwrap()).collect();
            prop_assert_eq!(back, indices);
        }
    }
}
