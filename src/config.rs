//! Configuration: the ordered regions and every tunable, with documented defaults.
//!
//! Build it in code with [`Config::builder`] or read it from TOML with [`Config::from_toml`].
//! Both end in the same validation, which returns a clear [`Error`] (`is_config()`) rather
//! than letting a bad setting surface later as an outage.
//!
//! ```
//! use keyvault_failover::Config;
//! let config = Config::from_toml(r#"
//!     [[regions]]
//!     name = "weu"
//!     url = "https://app-weu.vault.azure.net"
//!     access = "read-write"
//!
//!     [[regions]]
//!     name = "neu"
//!     url = "https://app-neu.vault.azure.net"
//!     access = "read-only"
//!
//!     [timeouts]
//!     attempt = "1500ms"
//!
//!     [cache]
//!     refresh_interval = "5m"
//!     staleness_cap = "12h"
//!     staleness_overrides = { db-password = "1h" }
//! "#).unwrap();
//! assert_eq!(config.regions().len(), 2);
//! assert!(Config::from_toml("regions = []").unwrap_err().is_config());
//! ```

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::name::SecretName;

/// Whether a region's vault takes writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// The writable primary.
    ReadWrite,
    /// A replica: reads only. Writes are never sent to it.
    ReadOnly,
}

/// One regional vault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    name: String,
    url: String,
    access: Access,
    /// Connect to this `ip:port` instead of resolving the URL's host (private endpoints,
    /// proxies, the emulator); TLS still checks the URL's host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    address: Option<std::net::SocketAddr>,
    /// This region's credential, when it differs from the client's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    credential: Option<CredentialKind>,
}

impl Region {
    /// The region's short name (`weu`, `neu`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The vault URL (`https://<vault>.vault.azure.net`).
    pub fn url(&self) -> &str {
        &self.url
    }
    /// Read-write or read-only.
    pub fn access(&self) -> Access {
        self.access
    }
    /// The address connected to instead of resolving the URL's host, if set.
    pub fn address(&self) -> Option<std::net::SocketAddr> {
        self.address
    }
    /// This region's own credential, if set (else [`Config::credential`]).
    pub fn credential(&self) -> Option<CredentialKind> {
        self.credential
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Timeouts {
    #[serde(with = "humantime_serde")]
    pub(crate) attempt: Duration,
    #[serde(with = "humantime_serde")]
    pub(crate) deadline: Duration,
    /// A whole listing (many pages, each bounded by `attempt`).
    #[serde(with = "humantime_serde")]
    pub(crate) list: Duration,
    /// A read with nothing cached, when no vault is available, waits up to its deadline for
    /// one to come back (true) or fails at once (false).
    pub(crate) wait_for_recovery: bool,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            attempt: Duration::from_secs(2),
            deadline: Duration::from_secs(6),
            list: Duration::from_secs(300),
            wait_for_recovery: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct BreakerConfig {
    pub(crate) failure_threshold: u32,
    #[serde(with = "humantime_serde")]
    pub(crate) open_base: Duration,
    #[serde(with = "humantime_serde")]
    pub(crate) open_max: Duration,
    /// The seed of every random draw of the client (breaker backoff, failback dwell, retry and
    /// refresh jitter, probe spread). Unset (the default), each client draws its own, so a
    /// fleet's processes do not share one jitter sequence; set, runs repeat (tests, simulator).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) seed: Option<u64>,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            open_base: Duration::from_secs(5),
            open_max: Duration::from_secs(60),
            seed: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RetryConfig {
    pub(crate) max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub(crate) backoff_base: Duration,
    #[serde(with = "humantime_serde")]
    pub(crate) backoff_max: Duration,
    pub(crate) budget_ratio: f64,
    pub(crate) budget_min_per_sec: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 4,
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
            budget_ratio: 0.2,
            budget_min_per_sec: 10,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct CacheConfig {
    #[serde(with = "humantime_serde")]
    pub(crate) refresh_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub(crate) staleness_cap: Duration,
    #[serde(with = "overrides")]
    pub(crate) staleness_overrides: BTreeMap<String, Duration>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            refresh_interval: Duration::from_secs(5 * 60),
            staleness_cap: Duration::from_secs(24 * 3600),
            staleness_overrides: BTreeMap::new(),
        }
    }
}

mod overrides {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        m: &BTreeMap<String, Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let m: BTreeMap<&String, String> = m
            .iter()
            .map(|(k, v)| (k, humantime::format_duration(*v).to_string()))
            .collect();
        m.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, Duration>, D::Error> {
        let raw = BTreeMap::<String, String>::deserialize(d)?;
        raw.into_iter()
            .map(|(k, v)| {
                humantime::parse_duration(&v)
                    .map(|d| (k.to_ascii_lowercase(), d))
                    .map_err(serde::de::Error::custom)
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ThrottleConfig {
    pub(crate) get_limit: u32,
    #[serde(with = "humantime_serde")]
    pub(crate) window: Duration,
    pub(crate) budget_fraction: f64,
    #[serde(with = "humantime_serde")]
    pub(crate) default_retry_after: Duration,
    /// The longest `Retry-After` honoured (a longer one is cut to this): a server must not be
    /// able to take a vault out of service for longer.
    #[serde(with = "humantime_serde")]
    pub(crate) max_retry_after: Duration,
    /// Writes (set, delete) a vault allows per window. Key Vault: 300 per 10 s.
    pub(crate) write_limit: u32,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            get_limit: 4000,
            window: Duration::from_secs(10),
            budget_fraction: 0.8,
            default_retry_after: Duration::from_secs(1),
            max_retry_after: Duration::from_secs(60),
            write_limit: 300,
        }
    }
}

impl ThrottleConfig {
    /// What a vault's `Retry-After` (or its absence) means here: capped at `max_retry_after`.
    pub(crate) fn retry_after(&self, asked: Option<Duration>) -> Duration {
        asked
            .unwrap_or(self.default_retry_after)
            .min(self.max_retry_after)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ProbeConfig {
    pub(crate) enabled: bool,
    #[serde(with = "humantime_serde")]
    pub(crate) interval: Duration,
    /// The healthy interval doubles with each round in a row that found the vault healthy,
    /// up to this (a probe is skipped while callers' calls to the vault succeed within it).
    /// At least `interval` is used.
    #[serde(with = "humantime_serde")]
    pub(crate) interval_max: Duration,
    #[serde(with = "humantime_serde")]
    pub(crate) unhealthy_interval: Duration,
    /// The unhealthy interval doubles with each failed probe in a row past
    /// `failures_to_trip`, up to this. At least
    /// `unhealthy_interval` is used.
    #[serde(with = "humantime_serde")]
    pub(crate) unhealthy_interval_max: Duration,
    #[serde(with = "humantime_serde")]
    pub(crate) timeout: Duration,
    pub(crate) jitter: f64,
    pub(crate) canary: Option<String>,
    pub(crate) failures_to_trip: u32,
    pub(crate) failback_successes: u32,
    #[serde(with = "humantime_serde")]
    pub(crate) failback_dwell: Duration,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            enabled: true,
            interval: Duration::from_secs(10),
            interval_max: Duration::from_secs(60),
            unhealthy_interval: Duration::from_secs(2),
            // Opt-in (fleets): recovery is seen within seconds by default.
            unhealthy_interval_max: Duration::from_secs(2),
            timeout: Duration::from_secs(2),
            jitter: 0.2,
            canary: None,
            failures_to_trip: 3,
            failback_successes: 3,
            failback_dwell: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct HedgeConfig {
    pub(crate) enabled: bool,
    #[serde(with = "humantime_serde")]
    pub(crate) default_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub(crate) floor: Duration,
    #[serde(with = "humantime_serde")]
    pub(crate) ceiling: Duration,
    pub(crate) percentile: f64,
    pub(crate) min_samples: u64,
}

impl ProbeConfig {
    /// The decision core's view of the probe intervals.
    pub(crate) fn policy(&self) -> keyvault_failover_core::probe::ProbePolicy {
        keyvault_failover_core::probe::ProbePolicy::new(
            self.interval,
            self.interval_max,
            self.unhealthy_interval,
            self.unhealthy_interval_max,
            self.jitter,
            self.failures_to_trip,
        )
    }
}

impl HedgeConfig {
    /// The decision core's view of these settings.
    pub(crate) fn policy(&self) -> keyvault_failover_core::hedge::HedgePolicy {
        keyvault_failover_core::hedge::HedgePolicy::new(
            self.default_delay,
            self.floor,
            self.ceiling,
            self.percentile,
            self.min_samples,
        )
    }
}

impl Default for HedgeConfig {
    fn default() -> Self {
        HedgeConfig {
            enabled: true,
            default_delay: Duration::from_millis(150),
            floor: Duration::from_millis(20),
            ceiling: Duration::from_secs(1),
            percentile: 0.95,
            min_samples: 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RefreshConfig {
    pub(crate) enabled: bool,
    pub(crate) concurrency: u32,
    pub(crate) reserve_for_reads: f64,
    pub(crate) drift_check: bool,
    /// The share of refreshes followed by a drift check (a secret whose vaults were found to
    /// differ is checked at every refresh until they agree). Each check costs a GET on every
    /// other healthy vault, so checking every refresh doubles a fleet's refresh load.
    pub(crate) drift_sample: f64,
    /// A cached secret not read for this long is no longer refreshed in the background (it
    /// stays cached as last-known-good; the next read fetches it). At least twice the
    /// refresh interval is used.
    #[serde(with = "humantime_serde")]
    pub(crate) idle_after: Duration,
    /// A change event for a held secret ([`FailoverClient::notify_changed`]) refreshes it
    /// after a random delay up to this, so that a fleet told at once does not meet the vault
    /// in one instant. Default 30 s, App Configuration's push-refresh spread: 10,000 instances
    /// holding a rotated secret then send 333 GETs per second, within a vault's 400.
    ///
    /// [`FailoverClient::notify_changed`]: crate::FailoverClient::notify_changed
    #[serde(with = "humantime_serde")]
    pub(crate) notify_max_delay: Duration,
}

impl RefreshConfig {
    /// How long an unread secret keeps being refreshed.
    pub(crate) fn idle_after(&self, refresh_interval: Duration) -> Duration {
        self.idle_after.max(refresh_interval.saturating_mul(2))
    }
}

impl Default for RefreshConfig {
    fn default() -> Self {
        RefreshConfig {
            enabled: true,
            concurrency: 8,
            reserve_for_reads: 0.25,
            drift_check: true,
            drift_sample: 0.1,
            idle_after: Duration::from_secs(3600),
            notify_max_delay: Duration::from_secs(30),
        }
    }
}

/// Which `azure_identity` credential [`azure::connect_with_config`](crate::azure::connect_with_config)
/// uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialKind {
    /// Azure CLI / Azure Developer CLI sign-in (developer machines). The default.
    #[default]
    DeveloperTools,
    /// The managed identity of the App Service, VM or container the service runs in.
    ManagedIdentity,
    /// No credential: a fixed placeholder token. Only for the project's emulator (which checks
    /// that a token is sent, not what it is); Key Vault answers 401 to it.
    None,
}

/// A validated client configuration. Build with [`Config::builder`] or [`Config::from_toml`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    regions: Vec<Region>,
    #[serde(default)]
    allow_multiple_writable: bool,
    #[serde(default)]
    credential: CredentialKind,
    /// PEM file of the CA certificates to trust instead of the system's roots (a private CA,
    /// a TLS-inspecting proxy, the emulator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ca_bundle: Option<std::path::PathBuf>,
    #[serde(default)]
    pub(crate) timeouts: Timeouts,
    #[serde(default)]
    pub(crate) breaker: BreakerConfig,
    #[serde(default)]
    pub(crate) retry: RetryConfig,
    #[serde(default)]
    pub(crate) cache: CacheConfig,
    #[serde(default)]
    pub(crate) throttle: ThrottleConfig,
    #[serde(default)]
    pub(crate) probe: ProbeConfig,
    #[serde(default)]
    pub(crate) hedge: HedgeConfig,
    #[serde(default)]
    pub(crate) refresh: RefreshConfig,
}

impl Config {
    /// A builder with every default.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder {
            config: Config {
                regions: Vec::new(),
                allow_multiple_writable: false,
                credential: CredentialKind::default(),
                ca_bundle: None,
                timeouts: Timeouts::default(),
                breaker: BreakerConfig::default(),
                retry: RetryConfig::default(),
                cache: CacheConfig::default(),
                throttle: ThrottleConfig::default(),
                probe: ProbeConfig::default(),
                hedge: HedgeConfig::default(),
                refresh: RefreshConfig::default(),
            },
        }
    }

    /// Reads and validates a TOML configuration.
    pub fn from_toml(text: &str) -> Result<Config, Error> {
        let config: Config = toml::from_str(text)
            .map_err(|e| Error::config(format!("invalid configuration: {}", e.message())))?;
        config.validate()?;
        Ok(config)
    }

    /// The configuration as TOML (round-trips through [`Config::from_toml`]).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// The credential to authenticate with in real use.
    pub fn credential(&self) -> CredentialKind {
        self.credential
    }

    /// The time one read may take in all (`timeouts.deadline`).
    pub fn deadline(&self) -> Duration {
        self.timeouts.deadline
    }

    /// How long a last-known-good value may be served stale (`cache.staleness_cap`; a secret
    /// of its own in `cache.staleness_caps` may have another).
    pub fn default_staleness_cap(&self) -> Duration {
        self.cache.staleness_cap
    }

    /// The timeout of one vault call (`timeouts.attempt`).
    pub fn attempt_timeout(&self) -> Duration {
        self.timeouts.attempt
    }

    pub(crate) fn throttle(&self) -> &ThrottleConfig {
        &self.throttle
    }

    /// The regions in priority order (primary first).
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// The CA bundle trusted instead of the system's roots, if set. A relative path is taken
    /// from the directory the process runs in; [`Config::from_file`] makes it relative to the
    /// file.
    pub fn ca_bundle(&self) -> Option<&std::path::Path> {
        self.ca_bundle.as_deref()
    }

    /// Reads and validates a TOML configuration file; a relative `ca_bundle` is taken from
    /// the file's directory.
    ///
    /// # Errors
    /// [`Error::is_config`] naming the file and what is wrong.
    pub fn from_file(path: &std::path::Path) -> Result<Config, Error> {
        Self::from_file_with(path, None).map(|(c, _)| c)
    }

    /// [`Config::from_file`] for a file that also holds a table of some tool's own (the
    /// agent's `[agent]`): that table is taken out and returned, unparsed, and the rest is
    /// the client's configuration.
    ///
    /// # Errors
    /// [`Error::is_config`] naming the file and what is wrong.
    pub fn from_file_with(
        path: &std::path::Path,
        section: Option<&str>,
    ) -> Result<(Config, Option<toml::Table>), Error> {
        // A regular file of at most 1 MiB: a FIFO or a device at the path is refused at once.
        let bytes = crate::files::read_bounded(path, 1024 * 1024)
            .map_err(|e| Error::config(format!("cannot read {}: {e}", path.display())))?;
        let text = String::from_utf8(bytes.to_vec())
            .map_err(|_| Error::config(format!("{}: not UTF-8 text", path.display())))?;
        let in_file = |e: Error| Error::config(format!("{}: {e}", path.display()));
        let (text, extra) = match section {
            None => (text, None),
            Some(key) => {
                let mut t: toml::Table = toml::from_str(&text)
                    .map_err(|e| in_file(Error::config(format!("invalid TOML: {e}"))))?;
                let extra = match t.remove(key) {
                    None => None,
                    Some(toml::Value::Table(x)) => Some(x),
                    Some(_) => {
                        return Err(in_file(Error::config(format!("[{key}] must be a table"))))
                    }
                };
                let rest = toml::to_string(&t)
                    .map_err(|e| in_file(Error::config(format!("invalid TOML: {e}"))))?;
                (rest, extra)
            }
        };
        let mut config = Config::from_toml(&text).map_err(in_file)?;
        if let (Some(ca), Some(dir)) = (&config.ca_bundle, path.parent()) {
            if ca.is_relative() {
                config.ca_bundle = Some(dir.join(ca));
            }
        }
        Ok((config, extra))
    }

    /// The staleness cap for `name` (its override, or the client-wide cap).
    pub(crate) fn staleness_cap(&self, key: &str) -> Duration {
        self.cache
            .staleness_overrides
            .get(key)
            .copied()
            .unwrap_or(self.cache.staleness_cap)
    }

    fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::config(m));
        if self.regions.is_empty() {
            return bad("no regions configured: add at least one vault".into());
        }
        let mut names = HashSet::new();
        let mut urls = HashSet::new();
        for r in &self.regions {
            if r.name.is_empty()
                || !r
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return bad(format!(
                    "region name {:?} must be non-empty letters, digits, '-' or '_'",
                    r.name
                ));
            }
            if !names.insert(r.name.to_ascii_lowercase()) {
                return bad(format!("region name {:?} appears twice", r.name));
            }
            let url = url::Url::parse(&r.url)
                .map_err(|e| Error::config(format!("region {}: url {:?}: {e}", r.name, r.url)))?;
            if url.scheme() != "https" {
                return bad(format!(
                    "region {}: url {:?} must use https (Key Vault refuses tokens over http)",
                    r.name, r.url
                ));
            }
            let host = url.host_str().unwrap_or("").to_ascii_lowercase();
            if host.is_empty() {
                return bad(format!("region {}: url {:?} has no host", r.name, r.url));
            }
            if r.address
                .is_some_and(|a| a.port() == 0 || a.ip().is_unspecified())
            {
                return bad(format!(
                    "region {}: address {:?} must be a reachable ip:port",
                    r.name,
                    r.address.map(|a| a.to_string()).unwrap_or_default()
                ));
            }
            if !urls.insert((host, url.port_or_known_default())) {
                return bad(format!(
                    "region {}: url {:?} is the same vault as another region",
                    r.name, r.url
                ));
            }
        }
        let writable = self
            .regions
            .iter()
            .filter(|r| r.access == Access::ReadWrite)
            .count();
        if writable > 1 && !self.allow_multiple_writable {
            return bad(format!(
                "{writable} regions are read-write; separate vaults do not replicate, so two \
                 writers diverge. Mark replicas read-only, or set allow_multiple_writable"
            ));
        }
        self.check_upper_bounds()?;
        let t = &self.timeouts;
        nonzero("timeouts.attempt", t.attempt)?;
        nonzero("timeouts.deadline", t.deadline)?;
        ordered("timeouts.attempt", t.attempt, "timeouts.list", t.list)?;
        if t.deadline < t.attempt {
            return bad(format!(
                "timeouts.deadline ({:?}) is shorter than timeouts.attempt ({:?})",
                t.deadline, t.attempt
            ));
        }
        let b = &self.breaker;
        if b.failure_threshold == 0 {
            return bad("breaker.failure_threshold must be at least 1".into());
        }
        nonzero("breaker.open_base", b.open_base)?;
        ordered(
            "breaker.open_base",
            b.open_base,
            "breaker.open_max",
            b.open_max,
        )?;
        let r = &self.retry;
        if r.max_attempts == 0 {
            return bad("retry.max_attempts must be at least 1".into());
        }
        nonzero("retry.backoff_base", r.backoff_base)?;
        ordered(
            "retry.backoff_base",
            r.backoff_base,
            "retry.backoff_max",
            r.backoff_max,
        )?;
        if !(0.0..=10.0).contains(&r.budget_ratio) {
            return bad(format!(
                "retry.budget_ratio {} must be between 0 and 10",
                r.budget_ratio
            ));
        }
        let c = &self.cache;
        nonzero("cache.refresh_interval", c.refresh_interval)?;
        let caps = std::iter::once(("cache.staleness_cap".to_string(), c.staleness_cap)).chain(
            c.staleness_overrides
                .iter()
                .map(|(k, v)| (format!("cache.staleness_overrides.{k}"), *v)),
        );
        for (what, cap) in caps {
            if cap < c.refresh_interval {
                return bad(format!(
                    "{what} ({}) is below cache.refresh_interval ({}): every cached value would \
                     expire before it is refreshed",
                    humantime::format_duration(cap),
                    humantime::format_duration(c.refresh_interval)
                ));
            }
        }
        for k in c.staleness_overrides.keys() {
            SecretName::new(k)
                .map_err(|e| Error::config(format!("cache.staleness_overrides: {k:?}: {e}")))?;
        }
        let th = &self.throttle;
        if th.get_limit == 0 {
            return bad("throttle.get_limit must be at least 1".into());
        }
        nonzero("throttle.window", th.window)?;
        nonzero("throttle.default_retry_after", th.default_retry_after)?;
        nonzero("throttle.max_retry_after", th.max_retry_after)?;
        ordered(
            "throttle.default_retry_after",
            th.default_retry_after,
            "throttle.max_retry_after",
            th.max_retry_after,
        )?;
        if th.write_limit == 0 {
            return bad("throttle.write_limit must be at least 1".into());
        }
        if !(th.budget_fraction > 0.0 && th.budget_fraction <= 1.0) {
            return bad(format!(
                "throttle.budget_fraction {} must be in (0, 1]",
                th.budget_fraction
            ));
        }
        let p = &self.probe;
        nonzero("probe.interval", p.interval)?;
        nonzero("probe.unhealthy_interval", p.unhealthy_interval)?;
        nonzero("probe.timeout", p.timeout)?;
        ordered(
            "probe.unhealthy_interval",
            p.unhealthy_interval,
            "probe.interval",
            p.interval,
        )?;
        if !(0.0..1.0).contains(&p.jitter) {
            return bad(format!("probe.jitter {} must be in [0, 1)", p.jitter));
        }
        if p.failures_to_trip == 0 || p.failback_successes == 0 {
            return bad(
                "probe.failures_to_trip and probe.failback_successes must be at least 1".into(),
            );
        }
        if let Some(c) = &p.canary {
            SecretName::new(c).map_err(|e| Error::config(format!("probe.canary: {e}")))?;
        }
        let h = &self.hedge;
        nonzero("hedge.floor", h.floor)?;
        ordered("hedge.floor", h.floor, "hedge.ceiling", h.ceiling)?;
        if !(h.floor..=h.ceiling).contains(&h.default_delay) {
            return bad(
                "hedge.default_delay must lie between hedge.floor and hedge.ceiling".into(),
            );
        }
        if !(h.percentile > 0.0 && h.percentile < 1.0) {
            return bad(format!(
                "hedge.percentile {} must be in (0, 1)",
                h.percentile
            ));
        }
        let rf = &self.refresh;
        if rf.concurrency == 0 {
            return bad("refresh.concurrency must be at least 1".into());
        }
        if rf.idle_after.is_zero() {
            return bad("refresh.idle_after must be greater than zero".into());
        }
        if !(rf.drift_sample > 0.0 && rf.drift_sample <= 1.0) {
            return bad(format!(
                "refresh.drift_sample {} must be in (0, 1] (to check never, set refresh.drift_check = false)",
                rf.drift_sample
            ));
        }
        if !(0.0..1.0).contains(&rf.reserve_for_reads) {
            return bad(format!(
                "refresh.reserve_for_reads {} must be in [0, 1)",
                rf.reserve_for_reads
            ));
        }
        Ok(())
    }
}

/// The longest a timeout may be: a call that waits longer has not failed over, it has hung.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// The longest any other duration may be (intervals, caps): over a year is a typo, and every
/// `Instant` computed from a duration must stay far from overflow.
const MAX_DURATION: Duration = Duration::from_secs(400 * 24 * 3600);

impl Config {
    /// Every duration, with its name and upper bound.
    fn durations(&self) -> Vec<(String, Duration, Duration)> {
        let (t, b, r, c, th, p, h, rf) = (
            &self.timeouts,
            &self.breaker,
            &self.retry,
            &self.cache,
            &self.throttle,
            &self.probe,
            &self.hedge,
            &self.refresh,
        );
        let mut v: Vec<(String, Duration, Duration)> = [
            ("timeouts.attempt", t.attempt, MAX_TIMEOUT),
            ("timeouts.deadline", t.deadline, MAX_TIMEOUT),
            ("timeouts.list", t.list, MAX_TIMEOUT),
            ("breaker.open_base", b.open_base, MAX_TIMEOUT),
            ("breaker.open_max", b.open_max, MAX_TIMEOUT),
            ("retry.backoff_base", r.backoff_base, MAX_TIMEOUT),
            ("retry.backoff_max", r.backoff_max, MAX_TIMEOUT),
            ("cache.refresh_interval", c.refresh_interval, MAX_DURATION),
            ("cache.staleness_cap", c.staleness_cap, MAX_DURATION),
            ("throttle.window", th.window, MAX_TIMEOUT),
            (
                "throttle.default_retry_after",
                th.default_retry_after,
                MAX_TIMEOUT,
            ),
            ("throttle.max_retry_after", th.max_retry_after, MAX_TIMEOUT),
            ("probe.interval", p.interval, MAX_TIMEOUT),
            ("probe.interval_max", p.interval_max, MAX_TIMEOUT),
            (
                "probe.unhealthy_interval",
                p.unhealthy_interval,
                MAX_TIMEOUT,
            ),
            (
                "probe.unhealthy_interval_max",
                p.unhealthy_interval_max,
                MAX_TIMEOUT,
            ),
            ("probe.timeout", p.timeout, MAX_TIMEOUT),
            ("probe.failback_dwell", p.failback_dwell, MAX_DURATION),
            ("hedge.default_delay", h.default_delay, MAX_TIMEOUT),
            ("hedge.floor", h.floor, MAX_TIMEOUT),
            ("hedge.ceiling", h.ceiling, MAX_TIMEOUT),
            ("refresh.idle_after", rf.idle_after, MAX_DURATION),
            (
                "refresh.notify_max_delay",
                rf.notify_max_delay,
                Duration::from_secs(600),
            ),
        ]
        .into_iter()
        .map(|(n, d, m)| (n.to_string(), d, m))
        .collect();
        v.extend(
            c.staleness_overrides
                .iter()
                .map(|(k, d)| (format!("cache.staleness_overrides.{k}"), *d, MAX_DURATION)),
        );
        v
    }

    fn check_upper_bounds(&self) -> Result<(), Error> {
        for (what, d, max) in self.durations() {
            if d > max {
                return Err(Error::config(format!(
                    "{what} ({}) is longer than the {} this setting allows",
                    humantime::format_duration(d),
                    humantime::format_duration(max)
                )));
            }
        }
        Ok(())
    }
}

fn nonzero(what: &str, d: Duration) -> Result<(), Error> {
    if d.is_zero() {
        Err(Error::config(format!("{what} must be greater than zero")))
    } else {
        Ok(())
    }
}

fn ordered(a: &str, da: Duration, b: &str, db: Duration) -> Result<(), Error> {
    if da > db {
        Err(Error::config(format!(
            "{a} ({da:?}) is greater than {b} ({db:?})"
        )))
    } else {
        Ok(())
    }
}

/// Builds a [`Config`]; [`ConfigBuilder::build`] validates.
///
/// ```
/// use keyvault_failover::{Access, Config};
/// use std::time::Duration;
/// let config = Config::builder()
///     .region("weu", "https://app-weu.vault.azure.net", Access::ReadWrite)
///     .region("neu", "https://app-neu.vault.azure.net", Access::ReadOnly)
///     .attempt_timeout(Duration::from_millis(800))
///     .build()
///     .unwrap();
/// assert_eq!(config.regions()[0].name(), "weu");
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct ConfigBuilder {
    config: Config,
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident: $ty:ty => $($path:ident).+) => {
        $(#[$doc])*
        pub fn $name(mut self, v: $ty) -> Self {
            self.config.$($path).+ = v;
            self
        }
    };
}

impl ConfigBuilder {
    /// Adds a region; the order of calls is the priority order (primary first).
    pub fn region(mut self, name: &str, url: &str, access: Access) -> Self {
        self.config.regions.push(Region {
            name: name.to_string(),
            url: url.to_string(),
            access,
            address: None,
            credential: None,
        });
        self
    }

    /// The last region added connects to `address` instead of resolving its URL's host.
    pub fn address(mut self, address: std::net::SocketAddr) -> Self {
        if let Some(r) = self.config.regions.last_mut() {
            r.address = Some(address);
        }
        self
    }

    /// The last region added authenticates with `credential`.
    pub fn region_credential(mut self, credential: CredentialKind) -> Self {
        if let Some(r) = self.config.regions.last_mut() {
            r.credential = Some(credential);
        }
        self
    }

    /// Trusts the CA certificates of this PEM file instead of the system's roots.
    pub fn ca_bundle(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.config.ca_bundle = Some(path.into());
        self
    }

    setter!(
        /// Allow more than one read-write region. Default `false`: separate vaults do not
        /// replicate, so two writers diverge.
        allow_multiple_writable: bool => allow_multiple_writable);
    setter!(
        /// The `azure_identity` credential used in real use. Default developer tools.
        credential: CredentialKind => credential);
    setter!(
        /// Timeout of one attempt against one vault. Default 2 s (Key Vault answers in tens of
        /// milliseconds; 2 s leaves room for TLS and token set-up while keeping failover fast).
        attempt_timeout: Duration => timeouts.attempt);
    setter!(
        /// Overall deadline of one call, all regions and retries included. Default 6 s.
        deadline: Duration => timeouts.deadline);
    setter!(
        /// Time for a whole listing (`list_secret_properties`), each page bounded by the attempt
        /// timeout. Default 5 min (a vault of 100,000 secrets is 4,000 pages).
        list_timeout: Duration => timeouts.list);
    setter!(
        /// When no vault is available and a read has no last-known-good value: wait up to the
        /// deadline for a vault to come back (`true`, the default: a short outage costs a slow
        /// read, not a failed one, as with the plain SDK's retries), or fail at once (`false`).
        /// Definitive answers (401, 403, the primary's 404) never wait.
        wait_for_recovery: bool => timeouts.wait_for_recovery);
    setter!(
        /// Consecutive failures that open a vault's breaker. Default 5.
        failure_threshold: u32 => breaker.failure_threshold);
    setter!(
        /// First open interval of a breaker; it doubles (with jitter) on each failed probe.
        /// Default 5 s.
        breaker_open_base: Duration => breaker.open_base);
    setter!(
        /// Longest open interval. Default 60 s.
        breaker_open_max: Duration => breaker.open_max);
    /// Seed of every random draw of the client (breaker backoff, failback dwell spread, retry
    /// and refresh jitter, probe spread), so runs repeat: for tests and the simulator. Default
    /// unset: each client draws its own seed, so the processes of a fleet spread apart.
    pub fn seed(mut self, v: u64) -> Self {
        self.config.breaker.seed = Some(v);
        self
    }
    setter!(
        /// Attempts per call across all regions. Default 4.
        max_attempts: u32 => retry.max_attempts);
    setter!(
        /// Base of the full-jitter exponential backoff between retry rounds. Default 50 ms.
        backoff_base: Duration => retry.backoff_base);
    setter!(
        /// Cap of the retry backoff. Default 1 s.
        backoff_max: Duration => retry.backoff_max);
    setter!(
        /// Retries allowed per first attempt (tower's TpsBudget model). Default 0.2 (20 %).
        retry_budget_ratio: f64 => retry.budget_ratio);
    setter!(
        /// Retries per second always allowed, whatever the ratio. Default 10.
        retry_budget_min_per_sec: u32 => retry.budget_min_per_sec);
    setter!(
        /// How long a value read from a vault is served from cache without asking again.
        /// Default 5 min (App Service references take 24 h).
        refresh_interval: Duration => cache.refresh_interval);
    setter!(
        /// Oldest last-known-good value served when no vault can answer. Default 24 h.
        staleness_cap: Duration => cache.staleness_cap);
    setter!(
        /// Secret GETs a vault allows per window. Default 4,000 (per 10 s, Key Vault's
        /// published limit; older documents say 2,000).
        vault_get_limit: u32 => throttle.get_limit);
    setter!(
        /// The window of the vault limit. Default 10 s.
        vault_limit_window: Duration => throttle.window);
    setter!(
        /// Share of the vault limit this client allows itself. Default 0.8.
        vault_budget_fraction: f64 => throttle.budget_fraction);
    setter!(
        /// How long a 429 without `Retry-After` keeps a vault throttled. Default 1 s.
        default_retry_after: Duration => throttle.default_retry_after);
    setter!(
        /// The longest `Retry-After` honoured; a longer one is cut to this. Default 60 s (the
        /// longest open interval of a breaker): no server answer takes a vault away for longer.
        max_retry_after: Duration => throttle.max_retry_after);
    setter!(
        /// Writes (set, delete) a vault allows per window, of which this client takes
        /// `vault_budget_fraction`. Default 300 (per 10 s, Key Vault's published limit).
        vault_write_limit: u32 => throttle.write_limit);

    setter!(
        /// Run a health prober per vault. Default `true`. Without it, a higher-priority vault
        /// is tried again only by trial reads that callers' traffic triggers.
        probing: bool => probe.enabled);
    setter!(
        /// Probe interval of a healthy vault (±jitter). Default 10 s (Azure Traffic Manager's
        /// fast probing interval).
        probe_interval: Duration => probe.interval);
    setter!(
        /// The longest healthy probe interval: it doubles with each round in a row that found
        /// the vault healthy, up to this (at least the probe interval is used). Default 60 s.
        probe_interval_max: Duration => probe.interval_max);
    setter!(
        /// Probe interval while a vault is failing or not yet trusted again. Default 2 s.
        probe_unhealthy_interval: Duration => probe.unhealthy_interval);
    setter!(
        /// The longest unhealthy probe interval: it doubles with each failed probe in a row
        /// once the vault is tripped, up to this (at least the unhealthy interval is used);
        /// once the vault answers again, its proving probes keep that pace. Default 2 s (no
        /// back-off: recovery is seen within seconds); a fleet of thousands of clients should
        /// raise it, so that a recovering vault is not met by every client's probes at once.
        probe_unhealthy_interval_max: Duration => probe.unhealthy_interval_max);
    setter!(
        /// Timeout of one probe. Default 2 s.
        probe_timeout: Duration => probe.timeout);
    setter!(
        /// Consecutive failed probes that open a vault's breaker even with no caller traffic.
        /// Default 3 (Traffic Manager's default tolerated failures).
        probe_failures_to_trip: u32 => probe.failures_to_trip);
    setter!(
        /// Consecutive successful probes before traffic returns to a higher-priority vault.
        /// Default 3.
        failback_successes: u32 => probe.failback_successes);
    setter!(
        /// Least time on a route before failing back to a higher-priority vault. Default 60 s; each
        /// client adds up to half again, drawn from its seed, so a fleet does not fail back at once.
        failback_dwell: Duration => probe.failback_dwell);
    setter!(
        /// Hedge reads: after the hedge delay, ask the next healthy vault too. Default `true`.
        hedging: bool => hedge.enabled);
    setter!(
        /// Hedge delay until a vault has `min_samples` latencies. Default 150 ms.
        hedge_default_delay: Duration => hedge.default_delay);
    setter!(
        /// Shortest hedge delay. Default 20 ms.
        hedge_floor: Duration => hedge.floor);
    setter!(
        /// Longest hedge delay. Default 1 s.
        hedge_ceiling: Duration => hedge.ceiling);
    setter!(
        /// Refresh cached secrets in the background. Default `true`.
        background_refresh: bool => refresh.enabled);
    setter!(
        /// Compare the content of each refreshed secret across healthy vaults (keyed hash).
        /// Default `true`.
        drift_check: bool => refresh.drift_check);
    setter!(
        /// The share of refreshes followed by a drift check, in (0, 1]; a secret found to
        /// differ is checked at every refresh until the vaults agree. Default 0.1.
        drift_sample: f64 => refresh.drift_sample);
    setter!(
        /// Stop refreshing a cached secret nobody has read for this long (it stays cached as
        /// last-known-good). Default 1 h; at least twice the refresh interval is used.
        refresh_idle_after: Duration => refresh.idle_after);
    setter!(
        /// Longest random delay before a change event's refresh (`refresh.notify_max_delay`).
        /// Default 30 s, at most 10 min.
        notify_max_delay: Duration => refresh.notify_max_delay);

    /// The secret the prober reads; without one it lists one page of secret properties.
    pub fn probe_canary(mut self, name: &str) -> Self {
        self.config.probe.canary = Some(name.to_string());
        self
    }

    /// A staleness cap for one secret, overriding the client-wide cap.
    pub fn staleness_cap_for(mut self, name: &str, cap: Duration) -> Self {
        self.config
            .cache
            .staleness_overrides
            .insert(name.to_ascii_lowercase(), cap);
        self
    }

    /// Validates and returns the configuration.
    pub fn build(self) -> Result<Config, Error> {
        self.config.validate()?;
        Ok(self.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two() -> ConfigBuilder {
        Config::builder()
            .region("weu", "https://a-weu.vault.azure.net", Access::ReadWrite)
            .region("neu", "https://a-neu.vault.azure.net", Access::ReadOnly)
    }

    fn err(b: ConfigBuilder) -> String {
        let e = b.build().unwrap_err();
        assert!(e.is_config());
        e.to_string()
    }

    #[test]
    fn defaults_are_valid() {
        two().build().unwrap();
    }

    #[test]
    fn each_bad_setting_is_named() {
        assert!(err(Config::builder()).contains("no regions"));
        assert!(
            err(two().region("weu", "https://x.vault.azure.net", Access::ReadOnly))
                .contains("twice")
        );
        assert!(
            err(two().region("x", "https://A-WEU.vault.azure.net/", Access::ReadOnly))
                .contains("same vault")
        );
        assert!(
            err(two().region("x", "http://x.vault.azure.net", Access::ReadOnly)).contains("https")
        );
        assert!(err(two().region("x", "not a url", Access::ReadOnly)).contains("url"));
        assert!(
            err(two().region("x", "https://x.vault.azure.net", Access::ReadWrite))
                .contains("read-write")
        );
        two()
            .region("x", "https://x.vault.azure.net", Access::ReadWrite)
            .allow_multiple_writable(true)
            .build()
            .unwrap();
        assert!(err(two().attempt_timeout(Duration::ZERO)).contains("timeouts.attempt"));
        assert!(err(two().deadline(Duration::from_millis(100))).contains("shorter"));
        assert!(err(two().breaker_open_base(Duration::from_secs(120))).contains("open_max"));
        assert!(err(two().backoff_base(Duration::from_secs(5))).contains("backoff_max"));
        assert!(err(two().staleness_cap(Duration::from_secs(60))).contains("refresh_interval"));
        assert!(err(two().staleness_cap_for("db", Duration::from_secs(1))).contains("db"));
        assert!(err(two().staleness_cap_for("d b", Duration::from_secs(3600))).contains("d b"));
        assert!(err(two().vault_budget_fraction(0.0)).contains("budget_fraction"));
        assert!(err(two().failure_threshold(0)).contains("failure_threshold"));
        assert!(err(two().max_attempts(0)).contains("max_attempts"));
        assert!(err(two().max_retry_after(Duration::from_millis(10))).contains("max_retry_after"));
        assert!(err(two().vault_write_limit(0)).contains("write_limit"));
        for bad in [0.0, -0.5, 1.5, f64::NAN, f64::INFINITY] {
            assert!(
                err(two().drift_sample(bad)).contains("drift_sample"),
                "{bad}"
            );
        }
        two().drift_sample(1.0).build().unwrap();
    }

    #[test]
    fn absurd_durations_are_refused_not_panicked_on() {
        // Regression: these passed validation and then panicked every read (Instant overflow).
        for text in [
            "[timeouts]\ndeadline = '300000000000years'",
            "[timeouts]\nattempt = '2h'\ndeadline = '3h'",
            "[cache]\nstaleness_cap = '5000years'",
            "[cache]\nstaleness_overrides = { db = '900years' }",
            "[probe]\nfailback_dwell = '10000years'",
            "[throttle]\nmax_retry_after = '1000000000s'",
            "[refresh]\nidle_after = '500000000000years'",
        ] {
            let base = two().build().unwrap().to_toml();
            let base: String = base
                .lines()
                .take_while(|l| !l.starts_with("[timeouts]"))
                .map(|l| format!("{l}\n"))
                .collect();
            let e = Config::from_toml(&format!("{base}{text}\n")).unwrap_err();
            assert!(
                e.is_config() && e.to_string().contains("longer than"),
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn toml_round_trips_and_rejects_unknown_keys() {
        let c = two()
            .staleness_cap_for("db", Duration::from_secs(3600))
            .build()
            .unwrap();
        let text = c.to_toml();
        assert_eq!(Config::from_toml(&text).unwrap(), c);
        let e = Config::from_toml(&format!("{text}\n[cache2]\nx = 1\n")).unwrap_err();
        assert!(e.is_config() && e.to_string().contains("cache2"), "{e}");
        let e = Config::from_toml("[[regions]]\nname = 'a'\nurl = 'https://a'\naccess = 'rw'\n")
            .unwrap_err();
        assert!(e.is_config(), "{e}");
        let e = Config::from_toml("[timeouts]\nattempt = 'soon'").unwrap_err();
        assert!(e.is_config(), "{e}");
    }

    proptest::proptest! {
        #[test]
        fn any_text_is_a_clear_error_or_a_valid_config(s in ".{0,200}") {
            let _ = Config::from_toml(&s);
        }
    }
}
