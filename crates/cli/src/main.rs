//! `keyvault-failover`: run failover simulations and check configurations.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use keyvault_failover::Config;
use keyvault_failover_sim as sim;

mod agent_cmd;
mod cli;
mod replicate_cmd;
mod replicate_http;
mod verify;

#[derive(Parser)]
#[command(
    version,
    about = "Multi-region Azure Key Vault failover client: simulator and tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a failover scenario in virtual time: the client against its baselines.
    Simulate {
        /// A shipped scenario name or a scenario TOML file (default: regional-outage).
        scenario: Option<String>,
        /// Seed of every random draw (default: the scenario's); the same seed gives the same
        /// report, byte for byte.
        #[arg(long, conflicts_with = "seeds")]
        seed: Option<u64>,
        /// Run a swarm of seeds, e.g. `1..50` (end excluded) or `1..=50`, and summarise.
        #[arg(long, value_parser = parse_seeds)]
        seeds: Option<(u64, u64)>,
        /// Simulated time instead of the scenario's, e.g. `24h`.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Contenders to run (default: the client and the scenario's baselines).
        #[arg(long, value_delimiter = ',', value_parser = ["client", "sdk", "sdk-deadline", "cache-aside", "app-service"])]
        only: Option<Vec<String>>,
        /// Directory to write report.json and plot.svg (swarm: swarm.json) into.
        #[arg(long)]
        out: Option<PathBuf>,
        /// List the shipped scenarios and exit.
        #[arg(long)]
        list: bool,
    },
    /// Measure read latency under fault injection: the real SDK over HTTPS against emulated
    /// vaults on 127.0.0.1, open loop, the client against the plain SDK and cache-aside.
    Bench {
        /// One scenario (default: the fault scenarios): healthy, refuse, blackhole, slow,
        /// throttle, all-down, partial, rotation; or the agent's: agent (load through the
        /// agent against in-process reads), restart-during-outage.
        #[arg(long)]
        scenario: Option<String>,
        /// Reads per second per contender.
        #[arg(long, default_value_t = 50)]
        rate: u32,
        /// Length of each scenario (three equal phases: steady, fault, recovery).
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Directory to write bench.json and one bench-<scenario>.svg per scenario into.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Serve emulated Key Vaults over HTTPS on 127.0.0.1 until Ctrl-C (or --duration).
    Emulator {
        /// Regions, one vault each, at host app-<region>.vault.azure.net.
        #[arg(long, value_delimiter = ',', default_value = "weu,neu")]
        regions: Vec<String>,
        /// Directory for the CA certificate to trust.
        #[arg(long, default_value = "target/emulator")]
        cert_dir: PathBuf,
        /// Secret GETs per 10 s a vault allows before answering 429.
        #[arg(long, default_value_t = 4000)]
        limit: u32,
        /// Stop after this many seconds (default: run until Ctrl-C).
        #[arg(long)]
        duration: Option<u64>,
    },
    /// Probe each region of a configuration once (a one-item listing, all at once); exit 1
    /// when a region did not answer.
    Probe {
        /// The client configuration (the library's TOML).
        #[arg(long)]
        config: PathBuf,
        /// JSON for scripts instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Each region's reachability and latency, and where a read would go now and why; exit 1
    /// when no region answered.
    Status {
        /// The client configuration (the library's TOML).
        #[arg(long)]
        config: PathBuf,
        /// JSON for scripts instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Read one secret through the failover client: its version and the region that served
    /// it; the value only with --reveal.
    Get {
        /// The secret's name.
        name: String,
        /// The client configuration (the library's TOML).
        #[arg(long)]
        config: PathBuf,
        /// Print the value too.
        #[arg(long)]
        reveal: bool,
        /// JSON for scripts instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print the client's live events (route changes, breaker transitions, throttling, drift,
    /// stale serves) while its prober and refresher run, until Ctrl-C or --duration.
    Watch {
        /// The client configuration (the library's TOML).
        #[arg(long)]
        config: PathBuf,
        /// Secrets to read at start, so the refresher keeps and drift-checks them.
        #[arg(long = "secret")]
        secrets: Vec<String>,
        /// Stop after this long, e.g. `10m`.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Compare each secondary's copy of each secret with the primary's: from the replicator's
    /// provenance tags where they settle it (no value read), else by a keyed hash of both
    /// values (never the value); exit 1 when any copy lags, differs or is missing.
    VerifyReplication {
        /// The client configuration (the library's TOML).
        #[arg(long)]
        config: PathBuf,
        /// Secrets to compare (default: every secret the primary lists, up to --limit).
        names: Vec<String>,
        /// The most secrets compared when none are named.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// JSON for scripts instead of text.
        #[arg(long)]
        json: bool,
        /// Read and compare every copy's value (by a keyed hash), even where the provenance
        /// tags settle it from the listings: a value planted under a genuine copy's tags
        /// looks in step in a listing.
        #[arg(long)]
        deep: bool,
    },
    /// Copy the primary's secrets (the read-write region) into every secondary where they differ:
    /// the plan, then the run; exit 0 when every secondary is in step, 1 when something could
    /// not be copied (with --dry-run: when a run has work to do), 2 on bad input.
    Replicate(replicate_cmd::Options),
    /// Serve the failover client over HTTP on 127.0.0.1 for services in any language (the
    /// file's `[agent]` table: listen, token_file or token_env, preload, ...), until SIGTERM.
    Agent {
        /// The client configuration with an `[agent]` table.
        #[arg(long)]
        config: PathBuf,
    },
    /// Start a program with secrets in its environment, read through the failover client
    /// (the sealed snapshot of `[agent.snapshot]` too): forwards SIGTERM, SIGINT and SIGHUP,
    /// exits with the program's status; 125 when it could not be started (a secret neither
    /// read nor restored, bad input).
    Run {
        /// The client configuration (an `[agent]` table's snapshot and queue are used).
        #[arg(long)]
        config: PathBuf,
        /// NAME=SECRET: the environment variable NAME holds the secret's value (repeatable).
        #[arg(long = "env", value_name = "NAME=SECRET", required = true)]
        env: Vec<String>,
        /// On a rotation: none, restart (SIGTERM, --grace, SIGKILL, start again), or
        /// signal:HUP (USR1, USR2, INT, TERM, QUIT).
        #[arg(long, default_value = "none")]
        on_change: String,
        /// Between SIGTERM and SIGKILL, on a restart or when we are stopped.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        grace: Duration,
        /// The program and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "PROGRAM")]
        program: Vec<std::ffi::OsString>,
    },
    /// Validate a TOML client configuration and print it with every default filled in.
    CheckConfig {
        /// The configuration file.
        file: PathBuf,
    },
}

/// `A..B` (B excluded) or `A..=B`.
fn parse_seeds(s: &str) -> Result<(u64, u64), String> {
    let err = || format!("{s:?} is not a seed range such as 1..50 or 1..=50");
    let (a, b) = s.split_once("..").ok_or_else(err)?;
    let a: u64 = a.trim().parse().map_err(|_| err())?;
    let b: u64 = match b.strip_prefix('=') {
        Some(b) => b
            .trim()
            .parse::<u64>()
            .map_err(|_| err())?
            .saturating_add(1),
        None => b.trim().parse().map_err(|_| err())?,
    };
    if b <= a || b - a > 10_000 {
        return Err(format!("{s:?}: the range must hold 1 to 10000 seeds"));
    }
    Ok((a, b))
}

/// A shipped scenario by name, or a TOML file.
fn load_scenario(arg: Option<&str>) -> Result<sim::Scenario, Box<dyn std::error::Error>> {
    let arg = arg.unwrap_or(sim::Scenario::builtin_names()[0]);
    let path = std::path::Path::new(arg);
    if path.is_file() || arg.ends_with(".toml") {
        let bytes = keyvault_failover::files::read_bounded(path, 1 << 20)
            .map_err(|e| format!("cannot read scenario {}: {e}", path.display()))?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| format!("scenario {}: not UTF-8 text", path.display()))?;
        return Ok(sim::Scenario::from_toml(text)?);
    }
    Ok(sim::Scenario::builtin(arg)?)
}

fn contenders(scenario: &sim::Scenario, names: &[String]) -> Vec<sim::ContenderKind> {
    let all = sim::ContenderKind::all_for(scenario);
    names
        .iter()
        .filter_map(|n| {
            all.iter().copied().find(|k| match n.as_str() {
                "client" => *k == sim::ContenderKind::FailoverClient,
                "sdk" => *k == sim::ContenderKind::PlainSdk,
                "sdk-deadline" => matches!(k, sim::ContenderKind::PlainSdkDeadline(_)),
                "cache-aside" => matches!(k, sim::ContenderKind::CacheAside(_)),
                _ => *k == sim::ContenderKind::AppService,
            })
        })
        .collect()
}

/// Runs `work` on a worker thread while this one draws a progress bar of `len` steps from
/// `done` (hidden when stderr is not a terminal).
fn with_progress<T: Send>(
    len: u64,
    template: &str,
    done: &AtomicU64,
    work: impl FnOnce() -> T + Send,
) -> Result<T, &'static str> {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let out = std::thread::scope(|scope| {
        let worker = scope.spawn(work);
        while !worker.is_finished() {
            bar.set_position(done.load(Ordering::Relaxed));
            std::thread::sleep(Duration::from_millis(100));
        }
        worker.join()
    });
    bar.finish_and_clear();
    out.map_err(|_| "the worker thread panicked")
}

/// Runs one scenario on a worker thread while the main thread draws the progress bar.
fn simulate_one(
    scenario: &sim::Scenario,
    contenders: Option<Vec<sim::ContenderKind>>,
    out: Option<&std::path::Path>,
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let n = contenders
        .as_ref()
        .map_or_else(|| sim::ContenderKind::all_for(scenario).len(), Vec::len) as u64;
    let progress = Arc::new(AtomicU64::new(0));
    let options = sim::SimOptions {
        contenders,
        progress: Some(progress.clone()),
        ..Default::default()
    };
    let wall = std::time::Instant::now();
    let run = with_progress(
        scenario.duration().as_millis() as u64 * n,
        &format!(
            "{{spinner}} simulating {} [{{bar:40}}] {{percent}} % ({{elapsed}})",
            scenario.name()
        ),
        &progress,
        || sim::simulate(scenario, &options),
    )??;
    let report = run.report();
    print!("{report}");
    println!(
        "simulated {} x {n} contender(s) in {:.2} s of wall time",
        humantime::format_duration(scenario.duration()),
        wall.elapsed().as_secs_f64()
    );
    if let Some(dir) = out {
        std::fs::create_dir_all(dir)?;
        let json = dir.join("report.json");
        std::fs::write(&json, report.to_json())?;
        let svg = dir.join("plot.svg");
        std::fs::write(&svg, run.svg())?;
        println!("wrote {} and {}", json.display(), svg.display());
    }
    Ok(if report.violations().is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Runs a swarm of seeds on every core, with a progress bar over seeds.
fn simulate_swarm(
    scenario: &sim::Scenario,
    contenders: Option<Vec<sim::ContenderKind>>,
    seeds: std::ops::Range<u64>,
    out: Option<&std::path::Path>,
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let options = sim::SimOptions {
        contenders,
        progress: None,
        ..Default::default()
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let done = AtomicU64::new(0);
    let wall = std::time::Instant::now();
    let report = with_progress(
        seeds.end - seeds.start,
        "{spinner} seeds [{bar:40}] {pos}/{len} ({elapsed})",
        &done,
        || sim::swarm(scenario, &options, seeds.clone(), threads, &done),
    )??;
    print!("{report}");
    println!(
        "{} seeds in {:.2} s of wall time on {threads} thread(s)",
        report.seeds,
        wall.elapsed().as_secs_f64()
    );
    if let Some(dir) = out {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("swarm.json");
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
        println!("wrote {}", path.display());
    }
    Ok(if report.sound() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Runs the fault-injection bench on a multi-thread runtime with a progress bar.
fn bench(
    options: &keyvault_failover_bench::BenchOptions,
    out: Option<&std::path::Path>,
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let total = options.duration.as_secs() * options.scenarios.len() as u64;
    let progress = AtomicU64::new(0);
    let rt = tokio::runtime::Runtime::new()?;
    let report = with_progress(
        total,
        "{spinner} bench [{bar:40}] {pos}/{len} s ({elapsed}, tails of slow reads may follow)",
        &progress,
        || rt.block_on(keyvault_failover_bench::run(options, &progress)),
    )??;
    print!("{report}");
    if let Some(dir) = out {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("bench.json"), report.to_json())?;
        for (stem, svg) in report.svgs() {
            std::fs::write(dir.join(format!("{stem}.svg")), svg)?;
        }
        println!(
            "wrote {}/bench.json and one SVG per scenario",
            dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Diagnostics go to stderr, filtered by RUST_LOG (e.g. RUST_LOG=keyvault_failover=info).
    // Without it the agent logs warnings and errors (refused tokens, failed saves and
    // preloads, requests cut at the drain: an operator must not have to ask for them); the
    // other commands, errors only (a simulation runs thousands of clients that warn).
    let default = if matches!(cli.command, Command::Agent { .. } | Command::Run { .. }) {
        "warn"
    } else {
        "error"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, Box<dyn std::error::Error>> {
    match cli.command {
        Command::Simulate {
            scenario,
            seed,
            seeds,
            duration,
            only,
            out,
            list,
        } => {
            if list {
                for name in sim::Scenario::builtin_names() {
                    let s = sim::Scenario::builtin(name)?;
                    println!("{name:<24} {}", s.duration().as_secs());
                }
                return Ok(ExitCode::SUCCESS);
            }
            let mut scenario = load_scenario(scenario.as_deref())?;
            if let Some(d) = duration {
                scenario = scenario.with_duration(d)?;
            }
            if let Some(seed) = seed {
                scenario = scenario.with_seed(seed);
            }
            let contenders = only.map(|names| contenders(&scenario, &names));
            match seeds {
                None => simulate_one(&scenario, contenders, out.as_deref()),
                Some((a, b)) => simulate_swarm(&scenario, contenders, a..b, out.as_deref()),
            }
        }
        Command::Bench {
            scenario,
            rate,
            duration,
            out,
        } => {
            use keyvault_failover_bench::agent as agent_bench;
            // The agent's scenarios: their own reports (load, restart), not three phases.
            let agent_report = match scenario.as_deref() {
                Some("agent") => {
                    let phase = (duration / 3).max(Duration::from_secs(1));
                    let r =
                        tokio::runtime::Runtime::new()?.block_on(agent_bench::load(phase, 100))?;
                    Some((
                        "bench-agent.json",
                        r.to_string(),
                        serde_json::to_string_pretty(&r)?,
                    ))
                }
                Some("restart-during-outage") => {
                    let r = tokio::runtime::Runtime::new()?.block_on(agent_bench::restart(200))?;
                    Some((
                        "bench-restart.json",
                        r.to_string(),
                        serde_json::to_string_pretty(&r)?,
                    ))
                }
                _ => None,
            };
            if let Some((file, text, json)) = agent_report {
                print!("{text}");
                if let Some(dir) = &out {
                    std::fs::create_dir_all(dir)?;
                    std::fs::write(dir.join(file), json)?;
                }
                return Ok(ExitCode::SUCCESS);
            }
            let scenarios = match scenario {
                Some(s) => vec![keyvault_failover_bench::BenchScenario::parse(&s)?],
                None => keyvault_failover_bench::BenchScenario::ALL.to_vec(),
            };
            let options = keyvault_failover_bench::BenchOptions {
                scenarios,
                rate,
                duration,
                ..Default::default()
            };
            bench(&options, out.as_deref())
        }
        Command::Emulator {
            regions,
            cert_dir,
            limit,
            duration,
        } => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async move {
                let mut b = keyvault_failover_emulator::Emulator::builder()
                    .admin(true)
                    .cert_dir(&cert_dir)
                    .throttle(limit, Duration::from_secs(10));
                for r in &regions {
                    b = b.vault(r);
                }
                let emu = b.start().await?;
                for r in emu.regions() {
                    println!("vault {r:<6} {}  ->  {}", emu.url(r), emu.addr(r));
                }
                if let Some(p) = emu.cert_path() {
                    println!("CA certificate {}", p.display());
                    let config = emu.write_client_config()?;
                    println!(
                        "client configuration {}  (keyvault-failover status --config {})",
                        config.display(),
                        config.display()
                    );
                }
                if let Some(a) = emu.admin_addr() {
                    println!("admin http://{a}/vaults  (PUT /vaults/<region>/fault {{\"fault\":\"refuse\"}})");
                    println!("admin token {}  (send it as: Authorization: Bearer <token>)", emu.admin_token());
                }
                println!("resolve each vault host to its address and trust the CA certificate");
                match duration {
                    Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
                    None => {
                        let _ = tokio::signal::ctrl_c().await;
                    }
                }
                Ok::<_, Box<dyn std::error::Error>>(ExitCode::SUCCESS)
            })
        }
        Command::Probe { config, json } => cli::probe(&config, json),
        Command::Status { config, json } => cli::status(&config, json),
        Command::Get {
            name,
            config,
            reveal,
            json,
        } => cli::get(&config, &name, reveal, json),
        Command::Watch {
            config,
            secrets,
            duration,
            json,
        } => cli::watch(&config, &secrets, duration, json),
        Command::VerifyReplication {
            config,
            names,
            limit,
            json,
            deep,
        } => verify::verify_replication(&config, &names, limit, json, deep),
        Command::Replicate(options) => replicate_cmd::run(options),
        Command::Agent { config } => agent_cmd::run(&config),
        Command::Run {
            config,
            env,
            on_change,
            grace,
            program,
        } => Ok(agent_cmd::exec(&config, &env, &on_change, grace, program)),
        Command::CheckConfig { file } => {
            // The client's configuration, and the agent's `[agent]` table if the file has one
            // (so the agent's own file can be checked before it starts).
            let (config, agent) = Config::from_file_with(&file, Some("agent"))?;
            if agent.is_some() {
                keyvault_failover_agent::AgentConfig::from_file(&file)?;
            }
            print!("{}", config.to_toml());
            Ok(ExitCode::SUCCESS)
        }
    }
}
