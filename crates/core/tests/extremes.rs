//! The core is a published crate: no input may panic it or let a call through that should
//! wait. Each test gives one decision the extreme values a caller could pass directly
//! (`Duration::MAX`, NaN draws, a ceiling below its floor, an index past the vault list), and
//! a property test throws arbitrary ones at all of them.

use std::time::{Duration, Instant};

use keyvault_failover_core::breaker::{Breaker, JitterBackoff, Outcome};
use keyvault_failover_core::budget::{RetryBudget, VaultGate};
use keyvault_failover_core::freshness::{first_refresh, next_refresh};
use keyvault_failover_core::hedge::{HedgePolicy, Latencies};
use keyvault_failover_core::probe::{Pacer, ProbePolicy};
use keyvault_failover_core::route::{next, Candidate, Failback, Route};
use keyvault_failover_core::BreakerState;
use proptest::prelude::*;

const DAY: Duration = Duration::from_secs(24 * 3600);

#[test]
fn a_backoff_to_duration_max_never_overflows() {
    // The 62nd opening doubled a Duration past its end.
    let mut b = JitterBackoff::new(Duration::from_secs(1), Duration::MAX, 1);
    for _ in 0..200 {
        assert!(b.next().unwrap() >= Duration::from_millis(1));
    }
    // A base of Duration::MAX overflowed at the first failure.
    let mut b = JitterBackoff::new(Duration::MAX, Duration::MAX, 1);
    assert!(b.next().unwrap() > DAY);
}

#[test]
fn an_open_interval_past_the_clock_keeps_the_breaker_open() {
    // `now + Duration::MAX` overflows Instant: the breaker was open until `now`, so the very
    // next call went through.
    let b = Breaker::new(1, Duration::MAX, Duration::MAX, 7, |_| {});
    let t0 = Instant::now();
    let p = b.try_acquire(t0).unwrap();
    b.record(p, Outcome::Failure, t0);
    assert_eq!(b.state(), BreakerState::Open);
    assert!(
        b.try_acquire(t0 + Duration::from_millis(1)).is_none(),
        "a call went through a breaker just opened for ever"
    );
    assert!(b.try_acquire(t0 + DAY).is_none());
}

#[test]
fn nan_draws_neither_panic_nor_skip_the_wait() {
    let t0 = Instant::now();
    let g = VaultGate::new(10, Duration::from_secs(10), 1.0);
    let asked = Duration::from_secs(2);
    let wait = g.throttle(asked, Duration::from_secs(60), f64::NAN, t0);
    assert!(wait >= asked, "{wait:?}");
    assert!(!g.try_take(t0 + Duration::from_secs(1)), "throttled");
    let t = Duration::from_secs(900);
    for draw in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -3.0, 3.0] {
        let n = next_refresh(t, draw);
        assert!(n >= t.mul_f64(0.7) && n <= t.mul_f64(0.8), "{draw}: {n:?}");
        let f = first_refresh(t, draw);
        assert!(f >= t.mul_f64(0.2) && f <= t, "{draw}: {f:?}");
    }
}

#[test]
fn a_hedge_floor_above_its_ceiling_gives_the_floor() {
    let t0 = Instant::now();
    let policy = HedgePolicy::new(
        Duration::from_millis(150),
        Duration::from_secs(2),
        Duration::from_millis(10),
        f64::NAN,
        1,
    );
    let mut l = Latencies::new(t0);
    for _ in 0..10 {
        l.record(Duration::from_millis(50), t0);
    }
    assert_eq!(l.delay(&policy, t0), Duration::from_secs(2));
}

#[test]
fn a_retry_budget_on_huge_inputs_neither_panics_nor_forgets_its_floor() {
    let t0 = Instant::now();
    let b = RetryBudget::new(f64::MAX, u32::MAX, Duration::MAX);
    for _ in 0..10 {
        b.deposit(t0);
    }
    assert!(b.withdraw(t0));
    let b = RetryBudget::new(f64::NAN, 0, Duration::from_secs(10));
    b.deposit(t0);
    assert!(!b.withdraw(t0), "a NaN ratio allows no retries");
}

struct V(bool);
impl Candidate for V {
    fn closed(&self) -> bool {
        self.0
    }
    fn trusted(&self, _: u32, _: Duration, _: Instant) -> bool {
        self.0
    }
    fn writable(&self) -> bool {
        true
    }
}

#[test]
fn a_route_past_the_vault_list_is_chosen_again() {
    let t0 = Instant::now();
    let fb = Failback::new(3, Duration::from_secs(60));
    let five = [V(false), V(false), V(false), V(false), V(true)];
    let prev = Route::first(&five);
    assert_eq!(prev.active(), Some(4));
    let two = [V(false), V(true)];
    let r = next(&two, prev, t0, t0, fb);
    assert_eq!(r.active(), Some(1));
    let none: [V; 0] = [];
    assert_eq!(next(&none, prev, t0, t0, fb).active(), None);
}

fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::MAX),
        (0u64..=u64::MAX, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        (0u64..100_000).prop_map(Duration::from_millis),
    ]
}

fn draw() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(-1.0),
        any::<f64>(),
        0.0..1.0
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn no_input_panics_the_core(
        a in duration(), b in duration(), c in duration(), d in duration(),
        x in draw(), y in draw(), n in any::<u32>(), steps in 0u64..10_000,
    ) {
        let t0 = Instant::now();
        let now = t0 + Duration::from_millis(steps);
        let mut backoff = JitterBackoff::new(a, b, n.into());
        for _ in 0..70 {
            backoff.next();
        }
        let br = Breaker::new(n % 5, a, b, 1, |_| {});
        for i in 0..5u64 {
            if let Some(p) = br.try_acquire(t0 + Duration::from_millis(i)) {
                br.record(p, Outcome::Failure, t0 + Duration::from_millis(i));
            }
        }
        br.trip(now);
        let g = VaultGate::new(n, c, x);
        g.throttle(a, b, y, now);
        g.try_take(now);
        g.try_take_above(x, now);
        next_refresh(a, x);
        first_refresh(b, y);
        let budget = RetryBudget::new(x, n, d);
        budget.deposit(t0);
        budget.withdraw(now);
        let policy = HedgePolicy::new(a, b, c, x, u64::from(n % 3));
        let mut lat = Latencies::new(t0);
        lat.record(d, now);
        lat.delay(&policy, now);
        let probe = ProbePolicy::new(a, b, c, d, x, n);
        let mut pacer = Pacer::default();
        for healthy in [true, false, true] {
            pacer.next(healthy, n, &probe, y);
        }
    }
}
