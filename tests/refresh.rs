//! Background refresh, explicit refresh and preload, the per-vault budget, drift and events.

mod common;

use std::time::Duration;

use common::{advance, rig_with};
use keyvault_failover::run_virtual;
use keyvault_failover::store::Fault;
use keyvault_failover::Event;
use tokio::time::Instant;

const S: Duration = Duration::from_secs(1);

#[test]
fn a_rotated_secret_is_served_within_its_refresh_interval_without_a_caller_miss() {
    run_virtual(async {
        let t = Duration::from_secs(60);
        let r = rig_with(2, |b| b.refresh_interval(t).probing(false));
        r.seed_all("db", "old");
        assert_eq!(r.client.get_secret("db").await.unwrap().expose(), "old");
        let rotated = Instant::now();
        r.seed_all("db", "new");
        let mut seen = None;
        while rotated.elapsed() <= t {
            let gets = r.store("weu").gets();
            let s = r.client.get_secret("db").await.unwrap();
            assert_eq!(r.store("weu").gets(), gets, "every read was a cache hit");
            assert!(!s.is_stale());
            if s.expose() == "new" {
                seen = Some(rotated.elapsed());
                break;
            }
            advance(S).await;
        }
        let seen = seen.expect("the rotation was not seen within the refresh interval");
        assert!(
            seen >= t / 5,
            "a first refresh is drawn in [0.2 T, T]: {seen:?}"
        );
    })
    .unwrap();
}

#[test]
fn on_time_refreshes_keep_to_three_quarters_of_the_interval() {
    // After its first refresh (anywhere in [0.2 T, T]) a value read all along is refreshed
    // every 0.7 T to 0.8 T: a narrow gap keeps each value on its own phase, so a fleet's values
    // fetched together never come back together. The old draw, [T/2, T] after every fetch, put
    // a gap in that band one time in five.
    run_virtual(async {
        let t = Duration::from_secs(60);
        let r = rig_with(2, |b| b.refresh_interval(t).probing(false));
        r.seed_all("db", "v");
        r.client.get_secret("db").await.unwrap();
        let start = Instant::now();
        let mut at = Vec::new();
        let mut gets = r.store("weu").gets();
        while at.len() < 7 && start.elapsed() < t * 8 {
            advance(Duration::from_millis(200)).await;
            r.client.get_secret("db").await.unwrap();
            let now = r.store("weu").gets();
            if now > gets {
                at.push(start.elapsed());
                gets = now;
            }
        }
        assert_eq!(at.len(), 7, "refreshes seen at {at:?}");
        assert!(at[0] >= t / 5 && at[0] <= t + S, "first at {:?}", at[0]);
        let (lo, hi) = (t.mul_f64(0.7), t.mul_f64(0.8) + S + S);
        for w in at.windows(2) {
            let gap = w[1] - w[0];
            assert!(
                gap >= lo - S && gap <= hi,
                "gap {gap:?} outside [0.7 T, 0.8 T]: {at:?}"
            );
        }
    })
    .unwrap();
}

#[test]
fn a_failed_refresh_keeps_last_known_good_and_backs_off() {
    run_virtual(async {
        let r = rig_with(2, |b| {
            b.refresh_interval(Duration::from_secs(20))
                .probing(false)
                .hedging(false)
        });
        r.seed_all("db", "kept");
        r.client.get_secret("db").await.unwrap();
        let mut rx = r.client.subscribe();
        r.fault_all(Some(Fault::Refuse));
        advance(Duration::from_secs(120)).await;
        let s = r.client.get_secret("db").await.unwrap();
        assert_eq!(s.expose(), "kept");
        assert!(s.is_stale());
        // Refresh attempts back off (1 s, 2 s, 4 s, ... capped at T/2 = 10 s): over 120 s far
        // fewer than one per second. Each attempt can touch both vaults once.
        let calls = r.store("weu").gets() + r.store("neu").gets();
        assert!(calls <= 2 * 16, "{calls} refresh calls in 120 s");
        let mut failed = 0;
        while let Ok(e) = rx.try_recv() {
            if matches!(e, Event::RefreshFailed { .. }) {
                failed += 1;
            }
        }
        assert!(failed >= 3, "refresh failures were reported: {failed}");
    })
    .unwrap();
}

#[test]
fn refresh_never_exceeds_the_per_vault_budget() {
    run_virtual(async {
        // 200 GETs per 10 s, this client takes half: 100 per 10 s, of which refreshes may use 75.
        let r = rig_with(2, |b| {
            b.vault_get_limit(200)
                .vault_budget_fraction(0.5)
                .refresh_interval(Duration::from_secs(10))
                .staleness_cap(Duration::from_secs(3600))
                .probing(false)
                .drift_check(false)
        });
        for i in 0..300 {
            r.seed_all(&format!("s{i}"), "v");
        }
        // Load the 300 secrets at 9 per second, then let the refresher run for 3 minutes.
        let mut samples: Vec<u64> = Vec::new();
        for i in 0..300 {
            let _ = r.client.get_secret(&format!("s{i}")).await;
            if i % 9 == 8 {
                advance(S).await;
                samples.push(r.store("weu").gets());
            }
        }
        for _ in 0..180 {
            advance(S).await;
            samples.push(r.store("weu").gets());
        }
        let worst = samples.windows(11).map(|w| w[10] - w[0]).max().unwrap();
        assert!(worst <= 100, "{worst} GETs reached weu in one 10 s window");
        assert!(worst >= 60, "the budget was used, not starved: {worst}");
    })
    .unwrap();
}

#[test]
fn refresh_now_refresh_all_and_preload() {
    run_virtual(async {
        let r = rig_with(2, |b| {
            b.refresh_interval(Duration::from_secs(3600)).probing(false)
        });
        for i in 0..20 {
            r.seed_all(&format!("s{i}"), "v1");
        }
        let errors = r
            .client
            .preload(
                (0..20)
                    .map(|i| format!("s{i}"))
                    .chain(["missing".to_string(), "bad name".into()]),
            )
            .await;
        let failed: Vec<_> = errors.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(failed, ["bad name", "missing"]);
        assert!(errors[0].1.is_invalid_name() && errors[1].1.is_not_found());
        assert_eq!(r.store("weu").gets(), 21);
        r.seed_all("s3", "v2");
        assert_eq!(
            r.client.get_secret("s3").await.unwrap().expose(),
            "v1",
            "cached for an hour"
        );
        assert_eq!(r.client.refresh_now("s3").await.unwrap().expose(), "v2");
        assert_eq!(r.client.get_secret("s3").await.unwrap().expose(), "v2");
        for i in 0..20 {
            r.seed_all(&format!("s{i}"), "v3");
        }
        let (ok, errs) = r.client.refresh_all().await;
        assert_eq!((ok, errs.len()), (20, 0));
        for i in 0..20 {
            assert_eq!(
                r.client
                    .get_secret(&format!("s{i}"))
                    .await
                    .unwrap()
                    .expose(),
                "v3"
            );
        }
        // refresh_now when every vault is down: an error, and the value is kept.
        r.fault_all(Some(Fault::Refuse));
        assert!(r
            .client
            .refresh_now("s3")
            .await
            .unwrap_err()
            .is_unavailable());
        assert_eq!(r.client.get_secret("s3").await.unwrap().expose(), "v3");
    })
    .unwrap();
}

#[test]
fn drift_between_vaults_is_reported_without_values() {
    run_virtual(async {
        let r = rig_with(3, |b| {
            b.refresh_interval(Duration::from_secs(10))
                .probing(false)
                .drift_sample(1.0)
        });
        r.seed_all("same", "x");
        r.seed_all("drifted", "original");
        r.store("swc").insert("drifted", "diverged");
        let mut rx = r.client.subscribe();
        r.client.preload(["same", "drifted"]).await;
        advance(Duration::from_secs(11)).await;
        let h = r.client.health();
        assert_eq!(h.drift().len(), 1, "{:?}", h.drift());
        assert_eq!(h.drift()["drifted"], ["swc"]);
        let mut drift_events = Vec::new();
        while let Ok(e) = rx.try_recv() {
            if let Event::Drift { secret, regions } = e {
                drift_events.push((secret.to_string(), regions.len()));
            }
        }
        assert_eq!(drift_events, [("drifted".to_string(), 1)]);
        assert!(!format!("{h:?}").contains("diverged") && !format!("{h:?}").contains("original"));
        // Repaired: the drift clears at the next refresh.
        r.store("swc").insert("drifted", "original");
        advance(Duration::from_secs(11)).await;
        assert!(r.client.health().drift().is_empty());
    })
    .unwrap();
}

/// Drift checks are sampled: a tenth of refreshes costs a GET on the other vault, not every
/// one (each check doubled a fleet's refresh load). A secret found to differ is checked at
/// every refresh until the vaults agree, so its record clears at the next refresh.
#[test]
fn drift_checks_are_sampled_and_a_differing_secret_is_checked_until_it_agrees() {
    run_virtual(async {
        let r = rig_with(2, |b| {
            b.refresh_interval(Duration::from_secs(10))
                .refresh_idle_after(Duration::from_secs(3600))
                .probing(false)
                .hedging(false)
        });
        let names: Vec<String> = (0..20).map(|i| format!("s{i}")).collect();
        for n in &names {
            r.seed_all(n, "v");
        }
        r.client.preload(names.iter().map(String::as_str)).await;
        let (weu0, neu0) = (r.store("weu").gets(), r.store("neu").gets());
        advance(Duration::from_secs(600)).await;
        let refreshes = r.store("weu").gets() - weu0;
        let checks = r.store("neu").gets() - neu0;
        assert!(refreshes >= 1_000, "{refreshes} refreshes in 10 min");
        let share = checks as f64 / refreshes as f64;
        assert!(
            (0.05..=0.2).contains(&share),
            "{checks} drift checks for {refreshes} refreshes"
        );
        // A difference is found by some sampled check, then checked at every refresh.
        r.store("neu").insert("s3", "diverged");
        let mut waited = Duration::ZERO;
        while !r.client.health().drift().contains_key("s3") {
            assert!(
                waited < Duration::from_secs(3600),
                "the drift was never seen"
            );
            advance(S).await;
            waited += S;
        }
        r.store("neu").insert("s3", "v");
        advance(Duration::from_secs(11)).await;
        assert!(
            r.client.health().drift().is_empty(),
            "the record cleared at the next refresh"
        );
    })
    .unwrap();
}

#[test]
fn events_report_breakers_routes_throttling_and_stale_serves() {
    run_virtual(async {
        let r = rig_with(2, |b| {
            b.refresh_interval(Duration::from_secs(5)).hedging(false)
        });
        r.seed_all("db", "v");
        r.client.get_secret("db").await.unwrap();
        let mut rx = r.client.subscribe();
        r.store("neu")
            .set_fault(Some(Fault::Throttle(Duration::from_secs(2))));
        r.store("weu").set_fault(Some(Fault::Refuse));
        advance(Duration::from_secs(40)).await;
        let _ = r.client.get_secret("db").await;
        let mut kinds = std::collections::BTreeSet::new();
        while let Ok(e) = rx.try_recv() {
            kinds.insert(match e {
                Event::RouteChanged { .. } => "route",
                Event::Breaker { .. } => "breaker",
                Event::Throttled { .. } => "throttled",
                Event::StaleServed { .. } => "stale",
                Event::RefreshFailed { .. } => "refresh-failed",
                Event::Drift { .. } => "drift",
                _ => "other",
            });
        }
        for k in ["route", "breaker", "throttled", "stale"] {
            assert!(kinds.contains(k), "no {k} event: {kinds:?}");
        }
    })
    .unwrap();
}

/// A hit reads no clock of its own: the expirer marks each value as its refresh interval ends,
/// even while every refresh hangs on a vault (the refresher is busy), and a hit past the mark
/// is no longer fresh. Without the refresher the hit reads the clock: the same answer.
#[test]
fn a_hit_stops_being_fresh_when_the_refresh_interval_ends_even_while_refreshes_hang() {
    for background in [true, false] {
        run_virtual(async move {
            let t = Duration::from_secs(10);
            let r = rig_with(2, |b| {
                b.refresh_interval(t)
                    .probing(false)
                    .background_refresh(background)
            });
            r.seed_all("db", "v");
            r.client.get_secret("db").await.unwrap();
            let fetched = Instant::now();
            r.fault_all(Some(Fault::Hang));
            advance(t - Duration::from_millis(1)).await;
            assert!(
                r.client.get_cached("db").is_some(),
                "fresh within the interval"
            );
            advance(Duration::from_millis(2)).await;
            assert!(fetched.elapsed() > t);
            assert!(
                r.client.get_cached("db").is_none(),
                "past the interval (refresher {background}): not a fresh hit"
            );
        })
        .unwrap();
    }
}
