//! The crate's error type. Every variant maps to one API error code.

use serde::Serialize;

/// One problem with the scoring rules: where (a field path into the contest body, such
/// as `scoring.metrics[1].weight`) and what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleViolation {
    pub field: String,
    pub message: String,
}

/// What can go wrong when building a contest or asking it something.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContestError {
    /// Malformed input: a malformed rules document, an unknown, missing or mistyped field,
    /// an integer out of range, a window that ends before it starts, bad participants,
    /// a bad match. `field` names the field when there is one.
    #[error("{message}")]
    BadRequest {
        field: Option<String>,
        message: String,
    },
    /// The scoring rules are invalid; every problem is listed, in document order.
    #[error("invalid scoring rules: {}", .0.iter().map(|v| format!("{}: {}", v.field, v.message)).collect::<Vec<_>>().join("; "))]
    InvalidRules(Vec<RuleViolation>),
    /// Settling before `ends_at + settle_grace_s` (milliseconds since the epoch).
    #[error("the contest cannot settle before {settles_at_ms} ms")]
    TooEarly { settles_at_ms: i64 },
}

impl ContestError {
    /// The API error code this error answers with.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { .. } => "bad_request",
            Self::InvalidRules(_) => "invalid_rules",
            Self::TooEarly { .. } => "too_early",
        }
    }

    /// The `details` object of the API error body: `{"field": ...}` for a bad request
    /// that names a field; for invalid rules the first field and every problem,
    /// `{"field": "scoring.metrics[1].weight", "errors": [{"field", "message"}, ...]}`;
    /// `{"settles_at_ms": ...}` when too early.
    pub fn details(&self) -> serde_json::Value {
        match self {
            Self::BadRequest { field: Some(f), .. } => serde_json::json!({ "field": f }),
            Self::BadRequest { field: None, .. } => serde_json::json!({}),
            Self::InvalidRules(errors) => serde_json::json!({
                "field": errors.first().map(|e| e.field.as_str()),
                "errors": errors,
            }),
            Self::TooEarly { settles_at_ms } => {
                serde_json::json!({ "settles_at_ms": settles_at_ms })
            }
        }
    }

    pub(crate) fn bad(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::BadRequest {
            field: Some(field.into()),
            message: message.into(),
        }
    }
}
