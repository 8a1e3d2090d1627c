use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The currency used when a request names none.
pub const DEFAULT_CURRENCY: &str = "CNY";

/// A product a streamer sells; prices are integer minor units (fen for CNY).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Product {
    pub id: String,
    pub owner_id: String,
    pub sku: String,
    pub title: String,
    pub origin: Option<String>,
    pub unit: Option<String>,
    pub list_price: i64,
    pub currency: String,
    pub image_url: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Lifecycle of a room: `scheduled → live → ended`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RoomStatus {
    #[default]
    Scheduled,
    Live,
    Ended,
}

impl RoomStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Live => "live",
            Self::Ended => "ended",
        }
    }

    /// Every status, in lifecycle order.
    pub const ALL: [Self; 3] = [Self::Scheduled, Self::Live, Self::Ended];

    /// The status named `s` (the inverse of [`Self::as_str`]).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == s)
    }
}

/// A live-stream room. Harvest does not carry video: `playback_url` says where players
/// fetch it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Room {
    pub id: String,
    pub title: String,
    pub description: Option<String>,
    pub streamer_id: String,
    pub status: RoomStatus,
    pub playback_url: Option<String>,
    pub scheduled_start: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// The live part of a room: what is happening in it right now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RoomLive {
    /// Open WebSocket connections to the room.
    pub viewers: u64,
    /// Total likes received.
    pub likes: u64,
    pub pinned_product_id: Option<String>,
    /// The room's product bag, in the order products were added.
    pub product_ids: Vec<String>,
    /// Flash sales of the room that have not ended.
    pub active_sale_ids: Vec<String>,
    /// The PK match running in the room, if any.
    pub match_id: Option<String>,
}

/// A room with its live state, as `GET /api/v1/rooms/{id}` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RoomDetail {
    #[serde(flatten)]
    pub room: Room,
    pub live: RoomLive,
}

/// A page of products.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProductList {
    pub items: Vec<Product>,
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// A page of rooms.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RoomList {
    pub items: Vec<Room>,
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// The room's product bag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProductIds {
    pub product_ids: Vec<String>,
}

/// The room's pinned product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Pinned {
    pub pinned_product_id: Option<String>,
}

/// Answer of `GET /healthz`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
}

/// Answer of `GET /readyz`: `status` is `ok` or `unavailable`; `checks` names each
/// dependency with `ok` or the reason it failed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Readiness {
    pub status: String,
    #[schema(value_type = Object)]
    pub checks: serde_json::Map<String, serde_json::Value>,
}
