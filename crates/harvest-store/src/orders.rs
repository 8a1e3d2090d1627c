//! Orders: paid holds, refunds, webhook answers and late payments.
//!
//! An order is written in the same transaction as its hold's move to `paid`; the
//! unique `hold_id` makes a second order for one hold impossible, so concurrent or
//! repeated confirmations all end up with the one order that won.

use std::collections::HashMap;

use harvest_proto::{Order, OrderStatus};
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use crate::sales::{HoldRow, upsert_hold};
use crate::store::{from_ms, from_ms_opt, ms};
use crate::{Page, PageRequest, Store, StoreError};

/// A confirmed payment to record: the order (its id chosen by the caller) and the hold
/// it pays, in status `paid`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PaidOrder {
    pub order: Order,
    pub buyer_name: String,
    /// `simulated` or the provider's name.
    pub provider: String,
    pub provider_ref: Option<String>,
    pub hold: HoldRow,
}

/// A room's order figures, net of refunds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OrderStats {
    /// Paid orders not refunded.
    pub orders_paid: i64,
    /// Their amounts.
    pub gmv_paid: i64,
    /// Buyers with at least one unrefunded order.
    pub buyers_distinct: i64,
    /// Refunded orders.
    pub refunds: i64,
}

pub(crate) const ORDER_COLUMNS: &str = "id, hold_id, sale_id, room_id, product_id, buyer_id, quantity, \
     unit_price, amount, currency, status, paid_at, refunded_at";

pub(crate) fn order_from_row(row: &AnyRow) -> Result<Order, sqlx::Error> {
    let status: String = row.try_get("status")?;
    Ok(Order {
        id: row.try_get("id")?,
        hold_id: row.try_get("hold_id")?,
        sale_id: row.try_get("sale_id")?,
        room_id: row.try_get("room_id")?,
        product_id: row.try_get("product_id")?,
        buyer_id: row.try_get("buyer_id")?,
        quantity: row.try_get("quantity")?,
        unit_price: row.try_get("unit_price")?,
        amount: row.try_get("amount")?,
        currency: row.try_get("currency")?,
        status: OrderStatus::parse(&status).ok_or_else(|| sqlx::Error::ColumnDecode {
            index: "status".into(),
            source: format!("unknown order status {status:?}").into(),
        })?,
        paid_at: from_ms(row.try_get("paid_at")?),
        refunded_at: from_ms_opt(row.try_get("refunded_at")?),
    })
}

impl Store {
    /// Records confirmed payments in one transaction (group commit): each order is
    /// inserted unless its hold already has one, and its hold moves to `paid`. Returns,
    /// for each input, the order that stands for its hold (the earlier one when the
    /// hold was already paid).
    pub async fn record_orders(&self, paid: &[PaidOrder]) -> Result<Vec<Order>, StoreError> {
        if paid.is_empty() {
            return Ok(Vec::new());
        }
        let select = format!("SELECT {ORDER_COLUMNS} FROM orders WHERE hold_id = $1");
        // Written in hold-id order, like `record_holds`, so transactions touching the
        // same holds cannot deadlock; answered in the callers' order.
        let mut order: Vec<usize> = (0..paid.len()).collect();
        order.sort_by(|&a, &b| paid[a].order.hold_id.cmp(&paid[b].order.hold_id));
        self.timed(async {
            let mut tx = self.pool.begin().await?;
            let mut out: Vec<Option<Order>> = vec![None; paid.len()];
            for &i in &order {
                let p = &paid[i];
                let o = &p.order;
                let inserted = sqlx::query(
                    "INSERT INTO orders (id, hold_id, sale_id, room_id, product_id, buyer_id, \
                     buyer_name, quantity, unit_price, amount, currency, status, paid_at, \
                     refunded_at, refund_reason, provider, provider_ref) VALUES ($1, $2, $3, \
                     $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, NULL, NULL, $14, $15) \
                     ON CONFLICT (hold_id) DO NOTHING RETURNING id",
                )
                .bind(&o.id)
                .bind(&o.hold_id)
                .bind(&o.sale_id)
                .bind(&o.room_id)
                .bind(&o.product_id)
                .bind(&o.buyer_id)
                .bind(&p.buyer_name)
                .bind(o.quantity)
                .bind(o.unit_price)
                .bind(o.amount)
                .bind(&o.currency)
                .bind(o.status.as_str())
                .bind(ms(o.paid_at))
                .bind(&p.provider)
                .bind(&p.provider_ref)
                .fetch_optional(&mut *tx)
                .await?;
                // Inserted: it stands. Otherwise the hold's earlier order stands.
                let stored = match inserted {
                    Some(_) => o.clone(),
                    None => {
                        let row = sqlx::query(AssertSqlSafe(select.clone()))
                            .bind(&o.hold_id)
                            .fetch_one(&mut *tx)
                            .await?;
                        order_from_row(&row)?
                    }
                };
                let mut hold = p.hold.clone();
                hold.status = "paid".into();
                hold.order_id = Some(stored.id.clone());
                upsert_hold(&mut tx, &hold).await?;
                out[i] = Some(stored);
            }
            tx.commit().await?;
            Ok(out.into_iter().flatten().collect())
        })
        .await
    }

    /// One order, or [`StoreError::NotFound`].
    pub async fn order(&self, id: &str) -> Result<Order, StoreError> {
        let sql = format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1");
        let row = self
            .timed(
                sqlx::query(AssertSqlSafe(sql))
                    .bind(id)
                    .fetch_optional(&self.pool),
            )
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok(order_from_row(&row)?)
    }

    /// The order that paid a hold, if any.
    pub async fn order_for_hold(&self, hold_id: &str) -> Result<Option<Order>, StoreError> {
        let sql = format!("SELECT {ORDER_COLUMNS} FROM orders WHERE hold_id = $1");
        let row = self
            .timed(
                sqlx::query(AssertSqlSafe(sql))
                    .bind(hold_id)
                    .fetch_optional(&self.pool),
            )
            .await?;
        Ok(row.as_ref().map(order_from_row).transpose()?)
    }

    /// A page of orders, oldest first: a buyer's, or every order when `buyer` is None.
    pub async fn list_orders(
        &self,
        buyer: Option<&str>,
        page: &PageRequest,
    ) -> Result<Page<Order>, StoreError> {
        let limit = i64::from(page.limit.max(1));
        let after = page.after.clone().unwrap_or_default();
        let (filter, bind_buyer) = match buyer {
            Some(b) => ("buyer_id = $3 AND ", Some(b)),
            None => ("", None),
        };
        let sql = format!(
            "SELECT {ORDER_COLUMNS} FROM orders WHERE {filter}id > $1 ORDER BY id LIMIT $2"
        );
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(after).bind(limit + 1);
        if let Some(b) = bind_buyer {
            q = q.bind(b);
        }
        let rows = self.timed(q.fetch_all(&self.pool)).await?;
        let mut items: Vec<Order> = rows.iter().map(order_from_row).collect::<Result<_, _>>()?;
        let next_cursor = if items.len() as i64 > limit {
            items.truncate(limit as usize);
            items.last().map(|o| o.id.clone())
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    /// Every order of a room, oldest first.
    pub async fn room_orders(&self, room_id: &str) -> Result<Vec<Order>, StoreError> {
        let sql = format!("SELECT {ORDER_COLUMNS} FROM orders WHERE room_id = $1 ORDER BY id");
        let rows = self
            .timed(
                sqlx::query(AssertSqlSafe(sql))
                    .bind(room_id)
                    .fetch_all(&self.pool),
            )
            .await?;
        Ok(rows.iter().map(order_from_row).collect::<Result<_, _>>()?)
    }

    /// Refunds a paid order; [`StoreError::AlreadyRefunded`] when it was refunded.
    pub async fn refund_order(
        &self,
        id: &str,
        reason: &str,
        at_ms: i64,
    ) -> Result<Order, StoreError> {
        let done = self
            .timed(
                sqlx::query(
                    "UPDATE orders SET status = 'refunded', refunded_at = $1, refund_reason = $2 \
                     WHERE id = $3 AND status = 'paid'",
                )
                .bind(at_ms)
                .bind(reason)
                .bind(id)
                .execute(&self.pool),
            )
            .await?;
        let order = self.order(id).await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::AlreadyRefunded);
        }
        Ok(order)
    }

    /// Paid units per buyer in a sale (refunded orders included: their units stay sold).
    pub async fn sale_paid_by_user(
        &self,
        sale_id: &str,
    ) -> Result<HashMap<String, i64>, StoreError> {
        let rows = self
            .timed(
                sqlx::query(
                    "SELECT buyer_id, CAST(SUM(quantity) AS BIGINT) AS units FROM orders \
                     WHERE sale_id = $1 GROUP BY buyer_id",
                )
                .bind(sale_id)
                .fetch_all(&self.pool),
            )
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("buyer_id")?, r.try_get("units")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Hold ids of a sale that have an order.
    pub async fn sale_paid_holds(&self, sale_id: &str) -> Result<Vec<String>, StoreError> {
        let rows = self
            .timed(
                sqlx::query("SELECT hold_id FROM orders WHERE sale_id = $1")
                    .bind(sale_id)
                    .fetch_all(&self.pool),
            )
            .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<Result<_, _>>()
            .map_err(StoreError::from)
    }

    /// A room's order figures.
    pub async fn room_order_stats(&self, room_id: &str) -> Result<OrderStats, StoreError> {
        let row = self
            .timed(
                sqlx::query(
                    "SELECT \
                     CAST(COALESCE(SUM(CASE WHEN status = 'paid' THEN 1 ELSE 0 END), 0) AS BIGINT) AS paid, \
                     CAST(COALESCE(SUM(CASE WHEN status = 'paid' THEN amount ELSE 0 END), 0) AS BIGINT) AS gmv, \
                     CAST(COUNT(DISTINCT CASE WHEN status = 'paid' THEN buyer_id END) AS BIGINT) AS buyers, \
                     CAST(COALESCE(SUM(CASE WHEN status = 'refunded' THEN 1 ELSE 0 END), 0) AS BIGINT) AS refunds \
                     FROM orders WHERE room_id = $1",
                )
                .bind(room_id)
                .fetch_one(&self.pool),
            )
            .await?;
        let get = |name: &str| -> Result<i64, sqlx::Error> { row.try_get::<i64, _>(name) };
        Ok(OrderStats {
            orders_paid: get("paid")?,
            gmv_paid: get("gmv")?,
            buyers_distinct: get("buyers")?,
            refunds: get("refunds")?,
        })
    }

    /// The first final answer given to a webhook event, if any: (status, body).
    pub async fn payment_event(&self, event_id: &str) -> Result<Option<(u16, String)>, StoreError> {
        let row = self
            .timed(
                sqlx::query("SELECT status, body FROM payment_events WHERE event_id = $1")
                    .bind(event_id)
                    .fetch_optional(&self.pool),
            )
            .await?;
        match row {
            Some(r) => {
                let status: i64 = r.try_get("status")?;
                Ok(Some((
                    u16::try_from(status).unwrap_or(500),
                    r.try_get("body")?,
                )))
            }
            None => Ok(None),
        }
    }

    /// Keeps a webhook event's answer unless one is kept already; returns the answer
    /// that stands.
    pub async fn save_payment_event(
        &self,
        event_id: &str,
        status: u16,
        body: &str,
        at_ms: i64,
    ) -> Result<(u16, String), StoreError> {
        self.timed(
            sqlx::query(
                "INSERT INTO payment_events (event_id, status, body, created_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (event_id) DO NOTHING",
            )
            .bind(event_id)
            .bind(i64::from(status))
            .bind(body)
            .bind(at_ms)
            .execute(&self.pool),
        )
        .await?;
        self.payment_event(event_id)
            .await?
            .ok_or(StoreError::NotFound)
    }

    /// Records a payment that arrived after its hold ended (to be refunded).
    #[allow(clippy::too_many_arguments)]
    pub async fn record_late_payment(
        &self,
        event_id: &str,
        hold_id: &str,
        provider_ref: &str,
        amount: i64,
        currency: &str,
        reason: &str,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        self.timed(
            sqlx::query(
                "INSERT INTO late_payments (event_id, hold_id, provider_ref, amount, currency, \
                 reason, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (event_id) DO NOTHING",
            )
            .bind(event_id)
            .bind(hold_id)
            .bind(provider_ref)
            .bind(amount)
            .bind(currency)
            .bind(reason)
            .bind(at_ms)
            .execute(&self.pool),
        )
        .await
        .map(|_| ())
    }

    /// Late payments of a hold: (event id, reason).
    pub async fn late_payments(&self, hold_id: &str) -> Result<Vec<(String, String)>, StoreError> {
        let rows = self
            .timed(
                sqlx::query(
                    "SELECT event_id, reason FROM late_payments WHERE hold_id = $1 ORDER BY event_id",
                )
                .bind(hold_id)
                .fetch_all(&self.pool),
            )
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("event_id")?, r.try_get("reason")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }
}
