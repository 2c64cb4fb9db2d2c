//! A copy's provenance time is believed only when it could be true. The reading client orders
//! a secondary's versions by their source's creation time (a replicator's copy is as old as
//! its source), read from the copy's `kvf-source` tag; tags are writable by anyone who may
//! write the vault. A copy made after its source can claim no time later than its own
//! `created`, nor later than now: a claim past either is not the replicator's, and the copy
//! is ordered by its own `created`.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{advance, rig};
use keyvault_failover::replicate::{Properties, Provenance, PROVENANCE_TAG};
use keyvault_failover::run_virtual;
use keyvault_failover::store::Fault;

const S: Duration = Duration::from_secs(1);

/// A value planted in the secondary with a provenance time in the year 5138 was served after
/// a failover, and then every later genuine version there (an operator's emergency rotation
/// during the primary's outage) was refused as "an older copy": the client held on to the
/// planted value until its staleness cap.
#[test]
fn a_provenance_time_from_the_future_does_not_hide_a_later_rotation() {
    run_virtual(async {
        let r = rig(2, |b| b);
        r.seed_all("db", "genuine-1");
        assert_eq!(r.client.get_secret("db").await.unwrap().region(), "weu");
        let far = Provenance::new("weu", "0123456789abcdef", 100_000_000_000);
        let mut tags = BTreeMap::new();
        tags.insert(PROVENANCE_TAG.to_string(), far.encode());
        r.store("neu")
            .insert_with("db", "planted", Properties::default().with_tags(tags));
        r.store("weu").set_fault(Some(Fault::Refuse));
        for _ in 0..6 {
            advance(2 * S).await;
            let _ = r.client.get_secret("db").await;
        }
        assert_eq!(r.client.health().active(), Some("neu"));
        // The operator rotates the secret in the secondary while the primary is down.
        r.store("neu").insert("db", "emergency-rotation");
        advance(2 * S).await;
        let s = r.client.get_secret("db").await.expect("a vault answers");
        assert_eq!(
            (s.expose(), s.region(), s.is_stale()),
            ("emergency-rotation", "neu", false),
            "the genuine later version is served"
        );
    })
    .unwrap();
}
