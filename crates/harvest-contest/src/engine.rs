//! The incremental engine: applies events one at a time, in any order, and answers the
//! standings, the audit and PK match scores at any moment.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

use foldhash::{HashMap, HashMapExt};
use harvest_proto::{Audit, AuditRow, CountedOrder, ExcludedOrder, ExclusionReason, MAX_SAFE_INT};

use crate::error::ContestError;
use crate::event::{
    Event, JudgeScores, LikesTally, MatchResult, OrderPaid, OrderRefunded, Participant,
    sort_canonical,
};
use crate::hash::{events_hash, rules_hash};
use crate::rules::{Compiled, Rules, apply_multiplier};
use crate::standings::{self, Standings, Tally};

/// What [`Engine::apply`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The event entered the contest's record; `changed` tells whether any
    /// participant's metric values changed.
    Recorded { changed: bool },
    /// A refund of an order the engine has not seen yet: kept, and applied if the
    /// order's payment arrives.
    Pending,
    /// The event is not part of this contest's record.
    Ignored(Ignored),
}

/// Why an event was ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// A payment or likes tally in a room of no participant.
    UnknownRoom,
    /// A likes tally outside the contest window.
    OutsideWindow,
    /// The event happened at or after settlement: settled results are frozen.
    AfterSettlement,
    /// A payment of an order already recorded, or a refund of an order already
    /// refunded at the same time or earlier.
    Duplicate,
    /// A malformed event: an amount outside `0..=2^53−1`, a judge score above 100, an
    /// unknown participant in a judge entry or a match result.
    Invalid,
}

/// Why an order does or does not count, before refunds and the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Base {
    OutsideWindow,
    SelfPurchase,
    Ineligible,
    /// Inside the window, not a self-purchase, eligible: in this chain.
    Candidate(u32),
}

#[derive(Debug, Clone)]
struct OrderRec {
    /// The order id: `order_text[id_at..id_at + id_len]`.
    id_at: usize,
    id_len: u32,
    room: u32,
    buyer: u32,
    product: u32,
    amount: i64,
    paid_at: i64,
    /// `floor(amount × multiplier)`.
    value: i64,
    base: Base,
    /// The earliest refund before settlement.
    refund_at: Option<i64>,
    /// The counted amount, when the order counts.
    counted: Option<i64>,
}

/// A canonical position of a chain event: (time, kind: 0 paid / 1 refund, order).
type Key = (i64, u8, u32);

/// The candidate orders of one (participant, buyer), in payment order, with the state
/// of their replay in canonical order.
#[derive(Debug, Clone)]
struct Chain {
    participant: u32,
    items: Vec<u32>,
    last_key: Option<Key>,
    gmv: i128,
    orders: i64,
    last_change: Option<i64>,
}

#[derive(Debug, Clone, Default)]
struct PartState {
    gmv: i128,
    orders: i64,
    buyers: i64,
    orders_change: Option<i64>,
    likes: i128,
    likes_change: Option<i64>,
    wins: i64,
    wins_change: Option<i64>,
    judges_sum: u64,
    judges_count: u64,
    judges_change: Option<i64>,
    /// Every order paid in the participant's rooms.
    orders_list: Vec<u32>,
    chains: Vec<u32>,
}

impl PartState {
    /// The six metric values, comparable as values (judges as a mean).
    fn values(&self) -> Snapshot {
        Snapshot {
            counts: (self.gmv, self.orders, self.buyers, self.likes, self.wins),
            judges: (self.judges_sum, self.judges_count),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Snapshot {
    counts: (i128, i64, i64, i128, i64),
    judges: (u64, u64),
}

impl PartialEq for Snapshot {
    fn eq(&self, other: &Self) -> bool {
        self.counts == other.counts
            && mean_eq(self.judges.0, self.judges.1, other.judges.0, other.judges.1)
    }
}

#[derive(Debug, Clone, Copy)]
struct ProductInfo {
    eligible: bool,
    multiplier_e4: u32,
}

/// A contest's scoring state, fed one event at a time.
///
/// Events may arrive in any order: the state after a set of events is the state the
/// canonical order ([`Event::canonical_cmp`]) defines, so it equals [`crate::score`] on
/// the same log. Payments in order are O(1); a refund recomputes the cap of its buyer's
/// orders; an event that arrives before events already applied to the same
/// (participant, buyer) replays that buyer's orders.
#[derive(Debug, Clone)]
pub struct Engine {
    rules: Rules,
    compiled: Compiled,
    participants: Vec<Participant>,
    rules_hash: String,
    settled_at: Option<i64>,
    /// The latest time of any event in the record or pending.
    max_time: Option<i64>,

    participant_index: HashMap<String, u32>,
    rooms: HashMap<Box<str>, u32>,
    room_ids: Vec<Box<str>>,
    room_participant: Vec<u32>,
    buyers: HashMap<Box<str>, u32>,
    buyer_ids: Vec<Box<str>>,
    products: HashMap<Box<str>, u32>,
    product_ids: Vec<Box<str>>,
    product_info: Vec<ProductInfo>,
    /// Per participant, the buyer indices of its owner and members, sorted.
    members: Vec<Vec<u32>>,

    orders: Vec<OrderRec>,
    /// Every order id, end to end (no allocation per order).
    order_text: String,
    /// Order id hash → order. Two ids with one hash: the later goes to
    /// `order_collisions`.
    order_index: std::collections::HashMap<u64, u32, BuildHasherDefault<PreHashed>>,
    order_collisions: HashMap<Box<str>, u32>,
    id_hasher: foldhash::fast::RandomState,
    pending_refunds: HashMap<Box<str>, i64>,
    chains: Vec<Chain>,
    chain_index: HashMap<(u32, u32), u32>,
    parts: Vec<PartState>,
    likes: Vec<(u32, i64, u64)>,
    judge_entries: Vec<JudgeScores>,
    match_results: Vec<MatchResult>,
}

impl Engine {
    /// A contest with no events yet. The rules must pass [`Rules::validate`] (products
    /// are not checked here); participants need distinct ids and names, at least one
    /// room each, no room shared, and there must be at least two of them.
    pub fn new(rules: Rules, participants: Vec<Participant>) -> Result<Self, ContestError> {
        let compiled = rules.compile()?;
        check_participants(&participants)?;
        let mut engine = Self {
            rules_hash: rules_hash(&rules),
            rules,
            compiled,
            settled_at: None,
            max_time: None,
            participant_index: HashMap::new(),
            rooms: HashMap::new(),
            room_ids: Vec::new(),
            room_participant: Vec::new(),
            buyers: HashMap::new(),
            buyer_ids: Vec::new(),
            products: HashMap::new(),
            product_ids: Vec::new(),
            product_info: Vec::new(),
            members: Vec::new(),
            orders: Vec::new(),
            order_text: String::new(),
            order_index: Default::default(),
            order_collisions: HashMap::new(),
            id_hasher: Default::default(),
            pending_refunds: HashMap::new(),
            chains: Vec::new(),
            chain_index: HashMap::new(),
            parts: vec![PartState::default(); participants.len()],
            likes: Vec::new(),
            judge_entries: Vec::new(),
            match_results: Vec::new(),
            participants: Vec::new(),
        };
        for (i, p) in participants.iter().enumerate() {
            let i = i as u32;
            engine.participant_index.insert(p.id.clone(), i);
            for room in &p.room_ids {
                engine
                    .rooms
                    .insert(room.as_str().into(), engine.room_ids.len() as u32);
                engine.room_ids.push(room.as_str().into());
                engine.room_participant.push(i);
            }
            let mut members: Vec<u32> = std::iter::once(&p.owner_id)
                .chain(&p.member_ids)
                .map(|b| engine.buyer(b))
                .collect();
            members.sort_unstable();
            members.dedup();
            engine.members.push(members);
        }
        engine.participants = participants;
        Ok(engine)
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    pub fn participants(&self) -> &[Participant] {
        &self.participants
    }

    /// SHA-256 (hex) of the canonical JSON of the rules.
    pub fn rules_hash(&self) -> &str {
        &self.rules_hash
    }

    /// The settlement time, once settled.
    pub fn settled_at_ms(&self) -> Option<i64> {
        self.settled_at
    }

    /// Applies one event. See [`Applied`].
    pub fn apply(&mut self, event: &Event) -> Applied {
        let t = event.time_ms();
        if self.settled_at.is_some_and(|s| t >= s) {
            return Applied::Ignored(Ignored::AfterSettlement);
        }
        let applied = match event {
            Event::OrderPaid(e) => self.apply_paid(e),
            Event::OrderRefunded(e) => self.apply_refund(e),
            Event::Likes(e) => self.apply_likes(e),
            Event::JudgeScores(e) => self.apply_judges(e),
            Event::MatchResult(e) => self.apply_match(e),
        };
        if !matches!(applied, Applied::Ignored(_)) {
            self.max_time = self.max_time.max(Some(t));
        }
        applied
    }

    /// Settles the contest at `at_ms`: refunds and every other event at or after it no
    /// longer change anything (events already applied that happened at or after it are
    /// taken out again). Refused before `ends_at + settle_grace_s`. Settling an already
    /// settled contest changes nothing (the first settlement time stays).
    ///
    /// Events are judged by their own times, like [`crate::score`] with the same
    /// settlement time: an event that happened before `at_ms` but is applied later (a
    /// replay, a late arrival) still counts. Whoever publishes frozen results keeps the
    /// standings and audit taken at settlement.
    pub fn settle(&mut self, at_ms: i64) -> Result<(), ContestError> {
        if self.settled_at.is_some() {
            return Ok(());
        }
        if at_ms < self.compiled.settles_at {
            return Err(ContestError::TooEarly {
                settles_at_ms: self.compiled.settles_at,
            });
        }
        if self.max_time.is_some_and(|t| t >= at_ms) {
            // Events at or after the settlement time were applied: start again without.
            let mut events = self.counted_events();
            events.extend(self.pending_refunds.iter().map(|(id, &at_ms)| {
                Event::OrderRefunded(OrderRefunded {
                    order_id: id.to_string(),
                    at_ms,
                })
            }));
            sort_canonical(&mut events);
            let mut fresh =
                Self::new(self.rules.clone(), self.participants.clone()).expect("valid already");
            fresh.settled_at = Some(at_ms);
            for event in &events {
                fresh.apply(event);
            }
            *self = fresh;
        } else {
            self.settled_at = Some(at_ms);
        }
        Ok(())
    }

    /// The standings now (provisional until settled).
    pub fn standings(&self) -> Standings {
        let tallies: Vec<Tally> = self
            .parts
            .iter()
            .map(|p| Tally {
                paid_gmv: p.gmv,
                paid_orders: p.orders,
                distinct_buyers: p.buyers,
                likes: p.likes,
                match_wins: p.wins,
                judges_sum: p.judges_sum,
                judges_count: p.judges_count,
                last_change_ms: p
                    .orders_change
                    .max(p.likes_change)
                    .max(p.wins_change)
                    .max(p.judges_change),
            })
            .collect();
        standings::build(
            &self.compiled,
            &self.participants,
            &tallies,
            self.settled_at.is_none(),
            &self.rules_hash,
        )
    }

    /// The events in the contest's record, in canonical order: every payment in a
    /// participant's room (counted or excluded), the earliest refund before settlement
    /// of each of those orders, the likes tallies of participants' rooms inside the
    /// window, and the judge entries and match results before settlement. Scoring
    /// exactly these events gives the same standings and audit.
    pub fn counted_events(&self) -> Vec<Event> {
        let mut events = Vec::with_capacity(self.orders.len() + self.likes.len());
        for o in &self.orders {
            events.push(Event::OrderPaid(OrderPaid {
                order_id: self.text(o).to_owned(),
                room_id: self.room_ids[o.room as usize].to_string(),
                buyer_id: self.buyer_ids[o.buyer as usize].to_string(),
                product_id: self.product_ids[o.product as usize].to_string(),
                amount: o.amount,
                paid_at_ms: o.paid_at,
            }));
            if let Some(at_ms) = o.refund_at {
                events.push(Event::OrderRefunded(OrderRefunded {
                    order_id: self.text(o).to_owned(),
                    at_ms,
                }));
            }
        }
        for &(room, second, count) in &self.likes {
            events.push(Event::Likes(LikesTally {
                room_id: self.room_ids[room as usize].to_string(),
                second,
                count,
            }));
        }
        events.extend(self.judge_entries.iter().cloned().map(Event::JudgeScores));
        events.extend(self.match_results.iter().cloned().map(Event::MatchResult));
        sort_canonical(&mut events);
        events
    }

    /// The audit: the hashes and every order per participant in payment order.
    pub fn audit(&self) -> Audit {
        let rows = self
            .parts
            .iter()
            .zip(&self.participants)
            .map(|(part, p)| {
                let mut list: Vec<&OrderRec> = part
                    .orders_list
                    .iter()
                    .map(|&o| &self.orders[o as usize])
                    .collect();
                list.sort_by(|a, b| (a.paid_at, self.text(a)).cmp(&(b.paid_at, self.text(b))));
                let mut row = AuditRow {
                    participant_id: p.id.clone(),
                    ..AuditRow::default()
                };
                for o in list {
                    let reason = match (o.base, o.refund_at, o.counted) {
                        (Base::OutsideWindow, _, _) => ExclusionReason::OutsideWindow,
                        (_, Some(_), _) => ExclusionReason::Refunded,
                        (Base::SelfPurchase, ..) => ExclusionReason::SelfPurchase,
                        (Base::Ineligible, ..) => ExclusionReason::IneligibleProduct,
                        (Base::Candidate(_), None, None) => ExclusionReason::BuyerCap,
                        (Base::Candidate(_), None, Some(counted)) => {
                            row.counted.push(CountedOrder {
                                order_id: self.text(o).to_owned(),
                                amount: o.amount,
                                counted_amount: counted,
                            });
                            continue;
                        }
                    };
                    row.excluded.push(ExcludedOrder {
                        order_id: self.text(o).to_owned(),
                        reason,
                    });
                }
                row
            })
            .collect();
        Audit {
            rules_hash: self.rules_hash.clone(),
            events_hash: events_hash(&self.counted_events()),
            rows,
        }
    }

    // ---- payments and refunds ----

    fn apply_paid(&mut self, e: &OrderPaid) -> Applied {
        let Some(&room) = self.rooms.get(e.room_id.as_str()) else {
            return Applied::Ignored(Ignored::UnknownRoom);
        };
        if !(0..=MAX_SAFE_INT).contains(&e.amount) {
            return Applied::Ignored(Ignored::Invalid);
        }
        if self.find_order(&e.order_id).is_some() {
            return Applied::Ignored(Ignored::Duplicate);
        }
        let participant = self.room_participant[room as usize];
        let buyer = self.buyer(&e.buyer_id);
        let product = self.product(&e.product_id);
        let info = self.product_info[product as usize];
        let c = &self.compiled;
        let base = if !c.in_window(e.paid_at_ms) {
            Base::OutsideWindow
        } else if c.exclude_self_purchase
            && self.members[participant as usize]
                .binary_search(&buyer)
                .is_ok()
        {
            Base::SelfPurchase
        } else if !info.eligible {
            Base::Ineligible
        } else {
            Base::Candidate(self.chain(participant, buyer))
        };
        let refund_at = if self.pending_refunds.is_empty() {
            None
        } else {
            self.pending_refunds.remove(e.order_id.as_str())
        };
        let o = self.orders.len() as u32;
        let id_at = self.order_text.len();
        self.order_text.push_str(&e.order_id);
        let hash = self.id_hasher.hash_one(e.order_id.as_str());
        match self.order_index.entry(hash) {
            Entry::Vacant(slot) => {
                slot.insert(o);
            }
            Entry::Occupied(_) => {
                self.order_collisions.insert(e.order_id.as_str().into(), o);
            }
        }
        self.orders.push(OrderRec {
            id_at,
            id_len: e.order_id.len() as u32,
            room,
            buyer,
            product,
            amount: e.amount,
            paid_at: e.paid_at_ms,
            // At most (2^53 − 1) × 1000 < 2^63.
            value: apply_multiplier(e.amount, info.multiplier_e4) as i64,
            base,
            refund_at,
            counted: None,
        });
        self.parts[participant as usize].orders_list.push(o);
        let changed = match base {
            Base::Candidate(chain) => self.chain_add(chain, o),
            _ => false,
        };
        Applied::Recorded { changed }
    }

    fn apply_refund(&mut self, e: &OrderRefunded) -> Applied {
        let Some(o) = self.find_order(&e.order_id) else {
            let at = self
                .pending_refunds
                .entry(e.order_id.as_str().into())
                .or_insert(e.at_ms);
            *at = (*at).min(e.at_ms);
            return Applied::Pending;
        };
        let rec = &mut self.orders[o as usize];
        let earlier = rec.refund_at;
        if earlier.is_some_and(|r| r <= e.at_ms) {
            return Applied::Ignored(Ignored::Duplicate);
        }
        rec.refund_at = Some(e.at_ms);
        let changed = match rec.base {
            Base::Candidate(chain) => self.chain_refund(chain, o, earlier.is_some(), e.at_ms),
            _ => false,
        };
        Applied::Recorded { changed }
    }

    /// Compares canonical chain keys (order ids break ties of time and kind).
    fn key_cmp(&self, a: Key, b: Key) -> Ordering {
        (a.0, a.1)
            .cmp(&(b.0, b.1))
            .then_with(|| self.order_id(a.2).cmp(self.order_id(b.2)))
    }

    fn after_last(&self, chain: u32, key: Key) -> bool {
        self.chains[chain as usize]
            .last_key
            .is_none_or(|last| self.key_cmp(key, last) == Ordering::Greater)
    }

    fn chain_add(&mut self, chain: u32, o: u32) -> bool {
        let rec = &self.orders[o as usize];
        let key = (rec.paid_at, 0, o);
        if rec.refund_at.is_some() || !self.after_last(chain, key) {
            // Out of order (or refunded before it arrived): insert and replay.
            let pos = {
                let ch = &self.chains[chain as usize];
                let pay = (rec.paid_at, self.text(rec));
                ch.items
                    .partition_point(|&i| (self.orders[i as usize].paid_at, self.order_id(i)) < pay)
            };
            self.chains[chain as usize].items.insert(pos, o);
            return self.replay(chain);
        }
        // In order: the order is last in payment order; it takes what the cap leaves.
        let cap = self.compiled.cap;
        let ch = &mut self.chains[chain as usize];
        ch.items.push(o);
        ch.last_key = Some(key);
        let value = rec.value;
        let counted = take(cap, ch.gmv, value);
        let paid_at = rec.paid_at;
        self.orders[o as usize].counted = counted;
        let Some(amount) = counted else {
            return false;
        };
        ch.gmv += i128::from(amount);
        ch.orders += 1;
        ch.last_change = Some(paid_at);
        let participant = ch.participant as usize;
        let first = ch.orders == 1;
        let part = &mut self.parts[participant];
        part.gmv += i128::from(amount);
        part.orders += 1;
        part.buyers += i64::from(first);
        part.orders_change = part.orders_change.max(Some(paid_at));
        true
    }

    fn chain_refund(&mut self, chain: u32, o: u32, had_refund: bool, at: i64) -> bool {
        let key = (at, 1, o);
        if had_refund || !self.after_last(chain, key) {
            return self.replay(chain);
        }
        // In order: every order of the chain is paid; the refunded ones drop out and
        // the cap is shared again in payment order.
        self.chains[chain as usize].last_key = Some(key);
        let before = self.chain_totals(chain);
        let after = self.allocate(chain);
        if before == after {
            return false;
        }
        self.chains[chain as usize].last_change = Some(at);
        self.set_chain_totals(chain, after);
        true
    }

    fn chain_totals(&self, chain: u32) -> (i128, i64) {
        let ch = &self.chains[chain as usize];
        (ch.gmv, ch.orders)
    }

    /// Shares the cap among the chain's unrefunded orders in payment order; writes each
    /// order's counted amount and returns the chain's (gmv, orders).
    fn allocate(&mut self, chain: u32) -> (i128, i64) {
        let cap = self.compiled.cap;
        let (mut gmv, mut orders) = (0i128, 0i64);
        for &o in &self.chains[chain as usize].items {
            let rec = &mut self.orders[o as usize];
            rec.counted = if rec.refund_at.is_some() {
                None
            } else {
                take(cap, gmv, rec.value)
            };
            if let Some(amount) = rec.counted {
                gmv += i128::from(amount);
                orders += 1;
            }
        }
        (gmv, orders)
    }

    /// Writes a chain's new totals and carries the difference to its participant.
    fn set_chain_totals(&mut self, chain: u32, (gmv, orders): (i128, i64)) {
        let ch = &mut self.chains[chain as usize];
        let (old_gmv, old_orders) = (ch.gmv, ch.orders);
        ch.gmv = gmv;
        ch.orders = orders;
        let last_change = ch.last_change;
        let part = &mut self.parts[ch.participant as usize];
        part.gmv += gmv - old_gmv;
        part.orders += orders - old_orders;
        part.buyers += i64::from(orders > 0) - i64::from(old_orders > 0);
        part.orders_change = part.orders_change.max(last_change);
    }

    /// Replays a chain's payments and refunds in canonical order from nothing: the
    /// counted amounts, the totals, and the time of the last change.
    fn replay(&mut self, chain: u32) -> bool {
        let cap = self.compiled.cap;
        let items = std::mem::take(&mut self.chains[chain as usize].items);
        let mut events: Vec<Key> = Vec::with_capacity(items.len() * 2);
        for (pos, &o) in items.iter().enumerate() {
            let rec = &self.orders[o as usize];
            events.push((rec.paid_at, 0, pos as u32));
            if let Some(at) = rec.refund_at {
                events.push((at, 1, pos as u32));
            }
        }
        events.sort_by(|a, b| {
            (a.0, a.1).cmp(&(b.0, b.1)).then_with(|| {
                self.order_id(items[a.2 as usize])
                    .cmp(self.order_id(items[b.2 as usize]))
            })
        });
        let n = items.len();
        let mut active = vec![false; n];
        let mut refunded = vec![false; n];
        let mut counted: Vec<Option<i64>> = vec![None; n];
        let (mut gmv, mut orders) = (0i128, 0i64);
        let mut last_change = None;
        for &(t, kind, pos) in &events {
            let pos = pos as usize;
            if kind == 0 {
                if refunded[pos] {
                    continue;
                }
                active[pos] = true;
                let value = self.orders[items[pos] as usize].value;
                counted[pos] = take(cap, gmv, value);
                if let Some(amount) = counted[pos] {
                    gmv += i128::from(amount);
                    orders += 1;
                    last_change = Some(t);
                }
            } else {
                refunded[pos] = true;
                if !active[pos] {
                    continue;
                }
                active[pos] = false;
                let before = (gmv, orders);
                (gmv, orders) = (0, 0);
                for i in 0..n {
                    counted[i] = None;
                    if !active[i] {
                        continue;
                    }
                    let value = self.orders[items[i] as usize].value;
                    counted[i] = take(cap, gmv, value);
                    if let Some(amount) = counted[i] {
                        gmv += i128::from(amount);
                        orders += 1;
                    }
                }
                if (gmv, orders) != before {
                    last_change = Some(t);
                }
            }
        }
        for (pos, &o) in items.iter().enumerate() {
            self.orders[o as usize].counted = counted[pos];
        }
        let last_key = events
            .last()
            .map(|&(t, kind, pos)| (t, kind, items[pos as usize]));
        let ch = &mut self.chains[chain as usize];
        ch.items = items;
        ch.last_key = last_key;
        let before_change = ch.last_change;
        ch.last_change = last_change;
        let participant = ch.participant as usize;
        let before = self.parts[participant].values();
        self.set_chain_totals(chain, (gmv, orders));
        if last_change < before_change && self.parts[participant].orders_change == before_change {
            // This chain may have held the participant's latest change: take the
            // latest over its chains again.
            let part = &self.parts[participant];
            let latest = part
                .chains
                .iter()
                .map(|&c| self.chains[c as usize].last_change)
                .max()
                .flatten();
            self.parts[participant].orders_change = latest;
        }
        self.parts[participant].values() != before
    }

    // ---- likes, judges, matches ----

    fn apply_likes(&mut self, e: &LikesTally) -> Applied {
        let Some(&room) = self.rooms.get(e.room_id.as_str()) else {
            return Applied::Ignored(Ignored::UnknownRoom);
        };
        let t = e.second.saturating_mul(1000);
        if !self.compiled.in_window(t) {
            return Applied::Ignored(Ignored::OutsideWindow);
        }
        self.likes.push((room, e.second, e.count));
        if e.count == 0 {
            return Applied::Recorded { changed: false };
        }
        let part = &mut self.parts[self.room_participant[room as usize] as usize];
        part.likes += i128::from(e.count);
        part.likes_change = part.likes_change.max(Some(t));
        Applied::Recorded { changed: true }
    }

    fn apply_judges(&mut self, e: &JudgeScores) -> Applied {
        let valid = e
            .scores
            .iter()
            .all(|(p, &s)| s <= 100 && self.participant_index.contains_key(p));
        if !valid {
            return Applied::Ignored(Ignored::Invalid);
        }
        let before: Vec<_> = self.parts.iter().map(PartState::values).collect();
        self.judge_entries.push(e.clone());
        let mut entries: Vec<&JudgeScores> = self.judge_entries.iter().collect();
        entries.sort_by(|a, b| a.at_ms.cmp(&b.at_ms).then_with(|| a.cmp(b)));
        let n = self.parts.len();
        let (mut sum, mut count) = (vec![0u64; n], vec![0u64; n]);
        let mut change: Vec<Option<i64>> = vec![None; n];
        let mut current: BTreeMap<&str, &JudgeScores> = BTreeMap::new();
        for entry in entries {
            let previous = current.insert(&entry.judge, entry);
            let mut touched: Vec<usize> = previous
                .iter()
                .flat_map(|prev| prev.scores.keys())
                .chain(entry.scores.keys())
                .map(|p| self.participant_index[p] as usize)
                .collect();
            touched.sort_unstable();
            touched.dedup();
            let before_entry: Vec<(u64, u64)> =
                touched.iter().map(|&i| (sum[i], count[i])).collect();
            if let Some(prev) = previous {
                for (p, &s) in &prev.scores {
                    let i = self.participant_index[p] as usize;
                    sum[i] -= u64::from(s);
                    count[i] -= 1;
                }
            }
            for (p, &s) in &entry.scores {
                let i = self.participant_index[p] as usize;
                sum[i] += u64::from(s);
                count[i] += 1;
            }
            for (&i, &(s0, c0)) in touched.iter().zip(&before_entry) {
                if !mean_eq(s0, c0, sum[i], count[i]) {
                    change[i] = Some(entry.at_ms);
                }
            }
        }
        for (i, part) in self.parts.iter_mut().enumerate() {
            part.judges_sum = sum[i];
            part.judges_count = count[i];
            part.judges_change = change[i];
        }
        let changed = self.parts.iter().map(PartState::values).ne(before);
        Applied::Recorded { changed }
    }

    fn apply_match(&mut self, e: &MatchResult) -> Applied {
        if !e
            .winner_ids
            .iter()
            .all(|w| self.participant_index.contains_key(w))
        {
            return Applied::Ignored(Ignored::Invalid);
        }
        let before: Vec<_> = self.parts.iter().map(PartState::values).collect();
        self.match_results.push(e.clone());
        let mut results: Vec<&MatchResult> = self.match_results.iter().collect();
        results.sort_by(|a, b| a.at_ms.cmp(&b.at_ms).then_with(|| a.cmp(b)));
        let n = self.parts.len();
        let mut wins = vec![0i64; n];
        let mut change: Vec<Option<i64>> = vec![None; n];
        let mut current: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for result in results {
            let mut winners: Vec<usize> = result
                .winner_ids
                .iter()
                .map(|w| self.participant_index[w] as usize)
                .collect();
            winners.sort_unstable();
            winners.dedup();
            let before_wins = wins.clone();
            if let Some(prev) = current.insert(&result.match_id, winners.clone()) {
                for i in prev {
                    wins[i] -= 1;
                }
            }
            for &i in &winners {
                wins[i] += 1;
            }
            for i in 0..n {
                if wins[i] != before_wins[i] {
                    change[i] = Some(result.at_ms);
                }
            }
        }
        for (i, part) in self.parts.iter_mut().enumerate() {
            part.wins = wins[i];
            part.wins_change = change[i];
        }
        let changed = self.parts.iter().map(PartState::values).ne(before);
        Applied::Recorded { changed }
    }

    // ---- interning ----

    fn text(&self, rec: &OrderRec) -> &str {
        &self.order_text[rec.id_at..rec.id_at + rec.id_len as usize]
    }

    fn order_id(&self, o: u32) -> &str {
        self.text(&self.orders[o as usize])
    }

    fn find_order(&self, id: &str) -> Option<u32> {
        let hash = self.id_hasher.hash_one(id);
        match self.order_index.get(&hash) {
            None => None,
            Some(&o) if self.order_id(o) == id => Some(o),
            Some(_) => self.order_collisions.get(id).copied(),
        }
    }

    fn buyer(&mut self, id: &str) -> u32 {
        if let Some(&b) = self.buyers.get(id) {
            return b;
        }
        let b = self.buyer_ids.len() as u32;
        self.buyers.insert(id.into(), b);
        self.buyer_ids.push(id.into());
        b
    }

    fn product(&mut self, id: &str) -> u32 {
        if let Some(&p) = self.products.get(id) {
            return p;
        }
        let p = self.product_ids.len() as u32;
        self.products.insert(id.into(), p);
        self.product_ids.push(id.into());
        self.product_info.push(ProductInfo {
            eligible: self.compiled.eligible(id),
            multiplier_e4: self.compiled.multiplier_e4(id),
        });
        p
    }

    fn chain(&mut self, participant: u32, buyer: u32) -> u32 {
        if let Some(&c) = self.chain_index.get(&(participant, buyer)) {
            return c;
        }
        let c = self.chains.len() as u32;
        self.chain_index.insert((participant, buyer), c);
        self.chains.push(Chain {
            participant,
            items: Vec::new(),
            last_key: None,
            gmv: 0,
            orders: 0,
            last_change: None,
        });
        self.parts[participant as usize].chains.push(c);
        c
    }

    // ---- for PK matches ----

    pub(crate) fn participant_position(&self, id: &str) -> Option<usize> {
        self.participant_index.get(id).map(|&i| i as usize)
    }

    /// The counted orders of a participant: (paid_at, buyer, counted amount).
    pub(crate) fn counted_orders(
        &self,
        participant: usize,
    ) -> impl Iterator<Item = (i64, u32, i128)> + '_ {
        self.parts[participant].orders_list.iter().filter_map(|&o| {
            let rec = &self.orders[o as usize];
            rec.counted
                .map(|amount| (rec.paid_at, rec.buyer, i128::from(amount)))
        })
    }

    /// The likes tallies of a participant's rooms: (second, count).
    pub(crate) fn likes_of(&self, participant: usize) -> impl Iterator<Item = (i64, u64)> + '_ {
        self.likes.iter().filter_map(move |&(room, second, count)| {
            (self.room_participant[room as usize] as usize == participant)
                .then_some((second, count))
        })
    }
}

/// What an order of `value` counts when the buyer's earlier orders already count
/// `used`: all of it without a cap, what the cap leaves, or nothing (cap reached).
fn take(cap: Option<i128>, used: i128, value: i64) -> Option<i64> {
    match cap {
        None => Some(value),
        Some(cap) if cap > used => Some(i128::from(value).min(cap - used) as i64),
        Some(_) => None,
    }
}

/// A hasher for keys that are already hashes.
#[derive(Debug, Default)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed with it; fold anything else in anyway.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Whether two judge means `s0/c0` and `s1/c1` (0 when no judge) are equal.
pub(crate) fn mean_eq(s0: u64, c0: u64, s1: u64, c1: u64) -> bool {
    let (s0, c0) = if c0 == 0 { (0, 1) } else { (s0, c0) };
    let (s1, c1) = if c1 == 0 { (0, 1) } else { (s1, c1) };
    u128::from(s0) * u128::from(c1) == u128::from(s1) * u128::from(c0)
}

pub(crate) fn clamp(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The participant checks shared by the engine and the batch scorer.
pub(crate) fn check_participants(participants: &[Participant]) -> Result<(), ContestError> {
    if participants.len() < 2 {
        return Err(ContestError::bad(
            "participants",
            "a contest needs at least 2 participants",
        ));
    }
    let mut rooms: HashMap<&str, usize> = HashMap::new();
    for (i, p) in participants.iter().enumerate() {
        if participants[..i].iter().any(|q| q.id == p.id) {
            return Err(ContestError::bad(
                format!("participants[{i}].id"),
                format!("duplicate participant id {:?}", p.id),
            ));
        }
        if participants[..i].iter().any(|q| q.name == p.name) {
            return Err(ContestError::bad(
                format!("participants[{i}].name"),
                format!("duplicate participant name {:?}", p.name),
            ));
        }
        if p.room_ids.is_empty() {
            return Err(ContestError::bad(
                format!("participants[{i}].room_ids"),
                "a participant needs at least one room",
            ));
        }
        for (j, room) in p.room_ids.iter().enumerate() {
            if let Some(&other) = rooms.get(room.as_str()) {
                return Err(ContestError::bad(
                    format!("participants[{i}].room_ids[{j}]"),
                    format!(
                        "room {room:?} already belongs to participant {:?}",
                        participants[other].name
                    ),
                ));
            }
            rooms.insert(room, i);
        }
    }
    Ok(())
}
