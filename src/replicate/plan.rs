//! The plan: what each secondary needs, decided from the two vaults' listings alone (no I/O, no
//! clock), and the decision after a read where a listing cannot settle it.

use std::collections::HashMap;
use std::fmt;

use super::item::{Listed, Properties, Provenance, ReadVersion};
use crate::name::SecretName;

/// A copy whose source version was read less than this many seconds after that version's
/// `created` is not trusted from listings alone: Key Vault's times are whole seconds, so the
/// primary may have made a newer version within the same second after the read. One read of
/// the primary settles it (its version id against the provenance's). What counts is the read
/// the copy was made from (its provenance's read time), never the copy's own `created`: that
/// is when it was written, which can come seconds after the read (the write budget, a
/// `Retry-After` hold, retries, a recover), and taking it for the read lost a rotation made in
/// the read's second for ever.
pub const SETTLE_SECS: i64 = 2;

/// Which names a run covers: every name, or those matching any of the patterns (globs with
/// `*`, `?` and `[...]`, case-insensitive as Key Vault's names are).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    only: Vec<glob::Pattern>,
}

impl Filter {
    /// Every name.
    pub fn all() -> Self {
        Filter::default()
    }

    /// Names matching any of `patterns`; an empty list is every name. A pattern that is not
    /// a valid glob is an error naming it.
    pub fn only<S: AsRef<str>>(patterns: &[S]) -> Result<Self, crate::Error> {
        let only = patterns
            .iter()
            .map(|p| {
                glob::Pattern::new(p.as_ref()).map_err(|e| {
                    crate::Error::config(format!("--only {:?} is not a pattern: {e}", p.as_ref()))
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Filter { only })
    }

    /// Whether `name` is covered.
    pub fn selects(&self, name: &str) -> bool {
        let options = glob::MatchOptions {
            case_sensitive: false,
            ..Default::default()
        };
        self.only.is_empty() || self.only.iter().any(|p| p.matches_with(name, options))
    }
}

/// Why a name is copied (a new version written in the secondary).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyReason {
    /// The secondary does not have it.
    Missing,
    /// The primary's version is newer than the one copied.
    Newer,
    /// The secondary's version is not the primary's (another writer's, or a copy claiming a
    /// newer source than the primary holds).
    Differs,
    /// Same version, but a property must be removed, which only a new version can do.
    Rewrite,
}

/// Why a name's secondary version is updated in place (no new version).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateReason {
    /// The primary's secret is disabled: so is the copy (no value is copied).
    Disable,
    /// Same version; enabled, expiry, activation, content type or tags differ.
    Properties,
    /// The same value, written by someone else: the copy gets the primary's properties and its
    /// provenance.
    Adopt,
}

/// Why nothing is written for a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// The backing secret of a certificate in the primary (`managed`): the secrets API cannot
    /// write it; replicate the certificate instead.
    Managed,
    /// A managed secret of the same name in the secondary blocks the copy.
    ManagedInSecondary,
    /// Disabled in the primary and absent from the secondary: there is no value to copy and
    /// nothing to disable.
    DisabledAbsent,
    /// Only in the secondary, copied from the primary, which no longer has it (deleted there):
    /// pruned with `--prune`.
    DeletedInPrimary,
    /// Only in the secondary and not a copy from the primary: never touched.
    NotOurs,
    /// Disabled in the primary, and the secondary's secret of that name is not a copy from
    /// the primary: never touched (the replicator disables only what it wrote).
    DisabledNotOurs,
    /// Deleted in the primary, but this pass would soft-delete more of the secondary's
    /// copies than the prune guard allows (`would` of `copies`; an empty primary listing
    /// would prune them all): nothing is pruned, and the pass says so (exit 1).
    PruneHeld {
        /// Copies this pass would have pruned.
        would: usize,
        /// The secondary's copies from the primary.
        copies: usize,
    },
    /// The name is not one Key Vault accepts.
    InvalidName,
    /// A copy cannot carry its provenance (too many tags, too long a region name).
    CannotTag(String),
}

impl SkipReason {
    /// Whether this leaves the secondary out of step (a run with one exits 1).
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            SkipReason::ManagedInSecondary
                | SkipReason::InvalidName
                | SkipReason::CannotTag(_)
                | SkipReason::PruneHeld { .. }
        )
    }
}

/// What a secondary needs for one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// In step: nothing to do.
    InStep,
    /// Read the primary's latest version and write it as a new version.
    Copy(CopyReason),
    /// The listings cannot tell (see the provenance's version): read the primary's version id.
    Check,
    /// The secondary holds a version this replicator did not write: read both values.
    Compare,
    /// Update the secondary's current version's properties.
    Update(UpdateReason),
    /// Soft-delete the secondary's copy (`--prune`; never purged).
    Prune,
    /// Nothing will be written.
    Skip(SkipReason),
}

impl Step {
    /// A short, stable label: `in-step`, `copy`, `check`, `compare`, `update`, `prune`, `skip`.
    pub fn label(&self) -> &'static str {
        match self {
            Step::InStep => "in-step",
            Step::Copy(_) => "copy",
            Step::Check => "check",
            Step::Compare => "compare",
            Step::Update(_) => "update",
            Step::Prune => "prune",
            Step::Skip(_) => "skip",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::InStep => f.write_str("in step"),
            Step::Copy(CopyReason::Missing) => f.write_str("copy: missing here"),
            Step::Copy(CopyReason::Newer) => f.write_str("copy: the primary has a newer version"),
            Step::Copy(CopyReason::Differs) => {
                f.write_str("copy: this version is not the primary's")
            }
            Step::Copy(CopyReason::Rewrite) => {
                f.write_str("copy: a property must be removed (a new version)")
            }
            Step::Check => {
                f.write_str("check: copied within its version's second, read its version")
            }
            Step::Compare => f.write_str("compare: not written by the replicator, compare values"),
            Step::Update(UpdateReason::Disable) => f.write_str("disable: disabled in the primary"),
            Step::Update(UpdateReason::Properties) => f.write_str("update: properties differ"),
            Step::Update(UpdateReason::Adopt) => f.write_str("update: same value, adopt it"),
            Step::Prune => f.write_str("prune: deleted in the primary (soft delete)"),
            Step::Skip(r) => match r {
                SkipReason::Managed => f.write_str("skip: a certificate's secret (managed)"),
                SkipReason::ManagedInSecondary => {
                    f.write_str("skip: a managed secret of this name here blocks the copy")
                }
                SkipReason::DisabledAbsent => {
                    f.write_str("skip: disabled in the primary, no copy here")
                }
                SkipReason::DeletedInPrimary => {
                    f.write_str("skip: deleted in the primary (--prune soft-deletes it)")
                }
                SkipReason::NotOurs => f.write_str("skip: only here, not a copy of the primary"),
                SkipReason::DisabledNotOurs => {
                    f.write_str("skip: disabled in the primary; not a copy here, left as it is")
                }
                SkipReason::PruneHeld { would, copies } => write!(
                    f,
                    "skip: deleted in the primary, but pruning {would} of {copies} copies is past \
                     the prune guard (--max-prune-share): nothing pruned"
                ),
                SkipReason::InvalidName => f.write_str("skip: not a valid Key Vault name"),
                SkipReason::CannotTag(why) => write!(f, "skip: {why}"),
            },
        }
    }
}

/// One name's step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    name: String,
    step: Step,
    /// For an update: the properties to set.
    target: Option<Properties>,
    /// The secondary's current properties, when it has the name.
    secondary: Option<Properties>,
}

impl Planned {
    fn new(name: &str, step: Step) -> Self {
        Planned {
            name: name.to_string(),
            step,
            target: None,
            secondary: None,
        }
    }
    /// The secret's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// What will be done.
    pub fn step(&self) -> &Step {
        &self.step
    }
    pub(crate) fn target(&self) -> Option<&Properties> {
        self.target.as_ref()
    }
    pub(crate) fn secondary(&self) -> Option<&Properties> {
        self.secondary.as_ref()
    }
}

/// What one secondary needs, name by name (in name order). With `prune`, copies whose source
/// the primary no longer lists are soft-deleted, unless that is more than `max_prune_share`
/// of the secondary's copies (at least one may always go), or the primary lists nothing at
/// all: then none is, and each says why.
pub(crate) fn plan(
    primary_region: &str,
    primary: &[Listed],
    secondary: &[Listed],
    filter: &Filter,
    prune: bool,
    max_prune_share: f64,
) -> Vec<Planned> {
    let key = |n: &str| n.to_ascii_lowercase();
    let here: HashMap<String, &Listed> = secondary.iter().map(|s| (key(s.name()), s)).collect();
    let there: HashMap<String, &Listed> = primary.iter().map(|p| (key(p.name()), p)).collect();
    let mut out = Vec::new();
    for p in primary.iter().filter(|p| filter.selects(p.name())) {
        let s = here.get(&key(p.name())).copied();
        let mut planned = plan_one(primary_region, p, s);
        planned.secondary = s.map(|s| s.properties().clone());
        out.push(planned);
    }
    for s in secondary
        .iter()
        .filter(|s| filter.selects(s.name()) && !there.contains_key(&key(s.name())))
    {
        let ours = s
            .properties()
            .provenance()
            .is_some_and(|p| p.region() == primary_region);
        let step = match (ours, prune) {
            (true, true) => Step::Prune,
            (true, false) => Step::Skip(SkipReason::DeletedInPrimary),
            (false, _) => Step::Skip(SkipReason::NotOurs),
        };
        out.push(Planned {
            secondary: Some(s.properties().clone()),
            ..Planned::new(s.name(), step)
        });
    }
    hold_mass_prune(
        &mut out,
        primary.is_empty(),
        secondary,
        primary_region,
        max_prune_share,
    );
    out.sort_by_key(|p| key(&p.name));
    out
}

/// The prune guard: an empty or truncated primary listing (a wrong vault, a permissions
/// change, a listing that lost pages) must not soft-delete every copy.
fn hold_mass_prune(
    out: &mut [Planned],
    primary_empty: bool,
    secondary: &[Listed],
    primary_region: &str,
    max_share: f64,
) {
    let would = out.iter().filter(|p| p.step == Step::Prune).count();
    if would == 0 {
        return;
    }
    let copies = secondary
        .iter()
        .filter(|s| {
            s.properties()
                .provenance()
                .is_some_and(|p| p.region() == primary_region)
        })
        .count();
    let share = keyvault_failover_core::time::unit(max_share);
    let allowed = ((copies as f64 * share).floor() as usize).max(1);
    let held = if share >= 1.0 {
        false
    } else {
        primary_empty || would > allowed
    };
    if held {
        for p in out.iter_mut().filter(|p| p.step == Step::Prune) {
            p.step = Step::Skip(SkipReason::PruneHeld { would, copies });
        }
    }
}

fn plan_one(primary_region: &str, p: &Listed, s: Option<&Listed>) -> Planned {
    let name = p.name();
    let pp = p.properties();
    let skip = |r| Planned::new(name, Step::Skip(r));
    if SecretName::new(name).is_err() {
        return skip(SkipReason::InvalidName);
    }
    if p.managed() {
        return skip(SkipReason::Managed);
    }
    // Whether a copy could carry its provenance (tag count, region name length): the same for
    // any version, so a placeholder version (and the longest times) stands in.
    let cannot_tag = pp.copy_problem(
        &Provenance::new(primary_region, "0", i64::MAX)
            .with_read(i64::MAX)
            .with_mac("0".repeat(32)),
    );
    let Some(s) = s else {
        if !pp.enabled() {
            return skip(SkipReason::DisabledAbsent);
        }
        return match cannot_tag {
            Some(why) => skip(SkipReason::CannotTag(why)),
            None => Planned::new(name, Step::Copy(CopyReason::Missing)),
        };
    };
    let sp = s.properties();
    if s.managed() {
        return skip(SkipReason::ManagedInSecondary);
    }
    if !pp.enabled() {
        // No value can be read: copy the disabled state onto whatever the copy holds, if it
        // is a copy: a same-named secret the replicator never wrote is not its to disable.
        if !sp.enabled() {
            return Planned::new(name, Step::InStep);
        }
        if sp.provenance().is_none_or(|v| v.region() != primary_region) {
            return skip(SkipReason::DisabledNotOurs);
        }
        return Planned {
            target: Some(sp.clone().with_enabled(false)),
            ..Planned::new(name, Step::Update(UpdateReason::Disable))
        };
    }
    if let Some(why) = cannot_tag {
        return skip(SkipReason::CannotTag(why));
    }
    let Some(prov) = sp.provenance().filter(|v| v.region() == primary_region) else {
        return Planned::new(name, Step::Compare);
    };
    let Some(created) = p.created() else {
        return Planned::new(name, Step::Check);
    };
    if created > prov.created() {
        return Planned::new(name, Step::Copy(CopyReason::Newer));
    }
    if created < prov.created() {
        return Planned::new(name, Step::Copy(CopyReason::Differs));
    }
    if !prov.settled() {
        return Planned::new(name, Step::Check);
    }
    same_version(name, pp, sp, &prov)
}

/// The secondary holds a copy of the primary's current version: in step, or its properties
/// need an update (or, to drop one, a new version).
fn same_version(name: &str, pp: &Properties, sp: &Properties, prov: &Provenance) -> Planned {
    if sp.matches(pp) {
        Planned::new(name, Step::InStep)
    } else if sp.patchable_to(pp) {
        Planned {
            target: Some(pp.for_copy(prov)),
            ..Planned::new(name, Step::Update(UpdateReason::Properties))
        }
    } else {
        Planned::new(name, Step::Copy(CopyReason::Rewrite))
    }
}

/// What a run does once it has read the primary's latest version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AfterRead {
    /// Nothing: the copy is the primary's version, properties equal.
    Nothing,
    /// Update the copy's properties to these.
    Update(Properties),
    /// Write the read version as a new version.
    Write,
}

/// Decides a [`Step::Check`] or [`Step::Compare`] once the primary's `read` (sent at
/// `read_at`, unix seconds) is in hand; `same_value` says, for a compare, whether the
/// secondary's value equals the read one. A check that finds the copy of the current version
/// and now reads it settled records that in the copy's provenance (one property update), so
/// later runs settle it from the listings.
pub(crate) fn after_read(
    primary_region: &str,
    read: &ReadVersion,
    read_at: i64,
    secondary: &Properties,
    same_value: Option<bool>,
) -> AfterRead {
    let prov = Provenance::new(primary_region, read.version(), read.created().unwrap_or(0))
        .with_read(read_at);
    let same = match same_value {
        Some(same) => same,
        None => secondary
            .provenance()
            .is_some_and(|p| p.region() == primary_region && p.version() == read.version()),
    };
    if !same {
        return AfterRead::Write;
    }
    let target = read.properties().for_copy(&prov);
    let held_settled = secondary.provenance().is_some_and(|p| p.settled());
    if same_value.is_none()
        && secondary.matches(read.properties())
        && (held_settled || !prov.settled())
    {
        AfterRead::Nothing
    } else if secondary.patchable_to(read.properties()) {
        AfterRead::Update(target)
    } else {
        AfterRead::Write
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn listed(name: &str, created: i64, props: Properties) -> Listed {
        Listed::new(name, props).with_created(Some(created))
    }

    /// A copy of `version` (created at `src_created`), read at `read_at`.
    fn copy_of(name: &str, src_created: i64, read_at: i64, version: &str) -> Listed {
        let prov = Provenance::new("weu", version, src_created).with_read(read_at);
        listed(name, read_at + 1, Properties::default().for_copy(&prov))
    }

    fn steps(primary: &[Listed], secondary: &[Listed], prune: bool) -> Vec<(String, Step)> {
        plan("weu", primary, secondary, &Filter::all(), prune, 1.0)
            .into_iter()
            .map(|p| (p.name, p.step))
            .collect()
    }

    #[test]
    fn listings_alone_settle_settled_copies() {
        let p = [listed("a", 100, Properties::default())];
        assert_eq!(
            steps(&p, &[copy_of("a", 100, 105, "v1")], false)[0].1,
            Step::InStep
        );
        assert_eq!(
            steps(&p, &[copy_of("A", 90, 95, "v0")], false)[0].1,
            Step::Copy(CopyReason::Newer)
        );
        assert_eq!(steps(&p, &[], false)[0].1, Step::Copy(CopyReason::Missing));
        // Read within the source version's second (or the next): a read settles it.
        assert_eq!(
            steps(&p, &[copy_of("a", 100, 101, "v1")], false)[0].1,
            Step::Check
        );
        // Read in the source's second and written seconds later (a Retry-After hold): the
        // copy's own `created` says nothing of what was read. Settled by that, a newer
        // version made in the read's second was lost for ever.
        let late = {
            let prov = Provenance::new("weu", "v1", 100).with_read(100);
            listed("a", 104, Properties::default().for_copy(&prov))
        };
        assert_eq!(steps(&p, &[late], false)[0].1, Step::Check);
        // A tag written before read times were recorded: unsettled.
        let old = listed(
            "a",
            105,
            Properties::default().for_copy(&Provenance::new("weu", "v1", 100)),
        );
        assert_eq!(steps(&p, &[old], false)[0].1, Step::Check);
        // A copy claiming a newer source than the primary holds.
        assert_eq!(
            steps(&p, &[copy_of("a", 200, 205, "v9")], false)[0].1,
            Step::Copy(CopyReason::Differs)
        );
    }

    #[test]
    fn foreign_copies_are_compared_and_never_pruned() {
        let p = [listed("a", 100, Properties::default())];
        let foreign = listed("a", 100, Properties::default());
        assert_eq!(steps(&p, &[foreign], false)[0].1, Step::Compare);
        let other_region = {
            let prov = Provenance::new("eus", "v1", 100);
            listed("a", 105, Properties::default().for_copy(&prov))
        };
        assert_eq!(steps(&p, &[other_region], false)[0].1, Step::Compare);
        let only_here = listed("b", 100, Properties::default());
        assert_eq!(
            steps(&p, &[only_here], true)[1].1,
            Step::Skip(SkipReason::NotOurs)
        );
        assert_eq!(
            steps(&p, &[copy_of("b", 1, 5, "v")], false)[1].1,
            Step::Skip(SkipReason::DeletedInPrimary)
        );
        assert_eq!(
            steps(&p, &[copy_of("b", 1, 5, "v")], true)[1].1,
            Step::Prune
        );
    }

    #[test]
    fn a_pass_that_would_prune_past_the_guard_prunes_nothing() {
        let copies: Vec<Listed> = (0..20)
            .map(|i| copy_of(&format!("c{i:02}"), 1, 5, "v"))
            .collect();
        let listed_all: Vec<Listed> = (0..20)
            .map(|i| listed(&format!("c{i:02}"), 1, Properties::default()))
            .collect();
        let run = |primary: &[Listed], share: f64| -> Vec<Step> {
            plan("weu", primary, &copies, &Filter::all(), true, share)
                .into_iter()
                .map(|p| p.step)
                .collect()
        };
        // Two of twenty deleted in the primary: within 10 %.
        let prunes = run(&listed_all[2..], 0.1);
        assert_eq!(prunes.iter().filter(|s| **s == Step::Prune).count(), 2);
        // Three of twenty: past it, and nothing is pruned.
        let held = run(&listed_all[3..], 0.1);
        assert!(held.iter().all(|s| *s != Step::Prune));
        let reason = Step::Skip(SkipReason::PruneHeld {
            would: 3,
            copies: 20,
        });
        assert_eq!(held.iter().filter(|s| **s == reason).count(), 3);
        assert!(matches!(&held[0], Step::Skip(r) if r.is_failure()));
        // An empty primary listing prunes nothing, even of one copy.
        assert!(run(&[], 0.1).iter().all(|s| *s != Step::Prune));
        // Told otherwise (a share of 1), it prunes.
        assert_eq!(
            run(&[], 1.0).iter().filter(|s| **s == Step::Prune).count(),
            20
        );
    }

    #[test]
    fn a_secret_the_replicator_never_wrote_is_not_disabled() {
        let off = Properties::default().with_enabled(false);
        let p = [listed("a", 100, off)];
        let foreign = listed("a", 100, Properties::default());
        assert_eq!(
            steps(&p, &[foreign], false)[0].1,
            Step::Skip(SkipReason::DisabledNotOurs)
        );
        let elsewhere = {
            let prov = Provenance::new("eus", "v1", 90).with_read(95);
            listed("a", 96, Properties::default().for_copy(&prov))
        };
        assert_eq!(
            steps(&p, &[elsewhere], false)[0].1,
            Step::Skip(SkipReason::DisabledNotOurs)
        );
    }

    #[test]
    fn disabled_primary_disables_the_copy_and_copies_no_value() {
        let off = Properties::default().with_enabled(false);
        let p = [listed("a", 100, off)];
        let planned = plan(
            "weu",
            &p,
            &[copy_of("a", 90, 95, "v0")],
            &Filter::all(),
            false,
            0.1,
        );
        assert_eq!(planned[0].step, Step::Update(UpdateReason::Disable));
        assert!(!planned[0].target().unwrap().enabled());
        // The copy keeps its provenance (it is still a copy of v0).
        assert_eq!(
            planned[0].target().unwrap().provenance().unwrap().version(),
            "v0"
        );
        assert_eq!(
            steps(&p, &[], false)[0].1,
            Step::Skip(SkipReason::DisabledAbsent)
        );
    }

    #[test]
    fn properties_are_patched_unless_one_must_be_dropped() {
        let mut tags = BTreeMap::new();
        tags.insert("team".to_string(), "x".to_string());
        let p = [listed(
            "a",
            100,
            Properties::default()
                .with_tags(tags)
                .with_expires(Some(500)),
        )];
        let planned = plan(
            "weu",
            &p,
            &[copy_of("a", 100, 105, "v1")],
            &Filter::all(),
            false,
            0.1,
        );
        assert_eq!(planned[0].step, Step::Update(UpdateReason::Properties));
        let target = planned[0].target().unwrap();
        assert_eq!(target.expires(), Some(500));
        assert_eq!(target.provenance().unwrap().version(), "v1");
        // The copy has an expiry the primary no longer has: only a new version drops it.
        let mut s = copy_of("a", 100, 105, "v1");
        s = Listed::new(s.name(), s.properties().clone().with_expires(Some(9)))
            .with_created(Some(105));
        let p = [listed("a", 100, Properties::default())];
        assert_eq!(steps(&p, &[s], false)[0].1, Step::Copy(CopyReason::Rewrite));
    }

    #[test]
    fn managed_excluded_and_untaggable_names_are_skipped() {
        let p = [
            listed("cert", 1, Properties::default()).with_managed(true),
            listed("keep", 1, Properties::default()),
            listed(
                "many",
                1,
                Properties::default()
                    .with_tags((0..15).map(|i| (format!("t{i}"), String::new())).collect()),
            ),
        ];
        let all = steps(&p, &[], false);
        assert_eq!(all[0].1, Step::Skip(SkipReason::Managed));
        assert!(matches!(all[2].1, Step::Skip(SkipReason::CannotTag(_))));
        let only = plan("weu", &p, &[], &Filter::only(&["KE*"]).unwrap(), false, 0.1);
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].name(), "keep");
        assert!(Filter::only(&["[x"]).unwrap_err().is_config());
    }

    #[test]
    fn a_read_settles_a_check_and_a_compare() {
        let read = ReadVersion::new(
            secrecy::SecretString::from("v".to_string()),
            "v2",
            Some(100),
            Properties::default(),
        );
        let prov = |v: &str| Provenance::new("weu", v, 100);
        let copy_v1 = Properties::default().for_copy(&prov("v1").with_read(105));
        let copy_v2 = Properties::default().for_copy(&prov("v2").with_read(105));
        assert_eq!(
            after_read("weu", &read, 200, &copy_v1, None),
            AfterRead::Write
        );
        assert_eq!(
            after_read("weu", &read, 200, &copy_v2, None),
            AfterRead::Nothing
        );
        // The copy of the current version, read in its creation second: this read, later,
        // settles it and records so (a property update, no new version).
        let unsettled = Properties::default().for_copy(&prov("v2").with_read(100));
        assert!(matches!(
            after_read("weu", &read, 200, &unsettled, None),
            AfterRead::Update(p) if p.provenance().unwrap().settled()
        ));
        // Still within the settle time: nothing yet.
        assert_eq!(
            after_read("weu", &read, 101, &unsettled, None),
            AfterRead::Nothing
        );
        let foreign = Properties::default();
        assert_eq!(
            after_read("weu", &read, 200, &foreign, Some(false)),
            AfterRead::Write
        );
        assert!(matches!(
            after_read("weu", &read, 200, &foreign, Some(true)),
            AfterRead::Update(p) if p.provenance().unwrap().version() == "v2"
        ));
    }
}
