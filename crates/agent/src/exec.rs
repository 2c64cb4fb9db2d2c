//! A program started with secrets in its environment (`keyvault-failover run`), for services
//! that read `$DB_PASSWORD` at start: the values are read through the failover client (its
//! regions, last-known-good values and the sealed snapshot of `[agent.snapshot]`), the
//! program is started with them, SIGTERM, SIGINT and SIGHUP are forwarded to it, and its exit
//! status becomes ours. On a rotation the client sees (its background refresh, or events from
//! `[agent.queue]`), it does what [`OnChange`] says.
//!
//! ```no_run
//! # async fn f() -> Result<(), keyvault_failover_agent::Error> {
//! use keyvault_failover_agent::exec::{Exec, OnChange};
//! let exec = Exec::builder("agent.toml")
//!     .env("DB_PASSWORD", "db-password")?
//!     .on_change(OnChange::Restart)
//!     .program(["my-service", "--port", "8080"])?
//!     .build()?;
//! let code = exec.run().await?; // the program's exit status
//! # let _ = code; Ok(()) }
//! ```
//!
//! Values never appear in this process's arguments, logs or errors (they are in the child's
//! environment, where the program asked for them).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use keyvault_failover::{FailoverClient, Snapshot};
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

use crate::config::AgentConfig;
use crate::error::{Error, Kind};

/// How often the values' versions are compared with what the client holds.
const CHECK: Duration = Duration::from_millis(250);
/// The longest grace period.
const MAX_GRACE: Duration = Duration::from_secs(600);

/// What a rotation of one of the program's secrets does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnChange {
    /// Nothing: the program keeps the values it started with.
    Nothing,
    /// This signal is sent to the program (it re-reads what it reads from elsewhere).
    Signal(i32),
    /// SIGTERM, the grace period, SIGKILL if it is still running, then a new start with the
    /// new values.
    Restart,
}

impl std::str::FromStr for OnChange {
    type Err = Error;

    /// `none`, `restart`, or `signal:NAME` (`HUP`, `USR1`, `USR2`, `INT`, `TERM`, `QUIT`).
    fn from_str(s: &str) -> Result<Self, Error> {
        let signal = |n: &str| -> Option<i32> {
            Some(match n.trim_start_matches("SIG") {
                "HUP" => libc::SIGHUP,
                "USR1" => libc::SIGUSR1,
                "USR2" => libc::SIGUSR2,
                "INT" => libc::SIGINT,
                "TERM" => libc::SIGTERM,
                "QUIT" => libc::SIGQUIT,
                _ => return None,
            })
        };
        match s {
            "none" => Ok(OnChange::Nothing),
            "restart" => Ok(OnChange::Restart),
            _ => s
                .strip_prefix("signal:")
                .and_then(|n| signal(&n.to_ascii_uppercase()))
                .map(OnChange::Signal)
                .ok_or_else(|| {
                    Error::new(
                        Kind::Config,
                        format!(
                            "--on-change {s:?}: none, restart, or signal:HUP (USR1, USR2, INT, TERM, QUIT)"
                        ),
                    )
                }),
        }
    }
}

/// Builds an [`Exec`]; each step checks what it is given.
#[derive(Debug)]
pub struct ExecBuilder {
    config: PathBuf,
    env: Vec<(String, String)>,
    argv: Vec<OsString>,
    on_change: OnChange,
    grace: Duration,
}

/// A program to run with secrets in its environment. See the [module](self).
pub struct Exec {
    client: FailoverClient,
    snapshot: Option<(Arc<Snapshot>, Duration)>,
    #[cfg(feature = "queue")]
    queue: Option<crate::queue::QueueSource>,
    env: Vec<(String, String)>,
    argv: Vec<OsString>,
    on_change: OnChange,
    grace: Duration,
}

impl std::fmt::Debug for Exec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exec")
            .field("env", &self.env)
            .field("program", &self.argv.first())
            .field("on_change", &self.on_change)
            .finish_non_exhaustive()
    }
}

fn config_error(m: String) -> Error {
    Error::new(Kind::Config, m)
}

impl Exec {
    /// A builder over the configuration file at `config` (the client's, with an optional
    /// `[agent]` table whose `snapshot` and `queue` are used; no token is needed).
    pub fn builder(config: impl AsRef<Path>) -> ExecBuilder {
        ExecBuilder {
            config: config.as_ref().to_path_buf(),
            env: Vec::new(),
            argv: Vec::new(),
            on_change: OnChange::Nothing,
            grace: Duration::from_secs(10),
        }
    }
}

impl ExecBuilder {
    /// The environment variable `name` holds the secret `secret`.
    ///
    /// # Errors
    /// [`Error::is_config`] for a variable name that is not `[A-Za-z_][A-Za-z0-9_]*`, an
    /// invalid secret name, or a variable given twice.
    pub fn env(mut self, name: &str, secret: &str) -> Result<Self, Error> {
        let ok = name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && name.len() <= 256
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok {
            return Err(config_error(format!(
                "--env {:?}: a variable name is letters, digits and '_', not starting with a digit",
                name.chars().take(64).collect::<String>()
            )));
        }
        keyvault_failover::SecretName::new(secret)
            .map_err(|e| config_error(format!("--env {name}={secret}: {e}")))?;
        if self.env.iter().any(|(n, _)| n == name) {
            return Err(config_error(format!("--env {name}: given twice")));
        }
        self.env.push((name.to_string(), secret.to_string()));
        Ok(self)
    }

    /// `NAME=SECRET`, as the command line gives it.
    pub fn env_pair(self, pair: &str) -> Result<Self, Error> {
        let Some((name, secret)) = pair.split_once('=') else {
            return Err(config_error(format!(
                "--env {:?}: NAME=SECRET",
                pair.chars().take(64).collect::<String>()
            )));
        };
        self.env(name, secret)
    }

    /// What a rotation does (default [`OnChange::Nothing`]).
    pub fn on_change(mut self, on_change: OnChange) -> Self {
        self.on_change = on_change;
        self
    }

    /// How long the program has between SIGTERM and SIGKILL (default 10 s, at most 10 min).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// The program and its arguments (no shell).
    ///
    /// # Errors
    /// [`Error::is_config`] when it is empty.
    pub fn program<I, S>(mut self, argv: I) -> Result<Self, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.argv = argv.into_iter().map(Into::into).collect();
        if self.argv.is_empty() {
            return Err(config_error("no program to run: give it after --".into()));
        }
        Ok(self)
    }

    /// Reads the configuration and connects the client (nothing is read from a vault yet).
    ///
    /// # Errors
    /// [`Error::is_config`] for the configuration, no `--env`, no program or a grace period
    /// over 10 minutes.
    pub fn build(self) -> Result<Exec, Error> {
        if self.env.is_empty() {
            return Err(config_error("give at least one --env NAME=SECRET".into()));
        }
        if self.argv.is_empty() {
            return Err(config_error("no program to run: give it after --".into()));
        }
        if self.grace > MAX_GRACE {
            return Err(config_error("--grace: at most 10 minutes".into()));
        }
        let (client_config, agent) = AgentConfig::from_file(&self.config)?;
        let snapshot = agent.snapshot()?;
        #[allow(unused_variables)]
        let queue = agent.queue(client_config.attempt_timeout())?;
        let client = keyvault_failover::azure::connect_with_config(client_config)?;
        Ok(Exec {
            client,
            snapshot,
            #[cfg(feature = "queue")]
            queue,
            env: self.env,
            argv: self.argv,
            on_change: self.on_change,
            grace: self.grace,
        })
    }
}

/// The values read for one start, and the versions they came from.
struct Values {
    pairs: Vec<(String, SecretString)>,
    versions: crate::given::Given,
}

/// Where the child stands.
enum Phase {
    Running,
    /// Told to stop for a restart; killed at the deadline.
    Restarting(Instant),
    /// Told to stop because we were; killed at the deadline; then we exit with its status.
    Stopping(Instant),
}

impl Exec {
    /// The client the values are read through.
    pub fn client(&self) -> &FailoverClient {
        &self.client
    }

    async fn read(&self) -> Result<Values, Error> {
        let mut pairs = Vec::new();
        let mut versions = Vec::new();
        for (var, name) in &self.env {
            match self.client.get_secret(name).await {
                Ok(s) => {
                    if s.is_stale() {
                        tracing::warn!(secret = %name, age_s = s.age().as_secs(), "no vault answered: the held value is used");
                    }
                    pairs.push((var.clone(), SecretString::from(s.expose().to_string())));
                    versions.push((name.clone(), s.version().to_string()));
                }
                Err(e) => {
                    return Err(Error::new(
                        Kind::Unreadable,
                        format!(
                            "secret {name} (for {var}) could not be read, and none is held: {e}"
                        ),
                    ))
                }
            }
        }
        Ok(Values {
            pairs,
            versions: crate::given::Given::new(versions),
        })
    }

    fn spawn(&self, values: &Values) -> Result<tokio::process::Child, Error> {
        let mut c = tokio::process::Command::new(&self.argv[0]);
        c.args(&self.argv[1..]);
        for (var, v) in &values.pairs {
            c.env(var, v.expose_secret());
        }
        c.spawn().map_err(|e| {
            Error::new(
                Kind::Config,
                format!("{}: cannot start: {e}", self.argv[0].to_string_lossy()),
            )
        })
    }

    /// Reads every value (a secret that can neither be read nor restored: an error, and the
    /// program is not started), starts the program, and supervises it until it exits; its
    /// exit status (128 + the signal if a signal ended it).
    ///
    /// # Errors
    /// [`Error::is_unreadable`] when a value cannot be had, [`Error::is_config`] when the
    /// program cannot be started, [`Error::is_snapshot`] when the snapshot's directory is
    /// not writable.
    pub async fn run(mut self) -> Result<i32, Error> {
        use tokio::signal::unix::{signal, SignalKind};
        if let Some(Err(e)) = crate::restore(&mut self.snapshot, &self.client).await? {
            tracing::warn!(error = %e, "snapshot refused; starting without it");
        }
        let mut background = tokio::task::JoinSet::new();
        #[cfg(feature = "queue")]
        if let Some(q) = self.queue.take() {
            background.spawn(q.run(self.client.clone()));
        }
        let values = self.read().await?;
        if let Some((snap, every)) = self.snapshot.clone() {
            // Saved now, so a start during a later outage finds these values.
            crate::save(&snap, &self.client).await;
            let c = self.client.clone();
            background.spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    crate::save(&snap, &c).await;
                }
            });
        }
        let sig = |k: SignalKind| {
            signal(k).map_err(|e| Error::new(Kind::Config, format!("signals: {e}")))
        };
        let (mut term, mut int, mut hup) = (
            sig(SignalKind::terminate())?,
            sig(SignalKind::interrupt())?,
            sig(SignalKind::hangup())?,
        );
        let mut child = self.spawn(&values)?;
        let mut versions = values.versions;
        drop(values.pairs);
        let mut phase = Phase::Running;
        let mut tick = tokio::time::interval(CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let send = |child: &tokio::process::Child, s: i32| {
            if let Some(pid) = child.id() {
                // SAFETY: kill has no memory preconditions; the pid is our child's, not
                // yet reaped (`id` is None once it has been).
                unsafe { libc::kill(pid as libc::pid_t, s) };
            }
        };
        let code = loop {
            let deadline = match phase {
                Phase::Restarting(d) | Phase::Stopping(d) => Some(d),
                Phase::Running => None,
            };
            tokio::select! {
                status = child.wait() => {
                    let status = status.map_err(|e| Error::new(Kind::Config, format!("waiting for the program: {e}")))?;
                    if let Phase::Restarting(_) = phase {
                        // The new values (a vault's, or held ones); if none can be had, the
                        // ones it ran with.
                        let values = match self.read().await {
                            Ok(v) => v,
                            Err(e) => {
                                tracing::warn!(error = %e, "restart: a value could not be read; the program stays stopped");
                                break exit_code(status);
                            }
                        };
                        child = self.spawn(&values)?;
                        versions = values.versions;
                        phase = Phase::Running;
                        tracing::info!("program restarted with the new values");
                        continue;
                    }
                    break exit_code(status);
                }
                _ = term.recv() => {
                    send(&child, libc::SIGTERM);
                    phase = Phase::Stopping(Instant::now() + self.grace);
                }
                _ = int.recv() => {
                    send(&child, libc::SIGINT);
                    phase = Phase::Stopping(Instant::now() + self.grace);
                }
                _ = hup.recv() => send(&child, libc::SIGHUP),
                _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)).await }, if deadline.is_some() => {
                    tracing::warn!(grace_s = self.grace.as_secs_f64(), "the program outlived its grace period: killed");
                    let _ = child.start_kill();
                    // Killed: wait without a deadline (SIGKILL cannot be ignored).
                    phase = match phase {
                        Phase::Restarting(_) => Phase::Restarting(Instant::now() + MAX_GRACE),
                        _ => Phase::Stopping(Instant::now() + MAX_GRACE),
                    };
                }
                _ = tick.tick(), if matches!(phase, Phase::Running) => {
                    if !versions.rotated(&self.client) {
                        continue;
                    }
                    match self.on_change {
                        OnChange::Nothing => {
                            tracing::info!("a secret rotated; the program keeps the values it started with (--on-change none)");
                            versions.catch_up(&self.client);
                        }
                        OnChange::Signal(s) => {
                            tracing::info!(signal = s, "a secret rotated: the program signalled");
                            send(&child, s);
                            versions.catch_up(&self.client);
                        }
                        OnChange::Restart => {
                            tracing::info!("a secret rotated: the program is restarted");
                            send(&child, libc::SIGTERM);
                            phase = Phase::Restarting(Instant::now() + self.grace);
                        }
                    }
                }
            }
        };
        background.shutdown().await;
        if let Some((snap, _)) = &self.snapshot {
            crate::save(snap, &self.client).await;
        }
        Ok(code)
    }
}

/// The status a shell would give: the exit code, or 128 + the signal that ended it.
fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_change_is_parsed() {
        assert_eq!("none".parse::<OnChange>().unwrap(), OnChange::Nothing);
        assert_eq!("restart".parse::<OnChange>().unwrap(), OnChange::Restart);
        assert_eq!(
            "signal:hup".parse::<OnChange>().unwrap(),
            OnChange::Signal(libc::SIGHUP)
        );
        assert_eq!(
            "signal:SIGUSR1".parse::<OnChange>().unwrap(),
            OnChange::Signal(libc::SIGUSR1)
        );
        for bad in ["", "signal:", "signal:KILL", "reload"] {
            assert!(bad.parse::<OnChange>().unwrap_err().is_config(), "{bad}");
        }
    }

    #[test]
    fn variables_and_programs_are_checked() {
        let b = || Exec::builder("x.toml");
        for bad in ["", "1A", "A-B", "A B", "A=B"] {
            assert!(b().env(bad, "s").unwrap_err().is_config(), "{bad:?}");
        }
        assert!(b().env("A", "bad name!").is_err());
        assert!(b().env("A", "s").unwrap().env("A", "t").is_err());
        assert!(b().env_pair("NOEQUALS").is_err());
        assert!(b().env_pair("A=s").is_ok());
        assert!(b().program(Vec::<String>::new()).is_err());
        let e = b().program(["true"]).unwrap().build().unwrap_err();
        assert!(e.to_string().contains("--env"), "{e}");
        let e = b()
            .env("A", "s")
            .unwrap()
            .program(["true"])
            .unwrap()
            .grace(Duration::from_secs(3600))
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("grace"), "{e}");
    }

    #[test]
    fn exit_codes_are_a_shells() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(
            exit_code(std::process::ExitStatus::from_raw(libc::SIGKILL)),
            137
        );
    }
}
