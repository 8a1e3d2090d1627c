//! Flash sales and orders (API.md §4), as the HTTP API and the WebSocket events carry them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::pb::WireEnum;

/// Lifecycle of a flash sale: `scheduled → live ⇄ sold_out → ended`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SaleStatus {
    #[default]
    Scheduled,
    Live,
    /// Nothing remains; returns to `live` when a released or expired hold gives units back.
    SoldOut,
    Ended,
}

impl SaleStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Live => "live",
            Self::SoldOut => "sold_out",
            Self::Ended => "ended",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "scheduled" => Some(Self::Scheduled),
            "live" => Some(Self::Live),
            "sold_out" => Some(Self::SoldOut),
            "ended" => Some(Self::Ended),
            _ => None,
        }
    }
}

/// A flash sale: a product sold in a room at `price` from a fixed `stock`.
///
/// `remaining + held + sold == stock` always; `sold` counts paid units, refunded ones
/// included. Money is in integer minor units of `currency`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Sale {
    pub id: String,
    pub room_id: String,
    pub product_id: String,
    pub price: i64,
    pub currency: String,
    pub stock: i64,
    pub per_user_limit: i64,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    /// How long a hold stays payable, in seconds.
    pub hold_ttl_s: i64,
    pub status: SaleStatus,
    pub remaining: i64,
    pub held: i64,
    pub sold: i64,
}

/// Status of an order: `paid → refunded`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    #[default]
    Paid,
    Refunded,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Paid => "paid",
            Self::Refunded => "refunded",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "paid" => Some(Self::Paid),
            "refunded" => Some(Self::Refunded),
            _ => None,
        }
    }
}

/// An order: a paid hold. Field order is the CSV column order of the order export.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Order {
    pub id: String,
    pub hold_id: String,
    pub sale_id: String,
    pub room_id: String,
    pub product_id: String,
    pub buyer_id: String,
    pub quantity: i64,
    pub unit_price: i64,
    /// `quantity × unit_price`.
    pub amount: i64,
    pub currency: String,
    pub status: OrderStatus,
    pub paid_at: DateTime<Utc>,
    /// Null unless refunded.
    pub refunded_at: Option<DateTime<Utc>>,
}

/// Where a hold stands: `held`, then exactly one of `paid`, `released`, `expired`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HoldStatus {
    #[default]
    Held,
    Paid,
    Released,
    Expired,
}

impl HoldStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Held => "held",
            Self::Paid => "paid",
            Self::Released => "released",
            Self::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "held" => Some(Self::Held),
            "paid" => Some(Self::Paid),
            "released" => Some(Self::Released),
            "expired" => Some(Self::Expired),
            _ => None,
        }
    }
}

/// Units of a flash sale set aside for one buyer until paid, released or expired.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Hold {
    pub id: String,
    pub sale_id: String,
    pub user_id: String,
    pub quantity: i64,
    /// The sale's price per unit when the hold was made.
    pub unit_price: i64,
    /// `quantity × unit_price`, what the buyer pays.
    pub amount: i64,
    pub currency: String,
    pub status: HoldStatus,
    pub created_at: DateTime<Utc>,
    /// When the hold ends unless paid.
    pub expires_at: DateTime<Utc>,
    /// The order that paid the hold; null unless `status` is `paid`.
    pub order_id: Option<String>,
}

/// One successful hold of a flash sale in allocation order: who got which units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Allocation {
    /// 1, 2, 3, ... in the order the reservations were admitted (first come, first served).
    pub position: u64,
    pub hold_id: String,
    pub user_id: String,
    pub quantity: i64,
    /// The hold's current status.
    pub status: HoldStatus,
    pub created_at: DateTime<Utc>,
}

/// A page of a flash sale's allocation record.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AllocationList {
    pub items: Vec<Allocation>,
    pub next_cursor: Option<String>,
}

/// A page of flash sales.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SaleList {
    pub items: Vec<Sale>,
    pub next_cursor: Option<String>,
}

impl WireEnum for SaleStatus {
    const WHAT: &'static str = "sale status";
    fn as_str(self) -> &'static str {
        SaleStatus::as_str(self)
    }
    fn parse(s: &str) -> Option<Self> {
        SaleStatus::parse(s)
    }
}

impl WireEnum for OrderStatus {
    const WHAT: &'static str = "order status";
    fn as_str(self) -> &'static str {
        OrderStatus::as_str(self)
    }
    fn parse(s: &str) -> Option<Self> {
        OrderStatus::parse(s)
    }
}

enum_field!(SaleStatus, OrderStatus);

proto_message!(Sale {
    id = 1,
    room_id = 2,
    product_id = 3,
    price = 4,
    currency = 5,
    stock = 6,
    per_user_limit = 7,
    starts_at = 8,
    ends_at = 9,
    hold_ttl_s = 10,
    status = 11,
    remaining = 12,
    held = 13,
    sold = 14,
});

proto_message!(Order {
    id = 1,
    hold_id = 2,
    sale_id = 3,
    room_id = 4,
    product_id = 5,
    buyer_id = 6,
    quantity = 7,
    unit_price = 8,
    amount = 9,
    currency = 10,
    status = 11,
    paid_at = 12,
    refunded_at = 13,
});
