//! No secret value in tracing output, `Debug` or `Display`, whatever happens.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{advance, rig};
use keyvault_failover::run_virtual;
use keyvault_failover::store::Fault;
use keyvault_failover::SecretStore;

const VALUE: &str = "TOPSECRET-9f86d081884c7d65";
const WRITTEN: &str = "WRITTEN-SECRET-2c26b46b68ff";

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn tracing_debug_and_display_never_show_a_secret_value() {
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let mut shown: Vec<String> = Vec::new();
    tracing::subscriber::with_default(subscriber, || {
        run_virtual(async {
            let r = rig(3, |b| b.staleness_cap(Duration::from_secs(60)));
            r.seed_all("db", VALUE);
            let s = r.client.get_secret("db").await.unwrap();
            assert_eq!(s.expose(), VALUE);
            shown.push(format!("{s:?} {:?}", s.freshness()));
            let w = r
                .client
                .set_secret("other", WRITTEN.to_string().into())
                .await
                .unwrap();
            shown.push(format!("{w:?}"));
            let name = keyvault_failover::SecretName::new("db").unwrap();
            let stored = r.stores[0].get(&name, None).await.unwrap();
            shown.push(format!("{stored:?}"));
            // Failover, throttling, auth failures, stale serves, refusals, cap errors.
            for fault in [
                Fault::Refuse,
                Fault::Throttle(Duration::from_secs(1)),
                Fault::Malformed,
                Fault::Hang,
            ] {
                r.stores[0].set_fault(Some(fault));
                for _ in 0..4 {
                    advance(Duration::from_secs(2)).await;
                    let s = r.client.get_secret("db").await.unwrap();
                    shown.push(format!("{s:?}"));
                }
                let e = r.client.set_secret("db", VALUE.to_string().into()).await;
                shown.push(format!("{e:?}"));
                if let Err(e) = e {
                    shown.push(e.to_string());
                }
            }
            for st in &r.stores {
                st.set_fault(Some(Fault::Refuse));
            }
            advance(Duration::from_secs(5)).await;
            let s = r.client.get_secret("db").await.unwrap();
            assert!(s.is_stale());
            shown.push(format!("{s:?}"));
            advance(Duration::from_secs(120)).await;
            let e = r.client.get_secret("db").await.unwrap_err();
            shown.push(format!("{e:?} {e}"));
            r.stores[0].set_fault(Some(Fault::Unauthorized));
            let e = r.client.get_secret("db").await.unwrap_err();
            shown.push(format!("{e:?} {e}"));
            shown.push(format!("{:?}", r.client));
            shown.push(format!("{:?}", r.client.health()));
            shown.push(format!("{:?}", r.stores[0]));
            shown.push(serde_json::to_string(&r.client.health()).unwrap());
        })
        .unwrap();
    });
    let logs = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("route changed"),
        "the capture saw the client's events:\n{logs}"
    );
    assert!(logs.contains("serving last-known-good"), "{logs}");
    for secret in [VALUE, WRITTEN] {
        assert!(!logs.contains(secret), "a secret value reached the logs");
        for s in &shown {
            assert!(
                !s.contains(secret),
                "a secret value reached Debug/Display: {s}"
            );
        }
    }
}
