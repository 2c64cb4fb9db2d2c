//! One regional vault as the client sees it: its store, breaker, gate and latency record.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use keyvault_failover_core::budget::VaultGate;
use keyvault_failover_core::hedge::{histogram, micros, Latencies};
use keyvault_failover_core::outlier::Outliers;
use keyvault_failover_core::probe::LastProbe;
use tokio::time::Instant;

use crate::breaker::{Breaker, BreakerState};
use crate::clock::now;
use crate::config::Access;
use crate::store::SecretStore;
use keyvault_failover_core::route::Candidate;

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
    recent: Mutex<Latencies>,
    /// Consecutive successful probes since the last failure of any call.
    probe_streak: AtomicU32,
    /// Consecutive failed probes.
    probe_failures: AtomicU32,
    /// Consecutive successful callers' calls while this vault carried the route, since the
    /// last failure of any call: `failback_successes` of them clear `suspect` as probes do.
    caller_streak: AtomicU32,
    /// Hedges another vault won while this one had not answered, since its last success.
    hedges_lost: AtomicU32,
    /// When a caller's call last succeeded (cleared when a call fails): passive health,
    /// which lets the prober skip a probe.
    last_caller_ok: crate::clock::Mark,
    /// When this vault was last probed (prober or trial read); lock-free for the hit path.
    last_probe: LastProbe,
    born: Instant,
    /// A call or probe failed since the vault last proved itself with a run of good probes
    /// (or of good callers' calls while it carried the route).
    suspect: AtomicBool,
    /// Until when the vault, just proved, is held back from taking the route back.
    failback_hold: crate::clock::Mark,
    /// Callers' outcomes over the last one to two windows, and ejections (outlier detection).
    outcomes: Mutex<Outliers>,
    /// Told when a call fails: its prober, in a healthy wait, must choose its pace again (the
    /// vault has to prove itself).
    suspected: Arc<tokio::sync::Notify>,
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
            recent: Mutex::new(Latencies::new(now())),
            probe_streak: AtomicU32::new(0),
            probe_failures: AtomicU32::new(0),
            caller_streak: AtomicU32::new(0),
            hedges_lost: AtomicU32::new(0),
            last_probe: LastProbe::new(now()),
            last_caller_ok: crate::clock::Mark::default(),
            born: Instant::now(),
            suspect: AtomicBool::new(false),
            failback_hold: crate::clock::Mark::default(),
            outcomes: Mutex::new(Outliers::new(now())),
            suspected: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Records the latency of an answered attempt (not of a cancelled one).
    pub(crate) fn record_latency(&self, d: Duration) {
        crate::lock(&self.latency).saturating_record(micros(d));
        crate::lock(&self.recent).record(d, now());
    }

    /// The hedge delay: the `percentile` of the last one to two windows of latencies, within
    /// `[floor, ceiling]`; `default` until `min_samples` latencies are known (tower's model).
    /// Read again at most once a second; no allocation.
    pub(crate) fn hedge_delay(&self, cfg: &crate::config::HedgeConfig) -> Duration {
        crate::lock(&self.recent).delay(&cfg.policy(), now())
    }

    /// Claims the next probe of this vault if none was made within `interval`; lock-free.
    pub(crate) fn claim_probe(&self, interval: Duration) -> bool {
        self.last_probe.claim(interval, now())
    }

    /// A probe starts now.
    pub(crate) fn mark_probed(&self) {
        self.last_probe.mark(now());
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
        self.caller_streak.store(0, Ordering::Relaxed);
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

    /// A caller's call succeeded: the vault answers what callers ask (passive health). On the
    /// vault that carries the route (`carries_route`), `successes` of them in a row prove a
    /// suspect vault as a run of good probes does. A vault whose failures never tripped its
    /// breaker keeps the route; proving it by probes alone, every instance of a fleet whose
    /// refreshes failed a few times in a regional outage probed the recovered primary three
    /// times at the unhealthy pace while its refreshes already succeeded there.
    pub(crate) fn caller_succeeded(&self, carries_route: bool, successes: u32) {
        self.last_caller_ok.set(self.born);
        if carries_route
            && self.suspect.load(Ordering::Relaxed)
            && self.caller_streak.fetch_add(1, Ordering::Relaxed) + 1 >= successes
        {
            self.suspect.store(false, Ordering::Relaxed);
        }
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
        self.caller_streak.store(0, Ordering::Relaxed);
        self.suspected.notify_waiters();
    }

    /// Told each time a call to this vault fails (see [`call_failed`](Self::call_failed)).
    pub(crate) fn suspected(&self) -> Arc<tokio::sync::Notify> {
        self.suspected.clone()
    }

    /// The route may not move back to this vault for `d` (it has just proved itself).
    pub(crate) fn hold_failback(&self, d: Duration) {
        self.failback_hold.set_after(self.born, d);
    }

    /// How much longer the route may not move back to this vault, if it may not.
    pub(crate) fn failback_held(&self) -> Option<Duration> {
        self.failback_hold.ahead_of(self.born.elapsed())
    }

    /// Whether traffic may move to this vault now (see [`Candidate::trusted`]).
    pub(crate) fn trusted(&self, successes: u32, quiet: Duration) -> bool {
        Candidate::trusted(self, successes, quiet, now())
    }

    /// Records a caller's call outcome; says whether the vault now fails so large a share of
    /// callers' calls that it should be ejected ([`Outliers::record`]).
    pub(crate) fn caller_outcome(&self, ok: bool) -> bool {
        crate::lock(&self.outcomes).record(ok, now())
    }

    /// Ejects the vault from the route ([`Outliers::eject`]). Returns how long.
    pub(crate) fn eject(&self) -> Duration {
        crate::lock(&self.outcomes).eject(now())
    }

    /// Consecutive failed probes.
    pub(crate) fn probe_failures(&self) -> u32 {
        self.probe_failures.load(Ordering::Relaxed)
    }

    /// Consecutive successful probes since the last failure.
    pub(crate) fn probe_streak(&self) -> u32 {
        self.probe_streak.load(Ordering::Relaxed)
    }

    /// Latency percentiles of the attempts this client made to the vault.
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

impl Candidate for Vault {
    fn closed(&self) -> bool {
        self.breaker.state() == BreakerState::Closed
    }

    /// Closed, not failed since it last passed `successes` probes in a row (a vault that
    /// never failed is trusted), not ejected for failing callers, and no caller's call to it
    /// failed within `quiet`.
    fn trusted(&self, successes: u32, quiet: Duration, now: std::time::Instant) -> bool {
        if !self.closed()
            || (self.suspect.load(Ordering::Relaxed) && self.probe_streak() < successes)
        {
            return false;
        }
        crate::lock(&self.outcomes).admits(quiet, now)
    }

    fn writable(&self) -> bool {
        self.access == Access::ReadWrite
    }

    fn settled(&self, now: std::time::Instant) -> bool {
        let since_born = now.saturating_duration_since(self.born.into_std());
        self.failback_hold.ahead_of(since_born).is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Events;
    use crate::store::MemoryStore;

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

    /// The vault's probe claim follows tokio's paused clock (the engine's `now`).
    #[test]
    fn a_probe_is_claimed_once_per_interval_on_the_paused_clock() {
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

    /// The hedge delay follows the paused clock too: recomputed after a second.
    #[test]
    fn the_hedge_delay_follows_the_paused_clock() {
        crate::clock::run_virtual(async {
            let v = vault();
            let cfg = crate::config::HedgeConfig::default();
            for _ in 0..50 {
                v.record_latency(Duration::from_millis(40));
            }
            let d = v.hedge_delay(&cfg);
            for _ in 0..500 {
                v.record_latency(Duration::from_millis(400));
            }
            assert_eq!(v.hedge_delay(&cfg), d, "reused within the second");
            tokio::time::advance(keyvault_failover_core::hedge::HEDGE_RECOMPUTE).await;
            assert!(v.hedge_delay(&cfg) >= Duration::from_millis(399));
        })
        .unwrap();
    }
}
