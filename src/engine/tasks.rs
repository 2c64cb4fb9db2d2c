//! Background work: a health prober per vault, the refresher, and drift detection.
//!
//! Every task holds only a `Weak` reference to the client and a shutdown receiver: when the last
//! [`FailoverClient`](crate::FailoverClient) clone is dropped, the tasks stop. All timing goes
//! through `tokio::time`, so the tasks run unchanged under paused time and in the simulator.
//!
//! * **Prober** — every `probe.interval` (±jitter) while a vault is healthy and trusted, doubling
//!   with each healthy round up to `probe.interval_max`; every `probe.unhealthy_interval`
//!   otherwise, doubling with each failed probe in a row up to `probe.unhealthy_interval_max`.
//!   It reads the canary secret (or lists one page of
//!   properties). Results feed the breaker (a probe is the half-open trial) and the latency
//!   record; `probe.failures_to_trip` failed probes in a row open the breaker even with no caller
//!   traffic, and `probe.failback_successes` good ones in a row make a vault trusted again (on
//!   the vault that carries the route, callers' good calls count too). A breaker that callers'
//!   calls open wakes its prober from a healthy wait. With backed-off proving (fleets), the
//!   route moves back to a vault one proving interval after its last proving probe.
//! * **Refresher** — a value fetched off its schedule (a first read, a preload, a hint, a retry)
//!   is first refreshed at a point drawn in [0.2 T, T] of the refresh interval T (the core's
//!   `freshness::first_refresh`), then every 0.7 T to 0.8 T; a failed refresh backs off and
//!   keeps the last-known-good value. Refreshes leave
//!   a reserve of each vault's request budget to callers' reads.
//! * **Drift** — after a refresh, the other healthy vaults are asked for the same secret and
//!   their contents compared through a keyed hash; differences land in `health()` and as events.

use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::StreamExt;
use secrecy::ExposeSecret;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Engine, FetchError};
use crate::breaker::{BreakerState, Outcome};
use crate::clock::later;
use crate::error::{Error, StoreErrorKind};
use crate::events::Event;
use crate::name::SecretName;
use crate::secret::Entry;
use keyvault_failover_core::probe::Pacer;

/// Starts the prober of each vault and the refresher, each under a supervisor.
pub(crate) fn start(inner: &Arc<Engine>) {
    let shutdown = inner.shutdown.clone();
    if inner.config.probe.enabled {
        for idx in 0..inner.vaults.len() {
            let seed = inner.seed ^ (0x9e37_79b9 * (idx as u64 + 1));
            let (weak, shutdown) = (Arc::downgrade(inner), shutdown.clone());
            let task: Arc<str> = format!("prober:{}", inner.vaults[idx].name).into();
            supervise(task, Arc::downgrade(inner), move |restarts| {
                // A restarted prober takes a new jitter stream, not the one that panicked.
                let seed = seed.wrapping_add(u64::from(restarts));
                prober(weak.clone(), idx, seed, shutdown.clone())
            });
        }
    }
    if inner.config.refresh.enabled {
        let weak = Arc::downgrade(inner);
        let sd = shutdown.clone();
        supervise("refresher".into(), Arc::downgrade(inner), move |_| {
            refresher(weak.clone(), sd.clone())
        });
        let weak = Arc::downgrade(inner);
        supervise("expirer".into(), Arc::downgrade(inner), move |_| {
            expirer(weak.clone(), shutdown.clone())
        });
    }
}

/// Runs the task `make` builds; if it panics, reports it (error log, [`Event::TaskRestarted`])
/// and starts it again after a second, for as long as the client lives. A task that returns
/// has seen the client go and is not restarted. Without this, one bad input that panicked a
/// prober would silently leave its vault unprobed for the life of the process.
fn supervise<F, Fut>(task: Arc<str>, weak: Weak<Engine>, make: F)
where
    F: Fn(u32) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut restarts = 0u32;
        loop {
            match tokio::spawn(make(restarts)).await {
                Err(e) if e.is_panic() => {
                    let Some(inner) = weak.upgrade() else { return };
                    restarts = restarts.saturating_add(1);
                    inner.mark(&inner.last_restart);
                    tracing::error!(task = %task, restarts, "background task panicked; restarting it");
                    inner.events.emit(Event::TaskRestarted {
                        task: task.clone(),
                        restarts,
                    });
                    drop(inner);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                // Ended (the client is gone) or cancelled (the runtime is shutting down).
                _ => return,
            }
        }
    });
}

/// How a prober's pause ended.
enum Pause {
    /// The wait elapsed: probe.
    Elapsed,
    /// During a healthy wait the vault's breaker opened, or (above the route) a call to it
    /// failed: choose the wait again.
    Woken,
    /// The client is gone.
    Gone,
}

/// What may end a prober's healthy wait early.
struct Wakes {
    /// The vault's breaker opened.
    opened: Arc<tokio::sync::Notify>,
    /// A call to the vault failed while it was trusted; heeded only while the vault waits to
    /// take the route back (`waiting`).
    suspected: Arc<tokio::sync::Notify>,
    waiting: bool,
}

/// Sleeps `d`; while the vault was `healthy`, ends early when its breaker opens, or when a
/// call to it fails while it waits above the route. Without the first wake, a prober that
/// had backed off to `probe.interval_max` (5 minutes in the fleet scenarios) slept on after
/// callers' failures opened the breaker, and saw the vault's recovery only when that wait
/// ended. Without the second, a proved primary that a hedge or drift check then found slow
/// was suspect again, with a closed breaker, while its prober slept its healthy wait (70 s in
/// the model test): nothing proved it, the route stayed on the secondary, and a value this
/// client wrote to the primary could be read nowhere (the secondary's copy is older).
async fn probe_pause(
    d: Duration,
    healthy: bool,
    wakes: &Wakes,
    shutdown: &mut watch::Receiver<()>,
) -> Pause {
    // Registered from here on (`notify_waiters`), before the state that chose `d` can change
    // on this task.
    let opened = wakes.opened.notified();
    let suspected = wakes.suspected.notified();
    tokio::select! {
        biased; // no random branch order: the simulator must be reproducible
        _ = tokio::time::sleep(d) => Pause::Elapsed,
        _ = shutdown.changed() => Pause::Gone,
        _ = opened, if healthy => Pause::Woken,
        _ = suspected, if healthy && wakes.waiting => Pause::Woken,
    }
}

async fn prober(weak: Weak<Engine>, idx: usize, seed: u64, mut shutdown: watch::Receiver<()>) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut pacer = Pacer::default();
    loop {
        let (wait, vouch_window, healthy, held, wakes) = {
            let Some(inner) = weak.upgrade() else { return };
            let p = &inner.config.probe;
            let v = &inner.vaults[idx];
            let waiting = inner.router.is_waiting_for_failback(idx);
            let held = v.failback_held().filter(|_| waiting);
            // Healthy: nothing to prove. A vault a call failed on since it last passed
            // `failback_successes` probes in a row (suspect, though its breaker is closed)
            // proves itself at the unhealthy interval: at the healthy one, three good probes
            // took 30 s after the vaults came back before a client was ready again.
            let healthy = v.breaker.state() == BreakerState::Closed
                && v.probe_failures() == 0
                && v.trusted(p.failback_successes, Duration::ZERO)
                && !(waiting && (v.probe_streak() < p.failback_successes || held.is_some()));
            // The pace is the core's (keyvault_failover_core::probe).
            let (wait, window) = pacer.next(healthy, v.probe_failures(), &p.policy(), rng.f64());
            // A vault held back after its proving run: no probe, the route moves when the
            // hold ends.
            let wait = held.unwrap_or(wait);
            let wakes = Wakes {
                opened: v.breaker.opened(),
                suspected: v.suspected(),
                waiting,
            };
            (wait, window, healthy, held.is_some(), wakes)
        };
        match probe_pause(wait, healthy, &wakes, &mut shutdown).await {
            Pause::Elapsed => {}
            Pause::Woken => continue,
            Pause::Gone => return,
        }
        let Some(inner) = weak.upgrade() else { return };
        if held {
            inner.router.refresh(&inner.vaults);
            continue;
        }
        // Passive health: a healthy vault whose callers' calls succeeded within this round's
        // interval (and none failed since) needs no probe; vault load follows traffic, not
        // the number of instances. Only a healthy one: a vault still proving itself gains
        // trust from probes alone, so skipping them for callers' successes left a recovered
        // vault untrusted for as long as callers kept calling it (health said not ready).
        if healthy {
            let p = &inner.config.probe;
            let v = &inner.vaults[idx];
            if v.breaker.state() == BreakerState::Closed
                && v.probe_failures() == 0
                && !inner.router.is_waiting_for_failback(idx)
                && v.callers_vouch(vouch_window.max(p.interval))
            {
                continue;
            }
        }
        // With backed-off proving (`unhealthy_interval_max` raised: fleets), a proving run that
        // ends holds failback back for one more (jittered) interval, so that every instance
        // probing at this pace has seen the recovery before any instance's refreshes return
        // to the vault. By default (proving every 2 s), no hold.
        let p = &inner.config.probe;
        let hold = if p.unhealthy_interval_max > p.unhealthy_interval {
            vouch_window.mul_f64(1.0 + p.jitter)
        } else {
            Duration::ZERO
        };
        if !until_shutdown(inner.probe(idx, hold), &mut shutdown).await {
            return;
        }
    }
}

/// Runs `work`, or drops it as soon as the client is gone; says whether it ran to the end.
/// A dropped vault call records nothing on its breaker.
async fn until_shutdown(
    work: impl std::future::Future<Output = ()>,
    shutdown: &mut watch::Receiver<()>,
) -> bool {
    if shutdown.has_changed().is_err() {
        return false;
    }
    tokio::select! {
        biased;
        _ = shutdown.changed() => false,
        _ = work => true,
    }
}

async fn refresher(weak: Weak<Engine>, mut shutdown: watch::Receiver<()>) {
    loop {
        let next = {
            let Some(inner) = weak.upgrade() else { return };
            let now = Instant::now();
            let due = inner.due_refreshes(now);
            if !due.is_empty() {
                let concurrency = inner.config.refresh.concurrency as usize;
                let batch = futures::stream::iter(due).for_each_concurrent(concurrency, |key| {
                    let inner = inner.clone();
                    async move {
                        let _ = inner.refresh_key(&key, false).await;
                    }
                });
                if !until_shutdown(batch, &mut shutdown).await {
                    return;
                }
                continue;
            }
            // Batch wake-ups: at most one per granule, however many entries fall due.
            let interval = inner.config.cache.refresh_interval;
            let granule = (interval / 10).min(Duration::from_secs(1));
            let next = inner.cache.next_due().map(|n| n.max(later(now, granule)));
            next.unwrap_or_else(|| later(now, interval))
        };
        if !sleep_or_wake(&weak, next, |i| &i.cache.wake, &mut shutdown).await {
            return;
        }
    }
}

/// Sleeps until `next` or a wake-up of the client's `notify`; false when the client is gone or
/// shutting down.
async fn sleep_or_wake(
    weak: &Weak<Engine>,
    next: Instant,
    notify: fn(&Engine) -> &tokio::sync::Notify,
    shutdown: &mut watch::Receiver<()>,
) -> bool {
    let Some(inner) = weak.upgrade() else {
        return false;
    };
    tokio::select! {
        biased;
        _ = tokio::time::sleep_until(next) => true,
        _ = notify(&inner).notified() => true,
        _ = shutdown.changed() => false,
    }
}

/// Marks each latest value expired as its refresh interval ends, so that a cache hit needs no
/// clock read of its own (`get_cached` checks the mark). Never waits on a vault: its marks are
/// as late as tokio's timer (1 ms) and the runtime's scheduling, whatever the refreshes do.
async fn expirer(weak: Weak<Engine>, mut shutdown: watch::Receiver<()>) {
    loop {
        let next = {
            let Some(inner) = weak.upgrade() else { return };
            let now = Instant::now();
            inner.cache.mark_expired(now);
            inner
                .cache
                .next_expiry()
                .unwrap_or_else(|| later(now, inner.config.cache.refresh_interval))
        };
        if !sleep_or_wake(&weak, next, |i| &i.cache.expiry_wake, &mut shutdown).await {
            return;
        }
    }
}

impl Engine {
    /// Takes what the schedule says is due at `now` and decides each: a secret callers read
    /// within `refresh.idle_after` is refreshed (returned, in schedule order); an unread one is
    /// kept as last-known-good until its staleness cap and then dropped (with its drift
    /// record); a pinned version is dropped once nobody has read it for `idle_after`. Costs
    /// what is due, not what is cached.
    fn due_refreshes(&self, now: Instant) -> Vec<Box<str>> {
        let idle_after = self
            .config
            .refresh
            .idle_after(self.config.cache.refresh_interval);
        let mut refresh = Vec::new();
        for (at, key) in self.cache.due(now) {
            let Some(entry) = self.cache.get(&key) else {
                continue; // removed since
            };
            let read_at = entry.last_read_at(now);
            let read = read_at.is_some_and(|t| now.saturating_duration_since(t) < idle_after);
            let cap = self.config.staleness_cap(crate::cache::name_of(&key));
            let expires = entry.expires(cap);
            if crate::cache::is_pinned(&key) {
                // A pinned version: never refreshed. Dropped when idle or past its cap.
                if !read || now >= expires {
                    self.cache.evict(&key, &entry);
                } else {
                    // Strictly later than now (`read` says so): the refresher cannot spin.
                    let idle_at = later(read_at.unwrap_or(now), idle_after);
                    self.cache.schedule(&key, idle_at.min(expires));
                }
                continue;
            }
            if at < entry.refresh_at() && at < expires {
                continue; // a stale item: the entry was replaced or re-scheduled since
            }
            if read {
                self.metrics.refresh_lag(now.saturating_duration_since(at));
                refresh.push(key);
            } else if now >= expires {
                // Past its staleness cap it can never be served again: drop it.
                if self.cache.evict(&key, &entry) {
                    crate::lock(&self.drift).remove(&*key);
                    crate::lock(&self.lag).remove(&*key);
                }
            } else {
                // Unread: refresh work follows the working set. Look again when it expires.
                self.cache.schedule(&key, expires);
            }
        }
        refresh
    }

    /// One probe of vault `idx`: canary read or a listing, under the probe timeout. A success
    /// that completes its run of `failback_successes` while the route waits for the vault
    /// holds failback back for `hold` (zero: no hold).
    pub(crate) async fn probe(&self, idx: usize, hold: Duration) {
        let v = &self.vaults[idx];
        v.mark_probed();
        // An open breaker gates callers, not the prober: probes are cheap and are how recovery
        // is seen, so an unavailable vault is probed at the unhealthy interval whatever its
        // breaker's backoff says, and a good probe closes the breaker. (Gated, a 20 s outage
        // cost a minute of failed reads after it.) A probe of a closed vault records on its
        // breaker as any call; a probe of an open one does not take the half-open trial (a
        // failed trial would re-open it every backoff interval: the breaker would flap).
        let permit = if v.breaker.state() == BreakerState::Closed {
            v.breaker.try_acquire()
        } else {
            None
        };
        if !v.gate.try_take(crate::clock::now()) {
            return; // throttled or over budget: throttling is not an outage
        }
        let p = &self.config.probe;
        let store = v.store.clone();
        // Probe what callers do: a GET of the canary, else of a secret this client has read
        // (a vault whose GETs fail while its listing answers is not healthy); a listing only
        // before any secret was read.
        let target = match &p.canary {
            Some(c) => SecretName::new(c).ok(),
            None => crate::lock(&self.probe_target).clone(),
        };
        let t0 = Instant::now();
        let res = tokio::time::timeout(p.timeout, async {
            match &target {
                Some(name) => store.probe_read(name).await,
                None => store.probe().await,
            }
        })
        .await;
        let elapsed = t0.elapsed();
        let outcome = match &res {
            Ok(Ok(())) => Outcome::Success,
            // The vault answered: alive, whatever it thinks of the canary.
            Ok(Err(e)) if *e.kind() == StoreErrorKind::NotFound => Outcome::Success,
            Ok(Err(e)) => {
                if e.asks_to_wait() {
                    self.throttled(idx, e.retry_after());
                }
                e.kind().verdict()
            }
            Err(_) => Outcome::Failure,
        };
        if outcome != Outcome::NotRecorded {
            v.record_latency(elapsed);
        }
        // Fields are evaluated only when the event is enabled.
        tracing::debug!(
            region = %v.name,
            ?outcome,
            trial = permit.is_some(),
            error = ?res.as_ref().map(|r| r.as_ref().err().map(|e| e.kind())),
            elapsed_ms = elapsed.as_millis() as u64,
            "probe"
        );
        match outcome {
            Outcome::Success => {
                v.probe_succeeded();
                if !hold.is_zero()
                    && v.probe_streak() == p.failback_successes
                    && self.router.is_waiting_for_failback(idx)
                {
                    v.hold_failback(hold);
                }
            }
            Outcome::Failure => {
                if v.probe_failed() >= p.failures_to_trip {
                    v.breaker.trip();
                }
            }
            Outcome::NotRecorded => {}
        }
        match permit {
            Some(permit) => self.settle_as(idx, permit, outcome, false),
            None => {
                if outcome == Outcome::Success {
                    v.answered();
                    v.breaker.recovered();
                }
                self.router.refresh(&self.vaults);
            }
        }
    }

    /// Fetches the latest version of the secret cached under `key`, replacing the cached value.
    /// On failure the last-known-good value stays and its next refresh backs off.
    /// `foreground`: a caller asked for it (`refresh_now`), not the refresher.
    pub(crate) async fn refresh_key(
        &self,
        key: &str,
        foreground: bool,
    ) -> Result<Arc<Entry>, Error> {
        let name = SecretName::new(key)?;
        let before = self.cache.get(key);
        let fetched = self
            .cache
            .single_flight(key, foreground, |urgency, started| {
                let name = &name;
                async move { self.fetch(name, None, key, &urgency, started).await }
            })
            .await;
        match fetched {
            Ok(entry) => {
                if let Some(old) = before {
                    if old.value.expose_secret() != entry.value.expose_secret() {
                        tracing::info!(secret = %name, region = %entry.region, "secret rotated");
                    }
                }
                if self.config.refresh.drift_check && self.drift_due(&name) {
                    self.check_drift(&name, &entry).await;
                }
                Ok(entry)
            }
            Err(FetchError { error, .. }) => {
                if let Some(old) = self.cache.get(key) {
                    let base = self.config.retry.backoff_max;
                    let cap = self.config.cache.refresh_interval / 2;
                    old.back_off(base, cap, Instant::now());
                    self.cache.schedule(key, old.refresh_at());
                    tracing::info!(secret = %name, error = %error, "background refresh failed; keeping last-known-good");
                    self.events.emit(Event::RefreshFailed {
                        secret: name.key().clone(),
                    });
                }
                Err(error)
            }
        }
    }

    /// Whether this refresh of `name` is followed by a drift check: a sampled share of
    /// refreshes (`refresh.drift_sample`, drawn from the client's seed), and every refresh of a
    /// secret already found to differ, so that its record clears as soon as the vaults agree.
    fn drift_due(&self, name: &SecretName) -> bool {
        let sample = self.config.refresh.drift_sample;
        sample >= 1.0
            || crate::lock(&self.drift).contains_key(&**name.key())
            || crate::lock(&self.rng).f64() < sample
    }

    fn digest(&self, value: &str) -> u64 {
        let mut h = self.drift_key.build_hasher();
        h.write(value.as_bytes());
        h.finish()
    }

    /// Compares `entry`'s content with the other healthy vaults' copies.
    async fn check_drift(&self, name: &SecretName, entry: &Entry) {
        let reference = self.digest(entry.value.expose_secret());
        let mut differing: Vec<String> = Vec::new();
        for (idx, v) in self.vaults.iter().enumerate() {
            if v.name == entry.region || v.breaker.state() != BreakerState::Closed {
                continue;
            }
            if !v
                .gate
                .try_take_above(self.config.refresh.reserve_for_reads, crate::clock::now())
            {
                continue;
            }
            let Some(permit) = v.breaker.try_acquire() else {
                continue;
            };
            let res =
                tokio::time::timeout(self.config.timeouts.attempt, v.store.get(name, None)).await;
            let res = res.unwrap_or_else(|_| {
                Err(crate::error::StoreError::new(
                    StoreErrorKind::Timeout,
                    "drift check timed out",
                ))
            });
            self.settle(idx, permit, crate::engine::calls::outcome_of(&res));
            let differs = match res {
                Ok(s) => self.digest(s.value().expose_secret()) != reference,
                Err(e) if *e.kind() == StoreErrorKind::NotFound => true,
                Err(_) => continue,
            };
            if differs {
                differing.push(v.name.to_string());
            }
        }
        let mut drift = self.drift.lock().unwrap_or_else(|p| p.into_inner());
        let key = name.key().to_string();
        if differing.is_empty() {
            drift.remove(&key);
        } else if drift.get(&key) != Some(&differing) {
            tracing::warn!(secret = %name, regions = ?differing, "vaults hold different content");
            self.events.emit(Event::Drift {
                secret: name.key().clone(),
                regions: differing.iter().map(|r| Arc::from(r.as_str())).collect(),
            });
            drift.insert(key, differing);
        }
    }
}
