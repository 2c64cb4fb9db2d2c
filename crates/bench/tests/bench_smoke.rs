//! The fault-injection bench runs end to end (real SDK, HTTPS, emulator on 127.0.0.1) and
//! reports what it measured. No timing is asserted: benchmarks report, they never fail on one.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use keyvault_failover_bench::{run, BenchOptions, BenchScenario};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_refuse_run_reports_every_contender_and_phase() {
    let options = BenchOptions {
        scenarios: vec![BenchScenario::Refuse],
        rate: 20,
        duration: Duration::from_secs(3),
        hot: 5,
        cold: 200,
        cold_share: 0.5,
    };
    let progress = AtomicU64::new(0);
    let report = tokio::time::timeout(Duration::from_secs(120), run(&options, &progress))
        .await
        .expect("bounded")
        .expect("bench runs");
    assert_eq!(report.scenarios.len(), 1);
    let s = &report.scenarios[0];
    let names: Vec<_> = s.contenders.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "failover-client",
            "plain-sdk",
            "plain-sdk-6s",
            "cache-aside-5m"
        ]
    );
    for c in &s.contenders {
        let phases: Vec<_> = c.phases.iter().map(|p| p.phase.as_str()).collect();
        assert_eq!(phases, ["steady", "fault", "recovery", "all"]);
        assert_eq!(
            c.phases[3].sent, 60,
            "{}: rate x duration reads, open loop",
            c.name
        );
        assert_eq!(
            c.phases[..3].iter().map(|p| p.sent).sum::<u64>(),
            c.phases[3].sent
        );
    }
    let gets = |i: usize, r: &str| {
        s.contenders[i]
            .vault_gets
            .iter()
            .find(|(n, _)| n == r)
            .map(|(_, g)| *g)
            .unwrap()
    };
    assert!(gets(0, "neu") > 0, "the client read from the secondary");
    assert_eq!(gets(1, "neu"), 0, "the plain SDK knows one vault");
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["scenarios"][0]["scenario"], "refuse");
    let svgs = report.svgs();
    assert_eq!(svgs.len(), 1);
    assert!(svgs[0].1.starts_with("<svg"));
    let table = report.to_string();
    assert!(
        table.contains("generator lag") && table.contains("p99.9"),
        "{table}"
    );
}

#[tokio::test]
async fn bad_options_are_refused_before_anything_starts() {
    let progress = AtomicU64::new(0);
    for o in [
        BenchOptions {
            rate: 0,
            ..BenchOptions::default()
        },
        BenchOptions {
            duration: Duration::from_secs(1),
            ..BenchOptions::default()
        },
        BenchOptions {
            cold_share: 2.0,
            ..BenchOptions::default()
        },
    ] {
        let e = run(&o, &progress).await.unwrap_err();
        assert!(e.is_config(), "{e}");
    }
}

/// The agent's bench scenarios run end to end and say what they measured; only what cannot
/// depend on timing is asserted (every cached read answered; the snapshot serves every secret
/// after a restart during a total outage, and nothing is served without it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_scenarios_run_and_report() {
    use keyvault_failover_bench::agent::{load, restart};
    let report = tokio::time::timeout(Duration::from_secs(120), load(Duration::from_secs(1), 10))
        .await
        .expect("bounded")
        .expect("the agent bench runs");
    let names: Vec<_> = report.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "agent",
            "agent-key-vault-api",
            "in-process",
            "agent-primary-blackhole"
        ]
    );
    for p in &report.phases {
        assert!(
            p.ok > 0 && p.failed == 0,
            "{}: {} ok, {} failed",
            p.name,
            p.ok,
            p.failed
        );
    }
    assert!(report.to_string().contains("| agent |"));

    let report = tokio::time::timeout(Duration::from_secs(120), restart(20))
        .await
        .expect("bounded")
        .expect("the restart bench runs");
    let by = |n: &str| report.agents.iter().find(|a| a.name == n).unwrap().ok;
    assert_eq!(by("agent-with-snapshot"), 20);
    assert_eq!(by("agent-without-snapshot"), 0);
}
