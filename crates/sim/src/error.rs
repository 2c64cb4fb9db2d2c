//! The simulator's error: a scenario it cannot run.

use std::fmt;

/// Why a scenario could not be run. Never holds a secret value.
#[derive(Debug)]
pub struct Error {
    kind: Kind,
    message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The scenario (or the client settings in it) is wrong.
    Config,
    /// The machine could not run it (a runtime or a thread).
    Runtime,
}

impl Error {
    pub(crate) fn config(message: impl Into<String>) -> Self {
        Error {
            kind: Kind::Config,
            message: message.into(),
        }
    }

    pub(crate) fn runtime(message: impl Into<String>) -> Self {
        Error {
            kind: Kind::Runtime,
            message: message.into(),
        }
    }

    /// The scenario is wrong: its TOML, a value out of range, the client settings in it.
    pub fn is_config(&self) -> bool {
        self.kind == Kind::Config
    }

    /// The simulation could not run: its runtime could not be built or a thread panicked.
    pub fn is_runtime(&self) -> bool {
        self.kind == Kind::Runtime
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// The client refused the scenario's settings (its `[client]` table, a store missing): the
/// scenario is what is wrong.
impl From<keyvault_failover::Error> for Error {
    fn from(e: keyvault_failover::Error) -> Self {
        Error::config(e.to_string())
    }
}
