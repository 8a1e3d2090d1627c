//! Contests and PK matches through the real HTTP and WebSocket paths: creation and its
//! checks, matches, judges, live `pk.*` and `contest.standings` events, settlement,
//! the audit, restarts, and `harvest contest replay` on the stored log.

use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use harvest_testkit::{TestApp, WsClient, WsItem, spawn_app, spawn_app_on};
use reqwest::Method;
use serde_json::{Value, json};

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

fn key() -> String {
    uuid::Uuid::now_v7().to_string()
}

fn at(offset_ms: i64) -> String {
    let t = Utc::now() + chrono::Duration::milliseconds(offset_ms);
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A streamer's live room with a product in its bag and a running flash sale:
/// (owner token, room id, product id, sale id).
async fn shop(app: &TestApp, streamer: &str, price: i64) -> (String, String, String, String) {
    let owner = app.streamer(streamer);
    let room = id(&app.create_room(&owner, streamer).await);
    let product = id(&app.create_product(&owner, &key()).await);
    app.post(
        &format!("/api/v1/rooms/{room}/products"),
        Some(&owner),
        &json!({"product_id": product}),
    )
    .await
    .assert_status(200);
    app.post(
        &format!("/api/v1/rooms/{room}/start"),
        Some(&owner),
        &json!({}),
    )
    .await
    .assert_status(200);
    let sale = app
        .post(
            &format!("/api/v1/rooms/{room}/flash-sales"),
            Some(&owner),
            &json!({"product_id": product, "price": price, "stock": 100, "per_user_limit": 10}),
        )
        .await;
    sale.assert_status(201);
    (owner, room, product, id(&sale.body))
}

/// Reserves `quantity` units and pays them; returns the order.
async fn buy(app: &TestApp, buyer: &str, sale: &str, quantity: i64) -> Value {
    let hold = app
        .reserve(buyer, sale, &key(), &json!({"quantity": quantity}))
        .await;
    hold.assert_status(201);
    let order = app
        .request_with(
            Method::POST,
            &format!("/api/v1/holds/{}/checkout", id(&hold.body)),
            Some(buyer),
            &[("Idempotency-Key", &key())],
            Some(&json!({"method": "simulated"})),
        )
        .await;
    order.assert_status(200);
    order.body
}

fn contest_body(
    rooms: &[(&str, &str)],
    starts_at: &str,
    ends_at: &str,
    grace: i64,
    scoring: Value,
) -> Value {
    let participants: Vec<Value> = rooms
        .iter()
        .enumerate()
        .map(|(i, (owner, room))| {
            json!({"name": format!("team {i}"), "owner_id": owner, "room_ids": [room]})
        })
        .collect();
    json!({
        "title": "Hunan festival PK",
        "starts_at": starts_at,
        "ends_at": ends_at,
        "settle_grace_s": grace,
        "participants": participants,
        "scoring": scoring,
    })
}

/// Events of `types` a client receives until `deadline`, in arrival order.
async fn collect(ws: &mut WsClient, types: &[&str], until: Instant) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match ws.try_next(left).await {
            Some(WsItem::Event(e)) => {
                if types.contains(&e["type"].as_str().unwrap_or_default()) {
                    out.push(e);
                }
            }
            Some(WsItem::Closed(code)) => panic!("closed with {code:?}"),
            None => break,
        }
    }
    out
}

/// The first event of type `ty` within `within`.
async fn wait_event(ws: &mut WsClient, ty: &str, within: Duration) -> Value {
    let until = Instant::now() + within;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match ws.try_next(left).await {
            Some(WsItem::Event(e)) if e["type"] == ty => return e,
            Some(WsItem::Event(_)) => {}
            Some(WsItem::Closed(code)) => panic!("closed with {code:?}"),
            None => break,
        }
    }
    panic!("no {ty} within {within:?}")
}

fn row_of<'a>(standings: &'a Value, participant: &str) -> &'a Value {
    standings["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["participant_id"] == participant)
        .unwrap_or_else(|| panic!("no row for {participant} in {standings}"))
}

async fn wait_for_status(app: &TestApp, contest: &str, status: &str, within: Duration) -> Value {
    let until = Instant::now() + within;
    loop {
        let c = app.get(&format!("/api/v1/contests/{contest}"), None).await;
        c.assert_status(200);
        if c.body["status"] == status {
            return c.body;
        }
        assert!(
            Instant::now() < until,
            "contest never reached {status}: {}",
            c.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn pk_match_end_to_end_with_refund_before_settlement_and_replay() {
    let app = spawn_app().await;
    let (_, room_a, _, sale_a) = shop(&app, "kiwi-coop", 1000).await;
    let (_, room_b, _, sale_b) = shop(&app, "orange-coop", 1500).await;
    let organizer = app.organizer("festival-office");
    let created = app
        .post(
            "/api/v1/contests",
            Some(&organizer),
            &contest_body(
                &[("kiwi-coop", &room_a), ("orange-coop", &room_b)],
                &at(-1000),
                &at(13_000),
                2,
                json!({"mode": "weighted", "metrics": [
                    {"metric": "paid_gmv", "weight": 70},
                    {"metric": "match_wins", "weight": 10}
                ]}),
            ),
        )
        .await;
    created.assert_status(201);
    let contest = id(&created.body);
    assert_eq!(created.body["status"], "live");
    assert_eq!(created.body["scoring"]["exclude_self_purchase"], true);
    let team_a = created.body["participants"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let team_b = created.body["participants"][1]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let mut viewer_a = WsClient::connect(&app.base_url, &room_a, "", None).await;
    let mut viewer_b = WsClient::connect(&app.base_url, &room_b, "", None).await;
    for v in [&mut viewer_a, &mut viewer_b] {
        assert_eq!(
            v.event_of("session.welcome").await["data"]["recovered"],
            false
        );
        let snapshot = v.event_of("room.snapshot").await;
        assert_eq!(snapshot["data"]["match"], Value::Null);
        let standings = snapshot["data"]["standings"].as_array().unwrap();
        assert_eq!(standings.len(), 1, "the live contest is in the snapshot");
        assert_eq!(standings[0]["contest_id"], contest.as_str());
    }

    let m = app
        .post(
            &format!("/api/v1/contests/{contest}/matches"),
            Some(&organizer),
            &json!({"participant_ids": [team_a, team_b], "duration_s": 10}),
        )
        .await;
    m.assert_status(201);
    let match_id = id(&m.body);
    assert_eq!(m.body["metric"], "paid_gmv");
    assert_eq!(m.body["winner_ids"], json!([]));
    let ends_at: DateTime<Utc> = m.body["ends_at"].as_str().unwrap().parse().unwrap();
    // The busy participant cannot enter a second match.
    app.post(
        &format!("/api/v1/contests/{contest}/matches"),
        Some(&organizer),
        &json!({"participant_ids": [team_b, team_a], "duration_s": 10}),
    )
    .await
    .assert_error(409, "participant_busy");

    let buyer1 = app.viewer("buyer-1");
    let buyer2 = app.viewer("buyer-2");
    let buyer3 = app.viewer("buyer-3");
    let refund_me = buy(&app, &buyer1, &sale_a, 2).await; // 2000 in room A
    buy(&app, &buyer2, &sale_b, 1).await; // 1500 in room B
    tokio::time::sleep(Duration::from_millis(700)).await;
    buy(&app, &buyer3, &sale_a, 1).await; // 1000 in room A

    let live = app.get(&format!("/api/v1/matches/{match_id}"), None).await;
    live.assert_status(200);
    assert_eq!(live.body["status"], "live");
    for room in [&room_a, &room_b] {
        let r = app.get(&format!("/api/v1/rooms/{room}"), None).await;
        assert_eq!(r.body["live"]["match_id"], match_id.as_str(), "{}", r.body);
    }

    let until = Instant::now() + Duration::from_secs(14);
    let types = ["pk.started", "pk.score", "pk.ended", "contest.standings"];
    let (events_a, events_b) = tokio::join!(
        collect(&mut viewer_a, &types, until),
        collect(&mut viewer_b, &types, until)
    );
    for (room, events) in [("A", &events_a), ("B", &events_b)] {
        let of = |t: &str| -> Vec<&Value> { events.iter().filter(|e| e["type"] == t).collect() };
        assert_eq!(of("pk.started").len(), 1, "room {room}: {events:?}");
        let scores = of("pk.score");
        assert!(
            !scores.is_empty(),
            "room {room} got no pk.score: {events:?}"
        );
        for s in &scores {
            assert_eq!(s["data"]["match_id"], match_id.as_str());
            let e: DateTime<Utc> = s["data"]["ends_at"].as_str().unwrap().parse().unwrap();
            assert_eq!(e, ends_at);
        }
        for pair in scores.windows(2) {
            let gap = pair[1]["ts"].as_i64().unwrap() - pair[0]["ts"].as_i64().unwrap();
            assert!(gap >= 500, "room {room}: pk.score {gap} ms apart");
        }
        let last = scores.last().unwrap();
        let value = |p: &str| {
            last["data"]["scores"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["participant_id"] == p)
                .unwrap()["value"]
                .as_i64()
                .unwrap()
        };
        assert_eq!(
            (value(&team_a), value(&team_b)),
            (3000, 1500),
            "room {room}"
        );
        assert_eq!(last["data"]["leader_ids"], json!([team_a]));
        let ended = of("pk.ended");
        assert_eq!(ended.len(), 1, "room {room}: one pk.ended: {events:?}");
        assert_eq!(ended[0]["data"]["match"]["winner_ids"], json!([team_a]));
        assert_eq!(ended[0]["data"]["match"]["status"], "ended");
        let standings = of("contest.standings");
        assert!(!standings.is_empty(), "room {room}: no contest.standings");
        for pair in standings.windows(2) {
            let gap = pair[1]["ts"].as_i64().unwrap() - pair[0]["ts"].as_i64().unwrap();
            assert!(gap >= 1000, "room {room}: contest.standings {gap} ms apart");
        }
        // Room events are gap-free in seq.
        let mut seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
        let sorted = {
            let mut s = seqs.clone();
            s.sort_unstable();
            s
        };
        assert_eq!(seqs, sorted, "room {room}: events in seq order");
        seqs.dedup();
        assert_eq!(seqs.len(), events.len(), "room {room}: no repeated seq");
    }
    let ended = app.get(&format!("/api/v1/matches/{match_id}"), None).await;
    assert_eq!(ended.body["status"], "ended");
    assert_eq!(ended.body["winner_ids"], json!([team_a]));

    // Before the refund, A leads the contest (gmv 3000 vs 1500, and the match win).
    let before = app
        .get(&format!("/api/v1/contests/{contest}/standings"), None)
        .await;
    assert_eq!(before.body["provisional"], true);
    assert_eq!(before.body["rows"][0]["participant_id"], team_a.as_str());
    assert_eq!(row_of(&before.body, &team_a)["metrics"]["match_wins"], 1);

    // The kiwi coop refunds buyer 1 after the match, before settlement.
    let kiwi = app.streamer("kiwi-coop");
    app.post(
        &format!("/api/v1/orders/{}/refund", id(&refund_me)),
        Some(&kiwi),
        &json!({"reason": "damaged in transit"}),
    )
    .await
    .assert_status(200);
    app.post(
        &format!("/api/v1/contests/{contest}/settle"),
        Some(&organizer),
        &json!({}),
    )
    .await
    .assert_error(409, "too_early");

    wait_for_status(&app, &contest, "ended", Duration::from_secs(10)).await;
    let settles = Instant::now() + Duration::from_millis(2100);
    tokio::time::sleep_until(settles.into()).await;
    let settled = app
        .post(
            &format!("/api/v1/contests/{contest}/settle"),
            Some(&organizer),
            &json!({}),
        )
        .await;
    settled.assert_status(200);
    assert_eq!(settled.body["provisional"], false);
    // A: 1000 counted (70 × 1000/1500) + the match win (10); B: 70.
    assert_eq!(settled.body["rows"][0]["participant_id"], team_b.as_str());
    let a = row_of(&settled.body, &team_a);
    assert_eq!(a["metrics"]["paid_gmv"], 1000);
    assert_eq!(a["metrics"]["match_wins"], 1);
    assert_eq!(a["total"].as_f64().unwrap(), 70.0 * 1000.0 / 1500.0 + 10.0);
    assert_eq!(
        row_of(&settled.body, &team_b)["total"].as_f64().unwrap(),
        70.0
    );
    // Settling again returns the same result.
    let again = app
        .post(
            &format!("/api/v1/contests/{contest}/settle"),
            Some(&organizer),
            &json!({}),
        )
        .await;
    assert_eq!(again.body, settled.body);
    assert_eq!(
        app.get(&format!("/api/v1/contests/{contest}"), None)
            .await
            .body["status"],
        "settled"
    );

    // The audit shows why: buyer 1's order is excluded as refunded.
    let audit = app
        .get(
            &format!("/api/v1/contests/{contest}/audit"),
            Some(&organizer),
        )
        .await;
    audit.assert_status(200);
    assert_eq!(audit.body["rules_hash"], settled.body["rules_hash"]);
    assert_eq!(audit.body["events_hash"].as_str().unwrap().len(), 64);
    let audit_a = audit.body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["participant_id"] == team_a.as_str())
        .unwrap()
        .clone();
    assert_eq!(
        audit_a["excluded"],
        json!([{"order_id": id(&refund_me), "reason": "refunded"}])
    );
    assert_eq!(audit_a["counted"].as_array().unwrap().len(), 1);
    assert_eq!(audit_a["counted"][0]["counted_amount"], 1000);
    app.get(&format!("/api/v1/contests/{contest}/audit"), Some(&buyer1))
        .await
        .assert_error(403, "forbidden");

    // A refund after settlement changes nothing.
    let orders = app
        .get(&format!("/api/v1/rooms/{room_a}/orders"), Some(&kiwi))
        .await;
    let other = orders.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["status"] == "paid")
        .unwrap()
        .clone();
    app.post(
        &format!("/api/v1/orders/{}/refund", id(&other)),
        Some(&kiwi),
        &json!({"reason": "after settlement"}),
    )
    .await
    .assert_status(200);
    let frozen = app
        .get(&format!("/api/v1/contests/{contest}/standings"), None)
        .await;
    assert_eq!(frozen.body, settled.body);

    // `harvest contest replay` recomputes the frozen results from the stored log.
    let database_url = app.state.settings.database_url.expose().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_harvest"))
        .args(["contest", "replay", &contest])
        .current_dir(dir.path())
        .env("HARVEST_DATABASE_URL", &database_url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout, "identical\n");

    // Tampering with the record (an order's amount) is caught with the diff.
    sqlx::any::install_default_drivers();
    let mut db = <sqlx::AnyConnection as sqlx::Connection>::connect(&database_url)
        .await
        .unwrap();
    sqlx::query("UPDATE orders SET amount = 999 WHERE id = $1")
        .bind(id(&other))
        .execute(&mut db)
        .await
        .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_harvest"))
        .args(["contest", "replay", &contest])
        .current_dir(dir.path())
        .env("HARVEST_DATABASE_URL", &database_url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("paid_gmv"), "{stdout}");
    assert!(stdout.contains("events_hash"), "{stdout}");
    app.stop().await;
}

#[tokio::test]
async fn contest_creation_checks_rules_and_participants() {
    let app = spawn_app().await;
    let (_, room_a, product_a, _) = shop(&app, "c-kiwi", 1000).await;
    let (_, room_b, _, _) = shop(&app, "c-orange", 1000).await;
    let organizer = app.organizer("c-office");
    let rooms = [("c-kiwi", room_a.as_str()), ("c-orange", room_b.as_str())];
    let ok_scoring = json!({"metrics": [{"metric": "paid_gmv", "weight": 100}]});
    let post = |body: Value| {
        let app = &app;
        let organizer = organizer.clone();
        async move { app.post("/api/v1/contests", Some(&organizer), &body).await }
    };

    let r = post(contest_body(
        &rooms,
        &at(0),
        &at(60_000),
        0,
        json!({"metrics": [
            {"metric": "paid_gmv", "weight": 60}, {"metric": "paid_gmv", "weight": 0}
        ]}),
    ))
    .await;
    r.assert_error(400, "invalid_rules");
    assert_eq!(
        r.body["error"]["details"]["field"],
        "scoring.metrics[1].metric"
    );
    let fields: Vec<&str> = r.body["error"]["details"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert!(fields.contains(&"scoring.metrics[1].weight"), "{fields:?}");

    for (scoring, field) in [
        (
            json!({"mode": "bingo", "metrics": [{"metric": "likes", "weight": 1}]}),
            "scoring.mode",
        ),
        (json!({"metrics": []}), "scoring.metrics"),
        (
            json!({"metrics": [{"metric": "views", "weight": 1}]}),
            "scoring.metrics[0].metric",
        ),
        (
            json!({"metrics": [{"metric": "likes", "weight": 1}], "per_buyer_gmv_cap": 0}),
            "scoring.per_buyer_gmv_cap",
        ),
        (
            json!({"metrics": [{"metric": "likes", "weight": 1}], "eligible_product_ids": ["nope"]}),
            "scoring.eligible_product_ids[0]",
        ),
        (
            json!({"metrics": [{"metric": "likes", "weight": 1}],
                   "product_multipliers": {product_a.clone(): 1.23456}}),
            &*format!("scoring.product_multipliers.{product_a}"),
        ),
    ] {
        let r = post(contest_body(
            &rooms,
            &at(0),
            &at(60_000),
            0,
            scoring.clone(),
        ))
        .await;
        r.assert_error(400, "invalid_rules");
        assert_eq!(r.body["error"]["details"]["field"], field, "{scoring}");
    }

    // bad_request: the window, the participants, unknown fields.
    let r = post(contest_body(
        &rooms,
        &at(60_000),
        &at(0),
        0,
        ok_scoring.clone(),
    ))
    .await;
    r.assert_error(400, "bad_request");
    assert_eq!(r.body["error"]["details"]["field"], "ends_at");
    let r = post(contest_body(
        &rooms[..1],
        &at(0),
        &at(60_000),
        0,
        ok_scoring.clone(),
    ))
    .await;
    r.assert_error(400, "bad_request");
    assert_eq!(r.body["error"]["details"]["field"], "participants");
    let mut dup = contest_body(&rooms, &at(0), &at(60_000), 0, ok_scoring.clone());
    dup["participants"][1]["name"] = json!("team 0");
    let r = post(dup).await;
    r.assert_error(400, "bad_request");
    assert_eq!(r.body["error"]["details"]["field"], "participants[1].name");
    let mut foreign = contest_body(&rooms, &at(0), &at(60_000), 0, ok_scoring.clone());
    foreign["participants"][1]["room_ids"] = json!([room_a]);
    let r = post(foreign).await;
    r.assert_error(400, "bad_request");
    assert_eq!(
        r.body["error"]["details"]["field"],
        "participants[1].room_ids[0]"
    );
    let mut unknown = contest_body(&rooms, &at(0), &at(60_000), 0, ok_scoring.clone());
    unknown["participants"][0]["colour"] = json!("red");
    let r = post(unknown).await;
    r.assert_error(400, "bad_request");
    assert_eq!(
        r.body["error"]["details"]["field"],
        "participants[0].colour"
    );
    let mut unknown = contest_body(&rooms, &at(0), &at(60_000), 0, ok_scoring.clone());
    unknown["scoring"]["bonus"] = json!(1);
    let r = post(unknown).await;
    r.assert_error(400, "bad_request");
    assert_eq!(r.body["error"]["details"]["field"], "scoring.bonus");

    // Only organizers create contests.
    let streamer = app.streamer("c-kiwi");
    app.post(
        "/api/v1/contests",
        Some(&streamer),
        &contest_body(&rooms, &at(0), &at(60_000), 0, ok_scoring.clone()),
    )
    .await
    .assert_error(403, "forbidden");
    app.post(
        "/api/v1/contests",
        None,
        &contest_body(&rooms, &at(0), &at(60_000), 0, ok_scoring.clone()),
    )
    .await
    .assert_error(401, "unauthorized");

    // A valid one, with defaults filled in and a scheduled status.
    let r = post(contest_body(
        &rooms,
        &at(3_600_000),
        &at(7_200_000),
        60,
        ok_scoring,
    ))
    .await;
    r.assert_status(201);
    assert_eq!(r.body["status"], "scheduled");
    assert_eq!(r.body["settle_grace_s"], 60);
    assert_eq!(r.body["scoring"]["mode"], "weighted");
    assert_eq!(r.body["scoring"]["rank_points_step"], 0.5);
    assert_eq!(r.body["scoring"]["min_distinct_buyers"], 0);
    assert_eq!(r.body["participants"][0]["room_ids"], json!([room_a]));
    let got = app
        .get(&format!("/api/v1/contests/{}", id(&r.body)), None)
        .await;
    assert_eq!(got.body, r.body);
    app.get("/api/v1/contests/nope", None)
        .await
        .assert_error(404, "not_found");
    // The server keeps working after all of that.
    app.get("/healthz", None).await.assert_status(200);
    app.stop().await;
}

#[tokio::test]
async fn matches_judges_and_settlement_rules() {
    let app = spawn_app().await;
    let (_, room_a, _, _) = shop(&app, "m-kiwi", 1000).await;
    let (_, room_b, _, _) = shop(&app, "m-orange", 1000).await;
    let (_, room_c, _, _) = shop(&app, "m-peach", 1000).await;
    let organizer = app.organizer("m-office");
    let c = app
        .post(
            "/api/v1/contests",
            Some(&organizer),
            &contest_body(
                &[
                    ("m-kiwi", &room_a),
                    ("m-orange", &room_b),
                    ("m-peach", &room_c),
                ],
                &at(-1000),
                &at(600_000),
                0,
                json!({"mode": "rank_points", "rank_points_step": 5,
                       "metrics": [{"metric": "judges", "weight": 20}]}),
            ),
        )
        .await;
    c.assert_status(201);
    let contest = id(&c.body);
    let p: Vec<String> = (0..3)
        .map(|i| c.body["participants"][i]["id"].as_str().unwrap().to_owned())
        .collect();
    let matches = format!("/api/v1/contests/{contest}/matches");

    for (body, field) in [
        (json!({"participant_ids": [p[0]]}), "participant_ids"),
        (
            json!({"participant_ids": [p[0], p[0]]}),
            "participant_ids[1]",
        ),
        (
            json!({"participant_ids": [p[0], "ghost"]}),
            "participant_ids[1]",
        ),
        (
            json!({"participant_ids": [p[0], p[1]], "duration_s": 5}),
            "duration_s",
        ),
        (
            json!({"participant_ids": [p[0], p[1]], "duration_s": 3601}),
            "duration_s",
        ),
        (
            json!({"participant_ids": [p[0], p[1]], "metric": "judges"}),
            "metric",
        ),
        (
            json!({"participant_ids": [p[0], p[1]], "metric": "views"}),
            "metric",
        ),
        (
            json!({"participant_ids": [p[0], p[1]], "starts_at": at(-400_000)}),
            "starts_at",
        ),
        (
            json!({"participant_ids": [p[0], p[1]], "starts_at": at(590_000)}),
            "duration_s",
        ),
    ] {
        let r = app.post(&matches, Some(&organizer), &body).await;
        r.assert_error(400, "bad_request");
        assert_eq!(r.body["error"]["details"]["field"], field, "{body}");
    }
    let other = app.organizer("someone-else");
    app.post(
        &matches,
        Some(&other),
        &json!({"participant_ids": [p[0], p[1]]}),
    )
    .await
    .assert_error(403, "forbidden");
    app.post(
        "/api/v1/contests/nope/matches",
        Some(&organizer),
        &json!({"participant_ids": [p[0], p[1]]}),
    )
    .await
    .assert_error(404, "not_found");
    let later = app
        .post(
            &matches,
            Some(&organizer),
            &json!({"participant_ids": [p[0], p[1]], "starts_at": at(60_000), "metric": "likes"}),
        )
        .await;
    later.assert_status(201);
    assert_eq!(later.body["status"], "scheduled");
    assert_eq!(later.body["metric"], "likes");
    app.post(
        &matches,
        Some(&organizer),
        &json!({"participant_ids": [p[2], p[1]]}),
    )
    .await
    .assert_error(409, "participant_busy");
    app.get("/api/v1/matches/nope", None)
        .await
        .assert_error(404, "not_found");

    // Judges: a later entry replaces the judge's earlier one; means per participant.
    let judges = format!("/api/v1/contests/{contest}/judge-scores");
    let put = |token: String, body: Value| {
        let app = &app;
        let judges = judges.clone();
        async move {
            app.request(Method::PUT, &judges, Some(&token), Some(&body))
                .await
        }
    };
    put(
        organizer.clone(),
        json!({"judge": "li", "scores": {p[0].clone(): 100, p[1].clone(): 10}}),
    )
    .await
    .assert_status(204);
    put(
        organizer.clone(),
        json!({"judge": "li", "scores": {p[0].clone(): 60, p[1].clone(): 80}}),
    )
    .await
    .assert_status(204);
    put(
        organizer.clone(),
        json!({"judge": "wang", "scores": {p[0].clone(): 90}}),
    )
    .await
    .assert_status(204);
    let r = put(
        organizer.clone(),
        json!({"judge": "wang", "scores": {p[0].clone(): 101}}),
    )
    .await;
    r.assert_error(400, "bad_request");
    assert_eq!(
        r.body["error"]["details"]["field"],
        format!("scores.{}", p[0])
    );
    let r = put(
        organizer.clone(),
        json!({"judge": "wang", "scores": {"ghost": 1}}),
    )
    .await;
    r.assert_error(400, "bad_request");
    put(
        organizer.clone(),
        json!({"judge": "wang", "scores": {p[0].clone(): -1}}),
    )
    .await
    .assert_error(400, "bad_request");
    put(organizer.clone(), json!({"judge": "", "scores": {}}))
        .await
        .assert_error(400, "bad_request");
    put(other.clone(), json!({"judge": "x", "scores": {}}))
        .await
        .assert_error(403, "forbidden");
    let s = app
        .get(&format!("/api/v1/contests/{contest}/standings"), None)
        .await;
    s.assert_status(200);
    // Means: p0 (60 + 90) / 2 = 75, p1 80, p2 no judge → 0. Ranks 1: p1, 2: p0, 3: p2.
    assert_eq!(s.body["rows"][0]["participant_id"], p[1].as_str());
    assert_eq!(row_of(&s.body, &p[0])["metrics"]["judges"], 75.0);
    assert_eq!(row_of(&s.body, &p[1])["points"]["judges"], 20.0);
    assert_eq!(row_of(&s.body, &p[0])["points"]["judges"], 15.0);
    assert_eq!(row_of(&s.body, &p[2])["points"]["judges"], 0.0);
    assert_eq!(row_of(&s.body, &p[2])["rank"], 3);
    for row in s.body["rows"].as_array().unwrap() {
        assert_eq!(row["metrics"].as_object().unwrap().len(), 6);
    }

    // Settlement is too early until ends_at + grace; the details say when.
    let r = app
        .post(
            &format!("/api/v1/contests/{contest}/settle"),
            Some(&organizer),
            &json!({}),
        )
        .await;
    r.assert_error(409, "too_early");
    assert!(
        r.body["error"]["details"]["settles_at_ms"]
            .as_i64()
            .is_some()
    );
    app.post(
        &format!("/api/v1/contests/{contest}/settle"),
        Some(&other),
        &json!({}),
    )
    .await
    .assert_error(403, "forbidden");
    let admin = app.admin("ops");
    app.get(&format!("/api/v1/contests/{contest}/audit"), Some(&admin))
        .await
        .assert_status(200);
    app.stop().await;
}

/// Two streamers' shops (`{tag}-kiwi`, `{tag}-orange`) and a contest between them by
/// `{tag}-office`, live from `starts_ms` to `ends_ms` (offsets from now), no grace.
struct Duel {
    organizer: String,
    contest: String,
    teams: [String; 2],
    rooms: [String; 2],
    sales: [String; 2],
}

async fn duel(app: &TestApp, tag: &str, starts_ms: i64, ends_ms: i64, scoring: Value) -> Duel {
    let (kiwi, orange) = (format!("{tag}-kiwi"), format!("{tag}-orange"));
    let (_, room_a, _, sale_a) = shop(app, &kiwi, 1000).await;
    let (_, room_b, _, sale_b) = shop(app, &orange, 1000).await;
    let organizer = app.organizer(&format!("{tag}-office"));
    let c = app
        .post(
            "/api/v1/contests",
            Some(&organizer),
            &contest_body(
                &[(&kiwi, &room_a), (&orange, &room_b)],
                &at(starts_ms),
                &at(ends_ms),
                0,
                scoring,
            ),
        )
        .await;
    c.assert_status(201);
    let team = |i: usize| c.body["participants"][i]["id"].as_str().unwrap().to_owned();
    Duel {
        contest: id(&c.body),
        teams: [team(0), team(1)],
        rooms: [room_a, room_b],
        sales: [sale_a, sale_b],
        organizer,
    }
}

#[tokio::test]
async fn contest_settles_itself_and_counts_likes() {
    let app = spawn_app().await;
    let d = duel(
        &app,
        "l",
        -2000,
        4000,
        json!({"metrics": [{"metric": "likes", "weight": 100}]}),
    )
    .await;
    let (contest, team_a, room_a) = (d.contest, d.teams[0].clone(), d.rooms[0].clone());
    let fan = app.viewer("fan");
    let mut ws = WsClient::connect(&app.base_url, &room_a, &format!("token={fan}"), None).await;
    ws.event_of("room.snapshot").await;
    ws.send_json(&json!({"type": "like", "count": 7})).await;
    ws.send_json(&json!({"type": "like", "count": 5})).await;
    // The likes reach the contest as the second's tally.
    let until = Instant::now() + Duration::from_secs(3);
    loop {
        let s = app
            .get(&format!("/api/v1/contests/{contest}/standings"), None)
            .await;
        if row_of(&s.body, &team_a)["metrics"]["likes"] == 12 {
            assert_eq!(s.body["rows"][0]["participant_id"], team_a.as_str());
            break;
        }
        assert!(Instant::now() < until, "likes never counted: {}", s.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nobody settles it: it settles itself at ends_at (+ 0 s grace) within a second or so.
    let settled = wait_for_status(&app, &contest, "settled", Duration::from_secs(8)).await;
    let settled_at: DateTime<Utc> = settled["settled_at"].as_str().unwrap().parse().unwrap();
    let ends_at: DateTime<Utc> = settled["ends_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        settled_at, ends_at,
        "self-settlement happens at ends_at + grace"
    );
    let s = app
        .get(&format!("/api/v1/contests/{contest}/standings"), None)
        .await;
    assert_eq!(s.body["provisional"], false);
    assert_eq!(row_of(&s.body, &team_a)["metrics"]["likes"], 12);
    // The final standings reached the room as a room event.
    let until = Instant::now() + Duration::from_secs(3);
    let events = collect(&mut ws, &["contest.standings"], until).await;
    let finals: Vec<&Value> = events
        .iter()
        .filter(|e| e["data"]["standings"]["provisional"] == false)
        .collect();
    assert!(
        finals.len() <= 1,
        "at most one final standings event: {events:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_match_ends_on_time_after_a_restart() {
    let app = spawn_app().await;
    let d = duel(
        &app,
        "r",
        -1000,
        120_000,
        json!({"metrics": [{"metric": "paid_orders", "weight": 1}]}),
    )
    .await;
    let [team_a, team_b] = d.teams.clone();
    let (contest, organizer, sale_a, room_b) = (
        d.contest,
        d.organizer,
        d.sales[0].clone(),
        d.rooms[1].clone(),
    );
    let m = app
        .post(
            &format!("/api/v1/contests/{contest}/matches"),
            Some(&organizer),
            &json!({"participant_ids": [team_a, team_b], "duration_s": 10, "metric": "paid_orders"}),
        )
        .await;
    m.assert_status(201);
    let match_id = id(&m.body);
    let buyer = app.viewer("r-buyer");
    buy(&app, &buyer, &sale_a, 1).await;
    assert!(app.state.live.flush(Duration::from_secs(5)).await);

    let database = app.stop_keep_database().await;
    let app = spawn_app_on(database, |_| {}).await;
    let mut ws = WsClient::connect(&app.base_url, &room_b, "", None).await;
    let snapshot = ws.event_of("room.snapshot").await;
    assert_eq!(snapshot["data"]["match"]["id"], match_id.as_str());
    assert_eq!(snapshot["data"]["match"]["status"], "live");
    let ended = wait_event(&mut ws, "pk.ended", Duration::from_secs(15)).await;
    assert_eq!(ended["data"]["match"]["id"], match_id.as_str());
    assert_eq!(ended["data"]["match"]["winner_ids"], json!([team_a]));
    let got = app.get(&format!("/api/v1/matches/{match_id}"), None).await;
    assert_eq!(got.body["status"], "ended");
    assert_eq!(
        got.body["scores"],
        json!([{"participant_id": team_a, "value": 1}, {"participant_id": team_b, "value": 0}])
    );
    // The result entered the contest once.
    let s = app
        .get(&format!("/api/v1/contests/{contest}/standings"), None)
        .await;
    assert_eq!(row_of(&s.body, &team_a)["metrics"]["match_wins"], 1);
    app.stop().await;
}
