//! The service's own Entra ID access token on the Key Vault API (`[agent.vault_api.entra]`),
//! verified by the agent itself, for services that must stay unchanged but for the vault URL:
//!
//! * an RS256 signature by one of the tenant's signing keys, fetched from its JWKS endpoint
//!   (configurable, so tests serve their own), kept, fetched again when a token names a key
//!   not held (at most once a minute) or when the set is a day old;
//! * `aud` Key Vault's, `iss` and `tid` the configured tenant, `exp` and `nbf` within a small
//!   skew;
//! * the caller (`oid`, `appid` or `azp`) in the allow-list ([`access`](crate::access)).
//!
//! Verification needs no vault, so a verified token works while every vault is down. Tokens
//! are never logged, stored or forwarded (the client reads with its own credential).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tokio::time::Instant;

use crate::access::Caller;
use crate::error::{Error, Kind};

/// Key Vault's audiences: its resource URI and its application id.
pub(crate) const KEY_VAULT_AUDIENCES: [&str; 2] = [
    "https://vault.azure.net",
    "cfa8b339-82a2-471a-a3c9-0fc0be7a4093",
];
/// The longest token looked at (Entra's are a few KiB; more is not a token).
const MAX_TOKEN: usize = 32 * 1024;
/// The largest JWKS document read, and the most keys taken from it.
const MAX_JWKS: usize = 1024 * 1024;
const MAX_KEYS: usize = 100;
/// How often a token naming an unknown key may make the agent fetch the keys again.
const REFETCH_EVERY: Duration = Duration::from_secs(60);
/// How old the held keys may grow before the next token fetches them again.
const MAX_KEY_AGE: Duration = Duration::from_secs(24 * 3600);
/// The bound on one fetch of the keys.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest clock skew allowed.
pub(crate) const MAX_SKEW: Duration = Duration::from_secs(300);

/// `[agent.vault_api.entra]`, checked.
#[derive(Debug)]
pub(crate) struct EntraSettings {
    tenant: String,
    jwks_url: reqwest::Url,
    audiences: Vec<String>,
    skew: Duration,
    callers: Vec<Arc<Caller>>,
}

fn config_error(m: String) -> Error {
    Error::new(Kind::Config, format!("[agent.vault_api.entra] {m}"))
}

/// Whether `t` is a GUID (`tid` is one).
fn is_guid(t: &str) -> bool {
    t.len() == 36
        && t.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

impl EntraSettings {
    /// The settings, checked: the tenant a GUID, the keys' URL `https://` (or `http://` to the
    /// loopback, for tests), audiences and callers given, the skew at most 5 minutes.
    pub(crate) fn new(
        tenant: &str,
        jwks_url: Option<&str>,
        audiences: Vec<String>,
        skew: Duration,
        callers: Vec<Caller>,
    ) -> Result<EntraSettings, Error> {
        if !is_guid(tenant) {
            return Err(config_error(format!(
                "tenant_id {:?}: the tenant's id, a GUID (tokens carry it in tid)",
                tenant.chars().take(64).collect::<String>()
            )));
        }
        let tenant = tenant.to_ascii_lowercase();
        let default_url = format!("https://login.microsoftonline.com/{tenant}/discovery/v2.0/keys");
        let raw = jwks_url.unwrap_or(&default_url);
        let url =
            reqwest::Url::parse(raw).map_err(|e| config_error(format!("jwks_url {raw:?}: {e}")))?;
        let loopback_http =
            url.scheme() == "http" && crate::is_loopback_host(url.host_str().unwrap_or_default());
        if url.scheme() != "https" && !loopback_http {
            return Err(config_error(format!(
                "jwks_url {raw:?}: https:// (http:// only to this machine's loopback)"
            )));
        }
        if audiences.is_empty() || audiences.iter().any(|a| a.is_empty() || a.len() > 256) {
            return Err(config_error(
                "audiences: at least one, each 1 to 256 characters".into(),
            ));
        }
        if skew > MAX_SKEW {
            return Err(config_error("skew: at most 5 minutes".into()));
        }
        if callers.is_empty() {
            return Err(config_error(
                "needs at least one [[agent.vault_api.entra.caller]]: a token nobody may use \
                 serves nothing"
                    .into(),
            ));
        }
        Ok(EntraSettings {
            tenant,
            jwks_url: url,
            audiences,
            skew,
            callers: callers.into_iter().map(Arc::new).collect(),
        })
    }

    /// The tenant the bearer challenge names.
    pub(crate) fn tenant(&self) -> &str {
        &self.tenant
    }
}

/// Why a token was refused: it proves nothing (401, with the challenge, so the SDK asks its
/// credential again), or it proves a caller the allow-list does not hold (403).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    Token(String),
    Caller(String),
}

/// The claims looked at beyond those `Validation` checks.
#[derive(serde::Deserialize)]
struct Claims {
    #[serde(default)]
    tid: Option<String>,
    #[serde(default)]
    oid: Option<String>,
    #[serde(default)]
    appid: Option<String>,
    #[serde(default)]
    azp: Option<String>,
}

/// The verifier: the settings, the held keys, and the client that fetches them.
pub(crate) struct Entra {
    settings: EntraSettings,
    validation: Validation,
    keys: KeyCache,
    http: reqwest::Client,
}

impl Entra {
    pub(crate) fn new(settings: EntraSettings) -> Result<Entra, Error> {
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&settings.audiences);
        let t = &settings.tenant;
        validation.set_issuer(&[
            format!("https://sts.windows.net/{t}/"),
            format!("https://login.microsoftonline.com/{t}/v2.0"),
        ]);
        validation.leeway = settings.skew.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "aud", "iss"]);
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            // A redirect could lead anywhere, http:// included.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| config_error(format!("the keys' HTTP client: {e}")))?;
        Ok(Entra {
            settings,
            validation,
            keys: KeyCache::default(),
            http,
        })
    }

    /// Fetches the keys now (at start, so the first token waits for nothing).
    pub(crate) async fn prefetch(&self) {
        let _ = self.keys.key("", || self.fetch()).await;
    }

    async fn fetch(&self) -> Result<HashMap<String, Arc<DecodingKey>>, String> {
        let mut resp = self
            .http
            .get(self.settings.jwks_url.clone())
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        if !resp.status().is_success() {
            return Err(format!("answered {}", resp.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| e.without_url().to_string())?
        {
            if body.len() + chunk.len() > MAX_JWKS {
                return Err(format!("the document is larger than {MAX_JWKS} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        parse_jwks(&body)
    }

    /// The caller `token` proves, or why it proves nothing.
    pub(crate) async fn verify(&self, token: &str) -> Result<Arc<Caller>, Refused> {
        let refuse = |m: &str| Err(Refused::Token(m.to_string()));
        if token.len() > MAX_TOKEN {
            return refuse("the bearer token is larger than any Entra ID token");
        }
        let Ok(header) = jsonwebtoken::decode_header(token) else {
            return refuse("the bearer token is neither this agent's nor a JWT");
        };
        if header.alg != Algorithm::RS256 {
            return refuse("the bearer token is not signed with RS256");
        }
        let Some(kid) = header.kid.as_deref() else {
            return refuse("the bearer token names no signing key (kid)");
        };
        let Some(key) = self.keys.key(kid, || self.fetch()).await else {
            return refuse("the bearer token's signing key is not one of the tenant's");
        };
        let data = match jsonwebtoken::decode::<Claims>(token, &key, &self.validation) {
            Ok(d) => d,
            Err(e) => {
                use jsonwebtoken::errors::ErrorKind as K;
                let m = match e.kind() {
                    K::InvalidSignature => "the bearer token's signature does not verify",
                    K::ExpiredSignature => "the bearer token has expired",
                    K::ImmatureSignature => "the bearer token is not valid yet (nbf)",
                    K::InvalidAudience => "the bearer token's audience is not Key Vault",
                    K::InvalidIssuer => "the bearer token's issuer is not the configured tenant",
                    K::MissingRequiredClaim(_) => "the bearer token lacks exp, aud or iss",
                    _ => "the bearer token is not a valid access token",
                };
                return refuse(m);
            }
        };
        let c = data.claims;
        if !c
            .tid
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case(&self.settings.tenant))
        {
            return refuse("the bearer token's tenant (tid) is not the configured tenant");
        }
        let ids = [c.oid.as_deref(), c.appid.as_deref(), c.azp.as_deref()];
        match self.settings.callers.iter().find(|k| k.is(&ids)) {
            Some(k) => Ok(k.clone()),
            None => {
                let who: String = ids
                    .iter()
                    .flatten()
                    .next()
                    .unwrap_or(&"(no oid, appid or azp)")
                    .chars()
                    .take(64)
                    .collect();
                Err(Refused::Caller(who))
            }
        }
    }
}

/// The tenant's signing keys by `kid`, from a JWKS document: RSA signing keys only; a key
/// that cannot be read is skipped, not the document.
fn parse_jwks(body: &[u8]) -> Result<HashMap<String, Arc<DecodingKey>>, String> {
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(body).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut out = HashMap::new();
    for k in set.keys.into_iter().take(MAX_KEYS) {
        let Ok(jwk) = serde_json::from_value::<Jwk>(k) else {
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
            continue;
        }
        if !matches!(jwk.algorithm, AlgorithmParameters::RSA(_)) {
            continue;
        }
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        if let Ok(key) = DecodingKey::from_jwk(&jwk) {
            out.insert(kid, Arc::new(key));
        }
    }
    Ok(out)
}

/// The held keys and when they were fetched.
#[derive(Default)]
struct KeySet {
    keys: HashMap<String, Arc<DecodingKey>>,
    fetched: Option<Instant>,
}

/// The keys, and the last attempt to fetch them (one fetch at a time).
#[derive(Default)]
struct KeyCache {
    set: ArcSwap<KeySet>,
    attempt: tokio::sync::Mutex<Option<Instant>>,
}

impl KeyCache {
    /// The key `kid`: held and less than a day old, or after a fetch (at most one a minute;
    /// a failed or empty fetch keeps the keys held).
    async fn key<F, Fut>(&self, kid: &str, fetch: F) -> Option<Arc<DecodingKey>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<HashMap<String, Arc<DecodingKey>>, String>>,
    {
        let fresh = |s: &KeySet, now: Instant| {
            s.fetched
                .is_some_and(|t| now.saturating_duration_since(t) < MAX_KEY_AGE)
        };
        let held = self.set.load_full();
        if let Some(k) = held.keys.get(kid) {
            if fresh(&held, Instant::now()) {
                return Some(k.clone());
            }
        }
        let mut last = self.attempt.lock().await;
        let now = Instant::now();
        let held = self.set.load_full();
        if held.keys.contains_key(kid) && fresh(&held, now) {
            return held.keys.get(kid).cloned();
        }
        if last.is_some_and(|t| now.saturating_duration_since(t) < REFETCH_EVERY) {
            return held.keys.get(kid).cloned();
        }
        *last = Some(now);
        match fetch().await {
            Ok(keys) if !keys.is_empty() => {
                let got = keys.get(kid).cloned();
                self.set.store(Arc::new(KeySet {
                    keys,
                    fetched: Some(now),
                }));
                got
            }
            Ok(_) => {
                tracing::warn!(
                    "Entra ID: the keys' document holds no RSA signing key; the keys held are kept"
                );
                held.keys.get(kid).cloned()
            }
            Err(e) => {
                tracing::warn!(error = %e, "Entra ID: fetching the tenant's signing keys failed; the keys held are kept");
                held.keys.get(kid).cloned()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn one_key(kid: &str) -> HashMap<String, Arc<DecodingKey>> {
        let k = Arc::new(DecodingKey::from_secret(b"unused").unwrap());
        HashMap::from([(kid.to_string(), k)])
    }

    /// A fetch that counts its calls and answers `answer`.
    fn counted<'a>(
        n: &'a AtomicUsize,
        answer: Result<HashMap<String, Arc<DecodingKey>>, String>,
    ) -> impl FnOnce() -> std::future::Ready<Result<HashMap<String, Arc<DecodingKey>>, String>> + 'a
    {
        move || {
            n.fetch_add(1, Ordering::SeqCst);
            std::future::ready(answer)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_keys_are_fetched_at_most_once_a_minute() {
        let cache = KeyCache::default();
        let n = AtomicUsize::new(0);
        assert!(cache
            .key("k1", counted(&n, Ok(one_key("k1"))))
            .await
            .is_some());
        // Held: no fetch.
        assert!(cache
            .key("k1", counted(&n, Ok(one_key("k1"))))
            .await
            .is_some());
        assert_eq!(n.load(Ordering::SeqCst), 1);
        // Unknown kids within the minute: no fetch at all.
        for _ in 0..10 {
            assert!(cache
                .key("k2", counted(&n, Ok(one_key("k2"))))
                .await
                .is_none());
        }
        assert_eq!(n.load(Ordering::SeqCst), 1);
        tokio::time::advance(REFETCH_EVERY).await;
        // A minute on: one fetch, which brings the rotated key (and drops the old one).
        let both = Ok(one_key("k2"));
        assert!(cache.key("k2", counted(&n, both)).await.is_some());
        assert_eq!(n.load(Ordering::SeqCst), 2);
        assert!(cache
            .key("k1", counted(&n, Ok(one_key("k1"))))
            .await
            .is_none());
        assert_eq!(n.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_fetch_keeps_the_keys_held() {
        let cache = KeyCache::default();
        let n = AtomicUsize::new(0);
        assert!(cache
            .key("k1", counted(&n, Ok(one_key("k1"))))
            .await
            .is_some());
        // A day on, the keys are old: the next token fetches, which fails; k1 is still used.
        tokio::time::advance(MAX_KEY_AGE).await;
        assert!(cache
            .key("k1", counted(&n, Err("unreachable".into())))
            .await
            .is_some());
        assert!(cache
            .key("k1", counted(&n, Ok(HashMap::new())))
            .await
            .is_some());
        assert_eq!(
            n.load(Ordering::SeqCst),
            2,
            "the second within the minute fetched nothing"
        );
        tokio::time::advance(REFETCH_EVERY).await;
        assert!(cache
            .key("k1", counted(&n, Ok(HashMap::new())))
            .await
            .is_some());
        assert_eq!(n.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn jwks_documents_are_read_key_by_key() {
        let doc = serde_json::json!({"keys": [
            {"kty": "RSA", "use": "sig", "kid": "good", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw", "e": "AQAB", "issuer": "https://login.microsoftonline.com/x/v2.0", "x5t": "t"},
            {"kty": "RSA", "use": "enc", "kid": "encryption", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "kid": "ec", "crv": "P-256", "x": "AAAA", "y": "AAAA"},
            {"kty": "RSA", "use": "sig", "n": "AQAB", "e": "AQAB"},
            {"kty": "nonsense"},
            42
        ]});
        let keys = parse_jwks(doc.to_string().as_bytes()).unwrap();
        assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["good"]);
        for bad in [&b"not json"[..], b"{}", b"{\"keys\": 3}", b""] {
            assert!(parse_jwks(bad).is_err());
        }
    }

    #[test]
    fn settings_are_checked() {
        let tenant = "72f988bf-86f1-41af-91ab-2d7cd011db47";
        let callers = || vec![Caller::new("app", None, &["*".to_string()], false).unwrap()];
        let aud = || vec!["https://vault.azure.net".to_string()];
        let ok = |t: &str, url: Option<&str>| {
            EntraSettings::new(t, url, aud(), Duration::from_secs(60), callers())
        };
        assert!(ok(tenant, None).is_ok());
        assert!(ok(tenant, Some("http://127.0.0.1:9/keys")).is_ok());
        for bad_url in [
            "http://login.example/keys",
            "ftp://127.0.0.1/k",
            "not a url",
        ] {
            assert!(
                ok(tenant, Some(bad_url)).unwrap_err().is_config(),
                "{bad_url}"
            );
        }
        for bad_tenant in [
            "common",
            "",
            "72f988bf-86f1-41af-91ab-2d7cd011db4",
            "x".repeat(36).as_str(),
        ] {
            assert!(ok(bad_tenant, None).is_err(), "{bad_tenant}");
        }
        let t = tenant;
        assert!(EntraSettings::new(t, None, vec![], Duration::ZERO, callers()).is_err());
        assert!(EntraSettings::new(t, None, aud(), Duration::from_secs(301), callers()).is_err());
        assert!(EntraSettings::new(t, None, aud(), Duration::ZERO, vec![]).is_err());
    }

    #[tokio::test]
    async fn what_is_not_a_token_is_refused_without_a_fetch() {
        let callers = vec![Caller::new("app", None, &["*".to_string()], false).unwrap()];
        let s = EntraSettings::new(
            "72f988bf-86f1-41af-91ab-2d7cd011db47",
            // Nothing listens on port 9 of the loopback: a fetch would fail, not hang.
            Some("http://127.0.0.1:9/keys"),
            vec!["https://vault.azure.net".into()],
            Duration::from_secs(60),
            callers,
        )
        .unwrap();
        let e = Entra::new(s).unwrap();
        let huge = "a".repeat(MAX_TOKEN + 1);
        // alg none, HS256, no kid, garbage, and enormous.
        let none = "eyJhbGciOiJub25lIn0.eyJ0aWQiOiJ4In0.";
        let hs = "eyJhbGciOiJIUzI1NiIsImtpZCI6ImsifQ.eyJ0aWQiOiJ4In0.c2ln";
        let no_kid = "eyJhbGciOiJSUzI1NiJ9.eyJ0aWQiOiJ4In0.c2ln";
        for t in [
            none,
            hs,
            no_kid,
            "",
            "...",
            "a.b.c",
            "\u{1F600}.x.y",
            huge.as_str(),
        ] {
            assert!(
                matches!(e.verify(t).await, Err(Refused::Token(_))),
                "{}",
                &t[..t.len().min(40)]
            );
        }
    }
}
