//! One request: routing, the token and forwarding rules, and the JSON answers.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::json;

use super::State;
use keyvault_failover::{Error, FailoverClient, Freshness, HealthState};

/// A response body holding a secret value: its bytes are zeroed when the body is dropped.
struct Wiped(Vec<u8>);

impl AsRef<[u8]> for Wiped {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Wiped {
    fn drop(&mut self) {
        use secrecy::zeroize::Zeroize;
        self.0.zeroize();
    }
}

fn respond(status: StatusCode, body: Bytes, content_type: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("cache-control", "no-store")
        .body(Full::new(body))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    respond(status, Bytes::from(body.to_string()), "application/json")
}

pub(crate) fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
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

/// Compares without an early exit, so the time taken says nothing about the token.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// `s` as a JSON string literal (quotes and escapes), appended to `out`.
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // serde_json writes straight into `out`: no intermediate copy of the value.
    let _ = serde_json::to_writer(&mut *out, s);
}

pub(crate) async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
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
    let path = req.uri().path();
    if path == "/healthz/live" {
        return reply(StatusCode::OK, health(&state.client));
    }
    let token_ok = req
        .headers()
        .get("x-agent-token")
        .is_some_and(|t| same(t.as_bytes(), &state.token));
    if !token_ok {
        // The path only: never the token sent.
        tracing::warn!(path = %path.get(..128).unwrap_or(path), "request without a valid X-Agent-Token refused");
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
    if path == "/metrics" {
        return metrics(&state).await;
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
    // The body is written by hand into one buffer sized up front, zeroed when dropped.
    let escaped: usize = secret
        .expose()
        .bytes()
        .map(|b| {
            if b < 0x20 || b == b'"' || b == b'\\' {
                6
            } else {
                1
            }
        })
        .sum();
    let mut body = Vec::with_capacity(escaped + 2 * name.len() + 256);
    body.extend_from_slice(b"{\"name\":");
    push_json_str(&mut body, name);
    body.extend_from_slice(b",\"value\":");
    push_json_str(&mut body, secret.expose());
    body.extend_from_slice(b",\"version\":");
    push_json_str(&mut body, secret.version());
    body.extend_from_slice(b",\"region\":");
    push_json_str(&mut body, secret.region());
    body.extend_from_slice(b",\"freshness\":");
    push_json_str(&mut body, freshness);
    body.extend_from_slice(b",\"age_s\":");
    match age {
        Some(a) => body.extend_from_slice(format!("{a:.3}").as_bytes()),
        None => body.extend_from_slice(b"null"),
    }
    body.push(b'}');
    let mut resp = respond(
        StatusCode::OK,
        Bytes::from_owner(Wiped(body)),
        "application/json",
    );
    let h = resp.headers_mut();
    for (k, v) in [
        ("x-keyvault-region", secret.region()),
        ("x-keyvault-version", secret.version()),
        ("x-keyvault-freshness", freshness),
    ] {
        if let Ok(v) = hyper::header::HeaderValue::from_str(v) {
            h.insert(k, v);
        }
    }
    resp
}

async fn metrics(state: &State) -> Response<Full<Bytes>> {
    const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";
    let mut text = String::new();
    let h = state.client.health();
    text.push_str("# HELP keyvault_failover_agent_ready Whether the agent is ready (1) or not (0).\n# TYPE keyvault_failover_agent_ready gauge\n");
    text.push_str(&format!(
        "keyvault_failover_agent_ready {}\n",
        u8::from(h.is_ready())
    ));
    text.push_str("# HELP keyvault_failover_agent_degraded Whether the agent serves stale or cache-only values (1).\n# TYPE keyvault_failover_agent_degraded gauge\n");
    text.push_str(&format!(
        "keyvault_failover_agent_degraded {}\n",
        u8::from(h.is_degraded())
    ));
    if let Some(m) = state.metrics.clone() {
        // The flush waits on the SDK reader's thread: not on a runtime worker.
        if let Ok(t) = tokio::task::spawn_blocking(move || m.render()).await {
            text.push_str(&t);
        }
    }
    respond(StatusCode::OK, Bytes::from(text), PROMETHEUS)
}
