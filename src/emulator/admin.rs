//! The admin endpoint: plain HTTP on its own loopback port, to switch faults from outside.
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
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::{VaultFault, VaultState};
use crate::error::Error;

pub(crate) async fn start(
    vaults: Vec<Arc<VaultState>>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<SocketAddr, Error> {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .map_err(|e| Error::config(format!("cannot bind the admin endpoint: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::config(format!("admin endpoint: {e}")))?;
    let vaults = Arc::new(vaults);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                acc = listener.accept() => {
                    let Ok((tcp, _)) = acc else { continue };
                    let vaults = vaults.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let vaults = vaults.clone();
                            async move { Ok::<_, Infallible>(handle(&vaults, req).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tcp), service)
                            .await;
                    });
                }
                _ = shutdown.changed() => return,
            }
        }
    });
    Ok(addr)
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
