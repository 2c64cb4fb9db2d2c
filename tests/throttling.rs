//! A 429 is throttling, not an outage.

mod common;

use std::time::Duration;

use common::{advance, rig};
use keyvault_failover::run_virtual;
use keyvault_failover::store::Fault;
use keyvault_failover::BreakerState;

const S: Duration = Duration::from_secs(1);

#[test]
fn a_429_spills_reads_to_the_secondary_and_never_opens_the_primary_breaker() {
    run_virtual(async {
        let r = rig(2, |b| b);
        r.seed_all("db", "v");
        r.store("weu")
            .set_fault(Some(Fault::Throttle(Duration::from_secs(10))));
        let s = r.client.get_secret("db").await.unwrap();
        assert_eq!(s.region(), "neu");
        let weu_gets = r.store("weu").gets();
        assert_eq!(weu_gets, 1);
        for _ in 0..8 {
            advance(S).await;
            let s = r.client.get_secret("db").await.unwrap();
            assert_eq!(s.region(), "neu");
        }
        assert_eq!(
            r.store("weu").gets(),
            weu_gets,
            "Retry-After honoured: weu not asked again"
        );
        assert_eq!(r.breaker("weu"), BreakerState::Closed);
        let h = r.client.health();
        assert_eq!(
            h.active(),
            Some("weu"),
            "throttling does not move the route"
        );
        assert!(h.regions()[0].throttled_for().is_some());
        r.store("weu").set_fault(None);
        advance(3 * S).await;
        assert_eq!(r.client.get_secret("db").await.unwrap().region(), "weu");
    })
    .unwrap();
}

#[test]
fn when_every_region_is_throttled_a_retry_after_that_fits_the_deadline_is_waited_out() {
    run_virtual(async {
        let r = rig(2, |b| b.deadline(Duration::from_secs(3)));
        r.seed_all("db", "v");
        r.store("weu")
            .script([Some(Fault::Throttle(Duration::from_secs(1)))]);
        r.store("neu")
            .script([Some(Fault::Throttle(Duration::from_secs(2)))]);
        let t = tokio::time::Instant::now();
        let s = r.client.get_secret("db").await.unwrap();
        assert_eq!(s.region(), "weu");
        assert!(t.elapsed() >= S && t.elapsed() < 2 * S, "{:?}", t.elapsed());
        // A Retry-After beyond the deadline is not waited for.
        advance(2 * S).await;
        r.store("weu")
            .script([Some(Fault::Throttle(Duration::from_secs(3600)))]);
        r.store("neu")
            .script([Some(Fault::Throttle(Duration::from_secs(3600)))]);
        let t = tokio::time::Instant::now();
        let s = r.client.get_secret("db").await.unwrap();
        assert!(s.is_stale(), "served from last-known-good");
        assert!(t.elapsed() < S, "did not sleep an hour: {:?}", t.elapsed());
    })
    .unwrap();
}

#[test]
fn the_client_side_budget_keeps_a_vault_under_its_limit() {
    run_virtual(async {
        // 100 GETs per 10 s, of which this client takes 50 %.
        // Fail fast: with `wait_for_recovery` (the default) a cold read past the budget waits
        // up to its deadline for a slot instead, and the vaults' counts below still hold.
        let r = rig(2, |b| {
            b.vault_get_limit(100)
                .wait_for_recovery(false)
                .vault_budget_fraction(0.5)
                .refresh_interval(Duration::from_millis(1))
                .staleness_cap(Duration::from_secs(3600))
        });
        for i in 0..200 {
            r.seed_all(&format!("s{i}"), "v");
        }
        let mut failed = 0;
        for i in 0..200 {
            match r.client.get_secret(&format!("s{i}")).await {
                Ok(_) => {}
                Err(e) => {
                    assert!(e.is_unavailable() && e.is_throttled(), "{e}");
                    failed += 1;
                }
            }
        }
        assert_eq!(
            failed, 100,
            "past both budgets, with nothing cached, reads fail as throttled"
        );
        assert_eq!(r.store("weu").gets(), 50, "weu kept to its budget");
        assert_eq!(
            r.store("neu").gets(),
            50,
            "the rest spilled to neu up to its budget"
        );
        assert_eq!(r.breaker("weu"), BreakerState::Closed);
    })
    .unwrap();
}
