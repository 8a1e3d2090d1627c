//! Parsing and validating rules: every `invalid_rules` case with its exact field path,
//! the `bad_request` cases, defaults, and the canonical JSON behind `rules_hash`.

use harvest_contest::{
    ContestError, Metric, MetricName, MetricWeight, Mode, RuleViolation, Rules, Scoring,
    canonical_json, rules_hash,
};

fn doc(scoring: &str) -> String {
    format!(
        r#"{{"starts_at":"2025-09-19T00:00:00Z","ends_at":"2025-09-19T01:00:00Z","scoring":{scoring}}}"#
    )
}

fn parse(scoring: &str) -> Rules {
    Rules::from_json(doc(scoring).as_bytes()).expect("parses")
}

/// The (field, message) pairs of an `invalid_rules` answer.
fn violations(scoring: &str) -> Vec<(String, String)> {
    let known = ["p1", "p2", "p3"];
    match parse(scoring).validate_with(|p| known.contains(&p)) {
        Err(ContestError::InvalidRules(list)) => {
            list.into_iter().map(|v| (v.field, v.message)).collect()
        }
        other => panic!("expected invalid_rules, got {other:?}"),
    }
}

fn fields(scoring: &str) -> Vec<String> {
    violations(scoring).into_iter().map(|(f, _)| f).collect()
}

fn bad_request(json: &str) -> (Option<String>, String) {
    match Rules::from_json(json.as_bytes()) {
        Err(ContestError::BadRequest { field, message }) => (field, message),
        other => panic!("expected bad_request for {json}, got {other:?}"),
    }
}

#[test]
fn each_invalid_rule_names_its_field() {
    let cases: &[(&str, &[&str])] = &[
        (r#"{"mode":"best"}"#, &["scoring.mode"]),
        (r#"{"metrics":[]}"#, &["scoring.metrics"]),
        (
            r#"{"metrics":[{"metric":"paid_gmv","weight":60},{"metric":"viewers","weight":40}]}"#,
            &["scoring.metrics[1].metric"],
        ),
        (
            r#"{"metrics":[{"metric":"likes","weight":1},{"metric":"paid_gmv","weight":1},{"metric":"likes","weight":2}]}"#,
            &["scoring.metrics[2].metric"],
        ),
        (
            r#"{"metrics":[{"metric":"paid_gmv","weight":60},{"metric":"judges","weight":0}]}"#,
            &["scoring.metrics[1].weight"],
        ),
        (
            r#"{"metrics":[{"metric":"paid_gmv","weight":-1}]}"#,
            &["scoring.metrics[0].weight"],
        ),
        (
            r#"{"rank_points_step":-0.5}"#,
            &["scoring.rank_points_step"],
        ),
        (
            r#"{"min_distinct_buyers":-1}"#,
            &["scoring.min_distinct_buyers"],
        ),
        (r#"{"per_buyer_gmv_cap":0}"#, &["scoring.per_buyer_gmv_cap"]),
        (
            r#"{"per_buyer_gmv_cap":-100}"#,
            &["scoring.per_buyer_gmv_cap"],
        ),
        (
            r#"{"product_multipliers":{"p1":-0.5}}"#,
            &["scoring.product_multipliers.p1"],
        ),
        (
            r#"{"product_multipliers":{"p1":1.23456}}"#,
            &["scoring.product_multipliers.p1"],
        ),
        (
            r#"{"product_multipliers":{"p1":1000.0001}}"#,
            &["scoring.product_multipliers.p1"],
        ),
        (
            r#"{"product_multipliers":{"ghost":2}}"#,
            &["scoring.product_multipliers.ghost"],
        ),
        (
            r#"{"eligible_product_ids":["p1","ghost","p2"]}"#,
            &["scoring.eligible_product_ids[1]"],
        ),
    ];
    for (scoring, expected) in cases {
        assert_eq!(&fields(scoring), expected, "scoring {scoring}");
    }
}

#[test]
fn every_problem_is_listed_in_document_order() {
    let got = violations(
        r#"{"mode":"best","metrics":[{"metric":"paid_gmv","weight":60},{"metric":"paid_gmv","weight":0},
            {"metric":"viewers","weight":-1}],"rank_points_step":-0.5,"eligible_product_ids":["p1","nope"],
            "product_multipliers":{"p1":1.23456,"p2":-1,"ghost":2},"per_buyer_gmv_cap":0,"min_distinct_buyers":-1}"#,
    );
    let expected = [
        (
            "scoring.mode",
            r#"unknown mode "best": expected weighted or rank_points"#,
        ),
        ("scoring.metrics[1].metric", "duplicate metric paid_gmv"),
        ("scoring.metrics[1].weight", "weight must be greater than 0"),
        (
            "scoring.metrics[2].metric",
            r#"unknown metric "viewers": expected one of paid_gmv, paid_orders, distinct_buyers, likes, match_wins, judges"#,
        ),
        ("scoring.metrics[2].weight", "weight must be greater than 0"),
        (
            "scoring.rank_points_step",
            "rank_points_step must be at least 0",
        ),
        (
            "scoring.eligible_product_ids[1]",
            r#"unknown product "nope""#,
        ),
        (
            "scoring.product_multipliers.ghost",
            r#"unknown product "ghost""#,
        ),
        (
            "scoring.product_multipliers.p1",
            "multiplier must have at most 4 decimals",
        ),
        (
            "scoring.product_multipliers.p2",
            "multiplier must be at least 0",
        ),
        (
            "scoring.per_buyer_gmv_cap",
            "per_buyer_gmv_cap must be greater than 0 (null for no cap)",
        ),
        (
            "scoring.min_distinct_buyers",
            "min_distinct_buyers must be at least 0",
        ),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(f, m)| (f.to_string(), m.to_string()))
        .collect();
    assert_eq!(got, expected);
}

#[test]
fn invalid_rules_error_body() {
    let err = parse(r#"{"metrics":[{"metric":"paid_gmv","weight":0}]}"#)
        .validate()
        .unwrap_err();
    assert_eq!(err.code(), "invalid_rules");
    assert_eq!(
        err.details(),
        serde_json::json!({
            "field": "scoring.metrics[0].weight",
            "errors": [{"field": "scoring.metrics[0].weight", "message": "weight must be greater than 0"}]
        })
    );
    assert_eq!(
        err,
        ContestError::InvalidRules(vec![RuleViolation {
            field: "scoring.metrics[0].weight".into(),
            message: "weight must be greater than 0".into()
        }])
    );
}

#[test]
fn accepted_edges() {
    for scoring in [
        r#"{"product_multipliers":{"p1":1.2345,"p2":0.0001,"p3":1000}}"#,
        r#"{"product_multipliers":{"p1":0}}"#,
        r#"{"rank_points_step":0,"mode":"rank_points"}"#,
        r#"{"per_buyer_gmv_cap":1,"min_distinct_buyers":0}"#,
        r#"{"per_buyer_gmv_cap":null,"eligible_product_ids":null}"#,
        r#"{"eligible_product_ids":[]}"#,
        r#"{"metrics":[{"metric":"judges","weight":0.0001}]}"#,
    ] {
        parse(scoring)
            .validate()
            .unwrap_or_else(|e| panic!("{scoring}: {e}"));
    }
}

#[test]
fn malformed_documents_are_bad_requests_naming_the_field() {
    let full = |scoring: &str| doc(scoring);
    let cases: Vec<(String, Option<&str>)> = vec![
        ("{".to_string(), None),
        ("[]".to_string(), None),
        (format!("{} x", full("{}")), None),
        (
            r#"{"starts_at":"2025-09-19T00:00:00Z","ends_at":"2025-09-19T01:00:00Z","title":"x","scoring":{}}"#.into(),
            Some("title"),
        ),
        (full(r#"{"bonus":1}"#), Some("scoring.bonus")),
        (
            full(r#"{"metrics":[{"metric":"likes","wieght":1}]}"#),
            Some("scoring.metrics[0].wieght"),
        ),
        (
            full(r#"{"metrics":[{"metric":"likes"}]}"#),
            Some("scoring.metrics[0].weight"),
        ),
        (
            full(r#"{"metrics":[{"metric":"likes","weight":"heavy"}]}"#),
            Some("scoring.metrics[0].weight"),
        ),
        (full(r#"{"mode":3}"#), Some("scoring.mode")),
        (full(r#"{"exclude_self_purchase":"yes"}"#), Some("scoring.exclude_self_purchase")),
        (full(r#"{"min_distinct_buyers":1.5}"#), Some("scoring.min_distinct_buyers")),
        (
            full(r#"{"per_buyer_gmv_cap":9007199254740992}"#),
            Some("scoring.per_buyer_gmv_cap"),
        ),
        (full(r#"{"product_multipliers":{"p1":"2"}}"#), Some("scoring.product_multipliers.p1")),
        (
            r#"{"starts_at":"2025-09-19T00:00:00Z","ends_at":"2025-09-19T01:00:00Z"}"#.into(),
            Some("scoring"),
        ),
        (
            r#"{"starts_at":"yesterday","ends_at":"2025-09-19T01:00:00Z","scoring":{}}"#.into(),
            Some("starts_at"),
        ),
        (
            r#"{"starts_at":"2025-09-19T00:00:00Z","ends_at":"2025-09-19T01:00:00Z","settle_grace_s":-1,"scoring":{}}"#.into(),
            Some("settle_grace_s"),
        ),
    ];
    for (json, field) in cases {
        let (got, message) = bad_request(&json);
        assert_eq!(got.as_deref(), field, "{json}: {message}");
        assert!(!message.contains(" at line "), "{message}");
    }
}

#[test]
fn a_window_that_does_not_end_after_it_starts_is_a_bad_request() {
    let rules = Rules::from_json(
        br#"{"starts_at":"2025-09-19T01:00:00Z","ends_at":"2025-09-19T01:00:00Z","scoring":{}}"#,
    )
    .unwrap();
    let err = rules.validate().unwrap_err();
    assert_eq!(err.code(), "bad_request");
    assert_eq!(err.details(), serde_json::json!({"field": "ends_at"}));
}

#[test]
fn omitted_keys_take_the_documented_defaults() {
    let rules = parse("{}");
    assert_eq!(rules.scoring, Scoring::default());
    assert_eq!(rules.settle_grace_s, 0);
    let s = &rules.scoring;
    assert_eq!(s.mode, Mode::Weighted);
    assert_eq!(
        s.metrics,
        vec![
            MetricWeight::new(Metric::PaidGmv, 60.0),
            MetricWeight::new(Metric::Judges, 40.0)
        ]
    );
    assert_eq!(s.rank_points_step, 0.5);
    assert!(s.exclude_self_purchase);
    assert_eq!((s.per_buyer_gmv_cap, s.min_distinct_buyers), (None, 0));
    assert_eq!(s.eligible_product_ids, None);
    assert!(s.product_multipliers.is_empty());
}

#[test]
fn rules_hash_is_sha256_of_the_canonical_json() {
    let rules = parse("{}");
    let canonical = String::from_utf8(canonical_json(&rules)).unwrap();
    assert_eq!(
        canonical,
        r#"{"ends_at":"2025-09-19T01:00:00Z","scoring":{"eligible_product_ids":null,"exclude_self_purchase":true,"metrics":[{"metric":"paid_gmv","weight":60},{"metric":"judges","weight":40}],"min_distinct_buyers":0,"mode":"weighted","per_buyer_gmv_cap":null,"product_multipliers":{},"rank_points_step":0.5},"settle_grace_s":0,"starts_at":"2025-09-19T00:00:00Z"}"#
    );
    // printf '%s' '<the canonical JSON above>' | sha256sum
    assert_eq!(
        rules_hash(&rules),
        "932fa4c5aafbe2a15f808e5bb80c5d02cf0ebbb41a24b98fe8e7a80d15f2d204"
    );
    // The same rules written differently: other key order, explicit defaults, another
    // time zone, whitespace.
    let same = Rules::from_json(
        br#"{ "scoring": {"rank_points_step": 0.50, "mode": "weighted",
              "metrics": [{"weight": 6e1, "metric": "paid_gmv"}, {"metric": "judges", "weight": 40.0}],
              "exclude_self_purchase": true, "per_buyer_gmv_cap": null},
             "settle_grace_s": 0,
             "ends_at": "2025-09-19T09:00:00+08:00", "starts_at": "2025-09-19T00:00:00.000Z" }"#,
    )
    .unwrap();
    assert_eq!(same, rules);
    assert_eq!(rules_hash(&same), rules_hash(&rules));
    let other = parse(r#"{"rank_points_step":0.25}"#);
    assert_ne!(rules_hash(&other), rules_hash(&rules));
}

#[test]
fn rules_round_trip_through_json() {
    let rules = parse(
        r#"{"mode":"rank_points","metrics":[{"metric":"likes","weight":20},{"metric":"paid_gmv","weight":40.5}],
            "rank_points_step":0.5,"eligible_product_ids":["p1"],"product_multipliers":{"p1":1.5},
            "exclude_self_purchase":false,"per_buyer_gmv_cap":5000,"min_distinct_buyers":3}"#,
    );
    let again = Rules::from_json(rules.to_json().as_bytes()).unwrap();
    assert_eq!(again, rules);
    assert_eq!(rules_hash(&again), rules_hash(&rules));
    // Unknown names survive parsing so validation can name them.
    let odd = parse(r#"{"mode":"elo","metrics":[{"metric":"gifts","weight":1}]}"#);
    assert_eq!(odd.scoring.mode, Mode::Unknown("elo".into()));
    assert_eq!(
        odd.scoring.metrics[0].metric,
        MetricName::Unknown("gifts".into())
    );
    assert!(odd.to_json().contains(r#""mode":"elo""#));
}
