//! The simulator: reproducible reports, invariant checks that can fail, scenario validation.

use keyvault_failover_sim::{simulate, Scenario, SimOptions};

const OUTAGE: &str = include_str!("../../../simulations/regional-outage.toml");
const TOTAL: &str = include_str!("../../../simulations/total-outage.toml");

/// Scenarios in which some reads cannot be answered by anyone: in `replication-lag`, a cold
/// read of a secret only the unreachable primary holds yet.
const UNANSWERABLE: &[&str] = &["replication-lag"];

/// Runs a shipped scenario twice with its seed: the JSON reports and the plots must be
/// identical byte for byte, and the run sound.
fn reproducible_and_sound(name: &str) {
    let mut s = Scenario::builtin(name).unwrap();
    // The 10,000-instance fleets take minutes in a debug build: here they run at 1/100 of
    // their size (their full runs are in README's fleet tables, with the command; at 1/50 the
    // five of them were four of CI's 26 minutes).
    if name.starts_with("fleet-10k") {
        // The 70-minute lossy events run at 50: what it shows is its minutes (the backstop
        // finding lost events), and at 200 it alone took 80 s of CI.
        let n = if name == "fleet-10k-rotation-events-lossy" {
            50
        } else {
            100
        };
        s = s.with_instances(n).unwrap();
    }
    let a = simulate(&s, &SimOptions::default()).unwrap();
    let b = simulate(&s, &SimOptions::default()).unwrap();
    let (ja, jb) = (a.report().to_json(), b.report().to_json());
    assert!(ja == jb, "{name}: same seed, different JSON reports");
    golden(name, &ja);
    assert!(a.svg() == b.svg(), "{name}: same seed, different plots");
    assert!(a.svg().starts_with("<svg"), "{name}: a plot was drawn");
    assert!(
        a.report().violations().is_empty(),
        "{name}: {:?}",
        a.report().violations()
    );
    let client = &a.report().contenders[0];
    assert_eq!(client.name, "failover-client");
    assert!(client.reads > 0, "{name}: reads were issued");
    if !UNANSWERABLE.contains(&name) {
        assert_eq!(
            client.failed,
            0,
            "{name}: the client failed reads:\n{}",
            a.report()
        );
    }
}

/// The checked-in report of `name` at its seed (`simulations/golden/NAME.json`): a change that
/// was meant to leave behaviour alone leaves it byte-identical. An intended change of behaviour
/// rewrites them with `GOLDEN_UPDATE=1 cargo test --test simulation`, in a commit of its own
/// that says why.
fn golden(name: &str, json: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../simulations/golden")
        .join(format!("{name}.json"));
    if std::env::var_os("GOLDEN_UPDATE").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, json).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (write it with GOLDEN_UPDATE=1 cargo test --test simulation)",
            path.display()
        )
    });
    if want != json {
        let line = want
            .lines()
            .zip(json.lines())
            .position(|(w, g)| w != g)
            .unwrap_or_else(|| want.lines().count().min(json.lines().count()));
        panic!(
            "{name}: the report differs from {} from line {}:\n  golden: {}\n  now:    {}",
            path.display(),
            line + 1,
            want.lines().nth(line).unwrap_or("<end>"),
            json.lines().nth(line).unwrap_or("<end>"),
        );
    }
}

macro_rules! reproducible {
    ($($test:ident => $name:literal),* $(,)?) => {
        $(#[test]
        fn $test() {
            reproducible_and_sound($name);
        })*

        #[test]
        fn every_shipped_scenario_has_a_reproducibility_test() {
            let mut tested = vec![$($name),*];
            tested.sort_unstable();
            let mut shipped = Scenario::builtin_names();
            shipped.sort_unstable();
            assert_eq!(tested, shipped);
        }
    };
}

reproducible! {
    regional_outage_is_reproducible => "regional-outage",
    brownout_is_reproducible => "brownout",
    throttling_storm_is_reproducible => "throttling-storm",
    flapping_primary_is_reproducible => "flapping-primary",
    total_outage_is_reproducible => "total-outage",
    rotation_during_outage_is_reproducible => "rotation-during-outage",
    short_total_outage_is_reproducible => "short-total-outage",
    partial_outage_is_reproducible => "partial-outage",
    grey_failure_is_reproducible => "grey-failure",
    replication_lag_is_reproducible => "replication-lag",
    replicator_rotation_outage_is_reproducible => "replicator-rotation-outage",
    no_replicator_rotation_outage_is_reproducible => "no-replicator-rotation-outage",
    fleet_cold_start_is_reproducible => "fleet-cold-start",
    fleet_10k_cold_start_is_reproducible => "fleet-10k-cold-start",
    fleet_10k_regional_outage_is_reproducible => "fleet-10k-regional-outage",
    fleet_10k_rotation_storm_is_reproducible => "fleet-10k-rotation-storm",
    fleet_10k_node_agents_is_reproducible => "fleet-10k-node-agents",
    fleet_10k_rotation_events_is_reproducible => "fleet-10k-rotation-events",
    fleet_10k_rotation_events_lossy_is_reproducible => "fleet-10k-rotation-events-lossy",
}

#[test]
fn another_seed_gives_another_run() {
    let s = Scenario::builtin("regional-outage").unwrap();
    let a = simulate(&s, &SimOptions::default()).unwrap();
    let b = simulate(&s.with_seed(2), &SimOptions::default()).unwrap();
    assert_ne!(a.report().to_json(), b.report().to_json());
}

#[test]
fn the_outage_scenario_shows_failover_read_only_writes_and_failback() {
    let s = Scenario::builtin("regional-outage").unwrap();
    let run = simulate(&s, &SimOptions::default()).unwrap();
    let r = run.report();
    let client = &r.contenders[0];
    assert!(
        client.failover_ms.is_some() && client.failback_ms.is_some(),
        "{r}"
    );
    assert!(client.writes.refused_read_only > 0, "{r}");
    assert_eq!(
        client.vaults[1].writes, 0,
        "nothing written to the secondary"
    );
    let sdk = r.contenders.iter().find(|c| c.name == "plain-sdk").unwrap();
    assert!(sdk.failed > 0, "the plain SDK has no second region: {r}");
}

fn broken(base: &str, extra: &str) -> keyvault_failover_sim::SimReport {
    let s = Scenario::from_toml(&format!("{base}\n{extra}\n")).unwrap();
    let options = SimOptions {
        contenders: Some(vec![keyvault_failover_sim::ContenderKind::FailoverClient]),
        progress: None,
        ..Default::default()
    };
    simulate(&s, &options).unwrap().report().clone()
}

fn failed(r: &keyvault_failover_sim::SimReport) -> Vec<String> {
    r.contenders[0]
        .invariants
        .iter()
        .filter(|i| !i.held)
        .map(|i| i.name.clone())
        .collect()
}

#[test]
fn a_client_told_the_secondary_is_writable_breaks_the_read_only_invariant() {
    let r = broken(OUTAGE, "[broken]\nsecondaries_writable = true");
    assert_eq!(failed(&r), ["no write reached a read-only vault"], "{r}");
    assert!(r.contenders[0].vaults[1].writes > 0);
}

#[test]
fn a_cap_longer_than_the_scenario_allows_breaks_the_staleness_invariant() {
    let base = TOTAL.replace("staleness_cap = \"1h\"", "staleness_cap = \"10m\"");
    assert_ne!(base, TOTAL, "the scenario sets a cap to shorten");
    let r = broken(&base, "[broken]\ncap_factor = 4");
    assert_eq!(
        failed(&r),
        ["no value served past the staleness cap"],
        "{r}"
    );
    // The same scenario with the cap kept: stale serves stop at the cap, then reads fail.
    let kept = broken(&base, "");
    assert!(failed(&kept).is_empty(), "{kept}");
    assert!(kept.contenders[0].max_staleness_ms <= 600_000);
    assert!(kept.contenders[0].failed > 0, "past the cap, an error");
}

#[test]
fn wiring_that_bypasses_the_breaker_breaks_the_open_breaker_invariant() {
    let r = broken(OUTAGE, "[broken]\nbypass_breaker = true");
    assert_eq!(failed(&r), ["no call through an open breaker"], "{r}");
}

#[test]
fn bad_scenarios_get_clear_errors() {
    let cases = [
        (
            OUTAGE.replace("kind = \"outage\"", "kind = \"meteor\""),
            "meteor",
        ),
        (
            OUTAGE.replace("region = \"weu\"", "region = \"xyz\""),
            "no such region",
        ),
        (
            OUTAGE.replace("end = \"6m\"", "end = \"1m\""),
            "end must be after start",
        ),
        (
            OUTAGE.replace("reads_per_sec = 50", "reads_per_sec = 0"),
            "reads_per_sec",
        ),
        (format!("{OUTAGE}\nsurprise = 1"), "surprise"),
        (
            OUTAGE.replace("kind = \"outage\"", "kind = \"throttle\""),
            "needs retry_after",
        ),
        (
            OUTAGE.replace("[client.timeouts]", "[client.timeouts]\nbogus = 1"),
            "bogus",
        ),
        (
            OUTAGE.replace(
                "rotations = [{ at = \"1m\", secret = 1 }",
                "rotations = [{ at = \"1m\", secret = 99 }",
            ),
            "rotation of secret 99",
        ),
        (
            OUTAGE.replacen(
                "latency_p99 = \"40ms\"",
                "latency_p99 = \"40ms\"\nreplication_delay = \"1m\"",
                1,
            ),
            "the primary is where writes land",
        ),
        (
            OUTAGE.replace("kind = \"outage\"", "kind = \"outage\"\nops = [\"put\"]"),
            "put",
        ),
    ];
    for (text, want) in cases {
        let e = Scenario::from_toml(&text).unwrap_err();
        assert!(e.is_config(), "{e}");
        assert!(e.to_string().contains(want), "{want:?} not in {e}");
    }
    let e = Scenario::builtin("nope").unwrap_err();
    assert!(e.to_string().contains("regional-outage"), "{e}");
}

/// A secondary that lags the primary: the client never reports a secret that exists as not
/// found, and never serves a version older than one it already served (issue 9, item 4).
#[test]
fn replication_lag_is_neither_not_found_nor_backwards() {
    let s = Scenario::builtin("replication-lag").unwrap();
    let run = simulate(&s, &SimOptions::default()).unwrap();
    let r = run.report();
    let client = &r.contenders[0];
    assert_eq!(client.not_found_reads, 0, "{r}");
    assert_eq!(client.backwards_reads, 0, "{r}");
    assert!(
        client.stale > 0,
        "the newer values were held while the secondary lagged:\n{r}"
    );
}

/// A fault limited to GETs leaves listings alone: a prober that listed would see a healthy
/// vault; the client's probes GET, so its route leaves the primary and comes back once.
#[test]
fn a_get_only_fault_spares_listings() {
    let s = Scenario::builtin("partial-outage").unwrap();
    let run = simulate(&s, &SimOptions::default()).unwrap();
    let r = run.report();
    let client = &r.contenders[0];
    let plain = &r.contenders[1];
    assert!(plain.failed > 0, "the GETs did fail:\n{r}");
    assert!(
        client.route_changes >= 2,
        "the route left the primary and came back:\n{r}"
    );
}

/// A fleet's report says how hard it leaned on each vault: per phase (the fleet's start is one)
/// the peak GETs per 10 s and the 429s, the admitted GETs of every 10 s, and the probes' share.
#[test]
fn a_fleet_report_has_vault_load_per_phase_and_per_10s() {
    let s = Scenario::builtin("fleet-cold-start")
        .unwrap()
        .with_instances(100)
        .unwrap();
    let options = SimOptions {
        contenders: Some(vec![keyvault_failover_sim::ContenderKind::FailoverClient]),
        ..Default::default()
    };
    let run = simulate(&s, &options).unwrap();
    let c = &run.report().contenders[0];
    let names: Vec<&str> = c.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["fleet start", "steady"]);
    for p in &c.phases {
        assert_eq!(p.vaults.len(), 2);
    }
    let weu = &c.vaults[0];
    assert_eq!(weu.per_10s.len(), 30, "5 minutes in 10 s buckets");
    let admitted: u64 = weu.per_10s.iter().sum();
    assert!(admitted > 0 && admitted + weu.throttled <= weu.gets);
    assert_eq!(weu.mean_per_10s, (admitted as f64 / 30.0).round() as u64);
    assert!(weu.per_10s.iter().all(|&n| n <= weu.peak_per_10s));
    assert!(c
        .phases
        .iter()
        .all(|p| p.vaults[0].peak_per_10s <= weu.peak_per_10s));
    assert!(
        c.probe_share > 0.0 && c.probe_share < 1.0,
        "{}",
        c.probe_share
    );
    assert!(weu.probes + c.vaults[1].probes > 0);
    let json = run.report().to_json();
    assert!(json.contains("\"per_10s\"") && json.contains("\"probe_share\""));
}

/// Two rotations of one secret 10 s apart, within the refresh interval: the first is
/// superseded before the instance could see it, and only the second must propagate. Before,
/// the first counted as "never propagated".
#[test]
fn a_rotation_superseded_before_it_was_seen_is_not_never_propagated() {
    let text = OUTAGE.replace(
        r#"rotations = [{ at = "1m", secret = 1 }, { at = "7m", secret = 2 }]"#,
        r#"rotations = [{ at = "1m", secret = 1 }, { at = "1m10s", secret = 1 }]"#,
    );
    assert_ne!(text, OUTAGE);
    let r = broken(&text, "");
    let c = &r.contenders[0];
    assert_eq!(c.rotations, 2);
    assert_eq!(c.rotations_unpropagated, 0, "{r}");
    assert!(c.rotation_delay_ms.is_some_and(|d| d <= 60_000), "{r}");
}

/// The replicator in a scenario: it copies the primary's rotations into the secondary (its
/// passes while the primary is down fail and the next one catches up), so through the outage
/// the client serves fewer values stale than without it; versions never go backwards either way.
#[test]
fn the_replicator_brings_rotations_to_the_secondary() {
    let run = |name: &str| {
        let s = Scenario::builtin(name).unwrap();
        let r = simulate(&s, &SimOptions::default()).unwrap();
        r.report().contenders[0].clone()
    };
    let with = run("replicator-rotation-outage");
    let without = run("no-replicator-rotation-outage");
    let rep = with
        .replicator
        .as_ref()
        .expect("the scenario's replicator reports");
    assert_eq!(rep.copies, 10, "{rep:?}");
    assert!(
        rep.passes_failed >= 1,
        "a pass met the primary down: {rep:?}"
    );
    assert!(without.replicator.is_none());
    assert_eq!((with.backwards_reads, without.backwards_reads), (0, 0));
    assert!(
        with.stale < without.stale,
        "{} vs {}",
        with.stale,
        without.stale
    );
    assert!(with.max_staleness_ms < without.max_staleness_ms);
}
