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
}

pub(crate) struct Record {
    pub(crate) name: String,
    pub(crate) versions: Vec<Version>,
}

/// The secrets of one vault. Names are case-insensitive, as in Key Vault.
pub(crate) struct Data {
    secrets: HashMap<String, Record>,
    deleted: HashMap<String, i64>,
    next: u64,
    salt: u64,
}

/// What a write carries.
pub(crate) struct NewVersion {
    pub(crate) value: String,
    pub(crate) content_type: Option<String>,
    pub(crate) tags: BTreeMap<String, String>,
    pub(crate) enabled: bool,
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

    pub(crate) fn set(&mut self, name: &str, v: NewVersion) -> &Version {
        let id = self.version_id();
        self.deleted.remove(&name.to_ascii_lowercase());
        let rec = self
            .secrets
            .entry(name.to_ascii_lowercase())
            .or_insert_with(|| Record {
                name: name.to_string(),
                versions: Vec::new(),
            });
        rec.versions.push(Version {
            id,
            value: v.value,
            content_type: v.content_type,
            tags: v.tags,
            enabled: v.enabled,
            created: unix_now(),
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

    pub(crate) fn delete(&mut self, name: &str) -> Option<Record> {
        let rec = self.secrets.remove(&name.to_ascii_lowercase())?;
        self.deleted.insert(name.to_ascii_lowercase(), unix_now());
        Some(rec)
    }

    /// Names in order, from `skip`, at most `max`; and whether more follow.
    pub(crate) fn page(&self, skip: usize, max: usize) -> (Vec<(&Record, &Version)>, bool) {
        let mut names: Vec<&String> = self.secrets.keys().collect();
        names.sort();
        let total = names.len();
        let page = names
            .into_iter()
            .skip(skip)
            .take(max)
            .filter_map(|k| {
                let r = &self.secrets[k];
                r.versions.last().map(|v| (r, v))
            })
            .collect();
        (page, skip + max < total)
    }

    pub(crate) fn len(&self) -> usize {
        self.secrets.len()
    }
}

fn attributes(v: &Version) -> Value {
    json!({
        "enabled": v.enabled,
        "created": v.created,
        "updated": v.created,
        "recoveryLevel": "Recoverable+Purgeable",
        "recoverableDays": 90,
    })
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
    b
}

/// The DeletedSecretBundle.
pub(crate) fn deleted(base: &str, r: &Record) -> Value {
    let now = unix_now();
    let last = r.versions.last();
    json!({
        "id": format!("{base}/secrets/{}/{}", r.name, last.map_or("", |v| v.id.as_str())),
        "recoveryId": format!("{base}/deletedsecrets/{}", r.name),
        "deletedDate": now,
        "scheduledPurgeDate": now + 90 * 24 * 3600,
        "attributes": last.map(attributes),
        "tags": last.map(|v| json!(v.tags)),
    })
}
