//! What each vault outcome does to breakers, routing and last-known-good: failures (connect,
//! reset, timeout, 5xx, malformed) count on the breaker and fail over; answers (429, 401/403,
//! 404, other 4xx) do not (`StoreErrorKind::verdict`).

mod common;

use std::time::Duration;

use common::{advance, rig};
use keyvault_failover::run_virtual;
use keyvault_failover::store::Fault;
use keyvault_failover::BreakerState;

const S: Duration = Duration::from_secs(1);

#[test]
fn auth_failures_never_open_a_breaker_and_are_never_masked_by_a_stale_value() {
    for (fault, status) in [(Fault::Unauthorized, 401), (Fault::Forbidden, 403)] {
        run_virtual(async {
            let r = rig(2, |b| b);
            r.seed_all("db", "v");
            r.client.get_secret("db").await.unwrap();
            r.store("weu").set_fault(Some(fault.clone()));
            for _ in 0..10 {
                advance(2 * S).await;
                let e = r.client.get_secret("db").await.unwrap_err();
                assert!(e.is_auth(), "{e}");
                assert_eq!(e.status(), Some(status));
            }
            assert_eq!(r.breaker("weu"), BreakerState::Closed);
            assert_eq!(r.client.health().active(), Some("weu"));
            assert_eq!(
                r.store("neu").gets(),
                0,
                "an auth failure is not failed over"
            );
        })
        .unwrap();
    }
}

#[test]
fn not_found_from_the_primary_is_the_answer_and_does_not_open_its_breaker() {
    run_virtual(async {
        let r = rig(2, |b| b);
        r.seed_all("db", "v");
        r.client.get_secret("db").await.unwrap();
        r.store("weu").set_fault(Some(Fault::NotFound));
        for _ in 0..10 {
            advance(2 * S).await;
            assert!(r.client.get_secret("db").await.unwrap_err().is_not_found());
        }
        assert_eq!(r.breaker("weu"), BreakerState::Closed);
        assert_eq!(r.store("neu").gets(), 0);
    })
    .unwrap();
}

#[test]
fn not_found_from_a_secondary_while_the_primary_is_down_prefers_last_known_good() {
    run_virtual(async {
        let r = rig(2, |b| b.refresh_interval(Duration::from_secs(10)));
        r.store("weu").insert("fresh-secret", "only-in-primary");
        r.client.get_secret("fresh-secret").await.unwrap();
        r.store("weu").set_fault(Some(Fault::Refuse));
        advance(Duration::from_secs(11)).await;
        let s = r.client.get_secret("fresh-secret").await.unwrap();
        assert!(s.is_stale());
        assert_eq!(s.expose(), "only-in-primary");
        // With nothing held, the secondary's 404 while the primary cannot be asked is
        // unavailability (it may be replication lag), not "not found" (issue 9, item 4).
        let e = r.client.get_secret("unknown").await.unwrap_err();
        assert!(e.is_unavailable() && !e.is_not_found(), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("neu") && text.contains("weu") && text.contains("replicated"),
            "{text}"
        );
    })
    .unwrap();
}

#[test]
fn malformed_answers_and_resets_count_as_failures_and_fail_over() {
    for fault in [Fault::Malformed, Fault::Reset, Fault::ServerError(500)] {
        run_virtual(async {
            let r = rig(2, |b| b);
            r.seed_all("db", "v");
            r.store("weu").set_fault(Some(fault.clone()));
            for _ in 0..3 {
                let s = r.client.get_secret("db").await.unwrap();
                assert_eq!(s.region(), "neu", "{fault:?}");
                advance(2 * S).await;
            }
            assert_eq!(r.breaker("weu"), BreakerState::Open, "{fault:?}");
        })
        .unwrap();
    }
}

#[test]
fn retries_are_bounded_by_attempts_and_budget() {
    run_virtual(async {
        // Fail fast (no waiting for recovery): this counts what 200 calls in 2 s send.
        let r = rig(2, |b| {
            b.max_attempts(4)
                .failure_threshold(1000)
                .wait_for_recovery(false)
        });
        r.seed_all("db", "v");
        r.fault_all(Some(Fault::ServerError(503)));
        let e = r.client.get_secret("db").await.unwrap_err();
        assert!(e.is_unavailable());
        let sent: u64 = r.stores.iter().map(|s| s.gets()).sum();
        assert_eq!(sent, 4, "max_attempts across regions");
        // Sustained: 200 calls may send one attempt per region per call (failover to an
        // untried region is not a retry: it adds no load to the failing vault), plus retries
        // within the budget: 20 % of first attempts plus the floor of 10/s.
        let before: Vec<u64> = r.stores.iter().map(|s| s.gets()).collect();
        for _ in 0..200 {
            let _ = r.client.get_secret("db").await;
            advance(Duration::from_millis(10)).await;
        }
        let per_vault: Vec<u64> = r
            .stores
            .iter()
            .zip(&before)
            .map(|(s, b)| s.gets() - b)
            .collect();
        let retries = per_vault.iter().sum::<u64>() - 2 * 200;
        assert!(retries <= 40 + 100, "retry budget breached: {per_vault:?}");
        for sent in &per_vault {
            assert!(
                *sent <= 200 + 40 + 100,
                "one vault got {sent} requests: {per_vault:?}"
            );
        }
    })
    .unwrap();
}
