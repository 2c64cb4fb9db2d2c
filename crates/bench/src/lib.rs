//! Latency under fault injection, in real time, through the real Azure SDK over HTTPS against
//! the project's Key Vault emulator on 127.0.0.1.
//!
//! An open-loop generator sends reads at a fixed rate and measures each one from its
//! *intended* send time, so a stall cannot hide behind requests it delayed (coordinated
//! omission). Every scenario has three phases of equal length — steady, fault, recovery — with
//! an HdrHistogram per phase. Four contenders run at once, each against its own emulator (same
//! fault timeline, separate vault counters):
//!
//! * `failover-client` — [`FailoverClient`] with default settings over [`azure::connect`];
//! * `plain-sdk` — `SecretClient` with default options (the SDK's retry policy) on the primary;
//! * `plain-sdk-6s` — the same, each read given up at the client's deadline (6 s by default):
//!   availability compared at the same latency bound;
//! * `cache-aside-5m` — the plain client behind a 5-minute TTL cache.
//!
//! Half the reads go to 20 hot secrets (cached after their first read by the two caching
//! contenders), half to 5,000 cold ones (nearly every read a miss): the fault path is
//! exercised for every contender, not hidden behind a warm cache.
//!
//! Bounded: every read has a 90 s cap, at most 20,000 reads are in flight per contender, and
//! a scenario waits at most 95 s for its last reads.

#![deny(missing_docs)]

pub mod agent;
mod error;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use azure_core::http::{ClientOptions, Transport};
use azure_security_keyvault_secrets::{SecretClient, SecretClientOptions};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

pub use crate::error::Error;
use keyvault_failover::{azure, Access, Config, FailoverClient, Freshness};
use keyvault_failover_emulator::{Emulator, StaticCredential, VaultFault};
use keyvault_failover_sim::Percentiles;

/// Longest a single read may take before the bench counts it failed.
const READ_CAP: Duration = Duration::from_secs(90);
/// Most reads in flight per contender; beyond it a read is counted failed without being sent.
const MAX_IN_FLIGHT: u64 = 20_000;
/// The cache-aside contender's TTL.
const ASIDE_TTL: Duration = Duration::from_secs(300);

/// A fault scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BenchScenario {
    /// No fault.
    Healthy,
    /// The primary refuses connections.
    Refuse,
    /// The primary accepts connections and never answers.
    Blackhole,
    /// The primary answers 2 s late.
    Slow,
    /// The primary answers every call 429 with `Retry-After: 10`.
    Throttle,
    /// Every region refuses connections.
    AllDown,
    /// The primary answers 503 to secret GETs while its listing answers.
    Partial,
    /// The primary refuses and every secret is rotated at the fault's start.
    Rotation,
}

impl BenchScenario {
    /// Every scenario, in report order.
    pub const ALL: [BenchScenario; 8] = [
        BenchScenario::Healthy,
        BenchScenario::Refuse,
        BenchScenario::Blackhole,
        BenchScenario::Slow,
        BenchScenario::Throttle,
        BenchScenario::AllDown,
        BenchScenario::Partial,
        BenchScenario::Rotation,
    ];

    /// Its name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            BenchScenario::Healthy => "healthy",
            BenchScenario::Refuse => "refuse",
            BenchScenario::Blackhole => "blackhole",
            BenchScenario::Slow => "slow",
            BenchScenario::Throttle => "throttle",
            BenchScenario::AllDown => "all-down",
            BenchScenario::Partial => "partial",
            BenchScenario::Rotation => "rotation",
        }
    }

    /// Parses a name.
    ///
    /// # Errors
    /// [`Error::is_config`] listing the names.
    pub fn parse(s: &str) -> Result<Self, Error> {
        Self::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|b| b.name()).collect();
                Error::config(format!(
                    "no bench scenario {s:?}; known: {}",
                    names.join(", ")
                ))
            })
    }

    fn describe(self) -> &'static str {
        match self {
            BenchScenario::Healthy => "no fault",
            BenchScenario::Refuse => "the primary refuses connections",
            BenchScenario::Blackhole => "the primary accepts connections and never answers",
            BenchScenario::Slow => "the primary answers 2 s late",
            BenchScenario::Throttle => "the primary answers 429, Retry-After 10 s",
            BenchScenario::AllDown => "every region refuses connections",
            BenchScenario::Partial => "the primary answers 503 to secret GETs; its listing answers",
            BenchScenario::Rotation => "the primary refuses; every secret rotated as it goes down",
        }
    }

    /// The faults to apply as the fault phase starts: (region, fault).
    fn faults(self) -> Vec<(&'static str, VaultFault)> {
        match self {
            BenchScenario::Healthy => vec![],
            BenchScenario::Refuse | BenchScenario::Rotation => vec![("weu", VaultFault::Refuse)],
            BenchScenario::Blackhole => vec![("weu", VaultFault::Blackhole)],
            BenchScenario::Slow => vec![("weu", VaultFault::Delay { ms: 2_000 })],
            BenchScenario::Throttle => vec![(
                "weu",
                VaultFault::Throttle {
                    retry_after_secs: 10,
                },
            )],
            BenchScenario::AllDown => {
                vec![("weu", VaultFault::Refuse), ("neu", VaultFault::Refuse)]
            }
            BenchScenario::Partial => vec![("weu", VaultFault::GetErrors)],
        }
    }
}

/// How to run the bench.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Scenarios, in order.
    pub scenarios: Vec<BenchScenario>,
    /// Reads per second per contender.
    pub rate: u32,
    /// Length of each scenario (three equal phases).
    pub duration: Duration,
    /// Hot secrets (`h0` …), read again and again.
    pub hot: u32,
    /// Cold secrets (`c0` …), mostly read once.
    pub cold: u32,
    /// Share of reads that go to a cold secret.
    pub cold_share: f64,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            scenarios: BenchScenario::ALL.to_vec(),
            rate: 50,
            duration: Duration::from_secs(30),
            hot: 20,
            cold: 5_000,
            cold_share: 0.5,
        }
    }
}

/// One phase (or the whole run) of one contender.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseResult {
    /// `steady`, `fault`, `recovery` or `all`.
    pub phase: String,
    /// Reads whose intended send time fell in the phase.
    pub sent: u64,
    /// Reads answered (fresh or stale).
    pub ok: u64,
    /// Reads that got no value.
    pub failed: u64,
    /// Reads answered from last-known-good.
    pub stale: u64,
    /// Reads answered with the value from before a rotation, after it.
    pub outdated: u64,
    /// `ok / sent`.
    pub success_rate: f64,
    /// Latency from the intended send time, µs.
    pub latency_us: Percentiles,
}

/// One contender in one scenario.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContenderResult {
    /// Contender.
    pub name: String,
    /// Steady, fault, recovery, then all.
    pub phases: Vec<PhaseResult>,
    /// Requests that reached each vault: (region, GETs).
    pub vault_gets: Vec<(String, u64)>,
    #[serde(skip)]
    buckets: Vec<(u64, u64, u64)>,
}

/// One scenario.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScenarioResult {
    /// Scenario.
    pub scenario: BenchScenario,
    /// What it does.
    pub description: String,
    /// How late the generator itself sent reads (already inside every latency): p50, p99,
    /// max in µs. Tokio's timers have millisecond resolution.
    pub generator_lag_us: [u64; 3],
    /// Per contender.
    pub contenders: Vec<ContenderResult>,
}

/// A whole bench run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchReport {
    /// Reads per second per contender.
    pub rate: u32,
    /// Seconds per scenario.
    pub duration_s: f64,
    /// Per scenario.
    pub scenarios: Vec<ScenarioResult>,
}

impl BenchReport {
    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// One SVG per scenario: (file stem, SVG).
    pub fn svgs(&self) -> Vec<(String, String)> {
        self.scenarios
            .iter()
            .map(|s| {
                (
                    format!("bench-{}", s.scenario.name()),
                    scenario_svg(self, s),
                )
            })
            .collect()
    }
}

fn scenario_svg(r: &BenchReport, s: &ScenarioResult) -> String {
    use keyvault_failover_sim::plot::{Lane, Line};
    let mut lat = Vec::new();
    let mut err = Vec::new();
    for c in &s.contenders {
        lat.push(Line {
            name: format!("{} max", c.name),
            points: c
                .buckets
                .iter()
                .enumerate()
                .filter(|(_, b)| b.0 > 0)
                .map(|(i, b)| (i as f64, b.2 as f64 / 1000.0))
                .collect(),
        });
        err.push(Line {
            name: c.name.clone(),
            points: c
                .buckets
                .iter()
                .enumerate()
                .map(|(i, b)| (i as f64, b.1 as f64))
                .collect(),
        });
    }
    let third = r.duration_s / 3.0;
    let names: Vec<String> = PHASES[..3].iter().map(|p| p.to_string()).collect();
    let lanes = [Lane {
        name: "phase".into(),
        spans: names
            .iter()
            .enumerate()
            .map(|(i, n)| (i as f64 * third, (i + 1) as f64 * third, n.clone()))
            .collect(),
    }];
    keyvault_failover_sim::plot::timeline_svg(
        &format!(
            "bench {}: {} ({} reads/s per contender)",
            s.scenario.name(),
            s.description,
            r.rate
        ),
        r.duration_s,
        ("read latency from intended send time, max per second", &lat),
        ("failed reads per second", &err),
        &lanes,
        &names,
    )
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use keyvault_failover_sim::lat;
        for s in &self.scenarios {
            writeln!(f, "\n== {} ({})", s.scenario.name(), s.description)?;
            let [l50, l99, lmax] = s.generator_lag_us;
            writeln!(
                f,
                "generator lag (inside every latency below): p50 {}  p99 {}  max {}",
                lat(l50),
                lat(l99),
                lat(lmax)
            )?;
            writeln!(
                f,
                "{:<16}{:<9}{:>6}{:>9}{:>10}{:>10}{:>10}{:>10}{:>10}{:>7}{:>9}  vault GETs",
                "contender",
                "phase",
                "sent",
                "success",
                "p50",
                "p90",
                "p99",
                "p99.9",
                "max",
                "stale",
                "outdated"
            )?;
            for c in &s.contenders {
                let gets: Vec<String> = c
                    .vault_gets
                    .iter()
                    .map(|(r, n)| format!("{r} {n}"))
                    .collect();
                for (i, p) in c.phases.iter().enumerate() {
                    let l = p.latency_us;
                    writeln!(
                        f,
                        "{:<16}{:<9}{:>6}{:>8.2}%{:>10}{:>10}{:>10}{:>10}{:>10}{:>7}{:>9}  {}",
                        if i == 0 { c.name.as_str() } else { "" },
                        p.phase,
                        p.sent,
                        100.0 * p.success_rate,
                        lat(l.p50),
                        lat(l.p90),
                        lat(l.p99),
                        lat(l.p999),
                        lat(l.max),
                        p.stale,
                        p.outdated,
                        if p.phase == "all" {
                            gets.join(", ")
                        } else {
                            String::new()
                        }
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// One read's outcome.
enum Read {
    Ok { stale: bool, generation: u32 },
    Failed,
}

/// A contender under test.
enum Contender {
    Client(FailoverClient),
    Plain(SecretClient),
    /// The plain SDK, each read cut at this deadline.
    PlainDeadline(SecretClient, Duration),
    Aside(SecretClient, Mutex<HashMap<String, (u32, Instant)>>),
}

/// Every secret name of a run: hot, then cold.
fn names(o: &BenchOptions) -> Vec<String> {
    (0..o.hot.max(1))
        .map(|i| format!("h{i}"))
        .chain((0..o.cold).map(|i| format!("c{i}")))
        .collect()
}

fn generation(value: &str) -> u32 {
    value
        .split_once('-')
        .and_then(|(g, _)| g.strip_prefix('v'))
        .and_then(|g| g.parse().ok())
        .unwrap_or(0)
}

async fn sdk_get(c: &SecretClient, name: &str) -> Option<u32> {
    let s = c.get_secret(name, None).await.ok()?.into_model().ok()?;
    s.value.map(|v| generation(&v))
}

impl Contender {
    fn name(&self) -> String {
        match self {
            Contender::Client(_) => "failover-client".into(),
            Contender::Plain(_) => "plain-sdk".into(),
            Contender::PlainDeadline(_, d) => {
                format!("plain-sdk-{}", humantime::format_duration(*d))
            }
            Contender::Aside(..) => "cache-aside-5m".into(),
        }
    }

    async fn read(&self, name: &str) -> Read {
        match self {
            Contender::Client(c) => match c.get_secret(name).await {
                Ok(s) => Read::Ok {
                    stale: matches!(s.freshness(), Freshness::Stale { .. }),
                    generation: generation(s.expose()),
                },
                Err(_) => Read::Failed,
            },
            Contender::Plain(c) => match sdk_get(c, name).await {
                Some(g) => Read::Ok {
                    stale: false,
                    generation: g,
                },
                None => Read::Failed,
            },
            Contender::PlainDeadline(c, d) => {
                match tokio::time::timeout(*d, sdk_get(c, name)).await {
                    Ok(Some(g)) => Read::Ok {
                        stale: false,
                        generation: g,
                    },
                    _ => Read::Failed,
                }
            }
            Contender::Aside(c, cache) => {
                let hit = {
                    let m = lock(cache);
                    m.get(name)
                        .filter(|(_, at)| at.elapsed() < ASIDE_TTL)
                        .map(|(g, _)| *g)
                };
                if let Some(g) = hit {
                    return Read::Ok {
                        stale: false,
                        generation: g,
                    };
                }
                match sdk_get(c, name).await {
                    Some(g) => {
                        lock(cache).insert(name.to_string(), (g, Instant::now()));
                        Read::Ok {
                            stale: false,
                            generation: g,
                        }
                    }
                    None => Read::Failed,
                }
            }
        }
    }
}

/// The plain SDK as a user gets it: default client options (its retry policy included); the
/// transport only trusts the emulator's CA, with the SDK's default transport timeouts.
fn plain_client(emu: &Emulator) -> Result<SecretClient, Error> {
    let http = emu
        .http_client_builder()?
        .connect_timeout(Duration::from_secs(20))
        .read_timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| Error::config(format!("cannot build the HTTP client: {e}")))?;
    let options = SecretClientOptions {
        client_options: ClientOptions {
            transport: Some(Transport::new(Arc::new(http))),
            ..Default::default()
        },
        ..Default::default()
    };
    SecretClient::new(&emu.url("weu"), Arc::new(StaticCredential), Some(options))
        .map_err(|e| Error::config(format!("plain SecretClient: {e}")))
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Per-contender measurements.
struct Recorder {
    /// Steady, fault, recovery, and the whole run.
    phases: [Tally; 4],
    /// Per second: (reads, failed, max latency µs).
    buckets: Vec<(u64, u64, u64)>,
}

/// Reads of one phase.
struct Tally {
    sent: u64,
    failed: u64,
    stale: u64,
    outdated: u64,
    lat: Histogram<u64>,
}

const PHASES: [&str; 4] = ["steady", "fault", "recovery", "all"];

impl Recorder {
    fn new(duration: Duration) -> Self {
        Recorder {
            phases: [(); 4].map(|_| Tally {
                sent: 0,
                failed: 0,
                stale: 0,
                outdated: 0,
                lat: histogram(),
            }),
            buckets: vec![(0, 0, 0); duration.as_secs() as usize + 1],
        }
    }

    fn record(
        &mut self,
        t: Duration,
        third: Duration,
        latency: Duration,
        read: &Read,
        rotated: Option<Duration>,
    ) {
        let i = ((t.as_nanos() / third.as_nanos().max(1)) as usize).min(2);
        let us = (latency.as_micros() as u64).max(1);
        let failed = matches!(read, Read::Failed);
        let (stale, outdated) = match read {
            Read::Ok { stale, generation } => {
                (*stale, rotated.is_some_and(|r| t >= r) && *generation == 0)
            }
            Read::Failed => (false, false),
        };
        for p in [i, 3] {
            let p = &mut self.phases[p];
            p.sent += 1;
            p.failed += u64::from(failed);
            p.stale += u64::from(stale);
            p.outdated += u64::from(outdated);
            p.lat.saturating_record(us);
        }
        if let Some(b) = self.buckets.get_mut(t.as_secs() as usize) {
            b.0 += 1;
            b.1 += u64::from(failed);
            b.2 = b.2.max(us);
        }
    }

    fn results(&self) -> Vec<PhaseResult> {
        self.phases
            .iter()
            .zip(PHASES)
            .map(|(p, name)| PhaseResult {
                phase: name.to_string(),
                sent: p.sent,
                ok: p.sent - p.failed,
                failed: p.failed,
                stale: p.stale,
                outdated: p.outdated,
                success_rate: if p.sent == 0 {
                    1.0
                } else {
                    (p.sent - p.failed) as f64 / p.sent as f64
                },
                latency_us: Percentiles::of(&p.lat),
            })
            .collect()
    }
}

/// Runs the bench (real time: call on a multi-thread tokio runtime). `progress` counts
/// elapsed seconds over all scenarios.
///
/// # Errors
/// When an emulator cannot start or a client cannot be built.
pub async fn run(options: &BenchOptions, progress: &AtomicU64) -> Result<BenchReport, Error> {
    if options.rate == 0 || options.rate > 2_000 {
        return Err(Error::config("rate must be 1..=2000 reads per second"));
    }
    if !(0.0..=1.0).contains(&options.cold_share) || options.hot > 100_000 || options.cold > 100_000
    {
        return Err(Error::config(
            "cold_share must be in [0, 1]; hot and cold at most 100000",
        ));
    }
    if options.duration < Duration::from_secs(3) || options.duration > Duration::from_secs(3600) {
        return Err(Error::config("duration must be between 3 s and 1 h"));
    }
    let mut scenarios = Vec::new();
    for (k, &sc) in options.scenarios.iter().enumerate() {
        let base = k as u64 * options.duration.as_secs();
        scenarios.push(run_scenario(sc, options, progress, base).await?);
    }
    Ok(BenchReport {
        rate: options.rate,
        duration_s: options.duration.as_secs_f64(),
        scenarios,
    })
}

async fn run_scenario(
    sc: BenchScenario,
    o: &BenchOptions,
    progress: &AtomicU64,
    base: u64,
) -> Result<ScenarioResult, Error> {
    let mut emus = Vec::new();
    let mut contenders = Vec::new();
    for k in 0..4 {
        let emu = Emulator::builder()
            .vault("weu")
            .vault("neu")
            .seed(k)
            .start()
            .await?;
        for name in names(o) {
            for r in ["weu", "neu"] {
                emu.insert(r, &name, &format!("v0-{name}"));
            }
        }
        let c = match k {
            0 => {
                let config = Config::builder()
                    .region("weu", &emu.url("weu"), Access::ReadWrite)
                    .region("neu", &emu.url("neu"), Access::ReadOnly)
                    .build()?;
                let http = emu.http_client(config.attempt_timeout())?;
                Contender::Client(azure::connect(
                    config,
                    Arc::new(StaticCredential),
                    Some(http),
                )?)
            }
            1 => Contender::Plain(plain_client(&emu)?),
            2 => Contender::PlainDeadline(
                plain_client(&emu)?,
                Config::builder()
                    .region("weu", &emu.url("weu"), Access::ReadWrite)
                    .build()?
                    .deadline(),
            ),
            _ => Contender::Aside(plain_client(&emu)?, Mutex::new(HashMap::new())),
        };
        emus.push(emu);
        contenders.push(Arc::new(c));
    }
    let third = o.duration / 3;
    let start = Instant::now() + Duration::from_millis(200);
    let rotated = (sc == BenchScenario::Rotation).then_some(third);
    let recorders: Vec<Arc<Mutex<Recorder>>> = (0..contenders.len())
        .map(|_| Arc::new(Mutex::new(Recorder::new(o.duration))))
        .collect();

    // The fault timeline, applied to every emulator at once.
    let timeline = {
        let emus: Vec<&Emulator> = emus.iter().collect();
        let all_names = names(o);
        async move {
            tokio::time::sleep_until(start + third).await;
            for e in &emus {
                for (r, f) in sc.faults() {
                    let _ = e.apply_fault(r, f.clone()).await;
                }
                if sc == BenchScenario::Rotation {
                    for name in &all_names {
                        for r in ["weu", "neu"] {
                            e.insert(r, name, &format!("v1-{name}"));
                        }
                    }
                }
            }
            tokio::time::sleep_until(start + 2 * third).await;
            for e in &emus {
                for (r, _) in sc.faults() {
                    let _ = e.apply_fault(r, VaultFault::Up).await;
                }
            }
        }
    };

    // One open-loop driver per contender.
    let total = u64::from(o.rate) * o.duration.as_secs();
    let interval = Duration::from_secs(1) / o.rate;
    let lag = Arc::new(Mutex::new(histogram()));
    let drivers = contenders
        .iter()
        .zip(&recorders)
        .enumerate()
        .map(|(k, (c, rec))| {
            let (c, rec) = (c.clone(), rec.clone());
            let (hot, cold, cold_share) = (o.hot, o.cold, o.cold_share);
            let lag = lag.clone();
            async move {
                let in_flight = Arc::new(AtomicU64::new(0));
                let mut tasks = tokio::task::JoinSet::new();
                let mut rng = fastrand::Rng::with_seed(k as u64 + 1);
                for n in 0..total {
                    let intended = start + interval * n as u32;
                    tokio::time::sleep_until(intended).await;
                    while tasks.try_join_next().is_some() {}
                    if k == 0 {
                        progress.store(base + (intended - start).as_secs(), Ordering::Relaxed);
                    }
                    lock(&lag).saturating_record((intended.elapsed().as_micros() as u64).max(1));
                    let name = if cold > 0 && rng.f64() < cold_share {
                        format!("c{}", rng.u32(0..cold))
                    } else {
                        format!("h{}", rng.u32(0..hot.max(1)))
                    };
                    let t = intended - start;
                    if in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
                        lock(&rec).record(t, third, Duration::ZERO, &Read::Failed, rotated);
                        continue;
                    }
                    in_flight.fetch_add(1, Ordering::Relaxed);
                    let (c, rec, in_flight) = (c.clone(), rec.clone(), in_flight.clone());
                    tasks.spawn(async move {
                        let read = tokio::time::timeout(READ_CAP, c.read(&name))
                            .await
                            .unwrap_or(Read::Failed);
                        let latency = intended.elapsed();
                        lock(&rec).record(t, third, latency, &read, rotated);
                        in_flight.fetch_sub(1, Ordering::Relaxed);
                    });
                }
                let _ = tokio::time::timeout(READ_CAP + Duration::from_secs(5), async {
                    while tasks.join_next().await.is_some() {}
                })
                .await;
                tasks.abort_all();
            }
        });
    tokio::join!(timeline, futures::future::join_all(drivers));
    progress.store(base + o.duration.as_secs(), Ordering::Relaxed);

    let results = contenders
        .iter()
        .zip(&recorders)
        .zip(&emus)
        .map(|((c, rec), emu)| {
            let rec = lock(rec);
            ContenderResult {
                name: c.name(),
                phases: rec.results(),
                vault_gets: ["weu", "neu"]
                    .iter()
                    .map(|r| (r.to_string(), emu.gets(r)))
                    .collect(),
                buckets: rec.buckets.clone(),
            }
        })
        .collect();
    let lag = Percentiles::of(&lock(&lag));
    Ok(ScenarioResult {
        scenario: sc,
        description: sc.describe().to_string(),
        generator_lag_us: [lag.p50, lag.p99, lag.max],
        contenders: results,
    })
}

/// Locks `m`, going on through poisoning: counters and histograms written in one step.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_names_round_trip_and_bad_ones_are_refused() {
        for s in BenchScenario::ALL {
            assert_eq!(BenchScenario::parse(s.name()).unwrap(), s);
        }
        let e = BenchScenario::parse("meteor").unwrap_err();
        assert!(e.is_config() && e.to_string().contains("blackhole"), "{e}");
    }

    #[test]
    fn generations_are_read_from_values() {
        assert_eq!(generation("v0-3"), 0);
        assert_eq!(generation("v1-3"), 1);
        assert_eq!(generation("garbage"), 0);
    }
}
