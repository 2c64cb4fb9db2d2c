//! Concurrent misses for one secret make one vault call.

mod common;

use std::time::Duration;

use common::rig;
use keyvault_failover::run_virtual;
use keyvault_failover::store::Latency;

#[test]
fn fifty_concurrent_misses_make_one_vault_call() {
    run_virtual(async {
        let r = rig(2, |b| b);
        r.seed_all("db", "v");
        r.store("weu")
            .set_latency(Latency::Fixed(Duration::from_millis(50)));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let c = r.client.clone();
                tokio::spawn(async move { c.get_secret("DB").await })
            })
            .collect();
        let mut versions = Vec::new();
        for t in tasks {
            versions.push(t.await.unwrap().unwrap().version().to_string());
        }
        assert_eq!(r.store("weu").gets(), 1);
        versions.dedup();
        assert_eq!(versions.len(), 1);
        // Different names are not merged.
        let (a, b) = tokio::join!(r.client.get_secret("x1"), r.client.get_secret("x2"));
        assert!(a.unwrap_err().is_not_found() && b.unwrap_err().is_not_found());
        assert_eq!(r.store("weu").gets(), 3);
    })
    .unwrap();
}

#[test]
fn a_cancelled_leader_hands_the_fetch_to_a_waiter() {
    run_virtual(async {
        let r = rig(1, |b| b);
        r.seed_all("db", "v");
        r.store("weu")
            .set_latency(Latency::Fixed(Duration::from_millis(100)));
        let c = r.client.clone();
        let leader = tokio::spawn(async move { c.get_secret("db").await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let c = r.client.clone();
        let follower = tokio::spawn(async move { c.get_secret("db").await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        leader.abort();
        let s = follower.await.unwrap().unwrap();
        assert_eq!(s.expose(), "v");
        assert_eq!(
            r.store("weu").gets(),
            2,
            "the follower fetched after the leader was cancelled"
        );
    })
    .unwrap();
}
