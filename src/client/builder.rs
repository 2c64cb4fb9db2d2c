//! Builds a [`FailoverClient`]: validates the stores against the configuration and wires the
//! engine: vaults with their breakers and gates, the route, the budget, the tasks.

use std::collections::BTreeMap;
use std::hash::RandomState;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::{FailoverClient, Lifeline};
use crate::breaker::Breaker;
use crate::cache::Cache;
use crate::clock::Mark;
use crate::config::Config;
use crate::engine::Engine;
use crate::error::Error;
use crate::events::Events;
use crate::router::{Failback, Router};
use crate::store::SecretStore;
use crate::vault::Vault;
use keyvault_failover_core::budget::{RetryBudget, VaultGate};

/// Builds a [`FailoverClient`]: a [`Config`] and one [`SecretStore`] per region.
#[must_use]
pub struct FailoverClientBuilder {
    config: Config,
    stores: Vec<(String, Arc<dyn SecretStore>)>,
}

impl FailoverClient {
    /// A builder for a client over `config`'s regions.
    pub fn builder(config: Config) -> FailoverClientBuilder {
        FailoverClientBuilder {
            config,
            stores: Vec::new(),
        }
    }
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
