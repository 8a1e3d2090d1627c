//! C1 engine benchmark (PERFORMANCE.md): contest events scored per second, in process.
//!
//! The log is a PK match between 2 participants, one room each, with buyers paying
//! continuously: 20,000 buyers, five products (one with a multiplier, one ineligible),
//! a per-buyer cap, a refund for one order in fifty, a likes tally per room and second,
//! a few self-purchases, and judges and match results at the end — 200,000 events in
//! time order, as the server would feed them.
//!
//! - `score/engine_apply`: a fresh [`Engine`], every event applied one by one, then the
//!   standings (the live path; the C1 figure `score_events_per_s`).
//! - `score/engine_apply_shuffled`: the same with the log in random order (late and
//!   out-of-order arrivals: the engine replays the affected buyers).
//! - `score/batch`: the batch scorer [`score`] over the whole log, settled (standings
//!   and audit with both hashes).
//!
//! Run: `cargo bench -p harvest-contest --bench score`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use harvest_contest::{
    Engine, Event, JudgeScores, LikesTally, MatchResult, OrderPaid, OrderRefunded, Participant,
    Rules, score,
};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const EVENTS: usize = 200_000;
const BUYERS: u32 = 20_000;
const T0: i64 = 1_758_240_000_000;

fn rules() -> Rules {
    let rules = Rules::from_json(
        br#"{"starts_at":"2025-09-19T00:00:00Z","ends_at":"2025-09-19T01:00:00Z","settle_grace_s":60,
            "scoring":{"mode":"weighted","metrics":[{"metric":"paid_gmv","weight":40},
              {"metric":"paid_orders","weight":20},{"metric":"distinct_buyers","weight":10},
              {"metric":"likes","weight":10},{"metric":"match_wins","weight":10},{"metric":"judges","weight":10}],
              "eligible_product_ids":["p0","p1","p2","p3"],"product_multipliers":{"p1":1.5},
              "per_buyer_gmv_cap":500000,"min_distinct_buyers":10}}"#,
    )
    .unwrap();
    rules.validate().unwrap();
    rules
}

fn participants() -> Vec<Participant> {
    ["kiwi", "orange"]
        .iter()
        .map(|name| Participant {
            id: (*name).into(),
            name: (*name).into(),
            owner_id: format!("owner-{name}"),
            member_ids: vec![format!("member-{name}")],
            room_ids: vec![format!("room-{name}")],
        })
        .collect()
}

fn log() -> Vec<Event> {
    let mut rng = StdRng::seed_from_u64(919);
    let mut events = Vec::with_capacity(EVENTS);
    let mut t = T0;
    let mut second = T0 / 1000;
    let mut orders = 0u64;
    while events.len() < EVENTS - 2 {
        t += rng.random_range(0..20);
        let room = if rng.random_bool(0.5) {
            "room-kiwi"
        } else {
            "room-orange"
        };
        if t / 1000 > second {
            for r in ["room-kiwi", "room-orange"] {
                events.push(Event::Likes(LikesTally {
                    room_id: r.into(),
                    second,
                    count: rng.random_range(0..500),
                }));
            }
            second = t / 1000;
        }
        if orders > 0 && rng.random_ratio(1, 50) {
            events.push(Event::OrderRefunded(OrderRefunded {
                order_id: format!("o{}", rng.random_range(0..orders)),
                at_ms: t,
            }));
            continue;
        }
        let buyer = if rng.random_ratio(1, 500) {
            "owner-kiwi".to_string()
        } else {
            format!("buyer-{}", rng.random_range(0..BUYERS))
        };
        events.push(Event::OrderPaid(OrderPaid {
            order_id: format!("o{orders}"),
            room_id: room.into(),
            buyer_id: buyer,
            product_id: format!("p{}", rng.random_range(0..5)),
            amount: rng.random_range(100..20_000),
            paid_at_ms: t,
        }));
        orders += 1;
    }
    events.push(Event::JudgeScores(JudgeScores {
        judge: "j1".into(),
        scores: [("kiwi".to_string(), 88u8), ("orange".to_string(), 91u8)].into(),
        at_ms: t,
    }));
    events.push(Event::MatchResult(MatchResult {
        match_id: "m1".into(),
        winner_ids: vec!["kiwi".into()],
        at_ms: t,
    }));
    events
}

fn apply_all(rules: &Rules, events: &[Event]) -> usize {
    let mut engine = Engine::new(rules.clone(), participants()).unwrap();
    for e in events {
        black_box(engine.apply(e));
    }
    engine.standings().rows.len()
}

fn bench(c: &mut Criterion) {
    let rules = rules();
    let events = log();
    let mut shuffled = events.clone();
    shuffled.shuffle(&mut StdRng::seed_from_u64(7));
    let settled = Some(T0 + 3_600_000 + 60_000);

    let mut group = c.benchmark_group("score");
    group.sample_size(10);
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("engine_apply", |b| b.iter(|| apply_all(&rules, &events)));
    group.bench_function("engine_apply_shuffled", |b| {
        b.iter(|| apply_all(&rules, &shuffled))
    });
    group.bench_function("batch", |b| {
        b.iter(|| {
            score(&rules, &participants(), &events, settled)
                .unwrap()
                .audit
                .rows
                .len()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
