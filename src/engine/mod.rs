//! The engine: what a [`FailoverClient`](crate::FailoverClient) does behind the facade.
//!
//! [`Engine`] holds the vaults (each with its breaker, gates and latency), the router, the
//! last-known-good cache, the retry budget and the event fan-out. Its children are the call
//! path ([`calls`]: planning a read across regions, hedging, settling outcomes), the write
//! path (`writes`: admission to the writable primary, one attempt, settling), change hints
//! ([`notify`]) and the background ([`tasks`]: the supervisor, the probers, the refresher and
//! the expirer). The decisions themselves (breaker, budget and gates, route, hedge delay,
//! outliers, probe pace, freshness) live in the core crate, `keyvault-failover-core`, which
//! takes `now` from here (`clock::now`: tokio's clock, so paused time drives them).

pub(crate) mod calls;
pub(crate) mod notify;
pub(crate) mod tasks;
mod writes;

use std::collections::BTreeMap;
use std::hash::RandomState;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::SecretString;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::cache::Cache;
use crate::clock::Mark;
use crate::config::Config;
use crate::error::{Error, Kind};
use crate::events::{Event, Events};
use crate::name::SecretName;
use crate::router::Router;
use crate::secret::{Entry, Secret};
use crate::vault::Vault;
use keyvault_failover_core::budget::RetryBudget;

/// How a failed fetch may be answered from the last-known-good cache.
#[derive(Clone)]
pub(crate) struct FetchError {
    pub(crate) error: Error,
    /// No region gave an answer that rules a stale value out (auth failure, authoritative 404).
    pub(crate) maskable: bool,
}

pub(crate) type Fetched = Result<Arc<Entry>, FetchError>;

/// A region found holding an older copy of a secret, and the vault time of the newer version
/// it lacks.
pub(crate) type Behind = (Arc<str>, std::time::SystemTime);

pub(crate) struct Engine {
    pub(crate) config: Config,
    pub(crate) vaults: Vec<Vault>,
    pub(crate) router: Router,
    pub(crate) cache: Cache<Fetched>,
    pub(crate) budget: RetryBudget,
    pub(crate) rng: Mutex<fastrand::Rng>,
    pub(crate) events: Events,
    /// Secret name → regions whose content differs from the answering region's.
    pub(crate) drift: Mutex<BTreeMap<String, Vec<String>>>,
    /// Replication lag seen: secret name → each region found holding an older copy, with the
    /// vault time (`created`, a copy's source's) of the newer version it lacks. A region's lag
    /// is how long ago the oldest of these was made; an entry goes when the region answers
    /// that secret without lag, or the secret is forgotten.
    pub(crate) lag: Mutex<BTreeMap<String, Vec<Behind>>>,
    /// Key of the hash that compares contents across vaults; never leaves the process.
    pub(crate) drift_key: RandomState,
    /// The secret the prober reads when no canary is configured: the last one a vault served.
    pub(crate) probe_target: Mutex<Option<SecretName>>,
    /// Closes when the last [`FailoverClient`] clone is dropped (its lifeline goes):
    /// background tasks stop, even in the middle of a vault call.
    pub(crate) shutdown: watch::Receiver<()>,
    /// When the client was built: the base of the two marks below.
    pub(crate) born: Instant,
    /// The seed every random draw derives from: the configured one, or drawn per client.
    pub(crate) seed: u64,
    /// When a stale value was last served.
    pub(crate) last_stale: Mark,
    /// When a background task was last restarted after a panic.
    pub(crate) last_restart: Mark,
    /// Keys of the secrets `preload` was asked for: ready when all are held.
    pub(crate) preloaded: Mutex<Vec<Box<str>>>,
    /// OpenTelemetry instruments (no-ops without the `otel` feature or a meter provider).
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    /// Keys with a change hint's refresh scheduled (one per key however many hints come).
    pub(crate) notify_pending: Mutex<std::collections::HashSet<Box<str>>>,
    /// Draws the hints' delays: its own generator, so that hints leave every other draw
    /// (and the simulator's reports) as they were.
    pub(crate) notify_rng: Mutex<fastrand::Rng>,
}

/// How recent a stale serve or a task restart must be to count in [`Health`].
pub(crate) const HEALTH_WINDOW: Duration = Duration::from_secs(60);

impl Engine {
    /// Stamps `mark` with now (see [`Engine::born`]).
    pub(crate) fn mark(&self, mark: &Mark) {
        mark.set(self.born);
    }

    /// Whether `mark` was stamped within [`HEALTH_WINDOW`].
    pub(crate) fn marked_recently(&self, mark: &Mark) -> bool {
        mark.within(self.born, HEALTH_WINDOW)
    }

    /// A cache entry confirmed now. `on_schedule`: the fetch was the value's on-time refresh
    /// ([`Entry::on_schedule`]), so the next gap is drawn in [0.7 T, 0.8 T]; otherwise its first
    /// refresh is drawn in [0.2 T, T] so that values fetched together come back at the steady
    /// rate ([`keyvault_failover_core::freshness::first_refresh`]).
    pub(crate) fn entry(
        &self,
        value: SecretString,
        version: Arc<str>,
        region: Arc<str>,
        read: bool,
        (created, metadata): (
            Option<std::time::SystemTime>,
            Option<Arc<crate::secret::Metadata>>,
        ),
        on_schedule: bool,
    ) -> Arc<Entry> {
        let at = self.refresh_ms(on_schedule);
        let mut e = Entry::new(value, version, region, Instant::now(), at, read);
        e.created = created;
        e.metadata = metadata;
        Arc::new(e)
    }

    /// How long after a fetch the value is next refreshed, in ms (see [`Engine::entry`]).
    fn refresh_ms(&self, on_schedule: bool) -> u64 {
        use keyvault_failover_core::freshness::{first_refresh, next_refresh};
        let t = self.config.cache.refresh_interval;
        let draw = crate::lock(&self.rng).f64();
        let d = if on_schedule {
            next_refresh(t, draw)
        } else {
            first_refresh(t, draw)
        };
        (d.as_millis() as u64).max(1)
    }

    /// The cache entry of a value this client just wrote to the primary: newer than any copy a
    /// secondary held before the write.
    pub(crate) fn written_entry(
        &self,
        value: SecretString,
        version: Arc<str>,
        region: Arc<str>,
    ) -> Arc<Entry> {
        let at = self.refresh_ms(false);
        let mut e = Entry::new(value, version, region, Instant::now(), at, false);
        e.authoritative = true;
        Arc::new(e)
    }

    /// When the refresher should next look at `entry`: a latest value at its refresh time;
    /// a pinned version (never refreshed: its content cannot change) when it would go idle.
    pub(crate) fn check_at(&self, key: &str, entry: &Entry) -> Instant {
        if crate::cache::is_pinned(key) {
            let idle = self
                .config
                .refresh
                .idle_after(self.config.cache.refresh_interval);
            crate::clock::later(entry.fetched_at, idle)
        } else {
            entry.refresh_at()
        }
    }

    /// Inserts a value this client wrote (or holds for certain) into the cache.
    pub(crate) fn cache_insert(&self, key: &str, entry: Arc<Entry>) {
        let at = self.check_at(key, &entry);
        self.cache.insert(key, entry, at);
    }

    /// Inserts what a fetch begun at `started` read, unless a write finished since.
    pub(crate) fn cache_fetched(&self, key: &str, entry: Arc<Entry>, started: Instant) {
        let at = self.check_at(key, &entry);
        if !self.cache.insert_fetched(key, entry, started, at) {
            tracing::debug!(
                key,
                "a write finished during this read: its answer is not cached"
            );
        }
    }

    /// Forgets `name` and every version of it, and its drift record.
    pub(crate) fn forget(&self, name_key: &str) {
        self.cache.remove_all(name_key);
        crate::lock(&self.drift).remove(name_key);
        crate::lock(&self.lag).remove(name_key);
    }

    /// How far `region` lags the versions this client has seen: how long ago the oldest
    /// version it was found lacking was made (vault time against `now`, the wall clock).
    /// `None` for `region`: the largest over every region.
    pub(crate) fn replication_lag(
        &self,
        region: Option<&str>,
        now: std::time::SystemTime,
    ) -> Option<std::time::Duration> {
        let lag = crate::lock(&self.lag);
        if lag.is_empty() {
            return None;
        }
        lag.values()
            .flatten()
            .filter(|(r, _)| region.is_none_or(|want| &**r == want))
            .map(|(_, t)| *t)
            .min()
            .map(|t| now.duration_since(t).unwrap_or_default())
    }

    /// Answers a failed fetch from last-known-good, if it is within the cap.
    pub(crate) fn stale(
        &self,
        name: &SecretName,
        key: &str,
        error: Error,
    ) -> Result<Secret, Error> {
        let cap = self.config.staleness_cap(name.key());
        let now = crate::clock::now();
        let Some(entry) = self.cache.get(key) else {
            return Err(error);
        };
        match entry.held().servable(cap, now) {
            Some(age) => {
                tracing::warn!(
                    secret = %name,
                    age_ms = age.as_millis() as u64,
                    region = %entry.region,
                    "serving last-known-good value"
                );
                self.events.emit(Event::StaleServed {
                    secret: name.key().clone(),
                    age,
                });
                self.mark(&self.last_stale);
                Ok(Secret::stale(entry, age, error))
            }
            None => Err(Error::with_attempts(
                Kind::Unavailable,
                format!(
                    "no region could serve secret `{name}` and its last-known-good value is \
                     {} old, past the staleness cap of {}",
                    humantime::format_duration(round_ms(entry.age(now))),
                    humantime::format_duration(cap)
                ),
                error.attempts().to_vec(),
                None,
            )),
        }
    }
}

/// `d` to whole milliseconds, as messages and logs show it.
pub(crate) fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}
