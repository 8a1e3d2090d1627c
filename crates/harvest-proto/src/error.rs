use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Every error code the API answers with, with the HTTP status that carries it.
///
/// Codes are part of the contract: clients branch on them, so a code is never renamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Conflict,
    PayloadTooLarge,
    UnsupportedMediaType,
    RateLimited,
    Unavailable,
    Internal,
    // Domain codes.
    DuplicateSku,
    InvalidState,
    NotInRoom,
    RoomEnded,
    NotStarted,
    SaleEnded,
    SoldOut,
    LimitExceeded,
    InsufficientStock,
    InvalidQuantity,
    MissingIdempotencyKey,
    IdempotencyKeyReused,
    HoldPaid,
    HoldExpired,
    HoldReleased,
    AlreadyRefunded,
    AmountMismatch,
    InvalidSignature,
    InvalidRules,
    TooEarly,
    ParticipantBusy,
}

impl ErrorCode {
    /// The snake_case code as it appears in error bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Conflict => "conflict",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
            Self::DuplicateSku => "duplicate_sku",
            Self::InvalidState => "invalid_state",
            Self::NotInRoom => "not_in_room",
            Self::RoomEnded => "room_ended",
            Self::NotStarted => "not_started",
            Self::SaleEnded => "sale_ended",
            Self::SoldOut => "sold_out",
            Self::LimitExceeded => "limit_exceeded",
            Self::InsufficientStock => "insufficient_stock",
            Self::InvalidQuantity => "invalid_quantity",
            Self::MissingIdempotencyKey => "missing_idempotency_key",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::HoldPaid => "hold_paid",
            Self::HoldExpired => "hold_expired",
            Self::HoldReleased => "hold_released",
            Self::AlreadyRefunded => "already_refunded",
            Self::AmountMismatch => "amount_mismatch",
            Self::InvalidSignature => "invalid_signature",
            Self::InvalidRules => "invalid_rules",
            Self::TooEarly => "too_early",
            Self::ParticipantBusy => "participant_busy",
        }
    }

    /// The HTTP status code this error code is answered with.
    pub fn http_status(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::Conflict
            | Self::DuplicateSku
            | Self::InvalidState
            | Self::NotInRoom
            | Self::RoomEnded
            | Self::NotStarted
            | Self::SaleEnded
            | Self::SoldOut
            | Self::LimitExceeded
            | Self::InsufficientStock
            | Self::IdempotencyKeyReused
            | Self::HoldPaid
            | Self::HoldExpired
            | Self::HoldReleased
            | Self::AlreadyRefunded
            | Self::AmountMismatch
            | Self::TooEarly
            | Self::ParticipantBusy => 409,
            Self::InvalidSignature => 401,
            Self::InvalidQuantity | Self::MissingIdempotencyKey | Self::InvalidRules => 400,
            Self::PayloadTooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::RateLimited => 429,
            Self::Unavailable => 503,
            Self::Internal => 500,
        }
    }

    /// Every code, for documentation and exhaustive tests.
    pub const ALL: &'static [ErrorCode] = &[
        Self::BadRequest,
        Self::Unauthorized,
        Self::Forbidden,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::Conflict,
        Self::PayloadTooLarge,
        Self::UnsupportedMediaType,
        Self::RateLimited,
        Self::Unavailable,
        Self::Internal,
        Self::DuplicateSku,
        Self::InvalidState,
        Self::NotInRoom,
        Self::RoomEnded,
        Self::NotStarted,
        Self::SaleEnded,
        Self::SoldOut,
        Self::LimitExceeded,
        Self::InsufficientStock,
        Self::InvalidQuantity,
        Self::MissingIdempotencyKey,
        Self::IdempotencyKeyReused,
        Self::HoldPaid,
        Self::HoldExpired,
        Self::HoldReleased,
        Self::AlreadyRefunded,
        Self::AmountMismatch,
        Self::InvalidSignature,
        Self::InvalidRules,
        Self::TooEarly,
        Self::ParticipantBusy,
    ];
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body of every error answer: `{"error": {...}}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorObject,
}

/// The error object: a stable code, a human-readable message and structured details.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorObject {
    pub code: ErrorCode,
    pub message: String,
    /// Always an object, possibly empty; `field` names the offending request field.
    #[schema(value_type = Object)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialized_code_matches_as_str() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_value(code).unwrap();
            assert_eq!(json, serde_json::Value::String(code.as_str().to_owned()));
            let status = code.http_status();
            assert!((400..600).contains(&status), "{code} has status {status}");
        }
    }
}
