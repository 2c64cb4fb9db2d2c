//! The probe schedule: when a vault is next probed, and whether a probe is due at all.
//!
//! A healthy vault is probed less and less often while nothing changes (a fleet of clients each
//! probing every 10 s would spend a vault's whole limit on probes); a failed one a little less
//! often with each failure in a row once its breaker is tripped. A recovering vault's proving
//! probes keep the pace its probes had backed off to, and once it has proved itself healthy
//! probing goes on at the pace it had reached.
//!
//! ```
//! use std::time::Duration;
//! use keyvault_failover_core::probe::{Pacer, ProbePolicy};
//!
//! let s = Duration::from_secs;
//! let policy = ProbePolicy::new(s(10), s(300), s(2), s(2), 0.0, 3);
//! let mut p = Pacer::default();
//! let waits: Vec<u64> = (0..6).map(|_| p.next(true, 0, &policy, 0.5).0.as_secs()).collect();
//! assert_eq!(waits, [10, 20, 40, 80, 160, 300]);
//! assert_eq!(p.next(false, 1, &policy, 0.5).0, s(2), "an unhealthy vault: the base pace");
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The probe intervals.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbePolicy {
    interval: Duration,
    interval_max: Duration,
    unhealthy_interval: Duration,
    unhealthy_interval_max: Duration,
    jitter: f64,
    failures_to_trip: u32,
}

impl ProbePolicy {
    /// A healthy vault is probed every `interval`, doubling with each healthy round up to
    /// `interval_max`; an unhealthy one every `unhealthy_interval`, doubling with each failed
    /// probe past `failures_to_trip` up to `unhealthy_interval_max`; each wait ± `jitter`
    /// (held to [0, 1]; NaN: none).
    pub fn new(
        interval: Duration,
        interval_max: Duration,
        unhealthy_interval: Duration,
        unhealthy_interval_max: Duration,
        jitter: f64,
        failures_to_trip: u32,
    ) -> Self {
        ProbePolicy {
            interval,
            interval_max,
            unhealthy_interval,
            unhealthy_interval_max,
            jitter: crate::time::unit(jitter),
            failures_to_trip,
        }
    }
}

/// One vault's probe pace.
#[derive(Debug, Clone, Default)]
pub struct Pacer {
    /// Rounds in a row that found the vault healthy (probed or vouched for by callers).
    healthy_rounds: u32,
    /// The last wait while the vault was not healthy.
    unhealthy_wait: Duration,
}

impl Pacer {
    /// The wait before the next round, jittered by `draw` (uniform in [0, 1)), and the same
    /// wait unjittered (the window in which callers' successes vouch for the vault). `healthy`:
    /// the vault has nothing to prove; `probe_failures`: failed probes in a row.
    pub fn next(
        &mut self,
        healthy: bool,
        probe_failures: u32,
        p: &ProbePolicy,
        draw: f64,
    ) -> (Duration, Duration) {
        let (base, doublings, max) = if healthy {
            let n = self.healthy_rounds;
            self.healthy_rounds = self.healthy_rounds.saturating_add(1);
            (p.interval, n, p.interval_max)
        } else {
            // `healthy_rounds` is kept: once the vault has proved itself again, healthy
            // probing goes on at the pace it had reached. Starting over at the base
            // interval, every instance of a fleet probed the recovered primary every 10 s
            // at once (10,000 instances: 10,000 probes per 10 s, over its limit of 4,000).
            // A relapse is caught by callers' calls and the breaker, not by the pace.
            let n = probe_failures.saturating_sub(p.failures_to_trip);
            (p.unhealthy_interval, n, p.unhealthy_interval_max)
        };
        let mut wait = base
            .saturating_mul(1 << doublings.min(16))
            .min(max.max(base));
        if healthy {
            self.unhealthy_wait = Duration::ZERO;
        } else {
            // A recovering vault's proving probes keep the pace its probes had backed off
            // to: with `unhealthy_interval_max` raised (fleets), every instance proving the
            // primary at 2 s after a regional outage met it with three probes per instance
            // within seconds. With the default (no back-off) this changes nothing.
            if probe_failures == 0 {
                wait = wait.max(self.unhealthy_wait);
            }
            self.unhealthy_wait = wait;
        }
        (
            crate::time::scale(wait, 1.0 + p.jitter * (2.0 * crate::time::unit(draw) - 1.0)),
            wait,
        )
    }
}

/// When a vault was last probed, lock-free: milliseconds after a base instant, plus one (0:
/// never). A trial probe claims it on the hit path, so it is one atomic.
#[derive(Debug)]
pub struct LastProbe {
    born: Instant,
    ms: AtomicU64,
}

impl LastProbe {
    /// Never probed; times are counted from `born`.
    pub fn new(born: Instant) -> Self {
        LastProbe {
            born,
            ms: AtomicU64::new(0),
        }
    }

    fn stamp(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.born).as_millis() as u64 + 1
    }

    /// Claims the next probe at `now` if none was made within `interval`.
    pub fn claim(&self, interval: Duration, now: Instant) -> bool {
        let now = self.stamp(now);
        let last = self.ms.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < interval.as_millis() as u64 {
            return false;
        }
        self.ms
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// A probe starts at `now`.
    pub fn mark(&self, now: Instant) {
        self.ms.store(self.stamp(now), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_is_claimed_once_per_interval() {
        let t0 = Instant::now();
        let l = LastProbe::new(t0);
        let i = Duration::from_secs(2);
        assert!(l.claim(i, t0));
        assert!(!l.claim(i, t0 + Duration::from_millis(1_999)));
        assert!(l.claim(i, t0 + i));
    }

    /// After a recovery, healthy probing resumes at the pace it had reached; proving probes
    /// keep the unhealthy pace they had backed off to.
    #[test]
    fn the_pace_survives_an_outage() {
        let s = Duration::from_secs;
        let p = ProbePolicy::new(s(10), s(300), s(2), s(60), 0.0, 3);
        let mut pacer = Pacer::default();
        for _ in 0..4 {
            pacer.next(true, 0, &p, 0.5);
        }
        let failed: Vec<u64> = (1..=8)
            .map(|f| pacer.next(false, f, &p, 0.5).0.as_secs())
            .collect();
        assert_eq!(failed, [2, 2, 2, 4, 8, 16, 32, 60]);
        assert_eq!(
            pacer.next(false, 0, &p, 0.5).0,
            s(60),
            "proving keeps the pace"
        );
        assert_eq!(
            pacer.next(true, 0, &p, 0.5).0,
            s(160),
            "healthy again: round 5"
        );
    }

    #[test]
    fn jitter_spreads_both_ways() {
        let s = Duration::from_secs;
        let p = ProbePolicy::new(s(10), s(10), s(2), s(2), 0.1, 3);
        let mut pacer = Pacer::default();
        assert_eq!(pacer.next(true, 0, &p, 0.0), (s(9), s(10)));
        assert_eq!(pacer.next(true, 0, &p, 1.0), (s(11), s(10)));
    }
}
