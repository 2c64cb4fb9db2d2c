//! The bench's error: bad settings, or a part it drives (emulator, agent, client) refusing.

use std::fmt;

/// Why a bench could not run. Never holds a secret value.
#[derive(Debug)]
pub struct Error {
    kind: Kind,
    message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The bench was asked for something it does not do (a rate, a duration, a scenario).
    Config,
    /// A part it drives failed: the emulator, the agent, the client, the machine.
    Part,
}

impl Error {
    pub(crate) fn config(message: impl Into<String>) -> Self {
        Error {
            kind: Kind::Config,
            message: message.into(),
        }
    }

    pub(crate) fn part(message: impl Into<String>) -> Self {
        Error {
            kind: Kind::Part,
            message: message.into(),
        }
    }

    /// The bench's settings are wrong: an unknown scenario, a rate or duration out of range.
    pub fn is_config(&self) -> bool {
        self.kind == Kind::Config
    }

    /// A part the bench drives failed: the emulator, the agent, the client or the machine.
    pub fn is_part(&self) -> bool {
        self.kind == Kind::Part
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

macro_rules! from_part {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::part(e.to_string())
            }
        }
    )*};
}
from_part!(
    keyvault_failover::Error,
    keyvault_failover_emulator::Error,
    keyvault_failover_agent::Error
);
