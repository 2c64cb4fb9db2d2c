//! The agent's Key Vault API (`[agent.vault_api]`) as a process, driven by Microsoft's own
//! Python SDK, unchanged but for the vault URL and a static-token credential, over the
//! emulator's two vaults: reads, a version, a paged listing, a write; the primary refused
//! (reads go on from the secondary with no error); every vault down (the held value, stale,
//! and a write refused with 403); a wrong token (401). And with a real HTTP client: the
//! challenge, the freshness headers, Key Vault's error bodies for bad input.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use keyvault_failover_emulator::{Emulator, VaultFault};

use common::{write_private, TOKEN};

struct Agent {
    child: Child,
    url: String,
    ca: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    common::temp_dir(&format!("vault-api-{tag}"))
}

/// The agent on the emulator's file, with the Key Vault API on a free port; waits (at most
/// 30 s) for the lines that say where it listens and which CA to trust.
async fn start(emu: &Emulator, dir: &Path) -> Agent {
    start_with(emu, dir, "").await
}

/// As [`start`], with `extra` after the `[agent.vault_api]` table.
async fn start_with(emu: &Emulator, dir: &Path, extra: &str) -> Agent {
    start_tuned(emu, dir, extra, &[]).await
}

/// As [`start_with`], with each `(from, to)` replaced in the client's file.
async fn start_tuned(emu: &Emulator, dir: &Path, extra: &str, tune: &[(&str, &str)]) -> Agent {
    // Held values go stale after 2 s (the emulator's file says 5 min): a stale serve is seen.
    let mut client = std::fs::read_to_string(emu.write_client_config().unwrap())
        .unwrap()
        .replace("refresh_interval = \"5m\"", "refresh_interval = \"2s\"");
    for (from, to) in tune {
        assert!(client.contains(from), "{from:?} in the client's file");
        client = client.replace(from, to);
    }
    write_private(&dir.join("agent.token"), TOKEN);
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "{client}\n[agent]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"agent.token\"\n\
             [agent.vault_api]\nlisten = \"127.0.0.1:0\"\n{extra}"
        ),
    )
    .unwrap();
    let (child, lines) = common::agent_lines(&config, None, 3).await;
    let url = lines[1]
        .strip_prefix("key vault api on ")
        .unwrap_or_else(|| panic!("{lines:?}"))
        .to_string();
    let ca = PathBuf::from(
        lines[2]
            .strip_prefix("key vault api ca ")
            .unwrap_or_else(|| panic!("{lines:?}")),
    );
    Agent { child, url, ca }
}

/// Runs an SDK script (at most 60 s): whether it passed every check, and what it printed.
async fn script_run(mut c: Command) -> (bool, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || c.output()),
    )
    .await
    .expect("the SDK script ends within a minute")
    .unwrap()
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.success() && text.contains("all checks passed"),
        text,
    )
}

/// Runs the Python SDK script in `mode` against the agent (at most 60 s); its output.
async fn sdk(agent: &Agent, token: &str, mode: &str) -> (bool, String) {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let py = tokio::task::spawn_blocking(move || keyvault_failover_emulator::sdks::python(&tmp))
        .await
        .unwrap()
        .expect("the Python SDK installs (python3, pip and PyPI are needed)");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/agent_vault_api.py");
    let mut c = Command::new(py);
    c.arg(script)
        .arg(mode)
        .env("KV_URL", &agent.url)
        .env("KV_CA", &agent.ca)
        .env("KV_TOKEN", token)
        .env_remove("REQUESTS_CA_BUNDLE")
        .env_remove("SSL_CERT_FILE");
    script_run(c).await
}

/// Runs the JavaScript SDK script against the agent (at most 60 s); its output.
async fn js_sdk(agent: &Agent) -> (bool, String) {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let home = tokio::task::spawn_blocking(move || keyvault_failover_emulator::sdks::js(&tmp))
        .await
        .unwrap()
        .expect("the JavaScript SDK installs (npm and its registry are needed)");
    // ES modules resolve packages from the script's own folder: it runs from the install.
    let script = home.join("agent_vault_api.mjs");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/agent_vault_api.mjs"),
        &script,
    )
    .unwrap();
    let mut c = Command::new("node");
    c.arg(&script)
        .env("KV_URL", &agent.url)
        .env("KV_TOKEN", TOKEN)
        .env("NODE_EXTRA_CA_CERTS", &agent.ca);
    script_run(c).await
}

fn http(agent: &Agent) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&agent.ca).unwrap()).unwrap();
    reqwest::Client::builder()
        .tls_certs_only([ca])
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// The emulator's two vaults, `weu` (read-write) and `neu`, with their CA in `dir`.
async fn emulator(dir: &Path) -> Emulator {
    common::emulator(dir, &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_reads_and_writes_through_the_agent_across_outages() {
    let dir = temp_dir("sdk");
    let emu = emulator(&dir).await;
    for (name, value) in [
        ("db-password", "db-value-1"),
        ("api-key", "k"),
        ("tls-key", "t"),
    ] {
        emu.insert("weu", name, value);
        emu.insert("neu", name, value);
    }
    // A secret with properties: the SDK sees them through the agent, fresh and stale.
    let spec = keyvault_failover_emulator::SecretSpec {
        content_type: Some("text/plain".into()),
        tags: [("owner".to_string(), "billing".to_string())].into(),
        expires: Some(4_000_000_000),
        ..Default::default()
    };
    for r in ["weu", "neu"] {
        emu.insert_with(r, "typed-secret", "typed-value", spec.clone());
    }
    let agent = start(&emu, &dir).await;
    assert!(agent.url.starts_with("https://127.0.0.1:"), "{}", agent.url);
    let (ok, text) = sdk(&agent, TOKEN, "healthy").await;
    assert!(ok, "{text}");
    assert_eq!(emu.current("weu", "written-by-sdk").unwrap().0, "w-value-2");
    assert_eq!(
        emu.current_tags("weu", "api-key").unwrap(),
        [("rotated-by".to_string(), "ops".to_string())].into(),
        "the PATCH reached the primary"
    );
    let (ok, text) = js_sdk(&agent).await;
    assert!(ok, "{text}");
    assert_eq!(emu.current("weu", "written-by-js").unwrap().0, "js-value");
    assert_eq!(emu.writes("neu"), 0, "writes go to the primary only");

    emu.apply_fault("weu", VaultFault::Refuse).await.unwrap();
    let (ok, text) = sdk(&agent, TOKEN, "primary-down").await;
    assert!(ok, "{text}");

    emu.apply_fault("neu", VaultFault::Refuse).await.unwrap();
    let (ok, text) = sdk(&agent, TOKEN, "all-down-typed").await;
    assert!(ok, "{text}");
    assert!(!text.contains("never-sent"));
    assert_ne!(
        emu.current("weu", "db-password").unwrap().0,
        "never-sent",
        "nothing was written"
    );
    // Past the refresh interval, with no vault answering, the held value is served stale and
    // says so (polled: at most 15 s).
    let c = http(&agent);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let r = c
            .get(format!(
                "{}/secrets/db-password/?api-version=7.6",
                agent.url
            ))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        if r.headers()["x-keyvault-freshness"] == "stale" {
            assert!(r.headers().contains_key("age"), "{:?}", r.headers());
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never served stale");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let (ok, text) = sdk(&agent, "not-the-agents-token", "wrong-token").await;
    assert!(ok, "{text}");
    assert!(!text.contains(TOKEN));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Key Vault's challenge and error bodies, as the SDKs expect them, and bad input refused
/// with a Key Vault-shaped error: no token, an unknown api-version, an invalid name, an absurd
/// `maxresults`, an oversized body, another host, and what the agent does not serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_key_vault_errors() {
    let dir = temp_dir("errors");
    let emu = emulator(&dir).await;
    emu.insert("weu", "db-password", "v");
    let agent = start(&emu, &dir).await;
    let c = http(&agent);
    let r = c
        .get(format!(
            "{}/secrets/db-password/?api-version=7.6",
            agent.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let challenge = r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        challenge.starts_with("Bearer authorization=\"https://login.microsoftonline.com/")
            && challenge.contains("resource=\"https://vault.azure.net\""),
        "{challenge}"
    );
    for (path, status, code) in [
        ("/secrets/db-password/?api-version=6.0", 400, "BadParameter"),
        ("/secrets/db-password/", 400, "BadParameter"),
        ("/secrets/bad%20name!/?api-version=7.6", 400, "BadParameter"),
        (
            "/secrets/bad%20name!/versions?api-version=7.6",
            400,
            "BadParameter",
        ),
        (
            "/secrets/no-such/versions?api-version=7.6",
            404,
            "SecretNotFound",
        ),
        (
            "/secrets?api-version=7.6&maxresults=100000",
            400,
            "BadParameter",
        ),
        ("/secrets?api-version=7.6&$skiptoken=x", 400, "BadParameter"),
        ("/keys/k/?api-version=7.6", 501, "NotSupported"),
        ("/deletedsecrets?api-version=7.6", 501, "NotSupported"),
    ] {
        let r = c
            .get(format!("{}{path}", agent.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{path}");
        let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert_eq!(v["error"]["code"], code, "{path}: {v}");
    }
    let r = c
        .post(format!(
            "{}/secrets/db-password/backup?api-version=7.6",
            agent.url
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 501, "backup is not served");
    let big = format!("{{\"value\":\"{}\"}}", "x".repeat(100_000));
    let r = c
        .put(format!("{}/secrets/big?api-version=7.6", agent.url))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    // A content type or tags would be dropped by the client's write path: refused, not lost.
    let r = c
        .put(format!("{}/secrets/typed?api-version=7.6", agent.url))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(r#"{"value":"v","contentType":"text/plain","tags":{"a":"b"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(emu.current("weu", "typed").is_none(), "nothing written");
    assert_eq!(emu.writes("weu"), 0);
    let r = c
        .get(format!(
            "{}/secrets/db-password/?api-version=7.6",
            agent.url
        ))
        .bearer_auth(TOKEN)
        .header("host", "rebound.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);

    // The generated CA is private (its directory 0700, its key 0600) and kept: a restarted
    // agent's new leaf verifies against the CA clients were told to trust.
    use std::os::unix::fs::PermissionsExt;
    let tls_dir = agent.ca.parent().unwrap().to_path_buf();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&tls_dir), 0o700);
    assert_eq!(mode(&tls_dir.join("ca.key")), 0o600);
    let ca = std::fs::read(&agent.ca).unwrap();
    let before = http(&agent);
    drop(agent);
    let agent = start(&emu, &dir).await;
    assert_eq!(std::fs::read(&agent.ca).unwrap(), ca, "the CA is reused");
    let r = before
        .get(format!(
            "{}/secrets/db-password/?api-version=7.6",
            agent.url
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("the old CA still verifies the new leaf");
    assert_eq!(r.status().as_u16(), 200);

    // A CA key others may read is refused at start, with what to do.
    drop(agent);
    std::fs::set_permissions(
        tls_dir.join("ca.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_keyvault-failover"))
        .args([
            "agent",
            "--config",
            dir.join("agent.toml").to_str().unwrap(),
        ])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .expect("the agent refuses to start within 30 s")
    .unwrap()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("chmod 600"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The tenant the Entra ID test plays, and another.
const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const OTHER_TENANT: &str = "00000000-1111-2222-3333-444444444444";

/// An RSA signing key of the test's tenant (or a forger's), and its `kid`.
struct Signer {
    key: jsonwebtoken::EncodingKey,
    kid: String,
}

impl Signer {
    fn new(kid: &str) -> Signer {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        Signer {
            key: jsonwebtoken::EncodingKey::from_rsa_pem(kp.serialize_pem().as_bytes()).unwrap(),
            kid: kid.into(),
        }
    }

    fn jwk(&self) -> serde_json::Value {
        let mut jwk =
            jsonwebtoken::jwk::Jwk::from_encoding_key(&self.key, jsonwebtoken::Algorithm::RS256)
                .unwrap();
        jwk.common.key_id = Some(self.kid.clone());
        let mut v = serde_json::to_value(jwk).unwrap();
        // As Entra's document has them.
        v["use"] = "sig".into();
        v["issuer"] = format!("https://login.microsoftonline.com/{TENANT}/v2.0").into();
        v
    }

    /// A token with `claims` over the v1 defaults Key Vault's tokens carry.
    fn token(&self, claims: serde_json::Value) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut c = serde_json::json!({
            "aud": "https://vault.azure.net",
            "iss": format!("https://sts.windows.net/{TENANT}/"),
            "tid": TENANT,
            "iat": now - 10,
            "nbf": now - 10,
            "exp": now + 3600,
            "ver": "1.0",
        });
        for (k, v) in claims.as_object().unwrap() {
            c[k] = v.clone();
        }
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&h, &c, &self.key).unwrap()
    }
}

/// The tenant's JWKS endpoint on the loopback: answers `doc` to every request (HTTP/1.1, one
/// request a connection), until the test ends.
async fn jwks_server(doc: String) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/{TENANT}/discovery/v2.0/keys",
        l.local_addr().unwrap()
    );
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let doc = doc.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                // The request head, at most 8 KiB and 10 s.
                let read = tokio::time::timeout(Duration::from_secs(10), async {
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") && got.len() < 8192 {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                });
                if read.await.is_err() {
                    return;
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{doc}",
                    doc.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    url
}

/// `[agent.vault_api.entra]`: the service's own Entra ID token, verified by the agent, over
/// the Python SDK and a real HTTP client. A reader may read what its glob names and nothing
/// else (a listing shows only that), write nothing; a writer writes its own secrets; a token
/// signed by another key, with another audience or tenant, expired, not yet valid, unsigned,
/// malformed or enormous gets 401 and the challenge; a caller not in the allow-list 403. And
/// with every vault down, a verified token still reads the held value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entra_id_tokens_are_verified_by_the_agent() {
    let dir = temp_dir("entra");
    let emu = emulator(&dir).await;
    for (name, value) in [("db-password", "db-value-1"), ("api-key", "k")] {
        emu.insert("weu", name, value);
        emu.insert("neu", name, value);
    }
    let tenant = Signer::new("tenant-key-1");
    let rotated = Signer::new("tenant-key-2");
    let forger = Signer::new("tenant-key-1");
    let stranger = Signer::new("not-the-tenants");
    let jwks =
        jwks_server(serde_json::json!({ "keys": [tenant.jwk(), rotated.jwk()] }).to_string()).await;
    let extra = format!(
        "[agent.vault_api.entra]\ntenant_id = \"{TENANT}\"\njwks_url = \"{jwks}\"\n\
         [[agent.vault_api.entra.caller]]\nid = \"reader-oid\"\nname = \"billing\"\nsecrets = [\"db-*\"]\n\
         [[agent.vault_api.entra.caller]]\nid = \"writer-app\"\nsecrets = [\"written-*\"]\nwrite = true\n"
    );
    let agent = start_with(&emu, &dir, &extra).await;
    let c = http(&agent);
    let url = |p: &str| format!("{}{p}?api-version=7.6", agent.url);
    let reader = tenant.token(serde_json::json!({ "oid": "reader-oid" }));
    let get = |path: String, token: String| {
        let c = c.clone();
        async move {
            let r = c.get(path).bearer_auth(token).send().await.unwrap();
            let status = r.status().as_u16();
            let challenged = r.headers().contains_key("www-authenticate");
            let body: serde_json::Value =
                serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
            (status, challenged, body)
        }
    };

    let (status, _, body) = get(url("/secrets/db-password"), reader.clone()).await;
    assert_eq!(
        (status, body["value"].as_str()),
        (200, Some("db-value-1")),
        "{body}"
    );
    let (status, challenged, body) = get(url("/secrets/api-key"), reader.clone()).await;
    assert_eq!(
        (status, challenged),
        (403, false),
        "outside the reader's glob: {body}"
    );
    assert_eq!(body["error"]["code"], "Forbidden");
    assert!(!body.to_string().contains("\"k\""), "{body}");
    let (status, _, _) = get(url("/secrets/api-key/versions"), reader.clone()).await;
    assert_eq!(
        status, 403,
        "versions of a secret outside the reader's glob"
    );
    let (status, _, body) = get(url("/secrets/db-password/versions"), reader.clone()).await;
    assert_eq!(
        (status, body["value"].as_array().map(Vec::len)),
        (200, Some(1)),
        "{body}"
    );
    let (status, _, body) = get(url("/secrets"), reader.clone()).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = body["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids.len(),
        1,
        "only what the reader may read is listed: {ids:?}"
    );
    assert!(ids[0].ends_with("/secrets/db-password"), "{ids:?}");
    let put = |name: &str, token: &str| {
        c.put(url(&format!("/secrets/{name}")))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(r#"{"value":"from-entra"}"#)
            .send()
    };
    assert_eq!(
        put("db-password", &reader).await.unwrap().status().as_u16(),
        403
    );
    // A rotated key the document already holds, a v2 token, and the app id as the caller.
    let writer = rotated.token(serde_json::json!({
        "azp": "writer-app",
        "ver": "2.0",
        "iss": format!("https://login.microsoftonline.com/{TENANT}/v2.0"),
        "aud": "cfa8b339-82a2-471a-a3c9-0fc0be7a4093",
    }));
    assert_eq!(
        put("written-x", &writer).await.unwrap().status().as_u16(),
        200
    );
    assert_eq!(emu.current("weu", "written-x").unwrap().0, "from-entra");
    assert_eq!(
        put("db-password", &writer).await.unwrap().status().as_u16(),
        403
    );
    assert_eq!(emu.current("weu", "db-password").unwrap().0, "db-value-1");

    let soon = |secs: i64| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        serde_json::json!(now + secs)
    };
    let oid = |mut v: serde_json::Value| {
        v["oid"] = "reader-oid".into();
        v
    };
    let huge = format!("{reader}{}", "A".repeat(40_000));
    let unsigned = {
        let mut parts: Vec<&str> = reader.split('.').collect();
        parts[2] = "";
        parts.join(".")
    };
    let refused: Vec<(&str, String)> = vec![
        (
            "a forged signature",
            forger.token(oid(serde_json::json!({}))),
        ),
        (
            "a key not the tenant's",
            stranger.token(oid(serde_json::json!({}))),
        ),
        (
            "another audience",
            tenant.token(oid(
                serde_json::json!({ "aud": "https://storage.azure.com" }),
            )),
        ),
        (
            "another tenant",
            tenant.token(oid(serde_json::json!({
                "tid": OTHER_TENANT,
                "iss": format!("https://sts.windows.net/{OTHER_TENANT}/"),
            }))),
        ),
        (
            "the issuer right, tid another",
            tenant.token(oid(serde_json::json!({ "tid": OTHER_TENANT }))),
        ),
        (
            "expired",
            tenant.token(oid(serde_json::json!({ "exp": soon(-600) }))),
        ),
        (
            "not valid yet",
            tenant.token(oid(serde_json::json!({ "nbf": soon(600) }))),
        ),
        ("no signature", unsigned),
        ("malformed", "a.b.c".into()),
        ("enormous", huge),
    ];
    for (what, token) in refused {
        let (status, challenged, body) = get(url("/secrets/db-password"), token).await;
        assert_eq!((status, challenged), (401, true), "{what}: {body}");
        assert_eq!(body["error"]["code"], "Unauthorized", "{what}");
    }
    let (status, challenged, body) = get(
        url("/secrets/db-password"),
        tenant.token(serde_json::json!({ "oid": "someone-else" })),
    )
    .await;
    assert_eq!(
        (status, challenged),
        (403, false),
        "a caller not allowed: {body}"
    );
    // The agent's own token still does everything.
    let (status, _, _) = get(url("/secrets/api-key"), TOKEN.into()).await;
    assert_eq!(status, 200);

    // The SDK, unchanged, with a credential that hands it the token.
    let (ok, text) = sdk(&agent, &reader, "entra").await;
    assert!(ok, "{text}");
    // Every vault down: the verified token still reads the held value; its write is refused.
    emu.apply_fault("weu", VaultFault::Refuse).await.unwrap();
    emu.apply_fault("neu", VaultFault::Refuse).await.unwrap();
    let (ok, text) = sdk(&agent, &reader, "all-down").await;
    assert!(ok, "{text}");
    assert!(!text.contains(&reader));
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGTERM lets a Key Vault API read in flight finish (before, the agent drained only its own
/// API's connections, and exited under a Key Vault API read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_key_vault_api_reads_in_flight_finish() {
    let dir = temp_dir("term");
    let emu = emulator(&dir).await;
    emu.insert("weu", "slow", "s1ow");
    emu.insert("neu", "slow", "s1ow");
    // No probes: the only GET a vault sees is the read (so its arrival says it is in flight).
    let no_probes = [("[probe]\nenabled = true", "[probe]\nenabled = false")];
    let mut agent = start_tuned(&emu, &dir, "", &no_probes).await;
    for r in ["weu", "neu"] {
        emu.apply_fault(r, VaultFault::Delay { ms: 1500 })
            .await
            .unwrap();
    }
    let before = emu.requests("weu") + emu.requests("neu");
    let read = {
        let (c, url) = (
            http(&agent),
            format!("{}/secrets/slow?api-version=7.6", agent.url),
        );
        tokio::spawn(async move {
            let r = c.get(url).bearer_auth(TOKEN).send().await?;
            let status = r.status().as_u16();
            Ok::<_, reqwest::Error>((status, r.bytes().await?))
        })
    };
    // In flight once a vault has the request (counted on arrival, before the delay).
    tokio::time::timeout(Duration::from_secs(20), async {
        while emu.requests("weu") + emu.requests("neu") == before {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the read reached a vault");
    assert!(Command::new("kill")
        .args(["-TERM", &agent.child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let t0 = std::time::Instant::now();
    let (status, body) = tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the read in flight ends")
        .unwrap()
        .expect("the read in flight is answered, not cut");
    assert!(
        t0.elapsed() > Duration::from_millis(500),
        "the read was in flight when the agent was told to stop"
    );
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["value"], "s1ow");
    let mut child = std::mem::replace(&mut agent.child, Command::new("true").spawn().unwrap());
    let status = tokio::time::timeout(
        Duration::from_secs(40),
        tokio::task::spawn_blocking(move || child.wait().unwrap()),
    )
    .await
    .expect("the agent exits")
    .unwrap();
    assert!(status.success(), "{status:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A peer that opens a connection and never starts its TLS handshake is closed by the agent
/// (the agent's 10 s bound on handshake and headers applies to this listener too), and the
/// listener goes on serving meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_tls_peer_is_closed() {
    use tokio::io::AsyncReadExt;
    let dir = temp_dir("silent");
    let emu = emulator(&dir).await;
    emu.insert("weu", "db-password", "v");
    let agent = start(&emu, &dir).await;
    let addr = agent.url.trim_start_matches("https://").to_string();
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let r = http(&agent)
        .get(format!("{}/secrets/db-password?api-version=7.6", agent.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "served while a peer stays silent");
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(30), silent.read(&mut buf))
        .await
        .expect("the agent closes a silent peer's connection");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
