//! The replicator against the emulator through the real SDK: copy N secrets (default 5,000)
//! into an empty secondary, then run again over vaults in step. Prints wall times, the peak
//! writes in any 10 s against Key Vault's 300, 429s, and the calls of the in-step run.
//!
//! `cargo bench -p keyvault-failover-emulator --bench replicate` (`REPLICATE_SECRETS=500` for a
//! shorter run). Network: 127.0.0.1 only; bounded: one copy run, one in-step run.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyvault_failover::azure::AzureStore;
use keyvault_failover::replicate::{OutcomeKind, Replicator};
use keyvault_failover_emulator::{Emulator, StaticCredential};

fn store(emu: &Emulator, region: &str) -> Arc<AzureStore> {
    Arc::new(
        AzureStore::new(
            &emu.url(region),
            Arc::new(StaticCredential),
            emu.http_client(Duration::from_secs(10)).unwrap(),
        )
        .unwrap(),
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("REPLICATE_SECRETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000)
        .clamp(1, 25_000);
    let emu = Arc::new(
        Emulator::builder()
            .vault("weu")
            .vault("neu")
            .start()
            .await
            .unwrap(),
    );
    for i in 0..n {
        emu.insert("weu", &format!("secret-{i:05}"), &format!("value-{i}"));
    }
    // Copies made within two seconds of their source are checked by a read on the next run:
    // let the sources age past that, as they have in a real vault.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = Replicator::builder()
        .primary("weu", store(&emu, "weu"))
        .secondary("neu", store(&emu, "neu"))
        .build()
        .unwrap();

    // Sample the secondary's write counter every 100 ms: the peak over any 10 s window.
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (emu, done) = (emu.clone(), done.clone());
        tokio::spawn(async move {
            let mut samples: VecDeque<(Instant, u64)> = VecDeque::new();
            let mut peak = 0;
            while !done.load(Ordering::Relaxed) {
                let now = Instant::now();
                let w = emu.writes("neu");
                samples.push_back((now, w));
                while samples
                    .front()
                    .is_some_and(|(t, _)| now.duration_since(*t) > Duration::from_secs(10))
                {
                    samples.pop_front();
                }
                if let Some((_, first)) = samples.front() {
                    peak = peak.max(w - first);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            peak
        })
    };
    let t0 = Instant::now();
    let plan = r.plan().await.unwrap();
    let report = r.run(&plan, &|_, _| {}).await;
    let copy_secs = t0.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let peak = sampler.await.unwrap();
    let s = &report.secondaries()[0];
    println!("copy {n} secrets into an empty secondary:");
    println!(
        "  wall {copy_secs:.1} s, {} copied, {} failed, in step: {}",
        s.count(OutcomeKind::Copied),
        s.count(OutcomeKind::Failed),
        report.in_step()
    );
    println!(
        "  peak writes in any 10 s: {peak} (Key Vault's limit 300, budget 80 % = 240); 429s: {}",
        emu.throttled("neu")
    );
    println!(
        "  calls: {} listings, {} reads, {} writes, {} retries",
        report.calls().lists(),
        report.calls().reads(),
        report.calls().writes(),
        report.calls().retries()
    );

    let (req_weu, req_neu) = (emu.requests("weu"), emu.requests("neu"));
    let (w_neu, g_weu) = (emu.writes("neu"), emu.gets("weu"));
    let t1 = Instant::now();
    let plan = r.plan().await.unwrap();
    let again = r.run(&plan, &|_, _| {}).await;
    let again_secs = t1.elapsed().as_secs_f64();
    println!("the next run over vaults in step:");
    println!(
        "  wall {again_secs:.2} s; replicator calls: {} listings, {} value reads, {} writes",
        again.calls().lists(),
        again.calls().reads(),
        again.calls().writes()
    );
    println!(
        "  HTTP requests: primary {}, secondary {} (listing pages of 25); writes {}",
        emu.requests("weu") - req_weu,
        emu.requests("neu") - req_neu,
        emu.writes("neu") - w_neu,
    );
    let _ = g_weu;
}
