//! What the client hands back: a secret value that cannot leak, and where it came from.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keyvault_failover_core::freshness::{on_time, retry_wait, Held};
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

/// Key Vault's largest secret value, in bytes.
pub const MAX_VALUE_LEN: usize = 25 * 1024;

/// A secret as a [`SecretStore`](crate::SecretStore) returns it.
///
/// The value is a [`SecretString`]: zeroized on drop, redacted in `Debug`.
pub struct StoredSecret {
    value: SecretString,
    version: String,
    created: Option<SystemTime>,
    metadata: Option<Arc<Metadata>>,
}

/// The editable properties of a secret's current version: what a copy must match besides its
/// value. Times are Key Vault's, unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Properties {
    pub(crate) enabled: bool,
    pub(crate) expires: Option<i64>,
    pub(crate) not_before: Option<i64>,
    pub(crate) content_type: Option<String>,
    pub(crate) tags: BTreeMap<String, String>,
}

impl Default for Properties {
    /// Enabled, no expiry, no activation date, no content type, no tags (Key Vault's defaults).
    fn default() -> Self {
        Properties {
            enabled: true,
            expires: None,
            not_before: None,
            content_type: None,
            tags: BTreeMap::new(),
        }
    }
}

impl Properties {
    /// The same, enabled or disabled.
    #[must_use]
    pub fn with_enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }
    /// The same, with this expiry (`exp`, unix seconds).
    #[must_use]
    pub fn with_expires(mut self, exp: Option<i64>) -> Self {
        self.expires = exp;
        self
    }
    /// The same, with this activation date (`nbf`, unix seconds).
    #[must_use]
    pub fn with_not_before(mut self, nbf: Option<i64>) -> Self {
        self.not_before = nbf;
        self
    }
    /// The same, with this content type.
    #[must_use]
    pub fn with_content_type(mut self, content_type: Option<String>) -> Self {
        self.content_type = content_type;
        self
    }
    /// The same, with these tags.
    #[must_use]
    pub fn with_tags(mut self, tags: BTreeMap<String, String>) -> Self {
        self.tags = tags;
        self
    }
    /// Whether the version can be read.
    pub fn enabled(&self) -> bool {
        self.enabled
    }
    /// `exp`, unix seconds.
    pub fn expires(&self) -> Option<i64> {
        self.expires
    }
    /// `nbf`, unix seconds.
    pub fn not_before(&self) -> Option<i64> {
        self.not_before
    }
    /// The content type.
    pub fn content_type(&self) -> Option<&str> {
        self.content_type.as_deref()
    }
    /// Every tag, the provenance tag included.
    pub fn tags(&self) -> &BTreeMap<String, String> {
        &self.tags
    }
}

/// A change to a version's editable properties, as Key Vault's `PATCH` takes it: what is
/// `None` is left as it is.
///
/// ```
/// use keyvault_failover::PropertiesUpdate;
/// let u = PropertiesUpdate::new().content_type("text/plain").enabled(false);
/// assert_eq!(u.content_type_set(), Some("text/plain"));
/// assert!(u.tags_set().is_none());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PropertiesUpdate {
    enabled: Option<bool>,
    expires: Option<i64>,
    not_before: Option<i64>,
    content_type: Option<String>,
    tags: Option<BTreeMap<String, String>>,
}

impl PropertiesUpdate {
    /// Nothing changed yet.
    pub fn new() -> Self {
        Self::default()
    }
    /// Enable or disable the version.
    #[must_use]
    pub fn enabled(mut self, e: bool) -> Self {
        self.enabled = Some(e);
        self
    }
    /// Its expiry (`exp`, Unix seconds).
    #[must_use]
    pub fn expires(mut self, t: i64) -> Self {
        self.expires = Some(t);
        self
    }
    /// Its activation date (`nbf`, Unix seconds).
    #[must_use]
    pub fn not_before(mut self, t: i64) -> Self {
        self.not_before = Some(t);
        self
    }
    /// Its content type.
    #[must_use]
    pub fn content_type(mut self, t: impl Into<String>) -> Self {
        self.content_type = Some(t.into());
        self
    }
    /// Its tags, all of them (Key Vault replaces the set).
    #[must_use]
    pub fn tags(mut self, tags: BTreeMap<String, String>) -> Self {
        self.tags = Some(tags);
        self
    }
    /// The new enabled state, if it changes.
    pub fn enabled_set(&self) -> Option<bool> {
        self.enabled
    }
    /// The new expiry, if it changes.
    pub fn expires_set(&self) -> Option<i64> {
        self.expires
    }
    /// The new activation date, if it changes.
    pub fn not_before_set(&self) -> Option<i64> {
        self.not_before
    }
    /// The new content type, if it changes.
    pub fn content_type_set(&self) -> Option<&str> {
        self.content_type.as_deref()
    }
    /// The new tags, if they change.
    pub fn tags_set(&self) -> Option<&BTreeMap<String, String>> {
        self.tags.as_ref()
    }
    /// `properties` with this change applied.
    pub fn apply(&self, properties: &Properties) -> Properties {
        Properties {
            enabled: self.enabled.unwrap_or(properties.enabled),
            expires: self.expires.or(properties.expires),
            not_before: self.not_before.or(properties.not_before),
            content_type: self
                .content_type
                .clone()
                .or_else(|| properties.content_type.clone()),
            tags: self.tags.clone().unwrap_or_else(|| properties.tags.clone()),
        }
    }
}

/// What a vault says of a version besides its value: its editable [`Properties`] (enabled,
/// `exp`, `nbf`, content type, tags) and what only the vault sets (created, updated, the
/// recovery level, and for a certificate's secret its key id and `managed`). Kept with the
/// value (and in the sealed snapshot), so a value served from memory carries them too. Never
/// a value: these are the vault's metadata.
///
/// ```
/// use keyvault_failover::{Metadata, Properties};
/// let m = Metadata::new(Properties::default().with_content_type(Some("text/plain".into())))
///     .with_created(1_700_000_000);
/// assert_eq!(m.properties().content_type(), Some("text/plain"));
/// assert_eq!(m.created(), Some(1_700_000_000));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Metadata {
    properties: Properties,
    #[serde(skip_serializing_if = "Option::is_none")]
    created: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    updated: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recovery_level: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recoverable_days: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    managed: Option<bool>,
}

impl Metadata {
    /// The version's editable properties; nothing else said yet.
    pub fn new(properties: Properties) -> Self {
        Metadata {
            properties,
            ..Self::default()
        }
    }
    /// With when the version was created (the vault's own time), in Unix seconds.
    #[must_use]
    pub fn with_created(mut self, t: i64) -> Self {
        self.created = Some(t);
        self
    }
    /// With when it was last updated, in Unix seconds.
    #[must_use]
    pub fn with_updated(mut self, t: i64) -> Self {
        self.updated = Some(t);
        self
    }
    /// With the vault's recovery level (`Recoverable+Purgeable`, ...) and retention days.
    #[must_use]
    pub fn with_recovery(mut self, level: impl Into<String>, days: Option<i32>) -> Self {
        self.recovery_level = Some(level.into());
        self.recoverable_days = days;
        self
    }
    /// With, for a certificate's secret, the key's id (`kid`) and `managed`.
    #[must_use]
    pub fn with_certificate(mut self, key_id: Option<String>, managed: Option<bool>) -> Self {
        self.key_id = key_id;
        self.managed = managed;
        self
    }
    /// The editable properties.
    pub fn properties(&self) -> &Properties {
        &self.properties
    }
    /// Created, in Unix seconds (the version's own, not a copy's source's).
    pub fn created(&self) -> Option<i64> {
        self.created
    }
    /// Updated, in Unix seconds.
    pub fn updated(&self) -> Option<i64> {
        self.updated
    }
    /// The recovery level.
    pub fn recovery_level(&self) -> Option<&str> {
        self.recovery_level.as_deref()
    }
    /// The retention days.
    pub fn recoverable_days(&self) -> Option<i32> {
        self.recoverable_days
    }
    /// A certificate's key id.
    pub fn key_id(&self) -> Option<&str> {
        self.key_id.as_deref()
    }
    /// Whether Key Vault manages it (a certificate's secret).
    pub fn managed(&self) -> Option<bool> {
        self.managed
    }
}

impl StoredSecret {
    /// A value and the version id the vault gave it.
    pub fn new(value: SecretString, version: impl Into<String>) -> Self {
        StoredSecret {
            value,
            version: version.into(),
            created: None,
            metadata: None,
        }
    }

    /// The same, with what the vault says of it besides the value.
    #[must_use]
    pub fn with_metadata(mut self, m: Metadata) -> Self {
        self.metadata = Some(Arc::new(m));
        self
    }

    /// What the vault said of it besides the value, when it said.
    pub fn metadata(&self) -> Option<&Metadata> {
        self.metadata.as_deref()
    }

    /// The same, with the time the vault created this version (Key Vault's
    /// `attributes.created`). The client uses it as a high-water mark: after a failover, a
    /// secondary's version created before the one already served is older (replication lag)
    /// and is not served as fresh.
    #[must_use]
    pub fn with_created(mut self, created: SystemTime) -> Self {
        self.created = Some(created);
        self
    }

    /// When the vault created this version, when it said.
    pub fn created(&self) -> Option<SystemTime> {
        self.created
    }

    /// The value.
    pub fn value(&self) -> &SecretString {
        &self.value
    }

    /// The vault's version id. Ids differ between vaults of different regions.
    pub fn version(&self) -> &str {
        &self.version
    }

    pub(crate) fn into_parts(
        self,
    ) -> (
        SecretString,
        String,
        Option<SystemTime>,
        Option<Arc<Metadata>>,
    ) {
        (self.value, self.version, self.created, self.metadata)
    }
}

impl fmt::Debug for StoredSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredSecret")
            .field("value", &"[REDACTED]")
            .field("version", &self.version)
            .field("created", &self.created)
            .finish()
    }
}

/// The properties of a secret as a listing returns them (no value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretProperties {
    name: String,
    version: Option<String>,
    pub(crate) enabled: bool,
}

impl SecretProperties {
    /// New properties.
    pub fn new(name: impl Into<String>, version: Option<String>, enabled: bool) -> Self {
        SecretProperties {
            name: name.into(),
            version,
            enabled,
        }
    }
    /// The secret's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The current version id, when the listing carries one.
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }
    /// Whether the secret is enabled.
    pub fn enabled(&self) -> bool {
        self.enabled
    }
}

/// One value as the cache holds it. Shared by `Arc` so that a cache hit copies no bytes.
///
/// Aligned to 128 bytes (two cache lines, the unit of the adjacent-line prefetcher): the `Arc`'s
/// reference counts, which every hit on every thread writes, sit alone before it, so a hit's
/// reads of the fields below do not miss because another thread's hit just wrote a count.
#[repr(align(128))]
pub(crate) struct Entry {
    pub(crate) value: SecretString,
    pub(crate) version: Arc<str>,
    pub(crate) region: Arc<str>,
    /// When a vault last confirmed this value.
    pub(crate) fetched_at: Instant,
    /// When the refresher should next ask, in ms after `fetched_at`.
    refresh_after_ms: AtomicU64,
    /// Failed refreshes in a row.
    refresh_failures: AtomicU32,
    /// When a caller last read this value, in ms after `fetched_at` (negative: before it was
    /// fetched; `i64::MIN`: never).
    last_read_ms: AtomicI64,
    /// A caller read this value since the refresher last looked (set by hits: no clock read).
    read_mark: AtomicBool,
    /// Set by the refresher once the refresh interval has passed since `fetched_at`: a hit then
    /// reads the clock no more to know whether the value is fresh.
    pub(crate) expired: AtomicBool,
    /// Written by this client to the primary: a secondary's different copy is older, not newer
    /// (it cannot have seen the write yet), until the primary answers again.
    pub(crate) authoritative: bool,
    /// When the vault created this version, when it said: the secret's high-water mark.
    pub(crate) created: Option<SystemTime>,
    /// What the vault said of this version besides its value.
    pub(crate) metadata: Option<Arc<Metadata>>,
    /// Restored from a sealed snapshot: never a fresh hit (a vault must confirm it first), and
    /// `prior_age` old already when `fetched_at` was stamped (the restore).
    pub(crate) restored: bool,
    /// Age the value had at `fetched_at` (zero unless restored: a restart's monotonic clock
    /// may not reach back to the real fetch).
    pub(crate) prior_age: Duration,
}

impl Entry {
    pub(crate) fn new(
        value: SecretString,
        version: Arc<str>,
        region: Arc<str>,
        fetched_at: Instant,
        refresh_after_ms: u64,
        read: bool,
    ) -> Self {
        Entry {
            value,
            version,
            region,
            fetched_at,
            refresh_after_ms: AtomicU64::new(refresh_after_ms),
            refresh_failures: AtomicU32::new(0),
            last_read_ms: AtomicI64::new(if read { 0 } else { i64::MIN }),
            read_mark: AtomicBool::new(false),
            expired: AtomicBool::new(false),
            authoritative: false,
            created: None,
            metadata: None,
            restored: false,
            prior_age: Duration::ZERO,
        }
    }

    /// When a vault last confirmed this value and how old it was then (across a restart, for
    /// a restored one): the core's freshness decisions take it with `now`.
    pub(crate) fn held(&self) -> Held {
        Held::new(self.fetched_at.into_std(), self.prior_age)
    }

    /// Time since a vault last confirmed this value, at `now`.
    pub(crate) fn age(&self, now: std::time::Instant) -> Duration {
        self.held().age(now)
    }

    /// When this value passes a staleness cap of `cap`.
    pub(crate) fn expires(&self, cap: Duration) -> Instant {
        Instant::from_std(self.held().expires(cap))
    }

    /// A caller read this value. No clock read: the refresher stamps the time when it next looks
    /// ([`last_read_at`](Self::last_read_at)). One relaxed load on the hot path, and a store
    /// only on the first read since the refresher last looked.
    pub(crate) fn touch(&self) {
        if !self.read_mark.load(Ordering::Relaxed) {
            self.read_mark.store(true, Ordering::Relaxed);
        }
    }

    /// When a caller last read this value, as the refresher sees it at `now`: a read since it
    /// last looked counts as `now` (later than the read itself by at most the time between two
    /// looks, so idle detection errs toward refreshing).
    pub(crate) fn last_read_at(&self, now: Instant) -> Option<Instant> {
        if self.read_mark.swap(false, Ordering::Relaxed) {
            let ms = now
                .saturating_duration_since(self.fetched_at)
                .as_millis()
                .min(i64::MAX as u128) as i64;
            self.last_read_ms.fetch_max(ms, Ordering::Relaxed);
        }
        self.last_read()
    }

    /// When a caller last read this value or the one it replaced.
    pub(crate) fn last_read(&self) -> Option<Instant> {
        let ms = self.last_read_ms.load(Ordering::Relaxed);
        if ms == i64::MIN {
            return None;
        }
        let d = Duration::from_millis(ms.unsigned_abs());
        Some(if ms >= 0 {
            crate::clock::later(self.fetched_at, d)
        } else {
            self.fetched_at.checked_sub(d).unwrap_or(self.fetched_at)
        })
    }

    /// Carries the last read over from the entry this one replaces.
    pub(crate) fn inherit_last_read(&self, old: &Entry) {
        if old.read_mark.load(Ordering::Relaxed) {
            self.touch();
        }
        let Some(at) = old.last_read() else { return };
        let rel = if at >= self.fetched_at {
            (at - self.fetched_at).as_millis() as i64
        } else {
            -((self.fetched_at - at).as_millis() as i64)
        };
        self.last_read_ms.fetch_max(rel, Ordering::Relaxed);
    }

    /// When the refresher should next ask for this secret.
    pub(crate) fn refresh_at(&self) -> Instant {
        crate::clock::later(
            self.fetched_at,
            Duration::from_millis(self.refresh_after_ms.load(Ordering::Relaxed)),
        )
    }

    /// Whether a fetch begun at `started` is this value's on-time refresh under a refresh
    /// interval of `interval` ([`keyvault_failover_core::freshness::on_time`]), with no failed
    /// refresh before it. Anything else (a hint, a retry after failures, a late read, a
    /// restored value) is off the schedule, and its next refresh is drawn afresh
    /// ([`keyvault_failover_core::freshness::first_refresh`]).
    pub(crate) fn on_schedule(&self, started: Instant, interval: Duration) -> bool {
        !self.restored
            && self.refresh_failures.load(Ordering::Relaxed) == 0
            && on_time(self.refresh_at().into_std(), started.into_std(), interval)
    }

    /// A refresh failed at `now`: try again after `base` × 2^failures (at most `cap`).
    pub(crate) fn back_off(&self, base: Duration, cap: Duration, now: Instant) {
        let n = self.refresh_failures.fetch_add(1, Ordering::Relaxed);
        let wait = retry_wait(n, base, cap);
        let at = now.saturating_duration_since(self.fetched_at) + wait;
        self.refresh_after_ms
            .store(at.as_millis() as u64, Ordering::Relaxed);
    }
}

/// Whether a value is what a vault answered within the refresh interval, or a
/// last-known-good value served because no vault could answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// A vault confirmed the value within the refresh interval.
    Fresh,
    /// No vault could answer; this is the last-known-good value, confirmed `age` ago.
    Stale {
        /// Time since a vault last confirmed the value.
        age: Duration,
    },
}

/// A secret returned by [`FailoverClient`](crate::FailoverClient).
///
/// `Debug` and `Display` never show the value; call [`Secret::expose`] where the value is used.
///
/// ```
/// # keyvault_failover::run_virtual(async {
/// use keyvault_failover::{Config, FailoverClient, Access, store::MemoryStore};
/// use std::sync::Arc;
/// let weu = Arc::new(MemoryStore::new("weu"));
/// weu.insert("db", "hunter2");
/// let config = Config::builder()
///     .region("weu", "https://app-weu.vault.azure.net", Access::ReadWrite)
///     .build()?;
/// let client = FailoverClient::builder(config).store("weu", weu).build()?;
/// let s = client.get_secret("db").await?;
/// assert_eq!(s.expose(), "hunter2");
/// assert!(!format!("{s:?}").contains("hunter2"));
/// assert_eq!(s.region(), "weu");
/// # Ok::<(), keyvault_failover::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct Secret {
    entry: Arc<Entry>,
    freshness: Freshness,
    cause: Option<crate::Error>,
}

impl Secret {
    pub(crate) fn new(entry: Arc<Entry>, freshness: Freshness) -> Self {
        Secret {
            entry,
            freshness,
            cause: None,
        }
    }

    /// A last-known-good value served because of `cause`.
    pub(crate) fn stale(entry: Arc<Entry>, age: Duration, cause: crate::Error) -> Self {
        Secret {
            entry,
            freshness: Freshness::Stale { age },
            cause: Some(cause),
        }
    }

    /// Why a stale value was served: the error of the read that could not reach a vault, with
    /// each region's part in it ([`Error::attempts`](crate::Error::attempts)). `None` when fresh.
    pub fn stale_cause(&self) -> Option<&crate::Error> {
        self.cause.as_ref()
    }

    /// What the vault said of this version besides its value (content type, tags,
    /// attributes), when it said: kept with the value, so a stale or restored serve has them.
    pub fn metadata(&self) -> Option<&Metadata> {
        self.entry.metadata.as_deref()
    }

    /// The value. Keep the borrow short; do not log it.
    pub fn expose(&self) -> &str {
        self.entry.value.expose_secret()
    }

    /// The version id of the vault that served it.
    pub fn version(&self) -> &str {
        &self.entry.version
    }

    /// The region whose vault last confirmed the value.
    pub fn region(&self) -> &str {
        &self.entry.region
    }

    /// Fresh, or stale with its age.
    pub fn freshness(&self) -> Freshness {
        self.freshness
    }

    /// Whether this is a last-known-good value served because no vault could answer.
    pub fn is_stale(&self) -> bool {
        matches!(self.freshness, Freshness::Stale { .. })
    }

    /// Time since a vault last confirmed the value.
    pub fn age(&self) -> Duration {
        Instant::now()
            .saturating_duration_since(self.entry.fetched_at)
            .saturating_add(self.entry.prior_age)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("value", &"[REDACTED]")
            .field("version", &self.entry.version)
            .field("region", &self.entry.region)
            .field("freshness", &self.freshness)
            .field("stale_cause", &self.cause.as_ref().map(|e| e.to_string()))
            .finish()
    }
}

/// What a successful write returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    region: Arc<str>,
    version: String,
}

impl Written {
    pub(crate) fn new(region: Arc<str>, version: String) -> Self {
        Written { region, version }
    }
    /// The region written to (the writable primary).
    pub fn region(&self) -> &str {
        &self.region
    }
    /// The new version id.
    pub fn version(&self) -> &str {
        &self.version
    }
}
