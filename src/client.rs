//! [`FailoverClient`]: reads that survive regional outages, writes that never go astray.

use std::collections::BTreeMap;
use std::fmt;
use std::hash::RandomState;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use tracing::Instrument;

use crate::breaker::{Breaker, BreakerState};
use crate::cache::{self, Cache, Urgency};
use crate::clock::Mark;
use crate::config::{Access, Config};
use crate::engine::calls::Limits;
use crate::engine::notify::Notified;
use crate::engine::{round_ms, Engine, FetchError};
use crate::error::{Attempt, AttemptFailure, Error, Kind, StoreError, StoreErrorKind};
use crate::events::{Event, Events};
use crate::name::{SecretName, MAX_NAME_LEN};
use crate::router::{Failback, Mode, Router};
use crate::secret::{Entry, Freshness, Secret, SecretProperties, Written, MAX_VALUE_LEN};
use crate::store::SecretStore;
use crate::vault::{LatencySummary, Vault};
use keyvault_failover_core::budget::{RetryBudget, VaultGate};

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

/// Builds a [`FailoverClient`]: a [`Config`] and one [`SecretStore`] per region.
#[must_use]
pub struct FailoverClientBuilder {
    config: Config,
    stores: Vec<(String, Arc<dyn SecretStore>)>,
}

impl FailoverClientBuilder {
    /// The store serving region `region` (a name from the configuration).
    pub fn store(mut self, region: &str, store: Arc<dyn SecretStore>) -> Self {
        self.stores.push((region.to_string(), store));
        self
    }

    /// Checks that every region has exactly one store and builds the client.
    ///
    /// With probing or background refresh enabled (the defaults) this starts background
    /// tasks, so it must be called within a tokio runtime; otherwise it returns a
    /// configuration error saying so.
    pub fn build(self) -> Result<FailoverClient, Error> {
        for (name, _) in &self.stores {
            if !self.config.regions().iter().any(|r| r.name() == name) {
                return Err(Error::config(format!(
                    "a store was given for region {name:?}, which is not configured"
                )));
            }
        }
        let c = &self.config;
        let background = c.probe.enabled || c.refresh.enabled;
        if background && tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::config(
                "probing and background refresh need a tokio runtime: build the client inside \
                 one, or disable both",
            ));
        }
        let metrics = Arc::new(crate::metrics::Metrics::new(
            c.regions()
                .iter()
                .map(|r| {
                    let host = url::Url::parse(r.url())
                        .ok()
                        .and_then(|u| u.host_str().map(str::to_string))
                        .unwrap_or_default();
                    (Arc::from(r.name()), host)
                })
                .collect(),
        ));
        let events = Events::with_metrics(metrics.clone());
        // Unset, each client draws its own seed (fastrand's process RNG is seeded from the OS
        // per thread), so the processes of a fleet never share one jitter sequence.
        let seed = c.breaker.seed.unwrap_or_else(|| fastrand::u64(..));
        let mut vaults = Vec::new();
        for (i, r) in c.regions().iter().enumerate() {
            let mut given = self.stores.iter().filter(|(n, _)| n == r.name());
            let store = match (given.next(), given.next()) {
                (Some((_, s)), None) => s.clone(),
                (None, _) => {
                    return Err(Error::config(format!("region {:?} has no store", r.name())))
                }
                (Some(_), Some(_)) => {
                    return Err(Error::config(format!(
                        "region {:?} was given two stores",
                        r.name()
                    )))
                }
            };
            let name: Arc<str> = r.name().into();
            let breaker = Breaker::new(
                name.clone(),
                c.breaker.failure_threshold,
                c.breaker.open_base,
                c.breaker.open_max,
                seed.wrapping_add(i as u64),
                events.clone(),
            );
            let gate = VaultGate::new(
                c.throttle.get_limit,
                c.throttle.window,
                c.throttle.budget_fraction,
            );
            let write_gate = VaultGate::new(
                c.throttle.write_limit,
                c.throttle.window,
                c.throttle.budget_fraction,
            );
            vaults.push(Vault::new(
                name,
                r.access(),
                store,
                breaker,
                gate,
                write_gate,
            ));
        }
        // A fleet's failback spreads: each client dwells `failback_dwell` plus up to half as
        // much again, drawn from its seed, so a recovering primary does not meet every
        // instance in the same second.
        let spread = fastrand::Rng::with_seed(seed ^ 0xFA11_BAC4_D3E1_1000).f64();
        let failback = Failback::new(
            c.probe.failback_successes,
            c.probe.failback_dwell.mul_f64(1.0 + spread / 2.0),
        );
        let router = Router::new(&vaults, failback, events.clone());
        let budget = RetryBudget::new(
            c.retry.budget_ratio,
            c.retry.budget_min_per_sec,
            Duration::from_secs(10),
        );
        let rng = Mutex::new(fastrand::Rng::with_seed(seed ^ 0x5eed));
        let notify_rng = Mutex::new(fastrand::Rng::with_seed(seed ^ 0x4e07_1f1e));
        let (tx, shutdown) = watch::channel(());
        let longest_fetch = c.timeouts.deadline;
        let fresh_for = c.refresh.enabled.then_some(c.cache.refresh_interval);
        let client = FailoverClient {
            _life: Arc::new(Lifeline { _tx: tx }),
            inner: Arc::new(Engine {
                config: self.config,
                vaults,
                router,
                cache: Cache::new(longest_fetch, fresh_for),
                budget,
                rng,
                events,
                drift: Mutex::new(BTreeMap::new()),
                lag: Mutex::new(BTreeMap::new()),
                drift_key: RandomState::new(),
                probe_target: Mutex::new(None),
                shutdown,
                born: Instant::now(),
                seed,
                last_stale: Mark::default(),
                last_restart: Mark::default(),
                preloaded: Mutex::new(Vec::new()),
                metrics,
                notify_pending: Mutex::new(std::collections::HashSet::new()),
                notify_rng,
            }),
        };
        let (weak, weak_held) = (Arc::downgrade(&client.inner), Arc::downgrade(&client.inner));
        client.inner.metrics.observe(
            move || {
                weak.upgrade().map_or_else(Vec::new, |e| {
                    e.vaults
                        .iter()
                        .map(|v| (v.name.clone(), v.breaker.state()))
                        .collect()
                })
            },
            move || weak_held.upgrade().map(|e| e.cache.len()),
        );
        if background {
            crate::engine::tasks::start(&client.inner);
        }
        Ok(client)
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

/// A point-in-time view of the client's health.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Health {
    live: bool,
    ready: bool,
    degraded: bool,
    active: Option<String>,
    mode: Mode,
    route_changes: u64,
    cached_secrets: usize,
    regions: Vec<RegionHealth>,
    drift: BTreeMap<String, Vec<String>>,
}

/// The client's health in one word, for probes and dashboards ([`Health::state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HealthState {
    /// Ready and not degraded: a vault is trusted and no stale value was served lately.
    Ready,
    /// Ready, but serving stale values or from the cache only.
    Degraded,
    /// Not ready: no vault is trusted and not every preloaded secret is held.
    NotReady,
}

impl Health {
    /// Live: no background task had to be restarted after a panic within the last minute.
    /// (A client that can be asked is otherwise alive; a prober or refresher that keeps
    /// panicking is what a restart of the process could cure.)
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// Ready: at least one vault is trusted (breaker closed, not ejected, not suspect), or
    /// every secret [`preload`](FailoverClient::preload) was asked for is held within its
    /// staleness cap.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// Degraded: no vault is healthy (cache only), or a stale value was served within the last
    /// minute.
    pub fn is_degraded(&self) -> bool {
        self.degraded
    }

    /// Ready, degraded or not ready, in that order of preference.
    pub fn state(&self) -> HealthState {
        match (self.ready, self.degraded) {
            (false, _) => HealthState::NotReady,
            (true, true) => HealthState::Degraded,
            (true, false) => HealthState::Ready,
        }
    }

    /// The active region, if any vault is healthy.
    pub fn active(&self) -> Option<&str> {
        self.active.as_deref()
    }
    /// What the client can do now.
    pub fn mode(&self) -> Mode {
        self.mode
    }
    /// Route changes since the client was built.
    pub fn route_changes(&self) -> u64 {
        self.route_changes
    }
    /// Secrets (and versions) held as last-known-good.
    pub fn cached_secrets(&self) -> usize {
        self.cached_secrets
    }
    /// Each region, in priority order.
    pub fn regions(&self) -> &[RegionHealth] {
        &self.regions
    }
    /// Secrets whose content differs between vaults, with the regions that differ from the
    /// region that answered the last refresh.
    pub fn drift(&self) -> &BTreeMap<String, Vec<String>> {
        &self.drift
    }
}

/// One region in a [`Health`] snapshot.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RegionHealth {
    name: String,
    access: Access,
    breaker: BreakerState,
    #[serde(with = "humantime_serde")]
    throttled_for: Option<Duration>,
    probe_streak: u32,
    latency: LatencySummary,
    /// Replication lag seen (see [`RegionHealth::replication_lag`]).
    #[serde(with = "humantime_serde")]
    replication_lag: Option<Duration>,
}

impl RegionHealth {
    /// How far this region's vault lags the versions the client has seen elsewhere: how long
    /// ago the oldest version it was found lacking was made (Key Vault's `created`, a
    /// replicator's copy counted at its source's). `None` when it was never found behind, or
    /// has since answered each such secret in step.
    pub fn replication_lag(&self) -> Option<Duration> {
        self.replication_lag
    }
    /// The region's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Read-write or read-only.
    pub fn access(&self) -> Access {
        self.access
    }
    /// Its breaker's state.
    pub fn breaker(&self) -> BreakerState {
        self.breaker
    }
    /// How much longer the vault asked us to back off (429 `Retry-After`), if at all.
    pub fn throttled_for(&self) -> Option<Duration> {
        self.throttled_for
    }
    /// Consecutive successful probes since its last failure.
    pub fn probe_streak(&self) -> u32 {
        self.probe_streak
    }
    /// Latency of this client's attempts against it.
    pub fn latency(&self) -> LatencySummary {
        self.latency
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
    /// A builder for a client over `config`'s regions.
    pub fn builder(config: Config) -> FailoverClientBuilder {
        FailoverClientBuilder {
            config,
            stores: Vec::new(),
        }
    }

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

    /// The writable vault, if it is the active, healthy one; else a read-only error.
    fn writable(&self, op: &str, name: &SecretName) -> Result<usize, Error> {
        let inner = &*self.inner;
        let route = inner.router.load();
        match (route.mode(), route.active()) {
            (Mode::ReadWrite, Some(i)) => Ok(i),
            _ => {
                self.inner.nudge_failback();
                let primary = inner
                    .vaults
                    .iter()
                    .find(|v| v.access == Access::ReadWrite)
                    .map_or("none configured".to_string(), |v| {
                        format!("{} (breaker {:?})", v.name, v.breaker.state())
                    });
                let active = route.active().map_or("none", |i| &*inner.vaults[i].name);
                tracing::warn!(op, secret = %name, active, "write refused: client is read-only");
                Err(Error::new(
                    Kind::ReadOnly,
                    format!(
                        "cannot {op} secret `{name}`: the client is read-only (mode {:?}, active \
                         region {active}; writable region {primary}). Nothing was sent.",
                        route.mode()
                    ),
                ))
            }
        }
    }

    async fn write<T>(
        &self,
        op: &str,
        name: &SecretName,
        call: impl FnOnce(Arc<dyn SecretStore>) -> BoxFuture<'static, Result<T, StoreError>>,
    ) -> Result<(usize, T), Error> {
        let inner = &*self.inner;
        let idx = self.writable(op, name)?;
        let v = &inner.vaults[idx];
        let Some(permit) = v.breaker.try_acquire() else {
            return Err(Error::new(
                Kind::ReadOnly,
                format!(
                    "cannot {op} secret `{name}`: region {}'s breaker is not closed. Nothing was sent.",
                    v.name
                ),
            ));
        };
        // The vault asked us to wait (429/503 Retry-After), or this client's share of its
        // write limit is spent: refuse at once, nothing sent.
        let now = crate::clock::now();
        if let Some(until) = v.gate.throttled_until(now) {
            let wait = until.saturating_duration_since(now);
            return Err(Error::with_attempts(
                Kind::Unavailable,
                format!(
                    "cannot {op} secret `{name}`: region {} asked to be left alone for {} more. \
                     Nothing was sent.",
                    v.name,
                    humantime::format_duration(round_ms(wait))
                ),
                vec![Attempt::new(v.name.clone(), AttemptFailure::Throttled)],
                None,
            ));
        }
        if !v.write_gate.try_take(now) {
            return Err(Error::with_attempts(
                Kind::Unavailable,
                format!(
                    "cannot {op} secret `{name}`: this client's share of region {}'s write limit \
                     ({} per {}) is spent. Nothing was sent.",
                    v.name,
                    inner.config.throttle.write_limit,
                    humantime::format_duration(inner.config.throttle.window)
                ),
                vec![Attempt::new(v.name.clone(), AttemptFailure::Throttled)],
                None,
            ));
        }
        let t0 = Instant::now();
        let limit = inner.config.timeouts.attempt;
        let span = tracing::info_span!("kv.write", op, secret = %name, region = %v.name);
        let res = tokio::time::timeout(limit, call(v.store.clone()))
            .instrument(span)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::new(
                    StoreErrorKind::Timeout,
                    format!("no answer within {}ms", limit.as_millis()),
                ))
            });
        v.record_latency(t0.elapsed());
        let method = if op == "delete" {
            crate::metrics::Method::Delete
        } else {
            crate::metrics::Method::Put
        };
        inner
            .metrics
            .request(idx, method, t0.elapsed(), res.as_ref().map(|_| ()));
        inner.settle(idx, permit, crate::engine::calls::outcome_of(&res));
        // Sent: whatever came back (even a timeout, whose outcome is unknown), a read that began
        // before now may hold the old value and must not be cached.
        inner.cache.wrote(name.key());
        res.map(|t| (idx, t)).map_err(|e| {
            tracing::info!(region = %v.name, op, secret = %name, error = %e, "write failed");
            if e.asks_to_wait() {
                inner.throttled(idx, e.retry_after());
            }
            let kind = match e.kind() {
                StoreErrorKind::Auth { .. } => Kind::Auth,
                StoreErrorKind::NotFound => Kind::NotFound,
                StoreErrorKind::Rejected { .. } => Kind::Rejected,
                _ => Kind::Unavailable,
            };
            let unknown = matches!(
                e.kind(),
                StoreErrorKind::Timeout | StoreErrorKind::Reset | StoreErrorKind::Server { .. }
            );
            let err = Error::with_attempts(
                kind,
                format!("cannot {op} secret `{name}`"),
                vec![Attempt::new(
                    v.name.clone(),
                    AttemptFailure::Store(e.clone()),
                )],
                Some(e),
            );
            if unknown {
                err.outcome_unknown()
            } else {
                err
            }
        })
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
        let value = Arc::new(value);
        let sent = value.clone();
        let n = name.clone();
        let (idx, version) = self
            .write("set", &name, move |s| {
                Box::pin(async move { s.set(&n, &sent).await })
            })
            .await?;
        let region = self.inner.vaults[idx].name.clone();
        let value = Arc::try_unwrap(value).unwrap_or_else(|a| (*a).clone());
        // Read-your-writes for secrets this client reads; a write-only name is not cached
        // (it would be refreshed and held for nothing).
        if self.inner.cache.get(name.key()).is_some() {
            let entry = self
                .inner
                .written_entry(value, version.as_str().into(), region.clone());
            self.inner.cache_insert(name.key(), entry);
        }
        Ok(Written::new(region, version))
    }

    /// Deletes `name` from the writable primary and forgets its cached values. Same rules as
    /// [`FailoverClient::set_secret`].
    pub async fn delete_secret(&self, name: &str) -> Result<(), Error> {
        let name = SecretName::new(name)?;
        let n = name.clone();
        self.write("delete", &name, move |s| {
            Box::pin(async move { s.delete(&n).await })
        })
        .await?;
        self.inner.forget(name.key());
        Ok(())
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

    /// The configuration the client runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
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

    /// A snapshot of routes, breakers, throttling, latencies and drift.
    pub fn health(&self) -> Health {
        let inner = &*self.inner;
        let route = inner.router.load();
        let now = Instant::now();
        let wall_now = std::time::SystemTime::now();
        let successes = inner.config.probe.failback_successes;
        let trusted = inner
            .vaults
            .iter()
            .any(|v| v.trusted(successes, Duration::ZERO));
        let preloaded = crate::lock(&inner.preloaded);
        let all_held = !preloaded.is_empty()
            && preloaded.iter().all(|k| {
                inner.cache.get(k).is_some_and(|e| {
                    e.age(now.into_std()) <= inner.config.staleness_cap(crate::cache::name_of(k))
                })
            });
        drop(preloaded);
        Health {
            live: !inner.marked_recently(&inner.last_restart),
            ready: trusted || all_held,
            degraded: route.mode() == Mode::CacheOnly || inner.marked_recently(&inner.last_stale),
            active: route.active().map(|i| inner.vaults[i].name.to_string()),
            mode: route.mode(),
            route_changes: inner.router.changes(),
            cached_secrets: inner.cache.len(),
            regions: inner
                .vaults
                .iter()
                .map(|v| RegionHealth {
                    name: v.name.to_string(),
                    access: v.access,
                    breaker: v.breaker.state(),
                    throttled_for: v
                        .gate
                        .throttled_until(now.into_std())
                        .map(|t| t - now.into_std()),
                    probe_streak: v.probe_streak(),
                    latency: v.latency(),
                    replication_lag: inner.replication_lag(Some(&v.name), wall_now),
                })
                .collect(),
            drift: inner
                .drift
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::store::MemoryStore;
    use crate::{Access, Config, FailoverClient};

    /// A fleet's clients (each with its own seed) dwell between `failback_dwell` and half as
    /// much again before failing back, spread over that range: the recovering primary does not
    /// meet them all in the same second. Before: every client dwelt exactly 60 s.
    #[test]
    fn failback_dwell_is_spread_across_a_fleet() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let _g = rt.enter();
        let base = Duration::from_secs(60);
        let dwells: Vec<Duration> = (0..50u64)
            .map(|seed| {
                let config = Config::builder()
                    .region("weu", "https://app-weu.vault.azure.net", Access::ReadWrite)
                    .region("neu", "https://app-neu.vault.azure.net", Access::ReadOnly)
                    .seed(seed)
                    .build()
                    .unwrap();
                let c = FailoverClient::builder(config)
                    .store("weu", Arc::new(MemoryStore::new("weu")))
                    .store("neu", Arc::new(MemoryStore::new("neu")))
                    .build()
                    .unwrap();
                c.inner.router.dwell()
            })
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
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let _g = rt.enter();
        let dwell = |seed: Option<u64>| {
            let mut b = Config::builder()
                .region("weu", "https://app-weu.vault.azure.net", Access::ReadWrite)
                .region("neu", "https://app-neu.vault.azure.net", Access::ReadOnly);
            if let Some(s) = seed {
                b = b.seed(s);
            }
            let config = b.build().unwrap();
            let text = config.to_toml();
            assert_eq!(text.contains("seed"), seed.is_some(), "{text}");
            FailoverClient::builder(Config::from_toml(&text).unwrap())
                .store("weu", Arc::new(MemoryStore::new("weu")))
                .store("neu", Arc::new(MemoryStore::new("neu")))
                .build()
                .unwrap()
                .inner
                .router
                .dwell()
        };
        let unseeded: std::collections::BTreeSet<Duration> = (0..8).map(|_| dwell(None)).collect();
        assert!(
            unseeded.len() > 1,
            "8 unseeded clients, one dwell: {unseeded:?}"
        );
        assert_eq!(dwell(Some(7)), dwell(Some(7)));
    }
}
