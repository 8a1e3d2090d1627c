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
//! replay must get the key's first final outcome back. The lane remembers the final
//! outcomes it handed out (holds and recorded rejections, for the idempotency TTL) and
//! answers such replays from memory; a replay whose first answer came from another
//! node is answered `sold_out` while the flag is up, so a caller that needs exact
//! replays across nodes keeps its own record of final responses. The flag is a hint,
//! never the authority: it is cleared when this coalescer sees stock come back
//! (`release`, `expire_due`, `restore_sale`, `end_sale`), when the caller says so
//! ([`Coalescer::stock_returned`], e.g. on a `sale.stock` event from another node), and
//! it lapses after `sold_out_recheck`, when the next request goes to the engine again.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dashmap::DashMap;
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tracing::debug;

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

struct Pending {
    req: ReserveRequest,
    reply: Reply,
}

#[derive(Default)]
struct Queue {
    pending: Vec<Pending>,
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
    /// Final outcomes this lane handed out (holds and recorded rejections), by
    /// idempotency scope, to answer replays while sold out.
    replays: DashMap<String, (String, ReserveOutcome)>,
    /// Insertion order of `replays` with the request's clock, to forget old entries.
    replay_order: Mutex<VecDeque<(i64, String)>>,
}

/// Most outcomes a lane remembers; the oldest are forgotten first.
const MAX_REPLAYS_PER_LANE: usize = 1 << 20;

/// What a lane keeps of a request to remember its hold.
struct ReplayScope {
    user_id: String,
    idempotency_key: String,
    request_fingerprint: String,
    now_ms: i64,
}

fn replay_key(user: &str, key: &str) -> String {
    format!("{}:{user}:{key}", user.len())
}

impl Lane {
    fn new(sale_id: &str) -> Self {
        Self {
            sale_id: sale_id.to_owned(),
            queue: Mutex::new(Queue::default()),
            sold_out_until_us: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            ends_at_ms: AtomicI64::new(i64::MIN),
            replays: DashMap::new(),
            replay_order: Mutex::new(VecDeque::new()),
        }
    }

    fn remember(&self, req: &ReplayScope, outcome: &ReserveOutcome) {
        let key = replay_key(&req.user_id, &req.idempotency_key);
        let ttl = i64::try_from(IDEMPOTENCY_TTL.as_millis()).unwrap_or(i64::MAX);
        let mut order = self.replay_order.lock();
        while let Some((at, _)) = order.front() {
            if at.saturating_add(ttl) > req.now_ms && order.len() < MAX_REPLAYS_PER_LANE {
                break;
            }
            if let Some((_, old)) = order.pop_front() {
                self.replays.remove(&old);
            }
        }
        if self
            .replays
            .insert(
                key.clone(),
                (req.request_fingerprint.clone(), outcome.clone()),
            )
            .is_none()
        {
            order.push_back((req.now_ms, key));
        }
    }

    /// The answer to a request while sold out: a remembered hold, or `SoldOut`.
    fn local_answer(&self, req: &ReserveRequest) -> ReserveOutcome {
        if self.replays.is_empty() {
            return ReserveOutcome::Rejected(Reject::SoldOut);
        }
        match self
            .replays
            .get(&replay_key(&req.user_id, &req.idempotency_key))
        {
            Some(e) if e.value().0 == req.request_fingerprint => e.value().1.clone(),
            Some(_) => ReserveOutcome::Rejected(Reject::IdempotencyKeyReused),
            None => ReserveOutcome::Rejected(Reject::SoldOut),
        }
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
    epoch: Instant,
    batches: AtomicU64,
    batched_requests: AtomicU64,
    local_sold_out: AtomicU64,
}

impl Shared {
    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn lane(&self, sale_id: &str) -> Arc<Lane> {
        if let Some(l) = self.lanes.get(sale_id) {
            return Arc::clone(l.value());
        }
        Arc::clone(
            self.lanes
                .entry(sale_id.to_owned())
                .or_insert_with(|| Arc::new(Lane::new(sale_id)))
                .value(),
        )
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
        loop {
            let batch: Vec<Pending> = {
                let mut q = lane.queue.lock();
                if q.pending.is_empty() {
                    q.flushing = false;
                    return;
                }
                let n = q.pending.len().min(self.cfg.max_batch.max(1));
                q.pending.drain(..n).collect()
            };
            let generation = lane.generation.load(Ordering::Acquire);
            let (reqs, replies): (Vec<ReserveRequest>, Vec<Reply>) =
                batch.into_iter().map(|p| (p.req, p.reply)).unzip();
            self.batches.fetch_add(1, Ordering::Relaxed);
            self.batched_requests
                .fetch_add(reqs.len() as u64, Ordering::Relaxed);
            let scopes: Vec<ReplayScope> = reqs
                .iter()
                .map(|r| ReplayScope {
                    user_id: r.user_id.clone(),
                    idempotency_key: r.idempotency_key.clone(),
                    request_fingerprint: r.request_fingerprint.clone(),
                    now_ms: r.now_ms,
                })
                .collect();
            let mut results = self.inner.reserve_batch(reqs).await;
            results.resize_with(scopes.len(), || {
                Err(StockError::Backend("batch answered too few results".into()))
            });
            let mut sold_out = false;
            for (req, r) in scopes.iter().zip(&results) {
                match r {
                    Ok(ReserveOutcome::Rejected(Reject::SoldOut)) => sold_out = true,
                    Ok(o @ ReserveOutcome::Held(_)) => lane.remember(req, o),
                    Ok(o @ ReserveOutcome::Rejected(rej)) if rej.is_recorded() => {
                        lane.remember(req, o);
                    }
                    _ => {}
                }
            }
            // Raised before anyone hears `sold_out`, so the next attempt is local.
            if sold_out {
                self.raise_sold_out(&lane, generation).await;
            }
            for (reply, r) in replies.into_iter().zip(results) {
                // The caller may have given up; its outcome stands all the same.
                let _ = reply.send(r);
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
        let lane = self.shared.lane(&req.sale_id);
        if self.shared.answers_locally(&lane, &req) {
            self.shared.local_sold_out.fetch_add(1, Ordering::Relaxed);
            return Ok(lane.local_answer(&req));
        }
        let (tx, rx) = oneshot::channel();
        let start_flusher = {
            let mut q = lane.queue.lock();
            q.pending.push(Pending { req, reply: tx });
            !std::mem::replace(&mut q.flushing, true)
        };
        if start_flusher {
            tokio::spawn(Arc::clone(&self.shared).flush(Arc::clone(&lane)));
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
