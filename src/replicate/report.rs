//! What a run did: the calls it sent and each name's outcome, per secondary.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::plan::{Planned, Step};

/// Calls sent, counted per attempt (a retry is another call).
#[derive(Debug, Default)]
pub struct Calls {
    pub(super) lists: AtomicU64,
    pub(super) reads: AtomicU64,
    pub(super) writes: AtomicU64,
    pub(super) throttled: AtomicU64,
    pub(super) retries: AtomicU64,
}

impl Calls {
    /// Listings (each a full, paged listing of one vault).
    pub fn lists(&self) -> u64 {
        self.lists.load(Ordering::Relaxed)
    }
    /// Reads of a value (the primary's, or a secondary's to compare).
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }
    /// Writes: new versions, property updates, soft deletes, recoveries.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
    /// Answers that asked to wait (429, or `Retry-After`).
    pub fn throttled(&self) -> u64 {
        self.throttled.load(Ordering::Relaxed)
    }
    /// Calls sent again after a failure.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }
    pub(super) fn add(&self, other: &Calls) {
        for (a, b) in [
            (&self.lists, &other.lists),
            (&self.reads, &other.reads),
            (&self.writes, &other.writes),
            (&self.throttled, &other.throttled),
            (&self.retries, &other.retries),
        ] {
            a.fetch_add(b.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }
}

/// What was done for one name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeKind {
    /// Nothing needed doing (in step, or a skip the plan reported).
    Nothing,
    /// A new version was written.
    Copied,
    /// The copy's properties were updated.
    Updated,
    /// The copy was soft-deleted.
    Pruned,
    /// The primary changed under the run (deleted or disabled): the next run finishes it.
    Deferred,
    /// It failed; see [`Outcome::error`].
    Failed,
}

impl OutcomeKind {
    /// `nothing`, `copied`, `updated`, `pruned`, `deferred` or `failed`.
    pub fn label(&self) -> &'static str {
        match self {
            OutcomeKind::Nothing => "nothing",
            OutcomeKind::Copied => "copied",
            OutcomeKind::Updated => "updated",
            OutcomeKind::Pruned => "pruned",
            OutcomeKind::Deferred => "deferred",
            OutcomeKind::Failed => "failed",
        }
    }
}

/// One name's outcome in one secondary.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub(super) name: String,
    pub(super) step: Step,
    pub(super) kind: OutcomeKind,
    pub(super) recovered: bool,
    pub(super) error: Option<String>,
    pub(super) source_created: Option<i64>,
}

impl Outcome {
    pub(super) fn new(p: &Planned, kind: OutcomeKind) -> Self {
        Outcome {
            name: p.name().to_string(),
            step: p.step().clone(),
            kind,
            recovered: false,
            error: None,
            source_created: None,
        }
    }
    pub(super) fn failed(p: &Planned, error: String) -> Self {
        Outcome {
            error: Some(error),
            ..Outcome::new(p, OutcomeKind::Failed)
        }
    }
    /// The secret's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The step planned.
    pub fn step(&self) -> &Step {
        &self.step
    }
    /// What was done.
    pub fn kind(&self) -> OutcomeKind {
        self.kind
    }
    /// Whether the name was soft-deleted in the secondary and recovered before the copy.
    pub fn recovered(&self) -> bool {
        self.recovered
    }
    /// Why it failed (no value is ever part of it).
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }
    /// For a copy: when the primary created the version copied (unix seconds), so that
    /// now minus it is how long the secondary lagged.
    pub fn source_created(&self) -> Option<i64> {
        self.source_created
    }
    /// Whether this leaves the secondary out of step.
    pub fn is_failure(&self) -> bool {
        self.kind == OutcomeKind::Failed || matches!(&self.step, Step::Skip(r) if r.is_failure())
    }
}

/// One secondary's run.
#[derive(Debug)]
pub struct SecondaryReport {
    pub(super) region: String,
    pub(super) outcomes: Vec<Outcome>,
    pub(super) listing_error: Option<String>,
}

impl SecondaryReport {
    /// The secondary's region.
    pub fn region(&self) -> &str {
        &self.region
    }
    /// Each name's outcome, in name order.
    pub fn outcomes(&self) -> &[Outcome] {
        &self.outcomes
    }
    /// Why the secondary could not be listed, if it could not.
    pub fn listing_error(&self) -> Option<&str> {
        self.listing_error.as_deref()
    }
    /// How many outcomes of `kind`.
    pub fn count(&self, kind: OutcomeKind) -> usize {
        self.outcomes.iter().filter(|o| o.kind == kind).count()
    }
    /// Whether the secondary is in step after the run.
    pub fn in_step(&self) -> bool {
        self.listing_error.is_none()
            && !self
                .outcomes
                .iter()
                .any(|o| o.is_failure() || o.kind == OutcomeKind::Deferred)
    }
}

/// A run's report.
#[derive(Debug)]
pub struct Report {
    pub(super) secondaries: Vec<SecondaryReport>,
    pub(super) calls: Calls,
    pub(super) elapsed: Duration,
}

impl Report {
    /// One report per secondary, in the order configured.
    pub fn secondaries(&self) -> &[SecondaryReport] {
        &self.secondaries
    }
    /// The calls the run sent (its plan's listings included).
    pub fn calls(&self) -> &Calls {
        &self.calls
    }
    /// How long the run took (tokio's clock).
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }
    /// Whether every secondary is in step.
    pub fn in_step(&self) -> bool {
        self.secondaries.iter().all(SecondaryReport::in_step)
    }
}
