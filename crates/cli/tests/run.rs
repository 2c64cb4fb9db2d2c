//! `keyvault-failover run` as a process over the emulator, with real child processes: the
//! program gets its secrets in its environment and its exit status is mirrored; a secret that
//! can neither be read nor restored stops the start (125, the reason, no program); SIGHUP and
//! SIGTERM are forwarded; a rotation restarts the program (one that ignores SIGTERM is killed
//! after the grace period) or signals it; a start during a total outage uses the snapshot and,
//! without it, refuses clearly.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{finished, until_holds, write_private};
use keyvault_failover_emulator::{Emulator, VaultFault};

const SNAPSHOT_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const VALUE: &str = "s3cr3t-db-value";

fn temp_dir(tag: &str) -> PathBuf {
    let d = common::temp_dir(&format!("run-{tag}"));
    std::fs::create_dir_all(d.join("state")).unwrap();
    d
}

/// The client file with background refresh every second (a rotation is seen within about a
/// second) and the sealed snapshot in `state/`.
fn config(emu: &Emulator, dir: &Path) -> PathBuf {
    let client = std::fs::read_to_string(emu.write_client_config().unwrap())
        .unwrap()
        .replace("refresh_interval = \"5m\"", "refresh_interval = \"1s\"");
    write_private(&dir.join("snapshot.key"), SNAPSHOT_KEY);
    let path = dir.join("run.toml");
    std::fs::write(
        &path,
        format!(
            "{client}\n[agent]\n[agent.snapshot]\npath = \"state/lkg.snapshot\"\n\
             key_file = \"snapshot.key\"\ninterval = \"1s\"\n"
        ),
    )
    .unwrap();
    path
}

async fn emulator(dir: &Path) -> Emulator {
    common::emulator(dir, &[("db-password", VALUE), ("api-key", "k1")]).await
}

/// `run --config CONFIG ARGS -- sh -c SCRIPT`, its output captured.
fn run(config: &Path, args: &[&str], script: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_keyvault-failover"))
        .arg("run")
        .arg("--config")
        .arg(config)
        .args(args)
        .args(["--", "sh", "-c", script])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run starts")
}

fn signal(child: &Child, sig: &str) {
    assert!(Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_program_gets_its_secrets_and_its_exit_status_is_mirrored() {
    let dir = temp_dir("env");
    let emu = emulator(&dir).await;
    let cfg = config(&emu, &dir);
    let out = dir.join("out");
    let script = format!(
        "printf '%s|%s' \"$DB_PASSWORD\" \"$API_KEY\" > {}; exit 7",
        out.display()
    );
    let child = run(
        &cfg,
        &[
            "--env",
            "DB_PASSWORD=db-password",
            "--env",
            "API_KEY=api-key",
        ],
        &script,
    );
    let (code, err) = finished(child).await;
    assert_eq!(code, Some(7), "{err}");
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        format!("{VALUE}|k1")
    );
    assert!(!err.contains(VALUE), "{err}");

    // A secret that does not exist: not started, 125, the reason.
    let marker = dir.join("started");
    let child = run(
        &cfg,
        &["--env", "X=no-such-secret"],
        &format!("touch {}", marker.display()),
    );
    let (code, err) = finished(child).await;
    assert_eq!(code, Some(125), "{err}");
    assert!(
        err.contains("no-such-secret") && err.contains("not started"),
        "{err}"
    );
    assert!(!marker.exists());
    // Bad input: a variable name, an --on-change.
    for args in [
        &["--env", "1X=db-password"][..],
        &["--env", "X=db-password", "--on-change", "reload"][..],
    ] {
        let (code, err) = finished(run(&cfg, args, "true")).await;
        assert_eq!(code, Some(125), "{args:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGHUP is forwarded; a rotation restarts the program, which ignores SIGTERM and so is
/// killed after the 300 ms grace; SIGTERM to `run` is forwarded, the program killed after the
/// grace again, and `run` exits 137 (128 + SIGKILL), as a shell would say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_are_forwarded_and_a_rotation_restarts_the_program() {
    let dir = temp_dir("restart");
    let emu = emulator(&dir).await;
    let cfg = config(&emu, &dir);
    let log = dir.join("log");
    let script = format!(
        "echo \"start $DB_PASSWORD\" >> {l}; trap 'echo hup >> {l}' HUP; trap '' TERM; \
         while :; do sleep 0.05; done",
        l = log.display()
    );
    let child = run(
        &cfg,
        &[
            "--env",
            "DB_PASSWORD=db-password",
            "--on-change",
            "restart",
            "--grace",
            "300ms",
        ],
        &script,
    );
    until_holds(&log, &format!("start {VALUE}")).await;
    signal(&child, "-HUP");
    until_holds(&log, "hup").await;
    let rotated = Instant::now();
    emu.insert("weu", "db-password", "rotated-value");
    until_holds(&log, "start rotated-value").await;
    println!("rotation to restart: {:?}", rotated.elapsed());
    signal(&child, "-TERM");
    let (code, err) = finished(child).await;
    assert_eq!(code, Some(137), "{err}");
    let starts = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("start"))
        .count();
    assert_eq!(starts, 2, "one start, one restart");
    assert!(
        !err.contains(VALUE) && !err.contains("rotated-value"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--on-change signal:USR1`: each of 20 rotations signals the program once, which goes on;
/// SIGTERM ends it with its own status. Prints the rotation-to-signal times (the client's
/// refresh every second finds each rotation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_can_signal_the_program_instead() {
    let dir = temp_dir("signal");
    let emu = emulator(&dir).await;
    let cfg = config(&emu, &dir);
    let log = dir.join("log");
    let script = format!(
        "echo start >> {l}; trap 'echo usr1 >> {l}' USR1; trap 'exit 3' TERM; \
         while :; do sleep 0.05; done",
        l = log.display()
    );
    let child = run(
        &cfg,
        &[
            "--env",
            "DB_PASSWORD=db-password",
            "--on-change",
            "signal:USR1",
        ],
        &script,
    );
    until_holds(&log, "start").await;
    let mut took = Vec::new();
    for i in 1..=20 {
        let rotated = Instant::now();
        emu.insert("weu", "db-password", &format!("rotated-{i}"));
        let end = rotated + Duration::from_secs(20);
        while std::fs::read_to_string(&log)
            .unwrap()
            .matches("usr1")
            .count()
            < i
        {
            assert!(
                Instant::now() < end,
                "rotation {i} never signalled the program"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        took.push(rotated.elapsed());
    }
    took.sort();
    println!(
        "rotation to signal: median {:?}, max {:?} over 20 rotations",
        took[10], took[19]
    );
    signal(&child, "-TERM");
    let (code, err) = finished(child).await;
    assert_eq!(code, Some(3), "{err}");
    let log = std::fs::read_to_string(&log).unwrap();
    assert_eq!(log.matches("start").count(), 1, "not restarted: {log}");
    assert_eq!(
        log.matches("usr1").count(),
        20,
        "one signal a rotation: {log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every vault down: with the snapshot a previous run saved, the program starts with the held
/// value; without it, `run` refuses, says why, and starts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_during_a_total_outage_uses_the_snapshot_or_refuses() {
    let dir = temp_dir("outage");
    let emu = emulator(&dir).await;
    let cfg = config(&emu, &dir);
    let out = dir.join("out");
    let script = format!("printf '%s' \"$DB_PASSWORD\" > {}", out.display());
    let args = ["--env", "DB_PASSWORD=db-password"];
    let (code, err) = finished(run(&cfg, &args, &script)).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        dir.join("state/lkg.snapshot").exists(),
        "run saved the snapshot"
    );
    std::fs::remove_file(&out).unwrap();

    emu.apply_fault("weu", VaultFault::Refuse).await.unwrap();
    emu.apply_fault("neu", VaultFault::Refuse).await.unwrap();
    let (code, err) = finished(run(&cfg, &args, &script)).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), VALUE);
    std::fs::remove_file(&out).unwrap();

    std::fs::remove_file(dir.join("state/lkg.snapshot")).unwrap();
    let (code, err) = finished(run(&cfg, &args, &script)).await;
    assert_eq!(code, Some(125), "{err}");
    assert!(
        err.contains("db-password") && err.contains("could not be read"),
        "{err}"
    );
    assert!(!out.exists(), "the program was not started");
    let _ = std::fs::remove_dir_all(&dir);
}
