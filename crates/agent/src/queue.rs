//! Event Grid's Storage-queue delivery as a pull transport, for machines Azure cannot call:
//! the agent takes Key Vault's events from an Azure Storage queue (through `azure_storage_queue`,
//! the Azure SDK for Rust's own crate, on the same `azure_core` as the secrets SDK) and hands
//! each to [`FailoverClient::notify_events`]. An event is a hint, never data: the value always
//! comes from a vault.
//!
//! Each message is taken with a visibility timeout, handed over, then deleted: one that the
//! agent dies holding comes back after the timeout (Event Grid delivers at least once, so
//! hints are idempotent anyway). A message that is not an event (not JSON, not Key Vault's)
//! is deleted and counted by the client's metrics, never retried for ever.

use std::sync::Arc;
use std::time::Duration;

use azure_core::http::{ClientOptions, RetryOptions, Transport, Url};
use azure_storage_queue::models::QueueClientReceiveMessagesOptions;
use azure_storage_queue::{QueueClient, QueueClientOptions};
use base64::Engine as _;
use keyvault_failover::FailoverClient;
use secrecy::{ExposeSecret, SecretString};

use crate::error::{Error, Kind};

/// The most messages one receive takes (the Storage API's limit).
const BATCH: i32 = 32;
/// The longest wait between receives while the queue is empty or failing: a hint waits at most
/// this long in the queue (a receive a second is 86,400 storage transactions a day per agent,
/// a few cents a month).
const MAX_IDLE: Duration = Duration::from_secs(5);

/// A queue of Key Vault events. The queue's URL carries its SAS token, a credential: it is
/// never logged, and errors name the queue by host and path only.
pub(crate) struct QueueSource {
    client: QueueClient,
    /// `host/path` of the queue, for logs.
    label: String,
    visibility: Duration,
    idle: Duration,
}

impl std::fmt::Debug for QueueSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueSource")
            .field("queue", &self.label)
            .finish_non_exhaustive()
    }
}

impl QueueSource {
    /// The queue at `url` with `sas` (the SAS token's query, with or without a leading `?`),
    /// each receive bounded by `timeout`.
    pub(crate) fn new(
        url: &str,
        sas: &SecretString,
        visibility: Duration,
        idle: Duration,
        timeout: Duration,
    ) -> Result<QueueSource, Error> {
        let bad = |m: &str| Error::new(Kind::Config, format!("[agent.queue] {m}"));
        let mut parsed = Url::parse(url).map_err(|_| bad("url is not a URL"))?;
        if parsed.query().is_some() {
            return Err(bad(
                "url must not carry a query: the SAS token goes in sas_file",
            ));
        }
        if !matches!(parsed.scheme(), "https" | "http") || parsed.cannot_be_a_base() {
            return Err(bad("url must be an http(s) queue URL"));
        }
        let label = format!("{}{}", parsed.host_str().unwrap_or_default(), parsed.path());
        let sas = sas.expose_secret().trim().trim_start_matches('?');
        if sas.is_empty() || !sas.contains("sig=") {
            return Err(bad("sas_file holds no SAS token (sv=...&sig=...)"));
        }
        parsed.set_query(Some(sas));
        let http = keyvault_failover::azure::http_client(timeout)
            .map_err(|e| bad(&format!("cannot build the HTTP client: {e}")))?;
        let options = QueueClientOptions {
            client_options: ClientOptions {
                // One attempt per receive: the loop below paces and retries.
                retry: RetryOptions::none(),
                transport: Some(Transport::new(Arc::new(http))),
                ..Default::default()
            },
            ..Default::default()
        };
        let client = QueueClient::new(parsed, None, Some(options))
            .map_err(|_| bad("the queue client cannot be built for this url"))?;
        Ok(QueueSource {
            client,
            label,
            visibility,
            idle,
        })
    }

    /// Takes events until the task is dropped (the agent's shutdown aborts it).
    pub(crate) async fn run(self, client: FailoverClient) {
        let mut idle = self.idle;
        loop {
            match self.round(&client).await {
                Ok(0) => {
                    tokio::time::sleep(idle).await;
                    idle = (idle * 2).min(MAX_IDLE.max(self.idle));
                }
                Ok(_) => idle = self.idle,
                Err(why) => {
                    tracing::warn!(queue = %self.label, error = %why, "event queue: receive failed");
                    tokio::time::sleep(idle).await;
                    idle = (idle * 2).min(MAX_IDLE.max(self.idle));
                }
            }
        }
    }

    /// One receive: hands each message's events to `client`, deletes the message. Returns
    /// how many messages there were.
    async fn round(&self, client: &FailoverClient) -> Result<usize, String> {
        let options = QueueClientReceiveMessagesOptions {
            number_of_messages: Some(BATCH),
            visibility_timeout: Some(self.visibility.as_secs().clamp(1, 600) as i32),
            ..Default::default()
        };
        let got = self
            .client
            .receive_messages(Some(options))
            .await
            .map_err(|e| describe(&e))?
            .into_model()
            .map_err(|e| describe(&e))?;
        let messages = got.items.unwrap_or_default();
        for m in &messages {
            if let Some(text) = &m.message_text {
                let taken = match decode(text) {
                    Some(body) => client.notify_events(&body).map(|_| ()),
                    None => client.notify_events(b"not an event").map(|_| ()),
                };
                if let Err(e) = taken {
                    // Counted by the client's metrics (`malformed`), then dropped.
                    tracing::warn!(queue = %self.label, error = %e, "event queue: not an event");
                }
            }
            if let (Some(id), Some(receipt)) = (&m.message_id, &m.pop_receipt) {
                if let Err(e) = self.client.delete_message(id, receipt, None).await {
                    tracing::warn!(queue = %self.label, error = %describe(&e), "event queue: delete failed (the message comes back)");
                }
            }
        }
        Ok(messages.len())
    }
}

/// A message's body: Event Grid writes the event's JSON, which a queue may hold as is or
/// Base64-encoded (the Storage SDKs' default encoding); anything else is not an event.
fn decode(text: &str) -> Option<Vec<u8>> {
    let t = text.trim();
    if t.starts_with('{') || t.starts_with('[') {
        return Some(t.as_bytes().to_vec());
    }
    base64::engine::general_purpose::STANDARD.decode(t).ok()
}

/// An SDK error without its URL (which carries the SAS token): the kind and the status.
fn describe(e: &azure_core::Error) -> String {
    match e.http_status() {
        Some(s) => format!("HTTP {}", u16::from(s)),
        None => format!("{:?}", e.kind()).chars().take(40).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_taken_raw_or_base64() {
        assert_eq!(decode(" [1] ").unwrap(), b"[1]");
        let b64 = base64::engine::general_purpose::STANDARD.encode(br#"{"a":1}"#);
        assert_eq!(decode(&b64).unwrap(), br#"{"a":1}"#);
        assert!(decode("not an event!").is_none());
    }

    #[test]
    fn a_sas_in_the_url_or_a_missing_one_is_refused() {
        let sas = SecretString::from("sv=2018-11-09&sig=abc".to_string());
        let d = Duration::from_secs(1);
        let e = QueueSource::new("http://127.0.0.1:1/acct/q?sig=x", &sas, d, d, d).unwrap_err();
        assert!(e.to_string().contains("sas_file"), "{e}");
        let none = SecretString::from("  ".to_string());
        let e = QueueSource::new("http://127.0.0.1:1/acct/q", &none, d, d, d).unwrap_err();
        assert!(e.to_string().contains("no SAS token"), "{e}");
        let ok = QueueSource::new("http://127.0.0.1:1/acct/q", &sas, d, d, d).unwrap();
        assert!(!format!("{ok:?}").contains("sig"), "{ok:?}");
    }
}
