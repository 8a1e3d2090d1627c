//! Wire types of the Harvest API and the error codes clients rely on.
//!
//! This crate owns everything a client sees on the wire: the JSON shapes of products,
//! rooms, flash sales, orders, matches and standings, list pages, the [`ErrorCode`]
//! catalogue with the HTTP status each code answers with, and the WebSocket protocol
//! ([`ws`]) with its JSON and protobuf encodings. It does no I/O and knows no business
//! rules; the store returns these types and the server serialises them as they are.
//!
//! Every wire shape is one Rust type serving both encodings: serde for JSON, and a
//! `prost::Message` implementation generated from a tag list for protobuf (see `pb.rs`).

#[macro_use]
mod pb;
mod commerce;
mod contest;
mod error;
mod types;
pub mod ws;

pub use commerce::{
    Allocation, AllocationList, Hold, HoldStatus, Order, OrderStatus, Sale, SaleList, SaleStatus,
};
pub use contest::{
    Audit, AuditRow, Contest, ContestParticipant, ContestStatus, CountedOrder, ExcludedOrder,
    ExclusionReason, Match, MatchStatus, Metric, Metrics, Score, Standings, StandingsRow,
};
pub use error::{ErrorBody, ErrorCode, ErrorObject};
pub use types::*;

/// The largest integer a JSON client can represent exactly (2^53 − 1); every integer the
/// API accepts must lie in `0..=MAX_SAFE_INT` unless a field says otherwise.
pub const MAX_SAFE_INT: i64 = (1 << 53) - 1;
