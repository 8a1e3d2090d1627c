//! Hot-SKU speed: batching concurrent reservations and answering sold-out locally.
//!
//! A [`Coalescer`] wraps any engine and is itself a [`StockEngine`]. Concurrent
//! `reserve` calls for one sale queue in a per-sale lane; one flusher task at a time
//! takes everything queued (up to `max_batch`) and sends it as one `reserve_batch`
//! call (for Redis: one script call), in arrival order, then hands each caller its own
//! outcome. While a batch is in flight the next one fills up, so under load the batch
//! size follows the concurrency and the backend does one call per batch.
//!
//! After the engine answers `SoldOut` for a sale, the lane raises a local sold-out flag:
//! later reservations for that sale are refused on the spot, without a backend call.
//! That is allowed because `sold_out` is never recorded against an idempotency key
//! (API.md §1), so the answer depends on nothing but the stock, with one exception: a
//! replay must get the key's first final outcome back. The lane remembers a 64-bit
//! digest of every idempotency scope (user and key) it handed a recorded outcome for
//! (holds and recorded rejections, for the idempotency TTL, at most 2^20 scopes per
//! sale), and sends requests of those scopes to the engine even while the flag is up,
//! so their replays get the engine's exact answer; a replay whose first answer came
//! from another node is answered `sold_out` while the flag is up, so a caller that
//! needs exact replays across nodes keeps its own record of final responses. The flag
//! is a hint,
//! never the authority: it is cleared when this coalescer sees stock come back
//! (`release`, `expire_due`, `restore_sale`, `end_sale`), when the caller says so
//! ([`Coalescer::stock_returned`], e.g. on a `sale.stock` event from another node), and
//! it lapses after `sold_out_recheck`, when the next request goes to the engine again.

use std::collections::{HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dashmap::DashMap;
use dashmap::mapref::one::Ref;
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tracing::debug;

use crate::digest::{BuildPrehashed, Seed};
use crate::engine::StockEngine;
use crate::error::StockError;
use crate::types::{
    Hold, IDEMPOTENCY_TTL, Reject, ReserveOutcome, ReserveRequest, SaleCounts, SaleInfo,
    SaleRecord, SaleSpec,
};

/// Settings of a [`Coalescer`].
#[derive(Debug, Clone)]
pub struct CoalescerConfig {
    /// Most requests sent in one `reserve_batch` call. Default 256.
    pub max_batch: usize,
    /// How long a sold-out flag answers locally before one request re-checks the
    /// engine. Default 250 ms.
    pub sold_out_recheck: Duration,
}

impl Default for CoalescerConfig {
    fn default() -> Self {
        Self {
            max_batch: 256,
            sold_out_recheck: Duration::from_millis(250),
        }
    }
}

/// Counters of what a coalescer did, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoalescerStats {
    /// `reserve_batch` calls sent to the inner engine by lanes.
    pub batches: u64,
    /// Requests sent in those batches.
    pub batched_requests: u64,
    /// Reservations answered locally while the sold-out flag was up.
    pub local_sold_out: u64,
}

type Reply = oneshot::Sender<Result<ReserveOutcome, StockError>>;

/// A queued caller: where its answer goes, and what the lane remembers of its request.
struct Waiter {
    scope: u64,
    now_ms: i64,
    reply: Reply,
}

/// Requests waiting for the next batch, in arrival order (`reqs[i]` is `waiters[i]`'s).
#[derive(Default)]
struct Queue {
    reqs: Vec<ReserveRequest>,
    waiters: Vec<Waiter>,
    flushing: bool,
}

/// One sale's queue and sold-out flag.
struct Lane {
    sale_id: String,
    queue: Mutex<Queue>,
    /// The local flag answers until this instant (µs since the coalescer's epoch); 0 = off.
    sold_out_until_us: AtomicU64,
    /// Bumped whenever stock may have come back, so a flag computed from an older
    /// answer is not raised after the stock returned.
    generation: AtomicU64,
    /// The sale's `ends_at_ms`, once known (`i64::MIN` until then).
    ends_at_ms: AtomicI64,
    /// Idempotency scopes this lane handed a final outcome for.
    seen: Mutex<Seen>,
}

/// Most scopes a lane remembers; the oldest are forgotten first.
const MAX_SEEN_PER_LANE: usize = 1 << 20;

/// Digests of idempotency scopes (`(user, key)`) whose key has a recorded outcome that
/// this lane handed out, with their request clocks in insertion order.
#[derive(Default)]
struct Seen {
    scopes: HashSet<u64, BuildPrehashed>,
    order: VecDeque<(i64, u64)>,
}

impl Seen {
    fn insert(&mut self, scope: u64, now_ms: i64) {
        let ttl = i64::try_from(IDEMPOTENCY_TTL.as_millis()).unwrap_or(i64::MAX);
        while let Some(&(at, old)) = self.order.front() {
            if at.saturating_add(ttl) > now_ms && self.order.len() < MAX_SEEN_PER_LANE {
                break;
            }
            self.order.pop_front();
            self.scopes.remove(&old);
        }
        if self.scopes.insert(scope) {
            self.order.push_back((now_ms, scope));
        }
    }
}

impl Lane {
    fn new(sale_id: &str) -> Self {
        Self {
            sale_id: sale_id.to_owned(),
            queue: Mutex::new(Queue::default()),
            sold_out_until_us: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            ends_at_ms: AtomicI64::new(i64::MIN),
            seen: Mutex::new(Seen::default()),
        }
    }

    /// Whether this lane handed out a recorded outcome for the scope (a replay must
    /// get it back, so it goes to the engine even while the sale is sold out).
    fn saw(&self, scope: u64) -> bool {
        let seen = self.seen.lock();
        !seen.scopes.is_empty() && seen.scopes.contains(&scope)
    }

    fn clear_sold_out(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.sold_out_until_us.store(0, Ordering::Release);
    }
}

struct Shared {
    inner: Arc<dyn StockEngine>,
    cfg: CoalescerConfig,
    lanes: DashMap<String, Arc<Lane>>,
    /// Seeds the digests of idempotency scopes.
    scope_hasher: Seed,
    epoch: Instant,
    batches: AtomicU64,
    batched_requests: AtomicU64,
    local_sold_out: AtomicU64,
}

impl Shared {
    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn lane(&self, sale_id: &str) -> Ref<'_, String, Arc<Lane>> {
        if let Some(l) = self.lanes.get(sale_id) {
            return l;
        }
        self.lanes
            .entry(sale_id.to_owned())
            .or_insert_with(|| Arc::new(Lane::new(sale_id)))
            .downgrade()
    }

    /// The digest of a request's idempotency scope.
    fn scope(&self, req: &ReserveRequest) -> u64 {
        self.scope_hasher
            .hash_one((req.user_id.as_str(), req.idempotency_key.as_str()))
    }

    fn stock_returned(&self, sale_id: &str) {
        if let Some(l) = self.lanes.get(sale_id) {
            l.clear_sold_out();
        }
    }

    /// Whether the local flag may answer this request.
    fn answers_locally(&self, lane: &Lane, req: &ReserveRequest) -> bool {
        let until = lane.sold_out_until_us.load(Ordering::Acquire);
        if until == 0 || self.now_us() >= until {
            return false;
        }
        // Past the end the answer is `sale_ended`, which only the engine gives.
        let ends = lane.ends_at_ms.load(Ordering::Acquire);
        ends != i64::MIN && req.now_ms < ends
    }

    /// Raises the flag after the engine said `SoldOut`, unless stock came back since the
    /// batch was sent (`generation` moved).
    async fn raise_sold_out(&self, lane: &Lane, generation: u64) {
        if lane.ends_at_ms.load(Ordering::Acquire) == i64::MIN {
            match self.inner.sale(&lane.sale_id).await {
                Ok(info) => lane
                    .ends_at_ms
                    .store(info.spec.ends_at_ms, Ordering::Release),
                Err(e) => {
                    debug!(sale_id = %lane.sale_id, error = %e, "sold-out flag not raised");
                    return;
                }
            }
        }
        let recheck = u64::try_from(self.cfg.sold_out_recheck.as_micros()).unwrap_or(u64::MAX);
        let until = self.now_us().saturating_add(recheck.max(1));
        if lane.generation.load(Ordering::Acquire) == generation {
            lane.sold_out_until_us.store(until, Ordering::Release);
            // Stock may have come back while storing: never leave a stale flag behind.
            if lane.generation.load(Ordering::Acquire) != generation {
                lane.sold_out_until_us.store(0, Ordering::Release);
            }
        }
    }

    /// Sends queued requests of one lane, batch after batch, until the queue is empty.
    async fn flush(self: Arc<Self>, lane: Arc<Lane>) {
        let max = self.cfg.max_batch.max(1);
        loop {
            let (reqs, waiters) = {
                let mut q = lane.queue.lock();
                let n = q.reqs.len();
                if n == 0 {
                    q.flushing = false;
                    return;
                }
                if n <= max {
                    // The next batch is likely as large as this one.
                    (
                        std::mem::replace(&mut q.reqs, Vec::with_capacity(n)),
                        std::mem::replace(&mut q.waiters, Vec::with_capacity(n)),
                    )
                } else {
                    (
                        q.reqs.drain(..max).collect::<Vec<_>>(),
                        q.waiters.drain(..max).collect::<Vec<_>>(),
                    )
                }
            };
            let generation = lane.generation.load(Ordering::Acquire);
            let n = reqs.len();
            self.batches.fetch_add(1, Ordering::Relaxed);
            self.batched_requests.fetch_add(n as u64, Ordering::Relaxed);
            let mut results = self.inner.reserve_batch(reqs).await;
            results.resize_with(n, || {
                Err(StockError::Backend("batch answered too few results".into()))
            });
            let mut sold_out = false;
            {
                let mut seen = lane.seen.lock();
                for (w, r) in waiters.iter().zip(&results) {
                    match r {
                        Ok(ReserveOutcome::Rejected(Reject::SoldOut)) => sold_out = true,
                        Ok(ReserveOutcome::Held(_)) => seen.insert(w.scope, w.now_ms),
                        Ok(ReserveOutcome::Rejected(rej))
                            if rej.is_recorded() || *rej == Reject::IdempotencyKeyReused =>
                        {
                            seen.insert(w.scope, w.now_ms);
                        }
                        _ => {}
                    }
                }
            }
            // Raised before anyone hears `sold_out`, so the next attempt is local.
            if sold_out {
                self.raise_sold_out(&lane, generation).await;
            }
            for (w, r) in waiters.into_iter().zip(results) {
                // The caller may have given up; its outcome stands all the same.
                let _ = w.reply.send(r);
            }
        }
    }
}

/// A [`StockEngine`] that coalesces concurrent reservations per sale and answers
/// sold-out sales locally. Everything but `reserve` passes straight through.
///
/// Needs a Tokio runtime: each busy sale gets a flusher task.
#[derive(Clone)]
pub struct Coalescer {
    shared: Arc<Shared>,
}

impl Coalescer {
    pub fn new(inner: Arc<dyn StockEngine>, cfg: CoalescerConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                inner,
                cfg,
                lanes: DashMap::new(),
                scope_hasher: Seed::default(),
                epoch: Instant::now(),
                batches: AtomicU64::new(0),
                batched_requests: AtomicU64::new(0),
                local_sold_out: AtomicU64::new(0),
            }),
        }
    }

    /// The wrapped engine.
    pub fn inner(&self) -> &Arc<dyn StockEngine> {
        &self.shared.inner
    }

    /// Units of the sale may be available again (a hold was released, expired or the
    /// sale restored, possibly on another node): drop the local sold-out flag.
    pub fn stock_returned(&self, sale_id: &str) {
        self.shared.stock_returned(sale_id);
    }

    /// Whether reservations for the sale are currently answered locally.
    pub fn is_sold_out_locally(&self, sale_id: &str) -> bool {
        self.shared.lanes.get(sale_id).is_some_and(|l| {
            let until = l.sold_out_until_us.load(Ordering::Acquire);
            until != 0 && self.shared.now_us() < until
        })
    }

    /// What this coalescer did so far.
    pub fn stats(&self) -> CoalescerStats {
        CoalescerStats {
            batches: self.shared.batches.load(Ordering::Relaxed),
            batched_requests: self.shared.batched_requests.load(Ordering::Relaxed),
            local_sold_out: self.shared.local_sold_out.load(Ordering::Relaxed),
        }
    }
}

#[async_trait]
impl StockEngine for Coalescer {
    async fn create_sale(&self, spec: &SaleSpec) -> Result<SaleCounts, StockError> {
        let counts = self.shared.inner.create_sale(spec).await?;
        let lane = self.shared.lane(&spec.sale_id);
        lane.ends_at_ms.store(spec.ends_at_ms, Ordering::Release);
        Ok(counts)
    }

    async fn end_sale(&self, sale_id: &str, now_ms: i64) -> Result<SaleCounts, StockError> {
        let r = self.shared.inner.end_sale(sale_id, now_ms).await;
        // From now on the engine answers `sale_ended`, which the flag must not mask.
        self.shared.stock_returned(sale_id);
        r
    }

    async fn sale(&self, sale_id: &str) -> Result<SaleInfo, StockError> {
        self.shared.inner.sale(sale_id).await
    }

    async fn reserve(&self, req: ReserveRequest) -> Result<ReserveOutcome, StockError> {
        req.validate()?;
        let shared = &self.shared;
        let scope = shared.scope(&req);
        let (rx, flusher) = {
            let lane = shared.lane(&req.sale_id);
            if shared.answers_locally(&lane, &req) && !lane.saw(scope) {
                shared.local_sold_out.fetch_add(1, Ordering::Relaxed);
                return Ok(ReserveOutcome::Rejected(Reject::SoldOut));
            }
            let (tx, rx) = oneshot::channel();
            let waiter = Waiter {
                scope,
                now_ms: req.now_ms,
                reply: tx,
            };
            let start_flusher = {
                let mut q = lane.queue.lock();
                q.reqs.push(req);
                q.waiters.push(waiter);
                !std::mem::replace(&mut q.flushing, true)
            };
            (rx, start_flusher.then(|| Arc::clone(lane.value())))
        };
        if let Some(lane) = flusher {
            tokio::spawn(Arc::clone(shared).flush(lane));
        }
        rx.await
            .unwrap_or_else(|_| Err(StockError::Backend("reservation flusher stopped".into())))
    }

    async fn reserve_batch(
        &self,
        reqs: Vec<ReserveRequest>,
    ) -> Vec<Result<ReserveOutcome, StockError>> {
        self.shared.inner.reserve_batch(reqs).await
    }

    async fn release(&self, hold_id: &str, user_id: &str, now_ms: i64) -> Result<Hold, StockError> {
        let h = self.shared.inner.release(hold_id, user_id, now_ms).await?;
        self.shared.stock_returned(&h.sale_id);
        Ok(h)
    }

    async fn confirm_paid(&self, hold_id: &str, now_ms: i64) -> Result<Hold, StockError> {
        self.shared.inner.confirm_paid(hold_id, now_ms).await
    }

    async fn expire_due(&self, now_ms: i64, max: usize) -> Result<Vec<Hold>, StockError> {
        let holds = self.shared.inner.expire_due(now_ms, max).await?;
        for h in &holds {
            self.shared.stock_returned(&h.sale_id);
        }
        Ok(holds)
    }

    async fn counts(&self, sale_id: &str) -> Result<SaleCounts, StockError> {
        self.shared.inner.counts(sale_id).await
    }

    async fn hold(&self, hold_id: &str) -> Result<Hold, StockError> {
        self.shared.inner.hold(hold_id).await
    }

    async fn allocations(
        &self,
        sale_id: &str,
        after_position: u64,
        limit: usize,
    ) -> Result<Vec<Hold>, StockError> {
        self.shared
            .inner
            .allocations(sale_id, after_position, limit)
            .await
    }

    async fn restore_sale_if_missing(
        &self,
        record: SaleRecord,
    ) -> Result<Option<SaleCounts>, StockError> {
        let sale_id = record.spec.sale_id.clone();
        let ends = record.spec.ends_at_ms;
        let r = self.shared.inner.restore_sale_if_missing(record).await;
        if matches!(r, Ok(Some(_))) {
            let lane = self.shared.lane(&sale_id);
            lane.ends_at_ms.store(ends, Ordering::Release);
            lane.clear_sold_out();
        }
        r
    }

    async fn restore_sale(&self, record: SaleRecord) -> Result<SaleCounts, StockError> {
        let sale_id = record.spec.sale_id.clone();
        let ends = record.spec.ends_at_ms;
        let r = self.shared.inner.restore_sale(record).await;
        let lane = self.shared.lane(&sale_id);
        lane.ends_at_ms.store(ends, Ordering::Release);
        lane.clear_sold_out();
        r
    }

    async fn ping(&self) -> Result<(), StockError> {
        self.shared.inner.ping().await
    }
}
