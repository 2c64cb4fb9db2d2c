//! The write path: writes go only to the writable primary while it is the active, healthy
//! vault; otherwise they are refused at once with nothing sent. A write is never retried (each
//! makes a new version), is held to the client's share of the vault's write limit, and marks
//! the name written so that a read begun before it is not cached.

use std::sync::Arc;

use futures::future::BoxFuture;
use secrecy::SecretString;
use tokio::time::Instant;
use tracing::Instrument;

use super::{round_ms, Engine};
use crate::config::Access;
use crate::error::{Attempt, AttemptFailure, Error, Kind, StoreError, StoreErrorKind};
use crate::name::SecretName;
use crate::router::Mode;
use crate::secret::Written;
use crate::store::SecretStore;

impl Engine {
    /// The writable vault, if it is the active, healthy one; else a read-only error.
    fn writable(self: &Arc<Self>, op: &str, name: &SecretName) -> Result<usize, Error> {
        let inner = self;
        let route = inner.router.load();
        match (route.mode(), route.active()) {
            (Mode::ReadWrite, Some(i)) => Ok(i),
            _ => {
                self.nudge_failback();
                let primary = inner
                    .vaults
                    .iter()
                    .find(|v| v.access == Access::ReadWrite)
                    .map_or("none configured".to_string(), |v| {
                        format!("{} (breaker {:?})", v.name, v.breaker.state())
                    });
                let active = route.active().map_or("none", |i| &*inner.vaults[i].name);
                tracing::warn!(op, secret = %name, active, "write refused: client is read-only");
                Err(Error::new(
                    Kind::ReadOnly,
                    format!(
                        "cannot {op} secret `{name}`: the client is read-only (mode {:?}, active \
                         region {active}; writable region {primary}). Nothing was sent.",
                        route.mode()
                    ),
                ))
            }
        }
    }

    async fn write<T>(
        self: &Arc<Self>,
        op: &str,
        name: &SecretName,
        call: impl FnOnce(Arc<dyn SecretStore>) -> BoxFuture<'static, Result<T, StoreError>>,
    ) -> Result<(usize, T), Error> {
        let inner = self;
        let idx = self.writable(op, name)?;
        let v = &inner.vaults[idx];
        let Some(permit) = v.breaker.try_acquire() else {
            return Err(Error::new(
                Kind::ReadOnly,
                format!(
                    "cannot {op} secret `{name}`: region {}'s breaker is not closed. Nothing was sent.",
                    v.name
                ),
            ));
        };
        // The vault asked us to wait (429/503 Retry-After), or this client's share of its
        // write limit is spent: refuse at once, nothing sent.
        let now = crate::clock::now();
        if let Some(until) = v.gate.throttled_until(now) {
            let wait = until.saturating_duration_since(now);
            return Err(Error::with_attempts(
                Kind::Unavailable,
                format!(
                    "cannot {op} secret `{name}`: region {} asked to be left alone for {} more. \
                     Nothing was sent.",
                    v.name,
                    humantime::format_duration(round_ms(wait))
                ),
                vec![Attempt::new(v.name.clone(), AttemptFailure::Throttled)],
                None,
            ));
        }
        if !v.write_gate.try_take(now) {
            return Err(Error::with_attempts(
                Kind::Unavailable,
                format!(
                    "cannot {op} secret `{name}`: this client's share of region {}'s write limit \
                     ({} per {}) is spent. Nothing was sent.",
                    v.name,
                    inner.config.throttle.write_limit,
                    humantime::format_duration(inner.config.throttle.window)
                ),
                vec![Attempt::new(v.name.clone(), AttemptFailure::Throttled)],
                None,
            ));
        }
        let t0 = Instant::now();
        let limit = inner.config.timeouts.attempt;
        let span = tracing::info_span!("kv.write", op, secret = %name, region = %v.name);
        let res = tokio::time::timeout(limit, call(v.store.clone()))
            .instrument(span)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::new(
                    StoreErrorKind::Timeout,
                    format!("no answer within {}ms", limit.as_millis()),
                ))
            });
        v.record_latency(t0.elapsed());
        let method = if op == "delete" {
            crate::metrics::Method::Delete
        } else {
            crate::metrics::Method::Put
        };
        inner
            .metrics
            .request(idx, method, t0.elapsed(), res.as_ref().map(|_| ()));
        inner.settle(idx, permit, crate::engine::calls::outcome_of(&res));
        // Sent: whatever came back (even a timeout, whose outcome is unknown), a read that began
        // before now may hold the old value and must not be cached.
        inner.cache.wrote(name.key());
        res.map(|t| (idx, t)).map_err(|e| {
            tracing::info!(region = %v.name, op, secret = %name, error = %e, "write failed");
            if e.asks_to_wait() {
                inner.throttled(idx, e.retry_after());
            }
            let kind = match e.kind() {
                StoreErrorKind::Auth { .. } => Kind::Auth,
                StoreErrorKind::NotFound => Kind::NotFound,
                StoreErrorKind::Rejected { .. } => Kind::Rejected,
                _ => Kind::Unavailable,
            };
            let unknown = matches!(
                e.kind(),
                StoreErrorKind::Timeout | StoreErrorKind::Reset | StoreErrorKind::Server { .. }
            );
            let err = Error::with_attempts(
                kind,
                format!("cannot {op} secret `{name}`"),
                vec![Attempt::new(
                    v.name.clone(),
                    AttemptFailure::Store(e.clone()),
                )],
                Some(e),
            );
            if unknown {
                err.outcome_unknown()
            } else {
                err
            }
        })
    }

    /// Writes `value` as a new version of `name` to the writable primary; read-your-writes
    /// for a name this client holds.
    pub(crate) async fn set(
        self: &Arc<Self>,
        name: &SecretName,
        value: SecretString,
    ) -> Result<Written, Error> {
        let value = Arc::new(value);
        let sent = value.clone();
        let n = name.clone();
        let (idx, version) = self
            .write("set", name, move |s| {
                Box::pin(async move { s.set(&n, &sent).await })
            })
            .await?;
        let region = self.vaults[idx].name.clone();
        let value = Arc::try_unwrap(value).unwrap_or_else(|a| (*a).clone());
        // Read-your-writes for secrets this client reads; a write-only name is not cached
        // (it would be refreshed and held for nothing).
        if self.cache.get(name.key()).is_some() {
            let entry = self.written_entry(value, version.as_str().into(), region.clone());
            self.cache_insert(name.key(), entry);
        }
        Ok(Written::new(region, version))
    }

    /// Changes the editable properties of `name` in the writable primary.
    pub(crate) async fn update_properties(
        self: &Arc<Self>,
        name: &SecretName,
        version: Option<&str>,
        update: &crate::PropertiesUpdate,
    ) -> Result<(Written, crate::Metadata), Error> {
        let (n, v, u) = (name.clone(), version.map(str::to_string), update.clone());
        let (idx, (version, meta)) = self
            .write("update", name, move |s| {
                Box::pin(async move { s.update_properties(&n, v.as_deref(), &u).await })
            })
            .await?;
        let region = self.vaults[idx].name.clone();
        // Read-your-writes for the properties: a held value of the version changed carries
        // them now (the value itself is unchanged by a PATCH).
        for key in [
            name.key().to_string(),
            crate::cache::key(name.key(), Some(&version)),
        ] {
            if let Some(old) = self.cache.get(&key).filter(|e| *e.version == *version) {
                let entry = self.entry(
                    old.value.clone(),
                    old.version.clone(),
                    region.clone(),
                    false,
                    (old.created, Some(std::sync::Arc::new(meta.clone()))),
                    false,
                );
                self.cache_insert(&key, entry);
            }
        }
        Ok((Written::new(region, version), meta))
    }

    /// Deletes `name` from the writable primary and forgets its cached values.
    pub(crate) async fn delete(self: &Arc<Self>, name: &SecretName) -> Result<(), Error> {
        let n = name.clone();
        self.write("delete", name, move |s| {
            Box::pin(async move { s.delete(&n).await })
        })
        .await?;
        self.forget(name.key());
        Ok(())
    }
}
