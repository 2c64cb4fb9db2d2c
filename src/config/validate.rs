//! Validation: every setting checked once, whichever way the configuration was made, with an
//! error that names the setting and the bound.

use std::collections::HashSet;
use std::time::Duration;

use super::{Access, Config};
use crate::error::Error;
use crate::name::SecretName;

impl Config {
    pub(super) fn validate(&self) -> Result<(), Error> {
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
