//! Builders shared by the tests: a contest window, three teams, events by offset.

use harvest_contest::{
    Audit, Engine, Event, JudgeScores, LikesTally, MatchResult, OrderPaid, OrderRefunded,
    Participant, Rules, Scored, Standings, score,
};

/// 2025-09-19T00:00:00Z in milliseconds: the start of every test window.
pub const T0: i64 = 1_758_240_000_000;
/// The window is one hour: `[T0, T0 + 3600 s)`.
pub const HOUR_S: i64 = 3600;

/// The time `s` seconds after the window opens, in milliseconds.
pub fn at(s: i64) -> i64 {
    T0 + s * 1000
}

/// Rules over the one-hour window with a scoring object given as JSON.
pub fn rules_with(scoring: &str, settle_grace_s: i64) -> Rules {
    let doc = format!(
        r#"{{"starts_at":"2025-09-19T00:00:00Z","ends_at":"2025-09-19T01:00:00Z",
            "settle_grace_s":{settle_grace_s},"scoring":{scoring}}}"#
    );
    let rules = Rules::from_json(doc.as_bytes()).expect("test rules parse");
    rules.validate().expect("test rules are valid");
    rules
}

pub fn rules(scoring: &str) -> Rules {
    rules_with(scoring, 0)
}

/// Three teams: A (owner `oa`, member `ma`, rooms `ra1` and `ra2`), B (owner `ob`, room
/// `rb`), C (owner `oc`, room `rc`).
pub fn teams() -> Vec<Participant> {
    let team = |id: &str, owner: &str, members: &[&str], rooms: &[&str]| Participant {
        id: id.into(),
        name: format!("team {id}"),
        owner_id: owner.into(),
        member_ids: members.iter().map(|m| m.to_string()).collect(),
        room_ids: rooms.iter().map(|r| r.to_string()).collect(),
    };
    vec![
        team("A", "oa", &["ma"], &["ra1", "ra2"]),
        team("B", "ob", &[], &["rb"]),
        team("C", "oc", &[], &["rc"]),
    ]
}

/// An order paid `s` seconds into the window.
pub fn paid(order: &str, room: &str, buyer: &str, product: &str, amount: i64, s: i64) -> Event {
    paid_ms(order, room, buyer, product, amount, at(s))
}

pub fn paid_ms(order: &str, room: &str, buyer: &str, product: &str, amount: i64, t: i64) -> Event {
    Event::OrderPaid(OrderPaid {
        order_id: order.into(),
        room_id: room.into(),
        buyer_id: buyer.into(),
        product_id: product.into(),
        amount,
        paid_at_ms: t,
    })
}

pub fn refund(order: &str, s: i64) -> Event {
    Event::OrderRefunded(OrderRefunded {
        order_id: order.into(),
        at_ms: at(s),
    })
}

pub fn likes(room: &str, s: i64, count: u64) -> Event {
    Event::Likes(LikesTally {
        room_id: room.into(),
        second: T0 / 1000 + s,
        count,
    })
}

pub fn judge(name: &str, scores: &[(&str, u8)], s: i64) -> Event {
    Event::JudgeScores(JudgeScores {
        judge: name.into(),
        scores: scores.iter().map(|(p, v)| (p.to_string(), *v)).collect(),
        at_ms: at(s),
    })
}

pub fn won(match_id: &str, winners: &[&str], s: i64) -> Event {
    Event::MatchResult(MatchResult {
        match_id: match_id.into(),
        winner_ids: winners.iter().map(|w| w.to_string()).collect(),
        at_ms: at(s),
    })
}

/// Feeds the events to a fresh engine in the given order, settling at the end.
pub fn engine_with(rules: &Rules, events: &[Event], settled_at: Option<i64>) -> Engine {
    let mut engine = Engine::new(rules.clone(), teams()).expect("engine");
    for e in events {
        engine.apply(e);
    }
    if let Some(t) = settled_at {
        engine.settle(t).expect("settle");
    }
    engine
}

/// Scores with the batch scorer and with the engine (events in log order and
/// reversed), asserts all three agree, and returns the batch result.
pub fn scored(rules: &Rules, events: &[Event], settled_at: Option<i64>) -> Scored {
    let batch = score(rules, &teams(), events, settled_at).expect("score");
    let forward = engine_with(rules, events, settled_at);
    assert_same(
        &batch,
        &forward.standings(),
        &forward.audit(),
        "engine, log order",
    );
    let reversed: Vec<Event> = events.iter().rev().cloned().collect();
    let backward = engine_with(rules, &reversed, settled_at);
    assert_same(
        &batch,
        &backward.standings(),
        &backward.audit(),
        "engine, reversed",
    );
    batch
}

pub fn assert_same(batch: &Scored, standings: &Standings, audit: &Audit, what: &str) {
    assert_eq!(&batch.standings, standings, "standings: batch vs {what}");
    assert_eq!(&batch.audit, audit, "audit: batch vs {what}");
    for (a, b) in batch.standings.rows.iter().zip(&standings.rows) {
        assert_eq!(
            a.total.to_bits(),
            b.total.to_bits(),
            "totals bit for bit ({what})"
        );
    }
}

/// `(participant, rank, total, qualified)` of each row, in order.
pub fn table(standings: &Standings) -> Vec<(String, u32, f64, bool)> {
    standings
        .rows
        .iter()
        .map(|r| (r.participant_id.clone(), r.rank, r.total, r.qualified))
        .collect()
}

pub fn row<'a>(standings: &'a Standings, id: &str) -> &'a harvest_contest::StandingsRow {
    standings
        .rows
        .iter()
        .find(|r| r.participant_id == id)
        .expect("participant in standings")
}
