//! Regression tests for the defects of the hardening review (issue 10): each fails on the code
//! before its fix. Item numbers refer to that issue.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::{advance, rig, rig_with};
use keyvault_failover::run_virtual;
use keyvault_failover::store::{Fault, MemoryStore};
use keyvault_failover::{
    Access, BreakerState, Config, Event, FailoverClient, SecretName, SecretProperties, SecretStore,
    StoreError, StoredSecret,
};
use secrecy::SecretString;

const S: Duration = Duration::from_secs(1);

/// Item 1: `Retry-After: 18446744073709551615` panicked the read ("overflow when adding duration
/// to instant") and killed the prober; `Retry-After: 1000000000` took the vault away for decades.
#[test]
fn an_absurd_retry_after_is_capped_and_the_vault_comes_back() {
    for asked in [
        Duration::from_secs(u64::MAX),
        Duration::from_secs(1_000_000_000),
    ] {
        run_virtual(async move {
            let r = rig_with(2, |b| b.max_retry_after(Duration::from_secs(30)));
            r.seed_all("db", "v");
            r.store("weu").script([Some(Fault::Throttle(asked))]);
            let s = r.client.get_secret("db").await.expect("no panic, spilled");
            assert_eq!(s.region(), "neu");
            let throttled = r.client.health().regions()[0].throttled_for().unwrap();
            assert!(throttled <= Duration::from_secs(30), "{throttled:?}");
            let calls = |r: &common::Rig| r.store("weu").gets() + r.store("weu").lists();
            let before = calls(&r);
            advance(45 * S).await;
            assert!(
                calls(&r) > before,
                "the prober is alive and probes weu again"
            );
            assert!(r.client.health().regions()[0].throttled_for().is_none());
            assert_eq!(r.client.refresh_now("db").await.unwrap().region(), "weu");
        })
        .unwrap();
    }
}

/// Item 1 (and issue 9, item 5): a 503 with `Retry-After` keeps the vault paused, for the
/// prober too, within the cap.
#[test]
fn a_503_with_retry_after_pauses_the_vault() {
    run_virtual(async {
        let r = rig_with(2, |b| b.max_retry_after(Duration::from_secs(60)));
        r.seed_all("db", "v");
        r.store("weu").script([Some(Fault::ServerErrorRetryAfter(
            503,
            Duration::from_secs(30),
        ))]);
        let s = r.client.get_secret("db").await.unwrap();
        assert_eq!(s.region(), "neu");
        let (gets, lists) = (r.store("weu").gets(), r.store("weu").lists());
        advance(25 * S).await;
        assert_eq!(
            (r.store("weu").gets(), r.store("weu").lists()),
            (gets, lists),
            "nothing sent to weu while it asked for 30 s"
        );
        advance(20 * S).await;
        assert!(
            r.store("weu").gets() + r.store("weu").lists() > gets + lists,
            "probed again after the wait"
        );
    })
    .unwrap();
}

/// A store whose probe panics the first `n` times.
struct PanickyProbe {
    inner: MemoryStore,
    panics_left: AtomicU32,
}

#[async_trait]
impl SecretStore for PanickyProbe {
    async fn get(&self, n: &SecretName, v: Option<&str>) -> Result<StoredSecret, StoreError> {
        self.inner.get(n, v).await
    }
    async fn set(&self, n: &SecretName, v: &SecretString) -> Result<String, StoreError> {
        self.inner.set(n, v).await
    }
    async fn delete(&self, n: &SecretName) -> Result<(), StoreError> {
        self.inner.delete(n).await
    }
    async fn list(&self) -> Result<Vec<SecretProperties>, StoreError> {
        self.inner.list().await
    }
    async fn probe(&self) -> Result<(), StoreError> {
        if self
            .panics_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            panic!("probe blew up");
        }
        self.inner.list().await.map(|_| ())
    }
}

/// Item 1: a background task that panics is restarted and reported, not lost.
#[test]
fn a_panicking_prober_is_restarted_and_reported() {
    run_virtual(async {
        let store = Arc::new(PanickyProbe {
            inner: MemoryStore::new("weu"),
            panics_left: AtomicU32::new(2),
        });
        let config = Config::builder()
            .seed(0x6b76_6661_696c)
            .region("weu", "https://app-weu.vault.azure.net", Access::ReadWrite)
            .build()
            .unwrap();
        let client = FailoverClient::builder(config)
            .store("weu", store.clone())
            .build()
            .unwrap();
        let mut rx = client.subscribe();
        let mut restarts = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while restarts < 2 {
            let ev = tokio::time::timeout_at(deadline, rx.recv())
                .await
                .expect("restarts reported within 2 minutes")
                .unwrap();
            if let Event::TaskRestarted { task, restarts: n } = ev {
                assert_eq!(&*task, "prober:weu");
                restarts = n;
            }
        }
        assert!(
            !client.health().is_live(),
            "a task restarted within the minute makes the client not live"
        );
        let lists = store.inner.lists();
        advance(30 * S).await;
        assert!(store.inner.lists() > lists, "the restarted prober probes");
        assert_eq!(client.breaker_state("weu"), Some(BreakerState::Closed));
        advance(31 * S).await;
        assert!(client.health().is_live(), "live again a minute after");
    })
    .unwrap();
}

fn hedged_rig() -> common::Rig {
    rig(2, |b| {
        b.hedging(true)
            .hedge_default_delay(Duration::from_millis(150))
            .failure_threshold(3)
    })
}

/// Item 2: a healthy secondary that loses hedge races to a slower primary was charged for each
/// lost race and tripped; when the primary then failed there was nowhere to go.
#[test]
fn a_secondary_that_loses_hedge_races_is_not_tripped() {
    run_virtual(async {
        let r = hedged_rig();
        for i in 0..10 {
            r.seed_all(&format!("s{i}"), "v");
        }
        r.store("weu")
            .set_latency(keyvault_failover::store::Latency::Fixed(
                Duration::from_millis(200),
            ));
        r.store("neu")
            .set_latency(keyvault_failover::store::Latency::Fixed(
                Duration::from_millis(100),
            ));
        for i in 0..8 {
            let s = r.client.get_secret(&format!("s{i}")).await.unwrap();
            assert_eq!(s.region(), "weu", "the primary answers first");
        }
        assert!(r.store("neu").gets() >= 3, "hedges were sent");
        assert_eq!(r.breaker("neu"), BreakerState::Closed);
        r.store("weu").set_fault(Some(Fault::Refuse));
        let s = r
            .client
            .get_secret("s9")
            .await
            .expect("the secondary is still there");
        assert_eq!(s.region(), "neu");
    })
    .unwrap();
}

/// Item 3: a 403 from a hedge failed the whole read and cancelled the primary's attempt.
#[test]
fn a_fatal_answer_from_a_hedge_does_not_fail_the_read() {
    run_virtual(async {
        let r = hedged_rig();
        r.seed_all("db", "v");
        r.store("weu")
            .set_latency(keyvault_failover::store::Latency::Fixed(
                Duration::from_millis(200),
            ));
        r.store("neu").set_fault(Some(Fault::Forbidden));
        let s = r
            .client
            .get_secret("db")
            .await
            .expect("weu's answer stands");
        assert_eq!(s.region(), "weu");
        assert_eq!(r.store("neu").gets(), 1, "the hedge was sent and refused");
        // With nothing else in flight, a 403 is still the answer.
        r.store("weu").set_fault(Some(Fault::Refuse));
        let e = r.client.refresh_now("db").await.unwrap_err();
        assert!(e.is_auth(), "{e}");
    })
    .unwrap();
}

/// Item 4: a 404 for a pinned version wiped the secret's last-known-good (latest and versions).
#[test]
fn a_missing_version_does_not_evict_the_latest_value() {
    run_virtual(async {
        let r = rig(2, |b| b);
        r.seed_all("db", "v1");
        r.client.get_secret("db").await.unwrap();
        let e = r
            .client
            .get_secret_version("db", "no-such-version")
            .await
            .unwrap_err();
        assert!(e.is_not_found(), "{e}");
        r.fault_all(Some(Fault::Refuse));
        advance(2 * S).await; // past the refresh interval: only last-known-good can answer
        let s = r
            .client
            .get_secret("db")
            .await
            .expect("last-known-good kept");
        assert!(s.is_stale() && s.expose() == "v1");
    })
    .unwrap();
}

/// Item 13: `refresh_all` counted refreshed secrets as "cached now minus errors", which
/// underflowed (18446744073709551615, or a panic in debug) when a refresh removed a key.
#[test]
fn refresh_all_counts_what_it_refreshed() {
    run_virtual(async {
        let r = rig(2, |b| b);
        for n in ["a", "b", "c"] {
            r.seed_all(n, "v");
            r.client.get_secret(n).await.unwrap();
        }
        // Deleted at the primary behind the client's back: the refresh's 404 removes them.
        for n in ["a", "b"] {
            r.store("weu")
                .delete(&SecretName::new(n).unwrap())
                .await
                .unwrap();
        }
        let (refreshed, errors) = r.client.refresh_all().await;
        assert_eq!(refreshed, 1);
        assert_eq!(errors.len(), 2);
        assert!(errors.iter().all(|(_, e)| e.is_not_found()));
    })
    .unwrap();
}

/// Item 9: when the active secondary tripped, the route jumped to a primary that had passed one
/// of its three required probes, inside the dwell, while a healthy third region was there.
#[test]
fn moving_off_a_failed_secondary_goes_to_a_trusted_vault() {
    run_virtual(async {
        let r = rig(3, |b| b);
        for i in 0..20 {
            r.seed_all(&format!("s{i}"), "v");
        }
        let mut n = 0;
        let mut read = || {
            n += 1;
            format!("s{}", n % 20)
        };
        r.store("weu").set_fault(Some(Fault::Refuse));
        for _ in 0..3 {
            r.client.refresh_now(&read()).await.unwrap();
        }
        assert_eq!(r.client.active_region().as_deref(), Some("neu"));
        r.store("weu").set_fault(None);
        advance(6 * S).await; // past weu's open interval
        r.client.get_secret(&read()).await.unwrap(); // nudges one trial probe of weu
        tokio::task::yield_now().await;
        advance(S / 10).await;
        assert_eq!(
            r.breaker("weu"),
            BreakerState::Closed,
            "one good trial closed it"
        );
        assert_eq!(r.client.health().regions()[0].probe_streak(), 1);
        r.store("neu").set_fault(Some(Fault::Refuse));
        for _ in 0..3 {
            r.client.refresh_now(&read()).await.unwrap();
        }
        assert_ne!(r.breaker("neu"), BreakerState::Closed);
        assert_eq!(
            r.client.active_region().as_deref(),
            Some("swc"),
            "not back to weu after one probe of three"
        );
    })
    .unwrap();
}

/// Item 16: a write went to the primary 10 ms after a 429 asked for 5 s, and a 429 on a write
/// started no wait. Writes also keep to a client-side write budget.
#[test]
fn writes_respect_retry_after_and_the_write_budget() {
    run_virtual(async {
        let r = rig(2, |b| b.vault_write_limit(10).vault_budget_fraction(0.5));
        r.store("weu")
            .script([Some(Fault::Throttle(Duration::from_secs(5)))]);
        let e = r
            .client
            .set_secret("a", "1".to_string().into())
            .await
            .unwrap_err();
        assert!(e.is_throttled() || e.status() == Some(429), "{e}");
        let writes = r.store("weu").writes();
        advance(Duration::from_millis(10)).await;
        let e = r
            .client
            .set_secret("a", "2".to_string().into())
            .await
            .unwrap_err();
        assert!(
            e.is_throttled() && e.to_string().contains("Nothing was sent"),
            "{e}"
        );
        assert_eq!(
            r.store("weu").writes(),
            writes,
            "not sent inside the Retry-After"
        );
        advance(5 * S).await;
        // 10 per 10 s, half of it ours: 5 writes, then refused without sending.
        let mut ok = 0;
        for i in 0..8 {
            match r.client.set_secret("a", format!("v{i}").into()).await {
                Ok(_) => ok += 1,
                Err(e) => assert!(e.is_throttled(), "{e}"),
            }
        }
        assert_eq!(ok, 4, "the first write of the window was the 429");
        assert_eq!(r.store("weu").writes(), writes + 4);
    })
    .unwrap();
}

/// Item 18: a stale value says why it is stale; `status()` of an unavailable error says what
/// the vaults answered; a write that timed out says its outcome is unknown.
#[test]
fn errors_and_stale_values_explain_themselves() {
    run_virtual(async {
        let r = rig(2, |b| b);
        r.seed_all("db", "v");
        r.client.get_secret("db").await.unwrap();
        r.fault_all(Some(Fault::ServerError(503)));
        advance(2 * S).await;
        let s = r.client.get_secret("db").await.unwrap();
        assert!(s.is_stale());
        let cause = s.stale_cause().expect("a stale value has a cause");
        assert!(cause.is_unavailable());
        assert_eq!(cause.status(), Some(503));
        let regions: Vec<&str> = cause.attempts().iter().map(|a| a.region()).collect();
        assert!(
            regions.contains(&"weu") && regions.contains(&"neu"),
            "{regions:?}"
        );
        let e = r.client.get_secret("nothing-cached").await.unwrap_err();
        assert_eq!(e.status(), Some(503), "{e}");
    })
    .unwrap();
    run_virtual(async {
        let r = rig(2, |b| b);
        r.store("weu").script([Some(Fault::Hang)]);
        let e = r
            .client
            .set_secret("db", "new".to_string().into())
            .await
            .unwrap_err();
        assert!(e.is_timeout() && e.is_outcome_unknown(), "{e}");
        assert!(e.to_string().contains("may or may not"), "{e}");
        r.store("weu").script([Some(Fault::Refuse)]);
        let e = r
            .client
            .set_secret("db", "new".to_string().into())
            .await
            .unwrap_err();
        assert!(
            !e.is_outcome_unknown(),
            "a refused connection sent nothing: {e}"
        );
    })
    .unwrap();
}

/// Item 12: the refresher outlived the client (80 vault calls in the 10 s after the last clone
/// was dropped): a refresh batch held the client alive, and the next batch was always due.
#[test]
fn dropping_the_client_stops_all_vault_traffic() {
    run_virtual(async {
        let r = rig_with(2, |b| b.refresh_interval(Duration::from_secs(1)));
        for s in &r.stores {
            s.set_latency(keyvault_failover::store::Latency::Fixed(
                Duration::from_millis(100),
            ));
        }
        for i in 0..100 {
            r.seed_all(&format!("s{i}"), "v");
        }
        for i in 0..100 {
            r.client.get_secret(&format!("s{i}")).await.unwrap();
        }
        // Keep reading so that everything stays in the working set, then let refreshes run.
        for _ in 0..5 {
            advance(S).await;
            for i in 0..100 {
                let _ = r.client.get_secret(&format!("s{i}")).await;
            }
        }
        let stores = r.stores.clone();
        let calls = || stores.iter().map(|s| s.gets() + s.lists()).sum::<u64>();
        drop(r);
        // Whatever was in flight at the drop is cancelled at once; allow it to count.
        tokio::task::yield_now().await;
        let before = calls();
        advance(10 * S).await;
        assert_eq!(
            calls(),
            before,
            "vault calls after the last clone was dropped"
        );
    })
    .unwrap();
}

/// Item 7: a caller that joined a background refresh got background semantics (no hedge):
/// 2 s instead of about 150 ms with a blackholed primary.
#[test]
fn a_caller_joining_a_background_refresh_gets_a_hedged_read() {
    run_virtual(async {
        let r = rig_with(2, |b| {
            b.refresh_interval(Duration::from_secs(1))
                .attempt_timeout(Duration::from_secs(2))
        });
        r.seed_all("db", "v");
        r.client.get_secret("db").await.unwrap();
        r.store("weu").set_fault(Some(Fault::Hang));
        // The refresh starts between 0.5 s and 1 s and hangs on weu for up to 2 s.
        advance(Duration::from_millis(1050)).await;
        let gets = r.store("weu").gets();
        assert_eq!(gets, 2, "the background refresh is waiting on weu");
        let t0 = tokio::time::Instant::now();
        let s = r.client.get_secret("db").await.unwrap();
        let waited = t0.elapsed();
        assert_eq!(s.region(), "neu");
        assert!(waited < Duration::from_millis(300), "waited {waited:?}");
    })
    .unwrap();
}

/// A store that reads its answer at once and delivers it after a one-shot delay: a read that
/// was answered before a write and arrives after it.
struct LateAnswer {
    inner: Arc<MemoryStore>,
    delay_next_get: std::sync::Mutex<Option<Duration>>,
    /// Apply the next write, then never answer it (its outcome is unknown to the client).
    lose_next_write_answer: AtomicU32,
}

#[async_trait]
impl SecretStore for LateAnswer {
    async fn get(&self, n: &SecretName, v: Option<&str>) -> Result<StoredSecret, StoreError> {
        let answer = self.inner.get(n, v).await;
        let delay = self.delay_next_get.lock().unwrap().take();
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        answer
    }
    async fn set(&self, n: &SecretName, v: &SecretString) -> Result<String, StoreError> {
        let r = self.inner.set(n, v).await;
        if self.lose_next_write_answer.swap(0, Ordering::SeqCst) == 1 {
            std::future::pending::<()>().await;
        }
        r
    }
    async fn delete(&self, n: &SecretName) -> Result<(), StoreError> {
        self.inner.delete(n).await
    }
    async fn list(&self) -> Result<Vec<SecretProperties>, StoreError> {
        self.inner.list().await
    }
}

/// Item 8, a write whose outcome is unknown: it was applied, its answer never came (timeout).
/// A read that began before it must not be cached either.
#[test]
fn a_read_racing_a_timed_out_write_is_not_cached() {
    run_virtual(async {
        let weu = Arc::new(MemoryStore::new("weu"));
        weu.insert("db", "v1");
        let store = Arc::new(LateAnswer {
            inner: weu.clone(),
            delay_next_get: std::sync::Mutex::new(Some(Duration::from_millis(800))),
            lose_next_write_answer: AtomicU32::new(1),
        });
        let config = Config::builder()
            .seed(0x6b76_6661_696c)
            .region("weu", "https://app-weu.vault.azure.net", Access::ReadWrite)
            .probing(false)
            .background_refresh(false)
            .hedging(false)
            .attempt_timeout(Duration::from_millis(500))
            .deadline(Duration::from_secs(2))
            .refresh_interval(Duration::from_secs(60))
            .build()
            .unwrap();
        let client = FailoverClient::builder(config)
            .store("weu", store.clone())
            .build()
            .unwrap();
        let c = client.clone();
        let early = tokio::spawn(async move { c.get_secret("db").await });
        advance(Duration::from_millis(10)).await;
        let e = client
            .set_secret("db", "v2".to_string().into())
            .await
            .unwrap_err();
        assert!(e.is_outcome_unknown(), "{e}");
        let _ = early.await.unwrap();
        assert!(
            client.get_cached("db").is_none(),
            "the value read before the write is not cached"
        );
        assert_eq!(client.get_secret("db").await.unwrap().expose(), "v2");
    })
    .unwrap();
}

/// Item 8: a read that started before `set_secret` and landed after it put the old value in
/// the cache as fresh, and a read begun after the write joined the old read's flight.
#[test]
fn read_your_writes_survives_a_late_read() {
    run_virtual(async {
        let weu = Arc::new(MemoryStore::new("weu"));
        weu.insert("db", "v1");
        let store = Arc::new(LateAnswer {
            inner: weu.clone(),
            delay_next_get: std::sync::Mutex::new(None),
            lose_next_write_answer: AtomicU32::new(0),
        });
        let config = Config::builder()
            .seed(0x6b76_6661_696c)
            .region("weu", "https://app-weu.vault.azure.net", Access::ReadWrite)
            .probing(false)
            .background_refresh(false)
            .hedging(false)
            .refresh_interval(Duration::from_secs(60))
            .build()
            .unwrap();
        let client = FailoverClient::builder(config)
            .store("weu", store.clone())
            .build()
            .unwrap();
        *store.delay_next_get.lock().unwrap() = Some(Duration::from_millis(300));
        let c = client.clone();
        let early = tokio::spawn(async move { c.get_secret("db").await });
        advance(Duration::from_millis(10)).await;
        client
            .set_secret("db", "v2".to_string().into())
            .await
            .unwrap();
        let after = client.get_secret("db").await.unwrap();
        assert_eq!(after.expose(), "v2", "a read begun after the write sees it");
        let early = early.await.unwrap().unwrap();
        assert_eq!(
            early.expose(),
            "v1",
            "the early read got what the vault said then"
        );
        assert_eq!(client.get_secret("db").await.unwrap().expose(), "v2");
        // The same for a delete: the late answer is not cached.
        *store.delay_next_get.lock().unwrap() = Some(Duration::from_millis(300));
        let c = client.clone();
        let early = tokio::spawn(async move { c.refresh_now("db").await });
        advance(Duration::from_millis(10)).await;
        client.delete_secret("db").await.unwrap();
        let _ = early.await.unwrap();
        assert!(
            client.get_cached("db").is_none(),
            "a deleted secret is not cached again"
        );
        assert!(client.get_secret("db").await.unwrap_err().is_not_found());
    })
    .unwrap();
}

/// Item 11: pinned versions were re-fetched although versions never change, and never evicted
/// (held 3 h past a 60 s cap); the drift map was never pruned.
#[test]
fn pinned_versions_and_drift_records_are_bounded() {
    run_virtual(async {
        let r = rig_with(2, |b| {
            b.refresh_interval(Duration::from_secs(1))
                .refresh_idle_after(Duration::from_secs(10))
                .staleness_cap(Duration::from_secs(60))
                .drift_sample(1.0)
        });
        let v1 = r.store("weu").insert("pinned", "p1");
        r.store("weu").insert("db", "left");
        r.store("neu").insert("db", "right");
        r.client.get_secret_version("pinned", &v1).await.unwrap();
        advance(5 * S).await;
        let gets = r.store("weu").gets();
        let s = r.client.get_secret_version("pinned", &v1).await.unwrap();
        assert!(!s.is_stale());
        assert_eq!(
            r.store("weu").gets(),
            gets,
            "a held version is not asked again"
        );
        r.client.get_secret("db").await.unwrap();
        advance(3 * S).await;
        assert!(
            r.client.health().drift().contains_key("db"),
            "the refresh found the vaults differ"
        );
        advance(300 * S).await;
        let h = r.client.health();
        assert_eq!(h.cached_secrets(), 0, "nothing read for 5 minutes is held");
        assert!(h.drift().is_empty(), "drift records go with their secrets");
    })
    .unwrap();
}

/// Item 5: the whole multi-page listing ran under one attempt timeout, and the timeout counted
/// against the breaker: listing a large vault opened healthy breakers.
#[test]
fn a_slow_listing_succeeds_and_opens_no_breaker() {
    run_virtual(async {
        let r = rig(2, |b| b.list_timeout(Duration::from_secs(60)));
        r.seed_all("db", "v");
        for _ in 0..4 {
            // 3 s for the listing (many pages), against a 500 ms attempt timeout.
            r.store("weu").script([Some(Fault::Delay(3 * S))]);
            let l = r
                .client
                .list_secret_properties()
                .await
                .expect("a slow listing is a listing");
            assert_eq!(l.len(), 1);
        }
        assert_eq!(r.breaker("weu"), BreakerState::Closed);
        // A listing that runs out of its own limit fails, still without blaming the vault.
        r.store("weu").script([Some(Fault::Hang)]);
        r.store("neu").script([Some(Fault::Hang)]);
        let e = r.client.list_secret_properties().await.unwrap_err();
        assert!(e.is_timeout(), "{e}");
        assert_eq!(r.breaker("weu"), BreakerState::Closed);
        assert_eq!(r.client.get_secret("db").await.unwrap().region(), "weu");
    })
    .unwrap();
}
