//! Last-known-good cache with a lock-free read path and single-flight misses.
//!
//! The map is copy-on-write behind an [`ArcSwap`]: a hit is an atomic load, one hash lookup
//! and an `Arc` clone (no lock, no allocation). Inserts copy the map; they happen once per
//! vault read of a secret, which the refresh interval keeps rare.
//!
//! Concurrent misses for the same key share one vault call: the first caller's fetch runs
//! inside a [`tokio::sync::OnceCell`]; the others wait on it. If that caller is cancelled,
//! one of the waiters takes the fetch over.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::OnceCell;

use crate::secret::Entry;

type Map = HashMap<Box<str>, Arc<Entry>>;

/// Cache key of the latest version (`name`) or of one version (`name/version`),
/// with the name case-folded.
pub(crate) fn key(name_key: &str, version: Option<&str>) -> String {
    match version {
        None => name_key.to_string(),
        Some(v) => format!("{name_key}/{v}"),
    }
}

pub(crate) struct Cache<R> {
    map: ArcSwap<Map>,
    write: Mutex<()>,
    inflight: Mutex<HashMap<String, Arc<OnceCell<R>>>>,
}

impl<R: Clone> Cache<R> {
    pub(crate) fn new() -> Self {
        Cache {
            map: ArcSwap::from_pointee(HashMap::new()),
            write: Mutex::new(()),
            inflight: Mutex::new(HashMap::new()),
        }
    }

    /// Lock-free lookup.
    pub(crate) fn get(&self, key: &str) -> Option<Arc<Entry>> {
        self.map.load().get(key).cloned()
    }

    pub(crate) fn len(&self) -> usize {
        self.map.load().len()
    }

    fn update(&self, f: impl FnOnce(&mut Map)) {
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = Map::clone(&self.map.load());
        f(&mut next);
        self.map.store(Arc::new(next));
    }

    /// Inserts or replaces; says whether the key is new.
    pub(crate) fn insert(&self, key: &str, entry: Arc<Entry>) -> bool {
        let mut new = false;
        self.update(|m| {
            if let Some(old) = m.get(key) {
                entry.inherit_last_read(old);
            }
            new = m.insert(key.into(), entry.clone()).is_none();
        });
        new
    }

    /// The latest-version entries (not pinned versions, whose content never changes), in
    /// the map's order, which is random per process: sort what must be reproducible.
    pub(crate) fn latest(&self) -> Vec<(Box<str>, Arc<Entry>)> {
        self.map
            .load()
            .iter()
            .filter(|(k, _)| !k.contains('/'))
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect()
    }

    /// The names of the latest-version entries, sorted (the simulator must be reproducible).
    pub(crate) fn latest_keys(&self) -> Vec<Box<str>> {
        let mut v: Vec<_> = self.latest().into_iter().map(|(k, _)| k).collect();
        v.sort_unstable();
        v
    }

    /// Removes these latest-version entries, unless they were replaced meanwhile.
    pub(crate) fn evict(&self, gone: &[(Box<str>, Arc<Entry>)]) {
        if gone.is_empty() {
            return;
        }
        self.update(|m| {
            for (k, e) in gone {
                if m.get(k).is_some_and(|cur| Arc::ptr_eq(cur, e)) {
                    m.remove(k);
                }
            }
        });
    }

    /// Removes one key (a latest value or one pinned version).
    pub(crate) fn remove(&self, key: &str) {
        self.update(|m| {
            m.remove(key);
        });
    }

    /// Removes `name` and every cached version of it.
    pub(crate) fn remove_all(&self, name_key: &str) {
        let prefix = format!("{name_key}/");
        self.update(|m| m.retain(|k, _| &**k != name_key && !k.starts_with(&prefix)));
    }

    /// Runs `fetch` once for all concurrent callers of the same `key`.
    pub(crate) async fn single_flight<F, Fut>(&self, key: &str, fetch: F) -> R
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = R>,
    {
        let cell = {
            let mut m = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            m.entry(key.to_string()).or_default().clone()
        };
        let out = cell.get_or_init(fetch).await.clone();
        let mut m = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if m.get(key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            m.remove(key);
        }
        out
    }
}
