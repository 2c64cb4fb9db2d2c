//! Health probing and failback with hysteresis, driven by the prober alone (no caller traffic),
//! and hedged reads. Paused time throughout.

mod common;

use std::time::Duration;

use common::{advance, rig_with};
use keyvault_failover::run_virtual;
use keyvault_failover::store::{Fault, Latency};
use keyvault_failover::{BreakerState, Event, Mode};
use tokio::sync::broadcast::Receiver;
use tokio::time::Instant;

const S: Duration = Duration::from_secs(1);

/// Waits (virtual time, bounded) for the route to move to `to`; returns when it did.
async fn route_to(rx: &mut Receiver<Event>, to: Option<&str>, within: Duration) -> Instant {
    tokio::time::timeout(within, async {
        loop {
            match rx.recv().await {
                Ok(Event::RouteChanged { to: t, .. }) if t.as_deref() == to => {
                    return Instant::now()
                }
                Ok(_) => {}
                Err(e) => panic!("event stream: {e}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("route did not move to {to:?} within {within:?}"))
}

/// Defaults: probe every 10 s ±20 %, doubling with each healthy round up to 60 s; every
/// 2 s ±20 % while unhealthy; 3 failed probes trip; probe timeout 2 s. With no traffic, a
/// dead primary is noticed by the next healthy probe (≤ 72 s once backed off) and tripped
/// after two more unhealthy probes (≤ 2 × 2.4 s), each ending at once (refused) or after the
/// probe timeout (blackholed).
#[test]
fn a_dead_primary_is_left_with_no_caller_traffic() {
    for (fault, bound) in [
        (
            Fault::Refuse,
            Duration::from_millis(72_000 + 2 * 2_400 + 100),
        ),
        (
            Fault::Hang,
            Duration::from_millis(72_000 + 2_000 + 2 * (2_400 + 2_000) + 100),
        ),
    ] {
        run_virtual(async {
            let r = rig_with(2, |b| b);
            let mut rx = r.client.subscribe();
            advance(Duration::from_secs(300)).await;
            r.store("weu").set_fault(Some(fault.clone()));
            let t0 = Instant::now();
            let at = route_to(&mut rx, Some("neu"), Duration::from_secs(120)).await;
            assert!(at - t0 <= bound, "{fault:?}: {:?} > {bound:?}", at - t0);
            assert_eq!(r.client.health().mode(), Mode::ReadOnly);
            assert_eq!(
                r.store("weu").gets() + r.store("neu").gets(),
                0,
                "no caller traffic"
            );
        })
        .unwrap();
    }
}

/// Failback needs `failback_successes` (3) probes in a row and `failback_dwell` (60 s) on the
/// lower route.
#[test]
fn failback_waits_for_three_good_probes_and_the_dwell_time() {
    run_virtual(async {
        let r = rig_with(2, |b| b);
        let mut rx = r.client.subscribe();
        r.store("weu").set_fault(Some(Fault::Refuse));
        let failed_over = route_to(&mut rx, Some("neu"), Duration::from_secs(60)).await;
        advance(5 * S).await;
        r.store("weu").set_fault(None);
        let healed = Instant::now();
        let back = route_to(&mut rx, Some("weu"), Duration::from_secs(300)).await;
        assert!(
            back - failed_over >= Duration::from_secs(60),
            "dwell: {:?}",
            back - failed_over
        );
        // Three probes at least 1.6 s apart (2 s − 20 % jitter) after the heal.
        assert!(
            back - healed >= Duration::from_millis(3_200),
            "{:?}",
            back - healed
        );
        let h = r.client.health();
        assert_eq!(h.mode(), Mode::ReadWrite);
        assert!(h.regions()[0].probe_streak() >= 3);
    })
    .unwrap();
}

/// A primary that is up 2 s, down 2 s, for 5 minutes, under light read traffic. Each failback
/// needs a 60 s dwell, so the route changes at most twice per minute: at most 10 changes,
/// against 150 flips of the primary.
#[test]
fn a_flapping_primary_does_not_make_the_route_flap() {
    run_virtual(async {
        let r = rig_with(2, |b| b.refresh_interval(Duration::from_secs(5)));
        for i in 0..10 {
            r.seed_all(&format!("s{i}"), "v");
        }
        let end = Instant::now() + Duration::from_secs(300);
        let mut down = false;
        let mut next_flip = Instant::now();
        let mut failed = 0;
        let mut n = 0u32;
        while Instant::now() < end {
            if Instant::now() >= next_flip {
                down = !down;
                r.store("weu")
                    .set_fault(if down { Some(Fault::Refuse) } else { None });
                next_flip += 2 * S;
            }
            n += 1;
            if r.client.get_secret(&format!("s{}", n % 10)).await.is_err() {
                failed += 1;
            }
            advance(Duration::from_millis(100)).await;
        }
        let changes = r.client.health().route_changes();
        assert!(changes <= 10, "{changes} route changes in 5 minutes");
        assert!(changes >= 1, "the flapping primary was noticed");
        assert_eq!(failed, 0, "no read failed while the primary flapped");
    })
    .unwrap();
}

#[test]
fn a_hedged_read_returns_the_secondary_answer_and_only_a_run_of_lost_hedges_trips_the_primary() {
    run_virtual(async {
        let r = rig_with(2, |b| {
            b.probing(false)
                .background_refresh(false)
                .failure_threshold(5)
                .refresh_interval(Duration::from_millis(1))
                .staleness_cap(Duration::from_secs(3600))
        });
        r.seed_all("db", "v");
        r.store("weu")
            .set_latency(Latency::Fixed(Duration::from_millis(10)));
        r.store("neu")
            .set_latency(Latency::Fixed(Duration::from_millis(30)));
        // Until 20 samples, the hedge delay is the default 150 ms.
        r.store("weu").set_fault(Some(Fault::Hang));
        let t = Instant::now();
        let s = r.client.get_secret("db").await.unwrap();
        assert_eq!(s.region(), "neu");
        assert_eq!(t.elapsed(), Duration::from_millis(150 + 30));
        r.store("weu").set_fault(None);
        // 30 answers at 10 ms: the delay becomes the p95 (10 ms) raised to the 20 ms floor.
        for _ in 0..30 {
            advance(Duration::from_millis(5)).await;
            assert_eq!(r.client.get_secret("db").await.unwrap().region(), "weu");
        }
        let hedged = |r: &common::Rig| {
            let client = r.client.clone();
            async move {
                advance(S).await;
                let t = Instant::now();
                let s = client.get_secret("db").await.unwrap();
                assert_eq!(s.region(), "neu");
                t.elapsed()
            }
        };
        r.store("weu").set_fault(Some(Fault::Hang));
        for _ in 0..4 {
            assert_eq!(hedged(&r).await, Duration::from_millis(20 + 30));
        }
        assert_eq!(
            r.breaker("weu"),
            BreakerState::Closed,
            "cancelled losers are neither successes nor failures"
        );
        // weu answers once: its run of lost hedges starts again.
        r.store("weu").set_fault(None);
        advance(S).await;
        assert_eq!(r.client.get_secret("db").await.unwrap().region(), "weu");
        r.store("weu").set_fault(Some(Fault::Hang));
        for _ in 0..4 {
            assert_eq!(hedged(&r).await, Duration::from_millis(20 + 30));
        }
        assert_eq!(r.breaker("weu"), BreakerState::Closed);
        // The fifth hedge in a row (the failure threshold) that weu loses without answering
        // anything trips it: a silent vault whose calls never time out (the hedge always
        // wins first) must not cost every read a hedge delay forever.
        assert_eq!(hedged(&r).await, Duration::from_millis(20 + 30));
        assert_eq!(r.breaker("weu"), BreakerState::Open);
        assert_eq!(
            hedged(&r).await,
            Duration::from_millis(30),
            "straight to neu"
        );
    })
    .unwrap();
}

#[test]
fn background_tasks_stop_when_the_client_is_dropped() {
    run_virtual(async {
        let r = rig_with(2, |b| b);
        r.seed_all("db", "v");
        r.client.get_secret("db").await.unwrap();
        advance(Duration::from_secs(60)).await;
        // Probes read the secret the client read (GETs), or list before any read.
        let calls = |s: &keyvault_failover::store::MemoryStore| s.gets() + s.lists();
        let probes = calls(r.store("weu"));
        assert!(probes >= 4, "the prober ran: {probes}");
        let stores = r.stores.clone();
        drop(r);
        advance(Duration::from_secs(3600)).await;
        let after = calls(&stores[0]);
        assert!(
            after <= probes + 1,
            "probes went on after drop: {probes} -> {after}"
        );
    })
    .unwrap();
}

/// A healthy vault is probed less and less often (10 s, 20 s, 40 s, then every 60 s, ±20 %):
/// a fleet of idle clients each probing every 10 s would spend a vault's whole limit on
/// probes. Before: one probe every 10 s. After a recovery the vault proves itself at the
/// unhealthy interval, then healthy probing resumes at the pace it had reached (issue 20: it
/// started over at 10 s, and a recovered fleet probed its primary every 10 s at once; this
/// test counted 5 to 9 probes in the minute after recovery then, 3 or 4 now).
#[test]
fn probes_of_a_healthy_vault_back_off_and_keep_their_pace_after_a_recovery() {
    run_virtual(async {
        let r = rig_with(2, |b| b.background_refresh(false));
        let weu = r.store("weu");
        let calls = || weu.gets() + weu.lists();
        advance(600 * S).await;
        let n = calls();
        assert!((9..=14).contains(&n), "{n} probes in 10 idle minutes");
        // A dead vault is still found and left; once back, it proves itself (2 s toward
        // failback), then is probed at the pace it had reached (60 s), and failback follows.
        let mut rx = r.client.subscribe();
        weu.set_fault(Some(Fault::Refuse));
        route_to(&mut rx, Some("neu"), Duration::from_secs(120)).await;
        weu.set_fault(None);
        let n = calls();
        advance(60 * S).await;
        let fresh = calls() - n;
        assert!(
            (3..=4).contains(&fresh),
            "{fresh} probes in the minute after recovery"
        );
        route_to(&mut rx, Some("weu"), Duration::from_secs(120)).await;
    })
    .unwrap();
}

/// Opt-in for fleets: a tripped vault's probes back off too (2 s doubling per failure past
/// the trip, here up to 16 s), so that a recovering vault does not meet every client's probes
/// at once. The default (no back-off) probes a dead vault every 2 s.
#[test]
fn a_tripped_vault_is_probed_less_often_when_configured() {
    for (max, range) in [(2u64, 120..=190), (16, 18..=32)] {
        run_virtual(async move {
            let r = rig_with(2, |b| {
                b.background_refresh(false)
                    .probe_unhealthy_interval_max(Duration::from_secs(max))
            });
            let weu = r.store("weu");
            weu.set_fault(Some(Fault::Refuse));
            advance(300 * S).await;
            let n = weu.gets() + weu.lists();
            assert!(
                range.contains(&n),
                "max {max} s: {n} probes of a dead vault in 5 min"
            );
        })
        .unwrap();
    }
}

/// A vault a caller's call failed on (its breaker still closed) proves itself again at the
/// unhealthy interval: three good probes 2 s apart, so a client with nothing cached is ready
/// within seconds of the vaults coming back. Before: at the healthy interval, about 30 s (the
/// agent's readiness test waited 28 s of its 30 s bound).
#[test]
fn a_vault_a_call_failed_on_proves_itself_at_the_unhealthy_interval() {
    run_virtual(async {
        let r = rig_with(2, |b| b.background_refresh(false).wait_for_recovery(false));
        r.seed_all("s", "v");
        r.fault_all(Some(Fault::Refuse));
        assert!(r.client.get_secret("s").await.is_err());
        assert!(!r.client.health().is_ready());
        r.fault_all(None);
        let t0 = Instant::now();
        while !r.client.health().is_ready() {
            assert!(t0.elapsed() < Duration::from_secs(60), "never ready again");
            advance(Duration::from_millis(100)).await;
        }
        let took = t0.elapsed();
        assert!(
            took <= Duration::from_millis(3 * 2_400 + 200),
            "ready after {took:?}"
        );
    })
    .unwrap();
}

/// With the tripped vault's back-off raised (fleets), its proving probes after it recovers keep
/// the pace they had backed off to, instead of three probes 2 s apart from every instance at
/// once; failback still follows. With the default, proving is at 2 s (see above).
#[test]
fn a_recovering_vault_is_proven_at_the_pace_its_probes_backed_off_to() {
    run_virtual(async {
        let r = rig_with(2, |b| {
            b.background_refresh(false)
                .probe_unhealthy_interval_max(Duration::from_secs(16))
        });
        let weu = r.store("weu");
        let mut rx = r.client.subscribe();
        weu.set_fault(Some(Fault::Refuse));
        route_to(&mut rx, Some("neu"), Duration::from_secs(120)).await;
        advance(300 * S).await;
        weu.set_fault(None);
        let n = weu.gets() + weu.lists();
        advance(30 * S).await;
        let proving = weu.gets() + weu.lists() - n;
        assert!(
            (1..=2).contains(&proving),
            "{proving} probes in the 30 s after recovery"
        );
        route_to(&mut rx, Some("weu"), Duration::from_secs(120)).await;
    })
    .unwrap();
}

/// Passive health (issue 13): while callers' calls to a healthy vault succeed, the prober
/// skips its probes, so vault load follows traffic, not instances; an idle client still
/// probes. Before: a probe every interval whatever the traffic.
#[test]
fn callers_success_stands_in_for_probes() {
    run_virtual(async {
        let r = rig_with(1, |b| b.background_refresh(false));
        r.seed_all("s", "v");
        let weu = r.store("weu");
        r.client.get_secret("s").await.unwrap();
        let (gets, lists) = (weu.gets(), weu.lists());
        for _ in 0..30 {
            r.client.refresh_now("s").await.unwrap(); // one caller GET
            advance(2 * S).await;
        }
        assert_eq!(
            weu.gets() - gets,
            30,
            "only the callers' GETs reached the vault"
        );
        assert_eq!(weu.lists(), lists, "and no listing probe");
        // Idle: the prober takes over, at the interval it has backed off to while the vault
        // stayed healthy (10 s doubling per round, at most 60 s, ±20 %).
        let probes = weu.gets() + weu.lists();
        advance(300 * S).await;
        let idle = weu.gets() + weu.lists() - probes;
        assert!((4..=7).contains(&idle), "{idle} probes in 5 idle minutes");
    })
    .unwrap();
}

/// A vault whose failed calls did not trip its breaker keeps the route, and its callers'
/// good calls prove it as probes would: three in a row and it is trusted again (ready),
/// here with no prober at all. Before: only probes proved it, so every instance of a fleet
/// whose refreshes failed a few times in a regional outage (breaker closed, route kept)
/// probed the recovered primary three more times while its refreshes already succeeded
/// there (issue 20: 4,000 of the recovery's 10,000 probes per 140 s), and without a prober
/// the client said "not ready" for ever.
#[test]
fn callers_calls_prove_the_vault_that_keeps_the_route() {
    run_virtual(async {
        let r = rig_with(2, |b| {
            b.probing(false)
                .background_refresh(false)
                .wait_for_recovery(false)
        });
        r.seed_all("s", "v");
        r.fault_all(Some(Fault::Refuse));
        assert!(r.client.get_secret("s").await.is_err());
        assert!(!r.client.health().is_ready());
        assert_eq!(
            r.breaker("weu"),
            BreakerState::Closed,
            "one failure: no trip"
        );
        r.fault_all(None);
        for i in 1..=3 {
            assert_eq!(r.client.refresh_now("s").await.unwrap().region(), "weu");
            assert_eq!(r.client.health().is_ready(), i == 3, "after {i} good calls");
        }
    })
    .unwrap();
}

/// A prober sleeping at the healthy pace (backed off to 60 s) when callers' calls open its
/// vault's breaker wakes and probes at the unhealthy pace (2 s ±20 %), so the recovery is
/// seen within seconds. Before: the probe came when the healthy wait ended, up to a minute
/// later, and a fleet's instances saw a regional recovery anywhere in the 5 minutes of their
/// `interval_max` (issue 20: failback 4.0 min).
#[test]
fn a_breaker_callers_open_wakes_its_sleeping_prober() {
    run_virtual(async {
        let r = rig_with(2, |b| b.background_refresh(false));
        for i in 0..10 {
            r.seed_all(&format!("s{i}"), "v");
        }
        advance(600 * S).await; // idle: the healthy pace is 60 s
        let weu = r.store("weu");
        weu.set_fault(Some(Fault::Refuse));
        let mut i = 0;
        while r.breaker("weu") == BreakerState::Closed {
            assert!(i < 10, "callers' failures never opened the breaker");
            r.client.get_secret(&format!("s{i}")).await.unwrap();
            i += 1;
        }
        weu.set_fault(None);
        let t0 = Instant::now();
        while r.breaker("weu") != BreakerState::Closed {
            assert!(t0.elapsed() < Duration::from_secs(120), "never probed");
            advance(Duration::from_millis(100)).await;
        }
        let took = t0.elapsed();
        assert!(
            took <= Duration::from_millis(2_400 + 100),
            "the recovered vault was probed after {took:?}"
        );
    })
    .unwrap();
}

/// A vault that completes its proving run takes the route back one (jittered) proving
/// interval later, with no probe in between: by then every instance of a fleet probing at
/// that pace has seen the recovery too, so no instance's proving probes meet the others'
/// returning traffic. Before: the route moved at the run's last probe, and in
/// `fleet-10k-regional-outage` the last instances' proving probes met the refreshes of those
/// already back (issue 20: the primary at 3,381 GETs per 10 s, now 2,887).
#[test]
fn a_proved_vault_takes_the_route_back_one_proving_interval_later() {
    run_virtual(async {
        let r = rig_with(2, |b| {
            b.background_refresh(false)
                .probe_unhealthy_interval_max(Duration::from_secs(16))
        });
        let weu = r.store("weu");
        let calls = || weu.gets() + weu.lists();
        let mut rx = r.client.subscribe();
        weu.set_fault(Some(Fault::Refuse));
        route_to(&mut rx, Some("neu"), Duration::from_secs(120)).await;
        advance(300 * S).await;
        weu.set_fault(None);
        let before = calls();
        let t0 = Instant::now();
        while calls() < before + 3 {
            assert!(t0.elapsed() < Duration::from_secs(120), "never proved");
            advance(Duration::from_millis(100)).await;
        }
        let proved = Instant::now();
        assert_eq!(r.client.health().mode(), Mode::ReadOnly, "held back");
        let back = route_to(&mut rx, Some("weu"), Duration::from_secs(120)).await;
        let held = back - proved;
        // The hold is the unjittered pace (16 s) plus the jitter (20 %).
        assert!(
            held >= Duration::from_millis(19_000) && held <= Duration::from_millis(19_300),
            "failback {held:?} after the third good probe"
        );
        assert_eq!(calls(), before + 3, "no probe while held back");
    })
    .unwrap();
}
