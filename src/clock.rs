//! Keeping `failsafe`'s clock in step with tokio's.
//!
//! The client reads time only through `tokio::time::Instant`, so under a paused runtime it
//! follows virtual time. `failsafe` reads `std::time::Instant`, or a thread-local `MockClock`
//! inside `failsafe::clock::freeze`. [`run_virtual`] runs a paused
//! current-thread runtime inside `freeze`, and [`sync_breaker_clock`] (called right before
//! every breaker operation) moves the mock clock forward to match tokio's. Outside
//! `run_virtual` it is one thread-local read and nothing else.

use std::cell::Cell;
#[cfg(any(test, feature = "test-util"))]
use std::future::Future;

use failsafe::clock::MockClock;

struct Bridge {
    clock: *mut MockClock,
    mock_base: std::time::Instant,
    tokio_base: tokio::time::Instant,
}

thread_local! {
    static BRIDGE: Cell<Option<Bridge>> = const { Cell::new(None) };
}

/// Moves failsafe's mock clock to tokio's virtual now, when running under [`run_virtual`].
pub(crate) fn sync_breaker_clock() {
    BRIDGE.with(|cell| {
        if let Some(b) = cell.take() {
            let target = b.mock_base + (tokio::time::Instant::now() - b.tokio_base);
            // SAFETY: `clock` points at the MockClock owned by the `failsafe::clock::freeze`
            // frame that encloses the whole of `run_virtual`, on this thread; the bridge is
            // cleared before that frame returns (see `Reset`). failsafe only reads it through
            // its own pointer between our calls, never while this reference exists.
            let clock = unsafe { &mut *b.clock };
            let now = clock.now();
            if target > now {
                clock.advance(target - now);
            }
            cell.set(Some(b));
        }
    });
}

#[cfg(any(test, feature = "test-util"))]
struct Reset;
#[cfg(any(test, feature = "test-util"))]
impl Drop for Reset {
    fn drop(&mut self) {
        BRIDGE.with(|c| c.set(None));
    }
}

/// Runs `fut` to completion in virtual time (a paused current-thread runtime, with the
/// breakers' clock following it). Fails only if the runtime cannot be built. For an
/// embedder's deterministic tests (feature `test-util`) and the simulator.
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
    Ok(failsafe::clock::freeze(|clock| {
        let mock_base = clock.now();
        let ptr: *mut MockClock = clock;
        rt.block_on(async move {
            BRIDGE.with(|c| {
                c.set(Some(Bridge {
                    clock: ptr,
                    mock_base,
                    tokio_base: tokio::time::Instant::now(),
                }))
            });
            let _reset = Reset;
            fut.await
        })
    }))
}

/// `now + d`, never panicking: a duration from outside (a server's `Retry-After`, a setting)
/// that would overflow the clock is cut to a year, which every caller also caps far below.
pub(crate) fn later(now: tokio::time::Instant, d: std::time::Duration) -> tokio::time::Instant {
    const YEAR: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);
    now.checked_add(d.min(YEAR))
        .or_else(|| now.checked_add(std::time::Duration::from_secs(3600)))
        .unwrap_or(now)
}

/// An instant kept in an atomic (lock-free to stamp and read): milliseconds after a base
/// instant the owner keeps, plus one; 0 means never (or cleared).
#[derive(Debug, Default)]
pub(crate) struct Mark(std::sync::atomic::AtomicU64);

impl Mark {
    /// Stamps now; skips the store when the millisecond has not changed.
    pub(crate) fn set(&self, base: tokio::time::Instant) {
        use std::sync::atomic::Ordering;
        let ms = base.elapsed().as_millis().min(u128::from(u64::MAX - 1)) as u64 + 1;
        if self.0.load(Ordering::Relaxed) != ms {
            self.0.store(ms, Ordering::Relaxed);
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
