//! What the process tests share: a scratch directory, the emulator's two vaults, the agent as a
//! process, Key Vault's change event, bounded waits.

#![allow(dead_code)] // each test file uses its own part

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keyvault_failover_emulator::Emulator;

/// The agent's token in these tests.
pub const TOKEN: &str = "agent-test-token-0123456789";

/// A fresh `$TMPDIR/kvf-<tag>-<pid>`.
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kvf-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `text` in a file only its owner may read (the agent refuses a token or key others can).
pub fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// The emulator's two vaults, `weu` (read-write) and `neu`, their CA in `dir`, each holding
/// `secrets`.
pub async fn emulator(dir: &Path, secrets: &[(&str, &str)]) -> Emulator {
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

/// The agent as a process; killed when dropped.
pub struct Agent {
    pub child: Child,
    /// `http://ADDR` of its own API.
    pub base: String,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The agent on `config`, through `sh -c '<prefix> exec ...'` when `prefix` is given (a
/// `ulimit`, a `trap`); waits (at most 30 s) for its "listening on" line.
pub async fn agent(config: &Path, prefix: Option<&str>) -> Agent {
    let (child, lines) = agent_lines(config, prefix, 1).await;
    let addr = lines[0]
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {lines:?}"))
        .to_string();
    Agent {
        child,
        base: format!("http://{addr}"),
    }
}

/// The agent on `config` (as [`agent`]) and the first `n` lines it prints, within 30 s; its
/// standard output is read on after them, so a full pipe never stops it.
pub async fn agent_lines(config: &Path, prefix: Option<&str>, n: usize) -> (Child, Vec<String>) {
    let bin = env!("CARGO_BIN_EXE_keyvault-failover");
    let mut c = match prefix {
        None => Command::new(bin),
        Some(p) => {
            let mut c = Command::new("sh");
            c.args(["-c", &format!("{p} exec \"$0\" \"$@\""), bin]);
            c
        }
    };
    let mut child = c
        .args(["agent", "--config", config.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the agent starts");
    let stdout = child.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        let mut r = BufReader::new(stdout);
        let mut lines = Vec::new();
        for _ in 0..n {
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            lines.push(l.trim().to_string());
        }
        std::thread::spawn(move || for _ in r.lines() {});
        lines
    });
    let lines = tokio::time::timeout(Duration::from_secs(30), lines)
        .await
        .expect("the agent prints where it listens within 30 s")
        .unwrap();
    (child, lines)
}

/// Runs the agent on `config`, which must refuse to start: its exit code and standard error
/// (at most 30 s; an agent that starts instead is killed and the test fails).
pub async fn refused_at_start(config: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keyvault-failover"))
        .args(["agent", "--config", config.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let waited = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            (child.wait().unwrap().code(), err)
        }),
    )
    .await;
    match waited {
        Ok(r) => r.unwrap(),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("the agent started instead of refusing {}", config.display());
        }
    }
}

/// A process's exit code and standard error, within 60 s.
pub async fn finished(child: Child) -> (Option<i32>, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .expect("the process ends within 60 s")
    .unwrap()
    .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .no_proxy()
        .build()
        .unwrap()
}

/// Posts Key Vault's event for a new version of `name` in the primary (`app-weu`) to the
/// agent at `base`.
pub async fn post_event(base: &str, name: &str) {
    let body = format!(
        r#"[{{"id":"1","topic":"/subscriptions/x/resourceGroups/g/providers/Microsoft.KeyVault/vaults/app-weu","subject":"{name}","eventType":"Microsoft.KeyVault.SecretNewVersionCreated","eventTime":"2026-12-01T10:00:00Z","data":{{"VaultName":"app-weu","ObjectType":"Secret","ObjectName":"{name}","Version":"0123456789abcdef"}},"dataVersion":"1","metadataVersion":"1"}}]"#
    );
    let r = http()
        .post(format!("{base}/v1/events"))
        .header("X-Agent-Token", TOKEN)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

/// Waits (polling, at most `within`) until `ok` holds; panics with `what` otherwise.
pub async fn until<F, Fut>(within: Duration, what: &str, mut ok: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + within;
    while !ok().await {
        assert!(Instant::now() < end, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits (at most 20 s) until the file at `path` holds `needle`.
pub async fn until_holds(path: &Path, needle: &str) {
    let what = format!("{} holds {needle:?}", path.display());
    until(Duration::from_secs(20), &what, || {
        let there = std::fs::read_to_string(path)
            .unwrap_or_default()
            .contains(needle);
        async move { there }
    })
    .await;
}
