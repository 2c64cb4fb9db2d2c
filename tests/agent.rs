//! The agent as a process, driven by a real HTTP client (reqwest) against the emulator,
//! configured by the file the emulator writes plus an `[agent]` table. Every wait is bounded.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use keyvault_failover::emulator::{Emulator, VaultFault};

const TOKEN: &str = "agent-test-token-0123456789";

struct Agent {
    child: Child,
    base: String,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kvf-agent-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Starts the agent on the emulator's configuration with an `[agent]` table; waits (at most
/// 30 s) for its "listening on" line.
async fn start_agent(emu: &Emulator, dir: &std::path::Path, extra: &str) -> Agent {
    let client = std::fs::read_to_string(emu.write_client_config().unwrap()).unwrap();
    std::fs::write(dir.join("agent.token"), format!("{TOKEN}\n")).unwrap();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "{client}\n[agent]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"agent.token\"\n{extra}"
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_keyvault-failover"))
        .args(["agent", "--config", config.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the agent starts");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        (line, stdout)
    });
    let (line, stdout) = tokio::time::timeout(Duration::from_secs(30), line)
        .await
        .expect("the agent listens within 30 s")
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    Agent {
        child,
        base: format!("http://{addr}"),
        stdout,
    }
}

/// Two emulated vaults writing their CA into `dir`, each holding `secrets`.
async fn emulator(dir: &std::path::Path, secrets: &[(&str, &str)]) -> Emulator {
    let emu = Emulator::builder()
        .vault("weu")
        .vault("neu")
        .cert_dir(dir)
        .start()
        .await
        .unwrap();
    for r in ["weu", "neu"] {
        for (name, value) in secrets {
            emu.insert(r, name, value);
        }
    }
    emu
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .no_proxy()
        .build()
        .unwrap()
}

async fn get(
    c: &reqwest::Client,
    url: &str,
    token: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let mut r = c.get(url);
    if let Some(t) = token {
        r = r.header("X-Agent-Token", t);
    }
    let resp = r.send().await.expect("the agent answers");
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    let bytes = resp.bytes().await.unwrap_or_default();
    let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, headers, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_error_codes_provenance_and_failover() {
    let dir = temp_dir("codes");
    let emu = emulator(&dir, &[("db-password", "hunter2"), ("cold", "c0ld")]).await;
    let agent = start_agent(
        &emu,
        &dir,
        "preload = [\"db-password\"]\npreload_jitter = \"0s\"\n",
    )
    .await;
    let c = http();
    let url = |p: &str| format!("{}{p}", agent.base);

    // Liveness needs no token; everything else does.
    let (s, _, b) = get(&c, &url("/healthz/live"), None).await;
    assert_eq!((s, b["live"].clone()), (200, serde_json::Value::Bool(true)));
    for token in [None, Some("wrong-token-0123456789")] {
        let (s, _, b) = get(&c, &url("/v1/secrets/db-password"), token).await;
        assert_eq!((s, b["code"].as_str()), (401, Some("unauthorized")));
        assert!(!b.to_string().contains("hunter2"));
    }
    let resp = c
        .get(url("/v1/secrets/db-password"))
        .header("X-Agent-Token", TOKEN)
        .header("X-Forwarded-For", "203.0.113.7")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        400,
        "a forwarded request is refused"
    );

    // Ready: a vault is trusted (and the preload list is being read).
    let (s, _, b) = get(&c, &url("/healthz/ready"), Some(TOKEN)).await;
    assert_eq!((s, b["state"].as_str()), (200, Some("ready")), "{b}");

    // A secret, with its provenance in headers and body.
    let (s, h, b) = get(&c, &url("/v1/secrets/db-password"), Some(TOKEN)).await;
    assert_eq!(s, 200);
    assert_eq!(b["value"], "hunter2");
    assert_eq!(b["freshness"], "fresh");
    assert_eq!(h["x-keyvault-region"], "weu");
    assert_eq!(h["x-keyvault-freshness"], "fresh");
    assert_eq!(
        h["x-keyvault-version"].to_str().unwrap(),
        b["version"].as_str().unwrap()
    );

    // Error codes.
    let (s, _, b) = get(&c, &url("/v1/secrets/missing"), Some(TOKEN)).await;
    assert_eq!((s, b["code"].as_str()), (404, Some("not_found")));
    let (s, _, b) = get(&c, &url("/v1/secrets/bad_name"), Some(TOKEN)).await;
    assert_eq!((s, b["code"].as_str()), (400, Some("invalid_name")));
    let (s, _, b) = get(&c, &url("/elsewhere"), Some(TOKEN)).await;
    assert_eq!((s, b["code"].as_str()), (404, Some("no_route")));

    // The primary refuses while clients read: a cold read is served by the secondary.
    emu.apply_fault("weu", VaultFault::Refuse).await.unwrap();
    let (s, h, b) = get(&c, &url("/v1/secrets/cold"), Some(TOKEN)).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(h["x-keyvault-region"], "neu");
    // Every vault refuses: unavailable, 503.
    emu.apply_fault("neu", VaultFault::Refuse).await.unwrap();
    let (s, _, b) = get(&c, &url("/v1/secrets/never-read"), Some(TOKEN)).await;
    assert_eq!((s, b["code"].as_str()), (503, Some("unavailable")));
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_reads_in_flight_finish() {
    let dir = temp_dir("term");
    let emu = emulator(&dir, &[("slow", "s1ow")]).await;
    let mut agent = start_agent(&emu, &dir, "").await;
    for r in ["weu", "neu"] {
        emu.apply_fault(r, VaultFault::Delay { ms: 1500 })
            .await
            .unwrap();
    }
    let c = http();
    let before = emu.gets("weu") + emu.gets("neu");
    let read = {
        let (c, url) = (c.clone(), format!("{}/v1/secrets/slow", agent.base));
        tokio::spawn(async move { get(&c, &url, Some(TOKEN)).await })
    };
    // The read is in flight once a vault has it (bounded wait on that event).
    tokio::time::timeout(Duration::from_secs(20), async {
        while emu.gets("weu") + emu.gets("neu") == before {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the read reached a vault");
    let pid = agent.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let (s, _, b) = tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the read in flight ends")
        .unwrap();
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["value"], "s1ow");
    let mut child = std::mem::replace(&mut agent.child, Command::new("true").spawn().unwrap());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap());
    let status = tokio::time::timeout(Duration::from_secs(40), status)
        .await
        .expect("the agent exits")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut agent.stdout, &mut rest).unwrap();
    assert!(rest.contains("stopped"), "{rest}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_non_loopback_address_or_a_missing_token_is_refused_at_start() {
    let dir = temp_dir("refuse");
    let base = "[[regions]]\nname = \"weu\"\nurl = \"https://app-weu.vault.azure.net\"\naccess = \"read-write\"\n";
    std::fs::write(dir.join("t"), TOKEN).unwrap();
    for (agent, want) in [
        (
            "[agent]\nlisten = \"0.0.0.0:2780\"\ntoken_file = \"t\"\n",
            "not a loopback address",
        ),
        (
            "[agent]\nlisten = \"127.0.0.1:0\"\n",
            "token_file or token_env",
        ),
        (
            "[agent]\nlisten = \"127.0.0.1:0\"\ntoken_env = \"KVF_TEST_NO_SUCH_VAR\"\n",
            "KVF_TEST_NO_SUCH_VAR",
        ),
    ] {
        let path = dir.join("a.toml");
        std::fs::write(&path, format!("{base}{agent}")).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_keyvault-failover"))
            .args(["agent", "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{want:?} not in {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
