//! The `data` object of each server event, one struct per event type.
//!
//! Field names are the API's; an `Option` field is `null` in JSON (never omitted) and
//! absent in protobuf.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::WsErrorCode;
use crate::{Match, Order, Product, Room, RoomStatus, Sale, Score, Standings};

/// `session.welcome`: the first event of every connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SessionWelcome {
    pub session_id: String,
    pub room_id: String,
    /// Null for an anonymous connection.
    pub user_id: Option<String>,
    /// The room's history epoch; opaque.
    pub epoch: String,
    /// The seq of the room's latest event (0 when it has none).
    pub last_seq: u64,
    /// True when the missed events follow; false when a `room.snapshot` follows.
    pub recovered: bool,
}

/// `room.snapshot`: the room's whole visible state, sent after a non-recovering welcome.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RoomSnapshot {
    pub room: Room,
    pub viewers: u64,
    pub likes: u64,
    pub pinned_product: Option<Product>,
    /// The product bag, in the order products were added.
    pub products: Vec<Product>,
    /// The room's sales that have not ended.
    pub sales: Vec<Sale>,
    /// The running PK match, if any.
    pub r#match: Option<Match>,
    /// The standings of each live contest the room takes part in.
    pub standings: Vec<Standings>,
    /// The last (at most 50) chat messages, oldest first.
    pub recent_chat: Vec<ChatMessage>,
}

/// `room.status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RoomStatusChanged {
    pub status: RoomStatus,
}

/// `room.products`: the product bag after a change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RoomProducts {
    pub product_ids: Vec<String>,
}

/// `product.pinned`: the pinned product, null when unpinned.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProductPinned {
    pub product: Option<Product>,
}

/// `sale.scheduled`: a sale was created with a future start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SaleScheduled {
    pub sale: Sale,
}

/// `sale.started`: a sale went live.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SaleStarted {
    pub sale: Sale,
}

/// `sale.stock`: the latest stock numbers (conflated: at least 200 ms apart per sale, the
/// final numbers always sent before `sale.sold_out` or `sale.ended`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SaleStock {
    pub sale_id: String,
    pub remaining: i64,
    pub held: i64,
    pub sold: i64,
}

/// `sale.sold_out`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SaleSoldOut {
    pub sale_id: String,
}

/// `sale.ended`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SaleEnded {
    pub sale_id: String,
    pub sold: i64,
}

/// `order.placed`: the public notice of a paid order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OrderPlaced {
    pub sale_id: String,
    pub product_id: String,
    pub quantity: i64,
    /// The buyer's display name, masked (`张*`).
    pub buyer: String,
}

/// `chat.deleted`: a moderator deleted a chat message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChatDeleted {
    pub message_id: String,
}

/// `test.message`: a load-test message published through the admin-only test publish
/// path (only when the server enables it with `test_publish`); clients ignore it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TestMessage {
    pub text: String,
}

/// `pk.started`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PkStarted {
    pub r#match: Match,
}

/// `pk.score`: the live score bar (at most 2 per second).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PkScore {
    pub match_id: String,
    pub scores: Vec<Score>,
    /// The participants currently in the lead (several on a tie).
    pub leader_ids: Vec<String>,
    pub ends_at: DateTime<Utc>,
}

/// `pk.ended`: the final match, with its `winner_ids`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PkEnded {
    pub r#match: Match,
}

/// `contest.standings`: one contest's standings (at most 1 per second per contest).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ContestStandings {
    pub standings: Standings,
}

/// `chat.message` (also the items of `room.snapshot.recent_chat`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChatMessage {
    pub id: String,
    pub user_id: String,
    /// The sender's display name.
    pub name: String,
    /// The text after trimming and masking.
    pub text: String,
}

/// `likes`: the room's like total (at most 2 per second).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Likes {
    pub total: u64,
}

/// `room.viewers`: open connections to the room on every node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RoomViewers {
    pub count: u64,
}

/// `hold.expired`: one of the user's holds expired unpaid.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HoldExpired {
    pub hold_id: String,
    pub sale_id: String,
}

/// `order.paid`: one of the user's holds was paid.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OrderPaid {
    pub order: Order,
}

/// `error`: a client frame was refused; the connection stays open.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorEvent {
    pub code: WsErrorCode,
    pub message: String,
    /// The refused frame's `ref`; null when it had none (or it could not be read).
    pub r#ref: Option<String>,
}

/// `pong`: the answer to a `ping` frame.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Pong {
    pub nonce: String,
}

proto_message!(SessionWelcome {
    session_id = 1,
    room_id = 2,
    user_id = 3,
    epoch = 4,
    last_seq = 5,
    recovered = 6,
});

proto_message!(RoomSnapshot {
    room = 1,
    viewers = 2,
    likes = 3,
    pinned_product = 4,
    products = 5,
    sales = 6,
    r#match = 7,
    standings = 8,
    recent_chat = 9,
});

proto_message!(RoomStatusChanged { status = 1 });
proto_message!(RoomProducts { product_ids = 1 });
proto_message!(ProductPinned { product = 1 });
proto_message!(SaleScheduled { sale = 1 });
proto_message!(SaleStarted { sale = 1 });
proto_message!(SaleStock { sale_id = 1, remaining = 2, held = 3, sold = 4 });
proto_message!(SaleSoldOut { sale_id = 1 });
proto_message!(SaleEnded { sale_id = 1, sold = 2 });
proto_message!(OrderPlaced { sale_id = 1, product_id = 2, quantity = 3, buyer = 4 });
proto_message!(ChatDeleted { message_id = 1 });
proto_message!(TestMessage { text = 1 });
proto_message!(PkStarted { r#match = 1 });
proto_message!(PkScore { match_id = 1, scores = 2, leader_ids = 3, ends_at = 4 });
proto_message!(PkEnded { r#match = 1 });
proto_message!(ContestStandings { standings = 1 });
proto_message!(ChatMessage { id = 1, user_id = 2, name = 3, text = 4 });
proto_message!(Likes { total = 1 });
proto_message!(RoomViewers { count = 1 });
proto_message!(HoldExpired { hold_id = 1, sale_id = 2 });
proto_message!(OrderPaid { order = 1 });
proto_message!(ErrorEvent { code = 1, message = 2, r#ref = 3 });
proto_message!(Pong { nonce = 1 });
