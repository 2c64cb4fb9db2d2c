//! A vault's breaker in the engine: the core's state machine
//! ([`keyvault_failover_core::breaker`]), given tokio's clock as `now` (so paused time drives
//! it) and with its transitions told as events and log lines.

use std::sync::Arc;
use std::time::Duration;

use keyvault_failover_core::breaker as core;
pub(crate) use keyvault_failover_core::breaker::{Outcome, Permit};
pub use keyvault_failover_core::BreakerState;

use crate::clock::now;
use crate::events::{Event, Events};

/// A vault's breaker.
#[derive(Clone)]
pub(crate) struct Breaker {
    core: core::Breaker,
    /// Wakes whoever waits on it each time the breaker opens: the vault's prober, sleeping
    /// at the healthy pace (up to `probe.interval_max`), then probes at the unhealthy one.
    opened: Arc<tokio::sync::Notify>,
}

impl Breaker {
    pub(crate) fn new(
        region: Arc<str>,
        threshold: u32,
        open_base: Duration,
        open_max: Duration,
        seed: u64,
        events: Events,
    ) -> Self {
        let opened = Arc::new(tokio::sync::Notify::new());
        let tell = opened.clone();
        let core = core::Breaker::new(threshold, open_base, open_max, seed, move |state| {
            if state == BreakerState::Open {
                tell.notify_waiters();
            }
            events.emit(Event::Breaker {
                region: region.clone(),
                state,
            });
            match state {
                BreakerState::Open => tracing::warn!(region = %region, "breaker opened"),
                BreakerState::HalfOpen => tracing::info!(region = %region, "breaker half-open"),
                BreakerState::Closed => tracing::info!(region = %region, "breaker closed"),
            }
        });
        Breaker { core, opened }
    }

    /// Notified (`notify_waiters`) each time the breaker opens.
    pub(crate) fn opened(&self) -> Arc<tokio::sync::Notify> {
        self.opened.clone()
    }

    /// The state as last observed (no lock).
    pub(crate) fn state(&self) -> BreakerState {
        self.core.state()
    }

    /// Leave to call, if the breaker allows it. In half-open, only one permit at a time.
    pub(crate) fn try_acquire(&self) -> Option<Permit> {
        self.core.try_acquire(now())
    }

    /// Opens the breaker now (failed probes are decisive, whatever the call count says).
    pub(crate) fn trip(&self) {
        self.core.trip(now())
    }

    /// Closes a breaker that is not closed (the vault proved itself healthy).
    pub(crate) fn recovered(&self) {
        self.core.recovered()
    }

    /// Records the outcome of the call `permit` allowed.
    pub(crate) fn record(&self, permit: Permit, outcome: Outcome) {
        self.core.record(permit, outcome, now())
    }
}
