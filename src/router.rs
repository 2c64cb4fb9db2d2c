//! The route: which vault is active and what the client may do.
//!
//! Held in an [`ArcSwap`] so that every read loads it without a lock; writers (breaker
//! transitions, probes) recompute it under a mutex and swap only when it changed.
//!
//! Moving *down* (the active vault's breaker is no longer closed) is immediate: to the first
//! closed vault in priority order, or cache-only. Moving *up* to a higher-priority vault is
//! hysteretic: that vault must be closed, have `failback_successes` consecutive successful
//! probes since its last failure, and the current route must have stood for `failback_dwell`.
//! A flapping primary therefore cannot make the route flap faster than once per dwell.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::Instant;

use crate::breaker::BreakerState;
use crate::config::Access;
use crate::events::{Event, Events};
use crate::vault::Vault;

pub use keyvault_failover_core::Mode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Route {
    pub(crate) active: Option<usize>,
    pub(crate) mode: Mode,
}

/// When a higher-priority vault may take the route back.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Failback {
    pub(crate) successes: u32,
    pub(crate) dwell: Duration,
}

pub(crate) struct Router {
    route: ArcSwap<Route>,
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
        self.failback.dwell
    }

    pub(crate) fn new(vaults: &[Vault], failback: Failback, events: Events) -> Self {
        let first = route_to(vaults, first_closed(vaults, vaults.len()));
        Router {
            route: ArcSwap::from_pointee(first),
            write: Mutex::new(Instant::now()),
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
        let next = self.next(vaults, prev, *since);
        if prev == next {
            return false;
        }
        self.route.store(Arc::new(next));
        *since = Instant::now();
        self.changes.fetch_add(1, Ordering::Relaxed);
        let name = |r: Route| r.active.map(|i| vaults[i].name.clone());
        tracing::warn!(
            from = name(prev).as_deref().unwrap_or("none"),
            to = name(next).as_deref().unwrap_or("none"),
            mode = ?next.mode,
            "route changed"
        );
        self.events.emit(Event::RouteChanged {
            from: name(prev),
            to: name(next),
            mode: next.mode,
        });
        if next.active.is_some() {
            self.available.notify_waiters();
        }
        true
    }

    /// Resolves when the route next gains an active vault (from the moment it is called, even
    /// before it is first polled).
    pub(crate) fn available(&self) -> tokio::sync::futures::Notified<'_> {
        self.available.notified()
    }

    fn next(&self, vaults: &[Vault], prev: Route, since: Instant) -> Route {
        let Some(active) = prev.active else {
            return route_to(vaults, self.best(vaults));
        };
        if vaults[active].breaker.state() != BreakerState::Closed {
            return route_to(vaults, self.best(vaults));
        }
        if since.elapsed() >= self.failback.dwell {
            let better = vaults[..active]
                .iter()
                .position(|v| v.trusted(self.failback.successes, self.failback.dwell));
            if better.is_some() {
                return route_to(vaults, better);
            }
        }
        prev
    }

    /// Where to go off a failed route: the first trusted vault (one that has not failed since
    /// it last passed its run of probes), else the first closed one, else none. Without the
    /// trust test, a primary one probe into its recovery would take the route back the moment
    /// the secondary tripped, bypassing the failback hysteresis.
    fn best(&self, vaults: &[Vault]) -> Option<usize> {
        vaults
            .iter()
            .position(|v| v.trusted(self.failback.successes, Duration::ZERO))
            .or_else(|| first_closed(vaults, vaults.len()))
    }

    /// Whether vault `i` ranks above the active one but does not carry the route (yet).
    pub(crate) fn is_waiting_for_failback(&self, i: usize) -> bool {
        self.load().active.is_none_or(|a| i < a)
    }
}

fn first_closed(vaults: &[Vault], below: usize) -> Option<usize> {
    vaults[..below]
        .iter()
        .position(|v| v.breaker.state() == BreakerState::Closed)
}

fn route_to(vaults: &[Vault], i: Option<usize>) -> Route {
    match i {
        Some(i) => Route {
            active: Some(i),
            mode: if vaults[i].access == Access::ReadWrite {
                Mode::ReadWrite
            } else {
                Mode::ReadOnly
            },
        },
        None => Route {
            active: None,
            mode: Mode::CacheOnly,
        },
    }
}
