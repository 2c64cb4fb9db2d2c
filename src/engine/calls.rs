//! The read path behind a cache miss: vaults in route order, hedging, retries with backoff,
//! all within one deadline, the attempt limit, the retry budget and each vault's request gate.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use secrecy::ExposeSecret;
use tokio::time::Instant;

use super::{Engine, FetchError, Fetched};
use crate::breaker::{BreakerState, Outcome, Permit};
use crate::cache::Urgency;
use crate::clock::later;
use crate::error::{Attempt, AttemptFailure, Error, Kind, StoreError, StoreErrorKind};
use crate::name::SecretName;
use crate::store::SecretStore;

/// What a call's result tells its vault's breaker.
pub(crate) fn outcome_of<T>(res: &Result<T, StoreError>) -> Outcome {
    match res {
        Ok(_) => Outcome::Success,
        Err(e) => e.kind().verdict(),
    }
}

type AttemptFuture<'a, T> =
    Pin<Box<dyn Future<Output = (usize, Result<T, StoreError>)> + Send + 'a>>;

/// The time limits of one kind of call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// One attempt against one vault.
    attempt: Duration,
    /// The whole call, all vaults and retries.
    deadline: Duration,
    /// Whether running out of time counts against the vault's breaker.
    slow_is_failure: bool,
    /// Whether the call may be hedged.
    hedge: bool,
    /// With every breaker open, wait (up to the deadline) for a vault to come back instead of
    /// failing at once: a cold read, with nothing to fall back on.
    wait_for_vault: bool,
}

impl Limits {
    /// A secret read: `timeouts.attempt` per attempt, `timeouts.deadline` in all, hedged.
    pub(crate) fn read(cfg: &crate::config::Config) -> Self {
        Limits {
            attempt: cfg.timeouts.attempt,
            deadline: cfg.timeouts.deadline,
            slow_is_failure: true,
            hedge: true,
            wait_for_vault: false,
        }
    }

    /// A read with no last-known-good value to fall back on: it waits for a vault when
    /// `timeouts.wait_for_recovery` says so.
    pub(crate) fn cold_read(cfg: &crate::config::Config) -> Self {
        Limits {
            wait_for_vault: cfg.timeouts.wait_for_recovery,
            ..Limits::read(cfg)
        }
    }

    /// A full listing: many pages, each bounded by the transport's per-request timeout (the
    /// attempt timeout); the whole listing by `timeouts.list`. A large vault's listing taking
    /// long is not a vault failure, so running out of time is not recorded on the breaker
    /// (a page that fails, fails as usual).
    pub(crate) fn listing(cfg: &crate::config::Config) -> Self {
        Limits {
            attempt: cfg.timeouts.list,
            deadline: cfg.timeouts.list,
            slow_is_failure: false,
            hedge: false,
            wait_for_vault: false,
        }
    }
}

/// What choosing the next vault to send to came to.
enum Next {
    /// A permit for vault `idx`.
    Send(usize, Permit),
    /// No vault is left to try in this round.
    Exhausted,
    /// Stop the whole call (attempt limit, budget, deadline).
    Stop,
}

/// Vault `idx`'s bit in a call's set of tried vaults. Past 64 regions vaults share the last
/// bit, which only errs toward charging a failover attempt to the retry budget.
fn bit(idx: usize) -> u64 {
    1u64 << idx.min(63)
}

/// The most attempts one error lists: a call that waits out a long deadline for a vault to
/// come back goes through many rounds, and its error must stay readable and bounded.
const MAX_LISTED_ATTEMPTS: usize = 32;

impl Call {
    /// Records one region's part in the call; past `MAX_LISTED_ATTEMPTS`, the first half and
    /// the latest ones are kept.
    fn note(&mut self, a: Attempt) {
        if self.attempts.len() >= MAX_LISTED_ATTEMPTS {
            self.attempts.remove(MAX_LISTED_ATTEMPTS / 2);
        }
        self.attempts.push(a);
    }
}

/// State of one call across rounds.
struct Call {
    deadline: Instant,
    attempts: Vec<Attempt>,
    sent: u32,
    /// Vaults sent to in this call (bit per vault index).
    tried: u64,
    /// Secondaries that answered 404 in this call (bit per vault index): not asked again in
    /// it (a vault's "not found" does not change within a read's deadline; asking again spent
    /// the attempts on one answer, and the error named the region once per attempt).
    not_found: u64,
    earliest_unthrottle: Option<Instant>,
}

impl Engine {
    /// Reads `name` from the vaults and caches it, unless a write finished after the fetch
    /// `started`. A background `urgency` (a refresh nobody waits for) leaves a reserve of each
    /// vault's budget to callers' reads and does not hedge, until a caller joins.
    pub(crate) async fn fetch(
        &self,
        name: &SecretName,
        version: Option<&str>,
        key: &str,
        urgency: &Urgency,
        started: Instant,
    ) -> Fetched {
        // Nothing held to fall back on, and a caller waits for it: better late than failed.
        let cold = !urgency.is_background() && self.cache.get(key).is_none();
        let limits = if cold {
            Limits::cold_read(&self.config)
        } else {
            Limits::read(&self.config)
        };
        let result = self
            .try_regions(name.as_str(), urgency, limits, |store| {
                let (name, version) = (name.clone(), version.map(str::to_string));
                Box::pin(async move { store.get(&name, version.as_deref()).await })
            })
            .await;
        match result {
            Ok((idx, stored)) => {
                let (value, version, created, metadata) = stored.into_parts();
                if version.is_empty() {
                    // A vault that answers without a version id answered something else.
                    return Err(FetchError {
                        error: Error::new(
                            Kind::Unavailable,
                            format!(
                                "region {} answered secret `{name}` without a version id",
                                self.vaults[idx].name
                            ),
                        ),
                        maskable: true,
                    });
                }
                let v = &self.vaults[idx];
                // Versions never go backwards across a failover. A secondary's copy is older than
                // the value held (replication lag) when this client wrote the held value to the
                // primary and the copy differs, or when the copy was created before the held
                // version (the vaults' `created` times: the secret's high-water mark). The held
                // value stays, served as last-known-good (stale) until a vault that has it
                // answers, and the difference is recorded as drift.
                if v.access != crate::config::Access::ReadWrite && !crate::cache::is_pinned(key) {
                    if let Some(cur) = self.cache.get(key) {
                        let differs = cur.value.expose_secret() != value.expose_secret();
                        let written = cur.authoritative && differs;
                        let older = matches!((cur.created, created), (Some(held), Some(got)) if got < held)
                            && differs;
                        if written || older {
                            self.note_lag(name, &v.name, cur.created);
                            let why = if written {
                                "the one this client wrote to"
                            } else {
                                "the one served from"
                            };
                            return Err(FetchError {
                                error: Error::new(
                                    Kind::Unavailable,
                                    format!(
                                        "region {} holds an older copy of `{name}` than {why} \
                                         region {} (replication lag): the newer value is kept",
                                        v.name, cur.region
                                    ),
                                ),
                                maskable: true,
                            });
                        }
                    }
                }
                self.clear_lag(name, &v.name);
                let on_schedule = urgency.is_background()
                    && self.cache.get(key).is_some_and(|cur| {
                        cur.on_schedule(started, self.config.cache.refresh_interval)
                    });
                let entry = self.entry(
                    value,
                    version.into(),
                    v.name.clone(),
                    !urgency.is_background(),
                    (created, metadata),
                    on_schedule,
                );
                self.cache_fetched(key, entry.clone(), started);
                if !crate::cache::is_pinned(key) {
                    let mut t = crate::lock(&self.probe_target);
                    if t.as_ref() != Some(name) {
                        *t = Some(name.clone());
                    }
                }
                Ok(entry)
            }
            Err(e) => {
                // The primary says it does not exist: forget it. A pinned version that does not
                // exist says nothing about the secret's latest value or other versions.
                if e.error.is_not_found() && !e.maskable {
                    match version {
                        None => self.forget(name.key()),
                        Some(_) => self.cache.remove(key),
                    }
                }
                Err(e)
            }
        }
    }

    /// `region` served an older copy of `name` than the one held: record it as drift.
    fn note_lag(&self, name: &SecretName, region: &Arc<str>, newer: Option<SystemTime>) {
        if let Some(newer) = newer {
            let mut lag = crate::lock(&self.lag);
            let regions = lag.entry(name.key().to_string()).or_default();
            match regions.iter_mut().find(|(r, _)| r == region) {
                // The oldest version it lacks sets how far behind it is.
                Some((_, t)) => *t = (*t).min(newer),
                None => regions.push((region.clone(), newer)),
            }
        }
        let mut drift = crate::lock(&self.drift);
        let regions = drift.entry(name.key().to_string()).or_default();
        if !regions.iter().any(|r| r.as_str() == &**region) {
            regions.push(region.to_string());
            tracing::warn!(secret = %name, region = %region, "a secondary holds an older copy");
            self.events.emit(crate::events::Event::Drift {
                secret: name.key().clone(),
                regions: regions.iter().map(|r| Arc::from(r.as_str())).collect(),
            });
        }
    }

    /// `region` answered `name` without lag: it no longer lags for it.
    fn clear_lag(&self, name: &SecretName, region: &Arc<str>) {
        let mut lag = crate::lock(&self.lag);
        if let Some(regions) = lag.get_mut(&**name.key()) {
            regions.retain(|(r, _)| r != region);
            if regions.is_empty() {
                lag.remove(&**name.key());
            }
        }
    }

    /// Picks the next vault of `order` that may be sent to, recording why others were skipped.
    fn next_vault(
        &self,
        order: &mut impl Iterator<Item = usize>,
        call: &mut Call,
        urgency: &Urgency,
        hedge: bool,
    ) -> Next {
        let cfg = &self.config;
        // A hedge is speculative: it draws on the budget up front, and when the budget says
        // no there is simply no hedge. The vaults stay in `order` for failover after a
        // failure, which is free (below).
        if hedge && !self.budget.withdraw(crate::clock::now()) {
            self.metrics.budget_refused();
            return Next::Exhausted;
        }
        for idx in order.by_ref() {
            let v = &self.vaults[idx];
            let now = crate::clock::now();
            if call.not_found & bit(idx) != 0 {
                continue;
            }
            if call.sent >= cfg.retry.max_attempts || Instant::now() >= call.deadline {
                return Next::Stop;
            }
            let Some(permit) = v.breaker.try_acquire() else {
                call.note(Attempt::new(v.name.clone(), AttemptFailure::BreakerOpen));
                continue;
            };
            let admitted = if urgency.is_background() {
                v.gate.try_take_above(cfg.refresh.reserve_for_reads, now)
            } else {
                v.gate.try_take(now)
            };
            if !admitted {
                if let Some(t) = v.gate.throttled_until(now) {
                    let t = Instant::from_std(t);
                    call.earliest_unthrottle =
                        Some(call.earliest_unthrottle.map_or(t, |e| e.min(t)));
                }
                call.note(Attempt::new(v.name.clone(), AttemptFailure::Throttled));
                continue;
            }
            // The first attempt at another vault after a failure is failover, not a retry: it
            // adds no load to the failing vault, so it is free (at most one per region per
            // call). Same-vault retries and speculative hedges draw on the budget.
            let free = hedge || call.tried & bit(idx) == 0;
            if call.sent > 0 && !free && !self.budget.withdraw(now) {
                self.metrics.budget_refused();
                call.note(Attempt::new(
                    v.name.clone(),
                    AttemptFailure::BudgetExhausted,
                ));
                return Next::Stop;
            }
            call.sent += 1;
            call.tried |= bit(idx);
            return Next::Send(idx, permit);
        }
        Next::Exhausted
    }

    /// One attempt: the call under its timeout, its latency, its outcome on the breaker.
    /// Dropped before it ends (a hedge lost), it records nothing.
    fn attempt<'a, T: Send + 'a>(
        &'a self,
        idx: usize,
        permit: Permit,
        deadline: Instant,
        limits: Limits,
        fut: BoxFuture<'static, Result<T, StoreError>>,
    ) -> AttemptFuture<'a, T> {
        Box::pin(async move {
            let v = &self.vaults[idx];
            let t0 = Instant::now();
            let limit = limits.attempt.min(deadline.saturating_duration_since(t0));
            let res = match tokio::time::timeout(limit, fut).await {
                Ok(r) => r,
                Err(_) => Err(StoreError::new(
                    StoreErrorKind::Timeout,
                    format!("no answer within {}ms", limit.as_millis()),
                )),
            };
            self.metrics.request(
                idx,
                crate::metrics::Method::Get,
                t0.elapsed(),
                res.as_ref().map(|_| ()),
            );
            let outcome = match &res {
                Err(e) if *e.kind() == StoreErrorKind::Timeout && !limits.slow_is_failure => {
                    Outcome::NotRecorded
                }
                _ => {
                    v.record_latency(t0.elapsed());
                    outcome_of(&res)
                }
            };
            self.settle(idx, permit, outcome);
            (idx, res)
        })
    }

    /// Tries one operation against the vaults in route order. Returns the index of the vault
    /// that answered and its answer.
    pub(crate) async fn try_regions<T, F>(
        &self,
        what: &str,
        urgency: &Urgency,
        limits: Limits,
        call_store: F,
    ) -> Result<(usize, T), FetchError>
    where
        T: Send + 'static,
        F: Fn(Arc<dyn SecretStore>) -> BoxFuture<'static, Result<T, StoreError>>,
    {
        let cfg = &self.config;
        let mut call = Call {
            deadline: later(Instant::now(), limits.deadline),
            attempts: Vec::new(),
            sent: 0,
            tried: 0,
            not_found: 0,
            earliest_unthrottle: None,
        };
        let hedging = cfg.hedge.enabled && limits.hedge && !urgency.is_background();
        let mut hedges_left = u32::from(hedging);
        // A background fetch that a caller joined may hedge from then on (once).
        let mut may_raise = cfg.hedge.enabled && limits.hedge && !hedging;
        self.budget.deposit(crate::clock::now());
        'rounds: for round in 0u32.. {
            // Registered before this round's attempts, so that a vault coming back while they
            // fail is not missed by a wait below.
            let mut recovered = std::pin::pin!(self.router.available());
            let route = self.router.load();
            let mut order = route
                .active()
                .into_iter()
                .chain((0..self.vaults.len()).filter(|i| Some(*i) != route.active()))
                .collect::<Vec<_>>()
                .into_iter()
                .peekable();
            let mut in_flight: FuturesUnordered<AttemptFuture<'_, T>> = FuturesUnordered::new();
            // Vaults with an attempt in flight (at most the first attempt and its hedges).
            let mut pending: Vec<usize> = Vec::new();
            // The latest attempt that is not a hedge (what a hedge is sent to replace), and the
            // one the hedge sent in this round replaced: only that one can lose the race.
            let mut replaced: Option<usize> = None;
            let mut hedged_for: Option<usize> = None;
            let mut replaced_at = Instant::now();
            let mut hedge_at: Option<Instant> = None;
            let mut sent_this_round = 0;
            call.earliest_unthrottle = None;
            loop {
                if in_flight.is_empty() {
                    match self.next_vault(&mut order, &mut call, urgency, false) {
                        Next::Send(idx, permit) => {
                            let store = self.vaults[idx].store.clone();
                            in_flight.push(self.attempt(
                                idx,
                                permit,
                                call.deadline,
                                limits,
                                call_store(store),
                            ));
                            pending.push(idx);
                            replaced = Some(idx);
                            replaced_at = Instant::now();
                            sent_this_round += 1;
                            hedge_at = (hedges_left > 0 && order.peek().is_some()).then(|| {
                                later(Instant::now(), self.vaults[idx].hedge_delay(&cfg.hedge))
                            });
                        }
                        Next::Exhausted => break,
                        Next::Stop => break 'rounds,
                    }
                }
                let hedge_timer = async {
                    match hedge_at {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                };
                let (idx, res) = tokio::select! {
                    biased;
                    Some(done) = in_flight.next() => done,
                    _ = urgency.raised(), if may_raise => {
                        // A caller joined this refresh: from now on it reads as a caller would.
                        may_raise = false;
                        hedges_left = 1;
                        if hedge_at.is_none() && pending.len() == 1 && order.peek().is_some() {
                            let idx = pending[0];
                            hedge_at = Some(later(replaced_at, self.vaults[idx].hedge_delay(&cfg.hedge)));
                        }
                        continue;
                    }
                    _ = hedge_timer => {
                        hedge_at = None;
                        match self.next_vault(&mut order, &mut call, urgency, true) {
                            Next::Send(idx, permit) => {
                                hedges_left -= 1;
                                self.metrics.hedge(idx, false);
                                tracing::debug!(op = what, to = %self.vaults[idx].name, "hedging read");
                                let store = self.vaults[idx].store.clone();
                                in_flight.push(self.attempt(idx, permit, call.deadline, limits, call_store(store)));
                                pending.push(idx);
                                hedged_for = replaced;
                                sent_this_round += 1;
                            }
                            Next::Exhausted | Next::Stop => {}
                        }
                        continue;
                    }
                };
                let v = &self.vaults[idx];
                pending.retain(|&p| p != idx);
                let e = match res {
                    Ok(t) => {
                        tracing::debug!(region = %v.name, op = what, attempt = call.sent, "vault answered");
                        drop(in_flight);
                        // Only the attempt the hedge replaced lost a race it was meant to win;
                        // any other attempt cancelled here says nothing about its vault.
                        if let Some(slow) = hedged_for.filter(|s| *s != idx && pending.contains(s))
                        {
                            self.lost_hedge(slow);
                            self.metrics.hedge(idx, true);
                        }
                        return Ok((idx, t));
                    }
                    Err(e) => e,
                };
                tracing::info!(region = %v.name, op = what, attempt = call.sent, error = %e, "vault attempt failed");
                let fatal = |kind| FetchError {
                    error: Error::with_attempts(
                        kind,
                        format!("region {} refused `{what}`", v.name),
                        vec![Attempt::new(
                            v.name.clone(),
                            AttemptFailure::Store(e.clone()),
                        )],
                        Some(e.clone()),
                    ),
                    maskable: false,
                };
                // A hedge's definitive "no" while the attempt it raced is still out is a lost
                // hedge, not the read's answer: the other attempt may well answer.
                let from_hedge = hedged_for.is_some() && Some(idx) != replaced;
                let definitive = matches!(
                    e.kind(),
                    StoreErrorKind::Auth { .. } | StoreErrorKind::Rejected { .. }
                ) || (idx == 0 && *e.kind() == StoreErrorKind::NotFound);
                if definitive && from_hedge && !in_flight.is_empty() {
                    call.note(Attempt::new(v.name.clone(), AttemptFailure::Store(e)));
                    continue;
                }
                match e.kind() {
                    StoreErrorKind::Auth { .. } => return Err(fatal(Kind::Auth)),
                    StoreErrorKind::Rejected { .. } => return Err(fatal(Kind::Rejected)),
                    StoreErrorKind::NotFound if idx == 0 => return Err(fatal(Kind::NotFound)),
                    StoreErrorKind::NotFound => call.not_found |= bit(idx),
                    // A 429, or a 503 that says when to come back: keep off the vault that long
                    // (capped), and wait for it if nothing else answers.
                    _ if e.asks_to_wait() => {
                        let ra = self.throttled(idx, e.retry_after());
                        let t = later(Instant::now(), ra);
                        call.earliest_unthrottle =
                            Some(call.earliest_unthrottle.map_or(t, |x| x.min(t)));
                    }
                    _ => {}
                }
                call.note(Attempt::new(v.name.clone(), AttemptFailure::Store(e)));
            }
            drop(in_flight);
            if call.sent >= cfg.retry.max_attempts {
                // A cold read that spent its attempts on a total outage still does not give up
                // before its deadline: it waits for the route to gain a vault (nothing is sent
                // meanwhile), then tries each region once more.
                let left = call.deadline.saturating_duration_since(Instant::now());
                if limits.wait_for_vault
                    && !left.is_zero()
                    && tokio::time::timeout(left, recovered.as_mut()).await.is_ok()
                {
                    // One attempt per region again (the first after a recovery can still meet
                    // a connection the outage broke).
                    let regions = u32::try_from(self.vaults.len()).unwrap_or(u32::MAX);
                    call.sent = cfg.retry.max_attempts.saturating_sub(regions);
                    call.tried = 0;
                    continue;
                }
                break;
            }
            // Before the next round: full-jitter backoff after sent failures; when only
            // throttling stood in the way, until the earliest Retry-After, if it fits.
            let wait = if sent_this_round > 0 {
                let cap = cfg
                    .retry
                    .backoff_base
                    .saturating_mul(1u32 << round.min(16))
                    .min(cfg.retry.backoff_max);
                let ms = cap.as_millis() as u64;
                let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
                Duration::from_millis(rng.u64(0..=ms))
            } else if let Some(t) = call.earliest_unthrottle {
                t.saturating_duration_since(Instant::now())
            } else if limits.wait_for_vault && call.not_found == 0 {
                // Every breaker refused: wait for a vault to come back (a probe closes its
                // breaker and the route moves), looking again at least every unhealthy-probe
                // interval, up to the deadline.
                let left = call.deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let look = cfg.probe.unhealthy_interval.min(left);
                let _ = tokio::time::timeout(look, recovered.as_mut()).await;
                continue;
            } else {
                break; // every breaker is open: no point waiting out the deadline
            };
            if later(Instant::now(), wait) >= call.deadline {
                break;
            }
            tokio::time::sleep(wait).await;
        }
        // A secondary said 404 while the primary could not be asked: that is replication lag
        // as likely as absence (secondaries are separate vaults the customer keeps in sync), so
        // it is unavailability, not "not found", and it says so.
        let message = if call.not_found != 0 {
            let said: Vec<&str> = (0..self.vaults.len())
                .filter(|&i| call.not_found & bit(i) != 0)
                .map(|i| &*self.vaults[i].name)
                .collect();
            format!(
                "no region could serve `{what}`: {} answered not found while the primary region {} \
                 could not be asked; the secret may not be replicated there yet",
                said.join(", "),
                self.vaults[0].name
            )
        } else {
            format!("no region could serve `{what}`")
        };
        Err(FetchError {
            error: Error::with_attempts(Kind::Unavailable, message, call.attempts, None),
            maskable: true,
        })
    }

    /// Records a call's outcome on vault `idx`: its breaker, its probe streak, and the route,
    /// which may change with it. Every call's outcome goes through here.
    pub(crate) fn settle(&self, idx: usize, permit: Permit, outcome: Outcome) {
        self.settle_as(idx, permit, outcome, true)
    }

    /// [`settle`](Self::settle) for a call that is a caller's (`caller`), or a health probe,
    /// which does not count in the outlier detection of callers' outcomes.
    pub(crate) fn settle_as(&self, idx: usize, permit: Permit, outcome: Outcome, caller: bool) {
        let v = &self.vaults[idx];
        match outcome {
            Outcome::Failure => v.call_failed(),
            Outcome::Success => v.answered(),
            Outcome::NotRecorded => {}
        }
        v.breaker.record(permit, outcome);
        if caller && outcome == Outcome::Success {
            let carries_route = self.router.load().active() == Some(idx);
            v.caller_succeeded(carries_route, self.config.probe.failback_successes);
        }
        if caller
            && outcome != Outcome::NotRecorded
            && v.caller_outcome(outcome == Outcome::Success)
        {
            self.eject_if_elsewhere(idx);
        }
        self.router.refresh(&self.vaults);
    }

    /// Vault `idx` fails a share of callers' calls (a grey failure its probes may not show):
    /// if it carries the route and another vault is trusted, take it off the route for a while
    /// (its breaker opens; probes go on, and the ejection keeps it from taking the route back
    /// too soon). With nowhere better to go, trying it beats refusing (Envoy's panic threshold).
    fn eject_if_elsewhere(&self, idx: usize) {
        let successes = self.config.probe.failback_successes;
        let elsewhere = self
            .vaults
            .iter()
            .enumerate()
            .any(|(i, v)| i != idx && v.trusted(successes, Duration::ZERO));
        let v = &self.vaults[idx];
        // A hard failure is the breaker's to catch (it has, if it is open): ejection is for
        // the vault whose breaker stays closed while it fails a share of calls.
        if !elsewhere
            || self.router.load().active() != Some(idx)
            || v.breaker.state() != BreakerState::Closed
        {
            return;
        }
        let d = v.eject();
        tracing::warn!(region = %v.name, ejected_for_s = d.as_secs(), "vault fails too many callers' calls: ejected");
        v.breaker.trip();
    }

    /// A hedge to another vault won while vault `idx` was still silent. A cancelled loser is
    /// neither a success nor a failure for the breaker; but a vault that loses
    /// `failure_threshold` hedges in a row without answering anything in between (a
    /// blackholed or browned-out vault, whose calls never get to time out because the hedge
    /// always wins) is tripped, so reads stop waiting a hedge delay for it.
    fn lost_hedge(&self, idx: usize) {
        let v = &self.vaults[idx];
        let lost = v.hedge_lost();
        if lost >= self.config.breaker.failure_threshold
            && v.breaker.state() == BreakerState::Closed
        {
            tracing::warn!(region = %v.name, lost, "vault keeps losing hedged reads: tripping its breaker");
            v.call_failed();
            v.breaker.trip();
            self.router.refresh(&self.vaults);
        }
    }

    /// Vault `idx` asked us to keep off it (429, or 503 with `Retry-After`): keep off it for
    /// what it asked, capped at `throttle.max_retry_after`, and longer after 429s in a row
    /// ([`VaultGate::throttle`](keyvault_failover_core::budget::VaultGate::throttle)). Returns the wait applied.
    pub(crate) fn throttled(&self, idx: usize, asked: Option<Duration>) -> Duration {
        let asked = self.config.throttle.retry_after(asked);
        let draw = crate::lock(&self.rng).f64();
        let v = &self.vaults[idx];
        let retry_after = v.gate.throttle(
            asked,
            self.config.throttle.max_retry_after,
            draw,
            crate::clock::now(),
        );
        tracing::warn!(
            region = %v.name,
            retry_after_ms = retry_after.as_millis() as u64,
            "vault throttled; spilling to the next region"
        );
        self.events.emit(crate::events::Event::Throttled {
            region: v.name.clone(),
            retry_after,
        });
        retry_after
    }

    /// Without a prober, a higher-priority vault is tried again by a trial probe that callers'
    /// traffic triggers, off the caller's path, at most once per unhealthy-probe interval.
    /// Cheap when the primary is active: one atomic load.
    pub(crate) fn nudge_failback(self: &Arc<Self>) {
        if self.config.probe.enabled {
            return;
        }
        let route = self.router.load();
        let top = route.active().unwrap_or(self.vaults.len());
        for idx in 0..top {
            let v = &self.vaults[idx];
            let trusted = v.breaker.state() == BreakerState::Closed
                && v.probe_streak() >= self.config.probe.failback_successes;
            if trusted {
                continue;
            }
            if !v.claim_probe(self.config.probe.unhealthy_interval) {
                continue;
            }
            let inner = self.clone();
            tokio::spawn(async move { inner.probe(idx, Duration::ZERO).await });
            return;
        }
    }
}
