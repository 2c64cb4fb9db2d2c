//! The operator's commands against real vaults (or the emulator), configured by the same TOML
//! file as the library: `probe`, `status`, `get`.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyvault_failover::azure::{self, AzureStore};
use keyvault_failover::{Access, Config, Freshness, SecretStore};
use serde::Serialize;

/// One region's answer to one health probe.
#[derive(Debug, Serialize)]
struct ProbeRow {
    region: String,
    access: Access,
    url: String,
    /// `ok`, or the error kind (`connect`, `timeout`, `auth`, `throttled`, `server`, ...).
    result: String,
    /// The HTTP status, when the vault answered with an error.
    status: Option<u16>,
    latency_ms: f64,
    /// The error, bounded and free of secret values, when there was one.
    error: Option<String>,
}

/// `status`: every region probed, and where a read would go now.
#[derive(Debug, Serialize)]
struct StatusReport {
    regions: Vec<ProbeRow>,
    /// The region a read would use now: the first, in priority order, that answered.
    read_from: Option<String>,
    /// Why.
    reason: String,
    /// Whether writes would be accepted (the writable primary answered).
    writable: bool,
}

fn load(config: &Path) -> Result<Config, Box<dyn std::error::Error>> {
    Ok(Config::from_file(config)?)
}

fn kind_name(e: &keyvault_failover::StoreError) -> &'static str {
    e.kind().label()
}

fn status_of(e: &keyvault_failover::StoreError) -> Option<u16> {
    e.kind().status()
}

/// One round of health probes (a one-item listing per vault, all at once), each bounded by
/// the attempt timeout.
async fn probe_all(config: &Config) -> Result<Vec<ProbeRow>, Box<dyn std::error::Error>> {
    let stores: Vec<(String, Arc<AzureStore>)> = azure::stores_for(config)?;
    let timeout = config.attempt_timeout();

    let probes = stores
        .into_iter()
        .zip(config.regions())
        .map(|((name, store), r)| {
            let (access, url) = (r.access(), r.url().to_string());
            async move {
                let t0 = Instant::now();
                let res = tokio::time::timeout(timeout, store.probe()).await;
                let latency_ms = (t0.elapsed().as_secs_f64() * 1e4).round() / 10.0;
                let (result, status, error) = match res {
                    Ok(Ok(())) => ("ok".to_string(), None, None),
                    Ok(Err(e)) => (
                        kind_name(&e).to_string(),
                        status_of(&e),
                        Some(e.to_string()),
                    ),
                    Err(_) => (
                        "timeout".to_string(),
                        None,
                        Some(format!(
                            "no answer within {}",
                            humantime::format_duration(timeout)
                        )),
                    ),
                };
                ProbeRow {
                    region: name,
                    access,
                    url,
                    result,
                    status,
                    latency_ms,
                    error,
                }
            }
        });
    Ok(futures::future::join_all(probes).await)
}

fn print_rows(rows: &[ProbeRow]) {
    println!(
        "{:<8} {:<10} {:<10} {:>7} {:>10}  url",
        "region", "access", "result", "status", "latency"
    );
    for r in rows {
        let access = match r.access {
            Access::ReadWrite => "read-write",
            Access::ReadOnly => "read-only",
        };
        println!(
            "{:<8} {:<10} {:<10} {:>7} {:>8.1}ms  {}",
            r.region,
            access,
            r.result,
            r.status.map_or("-".to_string(), |s| s.to_string()),
            r.latency_ms,
            r.url
        );
        if let Some(e) = &r.error {
            println!("         {e}");
        }
    }
}

/// A runtime for the long-running commands (`watch`, `agent`): two workers.
pub(crate) fn server_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

/// Seconds since the Unix epoch, now.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Resolves on SIGTERM (an orchestrator's stop) or Ctrl-C.
pub(crate) async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// `probe`: exit 0 when every region answered, 1 when one did not.
pub(crate) fn probe(config: &Path, json: bool) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let config = load(config)?;
    let rows = runtime()?.block_on(probe_all(&config))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print_rows(&rows);
    }
    Ok(if rows.iter().all(|r| r.result == "ok") {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `status`: the probe round, and where a read would go now and why. Exit 1 when no region
/// answered.
pub(crate) fn status(config: &Path, json: bool) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let config = load(config)?;
    let rows = runtime()?.block_on(probe_all(&config))?;
    let first_ok = rows.iter().position(|r| r.result == "ok");
    let read_from = first_ok.map(|i| rows[i].region.clone());
    let skipped: Vec<String> = rows[..first_ok.unwrap_or(rows.len())]
        .iter()
        .map(|r| format!("{} ({})", r.region, r.result))
        .collect();
    let reason = match (first_ok, skipped.is_empty()) {
        (Some(_), true) => "the primary answered".to_string(),
        (Some(_), false) => format!(
            "first in priority order to answer; skipped {}",
            skipped.join(", ")
        ),
        (None, _) => "no region answered: reads are served from last-known-good only".to_string(),
    };
    let writable = first_ok.is_some_and(|i| rows[i].access == Access::ReadWrite);
    let report = StatusReport {
        regions: rows,
        read_from,
        reason,
        writable,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_rows(&report.regions);
        println!();
        match &report.read_from {
            Some(r) => println!("reads go to {r}: {}", report.reason),
            None => println!("{}", report.reason),
        }
        println!(
            "writes {}",
            if report.writable {
                "accepted (the writable primary answered)"
            } else {
                "refused (read-only: the writable primary did not answer)"
            }
        );
    }
    Ok(if report.read_from.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// What `get` shows of a secret.
#[derive(Debug, Serialize)]
struct GetReport {
    name: String,
    version: String,
    region: String,
    /// `fresh` or `stale`.
    freshness: String,
    /// Age of a stale value, seconds.
    stale_age_s: Option<f64>,
    /// Only with `--reveal`.
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
}

/// `get NAME`: metadata and where it came from; the value only with `reveal`.
pub(crate) fn get(
    config: &Path,
    name: &str,
    reveal: bool,
    json: bool,
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let config = load(config)?;
    let secret = match runtime()?.block_on(async {
        let client = azure::connect_with_config(config)?;
        client.get_secret(name).await
    }) {
        Ok(s) => s,
        // Bad input is exit 2; a vault that could not answer (an outage, not found, refused)
        // is the check failing: exit 1, so a script can tell the two apart.
        Err(e) if e.is_config() || e.is_invalid_name() => return Err(e.into()),
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let (freshness, age) = match secret.freshness() {
        Freshness::Stale { age } => ("stale", Some(age.as_secs_f64())),
        _ => ("fresh", None),
    };
    let report = GetReport {
        name: name.to_string(),
        version: secret.version().to_string(),
        region: secret.region().to_string(),
        freshness: freshness.to_string(),
        stale_age_s: age,
        value: reveal.then(|| secret.expose().to_string()),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("name       {}", report.name);
        println!("version    {}", report.version);
        println!("region     {}", report.region);
        match report.stale_age_s {
            Some(a) => println!(
                "freshness  stale ({})",
                humantime::format_duration(Duration::from_secs_f64(a))
            ),
            None => println!("freshness  {}", report.freshness),
        }
        match &report.value {
            Some(v) => println!("value      {v}"),
            None => println!("value      (hidden; --reveal prints it)"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One event as `watch` prints it.
fn event_json(e: &keyvault_failover::Event) -> serde_json::Value {
    use keyvault_failover::Event as E;
    use serde_json::json;
    let secs = |d: &Duration| (d.as_secs_f64() * 1000.0).round() / 1000.0;
    match e {
        E::RouteChanged { from, to, mode } => json!({
            "event": "route-changed", "from": from.as_deref(), "to": to.as_deref(),
            "mode": format!("{mode:?}"),
        }),
        E::Breaker { region, state } => json!({
            "event": "breaker", "region": &**region, "state": format!("{state:?}"),
        }),
        E::Throttled {
            region,
            retry_after,
        } => json!({
            "event": "throttled", "region": &**region, "retry_after_s": secs(retry_after),
        }),
        E::Drift { secret, regions } => json!({
            "event": "drift", "secret": &**secret,
            "regions": regions.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
        }),
        E::StaleServed { secret, age } => json!({
            "event": "stale-served", "secret": &**secret, "age_s": secs(age),
        }),
        E::RefreshFailed { secret } => json!({ "event": "refresh-failed", "secret": &**secret }),
        E::TaskRestarted { task, restarts } => json!({
            "event": "task-restarted", "task": &**task, "restarts": restarts,
        }),
        other => json!({ "event": format!("{other:?}") }),
    }
}

/// `watch`: the client's live events (route changes, breaker transitions, throttling, drift,
/// stale serves) while its prober and refresher run, until Ctrl-C or `duration`. `secrets`
/// are read once at start so that the refresher keeps them (and drift checks them).
pub(crate) fn watch(
    config: &Path,
    secrets: &[String],
    duration: Option<Duration>,
    json: bool,
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let config = load(config)?;
    server_runtime()?.block_on(async move {
        let client = azure::connect_with_config(config)?;
        let mut rx = client.subscribe();
        for (name, e) in client.preload(secrets).await {
            eprintln!("{name}: {e}");
        }
        if !json {
            let h = client.health();
            println!(
                "watching: active {}, {:?}; Ctrl-C to stop",
                h.active().unwrap_or("none"),
                h.state()
            );
        }
        let end = duration.map(|d| tokio::time::Instant::now() + d);
        loop {
            let next = async {
                match end {
                    Some(t) => tokio::time::timeout_at(t, rx.recv()).await.ok(),
                    None => Some(rx.recv().await),
                }
            };
            let ev = tokio::select! {
                ev = next => ev,
                _ = tokio::signal::ctrl_c() => None,
            };
            let Some(ev) = ev else { break };
            let ev = match ev {
                Ok(ev) => ev,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    eprintln!("({n} events dropped: this terminal is slower than the client)");
                    continue;
                }
                Err(_) => break,
            };
            let mut v = event_json(&ev);
            v["at"] =
                serde_json::Value::String(httpdate::fmt_http_date(std::time::SystemTime::now()));
            if json {
                println!("{v}");
            } else {
                println!("{}  {}", v["at"].as_str().unwrap_or(""), {
                    let mut m = v.clone();
                    if let Some(o) = m.as_object_mut() {
                        o.remove("at");
                    }
                    m
                });
            }
        }
        Ok::<_, Box<dyn std::error::Error>>(ExitCode::SUCCESS)
    })
}
