//! Events for services that want to alert: route changes, breaker transitions, throttling,
//! drift and stale serves. Every event is also a `tracing` event; [`FailoverClient::subscribe`]
//! (crate::FailoverClient::subscribe) hands out a broadcast receiver for the same stream.
//! No event carries a secret value.

use tokio::sync::broadcast;

pub use keyvault_failover_core::Event;

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
