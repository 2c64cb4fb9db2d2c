//! Never worse than doing nothing (issue 9): recovery is seen at probe speed, a cold read rides
//! out a short total outage instead of failing at once, a secondary's 404 is not "not found",
//! and a per-call deadline is kept.

mod common;

use std::time::Duration;

use common::{advance, rig_with};
use keyvault_failover::run_virtual;
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
        r.fault_all(Some(Fault::Refuse));
        advance(20 * S).await; // the probes trip both breakers
        assert_eq!(r.breaker("weu"), BreakerState::Open);
        assert_eq!(r.breaker("neu"), BreakerState::Open);
        assert!(
            r.client.get_secret("s1").await.is_err(),
            "a total outage, nothing held"
        );
        r.fault_all(None);
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
        r.fault_all(Some(Fault::Refuse));
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
        r.fault_all(None);
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
        r.fault_all(Some(Fault::Hang));
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

/// Reads `secrets` names round-robin every 100 ms for `secs` seconds; returns the share of
/// samples on which `region` was active, the route changes, `region`'s breaker openings and
/// the failed reads.
async fn steady_reads(
    r: &common::Rig,
    secrets: usize,
    secs: u64,
    region: &str,
) -> (f64, u64, u32, u32) {
    use keyvault_failover::Event;
    let mut rx = r.client.subscribe();
    let changes0 = r.client.health().route_changes();
    let (mut on, mut samples, mut opened, mut failed) = (0u32, 0u32, 0u32, 0u32);
    for i in 0..secs * 10 {
        if r.client
            .get_secret(&format!("s{}", i as usize % secrets))
            .await
            .is_err()
        {
            failed += 1;
        }
        samples += 1;
        if r.client.active_region().as_deref() == Some(region) {
            on += 1;
        }
        advance(Duration::from_millis(100)).await;
        while let Ok(e) = rx.try_recv() {
            if let Event::Breaker {
                region: reg,
                state: BreakerState::Open,
            } = e
            {
                if &*reg == region {
                    opened += 1;
                }
            }
        }
    }
    let changes = r.client.health().route_changes() - changes0;
    let share = f64::from(on) / f64::from(samples);
    eprintln!(
        "{region} active {:.1} %, {changes} route changes, breaker opened {opened} times, {failed} failed reads",
        share * 100.0
    );
    (share, changes, opened, failed)
}

/// The primary answers 503 to secret GETs while its listing answers (a partial outage).
/// Before: the listing probe kept calling it healthy; over 5 minutes the route moved 6 times
/// and its breaker opened 45 times.
#[test]
fn a_get_only_partial_outage_neither_flaps_the_route_nor_the_breaker() {
    run_virtual(async {
        let r = rig_with(2, |b| b.refresh_interval(Duration::from_secs(2)));
        for i in 0..50 {
            r.seed_all(&format!("s{i}"), "v");
        }
        r.client.get_secret("s0").await.unwrap();
        r.store("weu").set_get_fault(Some(Fault::ServerError(503)));
        let (on_weu, changes, opened, failed) = steady_reads(&r, 50, 300, "weu").await;
        assert_eq!(failed, 0, "every read served");
        assert!(changes <= 2, "{changes} route changes");
        assert!(opened <= 3, "weu's breaker opened {opened} times");
        assert!(
            on_weu < 0.05,
            "weu active {:.0} % of the time",
            on_weu * 100.0
        );
    })
    .unwrap();
}

/// The primary fails a third of its GETs (grey failure). Before: it was made active again for
/// 106 s of 300 s. Callers' failure rate ejects it, and it is not trusted for failback while
/// callers' calls to it fail.
#[test]
fn a_grey_failure_is_not_trusted_for_failback() {
    run_virtual(async {
        let r = rig_with(2, |b| b.refresh_interval(Duration::from_secs(2)));
        for i in 0..50 {
            r.seed_all(&format!("s{i}"), "v");
        }
        r.client.get_secret("s0").await.unwrap();
        r.store("weu")
            .fail_every_nth_get(Some((3, Fault::ServerError(503))));
        let (on_weu, changes, _, failed) = steady_reads(&r, 50, 300, "weu").await;
        assert_eq!(failed, 0, "every read served");
        assert!(
            on_weu < 0.25,
            "weu active {:.0} % of the time",
            on_weu * 100.0
        );
        assert!(changes <= 5, "{changes} route changes in 5 minutes");
    })
    .unwrap();
}

/// A cold read that waits out a long deadline goes through many rounds; its error stays
/// bounded (at most 32 regions' parts listed, the first and the latest).
#[test]
fn a_long_wait_gives_a_bounded_error() {
    run_virtual(async {
        let r = rig_with(2, |b| {
            b.attempt_timeout(Duration::from_millis(100))
                .deadline(Duration::from_secs(600))
                .probe_unhealthy_interval(Duration::from_millis(200))
                .probe_interval(Duration::from_millis(200))
        });
        r.seed_all("db", "v");
        r.fault_all(Some(Fault::Refuse));
        let e = r.client.get_secret("db").await.unwrap_err();
        assert!(e.is_unavailable());
        assert!(e.attempts().len() <= 32, "{}", e.attempts().len());
        assert!(e.to_string().len() < 4096, "{}", e.to_string().len());
    })
    .unwrap();
}

/// Versions never go backwards across a failover: a secret rotated in the primary and read
/// there, whose rotation has not reached the secondary yet, is not replaced by the secondary's
/// older copy (created before the version served) once the primary is down. The newer value
/// is served stale and the lag is recorded as drift.
/// Before: the refresh from the secondary served the older value as fresh.
#[test]
fn versions_never_go_backwards_after_a_failover() {
    run_virtual(async {
        let r = rig_with(2, |b| b.refresh_interval(Duration::from_secs(2)));
        let mut events = r.client.subscribe();
        r.seed_all("rotated", "v1");
        r.store("weu").insert("rotated", "v2"); // not replicated yet
        assert_eq!(r.client.get_secret("rotated").await.unwrap().expose(), "v2");
        r.store("weu").set_fault(Some(Fault::Refuse));
        advance(10 * S).await; // failed over; several refreshes went to the secondary
        assert_eq!(r.client.active_region().as_deref(), Some("neu"));
        let s = r.client.get_secret("rotated").await.unwrap();
        assert_eq!(s.expose(), "v2", "the secondary's older copy was served");
        assert!(s.is_stale(), "the newer value is held, not confirmed");
        let mut drift = false;
        while let Ok(e) = events.try_recv() {
            drift |= matches!(e, keyvault_failover::Event::Drift { .. });
        }
        assert!(drift, "the lag was recorded as drift");
        // Health says how far the secondary lags (the held version's age); the primary none.
        let lag = |region: &str| {
            r.client
                .health()
                .regions()
                .iter()
                .find(|g| g.name() == region)
                .and_then(|g| g.replication_lag())
        };
        assert!(lag("neu").is_some(), "the secondary's lag is shown");
        assert_eq!(lag("weu"), None);
        assert!(r.client.replication_lag(Some("neu")).is_some());
        assert!(
            r.client.replication_lag(None).is_some(),
            "the most any region lags"
        );
        // Once the secondary has the rotation, it is served fresh from there.
        r.store("neu").insert("rotated", "v2");
        r.client.refresh_now("rotated").await.unwrap();
        let s = r.client.get_secret("rotated").await.unwrap();
        assert_eq!(s.expose(), "v2");
        assert!(!s.is_stale());
        assert_eq!(lag("neu"), None, "in step again: no lag");
        assert_eq!(r.client.replication_lag(None), None);
    })
    .unwrap();
}
