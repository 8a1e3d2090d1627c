//! Flash sales and holds: what the stock engines are rebuilt from.
//!
//! A sale's row holds what never changes (price, stock, limit, window, hold TTL) plus
//! the lifecycle announced to its room (`phase`) and an early end. Its live counts live
//! in the stock engine; the holds are written here behind the engine, in batches, so the
//! engine's state can be rebuilt from them (stock − paid − unexpired holds).

use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use crate::store::{ms, now};
use crate::{Store, StoreError, new_id};

/// A flash sale to create; the store assigns its id and creation time.
#[derive(Debug, Clone)]
pub struct NewSale {
    pub room_id: String,
    pub product_id: String,
    pub price: i64,
    pub currency: String,
    pub stock: i64,
    pub per_user_limit: i64,
    /// ms since the Unix epoch.
    pub starts_at: i64,
    pub ends_at: i64,
    pub hold_ttl_s: i64,
}

/// Which lifecycle events a sale's room has been sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SalePhase {
    /// Created; `sale.scheduled` (or nothing yet).
    Scheduled,
    /// `sale.started` was published.
    Live,
    /// `sale.ended` was published; the sale is closed.
    Ended,
}

impl SalePhase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Live => "live",
            Self::Ended => "ended",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "scheduled" => Some(Self::Scheduled),
            "live" => Some(Self::Live),
            "ended" => Some(Self::Ended),
            _ => None,
        }
    }
}

/// A stored flash sale. Times are ms since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaleRow {
    pub id: String,
    pub room_id: String,
    pub product_id: String,
    pub price: i64,
    pub currency: String,
    pub stock: i64,
    pub per_user_limit: i64,
    pub starts_at: i64,
    pub ends_at: i64,
    pub hold_ttl_s: i64,
    pub phase: SalePhase,
    /// Set when the sale was ended before `ends_at`.
    pub ended_early_at: Option<i64>,
    pub created_at: i64,
}

impl SaleRow {
    /// When the sale stops taking reservations: its end, or the early end.
    pub fn closes_at(&self) -> i64 {
        match self.ended_early_at {
            Some(t) => t.min(self.ends_at),
            None => self.ends_at,
        }
    }
}

/// A stored hold. Times are ms since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HoldRow {
    pub id: String,
    pub sale_id: String,
    pub user_id: String,
    pub quantity: i64,
    pub unit_price: i64,
    pub amount: i64,
    pub currency: String,
    pub position: i64,
    /// `held`, `paid`, `released` or `expired`.
    pub status: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub ended_at: Option<i64>,
    pub order_id: Option<String>,
    /// The buyer's display name when the hold was made.
    pub user_name: Option<String>,
    /// The reservation's `Idempotency-Key` and request digest.
    pub idempotency_key: Option<String>,
    pub request_fingerprint: Option<String>,
}

const SALE_COLUMNS: &str = "id, room_id, product_id, price, currency, stock, per_user_limit, \
     starts_at, ends_at, hold_ttl_s, phase, ended_early_at, created_at";

const HOLD_COLUMNS: &str = "id, sale_id, user_id, quantity, unit_price, amount, currency, \
     position, status, created_at, expires_at, ended_at, order_id, user_name, \
     idempotency_key, request_fingerprint";

fn sale_from_row(row: &AnyRow) -> Result<SaleRow, sqlx::Error> {
    let phase: String = row.try_get("phase")?;
    Ok(SaleRow {
        id: row.try_get("id")?,
        room_id: row.try_get("room_id")?,
        product_id: row.try_get("product_id")?,
        price: row.try_get("price")?,
        currency: row.try_get("currency")?,
        stock: row.try_get("stock")?,
        per_user_limit: row.try_get("per_user_limit")?,
        starts_at: row.try_get("starts_at")?,
        ends_at: row.try_get("ends_at")?,
        hold_ttl_s: row.try_get("hold_ttl_s")?,
        phase: SalePhase::parse(&phase).ok_or_else(|| sqlx::Error::ColumnDecode {
            index: "phase".into(),
            source: format!("unknown sale phase {phase:?}").into(),
        })?,
        ended_early_at: row.try_get("ended_early_at")?,
        created_at: row.try_get("created_at")?,
    })
}

fn hold_from_row(row: &AnyRow) -> Result<HoldRow, sqlx::Error> {
    Ok(HoldRow {
        id: row.try_get("id")?,
        sale_id: row.try_get("sale_id")?,
        user_id: row.try_get("user_id")?,
        quantity: row.try_get("quantity")?,
        unit_price: row.try_get("unit_price")?,
        amount: row.try_get("amount")?,
        currency: row.try_get("currency")?,
        position: row.try_get("position")?,
        status: row.try_get("status")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        ended_at: row.try_get("ended_at")?,
        order_id: row.try_get("order_id")?,
        user_name: row.try_get("user_name")?,
        idempotency_key: row.try_get("idempotency_key")?,
        request_fingerprint: row.try_get("request_fingerprint")?,
    })
}

impl Store {
    /// Creates a flash sale in phase `scheduled`.
    pub async fn create_sale(&self, new: NewSale) -> Result<SaleRow, StoreError> {
        let sale = SaleRow {
            id: new_id(),
            room_id: new.room_id,
            product_id: new.product_id,
            price: new.price,
            currency: new.currency,
            stock: new.stock,
            per_user_limit: new.per_user_limit,
            starts_at: new.starts_at,
            ends_at: new.ends_at,
            hold_ttl_s: new.hold_ttl_s,
            phase: SalePhase::Scheduled,
            ended_early_at: None,
            created_at: ms(now()),
        };
        self.timed(
            sqlx::query(
                "INSERT INTO sales (id, room_id, product_id, price, currency, stock, \
                 per_user_limit, starts_at, ends_at, hold_ttl_s, phase, ended_early_at, \
                 created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, NULL, $12)",
            )
            .bind(&sale.id)
            .bind(&sale.room_id)
            .bind(&sale.product_id)
            .bind(sale.price)
            .bind(&sale.currency)
            .bind(sale.stock)
            .bind(sale.per_user_limit)
            .bind(sale.starts_at)
            .bind(sale.ends_at)
            .bind(sale.hold_ttl_s)
            .bind(sale.phase.as_str())
            .bind(sale.created_at)
            .execute(&self.pool),
        )
        .await?;
        Ok(sale)
    }

    /// One sale, or [`StoreError::NotFound`].
    pub async fn sale(&self, id: &str) -> Result<SaleRow, StoreError> {
        let sql = format!("SELECT {SALE_COLUMNS} FROM sales WHERE id = $1");
        let row = self
            .timed(
                sqlx::query(AssertSqlSafe(sql))
                    .bind(id)
                    .fetch_optional(&self.pool),
            )
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok(sale_from_row(&row)?)
    }

    /// A room's sales in creation order; only those not yet in phase `ended` when
    /// `open_only`.
    pub async fn room_sales(
        &self,
        room_id: &str,
        open_only: bool,
    ) -> Result<Vec<SaleRow>, StoreError> {
        let filter = if open_only {
            " AND phase <> 'ended'"
        } else {
            ""
        };
        let sql =
            format!("SELECT {SALE_COLUMNS} FROM sales WHERE room_id = $1{filter} ORDER BY id");
        let rows = self
            .timed(
                sqlx::query(AssertSqlSafe(sql))
                    .bind(room_id)
                    .fetch_all(&self.pool),
            )
            .await?;
        Ok(rows.iter().map(sale_from_row).collect::<Result<_, _>>()?)
    }

    /// Every sale, in creation order.
    pub async fn all_sales(&self) -> Result<Vec<SaleRow>, StoreError> {
        let sql = format!("SELECT {SALE_COLUMNS} FROM sales ORDER BY id");
        let rows = self
            .timed(sqlx::query(AssertSqlSafe(sql)).fetch_all(&self.pool))
            .await?;
        Ok(rows.iter().map(sale_from_row).collect::<Result<_, _>>()?)
    }

    /// Every sale not yet in phase `ended`, in creation order.
    pub async fn open_sales(&self) -> Result<Vec<SaleRow>, StoreError> {
        let sql = format!("SELECT {SALE_COLUMNS} FROM sales WHERE phase <> 'ended' ORDER BY id");
        let rows = self
            .timed(sqlx::query(AssertSqlSafe(sql)).fetch_all(&self.pool))
            .await?;
        Ok(rows.iter().map(sale_from_row).collect::<Result<_, _>>()?)
    }

    /// Moves a sale from phase `from` to `to`; true for the one caller that made the
    /// move (several nodes may try; exactly one wins).
    pub async fn advance_sale_phase(
        &self,
        id: &str,
        from: SalePhase,
        to: SalePhase,
    ) -> Result<bool, StoreError> {
        let done = self
            .timed(
                sqlx::query("UPDATE sales SET phase = $1 WHERE id = $2 AND phase = $3")
                    .bind(to.as_str())
                    .bind(id)
                    .bind(from.as_str())
                    .execute(&self.pool),
            )
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records that a sale was ended early at `at_ms` (the first early end stands).
    pub async fn end_sale_early(&self, id: &str, at_ms: i64) -> Result<SaleRow, StoreError> {
        self.timed(
            sqlx::query(
                "UPDATE sales SET ended_early_at = $1 WHERE id = $2 AND ended_early_at IS NULL",
            )
            .bind(at_ms)
            .bind(id)
            .execute(&self.pool),
        )
        .await?;
        self.sale(id).await
    }

    /// Writes holds in one transaction: new holds are inserted, known ones take the new
    /// status only while they are still `held` (a hold's final status never changes).
    pub async fn record_holds(&self, holds: &[HoldRow]) -> Result<(), StoreError> {
        if holds.is_empty() {
            return Ok(());
        }
        // Rows are written in id order (stable, so two writes of one hold keep theirs):
        // concurrent transactions touching the same holds then lock them in the same
        // order and cannot deadlock.
        let mut ordered: Vec<&HoldRow> = holds.iter().collect();
        ordered.sort_by(|a, b| a.id.cmp(&b.id));
        self.timed(async {
            let mut tx = self.pool.begin().await?;
            for h in ordered {
                upsert_hold(&mut tx, h).await?;
            }
            tx.commit().await
        })
        .await
    }

    /// One hold, or [`StoreError::NotFound`].
    pub async fn hold(&self, id: &str) -> Result<HoldRow, StoreError> {
        let sql = format!("SELECT {HOLD_COLUMNS} FROM holds WHERE id = $1");
        let row = self
            .timed(
                sqlx::query(AssertSqlSafe(sql))
                    .bind(id)
                    .fetch_optional(&self.pool),
            )
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok(hold_from_row(&row)?)
    }

    /// The hold a buyer's reservation with this `Idempotency-Key` made, if any.
    pub async fn hold_by_key(
        &self,
        sale_id: &str,
        user_id: &str,
        key: &str,
    ) -> Result<Option<HoldRow>, StoreError> {
        let sql = format!(
            "SELECT {HOLD_COLUMNS} FROM holds WHERE sale_id = $1 AND user_id = $2 \
             AND idempotency_key = $3"
        );
        let row = self
            .timed(
                sqlx::query(AssertSqlSafe(sql))
                    .bind(sale_id)
                    .bind(user_id)
                    .bind(key)
                    .fetch_optional(&self.pool),
            )
            .await?;
        Ok(row.as_ref().map(hold_from_row).transpose()?)
    }

    /// Every hold of a sale, in position order.
    pub async fn sale_holds(&self, sale_id: &str) -> Result<Vec<HoldRow>, StoreError> {
        let sql =
            format!("SELECT {HOLD_COLUMNS} FROM holds WHERE sale_id = $1 ORDER BY position, id");
        let rows = self
            .timed(
                sqlx::query(AssertSqlSafe(sql))
                    .bind(sale_id)
                    .fetch_all(&self.pool),
            )
            .await?;
        Ok(rows.iter().map(hold_from_row).collect::<Result<_, _>>()?)
    }

    /// Ids of sales in phase `ended` that still have holds in status `held` (their
    /// holds stay payable until they expire, so their stock state must be kept).
    pub async fn ended_sales_with_open_holds(&self) -> Result<Vec<String>, StoreError> {
        let rows = self
            .timed(
                sqlx::query(
                    "SELECT DISTINCT h.sale_id FROM holds h JOIN sales s ON s.id = h.sale_id \
                     WHERE h.status = 'held' AND s.phase = 'ended' ORDER BY h.sale_id",
                )
                .fetch_all(&self.pool),
            )
            .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<Result<_, _>>()
            .map_err(StoreError::from)
    }
}

/// Inserts a hold, or moves a known one from `held` to the given status (a final
/// status never changes) and fills in what an earlier write did not know.
pub(crate) async fn upsert_hold(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    h: &HoldRow,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO holds (id, sale_id, user_id, quantity, unit_price, amount, \
         currency, position, status, created_at, expires_at, ended_at, order_id, user_name, \
         idempotency_key, request_fingerprint) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
         ON CONFLICT (id) DO UPDATE SET \
         status = CASE WHEN holds.status = 'held' THEN excluded.status ELSE holds.status END, \
         ended_at = CASE WHEN holds.status = 'held' THEN excluded.ended_at ELSE holds.ended_at END, \
         order_id = CASE WHEN holds.status = 'held' THEN excluded.order_id ELSE holds.order_id END, \
         user_name = COALESCE(holds.user_name, excluded.user_name), \
         idempotency_key = COALESCE(holds.idempotency_key, excluded.idempotency_key), \
         request_fingerprint = COALESCE(holds.request_fingerprint, excluded.request_fingerprint)",
    )
    .bind(&h.id)
    .bind(&h.sale_id)
    .bind(&h.user_id)
    .bind(h.quantity)
    .bind(h.unit_price)
    .bind(h.amount)
    .bind(&h.currency)
    .bind(h.position)
    .bind(&h.status)
    .bind(h.created_at)
    .bind(h.expires_at)
    .bind(h.ended_at)
    .bind(&h.order_id)
    .bind(&h.user_name)
    .bind(&h.idempotency_key)
    .bind(&h.request_fingerprint)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
