//! The route in the engine: which vault is active and what the client may do.
//!
//! Held in an [`ArcSwap`] so that every read loads it without a lock; writers (breaker
//! transitions, probes) recompute it under a mutex and swap only when it changed. The decision
//! itself (down at once, up with hysteresis) is the core's
//! ([`keyvault_failover_core::route`]), given the engine's `now`; this module tells the
//! changes as events and log lines and wakes reads waiting for a vault.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
#[cfg(test)]
use std::time::Duration;
use std::time::Instant;

use arc_swap::ArcSwap;
use keyvault_failover_core::route;
pub(crate) use keyvault_failover_core::route::{Failback, Route};

use crate::clock::now;
use crate::events::{Event, Events};
use crate::vault::Vault;

pub use keyvault_failover_core::Mode;

pub(crate) struct Router {
    route: ArcSwap<Route>,
    /// When the route last changed (the failback dwell counts from it).
    write: Mutex<Instant>,
    changes: AtomicU64,
    failback: Failback,
    events: Events,
    /// Woken when the route gains an active vault (reads waiting for one go on).
    available: tokio::sync::Notify,
}

impl Router {
    /// How long this client's route must stand before it fails back.
    #[cfg(test)]
    pub(crate) fn dwell(&self) -> Duration {
        self.failback.dwell()
    }

    pub(crate) fn new(vaults: &[Vault], failback: Failback, events: Events) -> Self {
        Router {
            route: ArcSwap::from_pointee(Route::first(vaults)),
            write: Mutex::new(now()),
            changes: AtomicU64::new(0),
            failback,
            events,
            available: tokio::sync::Notify::new(),
        }
    }

    /// The current route (lock-free).
    pub(crate) fn load(&self) -> Route {
        **self.route.load()
    }

    /// How many times the route changed.
    pub(crate) fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }

    /// Recomputes the route; swaps it and says so if it changed.
    pub(crate) fn refresh(&self, vaults: &[Vault]) -> bool {
        let mut since = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let prev = **self.route.load();
        let next = route::next(vaults, prev, *since, now(), self.failback);
        if prev == next {
            return false;
        }
        self.route.store(Arc::new(next));
        *since = now();
        self.changes.fetch_add(1, Ordering::Relaxed);
        let name = |r: Route| r.active().map(|i| vaults[i].name.clone());
        tracing::warn!(
            from = name(prev).as_deref().unwrap_or("none"),
            to = name(next).as_deref().unwrap_or("none"),
            mode = ?next.mode(),
            "route changed"
        );
        self.events.emit(Event::RouteChanged {
            from: name(prev),
            to: name(next),
            mode: next.mode(),
        });
        if next.active().is_some() {
            self.available.notify_waiters();
        }
        true
    }

    /// Resolves when the route next gains an active vault (from the moment it is called, even
    /// before it is first polled).
    pub(crate) fn available(&self) -> tokio::sync::futures::Notified<'_> {
        self.available.notified()
    }

    /// Whether vault `i` ranks above the active one but does not carry the route (yet).
    pub(crate) fn is_waiting_for_failback(&self, i: usize) -> bool {
        self.load().active().is_none_or(|a| i < a)
    }
}
