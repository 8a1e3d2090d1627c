//! PK matches: one metric over the match window, with the contest's exclusions,
//! multipliers and caps; leaders while running; a winner, a draw, or nobody at the end.

use harvest_contest::{Engine, MatchOutcome, MatchSpec, Metric, Score};

use crate::common::*;

fn spec(ids: &[&str], from_s: i64, to_s: i64, metric: Metric) -> MatchSpec {
    MatchSpec {
        participant_ids: ids.iter().map(|s| s.to_string()).collect(),
        starts_at_ms: at(from_s),
        ends_at_ms: at(to_s),
        metric,
    }
}

fn values(engine: &Engine, spec: &MatchSpec) -> Vec<i64> {
    engine
        .match_scores(spec, spec.starts_at_ms)
        .unwrap()
        .scores
        .iter()
        .map(|s| s.value)
        .collect()
}

#[test]
fn scores_apply_the_contest_rules_inside_the_match_window() {
    let r = rules(
        r#"{"metrics":[{"metric":"paid_gmv","weight":1}],"per_buyer_gmv_cap":1000,
            "product_multipliers":{"p2":2}}"#,
    );
    let events = vec![
        paid("o1", "ra1", "b1", "p1", 700, 50), // before the match, uses the cap
        paid("o2", "ra1", "b1", "p1", 700, 100), // 300 left under the cap
        paid("o3", "ra2", "b2", "p2", 100, 150), // × 2
        paid("o4", "ra1", "oa", "p1", 999, 160), // self-purchase
        paid("o5", "rb", "b1", "p1", 400, 110),
        paid("o6", "rb", "b3", "p1", 100, 120),
        refund("o6", 130),
        paid("o7", "rb", "b4", "p1", 100, 400), // after the match
        likes("ra1", 100, 5),
        likes("ra2", 101, 6),
        likes("rb", 299, 7),
        likes("rb", 300, 100), // the second the match ends: outside
    ];
    let engine = engine_with(&r, &events, None);
    let m = |metric| spec(&["A", "B"], 100, 300, metric);
    assert_eq!(values(&engine, &m(Metric::PaidGmv)), vec![500, 400]);
    assert_eq!(values(&engine, &m(Metric::PaidOrders)), vec![2, 1]);
    assert_eq!(values(&engine, &m(Metric::DistinctBuyers)), vec![2, 1]);
    assert_eq!(values(&engine, &m(Metric::Likes)), vec![11, 7]);
    // Participant order of the match, not of the contest.
    assert_eq!(
        values(&engine, &spec(&["C", "B", "A"], 100, 300, Metric::PaidGmv)),
        vec![0, 400, 500]
    );
}

#[test]
fn leaders_and_outcomes() {
    let r = rules(r#"{"metrics":[{"metric":"paid_gmv","weight":1}]}"#);
    let mut engine = Engine::new(r, teams()).unwrap();
    let m = spec(&["A", "B", "C"], 0, 300, Metric::PaidGmv);

    let now = engine.match_scores(&m, at(10)).unwrap();
    assert_eq!(now.leader_ids, Vec::<String>::new());
    assert_eq!(now.outcome, MatchOutcome::Running);
    let end = engine.match_scores(&m, at(300)).unwrap();
    assert_eq!(end.outcome, MatchOutcome::NoScore);
    assert!(end.outcome.winner_ids().is_empty());

    engine.apply(&paid("o1", "ra1", "b1", "p1", 100, 10));
    engine.apply(&paid("o2", "rb", "b1", "p1", 100, 20));
    let now = engine.match_scores(&m, at(299)).unwrap();
    assert_eq!(now.leader_ids, vec!["A", "B"]);
    assert_eq!(now.outcome, MatchOutcome::Running);
    assert!(
        now.outcome.winner_ids().is_empty(),
        "no winners while running"
    );
    let end = engine.match_scores(&m, at(300)).unwrap();
    assert_eq!(
        end.outcome,
        MatchOutcome::Draw {
            winner_ids: vec!["A".into(), "B".into()]
        }
    );
    assert_eq!(end.outcome.winner_ids(), vec!["A", "B"]);

    engine.apply(&paid("o3", "rb", "b2", "p1", 1, 30));
    let end = engine.match_scores(&m, at(301)).unwrap();
    assert_eq!(end.leader_ids, vec!["B"]);
    assert_eq!(
        end.outcome,
        MatchOutcome::Won {
            winner_id: "B".into()
        }
    );
    assert_eq!(
        end.scores,
        vec![
            Score {
                participant_id: "A".into(),
                value: 100
            },
            Score {
                participant_id: "B".into(),
                value: 101
            },
            Score {
                participant_id: "C".into(),
                value: 0
            },
        ]
    );
}

#[test]
fn decide_from_stored_scores() {
    let s = |p: &str, value| Score {
        participant_id: p.into(),
        value,
    };
    let (leaders, outcome) = MatchOutcome::decide(&[s("x", 3), s("y", 5), s("z", 5)], true);
    assert_eq!(leaders, vec!["y", "z"]);
    assert_eq!(outcome.winner_ids(), vec!["y", "z"]);
    let (leaders, outcome) = MatchOutcome::decide(&[s("x", 0), s("y", 0)], true);
    assert!(leaders.is_empty());
    assert_eq!(outcome, MatchOutcome::NoScore);
}

#[test]
fn bad_matches_are_refused() {
    let r = rules(r#"{"metrics":[{"metric":"paid_gmv","weight":1}]}"#);
    let engine = Engine::new(r, teams()).unwrap();
    let field = |m: MatchSpec| {
        let err = engine.match_scores(&m, 0).unwrap_err();
        assert_eq!(err.code(), "bad_request");
        err.details()["field"].as_str().unwrap().to_string()
    };
    assert_eq!(
        field(spec(&["A"], 0, 10, Metric::PaidGmv)),
        "participant_ids"
    );
    let ten: Vec<String> = (0..10).map(|i| format!("p{i}")).collect();
    let ten: Vec<&str> = ten.iter().map(String::as_str).collect();
    assert_eq!(field(spec(&ten, 0, 10, Metric::PaidGmv)), "participant_ids");
    assert_eq!(
        field(spec(&["A", "Z"], 0, 10, Metric::PaidGmv)),
        "participant_ids[1]"
    );
    assert_eq!(
        field(spec(&["A", "A"], 0, 10, Metric::PaidGmv)),
        "participant_ids[1]"
    );
    assert_eq!(field(spec(&["A", "B"], 10, 10, Metric::PaidGmv)), "ends_at");
    assert_eq!(field(spec(&["A", "B"], 0, 10, Metric::Judges)), "metric");
}
