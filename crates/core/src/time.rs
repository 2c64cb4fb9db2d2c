//! Instant arithmetic that never panics.

use std::time::{Duration, Instant};

/// `now + d`, never panicking: a duration from outside (a server's `Retry-After`, a setting)
/// that would overflow the clock is cut to a year, which every caller also caps far below.
///
/// ```
/// use std::time::{Duration, Instant};
/// use keyvault_failover_core::time::later;
/// let now = Instant::now();
/// assert_eq!(later(now, Duration::from_secs(5)), now + Duration::from_secs(5));
/// assert!(later(now, Duration::MAX) > now);
/// ```
pub fn later(now: Instant, d: Duration) -> Instant {
    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
    now.checked_add(d.min(YEAR))
        .or_else(|| now.checked_add(Duration::from_secs(3600)))
        .unwrap_or(now)
}
