//! The failover agent (package `keyvault-failover-agent`): [`FailoverClient`] served over
//! HTTP on the loopback interface or a Unix socket, for services in any language.
//! `keyvault-failover agent --config FILE` runs it from the client configuration plus an
//! `[agent]` table.
//!
//! * `GET /v1/secrets/{name}[?version=V]` → `{name, value, version, region, freshness, age_s}`
//!   with `X-Keyvault-Region`, `X-Keyvault-Version`, `X-Keyvault-Freshness` (and
//!   `X-Keyvault-Replication-Lag`, seconds, while a secondary is known to lag); errors are
//!   `{code, message}` with a stable code and status: `invalid_name` 400, `forwarded` 400,
//!   `unauthorized` 401 (with `WWW-Authenticate`), `forbidden` 403, `host` 403, `not_found`
//!   404, `no_route` 404, `method_not_allowed` 405 (with `Allow`), `throttled` 429 (with
//!   `Retry-After`), `unavailable` 503.
//! * `POST /v1/events`: Key Vault's secret events (Event Grid schema or CloudEvents 1.0) as
//!   refresh hints ([`FailoverClient::notify_events`]); Event Grid's validation handshake and
//!   CloudEvents' `OPTIONS` abuse protection are answered.
//! * `GET /healthz/live` (no token), `GET /healthz/ready` (200 ready, 503 not ready); both
//!   say whether the client is degraded. `GET /metrics`: Prometheus text.
//! * Every request but liveness carries `X-Agent-Token`; a request with `X-Forwarded-For` is
//!   refused: the agent is for processes on this machine only.
//! * A `Host` other than a loopback name or the listening address is refused (`host` 403):
//!   a web page that rebinds its own name to 127.0.0.1 cannot reach the agent as its origin.
//! * Bounded: connections (over the cap they are closed at once), header time (10 s), each
//!   request's time (its read gets the request's deadline, so a held value is served stale
//!   before the request is cut), and each write of an answer (a peer that takes no byte for
//!   10 s loses its connection and its slot); on shutdown it stops accepting and lets requests
//!   in flight finish (at most 30 s).
//! * Optional Key Vault REST API over HTTPS (`[agent.vault_api]`, the `vault_api` module):
//!   Microsoft's SDKs unchanged but for the vault URL and a static-token credential carrying
//!   the agent's token, or, with `[agent.vault_api.entra]`, unchanged entirely: the service's
//!   own Entra ID token, verified by the agent against the tenant's keys and an allow-list of
//!   callers (the `entra` and `access` modules); a generated local CA (kept in a private
//!   directory) or the operator's certificate.
//! * Optional sealed snapshot ([`Snapshot`]): restored before the agent listens, saved every
//!   `interval` and at shutdown, so a restart during an outage still serves what it held. Its
//!   directory must exist and be writable at start; a snapshot refused at start is moved aside
//!   (`<file>.refused-<ms>`), never saved over.

#![deny(missing_docs)]

mod access;
mod config;
mod entra;
mod error;
#[cfg(unix)]
pub mod exec;
mod given;
mod http;
mod output;
mod prometheus;
#[cfg(feature = "queue")]
mod queue;
mod tls;
mod vault_api;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use secrecy::zeroize::Zeroizing;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::error::Kind;
use keyvault_failover::FailoverClient;
use keyvault_failover::Snapshot;

pub use config::{AgentConfig, Listen, DEFAULT_PORT, DEFAULT_VAULT_API_PORT};
pub use error::Error;
pub use prometheus::PrometheusReader;

const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long writing an answer may wait for the peer to take a byte.
const WRITE_STALL: Duration = Duration::from_secs(10);
const DRAIN: Duration = Duration::from_secs(30);

/// Shared by every connection.
pub(crate) struct State {
    pub(crate) client: FailoverClient,
    pub(crate) token: Zeroizing<Vec<u8>>,
    pub(crate) metrics: Option<PrometheusReader>,
    /// The `Host` values accepted (`None`: any, for a Unix socket or an unspecified address).
    pub(crate) hosts: Option<Vec<String>>,
    /// The deadline each read gets (`None`: the client's own), inside the request timeout.
    pub(crate) read_deadline: Option<Duration>,
    /// The health of `[[agent.file]]`, if any.
    pub(crate) files: Option<output::Health>,
}

impl State {
    /// Reads `name` (its `version`, or the latest) through the client, within the agent's
    /// read deadline: what both APIs serve.
    pub(crate) async fn read(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<keyvault_failover::Secret, keyvault_failover::Error> {
        let opts = match self.read_deadline {
            Some(d) => keyvault_failover::ReadOptions::new().deadline(d),
            None => keyvault_failover::ReadOptions::new(),
        };
        match version {
            Some(v) => self.client.get_secret_version_with(name, v, &opts).await,
            None => self.client.get_secret_with(name, &opts).await,
        }
    }
}

/// An agent ready to bind: a client, its token and limits. From a configuration file with
/// [`Agent::from_file`], or around a client of your own with [`Agent::new`].
pub struct Agent {
    client: FailoverClient,
    token: Zeroizing<Vec<u8>>,
    metrics: Option<PrometheusReader>,
    config: AgentConfig,
    snapshot: Option<(Arc<Snapshot>, Duration)>,
    /// Key Vault's events from a Storage queue (`[agent.queue]`).
    #[cfg(feature = "queue")]
    queue: Option<queue::QueueSource>,
    /// `[[agent.file]]`, checked; written by [`bind`](Self::bind).
    files: Vec<output::FileSpec>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("listen", &self.config.listen())
            .field("snapshot", &self.snapshot.as_ref().map(|s| s.0.path()))
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// Reads the client configuration and its `[agent]` table from `path`, reads the token and
    /// the snapshot key, and connects the Azure client. `metrics` backs `GET /metrics` (install
    /// it in the global meter provider before this call, so the client's instruments reach it).
    pub fn from_file(path: &Path, metrics: Option<PrometheusReader>) -> Result<Agent, Error> {
        let (client_config, agent) = AgentConfig::from_file(path)?;
        let token = agent.read_token()?;
        let snapshot = agent.snapshot()?;
        let files = agent.files()?;
        #[allow(unused_variables)]
        let queue = agent.queue(client_config.attempt_timeout())?;
        let client = keyvault_failover::azure::connect_with_config(client_config)?;
        Ok(Agent {
            client,
            token,
            metrics,
            config: agent,
            snapshot,
            #[cfg(feature = "queue")]
            queue,
            files,
        })
    }

    /// An agent around `client`, with `token` (at least 16 characters) and the rest of
    /// `config` (its token source and snapshot are not read).
    pub fn new(client: FailoverClient, token: &str, config: AgentConfig) -> Result<Agent, Error> {
        let token = token.trim();
        if token.len() < 16 {
            return Err(Error::new(
                Kind::Config,
                "[agent] the token must be at least 16 characters",
            ));
        }
        let files = config.files()?;
        Ok(Agent {
            client,
            token: Zeroizing::new(token.as_bytes().to_vec()),
            metrics: None,
            config,
            snapshot: None,
            #[cfg(feature = "queue")]
            queue: None,
            files,
        })
    }

    /// Keeps a sealed snapshot, saved every `interval` and at shutdown, restored by
    /// [`bind`](Self::bind).
    pub fn with_snapshot(mut self, snapshot: Snapshot, interval: Duration) -> Self {
        self.snapshot = Some((Arc::new(snapshot), interval.max(Duration::from_secs(1))));
        self
    }

    /// The client served.
    pub fn client(&self) -> &FailoverClient {
        &self.client
    }

    /// Checks that the snapshot (if any) can be saved, restores it (a refused one is moved
    /// aside, logged, and the agent starts without it), then binds the listener. Nothing is
    /// served until [`Bound::serve`].
    ///
    /// # Errors
    /// [`Error::is_config`] when the snapshot's directory is missing or not writable (every
    /// restart during an outage would find nothing), [`Error::is_listen`] when the address or
    /// socket cannot be taken.
    pub async fn bind(mut self) -> Result<Bound, Error> {
        let restored = restore(&mut self.snapshot, &self.client).await?;
        // The files, from what the client holds now (the snapshot restored above included).
        let files = match std::mem::take(&mut self.files) {
            specs if specs.is_empty() => None,
            specs => {
                Some(output::Files::start(specs, &self.client, self.config.file_check()).await?)
            }
        };
        let listener = match self.config.listen() {
            Listen::Tcp(addr) => {
                let l = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                    Error::new(Kind::Listen, format!("cannot listen on {addr}: {e}"))
                })?;
                Listener::Tcp(l)
            }
            #[cfg(unix)]
            Listen::Unix(path) => Listener::Unix(bind_unix(&path)?, path),
        };
        let vault = match self.config.vault_api()? {
            None => None,
            Some(v) => {
                let tls = tls::server_tls(&v.tls)?;
                let l = tokio::net::TcpListener::bind(v.listen).await.map_err(|e| {
                    Error::new(
                        Kind::Listen,
                        format!("[agent.vault_api] cannot listen on {}: {e}", v.listen),
                    )
                })?;
                let entra = v.entra.map(entra::Entra::new).transpose()?.map(Arc::new);
                Some(VaultListener {
                    listener: l,
                    tls,
                    tenant: v.tenant,
                    entra,
                })
            }
        };
        Ok(Bound {
            agent: self,
            listener,
            restored,
            vault,
            files,
        })
    }
}

#[cfg(unix)]
fn bind_unix(path: &Path) -> Result<tokio::net::UnixListener, Error> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let err = |e: std::io::Error| {
        Error::new(
            Kind::Listen,
            format!("cannot listen on unix socket {}: {e}", path.display()),
        )
    };
    use std::os::unix::fs::MetadataExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(Error::new(
                Kind::Config,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        // Only our own socket, and only one nobody listens on (connection refused), is left
        // over from a process that died and may be replaced: another user's, or one we may
        // not connect to, belongs to someone else's live agent.
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        if meta.uid() != me {
            return Err(Error::new(
                Kind::Listen,
                format!(
                    "{} is a socket of user {}, not ours: not replaced",
                    path.display(),
                    meta.uid()
                ),
            ));
        }
        match std::os::unix::net::UnixStream::connect(path) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            Ok(_) => {
                return Err(Error::new(
                    Kind::Listen,
                    format!("another process listens on {}", path.display()),
                ))
            }
            Err(e) => {
                return Err(Error::new(
                    Kind::Listen,
                    format!(
                        "{} is a socket that may be in use ({e}): not replaced",
                        path.display()
                    ),
                ))
            }
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    // Created 0600 (no window with the umask's mode in which another user could connect): the
    // umask is the process's, so it is set only around the bind, before any other thread of
    // the agent creates files.
    // SAFETY: umask has no preconditions and cannot fail.
    let old = unsafe { libc::umask(0o177) };
    let bound = tokio::net::UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let l = bound.map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(l)
}

enum Listener {
    Tcp(tokio::net::TcpListener),
    #[cfg(unix)]
    Unix(tokio::net::UnixListener, PathBuf),
}

/// The Key Vault API's listener (`[agent.vault_api]`), bound.
struct VaultListener {
    listener: tokio::net::TcpListener,
    tls: tls::ServerTls,
    tenant: String,
    entra: Option<Arc<entra::Entra>>,
}

/// A bound agent: where it listens, what the snapshot restored; [`serve`](Self::serve) runs it.
pub struct Bound {
    agent: Agent,
    listener: Listener,
    restored: Option<Result<usize, Error>>,
    vault: Option<VaultListener>,
    files: Option<output::Files>,
}

impl std::fmt::Debug for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bound")
            .field("address", &self.address())
            .finish_non_exhaustive()
    }
}

impl Bound {
    /// `127.0.0.1:PORT` or `unix:PATH`.
    pub fn address(&self) -> String {
        match &self.listener {
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "?".into()),
            #[cfg(unix)]
            Listener::Unix(_, p) => format!("unix:{}", p.display()),
        }
    }

    /// The `Host` values a request may carry: the loopback names and the listening address,
    /// with or without the port. `None` (any) on a Unix socket, which no browser reaches, and
    /// on an unspecified address (`allow_non_loopback` on every interface: names unknown).
    fn hosts(&self) -> Option<Vec<String>> {
        let Listener::Tcp(l) = &self.listener else {
            return None;
        };
        let addr = l.local_addr().ok()?;
        if addr.ip().is_unspecified() {
            return None;
        }
        let ip = match addr.ip() {
            std::net::IpAddr::V4(ip) => ip.to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        };
        let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "[::1]".into()];
        if !names.contains(&ip) {
            names.push(ip);
        }
        let port = addr.port();
        let with_port: Vec<String> = names.iter().map(|n| format!("{n}:{port}")).collect();
        names.extend(with_port);
        Some(names)
    }

    /// Where the Key Vault API listens (`https://127.0.0.1:PORT`), if it is on.
    pub fn vault_api_url(&self) -> Option<String> {
        let a = self.vault.as_ref()?.listener.local_addr().ok()?;
        Some(format!("https://{a}"))
    }

    /// The CA to trust for the Key Vault API's generated certificate, if it is generated.
    pub fn vault_api_ca(&self) -> Option<&Path> {
        self.vault.as_ref()?.tls.ca_path.as_deref()
    }

    /// What restoring the snapshot came to: `None` without one, else how many values it
    /// restored or why it was refused.
    pub fn restored(&self) -> Option<&Result<usize, Error>> {
        self.restored.as_ref()
    }

    /// Serves until `shutdown` completes: preloads (after the configured jitter), keeps the
    /// snapshot, then stops accepting, lets requests in flight finish (at most 30 s), and
    /// saves the snapshot a last time.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let hosts = self.hosts();
        let Bound {
            agent,
            listener,
            vault,
            files,
            ..
        } = self;
        let cfg = &agent.config;
        let client = agent.client.clone();
        let deadline = client.config().deadline();
        let (request_timeout, read_deadline) = match cfg.request_timeout() {
            None => (deadline + Duration::from_secs(1), None),
            // The read gets the request's time less a margin to answer in, so a held value is
            // served stale before the request is cut (not a 503).
            Some(t) => {
                let margin = (t / 4).min(Duration::from_millis(250));
                (t, Some(t.saturating_sub(margin).min(deadline)))
            }
        };
        let state = Arc::new(State {
            client: client.clone(),
            token: agent.token.clone(),
            metrics: agent.metrics.clone(),
            hosts,
            read_deadline,
            files: files.as_ref().map(output::Files::health),
        });
        let mut background = tokio::task::JoinSet::new();
        if let Some(f) = files {
            background.spawn(f.run(client.clone()));
        }
        if !cfg.preload().is_empty() {
            let (c, names, jitter) = (client.clone(), cfg.preload().to_vec(), cfg.preload_jitter());
            background.spawn(async move {
                tokio::time::sleep(jitter.mul_f64(fastrand::f64())).await;
                for (name, e) in c.preload(&names).await {
                    tracing::warn!(secret = %name, error = %e, "preload failed");
                }
            });
        }
        #[cfg(feature = "queue")]
        if let Some(q) = agent.queue {
            background.spawn(q.run(client.clone()));
        }
        let snapshot = agent.snapshot.clone();
        if let Some((snap, every)) = snapshot.clone() {
            let c = client.clone();
            background.spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    save(&snap, &c).await;
                }
            });
        }
        let slots = Arc::new(tokio::sync::Semaphore::new(cfg.max_connections()));
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut conns = tokio::task::JoinSet::new();
        // Not in `background` (aborted at shutdown): its requests in flight are drained too.
        let vault_task = vault.map(|v| {
            tokio::spawn(vault_loop(
                v,
                state.clone(),
                stop_rx.clone(),
                request_timeout,
                slots.clone(),
            ))
        });
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                acc = accept(&listener) => {
                    let Some(io) = acc else { continue };
                    // Over the cap the connection is closed at once: bounded memory.
                    let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
                    let (state, stop_rx) = (state.clone(), stop_rx.clone());
                    match io {
                        Accepted::Tcp(s) => {
                            conns.spawn(connection(s, state, Api::Agent, stop_rx, request_timeout, slot));
                        }
                        #[cfg(unix)]
                        Accepted::Unix(s) => {
                            conns.spawn(connection(s, state, Api::Agent, stop_rx, request_timeout, slot));
                        }
                    }
                }
                _ = &mut shutdown => break,
            }
            while conns.try_join_next().is_some() {}
        }
        #[cfg(unix)]
        if let Listener::Unix(_, p) = &listener {
            let _ = std::fs::remove_file(p);
        }
        drop(listener);
        tracing::info!("stopping: no new connections; finishing requests in flight");
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(DRAIN, async {
            while conns.join_next().await.is_some() {}
            if let Some(t) = vault_task {
                let _ = t.await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!("requests still in flight after 30 s were cut");
        }
        background.shutdown().await;
        if let Some((snap, _)) = snapshot {
            save(&snap, &client).await;
        }
        Ok(())
    }
}

/// Checks that the snapshot (if any) can be saved and restores it into `client`: `None`
/// without a snapshot, else how many values it restored or why it was refused (moved aside;
/// if it cannot be moved, `snapshot` is cleared so nothing is saved over it).
pub(crate) async fn restore(
    snapshot: &mut Option<(Arc<Snapshot>, Duration)>,
    client: &FailoverClient,
) -> Result<Option<Result<usize, Error>>, Error> {
    let Some((snap, _)) = snapshot.as_ref() else {
        return Ok(None);
    };
    let snap = snap.clone();
    snap.check_writable()?;
    let client = client.clone();
    let snap_path = snap.path().to_path_buf();
    let missing = matches!(std::fs::metadata(&snap_path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound);
    let r = if missing {
        // The first start: nothing to restore yet, and nothing wrong.
        tracing::info!(path = %snap_path.display(), "no snapshot yet");
        Ok(0)
    } else {
        let snap = snap.clone();
        tokio::task::spawn_blocking(move || snap.restore(&client))
            .await
            .map_err(|e| Error::new(Kind::Snapshot, format!("restore task: {e}")))
            .and_then(|r| r.map_err(Error::from))
    };
    let r = match r {
        Ok(n) => {
            tracing::info!(restored = n, path = %snap_path.display(), "snapshot restored");
            Ok(n)
        }
        // Whatever it holds may still be wanted (a key mixed up, a read error that
        // passes): moved aside, never saved over.
        Err(e) => match snap.set_aside() {
            Ok(to) => {
                tracing::warn!(error = %e, kept = %to.display(), "snapshot refused; starting without it");
                Err(Error::new(
                    Kind::Snapshot,
                    format!("{e} (kept as {})", to.display()),
                ))
            }
            Err(e2) => {
                tracing::error!(error = %e, aside = %e2, "snapshot refused and not movable; no snapshot will be saved");
                *snapshot = None;
                Err(Error::new(
                    Kind::Snapshot,
                    format!("{e}; {e2}: no snapshot will be saved over it"),
                ))
            }
        },
    };
    Ok(Some(r))
}

/// Saves unless nothing is held (an agent that restored nothing and reached no vault must not
/// replace a snapshot it could not open with an empty one).
pub(crate) async fn save(snap: &Arc<Snapshot>, client: &FailoverClient) {
    if client.held() == 0 {
        return;
    }
    let (snap, c) = (snap.clone(), client.clone());
    match tokio::task::spawn_blocking(move || snap.save(&c)).await {
        Ok(Ok(n)) => tracing::debug!(values = n, "snapshot saved"),
        Ok(Err(e)) => tracing::warn!(error = %e, "snapshot not saved"),
        Err(e) => tracing::warn!(error = %e, "snapshot task failed"),
    }
}

enum Accepted {
    Tcp(tokio::net::TcpStream),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

/// The next connection, or `None` for an accept error (out of descriptors, a reset before
/// accept): logged, with a short pause so a persistent error does not spin.
async fn accept(l: &Listener) -> Option<Accepted> {
    let r = match l {
        Listener::Tcp(l) => l.accept().await.map(|(s, _)| Accepted::Tcp(s)),
        #[cfg(unix)]
        Listener::Unix(l, _) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
    };
    match r {
        Ok(a) => Some(a),
        Err(e) => {
            tracing::warn!(error = %e, "accept failed");
            tokio::time::sleep(Duration::from_millis(10)).await;
            None
        }
    }
}

/// `io` whose writes fail (and whose connection hyper then closes) after [`WRITE_STALL`]
/// without progress: a peer that sends requests and never reads the answers would otherwise
/// keep its connection, and its slot, as long as it likes. Reads are bounded by hyper's header
/// timeout and the request timeout; an answer the peer reads, however slowly, keeps the
/// connection. Boxed, so that hyper gets an `Unpin` stream.
fn write_bounded<I>(io: I) -> TokioIo<std::pin::Pin<Box<tokio_io_timeout::TimeoutWriter<I>>>>
where
    I: AsyncRead + AsyncWrite,
{
    TokioIo::new(bounded(io, WRITE_STALL))
}

/// `io` whose writes (and flushes, and shutdown) fail with `TimedOut` after `stall` without
/// progress.
fn bounded<I: AsyncWrite>(
    io: I,
    stall: Duration,
) -> std::pin::Pin<Box<tokio_io_timeout::TimeoutWriter<I>>> {
    let mut w = tokio_io_timeout::TimeoutWriter::new(io);
    w.set_timeout(Some(stall));
    Box::pin(w)
}

/// Which API a connection speaks.
#[derive(Clone)]
enum Api {
    /// The agent's own (`/v1/...`).
    Agent,
    /// Key Vault's REST API.
    Vault(Arc<vault_api::VaultApi>),
}

/// Accepts the Key Vault API's connections until the agent stops, then waits for the
/// requests in flight: each connection gets a slot of the agent's (over the cap it is closed
/// at once) and 10 s for its TLS handshake.
async fn vault_loop(
    mut v: VaultListener,
    state: Arc<State>,
    mut stop_rx: watch::Receiver<bool>,
    request_timeout: Duration,
    slots: Arc<tokio::sync::Semaphore>,
) {
    let port = v.listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let mut hosts: Vec<String> = ["127.0.0.1", "localhost", "[::1]"]
        .iter()
        .map(|h| format!("{h}:{port}"))
        .collect();
    hosts.extend(["localhost".to_string(), "127.0.0.1".to_string()]);
    if let Some(e) = v.entra.clone() {
        // The tenant's keys at start, so the first token waits for nothing (failures are
        // logged, and the first token tries again).
        tokio::spawn(async move { e.prefetch().await });
    }
    let api = Arc::new(vault_api::VaultApi {
        hosts,
        tenant: v.tenant,
        entra: v.entra,
    });
    // A generated leaf is renewed before it expires (checked hourly).
    let renew = v.tls.renewer.take().map(|mut r| {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(3600));
            loop {
                tick.tick().await;
                match r.renew_if_due(std::time::SystemTime::now()) {
                    Ok(true) => tracing::info!("Key Vault API: the generated TLS leaf was renewed"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "Key Vault API: the TLS leaf could not be renewed; the current one is kept"),
                }
            }
        })
    });
    let acceptor = v.tls.acceptor;
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = v.listener.accept() => a,
            _ = async { stop_rx.wait_for(|s| *s).await.map(|_| ()) } => {
                // Stop accepting; the requests in flight finish (each connection closes after
                // its own), within the agent's drain bound.
                drop(v.listener);
                if let Some(r) = &renew {
                    r.abort();
                }
                while conns.join_next().await.is_some() {}
                return;
            }
        };
        while conns.try_join_next().is_some() {}
        let tcp = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "Key Vault API: accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let (state, api, acceptor, stop_rx) = (
            state.clone(),
            api.clone(),
            acceptor.clone(),
            stop_rx.clone(),
        );
        conns.spawn(async move {
            let Ok(Ok(tls)) = tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(tcp)).await
            else {
                return; // a handshake that fails or never ends
            };
            connection(tls, state, Api::Vault(api), stop_rx, request_timeout, slot).await;
        });
    }
}

async fn connection<I>(
    io: I,
    state: Arc<State>,
    api: Api,
    mut stop_rx: watch::Receiver<bool>,
    request_timeout: Duration,
    slot: tokio::sync::OwnedSemaphorePermit,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let (state, api) = (state.clone(), api.clone());
        async move {
            let answer = async {
                match api {
                    Api::Agent => http::handle(state, req).await,
                    Api::Vault(api) => vault_api::handle(state, api, req).await,
                }
            };
            let r = tokio::time::timeout(request_timeout, answer)
                .await
                .unwrap_or_else(|_| {
                    http::error(
                        hyper::StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        "the request took longer than the agent allows",
                    )
                });
            Ok::<_, std::convert::Infallible>(r)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(write_bounded(io), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = async { stop_rx.wait_for(|s| *s).await.map(|_| ()) } => {
            // Finish the request in flight, then close.
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
    drop(slot);
}

/// Whether `host` (a `Host` header's value or a URL's host: a name or an address, an IPv6
/// address in brackets, with or without a port) names this machine: a loopback address or
/// `localhost`.
///
/// ```
/// use keyvault_failover_agent::is_loopback_host;
/// assert!(is_loopback_host("127.0.0.1:2780") && is_loopback_host("[::1]") && is_loopback_host("localhost"));
/// assert!(!is_loopback_host("127.0.0.1.example") && !is_loopback_host("10.0.0.1:80"));
/// ```
pub fn is_loopback_host(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((name, port))
            if !name.ends_with(':')
                && !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit()) =>
        {
            name
        }
        _ => host,
    };
    let ip = name.trim_start_matches('[').trim_end_matches(']');
    match ip.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => name.eq_ignore_ascii_case("localhost"),
    }
}

/// Locks `m`, going on through poisoning: the guarded text is written in one step.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod write_bound {
    use std::io;
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;

    use super::bounded;

    /// A peer that never reads: the write fails after the stall bound (paused time), where the
    /// bare stream waits for ever.
    #[tokio::test(start_paused = true)]
    async fn a_write_nobody_takes_fails_after_the_bound() {
        let (a, _b) = tokio::io::duplex(64);
        let mut w = bounded(a, Duration::from_secs(10));
        let start = tokio::time::Instant::now();
        let e = w.write_all(&[0u8; 4096]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(start.elapsed() >= Duration::from_secs(10));
    }

    /// A peer that reads, however slowly, gets the whole answer.
    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_gets_everything() {
        use tokio::io::AsyncReadExt;
        let (a, mut b) = tokio::io::duplex(64);
        let mut w = bounded(a, Duration::from_secs(10));
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut chunk = [0u8; 64];
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                match b.read(&mut chunk).await.unwrap() {
                    0 => return got,
                    n => got.extend_from_slice(&chunk[..n]),
                }
            }
        });
        w.write_all(&[1u8; 1024]).await.unwrap();
        w.shutdown().await.unwrap();
        drop(w);
        assert_eq!(reader.await.unwrap().len(), 1024);
    }
}
