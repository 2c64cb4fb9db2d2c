//! Azure Key Vault through the real SDK: [`AzureStore`] is a [`SecretStore`] on
//! `azure_security_keyvault_secrets::SecretClient`.
//!
//! The SDK retries by default (8 tries over up to a minute, and an uncapped `Retry-After`):
//! that would hide failures from the breakers and delay failover, so [`AzureStore`] turns it off
//! (`RetryOptions::none()`) and the client does retries, hedging and 429 handling itself. Each
//! attempt is bounded by the transport's timeout (a `reqwest` client built here, or passed in).
//! Every SDK error is mapped into the project's classification ([`StoreErrorKind`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), keyvault_failover::Error> {
//! use keyvault_failover::{azure, Access, Config};
//! let config = Config::builder()
//!     .region("weu", "https://app-weu.vault.azure.net", Access::ReadWrite)
//!     .region("neu", "https://app-neu.vault.azure.net", Access::ReadOnly)
//!     .build()?;
//! let credential = azure::credential(keyvault_failover::CredentialKind::DeveloperTools)?;
//! let client = azure::connect(config, credential, None)?;
//! let secret = client.get_secret("db-password").await?;
//! # Ok(()) }
//! ```

mod replica;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::error::ErrorKind;
use azure_core::http::{ClientOptions, RetryOptions, Transport};
use azure_security_keyvault_secrets::models::{
    SecretClientListSecretPropertiesOptions, SetSecretParameters,
};
use azure_security_keyvault_secrets::{ResourceExt, SecretClient, SecretClientOptions};
use futures::TryStreamExt;
use secrecy::{ExposeSecret, SecretString};

use crate::config::{Config, CredentialKind};
use crate::error::{Error, StoreError, StoreErrorKind};
use crate::name::SecretName;
use crate::secret::{SecretProperties, StoredSecret};
use crate::store::SecretStore;
use crate::FailoverClient;

/// An `azure_identity` credential of `kind`.
pub fn credential(kind: CredentialKind) -> Result<Arc<dyn TokenCredential>, Error> {
    let e =
        |e: azure_core::Error| Error::config(format!("cannot create the {kind:?} credential: {e}"));
    Ok(match kind {
        CredentialKind::DeveloperTools => {
            azure_identity::DeveloperToolsCredential::new(None).map_err(e)?
        }
        CredentialKind::ManagedIdentity => {
            azure_identity::ManagedIdentityCredential::new(None).map_err(e)?
        }
        CredentialKind::None => Arc::new(StaticCredential),
    })
}

/// A credential that hands out a fixed placeholder bearer token valid for an hour
/// ([`CredentialKind::None`]): for the emulator, which checks that a token is sent, not what
/// it is. Key Vault answers 401 to it.
#[derive(Debug, Default)]
pub struct StaticCredential;

#[async_trait]
impl TokenCredential for StaticCredential {
    async fn get_token(
        &self,
        _scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        Ok(AccessToken::new(
            "emulator-token",
            azure_core::time::OffsetDateTime::now_utc() + azure_core::time::Duration::hours(1),
        ))
    }
}

/// The largest CA bundle read, in bytes.
const MAX_CA_BUNDLE: u64 = 1024 * 1024;

/// The HTTP client a configuration asks for: the attempt timeout, its CA bundle (trusted
/// instead of the system's roots) and every region's address override.
///
/// # Errors
/// [`Error::is_config`] when the CA bundle cannot be read, is larger than 1 MiB or holds no
/// certificate, or a region's URL has no host.
pub fn http_client_for(config: &Config) -> Result<reqwest::Client, Error> {
    let t = config.timeouts.attempt;
    let mut b = reqwest::Client::builder().timeout(t).connect_timeout(t);
    if let Some(path) = config.ca_bundle() {
        let bad = |m: String| Error::config(format!("ca_bundle {}: {m}", path.display()));
        let pem =
            crate::files::read_bounded(path, MAX_CA_BUNDLE).map_err(|e| bad(e.to_string()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("no PEM certificate in it".into()));
        }
        b = b.tls_certs_only(certs);
    }
    for r in config.regions() {
        if let Some(addr) = r.address() {
            let url = url::Url::parse(r.url())
                .map_err(|e| Error::config(format!("region {}: {e}", r.name())))?;
            let host = url
                .host_str()
                .ok_or_else(|| Error::config(format!("region {}: url has no host", r.name())))?;
            b = b.resolve(host, addr);
        }
    }
    b.build()
        .map_err(|e| Error::config(format!("cannot build the HTTP client: {e}")))
}

/// One [`AzureStore`] per region of `config`, each with its credential (the region's own, or
/// the client's), over [`http_client_for`]: what [`connect_with_config`] builds the client
/// from, and what the CLI probes.
///
/// # Errors
/// As [`http_client_for`] and [`credential`].
pub fn stores_for(config: &Config) -> Result<Vec<(String, Arc<AzureStore>)>, Error> {
    let http = http_client_for(config)?;
    let mut creds: Vec<(CredentialKind, Arc<dyn TokenCredential>)> = Vec::new();
    let mut out = Vec::new();
    for r in config.regions() {
        let kind = r.credential().unwrap_or(config.credential());
        let cred = match creds.iter().find(|(k, _)| *k == kind) {
            Some((_, c)) => c.clone(),
            None => {
                let c = credential(kind)?;
                creds.push((kind, c.clone()));
                c
            }
        };
        out.push((
            r.name().to_string(),
            Arc::new(AzureStore::new(r.url(), cred, http.clone())?),
        ));
    }
    Ok(out)
}

/// A `reqwest` client with `timeout` per attempt (connect included): the SDK has no per-try
/// timeout of its own (its default transport waits up to 20 s to connect and 60 s to read).
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, Error> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .build()
        .map_err(|e| Error::config(format!("cannot build the HTTP client: {e}")))
}

/// The largest response body read from a vault, in bytes. Key Vault's answers are a few KiB
/// (a secret is at most 25 KiB, a listing page 25 items); the SDK itself reads any body whole
/// into memory, so a larger one is cut off here and the answer counts as malformed.
pub const MAX_RESPONSE_BODY: usize = 1024 * 1024;

/// The transport, with every response body bounded to `max` bytes ([`MAX_RESPONSE_BODY`] for
/// the vaults).
#[derive(Debug)]
struct Bounded {
    inner: Arc<reqwest::Client>,
    max: usize,
}

/// A transport for any Azure SDK client over `http`, with every response body bounded to
/// `max` bytes: a larger one is cut off and the answer fails as `DataConversion` (the SDKs
/// read any body whole into memory). What the vault clients use, with
/// [`MAX_RESPONSE_BODY`]; the agent's Storage-queue client uses it too.
pub fn bounded_transport(http: reqwest::Client, max: usize) -> Transport {
    Transport::new(Arc::new(Bounded {
        inner: Arc::new(http),
        max,
    }))
}

#[async_trait]
impl azure_core::http::HttpClient for Bounded {
    async fn execute_request(
        &self,
        request: &azure_core::http::Request,
    ) -> azure_core::Result<azure_core::http::AsyncRawResponse> {
        use futures::StreamExt;
        let rsp = azure_core::http::HttpClient::execute_request(&*self.inner, request).await?;
        let (status, headers, body) = rsp.deconstruct();
        let mut seen = 0usize;
        let max = self.max;
        let bounded = body.map(move |chunk| {
            let chunk = chunk?;
            seen = seen.saturating_add(chunk.len());
            if seen > max {
                return Err(azure_core::Error::with_message(
                    ErrorKind::DataConversion,
                    format!("response body larger than {max} bytes: not read further"),
                ));
            }
            Ok(chunk)
        });
        Ok(azure_core::http::AsyncRawResponse::new(
            status,
            headers,
            Box::pin(bounded),
        ))
    }
}

/// One vault through the real SDK.
pub struct AzureStore {
    client: SecretClient,
    url: String,
}

impl std::fmt::Debug for AzureStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureStore")
            .field("url", &self.url)
            .finish()
    }
}

impl AzureStore {
    /// A store for the vault at `url`, authenticating with `credential`, sending through `http`.
    /// The SDK's own retries are off.
    pub fn new(
        url: &str,
        credential: Arc<dyn TokenCredential>,
        http: reqwest::Client,
    ) -> Result<Self, Error> {
        let options = SecretClientOptions {
            client_options: ClientOptions {
                retry: RetryOptions::none(),
                transport: Some(bounded_transport(http, MAX_RESPONSE_BODY)),
                ..Default::default()
            },
            ..Default::default()
        };
        let client = SecretClient::new(url, credential, Some(options))
            .map_err(|e| Error::config(format!("vault {url}: {e}")))?;
        Ok(AzureStore {
            client,
            url: url.to_string(),
        })
    }
}

impl AzureStore {
    /// One `set_secret` (a new version) with these parameters; its version id.
    pub(crate) async fn set_with(
        &self,
        name: &SecretName,
        params: SetSecretParameters,
    ) -> Result<String, StoreError> {
        let body = params
            .try_into()
            .map_err(|_| malformed("cannot encode the request"))?;
        let secret = self
            .client
            .set_secret(name.as_str(), body, None)
            .await
            .map_err(|e| classify(&e))?
            .into_model()
            .map_err(|e| classify(&e))?;
        secret
            .resource_id()
            .ok()
            .and_then(|id| id.version)
            .ok_or_else(|| malformed("answer without a version id"))
    }
}

/// Builds a [`FailoverClient`] with an [`AzureStore`] per configured region. `http` defaults
/// to [`http_client`] with the configured attempt timeout.
pub fn connect(
    config: Config,
    credential: Arc<dyn TokenCredential>,
    http: Option<reqwest::Client>,
) -> Result<FailoverClient, Error> {
    let http = match http {
        Some(h) => h,
        None => http_client(config.timeouts.attempt)?,
    };
    let mut b = FailoverClient::builder(config.clone());
    for r in config.regions() {
        let store = AzureStore::new(r.url(), credential.clone(), http.clone())?;
        b = b.store(r.name(), Arc::new(store));
    }
    b.build()
}

/// Builds a [`FailoverClient`] from the configuration alone: each region's credential, the
/// CA bundle and the address overrides it names.
///
/// # Errors
/// As [`stores_for`], and [`Error::is_config`] from the client's builder.
pub fn connect_with_config(config: Config) -> Result<FailoverClient, Error> {
    let mut b = FailoverClient::builder(config.clone());
    for (name, store) in stores_for(&config)? {
        b = b.store(&name, store);
    }
    b.build()
}

/// Maps an SDK error into the project's classification. The message is the SDK's outer
/// message plus its causes; a server's error body inside it is cut to a few hundred bytes with
/// control characters replaced ([`StoreError::new`]), so nothing a server says can flood or
/// forge a log line. `Retry-After` is read in every form (seconds, HTTP-date, the
/// millisecond headers) on any status.
pub fn classify(e: &azure_core::Error) -> StoreError {
    let mut message = crate::error::sanitize(&e.to_string(), 256);
    let mut source = std::error::Error::source(e);
    let mut timed_out = false;
    let mut depth = 0;
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<reqwest::Error>() {
            timed_out |= r.is_timeout();
        }
        depth += 1;
        if depth <= 4 {
            message.push_str(": ");
            message.push_str(&crate::error::sanitize(&s.to_string(), 128));
        }
        source = s.source();
    }
    let mut retry_after = None;
    let kind = match e.kind() {
        ErrorKind::HttpResponse {
            status,
            error_code,
            raw_response,
        } => {
            let status = u16::from(*status);
            if let Some(code) = error_code {
                message = format!("{}: {message}", crate::error::sanitize(code, 64));
            }
            retry_after = raw_response
                .as_ref()
                .and_then(|r| retry_after_of(r.headers()));
            match status {
                429 => StoreErrorKind::Throttled { retry_after },
                401 | 403 => StoreErrorKind::Auth { status },
                404 => StoreErrorKind::NotFound,
                408 | 500..=599 => StoreErrorKind::Server { status },
                _ => StoreErrorKind::Rejected { status },
            }
        }
        ErrorKind::Connection => StoreErrorKind::Connect,
        ErrorKind::Io if timed_out => StoreErrorKind::Timeout,
        ErrorKind::Io => StoreErrorKind::Reset,
        ErrorKind::DataConversion => StoreErrorKind::Malformed,
        ErrorKind::Credential => StoreErrorKind::Auth { status: 401 },
        _ => StoreErrorKind::Malformed,
    };
    StoreError::new(kind, message).with_retry_after(retry_after)
}

/// The wait a response asks for: `retry-after-ms`, `x-ms-retry-after-ms`, then `Retry-After`.
fn retry_after_of(h: &azure_core::http::headers::Headers) -> Option<Duration> {
    use azure_core::http::headers::{RETRY_AFTER, RETRY_AFTER_MS, X_MS_RETRY_AFTER_MS};
    h.get_optional_str(&RETRY_AFTER_MS)
        .or_else(|| h.get_optional_str(&X_MS_RETRY_AFTER_MS))
        .and_then(keyvault_failover_core::retry_after::parse_retry_after_ms)
        .or_else(|| {
            h.get_optional_str(&RETRY_AFTER)
                .and_then(|v| crate::parse_retry_after(v, std::time::SystemTime::now()))
        })
}

/// What Key Vault said of a secret besides its value: its editable properties (the
/// replicator's reading of them), its own times, the recovery level, and for a certificate's
/// secret its key id and `managed`.
fn metadata_of(secret: &azure_security_keyvault_secrets::models::Secret) -> crate::Metadata {
    let a = secret.attributes.as_ref();
    let mut m = crate::Metadata::new(replica::properties(
        a,
        secret.content_type.clone(),
        secret.tags.clone(),
    ));
    if let Some(t) = replica::unix(a.and_then(|a| a.created)) {
        m = m.with_created(t);
    }
    if let Some(t) = replica::unix(a.and_then(|a| a.updated)) {
        m = m.with_updated(t);
    }
    if let Some(l) = a.and_then(|a| a.recovery_level.as_ref()) {
        let l: &str = l.into();
        m = m.with_recovery(l, a.and_then(|a| a.recoverable_days));
    }
    if secret.kid.is_some() || secret.managed.is_some() {
        m = m.with_certificate(secret.kid.clone(), secret.managed);
    }
    m
}

fn malformed(what: &str) -> StoreError {
    StoreError::new(StoreErrorKind::Malformed, what.to_string())
}

#[async_trait]
impl SecretStore for AzureStore {
    async fn get(
        &self,
        name: &SecretName,
        version: Option<&str>,
    ) -> Result<StoredSecret, StoreError> {
        let options = version.map(|v| {
            azure_security_keyvault_secrets::models::SecretClientGetSecretOptions {
                secret_version: Some(v.to_string()),
                ..Default::default()
            }
        });
        let secret = self
            .client
            .get_secret(name.as_str(), options)
            .await
            .map_err(|e| classify(&e))?
            .into_model()
            .map_err(|e| classify(&e))?;
        let id = secret
            .resource_id()
            .map_err(|_| malformed("answer without a secret id"))?;
        let version = id
            .version
            .filter(|v| !v.is_empty())
            .ok_or_else(|| malformed("answer without a version id"))?;
        // A replicator's copy is as old as its source: its provenance tag carries the
        // source's `created` (the copy's own is when it was copied, later than the original),
        // so versions are ordered across regions by the source's time, where the claim is
        // believable (`replicate::ordering_time`).
        let own = secret
            .attributes
            .as_ref()
            .and_then(|a| a.created)
            .and_then(|t| u64::try_from(t.unix_timestamp()).ok())
            .and_then(|s| std::time::UNIX_EPOCH.checked_add(Duration::from_secs(s)));
        let tag = secret
            .tags
            .as_ref()
            .and_then(|t| t.get(crate::replicate::PROVENANCE_TAG));
        let created = crate::replicate::ordering_time(
            tag.map(String::as_str),
            own,
            std::time::SystemTime::now(),
        );
        let metadata = metadata_of(&secret);
        let value = secret
            .value
            .ok_or_else(|| malformed("answer without a value"))?;
        let stored = StoredSecret::new(SecretString::from(value), version).with_metadata(metadata);
        Ok(match created {
            Some(c) => stored.with_created(c),
            None => stored,
        })
    }

    async fn set(&self, name: &SecretName, value: &SecretString) -> Result<String, StoreError> {
        let params = SetSecretParameters {
            value: Some(value.expose_secret().to_string()),
            ..Default::default()
        };
        self.set_with(name, params).await
    }

    async fn delete(&self, name: &SecretName) -> Result<(), StoreError> {
        self.client
            .delete_secret(name.as_str(), None)
            .await
            .map_err(|e| classify(&e))?;
        Ok(())
    }

    /// One request: the first page of one secret's properties (a full listing of a large
    /// vault is one request per 25 secrets, far too much for a probe).
    async fn probe(&self) -> Result<(), StoreError> {
        let options = SecretClientListSecretPropertiesOptions {
            maxresults: Some(1),
            ..Default::default()
        };
        let mut pages = self
            .client
            .list_secret_properties(Some(options))
            .map_err(|e| classify(&e))?
            .into_pages();
        if let Some(page) = pages.try_next().await.map_err(|e| classify(&e))? {
            page.into_model().map_err(|e| classify(&e))?;
        }
        Ok(())
    }

    /// The replicator's full listing, reduced (a listing's ids carry no version).
    async fn update_properties(
        &self,
        name: &SecretName,
        version: Option<&str>,
        update: &crate::PropertiesUpdate,
    ) -> Result<(String, crate::Metadata), StoreError> {
        use azure_security_keyvault_secrets::models::{
            SecretAttributes, SecretClientUpdateSecretPropertiesOptions,
            UpdateSecretPropertiesParameters,
        };
        let attributes = (update.enabled_set().is_some()
            || update.expires_set().is_some()
            || update.not_before_set().is_some())
        .then(|| -> Result<SecretAttributes, StoreError> {
            Ok(SecretAttributes {
                enabled: update.enabled_set(),
                expires: replica::time(update.expires_set())?,
                not_before: replica::time(update.not_before_set())?,
                ..Default::default()
            })
        })
        .transpose()?;
        let params = UpdateSecretPropertiesParameters {
            content_type: update.content_type_set().map(str::to_string),
            tags: update
                .tags_set()
                .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
            secret_attributes: attributes,
        };
        let body = params
            .try_into()
            .map_err(|_| malformed("cannot encode the request"))?;
        let options = SecretClientUpdateSecretPropertiesOptions {
            secret_version: version.map(str::to_string),
            ..Default::default()
        };
        let secret = self
            .client
            .update_secret_properties(name.as_str(), body, Some(options))
            .await
            .map_err(|e| classify(&e))?
            .into_model()
            .map_err(|e| classify(&e))?;
        Ok((replica::version_of(&secret)?, metadata_of(&secret)))
    }

    async fn versions(&self, name: &SecretName) -> Result<Vec<SecretProperties>, StoreError> {
        use futures::TryStreamExt;
        let mut pager = self
            .client
            .list_secret_properties_versions(name.as_str(), None)
            .map_err(|e| classify(&e))?;
        let mut out = Vec::new();
        while let Some(p) = pager.try_next().await.map_err(|e| classify(&e))? {
            let id = p
                .resource_id()
                .map_err(|_| malformed("listed version without an id"))?;
            let enabled = p
                .attributes
                .as_ref()
                .and_then(|a| a.enabled)
                .unwrap_or(true);
            out.push(SecretProperties::new(id.name, id.version, enabled));
        }
        Ok(out)
    }

    async fn list(&self) -> Result<Vec<SecretProperties>, StoreError> {
        let items = crate::replicate::ReplicaStore::list_items(self).await?;
        Ok(items
            .into_iter()
            .map(|l| SecretProperties::new(l.name(), None, l.properties().enabled()))
            .collect())
    }
}
