//! One request: routing, the token and forwarding rules, and the JSON answers.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::json;

use super::State;
use keyvault_failover::{Error, Freshness, HealthState};

/// A response body holding a secret value: its bytes are zeroed when the body is dropped.
pub(crate) struct Wiped(pub(crate) Vec<u8>);

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

pub(crate) fn respond(
    status: StatusCode,
    body: Bytes,
    content_type: &str,
) -> Response<Full<Bytes>> {
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

/// The longest path a refused request's log line keeps (cut on a character boundary).
const LOGGED_PATH: usize = 128;

/// `s` cut to at most `max` bytes, on a character boundary.
pub(crate) fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
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
    let mut resp = error(status, code, &e.to_string());
    if status == StatusCode::TOO_MANY_REQUESTS {
        resp.headers_mut()
            .insert(hyper::header::RETRY_AFTER, retry_after_secs(e).into());
    }
    resp
}

/// A throttled read's `Retry-After`: whole seconds, at least one: what the vault asked for,
/// else a second (at most an hour).
pub(crate) fn retry_after_secs(e: &Error) -> u64 {
    e.retry_after()
        .map_or(1, |d| d.as_secs_f64().ceil().clamp(1.0, 3600.0) as u64)
}

fn health(state: &State) -> serde_json::Value {
    let h = state.client.health();
    let health_state = match h.state() {
        HealthState::Ready => "ready",
        HealthState::Degraded => "degraded",
        HealthState::NotReady => "not-ready",
    };
    let mut v = json!({
        "live": h.is_live(),
        "ready": h.is_ready(),
        "degraded": h.is_degraded(),
        "state": health_state,
        "active": h.active(),
    });
    if let Some(files) = &state.files {
        let files = files.lock().unwrap_or_else(|p| p.into_inner()).clone();
        v["files"] = serde_json::to_value(files).unwrap_or_default();
    }
    v
}

/// Compares without an early exit, so the time taken says nothing about the token.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// `s` as a JSON string literal (quotes and escapes), appended to `out`.
pub(crate) fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // serde_json writes straight into `out`: no intermediate copy of the value.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Whether the request's `Host` (if any: a browser always sends one) is one the agent
/// answers to.
fn host_allowed<B>(state: &State, req: &Request<B>) -> bool {
    hosts_allow(state.hosts.as_deref(), req)
}

/// Whether the request's `Host` (if any) is one of `hosts` (`None`: any).
pub(crate) fn hosts_allow<B>(hosts: Option<&[String]>, req: &Request<B>) -> bool {
    let Some(hosts) = hosts else {
        return true;
    };
    match req.headers().get(hyper::header::HOST) {
        None => true,
        Some(h) => h
            .to_str()
            .is_ok_and(|h| hosts.iter().any(|a| a.eq_ignore_ascii_case(h))),
    }
}

pub(crate) async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if !host_allowed(&state, &req) {
        // A page whose name was rebound to 127.0.0.1 sends its own name: refused before
        // anything else, liveness included.
        return error(
            StatusCode::FORBIDDEN,
            "host",
            "the Host header must name this machine's loopback address",
        );
    }
    let events = req.uri().path() == EVENTS;
    // CloudEvents' webhook abuse protection: the delivering service asks, with OPTIONS and
    // its origin, whether it may post here. Nothing is read or changed, so no token is asked
    // (the handshake carries none).
    if events && req.method() == hyper::Method::OPTIONS {
        if let Some(origin) = req.headers().get("webhook-request-origin").cloned() {
            let mut resp = respond(StatusCode::OK, Bytes::new(), "text/plain");
            resp.headers_mut().insert("webhook-allowed-origin", origin);
            resp.headers_mut().insert(
                "webhook-allowed-rate",
                hyper::header::HeaderValue::from_static("*"),
            );
            return resp;
        }
    }
    let allowed = if events { "POST" } else { "GET" };
    if req.method().as_str() != allowed {
        let mut resp = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            &format!("{allowed} only"),
        );
        resp.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static(allowed),
        );
        return resp;
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
        return reply(StatusCode::OK, health(&state));
    }
    let token_ok = req
        .headers()
        .get("x-agent-token")
        .is_some_and(|t| same(t.as_bytes(), &state.token));
    if !token_ok {
        // The path only: never the token sent.
        tracing::warn!(path = %cut(path, LOGGED_PATH), "request without a valid X-Agent-Token refused");
        let mut resp = error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong X-Agent-Token",
        );
        resp.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static(
                "X-Agent-Token realm=\"keyvault-failover agent\"",
            ),
        );
        return resp;
    }
    if path == "/healthz/ready" {
        let body = health(&state);
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
    if events {
        return post_events(&state, req).await;
    }
    let Some(name) = path.strip_prefix("/v1/secrets/") else {
        return error(StatusCode::NOT_FOUND, "no_route", "no such endpoint");
    };
    let version = req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("version="))
            .map(str::to_string)
    });
    let secret = match state.read(name, version.as_deref()).await {
        Ok(s) => s,
        Err(e) => return error_of(&e),
    };
    let (freshness, age) = match secret.freshness() {
        Freshness::Stale { age } => ("stale", Some(age.as_secs_f64())),
        _ => ("fresh", None),
    };
    let body = secret_body(
        name,
        secret.expose(),
        secret.version(),
        secret.region(),
        freshness,
        age,
    );
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
    // How far behind the secondaries are known to be, in whole seconds: the most any region
    // lags (this client found it holding an older copy than a version it served).
    let lag = state.client.replication_lag(None);
    if let Some(lag) = lag {
        h.insert(
            "x-keyvault-replication-lag",
            hyper::header::HeaderValue::from(lag.as_secs()),
        );
    }
    resp
}

/// How many bytes `s` can take as a JSON string literal: quotes, and every byte that may be
/// escaped counted as its longest escape (`\u00XX`).
pub(crate) fn json_len(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| {
            if b < 0x20 || b == b'"' || b == b'\\' {
                6
            } else {
                1
            }
        })
        .sum::<usize>()
}

/// The answer's JSON, written by hand into one buffer sized up front for every field, so it is
/// never reallocated (a reallocation would free a copy of the value unzeroed); the caller
/// zeroes it when the body is dropped.
fn secret_body(
    name: &str,
    value: &str,
    version: &str,
    region: &str,
    freshness: &str,
    age: Option<f64>,
) -> Vec<u8> {
    // The field names and punctuation, and an age of up to 24 digits.
    const FIXED: usize = 96;
    let cap = FIXED
        + json_len(name)
        + json_len(value)
        + json_len(version)
        + json_len(region)
        + json_len(freshness);
    let mut body = Vec::with_capacity(cap);
    body.extend_from_slice(b"{\"name\":");
    push_json_str(&mut body, name);
    body.extend_from_slice(b",\"value\":");
    push_json_str(&mut body, value);
    body.extend_from_slice(b",\"version\":");
    push_json_str(&mut body, version);
    body.extend_from_slice(b",\"region\":");
    push_json_str(&mut body, region);
    body.extend_from_slice(b",\"freshness\":");
    push_json_str(&mut body, freshness);
    body.extend_from_slice(b",\"age_s\":");
    match age {
        // At most a day's seconds (the staleness cap's bound) with three decimals.
        Some(a) => {
            use std::io::Write;
            let _ = write!(body, "{:.3}", a.clamp(0.0, 1e12));
        }
        None => body.extend_from_slice(b"null"),
    }
    body.push(b'}');
    body
}

/// Where Event Grid (or a relay) posts Key Vault's events.
const EVENTS: &str = "/v1/events";

/// `POST /v1/events`: a delivery of Key Vault's events (Event Grid schema or CloudEvents,
/// single or batched), each a refresh hint for the secrets this agent holds; Event Grid's
/// subscription handshake is answered with its `validationResponse`.
async fn post_events(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    use http_body_util::BodyExt;
    let max = keyvault_failover::changes::MAX_BODY_BYTES;
    let body = match http_body_util::Limited::new(req.into_body(), max)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                &format!("an event delivery is at most {max} bytes"),
            )
        }
    };
    match state.client.notify_events(&body) {
        Ok(applied) => match applied.validation_code() {
            Some(code) => reply(StatusCode::OK, json!({ "validationResponse": code })),
            None => reply(
                StatusCode::OK,
                json!({ "scheduled": applied.scheduled(), "outcomes": applied.outcomes() }),
            ),
        },
        Err(e) => error(StatusCode::BAD_REQUEST, "invalid_events", &e.to_string()),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 20: the buffer was sized for the value and the name only, so a long version id
    /// made it grow, and the block it left, holding the value, was freed unzeroed. Now it is
    /// sized for every field: it never grows.
    #[test]
    fn the_answer_buffer_never_grows() {
        let long = "v".repeat(4096);
        let ctrl = "\u{1}".repeat(300);
        for (value, version, region) in [
            ("hunter2", long.as_str(), "weu"),
            (ctrl.as_str(), "abc", long.as_str()),
            ("", "", ""),
            ("\"\\\n", &long[..31], "neu"),
        ] {
            for age in [None, Some(0.0), Some(86_400.123), Some(f64::MAX)] {
                let body = secret_body("db-password", value, version, region, "stale", age);
                let cap = FIXED_CAP(value, version, region);
                assert!(body.len() <= cap, "{} > {cap}", body.len());
                assert_eq!(body.capacity(), cap, "never reallocated");
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(v["value"], value);
                assert_eq!(v["version"], version);
            }
        }
    }

    #[allow(non_snake_case)]
    fn FIXED_CAP(value: &str, version: &str, region: &str) -> usize {
        96 + json_len("db-password")
            + json_len(value)
            + json_len(version)
            + json_len(region)
            + json_len("stale")
    }

    #[test]
    fn logged_paths_are_cut_on_a_character_boundary() {
        let path = format!("/v1/secrets/{}", "é".repeat(40_000));
        let c = cut(&path, LOGGED_PATH);
        assert!(
            c.len() <= LOGGED_PATH && c.len() >= LOGGED_PATH - 3,
            "{}",
            c.len()
        );
        assert_eq!(cut("/short", LOGGED_PATH), "/short");
    }
}
