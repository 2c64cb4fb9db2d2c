//! [`ConfigBuilder`]: the configuration in code, every setting a method, ending in the same
//! validation as a file.

use std::time::Duration;

use super::*;

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
