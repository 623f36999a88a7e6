//! Paths as they travel on the wire: raw bytes (names need not be UTF-8),
//! relative to the root of a tree, validated so that they cannot escape it.
//!
//! A [`RelPath`] is a sequence of [`Name`]s joined by `/`. The empty path is
//! the root itself. Validation rejects, before anything touches a
//! filesystem: NUL bytes, empty components (`a//b`, a leading or trailing
//! `/`, so no absolute paths), `.` and `..`, components longer than
//! [`MAX_NAME`] and paths longer than [`MAX_PATH`].

use std::fmt;

use crate::limits::{MAX_NAME, MAX_PATH};

/// Why a path or name was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// A component is empty: the path is absolute, or has `//` or a trailing `/`.
    #[error("empty path component (absolute path, `//` or trailing `/`)")]
    EmptyComponent,
    /// A component is `.` or `..`.
    #[error("`.` and `..` are not allowed in paths")]
    DotComponent,
    /// The path contains a NUL byte.
    #[error("NUL byte in path")]
    Nul,
    /// A name contains `/`.
    #[error("`/` in a file name")]
    Slash,
    /// A component is longer than [`MAX_NAME`].
    #[error("path component longer than {MAX_NAME} bytes")]
    NameTooLong,
    /// The path is longer than [`MAX_PATH`].
    #[error("path longer than {MAX_PATH} bytes")]
    PathTooLong,
}

/// One validated path component: non-empty, not `.` or `..`, no `/` or NUL.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(Box<[u8]>);

impl Name {
    /// Validates a single component.
    pub fn new(bytes: &[u8]) -> Result<Self, PathError> {
        check_name(bytes)?;
        Ok(Name(bytes.into()))
    }

    /// The raw bytes of the name.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

fn check_name(bytes: &[u8]) -> Result<(), PathError> {
    if bytes.is_empty() {
        return Err(PathError::EmptyComponent);
    }
    if bytes == b"." || bytes == b".." {
        return Err(PathError::DotComponent);
    }
    if bytes.len() > MAX_NAME {
        return Err(PathError::NameTooLong);
    }
    if bytes.contains(&0) {
        return Err(PathError::Nul);
    }
    if bytes.contains(&b'/') {
        return Err(PathError::Slash);
    }
    Ok(())
}

/// A validated path relative to a tree's root; the empty path is the root.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelPath(Box<[u8]>);

impl RelPath {
    /// The root of the tree.
    pub fn root() -> Self {
        RelPath::default()
    }

    /// Validates `a/b/c` (no leading or trailing `/`); `""` is the root.
    pub fn new(bytes: &[u8]) -> Result<Self, PathError> {
        if bytes.len() > MAX_PATH {
            return Err(PathError::PathTooLong);
        }
        if !bytes.is_empty() {
            for component in bytes.split(|&b| b == b'/') {
                check_name(component)?;
            }
        }
        Ok(RelPath(bytes.into()))
    }

    /// Parses a user-supplied path, tolerating leading, trailing and doubled
    /// slashes (`/a//b/` is `a/b`) but still refusing `.`, `..` and NUL.
    pub fn from_user(bytes: &[u8]) -> Result<Self, PathError> {
        let parts: Vec<&[u8]> = bytes.split(|&b| b == b'/').filter(|c| !c.is_empty()).collect();
        RelPath::new(&parts.join(&b'/'))
    }

    /// This path with `name` appended.
    pub fn join(&self, name: &Name) -> Result<Self, PathError> {
        if self.0.is_empty() {
            return Ok(RelPath(name.0.clone()));
        }
        let len = self.0.len() + 1 + name.0.len();
        if len > MAX_PATH {
            return Err(PathError::PathTooLong);
        }
        let mut bytes = Vec::with_capacity(len);
        bytes.extend_from_slice(&self.0);
        bytes.push(b'/');
        bytes.extend_from_slice(&name.0);
        Ok(RelPath(bytes.into()))
    }

    /// This path with every component of `other` appended.
    pub fn join_path(&self, other: &RelPath) -> Result<Self, PathError> {
        match (self.is_root(), other.is_root()) {
            (_, true) => Ok(self.clone()),
            (true, false) => Ok(other.clone()),
            (false, false) => RelPath::new(&[&self.0[..], b"/", &other.0[..]].concat()),
        }
    }

    /// Whether this is the root (the empty path).
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The raw bytes, components separated by `/`.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The parent directory and the last component; `None` for the root.
    pub fn split_last(&self) -> Option<(RelPath, Name)> {
        if self.0.is_empty() {
            return None;
        }
        Some(match self.0.iter().rposition(|&b| b == b'/') {
            Some(i) => (RelPath(self.0[..i].into()), Name(self.0[i + 1..].into())),
            None => (RelPath::root(), Name(self.0.clone())),
        })
    }

    /// The components from the root down.
    pub fn components(&self) -> impl Iterator<Item = &[u8]> {
        self.0.split(|&b| b == b'/').filter(|c| !c.is_empty())
    }
}

/// Pareco's temporary names begin with this: entries being made (renamed
/// into place when complete) and partial files. Only names of exactly those
/// forms are pareco's (see [`is_partial`] and `pareco_fs`); anything else
/// that merely begins with this is the user's and is copied as usual.
pub const TEMP_PREFIX: &str = ".pareco-tmp.";

/// Names of partial files begin with this (after [`TEMP_PREFIX`]).
pub const PARTIAL_MARK: &str = "part.";

/// The name a new file is written under in its directory until it is
/// complete: a function of its final name only, so that both sides (and a
/// later run resuming an interrupted one) agree on it without asking.
pub fn partial_name(name: &Name) -> Name {
    let digest = blake3::hash(name.as_bytes());
    let hex: String = digest.as_bytes()[..16].iter().map(|b| format!("{b:02x}")).collect();
    Name(format!("{TEMP_PREFIX}{PARTIAL_MARK}{hex}").into_bytes().into())
}

/// Whether `name` is a partial file's: exactly what [`partial_name`] makes.
pub fn is_partial(name: &[u8]) -> bool {
    name.strip_prefix(TEMP_PREFIX.as_bytes())
        .and_then(|rest| rest.strip_prefix(PARTIAL_MARK.as_bytes()))
        .is_some_and(|hex| hex.len() == 32 && hex.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// The path of `path`'s partial file (`None` for the root, or if the path
/// would be too long).
pub fn partial_of(path: &RelPath) -> Option<RelPath> {
    let (dir, name) = path.split_last()?;
    dir.join(&partial_name(&name)).ok()
}

/// Writes raw path bytes for humans: printable ASCII and valid UTF-8 as is,
/// control characters (a newline in a name) and invalid bytes as `\xNN`, so
/// that one entry is always one line of output.
pub fn write_escaped(bytes: &[u8], f: &mut impl fmt::Write) -> fmt::Result {
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() || c == '\\' {
                if c == '\\' {
                    f.write_str("\\\\")?;
                } else {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        write!(f, "\\x{b:02x}")?;
                    }
                }
            } else {
                f.write_char(c)?;
            }
        }
        for b in chunk.invalid() {
            write!(f, "\\x{b:02x}")?;
        }
    }
    Ok(())
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str(".");
        }
        write_escaped(&self.0, f)
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RelPath(\"{self}\")")
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_escaped(&self.0, f)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Name(\"{self}\")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_and_odd_names() {
        for ok in [&b""[..], b"a", b"a/b/c", b"with space/\xff\xfe", b"line\nbreak", b"...", b".hidden/..x"] {
            assert!(RelPath::new(ok).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn a_partial_name_depends_on_the_final_name_only_and_is_pareco_s() {
        let (a, b) = (Name::new(b"a.db").unwrap(), Name::new(&[b'x'; 255]).unwrap());
        assert_eq!(partial_name(&a), partial_name(&a.clone()));
        assert_ne!(partial_name(&a), partial_name(&b));
        for n in [&a, &b] {
            let p = partial_name(n);
            assert!(p.as_bytes().starts_with(TEMP_PREFIX.as_bytes()) && is_partial(p.as_bytes()));
            assert!(p.as_bytes().len() <= MAX_NAME);
        }
        let ours = partial_name(&a);
        let mark = TEMP_PREFIX.len() + PARTIAL_MARK.len();
        let upper = [&ours.as_bytes()[..mark], &ours.as_bytes()[mark..].to_ascii_uppercase()].concat();
        let longer = [ours.as_bytes(), b"0"].concat();
        for users in [&b".pareco-tmp.123.4"[..], b"part.x", b".pareco-tmp.part.x", &longer, &upper] {
            assert!(!is_partial(users), "{:?}", String::from_utf8_lossy(users));
        }
        let at = partial_of(&RelPath::new(b"d/a.db").unwrap()).unwrap();
        assert_eq!(at.split_last().unwrap(), (RelPath::new(b"d").unwrap(), partial_name(&a)));
        assert_eq!(partial_of(&RelPath::root()), None);
    }

    #[test]
    fn rejects_escapes_and_malformed_paths() {
        let cases: [(&[u8], PathError); 8] = [
            (b"/etc/passwd", PathError::EmptyComponent),
            (b"a//b", PathError::EmptyComponent),
            (b"a/", PathError::EmptyComponent),
            (b"..", PathError::DotComponent),
            (b"a/../../b", PathError::DotComponent),
            (b"a/./b", PathError::DotComponent),
            (b"a\0b", PathError::Nul),
            (&[b'x'; 256], PathError::NameTooLong),
        ];
        for (bytes, err) in cases {
            assert_eq!(RelPath::new(bytes), Err(err), "{bytes:?}");
        }
        let long = vec![&b"abcdefg"[..]; 600].join(&b'/');
        assert_eq!(RelPath::new(&long), Err(PathError::PathTooLong));
        assert_eq!(Name::new(b"a/b"), Err(PathError::Slash));
    }

    #[test]
    fn user_paths_are_normalised_but_still_checked() {
        assert_eq!(RelPath::from_user(b"/a//b/").unwrap().as_bytes(), b"a/b");
        assert_eq!(RelPath::from_user(b"/").unwrap(), RelPath::root());
        assert!(RelPath::from_user(b"/a/../b").is_err());
    }

    #[test]
    fn join_and_split_are_inverse() {
        let p = RelPath::new(b"a/b").unwrap();
        let q = p.join(&Name::new(b"c").unwrap()).unwrap();
        assert_eq!(q.as_bytes(), b"a/b/c");
        let (parent, name) = q.split_last().unwrap();
        assert_eq!((parent, name.as_bytes()), (p, &b"c"[..]));
        assert_eq!(RelPath::new(b"x").unwrap().split_last().unwrap().0, RelPath::root());
        assert!(RelPath::root().split_last().is_none());
        assert_eq!(RelPath::root().join_path(&q).unwrap(), q);
    }

    #[test]
    fn display_escapes_control_and_invalid_bytes() {
        let p = RelPath::new(b"a\nb/\xffc\\").unwrap();
        assert_eq!(p.to_string(), "a\\x0ab/\\xffc\\\\");
        assert_eq!(RelPath::root().to_string(), ".");
    }
}
