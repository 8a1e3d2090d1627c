//! The Redis engine: every decision is one Lua script call on one sale's keys.
//!
//! # Key layout
//!
//! All keys of a sale share the hash tag `{s:<sale_id>}`, so a sale lives in one slot
//! and its scripts are legal on Redis Cluster (`P` is the configurable key prefix):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P{s:ID}:m` | hash | the marker and counters: `stock limit ttl start end ended rem held sold pos`, and `rpos` (the last restored position) |
//! | `P{s:ID}:u` | hash | user → units held plus bought (the per-user limit) |
//! | `P{s:ID}:h` | hash | hold id → packed hold (`status qty pos created expires user`) |
//! | `P{s:ID}:x` | zset | held hold ids by `expires_at` (the expiry index) |
//! | `P{s:ID}:a` | hash | position → hold id of every hold made by a reservation (the allocation log; its positions are dense, after the restored ones) |
//! | `P{s:ID}:r` | zset | restored hold ids by position (the allocation log up to the meta's `rpos`) |
//! | `P{s:ID}:i` | hash | idempotency records: `<len(user)>:<user>:<key>` → fingerprint and outcome; the hash expires 24 h after its last write |
//! | `Pstock:sales` | set | sales that may have held holds (what the sweeper visits) |
//! | `P{hidx:N}:cur`, `P{hidx:N}:old` | hash | hold id → sale (lookups by hold id), the current and previous generation of bucket `N` |
//! | `P{hidx:N}:at` | string | when bucket `N` last rotated (ms) |
//!
//! The hold index is split in 16 buckets by an FNV-1a hash of the hold id (so every
//! node finds an id in the same bucket); a batch of reservations writes its holds with
//! one `HSET` per bucket. The sweeper ([`StockEngine::expire_due`]) rotates a bucket
//! once `hold_index_ttl` has passed since its last rotation: the previous generation is
//! unlinked (freed in the background) and the current one becomes the previous, so a
//! hold id stays findable for at least `hold_index_ttl` and less than twice that (plus
//! the time between sweeps; an engine asks the buckets at most every eighth of the TTL).
//!
//! A sale joins `Pstock:sales` before any hold is made (create, restore, and around
//! every reservation call); the sweeper drops it once it has no held hold, then looks
//! again and puts it back if a reservation slipped in between.
//!
//! # Redis Cluster
//!
//! With several node URLs the engine talks to a Redis Cluster through [`RedisConn`].
//! Every script's keys share one hash tag (a sale's `{s:ID}` or an index bucket's
//! `{hidx:N}`), so each script runs on the one node that owns them. Nothing indexes
//! holds across sales: each sale has its own expiry zset, and the sweeper visits the
//! sales listed in `Pstock:sales` one script call each. That set and the index buckets
//! live in other slots than the sale; they are written with plain commands beside the
//! scripts (on a cluster, a reservation registers its sale with the sweeper before its
//! script runs, in its own round trip, instead of in the same pipeline).
//!
//! The meta hash doubles as the sale's marker: when it is missing (Redis restarted
//! empty, or the keys were deleted) every call on the sale answers
//! [`StockError::SaleStateLost`], and the caller rebuilds the sale with
//! [`StockEngine::restore_sale`].
//!
//! # Scripts
//!
//! `reserve` (a whole batch per call), `peek` (read-only replay lookup), `release`,
//! `confirm`, `expire`, `create`, `end`, `allocations`, `restore` and `rotate` (the
//! hold index), sent with
//! `EVALSHA` and reloaded on `NOSCRIPT` (after a restart or failover).
//!
//! # Failures
//!
//! Every call is bounded by a timeout. A call that times out or loses its connection
//! answers [`StockError::Unavailable`]. A reservation whose reply was lost is settled by
//! reading its idempotency records back on the same connection (so after the original
//! command): a recorded outcome is returned, anything else stays `Unavailable`; nothing
//! is guessed.

use std::future::Future;
use std::io::Write as _;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use redis::{ErrorKind, RedisError, RedisWrite, Script, ServerErrorKind, ToRedisArgs, Value};
use tracing::{debug, warn};

mod conn;

pub use conn::{RedisConn, redis_urls};

use crate::engine::StockEngine;
use crate::error::StockError;
use crate::types::{
    Hold, HoldStatus, IDEMPOTENCY_TTL, Reject, ReserveOutcome, ReserveRequest, SaleCounts,
    SaleInfo, SaleRecord, SaleSpec,
};

const PRELUDE: &str = include_str!("lua/prelude.lua");

/// Settings of a [`RedisEngine`].
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://host:port[/db]`, or several comma-separated node URLs of one Redis
    /// Cluster (see [`RedisConn`]).
    pub url: String,
    /// Bound on every call (connect included). Default 1 s.
    pub timeout: Duration,
    /// Prepended to every key. Default `hv:`.
    pub key_prefix: String,
    /// Requests per reservation script call (longer batches are split). Default 256.
    pub max_script_batch: usize,
    /// How long idempotency records live. Default 24 h.
    pub idempotency_ttl: Duration,
    /// How long hold ids stay findable (the hold-id → sale index) at least; they go
    /// within twice this, as the sweeper rotates the index. Default 7 days.
    pub hold_index_ttl: Duration,
}

impl RedisConfig {
    /// The defaults for a server URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            timeout: Duration::from_secs(1),
            key_prefix: "hv:".into(),
            max_script_batch: 256,
            idempotency_ttl: IDEMPOTENCY_TTL,
            hold_index_ttl: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

struct Scripts {
    reserve: Script,
    peek: Script,
    release: Script,
    confirm: Script,
    expire: Script,
    create: Script,
    end: Script,
    allocations: Script,
    restore: Script,
    rotate: Script,
}

impl Scripts {
    fn new() -> Self {
        let s = |body: &str| Script::new(&format!("{PRELUDE}\n{body}"));
        Self {
            reserve: s(include_str!("lua/reserve.lua")),
            peek: s(include_str!("lua/peek.lua")),
            release: s(include_str!("lua/release.lua")),
            confirm: s(include_str!("lua/confirm.lua")),
            expire: s(include_str!("lua/expire.lua")),
            create: s(include_str!("lua/create.lua")),
            end: s(include_str!("lua/end.lua")),
            allocations: s(include_str!("lua/allocations.lua")),
            restore: s(include_str!("lua/restore.lua")),
            rotate: s(include_str!("lua/rotate.lua")),
        }
    }
}

/// The fixed keys of one sale.
struct SaleKeys {
    meta: String,
    usage: String,
    holds: String,
    expiry: String,
    alloc: String,
    restored: String,
    idem: String,
}

/// Buckets of the hold index. Fixed: every node must find an id in the same bucket.
const INDEX_BUCKETS: usize = 16;

/// The index bucket of a hold id (FNV-1a, the same in every process and version).
fn index_bucket(hold_id: &str) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in hold_id.as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // The remainder is below INDEX_BUCKETS.
    (h % INDEX_BUCKETS as u64) as usize
}

/// The keys of one bucket of the hold index (they share a hash tag).
struct IndexBucket {
    cur: String,
    old: String,
    at: String,
}

/// The Redis-backed [`StockEngine`] (one server, or one Cluster slot per sale).
pub struct RedisEngine {
    conn: RedisConn,
    cfg: RedisConfig,
    scripts: Scripts,
    index: Vec<IndexBucket>,
    /// When this engine last asked the buckets to rotate (`i64::MIN`: never).
    index_checked_ms: AtomicI64,
    sweep_cursor: AtomicUsize,
}

impl RedisEngine {
    /// Rebuilds a sale from its record; with `only_if_missing`, atomically refuses
    /// (`None`) when the sale's marker exists.
    async fn restore(
        &self,
        record: SaleRecord,
        only_if_missing: bool,
    ) -> Result<Option<SaleCounts>, StockError> {
        let counts = record.validate()?;
        let spec = &record.spec;
        let sale_id = spec.sale_id.as_str();
        self.query(redis::cmd("SADD").arg(self.sales_set()).arg(sale_id))
            .await?;
        let mut usage: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
        for (user, units) in &record.sold_by_user {
            if *units > 0 {
                *usage.entry(user.as_str()).or_default() += units;
            }
        }
        let mut last_position = 0;
        for h in &record.holds {
            last_position = last_position.max(h.position);
            if h.status == HoldStatus::Held {
                *usage.entry(h.user_id.as_str()).or_default() += u64::from(h.quantity);
            }
        }
        let k = self.keys(sale_id);
        let mut inv = self.scripts.restore.prepare_invoke();
        inv.key(&k.meta)
            .key(&k.usage)
            .key(&k.holds)
            .key(&k.expiry)
            .key(&k.alloc)
            .key(&k.restored);
        inv.arg(spec.stock)
            .arg(spec.per_user_limit)
            .arg(spec.hold_ttl_ms())
            .arg(spec.starts_at_ms)
            .arg(spec.ends_at_ms)
            .arg(u8::from(record.ended))
            .arg(counts.remaining)
            .arg(counts.held)
            .arg(counts.sold)
            .arg(last_position)
            .arg(record.holds.len());
        for h in &record.holds {
            inv.arg(&h.hold_id).arg(pack_hold(h));
        }
        inv.arg(usage.len());
        for (user, units) in &usage {
            inv.arg(*user).arg(*units);
        }
        inv.arg(u8::from(only_if_missing));
        let mut conn = self.conn.clone();
        let answer = self.run(inv.invoke_async::<Value>(&mut conn)).await?;
        if matches!(&answer, Value::Array(items) if items.first().and_then(text).as_deref() == Some("exists"))
        {
            return Ok(None);
        }
        // Registered again after the rebuild too: a sweep that found the sale lost
        // between the first registration and the rebuild has dropped it from the set.
        self.query(redis::cmd("SADD").arg(self.sales_set()).arg(sale_id))
            .await?;
        // Make every restored hold findable by id again.
        for chunk in record.holds.chunks(4096) {
            let mut pipe = redis::Pipeline::with_capacity(INDEX_BUCKETS);
            self.index_holds(&mut pipe, sale_id, chunk.iter().map(|h| h.hold_id.as_str()));
            self.pipeline(&pipe).await?;
        }
        Ok(Some(counts))
    }

    /// Builds the engine. The connection is made on first use (and remade after
    /// failures), so this succeeds while Redis is down; [`StockEngine::ping`] checks it.
    /// Must be called within a Tokio runtime (the connection manager runs a task).
    pub fn new(cfg: RedisConfig) -> Result<Self, StockError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(StockError::Invalid(
                "RedisEngine::new must be called within a Tokio runtime".into(),
            ));
        }
        let conn = RedisConn::new_lazy(&cfg.url, cfg.timeout)
            .map_err(|e| StockError::Invalid(format!("redis url: {e}")))?;
        let index = (0..INDEX_BUCKETS)
            .map(|n| {
                let base = format!("{}{{hidx:{n}}}", cfg.key_prefix);
                IndexBucket {
                    cur: format!("{base}:cur"),
                    old: format!("{base}:old"),
                    at: format!("{base}:at"),
                }
            })
            .collect();
        Ok(Self {
            conn,
            cfg,
            scripts: Scripts::new(),
            index,
            index_checked_ms: AtomicI64::new(i64::MIN),
            sweep_cursor: AtomicUsize::new(0),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &RedisConfig {
        &self.cfg
    }

    /// The fixed keys of a sale (everything but its idempotency records). Deleting them
    /// is what losing the sale's state looks like; tests and tools use this.
    pub fn sale_keys(&self, sale_id: &str) -> Vec<String> {
        let k = self.keys(sale_id);
        vec![k.meta, k.usage, k.holds, k.expiry, k.alloc, k.restored]
    }

    fn keys(&self, sale_id: &str) -> SaleKeys {
        let base = format!("{}{{s:{sale_id}}}", self.cfg.key_prefix);
        SaleKeys {
            meta: format!("{base}:m"),
            usage: format!("{base}:u"),
            holds: format!("{base}:h"),
            expiry: format!("{base}:x"),
            alloc: format!("{base}:a"),
            restored: format!("{base}:r"),
            idem: format!("{base}:i"),
        }
    }

    fn sales_set(&self) -> String {
        format!("{}stock:sales", self.cfg.key_prefix)
    }

    /// Adds `HSET`s that index `hold_ids` (all of `sale_id`), one per bucket.
    fn index_holds<'a>(
        &self,
        pipe: &mut redis::Pipeline,
        sale_id: &str,
        hold_ids: impl Iterator<Item = &'a str>,
    ) {
        let mut buckets: Vec<Option<redis::Cmd>> = (0..INDEX_BUCKETS).map(|_| None).collect();
        for id in hold_ids {
            let b = index_bucket(id);
            buckets[b]
                .get_or_insert_with(|| {
                    let mut c = redis::cmd("HSET");
                    c.arg(&self.index[b].cur);
                    c
                })
                .arg(id)
                .arg(sale_id);
        }
        for cmd in buckets.into_iter().flatten() {
            pipe.add_command(cmd).ignore();
        }
    }

    /// Rotates the buckets of the hold index that are due (see the module docs); asks
    /// at most every eighth of the TTL.
    async fn rotate_index(&self, now_ms: i64) -> Result<(), StockError> {
        let ttl_ms = i64::try_from(self.cfg.hold_index_ttl.as_millis())
            .unwrap_or(i64::MAX)
            .max(1);
        let checked = self.index_checked_ms.load(Ordering::Relaxed);
        if checked != i64::MIN && now_ms.abs_diff(checked) < (ttl_ms / 8).max(1).unsigned_abs() {
            return Ok(());
        }
        self.index_checked_ms.store(now_ms, Ordering::Relaxed);
        let mut pipe = redis::Pipeline::with_capacity(INDEX_BUCKETS);
        for b in &self.index {
            let mut inv = self.scripts.rotate.prepare_invoke();
            inv.key(&b.cur)
                .key(&b.old)
                .key(&b.at)
                .arg(now_ms)
                .arg(ttl_ms);
            pipe.invoke_script(&inv).ignore();
        }
        self.pipeline_with_script(&pipe, &self.scripts.rotate)
            .await
            .map(|_| ())
    }

    /// Runs one Redis future under the configured timeout.
    async fn run<T>(
        &self,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StockError> {
        match tokio::time::timeout(self.cfg.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(map_err(e)),
            Err(_) => Err(StockError::Unavailable(format!(
                "redis call timed out after {:?}",
                self.cfg.timeout
            ))),
        }
    }

    async fn query(&self, cmd: &redis::Cmd) -> Result<Value, StockError> {
        let mut conn = self.conn.clone();
        self.run(cmd.query_async::<Value>(&mut conn)).await
    }

    async fn pipeline(&self, pipe: &redis::Pipeline) -> Result<Value, StockError> {
        let mut conn = self.conn.clone();
        self.run(pipe.query_async::<Value>(&mut conn)).await
    }

    /// Which sale a hold belongs to.
    async fn sale_of_hold(&self, hold_id: &str) -> Result<String, StockError> {
        let b = &self.index[index_bucket(hold_id)];
        let mut pipe = redis::pipe();
        pipe.cmd("HGET").arg(&b.cur).arg(hold_id);
        pipe.cmd("HGET").arg(&b.old).arg(hold_id);
        let v = self.pipeline(&pipe).await?;
        array(v)
            .unwrap_or_default()
            .iter()
            .find_map(text)
            .ok_or_else(|| StockError::HoldNotFound(hold_id.to_owned()))
    }

    /// Reserves requests of one sale (already validated, at most one script batch).
    async fn reserve_chunk(
        &self,
        reqs: Vec<ReserveRequest>,
    ) -> Vec<Result<ReserveOutcome, StockError>> {
        let Some(first) = reqs.first() else {
            return Vec::new();
        };
        let sale_id = first.sale_id.clone();
        let k = self.keys(&sale_id);
        // EVALSHA built in one buffer (see `lua/reserve.lua` for the argument layout),
        // sized up front: two runs hold the user, and numbers take at most 20 bytes.
        let bytes = reqs
            .iter()
            .map(|r| {
                2 * r.user_id.len()
                    + r.idempotency_key.len()
                    + r.request_fingerprint.len()
                    + r.hold_id.len()
                    + 80
            })
            .sum::<usize>()
            + 7 * k.meta.len()
            + 128;
        let mut eval = redis::Cmd::with_capacity(11 + 6 * reqs.len(), bytes);
        eval.arg("EVALSHA")
            .arg(self.scripts.reserve.get_hash())
            .arg(6)
            .arg(&k.meta)
            .arg(&k.usage)
            .arg(&k.holds)
            .arg(&k.expiry)
            .arg(&k.alloc)
            .arg(&k.idem)
            .arg(reqs.len())
            .arg(self.cfg.idempotency_ttl.as_secs().max(1));
        for r in &reqs {
            eval.arg(IdemField(&r.user_id, &r.idempotency_key));
        }
        for r in &reqs {
            eval.arg(&r.user_id);
        }
        for r in &reqs {
            eval.arg(r.quantity);
        }
        for r in &reqs {
            eval.arg(FingerprintPrefix(&r.request_fingerprint));
        }
        for r in &reqs {
            eval.arg(&r.hold_id);
        }
        for r in &reqs {
            eval.arg(r.now_ms);
        }
        // Register the sale with the sweeper before (and, below, after) the script: a
        // hold is never left outside the set the sweeper walks. On one server both go
        // in one pipeline; on a cluster the set and the sale live in different slots
        // (a pipeline does not order them), so the registration comes first on its own.
        let mut pipe = redis::pipe();
        if self.conn.is_cluster() {
            let mut sadd = redis::cmd("SADD");
            sadd.arg(self.sales_set()).arg(&sale_id);
            if let Err(e) = self.query(&sadd).await {
                return reqs.iter().map(|_| Err(e.clone())).collect();
            }
        } else {
            pipe.cmd("SADD")
                .arg(self.sales_set())
                .arg(&sale_id)
                .ignore();
        }
        pipe.add_command(eval);
        let reply = match self
            .pipeline_with_script(&pipe, &self.scripts.reserve)
            .await
        {
            Ok(v) => first_of(v),
            Err(e) if e.is_transient() => {
                debug!(%sale_id, error = %e, "reservation reply lost; reading idempotency records");
                return self.settle_ambiguous(&k, &reqs, e).await;
            }
            Err(e) => return reqs.iter().map(|_| Err(e.clone())).collect(),
        };
        let out = match parse_reserve_reply(reply, reqs) {
            Ok(out) => out,
            Err((e, n)) => return (0..n).map(|_| Err(e.clone())).collect(),
        };
        self.after_reserve(&sale_id, out).await
    }

    /// Runs a pipeline that ends with a script, loading the script when Redis lost it.
    async fn pipeline_with_script(
        &self,
        pipe: &redis::Pipeline,
        script: &Script,
    ) -> Result<Value, StockError> {
        let mut conn = self.conn.clone();
        let first =
            tokio::time::timeout(self.cfg.timeout, pipe.query_async::<Value>(&mut conn)).await;
        match first {
            Ok(Err(e)) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                debug!("script cache empty; loading script");
                self.run(script.load_async(&mut conn)).await?;
                self.pipeline(pipe).await
            }
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(map_err(e)),
            Err(_) => Err(StockError::Unavailable(format!(
                "redis call timed out after {:?}",
                self.cfg.timeout
            ))),
        }
    }

    /// Writes the hold index of new and replayed holds and re-registers the sale with
    /// the sweeper. Held outcomes whose index could not be written answer
    /// `Unavailable`: a retry with the same key replays the hold and writes it.
    async fn after_reserve(
        &self,
        sale_id: &str,
        mut out: Vec<Result<ReserveOutcome, StockError>>,
    ) -> Vec<Result<ReserveOutcome, StockError>> {
        let held: Vec<usize> = out
            .iter()
            .enumerate()
            .filter(|(_, r)| matches!(r, Ok(ReserveOutcome::Held(_))))
            .map(|(i, _)| i)
            .collect();
        if held.is_empty() {
            return out;
        }
        let mut pipe = redis::Pipeline::with_capacity(INDEX_BUCKETS + 1);
        pipe.cmd("SADD").arg(self.sales_set()).arg(sale_id).ignore();
        let ids = held.iter().filter_map(|&i| match &out[i] {
            Ok(ReserveOutcome::Held(h)) => Some(h.hold_id.as_str()),
            _ => None,
        });
        self.index_holds(&mut pipe, sale_id, ids);
        if let Err(e) = self.pipeline(&pipe).await {
            warn!(sale_id, error = %e, "could not index new holds; answering unavailable");
            for i in held {
                out[i] = Err(e.clone());
            }
        }
        out
    }

    /// A reservation call failed after it may have been sent: read the idempotency
    /// records back. Requests with a recorded outcome get it; the others stay unknown.
    async fn settle_ambiguous(
        &self,
        k: &SaleKeys,
        reqs: &[ReserveRequest],
        cause: StockError,
    ) -> Vec<Result<ReserveOutcome, StockError>> {
        let sale_id = reqs.first().map(|r| r.sale_id.clone()).unwrap_or_default();
        if matches!(cause, StockError::SaleStateLost { .. }) {
            return reqs.iter().map(|_| Err(cause.clone())).collect();
        }
        let mut inv = self.scripts.peek.prepare_invoke();
        inv.key(&k.holds).key(&k.idem);
        for r in reqs {
            inv.arg(IdemField(&r.user_id, &r.idempotency_key))
                .arg(&r.request_fingerprint);
        }
        let mut conn = self.conn.clone();
        let reply = match self.run(inv.invoke_async::<Value>(&mut conn)).await {
            Ok(v) => v,
            Err(e) => {
                warn!(sale_id, error = %e, "could not settle an ambiguous reservation");
                return reqs.iter().map(|_| Err(cause.clone())).collect();
            }
        };
        let Some(items) = array(reply).filter(|a| a.len() == reqs.len()) else {
            return reqs
                .iter()
                .map(|_| Err(StockError::Backend("malformed peek reply".into())))
                .collect();
        };
        let out = items
            .into_iter()
            .zip(reqs)
            .map(|(item, r)| match parse_reserve_item(item, r) {
                Ok(Some(o)) => Ok(o),
                Ok(None) => Err(cause.clone()),
                Err(e) => Err(e),
            })
            .collect();
        self.after_reserve(&sale_id, out).await
    }

    async fn sweep_sale(
        &self,
        sale_id: &str,
        now_ms: i64,
        max: usize,
        out: &mut Vec<Hold>,
    ) -> Result<(), StockError> {
        let k = self.keys(sale_id);
        let mut inv = self.scripts.expire.prepare_invoke();
        inv.key(&k.meta)
            .key(&k.usage)
            .key(&k.holds)
            .key(&k.expiry)
            .arg(now_ms)
            .arg(max);
        let mut conn = self.conn.clone();
        let v = self.run(inv.invoke_async::<Value>(&mut conn)).await?;
        let mut items = array(v).unwrap_or_default().into_iter();
        match items.next().and_then(|t| text(&t)).as_deref() {
            Some("lost") => {
                warn!(
                    sale_id,
                    "sale state missing in redis; sweeper forgets it until restored"
                );
                self.query(redis::cmd("SREM").arg(self.sales_set()).arg(sale_id))
                    .await?;
                return Ok(());
            }
            Some("ok") => {}
            _ => return Err(StockError::Backend("malformed expire reply".into())),
        }
        let left = items
            .next()
            .and_then(|v| text(&v))
            .and_then(|s| s.parse::<u64>().ok());
        for pair in array(items.next().unwrap_or(Value::Nil))
            .unwrap_or_default()
            .chunks(2)
        {
            if let [id, hv] = pair {
                let id = text(id).ok_or_else(|| StockError::Backend("malformed hold id".into()))?;
                out.push(parse_hold(&id, sale_id, &text(hv).unwrap_or_default())?);
            }
        }
        if left == Some(0) {
            // Leave the sweep set, then look again: a reservation that slipped in
            // between re-registers itself after its script, or we put the sale back.
            self.query(redis::cmd("SREM").arg(self.sales_set()).arg(sale_id))
                .await?;
            let n = self.query(redis::cmd("ZCARD").arg(&k.expiry)).await?;
            if int(&n).unwrap_or(1) > 0 {
                self.query(redis::cmd("SADD").arg(self.sales_set()).arg(sale_id))
                    .await?;
            }
        }
        Ok(())
    }

    async fn hold_script(
        &self,
        script: &Script,
        sale_id: &str,
        keys: &[&str],
        args: &[String],
    ) -> Result<Vec<Value>, StockError> {
        let mut inv = script.prepare_invoke();
        for key in keys {
            inv.key(*key);
        }
        for a in args {
            inv.arg(a);
        }
        let mut conn = self.conn.clone();
        let v = self.run(inv.invoke_async::<Value>(&mut conn)).await?;
        let items = array(v).ok_or_else(|| StockError::Backend("malformed script reply".into()))?;
        if items.first().and_then(text).as_deref() == Some("lost") {
            return Err(StockError::SaleStateLost {
                sale_id: sale_id.to_owned(),
            });
        }
        Ok(items)
    }
}

/// `<len(user)>:<user>:<key>`: the field of a request's idempotency record, written
/// straight into the command.
struct IdemField<'a>(&'a str, &'a str);

impl ToRedisArgs for IdemField<'_> {
    fn write_redis_args<W: ?Sized + RedisWrite>(&self, out: &mut W) {
        let (user, key) = (self.0, self.1);
        write_arg(out, format_args!("{}:{user}:{key}", user.len()));
    }
}

/// `<len(fp)>:<fp>`: how an idempotency record made with this fingerprint starts.
struct FingerprintPrefix<'a>(&'a str);

impl ToRedisArgs for FingerprintPrefix<'_> {
    fn write_redis_args<W: ?Sized + RedisWrite>(&self, out: &mut W) {
        let fp = self.0;
        write_arg(out, format_args!("{}:{fp}", fp.len()));
    }
}

/// Appends one formatted argument without an intermediate string.
fn write_arg<W: ?Sized + RedisWrite>(out: &mut W, arg: std::fmt::Arguments<'_>) {
    // Writing into the command's own buffer cannot fail.
    let _ = out.writer_for_next_arg().write_fmt(arg);
}

fn map_err(e: RedisError) -> StockError {
    if e.is_timeout() {
        return StockError::Unavailable("redis call timed out".into());
    }
    match e.kind() {
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType | ErrorKind::InvalidClientConfig => {
            StockError::Backend(e.to_string())
        }
        ErrorKind::Server(ServerErrorKind::ResponseError | ServerErrorKind::CrossSlot) => {
            StockError::Backend(e.to_string())
        }
        _ => StockError::Unavailable(e.to_string()),
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::Okay => Some("OK".into()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => text(other).and_then(|s| s.parse().ok()),
    }
}

fn array(v: Value) -> Option<Vec<Value>> {
    match v {
        Value::Array(a) | Value::Set(a) => Some(a),
        _ => None,
    }
}

/// The last reply of a pipeline (the script's), or the value itself.
fn first_of(v: Value) -> Value {
    match v {
        Value::Array(mut a) if a.len() == 1 => a.pop().unwrap_or(Value::Nil),
        other => other,
    }
}

/// Parses a packed hold (see `lua/prelude.lua`).
fn parse_hold(hold_id: &str, sale_id: &str, packed: &str) -> Result<Hold, StockError> {
    let bad = || StockError::Backend(format!("malformed hold record for {hold_id}"));
    let mut parts = packed.splitn(6, '\t');
    let mut next = || parts.next().ok_or_else(bad);
    let status = next()?
        .chars()
        .next()
        .and_then(HoldStatus::from_char)
        .ok_or_else(bad)?;
    let quantity = next()?.parse().map_err(|_| bad())?;
    let position = next()?.parse().map_err(|_| bad())?;
    let created_at_ms = next()?.parse().map_err(|_| bad())?;
    let expires_at_ms = next()?.parse().map_err(|_| bad())?;
    let user_id = next()?.to_owned();
    Ok(Hold {
        hold_id: hold_id.to_owned(),
        sale_id: sale_id.to_owned(),
        user_id,
        quantity,
        position,
        created_at_ms,
        expires_at_ms,
        status,
    })
}

fn pack_hold(h: &Hold) -> String {
    format!(
        "{}\t{}\t{}\t{}\t{}\t{}",
        h.status.as_char(),
        h.quantity,
        h.position,
        h.created_at_ms,
        h.expires_at_ms,
        h.user_id
    )
}

/// Turns the reserve script's reply into one outcome per request, moving the requests'
/// strings into their holds. On a malformed reply, the error and how many requests it
/// answers.
fn parse_reserve_reply(
    reply: Value,
    reqs: Vec<ReserveRequest>,
) -> Result<Vec<Result<ReserveOutcome, StockError>>, (StockError, usize)> {
    let n = reqs.len();
    if text(&reply).as_deref() == Some("lost") {
        let sale_id = reqs
            .into_iter()
            .next()
            .map(|r| r.sale_id)
            .unwrap_or_default();
        let lost = StockError::SaleStateLost { sale_id };
        return Ok(vec![Err(lost); n]);
    }
    let malformed = || (StockError::Backend("malformed reserve reply".into()), n);
    let mut items = array(reply)
        .filter(|a| a.len() == n + 1)
        .ok_or_else(malformed)?
        .into_iter();
    let ttl_ms = items.next().as_ref().and_then(int).ok_or_else(malformed)?;
    Ok(items
        .zip(reqs)
        .map(|(item, r)| parse_reserve_outcome(item, r, ttl_ms))
        .collect())
}

/// One request's reply from the reserve script (see `lua/reserve.lua`).
fn parse_reserve_outcome(
    item: Value,
    r: ReserveRequest,
    ttl_ms: i64,
) -> Result<ReserveOutcome, StockError> {
    let bad = || StockError::Backend("malformed reserve item".into());
    match item {
        Value::Int(position) => Ok(ReserveOutcome::Held(Hold {
            position: u64::try_from(position).map_err(|_| bad())?,
            quantity: r.quantity,
            created_at_ms: r.now_ms,
            expires_at_ms: r.now_ms.saturating_add(ttl_ms),
            status: HoldStatus::Held,
            hold_id: r.hold_id,
            sale_id: r.sale_id,
            user_id: r.user_id,
        })),
        Value::Array(parts) => match parts.as_slice() {
            [id, packed] => {
                let (id, packed) = (text(id).ok_or_else(bad)?, text(packed).ok_or_else(bad)?);
                let mut h = parse_hold(&id, &r.sale_id, &packed)?;
                // The first outcome, as first answered.
                h.status = HoldStatus::Held;
                Ok(ReserveOutcome::Held(h))
            }
            _ => Err(bad()),
        },
        other => match text(&other).as_deref() {
            Some("taken") => Err(StockError::HoldIdTaken(r.hold_id)),
            Some(code) => Reject::from_code(code)
                .map(ReserveOutcome::Rejected)
                .ok_or_else(|| StockError::Backend(format!("unknown rejection {code}"))),
            None => Err(bad()),
        },
    }
}

/// One request's reply: `Some(outcome)`, or `None` for `{'none'}` (nothing recorded).
fn parse_reserve_item(
    item: Value,
    r: &ReserveRequest,
) -> Result<Option<ReserveOutcome>, StockError> {
    let parts: Vec<String> = array(item)
        .ok_or_else(|| StockError::Backend("malformed reserve item".into()))?
        .iter()
        .filter_map(text)
        .collect();
    match parts.as_slice() {
        [tag, id, packed] if tag == "held" => {
            let mut h = parse_hold(id, &r.sale_id, packed)?;
            // The first outcome, as first answered.
            h.status = HoldStatus::Held;
            Ok(Some(ReserveOutcome::Held(h)))
        }
        [tag, code] if tag == "rej" => Reject::from_code(code)
            .map(|c| Some(ReserveOutcome::Rejected(c)))
            .ok_or_else(|| StockError::Backend(format!("unknown rejection {code}"))),
        [tag, id] if tag == "taken" => Err(StockError::HoldIdTaken(id.clone())),
        [tag] if tag == "none" => Ok(None),
        _ => Err(StockError::Backend("malformed reserve item".into())),
    }
}

fn parse_counts(items: &[Value]) -> Result<(SaleCounts, bool), StockError> {
    let n = |i: usize| {
        items
            .get(i)
            .and_then(int)
            .and_then(|v| u64::try_from(v).ok())
            .ok_or_else(|| StockError::Backend("malformed sale counts".into()))
    };
    Ok((
        SaleCounts {
            stock: n(1)?,
            remaining: n(2)?,
            held: n(3)?,
            sold: n(4)?,
        },
        n(5)? == 1,
    ))
}

#[async_trait]
impl StockEngine for RedisEngine {
    async fn create_sale(&self, spec: &SaleSpec) -> Result<SaleCounts, StockError> {
        spec.validate()?;
        // Registered with the sweeper first, so no hold of the sale can miss it.
        self.query(redis::cmd("SADD").arg(self.sales_set()).arg(&spec.sale_id))
            .await?;
        let k = self.keys(&spec.sale_id);
        let args = [
            spec.stock.to_string(),
            spec.per_user_limit.to_string(),
            spec.hold_ttl_ms().to_string(),
            spec.starts_at_ms.to_string(),
            spec.ends_at_ms.to_string(),
        ];
        let items = self
            .hold_script(&self.scripts.create, &spec.sale_id, &[&k.meta], &args)
            .await?;
        if items.first().and_then(text).as_deref() == Some("conflict") {
            return Err(StockError::SaleConflict(spec.sale_id.clone()));
        }
        Ok(parse_counts(&items)?.0)
    }

    async fn end_sale(&self, sale_id: &str, _now_ms: i64) -> Result<SaleCounts, StockError> {
        let k = self.keys(sale_id);
        let items = self
            .hold_script(&self.scripts.end, sale_id, &[&k.meta], &[])
            .await?;
        Ok(parse_counts(&items)?.0)
    }

    async fn sale(&self, sale_id: &str) -> Result<SaleInfo, StockError> {
        let k = self.keys(sale_id);
        let v = self
            .query(redis::cmd("HMGET").arg(&k.meta).arg(&[
                "stock", "limit", "ttl", "start", "end", "ended", "rem", "held", "sold",
            ]))
            .await?;
        let items = array(v).unwrap_or_default();
        if items.first().is_none_or(|v| *v == Value::Nil) {
            return Err(StockError::SaleStateLost {
                sale_id: sale_id.to_owned(),
            });
        }
        let n = |i: usize| {
            items
                .get(i)
                .and_then(int)
                .ok_or_else(|| StockError::Backend("malformed sale meta".into()))
        };
        let u = |i: usize| {
            n(i).and_then(|v| {
                u64::try_from(v).map_err(|_| StockError::Backend("negative count".into()))
            })
        };
        Ok(SaleInfo {
            spec: SaleSpec {
                sale_id: sale_id.to_owned(),
                stock: u(0)?,
                per_user_limit: u32::try_from(n(1)?)
                    .map_err(|_| StockError::Backend("malformed limit".into()))?,
                hold_ttl: Duration::from_millis(u(2)?),
                starts_at_ms: n(3)?,
                ends_at_ms: n(4)?,
            },
            ended: n(5)? == 1,
            counts: SaleCounts {
                stock: u(0)?,
                remaining: u(6)?,
                held: u(7)?,
                sold: u(8)?,
            },
        })
    }

    async fn reserve(&self, req: ReserveRequest) -> Result<ReserveOutcome, StockError> {
        req.validate()?;
        let mut out = self.reserve_chunk(vec![req]).await;
        out.pop()
            .unwrap_or_else(|| Err(StockError::Backend("empty reservation result".into())))
    }

    async fn reserve_batch(
        &self,
        reqs: Vec<ReserveRequest>,
    ) -> Vec<Result<ReserveOutcome, StockError>> {
        let n = reqs.len();
        let mut out: Vec<Option<Result<ReserveOutcome, StockError>>> = vec![None; n];
        // Valid requests, in order, cut into runs of one sale and at most one script batch.
        let max = self.cfg.max_script_batch.max(1);
        let mut chunks: Vec<(Vec<usize>, Vec<ReserveRequest>)> = Vec::new();
        for (i, r) in reqs.into_iter().enumerate() {
            if let Err(e) = r.validate() {
                out[i] = Some(Err(e));
                continue;
            }
            match chunks.last_mut() {
                Some((idx, run)) if run.len() < max && run[0].sale_id == r.sale_id => {
                    idx.push(i);
                    run.push(r);
                }
                _ => chunks.push((vec![i], vec![r])),
            }
        }
        for (idx, run) in chunks {
            for (i, res) in idx.into_iter().zip(self.reserve_chunk(run).await) {
                out[i] = Some(res);
            }
        }
        out.into_iter()
            .map(|o| {
                o.unwrap_or_else(|| Err(StockError::Backend("request left unanswered".into())))
            })
            .collect()
    }

    async fn release(&self, hold_id: &str, user_id: &str, now_ms: i64) -> Result<Hold, StockError> {
        let sale_id = self.sale_of_hold(hold_id).await?;
        let k = self.keys(&sale_id);
        let items = self
            .hold_script(
                &self.scripts.release,
                &sale_id,
                &[&k.meta, &k.usage, &k.holds, &k.expiry],
                &[hold_id.to_owned(), user_id.to_owned(), now_ms.to_string()],
            )
            .await?;
        let id = || hold_id.to_owned();
        match items.first().and_then(text).as_deref() {
            Some("ok") => parse_hold(
                hold_id,
                &sale_id,
                &items.get(1).and_then(text).unwrap_or_default(),
            ),
            Some("not_found") => Err(StockError::HoldNotFound(id())),
            Some("hold_paid") => Err(StockError::HoldPaid(id())),
            Some("hold_released") => Err(StockError::HoldReleased(id())),
            Some("hold_expired") => Err(StockError::HoldExpired(id())),
            _ => Err(StockError::Backend("malformed release reply".into())),
        }
    }

    async fn confirm_paid(&self, hold_id: &str, now_ms: i64) -> Result<Hold, StockError> {
        let sale_id = self.sale_of_hold(hold_id).await?;
        let k = self.keys(&sale_id);
        let items = self
            .hold_script(
                &self.scripts.confirm,
                &sale_id,
                &[&k.meta, &k.holds, &k.expiry],
                &[hold_id.to_owned(), now_ms.to_string()],
            )
            .await?;
        let packed = || items.get(1).and_then(text).unwrap_or_default();
        match items.first().and_then(text).as_deref() {
            Some("ok") => parse_hold(hold_id, &sale_id, &packed()),
            Some("late") => {
                let hold = parse_hold(hold_id, &sale_id, &packed())?;
                Err(StockError::LateHold {
                    status: hold.status,
                    hold: Box::new(hold),
                })
            }
            Some("not_found") => Err(StockError::HoldNotFound(hold_id.to_owned())),
            _ => Err(StockError::Backend("malformed confirm reply".into())),
        }
    }

    async fn expire_due(&self, now_ms: i64, max: usize) -> Result<Vec<Hold>, StockError> {
        if let Err(e) = self.rotate_index(now_ms).await {
            // Housekeeping: the next sweep tries again.
            warn!(error = %e, "could not rotate the hold index");
        }
        let v = self
            .query(redis::cmd("SMEMBERS").arg(self.sales_set()))
            .await?;
        let mut sales: Vec<String> = array(v)
            .unwrap_or_default()
            .iter()
            .filter_map(text)
            .collect();
        if sales.is_empty() || max == 0 {
            return Ok(Vec::new());
        }
        // Start at a different sale each sweep so a busy sale cannot starve the others.
        let start = self.sweep_cursor.fetch_add(1, Ordering::Relaxed) % sales.len();
        sales.rotate_left(start);
        let mut out = Vec::new();
        for sale_id in sales {
            if out.len() >= max {
                break;
            }
            let room = max - out.len();
            match self.sweep_sale(&sale_id, now_ms, room, &mut out).await {
                Ok(()) => {}
                // A lost sale must not stop the sweep of the others: it is skipped
                // until it is rebuilt (`restore_sale` registers it again).
                Err(StockError::SaleStateLost { .. }) => {}
                Err(e) if out.is_empty() => return Err(e),
                Err(e) => {
                    // Report what was expired so far; the next sweep carries on.
                    warn!(sale_id, error = %e, "sweep stopped early");
                    break;
                }
            }
        }
        Ok(out)
    }

    async fn counts(&self, sale_id: &str) -> Result<SaleCounts, StockError> {
        Ok(self.sale(sale_id).await?.counts)
    }

    async fn hold(&self, hold_id: &str) -> Result<Hold, StockError> {
        let sale_id = self.sale_of_hold(hold_id).await?;
        let k = self.keys(&sale_id);
        let v = self
            .query(redis::cmd("HGET").arg(&k.holds).arg(hold_id))
            .await?;
        match text(&v) {
            Some(packed) => parse_hold(hold_id, &sale_id, &packed),
            None => {
                let exists = self.query(redis::cmd("EXISTS").arg(&k.meta)).await?;
                if int(&exists) == Some(0) {
                    Err(StockError::SaleStateLost { sale_id })
                } else {
                    Err(StockError::HoldNotFound(hold_id.to_owned()))
                }
            }
        }
    }

    async fn allocations(
        &self,
        sale_id: &str,
        after_position: u64,
        limit: usize,
    ) -> Result<Vec<Hold>, StockError> {
        let k = self.keys(sale_id);
        let items = self
            .hold_script(
                &self.scripts.allocations,
                sale_id,
                &[&k.meta, &k.alloc, &k.restored, &k.holds],
                &[after_position.to_string(), limit.to_string()],
            )
            .await?;
        let list = items.into_iter().nth(1).and_then(array).unwrap_or_default();
        list.chunks(2)
            .filter_map(|pair| match pair {
                [id, hv] => Some((text(id)?, text(hv)?)),
                _ => None,
            })
            .map(|(id, hv)| parse_hold(&id, sale_id, &hv))
            .collect()
    }

    async fn restore_sale(&self, record: SaleRecord) -> Result<SaleCounts, StockError> {
        self.restore(record, false)
            .await?
            .ok_or_else(|| StockError::Backend("restore refused without a condition".into()))
    }

    async fn restore_sale_if_missing(
        &self,
        record: SaleRecord,
    ) -> Result<Option<SaleCounts>, StockError> {
        self.restore(record, true).await
    }

    async fn ping(&self) -> Result<(), StockError> {
        self.query(&redis::cmd("PING")).await.map(|_| ())
    }
}
