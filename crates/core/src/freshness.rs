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

use crate::time::later;

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
}
