//! Property tests over random contests and logs:
//! - the engine fed one event at a time (in log order, or in any order, settled before
//!   or after the events) gives exactly the batch results;
//! - permuting events with equal timestamps, or the whole log, changes nothing (the
//!   canonical order, `Event::canonical_cmp`);
//! - scoring only the counted events reproduces the results and the hashes;
//! - the rules parser never panics on arbitrary bytes or JSON, and what it accepts
//!   round-trips.

use std::collections::BTreeMap;

use harvest_contest::{
    Engine, Event, JudgeScores, LikesTally, MatchResult, OrderPaid, OrderRefunded, Rules,
    canonical_events_json, canonical_json, events_hash, rules_hash, score,
};
use proptest::prelude::*;
use proptest::sample::{select, subsequence};
use sha2::{Digest, Sha256};

use crate::common::*;

const WINDOW_S: i64 = 30;

fn arb_rules() -> impl Strategy<Value = Rules> {
    let metrics = subsequence(
        vec![
            "paid_gmv",
            "paid_orders",
            "distinct_buyers",
            "likes",
            "match_wins",
            "judges",
        ],
        1..=6,
    )
    .prop_shuffle();
    (
        any::<bool>(),
        metrics,
        prop::collection::vec(select(vec!["1", "0.1", "0.2", "0.3", "2.5", "40", "60"]), 6),
        select(vec!["0", "0.1", "0.5", "7"]),
        select(vec!["null", "500", "1000"]),
        0i64..3,
        select(vec![r#"null"#, r#"["p1","p2"]"#]),
        select(vec![r#"{}"#, r#"{"p2":1.5}"#, r#"{"p1":1.15,"p3":0}"#]),
        any::<bool>(),
        select(vec![0i64, 60]),
    )
        .prop_map(
            |(rank, metrics, weights, step, cap, min, eligible, mult, self_ex, grace)| {
                let metrics: Vec<String> = metrics
                    .iter()
                    .zip(&weights)
                    .map(|(m, w)| format!(r#"{{"metric":"{m}","weight":{w}}}"#))
                    .collect();
                let json = format!(
                    r#"{{"starts_at":"2025-09-19T00:00:00Z","ends_at":"2025-09-19T00:00:{WINDOW_S}Z",
                        "settle_grace_s":{grace},"scoring":{{"mode":"{}","metrics":[{}],
                        "rank_points_step":{step},"per_buyer_gmv_cap":{cap},"min_distinct_buyers":{min},
                        "eligible_product_ids":{eligible},"product_multipliers":{mult},
                        "exclude_self_purchase":{self_ex}}}}}"#,
                    if rank { "rank_points" } else { "weighted" },
                    metrics.join(",")
                );
                let rules = Rules::from_json(json.as_bytes()).expect("generated rules parse");
                rules.validate().expect("generated rules are valid");
                rules
            },
        )
}

/// A time on a coarse grid (so timestamps collide), a little before to a little after
/// the window.
fn arb_time() -> impl Strategy<Value = i64> {
    (-3i64..WINDOW_S + 3, select(vec![0i64, 0, 0, 500])).prop_map(|(s, ms)| at(s) + ms)
}

#[derive(Debug, Clone)]
enum Raw {
    Paid {
        room: &'static str,
        buyer: &'static str,
        product: &'static str,
        amount: i64,
        t: i64,
    },
    Refund {
        order: usize,
        t: i64,
    },
    Likes {
        room: &'static str,
        s: i64,
        count: u64,
    },
    Judge {
        judge: &'static str,
        scores: Vec<(&'static str, u8)>,
        t: i64,
    },
    Match {
        id: &'static str,
        winners: Vec<&'static str>,
        t: i64,
    },
}

fn arb_raw() -> impl Strategy<Value = Raw> {
    let rooms = vec!["ra1", "ra2", "rb", "rc", "rx"];
    let buyers = vec!["b1", "b2", "b3", "b4", "oa", "ma", "ob"];
    let products = vec!["p1", "p2", "p3", "p4"];
    let teams = vec!["A", "B", "C"];
    prop_oneof![
        6 => (select(rooms.clone()), select(buyers), select(products), 0i64..1500, arb_time())
            .prop_map(|(room, buyer, product, amount, t)| Raw::Paid { room, buyer, product, amount, t }),
        2 => (0usize..40, arb_time()).prop_map(|(order, t)| Raw::Refund { order, t }),
        2 => (select(rooms), -2i64..WINDOW_S + 2, 0u64..20)
            .prop_map(|(room, s, count)| Raw::Likes { room, s, count }),
        1 => (
            select(vec!["j1", "j2"]),
            prop::collection::vec((select(teams.clone()), prop_oneof![20 => 0u8..=100, 1 => Just(101u8)]), 0..3),
            arb_time()
        )
            .prop_map(|(judge, scores, t)| Raw::Judge { judge, scores, t }),
        1 => (select(vec!["m1", "m2"]), subsequence(teams, 0..=2), arb_time())
            .prop_map(|(id, winners, t)| Raw::Match { id, winners, t }),
    ]
}

fn to_events(raws: &[Raw]) -> Vec<Event> {
    raws.iter()
        .enumerate()
        .map(|(i, raw)| match raw {
            Raw::Paid {
                room,
                buyer,
                product,
                amount,
                t,
            } => Event::OrderPaid(OrderPaid {
                order_id: format!("o{i}"),
                room_id: room.to_string(),
                buyer_id: buyer.to_string(),
                product_id: product.to_string(),
                amount: *amount,
                paid_at_ms: *t,
            }),
            Raw::Refund { order, t } => Event::OrderRefunded(OrderRefunded {
                order_id: format!("o{order}"),
                at_ms: *t,
            }),
            Raw::Likes { room, s, count } => Event::Likes(LikesTally {
                room_id: room.to_string(),
                second: T0 / 1000 + s,
                count: *count,
            }),
            Raw::Judge { judge, scores, t } => Event::JudgeScores(JudgeScores {
                judge: judge.to_string(),
                scores: scores
                    .iter()
                    .map(|(p, s)| (p.to_string(), *s))
                    .collect::<BTreeMap<_, _>>(),
                at_ms: *t,
            }),
            Raw::Match { id, winners, t } => Event::MatchResult(MatchResult {
                match_id: id.to_string(),
                winner_ids: winners.iter().map(|w| w.to_string()).collect(),
                at_ms: *t,
            }),
        })
        .collect()
}

/// A contest: rules, a log, an optional settlement time, and a permutation seed.
fn arb_contest() -> impl Strategy<Value = (Rules, Vec<Event>, Option<i64>, Vec<usize>)> {
    (
        arb_rules(),
        prop::collection::vec(arb_raw(), 0..60),
        prop_oneof![Just(None), (0i64..120).prop_map(Some)],
        prop::collection::vec(any::<usize>(), 60),
    )
        .prop_map(|(rules, raws, settle, seed)| {
            let events = to_events(&raws);
            let settled = settle.map(|extra| rules.settles_at_ms() + extra * 500);
            (rules, events, settled, seed)
        })
}

/// Shuffles deterministically from a seed (Fisher–Yates driven by the seed values).
fn permute<T: Clone>(items: &[T], seed: &[usize]) -> Vec<T> {
    let mut out = items.to_vec();
    for i in (1..out.len()).rev() {
        let j = seed[i % seed.len()] % (i + 1);
        out.swap(i, j);
    }
    out
}

/// Permutes only events with equal timestamps: runs of equal `time_ms` after a stable
/// sort by time keep their place, shuffled inside.
fn shuffle_equal_times(events: &[Event], seed: &[usize]) -> Vec<Event> {
    let mut sorted = events.to_vec();
    sorted.sort_by_key(Event::time_ms);
    let mut out = Vec::with_capacity(sorted.len());
    for run in sorted.chunk_by(|a, b| a.time_ms() == b.time_ms()) {
        out.extend(permute(run, seed));
    }
    out
}

fn engine_fed(rules: &Rules, events: &[Event], settled: Option<i64>, settle_first: bool) -> Engine {
    let mut engine = Engine::new(rules.clone(), teams()).unwrap();
    if settle_first && let Some(t) = settled {
        engine.settle(t).unwrap();
    }
    for e in events {
        engine.apply(e);
    }
    if let Some(t) = settled {
        engine.settle(t).unwrap();
    }
    engine
}

proptest! {
    #[test]
    fn incremental_engine_equals_batch((rules, events, settled, seed) in arb_contest()) {
        let batch = score(&rules, &teams(), &events, settled).unwrap();
        for (what, log, settle_first) in [
            ("log order", events.clone(), false),
            ("any order", permute(&events, &seed), false),
            ("settled first", permute(&events, &seed), true),
        ] {
            let engine = engine_fed(&rules, &log, settled, settle_first);
            assert_same(&batch, &engine.standings(), &engine.audit(), what);
        }
    }

    #[test]
    fn canonical_order_makes_log_order_irrelevant((rules, events, settled, seed) in arb_contest()) {
        let base = score(&rules, &teams(), &events, settled).unwrap();
        let by_time = shuffle_equal_times(&events, &seed);
        let equal_times = score(&rules, &teams(), &by_time, settled).unwrap();
        assert_same(&base, &equal_times.standings, &equal_times.audit, "equal timestamps shuffled");
        let anyhow = score(&rules, &teams(), &permute(&events, &seed), settled).unwrap();
        assert_same(&base, &anyhow.standings, &anyhow.audit, "whole log shuffled");
    }

    #[test]
    fn counted_events_reproduce_the_results((rules, events, settled, seed) in arb_contest()) {
        let engine = engine_fed(&rules, &permute(&events, &seed), settled, false);
        let counted = engine.counted_events();
        let again = score(&rules, &teams(), &counted, settled).unwrap();
        assert_same(&again, &engine.standings(), &engine.audit(), "counted events only");
        prop_assert_eq!(again.audit.events_hash, engine.audit().events_hash);
        // Adding events after settlement changes nothing once settled.
        if let Some(t) = settled {
            let mut later = events.clone();
            later.push(paid_ms("late", "ra1", "b1", "p1", 100, t));
            later.push(Event::OrderRefunded(OrderRefunded { order_id: "o0".into(), at_ms: t }));
            let frozen = score(&rules, &teams(), &later, Some(t)).unwrap();
            let base = score(&rules, &teams(), &events, Some(t)).unwrap();
            prop_assert_eq!(frozen, base);
        }
    }

    #[test]
    fn events_are_written_in_canonical_json(
        (_, events, _, _) in arb_contest(),
        odd in prop::collection::vec(any::<String>(), 4),
        big in any::<u64>(),
    ) {
        let mut events = events;
        // Any text in ids (control characters, quotes, non-ASCII), extreme integers.
        events.push(paid_ms(&odd[0], &odd[1], &odd[2], &odd[3], i64::MIN, i64::MAX));
        events.push(Event::Likes(LikesTally { room_id: odd[0].clone(), second: -1, count: big }));
        events.push(Event::MatchResult(MatchResult {
            match_id: odd[1].clone(),
            winner_ids: odd.clone(),
            at_ms: 0,
        }));
        events.push(Event::JudgeScores(JudgeScores {
            judge: odd[2].clone(),
            scores: odd.iter().map(|p| (p.clone(), 7)).collect(),
            at_ms: -5,
        }));
        let fast = canonical_events_json(&events);
        prop_assert_eq!(String::from_utf8(fast.clone()).unwrap(), String::from_utf8(canonical_json(&events)).unwrap());
        prop_assert_eq!(events_hash(&events), hex::encode(Sha256::digest(&fast)));
    }

    #[test]
    fn rules_parser_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(rules) = Rules::from_json(&bytes) {
            let _ = rules.validate();
        }
    }

    #[test]
    fn rules_parser_never_panics_on_json(json in arb_json()) {
        let text = json.to_string();
        match Rules::from_json(text.as_bytes()) {
            Err(err) => prop_assert!(matches!(err.code(), "bad_request")),
            Ok(rules) => {
                let again = Rules::from_json(rules.to_json().as_bytes()).unwrap();
                prop_assert_eq!(&again, &rules);
                prop_assert_eq!(rules_hash(&again), rules_hash(&rules));
                match rules.validate() {
                    Ok(()) => {
                        Engine::new(rules, teams()).unwrap();
                    }
                    Err(err) => prop_assert!(matches!(err.code(), "bad_request" | "invalid_rules")),
                }
            }
        }
    }
}

/// JSON documents shaped like rules: the real keys (and a few wrong ones) with values
/// of every type, nested.
fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::{Value, json};
    let key = select(vec![
        "starts_at",
        "ends_at",
        "settle_grace_s",
        "scoring",
        "mode",
        "metrics",
        "metric",
        "weight",
        "rank_points_step",
        "eligible_product_ids",
        "product_multipliers",
        "exclude_self_purchase",
        "per_buyer_gmv_cap",
        "min_distinct_buyers",
        "p1",
        "x",
    ]);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-5i64..2000).prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        (-3.0f64..3.0).prop_map(Value::from),
        select(vec![
            "2025-09-19T00:00:00Z",
            "2025-09-19T01:00:00Z",
            "2025-09-18T23:00:00+08:00",
            "weighted",
            "rank_points",
            "paid_gmv",
            "judges",
            "likes",
            "p1",
            "",
            "bogus",
        ])
        .prop_map(Value::from),
    ];
    let tree = leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..6).prop_map(|m| Value::Object(
                m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
            )),
        ]
    });
    // Mostly documents with the right skeleton, so the parser gets deep.
    let scoring = tree.clone();
    prop_oneof![
        1 => tree,
        3 => (scoring, any::<bool>()).prop_map(|(scoring, grace)| {
            let mut doc = json!({
                "starts_at": "2025-09-19T00:00:00Z",
                "ends_at": "2025-09-19T01:00:00Z",
                "scoring": scoring,
            });
            if grace {
                doc["settle_grace_s"] = json!(60);
            }
            doc
        }),
    ]
}
