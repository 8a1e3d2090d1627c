//! Contest participants and the input events, with their canonical order.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A contestant: a name, an owner streamer, member user ids and one or more rooms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Participant {
    pub id: String,
    pub name: String,
    /// The streamer who owns the participant's rooms; a buyer with this id is a
    /// self-purchase.
    pub owner_id: String,
    /// Team members; their purchases are self-purchases too.
    #[serde(default)]
    pub member_ids: Vec<String>,
    pub room_ids: Vec<String>,
}

/// An order paid in a room. Times are milliseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderPaid {
    pub order_id: String,
    pub room_id: String,
    pub buyer_id: String,
    pub product_id: String,
    /// Minor units, `0..=2^53−1`.
    pub amount: i64,
    pub paid_at_ms: i64,
}

/// An order refunded (by its room's owner or an admin).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderRefunded {
    pub order_id: String,
    pub at_ms: i64,
}

/// The likes a room received during one second (`second` is Unix seconds). Tallies add
/// up: two tallies of one room and second count both.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LikesTally {
    pub room_id: String,
    pub second: i64,
    pub count: u64,
}

/// A judge's whole entry: a score 0–100 for each participant the judge scored. A judge's
/// later entry replaces that judge's earlier one entirely.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeScores {
    pub judge: String,
    /// Participant id → score.
    pub scores: BTreeMap<String, u8>,
    pub at_ms: i64,
}

/// The result of a PK match of the contest: the participants with the highest score
/// (several on a draw, none when every score was 0). A later result of the same match
/// replaces the earlier one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchResult {
    pub match_id: String,
    pub winner_ids: Vec<String>,
    pub at_ms: i64,
}

/// One entry of a contest's event log.
///
/// JSON: `{"type": "order_paid", ...fields}` (also `order_refunded`, `likes`,
/// `judge_scores`, `match_result`); this is the form hashed into `events_hash`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    OrderPaid(OrderPaid),
    OrderRefunded(OrderRefunded),
    Likes(LikesTally),
    JudgeScores(JudgeScores),
    MatchResult(MatchResult),
}

impl Event {
    /// The event's time in milliseconds: `paid_at_ms`, `at_ms`, or the start of a likes
    /// tally's second.
    pub fn time_ms(&self) -> i64 {
        match self {
            Self::OrderPaid(e) => e.paid_at_ms,
            Self::OrderRefunded(e) => e.at_ms,
            Self::Likes(e) => e.second.saturating_mul(1000),
            Self::JudgeScores(e) => e.at_ms,
            Self::MatchResult(e) => e.at_ms,
        }
    }

    /// The rank of the event's kind in the canonical order.
    pub fn kind_rank(&self) -> u8 {
        match self {
            Self::OrderPaid(_) => 0,
            Self::OrderRefunded(_) => 1,
            Self::Likes(_) => 2,
            Self::JudgeScores(_) => 3,
            Self::MatchResult(_) => 4,
        }
    }

    /// The canonical order of events: by time, then kind (payments, refunds, likes,
    /// judges, match results), then the event's fields in declaration order (so order
    /// id, room, judge or match id first). It is a total order on distinct events, so
    /// sorting any permutation of a log gives one sequence.
    ///
    /// Every result of the engine is defined on the log in this order; in particular
    /// the "payment order" of the per-buyer cap is `(paid_at_ms, order_id)`, and of two
    /// entries of one judge (or two results of one match) at the same millisecond the
    /// one that sorts last is the later.
    pub fn canonical_cmp(&self, other: &Self) -> Ordering {
        (self.time_ms(), self.kind_rank())
            .cmp(&(other.time_ms(), other.kind_rank()))
            .then_with(|| match (self, other) {
                (Self::OrderPaid(a), Self::OrderPaid(b)) => a.cmp(b),
                (Self::OrderRefunded(a), Self::OrderRefunded(b)) => a.cmp(b),
                (Self::Likes(a), Self::Likes(b)) => a.cmp(b),
                (Self::JudgeScores(a), Self::JudgeScores(b)) => a.cmp(b),
                (Self::MatchResult(a), Self::MatchResult(b)) => a.cmp(b),
                _ => unreachable!("equal kind ranks"),
            })
    }
}

/// Sorts events into the canonical order ([`Event::canonical_cmp`]).
pub fn sort_canonical(events: &mut [Event]) {
    events.sort_by(Event::canonical_cmp);
}

impl From<OrderPaid> for Event {
    fn from(e: OrderPaid) -> Self {
        Self::OrderPaid(e)
    }
}

impl From<OrderRefunded> for Event {
    fn from(e: OrderRefunded) -> Self {
        Self::OrderRefunded(e)
    }
}

impl From<LikesTally> for Event {
    fn from(e: LikesTally) -> Self {
        Self::Likes(e)
    }
}

impl From<JudgeScores> for Event {
    fn from(e: JudgeScores) -> Self {
        Self::JudgeScores(e)
    }
}

impl From<MatchResult> for Event {
    fn from(e: MatchResult) -> Self {
        Self::MatchResult(e)
    }
}

impl From<&harvest_proto::Order> for OrderPaid {
    /// The payment of a stored order.
    fn from(order: &harvest_proto::Order) -> Self {
        Self {
            order_id: order.id.clone(),
            room_id: order.room_id.clone(),
            buyer_id: order.buyer_id.clone(),
            product_id: order.product_id.clone(),
            amount: order.amount,
            paid_at_ms: order.paid_at.timestamp_millis(),
        }
    }
}
