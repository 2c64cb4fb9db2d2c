//! Deterministic simulation in virtual time.
//!
//! [`run_virtual`] runs a future on a paused current-thread tokio runtime with `failsafe`'s
//! clock kept in step, so the *production* client (breakers included) runs in virtual time:
//! an hour of outage takes milliseconds and the same seed gives the same run.
//!
//! [`simulate_outage`] is the built-in scenario: two regions, the primary goes down for four
//! minutes under steady read load with occasional writes, then recovers. It reports
//! availability, staleness, failover and failback times and the load each vault saw, and checks
//! the client's invariants.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use secrecy::SecretString;
use tokio::time::Instant;

use crate::config::{Access, Config};
use crate::store::{Fault, Latency, MemoryStore};
use crate::{BreakerState, FailoverClient};

/// Runs `fut` to completion in virtual time (a paused current-thread runtime, with the
/// breakers' clock following it). Fails only if the runtime cannot be built.
///
/// ```
/// use std::time::Duration;
/// let elapsed = keyvault_failover::sim::run_virtual(async {
///     let t = tokio::time::Instant::now();
///     tokio::time::sleep(Duration::from_secs(3600)).await; // returns at once
///     t.elapsed()
/// }).unwrap();
/// assert!(elapsed >= Duration::from_secs(3600));
/// ```
pub fn run_virtual<F: Future>(fut: F) -> std::io::Result<F::Output> {
    crate::clock::run_virtual(fut)
}

/// The built-in regional outage scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutageScenario {
    /// Seed of every random draw (latencies, jitter, workload).
    pub seed: u64,
    /// Simulated time.
    pub duration: Duration,
    /// When the primary goes down.
    pub outage_start: Duration,
    /// When it comes back.
    pub outage_end: Duration,
    /// Reads per second (open loop).
    pub reads_per_sec: u32,
    /// Distinct secrets read.
    pub secrets: u32,
    /// One write attempt every this often.
    pub write_every: Duration,
    /// The client's refresh interval.
    pub refresh_interval: Duration,
}

impl Default for OutageScenario {
    fn default() -> Self {
        OutageScenario {
            seed: 1,
            duration: Duration::from_secs(10 * 60),
            outage_start: Duration::from_secs(2 * 60),
            outage_end: Duration::from_secs(6 * 60),
            reads_per_sec: 50,
            secrets: 40,
            write_every: Duration::from_secs(15),
            refresh_interval: Duration::from_secs(30),
        }
    }
}

/// Per-region load in a [`Report`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RegionLoad {
    /// Region name.
    pub name: String,
    /// GETs that reached the vault.
    pub gets: u64,
    /// Writes that reached the vault.
    pub writes: u64,
    /// Most GETs in any 10 s window.
    pub peak_gets_per_10s: u64,
}

/// What a simulation measured. Field values are virtual time.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Seed.
    pub seed: u64,
    /// Reads issued.
    pub reads: u64,
    /// Reads answered fresh.
    pub fresh: u64,
    /// Reads answered from last-known-good.
    pub stale: u64,
    /// Reads that failed.
    pub failed: u64,
    /// Oldest stale value served, ms.
    pub max_staleness_ms: u64,
    /// Read latency percentiles, µs: p50, p90, p99, p99.9, max.
    pub latency_us: [u64; 5],
    /// Writes attempted, accepted, refused read-only (nothing sent), failed otherwise.
    pub writes: [u64; 4],
    /// Time from outage start until the route left the primary, ms.
    pub failover_ms: Option<u64>,
    /// Time from outage end until the route was back on the primary, ms.
    pub failback_ms: Option<u64>,
    /// Route changes.
    pub route_changes: u64,
    /// Load per region.
    pub regions: Vec<RegionLoad>,
    /// Broken invariants (empty when the run is sound).
    pub violations: Vec<String>,
}

impl Report {
    /// Read availability: share of reads answered (fresh or stale).
    pub fn availability(&self) -> f64 {
        if self.reads == 0 {
            return 1.0;
        }
        (self.fresh + self.stale) as f64 / self.reads as f64
    }
}

fn ms(d: Option<u64>) -> String {
    d.map_or("-".into(), |v| format!("{:.1} s", v as f64 / 1000.0))
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = |v: u64| format!("{:.1} ms", v as f64 / 1000.0);
        writeln!(f, "scenario {}  seed {}", self.scenario, self.seed)?;
        writeln!(
            f,
            "reads      {:>8}   availability {:.4} %",
            self.reads,
            100.0 * self.availability()
        )?;
        writeln!(
            f,
            "  fresh    {:>8}   stale {}   failed {}   max staleness {}",
            self.fresh,
            self.stale,
            self.failed,
            ms(Some(self.max_staleness_ms))
        )?;
        let [p50, p90, p99, p999, max] = self.latency_us;
        writeln!(
            f,
            "latency    p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            us(p50),
            us(p90),
            us(p99),
            us(p999),
            us(max)
        )?;
        let [wa, wok, wro, wfail] = self.writes;
        writeln!(
            f,
            "writes     {wa} attempted: {wok} written, {wro} refused read-only (not sent), {wfail} failed"
        )?;
        writeln!(
            f,
            "failover   {}   failback {}   route changes {}",
            ms(self.failover_ms),
            ms(self.failback_ms),
            self.route_changes
        )?;
        writeln!(f, "region     gets  writes  peak gets/10s")?;
        for r in &self.regions {
            writeln!(
                f,
                "  {:<6} {:>6}  {:>6}  {:>6}",
                r.name, r.gets, r.writes, r.peak_gets_per_10s
            )?;
        }
        if self.violations.is_empty() {
            writeln!(f, "invariants ok (no write to a read-only vault, no value past the cap, no route to an open breaker)")
        } else {
            for v in &self.violations {
                writeln!(f, "VIOLATION  {v}")?;
            }
            Ok(())
        }
    }
}

/// Runs the built-in regional outage scenario in virtual time.
pub fn simulate_outage(s: &OutageScenario) -> std::io::Result<Report> {
    run_virtual(outage(s.clone()))
}

#[derive(Default)]
struct Tally {
    fresh: AtomicU64,
    stale: AtomicU64,
    failed: AtomicU64,
    max_stale_ms: AtomicU64,
    writes: [AtomicU64; 4],
}

async fn outage(s: OutageScenario) -> Report {
    let cap = Duration::from_secs(3600);
    let weu = Arc::new(MemoryStore::with_seed("weu", s.seed));
    let neu = Arc::new(MemoryStore::with_seed("neu", s.seed.wrapping_add(1)));
    weu.set_latency(Latency::Uniform(
        Duration::from_millis(4),
        Duration::from_millis(30),
    ));
    neu.set_latency(Latency::Uniform(
        Duration::from_millis(20),
        Duration::from_millis(60),
    ));
    neu.set_read_only(true);
    for i in 0..s.secrets {
        let v = format!("value-{i}-v0");
        weu.insert(&format!("secret-{i}"), &v);
        neu.insert(&format!("secret-{i}"), &v);
    }
    let config = Config::builder()
        .region("weu", "https://app-weu.vault.azure.net", Access::ReadWrite)
        .region("neu", "https://app-neu.vault.azure.net", Access::ReadOnly)
        .refresh_interval(s.refresh_interval)
        .staleness_cap(cap)
        .attempt_timeout(Duration::from_secs(1))
        .deadline(Duration::from_secs(3))
        .seed(s.seed)
        .build()
        .expect("the built-in scenario's configuration is valid");
    let client = FailoverClient::builder(config)
        .store("weu", weu.clone())
        .store("neu", neu.clone())
        .build()
        .expect("the built-in scenario's stores match its regions");

    let start = Instant::now();
    let tally = Arc::new(Tally::default());
    let lat = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
    ));
    let violations = Arc::new(Mutex::new(Vec::<String>::new()));

    // Fault timeline and observer: route, invariants, per-10 s load.
    let observer = {
        let (client, weu, neu, violations) =
            (client.clone(), weu.clone(), neu.clone(), violations.clone());
        let s = s.clone();
        tokio::spawn(async move {
            let mut failover = None;
            let mut failback = None;
            let mut down = false;
            let (mut last, mut peak) = ([0u64; 2], [0u64; 2]);
            let mut tick = 0u64;
            loop {
                let t = start.elapsed();
                if !down && t >= s.outage_start && t < s.outage_end {
                    weu.set_fault(Some(Fault::Refuse));
                    down = true;
                }
                if down && t >= s.outage_end {
                    weu.set_fault(None);
                    down = false;
                }
                let h = client.health();
                if let Some(active) = h.active() {
                    let idx = h.regions().iter().position(|r| r.name() == active);
                    if let Some(i) = idx {
                        if h.regions()[i].breaker() == BreakerState::Open {
                            violations
                                .lock()
                                .unwrap()
                                .push(format!("t={t:?}: route on {active} whose breaker is open"));
                        }
                    }
                }
                if failover.is_none() && t >= s.outage_start && h.active() != Some("weu") {
                    failover = Some((t - s.outage_start).as_millis() as u64);
                }
                if failback.is_none() && t >= s.outage_end && h.active() == Some("weu") {
                    failback = Some((t - s.outage_end).as_millis() as u64);
                }
                if tick.is_multiple_of(100) {
                    for (i, st) in [&weu, &neu].iter().enumerate() {
                        peak[i] = peak[i].max(st.gets() - last[i]);
                        last[i] = st.gets();
                    }
                }
                if t >= s.duration {
                    return (failover, failback, peak);
                }
                tick += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    // Open-loop reads and periodic writes.
    let mut rng = fastrand::Rng::with_seed(s.seed);
    let interval = Duration::from_secs(1) / s.reads_per_sec.max(1);
    let total = (s.duration.as_secs_f64() * s.reads_per_sec as f64) as u64;
    let writes_every = (s.write_every.as_secs_f64() * s.reads_per_sec as f64).max(1.0) as u64;
    let mut tasks = Vec::with_capacity(total as usize);
    for n in 0..total {
        let intended = start + interval * n as u32;
        tokio::time::sleep_until(intended).await;
        let i = rng.u32(0..s.secrets);
        let (client, tally, lat) = (client.clone(), tally.clone(), lat.clone());
        let violations = violations.clone();
        let write = n % writes_every == writes_every - 1;
        tasks.push(tokio::spawn(async move {
            let name = format!("secret-{i}");
            if write {
                tally.writes[0].fetch_add(1, Ordering::Relaxed);
                let v = SecretString::from(format!("value-{i}-v{n}"));
                let slot = match client.set_secret(&name, v).await {
                    Ok(_) => 1,
                    Err(e) if e.is_read_only() => 2,
                    Err(_) => 3,
                };
                tally.writes[slot].fetch_add(1, Ordering::Relaxed);
                return;
            }
            match client.get_secret(&name).await {
                Ok(sec) => {
                    if let crate::Freshness::Stale { age } = sec.freshness() {
                        tally.stale.fetch_add(1, Ordering::Relaxed);
                        let age_ms = age.as_millis() as u64;
                        tally.max_stale_ms.fetch_max(age_ms, Ordering::Relaxed);
                        if age > cap {
                            violations
                                .lock()
                                .unwrap()
                                .push(format!("{name} served {age:?} old, past the cap"));
                        }
                    } else {
                        tally.fresh.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(_) => {
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            let us = (intended.elapsed().as_micros() as u64).max(1);
            lat.lock().unwrap().saturating_record(us);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let (failover, failback, peak) = observer.await.unwrap_or((None, None, [0, 0]));
    if neu.writes() > 0 {
        violations.lock().unwrap().push(format!(
            "{} writes reached the read-only vault neu",
            neu.writes()
        ));
    }
    let h = lat.lock().unwrap();
    let q = |p: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(p)
        }
    };
    let w = |i: usize| tally.writes[i].load(Ordering::Relaxed);
    let fresh = tally.fresh.load(Ordering::Relaxed);
    let stale = tally.stale.load(Ordering::Relaxed);
    let failed = tally.failed.load(Ordering::Relaxed);
    let violations = violations.lock().unwrap().clone();
    Report {
        scenario: "regional-outage".into(),
        seed: s.seed,
        reads: fresh + stale + failed,
        fresh,
        stale,
        failed,
        max_staleness_ms: tally.max_stale_ms.load(Ordering::Relaxed),
        latency_us: [q(0.5), q(0.9), q(0.99), q(0.999), h.max()],
        writes: [w(0), w(1), w(2), w(3)],
        failover_ms: failover,
        failback_ms: failback,
        route_changes: client.health().route_changes(),
        regions: vec![
            RegionLoad {
                name: "weu".into(),
                gets: weu.gets(),
                writes: weu.writes(),
                peak_gets_per_10s: peak[0],
            },
            RegionLoad {
                name: "neu".into(),
                gets: neu.gets(),
                writes: neu.writes(),
                peak_gets_per_10s: peak[1],
            },
        ],
        violations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outage_is_survived_and_reproducible() {
        let s = OutageScenario {
            duration: Duration::from_secs(8 * 60),
            reads_per_sec: 20,
            ..OutageScenario::default()
        };
        let a = simulate_outage(&s).unwrap();
        let b = simulate_outage(&s).unwrap();
        assert_eq!(a, b, "same seed, same report");
        assert!(a.violations.is_empty(), "{:?}", a.violations);
        assert_eq!(a.failed, 0, "{a}");
        assert!(a.failover_ms.is_some() && a.failback_ms.is_some(), "{a}");
        assert!(a.writes[2] > 0, "writes during the outage are refused: {a}");
        assert_eq!(a.regions[1].writes, 0);
    }
}
