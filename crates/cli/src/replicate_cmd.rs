//! `replicate`: keeps every secondary region of a configuration in step with its primary (the
//! one read-write region). The plan first, then the run with a progress bar, then what was done.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use keyvault_failover::azure;
use keyvault_failover::replicate::{
    Filter, OutcomeKind, Plan, ReplicaStore, Replicator, Report, Step,
};
use keyvault_failover::Config;
use serde::Serialize;

/// What `replicate` was asked to do (its command line).
#[derive(Debug, clap::Args)]
pub(crate) struct Options {
    /// The client configuration (the library's TOML; `keyvault-failover emulator` writes
    /// one). Run it as an identity that may write the secondaries (README: Replication).
    #[arg(long)]
    pub(crate) config: PathBuf,
    /// Print the plan and write nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Soft-delete copies whose source the primary no longer has (never purged); needs
    /// --mac-key-file (only copies the replicator can prove it wrote are pruned).
    #[arg(long)]
    pub(crate) prune: bool,
    /// With --prune: a pass that would soft-delete more than this share of a secondary's
    /// copies (at least one may always go), or any while the primary lists nothing, prunes
    /// none and exits 1 saying so; 1 turns the guard off.
    #[arg(long, default_value_t = 0.1, value_parser = share)]
    pub(crate) max_prune_share: f64,
    /// Only names matching this glob (`*`, `?`, `[..]`, case-insensitive); repeatable.
    #[arg(long = "only", value_name = "PATTERN")]
    pub(crate) only: Vec<String>,
    /// JSON for scripts instead of text.
    #[arg(long)]
    pub(crate) json: bool,
    /// Keep running: one pass per interval (jittered by up to a tenth), e.g. `5m`, until
    /// SIGTERM.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) every: Option<Duration>,
    /// After each pass, write its outcome (JSON: finished_unix, in_step, counts) to this
    /// file, for an orchestrator's health probe.
    #[arg(long)]
    pub(crate) status_file: Option<PathBuf>,
    /// With --every: serve `/metrics` (Prometheus text: passes, changes by secondary, the lag
    /// copied) and `/healthz` (200 while the last pass was in step and recent) on this
    /// loopback address, e.g. `127.0.0.1:9465`.
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics: Option<std::net::SocketAddr>,
    /// Seal each copy's provenance with an HMAC-SHA256 over its value under the key in this
    /// file (at least 32 bytes, private to its owner: `head -c 32 /dev/urandom > KEY`); prune
    /// (which needs it) acts only on copies whose MAC matches.
    #[arg(long, value_name = "FILE")]
    pub(crate) mac_key_file: Option<PathBuf>,
    /// Deep passes: also read each copy the listings call in step and prove it the
    /// replicator's (with --mac-key-file by its MAC, else by comparing values), rewriting one
    /// that is not (a value planted under a copy's tags).
    #[arg(long)]
    pub(crate) deep: bool,
    /// With --every: every Nth pass is deep (see --deep).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) deep_every: Option<u32>,
}

/// The shortest `--every`: a run lists every vault, so more often than this is polling.
const MIN_EVERY: Duration = Duration::from_secs(10);
/// The longest `--every`.
const MAX_EVERY: Duration = Duration::from_secs(7 * 24 * 3600);
/// Names printed per step kind in the text plan (the JSON has all).
const SHOWN: usize = 20;

#[derive(Serialize)]
struct PlannedRow<'a> {
    name: &'a str,
    step: &'static str,
    why: String,
}

#[derive(Serialize)]
struct SecondaryPlanRow<'a> {
    region: &'a str,
    listing_error: Option<&'a str>,
    counts: Vec<(&'static str, usize)>,
    steps: Vec<PlannedRow<'a>>,
}

#[derive(Serialize)]
struct OutcomeRow<'a> {
    name: &'a str,
    outcome: &'static str,
    recovered: bool,
    error: Option<&'a str>,
}

#[derive(Serialize)]
struct SecondaryRunRow<'a> {
    region: &'a str,
    in_step: bool,
    copied: usize,
    updated: usize,
    pruned: usize,
    deferred: usize,
    failed: usize,
    /// The longest a copied version had waited in the primary before this run copied it.
    max_lag_secs: Option<i64>,
    outcomes: Vec<OutcomeRow<'a>>,
}

#[derive(Serialize)]
struct Calls {
    lists: u64,
    reads: u64,
    writes: u64,
    throttled: u64,
    retries: u64,
}

#[derive(Serialize)]
struct RunRow<'a> {
    in_step: bool,
    elapsed_secs: f64,
    calls: Calls,
    secondaries: Vec<SecondaryRunRow<'a>>,
}

#[derive(Serialize)]
struct Json<'a> {
    primary: &'a str,
    primary_listed: usize,
    dry_run: bool,
    plan: Vec<SecondaryPlanRow<'a>>,
    run: Option<RunRow<'a>>,
}

fn plan_rows(plan: &Plan) -> Vec<SecondaryPlanRow<'_>> {
    plan.secondaries()
        .iter()
        .map(|s| SecondaryPlanRow {
            region: s.region(),
            listing_error: s.listing_error(),
            counts: s.counts(),
            steps: s
                .steps()
                .iter()
                .filter(|p| *p.step() != Step::InStep)
                .map(|p| PlannedRow {
                    name: p.name(),
                    step: p.step().label(),
                    why: p.step().to_string(),
                })
                .collect(),
        })
        .collect()
}

fn run_row(report: &Report) -> RunRow<'_> {
    let now = crate::cli::unix_now();
    RunRow {
        in_step: report.in_step(),
        elapsed_secs: report.elapsed().as_secs_f64(),
        calls: Calls {
            lists: report.calls().lists(),
            reads: report.calls().reads(),
            writes: report.calls().writes(),
            throttled: report.calls().throttled(),
            retries: report.calls().retries(),
        },
        secondaries: report
            .secondaries()
            .iter()
            .map(|s| SecondaryRunRow {
                region: s.region(),
                in_step: s.in_step(),
                copied: s.count(OutcomeKind::Copied),
                updated: s.count(OutcomeKind::Updated),
                pruned: s.count(OutcomeKind::Pruned),
                deferred: s.count(OutcomeKind::Deferred),
                failed: s.outcomes().iter().filter(|o| o.is_failure()).count(),
                max_lag_secs: s
                    .outcomes()
                    .iter()
                    .filter_map(|o| o.source_created())
                    .map(|c| now.saturating_sub(c).max(0))
                    .max(),
                outcomes: s
                    .outcomes()
                    .iter()
                    .filter(|o| o.kind() != OutcomeKind::Nothing || o.is_failure())
                    .map(|o| OutcomeRow {
                        name: o.name(),
                        outcome: o.kind().label(),
                        recovered: o.recovered(),
                        error: o.error(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn print_plan(primary: &str, plan: &Plan) {
    println!(
        "plan: {} secret(s) in the primary {primary}",
        plan.primary_listed()
    );
    for s in plan.secondaries() {
        if let Some(e) = s.listing_error() {
            println!("  {:<8} cannot be listed: {e}", s.region());
            continue;
        }
        let counts: Vec<String> = s.counts().iter().map(|(k, n)| format!("{n} {k}")).collect();
        println!("  {:<8} {}", s.region(), counts.join(", "));
        let mut shown: std::collections::HashMap<&str, usize> = Default::default();
        for p in s.steps().iter().filter(|p| *p.step() != Step::InStep) {
            let n = shown.entry(p.step().label()).or_default();
            *n += 1;
            if *n <= SHOWN {
                println!("    {:<40} {}", p.name(), p.step());
            } else if *n == SHOWN + 1 {
                println!("    ... more {} (--json lists all)", p.step().label());
            }
        }
    }
}

fn print_report(report: &Report) {
    let row = run_row(report);
    for s in &row.secondaries {
        println!(
            "  {:<8} {}: {} copied, {} updated, {} pruned, {} deferred, {} failed{}",
            s.region,
            if s.in_step { "in step" } else { "NOT IN STEP" },
            s.copied,
            s.updated,
            s.pruned,
            s.deferred,
            s.failed,
            s.max_lag_secs
                .map_or(String::new(), |l| format!(", longest lag {l} s"))
        );
        for o in s.outcomes.iter().filter(|o| o.error.is_some()) {
            println!("    {:<40} {}", o.name, o.error.unwrap_or_default());
        }
    }
    let c = &row.calls;
    println!(
        "calls: {} listings, {} reads, {} writes, {} throttled, {} retries; {:.2} s",
        c.lists, c.reads, c.writes, c.throttled, c.retries, row.elapsed_secs
    );
}

/// A share in [0, 1].
fn share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a share from 0 to 1")),
    }
}

fn build(config: &Config, opts: &Options) -> Result<Replicator, Box<dyn std::error::Error>> {
    let regions = config.regions();
    if regions.len() < 2 {
        return Err(
            "replication needs at least two regions (the read-write one is the primary)".into(),
        );
    }
    let primary = keyvault_failover::replicate::primary_index(config)?;
    let filter = Filter::only(&opts.only)?;
    let stores = azure::stores_for(config)?;
    let mut b = Replicator::builder()
        .limits_from(config)
        .filter(filter)
        .prune(opts.prune)
        .max_prune_share(opts.max_prune_share)
        .deep(opts.deep);
    if let Some(path) = &opts.mac_key_file {
        b = b.mac_key(keyvault_failover::replicate::MacKey::from_file(path)?);
    }
    for (i, (region, store)) in stores.into_iter().enumerate() {
        let store: Arc<dyn ReplicaStore> = store;
        b = if i == primary {
            b.primary(&region, store)
        } else {
            b.secondary(&region, store)
        };
    }
    Ok(b.build()?)
}

/// One pass: plan, print it, run it unless `--dry-run`. Says whether every secondary is in
/// step (for a dry run: already in step).
async fn pass(r: &Replicator, opts: &Options) -> Result<(bool, Option<String>), String> {
    let plan = r
        .plan()
        .await
        .map_err(|e| format!("the primary {} cannot be listed: {e}", r.primary_region()))?;
    if !opts.json {
        print_plan(r.primary_region(), &plan);
    }
    let work: u64 = plan
        .secondaries()
        .iter()
        .flat_map(|s| s.steps())
        .filter(|p| !matches!(p.step(), Step::InStep | Step::Skip(_)))
        .count() as u64;
    if opts.dry_run {
        let in_step = plan.secondaries().iter().all(|s| s.is_in_step());
        if opts.json {
            let out = Json {
                primary: r.primary_region(),
                primary_listed: plan.primary_listed(),
                dry_run: true,
                plan: plan_rows(&plan),
                run: None,
            };
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        } else {
            println!("dry run: nothing written ({work} change(s) planned)");
        }
        return Ok((in_step, None));
    }
    let bar = if opts.json || work == 0 {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(work)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} replicating [{bar:30}] {pos}/{len} {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let progress = |_: &str, o: &keyvault_failover::replicate::Outcome| {
        if !matches!(o.step(), Step::InStep | Step::Skip(_)) {
            bar.inc(1);
        }
    };
    let report = r.run(&plan, &progress).await;
    bar.finish_and_clear();
    let status = serde_json::to_string_pretty(&serde_json::json!({
        "finished_unix": crate::cli::unix_now(),
        "in_step": report.in_step(),
        "run": run_row(&report),
    }))
    .ok();
    if opts.json {
        let out = Json {
            primary: r.primary_region(),
            primary_listed: plan.primary_listed(),
            dry_run: false,
            plan: plan_rows(&plan),
            run: Some(run_row(&report)),
        };
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        println!("run:");
        print_report(&report);
    }
    Ok((report.in_step(), status))
}

/// Writes the status file for an orchestrator's probe: the last pass, atomically (a
/// temporary file renamed over it), private to its owner.
fn write_status(path: &Path, text: &str) -> std::io::Result<()> {
    use keyvault_failover::files::{write_atomically, WriteOptions};
    write_atomically(path, text.as_bytes(), &WriteOptions::default())
}

/// `replicate`: exit 0 when every secondary is in step, 1 when something could not be copied
/// (or, with `--dry-run`, when a run has work to do), 2 on bad input. With `--every`, runs
/// until SIGTERM or Ctrl-C, one pass per interval (jittered by up to a tenth), and exits 0.
pub(crate) fn run(opts: Options) -> Result<ExitCode, Box<dyn std::error::Error>> {
    if let Some(every) = opts.every {
        if !(MIN_EVERY..=MAX_EVERY).contains(&every) {
            return Err(format!(
                "--every {} must be between 10s and 7days",
                humantime::format_duration(every)
            )
            .into());
        }
    }
    if opts.deep_every.is_some() && opts.every.is_none() {
        return Err("--deep-every goes with --every".into());
    }
    if opts.metrics.is_some() && opts.every.is_none() {
        return Err("--metrics goes with --every".into());
    }
    // Installed before the replicator is built: its instruments come from the global provider.
    let metrics = opts.metrics.map(|_| {
        let reader = keyvault_failover_agent::PrometheusReader::new();
        opentelemetry::global::set_meter_provider(reader.provider());
        reader
    });
    let config = Config::from_file(&opts.config)?;
    let replicator = build(&config, &opts)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let Some(every) = opts.every else {
            let outcome = pass(&replicator, &opts).await;
            if let Some(path) = &opts.status_file {
                if let Err(e) = write_status(path, &status_of(&outcome)) {
                    eprintln!("error: cannot write {}: {e}", path.display());
                }
            }
            return Ok(match outcome {
                Ok((true, _)) => ExitCode::SUCCESS,
                Ok((false, _)) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            });
        };
        let health = Arc::new(crate::replicate_http::Health::default());
        // A pass is stale once two intervals and their jitter have gone by without one.
        let stale_after = every.mul_f64(2.2) + Duration::from_secs(60);
        let _server = match (opts.metrics, metrics) {
            (Some(addr), Some(reader)) => {
                Some(crate::replicate_http::serve(addr, reader, health.clone(), stale_after).await?)
            }
            _ => None,
        };
        let stop = crate::cli::stop_signal();
        tokio::pin!(stop);
        for n in 0u64.. {
            if let Some(k) = opts.deep_every {
                // The first pass and every k-th after it are deep.
                replicator.set_deep(opts.deep || n % u64::from(k) == 0);
            }
            let outcome = pass(&replicator, &opts).await;
            *health.in_step.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(matches!(outcome, Ok((true, _))));
            health
                .finished
                .store(crate::cli::unix_now(), std::sync::atomic::Ordering::Relaxed);
            if let Err(e) = &outcome {
                eprintln!("error: {e}");
            }
            if let Some(path) = &opts.status_file {
                if let Err(e) = write_status(path, &status_of(&outcome)) {
                    eprintln!("error: cannot write {}: {e}", path.display());
                }
            }
            let jitter = every.mul_f64(fastrand::u64(..) as f64 / u64::MAX as f64 / 10.0);
            tokio::select! {
                _ = tokio::time::sleep(every + jitter) => {}
                _ = &mut stop => return Ok(ExitCode::SUCCESS),
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// The status file's text for a pass's outcome.
fn status_of(outcome: &Result<(bool, Option<String>), String>) -> String {
    match outcome {
        Ok((_, Some(status))) => status.clone(),
        Ok((in_step, None)) => serde_json::json!({
            "finished_unix": crate::cli::unix_now(),
            "in_step": in_step,
            "dry_run": true,
        })
        .to_string(),
        Err(e) => serde_json::json!({
            "finished_unix": crate::cli::unix_now(),
            "in_step": false,
            "error": e,
        })
        .to_string(),
    }
}
