//! Contest scoring: rules, deterministic standings, PK match scores and the audit.
//!
//! This crate owns how a livestream sales contest is scored (PRODUCT.md, "Contests and
//! PK matches"). It is pure: no I/O, no clock, no randomness. Times are inputs, in
//! milliseconds since the Unix epoch; results are a function of the [`Rules`], the
//! [`Participant`]s, the event log and the settlement time, nothing else.
//!
//! # Inputs
//!
//! - [`Rules`]: the window `[starts_at, ends_at)`, `settle_grace_s` and the `scoring`
//!   object of API.md §5, parsed strictly ([`Rules::from_json`]: unknown keys refused,
//!   field paths in errors) and checked by [`Rules::validate`] /
//!   [`Rules::validate_with`], which list every problem as `{field, message}` for an
//!   `invalid_rules` answer.
//! - [`Event`]s: [`OrderPaid`], [`OrderRefunded`], [`LikesTally`] (per room and
//!   second), [`JudgeScores`] (a judge's whole entry) and [`MatchResult`].
//!
//! # Scoring
//!
//! An order paid in a participant's room counts `floor(amount × multiplier)` (the
//! multiplier is exact: integer ten-thousandths), capped per (participant, buyer) at
//! `per_buyer_gmv_cap` in payment order, unless excluded; the reason is the first of
//! outside the window, refunded before settlement, self-purchase, ineligible product,
//! buyer cap reached. Metrics are `paid_gmv`, `paid_orders`, `distinct_buyers`,
//! `likes`, `match_wins` and `judges` (mean, 0–100); `weighted` mode normalises each by
//! its maximum (judges by 100), `rank_points` gives `max(0, weight − step × (rank − 1))`
//! with competition ranks. Participants under `min_distinct_buyers` are listed after
//! the qualified ones; equal totals are ordered by distinct buyers, paid orders, then
//! the earlier last change of their metric values, and share the rank when still tied.
//!
//! # Determinism
//!
//! - **Canonical order.** Results are defined on the log sorted by
//!   [`Event::canonical_cmp`] (time, kind, then content), a total order, so any
//!   permutation of a log (in particular of events with equal timestamps) gives the
//!   same results; payment order is `(paid_at_ms, order_id)`.
//! - **Exact arithmetic.** Amounts and counts are integers (`i128` sums). Points and
//!   totals are exact rationals: weights and the rank step are the decimals written in
//!   the rules (the shortest decimal of their `f64`, as JSON prints it), judges' means
//!   are integer ratios. Ties are therefore exact (weights 0.1 + 0.2 tie with 0.3, and
//!   equal totals compare equal whatever the order of the additions), and the `f64`
//!   reported is the exact value rounded once to the nearest double: bit-identical for
//!   equal inputs.
//! - **Settlement.** Events at or after the settlement time are not part of the record:
//!   a refund after settlement changes nothing.
//!
//! # Two ways to score
//!
//! - [`score`]: the batch scorer, the readable definition: select the record, sort it,
//!   replay it.
//! - [`Engine`]: the live scorer: [`Engine::apply`] takes events one by one in any
//!   order and [`Engine::standings`], [`Engine::audit`] and [`Engine::match_scores`]
//!   answer at any time. The test suite holds it equal to [`score`].
//!
//! # Audit
//!
//! [`Engine::audit`] lists every order paid in each participant's rooms with its
//! counted amount or exclusion reason, `rules_hash` (SHA-256, hex, of the RFC 8785
//! canonical JSON of the rules, defaults filled in) and `events_hash` (the same over
//! [`Engine::counted_events`]: the contest's record in canonical order, whose replay
//! reproduces the results).
//!
//! ```
//! use harvest_contest::{Engine, Event, OrderPaid, Participant, Rules};
//!
//! let rules = Rules::from_json(br#"{
//!     "starts_at": "2025-09-19T00:00:00Z",
//!     "ends_at": "2025-09-20T00:00:00Z",
//!     "scoring": {"mode": "weighted", "metrics": [{"metric": "paid_gmv", "weight": 100}]}
//! }"#)?;
//! rules.validate()?;
//! let team = |id: &str, room: &str| Participant {
//!     id: id.into(),
//!     name: id.into(),
//!     owner_id: format!("owner-{id}"),
//!     member_ids: vec![],
//!     room_ids: vec![room.into()],
//! };
//! let mut engine = Engine::new(rules, vec![team("kiwi", "r1"), team("orange", "r2")])?;
//! let paid = |order: &str, room: &str, amount| {
//!     Event::OrderPaid(OrderPaid {
//!         order_id: order.into(),
//!         room_id: room.into(),
//!         buyer_id: "b1".into(),
//!         product_id: "p1".into(),
//!         amount,
//!         paid_at_ms: 1_758_240_000_000,
//!     })
//! };
//! engine.apply(&paid("o1", "r1", 3_000));
//! engine.apply(&paid("o2", "r2", 1_000));
//! let standings = engine.standings();
//! assert_eq!(standings.rows[0].participant_id, "kiwi");
//! assert_eq!(standings.rows[0].total, 100.0);
//! assert_eq!(standings.rows[1].total, 100.0 / 3.0);
//! # Ok::<(), harvest_contest::ContestError>(())
//! ```

mod batch;
mod engine;
mod error;
mod event;
mod hash;
mod pk;
mod rules;
mod standings;

pub use batch::{Scored, score};
pub use engine::{Applied, Engine, Ignored};
pub use error::{ContestError, RuleViolation};
pub use event::{
    Event, JudgeScores, LikesTally, MatchResult, OrderPaid, OrderRefunded, Participant,
    sort_canonical,
};
pub use hash::{canonical_events_json, canonical_json, events_hash, rules_hash};
pub use pk::{MatchOutcome, MatchScores, MatchSpec};
pub use rules::{MAX_MULTIPLIER, MetricName, MetricWeight, Mode, Rules, Scoring};
pub use standings::{Standings, StandingsRow};

/// Wire types the results are made of, re-exported from `harvest-proto`.
pub use harvest_proto::{
    Audit, AuditRow, CountedOrder, ExcludedOrder, ExclusionReason, Metric, Metrics, Score,
};
