//! Last-known-good cache: lock-free hits, constant-cost inserts, single-flight misses, a
//! refresh schedule, and write ordering.
//!
//! * **Map.** A concurrent hash map (`papaya`): a hit is a lock-free lookup and an `Arc`
//!   clone, and an insert costs the same at 10 or 100,000 entries (the copy-on-write map this
//!   replaced copied every entry on each insert: 2.7 ms per miss at 20,000 secrets).
//! * **Schedule.** A min-heap of `(when, key)`: the refresher pops what is due instead of
//!   scanning every entry, and is woken only when an insert becomes the earliest item. Items
//!   are checked against the entry when popped; a stale item (the entry was replaced or
//!   re-scheduled) is dropped then.
//! * **Single flight.** Concurrent misses for one key share one vault call. The flight's
//!   [`Urgency`] starts as background (a refresh) or foreground (a caller); a caller that joins
//!   a background flight raises it, so the read in progress gets a caller's hedging and budget.
//!   A flight whose leader is cancelled is taken over by a waiter, and its cell is removed
//!   with the last of them (no cell outlives its callers).
//! * **Write ordering.** A write or delete records when it finished; a fetch that *started*
//!   before that is not cached (its answer may predate the write), and a read that begins after
//!   the write never joins a flight that began before it. Records older than any fetch can be
//!   are pruned.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, OnceCell};
use tokio::time::Instant;

use crate::lock;
use crate::secret::Entry;

/// Cache key of the latest version (`name`) or of one version (`name/version`),
/// with the name case-folded.
pub(crate) fn key(name_key: &str, version: Option<&str>) -> String {
    match version {
        None => name_key.to_string(),
        Some(v) => format!("{name_key}/{v}"),
    }
}

/// Whether a cache key is a pinned version's (`name/version`), not a latest value's.
pub(crate) fn is_pinned(key: &str) -> bool {
    key.contains('/')
}

/// The name part of a cache key.
pub(crate) fn name_of(key: &str) -> &str {
    key.split_once('/').map_or(key, |(n, _)| n)
}

/// Whether a fetch in flight is a background refresh or serves a caller. Raised (never
/// lowered) when a caller joins.
pub(crate) struct Urgency {
    foreground: AtomicBool,
    raised: Notify,
}

impl Urgency {
    pub(crate) fn new(foreground: bool) -> Self {
        Urgency {
            foreground: AtomicBool::new(foreground),
            raised: Notify::new(),
        }
    }

    /// A background refresh nobody waits for (yet).
    pub(crate) fn is_background(&self) -> bool {
        !self.foreground.load(Ordering::Acquire)
    }

    fn raise(&self) {
        if !self.foreground.swap(true, Ordering::AcqRel) {
            self.raised.notify_waiters();
        }
    }

    /// Resolves when a caller joins a background flight (never, once foreground).
    pub(crate) async fn raised(&self) {
        let wait = self.raised.notified();
        if self.is_background() {
            wait.await;
        } else {
            std::future::pending::<()>().await;
        }
    }
}

struct Flight<R> {
    cell: OnceCell<R>,
    urgency: Arc<Urgency>,
    started: Instant,
}

type Map = papaya::HashMap<Box<str>, Arc<Entry>, foldhash::fast::RandomState>;
/// Scheduled checks, earliest first.
type Schedule = BinaryHeap<Reverse<(Instant, Box<str>)>>;

/// Schedules `key` at `at` in `heap`; wakes its task if that is now the earliest item.
fn push(heap: &Mutex<Schedule>, wake: &Notify, key: &str, at: Instant) {
    let mut h = lock(heap);
    let earliest = h.peek().is_none_or(|Reverse((t, _))| at < *t);
    h.push(Reverse((at, key.into())));
    drop(h);
    if earliest {
        wake.notify_one();
    }
}

pub(crate) struct Cache<R> {
    map: Map,
    /// Serialises inserts and removals (never taken by a hit), so that ordering checks and the
    /// map change happen as one.
    write: Mutex<()>,
    inflight: Mutex<HashMap<String, Arc<Flight<R>>>>,
    /// When the last write or delete of a name finished.
    writes: Mutex<HashMap<Box<str>, Instant>>,
    /// How long a record in `writes` must be kept: longer than any fetch can take.
    write_memory: Duration,
    schedule: Mutex<Schedule>,
    /// Wakes the refresher when an insert becomes the earliest scheduled item.
    pub(crate) wake: Notify,
    /// With a refresher: the refresh interval, at whose end each latest value gets a check
    /// that marks it expired (hits then read no clock).
    fresh_for: Option<Duration>,
    /// When each latest value's refresh interval ends, earliest first.
    expiry: Mutex<Schedule>,
    /// Wakes the expirer when an insert's expiry becomes the earliest.
    pub(crate) expiry_wake: Notify,
}

impl<R: Clone> Cache<R> {
    /// A cache whose fetches last at most `longest_fetch`.
    /// With `fresh_for` (the refresh interval, when a refresher runs), every latest value is
    /// also scheduled at its end, for the refresher to mark it expired.
    pub(crate) fn new(longest_fetch: Duration, fresh_for: Option<Duration>) -> Self {
        Cache {
            map: Map::with_hasher(foldhash::fast::RandomState::default()),
            write: Mutex::new(()),
            inflight: Mutex::new(HashMap::new()),
            writes: Mutex::new(HashMap::new()),
            write_memory: longest_fetch.saturating_mul(2),
            schedule: Mutex::new(BinaryHeap::new()),
            wake: Notify::new(),
            fresh_for,
            expiry: Mutex::new(BinaryHeap::new()),
            expiry_wake: Notify::new(),
        }
    }

    /// Lock-free lookup.
    pub(crate) fn get(&self, key: &str) -> Option<Arc<Entry>> {
        self.map.pin().get(key).cloned()
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Inserts or replaces (a write's own value, or a refresh that nothing raced); says
    /// whether the key is new. Schedules the entry's next check at `check_at`.
    pub(crate) fn insert(&self, key: &str, entry: Arc<Entry>, check_at: Instant) -> bool {
        let _w = lock(&self.write);
        self.put(key, entry, check_at)
    }

    fn put(&self, key: &str, entry: Arc<Entry>, check_at: Instant) -> bool {
        let m = self.map.pin();
        let old = m.insert(key.into(), entry.clone());
        if let Some(old) = old {
            entry.inherit_last_read(old);
        }
        self.schedule(key, check_at);
        if let Some(fresh_for) = self.fresh_for {
            if !is_pinned(key) && !entry.restored {
                let at = crate::clock::later(entry.fetched_at, fresh_for);
                push(&self.expiry, &self.expiry_wake, key, at);
            }
        }
        old.is_none()
    }

    /// Inserts what a fetch that started at `started` brought back, unless a write or delete
    /// of the name finished after that (the answer may predate it). Says whether it was kept.
    pub(crate) fn insert_fetched(
        &self,
        key: &str,
        entry: Arc<Entry>,
        started: Instant,
        check_at: Instant,
    ) -> bool {
        let _w = lock(&self.write);
        if lock(&self.writes)
            .get(name_of(key))
            .is_some_and(|w| *w >= started)
        {
            return false;
        }
        self.put(key, entry, check_at);
        true
    }

    /// A write or delete of `name_key` just finished: fetches begun before it are not cached,
    /// and later reads start a flight of their own.
    pub(crate) fn wrote(&self, name_key: &str) {
        let now = Instant::now();
        {
            let mut w = lock(&self.writes);
            let memory = self.write_memory;
            if w.len() >= 64 {
                w.retain(|_, t| now.saturating_duration_since(*t) <= memory);
            }
            w.insert(name_key.into(), now);
        }
        lock(&self.inflight).remove(name_key);
    }

    /// Records kept for write ordering (bounded: pruned past twice the longest fetch).
    #[cfg(test)]
    pub(crate) fn write_records(&self) -> usize {
        lock(&self.writes).len()
    }

    /// The latest-version entries (not pinned versions), in the map's order, which is random
    /// per process: sort what must be reproducible.
    pub(crate) fn latest(&self) -> Vec<(Box<str>, Arc<Entry>)> {
        self.map
            .pin()
            .iter()
            .filter(|(k, _)| !is_pinned(k))
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect()
    }

    /// Every entry, latest values and pinned versions, in the map's order.
    #[cfg_attr(not(feature = "snapshot"), allow(dead_code))]
    pub(crate) fn all(&self) -> Vec<(Box<str>, Arc<Entry>)> {
        self.map
            .pin()
            .iter()
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect()
    }

    /// Inserts `entry` at `key` only if nothing is held there (a restored value never replaces
    /// one a vault confirmed); says whether it did.
    #[cfg_attr(not(feature = "snapshot"), allow(dead_code))]
    pub(crate) fn insert_if_absent(&self, key: &str, entry: Arc<Entry>, check_at: Instant) -> bool {
        let _w = lock(&self.write);
        if self.map.pin().contains_key(key) {
            return false;
        }
        self.put(key, entry, check_at)
    }

    /// The names of the latest-version entries, sorted (the simulator must be reproducible).
    pub(crate) fn latest_keys(&self) -> Vec<Box<str>> {
        let mut v: Vec<_> = self.latest().into_iter().map(|(k, _)| k).collect();
        v.sort_unstable();
        v
    }

    /// Removes `key` if it still holds `entry` (not replaced meanwhile); says whether it did.
    pub(crate) fn evict(&self, key: &str, entry: &Arc<Entry>) -> bool {
        let _w = lock(&self.write);
        let m = self.map.pin();
        if m.get(key).is_some_and(|cur| Arc::ptr_eq(cur, entry)) {
            m.remove(key);
            true
        } else {
            false
        }
    }

    /// Removes one key (a latest value or one pinned version).
    pub(crate) fn remove(&self, key: &str) {
        let _w = lock(&self.write);
        self.map.pin().remove(key);
    }

    /// Removes `name` and every cached version of it. (Walks the map: deletes are rare.)
    pub(crate) fn remove_all(&self, name_key: &str) {
        let _w = lock(&self.write);
        let m = self.map.pin();
        m.remove(name_key);
        let prefix = format!("{name_key}/");
        let versions: Vec<Box<str>> = m
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .cloned()
            .collect();
        for k in versions {
            m.remove(&k);
        }
    }

    /// Marks expired every latest value whose refresh interval ended by `now` (an item whose
    /// entry was replaced since is dropped: the new entry has its own).
    pub(crate) fn mark_expired(&self, now: Instant) {
        let Some(fresh_for) = self.fresh_for else {
            return;
        };
        let mut due = Vec::new();
        {
            let mut x = lock(&self.expiry);
            while x.peek().is_some_and(|Reverse((t, _))| *t <= now) {
                if let Some(Reverse((_, k))) = x.pop() {
                    due.push(k);
                }
            }
        }
        for key in due {
            if let Some(e) = self.get(&key) {
                if now >= crate::clock::later(e.fetched_at, fresh_for) {
                    e.expired.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    }

    /// When the next latest value's refresh interval ends.
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        lock(&self.expiry).peek().map(|Reverse((t, _))| *t)
    }

    /// Schedules a check of `key` at `at`; wakes the refresher if that is now the earliest.
    pub(crate) fn schedule(&self, key: &str, at: Instant) {
        push(&self.schedule, &self.wake, key, at);
    }

    /// Takes every scheduled item due at `now`, earliest first (ties by key: reproducible).
    pub(crate) fn due(&self, now: Instant) -> Vec<(Instant, Box<str>)> {
        let mut s = lock(&self.schedule);
        let mut out = Vec::new();
        while s.peek().is_some_and(|Reverse((t, _))| *t <= now) {
            if let Some(Reverse(item)) = s.pop() {
                out.push(item);
            }
        }
        out
    }

    /// When the earliest scheduled item is due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        lock(&self.schedule).peek().map(|Reverse((t, _))| *t)
    }

    /// Items in the schedule (bounded by inserts within a refresh interval).
    #[cfg(test)]
    pub(crate) fn scheduled(&self) -> usize {
        lock(&self.schedule).len()
    }

    /// Runs `fetch` once for all concurrent callers of the same `key`. `foreground`: this
    /// caller waits for the answer (a read), rather than refreshing in the background.
    pub(crate) async fn single_flight<F, Fut>(&self, key: &str, foreground: bool, fetch: F) -> R
    where
        F: FnOnce(Arc<Urgency>, Instant) -> Fut,
        Fut: Future<Output = R>,
    {
        let flight = {
            let mut m = lock(&self.inflight);
            m.entry(key.to_string())
                .or_insert_with(|| {
                    Arc::new(Flight {
                        cell: OnceCell::new(),
                        urgency: Arc::new(Urgency::new(foreground)),
                        started: Instant::now(),
                    })
                })
                .clone()
        };
        if foreground {
            flight.urgency.raise();
        }
        // Removes the cell when the last caller is done with it, cancelled or not.
        struct Leave<'a, R> {
            cache: &'a Cache<R>,
            key: &'a str,
            flight: Arc<Flight<R>>,
        }
        impl<R> Drop for Leave<'_, R> {
            fn drop(&mut self) {
                let mut m = lock(&self.cache.inflight);
                // Held by the map and by this caller only: nobody else waits on it.
                if m.get(self.key)
                    .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
                    && Arc::strong_count(&self.flight) <= 2
                {
                    m.remove(self.key);
                }
            }
        }
        let leave = Leave {
            cache: self,
            key,
            flight,
        };
        let f = &leave.flight;
        f.cell
            .get_or_init(|| fetch(f.urgency.clone(), f.started))
            .await
            .clone()
    }

    /// Flights in progress (for tests of cancellation).
    #[cfg(test)]
    pub(crate) fn flights(&self) -> usize {
        lock(&self.inflight).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn entry() -> Arc<Entry> {
        Arc::new(Entry::new(
            SecretString::from("v".to_string()),
            "1".into(),
            "weu".into(),
            Instant::now(),
            1000,
            true,
        ))
    }

    /// Hardening item 11: the cell of a flight whose only caller was cancelled stayed in the
    /// map for ever (10,000 of 10,000).
    #[test]
    fn a_cancelled_flight_leaves_nothing_behind() {
        crate::clock::run_virtual(async {
            let c: Cache<u32> = Cache::new(Duration::from_secs(6), None);
            for i in 0..1000 {
                let key = format!("k{i}");
                let fut = c.single_flight(&key, true, |_, _| std::future::pending::<u32>());
                let _ = tokio::time::timeout(Duration::from_millis(1), fut).await;
            }
            assert_eq!(c.flights(), 0);
            // A waiter that outlives a cancelled leader takes the fetch over.
            let c = Arc::new(c);
            let (c1, c2) = (c.clone(), c.clone());
            let leader = tokio::spawn(async move {
                c1.single_flight("k", true, |_, _| std::future::pending::<u32>())
                    .await
            });
            tokio::task::yield_now().await;
            let waiter =
                tokio::spawn(async move { c2.single_flight("k", true, |_, _| async { 7 }).await });
            tokio::task::yield_now().await;
            leader.abort();
            assert_eq!(waiter.await.unwrap(), 7);
            assert_eq!(c.flights(), 0);
        })
        .unwrap();
    }

    #[test]
    fn a_caller_raises_a_background_flight() {
        crate::clock::run_virtual(async {
            let c: Arc<Cache<bool>> = Arc::new(Cache::new(Duration::from_secs(6), None));
            let c1 = c.clone();
            let bg = tokio::spawn(async move {
                c1.single_flight("k", false, |u, _| async move {
                    assert!(u.is_background());
                    u.raised().await;
                    u.is_background()
                })
                .await
            });
            tokio::task::yield_now().await;
            let joined = c.single_flight("k", true, |_, _| async { true }).await;
            assert!(!joined, "the caller joined the flight and raised it");
            assert!(!bg.await.unwrap());
        })
        .unwrap();
    }

    #[test]
    fn a_fetch_that_started_before_a_write_is_not_cached() {
        crate::clock::run_virtual(async {
            let c: Cache<()> = Cache::new(Duration::from_secs(6), None);
            let started = Instant::now();
            tokio::time::advance(Duration::from_millis(5)).await;
            c.wrote("db");
            let at = Instant::now();
            assert!(!c.insert_fetched("db", entry(), started, at));
            assert!(c.get("db").is_none());
            tokio::time::advance(Duration::from_millis(5)).await;
            assert!(c.insert_fetched("db", entry(), Instant::now(), at));
            // Records are pruned: a steady stream of writes to new names stays bounded.
            for i in 0..10_000 {
                c.wrote(&format!("n{i}"));
                tokio::time::advance(Duration::from_millis(10)).await;
            }
            assert!(c.write_records() < 2000, "{}", c.write_records());
        })
        .unwrap();
    }

    #[test]
    fn inserts_do_not_grow_with_the_cache() {
        // Not a timing test: inserting 20,000 entries one by one finishes, and the schedule
        // holds one item per entry.
        crate::clock::run_virtual(async {
            let c: Cache<()> = Cache::new(Duration::from_secs(6), None);
            for i in 0..20_000 {
                c.insert(&format!("k{i}"), entry(), Instant::now());
            }
            assert_eq!(c.len(), 20_000);
            assert_eq!(c.scheduled(), 20_000);
            assert_eq!(c.due(Instant::now()).len(), 20_000);
            assert_eq!(c.scheduled(), 0);
        })
        .unwrap();
    }
}
