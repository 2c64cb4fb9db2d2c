//! The replicator's instruments (feature `otel`; no-ops without it): on the meter
//! `keyvault-failover` of the global provider, taken when the replicator is built. Attributes
//! are regions and outcomes, never a secret's name.
//!
//! | instrument | kind, unit | attributes |
//! |---|---|---|
//! | `keyvault_failover.replicate.passes` | counter | `keyvault_failover.outcome` (`in-step`, `not-in-step`, `failed`: the primary could not be listed) |
//! | `keyvault_failover.replicate.changes` | counter | `keyvault_failover.region` (the secondary), `keyvault_failover.outcome` (`copied`, `updated`, `pruned`, `deferred`, `failed`) |
//! | `keyvault_failover.replicate.lag` | histogram, s (a copied version's age in the primary when copied) | `keyvault_failover.region` |

#[cfg(feature = "otel")]
mod imp {
    use opentelemetry::metrics::{Counter, Histogram};
    use opentelemetry::KeyValue;

    pub(crate) struct ReplicateMetrics {
        passes: Counter<u64>,
        changes: Counter<u64>,
        lag: Histogram<f64>,
    }

    impl ReplicateMetrics {
        pub(crate) fn new() -> Self {
            let m = opentelemetry::global::meter("keyvault-failover");
            ReplicateMetrics {
                passes: m
                    .u64_counter("keyvault_failover.replicate.passes")
                    .with_description("Replicator passes, by outcome")
                    .build(),
                changes: m
                    .u64_counter("keyvault_failover.replicate.changes")
                    .with_description("Changes the replicator made or failed, by secondary")
                    .build(),
                lag: m
                    .f64_histogram("keyvault_failover.replicate.lag")
                    .with_unit("s")
                    .with_description("Age in the primary of each version copied")
                    .build(),
            }
        }
        pub(crate) fn pass(&self, outcome: &'static str) {
            self.passes
                .add(1, &[KeyValue::new("keyvault_failover.outcome", outcome)]);
        }
        pub(crate) fn change(&self, region: &str, outcome: &'static str) {
            self.changes.add(
                1,
                &[
                    KeyValue::new("keyvault_failover.region", region.to_string()),
                    KeyValue::new("keyvault_failover.outcome", outcome),
                ],
            );
        }
        pub(crate) fn lag(&self, region: &str, secs: f64) {
            self.lag.record(
                secs,
                &[KeyValue::new(
                    "keyvault_failover.region",
                    region.to_string(),
                )],
            );
        }
    }
}

#[cfg(not(feature = "otel"))]
mod imp {
    pub(crate) struct ReplicateMetrics;

    impl ReplicateMetrics {
        pub(crate) fn new() -> Self {
            ReplicateMetrics
        }
        pub(crate) fn pass(&self, _outcome: &'static str) {}
        pub(crate) fn change(&self, _region: &str, _outcome: &'static str) {}
        pub(crate) fn lag(&self, _region: &str, _secs: f64) {}
    }
}

pub(crate) use imp::ReplicateMetrics;
