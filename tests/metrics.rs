//! OpenTelemetry metrics (issue 11), read through the SDK's in-memory exporter after a failover.
//! One test in this binary: it installs the process-wide meter provider.

mod common;

use std::time::Duration;

use common::{advance, rig_with};
use keyvault_failover::run_virtual;
use keyvault_failover::store::Fault;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};

/// (instrument, attributes, value: a sum's or gauge's value, a histogram's count).
type Point = (String, Vec<(String, String)>, f64);

fn points(rms: &[ResourceMetrics]) -> Vec<Point> {
    fn attrs<'a>(it: impl Iterator<Item = &'a opentelemetry::KeyValue>) -> Vec<(String, String)> {
        it.map(|kv| (kv.key.to_string(), kv.value.to_string()))
            .collect()
    }
    macro_rules! flatten {
        ($out:ident, $name:ident, $data:expr) => {
            match $data {
                MetricData::Sum(s) => {
                    for p in s.data_points() {
                        $out.push(($name.clone(), attrs(p.attributes()), p.value() as f64));
                    }
                }
                MetricData::Gauge(g) => {
                    for p in g.data_points() {
                        $out.push(($name.clone(), attrs(p.attributes()), p.value() as f64));
                    }
                }
                MetricData::Histogram(h) => {
                    for p in h.data_points() {
                        $out.push(($name.clone(), attrs(p.attributes()), p.count() as f64));
                    }
                }
                MetricData::ExponentialHistogram(_) => {}
            }
        };
    }
    let mut out = Vec::new();
    for rm in rms {
        for sm in rm.scope_metrics() {
            for m in sm.metrics() {
                let name = m.name().to_string();
                match m.data() {
                    AggregatedMetrics::F64(d) => flatten!(out, name, d),
                    AggregatedMetrics::U64(d) => flatten!(out, name, d),
                    AggregatedMetrics::I64(d) => flatten!(out, name, d),
                }
            }
        }
    }
    out
}

fn has(p: &Point, k: &str, v: &str) -> bool {
    p.1.iter().any(|(a, b)| a == k && b == v)
}

#[test]
fn a_failover_shows_in_the_metrics_and_no_secret_name_does() {
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    opentelemetry::global::set_meter_provider(provider.clone());
    run_virtual(async {
        let r = rig_with(2, |b| b.wait_for_recovery(false));
        r.seed_all("payments-db-password", "v1");
        r.client.get_secret("payments-db-password").await.unwrap();
        r.store("weu").set_fault(Some(Fault::Refuse));
        for _ in 0..20 {
            let _ = r.client.refresh_now("payments-db-password").await;
            advance(Duration::from_secs(1)).await;
        }
        assert_eq!(r.client.active_region().as_deref(), Some("neu"));
        provider.force_flush().unwrap();
        let pts = points(&exporter.get_finished_metrics().unwrap());
        let named = |n: &'static str| pts.iter().filter(move |p| p.0 == n);

        // Requests: by host, with the error type of the refused ones.
        let weu_host = "app-weu.vault.azure.net";
        assert!(
            named("http.client.request.duration")
                .any(|p| has(p, "server.address", weu_host) && has(p, "error.type", "connect")),
            "{pts:?}"
        );
        assert!(named("http.client.request.duration").any(|p| has(
            p,
            "server.address",
            "app-neu.vault.azure.net"
        ) && has(
            p,
            "http.response.status_code",
            "200"
        )));
        // The route moved to neu; weu's breaker opened and its gauge says so.
        assert!(named("keyvault_failover.route.changes").any(|p| has(
            p,
            "keyvault_failover.region",
            "neu"
        ) && p.2 >= 1.0));
        assert!(named("keyvault_failover.breaker.transitions").any(|p| has(
            p,
            "keyvault_failover.region",
            "weu"
        ) && has(
            p,
            "keyvault_failover.breaker.state",
            "Open"
        )));
        let weu_state = named("keyvault_failover.breaker.state")
            .find(|p| has(p, "keyvault_failover.region", "weu"))
            .expect("a breaker gauge per region");
        assert_ne!(weu_state.2, 0.0, "weu's breaker is not closed");
        assert!(named("keyvault_failover.cache.size").any(|p| p.2 >= 1.0));

        // Change hints (issue 22): by outcome, and the delay from the event's time.
        r.client.notify_changed("not-held-anywhere", None);
        let body = br#"[{"eventType":"Microsoft.KeyVault.SecretNewVersionCreated","eventTime":"2026-01-01T00:00:00Z","data":{"VaultName":"app-neu","ObjectType":"Secret","ObjectName":"payments-db-password","Version":"abc"}},{"eventType":"Microsoft.KeyVault.KeyNewVersionCreated","data":{}}]"#;
        assert_eq!(r.client.notify_events(body).unwrap().scheduled(), 1);
        advance(Duration::from_secs(31)).await;
        provider.force_flush().unwrap();
        let pts = points(&exporter.get_finished_metrics().unwrap());
        let named = |n: &'static str| pts.iter().filter(move |p| p.0 == n);
        for outcome in ["scheduled", "not-held", "other-type"] {
            assert!(
                named("keyvault_failover.events")
                    .any(|p| has(p, "keyvault_failover.outcome", outcome) && p.2 >= 1.0),
                "{outcome}: {pts:?}"
            );
        }
        assert!(
            named("keyvault_failover.events.delay").any(|p| p.2 >= 1.0),
            "{pts:?}"
        );

        // The replicator (issue 21): passes by outcome, changes by secondary, the lag copied.
        use keyvault_failover::replicate::Replicator;
        let (from, to) = (
            std::sync::Arc::new(keyvault_failover::store::MemoryStore::new("weu")),
            std::sync::Arc::new(keyvault_failover::store::MemoryStore::new("neu")),
        );
        from.insert("payments-db-password", "v1");
        let rep = Replicator::builder()
            .primary("weu", from)
            .secondary("neu", to)
            .build()
            .unwrap();
        let plan = rep.plan().await.unwrap();
        assert!(rep.run(&plan, &|_, _| {}).await.in_step());
        provider.force_flush().unwrap();
        let pts = points(&exporter.get_finished_metrics().unwrap());
        let named = |n: &'static str| pts.iter().filter(move |p| p.0 == n);
        assert!(
            named("keyvault_failover.replicate.passes")
                .any(|p| has(p, "keyvault_failover.outcome", "in-step") && p.2 >= 1.0),
            "{pts:?}"
        );
        assert!(named("keyvault_failover.replicate.changes").any(|p| has(
            p,
            "keyvault_failover.region",
            "neu"
        ) && has(
            p,
            "keyvault_failover.outcome",
            "copied"
        ) && p.2 >= 1.0));
        assert!(named("keyvault_failover.replicate.lag").any(|p| p.2 >= 1.0));
        // Labels are regions, hosts and outcomes: never a secret's name.
        let all = format!("{pts:?}");
        assert!(!all.contains("payments-db-password"), "{all}");
    })
    .unwrap();
}
