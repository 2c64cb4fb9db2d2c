//! Metrics through the OpenTelemetry API (feature `otel`): a meter named `keyvault-failover`
//! from the global meter provider, taken when the client is built.
//!
//! Without a meter provider installed the instruments are OpenTelemetry's no-ops; without the
//! feature every method here is empty. Nothing is recorded on a cache hit: instruments are fed
//! by vault calls, events and the refresher. Attributes are regions, hosts and outcomes, never a
//! secret's name or value.
//!
//! | instrument | kind, unit | attributes |
//! |---|---|---|
//! | `http.client.request.duration` | histogram, s | `server.address`, `http.request.method`, `http.response.status_code`, `error.type`, `keyvault_failover.region` |
//! | `keyvault_failover.route.changes` | counter | `keyvault_failover.region` (the new active region, `none` for cache only), `keyvault_failover.mode` |
//! | `keyvault_failover.breaker.transitions` | counter | `keyvault_failover.region`, `keyvault_failover.breaker.state` |
//! | `keyvault_failover.breaker.state` | gauge (0 closed, 1 half-open, 2 open) | `keyvault_failover.region` |
//! | `keyvault_failover.stale.serves` | counter | |
//! | `keyvault_failover.stale.age` | histogram, s | |
//! | `keyvault_failover.throttled.time` | counter, s (the `Retry-After` obeyed) | `keyvault_failover.region` |
//! | `keyvault_failover.hedges` | counter | `keyvault_failover.region`, `keyvault_failover.outcome` (`sent`, `won`) |
//! | `keyvault_failover.retry_budget.refusals` | counter | |
//! | `keyvault_failover.cache.size` | gauge | |
//! | `keyvault_failover.refresh.lag` | histogram, s (how late a due refresh started) | |
//! | `keyvault_failover.refresh.failures` | counter | |
//! | `keyvault_failover.events` | counter (change hints received) | `keyvault_failover.outcome` (`scheduled`, `already-scheduled`, `not-held`, `same-version`, `foreign-vault`, `invalid`, `no-runtime`, and for deliveries `other-type`, `malformed`) |
//! | `keyvault_failover.events.delay` | histogram, s (from the event's time to the refreshed value) | |

/// The method of a vault call, for `http.request.method`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Method {
    Get,
    Put,
    Delete,
}

#[cfg(feature = "otel")]
mod imp {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use opentelemetry::metrics::{Counter, Histogram, ObservableGauge};
    use opentelemetry::KeyValue;

    use super::Method;
    use crate::error::StoreError;
    use keyvault_failover_core::BreakerState;
    use keyvault_failover_core::Event;

    const REGION: &str = "keyvault_failover.region";

    /// The client's instruments.
    pub(crate) struct Metrics {
        /// Per vault index: (region, host).
        vaults: Vec<(Arc<str>, String)>,
        request_duration: Histogram<f64>,
        route_changes: Counter<u64>,
        breaker_transitions: Counter<u64>,
        stale_serves: Counter<u64>,
        stale_age: Histogram<f64>,
        throttled_time: Counter<f64>,
        hedges: Counter<u64>,
        budget_refusals: Counter<u64>,
        refresh_lag: Histogram<f64>,
        refresh_failures: Counter<u64>,
        events: Counter<u64>,
        events_delay: Histogram<f64>,
        /// Observable gauges live as long as their handles.
        gauges: Mutex<Vec<ObservableGauge<i64>>>,
    }

    impl Metrics {
        pub(crate) fn new(vaults: Vec<(Arc<str>, String)>) -> Self {
            let m = opentelemetry::global::meter("keyvault-failover");
            Metrics {
                vaults,
                request_duration: m
                    .f64_histogram("http.client.request.duration")
                    .with_unit("s")
                    .with_description("Duration of HTTP client requests to a vault.")
                    .with_boundaries(vec![
                        0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                        10.0,
                    ])
                    .build(),
                route_changes: m
                    .u64_counter("keyvault_failover.route.changes")
                    .with_description("Changes of the active vault or mode.")
                    .build(),
                breaker_transitions: m
                    .u64_counter("keyvault_failover.breaker.transitions")
                    .with_description("Circuit breaker state changes.")
                    .build(),
                stale_serves: m
                    .u64_counter("keyvault_failover.stale.serves")
                    .with_description("Reads answered from last-known-good values.")
                    .build(),
                stale_age: m
                    .f64_histogram("keyvault_failover.stale.age")
                    .with_unit("s")
                    .with_description("Age of the last-known-good values served.")
                    .build(),
                throttled_time: m
                    .f64_counter("keyvault_failover.throttled.time")
                    .with_unit("s")
                    .with_description("Time vaults asked this client to wait (Retry-After).")
                    .build(),
                hedges: m
                    .u64_counter("keyvault_failover.hedges")
                    .with_description("Hedged reads sent, and those that answered first.")
                    .build(),
                budget_refusals: m
                    .u64_counter("keyvault_failover.retry_budget.refusals")
                    .with_description("Retries and hedges the retry budget refused.")
                    .build(),
                refresh_lag: m
                    .f64_histogram("keyvault_failover.refresh.lag")
                    .with_unit("s")
                    .with_description("How late a due background refresh started.")
                    .build(),
                refresh_failures: m
                    .u64_counter("keyvault_failover.refresh.failures")
                    .with_description("Background refreshes that failed (the value is kept).")
                    .build(),
                events: m
                    .u64_counter("keyvault_failover.events")
                    .with_description("Change hints received, by what they came to.")
                    .build(),
                events_delay: m
                    .f64_histogram("keyvault_failover.events.delay")
                    .with_unit("s")
                    .with_description("From a change event's time to the refreshed value.")
                    .build(),
                gauges: Mutex::new(Vec::new()),
            }
        }

        /// Registers the gauges, fed by closures the engine gives: each region's breaker
        /// state, and how many values are held (`None` once the client is gone).
        pub(crate) fn observe(
            &self,
            breakers: impl Fn() -> Vec<(Arc<str>, BreakerState)> + Send + Sync + 'static,
            held: impl Fn() -> Option<usize> + Send + Sync + 'static,
        ) {
            let m = opentelemetry::global::meter("keyvault-failover");
            let breaker = m
                .i64_observable_gauge("keyvault_failover.breaker.state")
                .with_description("Circuit breaker state: 0 closed, 1 half-open, 2 open.")
                .with_callback(move |o| {
                    for (region, state) in breakers() {
                        let s = match state {
                            BreakerState::Closed => 0,
                            BreakerState::HalfOpen => 1,
                            BreakerState::Open => 2,
                        };
                        o.observe(s, &[KeyValue::new(REGION, region.to_string())]);
                    }
                })
                .build();
            let cache = m
                .i64_observable_gauge("keyvault_failover.cache.size")
                .with_description("Secrets and versions held as last-known-good.")
                .with_callback(move |o| {
                    if let Some(n) = held() {
                        o.observe(n as i64, &[]);
                    }
                })
                .build();
            crate::lock(&self.gauges).extend([breaker, cache]);
        }

        pub(crate) fn request(
            &self,
            vault: usize,
            method: Method,
            elapsed: Duration,
            res: Result<(), &StoreError>,
        ) {
            let Some((region, host)) = self.vaults.get(vault) else {
                return;
            };
            let method = match method {
                Method::Get => "GET",
                Method::Put => "PUT",
                Method::Delete => "DELETE",
            };
            let mut attrs = vec![
                KeyValue::new("server.address", host.clone()),
                KeyValue::new("http.request.method", method),
                KeyValue::new(REGION, region.to_string()),
            ];
            match res {
                Ok(()) => attrs.push(KeyValue::new("http.response.status_code", 200)),
                Err(e) => match e.kind().status() {
                    Some(status) => {
                        attrs.push(KeyValue::new(
                            "http.response.status_code",
                            i64::from(status),
                        ));
                        attrs.push(KeyValue::new("error.type", status.to_string()));
                    }
                    None => attrs.push(KeyValue::new("error.type", e.kind().label())),
                },
            }
            self.request_duration.record(elapsed.as_secs_f64(), &attrs);
        }

        pub(crate) fn event(&self, e: &Event) {
            match e {
                Event::RouteChanged { to, mode, .. } => self.route_changes.add(
                    1,
                    &[
                        KeyValue::new(REGION, to.as_deref().unwrap_or("none").to_string()),
                        KeyValue::new("keyvault_failover.mode", format!("{mode:?}")),
                    ],
                ),
                Event::Breaker { region, state } => self.breaker_transitions.add(
                    1,
                    &[
                        KeyValue::new(REGION, region.to_string()),
                        KeyValue::new("keyvault_failover.breaker.state", format!("{state:?}")),
                    ],
                ),
                Event::Throttled {
                    region,
                    retry_after,
                } => self.throttled_time.add(
                    retry_after.as_secs_f64(),
                    &[KeyValue::new(REGION, region.to_string())],
                ),
                Event::StaleServed { age, .. } => {
                    self.stale_serves.add(1, &[]);
                    self.stale_age.record(age.as_secs_f64(), &[]);
                }
                Event::RefreshFailed { .. } => self.refresh_failures.add(1, &[]),
                _ => {}
            }
        }

        pub(crate) fn hedge(&self, vault: usize, won: bool) {
            if let Some((region, _)) = self.vaults.get(vault) {
                self.hedges.add(
                    1,
                    &[
                        KeyValue::new(REGION, region.to_string()),
                        KeyValue::new(
                            "keyvault_failover.outcome",
                            if won { "won" } else { "sent" },
                        ),
                    ],
                );
            }
        }

        pub(crate) fn budget_refused(&self) {
            self.budget_refusals.add(1, &[]);
        }

        pub(crate) fn refresh_lag(&self, lag: Duration) {
            self.refresh_lag.record(lag.as_secs_f64(), &[]);
        }

        pub(crate) fn notified(&self, outcome: &'static str) {
            self.events
                .add(1, &[KeyValue::new("keyvault_failover.outcome", outcome)]);
        }

        pub(crate) fn notify_delay(&self, d: Duration) {
            self.events_delay.record(d.as_secs_f64(), &[]);
        }
    }
}

#[cfg(feature = "otel")]
pub(crate) use imp::Metrics;

/// Without the `otel` feature: nothing recorded, nothing compiled in.
#[cfg(not(feature = "otel"))]
pub(crate) struct Metrics;

#[cfg(not(feature = "otel"))]
use {crate::error::StoreError, keyvault_failover_core::Event, std::time::Duration};

#[cfg(not(feature = "otel"))]
impl Metrics {
    pub(crate) fn new(_vaults: Vec<(std::sync::Arc<str>, String)>) -> Self {
        Metrics
    }
    pub(crate) fn observe(
        &self,
        _breakers: impl Fn() -> Vec<(std::sync::Arc<str>, keyvault_failover_core::BreakerState)>
            + Send
            + Sync
            + 'static,
        _held: impl Fn() -> Option<usize> + Send + Sync + 'static,
    ) {
    }
    pub(crate) fn request(
        &self,
        _vault: usize,
        _method: Method,
        _elapsed: Duration,
        _res: Result<(), &StoreError>,
    ) {
    }
    pub(crate) fn event(&self, _e: &Event) {}
    pub(crate) fn hedge(&self, _vault: usize, _won: bool) {}
    pub(crate) fn budget_refused(&self) {}
    pub(crate) fn refresh_lag(&self, _lag: Duration) {}
    pub(crate) fn notified(&self, _outcome: &'static str) {}
    pub(crate) fn notify_delay(&self, _d: Duration) {}
}
