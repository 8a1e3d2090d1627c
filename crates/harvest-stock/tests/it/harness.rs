//! Engines under test, and helpers to build sales and requests.
//!
//! `HARVEST_TEST_BACKEND=servers` runs the Redis variants against the server named by
//! `HARVEST_TEST_REDIS_URL`, and the Redis Cluster variants against a local cluster of
//! three masters each test starts (or the one named by `HARVEST_TEST_REDIS_CLUSTER_URL`,
//! comma-separated node URLs); `embedded` (the default) runs only in-process engines.
//! Every test gets its own key prefix and random sale ids, so tests share one Redis
//! without seeing each other (the sweeper walks only its own prefix).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use harvest_stock::{
    Coalescer, CoalescerConfig, Hold, MemoryEngine, RedisConfig, RedisConn, RedisEngine,
    ReserveOutcome, ReserveRequest, SaleCounts, SaleInfo, SaleRecord, SaleSpec, StockEngine,
    StockError,
};

/// A fixed, arbitrary "now" for sales in tests (ms since the epoch).
pub const T0: i64 = 1_764_420_000_000;

pub fn servers_backend() -> bool {
    match std::env::var("HARVEST_TEST_BACKEND").as_deref() {
        Ok("servers") => true,
        Ok("embedded") | Err(_) => false,
        Ok(other) => panic!("HARVEST_TEST_BACKEND={other:?}: expected embedded or servers"),
    }
}

/// The Redis to test against, when the backend is `servers`.
pub fn redis_url() -> Option<String> {
    if !servers_backend() {
        return None;
    }
    Some(
        std::env::var("HARVEST_TEST_REDIS_URL")
            .expect("HARVEST_TEST_BACKEND=servers needs HARVEST_TEST_REDIS_URL"),
    )
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

/// A Redis engine on a fresh key prefix, or `None` on the embedded backend.
pub fn redis_engine() -> Option<Arc<RedisEngine>> {
    redis_engine_with(|_| {})
}

pub fn redis_engine_with(adjust: impl FnOnce(&mut RedisConfig)) -> Option<Arc<RedisEngine>> {
    let url = redis_url()?;
    let mut cfg = RedisConfig::new(url);
    cfg.key_prefix = format!("{}:", unique("t"));
    adjust(&mut cfg);
    Some(Arc::new(
        RedisEngine::new(cfg).expect("redis engine builds"),
    ))
}

/// A second engine sharing `engine`'s Redis and key prefix (another node).
pub fn redis_peer(engine: &RedisEngine) -> Arc<RedisEngine> {
    Arc::new(RedisEngine::new(engine.config().clone()).expect("redis engine builds"))
}

/// A raw connection for poking at keys behind an engine's back.
pub async fn raw_redis() -> redis::aio::MultiplexedConnection {
    let url = redis_url().expect("servers backend");
    redis::Client::open(url)
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to test redis")
}

enum Backing {
    Memory(Arc<MemoryEngine>),
    Redis(Arc<RedisEngine>),
}

/// One engine under test.
pub struct Harness {
    pub engine: Arc<dyn StockEngine>,
    backing: Backing,
    /// The Redis Cluster this test started, stopped with the harness.
    _cluster: Option<Arc<LocalCluster>>,
}

impl Harness {
    pub fn memory() -> Self {
        let m = Arc::new(MemoryEngine::new());
        Self {
            engine: m.clone(),
            backing: Backing::Memory(m),
            _cluster: None,
        }
    }

    pub fn redis() -> Option<Self> {
        let r = redis_engine()?;
        Some(Self {
            engine: r.clone(),
            backing: Backing::Redis(r),
            _cluster: None,
        })
    }

    /// A Redis engine on a Redis Cluster, or `None` on the embedded backend.
    pub async fn redis_cluster() -> Option<Self> {
        if !servers_backend() {
            return None;
        }
        let (url, cluster) = match std::env::var("HARVEST_TEST_REDIS_CLUSTER_URL") {
            Ok(url) if !url.trim().is_empty() => (url, None),
            _ => {
                let c = Arc::new(LocalCluster::start().await);
                (c.url(), Some(c))
            }
        };
        let mut cfg = RedisConfig::new(url);
        cfg.key_prefix = format!("{}:", unique("t"));
        let r = Arc::new(RedisEngine::new(cfg).expect("redis engine builds"));
        Some(Self {
            engine: r.clone(),
            backing: Backing::Redis(r),
            _cluster: cluster,
        })
    }

    /// The same backing engine behind a [`Coalescer`].
    pub fn coalesced(self) -> Self {
        let c = Coalescer::new(self.engine, CoalescerConfig::default());
        Self {
            engine: Arc::new(c),
            backing: self.backing,
            _cluster: self._cluster,
        }
    }

    /// Whether a sale the engine has no state for answers `SaleStateLost` (Redis cannot
    /// tell a lost sale from an unknown one) rather than `NotFound`.
    pub fn reports_lost_state(&self) -> bool {
        matches!(self.backing, Backing::Redis(_))
    }

    /// Makes the engine lose a sale's state: the memory engine forgets it; for Redis the
    /// sale's keys are deleted, as a restart without persistence would.
    pub async fn lose_sale(&self, sale_id: &str) {
        match &self.backing {
            Backing::Memory(m) => assert!(m.forget_sale(sale_id)),
            Backing::Redis(r) => {
                // The engine's own server or cluster.
                let mut conn = RedisConn::new_lazy(&r.config().url, Duration::from_secs(5))
                    .expect("redis url");
                let n: i64 = redis::cmd("DEL")
                    .arg(r.sale_keys(sale_id))
                    .query_async(&mut conn)
                    .await
                    .expect("DEL sale keys");
                assert!(n > 0, "sale keys existed");
            }
        }
    }
}

pub fn spec(stock: u64, per_user_limit: u32) -> SaleSpec {
    SaleSpec {
        sale_id: unique("sale"),
        stock,
        per_user_limit,
        hold_ttl: Duration::from_secs(60),
        starts_at_ms: T0,
        ends_at_ms: T0 + 3_600_000,
    }
}

pub async fn new_sale(e: &dyn StockEngine, stock: u64, per_user_limit: u32) -> SaleSpec {
    let s = spec(stock, per_user_limit);
    e.create_sale(&s).await.expect("create sale");
    s
}

pub fn req(sale: &SaleSpec, user: &str, quantity: u32, key: &str) -> ReserveRequest {
    req_at(sale, user, quantity, key, T0 + 1)
}

pub fn req_at(
    sale: &SaleSpec,
    user: &str,
    quantity: u32,
    key: &str,
    now_ms: i64,
) -> ReserveRequest {
    ReserveRequest {
        sale_id: sale.sale_id.clone(),
        user_id: user.to_owned(),
        quantity,
        idempotency_key: key.to_owned(),
        request_fingerprint: format!("quantity={quantity}"),
        hold_id: unique("hold"),
        now_ms,
    }
}

/// Reserves and expects a hold.
pub async fn hold(e: &dyn StockEngine, r: ReserveRequest) -> Hold {
    match e.reserve(r).await.expect("reserve") {
        ReserveOutcome::Held(h) => h,
        other => panic!("expected a hold, got {other:?}"),
    }
}

pub async fn counts(e: &dyn StockEngine, sale: &SaleSpec) -> SaleCounts {
    let c = e.counts(&sale.sale_id).await.expect("counts");
    assert!(c.is_consistent(), "remaining + held + sold != stock: {c:?}");
    c
}

/// Every hold of a sale, in position order.
pub async fn all_holds(e: &dyn StockEngine, sale_id: &str) -> Vec<Hold> {
    let mut out = Vec::new();
    loop {
        let after = out.last().map_or(0, |h: &Hold| h.position);
        let page = e
            .allocations(sale_id, after, 100)
            .await
            .expect("allocations");
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

/// Wraps an engine and counts the calls that reach it.
pub struct Counting {
    pub inner: Arc<dyn StockEngine>,
    pub reserve_calls: AtomicU64,
    pub batch_calls: AtomicU64,
    pub batch_sizes: parking_lot::Mutex<Vec<usize>>,
}

impl Counting {
    pub fn new(inner: Arc<dyn StockEngine>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            reserve_calls: AtomicU64::new(0),
            batch_calls: AtomicU64::new(0),
            batch_sizes: parking_lot::Mutex::new(Vec::new()),
        })
    }

    /// Calls that reached the engine with reservations.
    pub fn engine_calls(&self) -> u64 {
        self.reserve_calls.load(Ordering::SeqCst) + self.batch_calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl StockEngine for Counting {
    async fn create_sale(&self, spec: &SaleSpec) -> Result<SaleCounts, StockError> {
        self.inner.create_sale(spec).await
    }
    async fn end_sale(&self, sale_id: &str, now_ms: i64) -> Result<SaleCounts, StockError> {
        self.inner.end_sale(sale_id, now_ms).await
    }
    async fn sale(&self, sale_id: &str) -> Result<SaleInfo, StockError> {
        self.inner.sale(sale_id).await
    }
    async fn reserve(&self, req: ReserveRequest) -> Result<ReserveOutcome, StockError> {
        self.reserve_calls.fetch_add(1, Ordering::SeqCst);
        self.inner.reserve(req).await
    }
    async fn reserve_batch(
        &self,
        reqs: Vec<ReserveRequest>,
    ) -> Vec<Result<ReserveOutcome, StockError>> {
        self.batch_calls.fetch_add(1, Ordering::SeqCst);
        self.batch_sizes.lock().push(reqs.len());
        self.inner.reserve_batch(reqs).await
    }
    async fn release(&self, hold_id: &str, user_id: &str, now_ms: i64) -> Result<Hold, StockError> {
        self.inner.release(hold_id, user_id, now_ms).await
    }
    async fn confirm_paid(&self, hold_id: &str, now_ms: i64) -> Result<Hold, StockError> {
        self.inner.confirm_paid(hold_id, now_ms).await
    }
    async fn expire_due(&self, now_ms: i64, max: usize) -> Result<Vec<Hold>, StockError> {
        self.inner.expire_due(now_ms, max).await
    }
    async fn counts(&self, sale_id: &str) -> Result<SaleCounts, StockError> {
        self.inner.counts(sale_id).await
    }
    async fn hold(&self, hold_id: &str) -> Result<Hold, StockError> {
        self.inner.hold(hold_id).await
    }
    async fn allocations(
        &self,
        sale_id: &str,
        after_position: u64,
        limit: usize,
    ) -> Result<Vec<Hold>, StockError> {
        self.inner.allocations(sale_id, after_position, limit).await
    }
    async fn restore_sale(&self, record: SaleRecord) -> Result<SaleCounts, StockError> {
        self.inner.restore_sale(record).await
    }
    async fn ping(&self) -> Result<(), StockError> {
        self.inner.ping().await
    }
}

/// A local Redis Cluster of three masters (no replicas) on free ports, in a temporary
/// folder, joined with `redis-cli --cluster create`; stopped when dropped.
pub struct LocalCluster {
    _dir: tempfile::TempDir,
    nodes: Vec<(u16, std::process::Child)>,
}

impl LocalCluster {
    pub async fn start() -> Self {
        use std::process::{Command, Stdio};
        let dir = tempfile::tempdir().expect("temp dir");
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port()
        };
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let (port, bus) = (free(), free());
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus.to_string(),
                ])
                .arg("--cluster-config-file")
                .arg(dir.path().join(format!("nodes-{port}.conf")))
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server runs");
            nodes.push((port, child));
        }
        let cluster = Self { _dir: dir, nodes };
        for (port, _) in &cluster.nodes {
            cluster.wait_for(*port, &["PING"], "PONG").await;
        }
        let mut create = tokio::process::Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for (port, _) in &cluster.nodes {
            create.arg(format!("127.0.0.1:{port}"));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap_or_else(|e| {
                panic!("redis-cli --cluster create cannot run ({e}): install redis-tools")
            });
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        for (port, _) in &cluster.nodes {
            cluster
                .wait_for(*port, &["CLUSTER", "INFO"], "cluster_state:ok")
                .await;
        }
        cluster
    }

    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|(port, _)| format!("redis://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until the node on `port` answers `args` with a reply containing `want`.
    async fn wait_for(&self, port: u16, args: &[&str], want: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("url");
        loop {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                let mut cmd = redis::cmd(args[0]);
                for a in &args[1..] {
                    cmd.arg(*a);
                }
                let reply: redis::RedisResult<String> = cmd.query_async(&mut c).await;
                if reply.is_ok_and(|r| r.contains(want)) {
                    return;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "redis cluster node {port} never answered {want}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.nodes {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
