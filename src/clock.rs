//! Time in the engine: tokio's clock only (`tokio::time::Instant`), so under a paused runtime
//! everything follows virtual time; the decision core takes the `now` the engine reads here.

#[cfg(any(test, feature = "test-util"))]
use std::future::Future;

/// Runs `fut` to completion in virtual time (a paused current-thread runtime: every timer and
/// every decision of the client follow tokio's paused clock). Fails only if the runtime cannot
/// be built. For an embedder's deterministic tests (feature `test-util`) and the simulator.
///
/// ```
/// use std::time::Duration;
/// let elapsed = keyvault_failover::run_virtual(async {
///     let t = tokio::time::Instant::now();
///     tokio::time::sleep(Duration::from_secs(3600)).await; // returns at once
///     t.elapsed()
/// }).unwrap();
/// assert!(elapsed >= Duration::from_secs(3600));
/// ```
#[cfg(any(test, feature = "test-util"))]
pub fn run_virtual<F: Future>(fut: F) -> std::io::Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()?;
    Ok(rt.block_on(fut))
}

/// The engine's `now` for the decision core: tokio's clock (so paused time drives every
/// decision) as the `std::time::Instant` the core takes. The one place the engine reads it for
/// the core's gates, budget and breakers.
pub(crate) fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// `now + d` on tokio's clock, never panicking: the core's
/// [`later`](keyvault_failover_core::time::later) (a duration that would overflow the clock is
/// cut to a year).
pub(crate) fn later(now: tokio::time::Instant, d: std::time::Duration) -> tokio::time::Instant {
    tokio::time::Instant::from_std(keyvault_failover_core::time::later(now.into_std(), d))
}

/// An instant kept in an atomic (lock-free to stamp and read): milliseconds after a base
/// instant the owner keeps, plus one; 0 means never (or cleared).
#[derive(Debug, Default)]
pub(crate) struct Mark(std::sync::atomic::AtomicU64);

impl Mark {
    /// The stored form of an instant `since_base` after the base.
    fn encode(since_base: std::time::Duration) -> u64 {
        since_base.as_millis().min(u128::from(u64::MAX - 1)) as u64 + 1
    }

    /// Stamps now; skips the store when the millisecond has not changed.
    pub(crate) fn set(&self, base: tokio::time::Instant) {
        use std::sync::atomic::Ordering;
        let ms = Self::encode(base.elapsed());
        if self.0.load(Ordering::Relaxed) != ms {
            self.0.store(ms, Ordering::Relaxed);
        }
    }

    /// Stamps `d` from now (a deadline rather than an event).
    pub(crate) fn set_after(&self, base: tokio::time::Instant, d: std::time::Duration) {
        let ms = Self::encode(base.elapsed().saturating_add(d));
        self.0.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// How far the stamp lies ahead of the instant `since_base` after the base, if it does.
    pub(crate) fn ahead_of(&self, since_base: std::time::Duration) -> Option<std::time::Duration> {
        match self.0.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            ms => std::time::Duration::from_millis(ms - 1)
                .checked_sub(since_base)
                .filter(|d| !d.is_zero()),
        }
    }

    /// Forgets the stamp.
    pub(crate) fn clear(&self) {
        self.0.store(0, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether it was stamped less than `d` ago.
    pub(crate) fn within(&self, base: tokio::time::Instant, d: std::time::Duration) -> bool {
        match self.0.load(std::sync::atomic::Ordering::Relaxed) {
            0 => false,
            ms => {
                let at = std::time::Duration::from_millis(ms - 1);
                base.elapsed().saturating_sub(at) < d
            }
        }
    }
}
