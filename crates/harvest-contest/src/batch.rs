//! The batch scorer: the definition of the results, written to be read.
//!
//! It selects the contest's record from the log, sorts it into the canonical order, and
//! replays it one event at a time, comparing every affected participant's six metric
//! values before and after each event to find the time of the last change. The
//! [`Engine`](crate::Engine) computes the same results incrementally; the tests hold
//! them equal.

use std::collections::BTreeMap;

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use harvest_proto::{Audit, AuditRow, CountedOrder, ExcludedOrder, ExclusionReason, MAX_SAFE_INT};

use crate::engine::{check_participants, clamp, mean_eq};
use crate::error::ContestError;
use crate::event::{Event, JudgeScores, OrderPaid, OrderRefunded, Participant, sort_canonical};
use crate::hash::{events_hash, rules_hash};
use crate::rules::{Rules, apply_multiplier};
use crate::standings::{self, Standings, Tally};

/// The results of a contest: its standings and its audit.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub standings: Standings,
    pub audit: Audit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Base {
    OutsideWindow,
    SelfPurchase,
    Ineligible,
    Candidate,
}

struct Order<'a> {
    event: &'a OrderPaid,
    participant: usize,
    base: Base,
    value: i128,
    refunded: bool,
    counted: Option<i128>,
}

/// The six values of a participant, compared as values (judges as a mean).
#[derive(Debug, Clone, Copy, Default)]
struct Values {
    gmv: i128,
    orders: i64,
    buyers: i64,
    likes: i128,
    wins: i64,
    judges_sum: u64,
    judges_count: u64,
}

impl PartialEq for Values {
    fn eq(&self, o: &Self) -> bool {
        (self.gmv, self.orders, self.buyers, self.likes, self.wins)
            == (o.gmv, o.orders, o.buyers, o.likes, o.wins)
            && mean_eq(
                self.judges_sum,
                self.judges_count,
                o.judges_sum,
                o.judges_count,
            )
    }
}

/// Scores a contest from its event log (in any order: results depend on the events'
/// times and contents, see [`Event::canonical_cmp`]), settled at `settled_at_ms` or
/// provisional when `None`.
///
/// Errors: the rules' and participants' checks of [`Engine::new`](crate::Engine::new),
/// and [`ContestError::TooEarly`] for a settlement before `ends_at + settle_grace_s`.
pub fn score(
    rules: &Rules,
    participants: &[Participant],
    events: &[Event],
    settled_at_ms: Option<i64>,
) -> Result<Scored, ContestError> {
    let c = rules.compile()?;
    check_participants(participants)?;
    if let Some(at) = settled_at_ms
        && at < c.settles_at
    {
        return Err(ContestError::TooEarly {
            settles_at_ms: c.settles_at,
        });
    }
    let before_settlement = |t: i64| settled_at_ms.is_none_or(|s| t < s);
    let mut room_of: HashMap<&str, usize> = HashMap::new();
    let mut index_of: HashMap<&str, usize> = HashMap::new();
    for (i, p) in participants.iter().enumerate() {
        index_of.insert(&p.id, i);
        for room in &p.room_ids {
            room_of.insert(room, i);
        }
    }

    // The record: what of the log belongs to this contest.
    let mut record: Vec<Event> = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    let mut refunds: HashMap<&str, i64> = HashMap::new();
    for event in events {
        if !before_settlement(event.time_ms()) {
            continue;
        }
        let keep = match event {
            Event::OrderPaid(o) => {
                room_of.contains_key(o.room_id.as_str())
                    && (0..=MAX_SAFE_INT).contains(&o.amount)
                    && seen.insert(&o.order_id)
            }
            Event::OrderRefunded(r) => {
                let at = refunds.entry(&r.order_id).or_insert(r.at_ms);
                *at = (*at).min(r.at_ms);
                false
            }
            Event::Likes(l) => {
                room_of.contains_key(l.room_id.as_str()) && c.in_window(event.time_ms())
            }
            Event::JudgeScores(j) => j
                .scores
                .iter()
                .all(|(p, &s)| s <= 100 && index_of.contains_key(p.as_str())),
            Event::MatchResult(m) => m
                .winner_ids
                .iter()
                .all(|w| index_of.contains_key(w.as_str())),
        };
        if keep {
            record.push(event.clone());
        }
    }
    let refund_events: Vec<Event> = record
        .iter()
        .filter_map(|e| match e {
            Event::OrderPaid(o) => refunds.get(o.order_id.as_str()).map(|&at_ms| {
                Event::OrderRefunded(OrderRefunded {
                    order_id: o.order_id.clone(),
                    at_ms,
                })
            }),
            _ => None,
        })
        .collect();
    record.extend(refund_events);
    sort_canonical(&mut record);

    // Replay in canonical order.
    let n = participants.len();
    let mut values = vec![Values::default(); n];
    let mut last_change: Vec<Option<i64>> = vec![None; n];
    let mut orders: Vec<Order> = Vec::new();
    let mut order_of: HashMap<&str, usize> = HashMap::new();
    let mut refunded_so_far: HashSet<&str> = HashSet::new();
    let mut active: HashMap<(usize, &str), Vec<usize>> = HashMap::new();
    let mut judges: BTreeMap<&str, &JudgeScores> = BTreeMap::new();
    let mut matches: BTreeMap<&str, Vec<usize>> = BTreeMap::new();

    // Whose room each recorded order was paid in (a refund may sort before its payment).
    let payer: HashMap<&str, usize> = record
        .iter()
        .filter_map(|e| match e {
            Event::OrderPaid(o) => Some((o.order_id.as_str(), room_of[o.room_id.as_str()])),
            _ => None,
        })
        .collect();
    for event in &record {
        let t = event.time_ms();
        let affected: Vec<usize> = match event {
            Event::OrderPaid(o) => vec![room_of[o.room_id.as_str()]],
            Event::OrderRefunded(r) => vec![payer[r.order_id.as_str()]],
            Event::Likes(l) => vec![room_of[l.room_id.as_str()]],
            Event::JudgeScores(_) | Event::MatchResult(_) => (0..n).collect(),
        };
        let before: Vec<Values> = affected.iter().map(|&p| values[p]).collect();
        match event {
            Event::OrderPaid(o) => {
                let p = room_of[o.room_id.as_str()];
                let member = o.buyer_id == participants[p].owner_id
                    || participants[p].member_ids.contains(&o.buyer_id);
                let base = if !c.in_window(o.paid_at_ms) {
                    Base::OutsideWindow
                } else if c.exclude_self_purchase && member {
                    Base::SelfPurchase
                } else if !c.eligible(&o.product_id) {
                    Base::Ineligible
                } else {
                    Base::Candidate
                };
                let i = orders.len();
                order_of.insert(&o.order_id, i);
                orders.push(Order {
                    event: o,
                    participant: p,
                    base,
                    value: apply_multiplier(o.amount, c.multiplier_e4(&o.product_id)),
                    refunded: refunded_so_far.contains(o.order_id.as_str()),
                    counted: None,
                });
                if base == Base::Candidate && !refunded_so_far.contains(o.order_id.as_str()) {
                    let list = active.entry((p, &o.buyer_id)).or_default();
                    share_cap(c.cap, list, &mut orders, &mut values[p], false);
                    list.push(i);
                    share_cap(c.cap, list, &mut orders, &mut values[p], true);
                }
            }
            Event::OrderRefunded(r) => {
                refunded_so_far.insert(&r.order_id);
                let Some(&i) = order_of.get(r.order_id.as_str()) else {
                    continue; // refunded before it was paid: it will never count
                };
                orders[i].refunded = true;
                let paid: &OrderPaid = orders[i].event;
                let (p, buyer) = (orders[i].participant, paid.buyer_id.as_str());
                if let Some(list) = active.get_mut(&(p, buyer))
                    && list.contains(&i)
                {
                    share_cap(c.cap, list, &mut orders, &mut values[p], false);
                    list.retain(|&j| j != i);
                    orders[i].counted = None;
                    share_cap(c.cap, list, &mut orders, &mut values[p], true);
                }
            }
            Event::Likes(l) => values[room_of[l.room_id.as_str()]].likes += i128::from(l.count),
            Event::JudgeScores(j) => {
                judges.insert(&j.judge, j);
                for v in values.iter_mut() {
                    (v.judges_sum, v.judges_count) = (0, 0);
                }
                for entry in judges.values() {
                    for (p, &s) in &entry.scores {
                        let v = &mut values[index_of[p.as_str()]];
                        v.judges_sum += u64::from(s);
                        v.judges_count += 1;
                    }
                }
            }
            Event::MatchResult(m) => {
                let mut winners: Vec<usize> =
                    m.winner_ids.iter().map(|w| index_of[w.as_str()]).collect();
                winners.sort_unstable();
                winners.dedup();
                matches.insert(&m.match_id, winners);
                for (p, v) in values.iter_mut().enumerate() {
                    v.wins = matches.values().filter(|w| w.contains(&p)).count() as i64;
                }
            }
        }
        for (&p, old) in affected.iter().zip(&before) {
            if values[p] != *old {
                last_change[p] = Some(t);
            }
        }
    }

    let tallies: Vec<Tally> = values
        .iter()
        .zip(&last_change)
        .map(|(v, &last_change_ms)| Tally {
            paid_gmv: v.gmv,
            paid_orders: v.orders,
            distinct_buyers: v.buyers,
            likes: v.likes,
            match_wins: v.wins,
            judges_sum: v.judges_sum,
            judges_count: v.judges_count,
            last_change_ms,
        })
        .collect();
    let hash = rules_hash(rules);
    let standings = standings::build(&c, participants, &tallies, settled_at_ms.is_none(), &hash);

    // The audit, in payment order (the canonical order of payments).
    let mut rows: Vec<AuditRow> = participants
        .iter()
        .map(|p| AuditRow {
            participant_id: p.id.clone(),
            ..AuditRow::default()
        })
        .collect();
    for event in &record {
        let Event::OrderPaid(o) = event else { continue };
        let order = &orders[order_of[o.order_id.as_str()]];
        let row = &mut rows[order.participant];
        let reason = match order.base {
            Base::OutsideWindow => ExclusionReason::OutsideWindow,
            _ if order.refunded => ExclusionReason::Refunded,
            Base::SelfPurchase => ExclusionReason::SelfPurchase,
            Base::Ineligible => ExclusionReason::IneligibleProduct,
            Base::Candidate => match order.counted {
                Some(counted) => {
                    row.counted.push(CountedOrder {
                        order_id: o.order_id.clone(),
                        amount: o.amount,
                        counted_amount: clamp(counted),
                    });
                    continue;
                }
                None => ExclusionReason::BuyerCap,
            },
        };
        row.excluded.push(ExcludedOrder {
            order_id: o.order_id.clone(),
            reason,
        });
    }
    let audit = Audit {
        rules_hash: hash,
        events_hash: events_hash(&record),
        rows,
    };
    Ok(Scored { standings, audit })
}

/// Adds (`add`) or removes one buyer's counted orders to the participant's values,
/// sharing the cap among them in payment order when adding.
fn share_cap(cap: Option<i128>, list: &[usize], orders: &mut [Order], v: &mut Values, add: bool) {
    let (mut gmv, mut count) = (0i128, 0i64);
    for &i in list {
        let order = &mut orders[i];
        if add {
            order.counted = match cap {
                None => Some(order.value),
                Some(cap) if cap > gmv => Some(order.value.min(cap - gmv)),
                Some(_) => None,
            };
        }
        if let Some(amount) = order.counted {
            gmv += amount;
            count += 1;
        }
    }
    let sign = if add { 1 } else { -1 };
    v.gmv += i128::from(sign) * gmv;
    v.orders += sign * count;
    v.buyers += sign * i64::from(count > 0);
}
