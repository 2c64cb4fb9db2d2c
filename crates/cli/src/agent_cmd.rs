//! `keyvault-failover agent --config FILE`: the library's agent with the process around it
//! (the global meter provider behind `/metrics`, SIGTERM, and the lines tests and scripts read);
//! and `keyvault-failover run`: a program with secrets in its environment.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use keyvault_failover_agent::{Agent, PrometheusReader};

use crate::cli::stop_signal;

/// Runs the agent until SIGTERM or Ctrl-C.
pub(crate) fn run(config: &Path) -> Result<ExitCode, Box<dyn std::error::Error>> {
    // Installed before the client is built: its meter comes from the global provider.
    let metrics = PrometheusReader::new();
    opentelemetry::global::set_meter_provider(metrics.provider());
    crate::cli::server_runtime()?.block_on(async move {
        let agent = Agent::from_file(config, Some(metrics))?;
        let bound = agent.bind().await?;
        println!("listening on {}", bound.address());
        if let Some(url) = bound.vault_api_url() {
            println!("key vault api on {url}");
            if let Some(ca) = bound.vault_api_ca() {
                // Clients trust this CA: SSL_CERT_FILE / connection_verify, NODE_EXTRA_CA_CERTS, ...
                println!("key vault api ca {}", ca.display());
            }
        }
        match bound.restored() {
            Some(Ok(n)) => println!(
                "snapshot: restored {n} value{}",
                if *n == 1 { "" } else { "s" }
            ),
            Some(Err(e)) => println!("snapshot: refused, starting without it: {e}"),
            None => {}
        }
        let _ = std::io::stdout().flush();
        bound.serve(stop_signal()).await?;
        println!("stopped");
        Ok::<_, Box<dyn std::error::Error>>(ExitCode::SUCCESS)
    })
}

/// `run`: the program's exit status, or 125 when it could not be started (the reason on
/// standard error; never a value).
#[cfg(unix)]
pub(crate) fn exec(
    config: &Path,
    env: &[String],
    on_change: &str,
    grace: std::time::Duration,
    program: Vec<std::ffi::OsString>,
) -> ExitCode {
    use keyvault_failover_agent::exec::{Exec, OnChange};
    let run = || -> Result<i32, Box<dyn std::error::Error>> {
        let mut b = Exec::builder(config)
            .on_change(on_change.parse::<OnChange>()?)
            .grace(grace)
            .program(program)?;
        for pair in env {
            b = b.env_pair(pair)?;
        }
        // Built inside the runtime: the client's probers and refresher start with it.
        let code = crate::cli::server_runtime()?.block_on(async move { b.build()?.run().await })?;
        Ok(code)
    };
    match run() {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("error: the program was not started: {e}");
            ExitCode::from(125)
        }
    }
}

/// `run` needs Unix signals and processes.
#[cfg(not(unix))]
pub(crate) fn exec(
    _config: &Path,
    _env: &[String],
    _on_change: &str,
    _grace: std::time::Duration,
    _program: Vec<std::ffi::OsString>,
) -> ExitCode {
    eprintln!("error: run needs a Unix system");
    ExitCode::from(125)
}
