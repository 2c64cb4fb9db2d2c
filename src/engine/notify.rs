//! Change hints: a held secret is refreshed soon after an event says it changed, after a
//! random delay (a fleet told at once spreads its refreshes), once however many hints arrive
//! meanwhile, through the refresher's own single-flight fetch and budget.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::Engine;
use crate::name::SecretName;

/// What a change hint ([`FailoverClient::notify_changed`](crate::FailoverClient::notify_changed))
/// came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Notified {
    /// A refresh is scheduled within `refresh.notify_max_delay`.
    Scheduled,
    /// A refresh for this secret was already scheduled: this hint adds nothing.
    AlreadyScheduled,
    /// The secret is not held: nothing to refresh (the next read fetches it anyway).
    NotHeld,
    /// The held value already is the version the hint names, from the vault it names.
    SameVersion,
    /// The hint names a vault this client does not read.
    ForeignVault,
    /// Not a valid secret name or version id.
    Invalid,
    /// Called outside a Tokio runtime: nothing could be scheduled.
    NoRuntime,
}

impl Notified {
    /// A short stable label (`scheduled`, `already-scheduled`, `not-held`, `same-version`,
    /// `foreign-vault`, `invalid`, `no-runtime`), for metrics and answers.
    pub fn label(&self) -> &'static str {
        match self {
            Notified::Scheduled => "scheduled",
            Notified::AlreadyScheduled => "already-scheduled",
            Notified::NotHeld => "not-held",
            Notified::SameVersion => "same-version",
            Notified::ForeignVault => "foreign-vault",
            Notified::Invalid => "invalid",
            Notified::NoRuntime => "no-runtime",
        }
    }
}

/// The vault name of a region's URL: the first label of its host (`app-weu` for
/// `https://app-weu.vault.azure.net`), lower case.
pub(crate) fn vault_name(url: &str) -> Option<String> {
    let host = url::Url::parse(url).ok()?.host_str()?.to_ascii_lowercase();
    host.split('.').next().map(str::to_string)
}

impl Engine {
    /// Schedules a refresh of `name` for a change hint: from `vault` (a vault name, `None`:
    /// any), naming `version` (if known), raised at `at` (if known: the delay from it to the
    /// refreshed value is measured).
    pub(crate) fn notify(
        self: &Arc<Self>,
        name: &str,
        version: Option<&str>,
        vault: Option<&str>,
        at: Option<SystemTime>,
    ) -> Notified {
        let outcome = self.decide_notify(name, version, vault, at);
        self.metrics.notified(outcome.label());
        outcome
    }

    fn decide_notify(
        self: &Arc<Self>,
        name: &str,
        version: Option<&str>,
        vault: Option<&str>,
        at: Option<SystemTime>,
    ) -> Notified {
        let Ok(name) = SecretName::new(name) else {
            return Notified::Invalid;
        };
        if version.is_some_and(|v| v.len() > 64 || !crate::name::is_kv_token(v)) {
            return Notified::Invalid;
        }
        let region = match vault {
            None => None,
            Some(vault) => {
                let found = self
                    .vaults
                    .iter()
                    .zip(self.config.regions())
                    .find(|(_, r)| {
                        vault_name(r.url()).is_some_and(|n| n.eq_ignore_ascii_case(vault))
                    });
                match found {
                    Some((v, _)) => Some(v.name.clone()),
                    None => return Notified::ForeignVault,
                }
            }
        };
        let key = name.key();
        let Some(held) = self.cache.get(key) else {
            return Notified::NotHeld;
        };
        // Version ids are per vault: the same id means the same version only from the vault
        // that served the held value.
        if let Some(v) = version {
            let same_vault = region.as_ref().is_none_or(|r| *r == held.region);
            if same_vault && held.version.eq_ignore_ascii_case(v) {
                return Notified::SameVersion;
            }
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return Notified::NoRuntime;
        };
        if !crate::lock(&self.notify_pending).insert(Box::from(&**key)) {
            return Notified::AlreadyScheduled;
        }
        let max = self.config.refresh.notify_max_delay;
        let delay = max.mul_f64(crate::lock(&self.notify_rng).f64());
        let weak = Arc::downgrade(self);
        let key: Box<str> = Box::from(&**key);
        rt.spawn(async move {
            tokio::time::sleep(delay).await;
            let Some(inner) = weak.upgrade() else { return };
            crate::lock(&inner.notify_pending).remove(&key);
            if inner.cache.get(&key).is_none() {
                return; // dropped since: nothing to refresh
            }
            if inner.refresh_key(&key, false).await.is_ok() {
                if let Some(at) = at {
                    let d = SystemTime::now()
                        .duration_since(at)
                        .unwrap_or(Duration::ZERO);
                    inner.metrics.notify_delay(d);
                }
            }
        });
        Notified::Scheduled
    }
}
