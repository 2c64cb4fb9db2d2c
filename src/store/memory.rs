//! An in-process vault with scriptable faults, for tests and the simulator.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};

use super::SecretStore;
use crate::error::{StoreError, StoreErrorKind};
use crate::name::SecretName;
use crate::replicate::{Listed, Properties, ReadVersion, ReplicaStore};
use crate::secret::{SecretProperties, StoredSecret};

/// A fault a [`MemoryStore`] injects into each call while it is set.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Connection refused, at once.
    Refuse,
    /// Connection reset after the latency.
    Reset,
    /// Accept and never answer (the client's timeout ends the call).
    Hang,
    /// Answer normally, but only after this extra delay.
    Delay(Duration),
    /// 429 with this `Retry-After`.
    Throttle(Duration),
    /// This 5xx status.
    ServerError(u16),
    /// This 5xx status with a `Retry-After` (Key Vault's 503 may carry one).
    ServerErrorRetryAfter(u16, Duration),
    /// 401.
    Unauthorized,
    /// 403.
    Forbidden,
    /// 404 for every secret.
    NotFound,
    /// A body that cannot be decoded.
    Malformed,
}

/// The latency of each answered call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Latency {
    /// Always this long.
    Fixed(Duration),
    /// Uniform in `[min, max]`, drawn from the store's seeded generator.
    Uniform(Duration, Duration),
}

struct Version {
    id: String,
    value: SecretString,
    /// Wall-clock creation time, as Key Vault's `attributes.created` (the client's high-water
    /// mark across regions).
    created: std::time::SystemTime,
    /// Enabled, expiry, activation, content type, tags.
    props: Properties,
}

impl Version {
    /// What Key Vault would say of this version besides its value.
    fn metadata(&self, managed: bool) -> crate::Metadata {
        let own = self
            .created
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        crate::Metadata::new(self.props.clone())
            .with_created(own)
            .with_updated(own)
            .with_recovery("Recoverable+Purgeable", Some(90))
            .with_certificate(None, managed.then_some(true))
    }
}

/// One name: its spelling, its versions (latest last), whether a certificate owns it.
struct Record {
    name: String,
    versions: Vec<Version>,
    managed: bool,
}

struct State {
    secrets: HashMap<String, Record>,
    /// Soft-deleted names (through [`ReplicaStore::soft_delete`]): recoverable, and a write
    /// to one answers 409 as Key Vault does.
    deleted: HashMap<String, Record>,
    next_version: u64,
    fault: Option<Fault>,
    /// A fault for secret GETs only (listings and writes are spared): a partial outage.
    get_fault: Option<Fault>,
    /// Every n-th GET fails with this fault (grey failure), counted from `gets_seen`.
    get_fail_every: Option<(u64, Fault)>,
    gets_seen: u64,
    script: VecDeque<Option<Fault>>,
    latency: Latency,
    rng: fastrand::Rng,
    read_only: bool,
}

/// An in-memory vault.
///
/// Versions are ids unique to this store (`<store>-<n>` hex), as separate regional vaults give
/// different version ids to the same content. Counters tell how many calls reached the store,
/// faulted or not, so tests can prove a request was never sent.
///
/// ```
/// # keyvault_failover::run_virtual(async {
/// use keyvault_failover::{store::{Fault, MemoryStore}, SecretName, SecretStore};
/// let s = MemoryStore::new("weu");
/// s.insert("db", "v1");
/// let name = SecretName::new("db").unwrap();
/// assert!(s.get(&name, None).await.is_ok());
/// s.set_fault(Some(Fault::ServerError(503)));
/// assert_eq!(s.get(&name, None).await.unwrap_err().kind().status(), Some(503));
/// assert_eq!(s.gets(), 2);
/// # }).unwrap();
/// ```
pub struct MemoryStore {
    name: String,
    state: Mutex<State>,
    gets: AtomicU64,
    writes: AtomicU64,
    lists: AtomicU64,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("name", &self.name)
            .field("gets", &self.gets())
            .field("writes", &self.writes())
            .finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty, healthy store with 1 ms latency and seed 0.
    pub fn new(name: &str) -> Self {
        Self::with_seed(name, 0)
    }

    /// An empty, healthy store whose latency draws come from `seed`.
    pub fn with_seed(name: &str, seed: u64) -> Self {
        MemoryStore {
            name: name.to_string(),
            state: Mutex::new(State {
                secrets: HashMap::new(),
                deleted: HashMap::new(),
                next_version: 1,
                fault: None,
                get_fault: None,
                get_fail_every: None,
                gets_seen: 0,
                script: VecDeque::new(),
                latency: Latency::Fixed(Duration::from_millis(1)),
                rng: fastrand::Rng::with_seed(seed),
                read_only: false,
            }),
            gets: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            lists: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the map half-written; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes a new version directly (no fault, no latency, not counted) and returns its id.
    pub fn insert(&self, name: &str, value: &str) -> String {
        let mut st = self.lock();
        Self::put(
            &mut st,
            &self.name,
            name,
            SecretString::from(value.to_string()),
            Properties::default(),
        )
    }

    /// Writes a new version with these properties directly (no fault, not counted).
    pub fn insert_with(&self, name: &str, value: &str, properties: Properties) -> String {
        let mut st = self.lock();
        let value = SecretString::from(value.to_string());
        Self::put(&mut st, &self.name, name, value, properties)
    }

    /// Writes a version of a secret that backs a certificate (`managed`, as Key Vault lists
    /// it): the secrets API cannot write it.
    pub fn insert_managed(&self, name: &str, value: &str) -> String {
        let id = self.insert(name, value);
        if let Some(r) = self.lock().secrets.get_mut(&name.to_ascii_lowercase()) {
            r.managed = true;
        }
        id
    }

    /// Enables or disables the latest version of `name`; says whether it exists.
    pub fn set_enabled(&self, name: &str, enabled: bool) -> bool {
        let mut st = self.lock();
        match st
            .secrets
            .get_mut(&name.to_ascii_lowercase())
            .and_then(|r| r.versions.last_mut())
        {
            Some(v) => {
                v.props = v.props.clone().with_enabled(enabled);
                true
            }
            None => false,
        }
    }

    /// The properties of `name`'s latest version, for assertions.
    pub fn properties(&self, name: &str) -> Option<Properties> {
        let st = self.lock();
        st.secrets
            .get(&name.to_ascii_lowercase())
            .and_then(|r| r.versions.last())
            .map(|v| v.props.clone())
    }

    /// Whether `name` is soft-deleted.
    pub fn is_soft_deleted(&self, name: &str) -> bool {
        self.lock().deleted.contains_key(&name.to_ascii_lowercase())
    }

    fn put(
        st: &mut State,
        store: &str,
        name: &str,
        value: SecretString,
        props: Properties,
    ) -> String {
        let id = format!("{store}-{:016x}", st.next_version);
        st.next_version += 1;
        let e = st
            .secrets
            .entry(name.to_ascii_lowercase())
            .or_insert_with(|| Record {
                name: name.to_string(),
                versions: Vec::new(),
                managed: false,
            });
        e.versions.push(Version {
            id: id.clone(),
            value,
            created: std::time::SystemTime::now(),
            props,
        });
        id
    }

    /// The current value of `name`, for assertions.
    pub fn current(&self, name: &str) -> Option<(String, SecretString)> {
        let st = self.lock();
        st.secrets
            .get(&name.to_ascii_lowercase())
            .and_then(|r| r.versions.last())
            .map(|v| (v.id.clone(), v.value.clone()))
    }

    /// Whether any version of any secret holds exactly `value`.
    pub fn ever_held(&self, value: &str) -> bool {
        let st = self.lock();
        st.secrets
            .values()
            .flat_map(|r| r.versions.iter())
            .any(|v| v.value.expose_secret() == value)
    }

    /// Sets (or with `None` clears) the fault injected into every call.
    pub fn set_fault(&self, fault: Option<Fault>) {
        self.lock().fault = fault;
    }

    /// Sets (or clears) a fault for secret GETs only; listings (and so the listing probe) and
    /// writes answer normally: a partial outage.
    pub fn set_get_fault(&self, fault: Option<Fault>) {
        self.lock().get_fault = fault;
    }

    /// Makes every `n`-th GET fail with `fault` (`None`: stop): a grey failure, `1/n` of GETs.
    pub fn fail_every_nth_get(&self, every: Option<(u64, Fault)>) {
        let mut st = self.lock();
        st.get_fail_every = every.filter(|(n, _)| *n > 0);
        st.gets_seen = 0;
    }

    /// Queues one outcome per upcoming call (`None`: behave normally); once the queue is
    /// empty the standing fault of [`MemoryStore::set_fault`] applies again.
    pub fn script(&self, outcomes: impl IntoIterator<Item = Option<Fault>>) {
        self.lock().script.extend(outcomes);
    }

    /// Drops the outcomes [`script`](Self::script) queued and no call has taken yet.
    pub fn clear_script(&self) {
        self.lock().script.clear();
    }

    /// Sets the latency of answered calls.
    pub fn set_latency(&self, latency: Latency) {
        self.lock().latency = latency;
    }

    /// Makes writes answer 403, as Key Vault does after a Microsoft-managed failover.
    pub fn set_read_only(&self, read_only: bool) {
        self.lock().read_only = read_only;
    }

    /// Calls to `get` that reached this store.
    pub fn gets(&self) -> u64 {
        self.gets.load(Ordering::Relaxed)
    }

    /// Calls to `set` or `delete` that reached this store.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Calls to `list` that reached this store.
    pub fn lists(&self) -> u64 {
        self.lists.load(Ordering::Relaxed)
    }

    /// A write's way in: counted, its fault and latency, and refused while read-only.
    async fn writable(&self) -> Result<std::sync::MutexGuard<'_, State>, StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.enter(false).await?;
        let st = self.lock();
        if st.read_only {
            return Err(read_only());
        }
        Ok(st)
    }

    /// Decides this call's fault and latency, then waits the latency.
    async fn enter(&self, get: bool) -> Result<(), StoreError> {
        let (fault, latency) = {
            let mut st = self.lock();
            let mut fault = match st.script.pop_front() {
                Some(f) => f,
                None => st.fault.clone(),
            };
            if get && fault.is_none() {
                st.gets_seen += 1;
                let nth = match &st.get_fail_every {
                    Some((n, f)) if st.gets_seen.is_multiple_of(*n) => Some(f.clone()),
                    _ => None,
                };
                fault = st.get_fault.clone().or(nth);
            }
            let latency = match st.latency {
                Latency::Fixed(d) => d,
                Latency::Uniform(lo, hi) => {
                    let (lo, hi) = (lo.as_micros() as u64, hi.as_micros() as u64);
                    Duration::from_micros(st.rng.u64(lo.min(hi)..=hi.max(lo)))
                }
            };
            (fault, latency)
        };
        let err = |kind: StoreErrorKind, msg: &str| Err(StoreError::new(kind, msg));
        match fault {
            None => {}
            Some(Fault::Refuse) => return err(StoreErrorKind::Connect, "connection refused"),
            Some(Fault::Hang) => futures::future::pending::<()>().await,
            Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
            Some(other) => {
                tokio::time::sleep(latency).await;
                return match other {
                    Fault::Reset => err(StoreErrorKind::Reset, "connection reset by peer"),
                    Fault::Throttle(d) => err(
                        StoreErrorKind::Throttled {
                            retry_after: Some(d),
                        },
                        "Reason: VaultRequestTypeLimitReached",
                    ),
                    Fault::ServerError(s) => err(StoreErrorKind::Server { status: s }, ""),
                    Fault::ServerErrorRetryAfter(s, d) => {
                        Err(StoreError::new(StoreErrorKind::Server { status: s }, "")
                            .with_retry_after(Some(d)))
                    }
                    Fault::Unauthorized => err(StoreErrorKind::Auth { status: 401 }, ""),
                    Fault::Forbidden => err(StoreErrorKind::Auth { status: 403 }, ""),
                    Fault::NotFound => err(StoreErrorKind::NotFound, "SecretNotFound"),
                    _ => err(StoreErrorKind::Malformed, "body is not JSON"),
                };
            }
        }
        tokio::time::sleep(latency).await;
        Ok(())
    }
}

fn disabled() -> StoreError {
    StoreError::new(
        StoreErrorKind::Auth { status: 403 },
        "Forbidden: Operation get is not allowed on a disabled secret. (SecretDisabled)",
    )
}

fn conflict(name: &SecretName) -> StoreError {
    StoreError::new(
        StoreErrorKind::Rejected { status: 409 },
        format!("Conflict: secret {name} is deleted but recoverable; recover or purge it first"),
    )
}

fn read_only() -> StoreError {
    StoreError::new(
        StoreErrorKind::Auth { status: 403 },
        "vault is read-only (failed over)",
    )
}

fn unix(t: std::time::SystemTime) -> Option<i64> {
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_secs()).ok())
}

fn not_found(name: &SecretName) -> StoreError {
    StoreError::new(
        StoreErrorKind::NotFound,
        format!("SecretNotFound: a secret with name {name} was not found"),
    )
}

#[async_trait]
impl SecretStore for MemoryStore {
    async fn get(
        &self,
        name: &SecretName,
        version: Option<&str>,
    ) -> Result<StoredSecret, StoreError> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        self.enter(true).await?;
        let st = self.lock();
        let r = st
            .secrets
            .get(&**name.key())
            .ok_or_else(|| not_found(name))?;
        let v = match version {
            None => r.versions.last(),
            Some(id) => r.versions.iter().find(|v| v.id == id),
        }
        .ok_or_else(|| not_found(name))?;
        if !v.props.enabled() {
            return Err(disabled());
        }
        // A replicator's copy is as old as its source, where it believably says so (see
        // `AzureStore`).
        let created = v
            .props
            .provenance()
            .and_then(|p| p.trusted_time(Some(v.created), std::time::SystemTime::now()))
            .unwrap_or(v.created);
        Ok(StoredSecret::new(v.value.clone(), v.id.clone())
            .with_created(created)
            .with_metadata(v.metadata(r.managed)))
    }

    /// A new version with Key Vault's default properties (see the replica write).
    async fn set(&self, name: &SecretName, value: &SecretString) -> Result<String, StoreError> {
        ReplicaStore::write(self, name, value, &Properties::default()).await
    }

    async fn delete(&self, name: &SecretName) -> Result<(), StoreError> {
        let mut st = self.writable().await?;
        st.secrets
            .remove(&**name.key())
            .map(|_| ())
            .ok_or_else(|| not_found(name))
    }

    async fn list(&self) -> Result<Vec<SecretProperties>, StoreError> {
        self.lists.fetch_add(1, Ordering::Relaxed);
        self.enter(false).await?;
        let st = self.lock();
        let mut out: Vec<SecretProperties> = st
            .secrets
            .values()
            .map(|r| {
                let last = r.versions.last();
                let enabled = last.is_none_or(|v| v.props.enabled());
                SecretProperties::new(r.name.clone(), last.map(|v| v.id.clone()), enabled)
            })
            .collect();
        out.sort_by(|a, b| a.name().cmp(b.name()));
        Ok(out)
    }

    /// As Key Vault's PATCH (counted as a write).
    async fn update_properties(
        &self,
        name: &SecretName,
        version: Option<&str>,
        update: &crate::PropertiesUpdate,
    ) -> Result<(String, crate::Metadata), StoreError> {
        let mut st = self.writable().await?;
        let r = st
            .secrets
            .get_mut(&**name.key())
            .ok_or_else(|| not_found(name))?;
        let managed = r.managed;
        let v = match version {
            None => r.versions.last_mut(),
            Some(id) => r.versions.iter_mut().find(|v| v.id == id),
        }
        .ok_or_else(|| not_found(name))?;
        v.props = update.apply(&v.props);
        Ok((v.id.clone(), v.metadata(managed)))
    }

    /// Every version of `name`, oldest first (counted as a listing).
    async fn versions(&self, name: &SecretName) -> Result<Vec<SecretProperties>, StoreError> {
        self.lists.fetch_add(1, Ordering::Relaxed);
        self.enter(false).await?;
        let st = self.lock();
        let r = st
            .secrets
            .get(&**name.key())
            .ok_or_else(|| not_found(name))?;
        Ok(r.versions
            .iter()
            .map(|v| SecretProperties::new(r.name.clone(), Some(v.id.clone()), v.props.enabled()))
            .collect())
    }
}

/// The replicator's calls, with Key Vault's answers: a GET of a disabled secret is 403, a write
/// to a soft-deleted name 409, a managed secret cannot be written (403). Reads count in
/// [`MemoryStore::gets`], listings in [`MemoryStore::lists`], every other call in
/// [`MemoryStore::writes`]; each takes the store's faults and latency.
#[async_trait]
impl ReplicaStore for MemoryStore {
    async fn list_items(&self) -> Result<Vec<Listed>, StoreError> {
        self.lists.fetch_add(1, Ordering::Relaxed);
        self.enter(false).await?;
        let st = self.lock();
        let mut out: Vec<Listed> = st
            .secrets
            .values()
            .filter_map(|r| {
                let v = r.versions.last()?;
                Some(
                    Listed::new(r.name.clone(), v.props.clone())
                        .with_created(unix(v.created))
                        .with_managed(r.managed),
                )
            })
            .collect();
        out.sort_by(|a, b| a.name().cmp(b.name()));
        Ok(out)
    }

    async fn read(&self, name: &SecretName) -> Result<ReadVersion, StoreError> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        self.enter(true).await?;
        let st = self.lock();
        let v = st
            .secrets
            .get(&**name.key())
            .and_then(|r| r.versions.last())
            .ok_or_else(|| not_found(name))?;
        if !v.props.enabled() {
            return Err(disabled());
        }
        Ok(ReadVersion::new(
            v.value.clone(),
            v.id.clone(),
            unix(v.created),
            v.props.clone(),
        ))
    }

    async fn write(
        &self,
        name: &SecretName,
        value: &SecretString,
        properties: &Properties,
    ) -> Result<String, StoreError> {
        let mut st = self.writable().await?;
        if st.deleted.contains_key(&**name.key()) {
            return Err(conflict(name));
        }
        if st.secrets.get(&**name.key()).is_some_and(|r| r.managed) {
            return Err(StoreError::new(
                StoreErrorKind::Auth { status: 403 },
                "Forbidden: a certificate's secret cannot be set",
            ));
        }
        let props = properties.clone();
        Ok(Self::put(
            &mut st,
            &self.name,
            name.as_str(),
            value.clone(),
            props,
        ))
    }

    async fn update(&self, name: &SecretName, properties: &Properties) -> Result<(), StoreError> {
        let mut st = self.writable().await?;
        let v = st
            .secrets
            .get_mut(&**name.key())
            .and_then(|r| r.versions.last_mut())
            .ok_or_else(|| not_found(name))?;
        // As Key Vault's PATCH: what is absent is left as it was.
        let old = std::mem::take(&mut v.props);
        v.props = Properties::default()
            .with_enabled(properties.enabled())
            .with_expires(properties.expires().or(old.expires()))
            .with_not_before(properties.not_before().or(old.not_before()))
            .with_content_type(
                properties
                    .content_type()
                    .or(old.content_type())
                    .map(str::to_string),
            )
            .with_tags(properties.tags().clone());
        Ok(())
    }

    async fn soft_delete(&self, name: &SecretName) -> Result<(), StoreError> {
        let mut st = self.writable().await?;
        let r = st
            .secrets
            .remove(&**name.key())
            .ok_or_else(|| not_found(name))?;
        st.deleted.insert(name.key().to_string(), r);
        Ok(())
    }

    async fn recover(&self, name: &SecretName) -> Result<(), StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.enter(false).await?;
        let mut st = self.lock();
        let r = st
            .deleted
            .remove(&**name.key())
            .ok_or_else(|| not_found(name))?;
        st.secrets.insert(name.key().to_string(), r);
        Ok(())
    }
}
