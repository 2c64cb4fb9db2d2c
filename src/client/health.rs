//! The client's health as a value: liveness, readiness, route, and each region's breaker,
//! throttling, probes, latency and replication lag.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use super::FailoverClient;
use crate::breaker::BreakerState;
use crate::config::Access;
use crate::router::Mode;
use crate::vault::LatencySummary;

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

impl FailoverClient {
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
