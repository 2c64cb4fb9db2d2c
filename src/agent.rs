//! `keyvault-failover agent`: the failover client served over HTTP on the loopback interface,
//! for services in any language.
//!
//! * `GET /v1/secrets/{name}[?version=V]` → `{name, value, version, region, freshness, age_s}`
//!   with `X-Keyvault-Region`, `X-Keyvault-Version`, `X-Keyvault-Freshness`; errors are
//!   `{code, message}` with a stable code and status: `invalid_name` 400, `unauthorized` 401,
//!   `forbidden` 403, `not_found` 404, `throttled` 429, `unavailable` 503.
//! * `GET /healthz/live` (no token), `GET /healthz/ready` (200 ready, 503 not ready); both
//!   say whether the client is degraded.
//! * Every request but liveness carries `X-Agent-Token`; a request with `X-Forwarded-For` is
//!   refused (`forwarded`, 400): the agent is for processes on this machine only.
//! * Bounded: connections (over the cap they are closed at once), header time (10 s) and each
//!   request's time; SIGTERM or Ctrl-C stops accepting and lets requests in flight finish (at
//!   most 30 s).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use keyvault_failover::{azure, Config, Error, FailoverClient, Freshness, HealthState};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;

/// The `[agent]` table of the configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentConfig {
    /// Where to listen: loopback unless `allow_non_loopback`.
    #[serde(default = "default_listen")]
    listen: SocketAddr,
    #[serde(default)]
    allow_non_loopback: bool,
    /// A file holding the token (relative: to the configuration file).
    #[serde(default)]
    token_file: Option<PathBuf>,
    /// Or the name of an environment variable holding it.
    #[serde(default)]
    token_env: Option<String>,
    /// Secrets read at start (after a random delay of up to `preload_jitter`).
    #[serde(default)]
    preload: Vec<String>,
    #[serde(default = "one_second", with = "humantime_serde")]
    preload_jitter: Duration,
    #[serde(default = "max_connections")]
    max_connections: usize,
    /// Longest time one request may take (default: the client's deadline plus a second).
    #[serde(default, with = "humantime_serde")]
    request_timeout: Option<Duration>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 2780))
}
fn one_second() -> Duration {
    Duration::from_secs(1)
}
fn max_connections() -> usize {
    256
}

const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const DRAIN: Duration = Duration::from_secs(30);

struct State {
    client: FailoverClient,
    token: Vec<u8>,
}

fn load(path: &Path) -> Result<(Config, AgentConfig, Vec<u8>), Box<dyn std::error::Error>> {
    let (config, table) = Config::from_file_with(path, Some("agent"))?;
    let text = toml::to_string(&table.unwrap_or_default())?;
    let agent: AgentConfig =
        toml::from_str(&text).map_err(|e| format!("{}: [agent]: {e}", path.display()))?;
    if agent.max_connections == 0 || agent.max_connections > 65_536 {
        return Err(format!(
            "{}: [agent] max_connections must be in 1..=65536",
            path.display()
        )
        .into());
    }
    if agent.preload_jitter > Duration::from_secs(3600)
        || agent
            .request_timeout
            .is_some_and(|t| t.is_zero() || t > Duration::from_secs(3600))
    {
        return Err(format!(
            "{}: [agent] preload_jitter and request_timeout must be at most 1 h (and the timeout > 0)",
            path.display()
        )
        .into());
    }
    if !agent.listen.ip().is_loopback() && !agent.allow_non_loopback {
        return Err(format!(
            "{}: [agent] listen {} is not a loopback address; set allow_non_loopback = true to \
             serve secrets beyond this machine",
            path.display(),
            agent.listen
        )
        .into());
    }
    let token = match (&agent.token_file, &agent.token_env) {
        (Some(f), None) => {
            let f = match path.parent() {
                Some(dir) if f.is_relative() => dir.join(f),
                _ => f.clone(),
            };
            let meta = std::fs::metadata(&f)
                .map_err(|e| format!("[agent] token_file {}: {e}", f.display()))?;
            if meta.len() > 4096 {
                return Err(format!("[agent] token_file {}: more than 4 KiB", f.display()).into());
            }
            std::fs::read_to_string(&f)
                .map_err(|e| format!("[agent] token_file {}: {e}", f.display()))?
        }
        (None, Some(var)) => std::env::var(var)
            .map_err(|_| format!("[agent] token_env: environment variable {var} is not set"))?,
        _ => {
            return Err(format!(
                "{}: [agent] needs exactly one of token_file or token_env",
                path.display()
            )
            .into())
        }
    };
    let token = token.trim().as_bytes().to_vec();
    if token.len() < 16 {
        return Err("[agent] the token must be at least 16 characters".into());
    }
    Ok((config, agent, token))
}

/// Compares without an early exit, so the time taken says nothing about the token.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("cache-control", "no-store")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    reply(status, json!({ "code": code, "message": message }))
}

fn error_of(e: &Error) -> Response<Full<Bytes>> {
    let (status, code) = if e.is_invalid_name() {
        (StatusCode::BAD_REQUEST, "invalid_name")
    } else if e.is_not_found() {
        (StatusCode::NOT_FOUND, "not_found")
    } else if e.is_auth() {
        (StatusCode::FORBIDDEN, "forbidden")
    } else if e.is_throttled() {
        (StatusCode::TOO_MANY_REQUESTS, "throttled")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    };
    // Errors name secrets and regions, never values.
    error(status, code, &e.to_string())
}

fn health(client: &FailoverClient) -> serde_json::Value {
    let h = client.health();
    let state = match h.state() {
        HealthState::Ready => "ready",
        HealthState::Degraded => "degraded",
        HealthState::NotReady => "not-ready",
    };
    json!({
        "live": h.is_live(),
        "ready": h.is_ready(),
        "degraded": h.is_degraded(),
        "state": state,
        "active": h.active(),
    })
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != hyper::Method::GET {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "GET only",
        );
    }
    if req.headers().contains_key("x-forwarded-for") {
        return error(
            StatusCode::BAD_REQUEST,
            "forwarded",
            "requests with X-Forwarded-For are refused: the agent serves this machine only",
        );
    }
    let path = req.uri().path().to_string();
    if path == "/healthz/live" {
        return reply(StatusCode::OK, health(&state.client));
    }
    let token_ok = req
        .headers()
        .get("x-agent-token")
        .is_some_and(|t| same(t.as_bytes(), &state.token));
    if !token_ok {
        tracing::warn!(path = %path, "request without a valid X-Agent-Token refused");
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong X-Agent-Token",
        );
    }
    if path == "/healthz/ready" {
        let body = health(&state.client);
        let status = if body["ready"] == true {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        return reply(status, body);
    }
    let Some(name) = path.strip_prefix("/v1/secrets/") else {
        return error(StatusCode::NOT_FOUND, "no_route", "no such endpoint");
    };
    let version = req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("version="))
            .map(str::to_string)
    });
    let got = match &version {
        Some(v) => state.client.get_secret_version(name, v).await,
        None => state.client.get_secret(name).await,
    };
    let secret = match got {
        Ok(s) => s,
        Err(e) => return error_of(&e),
    };
    let (freshness, age) = match secret.freshness() {
        Freshness::Stale { age } => ("stale", Some(age.as_secs_f64())),
        _ => ("fresh", None),
    };
    let body = json!({
        "name": name,
        "value": secret.expose(),
        "version": secret.version(),
        "region": secret.region(),
        "freshness": freshness,
        "age_s": age,
    });
    let mut resp = reply(StatusCode::OK, body);
    let h = resp.headers_mut();
    for (k, v) in [
        ("x-keyvault-region", secret.region().to_string()),
        ("x-keyvault-version", secret.version().to_string()),
        ("x-keyvault-freshness", freshness.to_string()),
    ] {
        if let Ok(v) = hyper::header::HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    }
    resp
}

async fn stop_signal() {
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

/// Runs the agent until SIGTERM or Ctrl-C.
pub(crate) fn run(config: &Path) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let (config, agent, token) = load(config)?;
    let request_timeout = agent
        .request_timeout
        .unwrap_or(config.deadline() + Duration::from_secs(1));
    crate::cli::server_runtime()?.block_on(async move {
        let client = azure::connect_with_config(config)?;
        let listener = tokio::net::TcpListener::bind(agent.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", agent.listen))?;
        let addr = listener.local_addr()?;
        println!("listening on {addr}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        tracing::info!(%addr, "agent listening");
        if !agent.preload.is_empty() {
            let (c, names, jitter) = (client.clone(), agent.preload.clone(), agent.preload_jitter);
            tokio::spawn(async move {
                let wait = jitter.mul_f64(fastrand::f64());
                tokio::time::sleep(wait).await;
                for (name, e) in c.preload(&names).await {
                    tracing::warn!(secret = %name, error = %e, "preload failed");
                }
            });
        }
        let state = Arc::new(State { client, token });
        let slots = Arc::new(tokio::sync::Semaphore::new(agent.max_connections));
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut conns = tokio::task::JoinSet::new();
        let stop = stop_signal();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                acc = listener.accept() => {
                    let Ok((tcp, _)) = acc else { continue };
                    // Over the cap the connection is closed at once: bounded memory.
                    let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
                    let (state, mut stop_rx) = (state.clone(), stop_rx.clone());
                    conns.spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let state = state.clone();
                            async move {
                                let r = tokio::time::timeout(request_timeout, handle(state, req))
                                    .await
                                    .unwrap_or_else(|_| {
                                        error(
                                            StatusCode::SERVICE_UNAVAILABLE,
                                            "unavailable",
                                            "the request took longer than the agent allows",
                                        )
                                    });
                                Ok::<_, std::convert::Infallible>(r)
                            }
                        });
                        let conn = hyper::server::conn::http1::Builder::new()
                            .keep_alive(true)
                            .timer(hyper_util::rt::TokioTimer::new())
                            .header_read_timeout(HEADER_TIMEOUT)
                            .serve_connection(TokioIo::new(tcp), service);
                        tokio::pin!(conn);
                        tokio::select! {
                            _ = conn.as_mut() => {}
                            _ = async { stop_rx.wait_for(|s| *s).await.map(|_| ()) } => {
                                // Finish the request in flight, then close.
                                conn.as_mut().graceful_shutdown();
                                let _ = conn.await;
                            }
                        }
                        drop(slot);
                    });
                }
                _ = &mut stop => break,
            }
            while conns.try_join_next().is_some() {}
        }
        drop(listener);
        tracing::info!("stopping: no new connections; finishing requests in flight");
        let _ = stop_tx.send(true);
        let drained =
            tokio::time::timeout(DRAIN, async { while conns.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!("requests still in flight after 30 s were cut");
        }
        println!("stopped");
        Ok::<_, Box<dyn std::error::Error>>(ExitCode::SUCCESS)
    })
}
