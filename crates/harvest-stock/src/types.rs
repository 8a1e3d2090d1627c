//! Domain types shared by every engine: sales, reservation requests, holds, outcomes.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use crate::StockError;

/// How long an idempotency record is kept: longer than any hold (hold TTLs are at most
/// an hour), as API.md §1 asks for replays within 24 h.
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// What a flash sale is, as far as inventory goes. Prices and products live elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaleSpec {
    pub sale_id: String,
    /// Units on offer, at least 1.
    pub stock: u64,
    /// Units one buyer may hold plus buy in this sale, at least 1.
    pub per_user_limit: u32,
    /// How long a hold lasts unless paid (whole milliseconds, at least 1 ms).
    pub hold_ttl: Duration,
    /// Reservations are accepted from this instant (ms since the Unix epoch)...
    pub starts_at_ms: i64,
    /// ...up to, not including, this one.
    pub ends_at_ms: i64,
}

impl SaleSpec {
    /// The hold TTL in whole milliseconds, as engines store it.
    pub fn hold_ttl_ms(&self) -> i64 {
        i64::try_from(self.hold_ttl.as_millis()).unwrap_or(i64::MAX)
    }

    /// Checks the spec is usable: non-empty id, stock ≥ 1, limit ≥ 1, TTL ≥ 1 ms,
    /// `ends_at_ms > starts_at_ms`.
    pub fn validate(&self) -> Result<(), StockError> {
        let bad = |m: &str| Err(StockError::Invalid(format!("sale {}: {m}", self.sale_id)));
        if self.sale_id.is_empty() {
            return Err(StockError::Invalid("empty sale id".into()));
        }
        if self.stock == 0 || self.stock > MAX_STOCK {
            return bad("stock must be between 1 and 2^53-1");
        }
        if self.per_user_limit == 0 {
            return bad("per_user_limit must be at least 1");
        }
        if self.hold_ttl_ms() < 1 || self.hold_ttl > Duration::from_secs(30 * 24 * 3600) {
            return bad("hold_ttl must be between 1 ms and 30 days");
        }
        if self.ends_at_ms <= self.starts_at_ms {
            return bad("ends_at_ms must be after starts_at_ms");
        }
        Ok(())
    }
}

/// Stock is bounded so every count fits exactly in a double (the Redis scripts' number type).
pub const MAX_STOCK: u64 = (1 << 53) - 1;

/// The largest quantity one reservation may ask for. The HTTP edge allows 1..=100; the
/// engine refuses anything above this bound as malformed.
pub const MAX_QUANTITY: u32 = 1_000_000;

/// A buyer's request for units of one sale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveRequest {
    pub sale_id: String,
    pub user_id: String,
    /// Units wanted, at least 1.
    pub quantity: u32,
    /// The `Idempotency-Key` header, scoped by the engine to (sale, user).
    pub idempotency_key: String,
    /// A digest of the parsed request body, computed by the caller. The same key with a
    /// different fingerprint answers [`Reject::IdempotencyKeyReused`].
    pub request_fingerprint: String,
    /// A fresh id proposed by the caller; used only if this request makes a new hold.
    pub hold_id: String,
    /// The caller's clock (ms since the Unix epoch): decides the sale window and the
    /// hold's `created_at`/`expires_at`.
    pub now_ms: i64,
}

impl ReserveRequest {
    pub(crate) fn validate(&self) -> Result<(), StockError> {
        if self.quantity == 0 || self.quantity > MAX_QUANTITY {
            return Err(StockError::Invalid(format!(
                "quantity {} out of range 1..={MAX_QUANTITY}",
                self.quantity
            )));
        }
        if self.sale_id.is_empty()
            || self.user_id.is_empty()
            || self.idempotency_key.is_empty()
            || self.hold_id.is_empty()
        {
            return Err(StockError::Invalid(
                "sale_id, user_id, idempotency_key and hold_id must not be empty".into(),
            ));
        }
        Ok(())
    }
}

/// Where a hold stands. A hold ends exactly once: `Held` becomes `Paid`, `Released` or
/// `Expired` and never changes again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HoldStatus {
    Held,
    Paid,
    Released,
    Expired,
}

impl HoldStatus {
    /// The API's spelling (`held`, `paid`, `released`, `expired`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Held => "held",
            Self::Paid => "paid",
            Self::Released => "released",
            Self::Expired => "expired",
        }
    }

    pub(crate) fn as_char(self) -> char {
        match self {
            Self::Held => 'H',
            Self::Paid => 'P',
            Self::Released => 'R',
            Self::Expired => 'E',
        }
    }

    pub(crate) fn from_char(c: char) -> Option<Self> {
        Some(match c {
            'H' => Self::Held,
            'P' => Self::Paid,
            'R' => Self::Released,
            'E' => Self::Expired,
            _ => return None,
        })
    }
}

impl fmt::Display for HoldStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Units set aside for one buyer until paid, released or expired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub hold_id: String,
    pub sale_id: String,
    pub user_id: String,
    pub quantity: u32,
    /// Allocation order within the sale: 1, 2, 3, ... in the order the engine admitted
    /// the successful reservations (first come, first served).
    pub position: u64,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub status: HoldStatus,
}

impl Hold {
    /// True while the hold still holds units and its time has not run out.
    pub fn is_live_at(&self, now_ms: i64) -> bool {
        self.status == HoldStatus::Held && now_ms < self.expires_at_ms
    }
}

/// Why a reservation was refused, in the order the checks run (after the idempotency
/// check): `NotStarted`, `SaleEnded`, `SoldOut`, `LimitExceeded`, `InsufficientStock`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reject {
    NotStarted,
    SaleEnded,
    /// Nothing remains. Not recorded against the idempotency key, so a retry is a fresh
    /// attempt (and a node may answer it from a local flag).
    SoldOut,
    /// Held plus bought plus this quantity would pass the per-user limit.
    LimitExceeded,
    /// Some units remain, fewer than asked.
    InsufficientStock,
    /// The idempotency key was used before with a different request body.
    IdempotencyKeyReused,
    /// The engine has no such sale.
    NotFound,
}

impl Reject {
    /// The API error code (`not_started`, `sale_ended`, ...).
    pub fn code(self) -> &'static str {
        match self {
            Self::NotStarted => "not_started",
            Self::SaleEnded => "sale_ended",
            Self::SoldOut => "sold_out",
            Self::LimitExceeded => "limit_exceeded",
            Self::InsufficientStock => "insufficient_stock",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::NotFound => "not_found",
        }
    }

    /// Parses an API error code back into a rejection.
    pub fn from_code(code: &str) -> Option<Self> {
        Some(match code {
            "not_started" => Self::NotStarted,
            "sale_ended" => Self::SaleEnded,
            "sold_out" => Self::SoldOut,
            "limit_exceeded" => Self::LimitExceeded,
            "insufficient_stock" => Self::InsufficientStock,
            "idempotency_key_reused" => Self::IdempotencyKeyReused,
            "not_found" => Self::NotFound,
            _ => return None,
        })
    }

    /// Whether this answer is stored as the key's final outcome (the 409s except
    /// `sold_out`; `idempotency_key_reused` answers a replay and is never stored).
    pub fn is_recorded(self) -> bool {
        matches!(
            self,
            Self::NotStarted | Self::SaleEnded | Self::LimitExceeded | Self::InsufficientStock
        )
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// The answer to a reservation.
///
/// A replay of an idempotency key with the same fingerprint returns the first final
/// outcome: `Held` with the hold as it was first answered (status `Held`, same id,
/// position and times, whatever happened to it since: ask [`crate::StockEngine::hold`]
/// for its current status), or the same recorded rejection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveOutcome {
    Held(Hold),
    Rejected(Reject),
}

impl ReserveOutcome {
    /// The hold, when the reservation succeeded.
    pub fn hold(&self) -> Option<&Hold> {
        match self {
            Self::Held(h) => Some(h),
            Self::Rejected(_) => None,
        }
    }

    /// The rejection, when it did not.
    pub fn rejection(&self) -> Option<Reject> {
        match self {
            Self::Held(_) => None,
            Self::Rejected(r) => Some(*r),
        }
    }
}

/// A sale's unit counts: `remaining + held + sold == stock`, always.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SaleCounts {
    pub stock: u64,
    pub remaining: u64,
    pub held: u64,
    /// Paid units (refunds do not give units back).
    pub sold: u64,
}

impl SaleCounts {
    /// Invariant 1 of PRODUCT.md.
    pub fn is_consistent(&self) -> bool {
        self.remaining
            .checked_add(self.held)
            .and_then(|x| x.checked_add(self.sold))
            == Some(self.stock)
    }
}

/// The API's sale status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SaleStatus {
    Scheduled,
    Live,
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
}

/// Everything an engine knows about one sale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaleInfo {
    pub spec: SaleSpec,
    /// Ended early by [`crate::StockEngine::end_sale`].
    pub ended: bool,
    pub counts: SaleCounts,
}

impl SaleInfo {
    /// The sale's status at `now_ms`: ended (early or by the clock), scheduled, sold out
    /// (nothing remains; returns to live when units come back), or live.
    pub fn status(&self, now_ms: i64) -> SaleStatus {
        if self.ended || now_ms >= self.spec.ends_at_ms {
            SaleStatus::Ended
        } else if now_ms < self.spec.starts_at_ms {
            SaleStatus::Scheduled
        } else if self.counts.remaining == 0 {
            SaleStatus::SoldOut
        } else {
            SaleStatus::Live
        }
    }
}

/// What the system of record knows about a sale, to rebuild an engine's state after it
/// was lost (see [`crate::StockEngine::restore_sale`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaleRecord {
    pub spec: SaleSpec,
    /// Whether the sale was ended early.
    pub ended: bool,
    /// The sale's holds, any status. Holds with status `Held` hold units again (even if
    /// already due: the next sweep expires them and reports them); the others are kept
    /// for [`crate::StockEngine::allocations`] and [`crate::StockEngine::hold`].
    pub holds: Vec<Hold>,
    /// Paid units per buyer (refunded orders included): they count as sold and against
    /// each buyer's limit.
    pub sold_by_user: HashMap<String, u64>,
}

impl SaleRecord {
    /// Checks the record and computes the counts it rebuilds.
    pub(crate) fn validate(&self) -> Result<SaleCounts, StockError> {
        self.spec.validate()?;
        let bad = |m: String| {
            Err(StockError::Invalid(format!(
                "restore {}: {m}",
                self.spec.sale_id
            )))
        };
        let mut seen = std::collections::HashSet::new();
        let mut positions = std::collections::HashSet::new();
        let mut held: u64 = 0;
        for h in &self.holds {
            if h.sale_id != self.spec.sale_id {
                return bad(format!("hold {} belongs to sale {}", h.hold_id, h.sale_id));
            }
            if h.hold_id.is_empty() || h.user_id.is_empty() || h.quantity == 0 || h.position == 0 {
                return bad(format!("hold {:?} is malformed", h.hold_id));
            }
            if !seen.insert(h.hold_id.as_str()) {
                return bad(format!("hold {} listed twice", h.hold_id));
            }
            if !positions.insert(h.position) {
                return bad(format!("position {} listed twice", h.position));
            }
            if h.status == HoldStatus::Held {
                held += u64::from(h.quantity);
            }
        }
        let sold: u64 = self.sold_by_user.values().sum();
        if held.saturating_add(sold) > self.spec.stock {
            return bad(format!(
                "held {held} + sold {sold} exceeds stock {}",
                self.spec.stock
            ));
        }
        Ok(SaleCounts {
            stock: self.spec.stock,
            remaining: self.spec.stock - held - sold,
            held,
            sold,
        })
    }
}
