//! Files kept current (`[[agent.file]]`): for programs that read their secrets from a file
//! (nginx's certificate key, a `.env`, a JSON document), each entry's content, one secret's
//! value or a template over several, written where the entry says and kept current.
//!
//! * At start every file is rendered from what the client holds (a restored snapshot too), so
//!   a service starting during a total outage finds its files. A template that does not
//!   compile, or names a secret that does not exist, fails the start: no file half-written.
//! * Each write is atomic ([`write_atomically`]: a new temporary file created exclusively in
//!   the target's directory, owner, group and mode set, fsync, rename, directory fsync), and
//!   happens only when the content changed (a restart with the same values writes nothing).
//! * Every `file_check` (250 ms by default) the versions each file was rendered from are
//!   compared with what the client holds (no vault traffic): a rotation the client saw
//!   (refresh, event, write) renders the file again. A file written from stale values, or not
//!   yet written, is tried again every 5 s.
//! * After each change the entry's command runs once (argv, no shell; killed at its timeout);
//!   its status and output are logged, failures counted (`/metrics`) and shown in health.

mod command;
mod entry;
mod template;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyvault_failover::files::{write_atomically, WriteOptions};
use keyvault_failover::FailoverClient;
use secrecy::zeroize::Zeroizing;
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

pub(crate) use command::Command;
pub(crate) use entry::{allowed_dirs, FileConfig};
pub(crate) use template::Source;
use template::{RenderError, MAX_OUTPUT};

use crate::error::{Error, Kind};

/// How often a file not current (pending, stale, failed) is tried again.
const RETRY: Duration = Duration::from_secs(5);
/// The most secrets one file may name.
const MAX_SECRETS: usize = 1_000;

/// One `[[agent.file]]`, checked.
#[derive(Debug)]
pub(crate) struct FileSpec {
    pub(crate) path: PathBuf,
    pub(crate) source: Source,
    pub(crate) write: WriteOptions,
    pub(crate) command: Option<Command>,
}

/// Where a file stands, as health shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum FileState {
    /// Never written: a secret it needs could not be read (and none is held).
    Pending,
    /// Written from values fresh from a vault.
    Current,
    /// Written from held values served stale (no vault answered).
    Stale,
    /// The last render or write failed; the file holds what it held before.
    Failed,
}

/// A file's health: where it stands, the last error, its counts.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct FileHealth {
    path: String,
    state: FileState,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    writes: u64,
    command_failures: u64,
}

/// The files' health, shared with the health endpoint.
pub(crate) type Health = Arc<Mutex<Vec<FileHealth>>>;

struct Tracked {
    spec: FileSpec,
    /// The secrets (lower-cased names) and versions the content was rendered from.
    deps: crate::given::Given,
    /// The content's digest on disk (at start, the existing file's).
    digest: Option<[u8; 32]>,
    state: FileState,
    error: Option<String>,
    writes: u64,
    command_failures: u64,
    tried: Instant,
    /// The content changed and its command has not run yet (at start, the first tick runs
    /// it: a slow command never holds the agent's start up).
    command_due: bool,
    /// The command running now (one at a time per file; others' files go on meanwhile).
    running: Option<tokio::task::JoinHandle<command::Outcome>>,
}

/// Why a file could not be rendered.
enum Gather {
    /// A secret it names does not exist, or the template is wrong: a configuration error.
    Wrong(String),
    /// A secret could not be read (no vault answered and none is held).
    Unavailable(String),
}

/// What one render read: each secret's value (lower-cased name), version and staleness.
type Read = HashMap<String, (SecretString, String, bool)>;

/// Renders `source`, reading each secret it names through the client (a held value, fresh or
/// served stale, or a vault's).
async fn gather(
    client: &FailoverClient,
    source: &Source,
) -> Result<(Zeroizing<Vec<u8>>, Read), Gather> {
    let mut read: Read = HashMap::new();
    loop {
        let values: HashMap<String, SecretString> = read
            .iter()
            .map(|(k, (v, _, _))| (k.clone(), v.clone()))
            .collect();
        let missing = match template::render(source, Arc::new(values)) {
            Ok(content) => return Ok((content, read)),
            Err(RenderError::Invalid(m)) => return Err(Gather::Wrong(m)),
            Err(RenderError::Missing(names)) => names,
        };
        if read.len() + missing.len() > MAX_SECRETS {
            return Err(Gather::Wrong(format!(
                "the template names more than {MAX_SECRETS} secrets"
            )));
        }
        for name in missing {
            let key = name.to_ascii_lowercase();
            if read.contains_key(&key) {
                // Named again after being read: the render cannot make progress.
                return Err(Gather::Wrong(format!("secret {name:?} could not be used")));
            }
            match client.get_secret(&name).await {
                Ok(s) => {
                    let v = SecretString::from(s.expose().to_string());
                    read.insert(key, (v, s.version().to_string(), s.is_stale()));
                }
                Err(e) if e.is_not_found() => {
                    return Err(Gather::Wrong(format!("secret {name} does not exist")))
                }
                Err(e) if e.is_invalid_name() => return Err(Gather::Wrong(e.to_string())),
                Err(e) => {
                    return Err(Gather::Unavailable(format!(
                        "secret {name} could not be read: {e}"
                    )))
                }
            }
        }
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The digest of what is at `path` now, if it is a regular file of ours with the mode the
/// entry asks (else `None`: the next render writes it).
fn on_disk(path: &Path, write: &WriteOptions) -> Option<[u8; 32]> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::symlink_metadata(path).ok()?;
        if !meta.is_file() || meta.permissions().mode() & 0o777 != write.permissions() {
            return None;
        }
    }
    let bytes = keyvault_failover::files::read_bounded(path, MAX_OUTPUT as u64).ok()?;
    Some(digest(&bytes))
}

struct Counters {
    writes: opentelemetry::metrics::Counter<u64>,
    write_failures: opentelemetry::metrics::Counter<u64>,
    command_failures: opentelemetry::metrics::Counter<u64>,
}

impl Counters {
    fn new() -> Counters {
        let m = opentelemetry::global::meter("keyvault-failover-agent");
        Counters {
            writes: m
                .u64_counter("keyvault_failover.agent.file.writes")
                .with_description("Files written because their content changed.")
                .build(),
            write_failures: m
                .u64_counter("keyvault_failover.agent.file.failures")
                .with_description("Renders or writes of a file that failed (the file kept).")
                .build(),
            command_failures: m
                .u64_counter("keyvault_failover.agent.file.command_failures")
                .with_description("Change commands that failed, timed out or did not start.")
                .build(),
        }
    }
}

/// The files, their state, and the health they publish.
pub(crate) struct Files {
    tracked: Vec<Tracked>,
    health: Health,
    check_every: Duration,
    counters: Counters,
}

impl Files {
    /// Renders and writes every file from what `client` holds or can read now. A template
    /// that does not compile or names a secret that does not exist is an error (nothing is
    /// written for it); a secret no vault gives leaves its file pending.
    pub(crate) async fn start(
        specs: Vec<FileSpec>,
        client: &FailoverClient,
        check_every: Duration,
    ) -> Result<Files, Error> {
        for s in &specs {
            template::check(&s.source).map_err(|m| {
                Error::new(
                    Kind::Config,
                    format!("[[agent.file]] {}: {m}", s.path.display()),
                )
            })?;
        }
        let now = Instant::now();
        let mut files = Files {
            tracked: specs
                .into_iter()
                .map(|spec| Tracked {
                    digest: on_disk(&spec.path, &spec.write),
                    spec,
                    deps: Default::default(),
                    state: FileState::Pending,
                    error: None,
                    writes: 0,
                    command_failures: 0,
                    tried: now,
                    command_due: false,
                    running: None,
                })
                .collect(),
            health: Arc::new(Mutex::new(Vec::new())),
            check_every,
            counters: Counters::new(),
        };
        for i in 0..files.tracked.len() {
            if let Err(m) = files.pass(i, client).await {
                let path = files.tracked[i].spec.path.display().to_string();
                return Err(Error::new(
                    Kind::Config,
                    format!("[[agent.file]] {path}: {m}"),
                ));
            }
        }
        files.publish();
        Ok(files)
    }

    /// The health the files publish.
    pub(crate) fn health(&self) -> Health {
        self.health.clone()
    }

    fn publish(&self) {
        let h = self
            .tracked
            .iter()
            .map(|t| FileHealth {
                path: t.spec.path.display().to_string(),
                state: t.state,
                error: t.error.clone(),
                writes: t.writes,
                command_failures: t.command_failures,
            })
            .collect();
        *self.health.lock().unwrap_or_else(|p| p.into_inner()) = h;
    }

    /// Renders file `i` and writes it if its content changed; `Err` only for what the
    /// configuration got wrong (a template, a secret that does not exist).
    async fn pass(&mut self, i: usize, client: &FailoverClient) -> Result<(), String> {
        let t = &mut self.tracked[i];
        t.tried = Instant::now();
        let (content, read) = match gather(client, &t.spec.source).await {
            Ok(r) => r,
            Err(Gather::Wrong(m)) => {
                t.state = FileState::Failed;
                t.error = Some(m.clone());
                self.counters.write_failures.add(1, &[]);
                return Err(m);
            }
            Err(Gather::Unavailable(m)) => {
                tracing::warn!(path = %t.spec.path.display(), error = %m, "file not rendered; what it holds is kept");
                t.state = if t.writes > 0 || t.digest.is_some() {
                    FileState::Stale
                } else {
                    FileState::Pending
                };
                t.error = Some(m);
                return Ok(());
            }
        };
        let stale = read.values().any(|(_, _, s)| *s);
        let deps: Vec<(String, String)> = read
            .into_iter()
            .map(|(k, (_, version, _))| (k, version))
            .collect();
        let d = digest(&content);
        if t.digest != Some(d) {
            let (path, write) = (t.spec.path.clone(), t.spec.write);
            let written =
                tokio::task::spawn_blocking(move || write_atomically(&path, &content, &write))
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
            if let Err(e) = written {
                tracing::warn!(path = %t.spec.path.display(), error = %e, "file not written; the previous one is intact");
                t.state = FileState::Failed;
                t.error = Some(format!("not written: {e}"));
                self.counters.write_failures.add(1, &[]);
                return Ok(());
            }
            t.digest = Some(d);
            t.writes += 1;
            self.counters.writes.add(1, &[]);
            tracing::info!(path = %t.spec.path.display(), "file written");
            t.command_due = t.spec.command.is_some();
        }
        t.deps = crate::given::Given::new(deps);
        t.state = if stale {
            FileState::Stale
        } else {
            FileState::Current
        };
        t.error = None;
        Ok(())
    }

    /// File `i`'s command: the outcome of a run that ended taken (logged, counted), and a run
    /// started if its content changed since it last ran and none is running. Whether its
    /// health changed.
    async fn command(&mut self, i: usize) -> bool {
        let t = &mut self.tracked[i];
        let Some(c) = t.spec.command.clone() else {
            return false;
        };
        let mut changed = false;
        let finished = t.running.as_ref().is_some_and(|r| r.is_finished());
        if let Some(run) = t.running.take_if(|_| finished) {
            // Finished: ready at once.
            let o = run.await.unwrap_or_else(|e| command::Outcome {
                ended: command::Ended::NotStarted(e.to_string()),
                output: String::new(),
            });
            let output = crate::http::cut(o.output.trim_end(), 2048).to_string();
            if o.ok() {
                tracing::info!(path = %t.spec.path.display(), program = %c.program(), output = %output, "change command done");
            } else {
                t.command_failures += 1;
                self.counters.command_failures.add(1, &[]);
                tracing::warn!(path = %t.spec.path.display(), program = %c.program(), ended = ?o.ended, output = %output, "change command failed");
            }
            changed = true;
        }
        if t.command_due && t.running.is_none() {
            t.command_due = false;
            t.running = Some(tokio::spawn(async move { c.run().await }));
        }
        changed
    }

    /// Keeps the files current until the task is stopped.
    pub(crate) async fn run(mut self, client: FailoverClient) {
        let mut tick = tokio::time::interval(self.check_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // The first tick is at once: the commands of the files written at start run.
            tick.tick().await;
            let now = Instant::now();
            let mut any = false;
            for i in 0..self.tracked.len() {
                let t = &self.tracked[i];
                let retry = t.state != FileState::Current
                    && now.saturating_duration_since(t.tried) >= RETRY;
                if retry || (t.state != FileState::Pending && self.tracked[i].deps.rotated(&client))
                {
                    if let Err(m) = self.pass(i, &client).await {
                        tracing::warn!(path = %self.tracked[i].spec.path.display(), error = %m, "file not rendered; what it holds is kept");
                    }
                    any = true;
                }
                any |= self.command(i).await;
            }
            if any {
                self.publish();
            }
        }
    }
}
