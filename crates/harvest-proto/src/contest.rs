//! Contest scoring on the wire (API.md §5): PK matches and standings.
//!
//! These are the shapes only; how scores and standings are computed belongs to the
//! contest engine.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::pb::WireEnum;

/// A contest metric. Declaration order is the order of every metric table.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Sum of counted amounts, minor units, net of refunds.
    #[default]
    PaidGmv,
    PaidOrders,
    DistinctBuyers,
    Likes,
    MatchWins,
    /// Mean of the judges' scores, 0–100.
    Judges,
}

impl Metric {
    pub const ALL: [Metric; 6] = [
        Self::PaidGmv,
        Self::PaidOrders,
        Self::DistinctBuyers,
        Self::Likes,
        Self::MatchWins,
        Self::Judges,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PaidGmv => "paid_gmv",
            Self::PaidOrders => "paid_orders",
            Self::DistinctBuyers => "distinct_buyers",
            Self::Likes => "likes",
            Self::MatchWins => "match_wins",
            Self::Judges => "judges",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

/// Lifecycle of a contest, following the clock: `scheduled` before `starts_at`, `live`
/// until `ends_at`, `ended` until it settles (by the organizer, or by itself at
/// `ends_at + settle_grace_s`), then `settled` with frozen results.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ContestStatus {
    #[default]
    Scheduled,
    Live,
    Ended,
    Settled,
}

impl ContestStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Live => "live",
            Self::Ended => "ended",
            Self::Settled => "settled",
        }
    }
}

/// A contestant of a contest: a name, an owner streamer, member user ids and rooms.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ContestParticipant {
    pub id: String,
    pub name: String,
    /// The streamer who owns the participant's rooms.
    pub owner_id: String,
    /// Team members; their purchases count as self-purchases.
    pub member_ids: Vec<String>,
    pub room_ids: Vec<String>,
}

/// A contest (`POST /api/v1/contests`, `GET /api/v1/contests/{id}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Contest {
    pub id: String,
    pub organizer_id: String,
    pub title: String,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub settle_grace_s: i64,
    pub participants: Vec<ContestParticipant>,
    /// The scoring rules with every default filled in.
    #[schema(value_type = Object)]
    pub scoring: serde_json::Value,
    pub status: ContestStatus,
    pub created_at: DateTime<Utc>,
    /// When the results were frozen; null until settled.
    pub settled_at: Option<DateTime<Utc>>,
}

/// Lifecycle of a PK match: `scheduled → live → ended`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MatchStatus {
    #[default]
    Scheduled,
    Live,
    Ended,
}

impl MatchStatus {
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

/// One participant's score in a match, in the unit of the match's metric (minor units for
/// `paid_gmv`, counts otherwise).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Score {
    pub participant_id: String,
    pub value: i64,
}

/// A PK match between 2 to 9 participants of a contest, scored on one metric.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Match {
    pub id: String,
    pub contest_id: String,
    pub participant_ids: Vec<String>,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub metric: Metric,
    pub status: MatchStatus,
    /// One score per participant.
    pub scores: Vec<Score>,
    /// The participants with the highest score once the match has ended (several on a
    /// draw); empty while it runs, and when every score is 0.
    pub winner_ids: Vec<String>,
}

/// The six metric values of one participant; every metric is always present.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Metrics {
    pub paid_gmv: i64,
    pub paid_orders: i64,
    pub distinct_buyers: i64,
    pub likes: i64,
    pub match_wins: i64,
    /// A mean, so not an integer.
    pub judges: f64,
}

/// One participant's line in the standings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StandingsRow {
    /// Competition rank from 1 (tied participants share the better rank).
    pub rank: u32,
    pub participant_id: String,
    pub name: String,
    /// False for participants under `min_distinct_buyers`, listed after qualified ones.
    pub qualified: bool,
    /// Sum of `points`; not rounded.
    pub total: f64,
    pub metrics: Metrics,
    /// Points of each scored metric.
    #[schema(value_type = BTreeMap<String, f64>)]
    pub points: BTreeMap<Metric, f64>,
}

/// A contest's standings, rows in rank order. Provisional until the contest settles.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Standings {
    pub contest_id: String,
    pub provisional: bool,
    pub computed_at: DateTime<Utc>,
    /// SHA-256 (hex) of the canonical JSON of the contest's rules.
    pub rules_hash: String,
    pub rows: Vec<StandingsRow>,
}

/// Why an order paid in a participant's room does not count. When several reasons
/// apply the first in declaration order is given.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ExclusionReason {
    /// Paid outside the contest window `[starts_at, ends_at)`.
    OutsideWindow,
    /// Refunded before settlement.
    Refunded,
    /// The buyer is the participant's owner or one of its members.
    SelfPurchase,
    /// The product is not in `eligible_product_ids`.
    IneligibleProduct,
    /// The buyer's earlier orders already reached `per_buyer_gmv_cap`.
    BuyerCap,
}

impl ExclusionReason {
    pub const ALL: [Self; 5] = [
        Self::OutsideWindow,
        Self::Refunded,
        Self::SelfPurchase,
        Self::IneligibleProduct,
        Self::BuyerCap,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::OutsideWindow => "outside_window",
            Self::Refunded => "refunded",
            Self::SelfPurchase => "self_purchase",
            Self::IneligibleProduct => "ineligible_product",
            Self::BuyerCap => "buyer_cap",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// An order that counts, with what it counts for (after multiplier and cap).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CountedOrder {
    pub order_id: String,
    /// The order's amount, minor units.
    pub amount: i64,
    /// `floor(amount × multiplier)`, then capped per buyer; minor units.
    pub counted_amount: i64,
}

/// An order that does not count, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExcludedOrder {
    pub order_id: String,
    pub reason: ExclusionReason,
}

/// Every order paid in one participant's rooms, counted or excluded, in payment order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditRow {
    pub participant_id: String,
    pub counted: Vec<CountedOrder>,
    pub excluded: Vec<ExcludedOrder>,
}

/// A contest's audit (`GET /api/v1/contests/{id}/audit`): the hashes that pin the rules
/// and the counted event log, and every order per participant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Audit {
    /// SHA-256 (hex) of the canonical JSON (RFC 8785) of the contest's rules.
    pub rules_hash: String,
    /// SHA-256 (hex) of the canonical JSON of the ordered list of counted events.
    pub events_hash: String,
    /// One row per participant, in the contest's participant order.
    pub rows: Vec<AuditRow>,
}

impl WireEnum for Metric {
    const WHAT: &'static str = "metric";
    fn as_str(self) -> &'static str {
        Metric::as_str(self)
    }
    fn parse(s: &str) -> Option<Self> {
        Metric::parse(s)
    }
}

impl WireEnum for MatchStatus {
    const WHAT: &'static str = "match status";
    fn as_str(self) -> &'static str {
        MatchStatus::as_str(self)
    }
    fn parse(s: &str) -> Option<Self> {
        MatchStatus::parse(s)
    }
}

enum_field!(Metric, MatchStatus);

proto_message!(Score { participant_id = 1, value = 2 });

proto_message!(Match {
    id = 1,
    contest_id = 2,
    participant_ids = 3,
    starts_at = 4,
    ends_at = 5,
    metric = 6,
    status = 7,
    scores = 8,
    winner_ids = 9,
});

proto_message!(Metrics {
    paid_gmv = 1,
    paid_orders = 2,
    distinct_buyers = 3,
    likes = 4,
    match_wins = 5,
    judges = 6,
});

proto_message!(StandingsRow {
    rank = 1,
    participant_id = 2,
    name = 3,
    qualified = 4,
    total = 5,
    metrics = 6,
    points = 7,
});

proto_message!(Standings {
    contest_id = 1,
    provisional = 2,
    computed_at = 3,
    rules_hash = 4,
    rows = 5,
});
