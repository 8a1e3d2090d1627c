//! Hand-computed standings: both modes, ties and each tie-break, every exclusion
//! reason, refunds around settlement, caps, multipliers, judges, match wins, likes,
//! qualification. Each case is checked on the batch scorer and on the engine fed in log
//! order and in reverse (`common::scored`).

use harvest_contest::{Applied, ContestError, Engine, ExclusionReason, Ignored, Metric, score};

use crate::common::*;

struct Case {
    name: &'static str,
    scoring: &'static str,
    events: Vec<harvest_contest::Event>,
    /// (participant, rank, total, qualified) in row order.
    expected: Vec<(&'static str, u32, f64, bool)>,
}

fn check(cases: Vec<Case>) {
    for case in cases {
        let r = rules(case.scoring);
        let got = scored(&r, &case.events, None);
        let expected: Vec<(String, u32, f64, bool)> = case
            .expected
            .iter()
            .map(|&(p, rank, total, q)| (p.to_string(), rank, total, q))
            .collect();
        assert_eq!(table(&got.standings), expected, "case {:?}", case.name);
    }
}

const GMV: &str = r#"{"metrics":[{"metric":"paid_gmv","weight":100}]}"#;

#[test]
fn weighted_mode() {
    check(vec![
        Case {
            name: "gmv 60 + judges 40: max-normalised gmv, judges over 100",
            scoring: r#"{"mode":"weighted","metrics":[{"metric":"paid_gmv","weight":60},{"metric":"judges","weight":40}]}"#,
            events: vec![
                paid("o1", "ra1", "b1", "p1", 1000, 10),
                paid("o2", "ra2", "b2", "p1", 500, 20),
                paid("o3", "rb", "b1", "p1", 3000, 30),
                judge("j1", &[("A", 80), ("B", 60)], 100),
                judge("j2", &[("A", 100)], 200),
            ],
            // A: 60 × 1500/3000 + 40 × 90/100 = 30 + 36; B: 60 + 40 × 60/100 = 84.
            expected: vec![
                ("B", 1, 84.0, true),
                ("A", 2, 66.0, true),
                ("C", 3, 0.0, true),
            ],
        },
        Case {
            name: "defaults: omitted scoring keys are gmv 60 + judges 40",
            scoring: "{}",
            events: vec![
                paid("o1", "rc", "b1", "p1", 10, 1),
                judge("j", &[("B", 50)], 2),
            ],
            expected: vec![
                ("C", 1, 60.0, true),
                ("B", 2, 20.0, true),
                ("A", 3, 0.0, true),
            ],
        },
        Case {
            name: "every max 0: no points",
            scoring: r#"{"metrics":[{"metric":"likes","weight":10},{"metric":"match_wins","weight":5}]}"#,
            events: vec![],
            expected: vec![
                ("A", 1, 0.0, true),
                ("B", 1, 0.0, true),
                ("C", 1, 0.0, true),
            ],
        },
        Case {
            name: "likes and match wins",
            scoring: r#"{"metrics":[{"metric":"likes","weight":30},{"metric":"match_wins","weight":10}]}"#,
            events: vec![
                likes("ra1", 5, 30),
                likes("ra2", 6, 10),
                likes("rb", 5, 20),
                likes("rc", HOUR_S, 1_000), // the window's end is exclusive
                likes("rc", -1, 1_000),
                likes("elsewhere", 5, 1_000),
                won("m1", &["A"], 100),
                won("m2", &["A", "B"], 200),
                won("m3", &[], 300),
            ],
            // likes A 40 B 20; wins A 2 B 1: A 30 + 10, B 15 + 5.
            expected: vec![
                ("A", 1, 40.0, true),
                ("B", 2, 20.0, true),
                ("C", 3, 0.0, true),
            ],
        },
        Case {
            name: "0.1 + 0.2 ties 0.3 exactly (weights are the decimals written)",
            scoring: r#"{"metrics":[{"metric":"paid_gmv","weight":0.1},{"metric":"likes","weight":0.2},{"metric":"match_wins","weight":0.3}],
                         "product_multipliers":{"free":0}}"#,
            events: vec![
                paid("o1", "ra1", "b1", "p1", 1000, 10),
                likes("ra1", 20, 10),
                paid("o2", "rb", "b2", "free", 1000, 10),
                won("m1", &["B"], 20),
            ],
            // A: 0.1 + 0.2, B: 0.3; same buyers, orders and last change: shared rank.
            expected: vec![
                ("A", 1, 0.3, true),
                ("B", 1, 0.3, true),
                ("C", 3, 0.0, true),
            ],
        },
    ]);
}

#[test]
fn rank_points_mode() {
    check(vec![
        Case {
            name: "county rulebook: 40/20/20/20, step 0.5, shared like ranks",
            scoring: r#"{"mode":"rank_points","rank_points_step":0.5,"metrics":[
                {"metric":"paid_gmv","weight":40},{"metric":"paid_orders","weight":20},
                {"metric":"likes","weight":20},{"metric":"distinct_buyers","weight":20}]}"#,
            events: vec![
                paid("o1", "ra1", "b1", "p1", 1000, 10),
                paid("o2", "ra2", "b2", "p1", 500, 20),
                paid("o3", "rb", "b1", "p1", 3000, 30),
                likes("ra1", 1, 50),
                likes("rb", 1, 50),
                likes("rc", 1, 10),
            ],
            // gmv: B 1st 40, A 2nd 39.5, C 0 (value 0). orders: A 20, B 19.5.
            // likes: A and B share 1st (20 each), C 3rd: 20 − 2 × 0.5 = 19.
            // buyers: A 20, B 19.5.
            expected: vec![
                ("A", 1, 99.5, true),
                ("B", 2, 99.0, true),
                ("C", 3, 19.0, true),
            ],
        },
        Case {
            name: "points never go below 0",
            scoring: r#"{"mode":"rank_points","rank_points_step":15,"metrics":[{"metric":"paid_gmv","weight":20}]}"#,
            events: vec![
                paid("o1", "ra1", "b1", "p1", 300, 10),
                paid("o2", "rb", "b1", "p1", 200, 10),
                paid("o3", "rc", "b1", "p1", 100, 10),
            ],
            expected: vec![
                ("A", 1, 20.0, true),
                ("B", 2, 5.0, true),
                ("C", 3, 0.0, true),
            ],
        },
        Case {
            name: "step 0: every non-zero value gets the full weight",
            scoring: r#"{"mode":"rank_points","rank_points_step":0,"metrics":[{"metric":"paid_gmv","weight":20},{"metric":"judges","weight":10}]}"#,
            events: vec![
                paid("o1", "ra1", "b1", "p1", 300, 10),
                paid("o2", "rb", "b1", "p1", 200, 11),
                judge("j", &[("A", 10), ("B", 20), ("C", 0)], 12),
            ],
            // judges: B 20 1st, A 10 2nd (step 0: 10), C 0 → 0.
            expected: vec![
                ("A", 1, 30.0, true),
                ("B", 1, 30.0, true),
                ("C", 3, 0.0, true),
            ],
        },
    ]);
}

#[test]
fn tie_breaks_in_order() {
    check(vec![
        Case {
            name: "more distinct buyers first",
            scoring: GMV,
            events: vec![
                paid("o1", "rb", "b1", "p1", 1000, 1),
                paid("o2", "ra1", "b1", "p1", 500, 5),
                paid("o3", "ra2", "b2", "p1", 500, 6),
            ],
            expected: vec![
                ("A", 1, 100.0, true),
                ("B", 2, 100.0, true),
                ("C", 3, 0.0, true),
            ],
        },
        Case {
            name: "then more paid orders",
            scoring: GMV,
            events: vec![
                paid("o1", "rb", "b1", "p1", 1000, 1),
                paid("o2", "ra1", "b1", "p1", 600, 5),
                paid("o3", "ra2", "b1", "p1", 400, 6),
            ],
            expected: vec![
                ("A", 1, 100.0, true),
                ("B", 2, 100.0, true),
                ("C", 3, 0.0, true),
            ],
        },
        Case {
            name: "then the earlier last change",
            scoring: GMV,
            events: vec![
                paid("o1", "ra1", "b1", "p1", 1000, 50),
                paid("o2", "rb", "b1", "p1", 1000, 40),
            ],
            expected: vec![
                ("B", 1, 100.0, true),
                ("A", 2, 100.0, true),
                ("C", 3, 0.0, true),
            ],
        },
        Case {
            name: "a change in an unscored metric still counts as a change",
            scoring: GMV,
            events: vec![
                paid("o1", "ra1", "b1", "p1", 1000, 40),
                paid("o2", "rb", "b1", "p1", 1000, 40),
                likes("rb", 45, 1),
            ],
            expected: vec![
                ("A", 1, 100.0, true),
                ("B", 2, 100.0, true),
                ("C", 3, 0.0, true),
            ],
        },
        Case {
            name: "still tied: shared rank, next rank skips",
            scoring: GMV,
            events: vec![
                paid("o1", "ra1", "b1", "p1", 1000, 40),
                paid("o2", "rb", "b2", "p1", 1000, 40),
                paid("o3", "rc", "b3", "p1", 10, 41),
            ],
            expected: vec![
                ("A", 1, 100.0, true),
                ("B", 1, 100.0, true),
                ("C", 3, 1.0, true),
            ],
        },
    ]);
}

#[test]
fn last_change_times() {
    let r = rules(GMV);
    let events = vec![
        paid("o1", "ra1", "b1", "p1", 1000, 10),
        paid("o2", "ra1", "b2", "p1", 1000, 20),
        refund("o2", 30),
        likes("rb", 15, 3),
        likes("rb", 25, 0),                     // zero likes change nothing
        paid("o3", "rc", "oc", "p1", 1000, 40), // self-purchase changes nothing
        judge("j", &[("C", 0)], 50),            // a mean of 0 is the value 0
    ];
    let s = scored(&r, &events, None).standings;
    assert_eq!(
        row(&s, "A").last_change_ms,
        Some(at(30)),
        "the refund is the last change"
    );
    assert_eq!(row(&s, "B").last_change_ms, Some(at(15)));
    assert_eq!(row(&s, "C").last_change_ms, None);
}

#[test]
fn qualification_by_distinct_buyers() {
    check(vec![Case {
        name: "B has one buyer of two required: scored with all, listed after",
        scoring: r#"{"metrics":[{"metric":"paid_gmv","weight":100}],"min_distinct_buyers":2}"#,
        events: vec![
            paid("o1", "ra1", "b1", "p1", 500, 1),
            paid("o2", "ra1", "b2", "p1", 500, 2),
            paid("o3", "rb", "b1", "p1", 3000, 3),
            paid("o4", "rc", "b1", "p1", 1, 3),
            paid("o5", "rc", "b2", "p1", 1, 3),
        ],
        // The max (3000) includes B although B does not qualify.
        expected: vec![
            ("A", 1, 100.0 / 3.0, true),
            ("C", 2, 100.0 * 2.0 / 3000.0, true),
            ("B", 3, 100.0, false),
        ],
    }]);
}

#[test]
fn every_exclusion_reason_in_priority_order() {
    let r = rules(
        r#"{"metrics":[{"metric":"paid_gmv","weight":100}],"eligible_product_ids":["p1","p2"],
            "per_buyer_gmv_cap":1000,"product_multipliers":{"p2":1.5}}"#,
    );
    let events = vec![
        paid("o1", "ra1", "b1", "p1", 100, -10), // before the window
        paid("o2", "ra1", "b1", "p1", 300, 10),
        refund("o2", 20),
        paid("o3", "ra1", "oa", "p1", 200, 11), // the owner
        paid("o4", "ra2", "ma", "p1", 200, 12), // a member, refunded too: refunded wins
        refund("o4", 13),
        paid("o5", "ra1", "b2", "p3", 500, 13), // not eligible
        paid("o6", "ra1", "b3", "p2", 500, 14), // 500 × 1.5 = 750
        paid("o7", "ra2", "b3", "p1", 400, 15), // 250 left under the cap: partial
        paid("o8", "ra1", "b3", "p1", 100, 16), // cap reached
        paid("o9", "ra1", "b4", "p1", 100, HOUR_S), // the end is exclusive
        paid("o10", "ra1", "b4", "p1", 100, -20),
        refund("o10", 5), // outside the window wins over refunded
        paid("o11", "ra1", "oa", "p4", 100, 17), // self-purchase wins over ineligible
        paid("o20", "rb", "b1", "p1", 1000, 30),
        paid("o99", "nowhere", "b1", "p1", 1000, 30), // not a participant's room
    ];
    let got = scored(&r, &events, None);
    let a = &got.audit.rows[0];
    assert_eq!(a.participant_id, "A");
    let counted: Vec<(&str, i64, i64)> = a
        .counted
        .iter()
        .map(|c| (c.order_id.as_str(), c.amount, c.counted_amount))
        .collect();
    assert_eq!(counted, vec![("o6", 500, 750), ("o7", 400, 250)]);
    use ExclusionReason::*;
    let excluded: Vec<(&str, ExclusionReason)> = a
        .excluded
        .iter()
        .map(|e| (e.order_id.as_str(), e.reason))
        .collect();
    assert_eq!(
        excluded,
        vec![
            ("o10", OutsideWindow),
            ("o1", OutsideWindow),
            ("o2", Refunded),
            ("o3", SelfPurchase),
            ("o4", Refunded),
            ("o5", IneligibleProduct),
            ("o8", BuyerCap),
            ("o11", SelfPurchase),
            ("o9", OutsideWindow),
        ]
    );
    let s = &got.standings;
    let metrics = &row(s, "A").metrics;
    assert_eq!(
        (
            metrics.paid_gmv,
            metrics.paid_orders,
            metrics.distinct_buyers
        ),
        (1000, 2, 1)
    );
    // A and B tie on 100 and one buyer each; A has more paid orders.
    assert_eq!(
        table(s),
        vec![
            ("A".to_string(), 1, 100.0, true),
            ("B".to_string(), 2, 100.0, true),
            ("C".to_string(), 3, 0.0, true)
        ]
    );
    let b = &got.audit.rows[1];
    assert_eq!(b.counted.len(), 1);
    assert!(b.excluded.is_empty());
    assert!(got.audit.rows[2].counted.is_empty() && got.audit.rows[2].excluded.is_empty());
}

#[test]
fn self_purchases_count_when_not_excluded() {
    let r =
        rules(r#"{"metrics":[{"metric":"paid_gmv","weight":100}],"exclude_self_purchase":false}"#);
    let got = scored(&r, &[paid("o1", "ra1", "oa", "p1", 100, 1)], None);
    assert_eq!(row(&got.standings, "A").metrics.paid_gmv, 100);
}

#[test]
fn multipliers_are_exact_then_floored() {
    let r = rules(
        r#"{"metrics":[{"metric":"paid_gmv","weight":100},{"metric":"paid_orders","weight":1}],
            "product_multipliers":{"p115":1.15,"p0":0,"tiny":0.0001,"p2":2}}"#,
    );
    let events = vec![
        paid("o1", "ra1", "b1", "p115", 100, 1), // 100 × 1.15 = 115 (a double gives 114.99…)
        paid("o2", "ra1", "b2", "p0", 5000, 2),  // 0, and still an order and a buyer
        paid("o3", "ra1", "b3", "tiny", 9999, 3), // floor(0.9999) = 0
        paid("o4", "rb", "b1", "p2", 333, 4),    // 666
        paid("o5", "rb", "b1", "p1", 7, 5),      // not listed: 1
    ];
    let got = scored(&r, &events, None);
    let amounts: Vec<i64> = got.audit.rows[0]
        .counted
        .iter()
        .map(|c| c.counted_amount)
        .collect();
    assert_eq!(amounts, vec![115, 0, 0]);
    let a = &row(&got.standings, "A").metrics;
    assert_eq!((a.paid_gmv, a.paid_orders, a.distinct_buyers), (115, 3, 3));
    assert_eq!(row(&got.standings, "B").metrics.paid_gmv, 673);
}

#[test]
fn buyer_cap_in_payment_order_and_freed_by_refunds() {
    let r = rules(r#"{"metrics":[{"metric":"paid_gmv","weight":100}],"per_buyer_gmv_cap":1000}"#);
    // Payment order, not log order: o2 was paid first.
    let events = vec![
        paid("o1", "ra1", "b1", "p1", 800, 20),
        paid("o2", "ra1", "b1", "p1", 800, 10),
        paid("o3", "ra2", "b1", "p1", 50, 30),
        // Another participant's cap is separate.
        paid("o4", "rb", "b1", "p1", 1000, 10),
    ];
    let got = scored(&r, &events, None);
    let counted: Vec<(&str, i64)> = got.audit.rows[0]
        .counted
        .iter()
        .map(|c| (c.order_id.as_str(), c.counted_amount))
        .collect();
    assert_eq!(counted, vec![("o2", 800), ("o1", 200)]);
    assert_eq!(
        got.audit.rows[0].excluded[0].reason,
        ExclusionReason::BuyerCap
    );
    assert_eq!(row(&got.standings, "B").metrics.paid_gmv, 1000);

    // Refunding o2 gives its room back to the later orders.
    let mut with_refund = events.clone();
    with_refund.push(refund("o2", 40));
    let got = scored(&r, &with_refund, None);
    let counted: Vec<(&str, i64)> = got.audit.rows[0]
        .counted
        .iter()
        .map(|c| (c.order_id.as_str(), c.counted_amount))
        .collect();
    assert_eq!(counted, vec![("o1", 800), ("o3", 50)]);
    let a = row(&got.standings, "A");
    assert_eq!(a.metrics.paid_gmv, 850);
    assert_eq!(a.last_change_ms, Some(at(40)));
}

#[test]
fn same_millisecond_payments_follow_order_ids() {
    let r = rules(r#"{"metrics":[{"metric":"paid_gmv","weight":100}],"per_buyer_gmv_cap":100}"#);
    let events = vec![
        paid("o-b", "ra1", "b1", "p1", 100, 10),
        paid("o-a", "ra1", "b1", "p1", 100, 10),
    ];
    let got = scored(&r, &events, None);
    assert_eq!(got.audit.rows[0].counted[0].order_id, "o-a");
    assert_eq!(got.audit.rows[0].excluded[0].order_id, "o-b");
}

#[test]
fn refunds_before_and_after_settlement() {
    let r = rules_with(GMV, 600);
    let events = vec![
        paid("o1", "ra1", "b1", "p1", 1000, 10),
        refund("o1", HOUR_S + 300), // before settlement: excluded
        paid("o2", "rb", "b1", "p1", 1000, 10),
        refund("o2", HOUR_S + 700), // after settlement: still counts
        judge("late", &[("C", 100)], HOUR_S + 700), // after settlement: ignored
    ];
    let settled = Some(at(HOUR_S + 600));
    let got = scored(&r, &events, settled);
    assert!(!got.standings.provisional);
    assert_eq!(
        table(&got.standings),
        vec![
            ("B".to_string(), 1, 100.0, true),
            // Tied at 0: C never changed, A last changed with its refund.
            ("C".to_string(), 2, 0.0, true),
            ("A".to_string(), 3, 0.0, true)
        ]
    );
    assert_eq!(
        got.audit.rows[0].excluded[0].reason,
        ExclusionReason::Refunded
    );

    // Provisional: both refunds apply.
    let live = scored(&r, &events, None);
    assert!(live.standings.provisional);
    assert_eq!(row(&live.standings, "B").metrics.paid_gmv, 0);

    // The engine settled first refuses later events and keeps its results.
    let mut engine = Engine::new(r.clone(), teams()).unwrap();
    engine.settle(at(HOUR_S + 600)).unwrap();
    let mut ignored = 0;
    for e in &events {
        if engine.apply(e) == Applied::Ignored(Ignored::AfterSettlement) {
            ignored += 1;
        }
    }
    assert_eq!(ignored, 2);
    assert_eq!(engine.standings(), got.standings);
    assert_eq!(engine.audit(), got.audit);
    // Settling again keeps the first settlement.
    engine.settle(at(HOUR_S + 10_000)).unwrap();
    assert_eq!(engine.settled_at_ms(), Some(at(HOUR_S + 600)));

    // Too early.
    let early = Some(at(HOUR_S + 599));
    assert_eq!(
        score(&r, &teams(), &events, early).unwrap_err(),
        ContestError::TooEarly {
            settles_at_ms: at(HOUR_S + 600)
        }
    );
    let mut engine = Engine::new(r, teams()).unwrap();
    assert_eq!(
        engine.settle(at(HOUR_S + 599)).unwrap_err().code(),
        "too_early"
    );
}

#[test]
fn judges_replace_their_whole_entry() {
    let r = rules(r#"{"metrics":[{"metric":"judges","weight":100}]}"#);
    let events = vec![
        judge("j1", &[("A", 80), ("B", 60)], 100),
        judge("j2", &[("A", 85), ("C", 71)], 110),
        judge("j3", &[("A", 90), ("C", 70)], 120),
        judge("j1", &[("A", 70)], 200),  // j1 no longer scores B
        judge("j9", &[("A", 101)], 210), // out of range: ignored
        judge("j9", &[("Z", 50)], 220),  // unknown participant: ignored
    ];
    let got = scored(&r, &events, None);
    let s = &got.standings;
    assert_eq!(row(s, "A").metrics.judges, 245.0 / 3.0);
    assert_eq!(row(s, "B").metrics.judges, 0.0);
    assert_eq!(row(s, "C").metrics.judges, 70.5);
    assert_eq!(row(s, "A").total, 245.0 / 3.0);
    assert_eq!(row(s, "B").last_change_ms, Some(at(200)));
    assert_eq!(
        table(s).iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
        vec!["A", "C", "B"]
    );
    let mut engine = Engine::new(r, teams()).unwrap();
    assert_eq!(engine.apply(&events[4]), Applied::Ignored(Ignored::Invalid));
}

#[test]
fn points_and_metrics_on_the_wire() {
    let r =
        rules(r#"{"metrics":[{"metric":"paid_gmv","weight":60},{"metric":"likes","weight":40}]}"#);
    let events = vec![paid("o1", "ra1", "b1", "p1", 1000, 1), likes("rb", 1, 7)];
    let got = scored(&r, &events, None);
    let wire = got.standings.to_wire(
        "contest-1",
        chrono::DateTime::from_timestamp_millis(at(5)).unwrap(),
    );
    assert_eq!(wire.contest_id, "contest-1");
    assert!(wire.provisional);
    assert_eq!(wire.rules_hash, got.audit.rules_hash);
    let a = &wire.rows[0];
    assert_eq!(a.participant_id, "A");
    assert_eq!(a.points.len(), 2);
    assert_eq!(a.points[&Metric::PaidGmv], 60.0);
    assert_eq!(a.points[&Metric::Likes], 0.0);
    let json = serde_json::to_value(a).unwrap();
    assert_eq!(
        json["metrics"],
        serde_json::json!({"paid_gmv":1000,"paid_orders":1,"distinct_buyers":1,"likes":0,"match_wins":0,"judges":0.0})
    );
}

#[test]
fn engine_reports_what_it_did() {
    let r = rules(GMV);
    let mut engine = Engine::new(r, teams()).unwrap();
    assert_eq!(engine.apply(&refund("o1", 50)), Applied::Pending);
    assert_eq!(
        engine.apply(&paid("o1", "ra1", "b1", "p1", 10, 10)),
        Applied::Recorded { changed: false }
    );
    assert_eq!(
        engine.apply(&paid("o2", "ra1", "b1", "p1", 10, 10)),
        Applied::Recorded { changed: true }
    );
    assert_eq!(
        engine.apply(&paid("o2", "ra1", "b1", "p1", 10, 10)),
        Applied::Ignored(Ignored::Duplicate)
    );
    assert_eq!(
        engine.apply(&paid("o3", "zz", "b1", "p1", 10, 10)),
        Applied::Ignored(Ignored::UnknownRoom)
    );
    assert_eq!(
        engine.apply(&paid("o4", "ra1", "b1", "p1", -1, 10)),
        Applied::Ignored(Ignored::Invalid)
    );
    assert_eq!(
        engine.apply(&likes("ra1", -5, 10)),
        Applied::Ignored(Ignored::OutsideWindow)
    );
    assert_eq!(
        engine.apply(&refund("o2", 60)),
        Applied::Recorded { changed: true }
    );
    assert_eq!(
        engine.apply(&refund("o2", 70)),
        Applied::Ignored(Ignored::Duplicate)
    );
    assert_eq!(engine.standings().rows[0].metrics.paid_gmv, 0);
}

#[test]
fn participants_are_checked() {
    let r = rules(GMV);
    let mut two = teams();
    two.truncate(1);
    assert_eq!(
        Engine::new(r.clone(), two).unwrap_err(),
        ContestError::BadRequest {
            field: Some("participants".into()),
            message: "a contest needs at least 2 participants".into()
        }
    );
    let mut dup = teams();
    dup[2].name = dup[0].name.clone();
    let err = Engine::new(r.clone(), dup).unwrap_err();
    assert_eq!(
        err.details(),
        serde_json::json!({"field": "participants[2].name"})
    );
    let mut shared = teams();
    shared[1].room_ids.push("ra2".into());
    let err = Engine::new(r.clone(), shared).unwrap_err();
    assert_eq!(
        err.details(),
        serde_json::json!({"field": "participants[1].room_ids[1]"})
    );
    let mut roomless = teams();
    roomless[0].room_ids.clear();
    let err = score(&r, &roomless, &[], None).unwrap_err();
    assert_eq!(
        err.details(),
        serde_json::json!({"field": "participants[0].room_ids"})
    );
}

#[test]
fn engine_can_move_between_tasks() {
    fn shared<T: Send + Sync + 'static>() {}
    shared::<Engine>();
}
