//! S1/S2 engine benchmarks: reservations per second on one hot sale with many
//! concurrent callers.
//!
//! - `memory/reserve`: the memory engine, 512 concurrent callers.
//! - `memory/sold_out_local`: rejections of a sold-out sale answered by a Coalescer's
//!   local flag (no engine call).
//! - `redis/reserve_direct` and `redis/reserve_coalesced`: the Redis engine with 512
//!   concurrent callers, one script call per reservation against one batched call per
//!   wave, when `HARVEST_BENCH_REDIS_URL` is set (e.g. `redis://127.0.0.1:6390`).
//!
//! Run: `cargo bench -p harvest-stock --bench reserve`.

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

static SEQ: AtomicU64 = AtomicU64::new(0);

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

fn request(sale_id: &str) -> ReserveRequest {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
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

/// Runs `total` reservations spread over `CALLERS` concurrent tasks; returns the time.
async fn storm(
    engine: Arc<dyn StockEngine>,
    sale_id: Arc<str>,
    total: u64,
    expect_held: bool,
) -> Duration {
    let started = Instant::now();
    let tasks: Vec<_> = (0..CALLERS)
        .map(|c| {
            let (engine, sale_id) = (engine.clone(), sale_id.clone());
            let share = total / CALLERS + u64::from(c < total % CALLERS);
            tokio::spawn(async move {
                for _ in 0..share {
                    let out = engine.reserve(request(&sale_id)).await;
                    let ok = match out {
                        Ok(ReserveOutcome::Held(_)) => expect_held,
                        Ok(ReserveOutcome::Rejected(_)) => !expect_held,
                        Err(_) => false,
                    };
                    assert!(ok, "unexpected outcome in benchmark");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("caller task");
    }
    started.elapsed()
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

    let engine: Arc<dyn StockEngine> = Arc::new(MemoryEngine::new());
    let spec = sale(harvest_stock::MAX_STOCK);
    rt.block_on(engine.create_sale(&spec)).expect("create sale");
    let id: Arc<str> = spec.sale_id.clone().into();
    g.bench_function("reserve", |b| {
        b.iter_custom(|iters| rt.block_on(storm(engine.clone(), id.clone(), iters, true)));
    });

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
    let id: Arc<str> = spec.sale_id.clone().into();
    rt.block_on(async {
        engine.create_sale(&spec).await.expect("create sale");
        engine
            .reserve(request(&id))
            .await
            .expect("take the last unit");
        engine
            .reserve(request(&id))
            .await
            .expect("raise the sold-out flag");
    });
    g.bench_function("sold_out_local", |b| {
        b.iter_custom(|iters| rt.block_on(storm(engine.clone(), id.clone(), iters, false)));
    });
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
    // Short-lived records: the benchmark leaves little behind.
    cfg.idempotency_ttl = Duration::from_secs(60);
    cfg.hold_index_ttl = Duration::from_secs(60);
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
    let mut made = Vec::new();
    for (name, e) in [("reserve_direct", direct), ("reserve_coalesced", coalesced)] {
        let spec = sale(harvest_stock::MAX_STOCK);
        rt.block_on(e.create_sale(&spec)).expect("create sale");
        let id: Arc<str> = spec.sale_id.clone().into();
        made.push(spec.sale_id);
        g.bench_function(name, |b| {
            b.iter_custom(|iters| rt.block_on(storm(e.clone(), id.clone(), iters, true)));
        });
    }
    g.finish();
    // Drop what the benchmark made (idempotency records and the index expire by themselves).
    rt.block_on(async {
        let Ok(client) = redis::Client::open(engine.config().url.as_str()) else {
            return;
        };
        if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
            for sale_id in &made {
                let _: redis::RedisResult<i64> = redis::cmd("DEL")
                    .arg(engine.sale_keys(sale_id))
                    .query_async(&mut conn)
                    .await;
            }
            let _: redis::RedisResult<i64> = redis::cmd("DEL")
                .arg(format!("{}stock:sales", engine.config().key_prefix))
                .query_async(&mut conn)
                .await;
        }
    });
}

criterion_group!(benches, memory, redis);
criterion_main!(benches);
