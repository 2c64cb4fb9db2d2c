//! Freshness and staleness: how old a held value is, whether it may still be served when no
//! vault answers, and when a failed refresh is tried again.
//!
//! A value's age is the time since a vault last confirmed it, plus the age it already had
//! when it was restored from a snapshot (`prior_age`). Within the refresh interval it is
//! fresh; past it, it is served only as last-known-good, up to the staleness cap.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use keyvault_failover_core::freshness::Held;
//!
//! let t0 = Instant::now();
//! let held = Held::new(t0, Duration::from_secs(50 * 60)); // restored, 50 min old
//! let cap = Duration::from_secs(3600);
//! assert_eq!(held.servable(cap, t0 + Duration::from_secs(600)), Some(cap));
//! assert_eq!(held.servable(cap, t0 + Duration::from_secs(601)), None, "past the cap");
//! assert_eq!(held.expires(cap), t0 + Duration::from_secs(600));
//! ```

use std::time::{Duration, Instant};

use crate::time::{later, scale, unit};

/// When a held value was fetched, and how old it already was then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    fetched_at: Instant,
    prior_age: Duration,
}

impl Held {
    /// A value a vault confirmed at `fetched_at`, already `prior_age` old then (zero unless
    /// restored from a snapshot).
    pub fn new(fetched_at: Instant, prior_age: Duration) -> Self {
        Held {
            fetched_at,
            prior_age,
        }
    }

    /// Its age at `now`.
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.fetched_at)
            .saturating_add(self.prior_age)
    }

    /// When it passes a staleness cap of `cap`.
    pub fn expires(&self, cap: Duration) -> Instant {
        later(self.fetched_at, cap.saturating_sub(self.prior_age))
    }

    /// Its age at `now`, if that is within `cap`: a last-known-good value that may be served.
    pub fn servable(&self, cap: Duration, now: Instant) -> Option<Duration> {
        let age = self.age(now);
        (age <= cap).then_some(age)
    }

    /// Whether more than `interval` passed since it was fetched (this process's own fetch: a
    /// restored value's prior age does not count).
    pub fn fetched_over(&self, interval: Duration, now: Instant) -> bool {
        now.saturating_duration_since(self.fetched_at) > interval
    }
}

/// The wait before retrying a refresh that failed `failures` times before (0 for the first
/// failure): `base` × 2^failures, at most `cap`.
///
/// ```
/// use std::time::Duration;
/// use keyvault_failover_core::freshness::retry_wait;
/// let (s, cap) = (Duration::from_secs(1), Duration::from_secs(30));
/// let waits: Vec<u64> = (0..7).map(|n| retry_wait(n, s, cap).as_secs()).collect();
/// assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
/// assert_eq!(retry_wait(u32::MAX, s, cap), cap);
/// ```
pub fn retry_wait(failures: u32, base: Duration, cap: Duration) -> Duration {
    base.saturating_mul(1 << failures.min(16)).min(cap)
}

/// The shortest gap between two on-time refreshes of a value, as a share of the refresh
/// interval T. Gaps are drawn in [`GAP_MIN`, `GAP_MAX`] × T: the mean, 0.75 T, sets a fleet's
/// steady refresh rate, the narrow width keeps each value's refreshes on its own phase.
pub const GAP_MIN: f64 = 0.7;
/// The longest gap between two on-time refreshes, as a share of the refresh interval.
pub const GAP_MAX: f64 = 0.8;

/// Whether a refresh begun at `started`, for a value due at `due`, ran on time: at or after
/// `due`, and at most a twentieth of `interval` late (the refresher's batching and
/// concurrency; a hint comes early, a retry or a stalled refresher late).
///
/// ```
/// use std::time::{Duration, Instant};
/// use keyvault_failover_core::freshness::on_time;
/// let (t, due) = (Duration::from_secs(900), Instant::now());
/// assert!(on_time(due, due + Duration::from_secs(45), t));
/// assert!(!on_time(due, due + Duration::from_secs(46), t));
/// assert!(!on_time(due + Duration::from_secs(1), due, t), "early: a hint");
/// ```
pub fn on_time(due: Instant, started: Instant, interval: Duration) -> bool {
    started >= due && started <= later(due, interval / 20)
}

/// When a value just fetched on its refresh schedule (an on-time refresh) is next refreshed:
/// `draw` (uniform in [0, 1)) placed in [[`GAP_MIN`], [`GAP_MAX`]] × `interval`.
pub fn next_refresh(interval: Duration, draw: f64) -> Duration {
    scale(interval, GAP_MIN + (GAP_MAX - GAP_MIN) * unit(draw))
}

/// When a value fetched off its refresh schedule (a first read, a preload, a hinted or late
/// refresh) is first refreshed: within `interval`, never before (1 − [`GAP_MAX`]) × `interval`,
/// drawn from the on-time gaps' equilibrium (residual-life) distribution.
///
/// That shape is what keeps a fleet below its steady rate: values fetched together (a
/// roll-out, a recovery) come back for refresh at exactly the rate of a fleet that has run for
/// ever, with no wave. Drawn uniformly instead (in [T/2, T]), 200,000 values fetched within 4
/// minutes came back at 150 % of their steady rate.
///
/// ```
/// use std::time::Duration;
/// use keyvault_failover_core::freshness::{first_refresh, next_refresh};
/// let t = Duration::from_secs(900);
/// assert_eq!(first_refresh(t, 0.0), Duration::from_secs(180));
/// assert!(first_refresh(t, 0.999_999) <= t);
/// assert_eq!(next_refresh(t, 0.5), Duration::from_secs(675));
/// ```
pub fn first_refresh(interval: Duration, draw: f64) -> Duration {
    let u = unit(draw);
    let start = 1.0 - GAP_MAX;
    // The residual life of U[a, b]: flat on [0, a] (mass a / mean), then falling to 0 at b.
    let flat = GAP_MIN / ((GAP_MIN + GAP_MAX) / 2.0);
    let share = if u < flat {
        start + GAP_MIN * (u / flat)
    } else {
        let w = ((u - flat) / (1.0 - flat)).clamp(0.0, 1.0);
        start + GAP_MAX - (GAP_MAX - GAP_MIN) * (1.0 - w).sqrt()
    };
    scale(interval, share.min(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_fetch_ages_from_zero_and_a_huge_cap_never_overflows() {
        let t0 = Instant::now();
        let h = Held::new(t0, Duration::ZERO);
        assert_eq!(h.age(t0), Duration::ZERO);
        assert_eq!(
            h.age(t0 - Duration::from_secs(1)),
            Duration::ZERO,
            "never negative"
        );
        assert!(h.expires(Duration::MAX) > t0);
        assert!(!h.fetched_over(Duration::from_secs(1), t0 + Duration::from_secs(1)));
        assert!(h.fetched_over(Duration::from_secs(1), t0 + Duration::from_millis(1_001)));
    }

    #[test]
    fn a_restored_value_older_than_the_cap_is_never_served() {
        let t0 = Instant::now();
        let cap = Duration::from_secs(3600);
        let h = Held::new(t0, Duration::from_secs(7200));
        assert_eq!(h.servable(cap, t0), None);
        assert_eq!(h.expires(cap), t0);
        assert!(
            !h.fetched_over(Duration::from_secs(60), t0),
            "prior age is not this fetch's"
        );
    }
    #[test]
    fn first_refreshes_keep_a_fleet_at_its_steady_rate() {
        // 200,000 values fetched over 4 minutes: refreshes per 10 s never exceed the steady
        // rate (200,000 / 0.75 T) by more than the draw's own noise; the old draw reached 150 %.
        let t = Duration::from_secs(900);
        let mut rng = fastrand::Rng::with_seed(1);
        let mut bins = vec![0u32; 300];
        for _ in 0..200_000 {
            let mut at = rng.f64() * 240.0 + first_refresh(t, rng.f64()).as_secs_f64();
            while at < 3000.0 {
                bins[(at / 10.0) as usize] += 1;
                at += next_refresh(t, rng.f64()).as_secs_f64();
            }
        }
        let steady = 200_000.0 / 67.5;
        let peak = *bins.iter().max().unwrap() as f64;
        assert!(peak < steady * 1.08, "peak {peak} against steady {steady}");
        assert!(bins[..18].iter().all(|&b| b == 0), "none before 0.2 T");
        for u in [0.0, 0.3, 0.9333, 0.95, 0.999_999, 1.0] {
            let d = first_refresh(t, u);
            assert!(d >= Duration::from_secs(180) && d <= t, "{u}: {d:?}");
        }
    }
}
