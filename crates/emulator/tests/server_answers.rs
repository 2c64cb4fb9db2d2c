//! Whatever a server answers (any status, `Retry-After` in every form, bodies of any size and
//! shape), the client neither panics, nor hangs past its deadline, nor loses a vault for longer
//! than the Retry-After cap, and what reaches its errors stays bounded. A property test through
//! the real `SecretClient` over HTTPS against the emulator on 127.0.0.1 (hardening issue).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keyvault_failover::azure;
use keyvault_failover::{Access, Config, MAX_MESSAGE_LEN};
use keyvault_failover_emulator::{Emulator, StaticCredential, VaultFault};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};

const ATTEMPT: Duration = Duration::from_millis(800);
const DEADLINE: Duration = Duration::from_secs(3);
const CAP: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: String,
    repeat: u32,
}

fn retry_after() -> impl Strategy<Value = Option<String>> {
    let date = |d: i64| {
        let t = if d >= 0 {
            SystemTime::now() + Duration::from_secs(d as u64)
        } else {
            SystemTime::now() - Duration::from_secs(d.unsigned_abs())
        };
        httpdate::fmt_http_date(t)
    };
    prop_oneof![
        Just(None),
        (0u64..120).prop_map(|s| Some(s.to_string())),
        Just(Some(u64::MAX.to_string())),
        Just(Some("1000000000".to_string())),
        Just(Some("99999999999999999999999999".to_string())),
        (-100_000i64..100_000_000).prop_map(move |d| Some(date(d))),
        Just(Some("Fri, 31 Dec 9999 23:59:59 GMT".to_string())),
        "[ -~]{0,40}".prop_map(Some),
    ]
}

fn body() -> impl Strategy<Value = (String, u32)> {
    prop_oneof![
        Just((String::new(), 1)),
        "[a-zA-Z]{1,12}".prop_map(|c| (
            format!(r#"{{"error":{{"code":"{c}","message":"something {c}"}}}}"#),
            1
        )),
        Just((
            r#"{"value":"x","id":"https://app-weu.vault.azure.net/secrets/db/0123456789abcdef0123456789abcdef"}"#
                .to_string(),
            1
        )),
        Just((r#"{"value": 1, "id": null}"#.to_string(), 1)),
        ".{0,200}".prop_map(|b| (b, 1)),
        // A forged log line, repeated into a large body.
        Just(("line\n2026-01-01T00:00:00Z INFO forged\r\n".to_string(), 40_000)),
        // Up to 4 MiB of one byte.
        (1u32..4).prop_map(|mib| ("x".to_string(), mib * 1024 * 1024)),
    ]
}

fn answer() -> impl Strategy<Value = Answer> {
    let status = prop_oneof![
        Just(200u16),
        Just(201),
        Just(204),
        Just(301),
        Just(400),
        Just(401),
        Just(403),
        Just(404),
        Just(408),
        Just(409),
        Just(429),
        Just(500),
        Just(503),
        Just(504),
        100u16..1000,
    ];
    (status, retry_after(), body()).prop_map(|(status, retry_after, (body, repeat))| Answer {
        status,
        retry_after,
        body,
        repeat,
    })
}

#[test]
fn arbitrary_server_answers_never_panic_hang_or_take_a_vault_away() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let emu = rt.block_on(async {
        Emulator::builder()
            .vault("weu")
            .vault("neu")
            .start()
            .await
            .unwrap()
    });
    emu.insert("weu", "db", "v");
    emu.insert("neu", "db", "v");
    let http = emu.http_client(ATTEMPT).unwrap();
    let mut runner = TestRunner::new(RunnerConfig {
        cases: 40,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    runner
        .run(&answer(), |a| {
            rt.block_on(async {
                // A fresh client per case: no breaker or throttle state carried over.
                let config = Config::builder()
                    .seed(0x6b76_6661_696c)
                    .region("weu", &emu.url("weu"), Access::ReadWrite)
                    .region("neu", &emu.url("neu"), Access::ReadOnly)
                    .attempt_timeout(ATTEMPT)
                    .deadline(DEADLINE)
                    .max_retry_after(CAP)
                    .probing(false)
                    .background_refresh(false)
                    .hedging(false)
                    .build()
                    .unwrap();
                let client =
                    azure::connect(config, Arc::new(StaticCredential), Some(http.clone())).unwrap();
                emu.set_fault(
                    "weu",
                    VaultFault::Answer {
                        status: a.status,
                        retry_after: a.retry_after.clone(),
                        body: a.body.clone(),
                        repeat: a.repeat,
                    },
                );
                let t0 = std::time::Instant::now();
                let read = tokio::time::timeout(DEADLINE * 3, client.get_secret("db")).await;
                let elapsed = t0.elapsed();
                emu.set_fault("weu", VaultFault::Up);
                let read = read.map_err(|_| {
                    TestCaseError::fail(format!("no answer within 3 deadlines: {a:?}"))
                })?;
                prop_assert!(
                    elapsed <= DEADLINE + Duration::from_secs(2),
                    "{elapsed:?} past the deadline for {a:?}"
                );
                match read {
                    Ok(s) => prop_assert!(s.expose() == "v" || s.expose() == "x"),
                    Err(e) => {
                        let text = e.to_string();
                        prop_assert!(
                            text.len() <= 2 * MAX_MESSAGE_LEN + 512,
                            "an error of {} bytes",
                            text.len()
                        );
                        prop_assert!(!text.contains('\n') && !text.contains('\r'), "{text}");
                        // Only an answer that rules the secret out (401/403, another 4xx, or
                        // the primary's 404) may fail the read while neu is healthy.
                        prop_assert!(
                            e.is_auth() || e.is_rejected() || e.is_not_found(),
                            "{a:?}: {e}"
                        );
                    }
                }
                let health = client.health();
                if let Some(t) = health.regions()[0].throttled_for() {
                    prop_assert!(t <= CAP, "weu kept away for {t:?} by {a:?}");
                }
                Ok(())
            })
        })
        .unwrap();
    // Every case reached weu (its challenge and the faulted read).
    assert!(emu.requests("weu") >= 80, "{}", emu.requests("weu"));
}

/// A body of any size is read only up to `MAX_RESPONSE_BODY` (the SDK would buffer it whole):
/// the answer is malformed, and the read moves on to the next region.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_body_is_cut_off_and_classified_malformed() {
    use keyvault_failover::{SecretName, SecretStore, StoreErrorKind};
    let emu = Emulator::builder()
        .vault("weu")
        .vault("neu")
        .start()
        .await
        .unwrap();
    emu.insert("neu", "db", "v");
    emu.set_fault(
        "weu",
        VaultFault::Answer {
            status: 200,
            retry_after: None,
            body: "x".repeat(1024),
            repeat: 8 * 1024,
        },
    );
    let store = azure::AzureStore::new(
        &emu.url("weu"),
        Arc::new(StaticCredential),
        emu.http_client(Duration::from_secs(5)).unwrap(),
    )
    .unwrap();
    let e = store
        .get(&SecretName::new("db").unwrap(), None)
        .await
        .unwrap_err();
    assert_eq!(*e.kind(), StoreErrorKind::Malformed, "{e}");
    assert!(e.message().contains("larger than"), "{e}");
    assert!(e.message().len() <= MAX_MESSAGE_LEN + 32);
}
