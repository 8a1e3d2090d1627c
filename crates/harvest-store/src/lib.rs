//! The SQL system of record: products, rooms and everything that must outlive a process.
//!
//! One [`Store`] type speaks to two real backends through sqlx's `Any` driver: SQLite
//! (the embedded default, a single file in WAL mode, created and migrated at start) and
//! PostgreSQL (for many nodes). Queries are written once in the SQL both understand
//! (`$1` placeholders, `BIGINT`/`TEXT` columns, `ON CONFLICT`, `RETURNING`); each
//! backend has its own migration folder so the schemas can diverge where they must.
//!
//! Timestamps are stored as milliseconds since the Unix epoch and money as integer
//! minor units. Every call is bounded by a timeout so a hung database turns into
//! [`StoreError::Unavailable`], never a hung request.

mod contests;
mod error;
mod events;
mod moderation;
mod orders;
mod products;
mod rooms;
mod sales;
mod store;

pub use contests::{
    ContestRow, JudgeEntryRow, LikeTally, MatchPhase, MatchRow, NewContest, NewMatch,
};
pub use error::StoreError;
pub use events::RoomEventRecord;
pub use orders::{OrderStats, PaidOrder};
pub use products::{NewProduct, ProductFilter};
pub use rooms::{NewRoom, RoomFilter};
pub use sales::{HoldRow, NewSale, SalePhase, SaleRow};
pub use store::{Backend, Store, StoreOptions};

/// A page request: items after `after` (an id), at most `limit` of them.
#[derive(Debug, Clone, Default)]
pub struct PageRequest {
    pub after: Option<String>,
    pub limit: u32,
}

/// One page of results and the cursor of the next page.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// A fresh time-ordered id (UUIDv7): ids sort in creation order, which cursors rely on.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
