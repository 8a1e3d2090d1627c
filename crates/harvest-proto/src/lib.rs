//! Wire types of the Harvest API and the error codes clients rely on.
//!
//! This crate owns everything a client sees on the wire: the JSON shapes of products
//! and rooms, list pages, and the [`ErrorCode`] catalogue with the HTTP status each code
//! answers with. It does no I/O and knows no business rules; the store returns these
//! types and the server serialises them as they are.

mod error;
mod types;

pub use error::{ErrorBody, ErrorCode, ErrorObject};
pub use types::*;

/// The largest integer a JSON client can represent exactly (2^53 − 1); every integer the
/// API accepts must lie in `0..=MAX_SAFE_INT` unless a field says otherwise.
pub const MAX_SAFE_INT: i64 = (1 << 53) - 1;
