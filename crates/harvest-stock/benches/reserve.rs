//! S1/S2 engine benchmarks: reservations per second on one hot sale with many
//! concurrent callers.
//!
//! - `memory/reserve` and `memory/reserve_coalesced`: the memory engine with 512
//!   concurrent callers, called directly and through a Coalescer.
//! - `memory/sold_out_local`: rejections of a sold-out sale answered by a Coalescer's
//!   local flag (no engine call).
//! - `redis/reserve_direct` and `redis/reserve_coalesced`: the Redis engine with 512
//!   concurrent callers, one script call per reservation against one batched call per
//!   wave, when `HARVEST_BENCH_REDIS_URL` is set (e.g. `redis://127.0.0.1:6390`).
//!
//! Every call of every storm is timed as well; after each benchmark its call count and
//! latency percentiles are printed, and appended as one JSON line to the file named by
//! `HARVEST_BENCH_LATENCY_FILE` when set (`scripts/bench-stock` reads them).
//!
//! Run: `cargo bench -p harvest-stock --bench reserve`.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use harvest_stock::{
    Coalescer, CoalescerConfig, MemoryEngine, RedisConfig, RedisEngine, ReserveOutcome,
    ReserveRequest, SaleSpec, StockEngine,
};

const CALLERS: u64 = 512;
const NOW: i64 = 1_764_420_000_000;

/// Numbers requests (ids, keys, users) across every storm: each caller takes a block.
static SEQ: AtomicU64 = AtomicU64::new(0);

/// A block of `n` fresh request numbers.
fn numbers(n: u64) -> std::ops::Range<u64> {
    let first = SEQ.fetch_add(n, Ordering::Relaxed);
    first..first + n
}

fn sale(stock: u64) -> SaleSpec {
    SaleSpec {
        sale_id: format!("bench-{}", uuid::Uuid::now_v7().simple()),
        stock,
        per_user_limit: u32::MAX,
        hold_ttl: Duration::from_secs(3600),
        starts_at_ms: NOW - 1,
        ends_at_ms: NOW + 86_400_000,
    }
}

/// The `n`th request of the benchmark (one unit, one of 10,000 users).
fn request(sale_id: &str, n: u64) -> ReserveRequest {
    ReserveRequest {
        sale_id: sale_id.to_owned(),
        user_id: format!("u{}", n % 10_000),
        quantity: 1,
        idempotency_key: format!("k{n}"),
        request_fingerprint: "q1".to_owned(),
        hold_id: format!("h{n}"),
        now_ms: NOW,
    }
}

/// Per-call latencies (ns) of every storm of one benchmark.
#[derive(Default)]
struct Latencies(Vec<u32>);

impl Latencies {
    /// Prints the percentiles and appends them to `HARVEST_BENCH_LATENCY_FILE`.
    fn report(mut self, id: &str) {
        let calls = self.0.len();
        if calls == 0 {
            return;
        }
        self.0.sort_unstable();
        let at = |q: f64| {
            let i = ((calls as f64 * q).ceil() as usize).clamp(1, calls) - 1;
            f64::from(self.0[i]) / 1e6
        };
        let (p50, p99, max) = (at(0.50), at(0.99), at(1.0));
        println!(
            "{id}: {calls} calls timed, latency p50 {p50:.3} ms, p99 {p99:.3} ms, max {max:.3} ms"
        );
        let Ok(path) = std::env::var("HARVEST_BENCH_LATENCY_FILE") else {
            return;
        };
        let line = format!(
            "{{\"id\":\"{id}\",\"calls\":{calls},\"p50_ms\":{p50:.4},\"p99_ms\":{p99:.4},\"max_ms\":{max:.4}}}\n"
        );
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            eprintln!("cannot append to {path}: {e}");
        }
    }
}

/// Runs `total` reservations spread over `CALLERS` concurrent tasks; returns the time,
/// and adds every call's latency to `lat`.
async fn storm(
    engine: Arc<dyn StockEngine>,
    sale_id: Arc<str>,
    total: u64,
    expect_held: bool,
    lat: &mut Latencies,
) -> Duration {
    let started = Instant::now();
    let tasks: Vec<_> = (0..CALLERS)
        .map(|c| {
            let (engine, sale_id) = (engine.clone(), sale_id.clone());
            let share = total / CALLERS + u64::from(c < total % CALLERS);
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(usize::try_from(share).unwrap_or(0));
                for n in numbers(share) {
                    let req = request(&sale_id, n);
                    let called = Instant::now();
                    let out = engine.reserve(req).await;
                    let took = called.elapsed().as_nanos();
                    lat.push(u32::try_from(took).unwrap_or(u32::MAX));
                    let ok = match out {
                        Ok(ReserveOutcome::Held(_)) => expect_held,
                        Ok(ReserveOutcome::Rejected(_)) => !expect_held,
                        Err(_) => false,
                    };
                    assert!(ok, "unexpected outcome in benchmark");
                }
                lat
            })
        })
        .collect();
    for t in tasks {
        lat.0.extend(t.await.expect("caller task"));
    }
    started.elapsed()
}

type Group<'a> = criterion::BenchmarkGroup<'a, criterion::measurement::WallTime>;

/// Benchmarks storms of reservations on one sale as `group/name` and reports their
/// latencies.
fn bench_storms(
    g: &mut Group<'_>,
    rt: &tokio::runtime::Runtime,
    (group, name): (&str, &str),
    engine: &Arc<dyn StockEngine>,
    sale_id: &str,
    expect_held: bool,
) {
    let id: Arc<str> = sale_id.into();
    let mut lat = Latencies::default();
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            rt.block_on(storm(
                engine.clone(),
                id.clone(),
                iters,
                expect_held,
                &mut lat,
            ))
        });
    });
    lat.report(&format!("{group}/{name}"));
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn memory(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("memory");
    g.throughput(Throughput::Elements(1))
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));

    for (name, coalesced) in [("reserve", false), ("reserve_coalesced", true)] {
        let memory: Arc<dyn StockEngine> = Arc::new(MemoryEngine::new());
        let engine: Arc<dyn StockEngine> = if coalesced {
            Arc::new(Coalescer::new(memory, CoalescerConfig::default()))
        } else {
            memory
        };
        let spec = sale(harvest_stock::MAX_STOCK);
        rt.block_on(engine.create_sale(&spec)).expect("create sale");
        bench_storms(&mut g, &rt, ("memory", name), &engine, &spec.sale_id, true);
    }

    // S2: a sold-out sale behind a Coalescer answers locally.
    let coalescer = Coalescer::new(
        Arc::new(MemoryEngine::new()),
        CoalescerConfig {
            sold_out_recheck: Duration::from_secs(3600),
            ..CoalescerConfig::default()
        },
    );
    let engine: Arc<dyn StockEngine> = Arc::new(coalescer);
    let spec = sale(1);
    rt.block_on(async {
        engine.create_sale(&spec).await.expect("create sale");
        for (n, what) in numbers(2).zip(["take the last unit", "raise the sold-out flag"]) {
            engine.reserve(request(&spec.sale_id, n)).await.expect(what);
        }
    });
    bench_storms(
        &mut g,
        &rt,
        ("memory", "sold_out_local"),
        &engine,
        &spec.sale_id,
        false,
    );
    g.finish();
}

fn redis(c: &mut Criterion) {
    let Ok(url) = std::env::var("HARVEST_BENCH_REDIS_URL") else {
        eprintln!("HARVEST_BENCH_REDIS_URL unset: skipping the Redis benchmarks");
        return;
    };
    let rt = runtime();
    let _guard = rt.enter();
    let mut cfg = RedisConfig::new(url);
    cfg.key_prefix = format!("bench-{}:", uuid::Uuid::now_v7().simple());
    // Short-lived records: an interrupted run leaves little behind.
    cfg.idempotency_ttl = Duration::from_secs(60);
    cfg.timeout = Duration::from_secs(5);
    let engine = Arc::new(RedisEngine::new(cfg).expect("redis engine"));
    rt.block_on(engine.ping()).expect("redis answers");

    let mut g = c.benchmark_group("redis");
    g.throughput(Throughput::Elements(1))
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    let coalesced: Arc<dyn StockEngine> =
        Arc::new(Coalescer::new(engine.clone(), CoalescerConfig::default()));
    let direct: Arc<dyn StockEngine> = engine.clone();
    for (name, e) in [("reserve_direct", direct), ("reserve_coalesced", coalesced)] {
        let spec = sale(harvest_stock::MAX_STOCK);
        rt.block_on(e.create_sale(&spec)).expect("create sale");
        bench_storms(&mut g, &rt, ("redis", name), &e, &spec.sale_id, true);
    }
    g.finish();
    // Drop everything the benchmark made: its keys all start with its own prefix.
    rt.block_on(async {
        let Ok(client) = redis::Client::open(engine.config().url.as_str()) else {
            return;
        };
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
            return;
        };
        let pattern = format!("{}*", engine.config().key_prefix);
        let mut cursor = 0u64;
        loop {
            let page: redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await;
            let Ok((next, keys)) = page else {
                return;
            };
            if !keys.is_empty() {
                let _: redis::RedisResult<i64> =
                    redis::cmd("UNLINK").arg(keys).query_async(&mut conn).await;
            }
            if next == 0 {
                return;
            }
            cursor = next;
        }
    });
}

criterion_group!(benches, memory, redis);
criterion_main!(benches);
