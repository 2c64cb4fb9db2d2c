//! Sealed last-known-good snapshots (feature `snapshot`): the cache persisted to a file sealed
//! with AES-256-GCM, so that a process restarted while every vault is down still serves what
//! it held, marked stale with its true age.
//!
//! * **Format 1.** `KVFSNAP1` (8 bytes, authenticated as associated data), a random 96-bit
//!   nonce, then the AES-256-GCM sealed JSON of the entries: name (and pinned version), value,
//!   version id, region, the wall-clock time a vault last confirmed it, and the vault's
//!   `created` time. Any other magic is refused as an unknown format; any change to a byte, a
//!   truncation or another key fails authentication and the whole file is refused.
//! * **Atomic.** Written to a temporary file beside it (mode 0600), fsynced, renamed over the
//!   old one, and the directory fsynced: a crash leaves the old snapshot or the new one.
//! * **Ages survive.** Each entry keeps its fetch time, so the staleness cap applies across a
//!   restart: a restored value past its cap is dropped, and one within it is served stale with
//!   its age counted from the real fetch (a fetch time more than a day ahead of this clock is
//!   not trusted: dropped). A restored value is never a fresh hit: callers' reads
//!   ask the vaults first, and the value is what they fall back on.
//! * **The key** is 32 bytes written as 64 hex digits (`openssl rand -hex 32`), from a file or
//!   an environment variable. A key file in the snapshot's own directory is refused unless
//!   allowed explicitly: whoever can read the snapshot should not find the key beside it.
//! * **Bounded.** A file over [`MAX_SNAPSHOT_BYTES`] is refused before it is read; the
//!   plaintext buffers are zeroized when dropped.
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

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::error::{Error, Kind};
use crate::name::SecretName;
use crate::secret::Entry;
use crate::FailoverClient;

/// The largest snapshot file read (256 MiB: 10,000 secrets of Key Vault's largest, 25 KiB,
/// fit in it).
pub const MAX_SNAPSHOT_BYTES: u64 = 256 << 20;

const MAGIC: &[u8; 8] = b"KVFSNAP1";
const TAG_LEN: usize = 16;

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

fn config_error(message: String) -> Error {
    Error::new(Kind::Config, message)
}

fn snapshot_error(message: String) -> Error {
    Error::new(Kind::Snapshot, message)
}

/// 64 hex digits (surrounding whitespace ignored) as 32 bytes.
fn parse_key(text: &str, from: &str) -> Result<Zeroizing<[u8; 32]>, Error> {
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

    /// The snapshot file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sealing_key(&self) -> Result<LessSafeKey, Error> {
        UnboundKey::new(&AES_256_GCM, self.key.as_slice())
            .map(LessSafeKey::new)
            .map_err(|_| snapshot_error("the snapshot key was refused by AES-256-GCM".into()))
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
            let meta = std::fs::metadata(path)
                .map_err(|e| config_error(format!("snapshot key file {}: {e}", path.display())))?;
            if meta.len() > 4096 {
                return Err(config_error(format!(
                    "snapshot key file {}: more than 4 KiB",
                    path.display()
                )));
            }
            let text =
                Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                    config_error(format!("snapshot key file {}: {e}", path.display()))
                })?);
            let key = parse_key(&text, &format!("file {}", path.display()))?;
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
            let dir = |p: &Path| {
                let parent = p.parent().filter(|d| !d.as_os_str().is_empty());
                let parent = parent.unwrap_or(Path::new("."));
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

#[derive(Serialize, Deserialize)]
struct Body {
    written_unix_ms: u64,
    entries: Vec<Record>,
}

#[derive(Serialize, Deserialize)]
struct Record {
    /// Cache key: the folded name, or `name/version` for a pinned version.
    key: String,
    value: String,
    version: String,
    region: String,
    fetched_unix_ms: u64,
    #[serde(default)]
    created_unix_ms: Option<u64>,
}

impl Drop for Record {
    fn drop(&mut self) {
        use secrecy::zeroize::Zeroize;
        self.value.zeroize();
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis().min(u64::MAX as u128) as u64)
        .unwrap_or(0)
}

impl Snapshot {
    /// Seals every value the client holds (latest values and pinned versions) into the
    /// snapshot file, atomically. Returns how many were written. Blocking file I/O: from async
    /// code, call it inside `tokio::task::spawn_blocking`.
    pub fn save(&self, client: &FailoverClient) -> Result<usize, Error> {
        let now = SystemTime::now();
        let mut entries: Vec<(Box<str>, Arc<Entry>)> = client.inner.cache.all();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let records: Vec<Record> = entries
            .iter()
            .map(|(k, e)| Record {
                key: k.to_string(),
                value: e.value.expose_secret().to_string(),
                version: e.version.to_string(),
                region: e.region.to_string(),
                fetched_unix_ms: unix_ms(now.checked_sub(e.age()).unwrap_or(UNIX_EPOCH)),
                created_unix_ms: e.created.map(unix_ms),
            })
            .collect();
        let n = records.len();
        self.write_body(Body {
            written_unix_ms: unix_ms(now),
            entries: records,
        })?;
        Ok(n)
    }

    /// Seals `body` and writes it atomically.
    fn write_body(&self, body: Body) -> Result<(), Error> {
        // A save still running on a blocking thread (its task was aborted at shutdown) and the
        // last save must not interleave in the temporary file.
        let _one = crate::lock(&self.saving);
        let n = body.entries.len();
        // Sized up front so the buffer holding values is not reallocated (leaving copies).
        let estimate = body
            .entries
            .iter()
            .map(|r| r.key.len() + 2 * r.value.len() + r.version.len() + r.region.len() + 160)
            .sum::<usize>()
            + 64;
        let mut buf = Zeroizing::new(Vec::with_capacity(estimate + TAG_LEN));
        serde_json::to_writer(&mut *buf, &body)
            .map_err(|e| snapshot_error(format!("cannot encode the snapshot: {e}")))?;
        drop(body);
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce)
            .map_err(|_| snapshot_error("no random nonce for the snapshot".into()))?;
        self.sealing_key()?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(MAGIC),
                &mut *buf,
            )
            .map_err(|_| snapshot_error("cannot seal the snapshot".into()))?;
        let mut file = Vec::with_capacity(MAGIC.len() + NONCE_LEN + buf.len());
        file.extend_from_slice(MAGIC);
        file.extend_from_slice(&nonce);
        file.extend_from_slice(&buf);
        if file.len() as u64 > MAX_SNAPSHOT_BYTES {
            return Err(snapshot_error(format!(
                "the snapshot of {n} values would be {} bytes, over the {MAX_SNAPSHOT_BYTES} \
                 bytes a snapshot may hold",
                file.len()
            )));
        }
        write_atomically(&self.path, &file).map_err(|e| {
            snapshot_error(format!(
                "cannot write snapshot {}: {e}",
                self.path.display()
            ))
        })?;
        Ok(())
    }

    /// Reads the snapshot back into the client's cache: every value within its staleness cap
    /// that the client does not already hold, kept as last-known-good (never a fresh hit: a
    /// vault must confirm it first). Returns how many were restored. A snapshot that is
    /// missing, tampered with, truncated, sealed with another key or of another format is
    /// refused ([`Error::is_snapshot`]) and nothing is restored. Blocking file I/O.
    pub fn restore(&self, client: &FailoverClient) -> Result<usize, Error> {
        let shown = self.path.display();
        let meta = std::fs::metadata(&self.path)
            .map_err(|e| snapshot_error(format!("snapshot {shown}: {e}")))?;
        if meta.len() > MAX_SNAPSHOT_BYTES {
            return Err(snapshot_error(format!(
                "snapshot {shown} is {} bytes, over the {MAX_SNAPSHOT_BYTES} a snapshot may hold",
                meta.len()
            )));
        }
        let bytes = std::fs::read(&self.path)
            .map_err(|e| snapshot_error(format!("snapshot {shown}: {e}")))?;
        if bytes.len() < MAGIC.len() + NONCE_LEN + TAG_LEN {
            return Err(snapshot_error(format!(
                "snapshot {shown} is truncated ({} bytes)",
                bytes.len()
            )));
        }
        if &bytes[..MAGIC.len()] != MAGIC {
            return Err(snapshot_error(format!(
                "{shown} is not a keyvault-failover snapshot of format 1"
            )));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&bytes[MAGIC.len()..MAGIC.len() + NONCE_LEN]);
        let mut sealed = Zeroizing::new(bytes[MAGIC.len() + NONCE_LEN..].to_vec());
        drop(bytes);
        let plain = self
            .sealing_key()?
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(MAGIC),
                &mut sealed,
            )
            .map_err(|_| {
                snapshot_error(format!(
                    "snapshot {shown} cannot be opened: it was tampered with, truncated, or \
                     sealed with another key"
                ))
            })?;
        let body: Body = serde_json::from_slice(plain).map_err(|e| {
            snapshot_error(format!("snapshot {shown} opened but cannot be read: {e}"))
        })?;
        let inner = &client.inner;
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut restored = 0;
        for mut r in body.entries {
            let (name, version) = match r.key.split_once('/') {
                Some((n, v)) => (n, Some(v)),
                None => (r.key.as_str(), None),
            };
            let Ok(name) = SecretName::new(name) else {
                continue;
            };
            if r.version.is_empty()
                || version.is_some_and(|v| v != r.version)
                || !r
                    .version
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                continue;
            }
            // Checked: a time past what `SystemTime` holds is refused, not a panic.
            let Some(fetched) = UNIX_EPOCH.checked_add(Duration::from_millis(r.fetched_unix_ms))
            else {
                continue;
            };
            // A fetch time a little ahead of this clock (it was set back) counts as just
            // fetched; one more than a day ahead is nonsense, and its value is not trusted.
            let age = match wall.duration_since(fetched) {
                Ok(age) => age,
                Err(e) if e.duration() <= Duration::from_secs(86_400) => Duration::ZERO,
                Err(_) => continue,
            };
            if age > inner.config.staleness_cap(name.key()) {
                continue;
            }
            let key = crate::cache::key(name.key(), version);
            let value = SecretString::from(std::mem::take(&mut r.value));
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
            let e = Arc::new(e);
            let at = inner.check_at(&key, &e);
            if inner.cache.insert_if_absent(&key, e, at) {
                restored += 1;
            }
        }
        Ok(restored)
    }
}

/// Temporary file (0600) beside `path`, fsync, rename over `path`, fsync of the directory.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path.file_name().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path names no file")
    })?;
    let mut tmp_name = file_name.to_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let result = (|| {
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        #[cfg(unix)]
        std::fs::File::open(dir)?.sync_all()?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot sealed with the right key but holding absurd times: a fetch time far in the
    /// future is skipped (before: it counted as just fetched, a value of unknown age served as
    /// if new), an absurd `created` is dropped, and nothing panics.
    #[test]
    fn absurd_times_in_a_sealed_snapshot_are_skipped_not_panicked_on() {
        let dir = std::env::temp_dir().join(format!("kvf-snaptime-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let snap = Snapshot::builder(dir.join("lkg.snapshot"))
            .key_hex(&"cd".repeat(32))
            .build()
            .unwrap();
        let record = |key: &str, fetched: u64, created: Option<u64>| Record {
            key: key.into(),
            value: "v".into(),
            version: "v1".into(),
            region: "weu".into(),
            fetched_unix_ms: fetched,
            created_unix_ms: created,
        };
        let now = unix_ms(SystemTime::now());
        snap.write_body(Body {
            written_unix_ms: u64::MAX,
            entries: vec![
                record("far", u64::MAX, None),
                record("created", now, Some(u64::MAX)),
            ],
        })
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async move {
            let config = crate::Config::builder()
                .region(
                    "weu",
                    "https://app-weu.vault.azure.net",
                    crate::Access::ReadWrite,
                )
                .build()
                .unwrap();
            let client = FailoverClient::builder(config)
                .store("weu", Arc::new(crate::store::MemoryStore::new("weu")))
                .build()
                .unwrap();
            assert_eq!(snap.restore(&client).unwrap(), 1, "`far` is skipped");
        });
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn keys_are_64_hex_digits() {
        assert!(parse_key(&"ab".repeat(32), "t").is_ok());
        assert!(parse_key(&format!(" {}\n", "AB".repeat(32)), "t").is_ok());
        for bad in [
            "",
            "ab",
            &"ab".repeat(31),
            &"zz".repeat(32),
            &"ab".repeat(33),
        ] {
            let e = parse_key(bad, "t").unwrap_err();
            assert!(e.is_config(), "{bad:?}");
        }
    }

    #[test]
    fn a_key_file_beside_the_snapshot_is_refused_unless_allowed() {
        let dir = std::env::temp_dir().join(format!("kvf-snapkey-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("snap.key");
        std::fs::write(&key, "cd".repeat(32)).unwrap();
        let e = Snapshot::builder(dir.join("lkg.snapshot"))
            .key_file(&key)
            .build()
            .unwrap_err();
        assert!(
            e.is_config() && e.to_string().contains("own directory"),
            "{e}"
        );
        assert!(Snapshot::builder(dir.join("lkg.snapshot"))
            .key_file(&key)
            .allow_key_beside_snapshot(true)
            .build()
            .is_ok());
        assert!(Snapshot::builder(dir.join("sub").join("lkg.snapshot"))
            .key_file(&key)
            .build()
            .is_ok());
        let e = Snapshot::builder(dir.join("x")).build().unwrap_err();
        assert!(e.is_config());
        std::fs::remove_dir_all(&dir).ok();
    }
}
