//! # keyvault-failover
//!
//! Keeps services reading their Azure Key Vault secrets through regional outages, throttling
//! storms and secret rotations.
//!
//! A [`FailoverClient`] holds an ordered set of regional vaults (primary first), each behind
//! its own circuit breaker. Reads go to the active vault and fail over in priority order;
//! writes go only to the writable primary and are refused at once, nothing sent, while the
//! client is on a read-only secondary. Every value read is kept as last-known-good and served,
//! marked stale with its age, when no vault can answer, up to a staleness cap. A 429 is
//! throttling, not an outage: the vault's `Retry-After` is honoured and reads spill to the next
//! region without touching its breaker.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use keyvault_failover::{store::MemoryStore, Access, Config, FailoverClient};
//!
//! let config = Config::builder()
//!     .region("weu", "https://app-weu.vault.azure.net", Access::ReadWrite)
//!     .region("neu", "https://app-neu.vault.azure.net", Access::ReadOnly)
//!     .build()?;
//! let (weu, neu) = (Arc::new(MemoryStore::new("weu")), Arc::new(MemoryStore::new("neu")));
//! let client = FailoverClient::builder(config)
//!     .store("weu", weu)
//!     .store("neu", neu)
//!     .build()?;
//! client.set_secret("db-password", "hunter2".to_string().into()).await?;
//! let secret = client.get_secret("db-password").await?;
//! assert_eq!(secret.expose(), "hunter2");
//! assert_eq!(client.health().active(), Some("weu"));
//! # Ok::<(), keyvault_failover::Error>(())
//! # }).unwrap();
//! ```
//!
//! The vaults are reached through the [`SecretStore`] trait. [`store::MemoryStore`] is an
//! in-process vault with scriptable faults for tests and the simulator.
//!
//! Time is read only through `tokio::time`, so the same code runs in production, under tokio's
//! paused clock in tests (`run_virtual`, feature `test-util`), and in the deterministic
//! simulator (the `keyvault-failover-sim` package of this workspace).
//!
//! # Features
//!
//! | feature | what it adds | on by default |
//! |---|---|---|
//! | `azure` | the Azure backend (`azure` module: `azure_security_keyvault_secrets`, `azure_identity`) | yes |
//! | `otel` | metrics through the OpenTelemetry API (meter `keyvault-failover`) | yes |
//! | `snapshot` | sealed last-known-good snapshots (`Snapshot`, AES-256-GCM through aws-lc-rs) | no |
//! | `test-util` | `run_virtual`: the client on tokio's paused clock (breakers included) | no |
//!
//! An embedder writes `default-features = false, features = ["azure"]`: the client, the
//! `SecretStore` trait, `MemoryStore` and the Azure backend, nothing else. The tools (the
//! emulator, the simulator, the bench, the agent and the `keyvault-failover` command) are
//! packages of their own in this workspace, built on this library.
#![deny(missing_docs)]

/// Locks `m`, going on through poisoning: every guarded value here stays consistent when a
/// holder panics (counters, logs, maps written in one step).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

mod breaker;
mod cache;
mod client;
mod clock;
mod config;
mod engine;
mod error;
mod events;
mod metrics;
mod name;
mod router;
mod secret;
mod vault;

#[cfg(feature = "azure")]
pub mod azure;
#[cfg(feature = "events")]
pub mod changes;
pub mod files;
pub mod replicate;
#[cfg(feature = "snapshot")]
pub mod snapshot;
pub mod store;

#[cfg(feature = "test-util")]
pub use clock::run_virtual;
#[cfg(feature = "snapshot")]
pub use snapshot::{Snapshot, SnapshotBuilder};

pub use breaker::BreakerState;
pub use client::{
    FailoverClient, FailoverClientBuilder, Health, HealthState, ReadOptions, RegionHealth,
};
pub use config::{Access, Config, ConfigBuilder, CredentialKind, Region};
pub use engine::notify::Notified;
pub use error::{Attempt, AttemptFailure, Error, StoreError, StoreErrorKind, MAX_MESSAGE_LEN};
pub use events::Event;
pub use keyvault_failover_core::retry_after::{parse_retry_after, parse_retry_after_ms};
pub use name::{SecretName, MAX_NAME_LEN};
pub use router::Mode;
pub use secret::{
    Freshness, Metadata, Properties, PropertiesUpdate, Secret, SecretProperties, StoredSecret,
    Written, MAX_VALUE_LEN,
};
pub use store::SecretStore;
pub use vault::LatencySummary;

#[cfg(all(doctest, feature = "test-util", feature = "azure"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
