//! What a simulation reports: one [`ContenderReport`] per contender, on one fault timeline.

use std::fmt;

use serde::Serialize;

/// Latency percentiles in virtual time, microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
}

impl Percentiles {
    /// The percentiles of `h` (all zero when it is empty).
    pub fn of(h: &hdrhistogram::Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Percentiles {
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// One phase of the fault timeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseReport {
    /// `steady`, the faults active (e.g. `outage weu`), or `recovery`.
    pub name: String,
    /// Start, seconds from the run's start.
    pub start_s: f64,
    /// End, seconds.
    pub end_s: f64,
    /// Reads whose intended send time falls in the phase.
    pub reads: u64,
    /// Reads that got no value.
    pub failed: u64,
    /// Reads served stale from last-known-good.
    pub stale: u64,
    /// Share of reads answered, fresh or stale.
    pub availability: f64,
    /// Latency from intended send time.
    pub latency_us: Percentiles,
    /// Per vault (in the order of the contender's `vaults`): its load in the phase.
    pub vaults: Vec<PhaseLoad>,
}

/// The load on one vault during one phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PhaseLoad {
    /// Most GETs admitted in any 10 s window that starts in the phase (cut at its end).
    pub peak_per_10s: u64,
    /// Calls answered 429 in the phase.
    pub throttled: u64,
}

/// Load on one vault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VaultLoad {
    /// Region.
    pub region: String,
    /// GETs (and probe listings) that reached it.
    pub gets: u64,
    /// Writes that reached it.
    pub writes: u64,
    /// Calls it answered 429.
    pub throttled: u64,
    /// Most GETs admitted in any 10 s window.
    pub peak_per_10s: u64,
    /// GETs admitted per 10 s, averaged over the run (rounded).
    pub mean_per_10s: u64,
    /// Health probes (GETs and listings) among `gets`.
    pub probes: u64,
    /// GETs admitted in each 10 s of the run (the last one may be shorter).
    pub per_10s: Vec<u64>,
    /// Calls answered 429 in each 10 s of the run.
    pub throttled_per_10s: Vec<u64>,
    /// Its limit per 10 s.
    pub limit: u32,
}

/// One invariant and whether the run kept it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Invariant {
    /// What must hold.
    pub name: String,
    /// Whether it held.
    pub held: bool,
    /// Counts behind the verdict.
    pub detail: String,
}

/// Writes by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Writes {
    /// Attempted.
    pub attempted: u64,
    /// Accepted by the writable vault.
    pub ok: u64,
    /// Refused at once by the client because it was read-only (nothing sent).
    pub refused_read_only: u64,
    /// Failed otherwise.
    pub failed: u64,
}

/// Everything one contender did on the scenario's timeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContenderReport {
    /// Contender name.
    pub name: String,
    /// Reads issued (all instances).
    pub reads: u64,
    /// Reads answered with a current value from a vault or the contender's own cache.
    pub fresh: u64,
    /// Reads answered from last-known-good, marked stale.
    pub stale: u64,
    /// Reads that got no value.
    pub failed: u64,
    /// `(fresh + stale) / reads`.
    pub availability: f64,
    /// Oldest stale value served, ms.
    pub max_staleness_ms: u64,
    /// Reads that returned a generation older than the vaults held at the intended send time.
    pub outdated_reads: u64,
    /// Reads answered "not found": every secret read exists in the primary, so each is a
    /// secret reported absent while it was only unreachable (or not yet replicated).
    pub not_found_reads: u64,
    /// Reads served a generation older than one the same instance had already served
    /// (versions going backwards, e.g. a lagging secondary after failover).
    pub backwards_reads: u64,
    /// Latency from intended send time, all reads.
    pub latency_us: Percentiles,
    /// Per phase.
    pub phases: Vec<PhaseReport>,
    /// Rotations in the scenario.
    pub rotations: u32,
    /// Longest time from a rotation until no instance served the old value any more, ms
    /// (`None`: no rotation, or one never propagated).
    pub rotation_delay_ms: Option<u64>,
    /// Rotations still served with an old value by some instance's last read of the secret.
    pub rotations_unpropagated: u32,
    /// Longest time, over instances, from the first fault on the primary until the route left
    /// it, ms.
    pub failover_ms: Option<u64>,
    /// Longest time, over instances, from the end of the last fault on the primary until the
    /// route was back on it, ms.
    pub failback_ms: Option<u64>,
    /// Route changes, all instances.
    pub route_changes: u64,
    /// Vault calls (GETs, probes) per read issued: retry, hedge, refresh and probe
    /// amplification together.
    pub vault_calls_per_read: f64,
    /// Health probes' share of all vault calls.
    pub probe_share: f64,
    /// Load per vault.
    pub vaults: Vec<VaultLoad>,
    /// Writes.
    pub writes: Writes,
    /// Invariant checks.
    pub invariants: Vec<Invariant>,
    /// The replicator's passes, when the scenario has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicator: Option<ReplicatorReport>,
}

/// What the scenario's replicator did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReplicatorReport {
    /// Passes started.
    pub passes: u64,
    /// Passes that could not list the primary (down).
    pub passes_failed: u64,
    /// Passes that ended with a secondary out of step.
    pub passes_not_in_step: u64,
    /// New versions written in the secondaries.
    pub copies: u64,
    /// Writes sent (copies, updates), retries included.
    pub writes: u64,
    /// Answers that asked the replicator to wait.
    pub throttled: u64,
}

impl ContenderReport {
    /// Whether every invariant held.
    pub fn sound(&self) -> bool {
        self.invariants.iter().all(|i| i.held)
    }
}

/// One scenario run: every contender on the same timeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimReport {
    /// Scenario name.
    pub scenario: String,
    /// Its description.
    pub description: String,
    /// Seed.
    pub seed: u64,
    /// Simulated seconds.
    pub duration_s: f64,
    /// Client instances sharing the vaults (with agents: the processes reading through them).
    pub instances: u32,
    /// Processes per node reading through one agent (one client per node); absent for a
    /// client per process.
    #[serde(skip_serializing_if = "is_one")]
    pub processes_per_agent: u32,
    /// The staleness cap the invariant checks against, seconds.
    pub staleness_cap_s: f64,
    /// One report per contender, the client first.
    pub contenders: Vec<ContenderReport>,
}

impl SimReport {
    /// Broken invariants, as `contender: invariant (detail)`.
    pub fn violations(&self) -> Vec<String> {
        self.contenders
            .iter()
            .flat_map(|c| {
                c.invariants
                    .iter()
                    .filter(|i| !i.held)
                    .map(move |i| format!("{}: {} ({})", c.name, i.name, i.detail))
            })
            .collect()
    }

    /// The report as pretty JSON (deterministic: the same run gives the same bytes).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

pub(crate) fn ms(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| secs(v as f64 / 1000.0))
}

pub(crate) fn secs(s: f64) -> String {
    if s >= 3600.0 {
        format!("{:.1} h", s / 3600.0)
    } else if s >= 60.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{s:.1} s")
    }
}

/// A latency in microseconds as a person reads it: `850 µs`, `12.5 ms`, `1.20 s`.
pub fn lat(us: u64) -> String {
    if us < 1_000 {
        format!("{us} µs")
    } else if us >= 1_000_000 {
        format!("{:.2} s", us as f64 / 1e6)
    } else {
        format!("{:.1} ms", us as f64 / 1e3)
    }
}

fn pct(a: f64) -> String {
    format!("{:.3} %", 100.0 * a)
}

impl fmt::Display for SimReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "scenario {}  seed {}  {} simulated  {} instance(s){}  staleness cap {}",
            self.scenario,
            self.seed,
            secs(self.duration_s),
            self.instances,
            if self.processes_per_agent > 1 {
                format!(
                    " through {} node agents ({} processes each)",
                    self.instances / self.processes_per_agent,
                    self.processes_per_agent
                )
            } else {
                String::new()
            },
            secs(self.staleness_cap_s)
        )?;
        if !self.description.is_empty() {
            writeln!(f, "  {}", self.description.trim())?;
        }
        let cols: Vec<&ContenderReport> = self.contenders.iter().collect();
        let w = 18;
        write!(f, "\n{:<26}", "")?;
        for c in &cols {
            write!(f, "{:>w$}", c.name)?;
        }
        writeln!(f)?;
        let row =
            |f: &mut fmt::Formatter<'_>, label: &str, v: &dyn Fn(&ContenderReport) -> String| {
                write!(f, "{label:<26}")?;
                for c in &cols {
                    write!(f, "{:>w$}", v(c))?;
                }
                writeln!(f)
            };
        row(f, "reads", &|c| c.reads.to_string())?;
        row(f, "availability", &|c| pct(c.availability))?;
        row(f, "failed reads", &|c| c.failed.to_string())?;
        row(f, "stale serves", &|c| c.stale.to_string())?;
        row(f, "max staleness", &|c| ms(Some(c.max_staleness_ms)))?;
        row(f, "outdated reads", &|c| c.outdated_reads.to_string())?;
        row(f, "versions gone backwards", &|c| {
            c.backwards_reads.to_string()
        })?;
        row(f, "not-found (secret exists)", &|c| {
            c.not_found_reads.to_string()
        })?;
        row(f, "rotation propagation", &|c| {
            if c.rotations == 0 {
                "-".into()
            } else if c.rotations_unpropagated > 0 {
                format!("{} never", c.rotations_unpropagated)
            } else {
                ms(c.rotation_delay_ms)
            }
        })?;
        row(f, "failover detection", &|c| ms(c.failover_ms))?;
        row(f, "failback", &|c| ms(c.failback_ms))?;
        row(f, "route changes", &|c| c.route_changes.to_string())?;
        row(f, "vault calls per read", &|c| {
            format!("{:.3}", c.vault_calls_per_read)
        })?;
        row(f, "latency p50", &|c| lat(c.latency_us.p50))?;
        row(f, "latency p90", &|c| lat(c.latency_us.p90))?;
        row(f, "latency p99", &|c| lat(c.latency_us.p99))?;
        row(f, "latency p99.9", &|c| lat(c.latency_us.p999))?;
        row(f, "latency max", &|c| lat(c.latency_us.max))?;
        row(f, "writes ok/refused/failed", &|c| {
            format!(
                "{}/{}/{}",
                c.writes.ok, c.writes.refused_read_only, c.writes.failed
            )
        })?;
        if let Some(first) = cols.first() {
            for (i, v) in first.vaults.iter().enumerate() {
                row(
                    f,
                    &format!("{} peak/10s (limit {})", v.region, v.limit),
                    &|c| {
                        c.vaults
                            .get(i)
                            .map_or("-".into(), |v| v.peak_per_10s.to_string())
                    },
                )?;
                row(f, &format!("{} mean/10s", v.region), &|c| {
                    c.vaults
                        .get(i)
                        .map_or("-".into(), |v| v.mean_per_10s.to_string())
                })?;
                row(f, &format!("{} GETs / 429s", v.region), &|c| {
                    c.vaults
                        .get(i)
                        .map_or("-".into(), |v| format!("{} / {}", v.gets, v.throttled))
                })?;
            }
            row(f, "probe share of calls", &|c| pct(c.probe_share))?;
            writeln!(f, "\nphases (availability, p99):")?;
            for (i, p) in first.phases.iter().enumerate() {
                row(
                    f,
                    &format!("  {:.0}-{:.0} s {}", p.start_s, p.end_s, p.name),
                    &|c| {
                        c.phases.get(i).map_or("-".into(), |p| {
                            format!("{} {}", pct(p.availability), lat(p.latency_us.p99))
                        })
                    },
                )?;
            }
        }
        if let Some(first) = cols.first() {
            writeln!(f, "\nvault load per phase (peak GETs/10s, 429s):")?;
            for (i, p) in first.phases.iter().enumerate() {
                for (j, v) in first.vaults.iter().enumerate() {
                    row(
                        f,
                        &format!("  {:.0}-{:.0} s {}", p.start_s, p.end_s, v.region),
                        &|c| {
                            c.phases
                                .get(i)
                                .and_then(|p| p.vaults.get(j))
                                .map_or("-".into(), |l| {
                                    format!("{} / {}", l.peak_per_10s, l.throttled)
                                })
                        },
                    )?;
                }
            }
        }
        let v = self.violations();
        if v.is_empty() {
            writeln!(f, "\ninvariants held: no write reached a read-only vault, no value served past the staleness cap, no call through an open breaker")
        } else {
            for v in v {
                writeln!(f, "VIOLATION {v}")?;
            }
            Ok(())
        }
    }
}

fn is_one(n: &u32) -> bool {
    *n == 1
}
