//! [`FailoverClient`]: reads that survive regional outages, writes that never go astray.
//!
//! The facade over the [`Engine`]: it checks names and values, answers hits from the cache,
//! and hands everything else to the engine. Its builder (`builder.rs`) wires the engine; its
//! health report (`health.rs`) reads it.

mod builder;
mod health;

pub use builder::FailoverClientBuilder;
pub use health::{Health, HealthState, RegionHealth};

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{broadcast, watch};
use tracing::Instrument;

use crate::breaker::BreakerState;
use crate::cache::{self, Urgency};
use crate::config::Config;
use crate::engine::calls::Limits;
use crate::engine::notify::Notified;
use crate::engine::{round_ms, Engine, FetchError};
use crate::error::{Error, Kind};
use crate::events::Event;
use crate::name::{SecretName, MAX_NAME_LEN};
use crate::secret::{Entry, Freshness, Secret, SecretProperties, Written, MAX_VALUE_LEN};

/// Held only by [`FailoverClient`] clones, never by background tasks: its drop is the signal
/// that nobody can use the client any more. (the [`Engine`] itself may outlive the last clone for
/// as long as a task is in the middle of something.)
struct Lifeline {
    _tx: watch::Sender<()>,
}

/// A Key Vault secrets client over an ordered set of regional vaults.
///
/// Cheap to clone (one `Arc`); clones share routes, breakers, the cache and the background
/// tasks, which stop when the last clone is dropped.
///
/// * Reads go to the active vault, then the next vaults in priority order whose breakers
///   permit, within one deadline and a per-attempt timeout; a read the active vault has not
///   answered within the hedge delay is also sent to the next healthy vault. Every value read is
///   kept; while a vault confirmed it within the refresh interval it is served from memory (the
///   background refresher keeps it so); when no vault can answer it is served as
///   [stale](Freshness::Stale) up to the staleness cap.
/// * Writes go only to the writable primary, and only while it is the active, healthy vault;
///   otherwise they fail at once with [`Error::is_read_only`], nothing sent, nothing queued.
/// * A prober per vault feeds its breaker; traffic fails back to a higher-priority vault only
///   after it passed several probes in a row and the route has stood for a dwell time.
///
/// ```
/// # keyvault_failover::run_virtual(async {
/// use keyvault_failover::{store::{Fault, MemoryStore}, Access, Config, FailoverClient};
/// use std::sync::Arc;
///
/// let (weu, neu) = (Arc::new(MemoryStore::new("weu")), Arc::new(MemoryStore::new("neu")));
/// weu.insert("db", "s3cret");
/// neu.insert("db", "s3cret");
/// let config = Config::builder()
///     .region("weu", "https://app-weu.vault.azure.net", Access::ReadWrite)
///     .region("neu", "https://app-neu.vault.azure.net", Access::ReadOnly)
///     .build()?;
/// let client = FailoverClient::builder(config)
///     .store("weu", weu.clone())
///     .store("neu", neu.clone())
///     .build()?;
///
/// weu.set_fault(Some(Fault::Refuse)); // West Europe goes down
/// let s = client.get_secret("db").await?;
/// assert_eq!((s.expose(), s.region()), ("s3cret", "neu"));
/// # Ok::<(), keyvault_failover::Error>(())
/// # }).unwrap().unwrap();
/// ```
#[derive(Clone)]
pub struct FailoverClient {
    pub(crate) inner: Arc<Engine>,
    _life: Arc<Lifeline>,
}

impl fmt::Debug for FailoverClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let route = self.inner.router.load();
        f.debug_struct("FailoverClient")
            .field(
                "regions",
                &self
                    .inner
                    .vaults
                    .iter()
                    .map(|v| &*v.name)
                    .collect::<Vec<_>>(),
            )
            .field("mode", &route.mode())
            .field("cached", &self.inner.cache.len())
            .finish()
    }
}

/// Options of one read ([`FailoverClient::get_secret_with`]).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ReadOptions {
    deadline: Option<Duration>,
}

impl ReadOptions {
    /// The defaults: the configured deadline (`timeouts.deadline`).
    pub fn new() -> Self {
        Self::default()
    }

    /// This call's deadline (shorter than `timeouts.deadline` to take effect).
    pub fn deadline(mut self, d: Duration) -> Self {
        self.deadline = Some(d);
        self
    }
}

/// Checks a name without allocating and folds its case into `buf`.
fn fold_name<'b>(name: &'b str, buf: &'b mut [u8; MAX_NAME_LEN]) -> Option<&'b str> {
    let b = name.as_bytes();
    if b.is_empty() || b.len() > MAX_NAME_LEN {
        return None;
    }
    // Most names are written in lower case already: checked, not copied.
    if b.iter()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
    {
        return Some(name);
    }
    for (o, c) in buf.iter_mut().zip(b) {
        if !(c.is_ascii_alphanumeric() || *c == b'-') {
            return None;
        }
        *o = c.to_ascii_lowercase();
    }
    std::str::from_utf8(&buf[..b.len()]).ok()
}

impl FailoverClient {
    /// Reads the latest version of `name`.
    ///
    /// A value a vault confirmed within the refresh interval is answered from memory. Otherwise
    /// the vaults are asked in route order; if none can answer, the last-known-good value is
    /// returned as stale while it is younger than the staleness cap. A 401/403, or a 404 from the
    /// primary, is returned as an error even when a stale value is held.
    pub fn get_secret<'a>(
        &'a self,
        name: &'a str,
    ) -> impl std::future::Future<Output = Result<Secret, Error>> + Send + 'a {
        // A hit is decided before any future exists: the future returned is then a ready value,
        // not a state machine to set up and poll.
        match self.get_cached(name) {
            Some(s) => futures::future::Either::Left(std::future::ready(Ok(s))),
            // Boxed: the slow path's state would otherwise make every cache hit's future
            // (moved on each poll) a kilobyte.
            None => futures::future::Either::Right(Box::pin(async move {
                self.read(SecretName::new(name)?, None).await
            })),
        }
    }

    /// Reads the latest version of `name` like [`get_secret`](Self::get_secret), within the
    /// options' deadline for this call: past it, the last-known-good value (stale, within its
    /// cap) if one is held, else an error that says the deadline passed
    /// ([`Error::is_timeout`]). The vault call itself goes on for other callers of the same
    /// secret (it is shared) and is bounded by `timeouts.deadline`.
    ///
    /// ```
    /// # keyvault_failover::run_virtual(async {
    /// use std::{sync::Arc, time::Duration};
    /// use keyvault_failover::{store::{Fault, MemoryStore}, Access, Config, FailoverClient, ReadOptions};
    /// let weu = Arc::new(MemoryStore::new("weu"));
    /// weu.insert("db", "hunter2");
    /// weu.set_fault(Some(Fault::Hang));
    /// let config = Config::builder()
    ///     .region("weu", "https://app-weu.vault.azure.net", Access::ReadWrite)
    ///     .build()?;
    /// let client = FailoverClient::builder(config).store("weu", weu).build()?;
    /// let opts = ReadOptions::new().deadline(Duration::from_millis(300));
    /// let e = client.get_secret_with("db", &opts).await.unwrap_err();
    /// assert!(e.is_timeout());
    /// # Ok::<(), keyvault_failover::Error>(())
    /// # }).unwrap().unwrap();
    /// ```
    pub async fn get_secret_with(&self, name: &str, opts: &ReadOptions) -> Result<Secret, Error> {
        if let Some(s) = self.get_cached(name) {
            return Ok(s);
        }
        let name = SecretName::new(name)?;
        self.read_within(name, None, opts.deadline).await
    }

    /// A read of `name` (a pinned `version`, or the latest), cut at `deadline` if given: past
    /// it, last-known-good within its cap, else the deadline's error.
    async fn read_within(
        &self,
        name: SecretName,
        version: Option<&str>,
        deadline: Option<Duration>,
    ) -> Result<Secret, Error> {
        let Some(d) = deadline else {
            return Box::pin(self.read(name, version)).await;
        };
        match tokio::time::timeout(d, Box::pin(self.read(name.clone(), version))).await {
            Ok(r) => r,
            Err(_) => {
                let within = humantime::format_duration(round_ms(d));
                let error = Error::deadline(match version {
                    None => format!(
                        "no answer for secret `{name}` within this call's deadline of {within}"
                    ),
                    Some(v) => format!(
                        "no answer for version {v} of secret `{name}` within this call's \
                         deadline of {within}"
                    ),
                });
                self.inner
                    .stale(&name, &cache::key(name.key(), version), error)
            }
        }
    }

    /// The latest version of `name` if a vault confirmed it within the refresh interval,
    /// without waiting for anything: no I/O, no allocation, no lock. `None` for anything
    /// else (not cached, due for a fetch, or an invalid name); [`get_secret`](Self::get_secret)
    /// then does the rest.
    ///
    /// ```
    /// # keyvault_failover::run_virtual(async {
    /// use std::sync::Arc;
    /// use keyvault_failover::{store::MemoryStore, Access, Config, FailoverClient};
    /// let weu = Arc::new(MemoryStore::new("weu"));
    /// weu.insert("db", "hunter2");
    /// let config = Config::builder()
    ///     .region("weu", "https://app-weu.vault.azure.net", Access::ReadWrite)
    ///     .build()?;
    /// let client = FailoverClient::builder(config).store("weu", weu).build()?;
    /// assert!(client.get_cached("db").is_none());
    /// client.get_secret("db").await?;
    /// assert_eq!(client.get_cached("DB").unwrap().expose(), "hunter2");
    /// # Ok::<(), keyvault_failover::Error>(())
    /// # }).unwrap().unwrap();
    /// ```
    pub fn get_cached(&self, name: &str) -> Option<Secret> {
        let mut buf = [0u8; MAX_NAME_LEN];
        let key = fold_name(name, &mut buf)?;
        let entry = self.inner.cache.get(key)?;
        // Fresh unless the refresher has marked the refresh interval passed (no clock read of
        // the hit's own); a restored value waits for a vault's word: never a fresh hit.
        if entry.expired.load(std::sync::atomic::Ordering::Relaxed) || entry.restored {
            return None;
        }
        // Without the refresher, nobody marks: the clock decides.
        if !self.inner.config.refresh.enabled
            && entry.held().fetched_over(
                self.inner.config.cache.refresh_interval,
                crate::clock::now(),
            )
        {
            return None;
        }
        entry.touch();
        self.inner.nudge_failback();
        Some(Secret::new(entry, Freshness::Fresh))
    }

    /// Reads one version of `name`. Version ids are per vault: a version written in one region
    /// is unknown to the others, so a 404 from a secondary falls back to the last-known-good.
    pub async fn get_secret_version(&self, name: &str, version: &str) -> Result<Secret, Error> {
        self.get_secret_version_with(name, version, &ReadOptions::default())
            .await
    }

    /// Reads one version of `name` like [`get_secret_version`](Self::get_secret_version),
    /// within the options' deadline for this call, as
    /// [`get_secret_with`](Self::get_secret_with) does for the latest version.
    pub async fn get_secret_version_with(
        &self,
        name: &str,
        version: &str,
        opts: &ReadOptions,
    ) -> Result<Secret, Error> {
        let name = SecretName::new(name)?;
        if !crate::name::is_kv_token(version) {
            return Err(Error::new(
                Kind::InvalidName,
                format!("version id {version:?} must be letters, digits and dashes"),
            ));
        }
        // A version's content never changes: a held version is served without asking, within
        // the staleness cap (a disabled or purged version is noticed once it is asked again).
        if let Some(entry) = self.inner.cache.get(&cache::key(name.key(), Some(version))) {
            // Its own fetch's age, not a restored value's prior age: restored is refused anyway.
            let age = entry.fetched_at.elapsed();
            if age <= self.inner.config.staleness_cap(name.key()) && !entry.restored {
                entry.touch();
                return Ok(Secret::new(entry, Freshness::Fresh));
            }
        }
        self.read_within(name, Some(version), opts.deadline).await
    }

    async fn read(&self, name: SecretName, version: Option<&str>) -> Result<Secret, Error> {
        let key = cache::key(name.key(), version);
        let span =
            tracing::info_span!("kv.get", secret = %name, version = version.unwrap_or("latest"));
        let fetched = self
            .inner
            .cache
            .single_flight(&key, true, |urgency, started| {
                let (name, key) = (&name, &key);
                async move {
                    self.inner
                        .fetch(name, version, key, &urgency, started)
                        .await
                }
            })
            .instrument(span)
            .await;
        self.inner.nudge_failback();
        match fetched {
            Ok(entry) => Ok(Secret::new(entry, Freshness::Fresh)),
            Err(FetchError {
                error,
                maskable: true,
            }) => self.inner.stale(&name, &key, error),
            Err(e) => Err(e.error),
        }
    }

    /// How far `region` lags the versions this client has seen elsewhere (see
    /// [`RegionHealth::replication_lag`]); with `None`, the most any region lags. `None` when
    /// every region is in step as far as this client has seen (one lock of an empty map).
    pub fn replication_lag(&self, region: Option<&str>) -> Option<Duration> {
        self.inner
            .replication_lag(region, std::time::SystemTime::now())
    }

    /// Asks the vaults for `name` now, whatever the cache holds, and replaces the cached value.
    /// For callers who know a rotation just happened. On failure the last-known-good value is
    /// kept and the error returned.
    pub async fn refresh_now(&self, name: &str) -> Result<Secret, Error> {
        let name = SecretName::new(name)?;
        self.inner
            .refresh_key(name.key(), true)
            .await
            .map(|e| Secret::new(e, Freshness::Fresh))
    }

    /// Refreshes every cached secret now, a bounded number at a time. Returns how many were
    /// refreshed and the errors of the others.
    pub async fn refresh_all(&self) -> (usize, Vec<(String, Error)>) {
        let keys = self.inner.cache.latest_keys();
        let concurrency = self.inner.config.refresh.concurrency as usize;
        let results: Vec<(String, Result<Arc<Entry>, Error>)> = futures::stream::iter(keys)
            .map(|k| async move {
                let r = self.inner.refresh_key(&k, true).await;
                (k.to_string(), r)
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        let refreshed = results.iter().filter(|(_, r)| r.is_ok()).count();
        let mut errors: Vec<(String, Error)> = results
            .into_iter()
            .filter_map(|(k, r)| r.err().map(|e| (k, e)))
            .collect();
        errors.sort_by(|a, b| a.0.cmp(&b.0));
        (refreshed, errors)
    }

    /// Loads `names` into the cache at start-up, `refresh.concurrency` at a time. Returns the
    /// names that could not be loaded with their errors.
    pub async fn preload<I, S>(&self, names: I) -> Vec<(String, Error)>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let concurrency = self.inner.config.refresh.concurrency as usize;
        let names: Vec<String> = names.into_iter().map(|n| n.as_ref().to_string()).collect();
        {
            let mut held = crate::lock(&self.inner.preloaded);
            for n in &names {
                if let Ok(n) = SecretName::new(n) {
                    if !held.iter().any(|h| **h == **n.key()) {
                        held.push(n.key().to_string().into());
                    }
                }
            }
        }
        let mut errors: Vec<(String, Error)> = futures::stream::iter(names)
            .map(|n| async move {
                let r = self.get_secret(&n).await;
                (n, r)
            })
            .buffer_unordered(concurrency)
            .filter_map(|(n, r)| async move { r.err().map(|e| (n, e)) })
            .collect()
            .await;
        errors.sort_by(|a, b| a.0.cmp(&b.0));
        errors
    }

    /// Writes a new version of `name` to the writable primary. Not retried (each write makes
    /// a new version). Refused at once, with nothing sent, when the primary is not the active,
    /// healthy vault.
    pub async fn set_secret(&self, name: &str, value: SecretString) -> Result<Written, Error> {
        let name = SecretName::new(name)?;
        if value.expose_secret().len() > MAX_VALUE_LEN {
            return Err(Error::new(
                Kind::InvalidValue,
                format!(
                    "value of secret `{name}` is {} bytes; Key Vault allows at most {MAX_VALUE_LEN}",
                    value.expose_secret().len()
                ),
            ));
        }
        self.inner.set(&name, value).await
    }

    /// Changes the editable properties of `name`'s `version` (the latest when `None`) in the
    /// writable primary, as Key Vault's `PATCH` (what `update` leaves `None` stays). Same
    /// rules as [`FailoverClient::set_secret`]: refused at once, nothing sent, when the client
    /// is read-only. A held value of the version changed carries the new properties at once.
    ///
    /// ```
    /// # keyvault_failover::run_virtual(async {
    /// use std::sync::Arc;
    /// use keyvault_failover::{store::MemoryStore, Access, Config, FailoverClient, PropertiesUpdate};
    /// let weu = Arc::new(MemoryStore::new("weu"));
    /// weu.insert("db", "hunter2");
    /// let config = Config::builder()
    ///     .region("weu", "https://app-weu.vault.azure.net", Access::ReadWrite)
    ///     .build()?;
    /// let client = FailoverClient::builder(config).store("weu", weu).build()?;
    /// client.get_secret("db").await?;
    /// let (_, meta) = client
    ///     .update_secret_properties("db", None, &PropertiesUpdate::new().content_type("text/plain"))
    ///     .await?;
    /// assert_eq!(meta.properties().content_type(), Some("text/plain"));
    /// let held = client.get_secret("db").await?;
    /// assert_eq!(held.metadata().unwrap().properties().content_type(), Some("text/plain"));
    /// # Ok::<(), keyvault_failover::Error>(())
    /// # }).unwrap().unwrap();
    /// ```
    pub async fn update_secret_properties(
        &self,
        name: &str,
        version: Option<&str>,
        update: &crate::PropertiesUpdate,
    ) -> Result<(Written, crate::Metadata), Error> {
        let name = SecretName::new(name)?;
        self.inner.update_properties(&name, version, update).await
    }

    /// Deletes `name` from the writable primary and forgets its cached values. Same rules as
    /// [`FailoverClient::set_secret`].
    pub async fn delete_secret(&self, name: &str) -> Result<(), Error> {
        let name = SecretName::new(name)?;
        self.inner.delete(&name).await
    }

    /// Lists secret properties (no values) from the first vault in route order that answers.
    /// Each page is bounded by the attempt timeout (the transport's); the whole listing by
    /// `timeouts.list`, and a listing that takes long is not held against the vault.
    pub async fn list_secret_properties(&self) -> Result<Vec<SecretProperties>, Error> {
        self.inner
            .try_regions(
                "list",
                &Urgency::new(true),
                Limits::listing(&self.inner.config),
                |s| Box::pin(async move { s.list().await }),
            )
            .await
            .map(|(_, l)| l)
            .map_err(|e| e.error)
    }

    /// Lists the versions of `name` (no values; each [`SecretProperties::version`] set) from
    /// the first vault in route order that answers, bounded as
    /// [`list_secret_properties`](Self::list_secret_properties). Version ids are the
    /// answering vault's own (they differ between regions).
    ///
    /// # Errors
    /// [`Error::is_invalid_name`] for a name Key Vault cannot hold, [`Error::is_not_found`]
    /// when the vault has no such secret, else as a listing.
    ///
    /// ```
    /// # keyvault_failover::run_virtual(async {
    /// use std::sync::Arc;
    /// use keyvault_failover::{store::MemoryStore, Access, Config, FailoverClient};
    /// let weu = Arc::new(MemoryStore::new("weu"));
    /// let v1 = weu.insert("db", "one");
    /// let v2 = weu.insert("db", "two");
    /// let config = Config::builder()
    ///     .region("weu", "https://app-weu.vault.azure.net", Access::ReadWrite)
    ///     .build()?;
    /// let client = FailoverClient::builder(config).store("weu", weu).build()?;
    /// let versions: Vec<_> = client.list_secret_versions("db").await?
    ///     .iter().map(|p| p.version().unwrap().to_string()).collect();
    /// assert_eq!(versions, [v1, v2]);
    /// assert!(client.list_secret_versions("nope").await.unwrap_err().is_not_found());
    /// # Ok::<(), keyvault_failover::Error>(())
    /// # }).unwrap().unwrap();
    /// ```
    pub async fn list_secret_versions(&self, name: &str) -> Result<Vec<SecretProperties>, Error> {
        let name = SecretName::new(name)?;
        self.inner
            .try_regions(
                "list versions",
                &Urgency::new(true),
                Limits::listing(&self.inner.config),
                |s| {
                    let name = name.clone();
                    Box::pin(async move { s.versions(&name).await })
                },
            )
            .await
            .map(|(_, l)| l)
            .map_err(|e| e.error)
    }

    /// The configuration the client runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Every value the client holds (latest values and pinned versions) with its cache key:
    /// the snapshot's export seam.
    #[cfg(feature = "snapshot")]
    pub(crate) fn export_held(&self) -> Vec<(Box<str>, Arc<Entry>)> {
        self.inner.cache.all()
    }

    /// Holds a restored value under `key` unless the client already holds one: the snapshot's
    /// import seam. Says whether it was taken.
    #[cfg(feature = "snapshot")]
    pub(crate) fn import_held(&self, key: &str, entry: Arc<Entry>) -> bool {
        let at = self.inner.check_at(key, &entry);
        self.inner.cache.insert_if_absent(key, entry, at)
    }

    /// How many last-known-good values the client holds.
    pub fn held(&self) -> usize {
        self.inner.cache.len()
    }

    /// A hint that secret `name` changed (a rotation, an expiry), e.g. from Key Vault's
    /// `SecretNewVersionCreated` event: a held secret is refreshed from a vault after a random
    /// delay up to `refresh.notify_max_delay` (default 30 s, so that a fleet told at once does
    /// not meet the vault in one instant), once however many hints arrive meanwhile, through
    /// the refresher's single-flight fetch within the vault's budget. A name not held is
    /// ignored. **A hint is never data**: nothing in it reaches the cache but the fact that
    /// something may have changed; the value, version and region come from the vault. A
    /// `version` equal to the held one skips the refresh. Call it inside a Tokio runtime.
    ///
    /// ```
    /// # keyvault_failover::run_virtual(async {
    /// use std::{sync::Arc, time::Duration};
    /// use keyvault_failover::{store::MemoryStore, Access, Config, FailoverClient, Notified};
    /// let weu = Arc::new(MemoryStore::new("weu"));
    /// weu.insert("db", "one");
    /// let config = Config::builder()
    ///     .region("weu", "https://app-weu.vault.azure.net", Access::ReadWrite)
    ///     .notify_max_delay(Duration::from_secs(5))
    ///     .build()?;
    /// let client = FailoverClient::builder(config).store("weu", weu.clone()).build()?;
    /// client.get_secret("db").await?;
    /// weu.insert("db", "two"); // rotated
    /// assert_eq!(client.notify_changed("db", None), Notified::Scheduled);
    /// assert_eq!(client.notify_changed("db", None), Notified::AlreadyScheduled);
    /// assert_eq!(client.notify_changed("other", None), Notified::NotHeld);
    /// tokio::time::sleep(Duration::from_secs(6)).await;
    /// assert_eq!(client.get_secret("db").await?.expose(), "two");
    /// # Ok::<(), keyvault_failover::Error>(())
    /// # }).unwrap().unwrap();
    /// ```
    pub fn notify_changed(&self, name: &str, version: Option<&str>) -> Notified {
        self.inner.notify(name, version, None, None)
    }

    /// Applies a delivery of Key Vault's events (Event Grid schema or CloudEvents 1.0, one
    /// event or a batch, as [`changes::parse`](crate::changes::parse) reads them): each
    /// secret change for a vault this client reads is a [`notify_changed`](Self::notify_changed)
    /// hint (its version compared only with a value served by that same vault); events for
    /// other vaults and other event types are ignored and counted. Returns the validation
    /// code if Event Grid sent its subscription handshake, and what each event came to.
    ///
    /// # Errors
    /// [`Error::is_invalid_value`] when the body is not a delivery (too large, not JSON).
    #[cfg(feature = "events")]
    pub fn notify_events(&self, body: &[u8]) -> Result<crate::changes::Applied, Error> {
        let delivery = crate::changes::parse(body)?;
        let mut applied = crate::changes::Applied::new(delivery.validation_code());
        for (reason, n) in delivery.ignored() {
            for _ in 0..*n {
                self.inner.metrics.notified(reason.label());
            }
            applied.count(reason.label(), *n);
        }
        for c in delivery.changes() {
            let outcome = self
                .inner
                .notify(c.name(), c.version(), Some(c.vault()), c.time());
            applied.count(outcome.label(), 1);
        }
        Ok(applied)
    }

    /// Events (route changes, breaker transitions, throttling, drift, stale serves) from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// The state of `region`'s breaker (`None` for an unknown region): a cheaper question
    /// than [`health`](Self::health) for callers that ask it often.
    pub fn breaker_state(&self, region: &str) -> Option<BreakerState> {
        self.inner
            .vaults
            .iter()
            .find(|v| &*v.name == region)
            .map(|v| v.breaker.state())
    }

    /// The active region (`None`: no vault is usable, reads come from the cache).
    pub fn active_region(&self) -> Option<Arc<str>> {
        let route = self.inner.router.load();
        route.active().map(|i| self.inner.vaults[i].name.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::store::MemoryStore;
    use crate::{Access, Config, FailoverClient};

    /// A two-region configuration, with `seed` if given.
    fn two_regions(seed: Option<u64>) -> Config {
        let mut b = Config::builder()
            .region("weu", "https://app-weu.vault.azure.net", Access::ReadWrite)
            .region("neu", "https://app-neu.vault.azure.net", Access::ReadOnly);
        if let Some(s) = seed {
            b = b.seed(s);
        }
        b.build().unwrap()
    }

    /// How long a client over `config` dwells before failing back (within a runtime).
    fn dwell_of(config: Config) -> Duration {
        FailoverClient::builder(config)
            .store("weu", Arc::new(MemoryStore::new("weu")))
            .store("neu", Arc::new(MemoryStore::new("neu")))
            .build()
            .unwrap()
            .inner
            .router
            .dwell()
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    /// A fleet's clients (each with its own seed) dwell between `failback_dwell` and half as
    /// much again before failing back, spread over that range: the recovering primary does not
    /// meet them all in the same second. Before: every client dwelt exactly 60 s.
    #[test]
    fn failback_dwell_is_spread_across_a_fleet() {
        let rt = runtime();
        let _g = rt.enter();
        let base = Duration::from_secs(60);
        let dwells: Vec<Duration> = (0..50u64)
            .map(|seed| dwell_of(two_regions(Some(seed))))
            .collect();
        let (lo, hi) = (dwells.iter().min().unwrap(), dwells.iter().max().unwrap());
        assert!(*lo >= base && *hi < base.mul_f64(1.5), "{lo:?}..{hi:?}");
        assert!(*hi - *lo > base / 3, "spread over {:?}", *hi - *lo);
    }

    /// Processes started from one configuration file (no seed in it) draw apart: before, the
    /// seed defaulted to one constant and every process of a fleet dwelt, backed off and
    /// jittered identically. A seed set makes them equal (tests, the simulator).
    #[test]
    fn clients_without_a_seed_draw_their_own() {
        let rt = runtime();
        let _g = rt.enter();
        let dwell = |seed: Option<u64>| {
            let text = two_regions(seed).to_toml();
            assert_eq!(text.contains("seed"), seed.is_some(), "{text}");
            dwell_of(Config::from_toml(&text).unwrap())
        };
        let unseeded: std::collections::BTreeSet<Duration> = (0..8).map(|_| dwell(None)).collect();
        assert!(
            unseeded.len() > 1,
            "8 unseeded clients, one dwell: {unseeded:?}"
        );
        assert_eq!(dwell(Some(7)), dwell(Some(7)));
    }
}
