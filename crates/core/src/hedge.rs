//! The hedge delay: how long a read waits for one vault before asking the next one too.
//!
//! The delay is a percentile of the vault's recent latencies (two rotating 30 s windows),
//! within `[floor, ceiling]`, and a default until enough latencies are known (tower's model).
//! It is computed at most once a second (merging two histograms costs microseconds; a cache
//! miss should not) and nothing is allocated after construction.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use keyvault_failover_core::hedge::{HedgePolicy, Latencies};
//!
//! let policy = HedgePolicy::default();
//! let t0 = Instant::now();
//! let mut l = Latencies::new(t0);
//! assert_eq!(l.delay(&policy, t0), Duration::from_millis(150), "the default at first");
//! for _ in 0..50 {
//!     l.record(Duration::from_millis(40), t0);
//! }
//! let d = l.delay(&policy, t0);
//! assert!(d >= Duration::from_millis(39) && d <= Duration::from_millis(41));
//! ```

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// How long one window of recent latencies lasts; the hedge delay reads two of them.
const RECENT_WINDOW: Duration = Duration::from_secs(30);
/// How long a computed hedge delay is reused before the percentile is read again.
pub const HEDGE_RECOMPUTE: Duration = Duration::from_secs(1);

/// 64 µs .. 1 h at 2 significant digits (1 % precision, far finer than any use: hedge delays
/// and health's percentiles): 2,560 counters, 10 KiB as `u32` (the 30 s windows, which cannot
/// count to 2^32) and 20 KiB as `u64` (a lifetime record). At 1 µs and 3 digits each was
/// 184 KiB, 736 KiB per vault: a fleet of 10,000 simulated two-vault clients needed 14 GiB.
/// Fixed bounds, so recording never fails (values outside saturate to the bounds).
pub fn histogram<T: hdrhistogram::Counter>() -> Histogram<T> {
    Histogram::new_with_bounds(64, 3_600_000_000, 2)
        .unwrap_or_else(|_| Histogram::new(2).expect("2 significant digits is valid"))
}

/// A latency in whole microseconds within the histograms' bounds.
pub fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, 3_600_000_000)
}

/// How the hedge delay is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HedgePolicy {
    default_delay: Duration,
    floor: Duration,
    ceiling: Duration,
    percentile: f64,
    min_samples: u64,
}

impl Default for HedgePolicy {
    /// 150 ms until 20 latencies are known, then their 95th percentile within 20 ms .. 1 s.
    fn default() -> Self {
        HedgePolicy::new(
            Duration::from_millis(150),
            Duration::from_millis(20),
            Duration::from_secs(1),
            0.95,
            20,
        )
    }
}

impl HedgePolicy {
    /// The `percentile` of recent latencies within `[floor, ceiling]`; `default_delay` until
    /// `min_samples` are known. A `ceiling` below `floor` is raised to it, and a `percentile`
    /// outside [0, 1] (or NaN) is held to it (NaN: the median), so no policy can panic a read.
    pub fn new(
        default_delay: Duration,
        floor: Duration,
        ceiling: Duration,
        percentile: f64,
        min_samples: u64,
    ) -> Self {
        HedgePolicy {
            default_delay,
            floor,
            ceiling: ceiling.max(floor),
            percentile: if percentile.is_nan() {
                0.5
            } else {
                percentile.clamp(0.0, 1.0)
            },
            min_samples,
        }
    }
}

/// One vault's recent latencies, in two rotating windows, and the hedge delay last read from
/// them.
pub struct Latencies {
    current: Histogram<u32>,
    previous: Histogram<u32>,
    started: Instant,
    /// Where the two windows are merged to read a percentile (kept, so nothing is allocated).
    scratch: Histogram<u32>,
    /// The last delay computed and when.
    cached: Option<(Instant, Duration)>,
}

impl Latencies {
    /// Empty, the first window starting at `now`.
    pub fn new(now: Instant) -> Self {
        Latencies {
            current: histogram(),
            previous: histogram(),
            started: now,
            scratch: histogram(),
            cached: None,
        }
    }

    fn rotate(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.started);
        if elapsed >= RECENT_WINDOW {
            if elapsed >= 2 * RECENT_WINDOW {
                self.previous.reset();
            } else {
                std::mem::swap(&mut self.current, &mut self.previous);
            }
            self.current.reset();
            self.started = now;
            self.cached = None;
        }
    }

    /// Records the latency of an answered attempt at `now`.
    pub fn record(&mut self, d: Duration, now: Instant) {
        self.rotate(now);
        self.current.saturating_record(micros(d));
    }

    /// The hedge delay at `now` (reused for up to [`HEDGE_RECOMPUTE`]).
    pub fn delay(&mut self, policy: &HedgePolicy, now: Instant) -> Duration {
        self.rotate(now);
        let n = self.current.len() + self.previous.len();
        if n < policy.min_samples {
            return policy.default_delay;
        }
        if let Some((at, d)) = self.cached {
            if now.saturating_duration_since(at) < HEDGE_RECOMPUTE {
                return d;
            }
        }
        self.scratch.reset();
        let _ = self.scratch.add(&self.current);
        let _ = self.scratch.add(&self.previous);
        let d = Duration::from_micros(self.scratch.value_at_quantile(policy.percentile))
            .clamp(policy.floor, policy.ceiling);
        self.cached = Some((now, d));
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client keeps four latency histograms per vault: each small, and still 1 % precise
    /// from 64 µs to an hour (a fleet of simulated clients is only as big as these).
    #[test]
    fn latency_histograms_are_small_and_precise_enough() {
        let (windowed, lifetime) = (histogram::<u32>(), histogram::<u64>());
        let bytes = 3 * windowed.distinct_values() * 4 + lifetime.distinct_values() * 8;
        assert!(bytes <= 64 * 1024, "{bytes} bytes of counters per vault");
        let mut h = histogram::<u64>();
        for ms in [3u64, 12, 40, 250, 1_500, 60_000] {
            h.reset();
            h.saturating_record(ms * 1000);
            let got = h.value_at_quantile(0.5) as f64;
            assert!(
                (got / (ms * 1000) as f64 - 1.0).abs() < 0.01,
                "{ms} ms read as {got} us"
            );
        }
        h.saturating_record(u64::MAX);
        assert!(
            h.max() >= 3_600_000_000,
            "a huge value saturates, it is not lost"
        );
    }

    /// Hardening item 17: every cache miss merged two 180 KiB histograms (11-23 µs) to read the
    /// hedge delay; now it is read at most once a second.
    #[test]
    fn the_hedge_delay_is_read_at_most_once_a_second() {
        let t0 = Instant::now();
        let mut l = Latencies::new(t0);
        let policy = HedgePolicy::default();
        assert_eq!(l.delay(&policy, t0), Duration::from_millis(150));
        for _ in 0..50 {
            l.record(Duration::from_millis(40), t0);
        }
        let d = l.delay(&policy, t0);
        assert!(
            d >= Duration::from_millis(39) && d <= Duration::from_millis(41),
            "{d:?}"
        );
        for _ in 0..500 {
            l.record(Duration::from_millis(400), t0);
        }
        assert_eq!(l.delay(&policy, t0), d, "reused within the second");
        let d2 = l.delay(&policy, t0 + HEDGE_RECOMPUTE);
        assert!(d2 >= Duration::from_millis(399), "{d2:?}");
    }

    /// Latencies older than two windows no longer count.
    #[test]
    fn old_windows_are_forgotten() {
        let t0 = Instant::now();
        let mut l = Latencies::new(t0);
        let policy = HedgePolicy::default();
        for _ in 0..50 {
            l.record(Duration::from_millis(400), t0);
        }
        assert!(l.delay(&policy, t0) >= Duration::from_millis(399));
        assert_eq!(
            l.delay(&policy, t0 + 2 * RECENT_WINDOW),
            Duration::from_millis(150),
            "back to the default"
        );
    }
}
