//! # keyvault-failover-core
//!
//! The decisions of [`keyvault-failover`](https://docs.rs/keyvault-failover), free of I/O and
//! of clocks: nothing here reads the time, sleeps, spawns or touches a socket. Every decision
//! that depends on time takes `now` from its caller (quinn-proto's habit), so the same code
//! runs in production, under tokio's paused clock and in the deterministic simulator, and its
//! tests need no runtime.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use keyvault_failover_core::breaker::{Breaker, Outcome};
//! use keyvault_failover_core::BreakerState;
//!
//! let b = Breaker::new(1, Duration::from_secs(1), Duration::from_secs(1), 7, |_| {});
//! let t0 = Instant::now();
//! let permit = b.try_acquire(t0).expect("a closed breaker lets calls through");
//! b.record(permit, Outcome::Failure, t0);
//! assert_eq!(b.state(), BreakerState::Open);
//! assert!(b.try_acquire(t0 + Duration::from_millis(500)).is_none());
//! let probe = b.try_acquire(t0 + Duration::from_secs(2)).expect("one trial call");
//! assert_eq!(b.state(), BreakerState::HalfOpen);
//! b.record(probe, Outcome::Success, t0 + Duration::from_secs(2));
//! assert_eq!(b.state(), BreakerState::Closed);
//! ```
#![deny(missing_docs)]

pub mod breaker;
pub mod budget;
mod event;
pub mod freshness;
pub mod hedge;
pub mod outcome;
pub mod outlier;
pub mod probe;
pub mod retry_after;
pub mod route;
pub mod time;

pub use breaker::BreakerState;
pub use event::{Event, Mode};

/// Locks `m`, going on through poisoning: every guarded value here stays consistent when a
/// holder panics (decisions are made in one step under the lock).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
