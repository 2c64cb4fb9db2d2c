//! The `[agent]` table of the configuration file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use secrecy::zeroize::Zeroizing;
use serde::Deserialize;

use crate::error::{Error, Kind};
use keyvault_failover::Config;
use keyvault_failover::Snapshot;

/// Where the agent listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A TCP address: loopback unless `allow_non_loopback`.
    Tcp(SocketAddr),
    /// A Unix socket (created with mode 0600; a leftover socket nobody answers on is replaced).
    #[cfg(unix)]
    Unix(PathBuf),
}

/// The `[agent]` table: where to listen, the token's source, preloading, limits and the
/// optional `[agent.snapshot]`. Every field has a default but the token source.
///
/// ```toml
/// [agent]
/// listen = "127.0.0.1:2780"        # or socket = "/run/kvf/agent.sock"
/// token_file = "agent.token"       # or token_env = "KVF_AGENT_TOKEN"; at least 16 characters
/// preload = ["db-password"]
/// preload_jitter = "1s"
/// max_connections = 256
/// request_timeout = "7s"           # default: the client's deadline plus a second
///
/// [agent.snapshot]
/// path = "/var/lib/kvf/lkg.snapshot"
/// key_file = "/etc/kvf/snapshot.key"  # or key_env; 64 hex digits (openssl rand -hex 32)
/// interval = "30s"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    #[serde(default)]
    listen: Option<SocketAddr>,
    #[serde(default)]
    socket: Option<PathBuf>,
    #[serde(default)]
    allow_non_loopback: bool,
    #[serde(default)]
    token_file: Option<PathBuf>,
    #[serde(default)]
    token_env: Option<String>,
    #[serde(default)]
    preload: Vec<String>,
    #[serde(default = "one_second", with = "humantime_serde")]
    preload_jitter: Duration,
    #[serde(default = "max_connections")]
    max_connections: usize,
    #[serde(default, with = "humantime_serde")]
    request_timeout: Option<Duration>,
    #[serde(default)]
    snapshot: Option<SnapshotConfig>,
    #[serde(default)]
    queue: Option<QueueConfig>,
    #[serde(default)]
    vault_api: Option<VaultApiConfig>,
    /// The directories `[[agent.file]]` may write in.
    #[serde(default)]
    file_dirs: Vec<PathBuf>,
    /// How often the files' secrets are compared with what the client holds (default 250 ms).
    #[serde(default = "quarter_second", with = "humantime_serde")]
    file_check: Duration,
    /// Files kept current.
    #[serde(default, rename = "file")]
    files: Vec<crate::output::FileConfig>,
    /// The configuration file's directory: relative paths are taken from it.
    #[serde(skip)]
    base: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotConfig {
    path: PathBuf,
    #[serde(default)]
    key_file: Option<PathBuf>,
    #[serde(default)]
    key_env: Option<String>,
    #[serde(default = "thirty_seconds", with = "humantime_serde")]
    interval: Duration,
    #[serde(default)]
    allow_key_beside_snapshot: bool,
}

/// `[agent.queue]`: Key Vault's events from an Azure Storage queue (Event Grid's Storage-queue
/// delivery).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(not(feature = "queue"), allow(dead_code))]
struct QueueConfig {
    /// The queue's URL, without a query.
    url: String,
    /// A file holding the queue's SAS token (read and process permissions), private to its owner.
    sas_file: PathBuf,
    /// How long a taken message stays invisible to others (default 30 s, 1 s to 10 min).
    #[serde(default = "thirty_seconds", with = "humantime_serde")]
    visibility_timeout: Duration,
    /// The wait between receives once the queue is empty, doubling to 5 s (default 1 s).
    #[serde(default = "one_second", with = "humantime_serde")]
    poll: Duration,
}

/// `[agent.vault_api]`: Key Vault's own REST API over HTTPS, for Microsoft's SDKs unchanged.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct VaultApiConfig {
    /// Where it listens (default `127.0.0.1:2781`; loopback unless `allow_non_loopback`).
    #[serde(default = "vault_api_listen")]
    listen: SocketAddr,
    /// The certificate chain (PEM) and its key; without them, a local CA and a leaf for
    /// `localhost`, `127.0.0.1` and `::1` are generated in `tls_dir`.
    #[serde(default)]
    cert_file: Option<PathBuf>,
    #[serde(default)]
    key_file: Option<PathBuf>,
    /// Where the generated CA is kept (default `agent-tls` beside the configuration file).
    #[serde(default)]
    tls_dir: Option<PathBuf>,
    /// The tenant the bearer challenge names (default `common`; with `entra`, its tenant).
    #[serde(default = "common_tenant")]
    tenant: String,
    /// The service's own Entra ID token as the bearer, verified by the agent.
    #[serde(default)]
    entra: Option<EntraConfig>,
}

/// `[agent.vault_api.entra]`: which tenant's tokens, from where its keys, and who may do what.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntraConfig {
    /// The tenant's id (a GUID): `tid`, and the issuer's.
    tenant_id: String,
    /// The tenant's signing keys (default its `discovery/v2.0/keys` on login.microsoftonline.com).
    #[serde(default)]
    jwks_url: Option<String>,
    /// The audiences taken (default Key Vault's resource URI and application id).
    #[serde(default = "key_vault_audiences")]
    audiences: Vec<String>,
    /// The clock skew allowed on `exp` and `nbf` (default 1 min, at most 5 min).
    #[serde(default = "one_minute", with = "humantime_serde")]
    skew: Duration,
    /// The callers allowed.
    #[serde(default, rename = "caller")]
    callers: Vec<CallerConfig>,
}

/// `[[agent.vault_api.entra.caller]]`: one service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CallerConfig {
    /// Its object id (`oid`) or application id (`appid`, `azp`).
    id: String,
    /// A name for logs (default the id).
    #[serde(default)]
    name: Option<String>,
    /// The secrets it may read (globs; `*` for all).
    secrets: Vec<String>,
    /// Whether it may write those secrets (default false).
    #[serde(default)]
    write: bool,
}

fn key_vault_audiences() -> Vec<String> {
    crate::entra::KEY_VAULT_AUDIENCES
        .iter()
        .map(|a| a.to_string())
        .collect()
}

fn one_minute() -> Duration {
    Duration::from_secs(60)
}

fn vault_api_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], DEFAULT_VAULT_API_PORT))
}

fn common_tenant() -> String {
    "common".into()
}

/// The Key Vault API's default port.
pub const DEFAULT_VAULT_API_PORT: u16 = 2781;

/// Where the Key Vault API's certificate comes from.
#[derive(Debug, Clone)]
pub(crate) enum TlsSource {
    /// The operator's chain and key (PEM files).
    Files { cert: PathBuf, key: PathBuf },
    /// A local CA kept in this private directory, and a leaf made at each start.
    Generated { dir: PathBuf },
}

/// `[agent.vault_api]`, resolved.
#[derive(Debug)]
pub(crate) struct VaultApiSettings {
    pub(crate) listen: SocketAddr,
    pub(crate) tls: TlsSource,
    pub(crate) tenant: String,
    pub(crate) entra: Option<crate::entra::EntraSettings>,
}

fn entra_settings(e: &EntraConfig) -> Result<crate::entra::EntraSettings, Error> {
    let callers = e
        .callers
        .iter()
        .map(|c| crate::access::Caller::new(&c.id, c.name.as_deref(), &c.secrets, c.write))
        .collect::<Result<Vec<_>, _>>()?;
    crate::entra::EntraSettings::new(
        &e.tenant_id,
        e.jwks_url.as_deref(),
        e.audiences.clone(),
        e.skew,
        callers,
    )
}

fn quarter_second() -> Duration {
    Duration::from_millis(250)
}

fn one_second() -> Duration {
    Duration::from_secs(1)
}
fn thirty_seconds() -> Duration {
    Duration::from_secs(30)
}
fn max_connections() -> usize {
    256
}

/// The agent's default port.
pub const DEFAULT_PORT: u16 = 2780;

fn config_error(message: String) -> Error {
    Error::new(Kind::Config, message)
}

impl AgentConfig {
    /// The client configuration and the `[agent]` table of the file at `path`.
    pub fn from_file(path: &Path) -> Result<(Config, AgentConfig), Error> {
        let (config, table) = Config::from_file_with(path, Some("agent"))?;
        // The table as parsed with the file: no second parse of its text.
        let mut agent = AgentConfig::from_table(table.unwrap_or_default())
            .map_err(|e| config_error(format!("{}: {e}", path.display())))?;
        agent.base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Ok((config, agent))
    }

    /// The `[agent]` table's contents (without the header), checked.
    pub fn from_toml(text: &str) -> Result<AgentConfig, Error> {
        let a: AgentConfig =
            toml::from_str(text).map_err(|e| config_error(format!("[agent]: {e}")))?;
        a.checked()
    }

    /// The `[agent]` table as the file's parse gave it, checked.
    pub fn from_table(table: toml::Table) -> Result<AgentConfig, Error> {
        let a: AgentConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| config_error(format!("[agent]: {}", e.message())))?;
        a.checked()
    }

    fn checked(self) -> Result<AgentConfig, Error> {
        let a = self;
        if a.max_connections == 0 || a.max_connections > 65_536 {
            return Err(config_error(
                "[agent] max_connections must be in 1..=65536".into(),
            ));
        }
        let hour = Duration::from_secs(3600);
        if a.preload_jitter > hour || a.request_timeout.is_some_and(|t| t.is_zero() || t > hour) {
            return Err(config_error(
                "[agent] preload_jitter and request_timeout must be at most 1 h (and the timeout > 0)"
                    .into(),
            ));
        }
        if a.preload.len() > 100_000 {
            return Err(config_error(
                "[agent] preload lists at most 100,000 names".into(),
            ));
        }
        // A name that cannot be a secret's would be skipped at every start without a word.
        for name in &a.preload {
            keyvault_failover::SecretName::new(name)
                .map_err(|e| config_error(format!("[agent] preload {name:?}: {e}")))?;
        }
        if let Some(s) = &a.snapshot {
            if s.interval < Duration::from_secs(1) || s.interval > Duration::from_secs(86_400) {
                return Err(config_error(
                    "[agent.snapshot] interval must be between 1 s and 24 h".into(),
                ));
            }
        }
        match (&a.listen, &a.socket) {
            (Some(_), Some(_)) => {
                return Err(config_error(
                    "[agent] set listen or socket, not both".into(),
                ))
            }
            #[cfg(not(unix))]
            (None, Some(_)) => {
                return Err(config_error(
                    "[agent] socket: Unix sockets need a Unix system".into(),
                ))
            }
            _ => {}
        }
        if let Some(v) = &a.vault_api {
            if !v.listen.ip().is_loopback() && !a.allow_non_loopback {
                return Err(config_error(format!(
                    "[agent.vault_api] listen {} is not a loopback address; set \
                     allow_non_loopback = true to serve secrets beyond this machine",
                    v.listen
                )));
            }
            if v.cert_file.is_some() != v.key_file.is_some() {
                return Err(config_error(
                    "[agent.vault_api] cert_file and key_file go together".into(),
                ));
            }
            let t = &v.tenant;
            if t.is_empty()
                || t.len() > 64
                || !t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            {
                return Err(config_error(format!(
                    "[agent.vault_api] tenant {t:?}: a tenant id or domain (letters, digits, '-', '.')"
                )));
            }
            if let Some(e) = &v.entra {
                if t != "common" && !t.eq_ignore_ascii_case(&e.tenant_id) {
                    return Err(config_error(format!(
                        "[agent.vault_api] tenant {t:?} is not [agent.vault_api.entra] tenant_id: \
                         the challenge names the tenant whose tokens are taken (leave tenant out)"
                    )));
                }
                // Checked now, so a bad entry fails the start, not the first request.
                entra_settings(e)?;
            }
        }
        if !(Duration::from_millis(10)..=Duration::from_secs(60)).contains(&a.file_check) {
            return Err(config_error(
                "[agent] file_check must be between 10 ms and 1 min".into(),
            ));
        }
        if a.files.len() > 1_000 {
            return Err(config_error(
                "[agent] at most 1,000 [[agent.file]] entries".into(),
            ));
        }
        if !a.files.is_empty() && a.file_dirs.is_empty() {
            return Err(config_error(
                "[[agent.file]] needs [agent] file_dirs: the directories files may be written in"
                    .into(),
            ));
        }
        if let Some(addr) = a.listen {
            if !addr.ip().is_loopback() && !a.allow_non_loopback {
                return Err(config_error(format!(
                    "[agent] listen {addr} is not a loopback address; set allow_non_loopback = \
                     true to serve secrets beyond this machine"
                )));
            }
        }
        Ok(a)
    }

    fn at_base(&self, p: &Path) -> PathBuf {
        if p.is_relative() {
            self.base.join(p)
        } else {
            p.to_path_buf()
        }
    }

    /// Where to listen (default `127.0.0.1:2780`).
    pub fn listen(&self) -> Listen {
        #[cfg(unix)]
        if let Some(p) = &self.socket {
            return Listen::Unix(self.at_base(p));
        }
        Listen::Tcp(
            self.listen
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT))),
        )
    }

    /// `[agent.vault_api]`, with its paths taken from the configuration file's directory.
    pub(crate) fn vault_api(&self) -> Result<Option<VaultApiSettings>, Error> {
        let Some(v) = self.vault_api.as_ref() else {
            return Ok(None);
        };
        let tls = match (&v.cert_file, &v.key_file) {
            (Some(c), Some(k)) => TlsSource::Files {
                cert: self.at_base(c),
                key: self.at_base(k),
            },
            _ => TlsSource::Generated {
                dir: self.at_base(v.tls_dir.as_deref().unwrap_or(Path::new("agent-tls"))),
            },
        };
        let entra = v.entra.as_ref().map(entra_settings).transpose()?;
        Ok(Some(VaultApiSettings {
            listen: v.listen,
            tls,
            tenant: match &entra {
                Some(e) => e.tenant().to_string(),
                None => v.tenant.clone(),
            },
            entra,
        }))
    }

    /// The `[[agent.file]]` entries, checked against `file_dirs` (paths from the
    /// configuration file's directory); two entries may not name one file.
    pub(crate) fn files(&self) -> Result<Vec<crate::output::FileSpec>, Error> {
        if self.files.is_empty() {
            return Ok(Vec::new());
        }
        let allowed = crate::output::allowed_dirs(&self.base, &self.file_dirs)?;
        let specs = self
            .files
            .iter()
            .map(|f| f.resolve(&self.base, &allowed))
            .collect::<Result<Vec<_>, _>>()?;
        let mut paths: Vec<&Path> = specs.iter().map(|s| s.path.as_path()).collect();
        paths.sort();
        if let Some(w) = paths.windows(2).find(|w| w[0] == w[1]) {
            return Err(config_error(format!(
                "[[agent.file]] {}: named by two entries",
                w[0].display()
            )));
        }
        Ok(specs)
    }

    pub(crate) fn file_check(&self) -> Duration {
        self.file_check
    }

    pub(crate) fn preload(&self) -> &[String] {
        &self.preload
    }
    pub(crate) fn preload_jitter(&self) -> Duration {
        self.preload_jitter
    }
    pub(crate) fn max_connections(&self) -> usize {
        self.max_connections
    }
    pub(crate) fn request_timeout(&self) -> Option<Duration> {
        self.request_timeout
    }

    /// The token from `token_file` or `token_env` (exactly one), at least 16 characters.
    pub(crate) fn read_token(&self) -> Result<Zeroizing<Vec<u8>>, Error> {
        let token = Zeroizing::new(match (&self.token_file, &self.token_env) {
            (Some(f), None) => {
                let f = self.at_base(f);
                let bad =
                    |m: String| config_error(format!("[agent] token_file {}: {m}", f.display()));
                // A regular file of at most 4 KiB (a FIFO or a device is refused at once),
                // private to its owner: a token every local user can read guards nothing.
                let bytes = keyvault_failover::files::read_bounded(&f, 4096)
                    .map_err(|e| bad(e.to_string()))?;
                keyvault_failover::files::check_private(&f).map_err(bad)?;
                String::from_utf8(bytes.to_vec()).map_err(|_| bad("not UTF-8 text".into()))?
            }
            (None, Some(var)) => std::env::var(var).map_err(|_| {
                config_error(format!(
                    "[agent] token_env: environment variable {var} is not set"
                ))
            })?,
            _ => {
                return Err(config_error(
                    "[agent] needs exactly one of token_file or token_env".into(),
                ))
            }
        });
        let token = Zeroizing::new(token.trim().as_bytes().to_vec());
        if token.len() < 16 {
            return Err(config_error(
                "[agent] the token must be at least 16 characters".into(),
            ));
        }
        Ok(token)
    }

    /// The event queue of `[agent.queue]`, if configured (its SAS token read now).
    #[cfg(feature = "queue")]
    pub(crate) fn queue(
        &self,
        timeout: Duration,
    ) -> Result<Option<crate::queue::QueueSource>, Error> {
        let Some(q) = &self.queue else {
            return Ok(None);
        };
        let f = self.at_base(&q.sas_file);
        let bad = |m: String| config_error(format!("[agent.queue] sas_file {}: {m}", f.display()));
        let bytes =
            keyvault_failover::files::read_bounded(&f, 4096).map_err(|e| bad(e.to_string()))?;
        keyvault_failover::files::check_private(&f).map_err(bad)?;
        let sas = secrecy::SecretString::from(
            String::from_utf8(bytes.to_vec()).map_err(|_| bad("not UTF-8 text".into()))?,
        );
        if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&q.visibility_timeout)
            || !(Duration::from_millis(10)..=Duration::from_secs(60)).contains(&q.poll)
        {
            return Err(config_error(
                "[agent.queue] visibility_timeout must be 1s to 10min and poll 10ms to 60s".into(),
            ));
        }
        crate::queue::QueueSource::new(&q.url, &sas, q.visibility_timeout, q.poll, timeout)
            .map(Some)
    }

    /// Without the `queue` feature, `[agent.queue]` is an error.
    #[cfg(not(feature = "queue"))]
    pub(crate) fn queue(
        &self,
        _timeout: Duration,
    ) -> Result<Option<std::convert::Infallible>, Error> {
        match &self.queue {
            None => Ok(None),
            Some(_) => Err(config_error(
                "[agent.queue]: this agent was built without the `queue` feature".into(),
            )),
        }
    }

    /// The sealed snapshot of `[agent.snapshot]`, if configured, and how often to save it.
    pub(crate) fn snapshot(&self) -> Result<Option<(Arc<Snapshot>, Duration)>, Error> {
        let Some(s) = &self.snapshot else {
            return Ok(None);
        };
        let mut b = Snapshot::builder(self.at_base(&s.path))
            .allow_key_beside_snapshot(s.allow_key_beside_snapshot);
        b = match (&s.key_file, &s.key_env) {
            (Some(f), None) => b.key_file(self.at_base(f)),
            (None, Some(v)) => b.key_env(v),
            _ => {
                return Err(config_error(
                    "[agent.snapshot] needs exactly one of key_file or key_env".into(),
                ))
            }
        };
        Ok(Some((Arc::new(b.build()?), s.interval)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 33, item 3: the `[agent]` table is taken from the file's one parse. Before, it
    /// was written back to text and parsed again, so an error quoted a line and a snippet of
    /// that regenerated text, not of the operator's file.
    #[test]
    fn the_agent_table_is_parsed_with_the_file() {
        let dir = std::env::temp_dir().join(format!("kvf-agent-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.toml");
        let client = "[[regions]]\nname = \"weu\"\nurl = \"https://app-weu.vault.azure.net\"\naccess = \"read-write\"\n";
        std::fs::write(&path, format!("{client}\n[agent]\nmax_connections = 8\n")).unwrap();
        let (config, agent) = AgentConfig::from_file(&path).unwrap();
        assert_eq!(config.regions().len(), 1);
        assert_eq!(agent.max_connections(), 8);
        std::fs::write(
            &path,
            format!("{client}\n[agent]\n# a comment\npreload = 5\n"),
        )
        .unwrap();
        let e = AgentConfig::from_file(&path).unwrap_err().to_string();
        assert!(e.contains("[agent]") && e.contains("invalid type"), "{e}");
        assert!(
            !e.contains("line"),
            "no line of a text the operator never wrote: {e}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
