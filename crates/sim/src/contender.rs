//! What runs against the simulated vaults: this crate's client, and the baselines a user
//! would otherwise have.
//!
//! * **plain SDK** — `SecretClient` with default options against the primary only: no cache,
//!   the SDK's default retry policy (8 retries, exponential from 200 ms with ±20 % jitter,
//!   at most 30 s apart, 60 s in all; 408/429/500/502/503/504 and transport errors retried;
//!   `Retry-After` honoured uncapped). The SDK has no per-try timeout: a hung attempt is cut
//!   when the 60 s the policy allows in all have gone.
//! * **plain SDK at the client's deadline** — the same, with each read given up when the
//!   client's `timeouts.deadline` runs out: availability compared at the same latency bound.
//! * **cache-aside** — the throttling guide's pattern: a value is served from memory for a
//!   fixed TTL, then fetched again through the plain SDK; an expired value is not served when
//!   the fetch fails.
//! * **App Service references** — every secret is resolved at start (through the plain SDK)
//!   and again every 24 h; reads never reach a vault.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

use super::scenario::Scenario;
use super::vault::{generation, SimVault, Tap};
use crate::lock;
use keyvault_failover::SecretName;
use keyvault_failover::SecretStore;
use keyvault_failover::StoreErrorKind;
use keyvault_failover::{FailoverClient, Freshness};

/// Which contender a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContenderKind {
    /// [`FailoverClient`] configured by the scenario's `[client]` table.
    FailoverClient,
    /// The plain SDK against the primary.
    PlainSdk,
    /// The plain SDK against the primary, each read cut at this deadline (the client's).
    PlainSdkDeadline(Duration),
    /// Cache-aside with this TTL over the plain SDK.
    CacheAside(Duration),
    /// App Service Key Vault references (24 h refresh).
    AppService,
}

impl ContenderKind {
    /// The name used in reports.
    pub fn label(&self) -> String {
        match self {
            ContenderKind::FailoverClient => "failover-client".into(),
            ContenderKind::PlainSdk => "plain-sdk".into(),
            ContenderKind::PlainSdkDeadline(d) => {
                format!("plain-sdk-{}", humantime::format_duration(*d))
            }
            ContenderKind::CacheAside(ttl) => {
                format!("cache-aside-{}", humantime::format_duration(*ttl))
            }
            ContenderKind::AppService => "app-service-24h".into(),
        }
    }

    /// The contenders a scenario runs: the client first, then its baselines.
    pub fn all_for(s: &Scenario) -> Vec<ContenderKind> {
        let mut v = vec![ContenderKind::FailoverClient];
        if s.baselines.sdk {
            v.push(ContenderKind::PlainSdk);
        }
        if s.baselines.sdk_at_deadline {
            v.push(ContenderKind::PlainSdkDeadline(s.client_deadline()));
        }
        if let Some(ttl) = s.baselines.cache_aside_ttl {
            v.push(ContenderKind::CacheAside(ttl));
        }
        if s.baselines.app_service {
            v.push(ContenderKind::AppService);
        }
        v
    }
}

/// One read's result.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ReadResult {
    /// A value of this generation; `Some(age)` when served as stale last-known-good.
    Served { gen: u32, stale: Option<Duration> },
    /// No value.
    Failed,
    /// No value, and the answer was "not found" (every secret read exists in the primary).
    NotFound,
}

/// One write's result.
#[derive(Debug, Clone, Copy)]
pub(crate) enum WriteResult {
    Ok,
    RefusedReadOnly,
    Failed,
}

/// One client instance of some contender.
pub(crate) enum Instance {
    Client {
        client: FailoverClient,
        taps: Vec<Arc<Tap>>,
    },
    Sdk {
        primary: Arc<SimVault>,
        rng: Mutex<fastrand::Rng>,
        /// Each read given up after this long.
        deadline: Option<Duration>,
        /// Cache-aside: TTL and name → (generation, fetched at).
        cache: Option<(Duration, Mutex<AsideCache>)>,
    },
    AppService {
        primary: Arc<SimVault>,
        rng: Mutex<fastrand::Rng>,
        values: Mutex<HashMap<u32, u32>>,
    },
}

/// Cache-aside's map: secret index → (generation, fetched at).
type AsideCache = HashMap<u32, (u32, Instant)>;

/// How often App Service resolves references again.
const APP_SERVICE_REFRESH: Duration = Duration::from_secs(24 * 3600);

impl Instance {
    /// Builds instance `k` of `kind` over the shared `vaults` (primary first).
    pub(crate) fn new(
        kind: ContenderKind,
        s: &Scenario,
        k: u32,
        vaults: &[Arc<SimVault>],
        open_calls: &Arc<AtomicU64>,
    ) -> Result<Instance, crate::Error> {
        let seed = s.seed ^ (u64::from(k) + 1).wrapping_mul(0xA24B_AED4_963E_E407);
        let primary = vaults[0].clone();
        Ok(match kind {
            ContenderKind::FailoverClient => {
                let config = s.client_config(k, true)?;
                let first = Arc::new(Tap::new(primary, open_calls.clone(), None));
                let mut taps = vec![first.clone()];
                for v in &vaults[1..] {
                    let rogue = s.broken.bypass_breaker.then(|| first.clone());
                    taps.push(Arc::new(Tap::new(v.clone(), open_calls.clone(), rogue)));
                }
                let mut b = FailoverClient::builder(config);
                for (v, t) in vaults.iter().zip(&taps) {
                    b = b.store(&v.name, t.clone() as Arc<dyn SecretStore>);
                }
                let client = b.build()?;
                for t in &taps {
                    t.attach(&client);
                }
                Instance::Client { client, taps }
            }
            ContenderKind::PlainSdk
            | ContenderKind::PlainSdkDeadline(_)
            | ContenderKind::CacheAside(_) => Instance::Sdk {
                primary,
                rng: Mutex::new(fastrand::Rng::with_seed(seed)),
                deadline: match kind {
                    ContenderKind::PlainSdkDeadline(d) => Some(d),
                    _ => None,
                },
                cache: match kind {
                    ContenderKind::CacheAside(ttl) => Some((ttl, Mutex::new(HashMap::new()))),
                    _ => None,
                },
            },
            ContenderKind::AppService => Instance::AppService {
                primary,
                rng: Mutex::new(fastrand::Rng::with_seed(seed)),
                values: Mutex::new(HashMap::new()),
            },
        })
    }

    /// The client, for this contender's event stream and route.
    pub(crate) fn client(&self) -> Option<&FailoverClient> {
        match self {
            Instance::Client { client, .. } => Some(client),
            _ => None,
        }
    }

    /// Start-up: the client preloads when the workload says so; App Service resolves every
    /// reference and schedules its 24 h refresh.
    pub(crate) async fn start(self: &Arc<Self>, secrets: u32, preload: bool) {
        match &**self {
            Instance::Client { client, .. } if preload => {
                let names: Vec<String> = (0..secrets).map(|i| format!("secret-{i}")).collect();
                let _ = client.preload(names).await;
            }
            Instance::AppService { .. } => {
                self.resolve_all(secrets).await;
                let me = Arc::downgrade(self);
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(APP_SERVICE_REFRESH).await;
                        let Some(me) = me.upgrade() else { return };
                        me.resolve_all(secrets).await;
                    }
                });
            }
            _ => {}
        }
    }

    async fn resolve_all(&self, secrets: u32) {
        if let Instance::AppService {
            primary,
            rng,
            values,
        } = self
        {
            for i in 0..secrets {
                if let Ok(gen) = sdk_get(primary, rng, i).await {
                    lock(values).insert(i, gen);
                }
            }
        }
    }

    /// Reads `secret-<i>`.
    pub(crate) async fn read(&self, i: u32) -> ReadResult {
        match self {
            Instance::Client { client, .. } => {
                match client.get_secret(&format!("secret-{i}")).await {
                    Ok(s) => match generation(s.expose()) {
                        Some(gen) => ReadResult::Served {
                            gen,
                            stale: match s.freshness() {
                                Freshness::Stale { age } => Some(age),
                                _ => None,
                            },
                        },
                        None => ReadResult::Failed,
                    },
                    Err(e) if e.is_not_found() => ReadResult::NotFound,
                    Err(_) => ReadResult::Failed,
                }
            }
            Instance::Sdk {
                primary,
                rng,
                deadline,
                cache,
            } => {
                if let Some((ttl, map)) = cache {
                    if let Some(&(gen, at)) = lock(map).get(&i) {
                        if at.elapsed() < *ttl {
                            return ReadResult::Served { gen, stale: None };
                        }
                    }
                }
                let got = match deadline {
                    Some(d) => tokio::time::timeout(*d, sdk_get(primary, rng, i))
                        .await
                        .unwrap_or(Err(ReadResult::Failed)),
                    None => sdk_get(primary, rng, i).await,
                };
                match got {
                    Ok(gen) => {
                        if let Some((_, map)) = cache {
                            lock(map).insert(i, (gen, Instant::now()));
                        }
                        ReadResult::Served { gen, stale: None }
                    }
                    Err(r) => r,
                }
            }
            Instance::AppService { values, .. } => match lock(values).get(&i) {
                Some(&gen) => ReadResult::Served { gen, stale: None },
                None => ReadResult::Failed,
            },
        }
    }

    /// Writes secret `write-<k>`.
    pub(crate) async fn write(&self, k: u64) -> WriteResult {
        let name = format!("write-{k}");
        let value = SecretString::from(format!("written-{k}"));
        match self {
            Instance::Client { client, .. } => match client.set_secret(&name, value).await {
                Ok(_) => WriteResult::Ok,
                Err(e) if e.is_read_only() => WriteResult::RefusedReadOnly,
                Err(_) => WriteResult::Failed,
            },
            Instance::Sdk { primary, rng, .. } | Instance::AppService { primary, rng, .. } => {
                let Ok(n) = SecretName::new(&name) else {
                    return WriteResult::Failed;
                };
                match sdk_retry(rng, || primary.set(&n, &value)).await {
                    Ok(_) => WriteResult::Ok,
                    Err(_) => WriteResult::Failed,
                }
            }
        }
    }

    /// Lets go of the client (the taps hold it, and the client holds the taps).
    pub(crate) fn detach(&self) {
        if let Instance::Client { taps, .. } = self {
            for t in taps {
                t.detach();
            }
        }
    }

    /// Route changes so far (the client only).
    pub(crate) fn route_changes(&self) -> u64 {
        self.client().map_or(0, |c| c.health().route_changes())
    }
}

/// One read through the plain SDK's retry policy: the generation read, or how it failed.
async fn sdk_get(v: &SimVault, rng: &Mutex<fastrand::Rng>, i: u32) -> Result<u32, ReadResult> {
    let name = SecretName::new(&format!("secret-{i}")).map_err(|_| ReadResult::Failed)?;
    match sdk_retry(rng, || v.get(&name, None)).await {
        Ok(s) => generation(s.value().expose_secret()).ok_or(ReadResult::Failed),
        Err(Some(StoreErrorKind::NotFound)) => Err(ReadResult::NotFound),
        Err(_) => Err(ReadResult::Failed),
    }
}

/// The SDK's default retry policy around `call`; on failure, the last answer's kind (`None`
/// when the policy's time ran out).
async fn sdk_retry<T, F, Fut>(
    rng: &Mutex<fastrand::Rng>,
    mut call: F,
) -> Result<T, Option<StoreErrorKind>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, keyvault_failover::StoreError>>,
{
    const TOTAL: Duration = Duration::from_secs(60);
    let start = Instant::now();
    let mut last = None;
    for retry in 0..=8u32 {
        let left = TOTAL.saturating_sub(start.elapsed());
        let err = match tokio::time::timeout(left, call()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => e,
            Err(_) => return Err(last),
        };
        let wait = match err.kind() {
            StoreErrorKind::Throttled {
                retry_after: Some(ra),
            } => *ra,
            StoreErrorKind::Connect
            | StoreErrorKind::Reset
            | StoreErrorKind::Timeout
            | StoreErrorKind::Throttled { retry_after: None } => backoff(rng, retry),
            StoreErrorKind::Server {
                status: 408 | 500 | 502 | 503 | 504,
            } => backoff(rng, retry),
            k => return Err(Some(k.clone())),
        };
        last = Some(err.kind().clone());
        if start.elapsed() + wait > TOTAL {
            return Err(last);
        }
        tokio::time::sleep(wait).await;
    }
    Err(last)
}

fn backoff(rng: &Mutex<fastrand::Rng>, retry: u32) -> Duration {
    let base = Duration::from_millis(200)
        .saturating_mul(1 << retry.min(16))
        .min(Duration::from_secs(30));
    base.mul_f64(0.8 + 0.4 * lock(rng).f64())
}
