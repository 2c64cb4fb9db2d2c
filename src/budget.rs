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
//! vault asked us to back off with a 429 `Retry-After`. Both read `tokio::time::Instant`, so
//! they follow paused time.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::lock;

/// Retries allowed as a share of first attempts, over a sliding window.
pub(crate) struct RetryBudget {
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
    pub(crate) fn new(ratio: f64, min_per_sec: u32, window: Duration) -> Self {
        RetryBudget {
            inner: Mutex::new(BudgetState {
                deposits: VecDeque::new(),
                deposited: 0,
                withdrawn: VecDeque::new(),
            }),
            deposit_milli: (ratio * 1000.0).round() as u64,
            floor_milli: u64::from(min_per_sec) * window.as_millis() as u64,
            window,
        }
    }

    fn expire(&self, st: &mut BudgetState, now: Instant) {
        while let Some(&(t, d)) = st.deposits.front() {
            if now.duration_since(t) < self.window {
                break;
            }
            st.deposits.pop_front();
            st.deposited -= d;
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

    /// A first attempt was made.
    pub(crate) fn deposit(&self) {
        let now = Instant::now();
        let mut st = lock(&self.inner);
        self.expire(&mut st, now);
        st.deposits.push_back((now, self.deposit_milli));
        st.deposited += self.deposit_milli;
        // Bound memory under very high rates: fold into the newest slot past 100k entries.
        if st.deposits.len() > 100_000 {
            if let Some((_, d)) = st.deposits.pop_front() {
                if let Some(back) = st.deposits.back_mut() {
                    back.1 += d;
                }
            }
        }
    }

    /// Takes one retry, if the budget allows it.
    pub(crate) fn withdraw(&self) -> bool {
        let now = Instant::now();
        let mut st = lock(&self.inner);
        self.expire(&mut st, now);
        let allowed = st.deposited + self.floor_milli;
        if (st.withdrawn.len() as u64 + 1) * 1000 <= allowed {
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
pub(crate) struct VaultGate {
    inner: Mutex<GateState>,
    capacity: usize,
    window: Duration,
}

struct GateState {
    sent: VecDeque<Instant>,
    throttled_until: Option<Instant>,
}

impl VaultGate {
    /// `limit` requests per `window`, of which this client takes `fraction`.
    pub(crate) fn new(limit: u32, window: Duration, fraction: f64) -> Self {
        let capacity = ((limit as f64 * fraction).floor() as usize).max(1);
        VaultGate {
            inner: Mutex::new(GateState {
                sent: VecDeque::with_capacity(capacity.min(4096)),
                throttled_until: None,
            }),
            capacity,
            window,
        }
    }

    fn take_below(&self, limit: usize) -> bool {
        let now = Instant::now();
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
    pub(crate) fn try_take(&self) -> bool {
        self.take_below(self.capacity)
    }

    /// Takes a slot only if more than `reserve` of the window's capacity would remain:
    /// background work (refresh, drift checks) yields to callers' reads when the budget runs low.
    pub(crate) fn try_take_above(&self, reserve: f64) -> bool {
        let limit = (self.capacity as f64 * (1.0 - reserve)).floor() as usize;
        self.take_below(limit)
    }

    /// The vault answered 429: keep off it for `retry_after`.
    pub(crate) fn throttle(&self, retry_after: Duration) {
        let until = crate::clock::later(Instant::now(), retry_after);
        let mut st = lock(&self.inner);
        st.throttled_until = Some(st.throttled_until.map_or(until, |t| t.max(until)));
    }

    /// Until when the vault asked us to back off, if that is still ahead.
    pub(crate) fn throttled_until(&self) -> Option<Instant> {
        let now = Instant::now();
        lock(&self.inner).throttled_until.filter(|t| *t > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn budget_allows_ratio_plus_floor() {
        let b = RetryBudget::new(0.2, 0, Duration::from_secs(10));
        for _ in 0..100 {
            b.deposit();
        }
        let granted = (0..100).filter(|_| b.withdraw()).count();
        assert_eq!(granted, 20);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!b.withdraw(), "deposits expire with the window");
        let floor = RetryBudget::new(0.2, 1, Duration::from_secs(10));
        assert_eq!((0..100).filter(|_| floor.withdraw()).count(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn gate_never_admits_more_than_capacity_in_any_window() {
        let g = VaultGate::new(100, Duration::from_secs(10), 0.5);
        let mut admitted: Vec<Instant> = Vec::new();
        for _ in 0..400 {
            for _ in 0..7 {
                if g.try_take() {
                    admitted.push(Instant::now());
                }
            }
            tokio::time::advance(Duration::from_millis(100)).await;
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

    #[tokio::test(start_paused = true)]
    async fn gate_limits_rate_and_honours_retry_after() {
        let g = VaultGate::new(100, Duration::from_secs(10), 0.5);
        assert_eq!((0..1000).filter(|_| g.try_take_above(0.2)).count(), 40);
        assert_eq!((0..1000).filter(|_| g.try_take()).count(), 10);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!((0..1000).filter(|_| g.try_take()).count(), 50);
        tokio::time::advance(Duration::from_secs(100)).await;
        g.throttle(Duration::from_secs(3));
        assert!(!g.try_take());
        assert!(g.throttled_until().is_some());
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(g.try_take());
        assert!(g.throttled_until().is_none());
    }
}
