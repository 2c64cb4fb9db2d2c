//! Sealed last-known-good snapshots (issue 12, item 2): a restart during a total outage serves
//! what the snapshot held, stale with its true age; the staleness cap holds across the
//! restart; a restored value never replaces or outranks a vault's answer; a tampered,
//! truncated, foreign or wrong-key snapshot is refused whole.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keyvault_failover::run_virtual;
use keyvault_failover::store::{Fault, MemoryStore};
use keyvault_failover::{Access, Config, FailoverClient, Freshness, Snapshot};

const KEY: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kvf-snap-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn config(cap_of_short: Duration) -> Config {
    Config::builder()
        .seed(0x6b76_6661_696c)
        .region("weu", "https://app-weu.vault.azure.net", Access::ReadWrite)
        .region("neu", "https://app-neu.vault.azure.net", Access::ReadOnly)
        .refresh_interval(Duration::from_secs(60))
        .attempt_timeout(Duration::from_millis(500))
        .deadline(Duration::from_secs(2))
        .wait_for_recovery(false)
        .background_refresh(false)
        .staleness_cap_for("short", cap_of_short)
        .build()
        .unwrap()
}

struct Vaults {
    weu: Arc<MemoryStore>,
    neu: Arc<MemoryStore>,
}

impl Vaults {
    fn new(secrets: &[(&str, &str)]) -> Vaults {
        let v = Vaults {
            weu: Arc::new(MemoryStore::with_seed("weu", 1)),
            neu: Arc::new(MemoryStore::with_seed("neu", 2)),
        };
        for (n, val) in secrets {
            v.weu.insert(n, val);
            v.neu.insert(n, val);
        }
        v
    }
    fn client(&self, config: &Config) -> FailoverClient {
        FailoverClient::builder(config.clone())
            .store("weu", self.weu.clone())
            .store("neu", self.neu.clone())
            .build()
            .unwrap()
    }
    /// A client that has read every secret once.
    async fn holding_every_secret(&self, config: &Config) -> FailoverClient {
        let c = self.client(config);
        for (n, _) in SECRETS {
            c.get_secret(n).await.unwrap();
        }
        c
    }
    fn down(&self) {
        self.weu.set_fault(Some(Fault::Refuse));
        self.neu.set_fault(Some(Fault::Refuse));
    }
}

fn snapshot(path: &std::path::Path) -> Snapshot {
    Snapshot::builder(path).key_hex(KEY).build().unwrap()
}

const SECRETS: [(&str, &str); 3] = [
    ("db-password", "hunter2"),
    ("api-key", "k-1234567890"),
    ("short", "lived"),
];

#[test]
fn a_restart_during_a_total_outage_serves_the_snapshot_stale_with_its_true_age() {
    let d = dir("restart");
    let path = d.join("lkg.snapshot");
    run_virtual(async move {
        let cfg = config(Duration::from_secs(3600));
        let v = Vaults::new(&SECRETS);
        let first = v.holding_every_secret(&cfg).await;
        let latest = first.get_secret("db-password").await.unwrap();
        first
            .get_secret_version("db-password", latest.version())
            .await
            .unwrap();
        // Ten minutes pass before the snapshot is written: the ages must say so.
        tokio::time::sleep(Duration::from_secs(600)).await;
        let written = snapshot(&path).save(&first).unwrap();
        assert_eq!(written, 4, "three latest values and one pinned version");
        drop(first);

        // The sealed file holds no value in the clear.
        let bytes = std::fs::read(&path).unwrap();
        for (_, value) in SECRETS {
            assert!(!bytes.windows(value.len()).any(|w| w == value.as_bytes()));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "only the owner reads the snapshot");
        }

        v.down();
        // Without the snapshot, a restarted client has nothing to serve.
        let bare = v.client(&cfg);
        assert!(bare.get_secret("db-password").await.is_err());

        let restarted = v.client(&cfg);
        assert_eq!(snapshot(&path).restore(&restarted).unwrap(), 4);
        for (n, value) in SECRETS {
            let s = restarted.get_secret(n).await.unwrap();
            assert_eq!(s.expose(), value);
            let Freshness::Stale { age } = s.freshness() else {
                panic!("{n}: a restored value is stale until a vault confirms it");
            };
            assert!(
                age >= Duration::from_secs(600) && age < Duration::from_secs(660),
                "{n}: age {age:?} counts from the real fetch"
            );
        }
        assert!(restarted.health().is_degraded());
    })
    .unwrap();
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn the_staleness_cap_holds_across_a_restart() {
    let d = dir("cap");
    let path = d.join("lkg.snapshot");
    run_virtual(async move {
        // `short` may be served stale for 5 minutes; the others for an hour.
        let cfg = config(Duration::from_secs(300));
        let v = Vaults::new(&SECRETS);
        let first = v.holding_every_secret(&cfg).await;
        tokio::time::sleep(Duration::from_secs(400)).await;
        snapshot(&path).save(&first).unwrap();
        v.down();
        let restarted = v.client(&cfg);
        assert_eq!(
            snapshot(&path).restore(&restarted).unwrap(),
            2,
            "the value past its cap is not restored"
        );
        assert!(restarted.get_secret("short").await.is_err());
        assert!(restarted.get_secret("api-key").await.unwrap().is_stale());
    })
    .unwrap();
    std::fs::remove_dir_all(&d).ok();
}

/// Before: a restored value would count as fresh for the refresh interval, hiding a rotation
/// the vault already has.
#[test]
fn a_restored_value_never_outranks_a_vault() {
    let d = dir("outrank");
    let path = d.join("lkg.snapshot");
    run_virtual(async move {
        let cfg = config(Duration::from_secs(3600));
        let v = Vaults::new(&SECRETS);
        let first = v.client(&cfg);
        first.get_secret("db-password").await.unwrap();
        snapshot(&path).save(&first).unwrap();

        // Rotated while the process was down; the vaults answer.
        v.weu.insert("db-password", "rotated");
        v.neu.insert("db-password", "rotated");
        let restarted = v.client(&cfg);
        assert_eq!(snapshot(&path).restore(&restarted).unwrap(), 1);
        let s = restarted.get_secret("db-password").await.unwrap();
        assert_eq!((s.expose(), s.is_stale()), ("rotated", false));

        // A restore after the client holds a value replaces nothing.
        assert_eq!(snapshot(&path).restore(&restarted).unwrap(), 0);
        assert_eq!(
            restarted.get_cached("db-password").unwrap().expose(),
            "rotated"
        );
    })
    .unwrap();
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn tampered_truncated_foreign_and_wrong_key_snapshots_are_refused_whole() {
    let d = dir("tamper");
    let path = d.join("lkg.snapshot");
    run_virtual(async move {
        let cfg = config(Duration::from_secs(3600));
        let v = Vaults::new(&SECRETS);
        let first = v.holding_every_secret(&cfg).await;
        snapshot(&path).save(&first).unwrap();
        let good = std::fs::read(&path).unwrap();
        v.down();

        let check = |what: &str, bytes: Option<Vec<u8>>, snap: Snapshot| {
            if let Some(b) = bytes {
                std::fs::write(&path, b).unwrap();
            }
            let c = v.client(&cfg);
            let e = snap.restore(&c).unwrap_err();
            assert!(e.is_snapshot(), "{what}: {e}");
            assert!(!e.to_string().contains("hunter2"), "{what}");
            c
        };
        let mut flipped = good.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x01;
        let c = check("one bit flipped", Some(flipped), snapshot(&path));
        assert!(
            c.get_secret("db-password").await.is_err(),
            "nothing restored"
        );
        check(
            "truncated",
            Some(good[..good.len() - 1].to_vec()),
            snapshot(&path),
        );
        check("a few bytes", Some(good[..10].to_vec()), snapshot(&path));
        check("empty", Some(Vec::new()), snapshot(&path));
        let mut foreign = good.clone();
        foreign[7] = b'9';
        let e = snapshot(&path);
        std::fs::write(&path, &foreign).unwrap();
        let msg = e.restore(&v.client(&cfg)).unwrap_err().to_string();
        assert!(msg.contains("format"), "{msg}");
        let other_key = Snapshot::builder(&path)
            .key_hex(&"ab".repeat(32))
            .build()
            .unwrap();
        check("another key", Some(good.clone()), other_key);
        // Over the size limit: refused before it is read (a sparse file).
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(keyvault_failover::snapshot::MAX_SNAPSHOT_BYTES + 1)
            .unwrap();
        drop(f);
        check("oversized", None, snapshot(&path));
        std::fs::remove_file(&path).unwrap();
        check("missing", None, snapshot(&path));

        // The good one still opens.
        std::fs::write(&path, &good).unwrap();
        assert_eq!(snapshot(&path).restore(&v.client(&cfg)).unwrap(), 3);
    })
    .unwrap();
    std::fs::remove_dir_all(&d).ok();
}
