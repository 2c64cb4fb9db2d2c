//! Never worse than doing nothing (issue 9): recovery is seen at probe speed, a cold read rides
//! out a short total outage instead of failing at once, a secondary's 404 is not "not found",
//! and a per-call deadline is kept.

mod common;

use std::time::Duration;

use common::{advance, rig_with};
use keyvault_failover::sim::run_virtual;
use keyvault_failover::store::Fault;
use keyvault_failover::{BreakerState, ReadOptions};

const S: Duration = Duration::from_secs(1);

/// Both vaults down long enough for their breakers to back off to a minute; once they answer
/// again, a cold read succeeds within one unhealthy-probe interval, without waiting.
/// Before: probes were gated behind the breaker's backoff, so reads failed for up to a minute
/// after the outage.
#[test]
fn recovery_is_seen_at_probe_speed() {
    run_virtual(async {
        let r = rig_with(2, |b| {
            b.breaker_open_base(Duration::from_secs(30))
                .breaker_open_max(Duration::from_secs(60))
                .probe_unhealthy_interval(Duration::from_secs(2))
                .wait_for_recovery(false)
        });
        for i in 0..10 {
            r.seed_all(&format!("s{i}"), "v");
        }
        r.client.get_secret("s0").await.unwrap();
        for s in &r.stores {
            s.set_fault(Some(Fault::Refuse));
        }
        advance(20 * S).await; // the probes trip both breakers
        assert_eq!(r.breaker("weu"), BreakerState::Open);
        assert_eq!(r.breaker("neu"), BreakerState::Open);
        assert!(
            r.client.get_secret("s1").await.is_err(),
            "a total outage, nothing held"
        );
        for s in &r.stores {
            s.set_fault(None);
        }
        // One unhealthy interval (2 s, +20 % jitter) and a round trip.
        advance(Duration::from_millis(2500)).await;
        let s = r.client.get_secret("s2").await.expect("a vault is back");
        assert!(!s.is_stale());
        assert_eq!(r.breaker("weu"), BreakerState::Closed);
    })
    .unwrap();
}

/// A cold read during a total outage waits, single-flighted, for the first vault to come back,
/// up to its deadline; the plain SDK's retries would have ridden the outage out too.
/// Before: it failed at once.
#[test]
fn a_cold_read_rides_out_a_short_outage() {
    run_virtual(async {
        let r = rig_with(2, |b| {
            b.deadline(Duration::from_secs(6))
                .probe_unhealthy_interval(Duration::from_secs(1))
        });
        r.seed_all("warm", "v");
        r.seed_all("cold", "c");
        r.client.get_secret("warm").await.unwrap();
        for s in &r.stores {
            s.set_fault(Some(Fault::Refuse));
        }
        advance(10 * S).await;
        assert_ne!(r.breaker("weu"), BreakerState::Closed);
        assert_ne!(r.breaker("neu"), BreakerState::Closed);
        let c = r.client.clone();
        let t0 = tokio::time::Instant::now();
        let reads: Vec<_> = (0..5)
            .map(|_| {
                let c = c.clone();
                tokio::spawn(async move { c.get_secret("cold").await })
            })
            .collect();
        advance(2 * S).await;
        let gets = r.store("weu").gets() + r.store("neu").gets();
        for s in &r.stores {
            s.set_fault(None);
        }
        for t in reads {
            let s = t.await.unwrap().expect("the read waited for the vault");
            assert_eq!(s.expose(), "c");
        }
        assert!(t0.elapsed() < Duration::from_secs(6), "{:?}", t0.elapsed());
        assert!(
            r.store("weu").gets() + r.store("neu").gets() <= gets + 4,
            "the waiting reads shared one flight"
        );
        // A definitive answer does not wait.
        r.store("weu").set_fault(Some(Fault::Unauthorized));
        let t0 = tokio::time::Instant::now();
        let e = r.client.get_secret("other").await.unwrap_err();
        assert!(e.is_auth() && t0.elapsed() < S, "{e}");
    })
    .unwrap();
}

/// A per-call deadline shorter than the configured one is kept; a held value is served stale.
#[test]
fn a_per_call_deadline_is_kept() {
    run_virtual(async {
        let r = rig_with(2, |b| b.refresh_interval(Duration::from_secs(1)));
        r.seed_all("db", "v");
        r.client.get_secret("db").await.unwrap();
        for s in &r.stores {
            s.set_fault(Some(Fault::Hang));
        }
        advance(2 * S).await;
        let opts = ReadOptions::new().deadline(Duration::from_millis(200));
        let t0 = tokio::time::Instant::now();
        let s = r.client.get_secret_with("db", &opts).await.unwrap();
        assert!(s.is_stale());
        assert!(
            t0.elapsed() <= Duration::from_millis(250),
            "{:?}",
            t0.elapsed()
        );
        let e = r
            .client
            .get_secret_with("nothing", &opts)
            .await
            .unwrap_err();
        assert!(e.is_timeout() && e.is_unavailable(), "{e}");
    })
    .unwrap();
}
