//! A vault's call budget as the replicator keeps it: a sliding window, and `Retry-After`.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A sliding-window budget: at most `limit` calls in any `window`, and no call before a
/// `Retry-After` has passed. Its clock is tokio's (paused in tests).
pub(super) struct Budget {
    limit: usize,
    window: Duration,
    state: Mutex<(VecDeque<Instant>, Option<Instant>)>,
}

impl Budget {
    pub(super) fn new(limit: usize, window: Duration) -> Self {
        Budget {
            limit,
            window,
            state: Mutex::new((VecDeque::new(), None)),
        }
    }

    pub(super) async fn take(&self) {
        loop {
            let wake = {
                let now = Instant::now();
                let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                let (log, hold) = &mut *st;
                match *hold {
                    Some(h) if h > now => Some(h),
                    _ => {
                        while log
                            .front()
                            .is_some_and(|t| now.saturating_duration_since(*t) >= self.window)
                        {
                            log.pop_front();
                        }
                        if log.len() < self.limit {
                            log.push_back(now);
                            None
                        } else {
                            log.front().and_then(|t| t.checked_add(self.window))
                        }
                    }
                }
            };
            match wake {
                None => return,
                Some(t) => tokio::time::sleep_until(t).await,
            }
        }
    }

    pub(super) fn hold(&self, wait: Duration) {
        let Some(until) = Instant::now().checked_add(wait) else {
            return;
        };
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.1 = Some(st.1.map_or(until, |h| h.max(until)));
    }
}
