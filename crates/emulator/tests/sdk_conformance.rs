//! The emulator as Microsoft's own SDKs see it: the official Python SDK
//! (`azure-keyvault-secrets`, PyPI) and JavaScript SDK (`@azure/keyvault-secrets`, npm), run
//! as real programs over real HTTPS against the emulator on 127.0.0.1 (`tests/sdk/`): set, get,
//! get a version, update (which must report the version it updated), a paged listing, versions,
//! 404 `SecretNotFound`, 400 `BadParameter`, delete and recover. `.ci/run` installs both SDKs
//! under `target/tmp`; a fresh checkout's `cargo test` installs them here (PyPI, npm).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use keyvault_failover_emulator::Emulator;

fn tmp() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// Runs `cmd` on a blocking thread, at most `limit`.
async fn run(mut cmd: Command, limit: Duration, what: &str) -> Output {
    let what = what.to_string();
    let task = tokio::task::spawn_blocking(move || cmd.output());
    tokio::time::timeout(limit, task)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within {limit:?}"))
        .unwrap()
        .unwrap_or_else(|e| panic!("{what} does not run: {e}"))
}

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Python SDK under `target/tmp/kv-python` (installed if missing).
async fn python() -> PathBuf {
    tokio::task::spawn_blocking(|| keyvault_failover_emulator::sdks::python(&tmp()))
        .await
        .unwrap()
        .expect("the Python SDK installs (python3, pip and PyPI are needed)")
}

/// The JavaScript SDK under `target/tmp/kv-js` (installed if missing).
async fn js() -> PathBuf {
    tokio::task::spawn_blocking(|| keyvault_failover_emulator::sdks::js(&tmp()))
        .await
        .unwrap()
        .expect("the JavaScript SDK installs (npm and its registry are needed)")
}

async fn emulator(tag: &str) -> (Emulator, PathBuf) {
    let dir = tmp().join(format!("sdk-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let emu = Emulator::builder()
        .vault("weu")
        .cert_dir(&dir)
        .start()
        .await
        .expect("emulator starts");
    (emu, dir)
}

fn url(emu: &Emulator) -> String {
    format!("https://127.0.0.1:{}", emu.addr("weu").port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_sdk_works_against_the_emulator() {
    let py = python().await;
    let (emu, dir) = emulator("py").await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/conformance.py");
    let mut c = Command::new(py);
    c.arg(script)
        .env("KV_URL", url(&emu))
        .env("KV_CA", emu.cert_path().expect("a CA file"))
        .env_remove("REQUESTS_CA_BUNDLE")
        .env_remove("SSL_CERT_FILE");
    let out = run(c, Duration::from_secs(120), "the Python SDK script").await;
    ok(&out, "the Python SDK script");
    assert!(String::from_utf8_lossy(&out.stdout).contains("all checks passed"));
    assert!(emu.current("weu", "py-secret").is_some());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_javascript_sdk_works_against_the_emulator() {
    let home = js().await;
    let (emu, dir) = emulator("js").await;
    // ES modules resolve packages from the script's own folder: it runs from the install.
    let script = home.join("conformance.mjs");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/conformance.mjs"),
        &script,
    )
    .unwrap();
    let mut c = Command::new("node");
    c.arg(&script)
        .env("KV_URL", url(&emu))
        .env("NODE_EXTRA_CA_CERTS", emu.cert_path().expect("a CA file"));
    let out = run(c, Duration::from_secs(120), "the JavaScript SDK script").await;
    ok(&out, "the JavaScript SDK script");
    assert!(String::from_utf8_lossy(&out.stdout).contains("all checks passed"));
    assert!(emu.current("weu", "js-secret").is_some());
    let _ = std::fs::remove_dir_all(&dir);
}
