//! One circuit breaker per vault: three states, a one-probe half-open gate, and `now` from
//! the caller.
//!
//! Why not `failsafe::futures::CircuitBreaker::call_with`: it counts an error that the
//! predicate rejects as a *success* and records nothing for a dropped future. Why not
//! `failsafe::StateMachine` either: it reads failsafe's own clock (`std::time::Instant`, or a
//! thread-local mock), so under tokio's paused clock it needed a bridge. This state machine is
//! failsafe's (closed → open on the policy's word, open → half-open strictly after the open
//! interval, half-open → closed on a success or open again on a failure), on failsafe's
//! [`ConsecutiveFailures`] policy, with every decision given `now`.
//!
//! failsafe's half-open state admits every caller and closes on the first success. A
//! half-open vault should see one trial request, so [`Breaker::try_acquire`] adds a gate:
//! exactly one [`Permit`] is a probe at a time; dropping it unrecorded (a cancelled call)
//! reopens the gate without counting anything.
//!
//! A call's outcome counts only in the state it was permitted in: each transition starts a new
//! epoch, and an outcome whose permit is from an earlier epoch is dropped. Without this, a slow
//! call sent while closed could finish after the breaker opened and went half-open, and close or
//! reopen it in place of the one probe.
//!
//! failsafe's built-in backoffs work in whole seconds and use the thread RNG, so the open
//! interval comes from [`JitterBackoff`]: exponential from `open_base` to `open_max`, equal
//! jitter, sub-second, seeded.
//!
//! Transitions are told to the observer the breaker was built with, in the order they happen
//! and under the breaker's lock (the engine turns them into events and log lines).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use failsafe::failure_policy::{consecutive_failures, ConsecutiveFailures, FailurePolicy};

/// A breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BreakerState {
    /// Calls flow.
    Closed,
    /// Calls are refused until the open interval ends.
    Open,
    /// One trial call may go through.
    HalfOpen,
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

fn decode(state: u8) -> BreakerState {
    match state {
        CLOSED => BreakerState::Closed,
        OPEN => BreakerState::Open,
        _ => BreakerState::HalfOpen,
    }
}

/// Exponential backoff with equal jitter, in milliseconds, from a seed.
#[derive(Clone, Debug)]
pub struct JitterBackoff {
    next: Duration,
    max: Duration,
    rng: fastrand::Rng,
}

impl JitterBackoff {
    /// From `base` doubling to `max`, each draw in [½, 1] of its step, from `seed`.
    pub fn new(base: Duration, max: Duration, seed: u64) -> Self {
        JitterBackoff {
            next: base,
            max,
            rng: fastrand::Rng::with_seed(seed),
        }
    }
}

impl Iterator for JitterBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let d = self.next.min(self.max);
        self.next = self.next.saturating_mul(2).min(self.max);
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let half = (ms / 2).max(1);
        Some(Duration::from_millis(half + self.rng.u64(0..=half)).min(self.max))
    }
}

/// The three states, as failsafe's state machine keeps them.
#[derive(Debug, Clone, Copy)]
enum State {
    Closed,
    Open { until: Instant, delay: Duration },
    HalfOpen { delay: Duration },
}

struct Machine {
    state: State,
    policy: ConsecutiveFailures<JitterBackoff>,
}

type Observer = Box<dyn Fn(BreakerState) + Send + Sync>;

struct Shared {
    /// Serialises every decision and record, and the observer's calls with them.
    machine: Mutex<Machine>,
    observer: Observer,
    threshold: u32,
    state: AtomicU8,
    epoch: AtomicU64,
    probe_taken: AtomicBool,
}

impl Shared {
    /// Enters `state` (a new epoch) and tells the observer.
    fn enter(&self, m: &mut Machine, state: State) {
        m.state = state;
        let code = match state {
            State::Closed => CLOSED,
            State::Open { .. } => OPEN,
            State::HalfOpen { .. } => HALF_OPEN,
        };
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.state.store(code, Ordering::Release);
        (self.observer)(decode(code));
    }

    fn open(&self, m: &mut Machine, delay: Duration, now: Instant) {
        // Capped, never `now`: an interval past the clock's end must not let calls through.
        let until = crate::time::later(now, delay);
        self.enter(m, State::Open { until, delay });
    }

    fn close(&self, m: &mut Machine) {
        m.policy.revived();
        self.enter(m, State::Closed);
    }

    /// A failure, as failsafe's `on_error` decides it.
    fn failure(&self, m: &mut Machine, now: Instant) {
        match m.state {
            State::Closed => {
                if let Some(delay) = m.policy.mark_dead_on_failure() {
                    self.open(m, delay, now);
                }
            }
            State::HalfOpen { delay } => {
                let delay = m.policy.mark_dead_on_failure().unwrap_or(delay);
                self.open(m, delay, now);
            }
            State::Open { .. } => {}
        }
    }

    /// A success, as failsafe's `on_success` decides it.
    fn success(&self, m: &mut Machine) {
        if let State::HalfOpen { .. } = m.state {
            self.close(m);
        }
        m.policy.record_success();
    }
}

/// A vault's breaker. Cheap to clone (one `Arc`); clones share the state.
#[derive(Clone)]
pub struct Breaker {
    shared: Arc<Shared>,
}

/// What one call tells the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The vault answered well.
    Success,
    /// The vault is unhealthy.
    Failure,
    /// The vault answered, but its health is not in question (429, 401/403, 404, 4xx).
    NotRecorded,
}

/// Leave to send one request. Record its outcome with [`Breaker::record`]; dropping it
/// records nothing.
pub struct Permit {
    shared: Arc<Shared>,
    probe: bool,
    epoch: u64,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.probe {
            self.shared.probe_taken.store(false, Ordering::Release);
        }
    }
}

impl Breaker {
    /// A closed breaker that opens after `threshold` failures in a row, for an interval from
    /// [`JitterBackoff`] (`open_base` doubling to `open_max`, drawn from `seed`). `observer`
    /// hears every transition, the first being `Closed` at birth.
    pub fn new(
        threshold: u32,
        open_base: Duration,
        open_max: Duration,
        seed: u64,
        observer: impl Fn(BreakerState) + Send + Sync + 'static,
    ) -> Self {
        let policy = consecutive_failures(threshold, JitterBackoff::new(open_base, open_max, seed));
        let shared = Arc::new(Shared {
            machine: Mutex::new(Machine {
                state: State::Closed,
                policy,
            }),
            observer: Box::new(observer),
            threshold,
            state: AtomicU8::new(CLOSED),
            epoch: AtomicU64::new(0),
            probe_taken: AtomicBool::new(false),
        });
        {
            let mut m = crate::lock(&shared.machine);
            shared.enter(&mut m, State::Closed);
        }
        Breaker { shared }
    }

    /// The state as last observed (no lock). An open breaker whose interval has run out
    /// still reads `Open` until somebody asks for a permit.
    pub fn state(&self) -> BreakerState {
        decode(self.shared.state.load(Ordering::Acquire))
    }

    /// Leave to call at `now`, if the breaker allows it. In half-open, only one permit at a
    /// time; an open breaker whose interval ended strictly before `now` goes half-open.
    pub fn try_acquire(&self, now: Instant) -> Option<Permit> {
        let mut m = crate::lock(&self.shared.machine);
        if let State::Open { until, delay } = m.state {
            if now > until {
                self.shared.enter(&mut m, State::HalfOpen { delay });
            } else {
                return None;
            }
        }
        let epoch = self.shared.epoch.load(Ordering::Acquire);
        // Anything but closed is a trial: one permit at a time.
        let probe = self.state() != BreakerState::Closed;
        if probe
            && self
                .shared
                .probe_taken
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return None;
        }
        Some(Permit {
            shared: self.shared.clone(),
            probe,
            epoch,
        })
    }

    /// Opens the breaker at `now` (failed probes are decisive, whatever the call count says).
    pub fn trip(&self, now: Instant) {
        let mut m = crate::lock(&self.shared.machine);
        for _ in 0..=self.shared.threshold {
            if self.state() == BreakerState::Open {
                return;
            }
            self.shared.failure(&mut m, now);
        }
    }

    /// Closes a breaker that is not closed (the vault proved itself healthy).
    pub fn recovered(&self) {
        let mut m = crate::lock(&self.shared.machine);
        if self.state() != BreakerState::Closed {
            self.shared.close(&mut m);
        }
    }

    /// Records the outcome of the call `permit` allowed, at `now`. An outcome from an earlier
    /// epoch (the breaker changed state since the permit) is dropped.
    pub fn record(&self, permit: Permit, outcome: Outcome, now: Instant) {
        {
            let mut m = crate::lock(&self.shared.machine);
            if permit.epoch != self.shared.epoch.load(Ordering::Acquire) {
                return;
            }
            match outcome {
                Outcome::Failure => self.shared.failure(&mut m, now),
                Outcome::Success => self.shared.success(&mut m),
                Outcome::NotRecorded => {}
            }
        }
        drop(permit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_sub_second_capable_seeded_and_bounded() {
        let a: Vec<_> = JitterBackoff::new(Duration::from_millis(300), Duration::from_secs(2), 7)
            .take(8)
            .collect();
        let b: Vec<_> = JitterBackoff::new(Duration::from_millis(300), Duration::from_secs(2), 7)
            .take(8)
            .collect();
        assert_eq!(a, b);
        assert!(a[0] >= Duration::from_millis(150) && a[0] <= Duration::from_millis(300));
        assert!(a
            .iter()
            .all(|d| *d <= Duration::from_secs(2) && !d.is_zero()));
    }

    #[test]
    fn half_open_lets_exactly_one_probe_through() {
        {
            let mut t = Instant::now();
            let b = Breaker::new(2, Duration::from_secs(1), Duration::from_secs(1), 1, |_| {});
            for _ in 0..2 {
                let p = b.try_acquire(t).unwrap();
                b.record(p, Outcome::Failure, t);
            }
            assert_eq!(b.state(), BreakerState::Open);
            assert!(b.try_acquire(t).is_none());
            t += Duration::from_millis(1001);
            let probe = b.try_acquire(t).expect("half-open admits a probe");
            assert_eq!(b.state(), BreakerState::HalfOpen);
            for _ in 0..10 {
                assert!(
                    b.try_acquire(t).is_none(),
                    "a second caller got through half-open"
                );
            }
            // A cancelled probe records nothing and frees the gate.
            drop(probe);
            assert_eq!(b.state(), BreakerState::HalfOpen);
            let probe = b
                .try_acquire(t)
                .expect("gate reopened after a dropped probe");
            b.record(probe, Outcome::Success, t);
            assert_eq!(b.state(), BreakerState::Closed);
            assert!(b.try_acquire(t).is_some() && b.try_acquire(t).is_some());
        }
    }

    #[test]
    fn a_late_outcome_from_before_the_breaker_opened_does_not_decide_half_open() {
        {
            let mut t = Instant::now();
            let b = Breaker::new(1, Duration::from_secs(1), Duration::from_secs(1), 1, |_| {});
            let slow_success = b.try_acquire(t).unwrap();
            let p = b.try_acquire(t).unwrap();
            b.record(p, Outcome::Failure, t);
            assert_eq!(b.state(), BreakerState::Open);
            t += Duration::from_millis(1001);
            let probe = b.try_acquire(t).unwrap();
            assert_eq!(b.state(), BreakerState::HalfOpen);
            b.record(slow_success, Outcome::Success, t);
            assert_eq!(b.state(), BreakerState::HalfOpen, "only the probe decides");
            b.record(probe, Outcome::Failure, t);
            assert_eq!(b.state(), BreakerState::Open);
        }
    }

    /// Item 10 of the hardening issue: with threads racing the open-to-half-open transition,
    /// a half-open breaker admitted two callers (3 to 10 times in 4,000 trials). Real threads,
    /// real clock: each trial opens the breaker for 1 ms and lets three threads race for it.
    #[test]
    fn half_open_admits_one_caller_under_contention() {
        use std::sync::Barrier;
        const THREADS: usize = 3;
        let b = Breaker::new(
            1,
            Duration::from_millis(1),
            Duration::from_millis(1),
            1,
            |_| {},
        );
        let start = Arc::new(Barrier::new(THREADS + 1));
        let done = Arc::new(Barrier::new(THREADS + 1));
        let granted = Arc::new(AtomicU64::new(0));
        let trials = 2000;
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let (b, start, done, granted) =
                    (b.clone(), start.clone(), done.clone(), granted.clone());
                std::thread::spawn(move || {
                    for _ in 0..trials {
                        start.wait();
                        // Race for a permit until one is granted somewhere (bounded: 50 ms).
                        let t0 = Instant::now();
                        let mut mine = None;
                        while mine.is_none()
                            && granted.load(Ordering::Acquire) == 0
                            && t0.elapsed() < Duration::from_millis(50)
                        {
                            mine = b.try_acquire(Instant::now());
                        }
                        if mine.is_some() {
                            granted.fetch_add(1, Ordering::AcqRel);
                        }
                        done.wait();
                        drop(mine);
                    }
                })
            })
            .collect();
        let mut doubles = 0;
        for _ in 0..trials {
            // Closed, or half-open from the last trial: a failure opens it for 1 ms.
            let t = Instant::now();
            if let Some(p) = b.try_acquire(t) {
                b.record(p, Outcome::Failure, t); // threshold 1: open for 1 ms
            } else {
                b.trip(t);
            }
            assert_eq!(b.state(), BreakerState::Open);
            granted.store(0, Ordering::Release);
            start.wait();
            done.wait();
            if granted.load(Ordering::Acquire) > 1 {
                doubles += 1;
            }
        }
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(
            doubles, 0,
            "half-open admitted two callers in {doubles} of {trials} trials"
        );
    }

    #[test]
    fn not_recorded_outcomes_never_open() {
        {
            let t = Instant::now();
            let b = Breaker::new(1, Duration::from_secs(1), Duration::from_secs(1), 1, |_| {});
            for _ in 0..50 {
                let p = b.try_acquire(t).unwrap();
                b.record(p, Outcome::NotRecorded, t);
            }
            assert_eq!(b.state(), BreakerState::Closed);
        }
    }
}
