//! The crate's error type. Every variant maps to one API error code.

use crate::types::{Hold, HoldStatus};

/// What can go wrong in an engine call, besides a reservation being refused (that is a
/// [`crate::ReserveOutcome::Rejected`], not an error).
#[derive(Debug, Clone, thiserror::Error)]
pub enum StockError {
    /// No sale with this id (the memory engine; Redis reports [`Self::SaleStateLost`]).
    #[error("sale {0} not found")]
    SaleNotFound(String),
    /// No hold with this id, or it belongs to another buyer.
    #[error("hold {0} not found")]
    HoldNotFound(String),
    /// `create_sale` with an id already used by a different spec.
    #[error("sale {0} already exists with a different spec")]
    SaleConflict(String),
    /// The caller proposed a hold id that an earlier hold of the sale already uses.
    #[error("hold id {0} is already taken")]
    HoldIdTaken(String),
    /// Releasing a hold that was paid.
    #[error("hold {0} is paid")]
    HoldPaid(String),
    /// Releasing a hold that expired (or whose time ran out).
    #[error("hold {0} has expired")]
    HoldExpired(String),
    /// Releasing a hold that was already released.
    #[error("hold {0} was already released")]
    HoldReleased(String),
    /// Paying a hold that ended without payment (`Expired` or `Released`, also a `Held`
    /// hold whose time ran out and is waiting for the sweeper): the payment is late and
    /// must be recorded for refund. No stock is taken.
    #[error("hold {} is {status}: payment is late", hold.hold_id)]
    LateHold { status: HoldStatus, hold: Box<Hold> },
    /// A malformed argument (empty id, zero quantity, invalid spec or record).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The engine's state for this sale is missing (Redis lost the sale's keys, or never
    /// had them). Rebuild it with [`crate::StockEngine::restore_sale`] from the system of
    /// record, then retry.
    #[error("stock state of sale {sale_id} is missing from the engine")]
    SaleStateLost { sale_id: String },
    /// The backend did not answer in time or could not be reached. Nothing is known to
    /// have happened; retrying with the same idempotency key is safe.
    #[error("stock engine unavailable: {0}")]
    Unavailable(String),
    /// The backend answered something this crate does not understand (a bug).
    #[error("stock engine backend error: {0}")]
    Backend(String),
}

impl StockError {
    /// The API error code this error answers with.
    pub fn code(&self) -> &'static str {
        match self {
            Self::SaleNotFound(_) | Self::HoldNotFound(_) => "not_found",
            Self::SaleConflict(_) | Self::HoldIdTaken(_) => "conflict",
            Self::HoldPaid(_) => "hold_paid",
            Self::HoldExpired(_) => "hold_expired",
            Self::HoldReleased(_) => "hold_released",
            Self::LateHold { status, .. } => match status {
                HoldStatus::Released => "hold_released",
                _ => "hold_expired",
            },
            Self::Invalid(_) => "bad_request",
            Self::SaleStateLost { .. } | Self::Unavailable(_) => "unavailable",
            Self::Backend(_) => "internal",
        }
    }

    /// True for errors a retry may cure (the backend is down or lost state).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::SaleStateLost { .. })
    }
}
