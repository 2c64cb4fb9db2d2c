//! Scenario files: regions, workload, fault timeline, fleet size, client settings.
//!
//! The format is documented in `simulations/README.md`; every shipped scenario is embedded in
//! the binary ([`Scenario::builtin`]) so `simulate` works from any directory.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use keyvault_failover::{Access, Config};

/// The shipped scenarios: `(name, TOML)`. The first is the default.
const BUILTIN: &[(&str, &str)] = &[
    (
        "regional-outage",
        include_str!("../../../simulations/regional-outage.toml"),
    ),
    (
        "brownout",
        include_str!("../../../simulations/brownout.toml"),
    ),
    (
        "throttling-storm",
        include_str!("../../../simulations/throttling-storm.toml"),
    ),
    (
        "flapping-primary",
        include_str!("../../../simulations/flapping-primary.toml"),
    ),
    (
        "total-outage",
        include_str!("../../../simulations/total-outage.toml"),
    ),
    (
        "rotation-during-outage",
        include_str!("../../../simulations/rotation-during-outage.toml"),
    ),
    (
        "short-total-outage",
        include_str!("../../../simulations/short-total-outage.toml"),
    ),
    (
        "partial-outage",
        include_str!("../../../simulations/partial-outage.toml"),
    ),
    (
        "grey-failure",
        include_str!("../../../simulations/grey-failure.toml"),
    ),
    (
        "replication-lag",
        include_str!("../../../simulations/replication-lag.toml"),
    ),
    (
        "replicator-rotation-outage",
        include_str!("../../../simulations/replicator-rotation-outage.toml"),
    ),
    (
        "no-replicator-rotation-outage",
        include_str!("../../../simulations/no-replicator-rotation-outage.toml"),
    ),
    (
        "fleet-cold-start",
        include_str!("../../../simulations/fleet-cold-start.toml"),
    ),
    (
        "fleet-10k-cold-start",
        include_str!("../../../simulations/fleet-10k-cold-start.toml"),
    ),
    (
        "fleet-10k-regional-outage",
        include_str!("../../../simulations/fleet-10k-regional-outage.toml"),
    ),
    (
        "fleet-10k-rotation-storm",
        include_str!("../../../simulations/fleet-10k-rotation-storm.toml"),
    ),
    (
        "fleet-10k-node-agents",
        include_str!("../../../simulations/fleet-10k-node-agents.toml"),
    ),
    (
        "fleet-10k-rotation-events",
        include_str!("../../../simulations/fleet-10k-rotation-events.toml"),
    ),
    (
        "fleet-10k-rotation-events-lossy",
        include_str!("../../../simulations/fleet-10k-rotation-events-lossy.toml"),
    ),
];

/// A simulation scenario, read from TOML.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) description: String,
    #[serde(default = "one")]
    pub(crate) seed: u64,
    #[serde(with = "humantime_serde")]
    pub(crate) duration: Duration,
    pub(crate) regions: Vec<SimRegion>,
    pub(crate) workload: Workload,
    #[serde(default)]
    pub(crate) faults: Vec<FaultSpec>,
    #[serde(default)]
    pub(crate) fleet: Fleet,
    #[serde(default)]
    pub(crate) baselines: Baselines,
    /// Key Vault's change events delivered to every client instance (none by default).
    #[serde(default)]
    pub(crate) events: Option<EventChannel>,
    /// The project's replicator keeping the secondaries in step (none by default: the
    /// secondaries get the primary's changes after their `replication_delay`, or never).
    #[serde(default)]
    pub(crate) replicator: Option<ReplicatorSpec>,
    /// Client settings in the configuration file's format, without `regions` (they come from
    /// the scenario's regions).
    #[serde(default)]
    pub(crate) client: toml::Table,
    /// Deliberate breakage, to prove each invariant check can fail. Not for real scenarios.
    #[serde(default)]
    pub(crate) broken: Broken,
}

fn one() -> u64 {
    1
}

/// One simulated regional vault.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SimRegion {
    pub(crate) name: String,
    pub(crate) access: Access,
    /// Latency of an answered call: log-normal with this median and 99th percentile.
    #[serde(with = "humantime_serde")]
    pub(crate) latency_median: Duration,
    #[serde(with = "humantime_serde")]
    pub(crate) latency_p99: Duration,
    /// Secret GETs the vault allows per 10 s before answering 429.
    #[serde(default = "limit")]
    pub(crate) limit: u32,
    /// How long a write or rotation made in the primary takes to reach this region (Key
    /// Vault's own replication to the paired region); zero for the primary.
    #[serde(default, with = "humantime_serde")]
    pub(crate) replication_delay: Duration,
    /// The last this many secrets of the working set were created in the primary just before
    /// the run and reach this region only `replication_delay` after it starts.
    #[serde(default)]
    pub(crate) unreplicated: u32,
}

fn limit() -> u32 {
    4000
}

/// What each client instance does.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Workload {
    /// Reads per second per instance, open loop (a slow read never delays the next).
    pub(crate) reads_per_sec: f64,
    /// Distinct secrets read (`secret-0` …), uniformly.
    pub(crate) secrets: u32,
    /// One write (to the writable vault) every this often per instance; none when absent.
    #[serde(default, with = "humantime_serde")]
    pub(crate) write_every: Option<Duration>,
    /// Secret rotations: a new version appears in every vault at once.
    #[serde(default)]
    pub(crate) rotations: Vec<Rotation>,
    /// Instances start uniformly spread over this window (fleet cold start).
    #[serde(default, with = "humantime_serde")]
    pub(crate) start_spread: Duration,
    /// Instances load every secret at start (`preload`) before serving.
    #[serde(default)]
    pub(crate) preload: bool,
}

/// One rotation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Rotation {
    #[serde(with = "humantime_serde")]
    pub(crate) at: Duration,
    /// Index of the secret rotated (`secret-<n>`).
    pub(crate) secret: u32,
}

/// A fault on one region over `[start, end)`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FaultSpec {
    pub(crate) region: String,
    pub(crate) kind: FaultKind,
    #[serde(with = "humantime_serde")]
    pub(crate) start: Duration,
    #[serde(with = "humantime_serde")]
    pub(crate) end: Duration,
    /// `brownout`: extra latency of every answer.
    #[serde(default, with = "humantime_serde")]
    pub(crate) latency: Option<Duration>,
    /// `errors`, `brownout`: share of calls that fail with 503. `throttle`: share answered 429.
    #[serde(default)]
    pub(crate) rate: Option<f64>,
    /// `throttle`: the `Retry-After` sent.
    #[serde(default, with = "humantime_serde")]
    pub(crate) retry_after: Option<Duration>,
    /// `flapping`: the vault is down for `period`, up for `period`, and so on.
    #[serde(default, with = "humantime_serde")]
    pub(crate) period: Option<Duration>,
    /// The operations the fault hits; every operation when empty.
    #[serde(default)]
    pub(crate) ops: Vec<Op>,
}

/// An operation a fault can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Op {
    /// Every secret GET, a health probe's GET included (the vault cannot tell them apart).
    Get,
    /// Every listing, a health probe's listing included.
    List,
    /// Secret writes.
    Set,
    /// Secret deletes.
    Delete,
    /// Health probes only, whatever they call.
    Probe,
}

impl FaultSpec {
    /// Whether the fault hits `op` (`probe`: the call is a health probe).
    pub(crate) fn hits(&self, op: Op, probe: bool) -> bool {
        self.ops.is_empty() || self.ops.contains(&op) || (probe && self.ops.contains(&Op::Probe))
    }
}

/// Kinds of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum FaultKind {
    /// Connections refused.
    Outage,
    /// Connections accepted, never answered.
    Blackhole,
    /// Slow answers (`latency`), optionally some 503s (`rate`).
    Brownout,
    /// A share (`rate`) of calls fail with 503.
    Errors,
    /// 429 storm: a share (`rate`, default all) of GETs answered 429 with `retry_after`.
    Throttle,
    /// Down (refusing) and up in turns of `period`.
    Flapping,
    /// Managed failover: the vault serves reads and refuses writes (403).
    ReadOnly,
}

/// The path from the primary's rotations to each client instance as change hints
/// (`FailoverClient::notify_changed`): Event Grid's delivery, with its delay, losses,
/// duplicates and the reordering random delays make. A vault's events come from its region:
/// a rotation while the primary's region is down raises none.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventChannel {
    /// Median delivery delay; each delivery takes 0.5 to 1.5 times it.
    #[serde(with = "humantime_serde")]
    pub(crate) delay: Duration,
    /// Share of deliveries lost (0..=1).
    #[serde(default)]
    pub(crate) loss: f64,
    /// Share of deliveries sent twice (0..=1).
    #[serde(default)]
    pub(crate) duplicates: f64,
}

/// The replicator (`keyvault_failover::replicate::Replicator`, the library's) copying the
/// primary into every secondary, one pass per `interval`; the vaults' faults apply to its
/// calls as to the clients'. With it, a rotation reaches a secondary only through it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReplicatorSpec {
    /// Time between passes (the first at `interval` after the start).
    #[serde(with = "humantime_serde")]
    pub(crate) interval: Duration,
    /// Writes per 10 s a secondary allows (Key Vault: 300).
    #[serde(default = "write_limit")]
    pub(crate) write_limit: u32,
    /// Share of each vault's limits the replicator takes (default 0.8).
    #[serde(default = "budget_fraction")]
    pub(crate) budget_fraction: f64,
}

fn write_limit() -> u32 {
    300
}

fn budget_fraction() -> f64 {
    0.8
}

/// How many client instances share the vaults, and how they are deployed: each process with
/// its own client (`processes_per_agent = 1`, the default), or N processes on a node reading
/// through one agent (one client per node; each read pays the loopback hop, `agent_hop`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Fleet {
    /// Processes reading secrets (with agents: all nodes' processes).
    pub(crate) instances: u32,
    #[serde(default = "one_process")]
    pub(crate) processes_per_agent: u32,
    /// One read's round trip to the node's agent (default 100 µs: the agent bench measures
    /// about 47 µs of CPU per read, HTTP on both ends).
    #[serde(default = "agent_hop", with = "humantime_serde")]
    pub(crate) agent_hop: Duration,
}

fn one_process() -> u32 {
    1
}

fn agent_hop() -> Duration {
    Duration::from_micros(100)
}

impl Default for Fleet {
    fn default() -> Self {
        Fleet {
            instances: 1,
            processes_per_agent: 1,
            agent_hop: agent_hop(),
        }
    }
}

impl Fleet {
    /// Client instances: one per process, or one per node's agent.
    pub(crate) fn clients(&self) -> u32 {
        self.instances / self.processes_per_agent.max(1)
    }
}

/// Which baselines run beside the client, on the same timeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Baselines {
    /// The plain SDK: one vault, no cache, the SDK's default retry policy.
    #[serde(default = "yes")]
    pub(crate) sdk: bool,
    /// The plain SDK with each read cut at the client's `timeouts.deadline`.
    #[serde(default = "yes")]
    pub(crate) sdk_at_deadline: bool,
    /// Cache-aside with this fixed TTL in front of the plain SDK; none when absent.
    #[serde(default = "five_minutes", with = "humantime_serde")]
    pub(crate) cache_aside_ttl: Option<Duration>,
    /// App Service Key Vault references: fetched once, refreshed every 24 h.
    #[serde(default = "yes")]
    pub(crate) app_service: bool,
}

fn yes() -> bool {
    true
}

#[allow(clippy::unnecessary_wraps)] // serde default for an Option field
fn five_minutes() -> Option<Duration> {
    Some(Duration::from_secs(300))
}

impl Default for Baselines {
    fn default() -> Self {
        Baselines {
            sdk: true,
            sdk_at_deadline: true,
            cache_aside_ttl: five_minutes(),
            app_service: true,
        }
    }
}

/// Deliberate breakage for testing the invariant checks.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Broken {
    /// Tell the client every region is writable (the vaults still are not).
    #[serde(default)]
    pub(crate) secondaries_writable: bool,
    /// Configure the client's staleness cap this many times the scenario's cap.
    #[serde(default)]
    pub(crate) cap_factor: Option<u32>,
    /// Wire the client so that every call to a secondary also calls the primary, whatever
    /// the primary's breaker says.
    #[serde(default)]
    pub(crate) bypass_breaker: bool,
}

impl Scenario {
    /// Parses and validates a scenario.
    ///
    /// # Errors
    /// [`Error::is_config`] with what is wrong and where.
    pub fn from_toml(text: &str) -> Result<Scenario, Error> {
        let s: Scenario =
            toml::from_str(text).map_err(|e| Error::config(format!("invalid scenario: {e}")))?;
        s.validate()?;
        Ok(s)
    }

    /// A shipped scenario by name (see [`Scenario::builtin_names`]).
    ///
    /// # Errors
    /// [`Error::is_config`] naming the scenarios that exist.
    pub fn builtin(name: &str) -> Result<Scenario, Error> {
        let (_, text) = BUILTIN.iter().find(|(n, _)| *n == name).ok_or_else(|| {
            Error::config(format!(
                "no scenario {name:?}; shipped: {}",
                Self::builtin_names().join(", ")
            ))
        })?;
        Self::from_toml(text)
    }

    /// Names of the shipped scenarios; the first is the default.
    pub fn builtin_names() -> Vec<&'static str> {
        BUILTIN.iter().map(|(n, _)| *n).collect()
    }

    /// The scenario's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The seed of every random draw.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Simulated time.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// Client instances sharing the vaults.
    pub fn instances(&self) -> u32 {
        self.fleet.instances
    }

    /// The same scenario with another seed.
    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The same scenario over another duration (faults and rotations past it never happen).
    ///
    /// # Errors
    /// When `duration` is zero.
    pub fn with_duration(mut self, duration: Duration) -> Result<Self, Error> {
        self.duration = duration;
        self.validate()?;
        Ok(self)
    }

    /// The same scenario with `instances` client instances sharing the vaults.
    ///
    /// # Errors
    /// When `instances` is zero or more than the scenario format allows.
    pub fn with_instances(mut self, instances: u32) -> Result<Self, Error> {
        self.fleet.instances = instances;
        self.validate()?;
        Ok(self)
    }

    /// The staleness cap the client runs with (the invariant's bound).
    pub(crate) fn staleness_cap(&self) -> Duration {
        self.client_config(0, false)
            .map(|c| c.default_staleness_cap())
            .unwrap_or(Duration::from_secs(86_400))
    }

    /// The client's per-read deadline (`timeouts.deadline`).
    pub(crate) fn client_deadline(&self) -> Duration {
        self.client_config(0, false)
            .map(|c| c.deadline())
            .unwrap_or(Duration::from_secs(6))
    }

    /// The client configuration of instance `i`, built from the scenario's regions and its
    /// `[client]` table. `broken` applies the deliberate breakage.
    pub(crate) fn client_config(&self, instance: u32, broken: bool) -> Result<Config, Error> {
        let mut t = self.client.clone();
        let writable_all = broken && self.broken.secondaries_writable;
        let regions: Vec<toml::Value> = self
            .regions
            .iter()
            .map(|r| {
                let mut m = toml::Table::new();
                m.insert("name".into(), r.name.clone().into());
                m.insert(
                    "url".into(),
                    format!("https://app-{}.vault.azure.net", r.name).into(),
                );
                let access = if writable_all || r.access == Access::ReadWrite {
                    "read-write"
                } else {
                    "read-only"
                };
                m.insert("access".into(), access.into());
                toml::Value::Table(m)
            })
            .collect();
        t.insert("regions".into(), toml::Value::Array(regions));
        if writable_all {
            t.insert("allow_multiple_writable".into(), true.into());
        }
        let breaker = t
            .entry("breaker")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(b) = breaker {
            let seed = self
                .seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(u64::from(instance)) as i64;
            b.insert("seed".into(), toml::Value::Integer(seed & i64::MAX));
        }
        let parse = |t: &toml::Table| {
            let text = toml::to_string(t)
                .map_err(|e| Error::config(format!("scenario [client] table: {e}")))?;
            Config::from_toml(&text).map_err(|e| Error::config(format!("scenario [client]: {e}")))
        };
        let config = parse(&t)?;
        match self.broken.cap_factor {
            Some(f) if broken => {
                // The deliberate breakage: the client runs with a longer cap than the
                // scenario's invariant allows.
                let cap = config.default_staleness_cap().saturating_mul(f.max(1));
                let cache = t
                    .entry("cache")
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                if let toml::Value::Table(c) = cache {
                    let cap = humantime::format_duration(cap).to_string();
                    c.insert("staleness_cap".into(), cap.into());
                }
                parse(&t)
            }
            _ => Ok(config),
        }
    }

    fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::config(format!("scenario {:?}: {m}", self.name)));
        if self.name.is_empty() {
            return bad("name is empty".into());
        }
        if self.duration.is_zero() || self.duration > Duration::from_secs(7 * 86_400) {
            return bad("duration must be between 1 s and 7 days".into());
        }
        if self.regions.is_empty() {
            return bad("no regions".into());
        }
        let mut names = BTreeSet::new();
        for r in &self.regions {
            if !names.insert(r.name.as_str()) {
                return bad(format!("region {:?} twice", r.name));
            }
            if r.latency_median.is_zero() || r.latency_p99 < r.latency_median {
                return bad(format!(
                    "region {:?}: latency_median must be > 0 and <= latency_p99",
                    r.name
                ));
            }
            if r.limit == 0 {
                return bad(format!("region {:?}: limit must be > 0", r.name));
            }
            if r.replication_delay > self.duration.saturating_mul(2) {
                return bad(format!(
                    "region {:?}: replication_delay is longer than twice the run",
                    r.name
                ));
            }
            if r.unreplicated > self.workload.secrets {
                return bad(format!(
                    "region {:?}: unreplicated {} of {} secrets",
                    r.name, r.unreplicated, self.workload.secrets
                ));
            }
        }
        if self.regions[0].access != Access::ReadWrite {
            return bad("the first region (the primary) must be read-write".into());
        }
        if !self.regions[0].replication_delay.is_zero() || self.regions[0].unreplicated > 0 {
            return bad("the primary is where writes land: it has no replication_delay".into());
        }
        let w = &self.workload;
        if !(w.reads_per_sec > 0.0 && w.reads_per_sec <= 10_000.0) {
            return bad("workload.reads_per_sec must be in (0, 10000]".into());
        }
        if w.secrets == 0 || w.secrets > 100_000 {
            return bad("workload.secrets must be in 1..=100000".into());
        }
        if w.write_every.is_some_and(|d| d < Duration::from_millis(10)) {
            return bad("workload.write_every must be at least 10ms".into());
        }
        for r in &w.rotations {
            if r.secret >= w.secrets {
                return bad(format!("rotation of secret {} of {}", r.secret, w.secrets));
            }
        }
        if self.fleet.instances == 0 || self.fleet.instances > 10_000 {
            return bad("fleet.instances must be in 1..=10000".into());
        }
        let ppa = self.fleet.processes_per_agent;
        if ppa == 0 || ppa > 1000 || !self.fleet.instances.is_multiple_of(ppa) {
            return bad(format!(
                "fleet.processes_per_agent must be in 1..=1000 and divide fleet.instances \
                 ({ppa} and {})",
                self.fleet.instances
            ));
        }
        if let Some(e) = &self.events {
            if e.delay > Duration::from_secs(3600)
                || !(0.0..=1.0).contains(&e.loss)
                || !(0.0..=1.0).contains(&e.duplicates)
            {
                return bad("events: delay at most 1h, loss and duplicates in 0..=1".into());
            }
        }
        if let Some(r) = &self.replicator {
            if r.interval < Duration::from_secs(1) || r.interval > Duration::from_secs(24 * 3600) {
                return bad("replicator.interval must be 1s to 24h".into());
            }
            if !(r.budget_fraction > 0.0 && r.budget_fraction <= 1.0) || r.write_limit == 0 {
                return bad("replicator: budget_fraction in (0, 1], write_limit above 0".into());
            }
            if self.regions.len() < 2 || self.regions.iter().any(|r| !r.replication_delay.is_zero())
            {
                return bad(
                    "replicator: needs a secondary, and replaces replication_delay (set none)"
                        .into(),
                );
            }
        }
        if self.fleet.agent_hop > Duration::from_secs(1) {
            return bad("fleet.agent_hop must be at most 1s".into());
        }
        let reads = w.reads_per_sec * self.duration.as_secs_f64() * f64::from(self.fleet.instances);
        if reads > 50_000_000.0 {
            return bad(format!(
                "{reads:.0} reads in all: more than the 50 million a run is bounded to"
            ));
        }
        for f in &self.faults {
            let at = format!("fault {:?} on {:?}", f.kind, f.region);
            if !names.contains(f.region.as_str()) {
                return bad(format!("{at}: no such region"));
            }
            if f.end <= f.start {
                return bad(format!("{at}: end must be after start"));
            }
            if f.rate.is_some_and(|r| !(0.0..=1.0).contains(&r)) {
                return bad(format!("{at}: rate must be in [0, 1]"));
            }
            let need = |what: &str, ok: bool| {
                if ok {
                    Ok(())
                } else {
                    bad(format!("{at}: needs {what}"))
                }
            };
            match f.kind {
                FaultKind::Brownout => need("latency", f.latency.is_some())?,
                FaultKind::Errors => need("rate", f.rate.is_some())?,
                FaultKind::Throttle => need("retry_after", f.retry_after.is_some())?,
                FaultKind::Flapping => {
                    need("a non-zero period", f.period.is_some_and(|p| !p.is_zero()))?
                }
                _ => {}
            }
        }
        if self.baselines.cache_aside_ttl.is_some_and(|t| t.is_zero()) {
            return bad("baselines.cache_aside_ttl must be > 0".into());
        }
        self.client_config(0, true)?;
        Ok(())
    }
}
