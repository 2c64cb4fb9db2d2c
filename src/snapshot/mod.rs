//! Sealed last-known-good snapshots (feature `snapshot`): the cache persisted to a file sealed
//! with AES-256-GCM, so that a process restarted while every vault is down still serves what
//! it held, marked stale with its true age.
//!
//! * **Format 1.** `KVFSNAP1` (8 bytes, authenticated as associated data), a random 96-bit
//!   nonce, then the AES-256-GCM sealed JSON of the entries: name (and pinned version), value,
//!   version id, region, the wall-clock time a vault last confirmed it, and the vault's
//!   `created` time. Any other magic is refused as an unknown format; any change to a byte, a
//!   truncation or another key fails authentication and the whole file is refused.
//! * **Atomic.** Written to a temporary file beside it with a random name, created new with
//!   mode 0600 (never through a link or over a file someone left there), fsynced, renamed over
//!   the old one, and the directory fsynced: a crash leaves the old snapshot or the new one.
//! * **Ages survive.** Each entry keeps its fetch time, so the staleness cap applies across a
//!   restart: a restored value past its cap is dropped, and one within it is served stale with
//!   its age counted from the real fetch: the age it had when the snapshot was written plus
//!   the time since (a clock set back since adds nothing but takes nothing away; a write time
//!   more than a day ahead of this clock is not trusted: nothing is restored). A restored value
//!   is never a fresh hit: callers' reads ask the vaults first, and the value is what they
//!   fall back on.
//! * **The key** is 32 bytes written as 64 hex digits (`openssl rand -hex 32`), from a file or
//!   an environment variable. A key file in the snapshot's own directory is refused unless
//!   allowed explicitly: whoever can read the snapshot should not find the key beside it.
//! * **Bounded.** Only a regular file is read (a FIFO or a device is refused without waiting),
//!   at most [`MAX_SNAPSHOT_BYTES`]; the plaintext buffers are zeroized when dropped, and values
//!   are decoded by hand into zeroized buffers (the JSON decoder's scratch never holds one).
//! * **The key file** must be private (no access for other users, at most read for the group).
//! * **A refused snapshot** can be moved aside ([`Snapshot::set_aside`]) before anything is
//!   saved over it; [`Snapshot::check_writable`] finds a missing directory before the first save.
//!
//! ```
//! # keyvault_failover::run_virtual(async {
//! use std::sync::Arc;
//! use keyvault_failover::{store::{Fault, MemoryStore}, Access, Config, FailoverClient, Snapshot};
//! let dir = std::env::temp_dir().join(format!("kvf-doc-snapshot-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let snapshot = Snapshot::builder(dir.join("lkg.snapshot"))
//!     .key_hex(&"42".repeat(32))
//!     .build()?;
//! let config = Config::builder()
//!     .region("weu", "https://app-weu.vault.azure.net", Access::ReadWrite)
//!     .build()?;
//!
//! let weu = Arc::new(MemoryStore::new("weu"));
//! weu.insert("db", "hunter2");
//! let client = FailoverClient::builder(config.clone()).store("weu", weu.clone()).build()?;
//! client.get_secret("db").await?;
//! assert_eq!(snapshot.save(&client)?, 1);
//!
//! // A restart while the vault is down: the restored value is served, stale.
//! weu.set_fault(Some(Fault::Refuse));
//! let restarted = FailoverClient::builder(config).store("weu", weu).build()?;
//! assert_eq!(snapshot.restore(&restarted)?, 1);
//! let s = restarted.get_secret("db").await?;
//! assert_eq!(s.expose(), "hunter2");
//! assert!(s.is_stale());
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), keyvault_failover::Error>(())
//! # }).unwrap().unwrap();
//! ```

mod builder;
mod format;
mod seal;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use secrecy::zeroize::Zeroizing;
use secrecy::ExposeSecret;
use tokio::time::Instant;

use crate::files::temp_name;
pub use builder::SnapshotBuilder;
use format::{unescape, unix_ms, Body, BodyIn, Record};

use crate::error::{Error, Kind};
use crate::name::SecretName;
use crate::secret::Entry;
use crate::FailoverClient;

/// The largest snapshot file read (256 MiB: 10,000 secrets of Key Vault's largest, 25 KiB,
/// fit in it).
pub const MAX_SNAPSHOT_BYTES: u64 = 256 << 20;

/// Where a sealed snapshot lives and the key that seals it. Build with [`Snapshot::builder`].
pub struct Snapshot {
    path: PathBuf,
    key: Zeroizing<[u8; 32]>,
    /// One save at a time: two would share the temporary file.
    saving: std::sync::Mutex<()>,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("path", &self.path)
            .field("key", &"[REDACTED]")
            .finish()
    }
}

pub(crate) fn config_error(message: String) -> Error {
    Error::new(Kind::Config, message)
}

pub(crate) fn snapshot_error(message: String) -> Error {
    Error::new(Kind::Snapshot, message)
}

impl Snapshot {
    /// The snapshot file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Snapshot {
    /// Seals every value the client holds (latest values and pinned versions) into the
    /// snapshot file, atomically. Returns how many were written. Blocking file I/O: from async
    /// code, call it inside `tokio::task::spawn_blocking`.
    pub fn save(&self, client: &FailoverClient) -> Result<usize, Error> {
        let now = SystemTime::now();
        let mono = crate::clock::now();
        let mut entries: Vec<(Box<str>, Arc<Entry>)> = client.export_held();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let records: Vec<Record> = entries
            .iter()
            .map(|(k, e)| Record {
                key: k,
                value: e.value.expose_secret(),
                version: &e.version,
                region: &e.region,
                fetched_unix_ms: unix_ms(now.checked_sub(e.age(mono)).unwrap_or(UNIX_EPOCH)),
                created_unix_ms: e.created.map(unix_ms),
                metadata: e.metadata.as_deref(),
            })
            .collect();
        let n = records.len();
        self.write_body(Body {
            written_unix_ms: unix_ms(now),
            entries: records,
        })?;
        Ok(n)
    }

    /// Checks now that a save can succeed: the snapshot's directory exists and a file can be
    /// created in it (one is created and removed). An agent calls it before it serves, so that
    /// a missing or read-only directory stops it at start instead of leaving every restart
    /// during an outage uncovered.
    ///
    /// # Errors
    /// [`Error::is_config`] naming the directory and why.
    pub fn check_writable(&self) -> Result<(), Error> {
        let dir = crate::files::dir_of(&self.path);
        let bad = |m: String| {
            config_error(format!(
                "the snapshot's directory {} cannot hold it: {m}",
                dir.display()
            ))
        };
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(bad("not a directory".into())),
            Err(e) => return Err(bad(e.to_string())),
        }
        let file_name = self
            .path
            .file_name()
            .ok_or_else(|| bad("the path names no file".into()))?;
        let probe = dir.join(temp_name(file_name));
        crate::files::create_private(&probe).map_err(|e| bad(e.to_string()))?;
        let _ = std::fs::remove_file(&probe);
        Ok(())
    }

    /// Moves a snapshot that [`restore`](Self::restore) refused out of the way, to
    /// `<file>.refused-<unix ms>` beside it, so that the next save does not destroy what it
    /// may still hold (a key mixed up, a read error that passes). Returns where it went.
    ///
    /// # Errors
    /// [`Error::is_snapshot`] when it cannot be moved: then nothing should be saved over it.
    pub fn set_aside(&self) -> Result<PathBuf, Error> {
        let mut name = self.path.as_os_str().to_os_string();
        name.push(format!(".refused-{}", unix_ms(SystemTime::now())));
        let to = PathBuf::from(name);
        std::fs::rename(&self.path, &to).map_err(|e| {
            snapshot_error(format!(
                "cannot move the refused snapshot {} aside: {e}",
                self.path.display()
            ))
        })?;
        Ok(to)
    }

    /// Reads the snapshot back into the client's cache: every value within its staleness cap
    /// that the client does not already hold, kept as last-known-good (never a fresh hit: a
    /// vault must confirm it first). Returns how many were restored. A snapshot that is
    /// missing, tampered with, truncated, sealed with another key or of another format is
    /// refused ([`Error::is_snapshot`]) and nothing is restored. Blocking file I/O.
    pub fn restore(&self, client: &FailoverClient) -> Result<usize, Error> {
        let shown = self.path.display();
        // A regular file within the bound, or nothing: a FIFO put at the path cannot block the
        // restore, nor a device fill memory.
        let bytes = crate::files::read_bounded(&self.path, MAX_SNAPSHOT_BYTES)
            .map_err(|e| snapshot_error(format!("snapshot {shown}: {e}")))?;
        let plain = self.open(bytes, &shown.to_string())?;
        let body: BodyIn = serde_json::from_slice(&plain).map_err(|e| {
            snapshot_error(format!("snapshot {shown} opened but cannot be read: {e}"))
        })?;
        let (now, wall) = (Instant::now(), SystemTime::now());
        // Ages are counted from the snapshot's own write time: the age each value had when it
        // was written, plus the time since. A clock set back since (the write time is ahead of
        // it) adds nothing, but cannot make a value younger than it was when written; a write
        // time more than a day ahead is nonsense, and nothing in the file is trusted.
        let Some(written) = UNIX_EPOCH.checked_add(Duration::from_millis(body.written_unix_ms))
        else {
            return Ok(0);
        };
        let since_written = match wall.duration_since(written) {
            Ok(d) => d,
            Err(e) if e.duration() <= Duration::from_secs(86_400) => Duration::ZERO,
            Err(_) => return Ok(0),
        };
        let mut restored = 0;
        for r in body.entries {
            let (name, version) = match r.key.split_once('/') {
                Some((n, v)) => (n, Some(v)),
                None => (r.key.as_str(), None),
            };
            let Ok(name) = SecretName::new(name) else {
                continue;
            };
            if version.is_some_and(|v| v != r.version) || !crate::name::is_kv_token(&r.version) {
                continue;
            }
            // A value fetched after the snapshot was written is nonsense: not trusted.
            let Some(age_when_written) = body.written_unix_ms.checked_sub(r.fetched_unix_ms) else {
                continue;
            };
            let age = Duration::from_millis(age_when_written).saturating_add(since_written);
            if age > client.config().staleness_cap(name.key()) {
                continue;
            }
            let key = crate::cache::key(name.key(), version);
            let Some(value) = unescape(r.value.get()) else {
                continue;
            };
            let mut e = Entry::new(
                value,
                Arc::from(r.version.as_str()),
                Arc::from(r.region.as_str()),
                now,
                0,
                false,
            );
            e.restored = true;
            e.prior_age = age;
            e.created = r
                .created_unix_ms
                .and_then(|ms| UNIX_EPOCH.checked_add(Duration::from_millis(ms)));
            e.metadata = r.metadata.map(Arc::new);
            let e = Arc::new(e);
            if client.import_held(&key, e) {
                restored += 1;
            }
        }
        Ok(restored)
    }
}
