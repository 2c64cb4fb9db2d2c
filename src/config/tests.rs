//! The configuration's unit tests.

use super::*;

fn two() -> ConfigBuilder {
    Config::builder()
        .region("weu", "https://a-weu.vault.azure.net", Access::ReadWrite)
        .region("neu", "https://a-neu.vault.azure.net", Access::ReadOnly)
}

fn err(b: ConfigBuilder) -> String {
    let e = b.build().unwrap_err();
    assert!(e.is_config());
    e.to_string()
}

#[test]
fn defaults_are_valid() {
    two().build().unwrap();
}

#[test]
fn each_bad_setting_is_named() {
    assert!(err(Config::builder()).contains("no regions"));
    assert!(
        err(two().region("weu", "https://x.vault.azure.net", Access::ReadOnly)).contains("twice")
    );
    assert!(
        err(two().region("x", "https://A-WEU.vault.azure.net/", Access::ReadOnly))
            .contains("same vault")
    );
    assert!(err(two().region("x", "http://x.vault.azure.net", Access::ReadOnly)).contains("https"));
    assert!(err(two().region("x", "not a url", Access::ReadOnly)).contains("url"));
    assert!(
        err(two().region("x", "https://x.vault.azure.net", Access::ReadWrite))
            .contains("read-write")
    );
    two()
        .region("x", "https://x.vault.azure.net", Access::ReadWrite)
        .allow_multiple_writable(true)
        .build()
        .unwrap();
    assert!(err(two().attempt_timeout(Duration::ZERO)).contains("timeouts.attempt"));
    assert!(err(two().deadline(Duration::from_millis(100))).contains("shorter"));
    assert!(err(two().breaker_open_base(Duration::from_secs(120))).contains("open_max"));
    assert!(err(two().backoff_base(Duration::from_secs(5))).contains("backoff_max"));
    assert!(err(two().staleness_cap(Duration::from_secs(60))).contains("refresh_interval"));
    assert!(err(two().staleness_cap_for("db", Duration::from_secs(1))).contains("db"));
    assert!(err(two().staleness_cap_for("d b", Duration::from_secs(3600))).contains("d b"));
    assert!(err(two().vault_budget_fraction(0.0)).contains("budget_fraction"));
    assert!(err(two().failure_threshold(0)).contains("failure_threshold"));
    assert!(err(two().max_attempts(0)).contains("max_attempts"));
    assert!(err(two().max_retry_after(Duration::from_millis(10))).contains("max_retry_after"));
    assert!(err(two().vault_write_limit(0)).contains("write_limit"));
    for bad in [0.0, -0.5, 1.5, f64::NAN, f64::INFINITY] {
        assert!(
            err(two().drift_sample(bad)).contains("drift_sample"),
            "{bad}"
        );
    }
    two().drift_sample(1.0).build().unwrap();
}

#[test]
fn absurd_durations_are_refused_not_panicked_on() {
    // Regression: these passed validation and then panicked every read (Instant overflow).
    for text in [
        "[timeouts]\ndeadline = '300000000000years'",
        "[timeouts]\nattempt = '2h'\ndeadline = '3h'",
        "[cache]\nstaleness_cap = '5000years'",
        "[cache]\nstaleness_overrides = { db = '900years' }",
        "[probe]\nfailback_dwell = '10000years'",
        "[throttle]\nmax_retry_after = '1000000000s'",
        "[refresh]\nidle_after = '500000000000years'",
    ] {
        let base = two().build().unwrap().to_toml();
        let base: String = base
            .lines()
            .take_while(|l| !l.starts_with("[timeouts]"))
            .map(|l| format!("{l}\n"))
            .collect();
        let e = Config::from_toml(&format!("{base}{text}\n")).unwrap_err();
        assert!(
            e.is_config() && e.to_string().contains("longer than"),
            "{text}: {e}"
        );
    }
}

#[test]
fn toml_round_trips_and_rejects_unknown_keys() {
    let c = two()
        .staleness_cap_for("db", Duration::from_secs(3600))
        .build()
        .unwrap();
    let text = c.to_toml();
    assert_eq!(Config::from_toml(&text).unwrap(), c);
    let e = Config::from_toml(&format!("{text}\n[cache2]\nx = 1\n")).unwrap_err();
    assert!(e.is_config() && e.to_string().contains("cache2"), "{e}");
    let e = Config::from_toml("[[regions]]\nname = 'a'\nurl = 'https://a'\naccess = 'rw'\n")
        .unwrap_err();
    assert!(e.is_config(), "{e}");
    let e = Config::from_toml("[timeouts]\nattempt = 'soon'").unwrap_err();
    assert!(e.is_config(), "{e}");
}

proptest::proptest! {
    #[test]
    fn any_text_is_a_clear_error_or_a_valid_config(s in ".{0,200}") {
        let _ = Config::from_toml(&s);
    }
}
