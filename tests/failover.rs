//! Failover, read-only writes, failback and the half-open probe, in virtual time.

mod common;

use std::time::Duration;

use common::{advance, rig};
use keyvault_failover::run_virtual;
use keyvault_failover::store::Fault;
use keyvault_failover::{BreakerState, Mode};

const S: Duration = Duration::from_secs(1);

#[test]
fn primary_refusing_moves_reads_to_the_secondary_with_no_failed_read() {
    run_virtual(async {
        let r = rig(2, |b| b);
        r.seed_all("db", "same-value");
        for _ in 0..5 {
            let s = r.client.get_secret("db").await.unwrap();
            assert_eq!(s.region(), "weu");
            advance(2 * S).await; // past the refresh interval: every read asks a vault
        }
        r.store("weu").set_fault(Some(Fault::Refuse));
        for i in 0..30 {
            let s = r
                .client
                .get_secret("db")
                .await
                .unwrap_or_else(|e| panic!("read {i} failed during failover: {e}"));
            assert_eq!(s.expose(), "same-value");
            assert!(
                !s.is_stale(),
                "the secondary answered, so the value is fresh"
            );
            if i >= 3 {
                assert_eq!(s.region(), "neu", "read {i}");
            }
            advance(2 * S / 10).await;
            advance(S).await;
        }
        assert_eq!(r.breaker("weu"), BreakerState::Open);
        let h = r.client.health();
        assert_eq!((h.active(), h.mode()), (Some("neu"), Mode::ReadOnly));
    })
    .unwrap();
}

#[test]
fn a_blackholed_primary_costs_one_attempt_timeout_per_read_until_its_breaker_opens() {
    run_virtual(async {
        let r = rig(2, |b| b);
        r.seed_all("db", "v");
        r.client.get_secret("db").await.unwrap();
        r.store("weu").set_fault(Some(Fault::Hang));
        let mut slow = 0;
        for _ in 0..10 {
            advance(2 * S).await;
            let t = tokio::time::Instant::now();
            let s = r.client.get_secret("db").await.unwrap();
            assert_eq!(s.region(), "neu");
            if t.elapsed() >= Duration::from_millis(500) {
                slow += 1;
            }
        }
        assert_eq!(
            slow, 3,
            "exactly failure_threshold reads waited for the timeout"
        );
        // Open, or half-open with a background trial in flight: never closed, never routed to.
        assert_ne!(r.breaker("weu"), BreakerState::Closed);
        assert_eq!(r.client.health().active(), Some("neu"));
    })
    .unwrap();
}

#[test]
fn writes_on_a_secondary_are_refused_at_once_and_reach_no_store() {
    run_virtual(async {
        let r = rig(3, |b| b);
        r.seed_all("db", "v1");
        let w = r
            .client
            .set_secret("db", "v2".to_string().into())
            .await
            .unwrap();
        assert_eq!(w.region(), "weu");
        assert_eq!(r.total_writes(), 1);
        assert_eq!(r.store("weu").writes(), 1);

        r.store("weu").set_fault(Some(Fault::ServerError(503)));
        for _ in 0..4 {
            advance(2 * S).await;
            r.client.get_secret("db").await.unwrap();
        }
        assert_eq!(r.client.health().mode(), Mode::ReadOnly);
        let before = r.total_writes();
        let t = tokio::time::Instant::now();
        let e = r
            .client
            .set_secret("db", "v3".to_string().into())
            .await
            .unwrap_err();
        assert!(e.is_read_only(), "{e}");
        assert!(e.to_string().contains("Nothing was sent"), "{e}");
        let e = r.client.delete_secret("db").await.unwrap_err();
        assert!(e.is_read_only(), "{e}");
        assert_eq!(t.elapsed(), Duration::ZERO, "refused at once, no waiting");
        assert_eq!(r.total_writes(), before, "no write reached any store");
        assert_eq!(r.store("neu").writes() + r.store("swc").writes(), 0);
    })
    .unwrap();
}

#[test]
fn the_primary_is_picked_up_again_after_it_recovers() {
    run_virtual(async {
        let r = rig(2, |b| b);
        r.seed_all("db", "v");
        r.store("weu").set_fault(Some(Fault::Refuse));
        for _ in 0..4 {
            r.client.get_secret("db").await.unwrap();
            advance(2 * S).await;
        }
        assert_eq!(r.client.health().active(), Some("neu"));
        r.store("weu").set_fault(None);
        let mut back = None;
        for i in 0..30 {
            advance(S).await;
            r.client.get_secret("db").await.unwrap();
            tokio::task::yield_now().await;
            if r.client.health().active() == Some("weu") {
                back = Some(i);
                break;
            }
        }
        assert!(back.is_some(), "route never returned to the primary");
        assert_eq!(r.client.health().mode(), Mode::ReadWrite);
        r.client
            .set_secret("db", "after".to_string().into())
            .await
            .expect("writes allowed again");
    })
    .unwrap();
}

#[test]
fn half_open_lets_exactly_one_probe_reach_the_primary() {
    run_virtual(async {
        let r = rig(2, |b| b);
        r.seed_all("db", "v");
        r.store("weu").set_fault(Some(Fault::Hang));
        for _ in 0..4 {
            r.client.get_secret("db").await.unwrap();
            advance(2 * S).await;
        }
        assert_eq!(r.breaker("weu"), BreakerState::Open);
        advance(6 * S).await; // past the open interval
        let calls = |r: &common::Rig| r.store("weu").gets() + r.store("weu").lists();
        let before = calls(&r);
        let reads: Vec<_> = (0..20)
            .map(|_| {
                let c = r.client.clone();
                tokio::spawn(async move { c.get_secret("db").await })
            })
            .collect();
        for t in reads {
            assert_eq!(t.await.unwrap().unwrap().region(), "neu");
        }
        // The trial probe goes outside the breaker's gate (probes are how recovery is seen;
        // a failed one does not re-open the breaker), so the breaker stays open meanwhile.
        assert_ne!(r.breaker("weu"), BreakerState::Closed);
        assert_eq!(calls(&r) - before, 1, "one probe, not twenty");
        // The probe hangs until its timeout (probe.timeout, 2 s) and fails: still not closed.
        advance(3 * S).await;
        assert_ne!(r.breaker("weu"), BreakerState::Closed);
    })
    .unwrap();
}

#[test]
fn all_regions_down_serves_stale_with_its_age_then_errors_past_the_cap() {
    run_virtual(async {
        let cap = Duration::from_secs(600);
        let r = rig(3, |b| {
            b.refresh_interval(Duration::from_secs(60))
                .staleness_cap(cap)
        });
        r.seed_all("db", "lkg");
        r.client.get_secret("db").await.unwrap();
        r.fault_all(Some(Fault::Refuse));
        advance(Duration::from_secs(120)).await;
        let s = r.client.get_secret("db").await.unwrap();
        assert_eq!(s.expose(), "lkg");
        match s.freshness() {
            keyvault_failover::Freshness::Stale { age } => {
                assert!(
                    age >= Duration::from_secs(120) && age < Duration::from_secs(125),
                    "{age:?}"
                )
            }
            f => panic!("expected stale, got {f:?}"),
        }
        advance(cap).await;
        let e = r.client.get_secret("db").await.unwrap_err();
        assert!(e.is_unavailable(), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("staleness cap"), "{msg}");
        let regions: Vec<_> = e
            .attempts()
            .iter()
            .map(|a| a.region().to_string())
            .collect();
        for r in ["weu", "neu", "swc"] {
            assert!(regions.iter().any(|x| x == r), "{r} missing from {msg}");
        }
        // A secret never read has no last-known-good: a clear error at once.
        let e = r.client.get_secret("never-read").await.unwrap_err();
        assert!(e.is_unavailable() && !e.attempts().is_empty(), "{e}");
    })
    .unwrap();
}

#[test]
fn per_secret_staleness_cap_overrides_the_client_cap() {
    run_virtual(async {
        let r = rig(2, |b| {
            b.refresh_interval(Duration::from_secs(60))
                .staleness_cap(Duration::from_secs(3600))
                .staleness_cap_for("short", Duration::from_secs(120))
        });
        r.seed_all("short", "a");
        r.seed_all("long", "b");
        r.client.get_secret("short").await.unwrap();
        r.client.get_secret("long").await.unwrap();
        r.fault_all(Some(Fault::Refuse));
        advance(Duration::from_secs(300)).await;
        assert!(r
            .client
            .get_secret("short")
            .await
            .unwrap_err()
            .is_unavailable());
        assert!(r.client.get_secret("long").await.unwrap().is_stale());
    })
    .unwrap();
}

#[test]
fn a_rotated_secret_is_seen_after_the_refresh_interval() {
    run_virtual(async {
        let r = rig(1, |b| b.refresh_interval(Duration::from_secs(30)));
        r.store("weu").insert("db", "old");
        assert_eq!(r.client.get_secret("db").await.unwrap().expose(), "old");
        r.store("weu").insert("db", "new");
        advance(Duration::from_secs(10)).await;
        assert_eq!(
            r.client.get_secret("db").await.unwrap().expose(),
            "old",
            "cached"
        );
        advance(Duration::from_secs(21)).await;
        let s = r.client.get_secret("db").await.unwrap();
        assert_eq!(s.expose(), "new");
        assert_eq!(
            Some(s.version().to_string()),
            r.store("weu").current("db").map(|c| c.0)
        );
    })
    .unwrap();
}

#[test]
fn versioned_reads_and_set_delete_round_trip() {
    run_virtual(async {
        let r = rig(2, |b| b);
        let v1 = r
            .client
            .set_secret("db", "one".to_string().into())
            .await
            .unwrap();
        let v2 = r
            .client
            .set_secret("db", "two".to_string().into())
            .await
            .unwrap();
        assert_ne!(v1.version(), v2.version());
        assert_eq!(r.client.get_secret("db").await.unwrap().expose(), "two");
        let old = r
            .client
            .get_secret_version("db", v1.version())
            .await
            .unwrap();
        assert_eq!((old.expose(), old.version()), ("one", v1.version()));
        let names: Vec<_> = r
            .client
            .list_secret_properties()
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.name().to_string())
            .collect();
        assert_eq!(names, ["db"]);
        r.client.delete_secret("db").await.unwrap();
        advance(2 * S).await;
        assert!(r.client.get_secret("db").await.unwrap_err().is_not_found());
        assert!(r
            .client
            .get_secret_version("db", "bad/version")
            .await
            .unwrap_err()
            .is_invalid_name());
    })
    .unwrap();
}

#[test]
fn bad_input_is_refused_before_any_call() {
    run_virtual(async {
        let r = rig(2, |b| b);
        for bad in ["", "a b", "x/../y", &"a".repeat(128), "ümlaut"] {
            assert!(
                r.client
                    .get_secret(bad)
                    .await
                    .unwrap_err()
                    .is_invalid_name(),
                "{bad:?}"
            );
            assert!(r
                .client
                .set_secret(bad, "v".to_string().into())
                .await
                .unwrap_err()
                .is_invalid_name());
        }
        let huge = "x".repeat(25 * 1024 + 1);
        assert!(r
            .client
            .set_secret("ok", huge.into())
            .await
            .unwrap_err()
            .is_invalid_value());
        assert_eq!(
            r.stores.iter().map(|s| s.gets() + s.writes()).sum::<u64>(),
            0
        );
    })
    .unwrap();
}

/// Issue 20: a secondary's 404 while the primary is down was asked again up to
/// `retry.max_attempts` times, and the error named the region once per attempt ("neu, neu,
/// neu, neu answered not found"). A vault's "not found" does not change within one read: it is
/// asked once, and named once.
#[test]
fn a_secondarys_not_found_is_asked_once_and_named_once() {
    run_virtual(async {
        let r = rig(2, |b| b);
        r.store("weu").insert("db", "only-in-the-primary");
        r.store("weu").set_fault(Some(Fault::Refuse));
        let before = r.store("neu").gets();
        let e = r.client.get_secret("db").await.unwrap_err();
        assert!(e.is_unavailable(), "{e}");
        let text = e.to_string();
        assert!(text.contains("neu answered not found"), "{text}");
        assert!(!text.contains("neu, neu"), "{text}");
        assert_eq!(r.store("neu").gets() - before, 1, "{text}");
    })
    .unwrap();
}
