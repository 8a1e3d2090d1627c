//! Payments: a paid hold becomes an order, and a paid order is never lost.
//!
//! [`Payments::pay`] is the one path from "the provider says paid" to an order, used by
//! the simulated checkout and by the signed webhook:
//!
//! 1. the stock engine moves the hold's units from held to sold (idempotent: a paid
//!    hold stays paid; a hold that ended unpaid is a late payment and takes nothing);
//! 2. the order is written to SQL by the **group-commit writers**: concurrent
//!    confirmations share one transaction, and the unique `hold_id` keeps one order per
//!    hold whatever the races;
//! 3. when SQL cannot take it, the confirmation goes to the **journal** (a Redis stream
//!    when Redis is configured, else an append-only file synced to disk) and a replayer
//!    writes it to SQL once the store answers again; readiness reports the journal's
//!    depth meanwhile;
//! 4. the room hears `order.placed` (buyer's name masked), the buyer `order.paid`.
//!
//! Confirmations of one hold are serialised on a node, so concurrent checkouts of a
//! hold all answer with the one order.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use harvest_proto::ws as wire;
use harvest_proto::{ErrorCode, Order, OrderStatus};
use harvest_stock::{Hold, HoldStatus, StockError};
use harvest_store::{PaidOrder, SaleRow, Store, StoreError};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::config::Settings;
use crate::contests::Contests;
use crate::error::ApiError;
use crate::flash::{FlashSales, hold_row, stock_error};
use crate::live::Live;

/// Orders per group-commit transaction, at most.
const MAX_GROUP: usize = 512;
/// Writers committing groups side by side.
const WRITERS: usize = 4;
/// Journal entries replayed per SQL transaction.
const REPLAY_BATCH: usize = 256;

/// The payment service of one node. Cheap to clone.
#[derive(Clone)]
pub struct Payments {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    flash: FlashSales,
    live: Live,
    contests: Contests,
    writer: mpsc::Sender<WriteReq>,
    journal: Journal,
    /// Orders journaled and not yet in SQL, by hold id (answers repeats meanwhile).
    journaled: DashMap<String, Order>,
    /// Serialises confirmations of one hold on this node.
    locks: DashMap<String, Arc<Mutex<()>>>,
}

struct WriteReq {
    paid: PaidOrder,
    reply: oneshot::Sender<Result<Order, StoreError>>,
}

/// Why a payment did not produce an order.
#[derive(Debug)]
pub enum PayError {
    /// The hold ended unpaid (`expired` or `released`): a late payment, no stock taken.
    Late(HoldStatus),
    /// Neither SQL nor the journal could record it, or the stock engine is down:
    /// nothing is known to be safe, retry.
    Unavailable(String),
    /// Any other answer (unknown hold, a bug).
    Api(ApiError),
}

impl From<PayError> for ApiError {
    fn from(e: PayError) -> Self {
        match e {
            PayError::Late(HoldStatus::Released) => ApiError::new(
                ErrorCode::HoldReleased,
                "the hold was released before payment",
            ),
            PayError::Late(_) => {
                ApiError::new(ErrorCode::HoldExpired, "the hold expired before payment")
            }
            PayError::Unavailable(reason) => {
                tracing::warn!(%reason, "payment not recorded");
                let mut api = ApiError::new(
                    ErrorCode::Unavailable,
                    "the payment cannot be recorded safely yet; retry",
                );
                api.retry_after = Some(1);
                api
            }
            PayError::Api(api) => api,
        }
    }
}

impl Payments {
    /// Starts the group-commit writers and the journal replayer.
    pub async fn start(
        settings: &Settings,
        store: Store,
        flash: FlashSales,
        live: Live,
        contests: Contests,
    ) -> anyhow::Result<Self> {
        let journal = match &settings.redis_url {
            Some(url) => Journal::redis(
                url.expose(),
                &settings.redis_key_prefix,
                Duration::from_millis(settings.redis_timeout_ms.max(1)),
            )?,
            None => Journal::file(settings.data_dir.join("order-journal.jsonl")).await?,
        };
        let (tx, rx) = mpsc::channel::<WriteReq>(16_384);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..WRITERS {
            tokio::spawn(write_loop(store.clone(), rx.clone()));
        }
        let payments = Self {
            inner: Arc::new(Inner {
                store,
                flash,
                live,
                contests,
                writer: tx,
                journal,
                journaled: DashMap::new(),
                locks: DashMap::new(),
            }),
        };
        // Orders journaled before a restart answer their repeats until they are in SQL.
        match payments.inner.journal.peek(1_000_000).await {
            Ok(entries) => {
                for (_, p) in entries {
                    payments
                        .inner
                        .journaled
                        .insert(p.order.hold_id.clone(), p.order);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the order journal yet"),
        }
        payments.spawn_replayer();
        Ok(payments)
    }

    /// Confirmations waiting in the journal for SQL (0 when SQL has them all).
    pub async fn journal_depth(&self) -> u64 {
        self.inner.journal.depth().await.unwrap_or(0)
    }

    /// The order that paid a hold: in SQL, or journaled on its way there.
    pub async fn order_for_hold(&self, hold_id: &str) -> Result<Option<Order>, ApiError> {
        if let Some(o) = self.inner.journaled.get(hold_id) {
            return Ok(Some(o.clone()));
        }
        Ok(self.inner.store.order_for_hold(hold_id).await?)
    }

    /// Records a successful payment of a hold and returns its order (the existing one
    /// when the hold was paid before).
    pub async fn pay(
        &self,
        row: &SaleRow,
        hold: &Hold,
        buyer_name: Option<&str>,
        provider: &str,
        provider_ref: Option<&str>,
    ) -> Result<Order, PayError> {
        let lock = self
            .inner
            .locks
            .entry(hold.hold_id.clone())
            .or_default()
            .clone();
        let _one = lock.lock().await;
        let result = self
            .pay_locked(row, hold, buyer_name, provider, provider_ref)
            .await;
        drop(_one);
        drop(lock);
        // Forget the lock unless another confirmation of the hold holds a handle to it.
        self.inner
            .locks
            .remove_if(&hold.hold_id, |_, l| Arc::strong_count(l) == 1);
        let status = match &result {
            Ok(_) => "paid",
            Err(PayError::Late(_)) => "late",
            Err(_) => "failed",
        };
        metrics::counter!("harvest_orders_total", "status" => status).increment(1);
        result
    }

    async fn pay_locked(
        &self,
        row: &SaleRow,
        hold: &Hold,
        buyer_name: Option<&str>,
        provider: &str,
        provider_ref: Option<&str>,
    ) -> Result<Order, PayError> {
        if let Some(o) = self.inner.journaled.get(&hold.hold_id) {
            return Ok(o.clone());
        }
        // A hold paid before has its order in SQL (the journal was checked above).
        // A held one may be paid by a racing node too: the unique hold id settles that.
        if hold.status == HoldStatus::Paid {
            match self.inner.store.order_for_hold(&hold.hold_id).await {
                Ok(Some(order)) => return Ok(order),
                Ok(None) => {}
                Err(e) => return Err(PayError::Unavailable(e.to_string())),
            }
        }
        let paid = match self.inner.flash.confirm_paid(row, &hold.hold_id).await {
            Ok(h) => h,
            Err(StockError::LateHold { status, .. }) => return Err(PayError::Late(status)),
            Err(e) if e.is_transient() => return Err(PayError::Unavailable(e.to_string())),
            Err(e) => return Err(PayError::Api(stock_error(e))),
        };
        let now = harvest_hub::now_ms();
        let quantity = i64::from(paid.quantity);
        let order = Order {
            id: harvest_store::new_id(),
            hold_id: paid.hold_id.clone(),
            sale_id: row.id.clone(),
            room_id: row.room_id.clone(),
            product_id: row.product_id.clone(),
            buyer_id: paid.user_id.clone(),
            quantity,
            unit_price: row.price,
            amount: quantity.saturating_mul(row.price),
            currency: row.currency.clone(),
            status: OrderStatus::Paid,
            paid_at: chrono::DateTime::from_timestamp_millis(now).unwrap_or_default(),
            refunded_at: None,
        };
        let stored_name = match buyer_name {
            Some(n) => Some(n.to_owned()),
            None => self
                .inner
                .store
                .hold(&paid.hold_id)
                .await
                .ok()
                .and_then(|h| h.user_name),
        };
        let record = PaidOrder {
            order: order.clone(),
            buyer_name: stored_name.unwrap_or_else(|| paid.user_id.clone()),
            provider: provider.to_owned(),
            provider_ref: provider_ref.map(str::to_owned),
            hold: hold_row(row, &paid, Some(now), None),
        };
        let stored = match self.write(record.clone()).await {
            Ok(stored) => stored,
            Err(e) if e.is_unavailable() => {
                tracing::warn!(error = %e, hold_id = %paid.hold_id, "SQL unavailable: journaling the order");
                match self.inner.journal.append(&record).await {
                    Ok(standing) => {
                        // Another node may have journaled this hold's order first.
                        self.inner
                            .journaled
                            .insert(paid.hold_id.clone(), standing.order.clone());
                        metrics::gauge!("harvest_journal_depth")
                            .set(self.journal_depth().await as f64);
                        standing.order
                    }
                    Err(je) => {
                        return Err(PayError::Unavailable(format!("SQL: {e}; journal: {je}")));
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "writing an order failed");
                return Err(PayError::Api(ApiError::internal()));
            }
        };
        if stored.id == order.id {
            self.announce(&record).await;
        }
        Ok(stored)
    }

    async fn write(&self, paid: PaidOrder) -> Result<Order, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .writer
            .send(WriteReq { paid, reply })
            .await
            .map_err(|_| StoreError::Unavailable("order writers stopped".into()))?;
        rx.await
            .unwrap_or_else(|_| Err(StoreError::Unavailable("order writer stopped".into())))
    }

    /// `order.placed` to the room, `order.paid` to the buyer.
    async fn announce(&self, paid: &PaidOrder) {
        let o = &paid.order;
        self.inner.contests.order_paid(o);
        if let Err(e) = self
            .inner
            .live
            .publish(
                &o.room_id,
                wire::OrderPlaced {
                    sale_id: o.sale_id.clone(),
                    product_id: o.product_id.clone(),
                    quantity: o.quantity,
                    buyer: mask_name(&paid.buyer_name),
                },
            )
            .await
        {
            tracing::warn!(room_id = %o.room_id, error = %e, "could not publish order.placed");
        }
        self.inner
            .live
            .private(&o.buyer_id, wire::OrderPaid { order: o.clone() });
    }

    fn spawn_replayer(&self) {
        let payments = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                if let Err(e) = payments.replay().await {
                    tracing::warn!(error = %e, "replaying the order journal failed; will retry");
                }
            }
        });
    }

    /// Writes journaled orders to SQL, oldest first, and drops them from the journal.
    pub async fn replay(&self) -> anyhow::Result<usize> {
        let mut total = 0;
        loop {
            let batch = self.inner.journal.peek(REPLAY_BATCH).await?;
            if batch.is_empty() {
                break;
            }
            let orders: Vec<PaidOrder> = batch.iter().map(|(_, p)| p.clone()).collect();
            self.inner.store.record_orders(&orders).await?;
            self.inner.journal.remove(&batch).await?;
            for p in &orders {
                // The live contests saw it when it was paid; after a restart they see
                // it now (a repeat is ignored).
                self.inner.contests.order_paid(&p.order);
                self.inner.journaled.remove(&p.order.hold_id);
            }
            total += batch.len();
            tracing::info!(orders = batch.len(), "journaled orders written to SQL");
        }
        metrics::gauge!("harvest_journal_depth").set(self.journal_depth().await as f64);
        Ok(total)
    }
}

/// Masks a display name for public notices: its first character, then `*` for the
/// rest (at least one): `张三` → `张*`, `alice` → `a****`.
pub fn mask_name(name: &str) -> String {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return "*".to_owned();
    };
    let rest = chars.count().max(1);
    let mut out = String::with_capacity(first.len_utf8() + rest);
    out.push(first);
    out.extend(std::iter::repeat_n('*', rest));
    out
}

async fn write_loop(store: Store, rx: Arc<Mutex<mpsc::Receiver<WriteReq>>>) {
    loop {
        let mut group = Vec::new();
        {
            let mut rx = rx.lock().await;
            match rx.recv().await {
                Some(first) => group.push(first),
                None => return,
            }
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(req) => group.push(req),
                    Err(_) => break,
                }
            }
        }
        let paid: Vec<PaidOrder> = group.iter().map(|r| r.paid.clone()).collect();
        match store.record_orders(&paid).await {
            Ok(orders) => {
                for (req, order) in group.into_iter().zip(orders) {
                    let _ = req.reply.send(Ok(order));
                }
            }
            Err(e) => {
                let unavailable = e.is_unavailable();
                let message = e.to_string();
                for req in group {
                    let err = if unavailable {
                        StoreError::Unavailable(message.clone())
                    } else {
                        StoreError::Unavailable(format!("group write failed: {message}"))
                    };
                    let _ = req.reply.send(Err(err));
                }
            }
        }
    }
}

/// Where confirmations wait while SQL is down.
enum Journal {
    /// JSON lines appended and synced to a local file.
    File { path: PathBuf, lock: Mutex<()> },
    /// A Redis stream (one entry per confirmation).
    Redis {
        /// One server or a Redis Cluster (both keys share one hash tag).
        conn: harvest_stock::RedisConn,
        /// The stream of confirmations.
        key: String,
        /// Hold id → its journaled confirmation (the first one wins).
        holds: String,
        timeout: Duration,
    },
}

impl Journal {
    async fn file(path: PathBuf) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        Ok(Self::File {
            path,
            lock: Mutex::new(()),
        })
    }

    fn redis(url: &str, prefix: &str, timeout: Duration) -> anyhow::Result<Self> {
        Ok(Self::Redis {
            conn: harvest_stock::RedisConn::new_lazy(url, timeout)?,
            // One hash tag: both keys live in one Redis Cluster slot.
            key: format!("{prefix}{{journal}}:orders"),
            holds: format!("{prefix}{{journal}}:holds"),
            timeout,
        })
    }

    /// Journals a confirmation unless the hold's order is journaled already; returns
    /// the confirmation that stands for the hold.
    async fn append(&self, paid: &PaidOrder) -> anyhow::Result<PaidOrder> {
        let line = serde_json::to_string(paid)?;
        match self {
            Self::File { path, lock } => {
                let _one = lock.lock().await;
                let mut f = tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .await?;
                f.write_all(format!("{line}\n").as_bytes()).await?;
                f.sync_data().await?;
                // One node writes this file, and it confirms a hold once at a time.
                Ok(paid.clone())
            }
            Self::Redis {
                conn,
                key,
                holds,
                timeout,
            } => {
                let mut conn = conn.clone();
                // The first confirmation of a hold wins across nodes.
                let script = redis::Script::new(
                    "if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 1 then \
                       redis.call('XADD', KEYS[1], '*', 'order', ARGV[2]) return ARGV[2] end \
                     return redis.call('HGET', KEYS[2], ARGV[1])",
                );
                let mut invocation = script.key(key);
                invocation.key(holds).arg(&paid.order.hold_id).arg(line);
                let standing: String =
                    tokio::time::timeout(*timeout, invocation.invoke_async(&mut conn)).await??;
                Ok(serde_json::from_str(&standing)?)
            }
        }
    }

    /// Up to `max` entries, oldest first: (entry id, confirmation).
    async fn peek(&self, max: usize) -> anyhow::Result<Vec<(String, PaidOrder)>> {
        match self {
            Self::File { path, lock } => {
                let _one = lock.lock().await;
                let text = match tokio::fs::read_to_string(path).await {
                    Ok(t) => t,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                    Err(e) => return Err(e.into()),
                };
                let mut out = Vec::new();
                for (i, line) in text.lines().enumerate().take(max) {
                    // A torn last line (a crash mid-append) was never acknowledged.
                    match serde_json::from_str::<PaidOrder>(line) {
                        Ok(p) => out.push((i.to_string(), p)),
                        Err(e) => {
                            tracing::warn!(line = i, error = %e, "skipping an unreadable journal line")
                        }
                    }
                }
                Ok(out)
            }
            Self::Redis {
                conn, key, timeout, ..
            } => {
                let mut conn = conn.clone();
                let entries = tokio::time::timeout(
                    *timeout,
                    redis::cmd("XRANGE")
                        .arg(key)
                        .arg("-")
                        .arg("+")
                        .arg("COUNT")
                        .arg(max)
                        .query_async::<Vec<(String, Vec<(String, String)>)>>(&mut conn),
                )
                .await??;
                let mut out = Vec::with_capacity(entries.len());
                for (id, fields) in entries {
                    if let Some((_, json)) = fields.iter().find(|(k, _)| k == "order") {
                        out.push((id, serde_json::from_str(json)?));
                    }
                }
                Ok(out)
            }
        }
    }

    /// Drops entries `peek` returned (they are in SQL now).
    async fn remove(&self, entries: &[(String, PaidOrder)]) -> anyhow::Result<()> {
        let ids: Vec<&String> = entries.iter().map(|(id, _)| id).collect();
        match self {
            Self::File { path, lock } => {
                let _one = lock.lock().await;
                let text = tokio::fs::read_to_string(path).await.unwrap_or_default();
                let drop: std::collections::HashSet<usize> =
                    ids.iter().filter_map(|i| i.parse().ok()).collect();
                let keep: String = text
                    .lines()
                    .enumerate()
                    // Torn lines (a crash mid-append) were never acknowledged: drop them too.
                    .filter(|(i, l)| {
                        !drop.contains(i) && serde_json::from_str::<PaidOrder>(l).is_ok()
                    })
                    .map(|(_, l)| format!("{l}\n"))
                    .collect();
                let tmp = path.with_extension("jsonl.tmp");
                let mut f = tokio::fs::File::create(&tmp).await?;
                f.write_all(keep.as_bytes()).await?;
                f.sync_data().await?;
                tokio::fs::rename(&tmp, path).await?;
                Ok(())
            }
            Self::Redis {
                conn,
                key,
                holds,
                timeout,
            } => {
                if ids.is_empty() {
                    return Ok(());
                }
                let mut conn = conn.clone();
                let hold_ids: Vec<&String> =
                    entries.iter().map(|(_, p)| &p.order.hold_id).collect();
                tokio::time::timeout(
                    *timeout,
                    redis::cmd("HDEL")
                        .arg(holds)
                        .arg(&hold_ids)
                        .query_async::<i64>(&mut conn),
                )
                .await??;
                tokio::time::timeout(
                    *timeout,
                    redis::cmd("XDEL")
                        .arg(key)
                        .arg(ids)
                        .query_async::<i64>(&mut conn),
                )
                .await??;
                Ok(())
            }
        }
    }

    async fn depth(&self) -> anyhow::Result<u64> {
        match self {
            Self::File { path, lock } => {
                let _one = lock.lock().await;
                match tokio::fs::read_to_string(path).await {
                    Ok(t) => Ok(t.lines().filter(|l| !l.trim().is_empty()).count() as u64),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
                    Err(e) => Err(e.into()),
                }
            }
            Self::Redis {
                conn, key, timeout, ..
            } => {
                let mut conn = conn.clone();
                Ok(tokio::time::timeout(
                    *timeout,
                    redis::cmd("XLEN").arg(key).query_async::<u64>(&mut conn),
                )
                .await??)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_masked_after_their_first_character() {
        assert_eq!(mask_name("张三"), "张*");
        assert_eq!(mask_name("张"), "张*");
        assert_eq!(mask_name("alice"), "a****");
        assert_eq!(mask_name(""), "*");
        assert_eq!(mask_name("欧阳娜娜"), "欧***");
    }
}
