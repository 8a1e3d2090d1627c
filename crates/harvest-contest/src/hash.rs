//! The audit hashes: SHA-256 (lowercase hex) over RFC 8785 (JCS) canonical JSON.
//!
//! The rules go through `serde_json_canonicalizer`. A list of events, which may hold
//! millions of them, is written straight into the hasher in the same canonical form
//! (keys in code-unit order, no whitespace, strings escaped as JCS does, integers as
//! JCS numbers), without building the document; judge entries, whose keys are arbitrary
//! participant ids, still go through the canonicaliser. The tests hold both paths to the
//! same bytes.

use std::io::{self, Write};

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

/// The canonical JSON of a list of events: the same bytes as [`canonical_json`], written
/// without the canonicaliser's intermediate values.
pub fn canonical_events_json(events: &[Event]) -> Vec<u8> {
    let mut out = Vec::with_capacity(events.len() * 160);
    write_events(&mut out, events).expect("writing to memory");
    out
}

/// `rules_hash`: SHA-256 over the canonical JSON of the rules, every key present (so
/// an omitted key and its default hash alike). Panics like [`canonical_json`].
pub fn rules_hash(rules: &Rules) -> String {
    hex::encode(Sha256::digest(canonical_json(rules)))
}

/// `events_hash`: SHA-256 over the canonical JSON of a list of events, as given (the
/// engine passes the counted events in canonical order).
pub fn events_hash(events: &[Event]) -> String {
    let mut hasher = HashWriter(Sha256::new());
    write_events(&mut hasher, events).expect("hashing cannot fail");
    hex::encode(hasher.0.finalize())
}

struct HashWriter(Sha256);

impl Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn write_events<W: Write>(w: &mut W, events: &[Event]) -> io::Result<()> {
    w.write_all(b"[")?;
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            w.write_all(b",")?;
        }
        write_event(w, event)?;
    }
    w.write_all(b"]")
}

/// One event as canonical JSON; each arm lists its keys in sorted order.
fn write_event<W: Write>(w: &mut W, event: &Event) -> io::Result<()> {
    match event {
        Event::OrderPaid(e) => {
            w.write_all(b"{\"amount\":")?;
            int(w, e.amount)?;
            w.write_all(b",\"buyer_id\":")?;
            string(w, &e.buyer_id)?;
            w.write_all(b",\"order_id\":")?;
            string(w, &e.order_id)?;
            w.write_all(b",\"paid_at_ms\":")?;
            int(w, e.paid_at_ms)?;
            w.write_all(b",\"product_id\":")?;
            string(w, &e.product_id)?;
            w.write_all(b",\"room_id\":")?;
            string(w, &e.room_id)?;
            w.write_all(b",\"type\":\"order_paid\"}")
        }
        Event::OrderRefunded(e) => {
            w.write_all(b"{\"at_ms\":")?;
            int(w, e.at_ms)?;
            w.write_all(b",\"order_id\":")?;
            string(w, &e.order_id)?;
            w.write_all(b",\"type\":\"order_refunded\"}")
        }
        Event::Likes(e) => {
            w.write_all(b"{\"count\":")?;
            int(w, e.count)?;
            w.write_all(b",\"room_id\":")?;
            string(w, &e.room_id)?;
            w.write_all(b",\"second\":")?;
            int(w, e.second)?;
            w.write_all(b",\"type\":\"likes\"}")
        }
        Event::MatchResult(e) => {
            w.write_all(b"{\"at_ms\":")?;
            int(w, e.at_ms)?;
            w.write_all(b",\"match_id\":")?;
            string(w, &e.match_id)?;
            w.write_all(b",\"type\":\"match_result\",\"winner_ids\":[")?;
            for (i, id) in e.winner_ids.iter().enumerate() {
                if i > 0 {
                    w.write_all(b",")?;
                }
                string(w, id)?;
            }
            w.write_all(b"]}")
        }
        Event::JudgeScores(_) => {
            serde_json_canonicalizer::to_writer(event, w).map_err(io::Error::other)
        }
    }
}

/// A string as JSON: serde_json escapes exactly what RFC 8785 escapes (`"`, `\`, and
/// control characters, as `\b \t \n \f \r` or `\u00xx` in lowercase hex).
fn string<W: Write>(w: &mut W, s: &str) -> io::Result<()> {
    serde_json::to_writer(w, s).map_err(io::Error::other)
}

/// An integer as RFC 8785 writes numbers: the shortest form of the nearest double, so
/// the integer itself up to 2^53, rounded beyond (the canonicaliser does that part).
fn int<W: Write, N: Serialize + Copy + Into<i128>>(w: &mut W, n: N) -> io::Result<()> {
    const EXACT: i128 = 1 << 53;
    if (-EXACT..=EXACT).contains(&n.into()) {
        serde_json::to_writer(w, &n).map_err(io::Error::other)
    } else {
        serde_json_canonicalizer::to_writer(&n, w).map_err(io::Error::other)
    }
}
