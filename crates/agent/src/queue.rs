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

use std::time::Duration;

use azure_core::http::{ClientOptions, RetryOptions, Url};
use azure_storage_queue::models::QueueClientReceiveMessagesOptions;
use azure_storage_queue::{QueueClient, QueueClientOptions};
use base64::Engine as _;
use keyvault_failover::FailoverClient;
use secrecy::{ExposeSecret, SecretString};

use crate::error::{Error, Kind};

/// The most messages one receive takes (the Storage API's limit).
const BATCH: i32 = 32;
/// The largest receive answer read: 32 messages of at most 64 KiB each (the Storage limit),
/// Base64 and XML around them, with room to spare. A larger one is cut off (and the receive
/// fails), as the vault clients' answers are bounded.
const MAX_RECEIVE_BODY: usize = 4 * 1024 * 1024;
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
        // The SAS goes on every receive and delete: in clear text only to this machine (the
        // Azurite emulator), never across a network.
        if parsed.scheme() == "http"
            && !crate::is_loopback_host(parsed.host_str().unwrap_or_default())
        {
            return Err(bad(
                "url is http:// to a host that is not the loopback: the SAS token would cross \
                 the network in clear text on every receive; use https:// (http:// is only for \
                 an emulator on 127.0.0.1, ::1 or localhost)",
            ));
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
                transport: Some(keyvault_failover::azure::bounded_transport(
                    http,
                    MAX_RECEIVE_BODY,
                )),
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
        let answer = self
            .client
            .receive_messages(Some(options))
            .await
            .map_err(|e| describe(&e))?;
        let raw = answer.body().as_ref().to_vec();
        let got = match answer.into_model() {
            Ok(got) => got,
            // A batch the SDK cannot decode would come back every visibility timeout for ever:
            // its messages are malformed, counted as such and deleted by the receipts the
            // answer holds.
            Err(e) => {
                let receipts = receipts(&raw);
                tracing::warn!(queue = %self.label, error = %describe(&e), messages = receipts.len(), "event queue: a batch that does not decode; deleting its messages");
                for (id, receipt) in &receipts {
                    let _ = client.notify_events(b"not an event");
                    if let Err(e) = self.client.delete_message(id, receipt, None).await {
                        tracing::warn!(queue = %self.label, error = %describe(&e), "event queue: delete failed (the message comes back)");
                    }
                }
                return Ok(receipts.len());
            }
        };
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

/// The `(MessageId, PopReceipt)` pairs of a receive answer that the SDK could not decode,
/// taken from its text as Storage writes it (`<QueueMessage>` elements, each with one
/// `<MessageId>` and one `<PopReceipt>`); at most one batch's worth.
fn receipts(raw: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(raw);
    let inner = |m: &str, tag: &str| -> Option<String> {
        let open = format!("<{tag}>");
        let start = m.find(&open)? + open.len();
        let len = m[start..].find(&format!("</{tag}>"))?;
        let v = m[start..start + len].trim();
        (!v.is_empty() && v.len() <= 1024).then(|| v.to_string())
    };
    text.split("<QueueMessage>")
        .skip(1)
        .filter_map(|m| Some((inner(m, "MessageId")?, inner(m, "PopReceipt")?)))
        .take(BATCH as usize)
        .collect()
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
    fn an_undecodable_batch_still_yields_its_receipts() {
        let raw = br#"<?xml version="1.0"?><QueueMessagesList><QueueMessage><MessageId>a1</MessageId><InsertionTime>not a date</InsertionTime><PopReceipt>r1</PopReceipt><MessageText>&bad;</MessageText></QueueMessage><QueueMessage><MessageId>a2</MessageId><PopReceipt>r2</PopReceipt></QueueMessage><QueueMessage><MessageId>no receipt</MessageId></QueueMessage></QueueMessagesList>"#;
        assert_eq!(
            receipts(raw),
            [("a1".into(), "r1".into()), ("a2".into(), "r2".into())]
        );
        assert!(receipts(b"\xff\x00 garbage").is_empty());
    }

    #[test]
    fn http_carries_the_sas_only_to_the_loopback() {
        let sas = SecretString::from("sv=2018-11-09&sig=abc".to_string());
        let d = Duration::from_secs(1);
        for url in [
            "http://acct.queue.core.windows.net/q",
            "http://10.0.0.5/acct/q",
            "http://127.0.0.1.example.com/acct/q",
        ] {
            let e = QueueSource::new(url, &sas, d, d, d).unwrap_err();
            assert!(e.to_string().contains("clear text"), "{url}: {e}");
        }
        for url in [
            "http://127.0.0.1:10001/acct/q",
            "http://[::1]:10001/acct/q",
            "http://localhost:10001/acct/q",
            "https://acct.queue.core.windows.net/q",
        ] {
            assert!(QueueSource::new(url, &sas, d, d, d).is_ok(), "{url}");
        }
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
