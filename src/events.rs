//! Events for services that want to alert: route changes, breaker transitions, throttling,
//! drift and stale serves. Every event is also a `tracing` event; [`FailoverClient::subscribe`]
//! (crate::FailoverClient::subscribe) hands out a broadcast receiver for the same stream.
//! No event carries a secret value.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use crate::breaker::BreakerState;
use crate::router::Mode;

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

/// Fan-out of events. Sending never blocks and never fails the caller: with no subscriber the
/// event is dropped; a slow subscriber loses the oldest events (it sees `Lagged`).
#[derive(Clone)]
pub(crate) struct Events {
    tx: broadcast::Sender<Event>,
    /// Every event also feeds the client's metrics.
    metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
}

impl Events {
    #[cfg(test)]
    pub(crate) fn new() -> Self {
        Events {
            tx: broadcast::channel(1024).0,
            metrics: None,
        }
    }

    pub(crate) fn with_metrics(metrics: std::sync::Arc<crate::metrics::Metrics>) -> Self {
        Events {
            tx: broadcast::channel(1024).0,
            metrics: Some(metrics),
        }
    }

    pub(crate) fn emit(&self, e: Event) {
        if let Some(m) = &self.metrics {
            m.event(&e);
        }
        let _ = self.tx.send(e);
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}
