//! Outcome classification: how one vault call failed, and what that tells the vault's breaker.
//!
//! ```
//! use keyvault_failover_core::breaker::Outcome;
//! use keyvault_failover_core::outcome::StoreErrorKind;
//! assert_eq!(StoreErrorKind::Timeout.verdict(), Outcome::Failure);
//! assert_eq!(StoreErrorKind::NotFound.verdict(), Outcome::NotRecorded, "an answer");
//! assert_eq!(StoreErrorKind::Auth { status: 403 }.label(), "auth");
//! ```

use std::fmt;
use std::time::Duration;

use crate::breaker::Outcome;

/// How one vault call failed. Decides breaker, routing and retry behaviour: connection
/// failures, timeouts, 5xx and malformed answers count against the vault's breaker; 429,
/// 401/403, 404 and other 4xx are answers (the vault is alive), recorded on no breaker
/// ([`StoreErrorKind::verdict`]; the library's `tests/classification.rs` checks what each does).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The connection was refused or could not be made.
    Connect,
    /// The connection was reset or closed mid-request.
    Reset,
    /// The attempt did not finish within its timeout.
    Timeout,
    /// The vault answered 5xx or 408.
    Server {
        /// HTTP status.
        status: u16,
    },
    /// The vault answered 429. Not an outage: the vault is alive but over its limit.
    Throttled {
        /// The `Retry-After` the vault asked for, if any.
        retry_after: Option<Duration>,
    },
    /// The vault answered 401 or 403: misconfiguration or revoked access.
    Auth {
        /// HTTP status (401 or 403).
        status: u16,
    },
    /// The secret (or version) does not exist in this vault.
    NotFound,
    /// The vault refused the request as invalid (other 4xx, e.g. 400 or 409).
    Rejected {
        /// HTTP status.
        status: u16,
    },
    /// The answer could not be decoded.
    Malformed,
}

impl StoreErrorKind {
    /// What the vault's breaker records for this outcome: a failure (the vault is unhealthy)
    /// or nothing (it answered; its health is not in question).
    pub fn verdict(&self) -> Outcome {
        match self {
            StoreErrorKind::Connect
            | StoreErrorKind::Reset
            | StoreErrorKind::Timeout
            | StoreErrorKind::Server { .. }
            | StoreErrorKind::Malformed => Outcome::Failure,
            StoreErrorKind::Throttled { .. }
            | StoreErrorKind::Auth { .. }
            | StoreErrorKind::NotFound
            | StoreErrorKind::Rejected { .. } => Outcome::NotRecorded,
        }
    }

    /// A short, stable name of the kind (`connect`, `reset`, `timeout`, `server`, `throttled`,
    /// `auth`, `not-found`, `rejected`, `malformed`): for logs, metrics and scripts.
    pub fn label(&self) -> &'static str {
        match self {
            StoreErrorKind::Connect => "connect",
            StoreErrorKind::Reset => "reset",
            StoreErrorKind::Timeout => "timeout",
            StoreErrorKind::Server { .. } => "server",
            StoreErrorKind::Throttled { .. } => "throttled",
            StoreErrorKind::Auth { .. } => "auth",
            StoreErrorKind::NotFound => "not-found",
            StoreErrorKind::Rejected { .. } => "rejected",
            StoreErrorKind::Malformed => "malformed",
        }
    }

    /// The HTTP status this outcome carries, if any.
    pub fn status(&self) -> Option<u16> {
        match self {
            StoreErrorKind::Server { status }
            | StoreErrorKind::Auth { status }
            | StoreErrorKind::Rejected { status } => Some(*status),
            StoreErrorKind::Throttled { .. } => Some(429),
            StoreErrorKind::NotFound => Some(404),
            _ => None,
        }
    }
}

impl fmt::Display for StoreErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreErrorKind::Connect => f.write_str("connection failed"),
            StoreErrorKind::Reset => f.write_str("connection reset"),
            StoreErrorKind::Timeout => f.write_str("timed out"),
            StoreErrorKind::Server { status } => write!(f, "server error {status}"),
            StoreErrorKind::Throttled {
                retry_after: Some(d),
            } => write!(f, "throttled (429, retry after {}ms)", d.as_millis()),
            StoreErrorKind::Throttled { retry_after: None } => f.write_str("throttled (429)"),
            StoreErrorKind::Auth { status } => write!(f, "not authorized ({status})"),
            StoreErrorKind::NotFound => f.write_str("not found (404)"),
            StoreErrorKind::Rejected { status } => write!(f, "request rejected ({status})"),
            StoreErrorKind::Malformed => f.write_str("malformed response"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_follow_the_design_table() {
        use StoreErrorKind::*;
        for k in [Connect, Reset, Timeout, Server { status: 503 }, Malformed] {
            assert_eq!(k.verdict(), Outcome::Failure, "{k}");
        }
        for k in [
            Throttled { retry_after: None },
            Auth { status: 401 },
            Auth { status: 403 },
            NotFound,
            Rejected { status: 400 },
        ] {
            assert_eq!(k.verdict(), Outcome::NotRecorded, "{k}");
        }
    }
}
