//! One regional vault as the client sees it: its store, breaker, gate and latency record.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

use crate::breaker::Breaker;
use crate::budget::VaultGate;
use crate::config::Access;
use crate::store::SecretStore;

pub(crate) struct Vault {
    pub(crate) name: Arc<str>,
    pub(crate) access: Access,
    pub(crate) store: Arc<dyn SecretStore>,
    pub(crate) breaker: Breaker,
    pub(crate) gate: VaultGate,
    /// Writes (set, delete) under the vault's write limit; 429 back-off is `gate`'s.
    pub(crate) write_gate: VaultGate,
    latency: Mutex<Histogram<u64>>,
    /// Recent latencies for the hedge delay.
    recent: Mutex<Recent>,
    /// Consecutive successful probes since the last failure of any call.
    probe_streak: AtomicU32,
    /// Consecutive failed probes.
    probe_failures: AtomicU32,
    /// Hedges another vault won while this one had not answered, since its last success.
    hedges_lost: AtomicU32,
    /// When a caller's call last succeeded (cleared when a call fails): passive health,
    /// which lets the prober skip a probe.
    last_caller_ok: crate::clock::Mark,
    /// When this vault was last probed (prober or trial read), in ms after `born` plus one
    /// (0: never). An atomic, so that the hit path can look at it without a lock.
    last_probe_ms: AtomicU64,
    born: Instant,
    /// A call or probe failed since the vault last proved itself with a run of good probes.
    suspect: AtomicBool,
    /// Callers' outcomes over the last one to two windows, and ejections (outlier detection).
    outcomes: Mutex<Outcomes>,
}

/// Callers' successes and failures against one vault, in two rotating windows, and when the
/// vault was last ejected for failing too many of them (Envoy's outlier detection: a vault
/// that fails a share of real calls is taken off the route for a while, however its probes do).
struct Outcomes {
    current: (u32, u32),
    previous: (u32, u32),
    started: Instant,
    ejections: u32,
    ejected_until: Option<Instant>,
    last_failure: Option<Instant>,
}

/// One window of callers' outcomes.
const OUTCOME_WINDOW: Duration = Duration::from_secs(30);
/// Failed calls in the last windows before the failure rate counts.
const OUTLIER_MIN_FAILURES: u32 = 5;
/// Share of failed calls that makes a vault an outlier.
const OUTLIER_FAILURE_RATE: f64 = 0.2;
/// First ejection; each further one in a row is longer by this much, up to `EJECT_MAX`.
const EJECT_BASE: Duration = Duration::from_secs(30);
const EJECT_MAX: Duration = Duration::from_secs(300);

/// How long one window of recent latencies lasts; the hedge delay reads two of them.
const RECENT_WINDOW: Duration = Duration::from_secs(30);
/// How long a computed hedge delay is reused before the percentile is read again.
const HEDGE_RECOMPUTE: Duration = Duration::from_secs(1);

/// Two rotating windows of latencies, and the hedge delay last read from them.
struct Recent {
    current: Histogram<u32>,
    previous: Histogram<u32>,
    started: Instant,
    /// Where the two windows are merged to read a percentile (kept, so nothing is allocated).
    scratch: Histogram<u32>,
    /// The last delay computed and when; a cache miss reuses it for up to a second instead of
    /// walking two histograms each time.
    cached: Option<(Instant, Duration)>,
}

/// 64 µs .. 1 h at 2 significant digits (1 % precision, far finer than any use: hedge delays
/// and health's percentiles): 2,560 counters, 10 KiB as `u32` (the 30 s windows, which cannot
/// count to 2^32) and 20 KiB as `u64` (the lifetime record). At 1 µs and 3 digits each was
/// 184 KiB, 736 KiB per vault (now 50 KiB): a fleet of 10,000 simulated two-vault clients
/// needed 14 GiB.
/// Fixed bounds, so recording never fails (values outside saturate to the bounds).
fn histogram<T: hdrhistogram::Counter>() -> Histogram<T> {
    Histogram::new_with_bounds(64, 3_600_000_000, 2)
        .unwrap_or_else(|_| Histogram::new(2).expect("2 significant digits is valid"))
}

/// Latency percentiles of one vault, from the attempts this client made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct LatencySummary {
    count: u64,
    p50: Duration,
    p90: Duration,
    p99: Duration,
    max: Duration,
}

impl LatencySummary {
    /// Attempts recorded.
    pub fn count(&self) -> u64 {
        self.count
    }
    /// Median.
    pub fn p50(&self) -> Duration {
        self.p50
    }
    /// 90th percentile.
    pub fn p90(&self) -> Duration {
        self.p90
    }
    /// 99th percentile.
    pub fn p99(&self) -> Duration {
        self.p99
    }
    /// Slowest.
    pub fn max(&self) -> Duration {
        self.max
    }
}

impl Vault {
    pub(crate) fn new(
        name: Arc<str>,
        access: Access,
        store: Arc<dyn SecretStore>,
        breaker: Breaker,
        gate: VaultGate,
        write_gate: VaultGate,
    ) -> Self {
        Vault {
            name,
            access,
            store,
            breaker,
            gate,
            write_gate,
            latency: Mutex::new(histogram()),
            recent: Mutex::new(Recent {
                current: histogram(),
                previous: histogram(),
                started: Instant::now(),
                scratch: histogram(),
                cached: None,
            }),
            probe_streak: AtomicU32::new(0),
            probe_failures: AtomicU32::new(0),
            hedges_lost: AtomicU32::new(0),
            last_probe_ms: AtomicU64::new(0),
            last_caller_ok: crate::clock::Mark::default(),
            born: Instant::now(),
            suspect: AtomicBool::new(false),
            outcomes: Mutex::new(Outcomes {
                current: (0, 0),
                previous: (0, 0),
                started: Instant::now(),
                ejections: 0,
                ejected_until: None,
                last_failure: None,
            }),
        }
    }

    /// Records the latency of an answered attempt (not of a cancelled one).
    pub(crate) fn record_latency(&self, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, 3_600_000_000);
        self.latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .saturating_record(us);
        let mut r = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        Self::rotate(&mut r);
        r.current.saturating_record(us);
    }

    fn rotate(r: &mut Recent) {
        let elapsed = r.started.elapsed();
        if elapsed >= RECENT_WINDOW {
            if elapsed >= 2 * RECENT_WINDOW {
                r.previous.reset();
            } else {
                std::mem::swap(&mut r.current, &mut r.previous);
            }
            r.current.reset();
            r.started = Instant::now();
            r.cached = None;
        }
    }

    /// The hedge delay: the `percentile` of the last one to two windows of latencies, within
    /// `[floor, ceiling]`; `default` until `min_samples` latencies are known (tower's model).
    /// Read again at most once a second; no allocation.
    pub(crate) fn hedge_delay(&self, cfg: &crate::config::HedgeConfig) -> Duration {
        let mut r = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        Self::rotate(&mut r);
        let n = r.current.len() + r.previous.len();
        if n < cfg.min_samples {
            return cfg.default_delay;
        }
        let now = Instant::now();
        if let Some((at, d)) = r.cached {
            if now.saturating_duration_since(at) < HEDGE_RECOMPUTE {
                return d;
            }
        }
        let r = &mut *r;
        r.scratch.reset();
        let _ = r.scratch.add(&r.current);
        let _ = r.scratch.add(&r.previous);
        let d = Duration::from_micros(r.scratch.value_at_quantile(cfg.percentile))
            .clamp(cfg.floor, cfg.ceiling);
        r.cached = Some((now, d));
        d
    }

    /// Claims the next probe of this vault if none was made within `interval`; lock-free.
    pub(crate) fn claim_probe(&self, interval: Duration) -> bool {
        let now = self.born.elapsed().as_millis() as u64 + 1;
        let last = self.last_probe_ms.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < interval.as_millis() as u64 {
            return false;
        }
        self.last_probe_ms
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// A probe starts now.
    pub(crate) fn mark_probed(&self) {
        let now = self.born.elapsed().as_millis() as u64 + 1;
        self.last_probe_ms.store(now, Ordering::Relaxed);
    }

    /// A probe (or trial read) succeeded.
    pub(crate) fn probe_succeeded(&self) {
        self.probe_failures.store(0, Ordering::Relaxed);
        self.probe_streak.fetch_add(1, Ordering::Relaxed);
    }

    /// A probe failed; returns the consecutive probe failures.
    pub(crate) fn probe_failed(&self) -> u32 {
        self.suspect.store(true, Ordering::Relaxed);
        self.probe_streak.store(0, Ordering::Relaxed);
        self.probe_failures.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Another vault answered a hedged read first while this one was still silent; returns
    /// how many times in a row (since this vault last answered).
    pub(crate) fn hedge_lost(&self) -> u32 {
        self.hedges_lost.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// This vault answered: it is alive, whatever hedges it lost.
    pub(crate) fn answered(&self) {
        if self.hedges_lost.load(Ordering::Relaxed) != 0 {
            self.hedges_lost.store(0, Ordering::Relaxed);
        }
        self.gate.answered();
    }

    /// A caller's call succeeded: the vault answers what callers ask (passive health).
    pub(crate) fn caller_succeeded(&self) {
        self.last_caller_ok.set(self.born);
    }

    /// Whether a caller's call succeeded within `within`, with no failure since: a probe
    /// would say nothing new.
    pub(crate) fn callers_vouch(&self, within: Duration) -> bool {
        self.last_caller_ok.within(self.born, within)
    }

    /// Any call failed: the vault must prove itself again before traffic fails back to it.
    pub(crate) fn call_failed(&self) {
        self.last_caller_ok.clear();
        self.suspect.store(true, Ordering::Relaxed);
        self.probe_streak.store(0, Ordering::Relaxed);
    }

    /// Whether traffic may move to this vault: its breaker is closed, it has not failed since
    /// it last passed `successes` probes in a row (a vault that never failed is trusted), it is
    /// not ejected for failing callers, and no caller's call to it failed within `quiet`.
    pub(crate) fn trusted(&self, successes: u32, quiet: Duration) -> bool {
        if self.breaker.state() != crate::breaker::BreakerState::Closed
            || (self.suspect.load(Ordering::Relaxed) && self.probe_streak() < successes)
        {
            return false;
        }
        let now = Instant::now();
        let o = crate::lock(&self.outcomes);
        o.ejected_until.is_none_or(|t| now >= t)
            && o.last_failure
                .is_none_or(|t| now.saturating_duration_since(t) >= quiet)
    }

    /// Records a caller's call outcome; says whether the vault now fails so large a share of
    /// callers' calls (at least 5, and 20 %, over the last 30 to 60 s) that it should be ejected.
    pub(crate) fn caller_outcome(&self, ok: bool) -> bool {
        let now = Instant::now();
        let mut o = crate::lock(&self.outcomes);
        let elapsed = now.saturating_duration_since(o.started);
        if elapsed >= OUTCOME_WINDOW {
            o.previous = if elapsed >= 2 * OUTCOME_WINDOW {
                (0, 0)
            } else {
                o.current
            };
            o.current = (0, 0);
            o.started = now;
        }
        if ok {
            o.current.0 += 1;
            return false;
        }
        o.current.1 += 1;
        o.last_failure = Some(now);
        let failed = o.current.1 + o.previous.1;
        let total = failed + o.current.0 + o.previous.0;
        failed >= OUTLIER_MIN_FAILURES
            && f64::from(failed) >= OUTLIER_FAILURE_RATE * f64::from(total)
            && o.ejected_until.is_none_or(|t| now >= t)
    }

    /// Ejects the vault from the route for 30 s × the ejections in a row (at most 5 min), and
    /// forgets the outcomes that led to it. Returns how long.
    pub(crate) fn eject(&self) -> Duration {
        let now = Instant::now();
        let mut o = crate::lock(&self.outcomes);
        // Ejections "in a row": a vault that stayed good for the longest ejection starts over.
        if o.ejected_until
            .is_some_and(|t| now.saturating_duration_since(t) > EJECT_MAX)
        {
            o.ejections = 0;
        }
        o.ejections = o.ejections.saturating_add(1);
        let d = EJECT_BASE.saturating_mul(o.ejections).min(EJECT_MAX);
        o.ejected_until = Some(crate::clock::later(now, d));
        o.current = (0, 0);
        o.previous = (0, 0);
        d
    }

    /// Consecutive failed probes.
    pub(crate) fn probe_failures(&self) -> u32 {
        self.probe_failures.load(Ordering::Relaxed)
    }

    /// Consecutive successful probes since the last failure.
    pub(crate) fn probe_streak(&self) -> u32 {
        self.probe_streak.load(Ordering::Relaxed)
    }

    pub(crate) fn latency(&self) -> LatencySummary {
        let h = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        let q = |p: f64| {
            if h.is_empty() {
                Duration::ZERO
            } else {
                Duration::from_micros(h.value_at_quantile(p))
            }
        };
        LatencySummary {
            count: h.len(),
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            max: if h.is_empty() {
                Duration::ZERO
            } else {
                Duration::from_micros(h.max())
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::Breaker;
    use crate::config::HedgeConfig;
    use crate::events::Events;
    use crate::store::MemoryStore;

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

    fn vault() -> Vault {
        let gate = || VaultGate::new(100, Duration::from_secs(10), 1.0);
        Vault::new(
            "weu".into(),
            Access::ReadWrite,
            std::sync::Arc::new(MemoryStore::new("weu")),
            Breaker::new(
                "weu".into(),
                3,
                Duration::from_secs(1),
                Duration::from_secs(1),
                1,
                Events::new(),
            ),
            gate(),
            gate(),
        )
    }

    /// Hardening item 17: every cache miss merged two 180 KiB histograms (11-23 µs) to read the
    /// hedge delay; now it is read at most once a second.
    #[test]
    fn the_hedge_delay_is_read_at_most_once_a_second() {
        crate::clock::run_virtual(async {
            let v = vault();
            let cfg = HedgeConfig::default();
            assert_eq!(v.hedge_delay(&cfg), cfg.default_delay);
            for _ in 0..50 {
                v.record_latency(Duration::from_millis(40));
            }
            let d = v.hedge_delay(&cfg);
            assert!(
                d >= Duration::from_millis(39) && d <= Duration::from_millis(41),
                "{d:?}"
            );
            for _ in 0..500 {
                v.record_latency(Duration::from_millis(400));
            }
            assert_eq!(v.hedge_delay(&cfg), d, "reused within the second");
            tokio::time::advance(HEDGE_RECOMPUTE).await;
            let d2 = v.hedge_delay(&cfg);
            assert!(d2 >= Duration::from_millis(399), "{d2:?}");
        })
        .unwrap();
    }

    #[test]
    fn a_probe_is_claimed_once_per_interval() {
        crate::clock::run_virtual(async {
            let v = vault();
            let i = Duration::from_secs(2);
            assert!(v.claim_probe(i));
            assert!(!v.claim_probe(i));
            tokio::time::advance(i).await;
            assert!(v.claim_probe(i));
        })
        .unwrap();
    }
}
