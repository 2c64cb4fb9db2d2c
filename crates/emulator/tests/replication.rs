//! The replicator through the real `SecretClient` against emulated vaults on 127.0.0.1: each
//! hard case of a copy between separate regional vaults. Real time: every wait is bounded.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use keyvault_failover::azure::AzureStore;
use keyvault_failover::replicate::{
    CopyReason, Filter, OutcomeKind, ReplicaStore, Replicator, ReplicatorBuilder, SkipReason, Step,
    UpdateReason, PROVENANCE_TAG,
};
use keyvault_failover::SecretName;
use keyvault_failover_emulator::{Emulator, SecretSpec, StaticCredential, VaultFault};
use secrecy::ExposeSecret;

const ATTEMPT: Duration = Duration::from_secs(2);

fn store(emu: &Emulator, region: &str) -> Arc<AzureStore> {
    Arc::new(
        AzureStore::new(
            &emu.url(region),
            Arc::new(StaticCredential),
            emu.http_client(ATTEMPT).unwrap(),
        )
        .unwrap(),
    )
}

fn builder(emu: &Emulator) -> ReplicatorBuilder {
    Replicator::builder()
        .primary("weu", store(emu, "weu"))
        .secondary("neu", store(emu, "neu"))
        .attempt_timeout(ATTEMPT)
        .seed(7)
}

async fn emulator() -> Emulator {
    Emulator::builder()
        .vault("weu")
        .vault("neu")
        .start()
        .await
        .expect("emulator starts")
}

/// A reading client over both vaults, through the real SDK (weu read-write, neu read-only).
fn reader(emu: &Emulator) -> keyvault_failover::FailoverClient {
    use keyvault_failover::{azure, Access, Config};
    let config = Config::builder()
        .region("weu", &emu.url("weu"), Access::ReadWrite)
        .region("neu", &emu.url("neu"), Access::ReadOnly)
        .attempt_timeout(Duration::from_millis(800))
        .deadline(Duration::from_secs(3))
        .build()
        .unwrap();
    azure::connect(
        config,
        Arc::new(StaticCredential),
        Some(emu.http_client(Duration::from_millis(800)).unwrap()),
    )
    .unwrap()
}

/// Plans and runs once; returns each name's (step, outcome) in the secondary.
async fn run(r: &Replicator) -> (Vec<(String, Step, OutcomeKind)>, bool, u64) {
    let plan = r.plan().await.expect("the primary lists");
    let report = tokio::time::timeout(Duration::from_secs(60), r.run(&plan, &|_, _| {}))
        .await
        .expect("the run ends");
    let s = &report.secondaries()[0];
    let outcomes = s
        .outcomes()
        .iter()
        .map(|o| (o.name().to_string(), o.step().clone(), o.kind()))
        .collect();
    (outcomes, report.in_step(), report.calls().writes())
}

fn step_of<'a>(outcomes: &'a [(String, Step, OutcomeKind)], name: &str) -> &'a Step {
    &outcomes.iter().find(|o| o.0 == name).expect(name).1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_values_and_properties_with_provenance_then_writes_nothing() {
    let emu = emulator().await;
    let now = 1_800_000_000;
    let mut tags = BTreeMap::new();
    tags.insert("team".to_string(), "payments".to_string());
    emu.insert("weu", "plain", "p1");
    emu.insert_with(
        "weu",
        "rich",
        "-----BEGIN KEY-----\nabc\n-----END KEY-----\n",
        SecretSpec {
            content_type: Some("application/x-pem-file".into()),
            tags: tags.clone(),
            expires: Some(now),
            ..Default::default()
        },
    );
    // Expired, and not yet valid: copied as they are (Key Vault serves both; exp/nbf inform).
    emu.insert_with(
        "weu",
        "expired",
        "old",
        SecretSpec {
            expires: Some(1_000),
            ..Default::default()
        },
    );
    emu.insert_with(
        "weu",
        "future",
        "soon",
        SecretSpec {
            not_before: Some(now),
            ..Default::default()
        },
    );
    let r = builder(&emu).build().unwrap();
    let (outcomes, in_step, _) = run(&r).await;
    assert!(in_step, "{outcomes:?}");
    assert!(outcomes
        .iter()
        .all(|o| o.1 == Step::Copy(CopyReason::Missing) && o.2 == OutcomeKind::Copied));

    let neu = store(&emu, "neu");
    let weu = store(&emu, "weu");
    for name in ["plain", "rich", "expired", "future"] {
        let n = SecretName::new(name).unwrap();
        let (p, s) = (weu.read(&n).await.unwrap(), neu.read(&n).await.unwrap());
        assert_eq!(p.value().expose_secret(), s.value().expose_secret());
        let prov = s
            .properties()
            .provenance()
            .expect("a copy carries provenance");
        assert_eq!((prov.region(), prov.version()), ("weu", p.version()));
        assert_eq!(Some(prov.created()), p.created());
        assert_ne!(
            s.version(),
            p.version(),
            "each vault has its own version ids"
        );
        let (pp, sp) = (p.properties(), s.properties());
        assert_eq!(
            (
                pp.enabled(),
                pp.expires(),
                pp.not_before(),
                pp.content_type()
            ),
            (
                sp.enabled(),
                sp.expires(),
                sp.not_before(),
                sp.content_type()
            )
        );
        assert!(sp.user_tags().eq(pp.user_tags()));
    }
    let rich = neu.read(&SecretName::new("rich").unwrap()).await.unwrap();
    assert_eq!(rich.properties().tags().get("team"), tags.get("team"));
    assert!(!rich.properties().tags()[PROVENANCE_TAG].contains("BEGIN"));

    // The next run: no write anywhere, the primary never written.
    let before = (emu.writes("weu"), emu.writes("neu"));
    let (again, in_step, writes) = run(&r).await;
    assert!(in_step);
    assert_eq!(writes, 0, "{again:?}");
    assert_eq!((emu.writes("weu"), emu.writes("neu")), before);
    assert_eq!(emu.writes("weu"), 0, "the primary is never written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_disable_and_property_changes_reach_the_copy() {
    let emu = emulator().await;
    emu.insert("weu", "rotated", "v1");
    emu.insert("weu", "disabled", "d1");
    emu.insert("weu", "never-copied", "n1");
    emu.set_enabled("weu", "never-copied", false);
    let r = builder(&emu).build().unwrap();
    run(&r).await;

    // A rotation between the plan and its run: the copy is the newest, never older than the
    // version the run started from.
    emu.insert("weu", "rotated", "v2");
    let plan = r.plan().await.unwrap();
    emu.insert("weu", "rotated", "v3");
    emu.set_enabled("weu", "disabled", false);
    let report = r.run(&plan, &|_, _| {}).await;
    assert!(report.secondaries()[0].listing_error().is_none());
    assert_eq!(emu.current("neu", "rotated").unwrap().0, "v3");

    let (outcomes, in_step, _) = run(&r).await;
    assert!(in_step, "{outcomes:?}");
    assert_eq!(
        step_of(&outcomes, "disabled"),
        &Step::Update(UpdateReason::Disable)
    );
    assert_eq!(
        step_of(&outcomes, "never-copied"),
        &Step::Skip(SkipReason::DisabledAbsent)
    );
    // The disabled state is copied, not a value: the copy keeps d1, and refuses reads.
    let neu = store(&emu, "neu");
    let e = neu
        .read(&SecretName::new("disabled").unwrap())
        .await
        .unwrap_err();
    assert_eq!(e.kind().status(), Some(403), "{e}");
    assert_eq!(emu.current("neu", "disabled").unwrap().0, "d1");
    assert!(emu.current("neu", "never-copied").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletions_are_reported_pruned_only_when_asked_and_never_purged() {
    let emu = emulator().await;
    emu.insert("weu", "gone", "g");
    emu.insert("weu", "kept", "k");
    emu.insert("neu", "local-only", "l");
    let key = || keyvault_failover::replicate::MacKey::new(vec![5u8; 32]).unwrap();
    // Pruning needs the MAC key; a pass without it cannot prune at all.
    assert!(builder(&emu).prune(true).build().unwrap_err().is_config());
    let r = builder(&emu).mac_key(key()).build().unwrap();
    run(&r).await;
    assert!(emu.soft_delete("weu", "gone"));

    let (outcomes, in_step, writes) = run(&r).await;
    assert!(in_step, "a report, not a failure");
    assert_eq!(writes, 0);
    assert_eq!(
        step_of(&outcomes, "gone"),
        &Step::Skip(SkipReason::DeletedInPrimary)
    );
    assert_eq!(
        step_of(&outcomes, "local-only"),
        &Step::Skip(SkipReason::NotOurs)
    );

    let pruning = builder(&emu).prune(true).mac_key(key()).build().unwrap();
    let (outcomes, _, _) = run(&pruning).await;
    assert_eq!(step_of(&outcomes, "gone"), &Step::Prune);
    assert!(
        emu.is_soft_deleted("neu", "gone"),
        "soft-deleted, recoverable"
    );
    assert!(emu.current("neu", "local-only").is_some(), "not ours: kept");

    // The prune guard: a primary that lists nothing (its last secret deleted, or a wrong
    // vault, or lost permissions) does not take every copy with it.
    assert!(emu.soft_delete("weu", "kept"));
    let (outcomes, in_step, writes) = run(&pruning).await;
    assert_eq!(
        step_of(&outcomes, "kept"),
        &Step::Skip(SkipReason::PruneHeld {
            would: 1,
            copies: 1
        })
    );
    assert!(!in_step, "a held prune is reported as a failure");
    assert_eq!(writes, 0);
    assert!(emu.current("neu", "kept").is_some(), "nothing pruned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_deleted_name_in_the_secondary_is_recovered_then_written() {
    let emu = emulator().await;
    emu.insert("neu", "db", "stale");
    assert!(emu.soft_delete("neu", "db"));
    emu.insert("weu", "db", "fresh");
    let r = builder(&emu).build().unwrap();
    let plan = r.plan().await.unwrap();
    let report = r.run(&plan, &|_, _| {}).await;
    let o = &report.secondaries()[0].outcomes()[0];
    assert_eq!(o.kind(), OutcomeKind::Copied, "{o:?}");
    assert!(o.recovered());
    assert!(!emu.is_soft_deleted("neu", "db"));
    assert_eq!(emu.current("neu", "db").unwrap().0, "fresh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_secrets_are_never_written_and_patterns_exclude_names() {
    let emu = emulator().await;
    emu.insert_managed("weu", "tls-cert", "pfx");
    emu.insert("weu", "app-db", "a");
    emu.insert("weu", "other", "o");
    emu.insert("weu", "blocked", "b");
    emu.insert_managed("neu", "blocked", "cert");
    let r = builder(&emu)
        .filter(Filter::only(&["app-*", "tls-*", "blocked"]).unwrap())
        .build()
        .unwrap();
    let (outcomes, in_step, _) = run(&r).await;
    assert_eq!(
        step_of(&outcomes, "tls-cert"),
        &Step::Skip(SkipReason::Managed)
    );
    assert_eq!(
        step_of(&outcomes, "blocked"),
        &Step::Skip(SkipReason::ManagedInSecondary)
    );
    assert!(!in_step, "a managed secret in the way is a failure");
    assert!(outcomes.iter().all(|o| o.0 != "other"), "excluded");
    assert!(emu.current("neu", "tls-cert").is_none());
    assert!(emu.current("neu", "other").is_none());
    assert_eq!(emu.current("neu", "app-db").unwrap().0, "a");
    assert_eq!(emu.current("neu", "blocked").unwrap().0, "cert");
}

/// A secondary that throttles (its own write limit, well below the replicator's budget) and
/// fails a share of its calls: every copy lands, `Retry-After` obeyed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttling_and_failing_secondary_ends_in_step() {
    let emu = Emulator::builder()
        .vault("weu")
        .vault("neu")
        .throttle(4000, Duration::from_secs(1))
        .write_limit(5)
        .seed(3)
        .start()
        .await
        .unwrap();
    for i in 0..20 {
        emu.insert("weu", &format!("s{i}"), &format!("v{i}"));
    }
    emu.set_fault("neu", VaultFault::ServerErrors { rate: 0.1 });
    let r = builder(&emu).build().unwrap();
    let plan = r.plan().await.unwrap();
    let report = tokio::time::timeout(Duration::from_secs(60), r.run(&plan, &|_, _| {}))
        .await
        .expect("bounded");
    assert!(report.in_step(), "{:?}", report.secondaries()[0].outcomes());
    assert!(report.calls().throttled() > 0);
    assert!(emu.throttled("neu") > 0);
    for i in 0..20 {
        assert_eq!(
            emu.current("neu", &format!("s{i}")).unwrap().0,
            format!("v{i}")
        );
    }
}

/// Reading across regions: a copy is as old as its source (its provenance), not as its own
/// `created`. The primary rotated after the copy was made; once the primary is down, the
/// secondary's copy (written later than the rotation, of an older source) is not served as
/// fresh: the newer value is kept, stale, with its cause.
/// Before: the copy's own `created` (later than the rotation) made it look newer; it was served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_is_ordered_by_its_sources_time_after_a_failover() {
    let emu = emulator().await;
    emu.insert("weu", "db", "v2");
    let old_source = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 600;
    emu.insert_copy("neu", "db", "v1", "weu", old_source as i64);
    let client = reader(&emu);
    assert_eq!(client.get_secret("db").await.unwrap().expose(), "v2");
    emu.apply_fault("weu", VaultFault::Refuse).await.unwrap();
    let e = client.refresh_now("db").await.unwrap_err();
    assert!(e.to_string().contains("older copy"), "{e}");
    let s = client.get_secret("db").await.unwrap();
    assert_eq!(s.expose(), "v2", "the older copy was served");
}

/// Through the real SDK: a copy claiming a source from the year 5138 (a value planted with a
/// made-up provenance) is ordered by its own `created`, so a later genuine version in that
/// vault (an operator's rotation during the primary's outage) is served, not refused as "an
/// older copy" for as long as the planted claim stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provenance_from_the_future_is_not_believed_through_the_sdk() {
    let emu = emulator().await;
    emu.insert("weu", "db", "genuine-1");
    emu.insert("neu", "db", "genuine-1");
    let client = reader(&emu);
    assert_eq!(client.get_secret("db").await.unwrap().expose(), "genuine-1");
    emu.insert_copy("neu", "db", "planted", "weu", 100_000_000_000);
    emu.apply_fault("weu", VaultFault::Refuse).await.unwrap();
    let _ = client.refresh_now("db").await;
    emu.insert("neu", "db", "emergency-rotation");
    let s = client
        .refresh_now("db")
        .await
        .expect("the secondary answers");
    assert_eq!(
        (s.expose(), s.region()),
        ("emergency-rotation", "neu"),
        "the later genuine version is served"
    );
}

/// The secondary as a replicator writes it, except that its first write answers 429 with
/// `Retry-After: 3`, and, as that write is refused, the primary makes a new version in the
/// same second as the one the replicator read.
struct LateFirstWrite<'a> {
    inner: Arc<AzureStore>,
    emu: &'a Emulator,
    created: i64,
    refused: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl ReplicaStore for LateFirstWrite<'static> {
    async fn list_items(
        &self,
    ) -> Result<Vec<keyvault_failover::replicate::Listed>, keyvault_failover::StoreError> {
        self.inner.list_items().await
    }
    async fn read(
        &self,
        name: &SecretName,
    ) -> Result<keyvault_failover::replicate::ReadVersion, keyvault_failover::StoreError> {
        ReplicaStore::read(&*self.inner, name).await
    }
    async fn write(
        &self,
        name: &SecretName,
        value: &secrecy::SecretString,
        properties: &keyvault_failover::replicate::Properties,
    ) -> Result<String, keyvault_failover::StoreError> {
        if !self.refused.swap(true, std::sync::atomic::Ordering::SeqCst) {
            let spec = SecretSpec {
                created: Some(self.created),
                ..SecretSpec::default()
            };
            self.emu.insert_with("weu", "rotated", "v2-secret", spec);
            return Err(keyvault_failover::StoreError::new(
                keyvault_failover::StoreErrorKind::Throttled {
                    retry_after: Some(Duration::from_secs(3)),
                },
                "Too many requests. Reason: VaultRequestTypeLimitReached",
            ));
        }
        self.inner.write(name, value, properties).await
    }
    async fn update(
        &self,
        name: &SecretName,
        properties: &keyvault_failover::replicate::Properties,
    ) -> Result<(), keyvault_failover::StoreError> {
        self.inner.update(name, properties).await
    }
    async fn soft_delete(&self, name: &SecretName) -> Result<(), keyvault_failover::StoreError> {
        self.inner.soft_delete(name).await
    }
    async fn recover(&self, name: &SecretName) -> Result<(), keyvault_failover::StoreError> {
        self.inner.recover(name).await
    }
}

/// A rotation in the same second as the version the replicator read is not lost. The copy's
/// write came 3 s after its read (a `Retry-After` hold); the settle rule took the copy's own
/// `created` for the moment its source was read, so the listings (both versions created in
/// the same second) said "in step" for ever, and after two more clean runs the secondary
/// still held the old value. Now the copy says when its source was read, and a read within
/// the source's second is settled by reading the primary's version id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_in_the_second_of_the_copied_read_is_not_lost() {
    let emu: &'static Emulator = Box::leak(Box::new(emulator().await));
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let spec = SecretSpec {
        created: Some(created),
        ..SecretSpec::default()
    };
    emu.insert_with("weu", "rotated", "v1-secret", spec);
    let neu = Arc::new(LateFirstWrite {
        inner: store(emu, "neu"),
        emu,
        created,
        refused: std::sync::atomic::AtomicBool::new(false),
    });
    let r = Replicator::builder()
        .primary("weu", store(emu, "weu"))
        .secondary("neu", neu)
        .attempt_timeout(ATTEMPT)
        .seed(7)
        .build()
        .unwrap();
    let (_, _, writes) = run(&r).await;
    assert_eq!(writes, 2, "one refused write, then the copy of v1");
    assert_eq!(emu.current("neu", "rotated").unwrap().0, "v1-secret");
    for _ in 0..2 {
        run(&r).await;
    }
    assert_eq!(
        emu.current("neu", "rotated").unwrap().0,
        "v2-secret",
        "the rotation made in the read's second reached the copy"
    );
    let (outcomes, in_step, writes) = run(&r).await;
    assert!(in_step, "{outcomes:?}");
    assert_eq!(
        (step_of(&outcomes, "rotated"), writes),
        (&Step::InStep, 0),
        "settled from the listings"
    );
}

/// A listing is bounded per page (the HTTP client's per-request timeout) and by the list
/// timeout as a whole, as the client's own listing is. With the attempt timeout on the whole
/// listing, a primary whose 12 pages take 250 ms each could never be planned: every pass
/// failed "timed out" after the retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_longer_than_one_attempt_is_planned() {
    let emu = emulator().await;
    for i in 0..300 {
        emu.insert("weu", &format!("s{i:03}"), "v");
    }
    emu.set_fault("weu", VaultFault::Delay { ms: 250 });
    let r = builder(&emu)
        .list_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let plan = tokio::time::timeout(Duration::from_secs(60), r.plan())
        .await
        .expect("bounded")
        .expect("the primary lists in 12 pages of 250 ms, longer than one 2 s attempt");
    assert_eq!(plan.primary_listed(), 300);
    // The whole listing is still bounded.
    let short = builder(&emu)
        .attempt_timeout(Duration::from_millis(500))
        .list_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let e = tokio::time::timeout(Duration::from_secs(60), short.plan())
        .await
        .expect("bounded")
        .expect_err("3 s of pages against a 1 s list timeout");
    assert_eq!(*e.kind(), keyvault_failover::StoreErrorKind::Timeout, "{e}");
}
