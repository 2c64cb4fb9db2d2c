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

/// The sealed JSON as written: every string borrowed from the cache (no copy of a value).
#[derive(Serialize)]
struct Body<'a> {
    written_unix_ms: u64,
    entries: Vec<Record<'a>>,
}

#[derive(Serialize)]
struct Record<'a> {
    /// Cache key: the folded name, or `name/version` for a pinned version.
    key: &'a str,
    value: &'a str,
    version: &'a str,
    region: &'a str,
    fetched_unix_ms: u64,
    created_unix_ms: Option<u64>,
}

/// The sealed JSON as read: each value stays the raw JSON text inside the opened (zeroized)
/// buffer until [`unescape`] copies it into a zeroized one; serde_json's scratch buffer, which
/// it frees unzeroed, never sees a value.
#[derive(Deserialize)]
struct BodyIn<'a> {
    written_unix_ms: u64,
    #[serde(borrow)]
    entries: Vec<RecordIn<'a>>,
}

#[derive(Deserialize)]
struct RecordIn<'a> {
    key: String,
    #[serde(borrow)]
    value: &'a serde_json::value::RawValue,
    version: String,
    region: String,
    fetched_unix_ms: u64,
    #[serde(default)]
    created_unix_ms: Option<u64>,
}

/// How many bytes `s` takes as a JSON string (an upper bound: every control character counted
/// as `\u00XX`), quotes included.
fn json_len(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

/// The JSON string literal `raw` (quotes included) decoded into a zeroized buffer that never
/// grows (a JSON escape is never shorter than what it stands for), then copied once into a
/// string of exactly its length. `None` for anything that is not a well-formed string.
fn unescape(raw: &str) -> Option<SecretString> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = Zeroizing::new(String::with_capacity(inner.len()));
    let mut chars = inner.chars();
    let hex4 = |chars: &mut std::str::Chars<'_>| -> Option<u32> {
        let mut v = 0;
        for _ in 0..4 {
            v = v * 16 + chars.next()?.to_digit(16)?;
        }
        Some(v)
    };
    while let Some(c) = chars.next() {
        if c != '\\' {
            if (c as u32) < 0x20 {
                return None;
            }
            out.push(c);
            continue;
        }
        let c = match chars.next()? {
            '"' => '"',
            '\\' => '\\',
            '/' => '/',
            'b' => '\u{8}',
            'f' => '\u{c}',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'u' => {
                let hi = hex4(&mut chars)?;
                if (0xD800..0xDC00).contains(&hi) {
                    if chars.next()? != '\\' || chars.next()? != 'u' {
                        return None;
                    }
                    let lo = hex4(&mut chars)?;
                    if !(0xDC00..0xE000).contains(&lo) {
                        return None;
                    }
                    char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))?
                } else {
                    char::from_u32(hi)?
                }
            }
            _ => return None,
        };
        out.push(c);
    }
    let mut exact = String::with_capacity(out.len());
    exact.push_str(&out);
    Some(SecretString::from(exact))
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
        let mono = crate::clock::now();
        let mut entries: Vec<(Box<str>, Arc<Entry>)> = client.inner.cache.all();
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
        let probe = dir.join(temp_name(file_name).map_err(|e| bad(e.to_string()))?);
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
            .map(|r| {
                json_len(r.key) + json_len(r.value) + json_len(r.version) + json_len(r.region) + 160
            })
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
        // A regular file within the bound, or nothing: a FIFO put at the path cannot block the
        // restore, nor a device fill memory.
        let bytes = crate::files::read_bounded(&self.path, MAX_SNAPSHOT_BYTES)
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
        let body: BodyIn = serde_json::from_slice(plain).map_err(|e| {
            snapshot_error(format!("snapshot {shown} opened but cannot be read: {e}"))
        })?;
        let inner = &client.inner;
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
            if age > inner.config.staleness_cap(name.key()) {
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
            let e = Arc::new(e);
            let at = inner.check_at(&key, &e);
            if inner.cache.insert_if_absent(&key, e, at) {
                restored += 1;
            }
        }
        Ok(restored)
    }
}

/// `.<file>.tmp-<32 random hex digits>`.
fn temp_name(file_name: &std::ffi::OsStr) -> std::io::Result<std::ffi::OsString> {
    let mut r = [0u8; 16];
    aws_lc_rs::rand::fill(&mut r)
        .map_err(|_| std::io::Error::other("no random name for the temporary file"))?;
    let mut name = std::ffi::OsString::from(".");
    name.push(file_name);
    name.push(".tmp-");
    for b in r {
        name.push(format!("{b:02x}"));
    }
    Ok(name)
}

/// Temporary file (0600) beside `path`, fsync, rename over `path`, fsync of the directory.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = crate::files::dir_of(path);
    let file_name = path.file_name().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path names no file")
    })?;
    // A fresh name nobody can guess, created new (never opened if it exists, never through a
    // symbolic link someone put in the directory), so its mode is ours: 0600.
    let tmp = dir.join(temp_name(file_name)?);
    let mut f = crate::files::create_private(&tmp)?;
    let result = (|| {
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
        let record = |key: &'static str, fetched: u64, created: Option<u64>| Record {
            key,
            value: "v",
            version: "v1",
            region: "weu",
            fetched_unix_ms: fetched,
            created_unix_ms: created,
        };
        let now = unix_ms(SystemTime::now());
        snap.write_body(Body {
            written_unix_ms: now,
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

    fn temp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kvf-snap-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn one_region() -> crate::Config {
        crate::Config::builder()
            .region(
                "weu",
                "https://app-weu.vault.azure.net",
                crate::Access::ReadWrite,
            )
            .build()
            .unwrap()
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    /// Issue 20: the temporary file had a guessable name (`<file>.tmp-<pid>`) opened with
    /// create and truncate: a symbolic link put there made the save overwrite its target, and
    /// a leftover file there kept its mode (0644 in, 0644 snapshot out). Now the name is random
    /// and the file is created new with 0600.
    #[cfg(unix)]
    #[test]
    fn the_temporary_file_cannot_be_aimed_elsewhere_and_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp("tmpfile");
        let victim = dir.join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let pid = std::process::id();
        let path = dir.join("lkg.snapshot");
        std::os::unix::fs::symlink(&victim, dir.join(format!("lkg.snapshot.tmp-{pid}"))).unwrap();
        let other = dir.join("other.snapshot");
        let leftover = dir.join(format!("other.snapshot.tmp-{pid}"));
        std::fs::write(&leftover, "left").unwrap();
        std::fs::set_permissions(&leftover, std::fs::Permissions::from_mode(0o644)).unwrap();
        let body = || Body {
            written_unix_ms: unix_ms(SystemTime::now()),
            entries: vec![],
        };
        for p in [&path, &other] {
            let snap = Snapshot::builder(p)
                .key_hex(&"ab".repeat(32))
                .build()
                .unwrap();
            snap.write_body(body()).unwrap();
            let meta = std::fs::symlink_metadata(p).unwrap();
            assert!(
                meta.is_file(),
                "{}: a regular file, not a link",
                p.display()
            );
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{}", p.display());
        }
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        // Two snapshots of one path, saving at once, do not share a temporary file.
        let snaps: Vec<_> = (0..4)
            .map(|_| {
                Arc::new(
                    Snapshot::builder(&path)
                        .key_hex(&"ab".repeat(32))
                        .build()
                        .unwrap(),
                )
            })
            .collect();
        let threads: Vec<_> = snaps
            .iter()
            .cloned()
            .map(|s| {
                std::thread::spawn(move || {
                    (0..25).map(|_| s.write_body(body())).collect::<Vec<_>>()
                })
            })
            .collect();
        for t in threads {
            for r in t.join().unwrap() {
                r.unwrap();
            }
        }
        let rt = runtime();
        rt.block_on(async {
            let client = FailoverClient::builder(one_region())
                .store("weu", Arc::new(crate::store::MemoryStore::new("weu")))
                .build()
                .unwrap();
            assert_eq!(snaps[0].restore(&client).unwrap(), 0, "whole, and empty");
        });
        std::fs::remove_dir_all(&dir).ok();
    }

    /// Issue 20: a clock set back after the snapshot was written made a restored value young
    /// again (a fetch time ahead of the clock counted as age 0). The age is now counted from
    /// the snapshot's write time: at least the age the value had when it was written.
    #[test]
    fn a_clock_set_back_does_not_make_a_restored_value_young() {
        let dir = temp("clockback");
        let snap = Snapshot::builder(dir.join("lkg.snapshot"))
            .key_hex(&"cd".repeat(32))
            .build()
            .unwrap();
        // Fetched, then written 50 minutes later; the clock has since been set back to
        // 10 minutes before the fetch.
        let now = unix_ms(SystemTime::now());
        let fetched = now + 10 * 60_000;
        snap.write_body(Body {
            written_unix_ms: fetched + 50 * 60_000,
            entries: vec![Record {
                key: "db",
                value: "hunter2",
                version: "v1",
                region: "weu",
                fetched_unix_ms: fetched,
                created_unix_ms: None,
            }],
        })
        .unwrap();
        runtime().block_on(async {
            let weu = Arc::new(crate::store::MemoryStore::new("weu"));
            weu.set_fault(Some(crate::store::Fault::Refuse));
            let client = FailoverClient::builder(one_region())
                .store("weu", weu)
                .build()
                .unwrap();
            assert_eq!(snap.restore(&client).unwrap(), 1);
            let s = client.get_secret("db").await.unwrap();
            let crate::Freshness::Stale { age } = s.freshness() else {
                panic!("served stale");
            };
            assert!(age >= Duration::from_secs(50 * 60), "{age:?}");
        });
        std::fs::remove_dir_all(&dir).ok();
    }

    /// Values are decoded by hand from the raw JSON (serde_json's scratch buffer never holds
    /// one): every escape JSON has comes back as written.
    #[test]
    fn values_with_escapes_come_back_exactly() {
        let samples = [
            "",
            "plain",
            "-----BEGIN KEY-----\nAAAA\r\n-----END KEY-----\n",
            "quote \" backslash \\ slash / tab \t",
            "\u{0}\u{1}\u{1f}\u{7f}",
            "é ü 日本 😀 \u{10FFFF}",
        ];
        for v in samples {
            let raw = serde_json::to_string(v).unwrap();
            assert_eq!(unescape(&raw).unwrap().expose_secret(), v, "{raw}");
            assert!(json_len(v) >= raw.len(), "{raw}");
        }
        assert_eq!(
            unescape(r#""\u00e9\ud83d\ude00\/""#)
                .unwrap()
                .expose_secret(),
            "é😀/"
        );
        for bad in [
            r#""\x""#,
            r#""\ud83d""#,
            r#""\u12""#,
            "\"a",
            "a\"",
            "\"\u{1}\"",
        ] {
            assert!(unescape(bad).is_none(), "{bad}");
        }
        // Through a sealed file: a PEM with its newlines.
        let dir = temp("escapes");
        let snap = Snapshot::builder(dir.join("lkg.snapshot"))
            .key_hex(&"cd".repeat(32))
            .build()
            .unwrap();
        let pem = "-----BEGIN KEY-----\nAAAA\n-----END KEY-----\n";
        runtime().block_on(async {
            let weu = Arc::new(crate::store::MemoryStore::new("weu"));
            weu.insert("pem", pem);
            let client = FailoverClient::builder(one_region())
                .store("weu", weu.clone())
                .build()
                .unwrap();
            client.get_secret("pem").await.unwrap();
            assert_eq!(snap.save(&client).unwrap(), 1);
            weu.set_fault(Some(crate::store::Fault::Refuse));
            let restarted = FailoverClient::builder(one_region())
                .store("weu", weu)
                .build()
                .unwrap();
            assert_eq!(snap.restore(&restarted).unwrap(), 1);
            assert_eq!(restarted.get_secret("pem").await.unwrap().expose(), pem);
        });
        std::fs::remove_dir_all(&dir).ok();
    }

    /// Issue 20: a FIFO at the snapshot's path is refused at once (before: the restore blocked
    /// in `std::fs::read` until a writer came, and the agent never listened).
    #[cfg(unix)]
    #[test]
    fn a_fifo_at_the_snapshot_path_is_refused_not_waited_on() {
        let dir = temp("fifo");
        let path = dir.join("lkg.snapshot");
        assert!(std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap()
            .success());
        let snap = Snapshot::builder(&path)
            .key_hex(&"cd".repeat(32))
            .build()
            .unwrap();
        runtime().block_on(async {
            let client = FailoverClient::builder(one_region())
                .store("weu", Arc::new(crate::store::MemoryStore::new("weu")))
                .build()
                .unwrap();
            let e = snap.restore(&client).unwrap_err();
            assert!(e.is_snapshot() && e.to_string().contains("FIFO"), "{e}");
        });
        // Set aside, it no longer stands in the way of a save.
        let aside = snap.set_aside().unwrap();
        assert!(aside.to_string_lossy().contains(".refused-"));
        snap.check_writable().unwrap();
        let e = Snapshot::builder(dir.join("missing").join("lkg.snapshot"))
            .key_hex(&"cd".repeat(32))
            .build()
            .unwrap()
            .check_writable()
            .unwrap_err();
        assert!(e.is_config() && e.to_string().contains("missing"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    /// Issue 20: a key file other users can read is refused (ssh's rule), and a key file that
    /// is a symbolic link into the snapshot's directory is "beside" it.
    #[cfg(unix)]
    #[test]
    fn a_shared_key_file_or_a_link_beside_the_snapshot_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp("keyperm");
        std::fs::create_dir_all(dir.join("keys")).unwrap();
        let key = dir.join("keys").join("snap.key");
        std::fs::write(&key, "cd".repeat(32)).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let snap = dir.join("state").join("lkg.snapshot");
        let e = Snapshot::builder(&snap).key_file(&key).build().unwrap_err();
        assert!(e.is_config() && e.to_string().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        Snapshot::builder(&snap).key_file(&key).build().unwrap();
        // The key itself beside the snapshot, reached through a link from elsewhere.
        std::fs::create_dir_all(dir.join("state")).unwrap();
        let beside = dir.join("state").join("snap.key");
        std::fs::rename(&key, &beside).unwrap();
        std::os::unix::fs::symlink(&beside, &key).unwrap();
        let e = Snapshot::builder(&snap).key_file(&key).build().unwrap_err();
        assert!(e.to_string().contains("own directory"), "{e}");
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
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
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
