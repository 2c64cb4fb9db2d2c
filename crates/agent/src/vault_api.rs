//! Key Vault's own REST API on the agent (`[agent.vault_api]`): Microsoft's SDKs in any
//! language, unchanged but for the vault URL and the credential, read through the failover
//! client (its regions, breakers, last-known-good values and snapshot).
//!
//! * `GET /secrets/{name}[/{version}]` → Key Vault's secret bundle (`value`, `id` naming this
//!   agent and the version, `attributes`), with `X-Keyvault-Region` and
//!   `X-Keyvault-Freshness`, and `Age` (seconds) when the value is served stale.
//! * `GET /secrets` and `GET /secrets/{name}/versions` → one page of names or versions
//!   (`maxresults` up to 25, `nextLink` back to the agent).
//! * `PUT /secrets/{name}` → the client's write path: to the writable primary only; refused
//!   at once with 403 (which no SDK retries) when the client is read-only.
//! * `PATCH /secrets/{name}[/{version}]` → a change of properties, by the same write path.
//! * Anything else (deleted secrets, backup, keys, certificates) answers Key Vault's
//!   error body with 501 `NotSupported`, naming what the agent does not serve.
//! * Authentication as Key Vault does it: a request without a bearer token gets 401 with the
//!   challenge every SDK understands; the bearer is the agent's own token (compared in
//!   constant time; it may do everything) or, with `[agent.vault_api.entra]`, the service's
//!   own Entra ID token, verified by the agent (`entra`), whose caller may do what its entry
//!   in the allow-list says (`access`): read the secrets its globs name (a listing shows only
//!   those), write them if it may. A token that proves nothing gets 401 and the challenge; a
//!   caller not allowed, or a secret it may not touch, 403. Tokens are never logged.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use secrecy::zeroize::Zeroizing;
use secrecy::SecretString;
use serde_json::json;

use super::access::Access;
use super::entra::{Entra, Refused};
use super::http::{
    cut, hosts_allow, json_len, push_json_str, respond, retry_after_secs, same, Wiped,
};
use super::State;
use keyvault_failover::{Error, Freshness};

/// The content type of every answer, as Key Vault sends it.
const JSON: &str = "application/json; charset=utf-8";

/// The largest request body read (Key Vault's own limit on a value is 25 KiB).
const MAX_BODY: usize = 64 * 1024;
/// The most names one listing page holds (Key Vault's limit).
const MAX_PAGE: usize = 25;

/// What the Key Vault listener needs beyond the agent's state.
pub(crate) struct VaultApi {
    /// The `Host` values accepted: the loopback names with the listener's port.
    pub(crate) hosts: Vec<String>,
    /// The tenant named in the bearer challenge.
    pub(crate) tenant: String,
    /// The verifier of Entra ID tokens, if `[agent.vault_api.entra]` is set.
    pub(crate) entra: Option<Arc<Entra>>,
}

/// Key Vault's error body.
fn kv_error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    let body = json!({ "error": { "code": code, "message": message } });
    respond(status, Bytes::from(body.to_string()), JSON)
}

fn not_supported(what: &str) -> Response<Full<Bytes>> {
    kv_error(
        StatusCode::NOT_IMPLEMENTED,
        "NotSupported",
        &format!("the keyvault-failover agent does not serve {what}: ask the vault itself"),
    )
}

fn challenge(api: &VaultApi, message: &str) -> Response<Full<Bytes>> {
    let mut resp = kv_error(StatusCode::UNAUTHORIZED, "Unauthorized", message);
    let v = format!(
        "Bearer authorization=\"https://login.microsoftonline.com/{}\", resource=\"https://vault.azure.net\"",
        api.tenant
    );
    if let Ok(v) = hyper::header::HeaderValue::from_str(&v) {
        resp.headers_mut()
            .insert(hyper::header::WWW_AUTHENTICATE, v);
    }
    resp
}

/// A client error as Key Vault would say it.
fn error_of(e: &Error, name: &str) -> Response<Full<Bytes>> {
    let (status, code) = if e.is_invalid_name() || e.is_invalid_value() || e.is_rejected() {
        (StatusCode::BAD_REQUEST, "BadParameter")
    } else if e.is_not_found() {
        (StatusCode::NOT_FOUND, "SecretNotFound")
    } else if e.is_read_only() || e.is_auth() {
        // Read-only: refused at once, nothing sent; a 403 is not retried by any SDK.
        (StatusCode::FORBIDDEN, "Forbidden")
    } else if e.is_throttled() {
        (StatusCode::TOO_MANY_REQUESTS, "Throttled")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable")
    };
    let message = if status == StatusCode::NOT_FOUND {
        format!("A secret with (name/id) {name} was not found in this key vault.")
    } else {
        // Errors name secrets and regions, never values.
        e.to_string()
    };
    let mut resp = kv_error(status, code, &message);
    if status == StatusCode::TOO_MANY_REQUESTS {
        resp.headers_mut()
            .insert(hyper::header::RETRY_AFTER, retry_after_secs(e).into());
    }
    resp
}

/// The api-versions the SDKs send: 7.x and the dated ones.
fn api_version_ok(v: &str) -> bool {
    let seven = v
        .strip_prefix("7.")
        .is_some_and(|m| !m.is_empty() && m.len() <= 2 && m.bytes().all(|b| b.is_ascii_digit()));
    let dated = v.len() == 10
        && v.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        })
        && v >= "2016-10-01";
    seven || dated
}

/// A query parameter, key and value decoded (`form_urlencoded`): the SDKs escape more than
/// they must (the JavaScript SDK sends `api%2Dversion`, and nextLink's `$skiptoken` comes back
/// as `%24skiptoken`).
fn query(q: Option<&str>, key: &str) -> Option<String> {
    form_urlencoded::parse(q?.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

pub(crate) async fn handle(
    state: Arc<State>,
    api: Arc<VaultApi>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    if !hosts_allow(Some(&api.hosts), &req) {
        return kv_error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "the Host header must name this machine's loopback address",
        );
    }
    if req.headers().contains_key("x-forwarded-for") {
        return kv_error(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            "requests with X-Forwarded-For are refused: the agent serves this machine only",
        );
    }
    let path = req.uri().path().to_string();
    let bearer = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let access = match authenticate(&state, &api, bearer).await {
        Ok(a) => a,
        Err(Refused::Token(why)) => {
            // The path and the reason only: never the token sent.
            tracing::warn!(path = %cut(&path, 128), reason = %why, "Key Vault API: a bearer token refused");
            return challenge(&api, &why);
        }
        Err(Refused::Caller(who)) => {
            tracing::warn!(path = %cut(&path, 128), caller = %who, "Key Vault API: a caller not in the allow-list refused");
            return kv_error(
                StatusCode::FORBIDDEN,
                "Forbidden",
                &format!("the caller {who} is not allowed by this agent"),
            );
        }
    };
    let q = req.uri().query().map(str::to_string);
    let Some(version) = query(q.as_deref(), "api-version") else {
        return kv_error(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            "The api-version query parameter is required.",
        );
    };
    if !api_version_ok(&version) {
        return kv_error(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            &format!(
                "The specified version ({}) is not recognized.",
                cut(&version, 32)
            ),
        );
    }
    let api_version = version;
    let base = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map_or_else(|| api.hosts[0].clone(), str::to_string);
    let base = format!("https://{base}");
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = req.method().clone();
    match (&method, segments.as_slice()) {
        (&hyper::Method::GET, ["secrets"] | ["secrets", ""]) => {
            list(
                &state,
                &access,
                &base,
                &api_version,
                q.as_deref(),
                Listing::Secrets,
            )
            .await
        }
        (_, ["secrets", name, ..]) if !allowed(&access, &method, name) => {
            forbidden(&access, &method, name)
        }
        (&hyper::Method::GET, ["secrets", name] | ["secrets", name, ""]) => {
            get(&state, &base, name, None).await
        }
        (&hyper::Method::GET, ["secrets", name, "versions"]) => {
            let what = Listing::Versions(name);
            list(&state, &access, &base, &api_version, q.as_deref(), what).await
        }
        (&hyper::Method::GET, ["secrets", name, version]) => {
            get(&state, &base, name, Some(version)).await
        }
        (&hyper::Method::PATCH, ["secrets", name] | ["secrets", name, ""]) => {
            let name = name.to_string();
            patch(&state, &base, &name, None, req).await
        }
        (&hyper::Method::PATCH, ["secrets", name, version]) => {
            let (name, version) = (name.to_string(), version.to_string());
            patch(&state, &base, &name, Some(&version), req).await
        }
        (&hyper::Method::PUT, ["secrets", name]) => {
            let name = name.to_string();
            put(&state, &base, &name, req).await
        }
        (_, ["secrets", ..]) => not_supported(&format!("{method} on secrets")),
        (_, ["deletedsecrets", ..]) => not_supported("deleted secrets"),
        (_, ["keys", ..] | ["deletedkeys", ..]) => not_supported("keys"),
        (_, ["certificates", ..] | ["deletedcertificates", ..]) => not_supported("certificates"),
        _ => not_supported(cut(&path, 64)),
    }
}

/// Who the bearer is: the agent's token (anything), or a caller its Entra ID token proves.
async fn authenticate(
    state: &State,
    api: &VaultApi,
    bearer: Option<&str>,
) -> Result<Access, Refused> {
    let Some(t) = bearer else {
        return Err(Refused::Token(
            "AKV10000: Request is missing a Bearer or PoP token.".into(),
        ));
    };
    if same(t.as_bytes(), &state.token) {
        return Ok(Access::Agent);
    }
    match &api.entra {
        Some(e) => e.verify(t).await.map(Access::Caller),
        None => Err(Refused::Token(
            "the bearer token is not this agent's".into(),
        )),
    }
}

/// Whether `access` may do `method` to the secret `name` (GET reads; anything else writes).
fn allowed(access: &Access, method: &hyper::Method, name: &str) -> bool {
    if method == hyper::Method::GET {
        access.may_read(name)
    } else {
        access.may_write(name)
    }
}

fn forbidden(access: &Access, method: &hyper::Method, name: &str) -> Response<Full<Bytes>> {
    let what = if method == hyper::Method::GET {
        "read"
    } else {
        "write"
    };
    tracing::warn!(caller = %access.who(), secret = %cut(name, 128), "Key Vault API: {what} refused by the allow-list");
    kv_error(
        StatusCode::FORBIDDEN,
        "Forbidden",
        &format!(
            "the caller {} may not {what} secret {} through this agent",
            access.who(),
            cut(name, 128)
        ),
    )
}

/// The secret bundle, written into one buffer sized up front (it holds the value and is
/// zeroed when dropped): the value, the id, and what the vault said of the version (its
/// attributes, content type, tags, a certificate's `kid` and `managed`), or Key Vault's
/// defaults when it said nothing (a value this client wrote).
fn bundle(
    base: &str,
    name: &str,
    version: &str,
    value: Option<&str>,
    meta: Option<&keyvault_failover::Metadata>,
) -> Vec<u8> {
    let id = format!("{base}/secrets/{name}/{version}");
    // No value in here: the vault's metadata only.
    let rest = match meta {
        None => json!({
            "attributes": { "enabled": true, "recoveryLevel": "Recoverable+Purgeable" },
        }),
        Some(m) => {
            let p = m.properties();
            let mut attributes = json!({ "enabled": p.enabled() });
            for (k, v) in [
                ("created", m.created()),
                ("updated", m.updated()),
                ("exp", p.expires()),
                ("nbf", p.not_before()),
            ] {
                if let Some(v) = v {
                    attributes[k] = v.into();
                }
            }
            if let Some(l) = m.recovery_level() {
                attributes["recoveryLevel"] = l.into();
            }
            if let Some(d) = m.recoverable_days() {
                attributes["recoverableDays"] = d.into();
            }
            let mut r = json!({ "attributes": attributes });
            if let Some(t) = p.content_type() {
                r["contentType"] = t.into();
            }
            if !p.tags().is_empty() {
                r["tags"] = json!(p.tags());
            }
            if let Some(k) = m.key_id() {
                r["kid"] = k.into();
            }
            if let Some(b) = m.managed() {
                r["managed"] = b.into();
            }
            r
        }
    }
    .to_string();
    let cap = 16 + value.map_or(0, json_len) + json_len(&id) + rest.len();
    let mut body = Vec::with_capacity(cap);
    body.push(b'{');
    if let Some(value) = value {
        body.extend_from_slice(b"\"value\":");
        push_json_str(&mut body, value);
        body.push(b',');
    }
    body.extend_from_slice(b"\"id\":");
    push_json_str(&mut body, &id);
    body.push(b',');
    // `rest` is an object: its members follow the id.
    body.extend_from_slice(&rest.as_bytes()[1..]);
    body
}

/// A 200 carrying a secret bundle (zeroed when the body is dropped).
fn bundle_response(body: Vec<u8>) -> Response<Full<Bytes>> {
    respond(StatusCode::OK, Bytes::from_owner(Wiped(body)), JSON)
}

async fn get(
    state: &State,
    base: &str,
    name: &str,
    version: Option<&str>,
) -> Response<Full<Bytes>> {
    let got = state.read(name, version).await;
    let secret = match got {
        Ok(s) => s,
        Err(e) => return error_of(&e, name),
    };
    let body = bundle(
        base,
        name,
        secret.version(),
        Some(secret.expose()),
        secret.metadata(),
    );
    let mut resp = bundle_response(body);
    let h = resp.headers_mut();
    let freshness = match secret.freshness() {
        Freshness::Stale { age } => {
            h.insert(hyper::header::AGE, age.as_secs().into());
            "stale"
        }
        _ => "fresh",
    };
    for (k, v) in [
        ("x-keyvault-region", secret.region()),
        ("x-keyvault-freshness", freshness),
    ] {
        if let Ok(v) = hyper::header::HeaderValue::from_str(v) {
            h.insert(k, v);
        }
    }
    resp
}

/// What a listing lists: every secret's latest version, or one secret's versions.
enum Listing<'a> {
    Secrets,
    Versions(&'a str),
}

async fn list(
    state: &State,
    access: &Access,
    base: &str,
    api_version: &str,
    q: Option<&str>,
    what: Listing<'_>,
) -> Response<Full<Bytes>> {
    let max = match query(q, "maxresults").map(|v| v.parse::<usize>()) {
        None => MAX_PAGE,
        Some(Ok(n)) if (1..=MAX_PAGE).contains(&n) => n,
        _ => {
            return kv_error(
                StatusCode::BAD_REQUEST,
                "BadParameter",
                "maxresults must be between 1 and 25.",
            )
        }
    };
    let skip = match query(q, "$skiptoken").map(|v| v.parse::<usize>()) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            return kv_error(
                StatusCode::BAD_REQUEST,
                "BadParameter",
                "Invalid $skiptoken.",
            )
        }
    };
    // Each item's id and whether it is enabled, in Key Vault's order; and the listing's path.
    let (items, path): (Vec<(String, bool)>, String) = match what {
        Listing::Secrets => {
            let mut all = match state.client.list_secret_properties().await {
                Ok(l) => l,
                Err(e) => return error_of(&e, "*"),
            };
            // A caller sees only the names it may read.
            all.retain(|p| access.may_read(p.name()));
            all.sort_by_key(|p| p.name().to_ascii_lowercase());
            let items = all
                .iter()
                .map(|p| (format!("{base}/secrets/{}", p.name()), p.enabled()))
                .collect();
            (items, "secrets".into())
        }
        Listing::Versions(name) => {
            let all = match state.client.list_secret_versions(name).await {
                Ok(l) => l,
                Err(e) => return error_of(&e, name),
            };
            let items = all
                .iter()
                .map(|p| {
                    let v = p.version().unwrap_or_default();
                    (format!("{base}/secrets/{}/{v}", p.name()), p.enabled())
                })
                .collect();
            (items, format!("secrets/{name}/versions"))
        }
    };
    let page: Vec<serde_json::Value> = items
        .iter()
        .skip(skip)
        .take(max)
        .map(|(id, enabled)| json!({ "id": id, "attributes": { "enabled": enabled } }))
        .collect();
    let next = (skip.saturating_add(max) < items.len()).then(|| {
        format!(
            "{base}/{path}?api-version={api_version}&$skiptoken={}&maxresults={max}",
            skip + max
        )
    });
    let body = json!({ "value": page, "nextLink": next });
    respond(StatusCode::OK, Bytes::from(body.to_string()), JSON)
}

/// A request's body, at most [`MAX_BODY`] bytes (else Key Vault's 413), in a buffer zeroed
/// when dropped (a `PUT` carries a value).
async fn body_of(req: Request<Incoming>) -> Result<Zeroizing<Vec<u8>>, Response<Full<Bytes>>> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => Ok(Zeroizing::new(b.to_bytes().to_vec())),
        Err(_) => Err(kv_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "BadParameter",
            &format!("the request body is larger than {MAX_BODY} bytes"),
        )),
    }
}

/// Key Vault's `SecretUpdateParameters`: each field optional.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct PatchBody {
    content_type: Option<String>,
    tags: Option<std::collections::BTreeMap<String, String>>,
    attributes: Option<PatchAttributes>,
}

#[derive(serde::Deserialize)]
struct PatchAttributes {
    enabled: Option<bool>,
    exp: Option<i64>,
    nbf: Option<i64>,
}

/// `PATCH /secrets/{name}[/{version}]`: the client's write path (the writable primary only,
/// refused at once when read-only); answers the bundle without a value, as Key Vault.
async fn patch(
    state: &State,
    base: &str,
    name: &str,
    version: Option<&str>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let body = match body_of(req).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let Ok(parsed) = serde_json::from_slice::<PatchBody>(&body) else {
        return kv_error(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            "The request body is not a SecretUpdateParameters object.",
        );
    };
    let mut update = keyvault_failover::PropertiesUpdate::new();
    if let Some(t) = parsed.content_type {
        update = update.content_type(t);
    }
    if let Some(t) = parsed.tags {
        update = update.tags(t);
    }
    if let Some(a) = parsed.attributes {
        if let Some(e) = a.enabled {
            update = update.enabled(e);
        }
        if let Some(t) = a.exp {
            update = update.expires(t);
        }
        if let Some(t) = a.nbf {
            update = update.not_before(t);
        }
    }
    match state
        .client
        .update_secret_properties(name, version, &update)
        .await
    {
        Ok((written, meta)) => {
            let body = bundle(base, name, written.version(), None, Some(&meta));
            let mut resp = respond(StatusCode::OK, Bytes::from(body), JSON);
            if let Ok(v) = hyper::header::HeaderValue::from_str(written.region()) {
                resp.headers_mut().insert("x-keyvault-region", v);
            }
            resp
        }
        Err(e) => error_of(&e, name),
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct SetBody {
    value: Option<String>,
    content_type: Option<serde_json::Value>,
    tags: Option<serde_json::Value>,
    attributes: Option<serde_json::Value>,
}

/// Whether a JSON field carries something (not absent, null, an empty object or string).
fn given(v: &Option<serde_json::Value>) -> bool {
    match v {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::Object(m)) => m.values().any(|v| !v.is_null()),
        Some(serde_json::Value::String(s)) => !s.is_empty(),
        Some(_) => true,
    }
}

async fn put(
    state: &State,
    base: &str,
    name: &str,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let body = match body_of(req).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let parsed: SetBody = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(_) => {
            return kv_error(
                StatusCode::BAD_REQUEST,
                "BadParameter",
                "The request body is not a SecretSetParameters object.",
            )
        }
    };
    // The client writes values only: a content type, tags or attributes would be dropped
    // without a word, so a write that carries them is refused, and nothing is written.
    if given(&parsed.content_type) || given(&parsed.tags) || given(&parsed.attributes) {
        return kv_error(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            "the keyvault-failover agent writes a secret's value only: set its content type, \
             tags and attributes in the vault itself",
        );
    }
    let Some(value) = parsed.value else {
        return kv_error(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            "value is required.",
        );
    };
    let value = SecretString::from(value);
    let written = match state.client.set_secret(name, value.clone()).await {
        Ok(w) => w,
        Err(e) => return error_of(&e, name),
    };
    use secrecy::ExposeSecret;
    let body = bundle(
        base,
        name,
        written.version(),
        Some(value.expose_secret()),
        None,
    );
    let mut resp = bundle_response(body);
    if let Ok(v) = hyper::header::HeaderValue::from_str(written.region()) {
        resp.headers_mut().insert("x-keyvault-region", v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_versions_the_sdks_send_are_taken() {
        for ok in ["7.0", "7.4", "7.6", "2016-10-01", "2025-07-01"] {
            assert!(api_version_ok(ok), "{ok}");
        }
        for bad in [
            "",
            "7",
            "7.",
            "7.x",
            "8.0",
            "2015-06-01",
            "2025-7-01",
            "7.123",
            "latest",
        ] {
            assert!(!api_version_ok(bad), "{bad}");
        }
    }

    #[test]
    fn query_keys_are_decoded() {
        let q = Some("api%2Dversion=7.4&%24skiptoken=25&maxresults=2&bad=%zz%4");
        assert_eq!(query(q, "api-version").as_deref(), Some("7.4"));
        assert_eq!(query(q, "$skiptoken").as_deref(), Some("25"));
        assert_eq!(query(q, "maxresults").as_deref(), Some("2"));
        assert_eq!(query(q, "bad").as_deref(), Some("%zz%4"));
        assert_eq!(query(q, "nothing"), None);
    }
}
