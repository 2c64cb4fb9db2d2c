//! The events Key Vault publishes to Event Grid, posted to a webhook on 127.0.0.1: a secret's
//! new version (every write, through the REST API or [`Emulator::insert`]) and, on request,
//! its near-expiry and expiry, in the Event Grid schema or CloudEvents 1.0, one event per
//! request as Event Grid delivers with its default batch size.
//!
//! [`Emulator::insert`]: crate::Emulator::insert

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::json;

use crate::error::Error;

/// The delivery schema of [`Emulator::set_webhook`](crate::Emulator::set_webhook).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventSchema {
    /// Event Grid's own schema: a JSON array of events.
    EventGrid,
    /// CloudEvents 1.0, structured mode: one event object.
    CloudEvents,
}

/// A webhook: its URL, the schema, and the headers sent with each event.
pub type WebhookTarget<'a> = (&'a str, EventSchema, &'a [(&'a str, &'a str)]);

/// Which secret event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretEvent {
    /// `Microsoft.KeyVault.SecretNewVersionCreated`.
    NewVersion,
    /// `Microsoft.KeyVault.SecretNearExpiry`.
    NearExpiry,
    /// `Microsoft.KeyVault.SecretExpired`.
    Expired,
}

impl SecretEvent {
    fn event_type(self) -> &'static str {
        match self {
            SecretEvent::NewVersion => "Microsoft.KeyVault.SecretNewVersionCreated",
            SecretEvent::NearExpiry => "Microsoft.KeyVault.SecretNearExpiry",
            SecretEvent::Expired => "Microsoft.KeyVault.SecretExpired",
        }
    }
}

/// Where events go, shared by every vault of one emulator.
#[derive(Default)]
pub(crate) struct Webhook {
    target: Mutex<Option<Arc<Target>>>,
    pub(crate) sent: AtomicU64,
    pub(crate) failed: AtomicU64,
    next_id: AtomicU64,
}

struct Target {
    url: String,
    schema: EventSchema,
    headers: Vec<(String, String)>,
    client: reqwest::Client,
}

impl Webhook {
    /// Posts events to `url` (an `http://127.0.0.1:PORT/...` address) with `headers` (Event
    /// Grid's custom delivery headers), or stops with `None`.
    pub(crate) fn set(&self, target: Option<WebhookTarget<'_>>) -> Result<(), Error> {
        let target = match target {
            None => None,
            Some((url, schema, headers)) => {
                let parsed = url::Url::parse(url)
                    .map_err(|e| Error::config(format!("webhook {url:?}: {e}")))?;
                if parsed.scheme() != "http"
                    || parsed.host_str() != Some("127.0.0.1")
                    || parsed.port().is_none()
                {
                    return Err(Error::config(format!(
                        "webhook {url:?}: the emulator posts only to http://127.0.0.1:PORT"
                    )));
                }
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .no_proxy()
                    .build()
                    .map_err(|e| Error::config(format!("webhook client: {e}")))?;
                Some(Arc::new(Target {
                    url: url.to_string(),
                    schema,
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    client,
                }))
            }
        };
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) = target;
        Ok(())
    }

    /// Posts the event for `name`'s `version` in vault `vault` (its name, e.g. `app-weu`), in
    /// the background; a failed delivery is counted, not retried.
    pub(crate) fn emit(
        self: &Arc<Self>,
        kind: SecretEvent,
        vault: &str,
        name: &str,
        version: &str,
    ) {
        let Some(t) = self
            .target
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let time = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
        let topic = format!(
            "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/emulator/providers/Microsoft.KeyVault/vaults/{vault}"
        );
        let data = json!({
            "Id": format!("https://{vault}.vault.azure.net/secrets/{name}/{version}"),
            "VaultName": vault,
            "ObjectType": "Secret",
            "ObjectName": name,
            "Version": version,
            "NBF": null,
            "EXP": null,
        });
        let (body, content_type) = match t.schema {
            EventSchema::EventGrid => (
                json!([{
                    "id": format!("emulator-{id}"),
                    "topic": topic,
                    "subject": name,
                    "eventType": kind.event_type(),
                    "eventTime": time,
                    "data": data,
                    "dataVersion": "1",
                    "metadataVersion": "1",
                }]),
                "application/json",
            ),
            EventSchema::CloudEvents => (
                json!({
                    "specversion": "1.0",
                    "id": format!("emulator-{id}"),
                    "source": topic,
                    "subject": name,
                    "type": kind.event_type(),
                    "time": time,
                    "datacontenttype": "application/json",
                    "data": data,
                }),
                "application/cloudevents+json; charset=utf-8",
            ),
        };
        let hook = self.clone();
        rt.spawn(async move {
            let mut r = t
                .client
                .post(&t.url)
                .header("content-type", content_type)
                .body(body.to_string());
            for (k, v) in &t.headers {
                r = r.header(k, v);
            }
            let ok = r.send().await.is_ok_and(|resp| resp.status().is_success());
            let counter = if ok { &hook.sent } else { &hook.failed };
            counter.fetch_add(1, Ordering::Relaxed);
        });
    }
}
