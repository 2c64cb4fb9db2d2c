//! Runs one contender over a scenario in virtual time and measures it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::contender::{ContenderKind, Instance, ReadResult, WriteResult};
use super::report::{
    ContenderReport, Invariant, Percentiles, PhaseLoad, PhaseReport, VaultLoad, Writes,
};
use super::scenario::{FaultKind, Op, Scenario};
use super::vault::SimVault;
use crate::lock;
use keyvault_failover::BreakerState;
use keyvault_failover::Event;

/// Points of the plot: per time bucket, per contender.
#[derive(Debug, Clone, Default)]
pub(crate) struct Bucket {
    pub(crate) reads: u64,
    pub(crate) failed: u64,
    pub(crate) stale: u64,
    pub(crate) lat_sum_us: u64,
    pub(crate) lat_max_us: u64,
}

/// What instance 0 of the client did over time: the plot's bands.
#[derive(Debug, Clone, Default)]
pub(crate) struct Timeline {
    pub(crate) bucket: Duration,
    pub(crate) buckets: Vec<Bucket>,
    /// (time, active region or `None` for cache-only).
    pub(crate) route: Vec<(Duration, Option<String>)>,
    /// region → (time, state).
    pub(crate) breakers: BTreeMap<String, Vec<(Duration, BreakerState)>>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 24 * 3_600_000_000, 3).expect("valid histogram bounds")
}

struct Phase {
    name: String,
    start: Duration,
    end: Duration,
    reads: u64,
    failed: u64,
    stale: u64,
    lat: Histogram<u64>,
}

/// The phases of a scenario: cut at every fault start and end.
fn phases(s: &Scenario) -> Vec<Phase> {
    let mut cuts = vec![Duration::ZERO, s.duration];
    for f in &s.faults {
        cuts.extend([f.start.min(s.duration), f.end.min(s.duration)]);
    }
    // A fleet that starts over a spread: its start is a phase of its own.
    let spread = fleet_start(s);
    cuts.push(spread.min(s.duration));
    cuts.sort();
    cuts.dedup();
    let mut seen_fault = false;
    cuts.windows(2)
        .map(|w| {
            let mid = w[0] + (w[1] - w[0]) / 2;
            let active: Vec<String> = s
                .faults
                .iter()
                .filter(|f| mid >= f.start && mid < f.end)
                .map(|f| {
                    let ops: Vec<&str> = f.ops.iter().map(|o| op_name(*o)).collect();
                    if ops.is_empty() {
                        format!("{} {}", kind_name(f.kind), f.region)
                    } else {
                        format!("{} {} ({})", kind_name(f.kind), f.region, ops.join(","))
                    }
                })
                .collect();
            let name = if !active.is_empty() {
                seen_fault = true;
                active.join(" + ")
            } else if mid < spread {
                "fleet start".into()
            } else if seen_fault {
                "recovery".into()
            } else {
                "steady".into()
            };
            Phase {
                name,
                start: w[0],
                end: w[1],
                reads: 0,
                failed: 0,
                stale: 0,
                lat: histogram(),
            }
        })
        .collect()
}

/// How long the fleet takes to start: the workload's start spread, for more than one instance.
fn fleet_start(s: &Scenario) -> Duration {
    if s.fleet.instances > 1 {
        s.workload.start_spread
    } else {
        Duration::ZERO
    }
}

/// Sums of `per_sec` over consecutive 10 s buckets.
fn per_10s(per_sec: &[u32], duration: Duration) -> Vec<u64> {
    let secs = (duration.as_secs() as usize).min(per_sec.len());
    per_sec[..secs]
        .chunks(10)
        .map(|c| c.iter().map(|&x| u64::from(x)).sum())
        .collect()
}

/// The most in any 10 s window starting in [`a`, `b`) seconds, cut at `b`.
fn peak_10s(per_sec: &[u32], a: usize, b: usize) -> u64 {
    let b = b.min(per_sec.len());
    (a..b)
        .map(|i| {
            per_sec[i..(i + 10).min(b)]
                .iter()
                .map(|&x| u64::from(x))
                .sum::<u64>()
        })
        .max()
        .unwrap_or(0)
}

fn op_name(o: Op) -> &'static str {
    match o {
        Op::Get => "get",
        Op::List => "list",
        Op::Set => "set",
        Op::Delete => "delete",
        Op::Probe => "probe",
    }
}

fn kind_name(k: FaultKind) -> &'static str {
    match k {
        FaultKind::Outage => "outage",
        FaultKind::Blackhole => "blackhole",
        FaultKind::Brownout => "brownout",
        FaultKind::Errors => "errors",
        FaultKind::Throttle => "429-storm",
        FaultKind::Flapping => "flapping",
        FaultKind::ReadOnly => "read-only",
    }
}

/// Everything measured about reads, shared by the read tasks (one thread: the lock is free).
struct Recorder {
    start: Instant,
    cap: Duration,
    reads: u64,
    fresh: u64,
    stale: u64,
    failed: u64,
    outdated: u64,
    max_stale: Duration,
    past_cap: u64,
    lat: Histogram<u64>,
    phases: Vec<Phase>,
    timeline: Timeline,
    /// Current generation per secret, with the time it appeared.
    truth: Vec<(u32, Duration)>,
    /// Per (secret, generation): the last time an older generation was served after it
    /// appeared, and whether the latest read of the secret still got an older one.
    rotation_lag: BTreeMap<(u32, u32), Duration>,
    last_read_old: BTreeMap<(u32, u32), bool>,
    writes: Writes,
    /// Reads answered "not found" (every secret read exists in the primary).
    not_found: u64,
    /// Reads served a generation older than one the same instance had already served.
    backwards: u64,
    /// (instance, secret) → newest generation served.
    served: std::collections::HashMap<(u32, u32), u32>,
    /// Added to every read's latency: a process's round trip to its node's agent (zero
    /// without agents). Counted, not slept: the paused clock's timers have 1 ms granularity.
    hop_us: u64,
}

impl Recorder {
    fn read(&mut self, k: u32, i: u32, intended: Instant, r: ReadResult) {
        let now = Instant::now();
        let t = intended - self.start;
        let us = ((now - intended).as_micros() as u64 + self.hop_us).max(1);
        self.reads += 1;
        self.lat.saturating_record(us);
        let (failed, stale) = match r {
            ReadResult::Failed => (true, false),
            ReadResult::NotFound => {
                self.not_found += 1;
                (true, false)
            }
            ReadResult::Served { stale, gen } => {
                let newest = self.served.entry((k, i)).or_insert(gen);
                if gen < *newest {
                    self.backwards += 1;
                }
                *newest = (*newest).max(gen);
                let (cur, since) = self.truth[i as usize];
                if gen < cur {
                    self.outdated += 1;
                    let lag = (now - self.start).saturating_sub(since);
                    let e = self.rotation_lag.entry((i, cur)).or_default();
                    *e = (*e).max(lag);
                }
                if cur > 0 {
                    self.last_read_old.insert((i, cur), gen < cur);
                }
                if let Some(age) = stale {
                    self.max_stale = self.max_stale.max(age);
                    if age > self.cap {
                        self.past_cap += 1;
                    }
                }
                (false, stale.is_some())
            }
        };
        match (failed, stale) {
            (true, _) => self.failed += 1,
            (_, true) => self.stale += 1,
            _ => self.fresh += 1,
        }
        if let Some(p) = self.phases.iter_mut().find(|p| t >= p.start && t < p.end) {
            p.reads += 1;
            p.failed += u64::from(failed);
            p.stale += u64::from(stale);
            p.lat.saturating_record(us);
        }
        let b = (t.as_nanos() / self.timeline.bucket.as_nanos().max(1)) as usize;
        if let Some(b) = self.timeline.buckets.get_mut(b) {
            b.reads += 1;
            b.failed += u64::from(failed);
            b.stale += u64::from(stale);
            b.lat_sum_us += us;
            b.lat_max_us = b.lat_max_us.max(us);
        }
    }
}

/// Per-instance route history, from the client's events.
#[derive(Default)]
struct RouteLog {
    /// (time, active region).
    changes: Vec<(Duration, Option<String>)>,
}

/// Runs `kind` over `s` (in virtual time: call inside [`super::run_virtual`]).
/// `progress` is advanced by the virtual milliseconds done (several contenders may share it).
pub(crate) async fn run(
    s: &Scenario,
    kind: ContenderKind,
    progress: Option<Arc<AtomicU64>>,
) -> Result<(ContenderReport, Timeline), crate::Error> {
    let start = Instant::now();
    let vaults: Vec<Arc<SimVault>> = s
        .regions
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let seed = s
                .seed
                .wrapping_add((i as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D));
            let copied_from = (i > 0 && s.replicator.is_some()).then(|| s.regions[0].name.as_str());
            Arc::new(SimVault::new(
                r,
                &s.faults,
                s.workload.secrets,
                seed,
                start,
                s.duration,
                copied_from,
            ))
        })
        .collect();
    let bucket = (s.duration / 600).max(Duration::from_secs(1));
    let n_buckets = (s.duration.as_nanos() / bucket.as_nanos()) as usize + 1;
    let cap = s.staleness_cap();
    let rec = Arc::new(Mutex::new(Recorder {
        start,
        cap,
        reads: 0,
        fresh: 0,
        stale: 0,
        failed: 0,
        outdated: 0,
        max_stale: Duration::ZERO,
        past_cap: 0,
        lat: histogram(),
        phases: phases(s),
        timeline: Timeline {
            bucket,
            buckets: vec![Bucket::default(); n_buckets],
            ..Timeline::default()
        },
        truth: vec![(0, Duration::ZERO); s.workload.secrets as usize],
        rotation_lag: BTreeMap::new(),
        last_read_old: BTreeMap::new(),
        writes: Writes::default(),
        not_found: 0,
        backwards: 0,
        served: std::collections::HashMap::new(),
        hop_us: if s.fleet.processes_per_agent > 1 {
            s.fleet.agent_hop.as_micros() as u64
        } else {
            0
        },
    }));

    // Replication: the primary's writes reach each other region after its delay.
    let replicas: Vec<_> = vaults
        .iter()
        .zip(&s.regions)
        .skip(1)
        .map(|(v, r)| (v.clone(), r.replication_delay))
        .collect();
    vaults[0].replicate_to(replicas);
    // Rotations happen in the primary and reach each other region after its replication
    // delay; unreplicated secrets reach a region after its delay.
    let mut rotations = s.workload.rotations.clone();
    rotations.sort_by_key(|r| (r.at, r.secret));
    let mut changes = Vec::new(); // (at, vault, secret, generation, rotation?)
    {
        let mut gens = vec![0u32; s.workload.secrets as usize];
        // With a replicator, the secondaries get changes only through it.
        let reach = if s.replicator.is_some() {
            1
        } else {
            s.regions.len()
        };
        for r in &rotations {
            gens[r.secret as usize] += 1;
            for (j, region) in s.regions.iter().enumerate().take(reach) {
                let at = r.at + region.replication_delay;
                changes.push((at, j, r.secret, gens[r.secret as usize], true));
            }
        }
        for (j, region) in s.regions.iter().enumerate().take(reach) {
            for i in s.workload.secrets - region.unreplicated..s.workload.secrets {
                changes.push((region.replication_delay, j, i, 0, false));
            }
        }
    }
    // Arrivals first at the same instant, then by time (stable: the rotations stay in order).
    changes.sort_by_key(|c| (c.0, c.4));
    let rotator = {
        let (vaults, rec) = (vaults.clone(), rec.clone());
        let end = s.duration;
        tokio::spawn(async move {
            for (at, j, i, gen, rotation) in changes.into_iter().filter(|c| c.0 < end) {
                tokio::time::sleep_until(start + at).await;
                if !rotation {
                    vaults[j].arrive(i, gen);
                    continue;
                }
                if j == 0 {
                    let mut g = lock(&rec);
                    g.truth[i as usize] = (gen, at);
                    // A generation superseded before every instance saw it no longer counts
                    // as unpropagated: only the newest one must reach them. (Two rotations of
                    // a secret within a refresh interval counted the first as "never".)
                    g.last_read_old.retain(|&(k, old), _| k != i || old >= gen);
                }
                vaults[j].rotate(i, gen);
            }
        })
    };

    let open_calls = Arc::new(AtomicU64::new(0));
    // One client per process, or one per node's agent serving `processes_per_agent`.
    let n = s.fleet.clients();
    let per_client = s.fleet.processes_per_agent.max(1);
    let mut instances = Vec::with_capacity(n as usize);
    let mut route_logs = Vec::with_capacity(n as usize);
    let mut watchers = JoinSet::new();
    for k in 0..n {
        let inst = Arc::new(Instance::new(kind, s, k, &vaults, &open_calls)?);
        let log = Arc::new(Mutex::new(RouteLog::default()));
        if let Some(c) = inst.client() {
            let mut rx = c.subscribe();
            let (log, rec) = (log.clone(), rec.clone());
            let plot = k == 0;
            if plot {
                let mut g = lock(&rec);
                g.timeline
                    .route
                    .push((Duration::ZERO, c.active_region().map(|r| r.to_string())));
                for r in &s.regions {
                    g.timeline
                        .breakers
                        .insert(r.name.clone(), vec![(Duration::ZERO, BreakerState::Closed)]);
                }
            }
            watchers.spawn(async move {
                loop {
                    let e = match rx.recv().await {
                        Ok(e) => e,
                        Err(RecvError::Lagged(_)) => continue,
                        Err(RecvError::Closed) => return,
                    };
                    let t = start.elapsed();
                    match e {
                        Event::RouteChanged { to, .. } => {
                            let to = to.map(|r| r.to_string());
                            if plot {
                                lock(&rec).timeline.route.push((t, to.clone()));
                            }
                            lock(&log).changes.push((t, to));
                        }
                        Event::Breaker { region, state } if plot => {
                            if let Some(v) = lock(&rec).timeline.breakers.get_mut(&*region) {
                                v.push((t, state));
                            }
                        }
                        _ => {}
                    }
                }
            });
        }
        instances.push(inst);
        route_logs.push(log);
    }

    // The replicator: one pass per interval over the same vaults, on the same clock.
    let replicator = s.replicator.as_ref().map(|spec| {
        let mut b = keyvault_failover::replicate::Replicator::builder()
            .primary(&s.regions[0].name, vaults[0].clone())
            .limits(
                spec.write_limit,
                s.regions[0].limit,
                Duration::from_secs(10),
                spec.budget_fraction,
            )
            .seed(s.seed ^ 0x5EED_0000_0000_0021)
            // Reads dated on the vaults' virtual wall clock, as their `created` is.
            .wall_clock(std::sync::Arc::new(move || {
                crate::vault::wall(Instant::now() - start)
            }));
        for (v, r) in vaults.iter().zip(&s.regions).skip(1) {
            b = b.secondary(&r.name, v.clone());
        }
        let (interval, end) = (spec.interval, s.duration);
        let stats = Arc::new(Mutex::new(crate::report::ReplicatorReport::default()));
        let task = {
            let stats = stats.clone();
            tokio::spawn(async move {
                let Ok(r) = b.build() else { return };
                let mut at = interval;
                while at < end {
                    tokio::time::sleep_until(start + at).await;
                    let outcome = match r.plan().await {
                        Ok(plan) => Some(r.run(&plan, &|_, _| {}).await),
                        Err(_) => None,
                    };
                    let mut g = lock(&stats);
                    g.passes += 1;
                    match outcome {
                        Some(report) => {
                            g.copies += report
                                .secondaries()
                                .iter()
                                .map(|s| {
                                    s.count(keyvault_failover::replicate::OutcomeKind::Copied)
                                        as u64
                                })
                                .sum::<u64>();
                            g.writes += report.calls().writes();
                            g.throttled += report.calls().throttled();
                            if !report.in_step() {
                                g.passes_not_in_step += 1;
                            }
                        }
                        None => g.passes_failed += 1,
                    }
                    drop(g);
                    at += interval;
                }
            })
        };
        (task, stats)
    });

    // Change events: each rotation in the primary, while its region is up, reaches every
    // client instance as a hint after the channel's delay (lost, duplicated, reordered).
    let mut channel = JoinSet::new();
    if let Some(ev) = &s.events {
        let primary = &s.regions[0].name;
        let down = |t: Duration| {
            s.faults.iter().any(|f| {
                &f.region == primary
                    && matches!(f.kind, FaultKind::Outage | FaultKind::Blackhole)
                    && f.start <= t
                    && t < f.end
            })
        };
        let mut rng = fastrand::Rng::with_seed(s.seed ^ 0xE7E7_0000_0000_0001);
        for r in s
            .workload
            .rotations
            .iter()
            .filter(|r| r.at < s.duration && !down(r.at))
        {
            for inst in instances.iter().filter(|i| i.client().is_some()) {
                if rng.f64() < ev.loss {
                    continue;
                }
                let copies = 1 + usize::from(rng.f64() < ev.duplicates);
                for _ in 0..copies {
                    let at = start + r.at + ev.delay.mul_f64(0.5 + rng.f64());
                    let (inst, secret) = (inst.clone(), r.secret);
                    channel.spawn(async move {
                        tokio::time::sleep_until(at).await;
                        if let Some(c) = inst.client() {
                            c.notify_changed(&format!("secret-{secret}"), None);
                        }
                    });
                }
            }
        }
    }

    // One open-loop driver per instance; instance 0's reports progress.
    let reported_total = Arc::new(AtomicU64::new(0));
    let mut drivers = JoinSet::new();
    let interval =
        Duration::from_secs_f64(1.0 / (s.workload.reads_per_sec * f64::from(per_client)));
    for (k, inst) in instances.iter().enumerate() {
        let (inst, rec) = (inst.clone(), rec.clone());
        let w = s.workload.clone();
        let end = start + s.duration;
        let offset = if n > 1 {
            w.start_spread.mul_f64(k as f64 / f64::from(n))
        } else {
            Duration::ZERO
        };
        let seed = s.seed ^ (k as u64 + 7).wrapping_mul(0xD1B5_4A32_D192_ED03);
        let progress = (k == 0)
            .then(|| progress.clone().map(|p| (p, reported_total.clone())))
            .flatten();
        drivers.spawn(async move {
            let mut rng = fastrand::Rng::with_seed(seed);
            let t0 = start + offset;
            tokio::time::sleep_until(t0).await;
            inst.start(w.secrets, w.preload).await;
            let mut calls = JoinSet::new();
            let mut next_write = w.write_every.map(|d| t0 + d);
            let mut writes = 0u64;
            for n in 0u64.. {
                let intended = t0 + interval.mul_f64(n as f64);
                if intended >= end {
                    break;
                }
                tokio::time::sleep_until(intended).await;
                while calls.try_join_next().is_some() {}
                if let Some((p, reported)) = &progress {
                    let t = (intended - start).as_millis() as u64;
                    let before = reported.fetch_max(t, Ordering::Relaxed);
                    p.fetch_add(t.saturating_sub(before), Ordering::Relaxed);
                }
                if let (Some(at), Some(every)) = (next_write, w.write_every) {
                    if intended >= at {
                        next_write = Some(at + every);
                        writes += 1;
                        let (inst, rec) = (inst.clone(), rec.clone());
                        let k = (k as u64) << 32 | writes;
                        calls.spawn(async move {
                            let r = inst.write(k).await;
                            let mut g = lock(&rec);
                            g.writes.attempted += 1;
                            match r {
                                WriteResult::Ok => g.writes.ok += 1,
                                WriteResult::RefusedReadOnly => g.writes.refused_read_only += 1,
                                WriteResult::Failed => g.writes.failed += 1,
                            }
                        });
                    }
                }
                let i = rng.u32(0..w.secrets);
                let (inst, rec) = (inst.clone(), rec.clone());
                calls.spawn(async move {
                    let r = inst.read(i).await;
                    lock(&rec).read(k as u32, i, intended, r);
                });
            }
            while calls.join_next().await.is_some() {}
        });
    }
    while drivers.join_next().await.is_some() {}
    channel.abort_all();
    let _ = rotator.await;
    let replicator = match replicator {
        Some((task, stats)) => {
            // Its pass in flight at the end is cut (the run is over).
            task.abort();
            let _ = task.await;
            let g = lock(&stats).clone();
            Some(g)
        }
        None => None,
    };
    if let Some(p) = &progress {
        // Instance 0's driver reported up to its last read; the rest of the run now.
        let total = s.duration.as_millis() as u64;
        let reported = reported_total.load(Ordering::Relaxed);
        p.fetch_add(total.saturating_sub(reported), Ordering::Relaxed);
    }
    let route_changes: u64 = instances.iter().map(|i| i.route_changes()).sum();
    for i in &instances {
        i.detach();
    }
    drop(instances);
    watchers.abort_all();

    // Failover and failback, from each instance's route log.
    let primary = &s.regions[0].name;
    let on_primary: Vec<_> = s.faults.iter().filter(|f| &f.region == primary).collect();
    let first_fault = on_primary.iter().map(|f| f.start).min();
    let last_end = on_primary
        .iter()
        .map(|f| f.end)
        .max()
        .filter(|e| *e < s.duration);
    let (mut failover, mut failback) = (None::<u64>, None::<u64>);
    if kind == ContenderKind::FailoverClient {
        for log in &route_logs {
            let log = lock(log);
            if let Some(f0) = first_fault {
                if let Some((t, _)) = log
                    .changes
                    .iter()
                    .find(|(t, to)| *t >= f0 && to.as_deref() != Some(primary))
                {
                    let v = (*t - f0).as_millis() as u64;
                    failover = Some(failover.map_or(v, |m| m.max(v)));
                }
            }
            if let Some(e) = last_end {
                if let Some((t, _)) = log
                    .changes
                    .iter()
                    .find(|(t, to)| *t >= e && to.as_deref() == Some(primary))
                {
                    let v = (*t - e).as_millis() as u64;
                    failback = Some(failback.map_or(v, |m| m.max(v)));
                }
            }
        }
    }

    let g = lock(&rec);
    let mut vault_loads = Vec::new();
    let mut calls = 0;
    let mut probes = 0;
    let mut read_only_writes = Vec::new();
    let mut phase_loads: Vec<Vec<PhaseLoad>> = vec![Vec::new(); g.phases.len()];
    for (v, r) in vaults.iter().zip(&s.regions) {
        let per_sec = v.per_sec();
        let throttled_per_sec = v.throttled_per_sec();
        let peak = per_sec
            .windows(10.min(per_sec.len()).max(1))
            .map(|w| w.iter().map(|&c| u64::from(c)).sum::<u64>())
            .max()
            .unwrap_or(0);
        for (loads, p) in phase_loads.iter_mut().zip(&g.phases) {
            let (a, b) = (p.start.as_secs() as usize, p.end.as_secs() as usize);
            loads.push(PhaseLoad {
                peak_per_10s: peak_10s(&per_sec, a, b),
                throttled: throttled_per_sec
                    .get(a..b.min(throttled_per_sec.len()))
                    .unwrap_or_default()
                    .iter()
                    .map(|&x| u64::from(x))
                    .sum(),
            });
        }
        let per_10s = per_10s(&per_sec, s.duration);
        let admitted: u64 = per_10s.iter().sum();
        let tens = s.duration.as_secs_f64() / 10.0;
        let mean_per_10s = if tens > 0.0 {
            (admitted as f64 / tens).round() as u64
        } else {
            0
        };
        let gets = v.gets.load(Ordering::Relaxed);
        let vault_probes = v.probes.load(Ordering::Relaxed);
        calls += gets;
        probes += vault_probes;
        let ro = v.writes_to_read_only.load(Ordering::Relaxed);
        if ro > 0 {
            read_only_writes.push(format!("{ro} to {}", v.name));
        }
        vault_loads.push(VaultLoad {
            region: v.name.clone(),
            gets,
            writes: v.writes.load(Ordering::Relaxed),
            throttled: v.throttled.load(Ordering::Relaxed),
            peak_per_10s: peak,
            mean_per_10s,
            probes: vault_probes,
            per_10s,
            throttled_per_10s: self::per_10s(&throttled_per_sec, s.duration),
            limit: r.limit,
        });
    }
    let open = open_calls.load(Ordering::Relaxed);
    let invariants = vec![
        Invariant {
            name: "no write reached a read-only vault".into(),
            held: read_only_writes.is_empty(),
            detail: if read_only_writes.is_empty() {
                "0 writes".into()
            } else {
                format!("writes: {}", read_only_writes.join(", "))
            },
        },
        Invariant {
            name: "no value served past the staleness cap".into(),
            held: g.past_cap == 0,
            detail: format!(
                "{} served past the cap of {}; oldest {}",
                g.past_cap,
                humantime::format_duration(cap),
                humantime::format_duration(Duration::from_millis(g.max_stale.as_millis() as u64))
            ),
        },
        Invariant {
            name: "no call through an open breaker".into(),
            held: open == 0,
            detail: format!("{open} calls reached a vault whose breaker was open"),
        },
    ];
    let unpropagated = g.last_read_old.values().filter(|old| **old).count() as u32;
    let rotation_delay_ms = (unpropagated == 0 && !rotations.is_empty()).then(|| {
        g.rotation_lag
            .values()
            .map(|d| d.as_millis() as u64)
            .max()
            .unwrap_or(0)
    });
    let report = ContenderReport {
        name: kind.label(),
        reads: g.reads,
        fresh: g.fresh,
        stale: g.stale,
        failed: g.failed,
        availability: ratio(g.fresh + g.stale, g.reads),
        max_staleness_ms: g.max_stale.as_millis() as u64,
        outdated_reads: g.outdated,
        not_found_reads: g.not_found,
        backwards_reads: g.backwards,
        latency_us: Percentiles::of(&g.lat),
        phases: g
            .phases
            .iter()
            .zip(phase_loads)
            .map(|(p, vaults)| PhaseReport {
                name: p.name.clone(),
                start_s: p.start.as_secs_f64(),
                end_s: p.end.as_secs_f64(),
                reads: p.reads,
                failed: p.failed,
                stale: p.stale,
                availability: ratio(p.reads - p.failed, p.reads),
                latency_us: Percentiles::of(&p.lat),
                vaults,
            })
            .collect(),
        rotations: rotations.iter().filter(|r| r.at < s.duration).count() as u32,
        rotation_delay_ms,
        rotations_unpropagated: unpropagated,
        failover_ms: failover,
        failback_ms: failback,
        route_changes,
        vault_calls_per_read: if g.reads == 0 {
            0.0
        } else {
            (calls as f64 / g.reads as f64 * 1000.0).round() / 1000.0
        },
        probe_share: if calls == 0 {
            0.0
        } else {
            ratio(probes, calls)
        },
        vaults: vault_loads,
        writes: g.writes,
        invariants,
        replicator,
    };
    Ok((report, g.timeline.clone()))
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        1.0
    } else {
        // Rounded so the JSON is stable and readable.
        (a as f64 / b as f64 * 1e6).round() / 1e6
    }
}
