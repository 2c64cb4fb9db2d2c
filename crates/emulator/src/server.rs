//! The vault server: TLS on a loopback port, HTTP/1.1, Key Vault's secrets API and faults.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_io_timeout::TimeoutWriter;
use tokio_rustls::TlsAcceptor;

use super::data::{self, NewVersion};
use super::{VaultFault, VaultState};
use crate::error::Error;
use keyvault_failover::MAX_NAME_LEN;
use keyvault_failover::MAX_VALUE_LEN;

/// Open connections per vault at most; more are dropped at accept.
const MAX_CONNECTIONS: usize = 1024;
/// Time a client has to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client may take no byte of an answer before its connection is cut: a peer that sends
/// requests and never reads the answers would otherwise keep its connection and its slot.
const WRITE_STALL: Duration = Duration::from_secs(10);
/// Largest request body read; anything larger answers 413 without being buffered.
const MAX_BODY: usize = 1024 * 1024;
/// How much of a body over [`MAX_BODY`] is read and dropped before the 413 is sent, so that a
/// client still sending gets its answer instead of a broken pipe (beyond it, and past
/// [`DRAIN_TIME`], the connection is cut).
const MAX_DRAIN: usize = 16 * 1024 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(10);
/// Key Vault's largest page.
const MAX_PAGE: usize = 25;
/// The tenant named in the bearer challenge.
const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

pub(crate) type Body = BoxBody<Bytes, std::io::Error>;

pub(crate) struct Tls {
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) ca_pem: String,
}

impl Tls {
    /// A fresh CA and a leaf certificate for `hosts` (and localhost), signed by it.
    pub(crate) fn generate(hosts: &[String]) -> Result<Tls, Error> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let e = |e: rcgen::Error| Error::tls(format!("emulator certificate: {e}"));
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "keyvault-failover emulator CA");
        let ca_key = KeyPair::generate().map_err(e)?;
        let ca_cert = ca_params.self_signed(&ca_key).map_err(e)?;
        let mut names: Vec<String> = hosts.to_vec();
        names.extend(["localhost".to_string(), "127.0.0.1".to_string()]);
        let mut leaf_params = CertificateParams::new(names).map_err(e)?;
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "keyvault-failover emulator");
        let leaf_key = KeyPair::generate().map_err(e)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).map_err(e)?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(
            rustls::pki_types::PrivatePkcs8KeyDer::from(leaf_key.serialize_der()),
        );
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::tls(format!("emulator TLS: {e}")))?
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone(), ca_cert.der().clone()], key)
            .map_err(|e| Error::tls(format!("emulator TLS: {e}")))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            ca_pem: ca_cert.pem(),
        })
    }
}

/// Binds with SO_REUSEADDR, so a vault that "refused" can take its port back.
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Serves one vault until shutdown. While the fault is `Refuse` nothing listens.
pub(crate) async fn serve(
    state: Arc<VaultState>,
    listener: TcpListener,
    tls: TlsAcceptor,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut fault = state.fault.subscribe();
    let mut listener = Some(listener);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        if *fault.borrow_and_update() == VaultFault::Refuse {
            listener = None;
            state.listening.send_replace(false);
            tokio::select! {
                r = fault.changed() => if r.is_err() { return },
                _ = shutdown.changed() => return,
            }
            continue;
        }
        let l = match listener.take() {
            Some(l) => l,
            None => match bind(state.addr) {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(vault = %state.region, error = %e, "cannot rebind; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        state.listening.send_replace(true);
        loop {
            tokio::select! {
                acc = l.accept() => {
                    if let Ok((tcp, _)) = acc {
                        // Over the cap the connection is dropped: bounded memory, whatever
                        // a client opens.
                        if let Ok(slot) = slots.clone().try_acquire_owned() {
                            let (st, tls, sd) = (state.clone(), tls.clone(), shutdown.clone());
                            tokio::spawn(async move {
                                connection(st, tcp, tls, sd).await;
                                drop(slot);
                            });
                        }
                    }
                }
                r = fault.changed() => {
                    if r.is_err() { return; }
                    if *fault.borrow() == VaultFault::Refuse { break; }
                }
                _ = shutdown.changed() => return,
            }
        }
        drop(l);
        state.listening.send_replace(false);
    }
}

/// Waits until `pred` holds for the vault's fault (or the emulator stops).
async fn until(state: &VaultState, pred: impl Fn(&VaultFault) -> bool) {
    let mut rx = state.fault.subscribe();
    let _ = rx.wait_for(|f| pred(f)).await;
}

/// `io` whose writes fail (and whose connection hyper then closes) after [`WRITE_STALL`]
/// without progress; boxed, so that hyper gets an `Unpin` stream. The vault and the admin
/// endpoints both serve through it.
pub(crate) fn write_bounded<I>(io: I) -> TokioIo<std::pin::Pin<Box<TimeoutWriter<I>>>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    let mut w = TimeoutWriter::new(io);
    w.set_timeout(Some(WRITE_STALL));
    TokioIo::new(Box::pin(w))
}

async fn connection(
    state: Arc<VaultState>,
    tcp: TcpStream,
    tls: TlsAcceptor,
    mut shutdown: watch::Receiver<bool>,
) {
    if *state.fault.borrow() == VaultFault::Blackhole {
        // Accept, then never speak: hold the socket until the fault ends or the emulator stops.
        tokio::select! {
            _ = until(&state, |f| *f != VaultFault::Blackhole) => {}
            _ = shutdown.changed() => {}
        }
        drop(tcp);
        return;
    }
    let stream = match tokio::time::timeout(Duration::from_secs(10), tls.accept(tcp)).await {
        Ok(Ok(s)) => s,
        _ => return,
    };
    let st = state.clone();
    let service = hyper::service::service_fn(move |req| {
        let st = st.clone();
        async move { Ok::<_, Infallible>(handle(st, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(write_bounded(stream), service);
    tokio::select! {
        _ = conn => {}
        // A refusing vault cuts its open connections too.
        _ = until(&state, |f| *f == VaultFault::Refuse) => {}
        _ = shutdown.changed() => {}
    }
}

fn full(status: StatusCode, body: Value) -> Response<Body> {
    let bytes = Bytes::from(body.to_string());
    Response::builder()
        .status(status)
        .header("content-type", "application/json; charset=utf-8")
        .header("x-ms-keyvault-service-version", "1.9.0.0")
        .body(Full::new(bytes).map_err(|never| match never {}).boxed())
        .unwrap_or_else(|_| Response::new(empty()))
}

fn empty() -> Body {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

/// Key Vault's error body.
fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    full(
        status,
        json!({ "error": { "code": code, "message": message } }),
    )
}

fn challenge() -> Response<Body> {
    let mut r = error(
        StatusCode::UNAUTHORIZED,
        "Unauthorized",
        "AKV10000: Request is missing a Bearer or PoP token.",
    );
    if let Ok(v) = http::HeaderValue::from_str(&format!(
        "Bearer authorization=\"https://login.microsoftonline.com/{TENANT}\", resource=\"https://vault.azure.net\""
    )) {
        r.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
    }
    r
}

fn throttled(retry_after: u64) -> Response<Body> {
    let mut r = error(
        StatusCode::TOO_MANY_REQUESTS,
        "Throttled",
        "Request was not processed because too many requests were received. Reason: VaultRequestTypeLimitReached",
    );
    r.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from(retry_after),
    );
    r
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= MAX_NAME_LEN
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Admits one request under the vault's limit for its kind (Key Vault counts GETs and writes
/// apart: 4,000 and 300 per 10 s), or says how many seconds until a slot frees.
fn admit(state: &VaultState, write: bool) -> Result<(), u64> {
    let now = std::time::Instant::now();
    let (limiter, limit) = if write {
        (&state.write_limiter, state.write_limit)
    } else {
        (&state.limiter, state.limit)
    };
    let mut log = limiter.lock().unwrap_or_else(|p| p.into_inner());
    while log
        .front()
        .is_some_and(|t| now.duration_since(*t) >= state.window)
    {
        log.pop_front();
    }
    if log.len() < limit {
        log.push_back(now);
        Ok(())
    } else {
        let oldest = log.front().copied().unwrap_or(now);
        let wait = state.window.saturating_sub(now.duration_since(oldest));
        // Rounded up: a client that waits exactly this long finds a free slot.
        Err(wait.as_millis().div_ceil(1000).max(1) as u64)
    }
}

#[derive(Deserialize)]
struct SetBody {
    value: Option<String>,
    #[serde(rename = "contentType")]
    content_type: Option<String>,
    attributes: Option<SetAttributes>,
    tags: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct SetAttributes {
    enabled: Option<bool>,
    exp: Option<i64>,
    nbf: Option<i64>,
}

async fn handle(state: Arc<VaultState>, req: Request<Incoming>) -> Response<Body> {
    state.counters.requests.fetch_add(1, Ordering::Relaxed);
    let fault = state.fault.borrow().clone();
    match fault {
        VaultFault::Blackhole | VaultFault::Refuse => {
            // In flight when the vault went dark: never answered.
            until(&state, |f| {
                !matches!(f, VaultFault::Blackhole | VaultFault::Refuse)
            })
            .await;
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "recovered",
            );
        }
        VaultFault::Delay { ms } => tokio::time::sleep(Duration::from_millis(ms)).await,
        _ => {}
    }
    let authorized = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Bearer ") && v.len() > "Bearer ".len());
    if !authorized {
        return challenge();
    }
    let base = format!(
        "https://{}",
        req.headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or(&state.host)
    );
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query: Vec<(String, String)> =
        url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let is_write = matches!(
        method,
        Method::PUT | Method::DELETE | Method::PATCH | Method::POST
    );
    if is_write {
        state.counters.writes.fetch_add(1, Ordering::Relaxed);
    } else if segments.first() == Some(&"secrets") {
        state.counters.gets.fetch_add(1, Ordering::Relaxed);
    }
    match fault {
        VaultFault::ServerErrors { rate } => {
            let hit = state.rng.lock().unwrap_or_else(|p| p.into_inner()).f64() < rate;
            if hit {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    "The service is temporarily unavailable.",
                );
            }
        }
        VaultFault::GetErrors
            if method == Method::GET && segments.len() >= 2 && segments[0] == "secrets" =>
        {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "The service is temporarily unavailable.",
            );
        }
        VaultFault::Throttle { retry_after_secs } => {
            state.counters.throttled.fetch_add(1, Ordering::Relaxed);
            return throttled(retry_after_secs);
        }
        VaultFault::Unauthorized => {
            return error(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "AKV10032: Invalid issuer.",
            );
        }
        VaultFault::Forbidden => {
            return error(StatusCode::FORBIDDEN, "Forbidden", "The user, group or application does not have secrets permission on this key vault.");
        }
        VaultFault::Answer {
            status,
            retry_after,
            body,
            repeat,
        } => return answer(status, retry_after.as_deref(), &body, repeat),
        VaultFault::ReadOnly if is_write => {
            return error(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "Operation is not allowed: the vault is read-only after a failover.",
            );
        }
        _ => {}
    }
    if let Err(retry_after) = admit(&state, is_write) {
        state.counters.throttled.fetch_add(1, Ordering::Relaxed);
        return throttled(retry_after);
    }
    if qget(&query, "api-version").is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        );
    }
    let response = route(&state, &base, method, &segments, &query, req.into_body()).await;
    match fault {
        VaultFault::Malformed if response.status().is_success() => Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json; charset=utf-8")
            .body(
                Full::new(Bytes::from_static(b"{\"value\": \"trunc"))
                    .map_err(|never| match never {})
                    .boxed(),
            )
            .unwrap_or_else(|_| Response::new(empty())),
        VaultFault::Truncated => truncate(response).await,
        _ => response,
    }
}

/// Sends half the body, then fails the stream: the client sees the connection cut mid-answer.
async fn truncate(response: Response<Body>) -> Response<Body> {
    let (parts, body) = response.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let half = bytes.slice(..bytes.len() / 2);
    let frames = futures::stream::iter(vec![
        Ok(Frame::data(half)),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "truncated by fault injection",
        )),
    ]);
    let mut r = Response::from_parts(parts, StreamBody::new(frames).boxed());
    r.headers_mut().insert(
        http::header::CONTENT_LENGTH,
        http::HeaderValue::from(bytes.len()),
    );
    r
}

async fn route(
    state: &VaultState,
    base: &str,
    method: Method,
    segments: &[&str],
    query: &[(String, String)],
    body: Incoming,
) -> Response<Body> {
    let bad_name = || {
        error(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            "The request URI contains an invalid name: names are 1-127 letters, digits and dashes.",
        )
    };
    match (segments, &method) {
        (["secrets"], &Method::GET) | (["secrets", ""], &Method::GET) => {
            let (max, skip) = match paging(query) {
                Ok(p) => p,
                Err(r) => return r,
            };
            let data = state.data();
            let (page, more) = data.page(skip, max);
            let value: Vec<Value> = page.iter().map(|(r, v)| data::item(base, r, v)).collect();
            let next = more.then(|| next_link(base, "secrets", query, skip + max, max));
            full(StatusCode::OK, json!({ "value": value, "nextLink": next }))
        }
        (["secrets", name], &Method::GET) | (["secrets", name, ""], &Method::GET) => {
            if !valid_name(name) {
                return bad_name();
            }
            match state.data().get(name, None) {
                Some((_, v)) if !v.enabled => disabled(),
                Some((r, v)) => full(StatusCode::OK, data::bundle(base, r, v)),
                None => not_found(name),
            }
        }
        (["secrets", name, "versions"], &Method::GET) => {
            if !valid_name(name) {
                return bad_name();
            }
            let (max, skip) = match paging(query) {
                Ok(p) => p,
                Err(r) => return r,
            };
            let data = state.data();
            let Some((r, _)) = data.get(name, None) else {
                return not_found(name);
            };
            let value: Vec<Value> = r
                .versions
                .iter()
                .skip(skip)
                .take(max)
                .map(|v| data::version_item(base, r, v))
                .collect();
            let more = skip + max < r.versions.len();
            let next = more.then(|| {
                next_link(
                    base,
                    &format!("secrets/{}/versions", r.name),
                    query,
                    skip + max,
                    max,
                )
            });
            full(StatusCode::OK, json!({ "value": value, "nextLink": next }))
        }
        (["secrets", name, version], &Method::GET) => {
            if !valid_name(name) {
                return bad_name();
            }
            match state.data().get(name, Some(version)) {
                Some((_, v)) if !v.enabled => disabled(),
                Some((r, v)) => full(StatusCode::OK, data::bundle(base, r, v)),
                None => not_found(name),
            }
        }
        (["deletedsecrets"], &Method::GET) | (["deletedsecrets", ""], &Method::GET) => {
            let (max, skip) = match paging(query) {
                Ok(p) => p,
                Err(r) => return r,
            };
            let data = state.data();
            let (page, more) = data.deleted_page(skip, max);
            let value: Vec<Value> = page
                .iter()
                .map(|(r, at)| data::deleted(base, r, *at, true))
                .collect();
            let next = more.then(|| next_link(base, "deletedsecrets", query, skip + max, max));
            full(StatusCode::OK, json!({ "value": value, "nextLink": next }))
        }
        (["deletedsecrets", name], &Method::GET) => {
            if !valid_name(name) {
                return bad_name();
            }
            match state.data().deleted(name) {
                Some((r, at)) => full(StatusCode::OK, data::deleted(base, r, at, false)),
                None => deleted_not_found(name),
            }
        }
        (["deletedsecrets", name, "recover"], &Method::POST) => {
            if !valid_name(name) {
                return bad_name();
            }
            match state.data().recover(name) {
                Some((r, v)) => full(StatusCode::OK, data::bundle(base, r, v)),
                None => deleted_not_found(name),
            }
        }
        (["deletedsecrets", name], &Method::DELETE) => {
            if !valid_name(name) {
                return bad_name();
            }
            if state.data().purge(name) {
                Response::builder()
                    .status(StatusCode::NO_CONTENT)
                    .body(empty())
                    .unwrap_or_else(|_| Response::new(empty()))
            } else {
                deleted_not_found(name)
            }
        }
        (["secrets", name, version], &Method::PATCH) => {
            if !valid_name(name) {
                return bad_name();
            }
            let parsed = match set_body(body, "SecretUpdateParameters").await {
                Ok(b) => b,
                Err(r) => return r,
            };
            if parsed.value.is_some() {
                return error(
                    StatusCode::BAD_REQUEST,
                    "BadParameter",
                    "A secret's value cannot be updated: set a new version.",
                );
            }
            if state.data().is_managed(name) {
                return managed("update");
            }
            let attrs = parsed.attributes.as_ref();
            let patch = data::Patch {
                content_type: parsed.content_type.clone(),
                tags: parsed.tags.clone(),
                enabled: attrs.and_then(|a| a.enabled),
                exp: attrs.and_then(|a| a.exp),
                nbf: attrs.and_then(|a| a.nbf),
            };
            let mut data = state.data();
            let version = Some(*version).filter(|v| !v.is_empty());
            if !data.update(name, version, patch) {
                return not_found(name);
            }
            // Key Vault answers the updated version's bundle: its id names the version (the
            // SDKs report the version from it), and no value.
            let body = data
                .get(name, version)
                .map(|(r, v)| data::version_item(base, r, v));
            drop(data);
            full(StatusCode::OK, body.unwrap_or(Value::Null))
        }
        (["secrets", name], &Method::PUT) => {
            if !valid_name(name) {
                return bad_name();
            }
            let parsed = match set_body(body, "SecretSetParameters").await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let Some(value) = parsed.value else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "BadParameter",
                    "Property 'value' is required.",
                );
            };
            if value.len() > MAX_VALUE_LEN {
                return error(
                    StatusCode::BAD_REQUEST,
                    "BadParameter",
                    "Secret value exceeds the 25 KB limit.",
                );
            }
            if state.data().is_managed(name) {
                return managed("set");
            }
            let attrs = parsed.attributes.as_ref();
            let new = NewVersion {
                value,
                content_type: parsed.content_type.clone(),
                tags: parsed.tags.clone().unwrap_or_default(),
                enabled: attrs.and_then(|a| a.enabled).unwrap_or(true),
                exp: attrs.and_then(|a| a.exp),
                nbf: attrs.and_then(|a| a.nbf),
                created: None,
            };
            let body = {
                let mut data = state.data();
                if data.is_deleted(name) {
                    return error(
                        StatusCode::CONFLICT,
                        "Conflict",
                        &format!(
                            "Secret {name} is currently in a deleted but recoverable state, and its \
                             name cannot be reused; in this state, the secret can only be recovered \
                             or purged."
                        ),
                    );
                }
                let id = data.set(name, new.copy()).id.clone();
                let r = data
                    .get(name, Some(&id))
                    .map(|(r, v)| data::bundle(base, r, v));
                drop(data);
                state.emit(crate::SecretEvent::NewVersion, name, &id);
                r.unwrap_or(Value::Null)
            };
            replicate(state, name, Some(new));
            full(StatusCode::OK, body)
        }
        (["secrets", name], &Method::DELETE) => {
            if !valid_name(name) {
                return bad_name();
            }
            let removed = state
                .data()
                .delete(name)
                .map(|(r, at)| data::deleted(base, r, at, false));
            match removed {
                Some(body) => {
                    replicate(state, name, None);
                    full(StatusCode::OK, body)
                }
                None => not_found(name),
            }
        }
        (["secrets", ..], _) | (["deletedsecrets", ..], _) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "The requested method is not allowed on this resource.",
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            "NotFound",
            "The requested resource was not found.",
        ),
    }
}

/// Key Vault's limits on a secret's tags and content type.
const MAX_TAGS: usize = 15;
const MAX_TAG_NAME_LEN: usize = 512;
const MAX_TAG_VALUE_LEN: usize = 256;
const MAX_CONTENT_TYPE_LEN: usize = 255;

/// A PUT or PATCH body, read within [`MAX_BODY`] and checked against Key Vault's limits on
/// tags and content type; or the answer to send instead.
#[allow(clippy::result_large_err)]
async fn set_body(body: Incoming, what: &str) -> Result<SetBody, Response<Body>> {
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            "The request body is too large.",
        )
    };
    let bytes = match read_body(body).await {
        Some(b) => b,
        None => return Err(too_large()),
    };
    let parsed: SetBody = serde_json::from_slice(&bytes).map_err(|_| {
        error(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            &format!("The request body is not valid JSON for {what}."),
        )
    })?;
    let bad = |m: &str| Err(error(StatusCode::BAD_REQUEST, "BadParameter", m));
    if let Some(tags) = &parsed.tags {
        if tags.len() > MAX_TAGS {
            return bad("A secret can have at most 15 tags.");
        }
        if tags.iter().any(|(k, v)| {
            k.chars().count() > MAX_TAG_NAME_LEN || v.chars().count() > MAX_TAG_VALUE_LEN
        }) {
            return bad("Tag names are at most 512 characters and tag values at most 256.");
        }
    }
    if parsed
        .content_type
        .as_ref()
        .is_some_and(|c| c.chars().count() > MAX_CONTENT_TYPE_LEN)
    {
        return bad("The content type is at most 255 characters.");
    }
    Ok(parsed)
}

/// A body of at most [`MAX_BODY`] bytes; `None` for a larger one (read on and dropped up to
/// [`MAX_DRAIN`] within [`DRAIN_TIME`]) or one that broke off.
async fn read_body(mut body: Incoming) -> Option<Bytes> {
    let read = async {
        let mut buf = bytes::BytesMut::new();
        let mut total = 0usize;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return None };
            if let Some(data) = frame.data_ref() {
                total = total.saturating_add(data.len());
                if total <= MAX_BODY {
                    buf.extend_from_slice(data);
                } else if total > MAX_DRAIN {
                    return None;
                }
            }
        }
        (total <= MAX_BODY).then(|| buf.freeze())
    };
    tokio::time::timeout(DRAIN_TIME, read).await.ok().flatten()
}

/// Key Vault's answer to a set or update of a certificate's secret.
fn managed(op: &str) -> Response<Body> {
    full(
        StatusCode::FORBIDDEN,
        json!({"error": {
            "code": "Forbidden",
            "message": format!("Operation \"{op}\" is not allowed as this object's lifetime is managed by Key Vault."),
            "innererror": {"code": "SecretManagedByKeyVault"},
        }}),
    )
}

/// `maxresults` (1..=25, default 25) and `$skiptoken` of a listing, or the 400 to answer.
#[allow(clippy::result_large_err)]
fn paging(query: &[(String, String)]) -> Result<(usize, usize), Response<Body>> {
    let max = match qget(query, "maxresults").map(str::parse::<usize>) {
        None => MAX_PAGE,
        Some(Ok(n)) if (1..=MAX_PAGE).contains(&n) => n,
        Some(_) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "BadParameter",
                "maxresults must be between 1 and 25.",
            ))
        }
    };
    let skip = match qget(query, "$skiptoken").map(str::parse::<usize>) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "BadParameter",
                "Invalid $skiptoken.",
            ))
        }
    };
    Ok((max, skip))
}

/// The `nextLink` of a listing at `path`.
fn next_link(
    base: &str,
    path: &str,
    query: &[(String, String)],
    skip: usize,
    max: usize,
) -> String {
    format!(
        "{base}/{path}?api-version={}&$skiptoken={skip}&maxresults={max}",
        qget(query, "api-version").unwrap_or("")
    )
}

/// Largest body an `Answer` fault sends.
const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// The answer of a `VaultFault::Answer`.
fn answer(status: u16, retry_after: Option<&str>, body: &str, repeat: u32) -> Response<Body> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let times = (repeat as usize).min(MAX_ANSWER / body.len().max(1));
    let mut r = Response::builder().status(status);
    if let Some(v) = retry_after.and_then(|v| http::HeaderValue::from_str(v).ok()) {
        r = r.header(http::header::RETRY_AFTER, v);
    }
    r.body(
        Full::new(Bytes::from(body.repeat(times)))
            .map_err(|never| match never {})
            .boxed(),
    )
    .unwrap_or_else(|_| Response::new(empty()))
}

/// What Key Vault answers for a disabled secret's value.
fn disabled() -> Response<Body> {
    full(
        StatusCode::FORBIDDEN,
        json!({ "error": {
            "code": "Forbidden",
            "message": "Operation get is not allowed on a disabled secret.",
            "innererror": { "code": "SecretDisabled" }
        }}),
    )
}

fn deleted_not_found(name: &str) -> Response<Body> {
    error(
        StatusCode::NOT_FOUND,
        "SecretNotFound",
        &format!("Deleted Secret not found: {name}"),
    )
}

/// A query parameter, decoded (`%24skiptoken` is `$skiptoken`).
fn qget<'a>(query: &'a [(String, String)], k: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(qk, _)| qk == k)
        .map(|(_, v)| v.as_str())
}

fn not_found(name: &str) -> Response<Body> {
    error(
        StatusCode::NOT_FOUND,
        "SecretNotFound",
        &format!("A secret with (name/id) {name} was not found in this key vault."),
    )
}

/// Copies a write (or, with `None`, a delete) to the replicas after their lag.
fn replicate(state: &VaultState, name: &str, version: Option<NewVersion>) {
    let replicas = state
        .replicas
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    for (to, lag) in replicas {
        let name = name.to_string();
        let version = version.as_ref().map(NewVersion::copy);
        tokio::spawn(async move {
            tokio::time::sleep(lag).await;
            let mut data = to.data();
            match version {
                Some(v) => {
                    data.set(&name, v);
                }
                None => {
                    data.delete(&name);
                }
            }
        });
    }
}
