//! The route: which vault is active and what the client may do, decided from the vaults'
//! health alone.
//!
//! Moving *down* (the active vault's breaker is no longer closed) is immediate: to the first
//! trusted vault in priority order, else the first closed one, else cache-only. Moving *up* to
//! a higher-priority vault is hysteretic: that vault must be trusted (closed,
//! `failback_successes` consecutive successful probes since its last failure, no caller's call
//! to it failed within the dwell), and the current route must have stood for
//! `failback_dwell`, and the vault must be settled (the engine holds a just-proved vault back
//! for one proving interval). A flapping primary therefore cannot make the route flap faster
//! than once per dwell. A route entered from cache-only (the first vault back after a total
//! outage) needs no dwell: a higher vault takes it back as soon as it is trusted and settled.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use keyvault_failover_core::route::{next, Candidate, Failback, Route};
//! use keyvault_failover_core::Mode;
//!
//! struct V { closed: bool, writable: bool }
//! impl Candidate for V {
//!     fn closed(&self) -> bool { self.closed }
//!     fn trusted(&self, _successes: u32, _quiet: Duration, _now: Instant) -> bool { self.closed }
//!     fn writable(&self) -> bool { self.writable }
//! }
//! let fb = Failback::new(3, Duration::from_secs(60));
//! let t0 = Instant::now();
//! let mut vaults = [V { closed: true, writable: true }, V { closed: true, writable: false }];
//! let r = Route::first(&vaults);
//! assert_eq!((r.active(), r.mode()), (Some(0), Mode::ReadWrite));
//! vaults[0].closed = false;
//! let r = next(&vaults, r, t0, t0, fb);
//! assert_eq!((r.active(), r.mode()), (Some(1), Mode::ReadOnly));
//! vaults[0].closed = true;
//! assert_eq!(next(&vaults, r, t0, t0 + Duration::from_secs(59), fb), r, "the dwell holds");
//! assert_eq!(next(&vaults, r, t0, t0 + Duration::from_secs(60), fb).active(), Some(0));
//! ```

use std::time::{Duration, Instant};

use crate::Mode;

/// A vault as the route sees it.
pub trait Candidate {
    /// Its breaker is closed.
    fn closed(&self) -> bool;
    /// Traffic may move to it at `now`: closed, not failed since it last passed `successes`
    /// probes in a row, not ejected, and no caller's call to it failed within `quiet`.
    fn trusted(&self, successes: u32, quiet: Duration, now: Instant) -> bool;
    /// It takes writes.
    fn writable(&self) -> bool;
    /// Once trusted, the route may move up to it at `now`: it is not held back after its
    /// run of proving probes. By default, never held.
    fn settled(&self, _now: Instant) -> bool {
        true
    }
}

/// Which vault carries the traffic, and what the client may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    active: Option<usize>,
    mode: Mode,
    /// Entered from cache-only: the first vault back after a total outage.
    recovered: bool,
}

impl Route {
    /// The route at the start: the first closed vault.
    pub fn first<C: Candidate>(vaults: &[C]) -> Route {
        route_to(vaults, vaults.iter().position(Candidate::closed))
    }

    /// The index of the active vault, if any.
    pub fn active(&self) -> Option<usize> {
        self.active
    }

    /// What the client may do.
    pub fn mode(&self) -> Mode {
        self.mode
    }
}

/// When a higher-priority vault may take the route back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failback {
    successes: u32,
    dwell: Duration,
}

impl Failback {
    /// `successes` good probes in a row, and the route standing for `dwell`.
    pub fn new(successes: u32, dwell: Duration) -> Self {
        Failback { successes, dwell }
    }

    /// How long a route must stand before it fails back.
    pub fn dwell(&self) -> Duration {
        self.dwell
    }
}

/// The route after `prev`, which has stood since `since`, at `now`.
pub fn next<C: Candidate>(
    vaults: &[C],
    prev: Route,
    since: Instant,
    now: Instant,
    failback: Failback,
) -> Route {
    // An index past the vaults (a route kept across a change of the vault list) is no route.
    let Some(active) = prev.active.filter(|&a| a < vaults.len()) else {
        let to = route_to(vaults, best(vaults, failback, now));
        return Route {
            recovered: to.active.is_some(),
            ..to
        };
    };
    if !vaults[active].closed() {
        return route_to(vaults, best(vaults, failback, now));
    }
    // A route entered from cache-only was no failover away from the vaults above it: they
    // were down too, and whichever came back first took it. A higher one that has proved
    // itself (and settled) takes it back without the dwell, which is there to stop a flapping
    // vault from making the route flap between it and a healthy one. (With the dwell, the
    // primary's probe losing the race to the secondary's by a second after a 20 s total outage
    // kept the client read-only for 84 s.)
    let (stood, quiet) = if prev.recovered {
        (true, Duration::ZERO)
    } else {
        (
            now.saturating_duration_since(since) >= failback.dwell,
            failback.dwell,
        )
    };
    if stood {
        let better = vaults[..active]
            .iter()
            .position(|v| v.trusted(failback.successes, quiet, now));
        // The first trusted vault above, once it is settled: not a lower one meanwhile.
        if better.is_some_and(|b| vaults[b].settled(now)) {
            return route_to(vaults, better);
        }
    }
    prev
}

/// Where to go off a failed route: the first trusted vault (one that has not failed since
/// it last passed its run of probes), else the first closed one, else none. Without the
/// trust test, a primary one probe into its recovery would take the route back the moment
/// the secondary tripped, bypassing the failback hysteresis.
fn best<C: Candidate>(vaults: &[C], failback: Failback, now: Instant) -> Option<usize> {
    vaults
        .iter()
        .position(|v| v.trusted(failback.successes, Duration::ZERO, now))
        .or_else(|| vaults.iter().position(Candidate::closed))
}

fn route_to<C: Candidate>(vaults: &[C], i: Option<usize>) -> Route {
    match i {
        Some(i) => Route {
            active: Some(i),
            mode: if vaults[i].writable() {
                Mode::ReadWrite
            } else {
                Mode::ReadOnly
            },
            recovered: false,
        },
        None => Route {
            active: None,
            mode: Mode::CacheOnly,
            recovered: false,
        },
    }
}
