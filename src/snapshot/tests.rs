//! The snapshot's unit tests: its file, its times, its escapes, its keys.

use super::builder::parse_key;
use super::format::json_len;
use super::*;

/// A snapshot sealed with the right key but holding absurd times: a fetch time far in the
/// future is skipped (before: it counted as just fetched, a value of unknown age served as
/// if new), an absurd `created` is dropped, and nothing panics.
#[test]
fn absurd_times_in_a_sealed_snapshot_are_skipped_not_panicked_on() {
    let dir = std::env::temp_dir().join(format!("kvf-snaptime-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let snap = Snapshot::builder(dir.join("lkg.snapshot"))
        .key_hex(&"cd".repeat(32))
        .build()
        .unwrap();
    let record = |key: &'static str, fetched: u64, created: Option<u64>| Record {
        key,
        value: "v",
        version: "v1",
        region: "weu",
        fetched_unix_ms: fetched,
        created_unix_ms: created,
        metadata: None,
    };
    let now = unix_ms(SystemTime::now());
    snap.write_body(Body {
        written_unix_ms: now,
        entries: vec![
            record("far", u64::MAX, None),
            record("created", now, Some(u64::MAX)),
        ],
    })
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async move {
        let config = crate::Config::builder()
            .region(
                "weu",
                "https://app-weu.vault.azure.net",
                crate::Access::ReadWrite,
            )
            .build()
            .unwrap();
        let client = FailoverClient::builder(config)
            .store("weu", Arc::new(crate::store::MemoryStore::new("weu")))
            .build()
            .unwrap();
        assert_eq!(snap.restore(&client).unwrap(), 1, "`far` is skipped");
    });
    std::fs::remove_dir_all(&dir).ok();
}

fn temp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kvf-snap-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn one_region() -> crate::Config {
    crate::Config::builder()
        .region(
            "weu",
            "https://app-weu.vault.azure.net",
            crate::Access::ReadWrite,
        )
        .build()
        .unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

/// Issue 20: the temporary file had a guessable name (`<file>.tmp-<pid>`) opened with
/// create and truncate: a symbolic link put there made the save overwrite its target, and
/// a leftover file there kept its mode (0644 in, 0644 snapshot out). Now the name is random
/// and the file is created new with 0600.
#[cfg(unix)]
#[test]
fn the_temporary_file_cannot_be_aimed_elsewhere_and_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp("tmpfile");
    let victim = dir.join("victim");
    std::fs::write(&victim, "precious").unwrap();
    let pid = std::process::id();
    let path = dir.join("lkg.snapshot");
    std::os::unix::fs::symlink(&victim, dir.join(format!("lkg.snapshot.tmp-{pid}"))).unwrap();
    let other = dir.join("other.snapshot");
    let leftover = dir.join(format!("other.snapshot.tmp-{pid}"));
    std::fs::write(&leftover, "left").unwrap();
    std::fs::set_permissions(&leftover, std::fs::Permissions::from_mode(0o644)).unwrap();
    let body = || Body {
        written_unix_ms: unix_ms(SystemTime::now()),
        entries: vec![],
    };
    for p in [&path, &other] {
        let snap = Snapshot::builder(p)
            .key_hex(&"ab".repeat(32))
            .build()
            .unwrap();
        snap.write_body(body()).unwrap();
        let meta = std::fs::symlink_metadata(p).unwrap();
        assert!(
            meta.is_file(),
            "{}: a regular file, not a link",
            p.display()
        );
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{}", p.display());
    }
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    // Two snapshots of one path, saving at once, do not share a temporary file.
    let snaps: Vec<_> = (0..4)
        .map(|_| {
            Arc::new(
                Snapshot::builder(&path)
                    .key_hex(&"ab".repeat(32))
                    .build()
                    .unwrap(),
            )
        })
        .collect();
    let threads: Vec<_> = snaps
        .iter()
        .cloned()
        .map(|s| {
            std::thread::spawn(move || (0..25).map(|_| s.write_body(body())).collect::<Vec<_>>())
        })
        .collect();
    for t in threads {
        for r in t.join().unwrap() {
            r.unwrap();
        }
    }
    let rt = runtime();
    rt.block_on(async {
        let client = FailoverClient::builder(one_region())
            .store("weu", Arc::new(crate::store::MemoryStore::new("weu")))
            .build()
            .unwrap();
        assert_eq!(snaps[0].restore(&client).unwrap(), 0, "whole, and empty");
    });
    std::fs::remove_dir_all(&dir).ok();
}

/// Issue 20: a clock set back after the snapshot was written made a restored value young
/// again (a fetch time ahead of the clock counted as age 0). The age is now counted from
/// the snapshot's write time: at least the age the value had when it was written.
#[test]
fn a_clock_set_back_does_not_make_a_restored_value_young() {
    let dir = temp("clockback");
    let snap = Snapshot::builder(dir.join("lkg.snapshot"))
        .key_hex(&"cd".repeat(32))
        .build()
        .unwrap();
    // Fetched, then written 50 minutes later; the clock has since been set back to
    // 10 minutes before the fetch.
    let now = unix_ms(SystemTime::now());
    let fetched = now + 10 * 60_000;
    snap.write_body(Body {
        written_unix_ms: fetched + 50 * 60_000,
        entries: vec![Record {
            key: "db",
            value: "hunter2",
            version: "v1",
            region: "weu",
            fetched_unix_ms: fetched,
            created_unix_ms: None,
            metadata: None,
        }],
    })
    .unwrap();
    runtime().block_on(async {
        let weu = Arc::new(crate::store::MemoryStore::new("weu"));
        weu.set_fault(Some(crate::store::Fault::Refuse));
        let client = FailoverClient::builder(one_region())
            .store("weu", weu)
            .build()
            .unwrap();
        assert_eq!(snap.restore(&client).unwrap(), 1);
        let s = client.get_secret("db").await.unwrap();
        let crate::Freshness::Stale { age } = s.freshness() else {
            panic!("served stale");
        };
        assert!(age >= Duration::from_secs(50 * 60), "{age:?}");
    });
    std::fs::remove_dir_all(&dir).ok();
}

/// Values are decoded by hand from the raw JSON (serde_json's scratch buffer never holds
/// one): every escape JSON has comes back as written.
#[test]
fn values_with_escapes_come_back_exactly() {
    let samples = [
        "",
        "plain",
        "-----BEGIN KEY-----\nAAAA\r\n-----END KEY-----\n",
        "quote \" backslash \\ slash / tab \t",
        "\u{0}\u{1}\u{1f}\u{7f}",
        "é ü 日本 😀 \u{10FFFF}",
    ];
    for v in samples {
        let raw = serde_json::to_string(v).unwrap();
        assert_eq!(unescape(&raw).unwrap().expose_secret(), v, "{raw}");
        assert!(json_len(v) >= raw.len(), "{raw}");
    }
    assert_eq!(
        unescape(r#""\u00e9\ud83d\ude00\/""#)
            .unwrap()
            .expose_secret(),
        "é😀/"
    );
    for bad in [
        r#""\x""#,
        r#""\ud83d""#,
        r#""\u12""#,
        "\"a",
        "a\"",
        "\"\u{1}\"",
    ] {
        assert!(unescape(bad).is_none(), "{bad}");
    }
    // Through a sealed file: a PEM with its newlines.
    let dir = temp("escapes");
    let snap = Snapshot::builder(dir.join("lkg.snapshot"))
        .key_hex(&"cd".repeat(32))
        .build()
        .unwrap();
    let pem = "-----BEGIN KEY-----\nAAAA\n-----END KEY-----\n";
    runtime().block_on(async {
        let weu = Arc::new(crate::store::MemoryStore::new("weu"));
        weu.insert("pem", pem);
        let client = FailoverClient::builder(one_region())
            .store("weu", weu.clone())
            .build()
            .unwrap();
        client.get_secret("pem").await.unwrap();
        assert_eq!(snap.save(&client).unwrap(), 1);
        weu.set_fault(Some(crate::store::Fault::Refuse));
        let restarted = FailoverClient::builder(one_region())
            .store("weu", weu)
            .build()
            .unwrap();
        assert_eq!(snap.restore(&restarted).unwrap(), 1);
        assert_eq!(restarted.get_secret("pem").await.unwrap().expose(), pem);
    });
    std::fs::remove_dir_all(&dir).ok();
}

/// Issue 20: a FIFO at the snapshot's path is refused at once (before: the restore blocked
/// in `std::fs::read` until a writer came, and the agent never listened).
#[cfg(unix)]
#[test]
fn a_fifo_at_the_snapshot_path_is_refused_not_waited_on() {
    let dir = temp("fifo");
    let path = dir.join("lkg.snapshot");
    assert!(std::process::Command::new("mkfifo")
        .arg(&path)
        .status()
        .unwrap()
        .success());
    let snap = Snapshot::builder(&path)
        .key_hex(&"cd".repeat(32))
        .build()
        .unwrap();
    runtime().block_on(async {
        let client = FailoverClient::builder(one_region())
            .store("weu", Arc::new(crate::store::MemoryStore::new("weu")))
            .build()
            .unwrap();
        let e = snap.restore(&client).unwrap_err();
        assert!(e.is_snapshot() && e.to_string().contains("FIFO"), "{e}");
    });
    // Set aside, it no longer stands in the way of a save.
    let aside = snap.set_aside().unwrap();
    assert!(aside.to_string_lossy().contains(".refused-"));
    snap.check_writable().unwrap();
    let e = Snapshot::builder(dir.join("missing").join("lkg.snapshot"))
        .key_hex(&"cd".repeat(32))
        .build()
        .unwrap()
        .check_writable()
        .unwrap_err();
    assert!(e.is_config() && e.to_string().contains("missing"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Issue 20: a key file other users can read is refused (ssh's rule), and a key file that
/// is a symbolic link into the snapshot's directory is "beside" it.
#[cfg(unix)]
#[test]
fn a_shared_key_file_or_a_link_beside_the_snapshot_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp("keyperm");
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    let key = dir.join("keys").join("snap.key");
    std::fs::write(&key, "cd".repeat(32)).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let snap = dir.join("state").join("lkg.snapshot");
    let e = Snapshot::builder(&snap).key_file(&key).build().unwrap_err();
    assert!(e.is_config() && e.to_string().contains("chmod 600"), "{e}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    Snapshot::builder(&snap).key_file(&key).build().unwrap();
    // The key itself beside the snapshot, reached through a link from elsewhere.
    std::fs::create_dir_all(dir.join("state")).unwrap();
    let beside = dir.join("state").join("snap.key");
    std::fs::rename(&key, &beside).unwrap();
    std::os::unix::fs::symlink(&beside, &key).unwrap();
    let e = Snapshot::builder(&snap).key_file(&key).build().unwrap_err();
    assert!(e.to_string().contains("own directory"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn keys_are_64_hex_digits() {
    assert!(parse_key(&"ab".repeat(32), "t").is_ok());
    assert!(parse_key(&format!(" {}\n", "AB".repeat(32)), "t").is_ok());
    for bad in [
        "",
        "ab",
        &"ab".repeat(31),
        &"zz".repeat(32),
        &"ab".repeat(33),
    ] {
        let e = parse_key(bad, "t").unwrap_err();
        assert!(e.is_config(), "{bad:?}");
    }
}

#[test]
fn a_key_file_beside_the_snapshot_is_refused_unless_allowed() {
    let dir = std::env::temp_dir().join(format!("kvf-snapkey-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("snap.key");
    std::fs::write(&key, "cd".repeat(32)).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let e = Snapshot::builder(dir.join("lkg.snapshot"))
        .key_file(&key)
        .build()
        .unwrap_err();
    assert!(
        e.is_config() && e.to_string().contains("own directory"),
        "{e}"
    );
    assert!(Snapshot::builder(dir.join("lkg.snapshot"))
        .key_file(&key)
        .allow_key_beside_snapshot(true)
        .build()
        .is_ok());
    assert!(Snapshot::builder(dir.join("sub").join("lkg.snapshot"))
        .key_file(&key)
        .build()
        .is_ok());
    let e = Snapshot::builder(dir.join("x")).build().unwrap_err();
    assert!(e.is_config());
    std::fs::remove_dir_all(&dir).ok();
}

/// Issue 31: a restored value keeps what the vault said of it (content type, tags, `exp`),
/// so the agent's Key Vault API answers a restart during an outage with the same bundle.
#[test]
fn a_restored_value_keeps_its_metadata() {
    let dir = temp("metadata");
    let snap = Snapshot::builder(dir.join("lkg.snapshot"))
        .key_hex(&"ef".repeat(32))
        .build()
        .unwrap();
    runtime().block_on(async {
        let weu = Arc::new(crate::store::MemoryStore::new("weu"));
        let props = crate::Properties::default()
            .with_content_type(Some("application/x-pem-file".into()))
            .with_tags([("owner".to_string(), "billing".to_string())].into())
            .with_expires(Some(4_000_000_000));
        weu.insert_with("cert", "pem", props.clone());
        let client = FailoverClient::builder(one_region())
            .store("weu", weu.clone())
            .build()
            .unwrap();
        let fresh = client.get_secret("cert").await.unwrap();
        assert_eq!(fresh.metadata().unwrap().properties(), &props);
        assert_eq!(snap.save(&client).unwrap(), 1);
        weu.set_fault(Some(crate::store::Fault::Refuse));
        let restarted = FailoverClient::builder(one_region())
            .store("weu", weu)
            .build()
            .unwrap();
        assert_eq!(snap.restore(&restarted).unwrap(), 1);
        let held = restarted.get_secret("cert").await.unwrap();
        assert!(held.is_stale());
        let m = held.metadata().expect("the metadata came back");
        assert_eq!(m.properties(), &props);
        assert_eq!(m.recovery_level(), Some("Recoverable+Purgeable"));
        assert!(m.created().is_some());
    });
    std::fs::remove_dir_all(&dir).ok();
}
