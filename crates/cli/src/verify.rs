//! `verify-replication`: each secondary's copy of each secret against the primary's, settled
//! from the listings where the replicator's provenance tags settle it (no value read), and
//! by a keyed hash of both values where they do not.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use keyvault_failover::azure::{self, AzureStore};
use keyvault_failover::replicate::{Listed, ReplicaStore};
use keyvault_failover::{Config, SecretName, SecretStore};
use serde::Serialize;

/// The longest a whole listing may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(300);

/// One region's copy of one secret.
#[derive(Debug, Serialize)]
struct Copy {
    region: String,
    /// `primary`, `in-step`, `lagging`, `differs`, `missing` or `unreadable`.
    state: &'static str,
    /// For `lagging`: how long ago the primary made the version this copy lacks, in seconds.
    lag_secs: Option<i64>,
    /// Whether the state was settled from the listings alone (no value read).
    from_listing: bool,
    /// The vault's version id (separate vaults give their own ids), when read.
    version: Option<String>,
    /// Key Vault's `created` time of the copy's current version, unix seconds.
    created: Option<i64>,
    /// A keyed hash of the value (SipHash under a key drawn at random for this run), when
    /// read: equal contents have equal hashes within one run; no value can be recovered.
    hash: Option<String>,
    /// Why there is no copy (`not-found`, `connect`, ...).
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct SecretCheck {
    name: String,
    /// Every region holds the primary's version.
    in_sync: bool,
    copies: Vec<Copy>,
}

/// What the listings say of a secondary's copy, if they settle it.
fn from_listing(primary_region: &str, p: &Listed, s: &Listed, now: i64) -> Option<Copy> {
    let copy = |state, lag_secs| Copy {
        region: String::new(),
        state,
        lag_secs,
        from_listing: true,
        version: None,
        created: s.created(),
        hash: None,
        error: None,
    };
    let prov = s
        .properties()
        .provenance()
        .filter(|v| v.region() == primary_region)?;
    let created = p.created()?;
    if created > prov.created() {
        return Some(copy("lagging", Some(now.saturating_sub(created).max(0))));
    }
    if created < prov.created() {
        return Some(copy("differs", None));
    }
    // Settled by when the copy's source was read, never by when the copy was written (the
    // replicator's settle rule, `Provenance::settled`).
    if !prov.settled() {
        return None;
    }
    let same = s.properties().matches(p.properties());
    Some(copy(if same { "in-step" } else { "differs" }, None))
}

async fn read(
    store: &AzureStore,
    region: &str,
    name: &SecretName,
    key: &std::collections::hash_map::RandomState,
    timeout: Duration,
) -> Copy {
    let mut copy = Copy {
        region: region.to_string(),
        state: "unreadable",
        lag_secs: None,
        from_listing: false,
        version: None,
        created: None,
        hash: None,
        error: None,
    };
    match tokio::time::timeout(timeout, SecretStore::get(store, name, None)).await {
        Ok(Ok(s)) => {
            let mut h = key.build_hasher();
            h.write(secrecy::ExposeSecret::expose_secret(s.value()).as_bytes());
            copy.version = Some(s.version().to_string());
            copy.created = s
                .created()
                .and_then(|c| c.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs() as i64);
            copy.hash = Some(format!("{:016x}", h.finish()));
        }
        Ok(Err(e)) => {
            if *e.kind() == keyvault_failover::StoreErrorKind::NotFound {
                copy.state = "missing";
            }
            copy.error = Some(e.kind().label().to_string());
        }
        Err(_) => copy.error = Some("timeout".into()),
    }
    copy
}

/// `verify-replication [NAMES]`: with no names, every enabled secret the primary lists (at most
/// `limit`). Exit 1 when any copy is not in step (lagging, differing, missing, unreadable).
pub(crate) fn verify_replication(
    config: &Path,
    names: &[String],
    limit: usize,
    json: bool,
    deep: bool,
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let config = Config::from_file(config)?;
    let key = std::collections::hash_map::RandomState::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let checks = rt.block_on(async {
        // The primary (the read-write region, wherever the file lists it) first.
        let mut stores = azure::stores_for(&config)?;
        let primary = keyvault_failover::replicate::primary_index(&config)?;
        let p = stores.remove(primary);
        stores.insert(0, p);
        let timeout = config.attempt_timeout();
        let (primary_region, _) = stores.first().ok_or("no region configured")?;
        let now = crate::cli::unix_now();
        // Every region's listing (names, properties, provenance); a region that cannot be
        // listed is read secret by secret instead.
        let mut listed: Vec<Option<HashMap<String, Listed>>> = Vec::new();
        for (region, store) in &stores {
            let got = tokio::time::timeout(LIST_TIMEOUT, ReplicaStore::list_items(&**store)).await;
            listed.push(match got {
                Ok(Ok(items)) => Some(
                    items
                        .into_iter()
                        .map(|l| (l.name().to_ascii_lowercase(), l))
                        .collect(),
                ),
                Ok(Err(e)) if region == primary_region => return Err(e.into()),
                _ => None,
            });
        }
        let mut names: Vec<String> = names.to_vec();
        if names.is_empty() {
            let mut all: Vec<&Listed> = listed[0]
                .as_ref()
                .map(|m| m.values().filter(|l| l.properties().enabled()).collect())
                .unwrap_or_default();
            all.sort_by_key(|l| l.name().to_ascii_lowercase());
            names = all
                .iter()
                .take(limit)
                .map(|l| l.name().to_string())
                .collect();
        }
        let mut checks = Vec::new();
        for name in names {
            let secret = SecretName::new(&name)?;
            let lower = name.to_ascii_lowercase();
            let p = listed[0].as_ref().and_then(|m| m.get(&lower));
            let mut copies = Vec::new();
            let mut primary_copy: Option<Copy> = None;
            for (i, (region, store)) in stores.iter().enumerate().skip(1) {
                let here = listed[i].as_ref().map(|m| m.get(&lower));
                let settled = match (p, here) {
                    (Some(_), Some(None)) => Some(Copy {
                        region: region.clone(),
                        state: "missing",
                        lag_secs: None,
                        from_listing: true,
                        version: None,
                        created: None,
                        hash: None,
                        error: Some("not-found".into()),
                    }),
                    (Some(p), Some(Some(s))) if !deep => from_listing(primary_region, p, s, now),
                    _ => None,
                };
                let copy = match settled {
                    Some(mut c) => {
                        c.region = region.clone();
                        c
                    }
                    None => {
                        if primary_copy.is_none() {
                            primary_copy = Some(
                                read(&stores[0].1, primary_region, &secret, &key, timeout).await,
                            );
                        }
                        let mut c = read(store, region, &secret, &key, timeout).await;
                        let ph = primary_copy.as_ref().and_then(|c| c.hash.as_ref());
                        if c.hash.is_some() {
                            c.state = if c.hash.as_ref() == ph {
                                "in-step"
                            } else {
                                "differs"
                            };
                        }
                        c
                    }
                };
                copies.push(copy);
            }
            let primary = primary_copy.unwrap_or_else(|| Copy {
                region: primary_region.clone(),
                state: "primary",
                lag_secs: None,
                from_listing: true,
                version: None,
                created: p.and_then(|p| p.created()),
                hash: None,
                error: p.is_none().then(|| "not-found".to_string()),
            });
            let primary = Copy {
                state: "primary",
                ..primary
            };
            let in_sync = primary.error.is_none() && copies.iter().all(|c| c.state == "in-step");
            copies.insert(0, primary);
            checks.push(SecretCheck {
                name,
                in_sync,
                copies,
            });
        }
        Ok::<_, Box<dyn std::error::Error>>(checks)
    })?;
    let drift = checks.iter().filter(|c| !c.in_sync).count();
    if json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        for c in &checks {
            let worst = c.copies.iter().skip(1).find(|k| k.state != "in-step");
            let summary = match worst {
                None => "in step".to_string(),
                Some(k) if k.state == "lagging" => {
                    format!("LAGGING by {} s in {}", k.lag_secs.unwrap_or(0), k.region)
                }
                Some(k) => format!("{} in {}", k.state.to_ascii_uppercase(), k.region),
            };
            println!("{:<40} {summary}", c.name);
            for k in &c.copies {
                let how = if k.from_listing { "listing" } else { "read" };
                match (&k.hash, &k.error) {
                    (Some(h), _) => println!(
                        "    {:<8} {:<10} ({how}) hash {h}  version {}  created {}",
                        k.region,
                        k.state,
                        k.version.as_deref().unwrap_or("-"),
                        k.created.map_or("-".to_string(), |c| c.to_string())
                    ),
                    (None, Some(e)) => println!("    {:<8} {:<10} ({how}) {e}", k.region, k.state),
                    (None, None) => println!(
                        "    {:<8} {:<10} ({how}) created {}",
                        k.region,
                        k.state,
                        k.created.map_or("-".to_string(), |c| c.to_string())
                    ),
                }
            }
        }
        println!("\n{} secret(s) checked, {drift} not in step", checks.len());
    }
    Ok(if drift == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
