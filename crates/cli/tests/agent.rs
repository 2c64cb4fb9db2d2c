//! The agent as a process, driven by a real HTTP client (reqwest) against the emulator,
//! configured by the file the emulator writes plus an `[agent]` table. Every wait is bounded.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use keyvault_failover_emulator::{Emulator, VaultFault};

use common::TOKEN;

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
    start_agent_on(emu, dir, "listen = \"127.0.0.1:0\"", extra).await
}

/// [`start_agent`] listening where `listen` says (`listen = ...` or `socket = ...`); `base` is
/// `http://` and what the agent printed.
async fn start_agent_on(emu: &Emulator, dir: &std::path::Path, listen: &str, extra: &str) -> Agent {
    start_agent_with(emu, dir, listen, extra, true).await
}

/// [`start_agent_on`], with the client's hedged reads on or off. Off, the first read of a
/// healthy primary is answered by the primary however slow its first handshake is (with them
/// on, a primary slower than the 150 ms default hedge delay on a loaded machine loses the read
/// to the secondary).
async fn start_agent_with(
    emu: &Emulator,
    dir: &std::path::Path,
    listen: &str,
    extra: &str,
    hedging: bool,
) -> Agent {
    let off: &[(&str, &str)] = &[("[hedge]\nenabled = true\n", "[hedge]\nenabled = false\n")];
    start_agent_tuned(emu, dir, listen, extra, if hedging { &[] } else { off }).await
}

/// [`start_agent_on`] with each `(from, to)` replaced in the emulator's client file (each
/// `from` must be there).
async fn start_agent_tuned(
    emu: &Emulator,
    dir: &std::path::Path,
    listen: &str,
    extra: &str,
    tune: &[(&str, &str)],
) -> Agent {
    let mut client = std::fs::read_to_string(emu.write_client_config().unwrap()).unwrap();
    for (from, to) in tune {
        assert!(
            client.contains(from),
            "the client file has {from:?}:\n{client}"
        );
        client = client.replace(from, to);
    }
    write_private(&dir.join("agent.token"), &format!("{TOKEN}\n"));
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!("{client}\n[agent]\n{listen}\ntoken_file = \"agent.token\"\n{extra}"),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_keyvault-failover"))
        .args(["agent", "--config", config.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(stderr_file(dir))
        .spawn()
        .expect("the agent starts");
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let agent = Agent {
        child,
        base: String::new(),
        stdout,
    };
    let (line, mut agent) = next_line(agent).await;
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    agent.base = format!("http://{addr}");
    agent
}

/// An agent on the emulator's file with change hints acted on within a second
/// (`notify_max_delay = "1s"`), and with hedged reads off when `unhedged` (the first read is
/// the primary's however slow its first handshake).
async fn start_agent_hinted(emu: &Emulator, dir: &std::path::Path, unhedged: bool) -> Agent {
    let hinted = ("notify_max_delay = \"30s\"", "notify_max_delay = \"1s\"");
    let unhedge = ("[hedge]\nenabled = true\n", "[hedge]\nenabled = false\n");
    let tune: &[(&str, &str)] = if unhedged {
        &[hinted, unhedge]
    } else {
        &[hinted]
    };
    start_agent_tuned(emu, dir, "listen = \"127.0.0.1:0\"", "", tune).await
}

use common::write_private;

/// The agent's standard error, appended to `dir/agent.stderr` (every agent started in `dir`).
fn stderr_file(dir: &std::path::Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("agent.stderr"))
        .unwrap()
}

use common::refused_at_start;

/// Two emulated vaults writing their CA into `dir`, each holding `secrets`.
async fn emulator(dir: &std::path::Path, secrets: &[(&str, &str)]) -> Emulator {
    common::emulator(dir, secrets).await
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
    // Unhedged: the provenance asserted below is the primary's, not whichever vault won a race.
    let agent = start_agent_with(
        &emu,
        &dir,
        "listen = \"127.0.0.1:0\"",
        "preload = [\"db-password\"]\npreload_jitter = \"0s\"\n",
        false,
    )
    .await;
    let c = http();
    let url = |p: &str| format!("{}{p}", agent.base);

    // Liveness needs no token; everything else does.
    let (s, _, b) = get(&c, &url("/healthz/live"), None).await;
    assert_eq!((s, b["live"].clone()), (200, serde_json::Value::Bool(true)));
    for token in [None, Some("wrong-token-0123456789")] {
        let (s, h, b) = get(&c, &url("/v1/secrets/db-password"), token).await;
        assert_eq!((s, b["code"].as_str()), (401, Some("unauthorized")));
        assert!(!b.to_string().contains("hunter2"));
        // Issue 20: a 401 says how to authenticate.
        assert!(
            h.get("www-authenticate")
                .is_some_and(|v| v.to_str().unwrap().starts_with("X-Agent-Token")),
            "{h:?}"
        );
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
    // Every vault throttles: throttled, 429 (nothing held to fall back on).
    for r in ["weu", "neu"] {
        emu.apply_fault(
            r,
            VaultFault::Throttle {
                retry_after_secs: 1,
            },
        )
        .await
        .unwrap();
    }
    let (s, h, b) = get(&c, &url("/v1/secrets/never-read-2"), Some(TOKEN)).await;
    assert_eq!((s, b["code"].as_str()), (429, Some("throttled")), "{b}");
    // Issue 20: a 429 says when to come back (the vault's own Retry-After, whole seconds).
    assert_eq!(
        h.get("retry-after").map(|v| v.to_str().unwrap()),
        Some("1"),
        "{h:?}"
    );
    // The vaults refuse this identity: forbidden, 403.
    for r in ["weu", "neu"] {
        emu.apply_fault(r, VaultFault::Forbidden).await.unwrap();
    }
    let (s, _, b) = get(&c, &url("/v1/secrets/never-read-3"), Some(TOKEN)).await;
    assert_eq!((s, b["code"].as_str()), (403, Some("forbidden")), "{b}");
    // Not GET: 405.
    let resp = c
        .post(url("/v1/secrets/db-password"))
        .header("X-Agent-Token", TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    // Issue 20: a 405 names the method allowed.
    assert_eq!(
        resp.headers().get("allow").map(|v| v.to_str().unwrap()),
        Some("GET")
    );
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
    write_private(&dir.join("t"), TOKEN);
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
        let (code, err) = refused_at_start(&path).await;
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains(want), "{want:?} not in {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sends SIGTERM and waits (at most 40 s) for the agent to exit; returns the rest of its
/// standard output.
async fn terminate(mut agent: Agent) -> String {
    let pid = agent.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let mut child = std::mem::replace(&mut agent.child, Command::new("true").spawn().unwrap());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap());
    let status = tokio::time::timeout(Duration::from_secs(40), status)
        .await
        .expect("the agent exits")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let mut rest = String::new();
    let mut out = std::mem::replace(&mut agent.stdout, BufReader::new(empty_stdout()));
    tokio::task::spawn_blocking(move || {
        std::io::Read::read_to_string(&mut out, &mut rest).map(|_| rest)
    })
    .await
    .unwrap()
    .unwrap()
}

fn empty_stdout() -> std::process::ChildStdout {
    let mut c = Command::new("true").stdout(Stdio::piped()).spawn().unwrap();
    let out = c.stdout.take().unwrap();
    let _ = c.wait();
    out
}

/// The next line the agent prints (at most 30 s).
async fn next_line(mut agent: Agent) -> (String, Agent) {
    let mut stdout = std::mem::replace(&mut agent.stdout, BufReader::new(empty_stdout()));
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        (line, stdout)
    });
    let (line, stdout) = tokio::time::timeout(Duration::from_secs(30), line)
        .await
        .expect("the agent prints within 30 s")
        .unwrap();
    agent.stdout = stdout;
    (line, agent)
}

const SNAPSHOT_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// The snapshot table: the snapshot in `state/`, its key one directory up.
fn snapshot_table(dir: &std::path::Path) -> String {
    std::fs::create_dir_all(dir.join("state")).unwrap();
    write_private(&dir.join("snapshot.key"), SNAPSHOT_KEY);
    "[agent.snapshot]\npath = \"state/lkg.snapshot\"\nkey_file = \"snapshot.key\"\ninterval = \"1s\"\n"
        .to_string()
}

/// Issue 12: a restart while every vault is down. With the sealed snapshot every secret it held
/// is served, stale with its age, and the agent is ready (its preload list is held); without
/// it, nothing can be served and the agent is not ready; a tampered snapshot is refused and
/// the agent starts without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_during_a_total_outage_with_and_without_the_snapshot() {
    let dir = temp_dir("restart");
    let secrets = [
        ("db-password", "hunter2"),
        ("api-key", "k-123"),
        ("cert-pass", "c3rt"),
    ];
    let emu = emulator(&dir, &secrets).await;
    let preload =
        "preload = [\"db-password\", \"api-key\", \"cert-pass\"]\npreload_jitter = \"0s\"\n";
    let snap = snapshot_table(&dir);
    let c = http();

    // First life: reads everything, then stops (the last snapshot is written on the way out).
    let agent = start_agent(&emu, &dir, &snap).await;
    for (name, value) in secrets {
        let (s, _, b) = get(
            &c,
            &format!("{}/v1/secrets/{name}", agent.base),
            Some(TOKEN),
        )
        .await;
        assert_eq!((s, b["value"].as_str()), (200, Some(value)));
    }
    terminate(agent).await;
    let sealed = std::fs::read(dir.join("state/lkg.snapshot")).expect("the snapshot is written");
    assert!(
        !sealed.windows(7).any(|w| w == b"hunter2"),
        "sealed, not in the clear"
    );

    for r in ["weu", "neu"] {
        emu.apply_fault(r, VaultFault::Refuse).await.unwrap();
    }

    // Restart with the snapshot: served, stale, with an age; ready (degraded).
    let agent = start_agent(&emu, &dir, &format!("{preload}{snap}")).await;
    let (line, agent) = next_line(agent).await;
    assert_eq!(line.trim(), "snapshot: restored 3 values");
    for (name, value) in secrets {
        let (s, h, b) = get(
            &c,
            &format!("{}/v1/secrets/{name}", agent.base),
            Some(TOKEN),
        )
        .await;
        assert_eq!((s, b["value"].as_str()), (200, Some(value)), "{b}");
        assert_eq!(b["freshness"], "stale");
        assert!(b["age_s"].as_f64().unwrap() > 0.0, "{b}");
        assert_eq!(h["x-keyvault-freshness"], "stale");
    }
    let (s, _, b) = get(&c, &format!("{}/healthz/ready", agent.base), Some(TOKEN)).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["degraded"], true);
    // Kill it (no last save): the snapshot on disk stays the good one.
    drop(agent);

    // Restart without the snapshot: nothing to serve, not ready.
    let agent = start_agent(&emu, &dir, preload).await;
    let (s, _, b) = get(
        &c,
        &format!("{}/v1/secrets/db-password", agent.base),
        Some(TOKEN),
    )
    .await;
    assert_eq!((s, b["code"].as_str()), (503, Some("unavailable")), "{b}");
    let (s, _, _) = get(&c, &format!("{}/healthz/ready", agent.base), Some(TOKEN)).await;
    assert_eq!(s, 503);
    drop(agent);

    // A tampered snapshot: refused with a clear line, the agent starts without it.
    let path = dir.join("state/lkg.snapshot");
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x80;
    std::fs::write(&path, &bytes).unwrap();
    let agent = start_agent(&emu, &dir, &snap).await;
    let (line, agent) = next_line(agent).await;
    assert!(
        line.starts_with("snapshot: refused") && line.contains("tampered"),
        "{line}"
    );
    let (s, _, b) = get(
        &c,
        &format!("{}/v1/secrets/db-password", agent.base),
        Some(TOKEN),
    )
    .await;
    assert_eq!((s, b["code"].as_str()), (503, Some("unavailable")), "{b}");
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `/metrics` is Prometheus text with the client's instruments, behind the token, and names no
/// secret or value; readiness waits for a vault or the preload list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_readiness() {
    let dir = temp_dir("metrics");
    let emu = emulator(&dir, &[("db-password", "hunter2")]).await;
    for r in ["weu", "neu"] {
        emu.apply_fault(r, VaultFault::Refuse).await.unwrap();
    }
    let agent = start_agent(
        &emu,
        &dir,
        "preload = [\"db-password\"]\npreload_jitter = \"0s\"\n",
    )
    .await;
    let c = http();
    let url = |p: &str| format!("{}{p}", agent.base);
    // No vault answers and nothing is held: not ready.
    let (s, _, b) = get(&c, &url("/healthz/ready"), Some(TOKEN)).await;
    assert_eq!((s, b["ready"].as_bool()), (503, Some(false)), "{b}");
    for r in ["weu", "neu"] {
        emu.apply_fault(r, VaultFault::Up).await.unwrap();
    }
    // Ready once a probe or the preload's retry reaches a vault (bounded wait).
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if get(&c, &url("/healthz/ready"), Some(TOKEN)).await.0 == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("ready once the vaults answer");
    let (s, _, _) = get(&c, &url("/v1/secrets/db-password"), Some(TOKEN)).await;
    assert_eq!(s, 200);

    let (s, _, _) = get(&c, &url("/metrics"), None).await;
    assert_eq!(s, 401);
    let resp = c
        .get(url("/metrics"))
        .header("X-Agent-Token", TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = resp.text().await.unwrap();
    assert!(text.contains("keyvault_failover_agent_ready 1"), "{text}");
    assert!(
        text.contains("# TYPE http_client_request_duration_seconds histogram"),
        "{text}"
    );
    assert!(
        text.contains("http_client_request_duration_seconds_bucket{"),
        "{text}"
    );
    assert!(text.contains("keyvault_failover_region=\"weu\""), "{text}");
    assert!(!text.contains("hunter2") && !text.contains("db-password"));
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The agent on a Unix socket (mode 0600), spoken to in plain HTTP/1.1; a leftover socket file
/// is replaced, and the file is removed on shutdown.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_socket_serves_the_same_api() {
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = temp_dir("unix");
    let emu = emulator(&dir, &[("db-password", "hunter2")]).await;
    let sock = dir.join("agent.sock");
    // A socket left by a process that died.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let agent = start_agent_on(&emu, &dir, "socket = \"agent.sock\"", "").await;
    assert_eq!(agent.base, format!("http://unix:{}", sock.display()));
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let mut s = tokio::net::UnixStream::connect(&sock).await.unwrap();
    let req = format!(
        "GET /v1/secrets/db-password HTTP/1.1\r\nHost: localhost\r\nX-Agent-Token: {TOKEN}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"value\":\"hunter2\""), "{answer}");
    terminate(agent).await;
    assert!(!sock.exists(), "the socket file is removed on shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The agent's port, from its base URL.
fn port_of(agent: &Agent) -> u16 {
    agent.base.rsplit(':').next().unwrap().parse().unwrap()
}

/// Issue 20, 1: a peer that sends requests and never reads the answers held its connection,
/// and its `max_connections` slot, for ever (nothing bounded writing the answer): any local
/// user filled every slot with no token. Now a write the peer takes no byte of for 10 s ends
/// the connection, and the slot is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_loses_its_connection_slot() {
    use keyvault_failover_emulator::peers::{first_answer, NeverReading};
    let dir = temp_dir("slowreader");
    let emu = emulator(&dir, &[]).await;
    let agent = start_agent(&emu, &dir, "max_connections = 2\n").await;
    let port = port_of(&agent);
    let request = format!("GET /healthz/live HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    let peers = NeverReading::connect(([127, 0, 0, 1], port).into(), 2, &request)
        .await
        .unwrap();
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .no_proxy()
        .build()
        .unwrap();
    let live = format!("{}/healthz/live", agent.base);
    // Both slots are taken: a third connection is closed at once.
    assert!(
        peers
            .refuse_others(&c, &live, Duration::from_secs(10))
            .await,
        "the two readers-who-never-read hold both slots"
    );
    // Within the write bound (10 s) and some slack, a slot is free again.
    let freed = first_answer(&c, &live, Duration::from_secs(40)).await;
    assert_eq!(
        freed,
        Some(200),
        "a peer that never reads still holds its slot"
    );
    drop(peers);
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 20, 4, 6 and 12: a `Host` that is not a loopback name is refused (DNS rebinding: a
/// page whose name now points at 127.0.0.1 sends its own name), liveness included; refused
/// tokens are logged without `RUST_LOG` (before: only errors were), and the logged path is cut
/// to 128 bytes on a character boundary (before: a path with a character across byte 128 was
/// logged whole).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_hosts_are_refused_and_refusals_logged_short() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = temp_dir("host");
    let emu = emulator(&dir, &[("db-password", "hunter2")]).await;
    let agent = start_agent(&emu, &dir, "").await;
    let port = port_of(&agent);
    let c = http();
    let url = format!("{}/healthz/live", agent.base);
    for (host, want) in [
        (format!("evil.example:{port}"), 403),
        ("evil.example".to_string(), 403),
        (format!("127.0.0.1.evil.example:{port}"), 403),
        (format!("localhost:{port}"), 200),
        (format!("127.0.0.1:{port}"), 200),
        ("localhost".to_string(), 200),
    ] {
        let r = c.get(&url).header("Host", &host).send().await.unwrap();
        let status = r.status().as_u16();
        let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert_eq!(status, want, "Host: {host}: {body}");
        if want == 403 {
            assert_eq!(body["code"], "host");
        }
    }
    let r = c
        .get(format!("{}/v1/secrets/db-password", agent.base))
        .header("Host", "evil.example")
        .header("X-Agent-Token", TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        403,
        "the token does not pass a foreign Host"
    );

    // A refused request whose path has a two-byte character across byte 128.
    let path = format!("/v1/secrets/{}{}", "a".repeat(115), "é".repeat(20_000));
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut answer))
        .await
        .expect("answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    drop(agent);
    let log = std::fs::read_to_string(dir.join("agent.stderr")).unwrap();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("X-Agent-Token refused"))
        .collect();
    assert!(
        !refused.is_empty(),
        "refusals are logged by default:\n{log}"
    );
    let longest = refused.iter().map(|l| l.len()).max().unwrap();
    assert!(longest < 600, "a refusal's log line is {longest} bytes");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 20, 3, 5, 9: a snapshot refused at start was overwritten by the first save (every
/// value it held lost); now it is moved aside whole. A FIFO at the snapshot's path blocked the
/// restore (the agent never listened); now it is refused at once. A snapshot directory that
/// does not exist was silent (nothing was ever saved); now the agent refuses to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_snapshot_is_kept_and_a_missing_directory_stops_the_start() {
    let dir = temp_dir("refused");
    let emu = emulator(&dir, &[("db-password", "hunter2")]).await;
    let snap = snapshot_table(&dir);
    let path = dir.join("state/lkg.snapshot");
    let garbage = b"KVFSNAP1 sealed with a key this agent does not have, and then some".to_vec();
    std::fs::write(&path, &garbage).unwrap();
    let agent = start_agent(&emu, &dir, &snap).await;
    let (line, agent) = next_line(agent).await;
    assert!(
        line.starts_with("snapshot: refused") && line.contains("kept as"),
        "{line}"
    );
    let c = http();
    let (s, _, _) = get(
        &c,
        &format!("{}/v1/secrets/db-password", agent.base),
        Some(TOKEN),
    )
    .await;
    assert_eq!(s, 200);
    let rest = terminate(agent).await;
    assert!(rest.contains("stopped"), "{rest}");
    let kept: Vec<_> = std::fs::read_dir(dir.join("state"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("lkg.snapshot.refused-"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(std::fs::read(&kept[0]).unwrap(), garbage, "kept whole");
    assert_ne!(
        std::fs::read(&path).unwrap(),
        garbage,
        "a new snapshot was saved"
    );
    std::fs::remove_file(&kept[0]).unwrap();

    // A FIFO where the snapshot should be: refused at once, the agent listens.
    std::fs::remove_file(&path).unwrap();
    assert!(Command::new("mkfifo")
        .arg(&path)
        .status()
        .unwrap()
        .success());
    let agent = start_agent(&emu, &dir, &snap).await;
    let (line, agent) = next_line(agent).await;
    assert!(
        line.starts_with("snapshot: refused") && line.contains("FIFO"),
        "{line}"
    );
    drop(agent);

    // No such directory: the agent does not start.
    let client = std::fs::read_to_string(emu.write_client_config().unwrap()).unwrap();
    let config = dir.join("nodir.toml");
    std::fs::write(
        &config,
        format!(
            "{client}\n[agent]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"agent.token\"\n\
             [agent.snapshot]\npath = \"no-such-dir/lkg.snapshot\"\nkey_file = \"snapshot.key\"\n"
        ),
    )
    .unwrap();
    let (code, err) = refused_at_start(&config).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no-such-dir"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 20, 7: a `request_timeout` shorter than the client's deadline cut the request off
/// before the read could fall back on what it held: with every vault hanging, each read was a
/// 503. Now the read gets the request's deadline and the held value is served, stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_request_timeout_still_serves_the_held_value() {
    let dir = temp_dir("reqtimeout");
    let emu = emulator(&dir, &[("db-password", "hunter2")]).await;
    let snap = snapshot_table(&dir);
    let agent = start_agent(&emu, &dir, &snap).await;
    let c = http();
    let url = format!("{}/v1/secrets/db-password", agent.base);
    let (s, _, _) = get(&c, &url, Some(TOKEN)).await;
    assert_eq!(s, 200);
    terminate(agent).await;
    for r in ["weu", "neu"] {
        emu.apply_fault(r, VaultFault::Blackhole).await.unwrap();
    }
    // Restored values are never fresh hits: the read asks the (hanging) vaults first.
    let agent = start_agent(&emu, &dir, &format!("request_timeout = \"1s\"\n{snap}")).await;
    let url = format!("{}/v1/secrets/db-password", agent.base);
    let (s, _, b) = get(&c, &url, Some(TOKEN)).await;
    assert_eq!((s, b["value"].as_str()), (200, Some("hunter2")), "{b}");
    assert_eq!(b["freshness"], "stale");
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 20, 11 and 12: a token file every local user can read was accepted silently (ssh and
/// PostgreSQL refuse such files); a preload name that cannot be a secret's was skipped
/// silently. Both now stop the start with the reason.
#[tokio::test]
async fn a_shared_token_file_or_a_bad_preload_name_is_refused_at_start() {
    let dir = temp_dir("perm");
    let base = "[[regions]]\nname = \"weu\"\nurl = \"https://app-weu.vault.azure.net\"\naccess = \"read-write\"\n";
    write_private(&dir.join("t"), TOKEN);
    let path = dir.join("a.toml");
    std::fs::write(
        &path,
        format!("{base}[agent]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"t\"\npreload = [\"db_password\"]\n"),
    )
    .unwrap();
    let (code, err) = refused_at_start(&path).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("preload") && err.contains("db_password"),
        "{err}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("t"), std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(
            &path,
            format!("{base}[agent]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"t\"\n"),
        )
        .unwrap();
        let (code, err) = refused_at_start(&path).await;
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("chmod 600"), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 20, 11: a socket path held by another user (a socket file of theirs) was taken over
/// when connecting to it failed for any reason (their live agent's 0600 socket refuses us with
/// "permission denied"). Now only our own socket, and only one nobody listens on, is replaced.
/// Needs root to give the file another owner; skipped (and said so) otherwise.
#[cfg(unix)]
#[tokio::test]
async fn another_users_socket_is_not_taken_over() {
    let dir = temp_dir("sockowner");
    let sock = dir.join("agent.sock");
    // A socket file nobody listens on.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let chown = Command::new("chown")
        .args(["12345", sock.to_str().unwrap()])
        .status()
        .unwrap();
    if !chown.success() {
        eprintln!("skipped: cannot give the socket file another owner without root");
        return;
    }
    let base = "[[regions]]\nname = \"weu\"\nurl = \"https://app-weu.vault.azure.net\"\naccess = \"read-write\"\n";
    write_private(&dir.join("t"), TOKEN);
    let path = dir.join("a.toml");
    std::fs::write(
        &path,
        format!("{base}[agent]\nsocket = \"agent.sock\"\ntoken_file = \"t\"\n"),
    )
    .unwrap();
    let (code, err) = refused_at_start(&path).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("not ours"), "{err}");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::symlink_metadata(&sock).unwrap().uid(),
        12345,
        "left alone"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 22: `POST /v1/events` takes Key Vault's events (Event Grid schema and CloudEvents) as
/// refresh hints behind the token: a rotation in the primary is served within the hint's delay
/// (1 s here) instead of the refresh interval (5 min); Event Grid's validation handshake and
/// the CloudEvents abuse-protection OPTIONS are answered; foreign vaults are ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_make_a_rotation_visible_within_the_hints_delay() {
    let dir = temp_dir("events");
    let emu = emulator(&dir, &[("db-password", "one")]).await;
    let agent = start_agent_hinted(&emu, &dir, false).await;
    let c = http();
    let url = |p: &str| format!("{}{p}", agent.base);
    let (s, _, b) = get(&c, &url("/v1/secrets/db-password"), Some(TOKEN)).await;
    assert_eq!((s, b["value"].as_str()), (200, Some("one")));

    let post = |body: String, token: Option<&'static str>| {
        let mut r = c
            .post(url("/v1/events"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = token {
            r = r.header("X-Agent-Token", t);
        }
        async move {
            let resp = r.send().await.unwrap();
            let status = resp.status().as_u16();
            let v: serde_json::Value =
                serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap_or_default();
            (status, v)
        }
    };
    let event = |vault: &str| {
        format!(
            r#"[{{"id":"1","topic":"/subscriptions/x/resourceGroups/g/providers/Microsoft.KeyVault/vaults/{vault}","subject":"db-password","eventType":"Microsoft.KeyVault.SecretNewVersionCreated","eventTime":"2026-12-01T10:00:00Z","data":{{"VaultName":"{vault}","ObjectType":"Secret","ObjectName":"db-password","Version":"0123456789abcdef"}},"dataVersion":"1","metadataVersion":"1"}}]"#
        )
    };
    // Token-guarded like every route; POST only.
    let (s, _) = post(event("app-weu"), None).await;
    assert_eq!(s, 401);
    let (s, _, _) = get(&c, &url("/v1/events"), Some(TOKEN)).await;
    assert_eq!(s, 405);
    // The handshakes.
    let (s, v) = post(
        r#"[{"id":"v","eventType":"Microsoft.EventGrid.SubscriptionValidationEvent","data":{"validationCode":"code-123"}}]"#.into(),
        Some(TOKEN),
    )
    .await;
    assert_eq!(
        (s, v["validationResponse"].as_str()),
        (200, Some("code-123")),
        "{v}"
    );
    let resp = c
        .request(reqwest::Method::OPTIONS, url("/v1/events"))
        .header("WebHook-Request-Origin", "eventemitter.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()["webhook-allowed-origin"],
        "eventemitter.example.com"
    );
    // A foreign vault's event changes nothing; the primary's is acted on.
    emu.insert("weu", "db-password", "two");
    let (s, v) = post(event("not-ours"), Some(TOKEN)).await;
    assert_eq!((s, v["scheduled"].as_u64()), (200, Some(0)), "{v}");
    let (s, v) = post(event("app-weu"), Some(TOKEN)).await;
    assert_eq!((s, v["scheduled"].as_u64()), (200, Some(1)), "{v}");
    let seen = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let (_, _, b) = get(&c, &url("/v1/secrets/db-password"), Some(TOKEN)).await;
            if b["value"] == "two" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(seen.is_ok(), "the rotation was not seen after the event");
    let (s, v) = post("not json".into(), Some(TOKEN)).await;
    assert_eq!((s, v["code"].as_str()), (400, Some("invalid_events")));

    // End to end: the emulator posts the event Key Vault would on each write, in either
    // schema, with the token as Event Grid's custom delivery header; the agent reads the new
    // value through the real SDK.
    let hook = url("/v1/events");
    for (schema, value) in [
        (keyvault_failover_emulator::EventSchema::EventGrid, "three"),
        (keyvault_failover_emulator::EventSchema::CloudEvents, "four"),
    ] {
        emu.set_webhook(Some((&hook, schema, &[("X-Agent-Token", TOKEN)])))
            .unwrap();
        let posted = emu.events_posted().0;
        emu.insert("weu", "db-password", value);
        let seen = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let (_, _, b) = get(&c, &url("/v1/secrets/db-password"), Some(TOKEN)).await;
                if b["value"] == value {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        assert!(
            seen.is_ok(),
            "{schema:?}: the emulator's event did not reach the agent"
        );
        assert!(emu.events_posted().0 > posted, "{schema:?}: delivered");
    }
    // The time from a write in the primary to the agent serving it, through the webhook
    // (`ROTATIONS`, default 3; printed, not asserted).
    let rotations: usize = std::env::var("ROTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .clamp(1, 1000);
    let mut took = Vec::new();
    for i in 0..rotations {
        let value = format!("hooked-{i}");
        let t0 = std::time::Instant::now();
        emu.insert("weu", "db-password", &value);
        let seen = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let (_, _, b) = get(&c, &url("/v1/secrets/db-password"), Some(TOKEN)).await;
                if b["value"] == value.as_str() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(seen.is_ok(), "rotation {i} not served within 20 s");
        took.push(t0.elapsed());
    }
    took.sort();
    println!(
        "webhook: {} rotations, write to served: median {:?}, max {:?}",
        took.len(),
        took[took.len() / 2],
        took[took.len() - 1]
    );
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 21, reading across regions: the secondary holds a replicator's copy of an older
/// source than the version the agent served from the primary. With the primary down, the
/// refresh (told by an event) finds the copy older, keeps the newer value, and the agent's
/// answer says how far the secondary lags (`X-Keyvault-Replication-Lag`, seconds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_secondary_is_shown_in_the_answer() {
    let dir = temp_dir("lag");
    let emu = Emulator::builder()
        .vault("weu")
        .vault("neu")
        .cert_dir(&dir)
        .start()
        .await
        .unwrap();
    emu.insert("weu", "db-password", "two");
    let old = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 600;
    emu.insert_copy("neu", "db-password", "one", "weu", old as i64);
    let agent = start_agent_hinted(&emu, &dir, true).await;
    let c = http();
    let url = format!("{}/v1/secrets/db-password", agent.base);
    let (s, h, b) = get(&c, &url, Some(TOKEN)).await;
    assert_eq!((s, b["value"].as_str()), (200, Some("two")), "{b}");
    assert!(h.get("x-keyvault-replication-lag").is_none());

    emu.apply_fault("weu", VaultFault::Refuse).await.unwrap();
    let event = r#"[{"id":"1","topic":"/subscriptions/x/resourceGroups/g/providers/Microsoft.KeyVault/vaults/app-weu","subject":"db-password","eventType":"Microsoft.KeyVault.SecretNewVersionCreated","eventTime":"2026-12-01T10:00:00Z","data":{"VaultName":"app-weu","ObjectType":"Secret","ObjectName":"db-password","Version":"0123456789abcdef"},"dataVersion":"1","metadataVersion":"1"}]"#;
    let resp = c
        .post(format!("{}/v1/events", agent.base))
        .header("X-Agent-Token", TOKEN)
        .header("content-type", "application/json")
        .body(event)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    // The hinted refresh runs within a second of the hint; wait for its effect, bounded.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (value, lag) = loop {
        let (s, h, b) = get(&c, &url, Some(TOKEN)).await;
        assert_eq!(s, 200, "{b}");
        let lag = h
            .get("x-keyvault-replication-lag")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if lag.is_some() || std::time::Instant::now() > deadline {
            break (b["value"].as_str().map(str::to_string), lag);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(value.as_deref(), Some("two"), "the older copy was served");
    assert!(lag.is_some(), "no lag header within 20 s");
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Azurite (the official Azure Storage emulator, npm package `azurite`), installed under the
/// test's target directory if it is not there yet and started on a free loopback port; killed
/// on drop.
struct Azurite {
    child: Child,
    port: u16,
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Azurite's well-known development account and key (public, in its documentation).
const AZURITE_ACCOUNT: &str = "devstoreaccount1";
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

async fn azurite(dir: &std::path::Path) -> Azurite {
    let home = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("azurite");
    let bin = home.join("node_modules/.bin/azurite-queue");
    if !bin.exists() {
        // `.ci/run` installs it beforehand; a fresh checkout's `cargo test` does it here.
        let home2 = home.clone();
        let install = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&home2).unwrap();
            Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
                .arg(&home2)
                .arg("azurite@3")
                .status()
        });
        let status = tokio::time::timeout(Duration::from_secs(300), install)
            .await
            .expect("npm install azurite within 5 minutes")
            .unwrap()
            .expect("npm runs (Node.js and npm are needed for the Storage-queue test)");
        assert!(status.success(), "npm install azurite failed: {status}");
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let data = dir.join("azurite-data");
    std::fs::create_dir_all(&data).unwrap();
    let child = Command::new(&bin)
        .args(["--queueHost", "127.0.0.1", "--queuePort", &port.to_string()])
        .arg("--location")
        .arg(&data)
        .args([
            "--silent",
            "--disableTelemetry",
            "--skipApiVersionCheck",
            "--loose",
        ])
        .stdout(Stdio::null())
        .stderr(stderr_file(dir))
        .spawn()
        .expect("azurite-queue starts");
    let az = Azurite { child, port };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "Azurite listens within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    az
}

/// An account SAS for Azurite's queues (signed version 2018-11-09: account, permissions,
/// services, resource types, start, expiry, IP, protocol, version).
fn azurite_sas() -> String {
    use base64::Engine as _;
    let (sp, ss, srt, se, spr, sv) = (
        "rwdlacup",
        "q",
        "sco",
        "2099-01-01T00:00:00Z",
        "https,http",
        "2018-11-09",
    );
    let to_sign = format!("{AZURITE_ACCOUNT}\n{sp}\n{ss}\n{srt}\n\n{se}\n\n{spr}\n{sv}\n");
    let key = base64::engine::general_purpose::STANDARD
        .decode(AZURITE_KEY)
        .unwrap();
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key);
    let sig = aws_lc_rs::hmac::sign(&key, to_sign.as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(sig.as_ref());
    let sig: String = url_encode(&sig);
    format!(
        "sv={sv}&ss={ss}&srt={srt}&sp={sp}&se={se}&spr={}&sig={sig}",
        url_encode(spr)
    )
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Issue 22, the pull transport: Key Vault's events reach the agent through an Azure Storage
/// queue (Event Grid's Storage-queue delivery, played here by the test against Azurite, each
/// event Base64-encoded as Event Grid's queue messages are read by the Storage SDKs). Each
/// rotation in the emulator is served by the agent once its event is taken from the queue;
/// a message that is not an event is dropped, not retried for ever. Prints the time from the
/// write to the agent serving the new version (`ROTATIONS`, default 5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_through_a_storage_queue_reach_the_agent() {
    use azure_storage_queue::{QueueClient, QueueClientOptions};
    use base64::Engine as _;
    let dir = temp_dir("queue");
    let az = azurite(&dir).await;
    let queue_url = format!("http://127.0.0.1:{}/{AZURITE_ACCOUNT}/kvf-events", az.port);
    let sas = azurite_sas();
    let transport = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .unwrap();
    let options = QueueClientOptions {
        client_options: azure_core::http::ClientOptions {
            transport: Some(azure_core::http::Transport::new(std::sync::Arc::new(
                transport,
            ))),
            ..Default::default()
        },
        ..Default::default()
    };
    let queue = QueueClient::new(
        azure_core::http::Url::parse(&format!("{queue_url}?{sas}")).unwrap(),
        None,
        Some(options),
    )
    .unwrap();
    queue
        .create(None)
        .await
        .expect("the queue is created (the SAS is accepted)");

    let emu = emulator(&dir, &[("db-password", "one")]).await;
    write_private(&dir.join("queue.sas"), &sas);
    let extra = format!(
        "[agent.queue]\nurl = \"{queue_url}\"\nsas_file = \"queue.sas\"\npoll = \"50ms\"\n"
    );
    let hinted = ("notify_max_delay = \"30s\"", "notify_max_delay = \"1s\"");
    let agent = start_agent_tuned(&emu, &dir, "listen = \"127.0.0.1:0\"", &extra, &[hinted]).await;
    let c = http();
    let url = format!("{}/v1/secrets/db-password", agent.base);
    let (s, _, b) = get(&c, &url, Some(TOKEN)).await;
    assert_eq!((s, b["value"].as_str()), (200, Some("one")), "{b}");

    let send = |text: String| {
        let q = &queue;
        async move {
            let msg = azure_storage_queue::models::QueueMessage {
                message_text: Some(text),
            };
            q.send_message(msg.try_into().unwrap(), None)
                .await
                .expect("the message is queued");
        }
    };
    // Not an event: taken, counted, deleted.
    send("garbage, not an event".into()).await;

    let rotations: usize = std::env::var("ROTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .clamp(1, 1000);
    let mut took = Vec::new();
    for i in 0..rotations {
        let value = format!("rotated-{i}");
        let t0 = std::time::Instant::now();
        let version = emu.insert("weu", "db-password", &value);
        emu.insert("neu", "db-password", &value);
        let event = format!(
            r#"{{"id":"{i}","topic":"/subscriptions/x/resourceGroups/g/providers/Microsoft.KeyVault/vaults/app-weu","subject":"db-password","eventType":"Microsoft.KeyVault.SecretNewVersionCreated","eventTime":"2026-12-02T10:00:00Z","data":{{"Id":"https://app-weu.vault.azure.net/secrets/db-password/{version}","VaultName":"app-weu","ObjectType":"Secret","ObjectName":"db-password","Version":"{version}"}},"dataVersion":"1","metadataVersion":"1"}}"#
        );
        send(base64::engine::general_purpose::STANDARD.encode(event)).await;
        let deadline = t0 + Duration::from_secs(30);
        loop {
            let (s, _, b) = get(&c, &url, Some(TOKEN)).await;
            assert_eq!(s, 200, "{b}");
            if b["value"].as_str() == Some(value.as_str()) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "rotation {i} not served within 30 s of its event"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        took.push(t0.elapsed());
    }
    took.sort();
    println!(
        "storage queue: {} rotations, write to served: median {:?}, max {:?}",
        took.len(),
        took[took.len() / 2],
        took[took.len() - 1]
    );
    // Every message was taken and deleted: the queue is empty.
    let left = queue
        .peek_messages(None)
        .await
        .unwrap()
        .into_model()
        .unwrap()
        .items
        .unwrap_or_default();
    assert!(left.is_empty(), "{} messages left in the queue", left.len());
    drop(agent);
    drop(az);
    let _ = std::fs::remove_dir_all(&dir);
}
