//! `keyvault-failover`: run failover simulations and check configurations.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use keyvault_failover::{sim, Config};

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
    /// Simulate a regional outage against built-in simulated vaults, in virtual time.
    Simulate {
        /// Seed of every random draw; the same seed gives the same report.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Simulated duration in seconds.
        #[arg(long, default_value_t = 600)]
        duration: u64,
        /// Reads per second.
        #[arg(long, default_value_t = 50)]
        rate: u32,
        /// Directory to write report.json into.
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
    /// Validate a TOML client configuration and print it with every default filled in.
    CheckConfig {
        /// The configuration file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Diagnostics go to stderr, filtered by RUST_LOG (e.g. RUST_LOG=keyvault_failover=info).
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
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
            seed,
            duration,
            rate,
            out,
        } => {
            if duration < 420 {
                return Err(
                    "--duration must be at least 420 s: the outage runs from 120 s to 360 s".into(),
                );
            }
            if rate == 0 || rate > 5_000 {
                return Err("--rate must be between 1 and 5000 reads per second".into());
            }
            let scenario = sim::OutageScenario {
                seed,
                duration: Duration::from_secs(duration),
                reads_per_sec: rate,
                ..Default::default()
            };
            let wall = std::time::Instant::now();
            let report = sim::simulate_outage(&scenario)?;
            print!("{report}");
            println!(
                "simulated {} s in {:.2} s of wall time",
                duration,
                wall.elapsed().as_secs_f64()
            );
            if let Some(dir) = out {
                std::fs::create_dir_all(&dir)?;
                let path = dir.join("report.json");
                std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
                println!("wrote {}", path.display());
            }
            Ok(if report.violations.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Emulator {
            regions,
            cert_dir,
            limit,
            duration,
        } => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async move {
                let mut b = keyvault_failover::emulator::Emulator::builder()
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
                }
                if let Some(a) = emu.admin_addr() {
                    println!("admin http://{a}/vaults  (PUT /vaults/<region>/fault {{\"fault\":\"refuse\"}})");
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
        Command::CheckConfig { file } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let config = Config::from_toml(&text)?;
            print!("{}", config.to_toml());
            Ok(ExitCode::SUCCESS)
        }
    }
}
