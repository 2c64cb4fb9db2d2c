//! Shared rig: a client over in-process vaults `weu` (read-write), `neu` and `swc` (read-only).
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use keyvault_failover::store::{Fault, MemoryStore};
use keyvault_failover::{Access, BreakerState, Config, ConfigBuilder, FailoverClient};

pub const REGIONS: [&str; 3] = ["weu", "neu", "swc"];

pub struct Rig {
    pub client: FailoverClient,
    pub stores: Vec<Arc<MemoryStore>>,
}

impl Rig {
    pub fn store(&self, region: &str) -> &MemoryStore {
        let i = REGIONS
            .iter()
            .position(|r| *r == region)
            .expect("known region");
        &self.stores[i]
    }

    pub fn breaker(&self, region: &str) -> BreakerState {
        self.client
            .health()
            .regions()
            .iter()
            .find(|r| r.name() == region)
            .expect("known region")
            .breaker()
    }

    pub fn total_writes(&self) -> u64 {
        self.stores.iter().map(|s| s.writes()).sum()
    }

    /// Puts the same value in every region (as replication would).
    pub fn seed_all(&self, name: &str, value: &str) {
        for s in &self.stores {
            s.insert(name, value);
        }
    }

    /// Sets the same fault in every region (`None`: every region answers again).
    pub fn fault_all(&self, fault: Option<Fault>) {
        for s in &self.stores {
            s.set_fault(fault.clone());
        }
    }
}

/// `n` regions (1..=3), with fast-to-observe settings and no background tasks or hedging (the
/// core on its own), further adjusted by `tune`.
pub fn rig(n: usize, tune: impl FnOnce(ConfigBuilder) -> ConfigBuilder) -> Rig {
    rig_with(n, |b| {
        tune(
            b.probing(false)
                .hedging(false)
                .background_refresh(false)
                .failback_dwell(Duration::from_secs(5))
                .probe_unhealthy_interval(Duration::from_secs(1)),
        )
    })
}

/// `n` regions with every default feature (prober, refresher, hedging), adjusted by `tune`.
pub fn rig_with(n: usize, tune: impl FnOnce(ConfigBuilder) -> ConfigBuilder) -> Rig {
    // A fixed seed: the tests' timings repeat (a client draws its own when none is set).
    let mut b = Config::builder().seed(0x6b76_6661_696c);
    for (i, r) in REGIONS.iter().take(n).enumerate() {
        let access = if i == 0 {
            Access::ReadWrite
        } else {
            Access::ReadOnly
        };
        b = b.region(r, &format!("https://app-{r}.vault.azure.net"), access);
    }
    let config = tune(
        b.refresh_interval(Duration::from_secs(1))
            .attempt_timeout(Duration::from_millis(500))
            .deadline(Duration::from_secs(3))
            .failure_threshold(3)
            .breaker_open_base(Duration::from_secs(5))
            .breaker_open_max(Duration::from_secs(5)),
    )
    .build()
    .expect("valid test configuration");
    let stores: Vec<Arc<MemoryStore>> = REGIONS
        .iter()
        .take(n)
        .enumerate()
        .map(|(i, r)| Arc::new(MemoryStore::with_seed(r, i as u64)))
        .collect();
    let mut cb = FailoverClient::builder(config);
    for (r, s) in REGIONS.iter().zip(&stores) {
        cb = cb.store(r, s.clone());
    }
    Rig {
        client: cb.build().expect("stores match regions"),
        stores,
    }
}

pub async fn advance(d: Duration) {
    tokio::time::sleep(d).await;
}
