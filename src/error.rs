//! Errors.
//!
//! Two types live here:
//!
//! * [`StoreError`] is what a [`SecretStore`](crate::SecretStore) returns. It carries the
//!   *classification* of one vault outcome ([`StoreErrorKind`]), which decides what the
//!   breaker records, whether the client tries another region and whether a stale value may
//!   be served. Backend authors construct it.
//! * [`Error`] is what [`FailoverClient`](crate::FailoverClient) returns: one opaque type with
//!   `is_*()` predicates (reqwest's model), so that adding a kind is not a breaking change.
//!   When every region failed it lists each attempt ([`Error::attempts`]).
//!
//! No error ever holds a secret value: only names, regions, status codes and messages that
//! the crate or a backend wrote.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use keyvault_failover_core::outcome::StoreErrorKind;

/// The error a [`SecretStore`](crate::SecretStore) returns for one call.
///
/// ```
/// use keyvault_failover::{StoreError, StoreErrorKind};
/// let e = StoreError::new(StoreErrorKind::Server { status: 503 }, "service unavailable");
/// assert_eq!(e.kind().status(), Some(503));
/// assert!(e.to_string().contains("503"));
/// ```
#[derive(Debug, Clone)]
pub struct StoreError {
    kind: StoreErrorKind,
    message: Arc<str>,
    retry_after: Option<Duration>,
}

/// The most of a backend's message an error keeps, in bytes. A server's error body can be any
/// size and say anything; what reaches messages and logs is bounded.
pub const MAX_MESSAGE_LEN: usize = 512;

/// `s` made safe for one log line: control characters (newlines that would forge a log line,
/// terminal escapes) become spaces, and at most `max` bytes are kept, cut on a character
/// boundary, with how much was cut.
pub(crate) fn sanitize(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max) + 32);
    for c in s.chars() {
        if out.len() + c.len_utf8() > max {
            let rest = s.len().saturating_sub(out.len());
            out.push_str(&format!("... ({rest} more bytes)"));
            break;
        }
        out.push(if c.is_control() { ' ' } else { c });
    }
    out
}

impl StoreError {
    /// A new error of `kind`. `message` must not contain a secret value; it is kept to
    /// [`MAX_MESSAGE_LEN`] bytes with control characters replaced.
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        let message: String = message.into();
        let message = if message.len() <= MAX_MESSAGE_LEN && !message.chars().any(char::is_control)
        {
            message
        } else {
            sanitize(&message, MAX_MESSAGE_LEN)
        };
        let retry_after = match kind {
            StoreErrorKind::Throttled { retry_after } => retry_after,
            _ => None,
        };
        StoreError {
            kind,
            message: message.into(),
            retry_after,
        }
    }

    /// The same error, with the `Retry-After` the vault sent (a 503 may carry one too).
    pub fn with_retry_after(mut self, retry_after: Option<Duration>) -> Self {
        if retry_after.is_some() {
            self.retry_after = retry_after;
        }
        self
    }

    /// Whether the vault asked to be left alone for a while: a 429 (with or without
    /// `Retry-After`) or any answer carrying `Retry-After` (a 503 may).
    pub(crate) fn asks_to_wait(&self) -> bool {
        matches!(self.kind, StoreErrorKind::Throttled { .. }) || self.retry_after.is_some()
    }

    /// How long the vault asked to be left alone (`Retry-After` on a 429 or 503), as it said
    /// it: the client caps it (`throttle.max_retry_after`) before obeying.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The classification.
    pub fn kind(&self) -> &StoreErrorKind {
        &self.kind
    }

    /// The backend's message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            write!(f, "{}", self.kind)
        } else {
            write!(f, "{}: {}", self.kind, self.message)
        }
    }
}

impl std::error::Error for StoreError {}

/// Why a region did not answer one call of the client.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum AttemptFailure {
    /// The region's breaker was open (or its half-open probe was taken): no request was sent.
    BreakerOpen,
    /// The region was throttled (429 Retry-After) or over the client-side budget: not sent.
    Throttled,
    /// The retry budget was spent: not sent.
    BudgetExhausted,
    /// The request was sent and failed.
    Store(StoreError),
}

impl fmt::Display for AttemptFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttemptFailure::BreakerOpen => f.write_str("circuit breaker open, not sent"),
            AttemptFailure::Throttled => f.write_str("throttled, not sent"),
            AttemptFailure::BudgetExhausted => f.write_str("retry budget exhausted, not sent"),
            AttemptFailure::Store(e) => e.fmt(f),
        }
    }
}

/// One region's part in a failed call.
#[derive(Debug, Clone)]
pub struct Attempt {
    region: Arc<str>,
    failure: AttemptFailure,
}

impl Attempt {
    pub(crate) fn new(region: Arc<str>, failure: AttemptFailure) -> Self {
        Attempt { region, failure }
    }

    /// The region's name.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// What went wrong there.
    pub fn failure(&self) -> &AttemptFailure {
        &self.failure
    }
}

/// The error of every [`FailoverClient`](crate::FailoverClient) call.
///
/// Opaque: ask it with the `is_*()` predicates. Cheap to clone (one `Arc`), so that the
/// many callers that share one single-flight vault read all receive the same error.
#[derive(Clone)]
pub struct Error {
    inner: Arc<Inner>,
}

struct Inner {
    kind: Kind,
    message: String,
    attempts: Vec<Attempt>,
    source: Option<StoreError>,
    outcome_unknown: bool,
    /// The caller's deadline for this call passed.
    deadline: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Config,
    InvalidName,
    InvalidValue,
    ReadOnly,
    NotFound,
    Auth,
    Unavailable,
    Rejected,
    Snapshot,
}

impl Error {
    pub(crate) fn new(kind: Kind, message: impl Into<String>) -> Self {
        Error {
            inner: Arc::new(Inner {
                kind,
                message: message.into(),
                attempts: Vec::new(),
                source: None,
                outcome_unknown: false,
                deadline: false,
            }),
        }
    }

    pub(crate) fn with_attempts(
        kind: Kind,
        message: impl Into<String>,
        attempts: Vec<Attempt>,
        source: Option<StoreError>,
    ) -> Self {
        Error {
            inner: Arc::new(Inner {
                kind,
                message: message.into(),
                attempts,
                source,
                outcome_unknown: false,
                deadline: false,
            }),
        }
    }

    /// The same error, marked as a write whose outcome is unknown (see
    /// [`Error::is_outcome_unknown`]).
    pub(crate) fn outcome_unknown(self) -> Self {
        let inner = Arc::try_unwrap(self.inner).unwrap_or_else(|a| Inner {
            kind: a.kind,
            message: a.message.clone(),
            attempts: a.attempts.clone(),
            source: a.source.clone(),
            outcome_unknown: a.outcome_unknown,
            deadline: a.deadline,
        });
        Error {
            inner: Arc::new(Inner {
                outcome_unknown: true,
                message: format!(
                    "{} (the request may have reached the vault: the write may or may not have \
                     been applied; read the secret to find out)",
                    inner.message
                ),
                ..inner
            }),
        }
    }

    /// A write timed out or its connection broke after it was sent: the vault may or may not
    /// have applied it. Read the secret before writing again.
    pub fn is_outcome_unknown(&self) -> bool {
        self.inner.outcome_unknown
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        Error::new(Kind::Config, message)
    }

    /// The caller's deadline passed before any vault answered.
    pub(crate) fn deadline(message: impl Into<String>) -> Self {
        Error {
            inner: Arc::new(Inner {
                kind: Kind::Unavailable,
                message: message.into(),
                attempts: Vec::new(),
                source: None,
                outcome_unknown: false,
                deadline: true,
            }),
        }
    }

    /// Invalid configuration (from the builder or a TOML file).
    pub fn is_config(&self) -> bool {
        self.inner.kind == Kind::Config
    }

    /// A sealed snapshot could not be read or written: missing, unreadable, tampered with,
    /// truncated, sealed with another key, or of an unknown format (feature `snapshot`).
    pub fn is_snapshot(&self) -> bool {
        self.inner.kind == Kind::Snapshot
    }

    /// The secret name is not a valid Key Vault name (1–127 letters, digits, dashes).
    pub fn is_invalid_name(&self) -> bool {
        self.inner.kind == Kind::InvalidName
    }

    /// The secret value was refused before sending (over Key Vault's 25 KiB).
    pub fn is_invalid_value(&self) -> bool {
        self.inner.kind == Kind::InvalidValue
    }

    /// A write was refused because the client is not on a healthy writable region.
    /// Nothing was sent and nothing was queued.
    pub fn is_read_only(&self) -> bool {
        self.inner.kind == Kind::ReadOnly
    }

    /// The secret does not exist: the writable primary said so. (A secondary's 404 while the
    /// primary could not be asked is [`is_unavailable`](Self::is_unavailable): it may be
    /// replication lag.)
    pub fn is_not_found(&self) -> bool {
        self.inner.kind == Kind::NotFound
    }

    /// A vault answered 401 or 403. Never masked by a stale value.
    pub fn is_auth(&self) -> bool {
        self.inner.kind == Kind::Auth
    }

    /// No region could answer and no last-known-good value within the staleness cap was held.
    pub fn is_unavailable(&self) -> bool {
        self.inner.kind == Kind::Unavailable
    }

    /// The vault refused the request as invalid (4xx other than 401/403/404/429).
    pub fn is_rejected(&self) -> bool {
        self.inner.kind == Kind::Rejected
    }

    /// The call's deadline passed, or every attempt that failed ended in a timeout.
    pub fn is_timeout(&self) -> bool {
        self.inner.deadline || self.has_store_kind(|k| matches!(k, StoreErrorKind::Timeout))
    }

    /// At least one region was throttled during this call.
    pub fn is_throttled(&self) -> bool {
        self.inner.attempts.iter().any(|a| {
            matches!(
                a.failure,
                AttemptFailure::Throttled
                    | AttemptFailure::Store(StoreError {
                        kind: StoreErrorKind::Throttled { .. },
                        ..
                    })
            )
        })
    }

    /// The HTTP status of the deciding vault answer, or of the last vault answer with a status
    /// when no single answer decided (every region failed).
    pub fn status(&self) -> Option<u16> {
        self.inner
            .source
            .as_ref()
            .and_then(|s| s.kind().status())
            .or_else(|| {
                self.inner
                    .attempts
                    .iter()
                    .rev()
                    .find_map(|a| match &a.failure {
                        AttemptFailure::Store(e) => e.kind().status(),
                        _ => None,
                    })
            })
    }

    /// Each region's part in the call, in the order they were tried.
    pub fn attempts(&self) -> &[Attempt] {
        &self.inner.attempts
    }

    /// The longest `Retry-After` a vault sent among the attempts, as sent (uncapped), for a
    /// caller that passes it on (the agent's 429).
    pub fn retry_after(&self) -> Option<Duration> {
        self.inner
            .attempts
            .iter()
            .filter_map(|a| match &a.failure {
                AttemptFailure::Store(e) => e.retry_after(),
                _ => None,
            })
            .max()
    }

    fn has_store_kind(&self, pred: impl Fn(&StoreErrorKind) -> bool) -> bool {
        let sent: Vec<&StoreError> = self
            .inner
            .attempts
            .iter()
            .filter_map(|a| match &a.failure {
                AttemptFailure::Store(e) => Some(e),
                _ => None,
            })
            .collect();
        !sent.is_empty() && sent.iter().all(|e| pred(e.kind()))
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.inner.kind)
            .field("message", &self.inner.message);
        if !self.inner.attempts.is_empty() {
            d.field("attempts", &self.inner.attempts);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.message)?;
        for (i, a) in self.inner.attempts.iter().enumerate() {
            let sep = if i == 0 { ": " } else { "; " };
            write!(f, "{sep}{}: {}", a.region, a.failure)?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_is_one_pointer() {
        assert_eq!(std::mem::size_of::<Error>(), std::mem::size_of::<usize>());
    }

    #[test]
    fn display_lists_every_region() {
        let e = Error::with_attempts(
            Kind::Unavailable,
            "no region could serve secret `db`",
            vec![
                Attempt::new(
                    "weu".into(),
                    AttemptFailure::Store(StoreError::new(StoreErrorKind::Connect, "refused")),
                ),
                Attempt::new("neu".into(), AttemptFailure::BreakerOpen),
            ],
            None,
        );
        let s = e.to_string();
        assert!(s.contains("weu: connection failed: refused"), "{s}");
        assert!(s.contains("neu: circuit breaker open"), "{s}");
        assert!(e.is_unavailable() && !e.is_timeout());
    }

    #[test]
    fn a_server_message_is_bounded_and_cannot_forge_a_log_line() {
        let body = format!(
            "oops\n2026-01-01 INFO forged line\r\n{}",
            "x".repeat(1 << 20)
        );
        let e = StoreError::new(StoreErrorKind::Server { status: 500 }, body);
        assert!(
            e.message().len() <= MAX_MESSAGE_LEN + 32,
            "{}",
            e.message().len()
        );
        assert!(!e.to_string().contains('\n') && !e.to_string().contains('\r'));
        assert!(e.message().contains("more bytes"));
        // Multi-byte characters are cut on a boundary.
        let e = StoreError::new(StoreErrorKind::Malformed, "é".repeat(600));
        assert!(e.message().starts_with("éé"));
    }
}
