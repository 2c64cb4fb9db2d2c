//! Instant and duration arithmetic that never panics, and draws from outside made safe.

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

/// `d × f`, never panicking: what [`Duration::mul_f64`] gives for a finite, non-negative
/// product that fits, [`Duration::MAX`] past that, and zero for a negative or NaN factor
/// (`mul_f64` panics on all three).
///
/// ```
/// use std::time::Duration;
/// use keyvault_failover_core::time::scale;
/// let s = Duration::from_secs(10);
/// assert_eq!(scale(s, 0.75), s.mul_f64(0.75));
/// assert_eq!(scale(s, f64::NAN), Duration::ZERO);
/// assert_eq!(scale(s, -1.0), Duration::ZERO);
/// assert_eq!(scale(Duration::MAX, 2.0), Duration::MAX);
/// ```
pub fn scale(d: Duration, f: f64) -> Duration {
    let secs = f * d.as_secs_f64();
    match Duration::try_from_secs_f64(secs) {
        Ok(r) => r,
        Err(_) if secs > 0.0 => Duration::MAX,
        Err(_) => Duration::ZERO,
    }
}

/// A draw that should be uniform in [0, 1), held to [0, 1]: NaN counts as 0.
///
/// ```
/// use keyvault_failover_core::time::unit;
/// assert_eq!(unit(0.25), 0.25);
/// assert_eq!(unit(f64::NAN), 0.0);
/// assert_eq!(unit(7.0), 1.0);
/// assert_eq!(unit(f64::NEG_INFINITY), 0.0);
/// ```
pub fn unit(draw: f64) -> f64 {
    if draw.is_nan() {
        0.0
    } else {
        draw.clamp(0.0, 1.0)
    }
}
