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
pub(crate) struct Breaker(core::Breaker);

impl Breaker {
    pub(crate) fn new(
        region: Arc<str>,
        threshold: u32,
        open_base: Duration,
        open_max: Duration,
        seed: u64,
        events: Events,
    ) -> Self {
        Breaker(core::Breaker::new(
            threshold,
            open_base,
            open_max,
            seed,
            move |state| {
                events.emit(Event::Breaker {
                    region: region.clone(),
                    state,
                });
                match state {
                    BreakerState::Open => tracing::warn!(region = %region, "breaker opened"),
                    BreakerState::HalfOpen => tracing::info!(region = %region, "breaker half-open"),
                    BreakerState::Closed => tracing::info!(region = %region, "breaker closed"),
                }
            },
        ))
    }

    /// The state as last observed (no lock).
    pub(crate) fn state(&self) -> BreakerState {
        self.0.state()
    }

    /// Leave to call, if the breaker allows it. In half-open, only one permit at a time.
    pub(crate) fn try_acquire(&self) -> Option<Permit> {
        self.0.try_acquire(now())
    }

    /// Opens the breaker now (failed probes are decisive, whatever the call count says).
    pub(crate) fn trip(&self) {
        self.0.trip(now())
    }

    /// Closes a breaker that is not closed (the vault proved itself healthy).
    pub(crate) fn recovered(&self) {
        self.0.recovered()
    }

    /// Records the outcome of the call `permit` allowed.
    pub(crate) fn record(&self, permit: Permit, outcome: Outcome) {
        self.0.record(permit, outcome, now())
    }
}
