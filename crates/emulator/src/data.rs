//! One emulated vault's secrets: versions, attributes, soft-deleted names.

use std::collections::{BTreeMap, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// Seconds since the Unix epoch (Key Vault's time format on the wire).
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub(crate) struct Version {
    pub(crate) id: String,
    pub(crate) value: String,
    pub(crate) content_type: Option<String>,
    pub(crate) tags: BTreeMap<String, String>,
    pub(crate) enabled: bool,
    pub(crate) created: i64,
    /// When its properties last changed (a PATCH), or `created`.
    pub(crate) updated: i64,
    pub(crate) exp: Option<i64>,
    pub(crate) nbf: Option<i64>,
}

pub(crate) struct Record {
    pub(crate) name: String,
    pub(crate) versions: Vec<Version>,
    /// The backing secret of a certificate: listed with `managed: true`, not writable
    /// through the secrets API.
    pub(crate) managed: bool,
}

/// What a PATCH of a version's properties carries: each field given replaces the old one
/// (tags as a whole), each absent one is left as it was.
pub(crate) struct Patch {
    pub(crate) content_type: Option<String>,
    pub(crate) tags: Option<BTreeMap<String, String>>,
    pub(crate) enabled: Option<bool>,
    pub(crate) exp: Option<i64>,
    pub(crate) nbf: Option<i64>,
}

/// The secrets of one vault. Names are case-insensitive, as in Key Vault.
pub(crate) struct Data {
    secrets: HashMap<String, Record>,
    /// Soft-deleted secrets with their deletion time: recoverable or purgeable, and their
    /// names cannot be reused until purged (409 Conflict).
    deleted: HashMap<String, (Record, i64)>,
    next: u64,
    salt: u64,
}

/// What a write carries.
pub(crate) struct NewVersion {
    pub(crate) value: String,
    pub(crate) content_type: Option<String>,
    pub(crate) tags: BTreeMap<String, String>,
    pub(crate) enabled: bool,
    pub(crate) exp: Option<i64>,
    pub(crate) nbf: Option<i64>,
    /// Set by tests through the admin API only (see `SecretSpec::created`); a write is now.
    pub(crate) created: Option<i64>,
}

impl NewVersion {
    pub(crate) fn copy(&self) -> NewVersion {
        NewVersion {
            value: self.value.clone(),
            content_type: self.content_type.clone(),
            tags: self.tags.clone(),
            enabled: self.enabled,
            exp: self.exp,
            nbf: self.nbf,
            created: self.created,
        }
    }
}

impl Data {
    pub(crate) fn new(salt: u64) -> Self {
        Data {
            secrets: HashMap::new(),
            deleted: HashMap::new(),
            next: 1,
            salt,
        }
    }

    /// A 32-hex-digit version id, unique to this vault (as separate vaults' ids are).
    fn version_id(&mut self) -> String {
        let n = self.next;
        self.next += 1;
        let mut rng = fastrand::Rng::with_seed(self.salt ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        format!("{:016x}{:016x}", rng.u64(..), n)
    }

    /// Enables or disables the latest version of `name`; says whether it exists.
    pub(crate) fn set_enabled(&mut self, name: &str, enabled: bool) -> bool {
        match self
            .secrets
            .get_mut(&name.to_ascii_lowercase())
            .and_then(|r| r.versions.last_mut())
        {
            Some(v) => {
                v.enabled = enabled;
                true
            }
            None => false,
        }
    }

    /// Marks `name` as a certificate's secret; says whether it exists.
    pub(crate) fn set_managed(&mut self, name: &str) -> bool {
        match self.secrets.get_mut(&name.to_ascii_lowercase()) {
            Some(r) => {
                r.managed = true;
                true
            }
            None => false,
        }
    }

    /// Whether `name` is a certificate's secret.
    pub(crate) fn is_managed(&self, name: &str) -> bool {
        self.secrets
            .get(&name.to_ascii_lowercase())
            .is_some_and(|r| r.managed)
    }

    /// Applies `patch` to `version` of `name` (an empty or absent version: the latest).
    pub(crate) fn update(&mut self, name: &str, version: Option<&str>, patch: Patch) -> bool {
        let Some(rec) = self.secrets.get_mut(&name.to_ascii_lowercase()) else {
            return false;
        };
        let v = match version.filter(|v| !v.is_empty()) {
            None => rec.versions.last_mut(),
            Some(id) => rec.versions.iter_mut().find(|v| v.id == id),
        };
        let Some(v) = v else {
            return false;
        };
        if let Some(ct) = patch.content_type {
            v.content_type = Some(ct);
        }
        if let Some(tags) = patch.tags {
            v.tags = tags;
        }
        if let Some(enabled) = patch.enabled {
            v.enabled = enabled;
        }
        if patch.exp.is_some() {
            v.exp = patch.exp;
        }
        if patch.nbf.is_some() {
            v.nbf = patch.nbf;
        }
        v.updated = unix_now();
        true
    }

    /// Whether `name` is soft-deleted (a new version is refused until it is purged).
    pub(crate) fn is_deleted(&self, name: &str) -> bool {
        self.deleted.contains_key(&name.to_ascii_lowercase())
    }

    pub(crate) fn set(&mut self, name: &str, v: NewVersion) -> &Version {
        let id = self.version_id();
        let rec = self
            .secrets
            .entry(name.to_ascii_lowercase())
            .or_insert_with(|| Record {
                name: name.to_string(),
                versions: Vec::new(),
                managed: false,
            });
        let now = v.created.unwrap_or_else(unix_now);
        rec.versions.push(Version {
            id,
            value: v.value,
            content_type: v.content_type,
            tags: v.tags,
            enabled: v.enabled,
            created: now,
            updated: now,
            exp: v.exp,
            nbf: v.nbf,
        });
        rec.versions.last().expect("just pushed")
    }

    pub(crate) fn get(&self, name: &str, version: Option<&str>) -> Option<(&Record, &Version)> {
        let rec = self.secrets.get(&name.to_ascii_lowercase())?;
        let v = match version {
            None => rec.versions.last()?,
            Some(id) => rec.versions.iter().find(|v| v.id == id)?,
        };
        Some((rec, v))
    }

    /// Soft-deletes `name`; returns the deleted record and when.
    pub(crate) fn delete(&mut self, name: &str) -> Option<(&Record, i64)> {
        let key = name.to_ascii_lowercase();
        let rec = self.secrets.remove(&key)?;
        let now = unix_now();
        self.deleted.insert(key.clone(), (rec, now));
        self.deleted.get(&key).map(|(r, t)| (r, *t))
    }

    /// A soft-deleted secret.
    pub(crate) fn deleted(&self, name: &str) -> Option<(&Record, i64)> {
        self.deleted
            .get(&name.to_ascii_lowercase())
            .map(|(r, t)| (r, *t))
    }

    /// Soft-deleted secrets in name order, from `skip`, at most `max`; and whether more follow.
    pub(crate) fn deleted_page(&self, skip: usize, max: usize) -> (Vec<(&Record, i64)>, bool) {
        page_of(&self.deleted, skip, max, |(r, t)| Some((r, *t)))
    }

    /// Brings a soft-deleted secret back; returns its latest version.
    pub(crate) fn recover(&mut self, name: &str) -> Option<(&Record, &Version)> {
        let key = name.to_ascii_lowercase();
        let (rec, _) = self.deleted.remove(&key)?;
        self.secrets.insert(key.clone(), rec);
        self.get(&key, None)
    }

    /// Removes a soft-deleted secret for good; says whether there was one.
    pub(crate) fn purge(&mut self, name: &str) -> bool {
        self.deleted.remove(&name.to_ascii_lowercase()).is_some()
    }

    /// Names in order, from `skip`, at most `max`; and whether more follow.
    pub(crate) fn page(&self, skip: usize, max: usize) -> (Vec<(&Record, &Version)>, bool) {
        page_of(&self.secrets, skip, max, |r| {
            r.versions.last().map(|v| (r, v))
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.secrets.len()
    }
}

/// One page of `map` in key order: from `skip`, at most `max`, each through `item`; and whether
/// more follow.
fn page_of<'a, V, T>(
    map: &'a HashMap<String, V>,
    skip: usize,
    max: usize,
    item: impl Fn(&'a V) -> Option<T>,
) -> (Vec<T>, bool) {
    let mut names: Vec<&String> = map.keys().collect();
    names.sort();
    let total = names.len();
    let page = names
        .into_iter()
        .skip(skip)
        .take(max)
        .filter_map(|k| map.get(k).and_then(&item))
        .collect();
    (page, skip + max < total)
}

fn attributes(v: &Version) -> Value {
    let mut a = json!({
        "enabled": v.enabled,
        "created": v.created,
        "updated": v.updated,
        "recoveryLevel": "Recoverable+Purgeable",
        "recoverableDays": 90,
    });
    if let Some(exp) = v.exp {
        a["exp"] = json!(exp);
    }
    if let Some(nbf) = v.nbf {
        a["nbf"] = json!(nbf);
    }
    a
}

/// The SecretBundle of one version.
pub(crate) fn bundle(base: &str, r: &Record, v: &Version) -> Value {
    let mut b = json!({
        "value": v.value,
        "id": format!("{base}/secrets/{}/{}", r.name, v.id),
        "attributes": attributes(v),
        "tags": v.tags,
    });
    if let Some(ct) = &v.content_type {
        b["contentType"] = json!(ct);
    }
    if r.managed {
        b["managed"] = json!(true);
    }
    b
}

/// The SecretItem of a listing (no value, no version in the id).
pub(crate) fn item(base: &str, r: &Record, v: &Version) -> Value {
    let mut b = json!({
        "id": format!("{base}/secrets/{}", r.name),
        "attributes": attributes(v),
        "tags": v.tags,
    });
    if let Some(ct) = &v.content_type {
        b["contentType"] = json!(ct);
    }
    if r.managed {
        b["managed"] = json!(true);
    }
    b
}

/// The SecretItem of one version, as `GET /secrets/{name}/versions` lists it.
pub(crate) fn version_item(base: &str, r: &Record, v: &Version) -> Value {
    let mut b = json!({
        "id": format!("{base}/secrets/{}/{}", r.name, v.id),
        "attributes": attributes(v),
        "tags": v.tags,
    });
    if let Some(ct) = &v.content_type {
        b["contentType"] = json!(ct);
    }
    if r.managed {
        b["managed"] = json!(true);
    }
    b
}

/// The DeletedSecretBundle (or, as a listing shows it, the DeletedSecretItem) of a secret
/// deleted at `at`. No value: a deleted secret's value is not served.
pub(crate) fn deleted(base: &str, r: &Record, at: i64, item: bool) -> Value {
    let last = r.versions.last();
    let mut b = json!({
        "id": format!("{base}/secrets/{}/{}", r.name, last.map_or("", |v| v.id.as_str())),
        "recoveryId": format!("{base}/deletedsecrets/{}", r.name),
        "deletedDate": at,
        "scheduledPurgeDate": at + 90 * 24 * 3600,
        "attributes": last.map(attributes),
        "tags": last.map(|v| json!(v.tags)),
    });
    if item {
        b["id"] = json!(format!("{base}/secrets/{}", r.name));
    }
    b
}
