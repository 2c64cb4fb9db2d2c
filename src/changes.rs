//! Key Vault's change events as refresh hints: the secret events Key Vault publishes to Event
//! Grid (`Microsoft.KeyVault.SecretNewVersionCreated`, `SecretNearExpiry`, `SecretExpired`),
//! read from either delivery schema, the Event Grid schema or CloudEvents 1.0, single events
//! or batches ([`parse`]), and the subscription validation handshake.
//!
//! **An event is a hint, never data.** Only the vault's name, the secret's name and the
//! version id are taken from it; the value always comes from a vault. Fields not named here are
//! ignored (Microsoft's guidance for event handlers), other event types are counted as ignored,
//! sizes are bounded.
//!
//! ```
//! use keyvault_failover::changes::{parse, ChangeKind};
//! let body = br#"[{"id":"1","topic":"/subscriptions/s/resourceGroups/g/providers/Microsoft.KeyVault/vaults/app-weu",
//!   "subject":"db-password","eventType":"Microsoft.KeyVault.SecretNewVersionCreated",
//!   "eventTime":"2026-12-01T10:00:00.1234567Z","dataVersion":"1","metadataVersion":"1",
//!   "data":{"Id":"https://app-weu.vault.azure.net/secrets/db-password/0123abcd","VaultName":"app-weu",
//!   "ObjectType":"Secret","ObjectName":"db-password","Version":"0123abcd","NBF":null,"EXP":null}}]"#;
//! let d = parse(body).unwrap();
//! assert_eq!(d.changes().len(), 1);
//! let c = &d.changes()[0];
//! assert_eq!((c.vault(), c.name(), c.version()), ("app-weu", "db-password", Some("0123abcd")));
//! assert_eq!(c.kind(), ChangeKind::NewVersion);
//! ```

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::Deserialize;

use crate::error::{Error, Kind};
use crate::name::SecretName;

/// The largest body read: Event Grid's own limit for a delivered batch (1 MB).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// The most events one body may carry (Event Grid batches at most 5,000).
pub const MAX_EVENTS: usize = 5000;
/// Longest vault name Key Vault allows (3 to 24 characters).
const MAX_VAULT_NAME: usize = 24;
/// Longest validation code echoed back.
const MAX_CODE: usize = 512;

/// What a secret event says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// `Microsoft.KeyVault.SecretNewVersionCreated`: a rotation.
    NewVersion,
    /// `Microsoft.KeyVault.SecretNearExpiry`: the current version expires soon (a new one may
    /// follow).
    NearExpiry,
    /// `Microsoft.KeyVault.SecretExpired`.
    Expired,
}

/// One secret's change, as an event told it: where, which secret, which version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    kind: ChangeKind,
    vault: String,
    name: String,
    version: Option<String>,
    time: Option<SystemTime>,
}

impl Change {
    /// What happened.
    pub fn kind(&self) -> ChangeKind {
        self.kind
    }
    /// The vault's name (`VaultName`, lower case): `app-weu` for `https://app-weu.vault.azure.net`.
    pub fn vault(&self) -> &str {
        &self.vault
    }
    /// The secret's name (a valid Key Vault name).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The version id the event names, if any.
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }
    /// When the event was raised (`eventTime`, or CloudEvents' `time`), if it said.
    pub fn time(&self) -> Option<SystemTime> {
        self.time
    }
}

/// Why an event in a delivery was not taken as a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Ignored {
    /// Another event type (a key's, a certificate's, an access policy change, ...).
    OtherType,
    /// An event of a secret type whose data names no valid vault, secret or version.
    Malformed,
}

impl Ignored {
    /// A short stable label (`other-type`, `malformed`), for metrics and answers.
    pub fn label(&self) -> &'static str {
        match self {
            Ignored::OtherType => "other-type",
            Ignored::Malformed => "malformed",
        }
    }
}

/// A parsed delivery: the changes, what was ignored and why, and the subscription validation
/// code if Event Grid sent its handshake.
#[derive(Debug, Clone, Default)]
pub struct Delivery {
    changes: Vec<Change>,
    ignored: BTreeMap<Ignored, usize>,
    validation_code: Option<String>,
}

impl Delivery {
    /// The secret changes, in delivery order.
    pub fn changes(&self) -> &[Change] {
        &self.changes
    }
    /// Events not taken, by reason.
    pub fn ignored(&self) -> &BTreeMap<Ignored, usize> {
        &self.ignored
    }
    /// `Microsoft.EventGrid.SubscriptionValidationEvent`'s code: answer
    /// `{"validationResponse": code}` to prove the endpoint wants the events.
    pub fn validation_code(&self) -> Option<&str> {
        self.validation_code.as_deref()
    }
    /// How many events the delivery held.
    pub fn len(&self) -> usize {
        self.changes.len()
            + self.ignored.values().sum::<usize>()
            + usize::from(self.validation_code.is_some())
    }
    /// Whether it held none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a delivery came to ([`FailoverClient::notify_events`](crate::FailoverClient::notify_events)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    validation_code: Option<String>,
    outcomes: BTreeMap<&'static str, usize>,
}

impl Applied {
    pub(crate) fn new(validation_code: Option<&str>) -> Self {
        Applied {
            validation_code: validation_code.map(str::to_string),
            outcomes: BTreeMap::new(),
        }
    }

    pub(crate) fn count(&mut self, outcome: &'static str, n: usize) {
        if n > 0 {
            *self.outcomes.entry(outcome).or_default() += n;
        }
    }

    /// The subscription validation code to answer with, if the delivery was the handshake.
    pub fn validation_code(&self) -> Option<&str> {
        self.validation_code.as_deref()
    }

    /// How many events came to each outcome ([`Notified::label`](crate::Notified::label), or
    /// `other-type` and `malformed` for events not taken).
    pub fn outcomes(&self) -> &BTreeMap<&'static str, usize> {
        &self.outcomes
    }

    /// Events that scheduled a refresh.
    pub fn scheduled(&self) -> usize {
        self.outcomes.get("scheduled").copied().unwrap_or(0)
    }
}

/// One event of either schema; every other field is ignored.
#[derive(Deserialize)]
struct RawEvent {
    /// Event Grid schema.
    #[serde(rename = "eventType")]
    event_type: Option<String>,
    #[serde(rename = "eventTime")]
    event_time: Option<String>,
    /// CloudEvents 1.0.
    #[serde(rename = "type")]
    ce_type: Option<String>,
    time: Option<String>,
    #[serde(default)]
    data: Option<serde_json::Value>,
}

/// Key Vault's event data (PascalCase on the wire; camelCase accepted too).
#[derive(Deserialize)]
struct SecretData {
    #[serde(rename = "VaultName", alias = "vaultName")]
    vault_name: Option<String>,
    #[serde(rename = "ObjectType", alias = "objectType")]
    object_type: Option<String>,
    #[serde(rename = "ObjectName", alias = "objectName")]
    object_name: Option<String>,
    #[serde(rename = "Version", alias = "version")]
    version: Option<String>,
}

fn bad(message: String) -> Error {
    Error::new(Kind::InvalidValue, message)
}

/// Parses a delivery: a JSON array of events or one event, in the Event Grid schema or
/// CloudEvents 1.0 (structured mode), as Event Grid posts to a webhook or puts on a Storage
/// queue.
///
/// # Errors
/// [`Error::is_invalid_value`] for a body over [`MAX_BODY_BYTES`], one that is not JSON or
/// not events, or more than [`MAX_EVENTS`] events. The message never quotes the body.
pub fn parse(body: &[u8]) -> Result<Delivery, Error> {
    if body.len() > MAX_BODY_BYTES {
        return Err(bad(format!(
            "an event delivery of {} bytes is over the {MAX_BODY_BYTES} bytes Event Grid sends",
            body.len()
        )));
    }
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        bad(format!(
            "the event delivery is not JSON: line {}, column {}",
            e.line(),
            e.column()
        ))
    })?;
    let events = match value {
        serde_json::Value::Array(a) => a,
        v @ serde_json::Value::Object(_) => vec![v],
        _ => {
            return Err(bad(
                "an event delivery is an event or an array of events".into()
            ))
        }
    };
    if events.len() > MAX_EVENTS {
        return Err(bad(format!(
            "{} events in one delivery: at most {MAX_EVENTS}",
            events.len()
        )));
    }
    let mut d = Delivery::default();
    for v in events {
        let Ok(e) = serde_json::from_value::<RawEvent>(v) else {
            *d.ignored.entry(Ignored::Malformed).or_default() += 1;
            continue;
        };
        let ty = e
            .event_type
            .as_deref()
            .or(e.ce_type.as_deref())
            .unwrap_or("");
        let kind = match ty {
            "Microsoft.KeyVault.SecretNewVersionCreated" => ChangeKind::NewVersion,
            "Microsoft.KeyVault.SecretNearExpiry" => ChangeKind::NearExpiry,
            "Microsoft.KeyVault.SecretExpired" => ChangeKind::Expired,
            "Microsoft.EventGrid.SubscriptionValidationEvent" => {
                let code = e
                    .data
                    .as_ref()
                    .and_then(|d| d.get("validationCode"))
                    .and_then(|c| c.as_str())
                    .filter(|c| {
                        !c.is_empty()
                            && c.len() <= MAX_CODE
                            && c.bytes().all(|b| b.is_ascii_graphic())
                    });
                match code {
                    Some(c) => d.validation_code = Some(c.to_string()),
                    None => *d.ignored.entry(Ignored::Malformed).or_default() += 1,
                }
                continue;
            }
            _ => {
                *d.ignored.entry(Ignored::OtherType).or_default() += 1;
                continue;
            }
        };
        match change(kind, &e) {
            Some(c) => d.changes.push(c),
            None => *d.ignored.entry(Ignored::Malformed).or_default() += 1,
        }
    }
    Ok(d)
}

fn change(kind: ChangeKind, e: &RawEvent) -> Option<Change> {
    let data: SecretData = serde_json::from_value(e.data.clone()?).ok()?;
    if data
        .object_type
        .as_deref()
        .is_some_and(|t| !t.eq_ignore_ascii_case("secret"))
    {
        return None;
    }
    let vault = data.vault_name?.to_ascii_lowercase();
    if vault.len() > MAX_VAULT_NAME || !crate::name::is_kv_token(&vault) {
        return None;
    }
    let name = SecretName::new(data.object_name.as_deref()?).ok()?;
    let version = match data.version {
        None => None,
        Some(v) if v.is_empty() => None,
        Some(v) if v.len() <= 64 && crate::name::is_kv_token(&v) => Some(v),
        Some(_) => return None,
    };
    let time = e
        .event_time
        .as_deref()
        .or(e.time.as_deref())
        .and_then(|t| humantime::parse_rfc3339_weak(t.trim_end_matches('Z')).ok());
    Some(Change {
        kind,
        vault,
        name: name.to_string(),
        version,
        time,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eg(ty: &str, vault: &str, name: &str, version: &str) -> String {
        format!(
            r#"{{"id":"e1","topic":"/subscriptions/x/resourceGroups/g/providers/Microsoft.KeyVault/vaults/{vault}","subject":"{name}","eventType":"{ty}","eventTime":"2026-12-01T10:00:00.1234567Z","data":{{"Id":"https://{vault}.vault.azure.net/secrets/{name}/{version}","VaultName":"{vault}","ObjectType":"Secret","ObjectName":"{name}","Version":"{version}","NBF":null,"EXP":"1796019479"}},"dataVersion":"1","metadataVersion":"1","unknownField":{{"deep":[1,2,3]}}}}"#
        )
    }

    fn ce(ty: &str, vault: &str, name: &str, version: &str) -> String {
        format!(
            r#"{{"specversion":"1.0","id":"c1","source":"/subscriptions/x/resourceGroups/g/providers/Microsoft.KeyVault/vaults/{vault}","subject":"{name}","type":"{ty}","time":"2026-12-01T10:00:00Z","datacontenttype":"application/json","data":{{"Id":"x","VaultName":"{vault}","ObjectType":"Secret","ObjectName":"{name}","Version":"{version}"}}}}"#
        )
    }

    #[test]
    fn both_schemas_single_and_batched() {
        let kinds = [
            (
                "Microsoft.KeyVault.SecretNewVersionCreated",
                ChangeKind::NewVersion,
            ),
            (
                "Microsoft.KeyVault.SecretNearExpiry",
                ChangeKind::NearExpiry,
            ),
            ("Microsoft.KeyVault.SecretExpired", ChangeKind::Expired),
        ];
        for (ty, kind) in kinds {
            for one in [
                eg(ty, "App-WEU", "db", "abc123"),
                ce(ty, "app-weu", "db", "abc123"),
            ] {
                for body in [one.clone(), format!("[{one},{one}]")] {
                    let d = parse(body.as_bytes()).unwrap();
                    assert!(!d.changes().is_empty(), "{body}");
                    for c in d.changes() {
                        assert_eq!(c.kind(), kind);
                        assert_eq!(c.vault(), "app-weu");
                        assert_eq!(c.name(), "db");
                        assert_eq!(c.version(), Some("abc123"));
                        assert!(c.time().is_some());
                    }
                    assert!(d.ignored().is_empty());
                }
            }
        }
    }

    #[test]
    fn the_validation_handshake_and_other_types() {
        let body = r#"[{"id":"v","topic":"t","subject":"","eventType":"Microsoft.EventGrid.SubscriptionValidationEvent","eventTime":"2026-12-01T10:00:00Z","data":{"validationCode":"512d38b6-c7b8-40c8-89fe-f46f9e9622b6","validationUrl":"https://x"},"dataVersion":"2"}]"#;
        let d = parse(body.as_bytes()).unwrap();
        assert_eq!(
            d.validation_code(),
            Some("512d38b6-c7b8-40c8-89fe-f46f9e9622b6")
        );
        let key = eg(
            "Microsoft.KeyVault.KeyNewVersionCreated",
            "app-weu",
            "k",
            "1",
        );
        let d = parse(
            format!(
                "[{key},{}]",
                eg("Microsoft.KeyVault.SecretExpired", "app-weu", "s", "2")
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(d.changes().len(), 1);
        assert_eq!(d.ignored()[&Ignored::OtherType], 1);
        assert_eq!(d.len(), 2);
    }

    /// Names, vaults and versions an event could use to reach further than a refresh hint are
    /// malformed; bad bodies are errors that never quote them.
    #[test]
    fn bad_events_and_bodies() {
        let ty = "Microsoft.KeyVault.SecretNewVersionCreated";
        for body in [
            eg(ty, "app-weu", "db_password", "1"),
            eg(ty, "app-weu", "../etc", "1"),
            eg(ty, "a.vault.azure.net", "db", "1"),
            eg(ty, &"v".repeat(25), "db", "1"),
            eg(ty, "app-weu", "db", "../x"),
            eg(ty, "app-weu", "db", &"a".repeat(65)),
            format!(
                r#"{{"eventType":"{ty}","data":{{"VaultName":"v","ObjectType":"Key","ObjectName":"db"}}}}"#
            ),
            format!(r#"{{"eventType":"{ty}","data":"not an object"}}"#),
            format!(r#"{{"eventType":"{ty}"}}"#),
            r#"{"eventType":7}"#.to_string(),
        ] {
            let d = parse(body.as_bytes()).unwrap();
            assert!(d.changes().is_empty(), "{body}");
            assert_eq!(d.ignored().get(&Ignored::Malformed), Some(&1), "{body}");
        }
        for body in [&b"not json hunter2"[..], b"42", b"\"x\""] {
            let e = parse(body).unwrap_err();
            assert!(e.is_invalid_value());
            assert!(!e.to_string().contains("hunter2"));
        }
        let e = parse(&vec![b' '; MAX_BODY_BYTES + 1]).unwrap_err();
        assert!(e.to_string().contains("bytes"));
        let many = format!("[{}]", vec!["{}"; MAX_EVENTS + 1].join(","));
        assert!(parse(many.as_bytes())
            .unwrap_err()
            .to_string()
            .contains("at most"));
    }
}
