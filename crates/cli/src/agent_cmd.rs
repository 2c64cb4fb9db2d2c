//! `keyvault-failover agent --config FILE`: the library's agent with the process around it
//! (the global meter provider behind `/metrics`, SIGTERM, and the lines tests and scripts read).

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
