//! The emulator speaks Key Vault's wire format, including to bad requests, and its admin
//! endpoint switches faults. Raw HTTPS requests (no SDK) to 127.0.0.1.

use std::time::Duration;

use keyvault_failover_emulator::{Emulator, VaultFault};
use serde_json::Value;

const API: &str = "api-version=2025-07-01";

async fn call(
    emu: &Emulator,
    method: reqwest::Method,
    path: &str,
    body: Option<Vec<u8>>,
    auth: bool,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let http = emu.http_client(Duration::from_secs(5)).unwrap();
    let mut req = http.request(method, format!("{}{path}", emu.url("weu")));
    if auth {
        req = req.bearer_auth("test-token");
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b);
    }
    let rsp = req.send().await.expect("the emulator answers");
    let status = rsp.status().as_u16();
    let headers = rsp.headers().clone();
    let text = rsp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        headers,
    )
}

fn code(v: &Value) -> &str {
    v["error"]["code"]
        .as_str()
        .unwrap_or("<no Key Vault error body>")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_key_vault_errors() {
    use reqwest::Method;
    let emu = Emulator::builder().vault("weu").start().await.unwrap();
    emu.insert("weu", "db", "v");

    let (s, _, h) = call(
        &emu,
        Method::GET,
        &format!("/secrets/db/?{API}"),
        None,
        false,
    )
    .await;
    assert_eq!(s, 401, "no token: the bearer challenge");
    let challenge = h["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.contains("resource=\"https://vault.azure.net\""),
        "{challenge}"
    );

    let (s, v, _) = call(
        &emu,
        Method::GET,
        &format!("/secrets/db/?{API}"),
        None,
        true,
    )
    .await;
    assert_eq!((s, v["value"].as_str()), (200, Some("v")));
    assert!(v["id"]
        .as_str()
        .unwrap()
        .starts_with("https://app-weu.vault.azure.net/secrets/db/"));
    assert!(v["attributes"]["created"].is_i64(), "integer unix seconds");

    type Case = (Method, String, Option<Vec<u8>>, u16, &'static str);
    let cases: Vec<Case> = vec![
        (
            Method::GET,
            format!("/nothing/here?{API}"),
            None,
            404,
            "NotFound",
        ),
        (
            Method::GET,
            format!("/secrets/missing/?{API}"),
            None,
            404,
            "SecretNotFound",
        ),
        (
            Method::GET,
            "/secrets/db/".into(),
            None,
            400,
            "MissingApiVersionParameter",
        ),
        (
            Method::GET,
            format!("/secrets/bad_name/?{API}"),
            None,
            400,
            "BadParameter",
        ),
        (
            Method::POST,
            format!("/secrets/db?{API}"),
            None,
            405,
            "MethodNotAllowed",
        ),
        (
            Method::PUT,
            format!("/secrets/db?{API}"),
            Some(b"{not json".to_vec()),
            400,
            "BadParameter",
        ),
        (
            Method::PUT,
            format!("/secrets/db?{API}"),
            Some(b"{}".to_vec()),
            400,
            "BadParameter",
        ),
        (
            Method::PUT,
            format!("/secrets/db?{API}"),
            Some(serde_json::to_vec(&serde_json::json!({"value": "x".repeat(26 * 1024)})).unwrap()),
            400,
            "BadParameter",
        ),
        (
            Method::PUT,
            format!("/secrets/db?{API}"),
            Some(vec![b'x'; 2 * 1024 * 1024]),
            413,
            "RequestEntityTooLarge",
        ),
        (
            Method::GET,
            format!("/secrets?{API}&maxresults=1000"),
            None,
            400,
            "BadParameter",
        ),
        (
            Method::GET,
            format!("/secrets?{API}&%24skiptoken=zz"),
            None,
            400,
            "BadParameter",
        ),
    ];
    for (m, path, body, status, expected) in cases {
        let (s, v, _) = call(&emu, m.clone(), &path, body, true).await;
        assert_eq!((s, code(&v)), (status, expected), "{m} {path}");
    }
    assert_eq!(
        emu.current("weu", "db").unwrap().0,
        "v",
        "bad writes lost nothing"
    );

    let (s, v, _) = call(
        &emu,
        Method::DELETE,
        &format!("/secrets/db?{API}"),
        None,
        true,
    )
    .await;
    assert_eq!(s, 200);
    assert!(v["recoveryId"]
        .as_str()
        .unwrap()
        .ends_with("/deletedsecrets/db"));
    assert!(v["scheduledPurgeDate"].is_i64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_endpoint_lists_vaults_and_switches_faults() {
    let emu = Emulator::builder()
        .vault("weu")
        .vault("neu")
        .admin(true)
        .start()
        .await
        .unwrap();
    let admin = emu.admin_addr().expect("admin enabled");
    assert!(admin.ip().is_loopback());
    let token = emu.admin_token().to_string();
    assert!(token.len() >= 32);
    // Without the token, with a wrong one, or with a Host that is not the loopback address
    // (a browser page after DNS rebinding): refused.
    let bare = reqwest::Client::builder().no_proxy().build().unwrap();
    let r = bare
        .get(format!("http://{admin}/vaults"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = bare
        .put(format!("http://{admin}/vaults/weu/fault"))
        .bearer_auth("guess")
        .body(r#"{"fault": "refuse"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = bare
        .get(format!("http://{admin}/vaults"))
        .bearer_auth(&token)
        .header("host", format!("evil.example:{}", admin.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    let http = reqwest::Client::builder()
        .no_proxy()
        .default_headers(headers)
        .build()
        .unwrap();
    let vaults: Value = http
        .get(format!("http://{admin}/vaults"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap();
    assert_eq!(vaults.as_array().unwrap().len(), 2);
    assert_eq!(vaults[0]["url"], "https://app-weu.vault.azure.net");
    let r = http
        .put(format!("http://{admin}/vaults/weu/fault"))
        .body(r#"{"fault": "delay", "ms": 250}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(v["fault"]["fault"], "delay");
    let r = http
        .put(format!("http://{admin}/vaults/weu/fault"))
        .body(r#"{"fault": "melt"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http
        .put(format!("http://{admin}/vaults/xyz/fault"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // The delay is in force on the vault.
    emu.insert("weu", "db", "v");
    let t = std::time::Instant::now();
    let (s, _, _) = call(
        &emu,
        reqwest::Method::GET,
        &format!("/secrets/db/?{API}"),
        None,
        true,
    )
    .await;
    assert_eq!(s, 200);
    assert!(t.elapsed() >= Duration::from_millis(250));
    emu.apply_fault("weu", VaultFault::Up).await.unwrap();
}

/// Behaviour checked against the Key Vault REST reference (hardening issue, emulator part):
/// version listing, disabled secrets, exp/nbf, soft-delete conflicts, recover and purge, and a
/// Retry-After that is never short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emulator_answers_as_key_vault_does() {
    use reqwest::Method;
    let emu = Emulator::builder().vault("weu").start().await.unwrap();
    let put = |v: serde_json::Value| Some(serde_json::to_vec(&v).unwrap());

    // Versions: GET /secrets/{name}/versions lists every version, paged.
    for i in 0..3 {
        let (s, _, _) = call(
            &emu,
            Method::PUT,
            &format!("/secrets/db?{API}"),
            put(serde_json::json!({
                "value": format!("v{i}"),
                "attributes": {"exp": 4_102_444_800i64, "nbf": 1_700_000_000i64}
            })),
            true,
        )
        .await;
        assert_eq!(s, 200);
    }
    let (s, v, _) = call(
        &emu,
        Method::GET,
        &format!("/secrets/db/versions?{API}&maxresults=2"),
        None,
        true,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["value"].as_array().unwrap().len(), 2);
    assert!(v["value"][0]["id"]
        .as_str()
        .unwrap()
        .contains("/secrets/db/"));
    assert!(
        v["value"][0].get("value").is_none(),
        "a listing carries no values"
    );
    let next = v["nextLink"].as_str().expect("a second page");
    let path = next.trim_start_matches("https://app-weu.vault.azure.net");
    let (s, v, _) = call(&emu, Method::GET, path, None, true).await;
    assert_eq!((s, v["value"].as_array().unwrap().len()), (200, 1));
    assert!(v["nextLink"].is_null());

    // exp and nbf sent on PUT are kept.
    let (_, v, _) = call(
        &emu,
        Method::GET,
        &format!("/secrets/db/?{API}"),
        None,
        true,
    )
    .await;
    assert_eq!(v["attributes"]["exp"], 4_102_444_800i64);
    assert_eq!(v["attributes"]["nbf"], 1_700_000_000i64);

    // A disabled secret's value: 403 Forbidden, inner code SecretDisabled.
    assert!(emu.set_enabled("weu", "db", false));
    let (s, v, _) = call(
        &emu,
        Method::GET,
        &format!("/secrets/db/?{API}"),
        None,
        true,
    )
    .await;
    assert_eq!((s, code(&v)), (403, "Forbidden"));
    assert_eq!(v["error"]["innererror"]["code"], "SecretDisabled");
    emu.set_enabled("weu", "db", true);

    // Soft delete: the name cannot be reused (409) until purged; it can be read, recovered.
    let (s, _, _) = call(
        &emu,
        Method::DELETE,
        &format!("/secrets/db?{API}"),
        None,
        true,
    )
    .await;
    assert_eq!(s, 200);
    let (s, v, _) = call(
        &emu,
        Method::PUT,
        &format!("/secrets/db?{API}"),
        put(serde_json::json!({"value": "x"})),
        true,
    )
    .await;
    assert_eq!((s, code(&v)), (409, "Conflict"));
    let (s, v, _) = call(
        &emu,
        Method::GET,
        &format!("/deletedsecrets/db?{API}"),
        None,
        true,
    )
    .await;
    assert_eq!(s, 200);
    assert!(v["recoveryId"]
        .as_str()
        .unwrap()
        .ends_with("/deletedsecrets/db"));
    assert!(
        v.get("value").is_none(),
        "a deleted secret's value is not served"
    );
    let (s, v, _) = call(
        &emu,
        Method::GET,
        &format!("/deletedsecrets?{API}"),
        None,
        true,
    )
    .await;
    assert_eq!((s, v["value"].as_array().unwrap().len()), (200, 1));
    let (s, v, _) = call(
        &emu,
        Method::POST,
        &format!("/deletedsecrets/db/recover?{API}"),
        None,
        true,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["value"], "v2");
    assert_eq!(emu.current("weu", "db").unwrap().0, "v2");
    let (s, _, _) = call(
        &emu,
        Method::DELETE,
        &format!("/secrets/db?{API}"),
        None,
        true,
    )
    .await;
    assert_eq!(s, 200);
    let (s, _, _) = call(
        &emu,
        Method::DELETE,
        &format!("/deletedsecrets/db?{API}"),
        None,
        true,
    )
    .await;
    assert_eq!(s, 204, "purged");
    let (s, v, _) = call(
        &emu,
        Method::GET,
        &format!("/deletedsecrets/db?{API}"),
        None,
        true,
    )
    .await;
    assert_eq!((s, code(&v)), (404, "SecretNotFound"));
    let (s, _, _) = call(
        &emu,
        Method::PUT,
        &format!("/secrets/db?{API}"),
        put(serde_json::json!({"value": "new"})),
        true,
    )
    .await;
    assert_eq!(s, 200, "a purged name can be reused");
    let (s, v, _) = call(
        &emu,
        Method::POST,
        &format!("/deletedsecrets/none/recover?{API}"),
        None,
        true,
    )
    .await;
    assert_eq!((s, code(&v)), (404, "SecretNotFound"));
}

/// The vault's limit answers 429 with a Retry-After rounded up: waiting exactly that long
/// finds a free slot (rounded down, an SDK obeying it met one more 429).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_never_short() {
    use reqwest::Method;
    let emu = Emulator::builder()
        .vault("weu")
        .throttle(2, Duration::from_millis(1500))
        .start()
        .await
        .unwrap();
    emu.insert("weu", "db", "v");
    let t0 = std::time::Instant::now();
    for _ in 0..2 {
        let (s, _, _) = call(
            &emu,
            Method::GET,
            &format!("/secrets/db/?{API}"),
            None,
            true,
        )
        .await;
        assert_eq!(s, 200);
    }
    let (s, _, h) = call(
        &emu,
        Method::GET,
        &format!("/secrets/db/?{API}"),
        None,
        true,
    )
    .await;
    assert_eq!(s, 429);
    let ra: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    // The slot frees between 1.0 s and 1.5 s from now when the three requests took under
    // half a second: rounded up that is 2, rounded down it was 1.
    if t0.elapsed() < Duration::from_millis(500) {
        assert_eq!(ra, 2, "rounded up");
    } else {
        assert!(ra >= 1);
    }
}

/// `GetErrors`: a partial outage, secret GETs fail while the listing answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_only_fault_spares_the_listing() {
    use reqwest::Method;
    let emu = Emulator::builder().vault("weu").start().await.unwrap();
    emu.insert("weu", "db", "v");
    emu.set_fault("weu", VaultFault::GetErrors);
    let (s, v, _) = call(
        &emu,
        Method::GET,
        &format!("/secrets/db/?{API}"),
        None,
        true,
    )
    .await;
    assert_eq!((s, code(&v)), (503, "ServiceUnavailable"));
    let (s, v, _) = call(&emu, Method::GET, &format!("/secrets?{API}"), None, true).await;
    assert_eq!((s, v["value"].as_array().map(Vec::len)), (200, Some(1)));
}

/// Key Vault's update-properties call: `PATCH /secrets/{name}/{version}` (an empty version:
/// the latest) changes what it carries, keeps the rest, makes no new version and moves
/// `updated`; a value, 16 tags or a managed secret are refused as Key Vault refuses them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_properties_managed_secrets_and_tag_limits() {
    use reqwest::Method;
    let emu = Emulator::builder().vault("weu").start().await.unwrap();
    let id = emu.insert("weu", "db", "v");
    let body = |v: Value| Some(serde_json::to_vec(&v).unwrap());
    let (s, v, _) = call(
        &emu,
        Method::PATCH,
        &format!("/secrets/db/?{API}"),
        body(serde_json::json!({
            "contentType": "text/plain",
            "tags": {"team": "payments"},
            "attributes": {"enabled": false, "exp": 2_000_000_000i64}
        })),
        true,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["value"].is_null(), "an update's answer has no value");
    assert_eq!(v["attributes"]["enabled"], false);
    assert_eq!(v["attributes"]["exp"], 2_000_000_000i64);
    assert_eq!(v["tags"]["team"], "payments");
    assert_eq!(emu.current("weu", "db").unwrap().1, id, "no new version");
    // Absent fields are kept; a versioned path works too.
    let (s, v, _) = call(
        &emu,
        Method::PATCH,
        &format!("/secrets/db/{id}?{API}"),
        body(serde_json::json!({"attributes": {"enabled": true}})),
        true,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["contentType"], "text/plain");
    assert_eq!(v["attributes"]["exp"], 2_000_000_000i64);

    let sixteen: serde_json::Map<String, Value> = (0..16)
        .map(|i| (format!("t{i}"), Value::from("x")))
        .collect();
    for (b, status, what) in [
        (serde_json::json!({"value": "new"}), 400, "a value"),
        (serde_json::json!({"tags": sixteen}), 400, "16 tags"),
        (
            serde_json::json!({"tags": {"t": "x".repeat(257)}}),
            400,
            "a long tag",
        ),
    ] {
        let (s, v, _) = call(
            &emu,
            Method::PATCH,
            &format!("/secrets/db/?{API}"),
            body(b),
            true,
        )
        .await;
        assert_eq!((s, code(&v)), (status, "BadParameter"), "{what}");
    }
    let (s, v, _) = call(
        &emu,
        Method::PATCH,
        &format!("/secrets/none/?{API}"),
        body(serde_json::json!({})),
        true,
    )
    .await;
    assert_eq!((s, code(&v)), (404, "SecretNotFound"));

    emu.insert_managed("weu", "cert", "pfx");
    let (s, v, _) = call(&emu, Method::GET, &format!("/secrets?{API}"), None, true).await;
    assert_eq!(s, 200);
    let items = v["value"].as_array().unwrap();
    let cert = items
        .iter()
        .find(|i| i["id"].as_str().unwrap().ends_with("/cert"))
        .unwrap();
    assert_eq!(cert["managed"], true);
    let db = items
        .iter()
        .find(|i| i["id"].as_str().unwrap().ends_with("/db"))
        .unwrap();
    assert!(db["managed"].is_null(), "only managed secrets say so");
    for (m, path) in [
        (Method::PUT, format!("/secrets/cert?{API}")),
        (Method::PATCH, format!("/secrets/cert/?{API}")),
    ] {
        let b = if m == Method::PUT {
            serde_json::json!({"value": "x"})
        } else {
            serde_json::json!({"tags": {}})
        };
        let (s, v, _) = call(&emu, m, &path, body(b), true).await;
        assert_eq!((s, code(&v)), (403, "Forbidden"));
        assert_eq!(v["error"]["innererror"]["code"], "SecretManagedByKeyVault");
    }
}

/// Writes have their own limit (Key Vault: 300 per 10 s, apart from the 4,000 GETs): over
/// it, 429 with `Retry-After`, while GETs still answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_have_their_own_limit() {
    use reqwest::Method;
    let emu = Emulator::builder()
        .vault("weu")
        .write_limit(3)
        .start()
        .await
        .unwrap();
    let body = Some(br#"{"value":"v"}"#.to_vec());
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let (s, _, h) = call(
            &emu,
            Method::PUT,
            &format!("/secrets/db?{API}"),
            body.clone(),
            true,
        )
        .await;
        if s == 429 {
            assert!(h["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
        }
        statuses.push(s);
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    let (s, _, _) = call(
        &emu,
        Method::GET,
        &format!("/secrets/db/?{API}"),
        None,
        true,
    )
    .await;
    assert_eq!(s, 200, "GETs are counted apart");
}

/// A body over the limit gets its 413 with Key Vault's error, every time: the emulator reads
/// the rest of it (bounded) before answering. Before: it answered at the limit and closed, and a
/// client still sending met a broken pipe instead of the answer (seen in CI).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_always_gets_its_answer() {
    use reqwest::Method;
    let emu = Emulator::builder().vault("weu").start().await.unwrap();
    for _ in 0..20 {
        let (s, v, _) = call(
            &emu,
            Method::PUT,
            &format!("/secrets/db?{API}"),
            Some(vec![b'x'; 4 * 1024 * 1024]),
            true,
        )
        .await;
        assert_eq!((s, code(&v)), (413, "RequestEntityTooLarge"));
    }
}

/// A peer that sends requests and never reads the answers loses its connection once the
/// emulator has waited 10 s to write to it, and with it its slot. Before: every one of the
/// admin endpoint's 64 slots (and the vaults' 1,024) could be held for ever by such peers,
/// with no token (a 401 is an answer to write too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_loses_its_admin_connection_slot() {
    use keyvault_failover_emulator::peers::{first_answer, NeverReading};
    let emu = Emulator::builder()
        .vault("weu")
        .admin(true)
        .start()
        .await
        .unwrap();
    let admin = emu.admin_addr().expect("admin enabled");
    let request = format!(
        "GET /vaults HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n",
        admin.port()
    );
    let peers = NeverReading::connect(admin, 64, &request).await.unwrap();
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .no_proxy()
        .build()
        .unwrap();
    let url = format!("http://{admin}/vaults");
    // Every slot is taken: another connection is dropped at accept.
    assert!(
        peers.refuse_others(&c, &url, Duration::from_secs(10)).await,
        "the peers that never read hold every slot"
    );
    // Within the write bound (10 s) and some slack, slots are free again: the admin
    // endpoint answers (401 without the token).
    let freed = first_answer(&c, &url, Duration::from_secs(40)).await;
    assert_eq!(
        freed,
        Some(401),
        "a peer that never reads still holds its slot"
    );
    drop(peers);
}
