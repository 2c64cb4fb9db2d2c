//! The replicator's model test: any sequence of primary writes, rotations, property changes,
//! disables and deletes, interleaved with runs that fail part-way, ends, after one clean run,
//! with the secondary equal to the primary; and the primary is never sent anything but
//! listings and reads. In-process stores on the paused clock.

use std::collections::BTreeMap;
use std::sync::Arc;

use keyvault_failover::replicate::{
    Listed, OutcomeKind, Properties, ReadVersion, ReplicaStore, Replicator,
};
use keyvault_failover::store::{Fault, MemoryStore};
use keyvault_failover::{SecretName, SecretStore, StoreError, StoreErrorKind};
use proptest::prelude::*;
use secrecy::ExposeSecret;

#[derive(Debug, Clone)]
enum Op {
    /// A new version of name `n` with value `v` and these properties.
    Write {
        n: u8,
        v: u8,
        content_type: bool,
        tag: Option<u8>,
        exp: Option<i64>,
    },
    Disable(u8),
    Enable(u8),
    Delete(u8),
    /// A run whose secondary (or primary, for reads) fails from its `after`-th call on, for
    /// `failures` calls.
    Run {
        after: u8,
        failures: u8,
        primary: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..6, any::<u8>(), any::<bool>(), proptest::option::of(0u8..3),
              proptest::option::of(1_000i64..1_003))
            .prop_map(|(n, v, content_type, tag, exp)| Op::Write { n, v, content_type, tag, exp }),
        1 => (0u8..6).prop_map(Op::Disable),
        1 => (0u8..6).prop_map(Op::Enable),
        1 => (0u8..6).prop_map(Op::Delete),
        2 => (0u8..20, 0u8..30, any::<bool>())
            .prop_map(|(after, failures, primary)| Op::Run { after, failures, primary }),
    ]
}

fn props(content_type: bool, tag: Option<u8>, exp: Option<i64>) -> Properties {
    let mut tags = BTreeMap::new();
    if let Some(t) = tag {
        tags.insert("owner".to_string(), format!("team-{t}"));
    }
    Properties::default()
        .with_content_type(content_type.then(|| "text/plain".to_string()))
        .with_tags(tags)
        .with_expires(exp)
}

async fn run(r: &Replicator) {
    if let Ok(plan) = r.plan().await {
        r.run(&plan, &|_, _| {}).await;
    }
}

fn replicator(weu: &Arc<MemoryStore>, neu: &Arc<MemoryStore>) -> Replicator {
    Replicator::builder()
        .primary("weu", weu.clone())
        .secondary("neu", neu.clone())
        .prune(true)
        .mac_key(keyvault_failover::replicate::MacKey::new(vec![3u8; 32]).unwrap())
        // Convergence is the property here: the prune guard (tested on its own) is off.
        .max_prune_share(1.0)
        .seed(1)
        .build()
        .unwrap()
}

async fn check(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let weu = Arc::new(MemoryStore::new("weu"));
    let neu = Arc::new(MemoryStore::new("neu"));
    let r = replicator(&weu, &neu);
    let mut deletes = 0;
    for op in ops {
        match op {
            Op::Write {
                n,
                v,
                content_type,
                tag,
                exp,
            } => {
                weu.insert_with(
                    &format!("s{n}"),
                    &format!("value-{v}"),
                    props(content_type, tag, exp),
                );
            }
            Op::Disable(n) => {
                weu.set_enabled(&format!("s{n}"), false);
            }
            Op::Enable(n) => {
                weu.set_enabled(&format!("s{n}"), true);
            }
            Op::Delete(n) => {
                let name = SecretName::new(&format!("s{n}")).unwrap();
                // Counted by the store as a write whether or not the name exists.
                let _ = weu.delete(&name).await;
                deletes += 1;
            }
            Op::Run {
                after,
                failures,
                primary,
            } => {
                let target = if primary { &weu } else { &neu };
                let fault = if failures % 3 == 0 {
                    Fault::Throttle(std::time::Duration::from_secs(2))
                } else {
                    Fault::Reset
                };
                target.script(
                    std::iter::repeat_n(None, after as usize)
                        .chain(std::iter::repeat_n(Some(fault), failures as usize)),
                );
                run(&r).await;
                target.clear_script();
            }
        }
    }
    // One clean run.
    run(&r).await;

    prop_assert_eq!(weu.writes(), deletes, "the primary was sent a write");
    let primary = weu.list().await.unwrap();
    let secondary = neu.list().await.unwrap();
    for p in &primary {
        let name = p.name();
        let here = secondary.iter().find(|s| s.name() == name);
        let pp = weu.properties(name).unwrap();
        if !pp.enabled() {
            // The disabled state is copied (no value can be read): absent, or disabled.
            prop_assert!(
                here.is_none_or(|s| !s.enabled()),
                "{name} enabled in the copy"
            );
            continue;
        }
        prop_assert!(here.is_some(), "{name} missing in the secondary");
        let (_, pv) = weu.current(name).unwrap();
        let (_, sv) = neu.current(name).unwrap();
        prop_assert_eq!(pv.expose_secret(), sv.expose_secret(), "{} value", name);
        let sp = neu.properties(name).unwrap();
        prop_assert_eq!(sp.enabled(), pp.enabled());
        prop_assert_eq!(sp.expires(), pp.expires());
        prop_assert_eq!(sp.not_before(), pp.not_before());
        prop_assert_eq!(sp.content_type(), pp.content_type());
        prop_assert!(sp.user_tags().eq(pp.user_tags()), "{} tags", name);
        prop_assert_eq!(
            sp.provenance().map(|p| p.region().to_string()),
            Some("weu".to_string())
        );
    }
    for s in &secondary {
        prop_assert!(
            primary.iter().any(|p| p.name() == s.name()),
            "{} is only in the secondary",
            s.name()
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn one_clean_run_puts_the_secondary_in_step(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(check(ops))?;
    }
}

/// The primary's secret reads answer with one 403 and message; listings answer.
struct ForbiddenReads {
    inner: Arc<MemoryStore>,
    message: &'static str,
}

#[async_trait::async_trait]
impl ReplicaStore for ForbiddenReads {
    async fn list_items(&self) -> Result<Vec<Listed>, StoreError> {
        self.inner.list_items().await
    }
    async fn read(&self, _: &SecretName) -> Result<ReadVersion, StoreError> {
        Err(StoreError::new(
            StoreErrorKind::Auth { status: 403 },
            self.message,
        ))
    }
    async fn write(
        &self,
        n: &SecretName,
        v: &secrecy::SecretString,
        p: &Properties,
    ) -> Result<String, StoreError> {
        self.inner.write(n, v, p).await
    }
    async fn update(&self, n: &SecretName, p: &Properties) -> Result<(), StoreError> {
        self.inner.update(n, p).await
    }
    async fn soft_delete(&self, n: &SecretName) -> Result<(), StoreError> {
        self.inner.soft_delete(n).await
    }
    async fn recover(&self, n: &SecretName) -> Result<(), StoreError> {
        self.inner.recover(n).await
    }
}

/// Only Key Vault's answer for a disabled secret defers a copy to the next run. A 403 such as
/// "public network access is disabled" is a failure the pass reports (a substring match on
/// "isabled" took it for a disabled secret, and the pass said nothing was wrong).
#[test]
fn a_forbidden_read_is_a_failure_unless_the_secret_is_disabled() {
    for (message, kind) in [
        (
            "ForbiddenByConnection: Public network access is disabled and request is not from a trusted service",
            OutcomeKind::Failed,
        ),
        (
            "Forbidden: Operation get is not allowed on a disabled secret.",
            OutcomeKind::Deferred,
        ),
    ] {
        keyvault_failover::run_virtual(async move {
            let weu = Arc::new(MemoryStore::new("weu"));
            weu.insert("db", "value");
            let neu = Arc::new(MemoryStore::new("neu"));
            let r = Replicator::builder()
                .primary("weu", Arc::new(ForbiddenReads { inner: weu, message }))
                .secondary("neu", neu.clone())
                .seed(1)
                .build()
                .unwrap();
            let plan = r.plan().await.unwrap();
            let report = r.run(&plan, &|_, _| {}).await;
            let o = &report.secondaries()[0].outcomes()[0];
            assert_eq!(o.kind(), kind, "{message}");
            assert!(!report.in_step(), "{message}");
        })
        .unwrap();
    }
}

/// A value planted under a genuine copy's tags (tags are readable by whoever may list, and
/// writable by whoever may write) looked in step for ever: the listings match. With a MAC key
/// the copy's provenance binds its value; a deep pass reads each copy, finds the planted one
/// (its MAC does not match its value) and rewrites it; disable and prune leave a copy whose
/// MAC does not match alone and say so. Without a key, a deep pass compares the values.
#[test]
fn a_value_planted_under_a_copys_tags_is_found_by_a_deep_pass() {
    for keyed in [true, false] {
        keyvault_failover::run_virtual(async move {
            let weu = Arc::new(MemoryStore::new("weu"));
            let neu = Arc::new(MemoryStore::new("neu"));
            for n in ["db", "api", "old"] {
                weu.insert(n, &format!("{n}-genuine"));
            }
            let mut b = Replicator::builder()
                .primary("weu", weu.clone())
                .secondary("neu", neu.clone())
                .prune(keyed)
                .max_prune_share(1.0)
                .seed(1);
            if keyed {
                b = b.mac_key(keyvault_failover::replicate::MacKey::new(vec![9u8; 32]).unwrap());
            }
            let r = b.build().unwrap();
            run(&r).await;
            let tag = neu.properties("db").unwrap().provenance().unwrap();
            assert_eq!(tag.mac().is_some(), keyed, "{tag:?}");
            // Planted: new values under the genuine copies' tags.
            for n in ["db", "api", "old"] {
                let props = neu.properties(n).unwrap();
                neu.insert_with(n, "planted", props);
            }
            weu.set_enabled("api", false);
            let old = SecretName::new("old").unwrap();
            weu.delete(&old).await.unwrap();
            let plan = r.plan().await.unwrap();
            let report = r.run(&plan, &|_, _| {}).await;
            let outcome = |name: &str| {
                report.secondaries()[0]
                    .outcomes()
                    .iter()
                    .find(|o| o.name() == name)
                    .map(|o| o.kind())
            };
            assert_eq!(
                neu.current("db").unwrap().1.expose_secret(),
                "planted",
                "a listing cannot see it"
            );
            // Disabled in the primary: the planted copy is disabled too (a revocation reaches
            // every copy; the value stays). Deleted there: never pruned unless proved ours.
            assert_eq!(outcome("api"), Some(OutcomeKind::Updated));
            assert!(!neu.properties("api").unwrap().enabled());
            if keyed {
                assert_eq!(
                    outcome("old"),
                    Some(OutcomeKind::Failed),
                    "not pruned: not ours"
                );
                assert!(neu.current("old").is_some());
            }
            r.set_deep(true);
            let plan = r.plan().await.unwrap();
            r.run(&plan, &|_, _| {}).await;
            assert_eq!(
                neu.current("db").unwrap().1.expose_secret(),
                "db-genuine",
                "keyed {keyed}: the deep pass rewrote the planted value"
            );
        })
        .unwrap();
    }
}
