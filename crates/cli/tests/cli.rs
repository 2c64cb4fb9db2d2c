//! The operator's CLI against the emulator, configured by exactly the file
//! `keyvault-failover emulator` writes (`Emulator::write_client_config`): a real process, real
//! HTTPS on 127.0.0.1, every wait bounded.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use keyvault_failover_emulator::{Emulator, VaultFault};

async fn emulator(dir: &Path) -> Emulator {
    Emulator::builder()
        .vault("weu")
        .vault("neu")
        .cert_dir(dir)
        .start()
        .await
        .expect("emulator starts")
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kvf-cli-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs the CLI with `args`, at most 60 s.
async fn cli(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_keyvault-failover"))
            .args(&args)
            .env_remove("RUST_LOG")
            .output()
            .expect("the CLI runs")
    });
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the CLI ends within a minute")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_probe_and_get_work_from_the_emulators_own_configuration() {
    let dir = temp_dir("status");
    let emu = emulator(&dir).await;
    emu.insert("weu", "db-password", "hunter2");
    emu.insert("neu", "db-password", "hunter2");
    let config = emu.write_client_config().unwrap();
    let config = config.to_str().unwrap();

    // status --json: both regions answer, reads go to the primary.
    let out = cli(&["status", "--config", config, "--json"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["read_from"], "weu");
    assert_eq!(v["writable"], true);
    let regions = v["regions"].as_array().unwrap();
    assert_eq!(regions.len(), 2);
    assert!(regions.iter().all(|r| r["result"] == "ok"), "{v}");

    // get: metadata, the value only with --reveal. Unhedged: the region asserted is the
    // primary's, not whichever vault won a race (on a loaded machine a fresh process's first
    // TLS handshake can take longer than the 150 ms default hedge delay).
    let text = std::fs::read_to_string(config).unwrap();
    assert!(text.contains("[hedge]\nenabled = true\n"), "{text}");
    let unhedged = dir.join("unhedged.toml");
    std::fs::write(
        &unhedged,
        text.replace("[hedge]\nenabled = true\n", "[hedge]\nenabled = false\n"),
    )
    .unwrap();
    let unhedged = unhedged.to_str().unwrap();
    let out = cli(&["get", "db-password", "--config", unhedged, "--json"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        !text.contains("hunter2"),
        "the value is hidden without --reveal"
    );
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["region"], "weu");
    assert_eq!(v["freshness"], "fresh");
    let out = cli(&["get", "db-password", "--config", unhedged, "--reveal"]).await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("hunter2"));

    // The primary refuses: probe exits 1 naming it; status sends reads to the secondary and
    // says writes are refused.
    emu.apply_fault("weu", VaultFault::Refuse).await.unwrap();
    let out = cli(&["probe", "--config", config, "--json"]).await;
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["region"], "weu");
    assert_eq!(v[0]["result"], "connect", "{v}");
    assert_eq!(v[1]["result"], "ok");
    let out = cli(&["status", "--config", config]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("reads go to neu"), "{text}");
    assert!(text.contains("writes refused"), "{text}");

    // Every region down: status exits 1.
    emu.apply_fault("neu", VaultFault::Refuse).await.unwrap();
    let out = cli(&["status", "--config", config, "--json"]).await;
    assert_eq!(out.status.code(), Some(1));
    // Issue 20: `get` during an outage is the check failing (1), not bad input (2: before,
    // scripts could not tell an outage from a broken file); a bad name stays 2.
    let out = cli(&["get", "db-password", "--config", config]).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["get", "db_password", "--config", config]).await;
    assert_eq!(out.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 20: `check-config` refused the agent's own file ("unknown field `agent`"), so it
/// could not be checked before the agent started; it now checks the `[agent]` table too, and
/// a FIFO given as the file is refused at once instead of blocking.
#[tokio::test]
async fn check_config_takes_the_agents_file() {
    let dir = temp_dir("checkagent");
    let path = dir.join("agent.toml");
    let base = "[[regions]]\nname = \"weu\"\nurl = \"https://app-weu.vault.azure.net\"\naccess = \"read-write\"\n";
    std::fs::write(
        &path,
        format!("{base}[agent]\nlisten = \"127.0.0.1:2780\"\ntoken_file = \"agent.token\"\n"),
    )
    .unwrap();
    let out = cli(&["check-config", path.to_str().unwrap()]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("app-weu"));
    std::fs::write(
        &path,
        format!("{base}[agent]\nlisten = \"10.0.0.1:2780\"\ntoken_file = \"agent.token\"\n"),
    )
    .unwrap();
    let out = cli(&["check-config", path.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a loopback address"));
    #[cfg(unix)]
    {
        let fifo = dir.join("fifo.toml");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        let out = cli(&["check-config", fifo.to_str().unwrap()]).await;
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("FIFO"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_bad_configuration_file_gets_a_clear_error() {
    let dir = temp_dir("bad");
    let path = dir.join("client.toml");
    std::fs::write(
        &path,
        "ca_bundle = \"missing.pem\"\n[[regions]]\nname = \"weu\"\nurl = \"https://app-weu.vault.azure.net\"\naccess = \"read-write\"\naddress = \"127.0.0.1:9\"\n",
    )
    .unwrap();
    let out = cli(&["status", "--config", path.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ca_bundle") && err.contains("missing.pem"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `verify-replication`: equal contents pass; a secret that differs, or is missing from a
/// region, fails with exit 1 and says which; the value never appears in the output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_replication_finds_differences_without_showing_values() {
    let dir = temp_dir("verify");
    let emu = emulator(&dir).await;
    emu.insert("weu", "same", "s3cret-same");
    emu.insert("neu", "same", "s3cret-same");
    let config = emu.write_client_config().unwrap();
    let config = config.to_str().unwrap();
    let out = cli(&["verify-replication", "--config", config, "--json"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["name"], "same");
    assert_eq!(v[0]["in_sync"], true);

    emu.insert("weu", "rotated", "s3cret-new");
    emu.insert("neu", "rotated", "s3cret-old");
    emu.insert("weu", "only-primary", "s3cret-x");
    let out = cli(&["verify-replication", "--config", config, "--json"]).await;
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!text.contains("s3cret"), "no value in the output: {text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let by_name = |n: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == n)
            .unwrap_or_else(|| panic!("{n} checked: {v}"))
            .clone()
    };
    assert_eq!(by_name("same")["in_sync"], true);
    assert_eq!(by_name("rotated")["in_sync"], false);
    let missing = by_name("only-primary");
    assert_eq!(missing["in_sync"], false);
    assert_eq!(missing["copies"][1]["error"], "not-found");
    // Named secrets only.
    let out = cli(&["verify-replication", "--config", config, "same"]).await;
    assert!(out.status.success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `watch`: with the primary refusing, the client's prober trips its breaker and the route
/// moves; each event is a JSON line. (The emulator's file, with faster probing.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_breaker_and_route_events() {
    let dir = temp_dir("watch");
    let emu = emulator(&dir).await;
    let written = emu.write_client_config().unwrap();
    let mut t: toml::Table = toml::from_str(&std::fs::read_to_string(&written).unwrap()).unwrap();
    let probe = t["probe"].as_table_mut().unwrap();
    probe.insert("interval".into(), "300ms".into());
    probe.insert("unhealthy_interval".into(), "200ms".into());
    probe.insert("failures_to_trip".into(), 2.into());
    let config = dir.join("fast.toml");
    std::fs::write(&config, toml::to_string(&t).unwrap()).unwrap();
    emu.apply_fault("weu", VaultFault::Refuse).await.unwrap();
    let out = cli(&[
        "watch",
        "--config",
        config.to_str().unwrap(),
        "--duration",
        "4s",
        "--json",
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "breaker" && e["region"] == "weu" && e["state"] == "Open"),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "route-changed" && e["to"] == "neu"),
        "{events:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `replicate` against the emulator's own file: the dry run plans and writes nothing (exit 1:
/// work to do), the run copies (exit 0) and never shows a value, the next run writes nothing,
/// `verify-replication` agrees; a bad pattern is exit 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicate_plans_copies_and_then_finds_nothing_to_do() {
    let dir = temp_dir("replicate");
    let emu = emulator(&dir).await;
    emu.insert("weu", "db-password", "hunter2-secret-value");
    emu.insert("weu", "api-key", "k-secret-value");
    emu.insert_managed("weu", "tls-cert", "pfx-secret-value");
    let config = emu.write_client_config().unwrap();
    let config = config.to_str().unwrap();

    let out = cli(&["replicate", "--config", config, "--dry-run"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("db-password") && text.contains("copy: missing here"),
        "{text}"
    );
    assert!(
        text.contains("tls-cert") && text.contains("managed"),
        "{text}"
    );
    assert_eq!(emu.writes("neu"), 0, "a dry run writes nothing");

    let status = dir.join("replicate-status.json");
    let out = cli(&[
        "replicate",
        "--config",
        config,
        "--json",
        "--status-file",
        status.to_str().unwrap(),
    ])
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["run"]["secondaries"][0]["copied"], 2, "{v}");
    assert!(
        !text.contains("secret-value"),
        "no value in the report: {text}"
    );
    assert_eq!(
        emu.current("neu", "db-password").unwrap().0,
        "hunter2-secret-value"
    );
    assert!(emu.current("neu", "tls-cert").is_none());
    assert_eq!(emu.writes("weu"), 0, "the primary is never written");
    let s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&status).unwrap()).expect("status JSON");
    assert_eq!(s["in_step"], true);

    let writes = emu.writes("neu");
    let out = cli(&["replicate", "--config", config]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(emu.writes("neu"), writes, "in step: nothing written");

    let out = cli(&[
        "verify-replication",
        "--config",
        config,
        "db-password",
        "api-key",
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // A copy whose provenance names an older source than the primary's current version:
    // settled from the listings as lagging, no value read.
    let old = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 600;
    emu.insert_copy("neu", "lagged", "x-secret-value", "weu", old as i64);
    emu.insert("weu", "lagged", "y-secret-value");
    let gets = (emu.gets("weu"), emu.gets("neu"));
    let out = cli(&["verify-replication", "--config", config, "--json", "lagged"]).await;
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let copy = &v[0]["copies"][1];
    assert_eq!(
        (copy["state"].as_str(), copy["from_listing"].as_bool()),
        (Some("lagging"), Some(true)),
        "{v}"
    );
    assert!(copy["lag_secs"].as_i64().unwrap() >= 0);
    assert!(copy["hash"].is_null());
    // Listings only (a GET of /secrets counts as a GET in the emulator: one page each).
    assert_eq!(
        (emu.gets("weu"), emu.gets("neu")),
        (gets.0 + 1, gets.1 + 1),
        "no value read"
    );

    let out = cli(&["replicate", "--config", config, "--only", "[x"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a pattern"));
}

/// `replicate --every --metrics`: a pass at once, then `/healthz` answers 200 (in step, recent)
/// and `/metrics` shows the replicator's passes and changes, never a secret's name; SIGTERM
/// stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicate_every_serves_health_and_metrics() {
    use std::io::BufRead;
    let dir = temp_dir("replicate-every");
    let emu = emulator(&dir).await;
    emu.insert("weu", "payments-db-password", "secret-value-1");
    let config = emu.write_client_config().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_keyvault-failover"))
        .args([
            "replicate",
            "--config",
            config.to_str().unwrap(),
            "--every",
            "10s",
        ])
        .args(["--metrics", &format!("127.0.0.1:{port}")])
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Its stdout is read to the end (a closed pipe would stop it at its next line).
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let _ = tx.send(line.unwrap_or_default());
        }
    });
    let first = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30)))
        .await
        .unwrap()
        .expect("it starts");
    assert!(
        first.starts_with("metrics on http://127.0.0.1:"),
        "{first:?}"
    );
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = http.get(format!("{base}/healthz")).send().await.unwrap();
        if r.status().as_u16() == 200 {
            let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
            assert_eq!(v["in_step"], true, "{v}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "healthy within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        emu.current("neu", "payments-db-password").unwrap().0,
        "secret-value-1"
    );
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("keyvault_failover_replicate_passes"),
        "{text}"
    );
    assert!(
        text.contains("keyvault_failover_replicate_changes"),
        "{text}"
    );
    assert!(!text.contains("payments-db-password") && !text.contains("secret-value"));

    // A page whose name was rebound to 127.0.0.1 sends its own name: refused.
    let r = http
        .get(format!("{base}/healthz"))
        .header("host", "rebound.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    // Peers that connect and never send hold no slot for long: 64 of them fill every slot,
    // and the probe is answered again once they are cut (2 s without a request). Before,
    // 16 slots were each held for 10 s.
    let idle: Vec<std::net::TcpStream> = (0..64)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let fresh = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(6);
    loop {
        match fresh.get(format!("{base}/healthz")).send().await {
            Ok(r) if r.status().as_u16() == 200 => break,
            _ => {}
        }
        assert!(
            std::time::Instant::now() < deadline,
            "idle peers still hold every slot"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(idle);
    kill_term(child.id());
    let status = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::task::spawn_blocking(move || child.wait()),
    )
    .await
    .expect("it stops on SIGTERM")
    .unwrap()
    .unwrap();
    assert!(status.success(), "{status}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGTERM to `pid`.
fn kill_term(pid: u32) {
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Rewrites the emulator's client file as an operator may write it by hand: its regions in
/// another order, another access.
fn rewrite(from: &Path, to: &Path, edit: impl FnOnce(&mut toml::Table)) {
    let mut doc: toml::Table = toml::from_str(&std::fs::read_to_string(from).unwrap()).unwrap();
    edit(&mut doc);
    std::fs::write(to, toml::to_string(&doc).unwrap()).unwrap();
}

fn regions(doc: &mut toml::Table) -> &mut Vec<toml::Value> {
    doc.get_mut("regions")
        .and_then(toml::Value::as_array_mut)
        .expect("a regions array")
}

/// The primary is the read-write region wherever the file lists it. Taking the first region
/// as the primary, a file listing the read-only copy first had that stale copy written into
/// the writable vault ("1 compare / 1 copied"). A file with no read-write region, or two, is
/// refused with a clear error and nothing is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicate_copies_from_the_read_write_region_whatever_the_order() {
    let dir = temp_dir("replicate-order");
    let emu = emulator(&dir).await;
    emu.insert("neu", "db-password", "old-secret-value");
    emu.insert("weu", "db-password", "new-secret-value");
    let config = emu.write_client_config().unwrap();
    let reversed = dir.join("reversed.toml");
    rewrite(&config, &reversed, |d| regions(d).reverse());
    let reversed = reversed.to_str().unwrap();

    let out = cli(&["replicate", "--config", reversed]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("primary weu"), "{text}");
    assert_eq!(emu.writes("weu"), 0, "the primary is never written");
    assert_eq!(
        emu.current("weu", "db-password").unwrap().0,
        "new-secret-value"
    );
    assert_eq!(
        emu.current("neu", "db-password").unwrap().0,
        "new-secret-value",
        "the read-only copy is brought up to the primary"
    );
    let out = cli(&["verify-replication", "--config", reversed, "db-password"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    for (tag, access, expect) in [
        ("none", "read-only", "no region is read-write"),
        ("two", "read-write", "2 regions are read-write"),
    ] {
        let file = dir.join(format!("{tag}.toml"));
        rewrite(&config, &file, |d| {
            for region in regions(d).iter_mut() {
                region["access"] = toml::Value::String(access.into());
            }
            d.insert("allow_multiple_writable".into(), toml::Value::Boolean(true));
        });
        let file = file.to_str().unwrap();
        for args in [
            &["replicate", "--config", file][..],
            &["verify-replication", "--config", file, "db-password"][..],
        ] {
            let out = cli(args).await;
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?} {tag}: {err}");
            assert!(err.contains(expect), "{args:?} {tag}: {err}");
        }
    }
    assert_eq!(emu.writes("weu"), 0);
}

/// A value planted in the secondary under a genuine copy's tags (which anyone who may list can
/// read and copy) is in step by the listings. `verify-replication --deep` compares the values
/// and finds it; `replicate --deep` with the MAC key rewrites it; without `--deep`, neither
/// sees it. The key file must be private to its owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_value_is_found_by_deep_verification_and_repaired_by_a_deep_pass() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("replicate-deep");
    let emu = emulator(&dir).await;
    emu.insert("weu", "db-password", "genuine-secret-value");
    let config = emu.write_client_config().unwrap();
    let config = config.to_str().unwrap();
    let key = dir.join("replicator.key");
    std::fs::write(&key, [7u8; 32]).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let key = key.to_str().unwrap();
    let out = cli(&["replicate", "--config", config, "--mac-key-file", key]).await;
    assert_eq!(out.status.code(), Some(2), "a shared key file is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("private"));
    std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Pruning without the key cannot prove a copy the replicator's: refused, nothing sent.
    let out = cli(&["replicate", "--config", config, "--prune"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("MAC key"));
    let out = cli(&["replicate", "--config", config, "--mac-key-file", key]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let tags = emu.current_tags("neu", "db-password").unwrap();
    let tag = &tags[keyvault_failover::replicate::PROVENANCE_TAG];
    assert_eq!(
        tag.split(':').next().unwrap().split('/').count(),
        3,
        "sealed: {tag}"
    );
    assert!(!tag.contains("genuine"), "no value in a tag");

    // Planted under the genuine copy's tags.
    emu.insert_with(
        "neu",
        "db-password",
        "planted-secret-value",
        keyvault_failover_emulator::SecretSpec {
            tags,
            ..Default::default()
        },
    );
    let out = cli(&[
        "verify-replication",
        "--config",
        config,
        "--deep",
        "--json",
        "db-password",
    ])
    .await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["copies"][1]["state"], "differs", "{v}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("planted"));

    let out = cli(&[
        "replicate",
        "--config",
        config,
        "--mac-key-file",
        key,
        "--deep",
    ])
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        emu.current("neu", "db-password").unwrap().0,
        "genuine-secret-value",
        "the deep pass rewrote the planted value"
    );
    assert_eq!(emu.writes("weu"), 0);
    let out = cli(&[
        "verify-replication",
        "--config",
        config,
        "--deep",
        "db-password",
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
