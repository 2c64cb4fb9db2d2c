//! The run: listings into a plan, then each step as calls within the vaults' budgets, with
//! retries, and a report of what was done.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use secrecy::ExposeSecret;
use tokio::time::Instant;

use super::budget::Budget;
use super::item::{Provenance, ReadVersion};
use super::plan::{self, AfterRead, Planned, Step, UpdateReason};
use super::report::{Calls, Outcome, OutcomeKind, Report, SecondaryReport};
use super::{Plan, ReplicaStore, Replicator, SecondaryPlan};
use crate::error::{StoreError, StoreErrorKind};
use crate::name::SecretName;

/// Transient failures retried per call before it is given up.
const MAX_TRANSIENT: u32 = 4;
/// `Retry-After` waits obeyed per call before it is given up.
const MAX_THROTTLED: u32 = 8;

#[derive(Clone, Copy)]
enum CallKind {
    List,
    Read,
    Write,
}

/// A secondary as a run holds it.
struct Target<'a> {
    region: &'a str,
    store: &'a dyn ReplicaStore,
    writes: Budget,
    reads: Budget,
}

struct Ctx<'a> {
    r: &'a Replicator,
    calls: Calls,
    primary_reads: Budget,
    rng: Mutex<fastrand::Rng>,
}

/// A wall-clock time in unix seconds (0 before 1970).
fn unix(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Key Vault's 403 for a read of a disabled secret (code `Forbidden`, inner code
/// `SecretDisabled`, "Operation get is not allowed on a disabled secret.").
fn is_disabled_secret(e: &StoreError) -> bool {
    let m = e.message();
    e.kind().status() == Some(403)
        && (m.contains("SecretDisabled") || m.contains("not allowed on a disabled secret"))
}

fn transient(e: &StoreError) -> bool {
    matches!(
        e.kind(),
        StoreErrorKind::Connect
            | StoreErrorKind::Reset
            | StoreErrorKind::Timeout
            | StoreErrorKind::Server { .. }
            | StoreErrorKind::Malformed
    )
}

fn describe(e: &StoreError) -> String {
    match e.kind().status() {
        Some(s) => format!("{} ({s}): {}", e.kind().label(), e.message()),
        None => format!("{}: {}", e.kind().label(), e.message()),
    }
}

impl Ctx<'_> {
    /// One call with its retries: within `budget`, under the attempt timeout; a throttled
    /// answer holds the whole budget for its (capped) `Retry-After`, a transient failure is
    /// retried after a jittered exponential backoff.
    async fn call<T, F, Fut>(
        &self,
        budget: &Budget,
        kind: CallKind,
        mut f: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let (mut transients, mut throttles) = (0u32, 0u32);
        loop {
            budget.take().await;
            let counter = match kind {
                CallKind::List => &self.calls.lists,
                CallKind::Read => &self.calls.reads,
                CallKind::Write => &self.calls.writes,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            // A listing is many pages, each bounded by the store's per-request timeout; the
            // whole by the list timeout.
            let limit = match kind {
                CallKind::List => self.r.list_timeout,
                CallKind::Read | CallKind::Write => self.r.attempt_timeout,
            };
            let e = match tokio::time::timeout(limit, f()).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => e,
                Err(_) => StoreError::new(StoreErrorKind::Timeout, "the call timed out"),
            };
            if e.asks_to_wait() && throttles < MAX_THROTTLED {
                throttles += 1;
                self.calls.throttled.fetch_add(1, Ordering::Relaxed);
                let wait = e
                    .retry_after()
                    .unwrap_or(self.r.default_retry_after)
                    .min(self.r.max_retry_after);
                budget.hold(wait);
            } else if transient(&e) && transients < MAX_TRANSIENT {
                let base = 200u64 << transients;
                let jitter = self
                    .rng
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .u64(0..=base);
                transients += 1;
                tokio::time::sleep(Duration::from_millis(base + jitter)).await;
            } else {
                return Err(e);
            }
            self.calls.retries.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Reads the primary's latest version of `name`; with it, when the attempt that answered
    /// was sent (unix seconds, the replicator's wall clock, rounded down): the version was the latest
    /// at some moment after that.
    async fn read_primary(&self, name: &SecretName) -> Result<(ReadVersion, i64), StoreError> {
        let sent = std::sync::atomic::AtomicI64::new(0);
        let read = self
            .call(&self.primary_reads, CallKind::Read, || {
                sent.store(unix((self.r.wall_clock)()), Ordering::Relaxed);
                self.r.primary.read(name)
            })
            .await?;
        Ok((read, sent.load(Ordering::Relaxed)))
    }

    /// Writes `read` into the target as a new version, recovering a soft-deleted name first.
    async fn write_copy(
        &self,
        t: &Target<'_>,
        p: &Planned,
        name: &SecretName,
        read: &ReadVersion,
        read_at: i64,
    ) -> Outcome {
        let prov = Provenance::new(
            &self.r.primary_region,
            read.version(),
            read.created().unwrap_or(0),
        )
        .with_read(read_at);
        let prov = match &self.r.mac_key {
            Some(key) => key.seal(name.as_str(), &prov, read.value().expose_secret()),
            None => prov,
        };
        if let Some(why) = read.properties().copy_problem(&prov) {
            return Outcome::failed(p, why);
        }
        let props = read.properties().for_copy(&prov);
        let write = || t.store.write(name, read.value(), &props);
        let mut recovered = false;
        let mut result = self.call(&t.writes, CallKind::Write, write).await;
        if matches!(result, Err(ref e) if e.kind().status() == Some(409)) {
            if let Err(e) = self
                .call(&t.writes, CallKind::Write, || t.store.recover(name))
                .await
            {
                return Outcome::failed(
                    p,
                    format!("soft-deleted here and not recovered: {}", describe(&e)),
                );
            }
            recovered = true;
            result = self.call(&t.writes, CallKind::Write, write).await;
        }
        match result {
            Ok(_) => Outcome {
                recovered,
                source_created: read.created(),
                ..Outcome::new(p, OutcomeKind::Copied)
            },
            Err(e) => Outcome {
                recovered,
                ..Outcome::failed(p, format!("write: {}", describe(&e)))
            },
        }
    }

    /// `props` (a copy's) with its provenance sealed by the replicator's MAC key over `value`,
    /// when it has a key.
    fn sealed(
        &self,
        name: &SecretName,
        props: super::Properties,
        value: &secrecy::SecretString,
    ) -> super::Properties {
        match (&self.r.mac_key, props.provenance()) {
            (Some(key), Some(prov)) => {
                props.for_copy(&key.seal(name.as_str(), &prov, value.expose_secret()))
            }
            _ => props,
        }
    }

    /// What proves a copy the replicator's before the plan acts on it, or trusts it. Prune
    /// acts only on a copy the replicator can prove it wrote: one whose provenance MAC matches
    /// its value (read first). Disable needs no proof beyond the tag: it keeps the value and is
    /// undone by an enable, a primary's disable is usually a revocation that must reach every
    /// copy, and a value planted under a copy's tags is better disabled than served. A deep pass proves every copy the
    /// listings call in step (with a key, by the MAC; without, by comparing the values) and
    /// rewrites one that is not what the replicator wrote: a value planted under a genuine
    /// copy's tags. `None`: go on with the plan.
    async fn prove(&self, t: &Target<'_>, p: &Planned, name: &SecretName) -> Option<Outcome> {
        let destructive = *p.step() == Step::Prune;
        let deep = self.r.deep.load(Ordering::Relaxed)
            && matches!(
                p.step(),
                Step::InStep | Step::Check | Step::Update(UpdateReason::Properties)
            );
        if !(deep || destructive && self.r.mac_key.is_some()) {
            return None;
        }
        let here = match self
            .call(&t.reads, CallKind::Read, || t.store.read(name))
            .await
        {
            Ok(h) => h,
            Err(e) if *e.kind() == StoreErrorKind::NotFound => {
                return Some(Outcome::new(p, OutcomeKind::Nothing))
            }
            // A copy disabled in the secondary (the replicator disabled it, having proved it,
            // when the primary disabled its source) cannot be read, so its MAC cannot be
            // checked: a prune goes by its sealed tag (ours, with a MAC), the most a listing
            // shows; anything else is left alone.
            Err(e) if *p.step() == Step::Prune && is_disabled_secret(&e) => {
                let sealed = p
                    .secondary()
                    .and_then(|s| s.provenance())
                    .is_some_and(|v| v.region() == self.r.primary_region && v.mac().is_some());
                return (!sealed).then(|| {
                    Outcome::failed(
                        p,
                        "left alone: disabled here and its tag is not the replicator's sealed one"
                            .to_string(),
                    )
                });
            }
            Err(e) => {
                return Some(Outcome::failed(
                    p,
                    format!("read the copy: {}", describe(&e)),
                ))
            }
        };
        let proved = self.r.mac_key.as_ref().map(|key| {
            here.properties()
                .provenance()
                .filter(|v| v.region() == self.r.primary_region)
                .is_some_and(|v| key.verifies(name.as_str(), &v, here.value().expose_secret()))
        });
        if destructive {
            return (proved == Some(false)).then(|| {
                Outcome::failed(
                    p,
                    "left alone: the replicator cannot prove it wrote this copy (its provenance \
                     MAC does not match its value)"
                        .to_string(),
                )
            });
        }
        if proved == Some(true) {
            return Some(Outcome::new(p, OutcomeKind::Nothing))
                .filter(|_| *p.step() == Step::InStep);
        }
        let (read, read_at) = match self.read_primary(name).await {
            Ok(r) => r,
            Err(e) => {
                return Some(Outcome::failed(
                    p,
                    format!("read primary: {}", describe(&e)),
                ))
            }
        };
        if proved.is_none() && here.value().expose_secret() == read.value().expose_secret() {
            // The same value (no key: compared): the plan goes on.
            return Some(Outcome::new(p, OutcomeKind::Nothing))
                .filter(|_| *p.step() == Step::InStep);
        }
        tracing::warn!(secret = %name, region = %t.region, "a copy is not what the replicator wrote: rewriting it");
        Some(self.write_copy(t, p, name, &read, read_at).await)
    }

    async fn apply(&self, t: &Target<'_>, p: &Planned) -> Outcome {
        let name = match SecretName::new(p.name()) {
            Ok(n) => n,
            Err(_) => return Outcome::new(p, OutcomeKind::Nothing),
        };
        if let Some(done) = self.prove(t, p, &name).await {
            return done;
        }
        match p.step() {
            Step::InStep | Step::Skip(_) => Outcome::new(p, OutcomeKind::Nothing),
            Step::Update(_) => {
                let Some(target) = p.target() else {
                    return Outcome::new(p, OutcomeKind::Nothing);
                };
                self.update(t, p, &name, target).await
            }
            Step::Prune => match self
                .call(&t.writes, CallKind::Write, || t.store.soft_delete(&name))
                .await
            {
                Ok(()) => Outcome::new(p, OutcomeKind::Pruned),
                Err(e) if *e.kind() == StoreErrorKind::NotFound => {
                    Outcome::new(p, OutcomeKind::Nothing)
                }
                Err(e) => Outcome::failed(p, format!("soft delete: {}", describe(&e))),
            },
            Step::Copy(_) | Step::Check | Step::Compare => {
                let (read, read_at) = match self.read_primary(&name).await {
                    Ok(r) => r,
                    // Deleted or disabled since the listing: the next run plans it anew. Only
                    // Key Vault's answer for a disabled secret (403, "… not allowed on a
                    // disabled secret"): a 403 such as "public network access is disabled" is
                    // a failure to report, never a deferral.
                    Err(e) if *e.kind() == StoreErrorKind::NotFound || is_disabled_secret(&e) => {
                        return Outcome::new(p, OutcomeKind::Deferred)
                    }
                    Err(e) => return Outcome::failed(p, format!("read primary: {}", describe(&e))),
                };
                let secondary = p.secondary().cloned().unwrap_or_default();
                let decision = match p.step() {
                    Step::Copy(_) => AfterRead::Write,
                    Step::Check => {
                        plan::after_read(&self.r.primary_region, &read, read_at, &secondary, None)
                    }
                    _ => {
                        let here = self
                            .call(&t.reads, CallKind::Read, || t.store.read(&name))
                            .await;
                        let same = here.is_ok_and(|h| {
                            h.value().expose_secret() == read.value().expose_secret()
                        });
                        plan::after_read(
                            &self.r.primary_region,
                            &read,
                            read_at,
                            &secondary,
                            Some(same),
                        )
                    }
                };
                match decision {
                    AfterRead::Nothing => Outcome::new(p, OutcomeKind::Nothing),
                    AfterRead::Update(target) => {
                        let target = self.sealed(&name, target, read.value());
                        self.update(t, p, &name, &target).await
                    }
                    AfterRead::Write => self.write_copy(t, p, &name, &read, read_at).await,
                }
            }
        }
    }

    async fn update(
        &self,
        t: &Target<'_>,
        p: &Planned,
        name: &SecretName,
        target: &super::Properties,
    ) -> Outcome {
        match self
            .call(&t.writes, CallKind::Write, || t.store.update(name, target))
            .await
        {
            Ok(()) => Outcome::new(p, OutcomeKind::Updated),
            Err(e) => Outcome::failed(p, format!("update: {}", describe(&e))),
        }
    }
}

impl Replicator {
    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            r: self,
            calls: Calls::default(),
            primary_reads: Budget::new(self.reads_per_window, self.window),
            rng: Mutex::new(fastrand::Rng::with_seed(self.seed)),
        }
    }

    fn target<'a>(&'a self, region: &'a str, store: &'a Arc<dyn ReplicaStore>) -> Target<'a> {
        Target {
            region,
            store: store.as_ref(),
            writes: Budget::new(self.writes_per_window, self.window),
            reads: Budget::new(self.reads_per_window, self.window),
        }
    }

    /// Lists the primary and every secondary and plans each secondary. Fails only when the
    /// primary cannot be listed; a secondary that cannot be listed has an empty plan and its
    /// [`SecondaryPlan::listing_error`].
    pub async fn plan(&self) -> Result<Plan, StoreError> {
        let ctx = self.ctx();
        let primary = match ctx
            .call(&ctx.primary_reads, CallKind::List, || {
                self.primary.list_items()
            })
            .await
        {
            Ok(p) => p,
            Err(e) => {
                self.metrics.pass("failed");
                return Err(e);
            }
        };
        let lists = self.secondaries.iter().map(|(region, store)| {
            let ctx = &ctx;
            let primary = &primary;
            async move {
                let t = self.target(region, store);
                match ctx
                    .call(&t.reads, CallKind::List, || t.store.list_items())
                    .await
                {
                    Ok(listed) => SecondaryPlan {
                        region: region.clone(),
                        steps: plan::plan(
                            &self.primary_region,
                            primary,
                            &listed,
                            &self.filter,
                            self.prune,
                            self.max_prune_share,
                        ),
                        listing_error: None,
                    },
                    Err(e) => SecondaryPlan {
                        region: region.clone(),
                        steps: Vec::new(),
                        listing_error: Some(describe(&e)),
                    },
                }
            }
        });
        let secondaries = futures::future::join_all(lists).await;
        Ok(Plan {
            primary_listed: primary.len(),
            secondaries,
            calls: ctx.calls,
        })
    }

    /// Carries out `plan`; `progress` is called once per name and secondary as it finishes.
    pub async fn run(&self, plan: &Plan, progress: &(dyn Fn(&str, &Outcome) + Sync)) -> Report {
        let started = Instant::now();
        let ctx = self.ctx();
        ctx.calls.add(&plan.calls);
        let runs = plan.secondaries.iter().map(|sp| {
            let ctx = &ctx;
            async move {
                let store = self
                    .secondaries
                    .iter()
                    .find(|(r, _)| *r == sp.region)
                    .map(|(_, s)| s);
                let Some(store) = store else {
                    return SecondaryReport {
                        region: sp.region.clone(),
                        outcomes: Vec::new(),
                        listing_error: Some("not a secondary of this replicator".into()),
                    };
                };
                let t = self.target(&sp.region, store);
                let t = &t;
                // By index: a closure taking `&Planned` makes the stream's future not `Send`
                // (its argument's lifetime is higher-ranked).
                let steps = &sp.steps;
                let mut outcomes: Vec<Outcome> = futures::stream::iter(0..steps.len())
                    .map(|i| async move {
                        let o = ctx.apply(t, &steps[i]).await;
                        progress(t.region, &o);
                        o
                    })
                    .buffer_unordered(self.concurrency)
                    .collect()
                    .await;
                outcomes.sort_by_key(|o| o.name.to_ascii_lowercase());
                SecondaryReport {
                    region: sp.region.clone(),
                    outcomes,
                    listing_error: sp.listing_error.clone(),
                }
            }
        });
        let secondaries = futures::future::join_all(runs).await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        for s in &secondaries {
            for o in s.outcomes.iter().filter(|o| o.kind != OutcomeKind::Nothing) {
                self.metrics.change(&s.region, o.kind.label());
                if let Some(c) = o.source_created {
                    self.metrics
                        .lag(&s.region, now.saturating_sub(c).max(0) as f64);
                }
            }
        }
        let report = Report {
            secondaries,
            calls: ctx.calls,
            elapsed: started.elapsed(),
        };
        self.metrics.pass(if report.in_step() {
            "in-step"
        } else {
            "not-in-step"
        });
        report
    }
}

/// A run and a plan can be spawned on a multi-threaded runtime (checked when tests compile).
#[cfg(test)]
#[allow(dead_code)]
fn futures_are_send(r: &'static Replicator, plan: &'static Plan) {
    fn is_send<T: Send>(_: T) {}
    is_send(r.plan());
    is_send(r.run(plan, &|_, _| {}));
}
