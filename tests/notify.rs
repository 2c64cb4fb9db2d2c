//! Change hints (issue 22): a held secret is refreshed within `refresh.notify_max_delay` of a
//! hint, once however many hints come, never when it is not held; an event is a hint, never
//! data. Paused time throughout.

mod common;

use std::time::Duration;

use common::{advance, rig};
use keyvault_failover::{run_virtual, Notified};

const S: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);

fn event(vault: &str, name: &str, version: &str) -> String {
    format!(
        r#"{{"id":"1","topic":"/subscriptions/x/resourceGroups/g/providers/Microsoft.KeyVault/vaults/{vault}","subject":"{name}","eventType":"Microsoft.KeyVault.SecretNewVersionCreated","eventTime":"2026-12-01T10:00:00Z","data":{{"Id":"https://{vault}.vault.azure.net/secrets/{name}/{version}","VaultName":"{vault}","ObjectType":"Secret","ObjectName":"{name}","Version":"{version}"}},"dataVersion":"1","metadataVersion":"1"}}"#
    )
}

/// A rotation is seen within the hint's delay, not the refresh interval (an hour here), with
/// one GET for a hundred hints; before the delay nothing is sent.
#[test]
fn a_hint_refreshes_a_held_secret_once_within_the_delay() {
    run_virtual(async {
        let r = rig(2, |b| b.refresh_interval(HOUR).notify_max_delay(10 * S));
        r.seed_all("db", "one");
        assert_eq!(r.client.get_secret("db").await.unwrap().expose(), "one");
        r.store("weu").insert("db", "two");
        let before = r.store("weu").gets();
        assert_eq!(r.client.notify_changed("db", None), Notified::Scheduled);
        for _ in 0..99 {
            assert_eq!(
                r.client.notify_changed("DB", None),
                Notified::AlreadyScheduled
            );
        }
        advance(10 * S + S / 10).await;
        assert_eq!(r.store("weu").gets() - before, 1, "one GET for 100 hints");
        let s = r.client.get_secret("db").await.unwrap();
        assert_eq!(s.expose(), "two");
        assert_eq!(r.store("weu").gets() - before, 1, "then a cache hit");
        // Later hints schedule again.
        assert_eq!(r.client.notify_changed("db", None), Notified::Scheduled);
    })
    .unwrap();
}

/// Nothing is fetched for a name not held, an invalid one, or the version already held.
#[test]
fn hints_for_what_is_not_held_or_already_held_cost_nothing() {
    run_virtual(async {
        let r = rig(2, |b| b.refresh_interval(HOUR).notify_max_delay(2 * S));
        r.seed_all("db", "one");
        let held = r.client.get_secret("db").await.unwrap();
        let before = r.store("weu").gets() + r.store("neu").gets();
        assert_eq!(r.client.notify_changed("other", None), Notified::NotHeld);
        assert_eq!(r.client.notify_changed("bad_name", None), Notified::Invalid);
        assert_eq!(
            r.client.notify_changed("db", Some("../x")),
            Notified::Invalid
        );
        assert_eq!(
            r.client.notify_changed("db", Some(held.version())),
            Notified::SameVersion
        );
        advance(5 * S).await;
        assert_eq!(r.store("weu").gets() + r.store("neu").gets(), before);
    })
    .unwrap();
}

/// Events for a vault not in the configuration are ignored; a configured vault's event
/// schedules a refresh, and what is served afterwards is the vault's version, never the one
/// the event named (an event cannot inject a value, a version or a region).
#[test]
fn events_from_other_vaults_are_ignored_and_an_event_is_never_data() {
    run_virtual(async {
        let r = rig(2, |b| b.refresh_interval(HOUR).notify_max_delay(2 * S));
        r.seed_all("db", "one");
        r.client.get_secret("db").await.unwrap();
        let before = r.store("weu").gets();
        let a = r
            .client
            .notify_events(event("someone-elses-vault", "db", "abc").as_bytes())
            .unwrap();
        assert_eq!(a.outcomes().get("foreign-vault"), Some(&1), "{a:?}");
        advance(3 * S).await;
        assert_eq!(r.store("weu").gets(), before);

        let v2 = r.store("weu").insert("db", "two");
        let body = format!(
            "[{},{}]",
            event("app-weu", "db", "deadbeef"),
            event("APP-NEU", "db", "cafe")
        );
        let a = r.client.notify_events(body.as_bytes()).unwrap();
        assert_eq!(a.scheduled(), 1, "{a:?}");
        assert_eq!(a.outcomes().get("already-scheduled"), Some(&1), "{a:?}");
        advance(3 * S).await;
        let s = r.client.get_secret("db").await.unwrap();
        assert_eq!((s.expose(), s.version(), s.region()), ("two", v2.as_str(), "weu"));
        // The handshake: the code comes back, nothing is scheduled.
        let a = r
            .client
            .notify_events(br#"{"eventType":"Microsoft.EventGrid.SubscriptionValidationEvent","data":{"validationCode":"abc-123"}}"#)
            .unwrap();
        assert_eq!((a.validation_code(), a.scheduled()), (Some("abc-123"), 0));
        assert!(r.client.notify_events(b"hunter2").unwrap_err().is_invalid_value());
    })
    .unwrap();
}

/// A fleet told at once spreads its refreshes over the delay: 200 clients, one hint each, their
/// GETs fall in at least 8 of the 10 one-second slots of a 10 s delay, none after it.
#[test]
fn a_fleet_told_at_once_spreads_its_refreshes() {
    run_virtual(async {
        let mut rigs = Vec::new();
        for i in 0..200u64 {
            let r = rig(1, |b| {
                b.refresh_interval(HOUR)
                    .notify_max_delay(10 * S)
                    .seed(1000 + i)
            });
            r.seed_all("db", "one");
            r.client.get_secret("db").await.unwrap();
            rigs.push(r);
        }
        for r in &rigs {
            assert_eq!(r.client.notify_changed("db", None), Notified::Scheduled);
        }
        let mut slots = std::collections::BTreeSet::new();
        let mut seen = vec![false; rigs.len()];
        for slot in 0..11 {
            advance(S).await;
            for (i, r) in rigs.iter().enumerate() {
                if !seen[i] && r.store("weu").gets() == 2 {
                    seen[i] = true;
                    slots.insert(slot);
                }
            }
        }
        assert!(
            seen.iter().all(|s| *s),
            "every client refreshed within the delay"
        );
        assert!(slots.len() >= 8, "spread over {slots:?}");
    })
    .unwrap();
}
