//! Flash sales: the bridge between the stock engine, the SQL record and the rooms.
//!
//! [`FlashSales`] owns the stock engine (memory by default, Redis when `redis_url` is
//! set), wrapped in a [`Coalescer`] so concurrent reservations of one hot sale go to the
//! engine as one call and a sold-out sale answers locally. Around it:
//!
//! - **The SQL record.** A sale's row is written before the engine learns of it; every
//!   hold and its final status is written behind the engine by the recorder task, in
//!   batches. When the engine does not know a sale (the process restarted with the
//!   memory engine, or Redis lost its keys), the sale is rebuilt from that record
//!   (`stock − paid − unexpired holds`) before it serves again: on the next call for
//!   the sale or one of its holds, and, for a quiet sale, by the sweeper, which looks
//!   for lost sales every second.
//! - **The clock.** The driver task moves each open sale through its lifecycle and tells
//!   its room: `sale.started` at `starts_at`, conflated `sale.stock` (at least 200 ms
//!   apart, always the latest numbers), `sale.sold_out` after the final numbers, and
//!   the final `sale.stock` plus `sale.ended` at the end. The lifecycle announced is kept in SQL
//!   (`phase`), moved with compare-and-set, so each announcement is made once even with
//!   several nodes.
//! - **Expiry.** The sweeper asks the engine for due holds in small batches (the expiry
//!   index lives in the engine, so it survives a restart of the node that made the
//!   hold); each expired hold returns its units exactly once, is recorded, and its buyer
//!   gets a private `hold.expired`.

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use harvest_proto::ws as wire;
use harvest_proto::{ErrorCode, HoldStatus as WireHoldStatus, Sale, SaleStatus as WireSaleStatus};
use harvest_stock::{
    Coalescer, CoalescerConfig, Hold, HoldStatus, MemoryEngine, RedisConfig, RedisEngine, Reject,
    ReserveOutcome, ReserveRequest, SaleCounts, SaleInfo, SaleRecord, SaleSpec, SaleStatus,
    StockEngine, StockError,
};
use harvest_store::{HoldRow, SalePhase, SaleRow, Store, StoreError};
use tokio::sync::mpsc;

use crate::config::Settings;
use crate::error::ApiError;
use crate::live::Live;

/// Least time between two `sale.stock` events of one sale.
pub const STOCK_EVENT_INTERVAL: Duration = Duration::from_millis(200);
/// How often the driver looks at open sales.
const DRIVER_TICK: Duration = Duration::from_millis(50);
/// Holds expired per engine call.
const SWEEP_BATCH: usize = 64;
/// How often the sweeper makes sure the engine still has the sales it may need.
const STATE_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How long after a sale closes its holds are still looked after (they expire at most
/// `hold_ttl_s` after it closed; this covers the sweeper's lag).
const HOLD_GRACE_MS: i64 = 60_000;

/// The flash-sale service of one node. Cheap to clone.
#[derive(Clone)]
pub struct FlashSales {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Coalescer,
    backend: &'static str,
    store: Store,
    live: Live,
    sales: DashMap<String, Arc<SaleEntry>>,
    recorder: mpsc::UnboundedSender<RecordMsg>,
    limiter: DefaultKeyedRateLimiter<String>,
    sweep_interval: Duration,
    stopped: AtomicBool,
}

/// What this node knows of one sale besides the engine's counts.
struct SaleEntry {
    row: parking_lot::RwLock<SaleRow>,
    /// Stock changed since the last `sale.stock`.
    dirty: AtomicBool,
    /// Serialises this sale's announcements, so its events are in order.
    gate: tokio::sync::Mutex<Announced>,
    /// Serialises rebuilding the sale's engine state.
    restoring: tokio::sync::Mutex<()>,
    /// The engine's state was rebuilt from SQL, which does not rebuild its idempotency
    /// records: reservations first look for their key among the stored holds.
    rebuilt: AtomicBool,
}

#[derive(Default)]
struct Announced {
    counts: Option<SaleCounts>,
    at: Option<Instant>,
    sold_out: bool,
}

impl SaleEntry {
    fn new(row: SaleRow) -> Arc<Self> {
        Arc::new(Self {
            row: parking_lot::RwLock::new(row),
            dirty: AtomicBool::new(false),
            gate: tokio::sync::Mutex::new(Announced::default()),
            restoring: tokio::sync::Mutex::new(()),
            rebuilt: AtomicBool::new(false),
        })
    }

    fn row(&self) -> SaleRow {
        self.row.read().clone()
    }

    fn id(&self) -> String {
        self.row.read().id.clone()
    }
}

/// A reservation as the HTTP layer hands it over.
pub struct Reservation<'a> {
    pub sale_id: &'a str,
    pub user_id: &'a str,
    /// The buyer's display name (shown masked in `order.placed`).
    pub user_name: &'a str,
    pub quantity: u32,
    pub idempotency_key: &'a str,
    pub fingerprint: String,
}

enum RecordMsg {
    Hold(HoldRow),
    Flush(tokio::sync::oneshot::Sender<()>),
}

impl FlashSales {
    /// Builds the engine named by the settings, rebuilds the open sales' engine state
    /// from SQL where the engine lacks it, and starts the recorder, driver and sweeper.
    pub async fn start(settings: &Settings, store: Store, live: Live) -> anyhow::Result<Self> {
        let (engine, backend): (Arc<dyn StockEngine>, &'static str) = match &settings.redis_url {
            None => (Arc::new(MemoryEngine::new()), "memory"),
            Some(url) => {
                // One server, or the nodes of a Redis Cluster.
                let mut cfg = RedisConfig::new(url.expose());
                cfg.timeout = Duration::from_millis(settings.redis_timeout_ms.max(1));
                cfg.key_prefix = settings.redis_key_prefix.clone();
                let engine = RedisEngine::new(cfg)
                    .map_err(|e| anyhow::anyhow!("cannot set up the Redis stock engine: {e}"))?;
                (Arc::new(engine), "redis")
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(record_loop(store.clone(), rx));
        let per_s =
            NonZeroU32::new(settings.reservations_per_user_per_s.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(settings.reservations_burst.max(1)).unwrap_or(NonZeroU32::MIN);
        let flash = Self {
            inner: Arc::new(Inner {
                engine: Coalescer::new(engine, CoalescerConfig::default()),
                backend,
                store,
                live,
                sales: DashMap::new(),
                recorder: tx,
                limiter: RateLimiter::keyed(Quota::per_second(per_s).allow_burst(burst)),
                sweep_interval: Duration::from_millis(settings.hold_sweep_interval_ms.max(10)),
                stopped: AtomicBool::new(false),
            }),
        };
        flash.resume().await?;
        flash.spawn_driver();
        flash.spawn_sweeper();
        Ok(flash)
    }

    /// `memory` or `redis`.
    pub fn backend(&self) -> &'static str {
        self.inner.backend
    }

    /// The engine (for readiness checks and tests).
    pub fn engine(&self) -> &Coalescer {
        &self.inner.engine
    }

    /// Loads every open sale (and every ended sale with unexpired holds) and rebuilds
    /// the engine's state of those it does not know.
    async fn resume(&self) -> anyhow::Result<()> {
        let store = &self.inner.store;
        let mut rows = store.open_sales().await?;
        for id in store.ended_sales_with_open_holds().await? {
            rows.push(store.sale(&id).await?);
        }
        let count = rows.len();
        for row in rows {
            let entry = SaleEntry::new(row);
            let id = entry.id();
            self.inner.sales.insert(id.clone(), entry.clone());
            match self.inner.engine.sale(&id).await {
                Ok(_) => {}
                Err(e) if is_lost(&e) => {
                    if let Err(e) = self.restore(&entry).await {
                        tracing::warn!(sale_id = %id, error = %e, "cannot rebuild the sale yet");
                    }
                }
                Err(e) => tracing::warn!(sale_id = %id, error = %e, "stock engine unavailable"),
            }
        }
        if count > 0 {
            tracing::info!(sales = count, "resumed flash sales");
        }
        Ok(())
    }

    /// Stops the background tasks and writes every pending hold record.
    pub async fn stop(&self, timeout: Duration) -> bool {
        self.inner.stopped.store(true, Ordering::SeqCst);
        self.flush(timeout).await
    }

    /// Waits (at most `timeout`) until every hold recorded so far is in SQL.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.inner.recorder.send(RecordMsg::Flush(tx)).is_err() {
            return false;
        }
        matches!(tokio::time::timeout(timeout, rx).await, Ok(Ok(())))
    }

    /// The sale's row, cached; 404 when there is no such sale.
    async fn entry(&self, sale_id: &str) -> Result<Arc<SaleEntry>, ApiError> {
        if let Some(e) = self.inner.sales.get(sale_id) {
            return Ok(e.clone());
        }
        let row = match self.inner.store.sale(sale_id).await {
            Ok(row) => row,
            Err(StoreError::NotFound) => return Err(ApiError::not_found("flash sale")),
            Err(e) => return Err(e.into()),
        };
        Ok(self
            .inner
            .sales
            .entry(sale_id.to_owned())
            .or_insert_with(|| SaleEntry::new(row))
            .clone())
    }

    /// Rebuilds a sale's engine state from the SQL record, unless the engine has it.
    /// True when it was rebuilt.
    async fn restore(&self, entry: &SaleEntry) -> Result<bool, StockError> {
        let _one = entry.restoring.lock().await;
        let id = entry.id();
        match self.inner.engine.sale(&id).await {
            Ok(_) => return Ok(false),
            Err(e) if is_lost(&e) => {}
            Err(e) => return Err(e),
        }
        // Holds still on their way to SQL belong in the record.
        self.flush(Duration::from_secs(2)).await;
        let record = sale_record(&self.inner.store, &entry.row())
            .await
            .map_err(|e| StockError::Unavailable(format!("reading the sale record: {e}")))?;
        // Another node may have rebuilt it meanwhile: then its state stands.
        let Some(counts) = self.inner.engine.restore_sale_if_missing(record).await? else {
            return Ok(false);
        };
        self.inner.engine.stock_returned(&id);
        entry.rebuilt.store(true, Ordering::Release);
        entry.dirty.store(true, Ordering::Release);
        tracing::info!(sale_id = %id, remaining = counts.remaining, held = counts.held, sold = counts.sold, "rebuilt the sale's stock state from SQL");
        Ok(true)
    }

    /// Runs an engine call; when the engine lost the sale, rebuilds it from SQL and
    /// runs the call once more.
    async fn with_sale<T, F, Fut>(&self, entry: &SaleEntry, call: F) -> Result<T, StockError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, StockError>>,
    {
        match call().await {
            Err(e) if is_lost(&e) => {
                self.restore(entry).await?;
                call().await
            }
            // A Redis that restarted empty lost the hold-to-sale index with the sale, so
            // a hold of the sale is "not found" rather than its sale "lost": rebuild the
            // sale if that is what happened, and ask again.
            Err(StockError::HoldNotFound(hold)) => {
                if self.restore(entry).await? {
                    call().await
                } else {
                    Err(StockError::HoldNotFound(hold))
                }
            }
            other => other,
        }
    }

    /// Creates a sale (the caller checked the room and product) and announces it.
    pub async fn create(&self, new: harvest_store::NewSale) -> Result<Sale, ApiError> {
        let row = self.inner.store.create_sale(new).await?;
        let entry = SaleEntry::new(row.clone());
        self.inner.sales.insert(row.id.clone(), entry.clone());
        let spec = spec_of(&row);
        let counts = match self.inner.engine.create_sale(&spec).await {
            Ok(counts) => counts,
            Err(e) => {
                // The SQL row stands; the engine state is rebuilt from it on first use.
                tracing::warn!(sale_id = %row.id, error = %e, "stock engine did not take the new sale");
                SaleCounts {
                    stock: spec.stock,
                    remaining: spec.stock,
                    held: 0,
                    sold: 0,
                }
            }
        };
        let now = now_ms();
        let sale = sale_view(&row, counts, false, now);
        if row.starts_at > now {
            self.publish(&row.room_id, wire::SaleScheduled { sale: sale.clone() })
                .await;
        }
        self.step(&entry).await;
        Ok(sale)
    }

    /// The sale with its live counts.
    pub async fn get(&self, sale_id: &str) -> Result<(SaleRow, Sale), ApiError> {
        let entry = self.entry(sale_id).await?;
        let row = entry.row();
        let info = self
            .with_sale(&entry, || self.inner.engine.sale(sale_id))
            .await
            .map_err(stock_error)?;
        Ok((row.clone(), info_view(&row, &info, now_ms())))
    }

    /// The sale's row (404 when unknown).
    pub async fn row(&self, sale_id: &str) -> Result<SaleRow, ApiError> {
        Ok(self.entry(sale_id).await?.row())
    }

    /// The open sales of a room (not yet ended), in creation order.
    pub async fn room_sales(&self, room_id: &str) -> Result<Vec<Sale>, ApiError> {
        let rows = self.inner.store.room_sales(room_id, true).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let (_, sale) = self.get(&row.id).await?;
            if sale.status != WireSaleStatus::Ended {
                out.push(sale);
            }
        }
        Ok(out)
    }

    /// Ids of the room's sales not yet ended.
    pub async fn room_sale_ids(&self, room_id: &str) -> Result<Vec<String>, ApiError> {
        let now = now_ms();
        Ok(self
            .inner
            .store
            .room_sales(room_id, true)
            .await?
            .into_iter()
            .filter(|r| r.closes_at() > now)
            .map(|r| r.id)
            .collect())
    }

    /// Ends a sale now: no new reservations; outstanding holds stay payable until they
    /// expire. Idempotent.
    pub async fn end(&self, sale_id: &str) -> Result<Sale, ApiError> {
        let entry = self.entry(sale_id).await?;
        let now = now_ms();
        let row = entry.row();
        if row.closes_at() > now {
            self.with_sale(&entry, || self.inner.engine.end_sale(sale_id, now))
                .await
                .map_err(stock_error)?;
            let stored = self.inner.store.end_sale_early(sale_id, now).await?;
            entry.row.write().ended_early_at = stored.ended_early_at;
        }
        self.step(&entry).await;
        Ok(self.get(sale_id).await?.1)
    }

    /// Ends every open sale of a room (the room ended).
    pub async fn end_room(&self, room_id: &str) -> Result<(), ApiError> {
        for row in self.inner.store.room_sales(room_id, true).await? {
            self.end(&row.id).await?;
        }
        Ok(())
    }

    /// Reserves units for a buyer. 429 past the buyer's rate; the engine's rejections
    /// become their 409 codes; a replay of the key returns the first outcome.
    pub async fn reserve(&self, r: Reservation<'_>) -> Result<harvest_proto::Hold, ApiError> {
        let started = Instant::now();
        let result = self.reserve_inner(&r).await;
        let outcome = match &result {
            Ok(_) => "held",
            Err(e) => e.code.as_str(),
        };
        metrics::counter!("harvest_reservations_total", "outcome" => outcome).increment(1);
        metrics::histogram!("harvest_reservation_seconds").record(started.elapsed().as_secs_f64());
        result
    }

    async fn reserve_inner(&self, r: &Reservation<'_>) -> Result<harvest_proto::Hold, ApiError> {
        if self.inner.limiter.check_key(&r.user_id.to_owned()).is_err() {
            let mut e = ApiError::new(ErrorCode::RateLimited, "too many reservations; slow down");
            e.retry_after = Some(1);
            return Err(e);
        }
        let entry = self.entry(r.sale_id).await?;
        let row = entry.row();
        if entry.rebuilt.load(Ordering::Acquire)
            && let Some(answer) = self.replay_from_sql(&row, r).await?
        {
            return answer;
        }
        let hold_id = harvest_store::new_id();
        let now = now_ms();
        let request = ReserveRequest {
            sale_id: r.sale_id.to_owned(),
            user_id: r.user_id.to_owned(),
            quantity: r.quantity,
            idempotency_key: r.idempotency_key.to_owned(),
            request_fingerprint: r.fingerprint.clone(),
            hold_id: hold_id.clone(),
            now_ms: now,
        };
        let outcome = self
            .with_sale(&entry, || async {
                match self.inner.engine.reserve(request.clone()).await {
                    // The engine has no such sale: rebuild it like a lost one.
                    Ok(ReserveOutcome::Rejected(Reject::NotFound)) => {
                        Err(StockError::SaleStateLost {
                            sale_id: r.sale_id.to_owned(),
                        })
                    }
                    other => other,
                }
            })
            .await
            .map_err(stock_error)?;
        match outcome {
            ReserveOutcome::Held(hold) => {
                // Recorded on replays too: the first answer may have been lost with its
                // write (a timeout whose script ran); a final status is never overwritten.
                self.record(&row, &hold, None, Some(r));
                if hold.hold_id == hold_id {
                    entry.dirty.store(true, Ordering::Release);
                }
                Ok(hold_view(&row, &hold, None))
            }
            ReserveOutcome::Rejected(reject) => {
                if reject == Reject::SoldOut {
                    entry.dirty.store(true, Ordering::Release);
                }
                Err(reject_error(reject))
            }
        }
    }

    /// The first answer to a key whose hold was made before the engine's state was
    /// rebuilt (the rebuild does not bring back idempotency records).
    async fn replay_from_sql(
        &self,
        row: &SaleRow,
        r: &Reservation<'_>,
    ) -> Result<Option<Result<harvest_proto::Hold, ApiError>>, ApiError> {
        let Some(stored) = self
            .inner
            .store
            .hold_by_key(&row.id, r.user_id, r.idempotency_key)
            .await?
        else {
            return Ok(None);
        };
        if stored.request_fingerprint.as_deref() != Some(r.fingerprint.as_str()) {
            return Ok(Some(Err(reject_error(Reject::IdempotencyKeyReused))));
        }
        let first = Hold {
            // A replay answers the hold as it was first answered.
            status: HoldStatus::Held,
            ..stored_hold(stored)
        };
        Ok(Some(Ok(hold_view(row, &first, None))))
    }

    /// A hold as its buyer (or an admin) sees it; 404 for anyone else.
    pub async fn hold(
        &self,
        hold_id: &str,
        viewer: &crate::auth::User,
    ) -> Result<harvest_proto::Hold, ApiError> {
        let (row, hold, order_id) = self.find_hold(hold_id).await?;
        if hold.user_id != viewer.id && !viewer.is_admin() {
            return Err(ApiError::not_found("hold"));
        }
        Ok(hold_view(&row, &hold, order_id))
    }

    /// A payment for the hold succeeded: its units become sold. Paying a paid hold
    /// returns it unchanged; a hold that ended unpaid answers
    /// [`StockError::LateHold`] and takes no stock.
    pub async fn confirm_paid(&self, row: &SaleRow, hold_id: &str) -> Result<Hold, StockError> {
        let entry = self.entry(&row.id).await.map_err(|e| {
            StockError::Unavailable(format!("sale {} unavailable: {}", row.id, e.message))
        })?;
        let hold = self
            .with_sale(&entry, || self.inner.engine.confirm_paid(hold_id, now_ms()))
            .await?;
        entry.dirty.store(true, Ordering::Release);
        Ok(hold)
    }

    /// Finds a hold in the engine, or in SQL when the engine no longer has it.
    pub async fn find_hold(
        &self,
        hold_id: &str,
    ) -> Result<(SaleRow, Hold, Option<String>), ApiError> {
        match self.inner.engine.hold(hold_id).await {
            Ok(hold) => {
                let row = self.entry(&hold.sale_id).await?.row();
                let order_id = match hold.status {
                    HoldStatus::Paid => self
                        .inner
                        .store
                        .order_for_hold(hold_id)
                        .await
                        .ok()
                        .flatten()
                        .map(|o| o.id),
                    _ => None,
                };
                Ok((row, hold, order_id))
            }
            Err(StockError::HoldNotFound(_)) => {
                let stored = match self.inner.store.hold(hold_id).await {
                    Ok(h) => h,
                    Err(StoreError::NotFound) => return Err(ApiError::not_found("hold")),
                    Err(e) => return Err(e.into()),
                };
                let row = self.entry(&stored.sale_id).await?.row();
                let order_id = stored.order_id.clone();
                Ok((row, stored_hold(stored), order_id))
            }
            Err(e) => Err(stock_error(e)),
        }
    }

    /// The buyer cancels a hold: its units return to stock exactly once.
    pub async fn release(
        &self,
        hold_id: &str,
        buyer: &crate::auth::User,
    ) -> Result<harvest_proto::Hold, ApiError> {
        let (row, hold, _) = self.find_hold(hold_id).await?;
        if hold.user_id != buyer.id {
            return Err(ApiError::not_found("hold"));
        }
        let entry = self.entry(&row.id).await?;
        let released = self
            .with_sale(&entry, || {
                self.inner.engine.release(hold_id, &buyer.id, now_ms())
            })
            .await;
        let released = match released {
            Ok(h) => h,
            // The engine forgot a hold that SQL knows ended: answer from its status.
            Err(StockError::HoldNotFound(_)) => {
                return Err(stock_error(match hold.status {
                    HoldStatus::Paid => StockError::HoldPaid(hold.hold_id),
                    HoldStatus::Released => StockError::HoldReleased(hold.hold_id),
                    HoldStatus::Expired => StockError::HoldExpired(hold.hold_id),
                    HoldStatus::Held => StockError::HoldNotFound(hold.hold_id),
                }));
            }
            Err(e) => return Err(stock_error(e)),
        };
        self.record(&row, &released, Some(now_ms()), None);
        self.inner.engine.stock_returned(&row.id);
        entry.dirty.store(true, Ordering::Release);
        Ok(hold_view(&row, &released, None))
    }

    /// A page of the sale's allocation record: successful holds in position order,
    /// those after `after_position`.
    pub async fn allocations(
        &self,
        sale_id: &str,
        after_position: u64,
        limit: usize,
    ) -> Result<Vec<harvest_proto::Allocation>, ApiError> {
        let entry = self.entry(sale_id).await?;
        let holds = self
            .with_sale(&entry, || {
                self.inner
                    .engine
                    .allocations(sale_id, after_position, limit)
            })
            .await
            .map_err(stock_error)?;
        Ok(holds
            .into_iter()
            .map(|h| harvest_proto::Allocation {
                position: h.position,
                hold_id: h.hold_id,
                user_id: h.user_id,
                quantity: i64::from(h.quantity),
                status: wire_hold_status(h.status),
                created_at: at(h.created_at_ms),
            })
            .collect())
    }

    /// Sends a hold's current state to the recorder.
    fn record(
        &self,
        row: &SaleRow,
        hold: &Hold,
        ended_at: Option<i64>,
        made_by: Option<&Reservation<'_>>,
    ) {
        let msg = RecordMsg::Hold(hold_row(row, hold, ended_at, made_by));
        if self.inner.recorder.send(msg).is_err() {
            tracing::warn!(hold_id = %hold.hold_id, "hold recorder stopped; hold not written to SQL");
        }
    }

    async fn publish(&self, room_id: &str, data: impl Into<wire::EventData>) -> bool {
        match self.inner.live.publish(room_id, data).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(room_id, error = %e, "could not publish a sale event");
                false
            }
        }
    }

    /// Moves one sale along its lifecycle and tells its room what changed.
    async fn step(&self, entry: &Arc<SaleEntry>) {
        let mut announced = entry.gate.lock().await;
        let row = entry.row();
        let now = now_ms();
        match row.phase {
            SalePhase::Ended => {}
            SalePhase::Scheduled if now < row.starts_at && now < row.closes_at() => {}
            SalePhase::Scheduled if now >= row.closes_at() => {
                // Over before it started (ended early while scheduled).
                self.finish(entry, &row, SalePhase::Scheduled, &mut announced)
                    .await;
            }
            SalePhase::Scheduled => {
                let Some(info) = self
                    .or_rebuild(entry, self.inner.engine.sale(&row.id).await)
                    .await
                else {
                    return;
                };
                match self
                    .inner
                    .store
                    .advance_sale_phase(&row.id, SalePhase::Scheduled, SalePhase::Live)
                    .await
                {
                    Ok(true) => {
                        entry.row.write().phase = SalePhase::Live;
                        announced.counts = Some(info.counts);
                        announced.at = Some(Instant::now());
                        let sale = info_view(&row, &info, now);
                        self.publish(&row.room_id, wire::SaleStarted { sale }).await;
                    }
                    // Another node announced it.
                    Ok(false) => self.reload(entry).await,
                    Err(e) => {
                        tracing::warn!(sale_id = %row.id, error = %e, "cannot start the sale")
                    }
                }
            }
            SalePhase::Live if now >= row.closes_at() => {
                self.finish(entry, &row, SalePhase::Live, &mut announced)
                    .await;
            }
            SalePhase::Live => {
                if !entry.dirty.load(Ordering::Acquire) {
                    return;
                }
                if announced
                    .at
                    .is_some_and(|t| t.elapsed() < STOCK_EVENT_INTERVAL)
                {
                    return;
                }
                entry.dirty.store(false, Ordering::Release);
                let Some(counts) = self
                    .or_rebuild(entry, self.inner.engine.counts(&row.id).await)
                    .await
                else {
                    entry.dirty.store(true, Ordering::Release);
                    return;
                };
                self.announce_stock(&row, counts, &mut announced).await;
            }
        }
    }

    /// Publishes `sale.stock` when the numbers changed, then `sale.sold_out` once when
    /// nothing remains.
    async fn announce_stock(&self, row: &SaleRow, counts: SaleCounts, announced: &mut Announced) {
        if announced.counts != Some(counts) {
            announced.counts = Some(counts);
            announced.at = Some(Instant::now());
            self.publish(&row.room_id, stock_event(&row.id, counts))
                .await;
        }
        if counts.remaining == 0 && !announced.sold_out {
            announced.sold_out = true;
            self.publish(
                &row.room_id,
                wire::SaleSoldOut {
                    sale_id: row.id.clone(),
                },
            )
            .await;
        } else if counts.remaining > 0 {
            announced.sold_out = false;
        }
    }

    /// The sale's time is over: final numbers, then `sale.ended`, announced once.
    async fn finish(
        &self,
        entry: &SaleEntry,
        row: &SaleRow,
        from: SalePhase,
        announced: &mut Announced,
    ) {
        let Some(counts) = self
            .or_rebuild(entry, self.inner.engine.counts(&row.id).await)
            .await
        else {
            return;
        };
        match self
            .inner
            .store
            .advance_sale_phase(&row.id, from, SalePhase::Ended)
            .await
        {
            Ok(true) => {
                entry.row.write().phase = SalePhase::Ended;
                if from == SalePhase::Live && announced.counts != Some(counts) {
                    announced.counts = Some(counts);
                    self.publish(&row.room_id, stock_event(&row.id, counts))
                        .await;
                }
                self.publish(
                    &row.room_id,
                    wire::SaleEnded {
                        sale_id: row.id.clone(),
                        sold: counts.sold as i64,
                    },
                )
                .await;
            }
            Ok(false) => self.reload(entry).await,
            Err(e) => tracing::warn!(sale_id = %row.id, error = %e, "cannot end the sale"),
        }
    }

    /// The engine's answer; `None` when it failed, after starting a rebuild if the
    /// engine lost the sale (the next driver tick tries again).
    async fn or_rebuild<T>(&self, entry: &SaleEntry, answer: Result<T, StockError>) -> Option<T> {
        match answer {
            Ok(v) => Some(v),
            Err(e) => {
                if is_lost(&e) {
                    let _ = self.restore(entry).await;
                }
                None
            }
        }
    }

    /// Re-reads a sale's row (another node moved it).
    async fn reload(&self, entry: &SaleEntry) {
        let id = entry.id();
        if let Ok(row) = self.inner.store.sale(&id).await {
            *entry.row.write() = row;
        }
    }

    fn spawn_driver(&self) {
        let flash = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(DRIVER_TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            while !flash.inner.stopped.load(Ordering::Acquire) {
                tick.tick().await;
                let open: Vec<Arc<SaleEntry>> = flash
                    .inner
                    .sales
                    .iter()
                    .filter(|e| e.row.read().phase != SalePhase::Ended)
                    .map(|e| e.value().clone())
                    .collect();
                for entry in open {
                    flash.step(&entry).await;
                }
            }
        });
    }

    fn spawn_sweeper(&self) {
        let flash = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(flash.inner.sweep_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut checked = Instant::now();
            while !flash.inner.stopped.load(Ordering::Acquire) {
                tick.tick().await;
                if checked.elapsed() >= STATE_CHECK_INTERVAL {
                    checked = Instant::now();
                    flash.rebuild_lost().await;
                }
                flash.sweep().await;
            }
        });
    }

    /// Rebuilds from SQL every sale the engine lost (Redis restarted empty) among
    /// those that may still sell or have holds to expire. Without it a quiet sale would
    /// stay lost until its next request, and its holds would never expire: the expiry
    /// index went with the rest of its state.
    async fn rebuild_lost(&self) {
        if self.inner.backend == "redis" {
            self.discover().await;
        }
        let now = now_ms();
        let watched: Vec<Arc<SaleEntry>> = self
            .inner
            .sales
            .iter()
            .filter(|e| {
                let row = e.row.read();
                row.phase != SalePhase::Ended
                    || now
                        < row
                            .closes_at()
                            .saturating_add(row.hold_ttl_s.saturating_mul(1000))
                            .saturating_add(HOLD_GRACE_MS)
            })
            .map(|e| e.value().clone())
            .collect();
        for entry in watched {
            match self.inner.engine.sale(&entry.id()).await {
                Err(e) if is_lost(&e) => {
                    if let Err(e) = self.restore(&entry).await {
                        tracing::warn!(sale_id = %entry.id(), error = %e, "cannot rebuild the lost sale yet");
                    }
                }
                // Down: look again next time rather than wait on every sale.
                Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    /// Takes on the open sales other nodes created, so this node's driver announces
    /// their lifecycle too (the compare-and-set on `sales.phase` keeps each
    /// announcement to one node) even if the creating node is gone.
    async fn discover(&self) {
        match self.inner.store.open_sales().await {
            Ok(rows) => {
                for row in rows {
                    if !self.inner.sales.contains_key(&row.id) {
                        self.inner
                            .sales
                            .entry(row.id.clone())
                            .or_insert_with(|| SaleEntry::new(row));
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot look for new sales"),
        }
    }

    /// Expires every due hold, in small batches.
    pub async fn sweep(&self) -> usize {
        let mut total = 0;
        loop {
            let due = match self.inner.engine.expire_due(now_ms(), SWEEP_BATCH).await {
                Ok(due) => due,
                Err(e) => {
                    tracing::warn!(error = %e, "expiring holds failed");
                    return total;
                }
            };
            total += due.len();
            for hold in &due {
                match self.entry(&hold.sale_id).await {
                    Ok(entry) => {
                        let row = entry.row();
                        self.record(&row, hold, Some(hold.expires_at_ms), None);
                        entry.dirty.store(true, Ordering::Release);
                    }
                    Err(e) => {
                        tracing::warn!(sale_id = %hold.sale_id, error = ?e.message, "expired a hold of an unknown sale")
                    }
                }
                self.inner.engine.stock_returned(&hold.sale_id);
                self.inner.live.private(
                    &hold.user_id,
                    wire::HoldExpired {
                        hold_id: hold.hold_id.clone(),
                        sale_id: hold.sale_id.clone(),
                    },
                );
            }
            if due.len() < SWEEP_BATCH {
                return total;
            }
        }
    }
}

/// The SQL row of a hold of the sale `row`.
pub fn hold_row(
    row: &SaleRow,
    hold: &Hold,
    ended_at: Option<i64>,
    made_by: Option<&Reservation<'_>>,
) -> HoldRow {
    let quantity = i64::from(hold.quantity);
    HoldRow {
        id: hold.hold_id.clone(),
        sale_id: hold.sale_id.clone(),
        user_id: hold.user_id.clone(),
        quantity,
        unit_price: row.price,
        amount: quantity.saturating_mul(row.price),
        currency: row.currency.clone(),
        position: i64::try_from(hold.position).unwrap_or(i64::MAX),
        status: hold.status.as_str().to_owned(),
        created_at: hold.created_at_ms,
        expires_at: hold.expires_at_ms,
        ended_at,
        order_id: None,
        user_name: made_by.map(|r| r.user_name.to_owned()),
        idempotency_key: made_by.map(|r| r.idempotency_key.to_owned()),
        request_fingerprint: made_by.map(|r| r.fingerprint.clone()),
    }
}

/// What SQL knows of a sale, as the engine rebuilds it: every hold (a hold with an
/// order counts as paid, whatever its row says) and the paid units per buyer.
pub async fn sale_record(store: &Store, row: &SaleRow) -> Result<SaleRecord, StoreError> {
    let holds = store.sale_holds(&row.id).await?;
    // Orders are the truth about what was paid (a hold row may lag behind its order).
    let paid: std::collections::HashSet<String> =
        store.sale_paid_holds(&row.id).await?.into_iter().collect();
    let sold_by_user: HashMap<String, u64> = store
        .sale_paid_by_user(&row.id)
        .await?
        .into_iter()
        .map(|(user, units)| (user, u64::try_from(units).unwrap_or(0)))
        .collect();
    let holds = holds
        .into_iter()
        .map(|h| {
            let has_order = paid.contains(&h.id);
            let hold = stored_hold(h);
            if has_order {
                Hold {
                    status: HoldStatus::Paid,
                    ..hold
                }
            } else {
                hold
            }
        })
        .collect();
    Ok(SaleRecord {
        spec: spec_of(row),
        ended: row.ended_early_at.is_some(),
        holds,
        sold_by_user,
    })
}

/// A hold as SQL stored it, in the engine's terms.
fn stored_hold(h: HoldRow) -> Hold {
    Hold {
        status: match h.status.as_str() {
            "held" => HoldStatus::Held,
            "paid" => HoldStatus::Paid,
            "released" => HoldStatus::Released,
            _ => HoldStatus::Expired,
        },
        quantity: u32::try_from(h.quantity).unwrap_or(u32::MAX),
        position: u64::try_from(h.position).unwrap_or(0),
        created_at_ms: h.created_at,
        expires_at_ms: h.expires_at,
        hold_id: h.id,
        sale_id: h.sale_id,
        user_id: h.user_id,
    }
}

/// Whether an engine error means the engine does not have the sale's state.
fn is_lost(e: &StockError) -> bool {
    matches!(
        e,
        StockError::SaleStateLost { .. } | StockError::SaleNotFound(_)
    )
}

fn now_ms() -> i64 {
    harvest_hub::now_ms()
}

fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// The engine's view of a stored sale.
fn spec_of(row: &SaleRow) -> SaleSpec {
    SaleSpec {
        sale_id: row.id.clone(),
        stock: u64::try_from(row.stock).unwrap_or(1),
        per_user_limit: u32::try_from(row.per_user_limit).unwrap_or(u32::MAX),
        hold_ttl: Duration::from_secs(u64::try_from(row.hold_ttl_s).unwrap_or(1)),
        starts_at_ms: row.starts_at,
        ends_at_ms: row.ends_at,
    }
}

fn info_view(row: &SaleRow, info: &SaleInfo, now: i64) -> Sale {
    let ended = info.ended || row.ended_early_at.is_some();
    sale_view(row, info.counts, ended, now)
}

/// The API's Sale: the stored row with the engine's counts and the status at `now`.
fn sale_view(row: &SaleRow, counts: SaleCounts, ended_early: bool, now: i64) -> Sale {
    let info = SaleInfo {
        spec: spec_of(row),
        ended: ended_early || row.ended_early_at.is_some(),
        counts,
    };
    let status = match info.status(now) {
        SaleStatus::Scheduled => WireSaleStatus::Scheduled,
        SaleStatus::Live => WireSaleStatus::Live,
        SaleStatus::SoldOut => WireSaleStatus::SoldOut,
        SaleStatus::Ended => WireSaleStatus::Ended,
    };
    Sale {
        id: row.id.clone(),
        room_id: row.room_id.clone(),
        product_id: row.product_id.clone(),
        price: row.price,
        currency: row.currency.clone(),
        stock: row.stock,
        per_user_limit: row.per_user_limit,
        starts_at: at(row.starts_at),
        ends_at: at(row.closes_at()),
        hold_ttl_s: row.hold_ttl_s,
        status,
        remaining: counts.remaining as i64,
        held: counts.held as i64,
        sold: counts.sold as i64,
    }
}

fn stock_event(sale_id: &str, counts: SaleCounts) -> wire::SaleStock {
    wire::SaleStock {
        sale_id: sale_id.to_owned(),
        remaining: counts.remaining as i64,
        held: counts.held as i64,
        sold: counts.sold as i64,
    }
}

fn wire_hold_status(status: HoldStatus) -> WireHoldStatus {
    match status {
        HoldStatus::Held => WireHoldStatus::Held,
        HoldStatus::Paid => WireHoldStatus::Paid,
        HoldStatus::Released => WireHoldStatus::Released,
        HoldStatus::Expired => WireHoldStatus::Expired,
    }
}

pub fn hold_view(row: &SaleRow, hold: &Hold, order_id: Option<String>) -> harvest_proto::Hold {
    let quantity = i64::from(hold.quantity);
    harvest_proto::Hold {
        id: hold.hold_id.clone(),
        sale_id: hold.sale_id.clone(),
        user_id: hold.user_id.clone(),
        quantity,
        unit_price: row.price,
        amount: quantity.saturating_mul(row.price),
        currency: row.currency.clone(),
        status: wire_hold_status(hold.status),
        created_at: at(hold.created_at_ms),
        expires_at: at(hold.expires_at_ms),
        order_id,
    }
}

fn reject_error(reject: Reject) -> ApiError {
    let (code, message) = match reject {
        Reject::NotStarted => (ErrorCode::NotStarted, "the sale has not started yet"),
        Reject::SaleEnded => (ErrorCode::SaleEnded, "the sale has ended"),
        Reject::SoldOut => (ErrorCode::SoldOut, "sold out: nothing remains"),
        Reject::LimitExceeded => (
            ErrorCode::LimitExceeded,
            "this would pass your limit for this sale",
        ),
        Reject::InsufficientStock => (
            ErrorCode::InsufficientStock,
            "fewer units remain than you asked for",
        ),
        Reject::IdempotencyKeyReused => (
            ErrorCode::IdempotencyKeyReused,
            "this Idempotency-Key was used with a different request body",
        ),
        Reject::NotFound => (ErrorCode::NotFound, "flash sale not found"),
    };
    ApiError::new(code, message)
}

/// The API answer of an engine error.
pub fn stock_error(e: StockError) -> ApiError {
    match e {
        StockError::SaleNotFound(_) => ApiError::not_found("flash sale"),
        StockError::HoldNotFound(_) => ApiError::not_found("hold"),
        StockError::HoldPaid(_) => ApiError::new(ErrorCode::HoldPaid, "the hold is paid"),
        StockError::HoldExpired(_) => ApiError::new(ErrorCode::HoldExpired, "the hold has expired"),
        StockError::HoldReleased(_) => {
            ApiError::new(ErrorCode::HoldReleased, "the hold was already released")
        }
        StockError::LateHold { status, .. } => match status {
            HoldStatus::Released => ApiError::new(ErrorCode::HoldReleased, "the hold was released"),
            _ => ApiError::new(ErrorCode::HoldExpired, "the hold has expired"),
        },
        StockError::Unavailable(reason) | StockError::SaleStateLost { sale_id: reason } => {
            tracing::warn!(%reason, "stock engine unavailable");
            let mut api = ApiError::new(
                ErrorCode::Unavailable,
                "the stock engine is unavailable; retry with the same Idempotency-Key",
            );
            api.retry_after = Some(1);
            api
        }
        other => {
            tracing::error!(error = %other, "stock engine failure");
            ApiError::internal()
        }
    }
}

async fn record_loop(store: Store, mut rx: mpsc::UnboundedReceiver<RecordMsg>) {
    let mut batch: Vec<HoldRow> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut flushes = Vec::new();
        let mut take = |msg: RecordMsg, batch: &mut Vec<HoldRow>| match msg {
            RecordMsg::Hold(h) => batch.push(h),
            RecordMsg::Flush(tx) => flushes.push(tx),
        };
        take(first, &mut batch);
        // Everything already queued, up to 1,000 rows per transaction.
        while batch.len() < 1000 {
            match rx.try_recv() {
                Ok(msg) => take(msg, &mut batch),
                Err(_) => break,
            }
        }
        write_holds(&store, &mut batch).await;
        for tx in flushes {
            let _ = tx.send(());
        }
    }
}

/// Writes a batch, retrying with backoff while the database is unavailable.
async fn write_holds(store: &Store, batch: &mut Vec<HoldRow>) {
    if batch.is_empty() {
        return;
    }
    let mut delay = Duration::from_millis(100);
    for attempt in 0..50 {
        match store.record_holds(batch).await {
            Ok(()) => {
                batch.clear();
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, attempt, holds = batch.len(), "writing holds failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
    tracing::error!(holds = batch.len(), "giving up writing holds");
    batch.clear();
}
