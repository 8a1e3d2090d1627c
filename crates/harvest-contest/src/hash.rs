//! The audit hashes: SHA-256 (lowercase hex) over RFC 8785 (JCS) canonical JSON.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::event::Event;
use crate::rules::Rules;

/// The RFC 8785 canonical JSON of a value.
///
/// # Panics
///
/// On a non-finite float, which JSON cannot hold (no parsed document has one; rules
/// built in code with one fail [`Rules::validate`]).
pub fn canonical_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json_canonicalizer::to_vec(value).expect("contest values always serialize")
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `rules_hash`: SHA-256 over the canonical JSON of the rules, every key present (so
/// an omitted key and its default hash alike). Panics like [`canonical_json`].
pub fn rules_hash(rules: &Rules) -> String {
    sha256_hex(&canonical_json(rules))
}

/// `events_hash`: SHA-256 over the canonical JSON of a list of events, as given (the
/// engine passes the counted events in canonical order).
pub fn events_hash(events: &[Event]) -> String {
    sha256_hex(&canonical_json(&events))
}
