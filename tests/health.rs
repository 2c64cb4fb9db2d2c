//! Health in three states (issue 11): ready, degraded, not ready; and live.

mod common;

use std::time::Duration;

use common::{advance, rig_with, Rig};
use keyvault_failover::run_virtual;
use keyvault_failover::store::Fault;
use keyvault_failover::HealthState;

const S: Duration = Duration::from_secs(1);

/// One secret read, then every vault refusing for 20 s: with nothing preloaded, not ready.
async fn down_with_nothing_preloaded() -> Rig {
    let r = rig_with(2, |b| b.wait_for_recovery(false));
    r.seed_all("a", "1");
    r.client.get_secret("a").await.unwrap();
    r.fault_all(Some(Fault::Refuse));
    advance(20 * S).await;
    assert_eq!(r.client.health().state(), HealthState::NotReady);
    r
}

/// Vaults answering: ready. Every vault down with every preloaded secret held: still ready,
/// but degraded (cache only, stale values served). Nothing preloaded: not ready.
#[test]
fn health_follows_the_vaults_and_the_cache() {
    run_virtual(async {
        let r = rig_with(2, |b| b.wait_for_recovery(false));
        r.seed_all("a", "1");
        r.seed_all("b", "2");
        assert!(r.client.preload(["a", "b"]).await.is_empty());
        let h = r.client.health();
        assert_eq!(h.state(), HealthState::Ready);
        assert!(h.is_ready() && h.is_live() && !h.is_degraded());

        r.fault_all(Some(Fault::Refuse));
        advance(20 * S).await; // the probes trip both breakers
        let h = r.client.health();
        assert!(h.is_ready(), "every preloaded secret is held");
        assert_eq!(h.state(), HealthState::Degraded, "cache only");
        assert!(r.client.get_secret("a").await.unwrap().is_stale());

        // The same outage with nothing preloaded: not ready.
        let r = down_with_nothing_preloaded().await;
        // The vaults come back: ready; the stale serve of the last minute still says degraded,
        // and a minute after it, it does not.
        assert!(r.client.get_secret("a").await.unwrap().is_stale());
        r.fault_all(None);
        advance(20 * S).await; // good probes in a row make a vault trusted again
        assert_eq!(r.client.health().state(), HealthState::Degraded);
        advance(45 * S).await;
        assert_eq!(r.client.health().state(), HealthState::Ready);
    })
    .unwrap();
}

/// After a total outage the route comes back to the primary before the primary has proved
/// itself, and its callers (here the refresher) call it at once. Their successes must not stand
/// in for the proving probes: the prober skipped them while callers vouched, so the vault never
/// became trusted and health said "not ready" for as long as callers kept calling it.
#[test]
fn a_vault_callers_use_after_a_total_outage_still_proves_itself() {
    run_virtual(async {
        let r = down_with_nothing_preloaded().await;
        r.fault_all(None);
        let back = tokio::time::Instant::now();
        let mut trusted = None;
        while back.elapsed() < 60 * S {
            advance(S).await;
            // A caller keeps reading: the refresher keeps calling the vault on the route.
            r.client.get_secret("a").await.unwrap();
            if r.client.health().is_ready() {
                trusted = Some(back.elapsed());
                break;
            }
        }
        let weu = r.store("weu").gets();
        assert!(weu > 10, "callers kept calling the primary: {weu} GETs");
        assert!(
            trusted.is_some_and(|t| t <= 20 * S),
            "no vault trusted again within 20 s of the recovery: {trusted:?}"
        );
    })
    .unwrap();
}
