//! What the client tells the world: its events and the modes of its route. No event carries
//! a secret value.

use std::sync::Arc;
use std::time::Duration;

use crate::breaker::BreakerState;

/// What the client can do on its current route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// The active vault is the healthy writable primary: reads and writes.
    ReadWrite,
    /// The active vault is a read-only region (or the primary is unhealthy): reads only;
    /// writes are refused at once.
    ReadOnly,
    /// No vault is healthy: reads are served from last-known-good values only.
    CacheOnly,
}

/// Something the client did or noticed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The active vault or the mode changed.
    RouteChanged {
        /// Previously active region (`None`: cache-only).
        from: Option<Arc<str>>,
        /// Now active region (`None`: cache-only).
        to: Option<Arc<str>>,
        /// The new mode.
        mode: Mode,
    },
    /// A vault's breaker changed state.
    Breaker {
        /// The region.
        region: Arc<str>,
        /// Its new state.
        state: BreakerState,
    },
    /// A vault answered 429; reads spill elsewhere until `retry_after` has passed.
    Throttled {
        /// The region.
        region: Arc<str>,
        /// How long it asked us to wait.
        retry_after: Duration,
    },
    /// Two vaults hold different content for the same secret name.
    Drift {
        /// The secret's name.
        secret: Arc<str>,
        /// The regions whose content differs from the first region's.
        regions: Vec<Arc<str>>,
    },
    /// A last-known-good value was served because no vault could answer.
    StaleServed {
        /// The secret's name.
        secret: Arc<str>,
        /// Its age.
        age: Duration,
    },
    /// A background refresh failed; the last-known-good value is kept.
    RefreshFailed {
        /// The secret's name.
        secret: Arc<str>,
    },
    /// A background task (a vault's prober, the refresher) panicked and was restarted.
    TaskRestarted {
        /// Which task (`prober:<region>` or `refresher`).
        task: Arc<str>,
        /// Restarts of this task so far.
        restarts: u32,
    },
}
