//! Flash-sale inventory: reservations, holds, payment, expiry, and the allocation log.
//!
//! This crate owns the rule that a flash sale never oversells. It knows nothing of
//! HTTP, sockets or SQL: callers hand it sale specs and reservation requests (with the
//! caller's clock, idempotency key and a fresh hold id) and get back holds, rejections
//! and counts.
//!
//! # How it works
//!
//! [`StockEngine`] is the one interface, used as `Arc<dyn StockEngine>`. Each sale
//! keeps `remaining + held + sold == stock`; a reservation checks, in this order, the
//! idempotency record of `(sale, user, key)` (a replay returns the first final outcome;
//! a different body answers [`Reject::IdempotencyKeyReused`]), then not started, ended,
//! sold out, the per-user limit (units held plus bought) and insufficient stock, and on
//! success moves units from `remaining` to `held` in a hold with the next allocation
//! position. A hold ends exactly once: paid ([`StockEngine::confirm_paid`]), released by
//! the buyer ([`StockEngine::release`]) or expired by the sweeper
//! ([`StockEngine::expire_due`]); the last two give the units back. Every outcome except
//! `sold_out` is recorded against the idempotency key for at least 24 h.
//!
//! Two engines implement it and pass one conformance suite:
//! - [`MemoryEngine`]: the embedded default. Per-sale state behind its own mutex, a
//!   per-sale expiry index; no global lock.
//! - [`RedisEngine`]: one Lua script call per decision on keys that share the sale's
//!   hash tag, on one Redis server or a Redis Cluster ([`RedisConn`]: several
//!   comma-separated node URLs), a per-sale expiry zset swept in small batches, a timeout
//!   on every call, and a per-sale marker key whose absence reports
//!   [`StockError::SaleStateLost`] so the caller can [`StockEngine::restore_sale`] from
//!   its system of record. See the [`redis` module](crate::redis) for the key layout.
//!
//! [`Coalescer`] wraps either engine for hot sales: concurrent reservations of one sale
//! go to the engine as one batch (one Redis call), in arrival order, and once a sale is
//! sold out later attempts are refused locally until stock comes back.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use harvest_stock::{MemoryEngine, ReserveOutcome, ReserveRequest, SaleSpec, StockEngine};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let engine: Arc<dyn StockEngine> = Arc::new(MemoryEngine::new());
//! let spec = SaleSpec {
//!     sale_id: "kiwi-1".into(),
//!     stock: 10,
//!     per_user_limit: 2,
//!     hold_ttl: Duration::from_secs(300),
//!     starts_at_ms: 0,
//!     ends_at_ms: 3_600_000,
//! };
//! engine.create_sale(&spec).await?;
//! let outcome = engine
//!     .reserve(ReserveRequest {
//!         sale_id: "kiwi-1".into(),
//!         user_id: "alice".into(),
//!         quantity: 2,
//!         idempotency_key: "k1".into(),
//!         request_fingerprint: "quantity=2".into(),
//!         hold_id: "hold-1".into(),
//!         now_ms: 1_000,
//!     })
//!     .await?;
//! assert!(matches!(outcome, ReserveOutcome::Held(ref h) if h.position == 1));
//! let counts = engine.counts("kiwi-1").await?;
//! assert_eq!((counts.remaining, counts.held, counts.sold), (8, 2, 0));
//! # Ok::<(), harvest_stock::StockError>(())
//! # }).unwrap();
//! ```

mod coalescer;
mod digest;
mod engine;
mod error;
mod memory;
pub mod redis;
mod types;

pub use crate::redis::{RedisConfig, RedisConn, RedisEngine, redis_urls};
pub use coalescer::{Coalescer, CoalescerConfig, CoalescerStats};
pub use engine::StockEngine;
pub use error::StockError;
pub use memory::MemoryEngine;
pub use types::{
    Hold, HoldStatus, IDEMPOTENCY_TTL, MAX_QUANTITY, MAX_STOCK, Reject, ReserveOutcome,
    ReserveRequest, SaleCounts, SaleInfo, SaleRecord, SaleSpec, SaleStatus,
};
