//! Deterministic failover simulation in virtual time.
//!
//! The simulator runs the *production* [`FailoverClient`](keyvault_failover::FailoverClient) (breakers,
//! prober, refresher, hedging) over in-process simulated vaults on a paused current-thread
//! tokio runtime, which drives every timer and every breaker decision. Every random draw (latencies, jitter,
//! fault draws, workload) comes from seeds derived from the scenario's seed, so the same
//! scenario and seed give a byte-identical report; a day of traffic takes seconds.
//!
//! A [`Scenario`] (TOML, see `simulations/README.md`) gives the regions, the workload, a fault
//! timeline and the fleet size. Each run measures the client and, on the same timeline, the
//! baselines a user would otherwise have: the plain SDK, cache-aside with a fixed TTL, and App
//! Service Key Vault references ([`ContenderKind`]).
//!
//! ```
//! use keyvault_failover_sim::{simulate, Scenario, SimOptions};
//! let scenario = Scenario::builtin("regional-outage")?
//!     .with_duration(std::time::Duration::from_secs(300))?;
//! let run = simulate(&scenario, &SimOptions::default())?;
//! let client = &run.report().contenders[0];
//! assert_eq!(client.name, "failover-client");
//! assert!(run.report().violations().is_empty());
//! assert!(client.availability > 0.999);
//! # Ok::<(), keyvault_failover_sim::Error>(())
//! ```

#![deny(missing_docs)]

mod contender;
mod error;
pub mod plot;
mod report;
mod run;
mod scenario;
mod swarm;
mod vault;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// Locks `m`, going on through poisoning: every guarded value here stays consistent when a
/// holder panics (counters and maps written in one step).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub use contender::ContenderKind;
pub use error::Error;
pub use report::lat;
pub use report::{
    ContenderReport, Invariant, Percentiles, PhaseLoad, PhaseReport, SimReport, VaultLoad, Writes,
};
pub(crate) use run::Timeline;
pub use scenario::Scenario;
pub use swarm::{swarm, SwarmReport, SwarmRow};

/// How to run a scenario.
#[derive(Debug, Clone, Default)]
pub struct SimOptions {
    /// The contenders to run; `None`: the client and the scenario's baselines.
    pub contenders: Option<Vec<ContenderKind>>,
    /// Progress: virtual milliseconds simulated so far, summed over contenders (the total is
    /// the scenario's duration times the number of contenders).
    pub progress: Option<Arc<AtomicU64>>,
    /// Threads to spread the contenders over; 0 (the default): one per core.
    pub threads: usize,
}

/// A finished simulation: the report and what its plot is drawn from.
#[derive(Debug, Clone)]
pub struct Simulation {
    report: SimReport,
    timelines: Vec<run::Timeline>,
}

impl Simulation {
    /// The report.
    pub fn report(&self) -> &SimReport {
        &self.report
    }

    /// An SVG plot: latency and failed reads over time for every contender, with the
    /// client's active region and each breaker's state as bands.
    pub fn svg(&self) -> String {
        crate::plot::simulation_svg(&self.report, &self.timelines)
    }
}

/// Runs `scenario`: each contender in its own virtual-time runtime, on the same timeline, the
/// contenders spread over the machine's cores.
///
/// # Errors
/// When the scenario's client settings are invalid or a runtime cannot be built.
pub fn simulate(scenario: &Scenario, options: &SimOptions) -> Result<Simulation, Error> {
    let kinds = options
        .contenders
        .clone()
        .unwrap_or_else(|| ContenderKind::all_for(scenario));
    // Each contender runs in its own virtual-time runtime, so they run on as many threads as
    // the machine has cores; each is deterministic alone, so the report does not depend on
    // how they were spread.
    let threads = match options.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let run_one = |kind: ContenderKind| {
        keyvault_failover::run_virtual(run::run(scenario, kind, options.progress.clone()))
            .map_err(|e| Error::runtime(format!("cannot build the simulation runtime: {e}")))?
    };
    let results: Vec<Result<(ContenderReport, run::Timeline), Error>> =
        if threads < 2 || kinds.len() < 2 {
            kinds.into_iter().map(run_one).collect()
        } else {
            let next = std::sync::atomic::AtomicUsize::new(0);
            let slots: Vec<std::sync::Mutex<Option<_>>> =
                kinds.iter().map(|_| std::sync::Mutex::new(None)).collect();
            std::thread::scope(|scope| {
                for _ in 0..threads.min(kinds.len()) {
                    scope.spawn(|| loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&kind) = kinds.get(i) else { return };
                        let r = run_one(kind);
                        *lock(&slots[i]) = Some(r);
                    });
                }
            });
            slots
                .into_iter()
                .map(|s| {
                    s.into_inner()
                        .unwrap_or_else(|p| p.into_inner())
                        .unwrap_or_else(|| Err(Error::runtime("a simulation thread panicked")))
                })
                .collect()
        };
    let mut contenders = Vec::with_capacity(results.len());
    let mut timelines = Vec::with_capacity(results.len());
    for r in results {
        let (report, timeline) = r?;
        contenders.push(report);
        timelines.push(timeline);
    }
    Ok(Simulation {
        report: SimReport {
            scenario: scenario.name.clone(),
            description: scenario.description.trim().to_string(),
            seed: scenario.seed,
            duration_s: scenario.duration.as_secs_f64(),
            instances: scenario.fleet.instances,
            processes_per_agent: scenario.fleet.processes_per_agent,
            staleness_cap_s: scenario.staleness_cap().as_secs_f64(),
            contenders,
        },
        timelines,
    })
}
