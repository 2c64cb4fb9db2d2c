//! Replication: keeps every secondary vault holding the primary's latest version of each
//! secret (value, content type, tags, `enabled`, `exp`, `nbf`).
//!
//! Customer-managed multi-region Key Vault is separate vaults that the customer keeps in step;
//! [`Replicator`] does the keeping. It compares the vaults' listings first (a run over vaults in
//! step reads no value and writes nothing), writes a secondary only where it differs, stamps
//! each copy with its provenance ([`PROVENANCE_TAG`]: source created time, version id and
//! region, never anything derived from the value) and never sends the primary anything but
//! listings and reads: the primary is held behind a read-only view. Writes keep within each
//! secondary's write budget (Key Vault's 300 per 10 s times `throttle.budget_fraction`),
//! `Retry-After` is obeyed (capped), transient failures are retried with backoff. Each change is
//! one call (a new version, a property update, a soft delete), so an interrupted run leaves
//! nothing half-done: the next run plans from the listings again and finishes it.
//!
//! ```
//! # keyvault_failover::run_virtual(async {
//! use std::sync::Arc;
//! use keyvault_failover::replicate::{Replicator, Step};
//! use keyvault_failover::store::MemoryStore;
//! use secrecy::ExposeSecret;
//!
//! let weu = Arc::new(MemoryStore::new("weu"));
//! let neu = Arc::new(MemoryStore::new("neu"));
//! weu.insert("db-password", "s3cret");
//! let replicator = Replicator::builder()
//!     .primary("weu", weu.clone())
//!     .secondary("neu", neu.clone())
//!     .build()
//!     .unwrap();
//! let plan = replicator.plan().await.unwrap();
//! assert_eq!(plan.secondaries()[0].steps()[0].step().label(), "copy");
//! let report = replicator.run(&plan, &|_, _| {}).await;
//! assert!(report.in_step());
//! assert_eq!(neu.current("db-password").unwrap().1.expose_secret(), "s3cret");
//! // The next run writes nothing (copied within the second its source was created, the copy
//! // is checked by one read of the primary's version id; later runs only list).
//! let again = replicator.plan().await.unwrap();
//! assert!(matches!(again.secondaries()[0].steps()[0].step(), Step::InStep | Step::Check));
//! let report = replicator.run(&again, &|_, _| {}).await;
//! assert_eq!(report.calls().writes(), 0);
//! # }).unwrap();
//! ```

mod budget;
mod item;
mod metrics;
mod plan;
mod report;
mod run;
mod seal;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use secrecy::SecretString;

pub use item::{
    ordering_time, Listed, Properties, Provenance, ReadVersion, MAX_CLOCK_SKEW,
    MAX_CONTENT_TYPE_LEN, MAX_TAGS, MAX_TAG_NAME_LEN, MAX_TAG_VALUE_LEN, PROVENANCE_TAG,
};
pub use plan::{CopyReason, Filter, Planned, SkipReason, Step, UpdateReason, SETTLE_SECS};
pub use report::{Calls, Outcome, OutcomeKind, Report, SecondaryReport};
pub use seal::{MacKey, MIN_MAC_KEY_LEN};

use crate::error::{Error, StoreError};
use crate::name::SecretName;

/// What the replicator needs of a vault, beyond what readers need.
///
/// One attempt per call: the replicator retries, times out and paces. Times are unix seconds.
#[async_trait]
pub trait ReplicaStore: Send + Sync + 'static {
    /// Every secret's current properties, with `created` and `managed` (no values).
    async fn list_items(&self) -> Result<Vec<Listed>, StoreError>;
    /// The latest version of `name` with its value and properties.
    async fn read(&self, name: &SecretName) -> Result<ReadVersion, StoreError>;
    /// Writes a new version of `name`; returns its version id. A soft-deleted name answers
    /// `Rejected { status: 409 }`.
    async fn write(
        &self,
        name: &SecretName,
        value: &SecretString,
        properties: &Properties,
    ) -> Result<String, StoreError>;
    /// Sets the properties of `name`'s latest version (no new version).
    async fn update(&self, name: &SecretName, properties: &Properties) -> Result<(), StoreError>;
    /// Soft-deletes `name` (recoverable; never purged by the replicator).
    async fn soft_delete(&self, name: &SecretName) -> Result<(), StoreError>;
    /// Recovers a soft-deleted `name`.
    async fn recover(&self, name: &SecretName) -> Result<(), StoreError>;
}

/// Which of `config`'s regions is the replicator's source: the one region that is
/// `read-write`, wherever it stands in the list. A file with none, or with more than one, is
/// refused: taking the first region whatever its access, a file that listed a read-only copy
/// first had that stale copy compared and written over the writable vault.
///
/// ```
/// use keyvault_failover::{replicate, Access, Config};
/// let config = Config::builder()
///     .region("neu", "https://app-neu.vault.azure.net", Access::ReadOnly)
///     .region("weu", "https://app-weu.vault.azure.net", Access::ReadWrite)
///     .build()
///     .unwrap();
/// assert_eq!(replicate::primary_index(&config).unwrap(), 1);
/// ```
pub fn primary_index(config: &crate::Config) -> Result<usize, Error> {
    let writable: Vec<usize> = config
        .regions()
        .iter()
        .enumerate()
        .filter(|(_, r)| r.access() == crate::Access::ReadWrite)
        .map(|(i, _)| i)
        .collect();
    match writable[..] {
        [i] => Ok(i),
        [] => Err(Error::config(
            "no region is read-write: the replicator copies from the one read-write region              (the primary) into the read-only ones",
        )),
        _ => {
            let names: Vec<&str> = writable
                .iter()
                .map(|&i| config.regions()[i].name())
                .collect();
            Err(Error::config(format!(
                "{} regions are read-write ({}): the replicator copies from exactly one                  read-write region (the primary); mark the others read-only",
                names.len(),
                names.join(", ")
            )))
        }
    }
}

/// The primary as the replicator holds it: listings and reads, nothing else.
struct ReadOnly(Arc<dyn ReplicaStore>);

impl ReadOnly {
    async fn list_items(&self) -> Result<Vec<Listed>, StoreError> {
        self.0.list_items().await
    }
    async fn read(&self, name: &SecretName) -> Result<ReadVersion, StoreError> {
        self.0.read(name).await
    }
}

/// Configures a [`Replicator`].
#[must_use]
pub struct ReplicatorBuilder {
    primary: Option<(String, Arc<dyn ReplicaStore>)>,
    secondaries: Vec<(String, Arc<dyn ReplicaStore>)>,
    filter: Filter,
    prune: bool,
    max_prune_share: f64,
    write_limit: u32,
    read_limit: u32,
    window: Duration,
    budget_fraction: f64,
    concurrency: usize,
    attempt_timeout: Duration,
    list_timeout: Duration,
    max_retry_after: Duration,
    default_retry_after: Duration,
    seed: u64,
    wall_clock: WallClock,
    mac_key: Option<MacKey>,
    deep: bool,
}

/// The wall clock a replicator stamps its reads with (see [`ReplicatorBuilder::wall_clock`]).
pub type WallClock = Arc<dyn Fn() -> std::time::SystemTime + Send + Sync>;

impl ReplicatorBuilder {
    /// The vault copied from (never written).
    pub fn primary(mut self, region: &str, store: Arc<dyn ReplicaStore>) -> Self {
        self.primary = Some((region.to_string(), store));
        self
    }
    /// A vault kept in step with the primary.
    pub fn secondary(mut self, region: &str, store: Arc<dyn ReplicaStore>) -> Self {
        self.secondaries.push((region.to_string(), store));
        self
    }
    /// Which names a run covers (default: all).
    pub fn filter(mut self, filter: Filter) -> Self {
        self.filter = filter;
        self
    }
    /// Soft-delete copies whose source the primary no longer has (default: report them).
    /// Needs a [`mac_key`](Self::mac_key): only copies whose MAC matches are pruned.
    pub fn prune(mut self, prune: bool) -> Self {
        self.prune = prune;
        self
    }
    /// The prune guard: a pass that would soft-delete more than this share of a secondary's
    /// copies (at least one may always go), or any copy while the primary lists nothing,
    /// prunes none and says so (exit 1). `[0, 1]`, default 0.1; 1 turns the guard off.
    pub fn max_prune_share(mut self, share: f64) -> Self {
        self.max_prune_share = share;
        self
    }
    /// Each vault's limits: writes and GETs per window (Key Vault: 300 and 4,000 per 10 s),
    /// and the share of them the replicator may use (`(0, 1]`, default 0.8).
    pub fn limits(mut self, writes: u32, reads: u32, window: Duration, fraction: f64) -> Self {
        self.write_limit = writes;
        self.read_limit = reads;
        self.window = window;
        self.budget_fraction = fraction;
        self
    }
    /// Takes the limits, the attempt timeout and the `Retry-After` cap of a client
    /// configuration (`throttle.*`, `timeouts.attempt`).
    pub fn limits_from(mut self, config: &crate::Config) -> Self {
        let t = config.throttle();
        self.write_limit = t.write_limit;
        self.read_limit = t.get_limit;
        self.window = t.window;
        self.budget_fraction = t.budget_fraction;
        self.max_retry_after = t.max_retry_after;
        self.default_retry_after = t.default_retry_after;
        self.attempt_timeout = config.attempt_timeout();
        self.list_timeout = config.list_timeout();
        self
    }
    /// Calls in flight per secondary (default 8, 1 to 64).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }
    /// The timeout of one call (default 10 s).
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }
    /// The timeout of one whole listing, every page (default 5 min, as `timeouts.list`). Each
    /// page is bounded by the store's own per-request timeout (the HTTP client's: the attempt
    /// timeout for the Azure stores). With the attempt timeout on the whole listing, a vault
    /// whose listing takes longer than one attempt (12 pages of 250 ms against 2 s) could
    /// never be replicated: every pass failed "timed out".
    pub fn list_timeout(mut self, timeout: Duration) -> Self {
        self.list_timeout = timeout;
        self
    }
    /// The wall clock that dates each read of the primary in a copy's provenance (default:
    /// the system's). It must agree with the vaults' clock to within a second; the simulator
    /// gives its virtual one.
    pub fn wall_clock(mut self, now: WallClock) -> Self {
        self.wall_clock = now;
        self
    }
    /// Seal every copy's provenance with a keyed MAC over its value (see [`MacKey`]), and
    /// prune only copies whose MAC matches their value (default: no key, and no pruning; the
    /// provenance tag's region says which copies a disable reaches).
    pub fn mac_key(mut self, key: MacKey) -> Self {
        self.mac_key = Some(key);
        self
    }
    /// Deep passes (see [`Replicator::set_deep`]) from the start (default: off).
    pub fn deep(mut self, deep: bool) -> Self {
        self.deep = deep;
        self
    }
    /// The seed of the backoff jitter (default: from the process's RNG).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Validates and builds.
    pub fn build(self) -> Result<Replicator, Error> {
        let (primary_region, primary) = self
            .primary
            .ok_or_else(|| Error::config("replication needs a primary"))?;
        if self.secondaries.is_empty() {
            return Err(Error::config("replication needs at least one secondary"));
        }
        let mut seen = vec![primary_region.to_ascii_lowercase()];
        for (r, _) in &self.secondaries {
            if seen.contains(&r.to_ascii_lowercase()) {
                return Err(Error::config(format!("region {r:?} appears twice")));
            }
            seen.push(r.to_ascii_lowercase());
        }
        if !(self.budget_fraction > 0.0 && self.budget_fraction <= 1.0) {
            return Err(Error::config(format!(
                "budget fraction {} must be in (0, 1]",
                self.budget_fraction
            )));
        }
        let share =
            |limit: u32| ((f64::from(limit) * self.budget_fraction).floor() as usize).max(1);
        if self.write_limit == 0 || self.read_limit == 0 || self.window.is_zero() {
            return Err(Error::config("limits and their window must be above zero"));
        }
        if !(1..=64).contains(&self.concurrency) {
            return Err(Error::config(format!(
                "concurrency {} must be 1 to 64",
                self.concurrency
            )));
        }
        if self.prune && self.mac_key.is_none() {
            return Err(Error::config(
                "pruning needs a provenance MAC key (mac_key, replicate --mac-key-file): only a \
                 copy the replicator can prove it wrote is soft-deleted, and a tag alone proves \
                 nothing",
            ));
        }
        if !(0.0..=1.0).contains(&self.max_prune_share) {
            return Err(Error::config(format!(
                "max prune share {} must be 0 to 1",
                self.max_prune_share
            )));
        }
        if self.attempt_timeout.is_zero() || self.attempt_timeout > Duration::from_secs(300) {
            return Err(Error::config("the attempt timeout must be in (0, 5 min]"));
        }
        if self.list_timeout < self.attempt_timeout || self.list_timeout > Duration::from_secs(3600)
        {
            return Err(Error::config(
                "the list timeout must be at least the attempt timeout and at most an hour",
            ));
        }
        Ok(Replicator {
            primary_region,
            primary: ReadOnly(primary),
            secondaries: self.secondaries,
            filter: self.filter,
            prune: self.prune,
            max_prune_share: self.max_prune_share,
            writes_per_window: share(self.write_limit),
            reads_per_window: share(self.read_limit),
            window: self.window,
            concurrency: self.concurrency,
            attempt_timeout: self.attempt_timeout,
            list_timeout: self.list_timeout,
            max_retry_after: self.max_retry_after,
            default_retry_after: self.default_retry_after,
            seed: self.seed,
            wall_clock: self.wall_clock,
            mac_key: self.mac_key,
            deep: std::sync::atomic::AtomicBool::new(self.deep),
            metrics: metrics::ReplicateMetrics::new(),
        })
    }
}

/// Copies the primary's secrets into each secondary. See the [module](self) docs.
pub struct Replicator {
    primary_region: String,
    primary: ReadOnly,
    secondaries: Vec<(String, Arc<dyn ReplicaStore>)>,
    filter: Filter,
    prune: bool,
    max_prune_share: f64,
    writes_per_window: usize,
    reads_per_window: usize,
    window: Duration,
    concurrency: usize,
    attempt_timeout: Duration,
    list_timeout: Duration,
    max_retry_after: Duration,
    default_retry_after: Duration,
    seed: u64,
    wall_clock: WallClock,
    mac_key: Option<MacKey>,
    /// Whether runs prove the copies the listings call in step (a read of each).
    deep: std::sync::atomic::AtomicBool,
    metrics: metrics::ReplicateMetrics,
}

impl std::fmt::Debug for Replicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicator")
            .field("primary", &self.primary_region)
            .field(
                "secondaries",
                &self.secondaries.iter().map(|(r, _)| r).collect::<Vec<_>>(),
            )
            .field("prune", &self.prune)
            .finish_non_exhaustive()
    }
}

impl Replicator {
    /// A builder: Key Vault's limits, 80 % of them, 8 calls in flight per secondary, 10 s per
    /// call.
    pub fn builder() -> ReplicatorBuilder {
        ReplicatorBuilder {
            primary: None,
            secondaries: Vec::new(),
            filter: Filter::all(),
            prune: false,
            max_prune_share: 0.1,
            write_limit: 300,
            read_limit: 4000,
            window: Duration::from_secs(10),
            budget_fraction: 0.8,
            concurrency: 8,
            attempt_timeout: Duration::from_secs(10),
            list_timeout: Duration::from_secs(300),
            max_retry_after: Duration::from_secs(60),
            default_retry_after: Duration::from_secs(1),
            seed: fastrand::u64(..),
            wall_clock: Arc::new(std::time::SystemTime::now),
            mac_key: None,
            deep: false,
        }
    }

    /// Makes the next runs deep, or not: a deep run also reads each copy the listings call in
    /// step and proves it the replicator's (with a MAC key, by its MAC: one read of the copy;
    /// without, by comparing its value with the primary's: two reads), and rewrites one that is
    /// not. A listing cannot show a value planted under a genuine copy's tags; a deep pass
    /// does. Costs a read per copy: run one now and then (`replicate --deep-every`).
    pub fn set_deep(&self, deep: bool) {
        self.deep.store(deep, std::sync::atomic::Ordering::Relaxed);
    }

    /// The primary's region.
    pub fn primary_region(&self) -> &str {
        &self.primary_region
    }
}

/// What a run will do: the primary's listing against each secondary's.
#[derive(Debug)]
pub struct Plan {
    primary_listed: usize,
    secondaries: Vec<SecondaryPlan>,
    calls: Calls,
}

impl Plan {
    /// Secrets the primary lists.
    pub fn primary_listed(&self) -> usize {
        self.primary_listed
    }
    /// One plan per secondary, in the order configured.
    pub fn secondaries(&self) -> &[SecondaryPlan] {
        &self.secondaries
    }
    /// The calls the plan took (listings, with their retries).
    pub fn calls(&self) -> &Calls {
        &self.calls
    }
}

/// What one secondary needs.
#[derive(Debug)]
pub struct SecondaryPlan {
    region: String,
    steps: Vec<Planned>,
    listing_error: Option<String>,
}

impl SecondaryPlan {
    /// The secondary's region.
    pub fn region(&self) -> &str {
        &self.region
    }
    /// Each name's step, in name order (empty when the listing failed).
    pub fn steps(&self) -> &[Planned] {
        &self.steps
    }
    /// Why the secondary could not be listed, if it could not.
    pub fn listing_error(&self) -> Option<&str> {
        self.listing_error.as_deref()
    }
    /// How many names take each step label, in label order.
    pub fn counts(&self) -> Vec<(&'static str, usize)> {
        let mut counts: std::collections::BTreeMap<&'static str, usize> = Default::default();
        for s in &self.steps {
            *counts.entry(s.step().label()).or_default() += 1;
        }
        counts.into_iter().collect()
    }
    /// Whether the plan has nothing to write.
    pub fn is_in_step(&self) -> bool {
        self.listing_error.is_none()
            && self.steps.iter().all(|s| match s.step() {
                Step::InStep => true,
                Step::Skip(r) => !r.is_failure(),
                _ => false,
            })
    }
}
