//! The agent's error: its settings, its listener, its snapshot, or the client under it.

use std::fmt;

/// Why the agent could not start or serve. Never holds a secret value or a token.
#[derive(Debug)]
pub struct Error {
    kind: Kind,
    message: String,
    client: Option<keyvault_failover::Error>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The `[agent]` table, the token or the client configuration is wrong.
    Config,
    /// The listener could not be opened (a port, a socket path).
    Listen,
    /// The sealed snapshot could not be read or written.
    Snapshot,
    /// A secret a program needs could neither be read nor restored (`run`).
    Unreadable,
    /// The client refused (any other of its errors).
    Client,
}

impl Error {
    pub(crate) fn new(kind: Kind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            client: None,
        }
    }

    /// The agent's settings are wrong: the `[agent]` table, the token file, the client's file.
    pub fn is_config(&self) -> bool {
        self.kind == Kind::Config
    }

    /// The listener could not be opened: the port is taken, the socket path is held.
    pub fn is_listen(&self) -> bool {
        self.kind == Kind::Listen
    }

    /// The sealed snapshot was refused (wrong key, tampered, unreadable).
    pub fn is_snapshot(&self) -> bool {
        self.kind == Kind::Snapshot
    }

    /// A secret a program needs could neither be read from a vault nor restored (`run` then
    /// does not start the program).
    pub fn is_unreadable(&self) -> bool {
        self.kind == Kind::Unreadable
    }

    /// The client's own error, when the client refused.
    pub fn client(&self) -> Option<&keyvault_failover::Error> {
        self.client.as_ref()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.client.as_ref().and_then(|e| e.source())
    }
}

impl From<keyvault_failover::Error> for Error {
    fn from(e: keyvault_failover::Error) -> Self {
        let kind = if e.is_config() {
            Kind::Config
        } else if e.is_snapshot() {
            Kind::Snapshot
        } else {
            Kind::Client
        };
        Error {
            kind,
            message: e.to_string(),
            client: Some(e),
        }
    }
}
