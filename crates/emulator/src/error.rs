//! The emulator's error: bad settings, or the machine refusing a port, a file or TLS.

use std::fmt;

/// What went wrong starting or driving the emulator. Never holds a secret value.
#[derive(Debug)]
pub struct Error {
    kind: Kind,
    message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The emulator was asked for something it cannot be (no vaults, a vault twice).
    Config,
    /// The machine said no: a port, a file, a socket.
    Io,
    /// The test certificate authority or the TLS set-up failed.
    Tls,
}

impl Error {
    pub(crate) fn config(message: impl Into<String>) -> Self {
        Error {
            kind: Kind::Config,
            message: message.into(),
        }
    }

    pub(crate) fn io(message: impl Into<String>) -> Self {
        Error {
            kind: Kind::Io,
            message: message.into(),
        }
    }

    pub(crate) fn tls(message: impl Into<String>) -> Self {
        Error {
            kind: Kind::Tls,
            message: message.into(),
        }
    }

    /// The emulator's settings are wrong (no vault, a vault named twice, an unknown vault).
    pub fn is_config(&self) -> bool {
        self.kind == Kind::Config
    }

    /// The machine refused: a port could not be bound, a file could not be written.
    pub fn is_io(&self) -> bool {
        self.kind == Kind::Io
    }

    /// The certificate authority, a certificate or the TLS configuration failed.
    pub fn is_tls(&self) -> bool {
        self.kind == Kind::Tls
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<keyvault_failover::Error> for Error {
    fn from(e: keyvault_failover::Error) -> Self {
        Error::config(e.to_string())
    }
}
