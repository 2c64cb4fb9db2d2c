//! What the replicator reads and writes: a secret's editable properties, a listing's entry, a
//! read version, and the provenance tag that every copy carries.

use std::collections::BTreeMap;
use std::fmt;

use secrecy::SecretString;

/// The tag every copy carries: where it was copied from (`created/read:version:region`).
///
/// Source created time (unix seconds), when the replicator's read of that version was sent
/// (unix seconds, its own clock), source version id and source region: enough to tell from a
/// listing alone whether a copy is of the primary's current version. It never holds anything
/// derived from the value (tags are readable by anyone who may list). A tag without the read
/// time (`created:version:region`, written before it was recorded) is read as unsettled.
pub const PROVENANCE_TAG: &str = "kvf-source";

/// A provenance MAC's length in the tag: 128 bits, as hex (see `seal`).
pub(crate) const MAC_HEX_LEN: usize = 32;

/// How far ahead of this machine's clock a copy's provenance time may be and still be
/// believed (the vaults' clocks and this one's differ a little).
pub const MAX_CLOCK_SKEW: std::time::Duration = std::time::Duration::from_secs(60);

/// The time a reading client orders a version by: a replicator's copy is as old as its
/// source, so a believable provenance tag (`tag`, see [`Provenance::trusted_time`]) gives
/// the source's `created`; anything else, the version's own `created` (`own`).
pub fn ordering_time(
    tag: Option<&str>,
    own: Option<std::time::SystemTime>,
    now: std::time::SystemTime,
) -> Option<std::time::SystemTime> {
    tag.and_then(Provenance::parse)
        .and_then(|p| p.trusted_time(own, now))
        .or(own)
}

/// Key Vault's limit on a secret's tags.
pub const MAX_TAGS: usize = 15;
/// Key Vault's limit on a tag's name, in characters.
pub const MAX_TAG_NAME_LEN: usize = 512;
/// Key Vault's limit on a tag's value, in characters.
pub const MAX_TAG_VALUE_LEN: usize = 256;
/// Key Vault's limit on a content type, in characters.
pub const MAX_CONTENT_TYPE_LEN: usize = 255;

pub use crate::secret::Properties;

/// What the replicator asks of a version's editable properties: its provenance, the user's
/// tags, whether a copy matches.
impl Properties {
    /// The provenance the tags carry, if they carry a well-formed one.
    pub fn provenance(&self) -> Option<Provenance> {
        self.tags
            .get(PROVENANCE_TAG)
            .and_then(|t| Provenance::parse(t))
    }
    /// The user's tags: every tag but the provenance tag.
    pub fn user_tags(&self) -> impl Iterator<Item = (&String, &String)> {
        self.tags
            .iter()
            .filter(|(k, _)| k.as_str() != PROVENANCE_TAG)
    }

    /// Whether `self` (a copy) matches `source` in everything but provenance: enabled, expiry,
    /// activation, content type and the user's tags.
    pub fn matches(&self, source: &Properties) -> bool {
        self.enabled == source.enabled
            && self.expires == source.expires
            && self.not_before == source.not_before
            && self.content_type == source.content_type
            && self.user_tags().eq(source.user_tags())
    }

    /// Whether a PATCH from `self` can reach `target`: the SDK's update call sends no `null`,
    /// so a property `target` lacks but `self` has (an expiry, an activation date, a content
    /// type) can only be dropped by writing a new version.
    pub(crate) fn patchable_to(&self, target: &Properties) -> bool {
        !(self.expires.is_some() && target.expires.is_none()
            || self.not_before.is_some() && target.not_before.is_none()
            || self.content_type.is_some() && target.content_type.is_none())
    }

    /// The properties of a copy of `self`: the user's tags and `provenance`.
    pub(crate) fn for_copy(&self, provenance: &Provenance) -> Properties {
        let mut tags: BTreeMap<String, String> = self
            .user_tags()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        tags.insert(PROVENANCE_TAG.to_string(), provenance.encode());
        Properties {
            tags,
            ..self.clone()
        }
    }

    /// Why a copy of these properties cannot be written, if it cannot.
    pub(crate) fn copy_problem(&self, provenance: &Provenance) -> Option<String> {
        let users = self.user_tags().count();
        if users + 1 > MAX_TAGS {
            return Some(format!(
                "{users} tags in the primary: a copy needs one more for its provenance and Key \
                 Vault allows {MAX_TAGS}"
            ));
        }
        if provenance.encode().chars().count() > MAX_TAG_VALUE_LEN {
            return Some(format!(
                "the provenance tag would exceed {MAX_TAG_VALUE_LEN} characters (region name too long)"
            ));
        }
        None
    }
}

/// One secret as a listing shows it: no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    name: String,
    created: Option<i64>,
    managed: bool,
    properties: Properties,
}

impl Listed {
    /// An entry of a listing.
    pub fn new(name: impl Into<String>, properties: Properties) -> Self {
        Listed {
            name: name.into(),
            created: None,
            managed: false,
            properties,
        }
    }
    /// The same, with the current version's creation time (unix seconds).
    #[must_use]
    pub fn with_created(mut self, created: Option<i64>) -> Self {
        self.created = created;
        self
    }
    /// The same, marked as the backing secret of a Key Vault certificate.
    #[must_use]
    pub fn with_managed(mut self, managed: bool) -> Self {
        self.managed = managed;
        self
    }
    /// The name as the vault spells it.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// When the current version was created (unix seconds).
    pub fn created(&self) -> Option<i64> {
        self.created
    }
    /// Whether Key Vault manages this secret (a certificate's): it cannot be set as a secret.
    pub fn managed(&self) -> bool {
        self.managed
    }
    /// The current version's properties.
    pub fn properties(&self) -> &Properties {
        &self.properties
    }
}

/// A version read with its value.
pub struct ReadVersion {
    value: SecretString,
    version: String,
    created: Option<i64>,
    properties: Properties,
}

impl ReadVersion {
    /// A read version.
    pub fn new(
        value: SecretString,
        version: impl Into<String>,
        created: Option<i64>,
        properties: Properties,
    ) -> Self {
        ReadVersion {
            value,
            version: version.into(),
            created,
            properties,
        }
    }
    /// The value.
    pub fn value(&self) -> &SecretString {
        &self.value
    }
    /// The vault's version id.
    pub fn version(&self) -> &str {
        &self.version
    }
    /// When the vault created this version (unix seconds).
    pub fn created(&self) -> Option<i64> {
        self.created
    }
    /// Its properties.
    pub fn properties(&self) -> &Properties {
        &self.properties
    }
}

impl fmt::Debug for ReadVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadVersion")
            .field("value", &"[REDACTED]")
            .field("version", &self.version)
            .field("created", &self.created)
            .field("properties", &self.properties)
            .finish()
    }
}

/// Where a copy came from, as its [`PROVENANCE_TAG`] says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    created: i64,
    read: Option<i64>,
    /// The replicator's keyed MAC over the name, this provenance and the value (hex), when it
    /// has a key ([`MacKey`](super::MacKey)).
    mac: Option<String>,
    version: String,
    region: String,
}

impl Provenance {
    /// A copy of `region`'s `version`, created there at `created` (unix seconds).
    pub fn new(region: impl Into<String>, version: impl Into<String>, created: i64) -> Self {
        Provenance {
            created,
            read: None,
            mac: None,
            version: version.into(),
            region: region.into(),
        }
    }
    /// The same copy, of a version whose read was sent at `read` (unix seconds).
    pub fn with_read(mut self, read: i64) -> Self {
        self.read = Some(read);
        self
    }
    /// The same copy with `mac` (hex), as [`MacKey::seal`](super::MacKey::seal) makes it.
    pub fn with_mac(mut self, mac: String) -> Self {
        self.mac = Some(mac);
        self
    }
    /// Parses a tag value; `None` unless it is `created[/read[/mac]]:version:region` with
    /// numeric times, a hex MAC of 32 digits, and a non-empty version and region.
    pub fn parse(tag: &str) -> Option<Provenance> {
        let mut parts = tag.splitn(3, ':');
        let mut times = parts.next()?.split('/');
        let created = times.next()?.parse::<i64>().ok()?;
        let read = match times.next() {
            Some(r) => Some(r.parse::<i64>().ok()?),
            None => None,
        };
        let mac = match times.next() {
            Some(m) if m.len() == MAC_HEX_LEN && m.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Some(m.to_ascii_lowercase())
            }
            Some(_) => return None,
            None => None,
        };
        if times.next().is_some() {
            return None;
        }
        let version = parts.next().filter(|v| !v.is_empty())?;
        let region = parts.next().filter(|r| !r.is_empty())?;
        Some(Provenance {
            read,
            mac,
            ..Provenance::new(region, version, created)
        })
    }
    /// The tag value.
    pub fn encode(&self) -> String {
        let mut times = self.created.to_string();
        if let Some(read) = self.read {
            times.push_str(&format!("/{read}"));
            if let Some(mac) = &self.mac {
                times.push_str(&format!("/{mac}"));
            }
        }
        format!("{times}:{}:{}", self.version, self.region)
    }
    /// The copy's provenance MAC (hex), if it carries one.
    pub fn mac(&self) -> Option<&str> {
        self.mac.as_deref()
    }
    /// When the replicator's read of the copied version was sent (unix seconds), if the tag
    /// says.
    pub fn read(&self) -> Option<i64> {
        self.read
    }
    /// Whether a listing alone can tell this copy is of the source's current version: the
    /// version was read at least [`SETTLE_SECS`](super::SETTLE_SECS) after the second it was
    /// created in, so any later version has a later `created`. Key Vault's times are whole
    /// seconds: a version read within its creation second may have been followed by another
    /// in that same second, which a listing cannot tell apart.
    pub fn settled(&self) -> bool {
        self.read
            .is_some_and(|r| r >= self.created.saturating_add(super::SETTLE_SECS))
    }
    /// The source's creation time of the version copied (unix seconds).
    pub fn created(&self) -> i64 {
        self.created
    }
    /// The same as a time, when it is one (not before 1970).
    pub fn created_time(&self) -> Option<std::time::SystemTime> {
        u64::try_from(self.created)
            .ok()
            .and_then(|s| std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(s)))
    }
    /// The time a reading client orders this copy by: the source's creation time, when the
    /// claim is possible. A real copy is made after its source, so its provenance time is
    /// never later than the copy's own `created` (`own`), nor later than `now` plus
    /// [`MAX_CLOCK_SKEW`]. A copy that claims otherwise is not the replicator's (a value
    /// planted with a `kvf-source` time in the year 5138 was served after a failover and
    /// made every later genuine version look older): it is ordered by its own `created`.
    pub fn trusted_time(
        &self,
        own: Option<std::time::SystemTime>,
        now: std::time::SystemTime,
    ) -> Option<std::time::SystemTime> {
        let claimed = self.created_time()?;
        let latest = now.checked_add(MAX_CLOCK_SKEW).unwrap_or(now);
        (own.is_some_and(|own| claimed <= own) && claimed <= latest).then_some(claimed)
    }
    /// The source's version id.
    pub fn version(&self) -> &str {
        &self.version
    }
    /// The source's region.
    pub fn region(&self) -> &str {
        &self.region
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provenance_round_trips_and_refuses_what_is_not_one() {
        let p = Provenance::new("west:europe", "0123abcd", 1_700_000_000);
        assert_eq!(p.encode(), "1700000000:0123abcd:west:europe");
        assert_eq!(Provenance::parse(&p.encode()), Some(p));
        for bad in ["", "x:v:r", "1:", "1::r", "1:v:", "1:v"] {
            assert_eq!(Provenance::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_copy_keeps_user_tags_and_replaces_provenance() {
        let mut tags = BTreeMap::new();
        tags.insert("team".to_string(), "payments".to_string());
        tags.insert(PROVENANCE_TAG.to_string(), "1:old:elsewhere".to_string());
        let p = Properties::default().with_tags(tags);
        let c = p.for_copy(&Provenance::new("weu", "v1", 5));
        assert_eq!(c.tags().get("team").map(String::as_str), Some("payments"));
        assert_eq!(c.provenance(), Some(Provenance::new("weu", "v1", 5)));
        assert!(c.matches(&p));
    }

    #[test]
    fn too_many_tags_leave_no_room_for_provenance() {
        let tags = (0..MAX_TAGS)
            .map(|i| (format!("t{i}"), String::new()))
            .collect();
        let p = Properties::default().with_tags(tags);
        assert!(p.copy_problem(&Provenance::new("weu", "v", 1)).is_some());
        let tags = (0..MAX_TAGS - 1)
            .map(|i| (format!("t{i}"), String::new()))
            .collect();
        let p = Properties::default().with_tags(tags);
        assert!(p.copy_problem(&Provenance::new("weu", "v", 1)).is_none());
    }

    #[test]
    fn clearing_a_property_needs_a_new_version() {
        let with = Properties::default().with_expires(Some(10));
        let without = Properties::default();
        assert!(!with.patchable_to(&without));
        assert!(without.patchable_to(&with));
    }
}
