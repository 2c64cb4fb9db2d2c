//! Simulated regional vaults that follow the scenario's fault timeline in virtual time, and
//! the per-client tap that checks the "no call through an open breaker" invariant.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use secrecy::SecretString;
use tokio::time::Instant;

use super::scenario::{FaultKind, FaultSpec, Op, SimRegion};
use keyvault_failover::replicate::{Listed, Properties, Provenance, ReadVersion, ReplicaStore};
use keyvault_failover::Access;
use keyvault_failover::BreakerState;
use keyvault_failover::FailoverClient;
use keyvault_failover::SecretName;
use keyvault_failover::SecretStore;
use keyvault_failover::{SecretProperties, StoredSecret};
use keyvault_failover::{StoreError, StoreErrorKind};

/// Key Vault's throttling window.
const WINDOW: Duration = Duration::from_secs(10);

/// What the timeline does to one call at one instant.
#[derive(Default)]
struct Effect {
    refuse: bool,
    hang: bool,
    extra: Duration,
    error_rate: f64,
    throttle: Option<(f64, Duration)>,
    read_only: bool,
}

/// One version of a secret in one vault.
struct Version {
    id: String,
    value: SecretString,
    /// Key Vault's `attributes.created` (whole seconds).
    created: SystemTime,
    /// Tags: only a replicator's copies have one (its provenance).
    tags: BTreeMap<String, String>,
}

/// Seconds since the Unix epoch of a simulated vault time.
fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The run's time before any rotation: every secret's first version was created then.
const BEFORE_RUN: u64 = 1_800_000_000 - 86_400;

struct State {
    /// name → versions, oldest first.
    secrets: HashMap<String, Vec<Version>>,
    next_version: u64,
    rng: fastrand::Rng,
    admitted: VecDeque<Instant>,
    /// GETs admitted (answered, not 429), per second of the run.
    per_sec: Vec<u32>,
    /// Calls answered 429, per second of the run.
    throttled_per_sec: Vec<u32>,
}

/// One simulated vault, shared by every client instance (and so by their load).
pub(crate) struct SimVault {
    pub(crate) name: String,
    access: Access,
    median_us: f64,
    sigma: f64,
    limit: usize,
    faults: Vec<FaultSpec>,
    start: Instant,
    state: Mutex<State>,
    pub(crate) gets: AtomicU64,
    pub(crate) writes: AtomicU64,
    pub(crate) throttled: AtomicU64,
    /// Health probes (GETs and listings) that reached it.
    pub(crate) probes: AtomicU64,
    /// Writes that reached a vault the scenario declares read-only.
    pub(crate) writes_to_read_only: AtomicU64,
    /// Where a write accepted here is replicated, and after how long.
    replicas: OnceLock<Vec<(Arc<SimVault>, Duration)>>,
}

/// The wall-clock time the simulated vaults stamp at virtual `t` after the run's start.
pub(crate) fn wall(t: Duration) -> SystemTime {
    // Whole seconds, as Key Vault's `created`; 2027-01-15 as the run's start.
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + t.as_secs())
}

impl SimVault {
    /// `copied_from`: the primary's region when a replicator keeps this secondary (its first
    /// versions are copies of the primary's, with their provenance tag).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        r: &SimRegion,
        faults: &[FaultSpec],
        secrets: u32,
        seed: u64,
        start: Instant,
        duration: Duration,
        copied_from: Option<&str>,
    ) -> Self {
        let median_us = r.latency_median.as_secs_f64() * 1e6;
        let sigma = (r.latency_p99.as_secs_f64() / r.latency_median.as_secs_f64()).ln() / 2.326;
        let mut secrets_map = HashMap::new();
        // The last `unreplicated` secrets were created in the primary just before the run and
        // have not reached this region yet ([`SimVault::arrive`]).
        for i in 0..secrets.saturating_sub(r.unreplicated) {
            let tags = match copied_from {
                Some(primary) => {
                    // Copied long before the run by a replicator that dated its read: settled.
                    let source =
                        Provenance::new(primary, format!("{primary}-{i:08x}"), BEFORE_RUN as i64)
                            .with_read(BEFORE_RUN as i64 + 60);
                    BTreeMap::from([(
                        keyvault_failover::replicate::PROVENANCE_TAG.to_string(),
                        source.encode(),
                    )])
                }
                None => BTreeMap::new(),
            };
            let version = Version {
                id: format!("{}-{:08x}", r.name, i),
                value: value_of(i, 0),
                // Created a day before the run (before any rotation).
                created: SystemTime::UNIX_EPOCH + Duration::from_secs(BEFORE_RUN),
                tags,
            };
            secrets_map.insert(format!("secret-{i}"), vec![version]);
        }
        SimVault {
            name: r.name.clone(),
            access: r.access,
            median_us,
            sigma: sigma.max(0.0),
            limit: r.limit as usize,
            faults: faults
                .iter()
                .filter(|f| f.region == r.name)
                .cloned()
                .collect(),
            start,
            state: Mutex::new(State {
                secrets: secrets_map,
                next_version: u64::from(secrets),
                rng: fastrand::Rng::with_seed(seed),
                admitted: VecDeque::new(),
                per_sec: vec![0; duration.as_secs() as usize + 2],
                throttled_per_sec: vec![0; duration.as_secs() as usize + 2],
            }),
            gets: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            probes: AtomicU64::new(0),
            writes_to_read_only: AtomicU64::new(0),
            replicas: OnceLock::new(),
        }
    }

    /// Sets where writes accepted here are replicated (the primary's secondaries).
    pub(crate) fn replicate_to(&self, replicas: Vec<(Arc<SimVault>, Duration)>) {
        let _ = self.replicas.set(replicas);
    }

    /// Adds a version of `name` made now (a write or its replica).
    fn push(&self, st: &mut State, name: &str, value: SecretString) -> String {
        self.push_tagged(st, name, value, BTreeMap::new())
    }

    fn push_tagged(
        &self,
        st: &mut State,
        name: &str,
        value: SecretString,
        tags: BTreeMap<String, String>,
    ) -> String {
        let id = format!("{}-{:08x}", self.name, st.next_version);
        st.next_version += 1;
        st.secrets
            .entry(name.to_string())
            .or_default()
            .push(Version {
                id: id.clone(),
                value,
                created: wall(Instant::now() - self.start),
                tags,
            });
        id
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        crate::lock(&self.state)
    }

    /// A new version of `secret-<i>` with content generation `gen` (a rotation, or its
    /// replica reaching this region). Nothing when the secret has not reached this region.
    pub(crate) fn rotate(&self, i: u32, gen: u32) {
        let mut st = self.lock();
        let name = format!("secret-{i}");
        if st.secrets.contains_key(&name) {
            self.push(&mut st, &name, value_of(i, gen));
        }
    }

    /// `secret-<i>`, created in the primary before the run, reaches this region with
    /// generation `gen`.
    pub(crate) fn arrive(&self, i: u32, gen: u32) {
        let mut st = self.lock();
        let name = format!("secret-{i}");
        if !st.secrets.contains_key(&name) {
            self.push(&mut st, &name, value_of(i, gen));
        }
    }

    /// GETs per second of the run.
    pub(crate) fn per_sec(&self) -> Vec<u32> {
        self.lock().per_sec.clone()
    }

    /// Calls answered 429, per second of the run.
    pub(crate) fn throttled_per_sec(&self) -> Vec<u32> {
        self.lock().throttled_per_sec.clone()
    }

    fn effect(&self, now: Instant, op: Op, probe: bool) -> Effect {
        let t = now - self.start;
        let mut e = Effect::default();
        for f in self
            .faults
            .iter()
            .filter(|f| t >= f.start && t < f.end && f.hits(op, probe))
        {
            match f.kind {
                FaultKind::Outage => e.refuse = true,
                FaultKind::Blackhole => e.hang = true,
                FaultKind::Brownout => {
                    e.extra += f.latency.unwrap_or_default();
                    e.error_rate = e.error_rate.max(f.rate.unwrap_or(0.0));
                }
                FaultKind::Errors => e.error_rate = e.error_rate.max(f.rate.unwrap_or(0.0)),
                FaultKind::Throttle => {
                    e.throttle = Some((f.rate.unwrap_or(1.0), f.retry_after.unwrap_or_default()));
                }
                FaultKind::Flapping => {
                    let p = f.period.unwrap_or(Duration::from_secs(1)).as_nanos().max(1);
                    if ((t - f.start).as_nanos() / p).is_multiple_of(2) {
                        e.refuse = true;
                    }
                }
                FaultKind::ReadOnly => e.read_only = true,
            }
        }
        e
    }

    fn latency(&self, st: &mut State) -> Duration {
        // Log-normal from the seeded generator (Box-Muller).
        let (u1, u2) = (st.rng.f64().max(1e-12), st.rng.f64());
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        let us = self.median_us * (self.sigma * z).exp();
        Duration::from_micros(us.clamp(1.0, 60e6) as u64)
    }

    /// Applies the timeline to one call of `op` (`probe`: a health probe's): waits its
    /// latency and returns its error, if any.
    async fn enter(&self, op: Op, probe: bool) -> Result<bool, StoreError> {
        let get = matches!(op, Op::Get | Op::List);
        let now = Instant::now();
        let e = self.effect(now, op, probe);
        let err = |kind, msg: &str| Err(StoreError::new(kind, msg));
        if e.refuse {
            return err(StoreErrorKind::Connect, "connection refused");
        }
        if e.hang {
            std::future::pending::<()>().await;
        }
        let (latency, fail, throttle) = {
            let mut st = self.lock();
            let latency = self.latency(&mut st) + e.extra;
            let fail = e.error_rate > 0.0 && st.rng.f64() < e.error_rate;
            let mut throttle = match e.throttle {
                Some((rate, ra)) if st.rng.f64() < rate => Some(ra),
                _ => None,
            };
            if get && throttle.is_none() {
                while st.admitted.front().is_some_and(|t| now - *t >= WINDOW) {
                    st.admitted.pop_front();
                }
                if st.admitted.len() >= self.limit {
                    let oldest = st.admitted.front().copied().unwrap_or(now);
                    let wait = (oldest + WINDOW) - now;
                    throttle = Some(Duration::from_secs(wait.as_secs() + 1));
                } else {
                    st.admitted.push_back(now);
                    let sec = (now - self.start).as_secs() as usize;
                    if let Some(c) = st.per_sec.get_mut(sec) {
                        *c += 1;
                    }
                }
            }
            if throttle.is_some() {
                let sec = (now - self.start).as_secs() as usize;
                if let Some(c) = st.throttled_per_sec.get_mut(sec) {
                    *c += 1;
                }
            }
            (latency, fail, throttle)
        };
        tokio::time::sleep(latency).await;
        if let Some(ra) = throttle {
            self.throttled.fetch_add(1, Ordering::Relaxed);
            return err(
                StoreErrorKind::Throttled {
                    retry_after: Some(ra),
                },
                "Reason: VaultRequestTypeLimitReached",
            );
        }
        if fail {
            return err(StoreErrorKind::Server { status: 503 }, "");
        }
        Ok(e.read_only)
    }
}

/// The content of generation `gen` of `secret-<i>`; the simulator reads it back to tell
/// which rotation a served value belongs to.
pub(crate) fn value_of(i: u32, gen: u32) -> SecretString {
    SecretString::from(format!("secret-{i}-gen-{gen}"))
}

/// The generation encoded in a value made by [`value_of`].
pub(crate) fn generation(value: &str) -> Option<u32> {
    value.rsplit_once("-gen-").and_then(|(_, g)| g.parse().ok())
}

impl SimVault {
    async fn get_as(
        &self,
        name: &SecretName,
        version: Option<&str>,
        probe: bool,
    ) -> Result<StoredSecret, StoreError> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        if probe {
            self.probes.fetch_add(1, Ordering::Relaxed);
        }
        self.enter(Op::Get, probe).await?;
        let st = self.lock();
        let versions = st
            .secrets
            .get(name.as_str())
            .ok_or_else(|| not_found(name))?;
        let v = match version {
            None => versions.last(),
            Some(id) => versions.iter().find(|v| v.id == id),
        }
        .ok_or_else(|| not_found(name))?;
        // A replicator's copy is as old as its source, where it believably says so (as
        // `AzureStore` reads it, on the virtual wall clock).
        let now = wall(Instant::now() - self.start);
        let created = keyvault_failover::replicate::ordering_time(
            v.tags
                .get(keyvault_failover::replicate::PROVENANCE_TAG)
                .map(String::as_str),
            Some(v.created),
            now,
        )
        .unwrap_or(v.created);
        Ok(StoredSecret::new(v.value.clone(), v.id.clone()).with_created(created))
    }

    async fn list_as(&self, probe: bool) -> Result<Vec<SecretProperties>, StoreError> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        if probe {
            self.probes.fetch_add(1, Ordering::Relaxed);
        }
        self.enter(Op::List, probe).await?;
        let st = self.lock();
        let mut out: Vec<_> = st
            .secrets
            .iter()
            .map(|(n, v)| SecretProperties::new(n.clone(), v.last().map(|v| v.id.clone()), true))
            .collect();
        out.sort_by(|a, b| a.name().cmp(b.name()));
        out.truncate(1);
        Ok(out)
    }
}

#[async_trait]
impl SecretStore for SimVault {
    async fn get(
        &self,
        name: &SecretName,
        version: Option<&str>,
    ) -> Result<StoredSecret, StoreError> {
        self.get_as(name, version, false).await
    }

    async fn set(&self, name: &SecretName, value: &SecretString) -> Result<String, StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        if self.access == Access::ReadOnly {
            self.writes_to_read_only.fetch_add(1, Ordering::Relaxed);
        }
        let read_only = self.enter(Op::Set, false).await?;
        if read_only || self.access == Access::ReadOnly {
            return Err(StoreError::new(
                StoreErrorKind::Auth { status: 403 },
                "vault is read-only",
            ));
        }
        let id = {
            let mut st = self.lock();
            self.push(&mut st, name.as_str(), value.clone())
        };
        // Key Vault replicates the write to the other regions a while later.
        for (replica, delay) in self.replicas.get().into_iter().flatten() {
            let (replica, name, value) =
                (replica.clone(), name.as_str().to_string(), value.clone());
            let delay = *delay;
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let mut st = replica.lock();
                replica.push(&mut st, &name, value);
            });
        }
        Ok(id)
    }

    async fn delete(&self, name: &SecretName) -> Result<(), StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        if self.access == Access::ReadOnly {
            self.writes_to_read_only.fetch_add(1, Ordering::Relaxed);
        }
        self.enter(Op::Delete, false).await?;
        Err(not_found(name))
    }

    async fn list(&self) -> Result<Vec<SecretProperties>, StoreError> {
        self.list_as(false).await
    }
}

/// A replicator's calls: listings and reads count as GETs (within the vault's limit), writes
/// as writes; the timeline's faults apply to each.
#[async_trait]
impl ReplicaStore for SimVault {
    async fn list_items(&self) -> Result<Vec<Listed>, StoreError> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        self.enter(Op::List, false).await?;
        let st = self.lock();
        let mut out: Vec<Listed> = st
            .secrets
            .iter()
            .filter_map(|(n, versions)| {
                let v = versions.last()?;
                Some(
                    Listed::new(n.clone(), Properties::default().with_tags(v.tags.clone()))
                        .with_created(Some(unix(v.created))),
                )
            })
            .collect();
        out.sort_by(|a, b| a.name().cmp(b.name()));
        Ok(out)
    }

    async fn read(&self, name: &SecretName) -> Result<ReadVersion, StoreError> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        self.enter(Op::Get, false).await?;
        let st = self.lock();
        let v = st
            .secrets
            .get(name.as_str())
            .and_then(|v| v.last())
            .ok_or_else(|| not_found(name))?;
        Ok(ReadVersion::new(
            v.value.clone(),
            v.id.clone(),
            Some(unix(v.created)),
            Properties::default().with_tags(v.tags.clone()),
        ))
    }

    async fn write(
        &self,
        name: &SecretName,
        value: &SecretString,
        properties: &Properties,
    ) -> Result<String, StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let read_only = self.enter(Op::Set, false).await?;
        if read_only {
            return Err(StoreError::new(
                StoreErrorKind::Auth { status: 403 },
                "vault is read-only",
            ));
        }
        let mut st = self.lock();
        let tags = properties.tags().clone();
        Ok(self.push_tagged(&mut st, name.as_str(), value.clone(), tags))
    }

    async fn update(&self, name: &SecretName, properties: &Properties) -> Result<(), StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.enter(Op::Set, false).await?;
        let mut st = self.lock();
        let v = st
            .secrets
            .get_mut(name.as_str())
            .and_then(|v| v.last_mut())
            .ok_or_else(|| not_found(name))?;
        v.tags = properties.tags().clone();
        Ok(())
    }

    async fn soft_delete(&self, name: &SecretName) -> Result<(), StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.enter(Op::Delete, false).await?;
        Err(not_found(name))
    }

    async fn recover(&self, name: &SecretName) -> Result<(), StoreError> {
        Err(not_found(name))
    }
}

fn not_found(name: &SecretName) -> StoreError {
    StoreError::new(
        StoreErrorKind::NotFound,
        format!("SecretNotFound: {name} was not found"),
    )
}

/// One client instance's view of one vault: counts the calls that arrive while that client's
/// breaker for the vault is open (the client must never send them).
pub(crate) struct Tap {
    vault: Arc<SimVault>,
    client: Mutex<Option<FailoverClient>>,
    open_calls: Arc<AtomicU64>,
    /// Deliberate breakage: every call also goes to this vault, breaker or not.
    rogue: Option<Arc<Tap>>,
}

impl Tap {
    pub(crate) fn new(
        vault: Arc<SimVault>,
        open_calls: Arc<AtomicU64>,
        rogue: Option<Arc<Tap>>,
    ) -> Self {
        Tap {
            vault,
            client: Mutex::new(None),
            open_calls,
            rogue,
        }
    }

    /// Starts checking against `client`'s breaker (call [`Tap::detach`] at the end: the
    /// client holds this tap, so the tap must let go of the client).
    pub(crate) fn attach(&self, client: &FailoverClient) {
        *crate::lock(&self.client) = Some(client.clone());
    }

    pub(crate) fn detach(&self) {
        crate::lock(&self.client).take();
    }

    /// Runs synchronously at the first poll of a call, before any await: in virtual time on
    /// one thread nothing can happen between the client's breaker permit and this check.
    fn check(&self) {
        let guard = crate::lock(&self.client);
        if let Some(c) = &*guard {
            if c.breaker_state(&self.vault.name) == Some(BreakerState::Open) {
                self.open_calls.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    async fn rogue_call(&self, name: &SecretName) {
        if let Some(r) = &self.rogue {
            r.check();
            let _ = r.vault.get(name, None).await;
        }
    }
}

#[async_trait]
impl SecretStore for Tap {
    async fn get(
        &self,
        name: &SecretName,
        version: Option<&str>,
    ) -> Result<StoredSecret, StoreError> {
        self.check();
        self.rogue_call(name).await;
        self.vault.get(name, version).await
    }

    async fn set(&self, name: &SecretName, value: &SecretString) -> Result<String, StoreError> {
        self.check();
        self.vault.set(name, value).await
    }

    async fn delete(&self, name: &SecretName) -> Result<(), StoreError> {
        self.check();
        self.vault.delete(name).await
    }

    async fn list(&self) -> Result<Vec<SecretProperties>, StoreError> {
        self.check();
        self.vault.list().await
    }

    // Health probes are not checked: an open breaker gates callers, and probing an
    // unavailable vault is how its recovery is seen.
    async fn probe(&self) -> Result<(), StoreError> {
        self.vault.list_as(true).await.map(|_| ())
    }

    async fn probe_read(&self, name: &SecretName) -> Result<(), StoreError> {
        self.vault.get_as(name, None, true).await.map(|_| ())
    }
}
