//! `GET /metrics`: the client's OpenTelemetry instruments in Prometheus text format.
//!
//! An OpenTelemetry SDK push exporter that renders each export (cumulative) to Prometheus text
//! and keeps the latest; a scrape flushes the provider first, so it sees what happened up to
//! it. Names follow the OpenTelemetry-to-Prometheus rules: dots become underscores, counters
//! end in `_total`, units in seconds add `_seconds`, histograms give `_bucket{le}`, `_sum` and
//! `_count`. Attributes become labels; they are regions, hosts and outcomes, never a secret's
//! name or value.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::{
    AggregatedMetrics, HistogramDataPoint, MetricData, ResourceMetrics,
};
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};

/// Backs `GET /metrics`: install [`provider`](Self::provider) as the global meter provider
/// before the client is built, and hand the reader to the agent.
#[derive(Clone)]
pub struct PrometheusReader {
    latest: Arc<Mutex<String>>,
    provider: SdkMeterProvider,
}

impl std::fmt::Debug for PrometheusReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrometheusReader")
    }
}

struct Exporter {
    latest: Arc<Mutex<String>>,
}

impl PushMetricExporter for Exporter {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let text = render(metrics);
        *crate::lock(&self.latest) = text;
        Ok(())
    }
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }
    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
    fn temporality(&self) -> Temporality {
        Temporality::Cumulative
    }
}

impl PrometheusReader {
    /// A meter provider whose reader renders Prometheus text (collected every 15 s and at
    /// each scrape).
    pub fn new() -> Self {
        let latest = Arc::new(Mutex::new(String::new()));
        let reader = PeriodicReader::builder(Exporter {
            latest: latest.clone(),
        })
        .with_interval(Duration::from_secs(15))
        .build();
        let provider = SdkMeterProvider::builder().with_reader(reader).build();
        PrometheusReader { latest, provider }
    }

    /// The provider to install (`opentelemetry::global::set_meter_provider`).
    pub fn provider(&self) -> SdkMeterProvider {
        self.provider.clone()
    }

    /// The latest rendering, after a flush (the flush waits on the reader's own thread; from
    /// async code, call this in `spawn_blocking`).
    pub fn render(&self) -> String {
        let _ = self.provider.force_flush();
        crate::lock(&self.latest).clone()
    }
}

impl Default for PrometheusReader {
    fn default() -> Self {
        Self::new()
    }
}

/// A Prometheus metric or label name: `[a-zA-Z0-9_:]`, nothing else.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn labels(attrs: &mut dyn Iterator<Item = &KeyValue>, extra: Option<(&str, String)>) -> String {
    let mut parts: Vec<String> = attrs
        .map(|kv| {
            let v = kv.value.as_str();
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{}=\"{v}\"", sanitize(kv.key.as_str()))
        })
        .collect();
    parts.sort();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

trait Num: Copy {
    fn f(self) -> f64;
}
impl Num for f64 {
    fn f(self) -> f64 {
        self
    }
}
impl Num for u64 {
    fn f(self) -> f64 {
        self as f64
    }
}
impl Num for i64 {
    fn f(self) -> f64 {
        self as f64
    }
}

fn histogram<T: Num>(out: &mut String, name: &str, p: &HistogramDataPoint<T>) {
    let mut cumulative = 0u64;
    let bounds: Vec<f64> = p.bounds().collect();
    for (i, count) in p.bucket_counts().enumerate() {
        cumulative += count;
        let le = bounds
            .get(i)
            .map_or_else(|| "+Inf".to_string(), |b| b.to_string());
        let l = labels(&mut p.attributes(), Some(("le", le)));
        let _ = writeln!(out, "{name}_bucket{l} {cumulative}");
    }
    let l = labels(&mut p.attributes(), None);
    let _ = writeln!(out, "{name}_sum{l} {}", p.sum().f());
    let _ = writeln!(out, "{name}_count{l} {}", p.count());
}

fn data<T: Num>(out: &mut String, base: &str, help: &str, d: &MetricData<T>) {
    match d {
        MetricData::Sum(s) => {
            let (name, kind) = if s.is_monotonic() {
                (format!("{base}_total"), "counter")
            } else {
                (base.to_string(), "gauge")
            };
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for p in s.data_points() {
                let l = labels(&mut p.attributes(), None);
                let _ = writeln!(out, "{name}{l} {}", p.value().f());
            }
        }
        MetricData::Gauge(g) => {
            let _ = writeln!(out, "# HELP {base} {help}\n# TYPE {base} gauge");
            for p in g.data_points() {
                let l = labels(&mut p.attributes(), None);
                let _ = writeln!(out, "{base}{l} {}", p.value().f());
            }
        }
        MetricData::Histogram(h) => {
            let _ = writeln!(out, "# HELP {base} {help}\n# TYPE {base} histogram");
            for p in h.data_points() {
                histogram(out, base, p);
            }
        }
        MetricData::ExponentialHistogram(_) => {}
    }
}

/// Prometheus text of one collection.
pub(crate) fn render(rm: &ResourceMetrics) -> String {
    let mut out = String::new();
    for scope in rm.scope_metrics() {
        for m in scope.metrics() {
            let mut base = sanitize(m.name());
            if m.unit() == "s" && !base.ends_with("_seconds") {
                base.push_str("_seconds");
            }
            let help = m.description().replace('\n', " ");
            match m.data() {
                AggregatedMetrics::F64(d) => data(&mut out, &base, &help, d),
                AggregatedMetrics::U64(d) => data(&mut out, &base, &help, d),
                AggregatedMetrics::I64(d) => data(&mut out, &base, &help, d),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_and_labels_are_prometheus_safe() {
        assert_eq!(
            super::sanitize("http.client.request.duration"),
            "http_client_request_duration"
        );
        let kv = [opentelemetry::KeyValue::new(
            "keyvault_failover.region",
            "we\"u",
        )];
        assert_eq!(
            super::labels(&mut kv.iter(), None),
            "{keyvault_failover_region=\"we\\\"u\"}"
        );
    }
}
