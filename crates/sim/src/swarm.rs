//! Many seeds of one scenario, run in parallel and summarised per contender.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use super::report::{lat, ms};
use super::{simulate, Scenario, SimOptions, SimReport};
use crate::error::Error;
use crate::lock;

/// One contender over every seed of a swarm.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SwarmRow {
    /// Contender name.
    pub name: String,
    /// Lowest availability of any seed.
    pub availability_min: f64,
    /// Mean availability.
    pub availability_mean: f64,
    /// Failed reads, all seeds.
    pub failed: u64,
    /// Stale serves, all seeds.
    pub stale: u64,
    /// Oldest stale value served in any seed, ms.
    pub max_staleness_ms: u64,
    /// Median and worst failover detection, ms.
    pub failover_ms: [Option<u64>; 2],
    /// Median and worst failback, ms.
    pub failback_ms: [Option<u64>; 2],
    /// Worst p99 latency of any seed, µs.
    pub p99_us_max: u64,
    /// Most route changes in one seed.
    pub route_changes_max: u64,
    /// Seeds that broke an invariant.
    pub violating_seeds: Vec<u64>,
}

/// A swarm's summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SwarmReport {
    /// Scenario name.
    pub scenario: String,
    /// First seed.
    pub first_seed: u64,
    /// Seeds run.
    pub seeds: u64,
    /// Per contender.
    pub rows: Vec<SwarmRow>,
}

fn median_max(mut v: Vec<u64>) -> [Option<u64>; 2] {
    v.sort_unstable();
    [v.get(v.len() / 2).copied(), v.last().copied()]
}

impl SwarmReport {
    fn from_reports(scenario: &str, seeds: Range<u64>, reports: &[SimReport]) -> Self {
        let names: Vec<String> = reports
            .first()
            .map(|r| r.contenders.iter().map(|c| c.name.clone()).collect())
            .unwrap_or_default();
        let rows = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let cs: Vec<_> = reports.iter().filter_map(|r| r.contenders.get(i)).collect();
                let n = cs.len().max(1) as f64;
                SwarmRow {
                    name: name.clone(),
                    availability_min: cs.iter().map(|c| c.availability).fold(1.0, f64::min),
                    availability_mean: (cs.iter().map(|c| c.availability).sum::<f64>() / n * 1e6)
                        .round()
                        / 1e6,
                    failed: cs.iter().map(|c| c.failed).sum(),
                    stale: cs.iter().map(|c| c.stale).sum(),
                    max_staleness_ms: cs.iter().map(|c| c.max_staleness_ms).max().unwrap_or(0),
                    failover_ms: median_max(cs.iter().filter_map(|c| c.failover_ms).collect()),
                    failback_ms: median_max(cs.iter().filter_map(|c| c.failback_ms).collect()),
                    p99_us_max: cs.iter().map(|c| c.latency_us.p99).max().unwrap_or(0),
                    route_changes_max: cs.iter().map(|c| c.route_changes).max().unwrap_or(0),
                    violating_seeds: reports
                        .iter()
                        .filter(|r| r.contenders.get(i).is_some_and(|c| !c.sound()))
                        .map(|r| r.seed)
                        .collect(),
                }
            })
            .collect();
        SwarmReport {
            scenario: scenario.to_string(),
            first_seed: seeds.start,
            seeds: seeds.end - seeds.start,
            rows,
        }
    }

    /// Whether every seed kept every invariant.
    pub fn sound(&self) -> bool {
        self.rows.iter().all(|r| r.violating_seeds.is_empty())
    }
}

impl fmt::Display for SwarmReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "scenario {}  seeds {}..{} ({} runs)",
            self.scenario,
            self.first_seed,
            self.first_seed + self.seeds,
            self.seeds
        )?;
        writeln!(
            f,
            "{:<20}{:>12}{:>12}{:>9}{:>9}{:>12}{:>20}{:>20}{:>11}{:>8}{:>11}",
            "contender",
            "avail min",
            "avail mean",
            "failed",
            "stale",
            "max stale",
            "failover med/max",
            "failback med/max",
            "p99 max",
            "routes",
            "violations"
        )?;
        for r in &self.rows {
            writeln!(
                f,
                "{:<20}{:>11.3}%{:>11.3}%{:>9}{:>9}{:>12}{:>20}{:>20}{:>11}{:>8}{:>11}",
                r.name,
                100.0 * r.availability_min,
                100.0 * r.availability_mean,
                r.failed,
                r.stale,
                ms(Some(r.max_staleness_ms)),
                format!("{} / {}", ms(r.failover_ms[0]), ms(r.failover_ms[1])),
                format!("{} / {}", ms(r.failback_ms[0]), ms(r.failback_ms[1])),
                lat(r.p99_us_max),
                r.route_changes_max,
                r.violating_seeds.len()
            )?;
        }
        for r in self.rows.iter().filter(|r| !r.violating_seeds.is_empty()) {
            writeln!(f, "VIOLATION {}: seeds {:?}", r.name, r.violating_seeds)?;
        }
        Ok(())
    }
}

/// Runs `scenario` once per seed in `seeds`, `threads` at a time. `done` counts finished
/// seeds.
///
/// # Errors
/// The first run that could not be set up.
pub fn swarm(
    scenario: &Scenario,
    options: &SimOptions,
    seeds: Range<u64>,
    threads: usize,
    done: &AtomicU64,
) -> Result<SwarmReport, Error> {
    let next = AtomicU64::new(seeds.start);
    let results: Mutex<Vec<Result<SimReport, Error>>> = Mutex::new(Vec::new());
    let options = SimOptions {
        contenders: options.contenders.clone(),
        progress: None,
        // The seeds are spread over the threads already.
        threads: 1,
    };
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= seeds.end {
                    return;
                }
                let r = simulate(&scenario.clone().with_seed(seed), &options)
                    .map(|s| s.report().clone());
                lock(&results).push(r);
                done.fetch_add(1, Ordering::Relaxed);
            });
        }
    });
    let mut reports = Vec::new();
    for r in results.into_inner().unwrap_or_else(|p| p.into_inner()) {
        reports.push(r?);
    }
    reports.sort_by_key(|r| r.seed);
    Ok(SwarmReport::from_reports(scenario.name(), seeds, &reports))
}
