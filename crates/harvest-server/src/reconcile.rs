//! `harvest reconcile`: compares the stock engine's counters and holds with the SQL
//! record (orders and holds), prints every drift, and with `--fix` rebuilds the
//! drifting sales in the engine from SQL.
//!
//! SQL is the system of record: a sale's `sold` is the units of its orders, `held` the
//! units of its holds still `held` (no order, not yet due), and `remaining` the rest of
//! the stock. The engine must agree on those counts and on each hold's status.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use harvest_stock::{HoldStatus, MemoryEngine, RedisConfig, RedisEngine, StockEngine, StockError};
use harvest_store::{SaleRow, Store, StoreOptions};

use crate::config::Settings;
use crate::flash::sale_record;

/// What a reconcile run found.
#[derive(Debug, Default)]
pub struct Report {
    pub sales_checked: usize,
    /// One human-readable line per drift.
    pub drifts: Vec<String>,
    /// Sales rebuilt from SQL (with `--fix`).
    pub fixed: Vec<String>,
}

impl Report {
    /// True when nothing drifts, or every drifting sale was rebuilt.
    pub fn is_clean(&self) -> bool {
        self.drifts.is_empty() || self.drifts_fixed()
    }

    fn drifts_fixed(&self) -> bool {
        !self.fixed.is_empty()
            && self.drifts.iter().all(|d| {
                self.fixed
                    .iter()
                    .any(|s| d.starts_with(&format!("sale {s}:")))
            })
    }
}

/// Runs the comparison for one sale or all of them.
pub async fn run(settings: &Settings, sale: Option<&str>, fix: bool) -> anyhow::Result<Report> {
    let store = Store::connect(
        settings.database_url.expose(),
        StoreOptions {
            max_connections: 4,
            timeout: Duration::from_millis(settings.sql_timeout_ms.max(1)),
        },
    )
    .await?;
    store.migrate().await?;
    let engine: Arc<dyn StockEngine> = match &settings.redis_url {
        Some(url) => {
            let first = url.expose().split(',').next().unwrap_or_default().trim();
            let mut cfg = RedisConfig::new(first);
            cfg.timeout = Duration::from_millis(settings.redis_timeout_ms.max(1));
            cfg.key_prefix = settings.redis_key_prefix.clone();
            Arc::new(RedisEngine::new(cfg).map_err(|e| anyhow::anyhow!("{e}"))?)
        }
        None => {
            // The memory engine lives inside the serving process: only SQL's own
            // consistency can be checked from here.
            Arc::new(MemoryEngine::new())
        }
    };
    let in_memory = settings.redis_url.is_none();
    let rows = match sale {
        Some(id) => vec![store.sale(id).await?],
        None => store.all_sales().await?,
    };
    let now = harvest_hub::now_ms();
    let mut report = Report::default();
    for row in rows {
        report.sales_checked += 1;
        let drifts = check_sale(&store, engine.as_ref(), &row, now, in_memory).await?;
        if drifts.is_empty() {
            continue;
        }
        report.drifts.extend(drifts);
        if fix && !in_memory {
            let record = sale_record(&store, &row).await?;
            engine
                .restore_sale(record)
                .await
                .map_err(|e| anyhow::anyhow!("rebuilding sale {}: {e}", row.id))?;
            report.fixed.push(row.id.clone());
        }
    }
    store.close().await;
    Ok(report)
}

/// The drifts of one sale.
async fn check_sale(
    store: &Store,
    engine: &dyn StockEngine,
    row: &SaleRow,
    now: i64,
    sql_only: bool,
) -> anyhow::Result<Vec<String>> {
    let record = sale_record(store, row).await?;
    let mut drifts = Vec::new();
    let sold: u64 = record.sold_by_user.values().sum();
    let paid_holds: u64 = record
        .holds
        .iter()
        .filter(|h| h.status == HoldStatus::Paid)
        .map(|h| u64::from(h.quantity))
        .sum();
    if paid_holds != sold {
        drifts.push(format!(
            "sale {}: orders sum to {sold} units but paid holds to {paid_holds}",
            row.id
        ));
    }
    let held: u64 = record
        .holds
        .iter()
        .filter(|h| h.status == HoldStatus::Held && h.expires_at_ms > now)
        .map(|h| u64::from(h.quantity))
        .sum();
    let stock = u64::try_from(row.stock).unwrap_or(0);
    if sold + held > stock {
        drifts.push(format!(
            "sale {}: sold {sold} + held {held} exceeds stock {stock} in SQL",
            row.id
        ));
    }
    if sql_only {
        return Ok(drifts);
    }
    let counts = match engine.counts(&row.id).await {
        Ok(c) => c,
        Err(StockError::SaleStateLost { .. } | StockError::SaleNotFound(_)) => {
            drifts.push(format!("sale {}: missing from the stock engine", row.id));
            return Ok(drifts);
        }
        Err(e) => return Err(anyhow::anyhow!("stock engine: {e}")),
    };
    if counts.sold != sold {
        drifts.push(format!(
            "sale {}: sold engine={} sql={sold}",
            row.id, counts.sold
        ));
    }
    // Holds due but not yet swept still count as held in the engine.
    let held_incl_due: u64 = record
        .holds
        .iter()
        .filter(|h| h.status == HoldStatus::Held)
        .map(|h| u64::from(h.quantity))
        .sum();
    if counts.held != held && counts.held != held_incl_due {
        drifts.push(format!(
            "sale {}: held engine={} sql={held}",
            row.id, counts.held
        ));
    }
    if !counts.is_consistent() {
        drifts.push(format!(
            "sale {}: engine counts break remaining + held + sold == stock: {counts:?}",
            row.id
        ));
    }
    let engine_holds = engine
        .allocations(&row.id, 0, 10_000_000)
        .await
        .map_err(|e| anyhow::anyhow!("stock engine: {e}"))?;
    let sql: HashMap<&str, HoldStatus> = record
        .holds
        .iter()
        .map(|h| (h.hold_id.as_str(), h.status))
        .collect();
    for h in &engine_holds {
        match sql.get(h.hold_id.as_str()) {
            None => drifts.push(format!(
                "sale {}: hold {} ({}) is in the engine but not in SQL",
                row.id, h.hold_id, h.status
            )),
            Some(status) if *status != h.status => drifts.push(format!(
                "sale {}: hold {} is {} in the engine but {} in SQL",
                row.id, h.hold_id, h.status, status
            )),
            Some(_) => {}
        }
    }
    Ok(drifts)
}
