//! Load limits: the retry budget and the per-vault request gate.
//!
//! Retries and failovers are extra load at the worst moment: when a region is failing, every
//! client retrying at once is what turns a brownout into an outage. [`RetryBudget`] follows
//! tower's `TpsBudget`: each first attempt deposits `ratio` tokens, each extra attempt
//! withdraws one, deposits expire after a window, and a floor of `min_per_sec` keeps a quiet
//! client able to retry at all.
//!
//! [`VaultGate`] keeps one client under its share of a vault's published limit (Key Vault:
//! 4,000 secret GETs per 10 s per vault) with a token bucket, and remembers until when the
//! vault asked us to back off with a 429 `Retry-After`. Neither reads a clock: every call takes
//! `now`, so the engine's paused clock, the simulator's virtual time and a test's hand-made
//! instants all drive them alike.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use std::time::Instant;

use crate::lock;
use crate::time::{later, scale, unit};

/// Retries allowed as a share of first attempts, over a sliding window.
pub struct RetryBudget {
    inner: Mutex<BudgetState>,
    /// Milli-tokens each first attempt deposits (ratio × 1000: integers, so 100 × 0.2 is 20).
    deposit_milli: u64,
    /// Retries always allowed per window, in milli-tokens.
    floor_milli: u64,
    window: Duration,
}

struct BudgetState {
    /// (when, deposited) per first attempt, oldest first.
    deposits: VecDeque<(Instant, u64)>,
    deposited: u64,
    withdrawn: VecDeque<Instant>,
}

impl RetryBudget {
    /// Each first attempt allows `ratio` retries, for `window`; `min_per_sec` retries per
    /// second are always allowed.
    pub fn new(ratio: f64, min_per_sec: u32, window: Duration) -> Self {
        RetryBudget {
            inner: Mutex::new(BudgetState {
                deposits: VecDeque::new(),
                deposited: 0,
                withdrawn: VecDeque::new(),
            }),
            deposit_milli: (ratio * 1000.0).round() as u64,
            floor_milli: u64::from(min_per_sec)
                .saturating_mul(u64::try_from(window.as_millis()).unwrap_or(u64::MAX)),
            window,
        }
    }

    fn expire(&self, st: &mut BudgetState, now: Instant) {
        while let Some(&(t, d)) = st.deposits.front() {
            if now.duration_since(t) < self.window {
                break;
            }
            st.deposits.pop_front();
            st.deposited = st.deposited.saturating_sub(d);
        }
        while let Some(&t) = st.withdrawn.front() {
            if now.duration_since(t) < self.window {
                break;
            }
            st.withdrawn.pop_front();
        }
        if st.deposits.is_empty() {
            st.deposited = 0;
        }
    }

    /// A first attempt was made at `now`.
    pub fn deposit(&self, now: Instant) {
        let mut st = lock(&self.inner);
        self.expire(&mut st, now);
        st.deposits.push_back((now, self.deposit_milli));
        st.deposited = st.deposited.saturating_add(self.deposit_milli);
        // Bound memory under very high rates: fold into the newest slot past 100k entries.
        if st.deposits.len() > 100_000 {
            if let Some((_, d)) = st.deposits.pop_front() {
                if let Some(back) = st.deposits.back_mut() {
                    back.1 = back.1.saturating_add(d);
                }
            }
        }
    }

    /// Takes one retry at `now`, if the budget allows it.
    pub fn withdraw(&self, now: Instant) -> bool {
        let mut st = lock(&self.inner);
        self.expire(&mut st, now);
        let allowed = st.deposited.saturating_add(self.floor_milli);
        let wanted = (st.withdrawn.len() as u64)
            .saturating_add(1)
            .saturating_mul(1000);
        if wanted <= allowed {
            st.withdrawn.push_back(now);
            true
        } else {
            false
        }
    }
}

/// One vault's request gate: at most `capacity` requests in any sliding window, and its 429
/// back-off.
///
/// A sliding log rather than a token bucket: a bucket of `capacity` refilled over the window
/// lets `2 × capacity` through in one window (a full bucket, then a window of refill), which
/// would break the vault's limit. The log holds at most `capacity` instants.
pub struct VaultGate {
    inner: Mutex<GateState>,
    capacity: usize,
    window: Duration,
    /// 429s in a row, with no answer in between.
    throttle_streak: AtomicU32,
}

struct GateState {
    sent: VecDeque<Instant>,
    throttled_until: Option<Instant>,
}

impl VaultGate {
    /// `limit` requests per `window`, of which this client takes `fraction`.
    pub fn new(limit: u32, window: Duration, fraction: f64) -> Self {
        let capacity = ((limit as f64 * fraction).floor() as usize).max(1);
        VaultGate {
            inner: Mutex::new(GateState {
                // Grown as calls are sent: most clients send a few calls per window, and a
                // fleet of clients should not each hold room for 4,000 instants per vault.
                sent: VecDeque::new(),
                throttled_until: None,
            }),
            capacity,
            window,
            throttle_streak: AtomicU32::new(0),
        }
    }

    fn take_below(&self, limit: usize, now: Instant) -> bool {
        let mut st = lock(&self.inner);
        if st.throttled_until.is_some_and(|t| now < t) {
            return false;
        }
        while st
            .sent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            st.sent.pop_front();
        }
        if st.sent.len() < limit {
            st.sent.push_back(now);
            true
        } else {
            false
        }
    }

    /// Takes a slot unless the vault is throttled or the window is full.
    pub fn try_take(&self, now: Instant) -> bool {
        self.take_below(self.capacity, now)
    }

    /// Takes a slot only if more than `reserve` of the window's capacity would remain:
    /// background work (refresh, drift checks) yields to callers' reads when the budget runs low.
    pub fn try_take_above(&self, reserve: f64, now: Instant) -> bool {
        let limit = (self.capacity as f64 * (1.0 - reserve)).floor() as usize;
        self.take_below(limit, now)
    }

    /// The vault answered 429 asking for `asked` (already capped): keeps off it for that long,
    /// or longer when it keeps answering 429: the `n`-th in a row, with no answer in between,
    /// keeps off for a draw in [½, 1] × `asked` × 2^(n−1), at most `cap` and never less than
    /// `asked`. `Retry-After` says when one client may try again; a vault's limit is shared,
    /// and a fleet of clients that each come back at once keeps it saturated with 429s (at
    /// 10,000 instances, 20,000 refused calls per second for a 1 s `Retry-After`).
    /// `draw` is uniform in [0, 1). Returns the hold-off applied.
    pub fn throttle(&self, asked: Duration, cap: Duration, draw: f64, now: Instant) -> Duration {
        let n = self
            .throttle_streak
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let ceiling = asked.saturating_mul(1 << (n - 1).min(16)).min(cap);
        let wait = scale(ceiling, 0.5 + 0.5 * unit(draw)).max(asked);
        let until = later(now, wait);
        let mut st = lock(&self.inner);
        st.throttled_until = Some(st.throttled_until.map_or(until, |t| t.max(until)));
        wait
    }

    /// The vault answered something other than 429: the next 429 starts a new streak.
    pub fn answered(&self) {
        if self.throttle_streak.load(Ordering::Relaxed) != 0 {
            self.throttle_streak.store(0, Ordering::Relaxed);
        }
    }

    /// Until when the vault asked us to back off, if that is still ahead of `now`.
    pub fn throttled_until(&self, now: Instant) -> Option<Instant> {
        lock(&self.inner).throttled_until.filter(|t| *t > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_allows_ratio_plus_floor() {
        let t = Instant::now();
        let b = RetryBudget::new(0.2, 0, Duration::from_secs(10));
        for _ in 0..100 {
            b.deposit(t);
        }
        let granted = (0..100).filter(|_| b.withdraw(t)).count();
        assert_eq!(granted, 20);
        assert!(
            !b.withdraw(t + Duration::from_secs(11)),
            "deposits expire with the window"
        );
        let floor = RetryBudget::new(0.2, 1, Duration::from_secs(10));
        assert_eq!((0..100).filter(|_| floor.withdraw(t)).count(), 10);
    }

    #[test]
    fn gate_never_admits_more_than_capacity_in_any_window() {
        let g = VaultGate::new(100, Duration::from_secs(10), 0.5);
        let mut now = Instant::now();
        let mut admitted: Vec<Instant> = Vec::new();
        for _ in 0..400 {
            for _ in 0..7 {
                if g.try_take(now) {
                    admitted.push(now);
                }
            }
            now += Duration::from_millis(100);
        }
        for (i, t) in admitted.iter().enumerate() {
            let in_window = admitted[i..]
                .iter()
                .take_while(|u| u.duration_since(*t) < Duration::from_secs(10))
                .count();
            assert!(in_window <= 50, "{in_window} in one window");
        }
        assert!(
            admitted.len() >= 50 * 4,
            "the full budget is usable: {}",
            admitted.len()
        );
    }

    #[test]
    fn gate_limits_rate_and_honours_retry_after() {
        let g = VaultGate::new(100, Duration::from_secs(10), 0.5);
        let mut now = Instant::now();
        assert_eq!((0..1000).filter(|_| g.try_take_above(0.2, now)).count(), 40);
        assert_eq!((0..1000).filter(|_| g.try_take(now)).count(), 10);
        now += Duration::from_secs(10);
        assert_eq!((0..1000).filter(|_| g.try_take(now)).count(), 50);
        now += Duration::from_secs(100);
        g.throttle(Duration::from_secs(3), Duration::from_secs(60), 0.5, now);
        assert!(!g.try_take(now));
        assert!(g.throttled_until(now).is_some());
        now += Duration::from_secs(3);
        assert!(g.try_take(now));
        assert!(g.throttled_until(now).is_none());
    }

    /// 429s in a row keep a client off longer and longer (never less than asked, never more
    /// than the cap); an answer in between starts over.
    #[test]
    fn a_streak_of_429s_backs_off_beyond_retry_after_up_to_the_cap() {
        let now = Instant::now();
        let g = VaultGate::new(100, Duration::from_secs(10), 0.5);
        let (asked, cap) = (Duration::from_secs(1), Duration::from_secs(60));
        let waits: Vec<u64> = (0..10)
            .map(|_| g.throttle(asked, cap, 0.99, now).as_secs())
            .collect();
        assert_eq!(waits, [1, 1, 3, 7, 15, 31, 59, 59, 59, 59]);
        // Half the ceiling at the lowest draw, never under what the vault asked.
        g.answered();
        assert_eq!(g.throttle(asked, cap, 0.0, now), asked);
        assert_eq!(g.throttle(asked, cap, 0.0, now), asked);
        assert_eq!(g.throttle(asked, cap, 0.0, now), 2 * asked);
        // The hold-off applies: the gate stays shut for it.
        let g = VaultGate::new(100, Duration::from_secs(10), 0.5);
        g.throttle(asked, cap, 0.0, now);
        g.throttle(asked, cap, 0.0, now);
        g.throttle(asked, cap, 0.0, now);
        assert!(!g.try_take(now + Duration::from_millis(1_900)));
        assert!(g.try_take(now + Duration::from_millis(2_100)));
        // A huge streak neither overflows nor passes the cap.
        for _ in 0..100 {
            assert!(g.throttle(Duration::from_secs(10), cap, 0.99, now) <= cap);
        }
    }
}
