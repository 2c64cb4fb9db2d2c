//! `[[agent.file]]` with the agent as a process over the emulator, real files and real
//! commands: files follow 50 rotations (a new version in the primary, its event posted) and a
//! reader in a tight loop never sees a partial or empty file; modes are the entries'; a
//! symbolic link planted at a file's path is replaced, never followed; the change command runs
//! exactly once per change, and one that hangs is killed at its timeout; a start during a total
//! outage writes the files from the sealed snapshot (stale, health says so) and, without it,
//! leaves them pending; a write the file system refuses keeps the previous file; bad entries
//! stop the start with a clear error and write nothing.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{agent as start, emulator, post_event, until, write_private, Agent, TOKEN};
use keyvault_failover_emulator::{Emulator, VaultFault};

const SNAPSHOT_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// A fresh scratch directory with `out/` in it.
fn temp_dir(tag: &str) -> PathBuf {
    let d = common::temp_dir(&format!("files-{tag}"));
    std::fs::create_dir_all(d.join("out")).unwrap();
    d
}

/// The agent's configuration in `dir`: the emulator's client file with change hints acted
/// on within 50 ms, and `extra` in `[agent]`.
fn config(emu: &Emulator, dir: &Path, extra: &str) -> PathBuf {
    let client = std::fs::read_to_string(emu.write_client_config().unwrap())
        .unwrap()
        .replace("notify_max_delay = \"30s\"", "notify_max_delay = \"50ms\"");
    write_private(&dir.join("agent.token"), TOKEN);
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "{client}\n[agent]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"agent.token\"\n\
             file_dirs = [\"out\"]\nfile_check = \"20ms\"\n{extra}"
        ),
    )
    .unwrap();
    path
}

/// Runs the agent on `config`, which must refuse to start: its standard error.
async fn refused(config: &Path) -> String {
    let (code, err) = common::refused_at_start(config).await;
    assert_ne!(code, Some(0), "{err}");
    err
}

/// The health of the file whose path ends with `name`.
async fn file_health(agent: &Agent, name: &str) -> serde_json::Value {
    let body = common::http()
        .get(format!("{}/healthz/live", agent.base))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    v["files"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .find(|f| f["path"].as_str().unwrap().ends_with(name))
        .cloned()
        .unwrap_or_else(|| panic!("{name} in {v}"))
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

/// The value of rotation `i`: lengths differ, so a partial read shows.
fn value(i: usize) -> String {
    format!("db-{i}-{}", "x".repeat(2000 + 97 * i))
}

fn median_and_max(mut d: Vec<Duration>) -> (Duration, Duration) {
    d.sort();
    (d[d.len() / 2], d[d.len() - 1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_follow_rotations_atomically_and_run_their_command_once_per_change() {
    let dir = temp_dir("rotate");
    let emu = emulator(&dir, &[("db-password", &value(0)), ("api-key", "k0")]).await;
    let out = dir.join("out");
    // A link planted where a file goes, aimed at a file the agent must never touch.
    let victim = dir.join("victim");
    std::fs::write(&victim, "victim").unwrap();
    std::os::unix::fs::symlink(&victim, out.join("db.key")).unwrap();
    let log = dir.join("commands.log");
    let extra = format!(
        "[[agent.file]]\npath = \"out/db.key\"\nsecret = \"db-password\"\n\
         [[agent.file]]\npath = \"out/app.env\"\nmode = \"0640\"\n\
         template = \"DB_PASSWORD={{{{ secret('db-password') }}}}\\nAPI_KEY={{{{ secret('api-key') }}}}\\n\"\n\
         command = [\"sh\", \"-c\", \"echo run >> {}\"]\n\
         [[agent.file]]\npath = \"out/hangs\"\nsecret = \"api-key\"\nmode = \"0644\"\n\
         command = [\"sleep\", \"600\"]\ncommand_timeout = \"300ms\"\n",
        log.display()
    );
    let agent = start(&config(&emu, &dir, &extra), None).await;

    // Written before the agent listened: the link replaced, its target untouched.
    let key = out.join("db.key");
    assert!(std::fs::symlink_metadata(&key).unwrap().is_file());
    assert_eq!(std::fs::read_to_string(&key).unwrap(), value(0));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "victim");
    let env = out.join("app.env");
    let env_of = |i: usize| format!("DB_PASSWORD={}\nAPI_KEY=k0\n", value(i));
    assert_eq!(std::fs::read_to_string(&env).unwrap(), env_of(0));
    assert_eq!(
        (mode(&key), mode(&env), mode(&out.join("hangs"))),
        (0o600, 0o640, 0o644)
    );

    // A reader in a tight loop: every read is one whole version, never a part, never empty.
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (stop, reads, key, env) = (stop.clone(), reads.clone(), key.clone(), env.clone());
        std::thread::spawn(move || {
            let whole: Vec<String> = (0..=50).map(value).collect();
            while !stop.load(Ordering::Relaxed) {
                let k = std::fs::read_to_string(&key).unwrap();
                assert!(whole.contains(&k), "a partial db.key of {} bytes", k.len());
                let e = std::fs::read_to_string(&env).unwrap();
                let v = e
                    .strip_prefix("DB_PASSWORD=")
                    .and_then(|r| r.strip_suffix("\nAPI_KEY=k0\n"))
                    .unwrap_or_else(|| panic!("a partial app.env of {} bytes", e.len()));
                assert!(whole.iter().any(|w| w == v), "a partial app.env value");
                reads.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let mut took = Vec::new();
    for i in 1..=50 {
        let started = Instant::now();
        emu.insert("weu", "db-password", &value(i));
        post_event(&agent.base, "db-password").await;
        let (want, want_env) = (value(i), env_of(i));
        until(
            Duration::from_secs(20),
            "the rotation reaches both files",
            || {
                let got = std::fs::read_to_string(&key).unwrap_or_default() == want
                    && std::fs::read_to_string(&env).unwrap_or_default() == want_env;
                async move { got }
            },
        )
        .await;
        took.push(started.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().expect("no partial or empty file was read");
    assert!(reads.load(Ordering::Relaxed) > 50);

    // The command ran once per change of app.env (the first write and 50 rotations), no more.
    let runs = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count()
    };
    until(Duration::from_secs(20), "51 command runs", || {
        let n = runs();
        async move { n >= 51 }
    })
    .await;
    let h = file_health(&agent, "app.env").await;
    assert_eq!(
        (h["writes"].as_u64(), h["command_failures"].as_u64()),
        (Some(51), Some(0)),
        "{h}"
    );
    assert_eq!(h["state"], "current");
    assert_eq!(runs(), 51);
    // The command that hangs was killed at its timeout, and counted.
    until(
        Duration::from_secs(20),
        "the hanging command counted",
        || async { file_health(&agent, "hangs").await["command_failures"] == 1 },
    )
    .await;
    let (median, max) = median_and_max(took);
    println!("rotation to file: median {median:?}, max {max:?} over 50 rotations");
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A start during a total outage: from the sealed snapshot the files are written (stale, and
/// health says so); without it they stay pending and the agent still serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_during_a_total_outage_writes_the_files_from_the_snapshot() {
    let dir = temp_dir("outage");
    let emu = emulator(&dir, &[("db-password", "held-value")]).await;
    std::fs::create_dir_all(dir.join("state")).unwrap();
    write_private(&dir.join("snapshot.key"), SNAPSHOT_KEY);
    let extra = "[[agent.file]]\npath = \"out/db.key\"\nsecret = \"db-password\"\n\
                 [agent.snapshot]\npath = \"state/lkg.snapshot\"\nkey_file = \"snapshot.key\"\ninterval = \"1s\"\n";
    let cfg = config(&emu, &dir, extra);
    let agent = start(&cfg, None).await;
    let key = dir.join("out/db.key");
    assert_eq!(std::fs::read_to_string(&key).unwrap(), "held-value");
    let snap = dir.join("state/lkg.snapshot");
    until(Duration::from_secs(20), "the snapshot saved", || {
        let there = snap.exists();
        async move { there }
    })
    .await;
    drop(agent);

    std::fs::remove_file(&key).unwrap();
    emu.apply_fault("weu", VaultFault::Refuse).await.unwrap();
    emu.apply_fault("neu", VaultFault::Refuse).await.unwrap();
    let agent = start(&cfg, None).await;
    assert_eq!(std::fs::read_to_string(&key).unwrap(), "held-value");
    let h = file_health(&agent, "db.key").await;
    assert_eq!(h["state"], "stale", "{h}");
    drop(agent);

    std::fs::remove_file(&key).unwrap();
    std::fs::remove_file(&snap).unwrap();
    let agent = start(&cfg, None).await;
    assert!(!key.exists());
    let h = file_health(&agent, "db.key").await;
    assert_eq!(h["state"], "pending", "{h}");
    assert!(h["error"].as_str().unwrap().contains("db-password"), "{h}");
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A write the file system refuses (here: past the process's file size limit, `ulimit -f`,
/// the signal ignored so the write fails with EFBIG as a full disk fails with ENOSPC) leaves
/// the previous file whole, health says failed, and the next rotation that fits is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_write_keeps_the_previous_file() {
    let dir = temp_dir("refused");
    let emu = emulator(&dir, &[("db-password", "small-1")]).await;
    let extra = "[[agent.file]]\npath = \"out/db.key\"\nsecret = \"db-password\"\n";
    // 16 blocks of 512 bytes: 8 KiB a file.
    let agent = start(
        &config(&emu, &dir, extra),
        Some("trap '' XFSZ; ulimit -f 16;"),
    )
    .await;
    let key = dir.join("out/db.key");
    assert_eq!(std::fs::read_to_string(&key).unwrap(), "small-1");
    emu.insert("weu", "db-password", &"y".repeat(64 * 1024));
    post_event(&agent.base, "db-password").await;
    until(
        Duration::from_secs(20),
        "the refused write in health",
        || async { file_health(&agent, "db.key").await["state"] == "failed" },
    )
    .await;
    assert_eq!(std::fs::read_to_string(&key).unwrap(), "small-1");
    let leftovers: Vec<_> = std::fs::read_dir(dir.join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "no temporary file left: {leftovers:?}");
    emu.insert("weu", "db-password", "small-2");
    post_event(&agent.base, "db-password").await;
    until(Duration::from_secs(20), "the next write", || {
        let got = std::fs::read_to_string(&key).unwrap_or_default() == "small-2";
        async move { got }
    })
    .await;
    assert_eq!(file_health(&agent, "db.key").await["state"], "current");
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Bad entries stop the start, say what is wrong, and write nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_file_entries_stop_the_start_and_write_nothing() {
    let dir = temp_dir("bad");
    let emu = emulator(&dir, &[("db-password", "v")]).await;
    for (entry, says) in [
        (
            "[[agent.file]]\npath = \"out/f\"\ntemplate = \"{{ secret('no-such-secret') }}\"\n",
            "no-such-secret does not exist",
        ),
        (
            "[[agent.file]]\npath = \"out/f\"\ntemplate = \"{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}\"\n",
            "too long",
        ),
        ("[[agent.file]]\npath = \"out/f\"\ntemplate = \"{% if %}\"\n", "syntax"),
        ("[[agent.file]]\npath = \"elsewhere\"\nsecret = \"db-password\"\n", "outside"),
        (
            "[[agent.file]]\npath = \"out/f\"\nsecret = \"db-password\"\ncommand = [\"/no/such/program\"]\n",
            "no such executable",
        ),
        (
            "[[agent.file]]\npath = \"out/f\"\nsecret = \"db-password\"\n[[agent.file]]\npath = \"out/f\"\nsecret = \"db-password\"\n",
            "two entries",
        ),
    ] {
        let err = refused(&config(&emu, &dir, entry)).await;
        assert!(err.contains(says), "{entry}: {err}");
        assert!(!err.contains("\nv\n"), "{err}");
        assert!(!dir.join("out/f").exists(), "{entry}: nothing written");
        assert!(!dir.join("elsewhere").exists());
    }
    let _ = std::fs::remove_dir_all(&dir);
}
