//! The one error type of the HTTP edge: every failure becomes
//! `{"error": {"code", "message", "details"}}` with the status its code implies.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use harvest_proto::{ErrorBody, ErrorCode, ErrorObject};
use harvest_store::StoreError;
use serde_json::{Map, Value};

/// An error answer. Handlers return `Result<_, ApiError>`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub details: Map<String, Value>,
    /// Seconds for the `Retry-After` header (429 and 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: Map::new(),
            retry_after: None,
        }
    }

    /// Adds one entry to `details`.
    pub fn detail(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    /// A 400 naming the offending field.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message).detail("field", field)
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("{what} not found"))
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }

    pub fn internal() -> Self {
        Self::new(ErrorCode::Internal, "internal error")
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorObject {
                code: self.code,
                message: self.message.clone(),
                details: self.details.clone(),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = (status, axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after
            && let Ok(value) = HeaderValue::from_str(&secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response.extensions_mut().insert(self.code);
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound => Self::new(ErrorCode::NotFound, "not found"),
            StoreError::DuplicateSku => Self::new(
                ErrorCode::DuplicateSku,
                "you already have a product with this sku",
            ),
            StoreError::InvalidState(status) => Self::new(
                ErrorCode::InvalidState,
                format!("the room is {}", status.as_str()),
            )
            .detail("status", status.as_str()),
            StoreError::AlreadyRefunded => {
                Self::new(ErrorCode::AlreadyRefunded, "the order was already refunded")
            }
            StoreError::NotInRoom => {
                Self::new(ErrorCode::NotInRoom, "the product is not in the room's bag")
            }
            StoreError::Unavailable(reason) => {
                tracing::warn!(%reason, "sql store unavailable");
                let mut e = Self::new(ErrorCode::Unavailable, "the database is unavailable; retry");
                e.retry_after = Some(1);
                e
            }
            other => {
                tracing::error!(error = %other, "sql store failure");
                Self::internal()
            }
        }
    }
}

/// The error code a bare status implies, for answers produced outside the handlers
/// (routing, extractor rejections, limits, timeouts, panics).
pub fn code_for_status(status: StatusCode) -> ErrorCode {
    match status.as_u16() {
        400 | 422 => ErrorCode::BadRequest,
        401 => ErrorCode::Unauthorized,
        403 => ErrorCode::Forbidden,
        404 => ErrorCode::NotFound,
        405 => ErrorCode::MethodNotAllowed,
        409 => ErrorCode::Conflict,
        413 => ErrorCode::PayloadTooLarge,
        415 => ErrorCode::UnsupportedMediaType,
        429 => ErrorCode::RateLimited,
        408 | 503 | 504 => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    }
}

impl From<harvest_contest::ContestError> for ApiError {
    fn from(err: harvest_contest::ContestError) -> Self {
        use harvest_contest::ContestError;
        let code = match &err {
            ContestError::BadRequest { .. } => ErrorCode::BadRequest,
            ContestError::InvalidRules(_) => ErrorCode::InvalidRules,
            ContestError::TooEarly { .. } => ErrorCode::TooEarly,
        };
        let details = match err.details() {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        Self {
            details,
            ..Self::new(code, err.to_string())
        }
    }
}
