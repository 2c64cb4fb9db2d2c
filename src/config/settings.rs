//! The tunables, table by table, with their defaults (README's configuration table lists them).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
