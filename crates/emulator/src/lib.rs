//! A Key Vault emulator: the secrets REST API over HTTPS on 127.0.0.1, with fault injection.
//!
//! It exists so that the Azure path (the real `SecretClient` of
//! `azure_security_keyvault_secrets`, through [`AzureStore`](keyvault_failover::azure::AzureStore)) can be
//! tested and benchmarked on a machine with no network. Each region is a vault on its own port
//! and host name (`app-weu.vault.azure.net` by default); [`Emulator::http_client`] builds a
//! `reqwest` client that trusts the emulator's certificate authority and resolves those names to
//! 127.0.0.1, so the SDK sees realistic endpoints and its challenge-resource check stays on.
//!
//! What it speaks: the 401 bearer challenge, `GET /secrets/{name}/` and `/{version}`,
//! `PUT /secrets/{name}` (200), `DELETE /secrets/{name}` (200 with `recoveryId`),
//! `GET /secrets?maxresults=N` with `nextLink` paging (`$skiptoken`, percent-encoded or not),
//! Key Vault's error body, and a per-vault limit that answers 429 `Throttled` with `Retry-After`
//! (default 4,000 GET per 10 s). Data lives in memory; writes can be replicated to another vault
//! after a lag. Faults ([`VaultFault`]) switch at run time, through [`Emulator::set_fault`] or
//! the admin endpoint (plain HTTP on its own loopback port: `GET /vaults`,
//! `PUT /vaults/{region}/fault`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use keyvault_failover_emulator::{Emulator, VaultFault};
//! let emu = Emulator::builder().vault("weu").vault("neu").start().await?;
//! emu.insert("weu", "db", "s3cret");
//! emu.set_fault("weu", VaultFault::Refuse);
//! println!("{} -> {}", emu.url("weu"), emu.addr("weu"));
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod admin;
mod data;
mod error;
mod events;
pub mod peers;
pub mod sdks;
mod server;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use crate::error::Error;
pub use crate::events::{EventSchema, SecretEvent, WebhookTarget};
use data::{Data, NewVersion};

/// A fault an emulated vault injects, switchable at run time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "fault", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum VaultFault {
    /// Healthy.
    Up,
    /// Nothing listens: connections are refused, open connections are cut.
    Refuse,
    /// Connections are accepted and never answered.
    Blackhole,
    /// Every answer comes `ms` milliseconds late.
    Delay {
        /// Added latency in milliseconds.
        ms: u64,
    },
    /// This share of requests (0..=1) answers 503.
    ServerErrors {
        /// Share of requests that fail.
        rate: f64,
    },
    /// Every request answers 429 `Throttled` with this `Retry-After`.
    Throttle {
        /// `Retry-After`, in seconds.
        retry_after_secs: u64,
    },
    /// Every authorized request answers 401.
    Unauthorized,
    /// Every request answers 403.
    Forbidden,
    /// Reads work; writes answer 403, as after a Microsoft-managed failover.
    ReadOnly,
    /// Answers are cut off mid-body.
    Truncated,
    /// Answers are 200 with a body that is not JSON.
    Malformed,
    /// Secret GETs (`GET /secrets/{name}/…`) answer 503; listings and writes work: a partial
    /// outage that a listing probe does not see.
    GetErrors,
    /// Every authorized request is answered with exactly this: any status, an optional
    /// `Retry-After` (sent as given, when it is a valid header value), and `body` repeated
    /// `repeat` times (at most 16 MiB in all). For tests of what a server may say.
    Answer {
        /// HTTP status (an invalid one is sent as 500).
        status: u16,
        /// `Retry-After`, verbatim.
        #[serde(default)]
        retry_after: Option<String>,
        /// The body, repeated.
        #[serde(default)]
        body: String,
        /// How many times `body` is repeated.
        #[serde(default = "one")]
        repeat: u32,
    },
}

fn one() -> u32 {
    1
}

/// What [`Emulator::insert_with`] writes besides the value.
#[derive(Debug, Clone)]
pub struct SecretSpec {
    /// `contentType`.
    pub content_type: Option<String>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// `attributes.enabled`.
    pub enabled: bool,
    /// `attributes.exp`, unix seconds.
    pub expires: Option<i64>,
    /// `attributes.nbf`, unix seconds.
    pub not_before: Option<i64>,
    /// `attributes.created`, unix seconds (default: now): for tests of what whole-second
    /// times cannot tell apart, such as two versions made within one second.
    pub created: Option<i64>,
}

impl Default for SecretSpec {
    fn default() -> Self {
        SecretSpec {
            content_type: None,
            tags: BTreeMap::new(),
            enabled: true,
            expires: None,
            not_before: None,
            created: None,
        }
    }
}

/// Counters of one emulated vault.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) requests: AtomicU64,
    pub(crate) gets: AtomicU64,
    pub(crate) writes: AtomicU64,
    pub(crate) throttled: AtomicU64,
}

pub(crate) struct VaultState {
    pub(crate) region: String,
    pub(crate) host: String,
    pub(crate) data: Mutex<Data>,
    pub(crate) fault: watch::Sender<VaultFault>,
    pub(crate) limiter: Mutex<std::collections::VecDeque<std::time::Instant>>,
    pub(crate) limit: usize,
    /// Writes (PUT, PATCH, DELETE, POST) per window: Key Vault's secret-write limit.
    pub(crate) write_limiter: Mutex<std::collections::VecDeque<std::time::Instant>>,
    pub(crate) write_limit: usize,
    pub(crate) window: Duration,
    pub(crate) counters: Counters,
    pub(crate) rng: Mutex<fastrand::Rng>,
    pub(crate) replicas: Mutex<Vec<(Arc<VaultState>, Duration)>>,
    pub(crate) addr: SocketAddr,
    /// Whether the vault's port has a listener (false while it refuses).
    pub(crate) listening: watch::Sender<bool>,
    /// Where this emulator's events go (one for all its vaults).
    pub(crate) webhook: Arc<events::Webhook>,
}

impl VaultState {
    /// Switches the fault and waits (at most 5 s) for the port to follow it.
    pub(crate) async fn apply_fault(&self, fault: VaultFault) -> Result<(), Error> {
        let want = fault != VaultFault::Refuse;
        let mut rx = self.listening.subscribe();
        self.fault.send_replace(fault);
        let reached = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|l| *l == want))
            .await
            .is_ok_and(|r| r.is_ok());
        if reached {
            return Ok(());
        }
        Err(Error::config(format!(
            "vault {}: the port did not {} within 5 s",
            self.region,
            if want { "reopen" } else { "close" }
        )))
    }

    pub(crate) fn data(&self) -> std::sync::MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Posts `kind` for `name`'s `version` to the webhook, if one is set.
    pub(crate) fn emit(&self, kind: SecretEvent, name: &str, version: &str) {
        let vault = self.host.split('.').next().unwrap_or(&self.host);
        self.webhook.emit(kind, vault, name, version);
    }
}

/// Configures and starts an [`Emulator`].
#[must_use]
pub struct EmulatorBuilder {
    vaults: Vec<(String, String)>,
    limit: u32,
    write_limit: u32,
    window: Duration,
    admin: bool,
    cert_dir: Option<PathBuf>,
    replication: Vec<(String, String, Duration)>,
    seed: u64,
}

impl EmulatorBuilder {
    /// Adds a vault for `region`, at host `app-<region>.vault.azure.net`.
    pub fn vault(self, region: &str) -> Self {
        let host = format!("app-{region}.vault.azure.net");
        self.vault_host(region, &host)
    }

    /// Adds a vault for `region` at `host` (must end in `.vault.azure.net` for the SDK's
    /// challenge check).
    pub fn vault_host(mut self, region: &str, host: &str) -> Self {
        self.vaults
            .push((region.to_string(), host.to_ascii_lowercase()));
        self
    }

    /// Secret GETs (and listings) each vault allows per window before answering 429. Default
    /// 4,000 per 10 s.
    pub fn throttle(mut self, limit: u32, window: Duration) -> Self {
        self.limit = limit;
        self.window = window;
        self
    }

    /// Writes (set, update, delete, recover, purge) each vault allows per window (the one of
    /// [`throttle`](Self::throttle)) before answering 429. Default 300, Key Vault's.
    pub fn write_limit(mut self, limit: u32) -> Self {
        self.write_limit = limit;
        self
    }

    /// Serve the admin endpoint on a loopback port. Default off.
    pub fn admin(mut self, on: bool) -> Self {
        self.admin = on;
        self
    }

    /// Write the CA certificate (`keyvault-emulator-ca.pem`) into this directory.
    pub fn cert_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cert_dir = Some(dir.into());
        self
    }

    /// Copy every write to `from` into `to` after `lag` (with `to`'s own version ids).
    pub fn replicate(mut self, from: &str, to: &str, lag: Duration) -> Self {
        self.replication
            .push((from.to_string(), to.to_string(), lag));
        self
    }

    /// Seed of the emulator's random draws (5xx rate faults, version ids).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Binds every vault (and the admin endpoint) on 127.0.0.1 and starts serving.
    pub async fn start(self) -> Result<Emulator, Error> {
        if self.vaults.is_empty() {
            return Err(Error::config("the emulator needs at least one vault"));
        }
        let hosts: Vec<String> = self.vaults.iter().map(|(_, h)| h.clone()).collect();
        let tls = server::Tls::generate(&hosts)?;
        let cert_path = match &self.cert_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| Error::io(format!("cannot create {}: {e}", dir.display())))?;
                let p = dir.join("keyvault-emulator-ca.pem");
                std::fs::write(&p, &tls.ca_pem)
                    .map_err(|e| Error::io(format!("cannot write {}: {e}", p.display())))?;
                Some(p)
            }
            None => None,
        };
        let (shutdown, _) = watch::channel(false);
        let webhook = Arc::new(events::Webhook::default());
        let mut states: Vec<Arc<VaultState>> = Vec::new();
        for (i, (region, host)) in self.vaults.iter().enumerate() {
            if states.iter().any(|s| s.region == *region) {
                return Err(Error::config(format!("vault {region:?} appears twice")));
            }
            let listener = server::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
                .map_err(|e| Error::io(format!("cannot bind a port for {region}: {e}")))?;
            let addr = listener
                .local_addr()
                .map_err(|e| Error::io(format!("no local address for {region}: {e}")))?;
            let state = Arc::new(VaultState {
                region: region.clone(),
                host: host.clone(),
                data: Mutex::new(Data::new(self.seed ^ ((i as u64 + 1) * 0x51_7cc1_b727))),
                fault: watch::channel(VaultFault::Up).0,
                listening: watch::channel(true).0,
                limiter: Mutex::new(std::collections::VecDeque::new()),
                limit: self.limit as usize,
                write_limiter: Mutex::new(std::collections::VecDeque::new()),
                write_limit: self.write_limit as usize,
                window: self.window,
                counters: Counters::default(),
                rng: Mutex::new(fastrand::Rng::with_seed(self.seed.wrapping_add(i as u64))),
                replicas: Mutex::new(Vec::new()),
                addr,
                webhook: webhook.clone(),
            });
            tokio::spawn(server::serve(
                state.clone(),
                listener,
                tls.acceptor.clone(),
                shutdown.subscribe(),
            ));
            states.push(state);
        }
        for (from, to, lag) in &self.replication {
            let find = |r: &str| {
                states
                    .iter()
                    .find(|s| s.region == r)
                    .cloned()
                    .ok_or_else(|| Error::config(format!("replication names unknown vault {r:?}")))
            };
            let (f, t) = (find(from)?, find(to)?);
            f.replicas
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((t, *lag));
        }
        let admin_token: Arc<str> = admin::new_token()?.into();
        let admin_addr = if self.admin {
            Some(admin::start(states.clone(), admin_token.clone(), shutdown.subscribe()).await?)
        } else {
            None
        };
        Ok(Emulator {
            vaults: states,
            ca_pem: tls.ca_pem,
            cert_path,
            admin_addr,
            admin_token,
            _shutdown: shutdown,
        })
    }
}

/// A running emulator. Dropping it stops every vault.
pub struct Emulator {
    vaults: Vec<Arc<VaultState>>,
    ca_pem: String,
    cert_path: Option<PathBuf>,
    admin_addr: Option<SocketAddr>,
    admin_token: Arc<str>,
    _shutdown: watch::Sender<bool>,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field(
                "vaults",
                &self
                    .vaults
                    .iter()
                    .map(|v| (&v.region, &v.host, v.addr))
                    .collect::<Vec<_>>(),
            )
            .field("admin", &self.admin_addr)
            .finish()
    }
}

impl Emulator {
    /// A builder with Key Vault's published limit (4,000 GET per 10 s per vault).
    pub fn builder() -> EmulatorBuilder {
        EmulatorBuilder {
            vaults: Vec::new(),
            limit: 4000,
            write_limit: 300,
            window: Duration::from_secs(10),
            admin: false,
            cert_dir: None,
            replication: Vec::new(),
            seed: 0,
        }
    }

    fn state(&self, region: &str) -> &Arc<VaultState> {
        self.vaults
            .iter()
            .find(|v| v.region == region)
            .unwrap_or_else(|| panic!("the emulator has no vault {region:?}"))
    }

    /// The regions, in the order they were added.
    pub fn regions(&self) -> Vec<&str> {
        self.vaults.iter().map(|v| v.region.as_str()).collect()
    }

    /// The vault URL the SDK uses (`https://app-<region>.vault.azure.net`).
    ///
    /// # Panics
    /// On a region the emulator does not have (a test's own mistake).
    pub fn url(&self, region: &str) -> String {
        format!("https://{}", self.state(region).host)
    }

    /// The loopback address that serves `region`'s vault.
    pub fn addr(&self, region: &str) -> SocketAddr {
        self.state(region).addr
    }

    /// The admin endpoint's address, if it was enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The token every admin request must carry (`Authorization: Bearer <token>`): random per
    /// start. (Not a Key Vault credential: it only switches this emulator's faults.)
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// The emulator's CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Where the CA certificate was written, if a directory was given.
    pub fn cert_path(&self) -> Option<&Path> {
        self.cert_path.as_deref()
    }

    /// A client configuration for these vaults: the first region read-write, the others
    /// read-only, each with its loopback address, the emulator's CA as `ca_bundle` (the file
    /// written by [`EmulatorBuilder::cert_dir`], by name, so the configuration file sits next
    /// to it) and no credential (the emulator takes any token).
    ///
    /// # Errors
    /// When no CA file was written (no `cert_dir`).
    pub fn client_config(&self) -> Result<keyvault_failover::Config, Error> {
        let ca = self
            .cert_path
            .as_ref()
            .and_then(|p| p.file_name())
            .ok_or_else(|| Error::config("the emulator wrote no CA file (no cert_dir)"))?;
        let mut b = keyvault_failover::Config::builder()
            .credential(keyvault_failover::CredentialKind::None)
            .ca_bundle(ca);
        for (i, v) in self.vaults.iter().enumerate() {
            let access = if i == 0 {
                keyvault_failover::Access::ReadWrite
            } else {
                keyvault_failover::Access::ReadOnly
            };
            b = b
                .region(&v.region, &format!("https://{}", v.host), access)
                .address(v.addr);
        }
        Ok(b.build()?)
    }

    /// Writes [`Emulator::client_config`] as `client.toml` next to the CA file and returns its
    /// path: `keyvault-failover status --config <it>` then talks to these vaults.
    ///
    /// # Errors
    /// When no CA file was written, or the file cannot be written.
    pub fn write_client_config(&self) -> Result<PathBuf, Error> {
        let config = self.client_config()?;
        let dir = self
            .cert_path
            .as_ref()
            .and_then(|p| p.parent())
            .ok_or_else(|| Error::config("the emulator wrote no CA file (no cert_dir)"))?;
        let path = dir.join("client.toml");
        let text = format!(
            "# Written by `keyvault-failover emulator`: a client configuration for its vaults.\n{}",
            config.to_toml()
        );
        std::fs::write(&path, text)
            .map_err(|e| Error::io(format!("cannot write {}: {e}", path.display())))?;
        Ok(path)
    }

    /// A `reqwest` client that trusts only the emulator's CA and resolves every vault host to
    /// its loopback port, with `attempt_timeout` as its per-request timeout.
    pub fn http_client(&self, attempt_timeout: Duration) -> Result<reqwest::Client, Error> {
        self.http_client_builder()?
            .timeout(attempt_timeout)
            .connect_timeout(attempt_timeout)
            .build()
            .map_err(|e| Error::config(format!("cannot build the HTTP client: {e}")))
    }

    /// A `reqwest` builder that trusts only the emulator's CA and resolves every vault host
    /// to its loopback port, with no timeouts set (add your own).
    pub fn http_client_builder(&self) -> Result<reqwest::ClientBuilder, Error> {
        let ca = reqwest::Certificate::from_pem(self.ca_pem.as_bytes())
            .map_err(|e| Error::tls(format!("emulator CA: {e}")))?;
        let mut b = reqwest::Client::builder().tls_certs_only([ca]).no_proxy();
        for v in &self.vaults {
            b = b.resolve(&v.host, v.addr);
        }
        Ok(b)
    }

    /// Switches `region`'s fault. The switch to or from [`VaultFault::Refuse`] closes
    /// or reopens the port a moment later; use [`apply_fault`](Self::apply_fault) to
    /// wait for it.
    pub fn set_fault(&self, region: &str, fault: VaultFault) {
        self.state(region).fault.send_replace(fault);
    }

    /// Switches `region`'s fault and waits (at most 5 s) until the port is closed
    /// (for [`VaultFault::Refuse`]) or listening again (for anything else).
    ///
    /// # Errors
    /// When the port did not reach that state in time (it could not be rebound).
    pub async fn apply_fault(&self, region: &str, fault: VaultFault) -> Result<(), Error> {
        self.state(region).apply_fault(fault).await
    }

    /// Posts Key Vault's events to `url` (`http://127.0.0.1:PORT/...` only) in `schema`,
    /// with `headers` on each request (Event Grid's custom delivery headers, such as an
    /// agent's `X-Agent-Token`): a new version on every write ([`insert`](Self::insert) and the
    /// REST API's PUT), and what [`emit`](Self::emit) asks for. `None` stops them.
    ///
    /// # Errors
    /// [`Error::is_config`] for a URL that is not `http://127.0.0.1:PORT`.
    pub fn set_webhook(&self, target: Option<WebhookTarget<'_>>) -> Result<(), Error> {
        match self.vaults.first() {
            Some(v) => v.webhook.set(target),
            None => Ok(()),
        }
    }

    /// Posts `kind` (near expiry, expired, or a new version) for the latest version of `name`
    /// in `region`; says whether the secret exists.
    pub fn emit(&self, region: &str, name: &str, kind: SecretEvent) -> bool {
        let state = self.state(region);
        let version = state.data().get(name, None).map(|(_, v)| v.id.clone());
        match version {
            Some(v) => {
                state.emit(kind, name, &v);
                true
            }
            None => false,
        }
    }

    /// Events delivered (answered 2xx) and not delivered, so far.
    pub fn events_posted(&self) -> (u64, u64) {
        self.vaults.first().map_or((0, 0), |v| {
            (
                v.webhook.sent.load(std::sync::atomic::Ordering::Relaxed),
                v.webhook.failed.load(std::sync::atomic::Ordering::Relaxed),
            )
        })
    }

    /// Writes a version directly (no fault, no limit, not counted); returns its id. Posts a
    /// new-version event if a webhook is set.
    pub fn insert(&self, region: &str, name: &str, value: &str) -> String {
        self.insert_with(region, name, value, SecretSpec::default())
    }

    /// Writes what a replicator's copy looks like: a version of `name` whose provenance tag
    /// says it was copied from `source_region`'s version created at `source_created` (unix
    /// seconds), under a made-up source version id; returns its id.
    pub fn insert_copy(
        &self,
        region: &str,
        name: &str,
        value: &str,
        source_region: &str,
        source_created: i64,
    ) -> String {
        let source = keyvault_failover::replicate::Provenance::new(
            source_region,
            format!("{source_created:032x}"),
            source_created,
        );
        let mut tags = BTreeMap::new();
        tags.insert(
            keyvault_failover::replicate::PROVENANCE_TAG.to_string(),
            source.encode(),
        );
        let spec = SecretSpec {
            tags,
            ..SecretSpec::default()
        };
        self.insert_with(region, name, value, spec)
    }

    /// Writes a version with a content type, tags and attributes directly (as
    /// [`insert`](Self::insert)); returns its id.
    pub fn insert_with(&self, region: &str, name: &str, value: &str, spec: SecretSpec) -> String {
        let state = self.state(region);
        let id = state
            .data()
            .set(
                name,
                NewVersion {
                    value: value.to_string(),
                    content_type: spec.content_type,
                    tags: spec.tags,
                    enabled: spec.enabled,
                    exp: spec.expires,
                    nbf: spec.not_before,
                    created: spec.created,
                },
            )
            .id
            .clone();
        state.emit(SecretEvent::NewVersion, name, &id);
        id
    }

    /// Writes a version of a certificate's backing secret (`managed: true` in listings and
    /// reads; a set or update answers 403 `SecretManagedByKeyVault`); returns its id.
    pub fn insert_managed(&self, region: &str, name: &str, value: &str) -> String {
        let id = self.insert(region, name, value);
        self.state(region).data().set_managed(name);
        id
    }

    /// Soft-deletes `name` (recoverable, its name refused to writes with 409 until it is
    /// recovered or purged); says whether it existed.
    pub fn soft_delete(&self, region: &str, name: &str) -> bool {
        self.state(region).data().delete(name).is_some()
    }

    /// Whether `name` is soft-deleted in `region`.
    pub fn is_soft_deleted(&self, region: &str, name: &str) -> bool {
        self.state(region).data().is_deleted(name)
    }

    /// Enables or disables the latest version of `name` (a disabled secret's value is
    /// refused with 403 `Forbidden`, inner code `SecretDisabled`); says whether it exists.
    pub fn set_enabled(&self, region: &str, name: &str, enabled: bool) -> bool {
        self.state(region).data().set_enabled(name, enabled)
    }

    /// The current value and version of `name` in `region`.
    pub fn current(&self, region: &str, name: &str) -> Option<(String, String)> {
        self.state(region)
            .data()
            .get(name, None)
            .map(|(_, v)| (v.value.clone(), v.id.clone()))
    }

    /// The tags of `name`'s current version in `region`.
    pub fn current_tags(&self, region: &str, name: &str) -> Option<BTreeMap<String, String>> {
        self.state(region)
            .data()
            .get(name, None)
            .map(|(_, v)| v.tags.clone())
    }

    /// HTTP requests that reached `region`'s vault (challenges and refusals included).
    pub fn requests(&self, region: &str) -> u64 {
        self.state(region).counters.requests.load(Ordering::Relaxed)
    }

    /// Authorized secret GETs `region`'s vault handled (throttled ones included).
    pub fn gets(&self, region: &str) -> u64 {
        self.state(region).counters.gets.load(Ordering::Relaxed)
    }

    /// Authorized writes (PUT, DELETE) that reached `region`'s vault.
    pub fn writes(&self, region: &str) -> u64 {
        self.state(region).counters.writes.load(Ordering::Relaxed)
    }

    /// Requests `region`'s vault answered with 429.
    pub fn throttled(&self, region: &str) -> u64 {
        self.state(region)
            .counters
            .throttled
            .load(Ordering::Relaxed)
    }
}

pub use keyvault_failover::azure::StaticCredential;
