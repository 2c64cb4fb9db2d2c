//! The admin endpoint: plain HTTP on its own loopback port, to switch faults from outside.
//!
//! Every request must carry `Authorization: Bearer <token>` with the token the emulator made
//! at start (printed by `keyvault-failover emulator`, [`Emulator::admin_token`]
//! (super::Emulator::admin_token)), and a `Host` naming the loopback address: another local
//! process, or a web page in a browser (DNS rebinding), cannot switch faults. Connections are
//! capped and must send their headers within 10 s.
//!
//! * `GET /vaults` — every vault: region, URL, address, fault, counters, secrets held.
//! * `PUT /vaults/{region}/fault` with a JSON body such as `{"fault": "refuse"}`,
//!   `{"fault": "delay", "ms": 2000}`, `{"fault": "server-errors", "rate": 0.5}`,
//!   `{"fault": "throttle", "retry_after_secs": 5}` or `{"fault": "up"}`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::{VaultFault, VaultState};
use crate::error::Error;

/// A fresh random token for the admin endpoint: 32 bytes from the system's secure RNG (through
/// the TLS provider already in the tree), as hex.
pub(crate) fn new_token() -> Result<String, Error> {
    let mut b = [0u8; 32];
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut b)
        .map_err(|_| Error::io("admin endpoint: no secure random source"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Open admin connections at most.
const MAX_CONNECTIONS: usize = 64;

pub(crate) async fn start(
    vaults: Vec<Arc<VaultState>>,
    token: Arc<str>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<SocketAddr, Error> {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .map_err(|e| Error::io(format!("cannot bind the admin endpoint: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io(format!("admin endpoint: {e}")))?;
    let vaults = Arc::new(vaults);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                acc = listener.accept() => {
                    let Ok((tcp, _)) = acc else { continue };
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        continue; // over the cap: the connection is dropped
                    };
                    let (vaults, token) = (vaults.clone(), token.clone());
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let (vaults, token) = (vaults.clone(), token.clone());
                            async move {
                                Ok::<_, Infallible>(match authorize(&req, &token, addr) {
                                    Ok(()) => handle(&vaults, req).await,
                                    Err(r) => r,
                                })
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .timer(hyper_util::rt::TokioTimer::new())
                            .header_read_timeout(std::time::Duration::from_secs(10))
                            .serve_connection(super::server::write_bounded(tcp), service)
                            .await;
                        drop(slot);
                    });
                }
                _ = shutdown.changed() => return,
            }
        }
    });
    Ok(addr)
}

/// The token and a loopback `Host`, or the answer to give instead.
#[allow(clippy::result_large_err)]
fn authorize<B>(
    req: &Request<B>,
    token: &str,
    addr: SocketAddr,
) -> Result<(), Response<Full<Bytes>>> {
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let port = addr.port();
    if ![format!("127.0.0.1:{port}"), format!("localhost:{port}")]
        .iter()
        .any(|h| h == host)
    {
        return Err(reply(
            StatusCode::FORBIDDEN,
            json!({"error": "the Host header must name the admin endpoint's loopback address"}),
        ));
    }
    let given = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or("");
    // Compared in constant time over the token's length.
    let same = given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        return Err(reply(
            StatusCode::UNAUTHORIZED,
            json!({"error": "missing or wrong admin token (Authorization: Bearer <token printed at start>)"}),
        ));
    }
    Ok(())
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn describe(v: &VaultState) -> Value {
    json!({
        "region": v.region,
        "url": format!("https://{}", v.host),
        "addr": v.addr.to_string(),
        "fault": *v.fault.borrow(),
        "requests": v.counters.requests.load(Ordering::Relaxed),
        "gets": v.counters.gets.load(Ordering::Relaxed),
        "writes": v.counters.writes.load(Ordering::Relaxed),
        "throttled": v.counters.throttled.load(Ordering::Relaxed),
        "secrets": v.data().len(),
    })
}

async fn handle(vaults: &[Arc<VaultState>], req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method().clone(), segments.as_slice()) {
        (Method::GET, ["vaults"]) => reply(
            StatusCode::OK,
            Value::Array(vaults.iter().map(|v| describe(v)).collect()),
        ),
        (Method::PUT, ["vaults", region, "fault"]) => {
            let Some(v) = vaults.iter().find(|v| v.region == *region) else {
                return reply(
                    StatusCode::NOT_FOUND,
                    json!({"error": format!("no vault {region:?}")}),
                );
            };
            let bytes = match Limited::new(req.into_body(), 64 * 1024).collect().await {
                Ok(c) => c.to_bytes(),
                Err(_) => {
                    return reply(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        json!({"error": "body too large"}),
                    )
                }
            };
            match serde_json::from_slice::<VaultFault>(&bytes) {
                Ok(f) => match v.apply_fault(f).await {
                    Ok(()) => reply(StatusCode::OK, describe(v)),
                    Err(e) => reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        json!({"error": e.to_string()}),
                    ),
                },
                Err(e) => reply(
                    StatusCode::BAD_REQUEST,
                    json!({"error": format!("invalid fault: {e}")}),
                ),
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            json!({"error": "GET /vaults or PUT /vaults/{region}/fault"}),
        ),
    }
}
