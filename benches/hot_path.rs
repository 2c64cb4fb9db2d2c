//! The hot path: `get_secret` on a cached secret, against what a user could write instead.
//!
//! `cargo bench --bench hot_path` — one thread, two and four contended threads (100 secrets),
//! and one thread over 10,000 secrets, each against a bare `HashMap` lookup, an
//! `RwLock<HashMap>`, a bare `papaya` map (the cache's own) and a `moka` cache doing the same
//! work (look the name up, hand back a shared handle to the value). Allocations per hit are counted with a
//! counting global allocator and printed before the timings.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use futures::FutureExt;
use keyvault_failover::store::MemoryStore;
use keyvault_failover::{Access, Config, FailoverClient};
use secrecy::SecretString;

/// Counts every allocation, to report allocations per cache hit.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const NAME: &str = "db-password";

struct Contenders {
    _rt: tokio::runtime::Runtime,
    client: FailoverClient,
    map: HashMap<String, Arc<SecretString>>,
    locked: RwLock<HashMap<String, Arc<SecretString>>>,
    moka: moka::sync::Cache<String, Arc<SecretString>>,
}

fn contenders(secrets: usize) -> Contenders {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let store = Arc::new(MemoryStore::new("weu"));
    let names: Vec<String> = (0..secrets)
        .map(|i| format!("secret-{i}"))
        .chain([NAME.to_string()])
        .collect();
    for n in &names {
        store.insert(n, "hunter2");
    }
    // Defaults: the prober and refresher are spawned on the runtime, which is not driven
    // while the benchmarks run, so they cost nothing here.
    // The in-memory vault has no published limit: 10,000 secrets preload at once.
    let config = Config::builder()
        .region("weu", "https://app-weu.vault.azure.net", Access::ReadWrite)
        .vault_get_limit(100_000)
        .build()
        .expect("valid configuration");
    let client = rt.block_on(async {
        let c = FailoverClient::builder(config)
            .store("weu", store)
            .build()
            .expect("client");
        assert!(c.preload(&names).await.is_empty());
        c
    });
    let value = |_: &String| Arc::new(SecretString::from("hunter2"));
    let map: HashMap<_, _> = names.iter().map(|n| (n.clone(), value(n))).collect();
    let moka = moka::sync::Cache::new(10_000);
    for n in &names {
        moka.insert(n.clone(), value(n));
    }
    Contenders {
        _rt: rt,
        client,
        locked: RwLock::new(map.clone()),
        map,
        moka,
    }
}

/// A cache hit through the client: the future is ready at once (no I/O, no await point).
fn client_hit(c: &FailoverClient) -> usize {
    let s = c
        .get_secret(black_box(NAME))
        .now_or_never()
        .expect("a cache hit never waits")
        .expect("cached");
    s.version().len()
}

/// The bare `HashMap` contender's hit.
fn map_hit(k: &Contenders) -> Option<Arc<SecretString>> {
    k.map.get(black_box(NAME)).map(Arc::clone)
}

/// The `RwLock<HashMap>` contender's hit.
fn locked_hit(k: &Contenders) -> Option<Arc<SecretString>> {
    k.locked
        .read()
        .unwrap()
        .get(black_box(NAME))
        .map(Arc::clone)
}

/// The synchronous hit: no future at all.
fn client_cached(c: &FailoverClient) -> usize {
    c.get_cached(black_box(NAME))
        .expect("cached")
        .version()
        .len()
}

fn allocations_per_hit(label: &str, mut f: impl FnMut()) {
    const N: u64 = 100_000;
    for _ in 0..1_000 {
        f();
    }
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..N {
        f();
    }
    let per = (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / N as f64;
    println!("allocations per hit  {label:<24} {per:.3}");
}

fn single(c: &mut Criterion) {
    let k = contenders(100);
    allocations_per_hit("failover-client", || {
        black_box(client_hit(&k.client));
    });
    allocations_per_hit("failover-client cached", || {
        black_box(client_cached(&k.client));
    });
    allocations_per_hit("HashMap", || {
        black_box(map_hit(&k));
    });
    allocations_per_hit("RwLock<HashMap>", || {
        black_box(locked_hit(&k));
    });
    allocations_per_hit("moka", || {
        black_box(k.moka.get(black_box(NAME)));
    });
    one_thread(c, "hit/1-thread", &k);
    // The parts of a hit, to see where its time goes.
    let mut g = c.benchmark_group("parts");
    g.bench_function("tokio Instant::now", |b| b.iter(tokio::time::Instant::now));
    g.bench_function("std Instant::now", |b| b.iter(Instant::now));
    let pap: papaya::HashMap<Box<str>, Arc<SecretString>> = k
        .map
        .iter()
        .map(|(n, v)| (n.as_str().into(), v.clone()))
        .collect();
    g.bench_function("papaya pin + get + Arc clone", |b| {
        b.iter(|| pap.pin().get(black_box(NAME)).map(Arc::clone))
    });
    let swap = arc_swap::ArcSwap::from_pointee(k.map.clone());
    g.bench_function("ArcSwap load + HashMap get", |b| {
        b.iter(|| swap.load().get(black_box(NAME)).map(Arc::clone))
    });
    g.finish();
}

/// Threads hitting the same entry at once: time per hit per thread, with 2 and 4 threads.
fn contended(c: &mut Criterion) {
    let k = Arc::new(contenders(100));
    fn on<F: Fn() + Sync>(threads: usize, iters: u64, f: F) -> Duration {
        let start = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    for _ in 0..iters {
                        f();
                    }
                });
            }
        });
        start.elapsed()
    }
    let pap: papaya::HashMap<Box<str>, Arc<SecretString>> = k
        .map
        .iter()
        .map(|(n, v)| (n.as_str().into(), v.clone()))
        .collect();
    for threads in [2, 4] {
        let mut g = c.benchmark_group(format!("hit/{threads}-threads"));
        // A cache hit needs no runtime context (no timer, no task): the threads call it bare.
        g.bench_function("failover-client", |b| {
            b.iter_custom(|iters| {
                on(threads, iters, || {
                    black_box(client_hit(&k.client));
                })
            })
        });
        g.bench_function("failover-client get_cached", |b| {
            b.iter_custom(|iters| {
                on(threads, iters, || {
                    black_box(client_cached(&k.client));
                })
            })
        });
        g.bench_function("papaya", |b| {
            b.iter_custom(|iters| {
                on(threads, iters, || {
                    black_box(pap.pin().get(black_box(NAME)).map(Arc::clone));
                })
            })
        });
        g.bench_function("HashMap", |b| {
            b.iter_custom(|iters| {
                on(threads, iters, || {
                    black_box(map_hit(&k));
                })
            })
        });
        g.bench_function("RwLock<HashMap>", |b| {
            b.iter_custom(|iters| {
                on(threads, iters, || {
                    black_box(locked_hit(&k));
                })
            })
        });
        g.bench_function("moka", |b| {
            b.iter_custom(|iters| {
                on(threads, iters, || {
                    black_box(k.moka.get(black_box(NAME)));
                })
            })
        });
        g.finish();
    }
}

/// One thread, 10,000 secrets: a lookup that misses the CPU caches more often.
fn large(c: &mut Criterion) {
    one_thread(c, "hit/1-thread-10k-secrets", &contenders(10_000));
}

/// Every contender's hit on one thread, as the group `name`.
fn one_thread(c: &mut Criterion, name: &str, k: &Contenders) {
    let mut g = c.benchmark_group(name);
    g.bench_function("failover-client", |b| b.iter(|| client_hit(&k.client)));
    g.bench_function("failover-client get_cached", |b| {
        b.iter(|| client_cached(&k.client))
    });
    g.bench_function("HashMap", |b| b.iter(|| map_hit(k)));
    g.bench_function("RwLock<HashMap>", |b| b.iter(|| locked_hit(k)));
    g.bench_function("moka", |b| b.iter(|| k.moka.get(black_box(NAME))));
    g.finish();
}

/// The hit with no meter provider (OpenTelemetry's no-op instruments) against the hit of a
/// client built after an SDK meter provider was installed, in the same run: a hit records
/// nothing either way. Runs last: the provider is process-wide.
fn telemetry(c: &mut Criterion) {
    let without = contenders(100);
    let exporter = opentelemetry_sdk::metrics::InMemoryMetricExporter::default();
    let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
        .with_reader(opentelemetry_sdk::metrics::PeriodicReader::builder(exporter).build())
        .build();
    opentelemetry::global::set_meter_provider(provider);
    let with = contenders(100);
    let mut g = c.benchmark_group("hit/otel");
    g.bench_function("failover-client, no meter provider", |b| {
        b.iter(|| client_hit(&without.client))
    });
    g.bench_function("failover-client, SDK meter provider", |b| {
        b.iter(|| client_hit(&with.client))
    });
    g.finish();
}

criterion_group! {
    name = hot_path;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = single, contended, large, telemetry
}
criterion_main!(hot_path);
