//! `replicate --every --metrics ADDR`: `/metrics` (the replicator's instruments, and the
//! clients', as Prometheus text) and `/healthz` (200 while the last pass left every secondary in
//! step and finished recently, 503 otherwise) on a loopback address, for an orchestrator.
//!
//! With the agent's protections: a `Host` that does not name the loopback is refused (a web
//! page whose name was rebound to 127.0.0.1 sends its own), a peer that sends no request
//! within 2 s or never reads its answer loses its connection and its slot, and an accept error
//! pauses the loop instead of spinning it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use keyvault_failover_agent::PrometheusReader;

/// What `/healthz` reports: the last pass's outcome and when it finished (unix seconds).
#[derive(Default)]
pub(crate) struct Health {
    pub(crate) in_step: Mutex<Option<bool>>,
    pub(crate) finished: AtomicI64,
}

/// The longest a connection may last, reading included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a peer may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest a write may wait for a peer that does not read.
const WRITE_STALL: Duration = Duration::from_secs(5);
/// Connections served at once; past this, a new one is closed at once.
const SLOTS: usize = 64;

/// Binds `addr` (loopback only) and serves until the task is dropped. `stale_after`: a last
/// pass older than this is unhealthy (a stuck replicator).
pub(crate) async fn serve(
    addr: SocketAddr,
    metrics: PrometheusReader,
    health: Arc<Health>,
    stale_after: Duration,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    if !addr.ip().is_loopback() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("--metrics {addr}: a loopback address only"),
        ));
    }
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("metrics on http://{}/metrics", listener.local_addr()?);
    let slots = Arc::new(tokio::sync::Semaphore::new(SLOTS));
    Ok(tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, a reset before accept: a pause, not a spin.
                    eprintln!("metrics: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                continue;
            };
            let (metrics, health) = (metrics.clone(), health.clone());
            tokio::spawn(async move {
                let _slot = slot;
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (metrics, health) = (metrics.clone(), health.clone());
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                answer(&req, metrics, &health, stale_after).await,
                            )
                        }
                    });
                let mut io = tokio_io_timeout::TimeoutWriter::new(stream);
                io.set_timeout(Some(WRITE_STALL));
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(hyper_util::rt::TokioIo::new(Box::pin(io)), service);
                let _ = tokio::time::timeout(REQUEST_TIMEOUT, conn).await;
            });
        }
    }))
}

async fn answer(
    req: &Request<hyper::body::Incoming>,
    metrics: PrometheusReader,
    health: &Health,
    stale_after: Duration,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: String, ct: &str| {
        Response::builder()
            .status(status)
            .header("content-type", ct)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
    };
    if !host_is_loopback(req) {
        return reply(
            StatusCode::FORBIDDEN,
            "the Host header must name this machine's loopback address\n".into(),
            "text/plain",
        );
    }
    if req.method() != hyper::Method::GET {
        return reply(StatusCode::METHOD_NOT_ALLOWED, String::new(), "text/plain");
    }
    match req.uri().path() {
        "/metrics" => {
            let text = tokio::task::spawn_blocking(move || metrics.render())
                .await
                .unwrap_or_default();
            reply(StatusCode::OK, text, "text/plain; version=0.0.4")
        }
        "/healthz" => {
            let now = crate::cli::unix_now();
            let finished = health.finished.load(Ordering::Relaxed);
            let in_step = *health.in_step.lock().unwrap_or_else(|p| p.into_inner());
            let recent = finished > 0 && now - finished <= stale_after.as_secs() as i64;
            let ok = in_step == Some(true) && recent;
            let body = serde_json::json!({
                "in_step": in_step,
                "finished_unix": (finished > 0).then_some(finished),
                "recent": recent,
            })
            .to_string();
            let status = if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply(status, body, "application/json")
        }
        _ => reply(StatusCode::NOT_FOUND, String::new(), "text/plain"),
    }
}

/// Whether the request's `Host` (if any) names the loopback: `localhost`, `127.x.x.x` or
/// `[::1]`, with any port.
fn host_is_loopback<B>(req: &Request<B>) -> bool {
    let Some(h) = req.headers().get(hyper::header::HOST) else {
        return true;
    };
    h.to_str()
        .is_ok_and(keyvault_failover_agent::is_loopback_host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_hosts_are_answered() {
        let with = |h: &str| {
            Request::builder()
                .header(hyper::header::HOST, h)
                .body(())
                .unwrap()
        };
        for ok in [
            "127.0.0.1:9465",
            "localhost",
            "LOCALHOST:1",
            "[::1]:9465",
            "127.1.2.3",
        ] {
            assert!(host_is_loopback(&with(ok)), "{ok}");
        }
        for bad in [
            "evil.example:9465",
            "127.0.0.1.evil.example",
            "10.0.0.1:9465",
            "[::2]:1",
        ] {
            assert!(!host_is_loopback(&with(bad)), "{bad}");
        }
        assert!(host_is_loopback(&Request::new(())), "no Host: a local tool");
    }
}
