//! The agent under load, and restarted during an outage (`bench --scenario agent`,
//! `bench --scenario restart-during-outage`), through the real SDK against the emulator.
//!
//! * **agent**: closed-loop cached reads with 64 concurrent keep-alive HTTP/1.1 connections
//!   (reqwest) to the agent on 127.0.0.1, through its own JSON API and through Key Vault's API
//!   over TLS (`[agent.vault_api]`, a bearer token, what an unchanged SDK sends), against the
//!   same reads in process on 64 tasks
//!   ([`FailoverClient::get_cached`], and `get_secret` when it says no); then the agent again while the
//!   primary is blackholed (the client refreshes every 5 s, so the refresher meets the
//!   blackhole during that phase). Each phase runs for its duration or 2,000,000 reads,
//!   whichever ends first; the load generator shares the machine with the agent.
//! * **restart-during-outage**: an agent reads every secret, stops (saving its sealed
//!   snapshot), every vault goes down, and agents restart with and without the snapshot; each
//!   secret is then read once through each. Availability and latency per agent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

use crate::error::Error;
use keyvault_failover::Snapshot;
use keyvault_failover::{azure, Access, Config, FailoverClient};
use keyvault_failover_agent::{Agent, AgentConfig};
use keyvault_failover_emulator::{Emulator, StaticCredential, VaultFault};
use keyvault_failover_sim::Percentiles;

const TOKEN: &str = "bench-agent-token-0123456789";
const CONNECTIONS: usize = 64;
const MAX_READS: u64 = 2_000_000;

/// One load phase.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadPhase {
    /// What was measured.
    pub name: String,
    /// Reads answered with a value.
    pub ok: u64,
    /// Reads that got none.
    pub failed: u64,
    /// Reads per second over the phase.
    pub per_second: f64,
    /// Latency of each read, ns.
    pub latency_ns: Percentiles,
}

/// `bench --scenario agent`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentLoadReport {
    /// Concurrent connections (and in-process tasks).
    pub connections: usize,
    /// Hot secrets read.
    pub secrets: u32,
    /// Seconds per phase.
    pub phase_s: f64,
    /// Agent healthy, in process, agent during a primary blackhole.
    pub phases: Vec<LoadPhase>,
}

/// One agent restarted during a total outage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RestartResult {
    /// `agent-with-snapshot` or `agent-without-snapshot`.
    pub name: String,
    /// Secrets read (each once).
    pub reads: u64,
    /// Answered with a value (all stale: no vault answers).
    pub ok: u64,
    /// `ok / reads`.
    pub availability: f64,
    /// Youngest and oldest age served, s.
    pub age_s: [f64; 2],
    /// Latency, µs.
    pub latency_us: Percentiles,
}

/// `bench --scenario restart-during-outage`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RestartReport {
    /// Secrets the first agent held.
    pub secrets: u32,
    /// Per agent.
    pub agents: Vec<RestartResult>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000_000, 3).expect("valid bounds")
}

async fn emulator(secrets: u32) -> Result<Emulator, Error> {
    let emu = Emulator::builder()
        .vault("weu")
        .vault("neu")
        .start()
        .await?;
    for i in 0..secrets {
        for r in ["weu", "neu"] {
            emu.insert(r, &format!("s{i}"), &format!("value-{i}"));
        }
    }
    Ok(emu)
}

fn client(emu: &Emulator, refresh: Option<Duration>) -> Result<FailoverClient, Error> {
    let mut b = Config::builder()
        .region("weu", &emu.url("weu"), Access::ReadWrite)
        .region("neu", &emu.url("neu"), Access::ReadOnly);
    if let Some(r) = refresh {
        b = b.refresh_interval(r);
    }
    let config = b.build()?;
    let http = emu.http_client(config.attempt_timeout())?;
    Ok(azure::connect(
        config,
        Arc::new(StaticCredential),
        Some(http),
    )?)
}

fn http() -> Result<reqwest::Client, Error> {
    reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .pool_max_idle_per_host(CONNECTIONS)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| Error::config(format!("http client: {e}")))
}

/// A running agent: its base URL, where its Key Vault API is and which CA it is signed by (when
/// on), and the handle that stops it.
struct Served {
    base: String,
    vault: Option<(String, std::path::PathBuf)>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// Starts `agent`.
async fn serve(agent: Agent) -> Result<Served, Error> {
    let bound = agent.bind().await?;
    let base = format!("http://{}", bound.address());
    let vault = bound
        .vault_api_url()
        .zip(bound.vault_api_ca().map(|p| p.to_path_buf()));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = bound
            .serve(async {
                let _ = rx.await;
            })
            .await;
    });
    Ok(Served {
        base,
        vault,
        stop: tx,
        task,
    })
}

fn loopback() -> Result<AgentConfig, Error> {
    Ok(AgentConfig::from_toml(
        "listen = \"127.0.0.1:0\"\nmax_connections = 256\npreload_jitter = \"0s\"\n",
    )?)
}

/// Which of the agent's APIs a load phase reads through.
enum Through<'a> {
    /// Its own JSON API on `base` (`GET /v1/secrets/{name}`, `X-Agent-Token`).
    Json { base: &'a str },
    /// Key Vault's API on `url` over TLS signed by the CA in `ca` (`GET /secrets/{name}/`,
    /// `Authorization: Bearer`), as an unchanged SDK reads.
    KeyVault {
        url: &'a str,
        ca: &'a std::path::Path,
    },
}

async fn agent_phase(
    name: &str,
    through: Through<'_>,
    secrets: u32,
    d: Duration,
) -> Result<LoadPhase, Error> {
    let (c, urls, header) = match through {
        Through::Json { base } => (
            http()?,
            (0..secrets)
                .map(|i| format!("{base}/v1/secrets/s{i}"))
                .collect::<Vec<_>>(),
            ("x-agent-token", TOKEN.to_string()),
        ),
        Through::KeyVault { url, ca } => {
            let pem = std::fs::read(ca)
                .map_err(|e| Error::config(format!("agent CA {}: {e}", ca.display())))?;
            let ca = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| Error::config(format!("agent CA: {e}")))?;
            let c = reqwest::Client::builder()
                .no_proxy()
                .http1_only()
                .tls_certs_only([ca])
                .pool_max_idle_per_host(CONNECTIONS)
                .timeout(Duration::from_secs(30))
                .build()
                .map_err(|e| Error::config(format!("http client: {e}")))?;
            let urls = (0..secrets)
                .map(|i| format!("{url}/secrets/s{i}/?api-version=7.6"))
                .collect();
            (c, urls, ("authorization", format!("Bearer {TOKEN}")))
        }
    };
    let urls = Arc::new(urls);
    let header = Arc::new(header);
    let started = Instant::now();
    let end = started + d;
    let count = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|k| {
            let (c, count, urls, header) = (c.clone(), count.clone(), urls.clone(), header.clone());
            tokio::spawn(async move {
                let mut tally = Tally::new();
                let mut i = k;
                while Instant::now() < end && count.fetch_add(1, Ordering::Relaxed) < MAX_READS {
                    let t = Instant::now();
                    let r = c
                        .get(&urls[i % urls.len()])
                        .header(header.0, header.1.as_str())
                        .send()
                        .await;
                    let good = match r {
                        Ok(resp) if resp.status().is_success() => resp.bytes().await.is_ok(),
                        _ => false,
                    };
                    tally.record(t.elapsed(), good);
                    i += 1;
                }
                tally
            })
        })
        .collect();
    Ok(gather(name, tasks, started).await)
}

/// One load task's reads: latency (ns) and how many got a value.
struct Tally {
    latency: Histogram<u64>,
    ok: u64,
    failed: u64,
}

impl Tally {
    fn new() -> Self {
        Tally {
            latency: histogram(),
            ok: 0,
            failed: 0,
        }
    }

    fn record(&mut self, took: Duration, good: bool) {
        self.latency
            .saturating_record((took.as_nanos() as u64).max(1));
        if good {
            self.ok += 1;
        } else {
            self.failed += 1;
        }
    }
}

async fn gather(
    name: &str,
    tasks: Vec<tokio::task::JoinHandle<Tally>>,
    started: Instant,
) -> LoadPhase {
    let mut all = Tally::new();
    for t in tasks {
        if let Ok(t) = t.await {
            let _ = all.latency.add(&t.latency);
            all.ok += t.ok;
            all.failed += t.failed;
        }
    }
    let Tally {
        latency: h,
        ok,
        failed,
    } = all;
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    LoadPhase {
        name: name.to_string(),
        ok,
        failed,
        per_second: (ok + failed) as f64 / secs,
        latency_ns: Percentiles::of(&h),
    }
}

fn in_process_phase(
    client: &FailoverClient,
    secrets: u32,
    d: Duration,
) -> Vec<tokio::task::JoinHandle<Tally>> {
    let end = Instant::now() + d;
    let count = Arc::new(AtomicU64::new(0));
    (0..CONNECTIONS)
        .map(|k| {
            let (c, count) = (client.clone(), count.clone());
            let names: Vec<String> = (0..secrets).map(|i| format!("s{i}")).collect();
            tokio::spawn(async move {
                let mut tally = Tally::new();
                let mut i = k;
                'outer: while Instant::now() < end {
                    // A batch between yields, so 64 tasks share two threads fairly.
                    for _ in 0..256 {
                        if count.fetch_add(1, Ordering::Relaxed) >= MAX_READS {
                            break 'outer;
                        }
                        let t = std::time::Instant::now();
                        let name = &names[i % names.len()];
                        // What an embedder writes: the hit, else the full read.
                        let got = match c.get_cached(name) {
                            Some(_) => true,
                            None => c.get_secret(name).await.is_ok(),
                        };
                        tally.record(t.elapsed(), got);
                        i += 1;
                    }
                    tokio::task::yield_now().await;
                }
                tally
            })
        })
        .collect()
}

/// `bench --scenario agent`: cached reads through the agent, in process, and through the agent
/// during a primary blackhole; each phase `phase` long (3 s to 5 min).
///
/// # Errors
/// When the emulator, the client or the agent cannot start.
pub async fn load(phase: Duration, secrets: u32) -> Result<AgentLoadReport, Error> {
    if phase < Duration::from_secs(1)
        || phase > Duration::from_secs(300)
        || secrets == 0
        || secrets > 10_000
    {
        return Err(Error::config(
            "agent bench: phase 1 s to 5 min, 1 to 10,000 secrets",
        ));
    }
    let emu = emulator(secrets).await?;
    let client = client(&emu, Some(Duration::from_secs(5)))?;
    let names: Vec<String> = (0..secrets).map(|i| format!("s{i}")).collect();
    let errors = client.preload(&names).await;
    if let Some((n, e)) = errors.first() {
        return Err(Error::config(format!(
            "agent bench: preload of {n} failed: {e}"
        )));
    }
    let tls_dir = std::env::temp_dir().join(format!("kvf-bench-agent-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tls_dir);
    let config = AgentConfig::from_toml(&format!(
        "listen = \"127.0.0.1:0\"\nmax_connections = 256\npreload_jitter = \"0s\"\n\
         [vault_api]\nlisten = \"127.0.0.1:0\"\ntls_dir = {:?}\n",
        tls_dir.display().to_string()
    ))?;
    let agent = Agent::new(client.clone(), TOKEN, config)?;
    let Served {
        base,
        vault,
        stop,
        task,
    } = serve(agent).await?;
    let (vault_url, ca) = vault.ok_or_else(|| Error::config("the Key Vault API did not start"))?;
    let json = || Through::Json { base: &base };
    let kv = || Through::KeyVault {
        url: &vault_url,
        ca: &ca,
    };
    // Warm the connections (and the TLS sessions).
    let _ = agent_phase("warm-up", json(), secrets, Duration::from_millis(300)).await?;
    let _ = agent_phase("warm-up", kv(), secrets, Duration::from_millis(300)).await?;
    let mut phases = vec![agent_phase("agent", json(), secrets, phase).await?];
    phases.push(agent_phase("agent-key-vault-api", kv(), secrets, phase).await?);
    let started = Instant::now();
    let tasks = in_process_phase(&client, secrets, phase);
    phases.push(gather("in-process", tasks, started).await);
    emu.apply_fault("weu", VaultFault::Blackhole).await?;
    phases.push(agent_phase("agent-primary-blackhole", json(), secrets, phase).await?);
    emu.apply_fault("weu", VaultFault::Up).await?;
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(35), task).await;
    let _ = std::fs::remove_dir_all(&tls_dir);
    Ok(AgentLoadReport {
        connections: CONNECTIONS,
        secrets,
        phase_s: phase.as_secs_f64(),
        phases,
    })
}

/// `bench --scenario restart-during-outage`: an agent reads `secrets` secrets and stops; both
/// vaults refuse; agents restart with and without its sealed snapshot and read each secret
/// once (64 at a time).
///
/// # Errors
/// When the emulator, a client or an agent cannot start, or the snapshot cannot be written.
pub async fn restart(secrets: u32) -> Result<RestartReport, Error> {
    if secrets == 0 || secrets > 10_000 {
        return Err(Error::config("restart bench: 1 to 10,000 secrets"));
    }
    let dir = std::env::temp_dir().join(format!("kvf-bench-restart-{}", std::process::id()));
    let state = dir.join("state");
    std::fs::create_dir_all(&state)
        .map_err(|e| Error::config(format!("{}: {e}", dir.display())))?;
    let key_path = dir.join("snapshot.key");
    let mut key = [0u8; 32];
    for b in &mut key {
        *b = fastrand::u8(..);
    }
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    // Private to its owner, or the snapshot refuses it.
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(&key_path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, hex.as_bytes()))
        .map_err(|e| Error::config(format!("{}: {e}", key_path.display())))?;
    let snapshot = || {
        Snapshot::builder(state.join("lkg.snapshot"))
            .key_file(&key_path)
            .build()
    };
    let emu = emulator(secrets).await?;
    let names: Vec<String> = (0..secrets).map(|i| format!("s{i}")).collect();

    // First life: read everything, stop (the last snapshot is saved on the way out).
    let first = Agent::new(client(&emu, None)?, TOKEN, loopback()?)?
        .with_snapshot(snapshot()?, Duration::from_secs(30));
    let Served {
        base, stop, task, ..
    } = serve(first).await?;
    let c = http()?;
    for n in &names {
        let _ = c
            .get(format!("{base}/v1/secrets/{n}"))
            .header("X-Agent-Token", TOKEN)
            .send()
            .await;
    }
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(35), task).await;

    for r in ["weu", "neu"] {
        emu.apply_fault(r, VaultFault::Refuse).await?;
    }
    let mut agents = Vec::new();
    for with in [true, false] {
        let mut agent = Agent::new(client(&emu, None)?, TOKEN, loopback()?)?;
        if with {
            agent = agent.with_snapshot(snapshot()?, Duration::from_secs(3600));
        }
        let Served {
            base, stop, task, ..
        } = serve(agent).await?;
        let h = Arc::new(std::sync::Mutex::new(histogram()));
        let ages = Arc::new(std::sync::Mutex::new(Vec::new()));
        let ok = Arc::new(AtomicU64::new(0));
        futures::stream::iter(names.clone())
            .for_each_concurrent(CONNECTIONS, |n| {
                let (c, base, h, ages, ok) =
                    (c.clone(), base.clone(), h.clone(), ages.clone(), ok.clone());
                async move {
                    let t = Instant::now();
                    let r = c
                        .get(format!("{base}/v1/secrets/{n}"))
                        .header("X-Agent-Token", TOKEN)
                        .send()
                        .await;
                    if let Ok(resp) = r {
                        if resp.status().is_success() {
                            let body = resp.bytes().await.unwrap_or_default();
                            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
                                ok.fetch_add(1, Ordering::Relaxed);
                                crate::lock(&ages).push(v["age_s"].as_f64().unwrap_or(0.0));
                            }
                        }
                    }
                    crate::lock(&h).saturating_record((t.elapsed().as_micros() as u64).max(1));
                }
            })
            .await;
        let _ = stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(35), task).await;
        let ok = ok.load(Ordering::Relaxed);
        let ages = crate::lock(&ages).clone();
        let (lo, hi) = ages
            .iter()
            .fold((f64::MAX, 0.0f64), |(lo, hi), a| (lo.min(*a), hi.max(*a)));
        agents.push(RestartResult {
            name: if with {
                "agent-with-snapshot"
            } else {
                "agent-without-snapshot"
            }
            .into(),
            reads: u64::from(secrets),
            ok,
            availability: ok as f64 / f64::from(secrets),
            age_s: if ages.is_empty() {
                [0.0, 0.0]
            } else {
                [lo, hi]
            },
            latency_us: Percentiles::of(&crate::lock(&h)),
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(RestartReport { secrets, agents })
}

use futures::StreamExt as _;

impl std::fmt::Display for AgentLoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "agent: cached reads of {} secrets, {} concurrent keep-alive connections (in process: {} tasks), {:.0} s per phase",
            self.secrets, self.connections, self.connections, self.phase_s
        )?;
        writeln!(f, "| phase | reads/s | ok | failed | p50 | p99 | max |")?;
        writeln!(f, "|---|---|---|---|---|---|---|")?;
        for p in &self.phases {
            writeln!(
                f,
                "| {} | {:.0} | {} | {} | {} | {} | {} |",
                p.name,
                p.per_second,
                p.ok,
                p.failed,
                ns(p.latency_ns.p50),
                ns(p.latency_ns.p99),
                ns(p.latency_ns.max)
            )?;
        }
        Ok(())
    }
}

fn ns(v: u64) -> String {
    if v >= 1_000_000 {
        format!("{:.1} ms", v as f64 / 1e6)
    } else if v >= 1_000 {
        format!("{:.1} µs", v as f64 / 1e3)
    } else {
        format!("{v} ns")
    }
}

impl std::fmt::Display for RestartReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "restart-during-outage: {} secrets held, every vault refusing, each read once after a restart",
            self.secrets
        )?;
        writeln!(
            f,
            "| agent | availability | served | ages served | p50 | p99 |"
        )?;
        writeln!(f, "|---|---|---|---|---|---|")?;
        for a in &self.agents {
            writeln!(
                f,
                "| {} | {:.1} % | {}/{} | {:.1}-{:.1} s | {} | {} |",
                a.name,
                a.availability * 100.0,
                a.ok,
                a.reads,
                a.age_s[0],
                a.age_s[1],
                ns(a.latency_us.p50 * 1000),
                ns(a.latency_us.p99 * 1000)
            )?;
        }
        Ok(())
    }
}
