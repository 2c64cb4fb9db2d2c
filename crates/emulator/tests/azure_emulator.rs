//! The real `SecretClient` (azure_security_keyvault_secrets), through `AzureStore` and
//! `FailoverClient`, over HTTPS against emulated vaults on 127.0.0.1. Real time: every wait is
//! bounded.

use std::sync::Arc;
use std::time::Duration;

use keyvault_failover::azure::{self, AzureStore};
use keyvault_failover::{
    Access, BreakerState, Config, ConfigBuilder, Event, FailoverClient, SecretName, SecretStore,
    StoreErrorKind,
};
use keyvault_failover_emulator::{Emulator, StaticCredential, VaultFault};

const ATTEMPT: Duration = Duration::from_millis(800);

async fn emulator() -> Emulator {
    Emulator::builder()
        .vault("weu")
        .vault("neu")
        .start()
        .await
        .expect("emulator starts")
}

fn config(emu: &Emulator, tune: impl FnOnce(ConfigBuilder) -> ConfigBuilder) -> Config {
    tune(
        Config::builder()
            .seed(0x6b76_6661_696c)
            .region("weu", &emu.url("weu"), Access::ReadWrite)
            .region("neu", &emu.url("neu"), Access::ReadOnly)
            .attempt_timeout(ATTEMPT)
            .probe_timeout(ATTEMPT)
            .deadline(Duration::from_secs(4))
            .probe_interval(Duration::from_secs(1))
            .probe_unhealthy_interval(Duration::from_millis(300))
            .failback_dwell(Duration::from_secs(2))
            // A client's first request to a vault (TLS handshake, the bearer challenge and its
            // retry) can outlast the 150 ms hedge delay on a loaded machine, and the hedge to
            // the secondary then answers the read these tests expect from the primary. Hedging
            // is tested on in-process stores (tests/).
            .hedging(false),
    )
    .build()
    .expect("valid configuration")
}

fn client(emu: &Emulator, config: Config) -> FailoverClient {
    azure::connect(
        config,
        Arc::new(StaticCredential),
        Some(emu.http_client(ATTEMPT).unwrap()),
    )
    .expect("client builds")
}

fn store(emu: &Emulator, region: &str) -> AzureStore {
    AzureStore::new(
        &emu.url(region),
        Arc::new(StaticCredential),
        emu.http_client(ATTEMPT).unwrap(),
    )
    .unwrap()
}

/// Waits, bounded, for the route to move to `to`.
async fn wait_route(
    c: &FailoverClient,
    rx: &mut tokio::sync::broadcast::Receiver<Event>,
    to: &str,
) {
    if c.health().active() == Some(to) {
        return;
    }
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match rx.recv().await {
                Ok(Event::RouteChanged { to: Some(t), .. }) if &*t == to => return,
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    if c.health().active() == Some(to) {
                        return;
                    }
                }
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("route did not move to {to}: {:?}", c.health()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_get_list_delete_round_trip_with_versions() {
    let emu = emulator().await;
    let c = client(&emu, config(&emu, |b| b));
    let v1 = c
        .set_secret("db-password", "one".to_string().into())
        .await
        .unwrap();
    let v2 = c
        .set_secret("db-password", "two".to_string().into())
        .await
        .unwrap();
    assert_eq!(v1.region(), "weu");
    assert_ne!(v1.version(), v2.version());
    assert_eq!(v2.version().len(), 32, "Key Vault-shaped version ids");
    assert_eq!(
        emu.current("weu", "db-password").unwrap(),
        ("two".into(), v2.version().into())
    );
    let s = c.refresh_now("db-password").await.unwrap();
    assert_eq!(
        (s.expose(), s.version(), s.region()),
        ("two", v2.version(), "weu")
    );
    let old = c
        .get_secret_version("db-password", v1.version())
        .await
        .unwrap();
    assert_eq!(old.expose(), "one");
    // 30 secrets: two pages of 25, through nextLink and $skiptoken.
    for i in 0..29 {
        emu.insert("weu", &format!("s-{i:02}"), "x");
    }
    let listed = c.list_secret_properties().await.unwrap();
    assert_eq!(listed.len(), 30);
    assert!(listed
        .iter()
        .any(|p| p.name() == "db-password" && p.enabled()));
    c.delete_secret("db-password").await.unwrap();
    assert!(emu.current("weu", "db-password").is_none());
    let e = c.get_secret("db-password").await.unwrap_err();
    assert!(e.is_not_found(), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_primary_moves_reads_to_the_secondary_with_no_failed_read_and_refuses_writes() {
    for fault in [VaultFault::Refuse, VaultFault::Blackhole] {
        let emu = emulator().await;
        for i in 0..40 {
            emu.insert("weu", &format!("s{i}"), &format!("v{i}"));
            emu.insert("neu", &format!("s{i}"), &format!("v{i}"));
        }
        let c = client(&emu, config(&emu, |b| b));
        let mut rx = c.subscribe();
        assert_eq!(c.get_secret("s0").await.unwrap().region(), "weu");
        emu.apply_fault("weu", fault.clone()).await.unwrap();
        for i in 1..20 {
            let s = c
                .get_secret(&format!("s{i}"))
                .await
                .unwrap_or_else(|e| panic!("{fault:?}: read {i} failed: {e}"));
            assert_eq!(s.expose(), format!("v{i}"));
            assert_eq!(s.region(), "neu", "{fault:?}");
        }
        wait_route(&c, &mut rx, "neu").await;
        let writes = emu.writes("weu") + emu.writes("neu");
        let e = c
            .set_secret("s1", "new".to_string().into())
            .await
            .unwrap_err();
        assert!(e.is_read_only(), "{e}");
        assert_eq!(
            emu.writes("weu") + emu.writes("neu"),
            writes,
            "nothing was sent"
        );
        // Recovery is picked up again by the prober.
        emu.apply_fault("weu", VaultFault::Up).await.unwrap();
        wait_route(&c, &mut rx, "weu").await;
        let w = c.set_secret("s1", "new".to_string().into()).await.unwrap();
        assert_eq!(w.region(), "weu");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_is_spilled_not_tripped() {
    let emu = emulator().await;
    for i in 0..30 {
        emu.insert("weu", &format!("s{i}"), "v");
        emu.insert("neu", &format!("s{i}"), "v");
    }
    let c = client(&emu, config(&emu, |b| b));
    emu.apply_fault(
        "weu",
        VaultFault::Throttle {
            retry_after_secs: 30,
        },
    )
    .await
    .unwrap();
    for i in 0..30 {
        let s = c.get_secret(&format!("s{i}")).await.unwrap();
        assert_eq!(s.region(), "neu");
    }
    let h = c.health();
    assert_eq!(h.regions()[0].breaker(), BreakerState::Closed);
    assert_eq!(
        h.active(),
        Some("weu"),
        "throttling does not move the route"
    );
    assert!(h.regions()[0].throttled_for().unwrap() > Duration::from_secs(20));
    assert_eq!(
        emu.throttled("weu"),
        1,
        "Retry-After honoured: one 429, then kept off"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_vault_fault_is_classified_as_designed() {
    let emu = emulator().await;
    emu.insert("weu", "db", "v");
    let s = store(&emu, "weu");
    let name = SecretName::new("db").unwrap();
    type Expect = fn(&StoreErrorKind) -> bool;
    assert!(s.get(&name, None).await.is_ok());
    // A refusing vault also cuts its open keep-alive connections. A request that
    // races that cut on a pooled connection honestly sees a reset; once the pool has
    // dropped it, a fresh connection must be refused. Bounded: at most 3 tries.
    emu.apply_fault("weu", VaultFault::Refuse).await.unwrap();
    let mut kinds = Vec::new();
    for _ in 0..3 {
        let e = s.get(&name, None).await.unwrap_err();
        kinds.push(e.kind().clone());
        if *e.kind() == StoreErrorKind::Connect {
            break;
        }
    }
    assert_eq!(kinds.last(), Some(&StoreErrorKind::Connect), "{kinds:?}");
    assert!(
        kinds[..kinds.len() - 1]
            .iter()
            .all(|k| *k == StoreErrorKind::Reset),
        "only a cut pooled connection may precede the refusal: {kinds:?}"
    );
    let cases: Vec<(VaultFault, Expect)> = vec![
        (VaultFault::Blackhole, |k| *k == StoreErrorKind::Timeout),
        (VaultFault::ServerErrors { rate: 1.0 }, |k| {
            *k == StoreErrorKind::Server { status: 503 }
        }),
        (
            VaultFault::Throttle {
                retry_after_secs: 7,
            },
            |k| {
                *k == StoreErrorKind::Throttled {
                    retry_after: Some(Duration::from_secs(7)),
                }
            },
        ),
        (VaultFault::Unauthorized, |k| {
            *k == StoreErrorKind::Auth { status: 401 }
        }),
        (VaultFault::Forbidden, |k| {
            *k == StoreErrorKind::Auth { status: 403 }
        }),
        (VaultFault::Malformed, |k| *k == StoreErrorKind::Malformed),
        (VaultFault::Truncated, |k| {
            matches!(k, StoreErrorKind::Reset | StoreErrorKind::Malformed)
        }),
    ];
    emu.apply_fault("weu", VaultFault::Up).await.unwrap();
    assert!(s.get(&name, None).await.is_ok(), "the port reopens");
    for (fault, expected) in cases {
        emu.apply_fault("weu", fault.clone()).await.unwrap();
        let e = s.get(&name, None).await.unwrap_err();
        assert!(expected(e.kind()), "{fault:?} gave {:?}: {e}", e.kind());
        assert!(!e.to_string().contains("\"v\""), "no body in the message");
    }
    emu.apply_fault("weu", VaultFault::Up).await.unwrap();
    let missing = SecretName::new("missing").unwrap();
    assert_eq!(
        *s.get(&missing, None).await.unwrap_err().kind(),
        StoreErrorKind::NotFound
    );
    emu.apply_fault("weu", VaultFault::ReadOnly).await.unwrap();
    assert!(
        s.get(&name, None).await.is_ok(),
        "reads work on a read-only vault"
    );
    let e = s.set(&name, &"x".to_string().into()).await.unwrap_err();
    assert_eq!(*e.kind(), StoreErrorKind::Auth { status: 403 });
    emu.apply_fault("weu", VaultFault::Delay { ms: 5_000 })
        .await
        .unwrap();
    let e = s.get(&name, None).await.unwrap_err();
    assert_eq!(
        *e.kind(),
        StoreErrorKind::Timeout,
        "a slow vault hits the attempt timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_primary_is_an_error_never_a_panic_and_reads_fail_over() {
    let emu = emulator().await;
    emu.insert("weu", "db", "v");
    emu.insert("neu", "db", "v");
    let c = client(&emu, config(&emu, |b| b.probing(false)));
    emu.apply_fault("weu", VaultFault::Malformed).await.unwrap();
    let s = c.get_secret("db").await.unwrap();
    assert_eq!(s.region(), "neu");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emulator_throttles_above_its_limit() {
    let emu = Emulator::builder()
        .vault("weu")
        .throttle(10, Duration::from_secs(10))
        .start()
        .await
        .unwrap();
    emu.insert("weu", "db", "v");
    let s = store(&emu, "weu");
    let name = SecretName::new("db").unwrap();
    let mut throttled = 0;
    for _ in 0..15 {
        match s.get(&name, None).await {
            Ok(_) => {}
            Err(e) => {
                assert!(
                    matches!(
                        e.kind(),
                        StoreErrorKind::Throttled {
                            retry_after: Some(_)
                        }
                    ),
                    "{e}"
                );
                throttled += 1;
            }
        }
    }
    assert_eq!(throttled, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_copies_writes_with_the_replica_own_versions() {
    let emu = Emulator::builder()
        .vault("weu")
        .vault("neu")
        .replicate("weu", "neu", Duration::from_millis(100))
        .start()
        .await
        .unwrap();
    let c = client(&emu, config(&emu, |b| b));
    let w = c
        .set_secret("db", "replicated".to_string().into())
        .await
        .unwrap();
    let copied = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(v) = emu.current("neu", "db") {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("replicated within 5 s");
    assert_eq!(copied.0, "replicated");
    assert_ne!(copied.1, w.version(), "version ids differ between vaults");
}
