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

/// The Python SDK in a virtual environment under `target/tmp/kv-python`.
async fn python() -> PathBuf {
    let venv = tmp().join("kv-python");
    let py = venv.join("bin/python");
    if !venv.join("bin/pip").exists() || !has_python_sdk(&py).await {
        let mut c = Command::new("python3");
        c.args(["-m", "venv"]).arg(&venv);
        ok(
            &run(c, Duration::from_secs(120), "python3 -m venv").await,
            "venv",
        );
        let mut c = Command::new(venv.join("bin/pip"));
        c.args(["install", "-q", "azure-keyvault-secrets==4.12.0"]);
        ok(
            &run(c, Duration::from_secs(300), "pip install").await,
            "pip install",
        );
    }
    py
}

async fn has_python_sdk(py: &Path) -> bool {
    let mut c = Command::new(py);
    c.args(["-c", "import azure.keyvault.secrets"]);
    run(c, Duration::from_secs(60), "python import")
        .await
        .status
        .success()
}

/// The JavaScript SDK under `target/tmp/kv-js`.
async fn js() -> PathBuf {
    let home = tmp().join("kv-js");
    if !home.join("node_modules/@azure/keyvault-secrets").exists() {
        std::fs::create_dir_all(&home).unwrap();
        let mut c = Command::new("npm");
        c.args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
            .arg(&home)
            .arg("@azure/keyvault-secrets@4");
        ok(
            &run(c, Duration::from_secs(300), "npm install").await,
            "npm install",
        );
    }
    home
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
