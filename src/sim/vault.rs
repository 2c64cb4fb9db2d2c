//! Simulated regional vaults that follow the scenario's fault timeline in virtual time, and
//! the per-client tap that checks the "no call through an open breaker" invariant.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use secrecy::SecretString;
use tokio::time::Instant;

use super::scenario::{FaultKind, FaultSpec, SimRegion};
use crate::breaker::BreakerState;
use crate::config::Access;
use crate::error::{StoreError, StoreErrorKind};
use crate::name::SecretName;
use crate::secret::{SecretProperties, StoredSecret};
use crate::store::SecretStore;
use crate::FailoverClient;

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

struct State {
    /// name → versions, oldest first: (version id, value).
    secrets: HashMap<String, Vec<(String, SecretString)>>,
    next_version: u64,
    rng: fastrand::Rng,
    admitted: VecDeque<Instant>,
    /// GETs that reached the vault, per second of the run.
    per_sec: Vec<u32>,
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
    /// Writes that reached a vault the scenario declares read-only.
    pub(crate) writes_to_read_only: AtomicU64,
}

impl SimVault {
    pub(crate) fn new(
        r: &SimRegion,
        faults: &[FaultSpec],
        secrets: u32,
        seed: u64,
        start: Instant,
        duration: Duration,
    ) -> Self {
        let median_us = r.latency_median.as_secs_f64() * 1e6;
        let sigma = (r.latency_p99.as_secs_f64() / r.latency_median.as_secs_f64()).ln() / 2.326;
        let mut secrets_map = HashMap::new();
        for i in 0..secrets {
            let name = format!("secret-{i}");
            let id = format!("{}-{:08x}", r.name, i);
            secrets_map.insert(name.clone(), vec![(id, value_of(i, 0))]);
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
            }),
            gets: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            writes_to_read_only: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        crate::lock(&self.state)
    }

    /// A new version of `secret-<i>` with content generation `gen`.
    pub(crate) fn rotate(&self, i: u32, gen: u32) {
        let mut st = self.lock();
        let id = format!("{}-{:08x}", self.name, st.next_version);
        st.next_version += 1;
        if let Some(v) = st.secrets.get_mut(&format!("secret-{i}")) {
            v.push((id, value_of(i, gen)));
        }
    }

    /// GETs per second of the run.
    pub(crate) fn per_sec(&self) -> Vec<u32> {
        self.lock().per_sec.clone()
    }

    fn effect(&self, now: Instant) -> Effect {
        let t = now - self.start;
        let mut e = Effect::default();
        for f in self.faults.iter().filter(|f| t >= f.start && t < f.end) {
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

    /// Applies the timeline to one call: waits its latency and returns its error, if any.
    async fn enter(&self, get: bool) -> Result<bool, StoreError> {
        let now = Instant::now();
        let e = self.effect(now);
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

#[async_trait]
impl SecretStore for SimVault {
    async fn get(
        &self,
        name: &SecretName,
        version: Option<&str>,
    ) -> Result<StoredSecret, StoreError> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        self.enter(true).await?;
        let st = self.lock();
        let versions = st
            .secrets
            .get(name.as_str())
            .ok_or_else(|| not_found(name))?;
        let v = match version {
            None => versions.last(),
            Some(id) => versions.iter().find(|(i, _)| i == id),
        }
        .ok_or_else(|| not_found(name))?;
        Ok(StoredSecret::new(v.1.clone(), v.0.clone()))
    }

    async fn set(&self, name: &SecretName, value: &SecretString) -> Result<String, StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        if self.access == Access::ReadOnly {
            self.writes_to_read_only.fetch_add(1, Ordering::Relaxed);
        }
        let read_only = self.enter(false).await?;
        if read_only || self.access == Access::ReadOnly {
            return Err(StoreError::new(
                StoreErrorKind::Auth { status: 403 },
                "vault is read-only",
            ));
        }
        let mut st = self.lock();
        let id = format!("{}-{:08x}", self.name, st.next_version);
        st.next_version += 1;
        st.secrets
            .entry(name.as_str().to_string())
            .or_default()
            .push((id.clone(), value.clone()));
        Ok(id)
    }

    async fn delete(&self, name: &SecretName) -> Result<(), StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        if self.access == Access::ReadOnly {
            self.writes_to_read_only.fetch_add(1, Ordering::Relaxed);
        }
        self.enter(false).await?;
        Err(not_found(name))
    }

    async fn list(&self) -> Result<Vec<SecretProperties>, StoreError> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        self.enter(true).await?;
        let st = self.lock();
        let mut out: Vec<_> = st
            .secrets
            .iter()
            .map(|(n, v)| SecretProperties::new(n.clone(), v.last().map(|v| v.0.clone()), true))
            .collect();
        out.sort_by(|a, b| a.name().cmp(b.name()));
        out.truncate(1);
        Ok(out)
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
        self.vault.list().await.map(|_| ())
    }

    async fn probe_read(&self, name: &SecretName) -> Result<(), StoreError> {
        self.vault.get(name, None).await.map(|_| ())
    }
}
