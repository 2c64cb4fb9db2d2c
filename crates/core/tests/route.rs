//! Property test of the route and failback policy, on hand-made time (no runtime): random
//! sequences of vault health changes and time steps, checked against the policy's promises:
//!
//! * the route never names a vault whose breaker is not closed, and is cache-only only when
//!   no vault is closed;
//! * the mode follows the active vault's access (read-write only on a writable one);
//! * leaving a healthy route is a failback: up, to a trusted vault, and never before the route
//!   has stood for the dwell (no flapping faster than once per dwell), unless the route was
//!   entered from cache-only;
//! * off a failed route: to the first trusted vault, else the first closed one;
//! * with every vault trusted and a dwell passed, the route is back on the primary.

use std::time::{Duration, Instant};

use keyvault_failover_core::route::{next, Candidate, Failback, Route};
use keyvault_failover_core::Mode;
use proptest::prelude::*;

#[derive(Debug, Clone, Copy)]
struct V {
    closed: bool,
    trusted: bool,
    writable: bool,
}

impl Candidate for V {
    fn closed(&self) -> bool {
        self.closed
    }
    fn trusted(&self, _successes: u32, _quiet: Duration, _now: Instant) -> bool {
        self.closed && self.trusted
    }
    fn writable(&self) -> bool {
        self.writable
    }
}

#[derive(Debug, Clone)]
enum Step {
    /// Vault `i`'s breaker opens (it is no longer trusted either).
    Open(usize),
    /// Vault `i`'s breaker closes (not yet trusted: it has to pass its probes).
    Close(usize),
    /// Vault `i` passed its run of probes.
    Trust(usize),
    /// Time passes.
    Wait(u64),
}

fn step(n: usize) -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..n).prop_map(Step::Open),
        (0..n).prop_map(Step::Close),
        (0..n).prop_map(Step::Trust),
        (1u64..90_000).prop_map(Step::Wait),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_route_keeps_its_promises(n in 1usize..=3, steps in proptest::collection::vec(step(3), 1..120)) {
        let dwell = Duration::from_secs(60);
        let fb = Failback::new(3, dwell);
        let mut vaults: Vec<V> = (0..n)
            .map(|i| V { closed: true, trusted: true, writable: i == 0 })
            .collect();
        let t0 = Instant::now();
        let mut now = t0;
        let mut route = Route::first(&vaults);
        let mut since = t0;
        // The route was entered from cache-only (a higher vault may take it back at once).
        let mut from_none = false;
        for s in steps {
            match s {
                Step::Open(i) if i < n => vaults[i] = V { closed: false, trusted: false, ..vaults[i] },
                Step::Close(i) if i < n => vaults[i].closed = true,
                Step::Trust(i) if i < n => {
                    if vaults[i].closed {
                        vaults[i].trusted = true;
                    }
                }
                Step::Wait(ms) => now += Duration::from_millis(ms),
                _ => continue,
            }
            let prev = route;
            route = next(&vaults, prev, since, now, fb);
            match route.active() {
                Some(a) => {
                    prop_assert!(vaults[a].closed, "routed to vault {a}, whose breaker is open");
                    let want = if vaults[a].writable { Mode::ReadWrite } else { Mode::ReadOnly };
                    prop_assert_eq!(route.mode(), want);
                }
                None => {
                    prop_assert!(vaults.iter().all(|v| !v.closed), "cache-only with a closed vault");
                    prop_assert_eq!(route.mode(), Mode::CacheOnly);
                }
            }
            match (prev.active(), route.active()) {
                // The route stood on a healthy vault: moving up is a failback.
                (Some(p), Some(a)) if vaults[p].closed && a != p => {
                    prop_assert!(a < p, "left healthy vault {p} for lower-ranked {a}");
                    prop_assert!(vaults[a].trusted, "failed back to untrusted vault {a}");
                    prop_assert!(
                        from_none || now.duration_since(since) >= dwell,
                        "failed back within the dwell"
                    );
                }
                // Off a failed route (or none): the first trusted vault, else the first closed.
                (p, a) if p.is_none_or(|p| !vaults[p].closed) => {
                    let trusted = vaults.iter().position(|v| v.closed && v.trusted);
                    let closed = vaults.iter().position(|v| v.closed);
                    prop_assert_eq!(a, trusted.or(closed));
                }
                _ => {}
            }
            if route != prev {
                since = now;
                from_none = prev.active().is_none();
            }
        }
        // Everything healthy and trusted, a dwell later: back on the primary.
        for v in &mut vaults {
            *v = V { closed: true, trusted: true, ..*v };
        }
        let later = now + dwell;
        let r = next(&vaults, route, since, later, fb);
        let r = next(&vaults, r, if r != route { later } else { since }, later + dwell, fb);
        prop_assert_eq!(r.active(), Some(0));
        prop_assert_eq!(r.mode(), Mode::ReadWrite);
    }
}

/// A trusted vault that is not yet settled (held back after its proving run) keeps the route
/// where it is: neither it nor a lower trusted vault takes it meanwhile, and it takes the
/// route once settled.
#[test]
fn an_unsettled_vault_holds_failback_where_it_is() {
    struct H {
        closed: bool,
        settled: bool,
    }
    impl Candidate for H {
        fn closed(&self) -> bool {
            self.closed
        }
        fn trusted(&self, _successes: u32, _quiet: Duration, _now: Instant) -> bool {
            self.closed
        }
        fn writable(&self) -> bool {
            false
        }
        fn settled(&self, _now: Instant) -> bool {
            self.settled
        }
    }
    let fb = Failback::new(3, Duration::from_secs(60));
    let t0 = Instant::now();
    let later = t0 + Duration::from_secs(61);
    let mut vaults = [(false, false), (false, true), (true, true)]
        .map(|(closed, settled)| H { closed, settled });
    let on_last = Route::first(&vaults);
    assert_eq!(on_last.active(), Some(2));
    vaults[0].closed = true;
    vaults[1].closed = true;
    assert_eq!(
        next(&vaults, on_last, t0, later, fb),
        on_last,
        "the first trusted vault above is held back: the route stays"
    );
    vaults[0].settled = true;
    assert_eq!(next(&vaults, on_last, t0, later, fb).active(), Some(0));
}

/// After a total outage the first vault back takes the route; a higher one that has proved
/// itself takes it back at once, without the dwell (which stops a flapping vault from making
/// the route flap) and without the quiet time since its callers' calls failed (every vault's
/// did). Before: 84 s read-only after a 20 s total outage, when the secondary's probe won.
#[test]
fn a_route_entered_from_cache_only_fails_back_without_the_dwell() {
    let fb = Failback::new(3, Duration::from_secs(60));
    let t0 = Instant::now();
    let mut vaults = [false, false].map(|closed| V {
        closed,
        trusted: closed,
        writable: false,
    });
    vaults[0].writable = true;
    let none = Route::first(&vaults);
    assert_eq!(none.mode(), Mode::CacheOnly);
    vaults[1] = V {
        closed: true,
        trusted: true,
        ..vaults[1]
    };
    let on_neu = next(&vaults, none, t0, t0, fb);
    assert_eq!(on_neu.active(), Some(1));
    vaults[0] = V {
        closed: true,
        trusted: true,
        ..vaults[0]
    };
    let t1 = t0 + Duration::from_secs(8);
    assert_eq!(next(&vaults, on_neu, t0, t1, fb).mode(), Mode::ReadWrite);
    // A failover (down from a healthy primary) still waits for the dwell.
    let mut down = vaults;
    down[0] = V {
        closed: false,
        trusted: false,
        ..down[0]
    };
    let failed_over = next(&down, Route::first(&vaults), t0, t0, fb);
    assert_eq!(failed_over.active(), Some(1));
    assert_eq!(next(&vaults, failed_over, t0, t1, fb), failed_over);
}
