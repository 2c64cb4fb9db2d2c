//! One circuit breaker per vault, on `failsafe::StateMachine`.
//!
//! Why not `failsafe::futures::CircuitBreaker::call_with`: it counts an error that the
//! predicate rejects as a *success* and records nothing for a dropped future. We classify
//! every outcome ourselves ([`Verdict`]) and call `on_success`/`on_error` directly.
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

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use failsafe::failure_policy::{consecutive_failures, ConsecutiveFailures};
use failsafe::{Instrument, StateMachine};

use crate::clock::sync_breaker_clock;
use crate::error::Verdict;
use crate::events::{Event, Events};

/// A breaker's state, as [`health`](crate::FailoverClient::health) reports it.
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

/// Exponential backoff with equal jitter, in milliseconds, from a seed.
#[derive(Clone, Debug)]
pub(crate) struct JitterBackoff {
    next: Duration,
    max: Duration,
    rng: fastrand::Rng,
}

impl JitterBackoff {
    pub(crate) fn new(base: Duration, max: Duration, seed: u64) -> Self {
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
        self.next = (self.next * 2).min(self.max);
        let half = (d.as_millis() as u64 / 2).max(1);
        Some(Duration::from_millis(half + self.rng.u64(0..=half)).min(self.max))
    }
}

#[derive(Clone)]
struct Mirror {
    state: Arc<AtomicU8>,
    epoch: Arc<AtomicU64>,
    region: Arc<str>,
    events: Events,
}

impl Mirror {
    fn set(&self, state: u8) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.state.store(state, Ordering::Release);
        let state = match state {
            CLOSED => BreakerState::Closed,
            OPEN => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        };
        self.events.emit(Event::Breaker {
            region: self.region.clone(),
            state,
        });
    }
}

impl Instrument for Mirror {
    fn on_call_rejected(&self) {}
    fn on_open(&self) {
        self.set(OPEN);
        tracing::warn!(region = %self.region, "breaker opened");
    }
    fn on_half_open(&self) {
        self.set(HALF_OPEN);
        tracing::info!(region = %self.region, "breaker half-open");
    }
    fn on_closed(&self) {
        self.set(CLOSED);
        tracing::info!(region = %self.region, "breaker closed");
    }
}

type Machine = StateMachine<ConsecutiveFailures<JitterBackoff>, Mirror>;

struct Shared {
    /// Serialises every decision and record on the machine. failsafe calls its instrument (our
    /// state mirror) *after* releasing its own lock, so without this a caller could be
    /// permitted by a half-open machine while the mirror still read `Open`, and take a plain
    /// permit beside the one trial.
    decide: std::sync::Mutex<()>,
    machine: Machine,
    threshold: u32,
    state: Arc<AtomicU8>,
    epoch: Arc<AtomicU64>,
    probe_taken: AtomicBool,
}

/// A vault's breaker.
#[derive(Clone)]
pub(crate) struct Breaker {
    shared: Arc<Shared>,
}

/// What one call tells the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The vault answered well.
    Success,
    /// The vault is unhealthy.
    Failure,
    /// The vault answered, but its health is not in question (429, 401/403, 404, 4xx).
    NotRecorded,
}

impl From<Verdict> for Outcome {
    fn from(v: Verdict) -> Self {
        match v {
            Verdict::Failure => Outcome::Failure,
            Verdict::NotRecorded => Outcome::NotRecorded,
        }
    }
}

/// Leave to send one request. Record its outcome with [`Breaker::record`]; dropping it
/// records nothing.
pub(crate) struct Permit {
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
    pub(crate) fn new(
        region: Arc<str>,
        threshold: u32,
        open_base: Duration,
        open_max: Duration,
        seed: u64,
        events: Events,
    ) -> Self {
        let state = Arc::new(AtomicU8::new(CLOSED));
        let epoch = Arc::new(AtomicU64::new(0));
        let policy = consecutive_failures(threshold, JitterBackoff::new(open_base, open_max, seed));
        let mirror = Mirror {
            state: state.clone(),
            epoch: epoch.clone(),
            region,
            events,
        };
        sync_breaker_clock();
        Breaker {
            shared: Arc::new(Shared {
                decide: std::sync::Mutex::new(()),
                machine: StateMachine::new(policy, mirror),
                threshold,
                state,
                epoch,
                probe_taken: AtomicBool::new(false),
            }),
        }
    }

    /// The state as last observed (no lock). An open breaker whose interval has run out
    /// still reads `Open` until somebody asks for a permit.
    pub(crate) fn state(&self) -> BreakerState {
        match self.shared.state.load(Ordering::Acquire) {
            CLOSED => BreakerState::Closed,
            OPEN => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    /// Leave to call, if the breaker allows it. In half-open, only one permit at a time.
    pub(crate) fn try_acquire(&self) -> Option<Permit> {
        sync_breaker_clock();
        let _d = crate::lock(&self.shared.decide);
        if !self.shared.machine.is_call_permitted() {
            return None;
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

    /// Opens the breaker now (failed probes are decisive, whatever the call count says).
    pub(crate) fn trip(&self) {
        sync_breaker_clock();
        let _d = crate::lock(&self.shared.decide);
        for _ in 0..=self.shared.threshold {
            if self.state() == BreakerState::Open {
                return;
            }
            self.shared.machine.on_error();
        }
    }

    /// A health probe sent outside the breaker's gate (the breaker was open) succeeded: the
    /// vault is back, close the breaker now rather than after the open interval.
    pub(crate) fn recovered(&self) {
        sync_breaker_clock();
        let _d = crate::lock(&self.shared.decide);
        if self.state() != BreakerState::Closed {
            self.shared.machine.reset();
        }
    }

    /// Records a call's outcome and gives the permit back. An outcome from an earlier epoch
    /// (the breaker changed state while the call was in flight) is dropped.
    pub(crate) fn record(&self, permit: Permit, outcome: Outcome) {
        sync_breaker_clock();
        {
            let _d = crate::lock(&self.shared.decide);
            if permit.epoch != self.shared.epoch.load(Ordering::Acquire) {
                return;
            }
            match outcome {
                Outcome::Failure => self.shared.machine.on_error(),
                Outcome::Success => self.shared.machine.on_success(),
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
        crate::clock::run_virtual(async {
            let b = Breaker::new(
                "weu".into(),
                2,
                Duration::from_secs(1),
                Duration::from_secs(1),
                1,
                Events::new(),
            );
            for _ in 0..2 {
                let p = b.try_acquire().unwrap();
                b.record(p, Outcome::Failure);
            }
            assert_eq!(b.state(), BreakerState::Open);
            assert!(b.try_acquire().is_none());
            tokio::time::sleep(Duration::from_millis(1001)).await;
            let probe = b.try_acquire().expect("half-open admits a probe");
            assert_eq!(b.state(), BreakerState::HalfOpen);
            for _ in 0..10 {
                assert!(
                    b.try_acquire().is_none(),
                    "a second caller got through half-open"
                );
            }
            // A cancelled probe records nothing and frees the gate.
            drop(probe);
            assert_eq!(b.state(), BreakerState::HalfOpen);
            let probe = b
                .try_acquire()
                .expect("gate reopened after a dropped probe");
            b.record(probe, Outcome::Success);
            assert_eq!(b.state(), BreakerState::Closed);
            assert!(b.try_acquire().is_some() && b.try_acquire().is_some());
        })
        .unwrap();
    }

    #[test]
    fn a_late_outcome_from_before_the_breaker_opened_does_not_decide_half_open() {
        crate::clock::run_virtual(async {
            let b = Breaker::new(
                "weu".into(),
                1,
                Duration::from_secs(1),
                Duration::from_secs(1),
                1,
                Events::new(),
            );
            let slow_success = b.try_acquire().unwrap();
            let p = b.try_acquire().unwrap();
            b.record(p, Outcome::Failure);
            assert_eq!(b.state(), BreakerState::Open);
            tokio::time::sleep(Duration::from_millis(1001)).await;
            let probe = b.try_acquire().unwrap();
            assert_eq!(b.state(), BreakerState::HalfOpen);
            b.record(slow_success, Outcome::Success);
            assert_eq!(b.state(), BreakerState::HalfOpen, "only the probe decides");
            b.record(probe, Outcome::Failure);
            assert_eq!(b.state(), BreakerState::Open);
        })
        .unwrap();
    }

    /// Item 10 of the hardening issue: with threads racing the open-to-half-open transition,
    /// a half-open breaker admitted two callers (3 to 10 times in 4,000 trials). Real threads,
    /// real clock: each trial opens the breaker for 1 ms and lets three threads race for it.
    #[test]
    fn half_open_admits_one_caller_under_contention() {
        use std::sync::Barrier;
        const THREADS: usize = 3;
        let b = Breaker::new(
            "weu".into(),
            1,
            Duration::from_millis(1),
            Duration::from_millis(1),
            1,
            Events::new(),
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
                        let t0 = std::time::Instant::now();
                        let mut mine = None;
                        while mine.is_none()
                            && granted.load(Ordering::Acquire) == 0
                            && t0.elapsed() < Duration::from_millis(50)
                        {
                            mine = b.try_acquire();
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
            if let Some(p) = b.try_acquire() {
                b.record(p, Outcome::Failure); // threshold 1: open for 1 ms
            } else {
                b.trip();
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
        crate::clock::run_virtual(async {
            let b = Breaker::new(
                "weu".into(),
                1,
                Duration::from_secs(1),
                Duration::from_secs(1),
                1,
                Events::new(),
            );
            for _ in 0..50 {
                let p = b.try_acquire().unwrap();
                b.record(p, Outcome::NotRecorded);
            }
            assert_eq!(b.state(), BreakerState::Closed);
        })
        .unwrap();
    }
}
