//! The snapshot's builder: its path and exactly one key source, checked.

use std::fmt;
use std::path::{Path, PathBuf};

use secrecy::zeroize::Zeroizing;

use super::{config_error, Snapshot};
use crate::error::Error;

/// A key read, and the file it came from (if any).
type KeyRead = Result<(Zeroizing<[u8; 32]>, Option<PathBuf>), Error>;

/// Builds a [`Snapshot`]: its path and exactly one key source.
pub struct SnapshotBuilder {
    path: PathBuf,
    key: Option<KeyRead>,
    allow_key_beside: bool,
}

impl fmt::Debug for SnapshotBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotBuilder")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// 64 hex digits (surrounding whitespace ignored) as 32 bytes.
pub(super) fn parse_key(text: &str, from: &str) -> Result<Zeroizing<[u8; 32]>, Error> {
    let t = text.trim().as_bytes();
    let bad = || {
        config_error(format!(
            "snapshot key from {from}: expected 64 hex digits (32 bytes)"
        ))
    };
    if t.len() != 64 {
        return Err(bad());
    }
    let mut key = Zeroizing::new([0u8; 32]);
    for (i, pair) in t.chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16).ok_or_else(bad)?;
        let lo = (pair[1] as char).to_digit(16).ok_or_else(bad)?;
        key[i] = (hi * 16 + lo) as u8;
    }
    Ok(key)
}

impl Snapshot {
    /// A snapshot at `path`; give it a key with one of the builder's `key_*` methods.
    pub fn builder(path: impl Into<PathBuf>) -> SnapshotBuilder {
        SnapshotBuilder {
            path: path.into(),
            key: None,
            allow_key_beside: false,
        }
    }
}

impl SnapshotBuilder {
    /// The key as 64 hex digits.
    pub fn key_hex(mut self, hex: &str) -> Self {
        self.key = Some(parse_key(hex, "the configuration").map(|k| (k, None)));
        self
    }

    /// The key from a file holding 64 hex digits.
    pub fn key_file(mut self, path: impl AsRef<Path>) -> Self {
        let path = path.as_ref();
        let read = || -> Result<_, Error> {
            let bad =
                |m: String| config_error(format!("snapshot key file {}: {m}", path.display()));
            let bytes = crate::files::read_bounded(path, 4096).map_err(|e| bad(e.to_string()))?;
            crate::files::check_private(path).map_err(bad)?;
            let text = std::str::from_utf8(&bytes).map_err(|_| bad("not UTF-8 text".into()))?;
            let key = parse_key(text, &format!("file {}", path.display()))?;
            Ok((key, Some(path.to_path_buf())))
        };
        self.key = Some(read());
        self
    }

    /// The key from the environment variable `var` (64 hex digits).
    pub fn key_env(mut self, var: &str) -> Self {
        self.key = Some(match std::env::var(var) {
            Ok(v) => {
                let v = Zeroizing::new(v);
                parse_key(&v, &format!("environment variable {var}")).map(|k| (k, None))
            }
            Err(_) => Err(config_error(format!(
                "snapshot key: environment variable {var} is not set"
            ))),
        });
        self
    }

    /// Allows a key file in the snapshot's own directory (refused by default).
    pub fn allow_key_beside_snapshot(mut self, allow: bool) -> Self {
        self.allow_key_beside = allow;
        self
    }

    /// Checks the key and where it lives.
    pub fn build(self) -> Result<Snapshot, Error> {
        let (key, key_path) = self.key.unwrap_or_else(|| {
            Err(config_error(
                "a snapshot needs a key: key_hex, key_file or key_env".into(),
            ))
        })?;
        if self.path.as_os_str().is_empty() {
            return Err(config_error("the snapshot path is empty".into()));
        }
        if let Some(kp) = key_path {
            // The key file's own target, not the link: a key file that is a symbolic link into
            // the snapshot's directory is beside it.
            let kp = std::fs::canonicalize(&kp).unwrap_or(kp);
            let dir = |p: &Path| {
                let parent = crate::files::dir_of(p);
                std::fs::canonicalize(parent).unwrap_or_else(|_| parent.to_path_buf())
            };
            if !self.allow_key_beside && dir(&kp) == dir(&self.path) {
                return Err(config_error(format!(
                    "the snapshot key file {} is in the snapshot's own directory: whoever reads \
                     the snapshot would find its key beside it (move it, or allow it explicitly)",
                    kp.display()
                )));
            }
        }
        Ok(Snapshot {
            path: self.path,
            key,
            saving: std::sync::Mutex::new(()),
        })
    }
}
