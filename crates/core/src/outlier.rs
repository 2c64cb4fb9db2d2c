//! Outlier detection (Envoy's): a vault that fails a share of real callers' calls is taken off
//! the route for a while, however its probes do.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use keyvault_failover_core::outlier::Outliers;
//!
//! let t0 = Instant::now();
//! let mut o = Outliers::new(t0);
//! for _ in 0..10 {
//!     assert!(!o.record(true, t0));
//! }
//! let eject = (0..5).map(|_| o.record(false, t0)).last().unwrap();
//! assert!(eject, "5 failures of 15 calls: a third fail");
//! assert_eq!(o.eject(t0), Duration::from_secs(30));
//! assert!(!o.admits(Duration::ZERO, t0 + Duration::from_secs(29)));
//! assert!(o.admits(Duration::ZERO, t0 + Duration::from_secs(30)));
//! ```

use std::time::{Duration, Instant};

use crate::time::later;

/// One window of callers' outcomes.
const OUTCOME_WINDOW: Duration = Duration::from_secs(30);
/// Failed calls in the last windows before the failure rate counts.
const OUTLIER_MIN_FAILURES: u32 = 5;
/// Share of failed calls that makes a vault an outlier.
const OUTLIER_FAILURE_RATE: f64 = 0.2;
/// First ejection; each further one in a row is longer by this much, up to `EJECT_MAX`.
const EJECT_BASE: Duration = Duration::from_secs(30);
const EJECT_MAX: Duration = Duration::from_secs(300);

/// Callers' successes and failures against one vault, in two rotating windows, and when the
/// vault was last ejected for failing too many of them.
#[derive(Debug, Clone)]
pub struct Outliers {
    current: (u32, u32),
    previous: (u32, u32),
    started: Instant,
    ejections: u32,
    ejected_until: Option<Instant>,
    last_failure: Option<Instant>,
}

impl Outliers {
    /// Nothing recorded; the first window starts at `now`.
    pub fn new(now: Instant) -> Self {
        Outliers {
            current: (0, 0),
            previous: (0, 0),
            started: now,
            ejections: 0,
            ejected_until: None,
            last_failure: None,
        }
    }

    /// Whether traffic may go to the vault at `now`: it is not ejected, and no caller's call
    /// to it failed within `quiet`.
    pub fn admits(&self, quiet: Duration, now: Instant) -> bool {
        self.ejected_until.is_none_or(|t| now >= t)
            && self
                .last_failure
                .is_none_or(|t| now.saturating_duration_since(t) >= quiet)
    }

    /// Records a caller's call outcome at `now`; says whether the vault now fails so large a
    /// share of callers' calls (at least 5, and 20 %, over the last 30 to 60 s) that it should
    /// be ejected.
    pub fn record(&mut self, ok: bool, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.started);
        if elapsed >= OUTCOME_WINDOW {
            self.previous = if elapsed >= 2 * OUTCOME_WINDOW {
                (0, 0)
            } else {
                self.current
            };
            self.current = (0, 0);
            self.started = now;
        }
        if ok {
            self.current.0 += 1;
            return false;
        }
        self.current.1 += 1;
        self.last_failure = Some(now);
        let failed = self.current.1 + self.previous.1;
        let total = failed + self.current.0 + self.previous.0;
        failed >= OUTLIER_MIN_FAILURES
            && f64::from(failed) >= OUTLIER_FAILURE_RATE * f64::from(total)
            && self.ejected_until.is_none_or(|t| now >= t)
    }

    /// Ejects the vault at `now` for 30 s × the ejections in a row (at most 5 min), and
    /// forgets the outcomes that led to it. Returns how long.
    pub fn eject(&mut self, now: Instant) -> Duration {
        // Ejections "in a row": a vault that stayed good for the longest ejection starts over.
        if self
            .ejected_until
            .is_some_and(|t| now.saturating_duration_since(t) > EJECT_MAX)
        {
            self.ejections = 0;
        }
        self.ejections = self.ejections.saturating_add(1);
        let d = EJECT_BASE.saturating_mul(self.ejections).min(EJECT_MAX);
        self.ejected_until = Some(later(now, d));
        self.current = (0, 0);
        self.previous = (0, 0);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejections_in_a_row_grow_to_the_cap_and_start_over_after_a_quiet_spell() {
        let mut now = Instant::now();
        let mut o = Outliers::new(now);
        let mut got = Vec::new();
        for _ in 0..12 {
            got.push(o.eject(now).as_secs());
            now += Duration::from_secs(got[got.len() - 1]);
        }
        assert_eq!(
            got,
            [30, 60, 90, 120, 150, 180, 210, 240, 270, 300, 300, 300]
        );
        now += EJECT_MAX + Duration::from_secs(1);
        assert_eq!(o.eject(now), EJECT_BASE);
    }

    #[test]
    fn a_few_failures_or_a_small_share_do_not_eject() {
        let now = Instant::now();
        let mut o = Outliers::new(now);
        assert!(
            !(0..4).any(|_| o.record(false, now)),
            "4 failures are too few"
        );
        let mut o = Outliers::new(now);
        for _ in 0..100 {
            o.record(true, now);
        }
        assert!(
            !(0..10).any(|_| o.record(false, now)),
            "10 of 110 is under 20 %"
        );
        // Two windows later the successes are forgotten too.
        let later = now + 2 * OUTCOME_WINDOW;
        assert!((0..5).any(|_| o.record(false, later)));
    }

    #[test]
    fn a_recent_failure_keeps_the_vault_off_for_the_quiet_time() {
        let now = Instant::now();
        let mut o = Outliers::new(now);
        o.record(false, now);
        let quiet = Duration::from_secs(60);
        assert!(!o.admits(quiet, now + Duration::from_secs(59)));
        assert!(o.admits(quiet, now + quiet));
        assert!(o.admits(Duration::ZERO, now));
    }
}
