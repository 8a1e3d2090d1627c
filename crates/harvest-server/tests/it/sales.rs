//! Flash sales over HTTP and WebSocket, on whichever stock engine the backend selects
//! (memory in the embedded pass, Redis in the servers pass).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use harvest_testkit::{TestApp, TestBackend, WsClient, spawn_app, spawn_app_on, spawn_app_with};
use serde_json::{Value, json};

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

/// A live room of `owner` with one product in its bag: (room id, product id).
async fn live_room(app: &TestApp, owner: &str) -> (String, String) {
    let room = id(&app.create_room(owner, "Mayang orange flash sale").await);
    let sku = uuid::Uuid::now_v7().simple().to_string();
    let product = id(&app.create_product(owner, &sku).await);
    app.post(
        &format!("/api/v1/rooms/{room}/products"),
        Some(owner),
        &json!({"product_id": product}),
    )
    .await
    .assert_status(200);
    app.post(
        &format!("/api/v1/rooms/{room}/start"),
        Some(owner),
        &json!({}),
    )
    .await
    .assert_status(200);
    (room, product)
}

async fn create_sale(app: &TestApp, owner: &str, room: &str, body: Value) -> Value {
    let r = app
        .post(
            &format!("/api/v1/rooms/{room}/flash-sales"),
            Some(owner),
            &body,
        )
        .await;
    r.assert_status(201);
    r.body
}

async fn sale(app: &TestApp, sale_id: &str) -> Value {
    let r = app
        .get(&format!("/api/v1/flash-sales/{sale_id}"), None)
        .await;
    r.assert_status(200);
    r.body
}

fn counts(sale: &Value) -> (i64, i64, i64) {
    (
        sale["remaining"].as_i64().unwrap(),
        sale["held"].as_i64().unwrap(),
        sale["sold"].as_i64().unwrap(),
    )
}

fn key() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Reads room events until `done` says stop; checks seqs rise by exactly one.
async fn room_events_until(ws: &mut WsClient, done: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    let mut last_seq: Option<u64> = None;
    loop {
        let e = ws.event().await;
        if let Some(seq) = e["seq"].as_u64() {
            if let Some(prev) = last_seq {
                assert_eq!(seq, prev + 1, "seq gap before {e}");
            }
            last_seq = Some(seq);
        }
        let stop = done(&e);
        out.push(e);
        if stop {
            return out;
        }
    }
}

#[tokio::test]
async fn a_flash_sale_sells_out_and_the_room_sees_every_step_in_order() {
    let app = spawn_app().await;
    let engine = match TestBackend::from_env() {
        TestBackend::Embedded => "memory",
        TestBackend::Servers => "redis",
    };
    assert_eq!(app.state.flash.backend(), engine);
    let owner = app.streamer("coop-mayang");
    let (room, product) = live_room(&app, &owner).await;
    let mut ws = WsClient::connect(&app.base_url, &room, "", None).await;
    assert_eq!(ws.event().await["type"], "session.welcome");
    let snapshot = ws.event().await;
    assert_eq!(snapshot["type"], "room.snapshot");
    assert_eq!(snapshot["data"]["sales"], json!([]));

    let created = create_sale(
        &app,
        &owner,
        &room,
        json!({"product_id": product, "price": 990, "stock": 5, "per_user_limit": 2}),
    )
    .await;
    let sale_id = id(&created);
    assert_eq!(created["status"], "live");
    assert_eq!(created["room_id"], room.as_str());
    assert_eq!(created["currency"], "CNY");
    assert_eq!(counts(&created), (5, 0, 0));
    assert_eq!(created["hold_ttl_s"], 300);
    assert_eq!(created["per_user_limit"], 2);

    let started = ws.event_of("sale.started").await;
    assert_eq!(started["data"]["sale"]["id"], sale_id.as_str());
    assert_eq!(started["data"]["sale"]["status"], "live");

    // The room's live state lists the sale.
    let detail = app.get(&format!("/api/v1/rooms/{room}"), None).await;
    assert_eq!(detail.body["live"]["active_sale_ids"], json!([sale_id]));

    let alice = app.viewer("alice");
    let k = key();
    let first = app
        .reserve(&alice, &sale_id, &k, &json!({"quantity": 2}))
        .await;
    first.assert_status(201);
    let hold = &first.body;
    assert_eq!(hold["status"], "held");
    assert_eq!(hold["quantity"], 2);
    assert_eq!(hold["unit_price"], 990);
    assert_eq!(hold["amount"], 1980);
    assert_eq!(hold["user_id"], "alice");
    assert_eq!(hold["sale_id"], sale_id.as_str());
    assert!(hold["order_id"].is_null());
    let created_at =
        chrono::DateTime::parse_from_rfc3339(hold["created_at"].as_str().unwrap()).unwrap();
    let expires_at =
        chrono::DateTime::parse_from_rfc3339(hold["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!((expires_at - created_at).num_seconds(), 300);

    // A replay answers the first response and changes nothing; a different body with
    // the same key is refused.
    let replay = app
        .reserve(&alice, &sale_id, &k, &json!({"quantity": 2}))
        .await;
    replay.assert_status(201);
    assert_eq!(replay.body, first.body);
    app.reserve(&alice, &sale_id, &k, &json!({"quantity": 1}))
        .await
        .assert_error(409, "idempotency_key_reused");
    assert_eq!(counts(&sale(&app, &sale_id).await), (3, 2, 0));

    // Alice is at her limit.
    app.reserve(&alice, &sale_id, &key(), &json!({"quantity": 1}))
        .await
        .assert_error(409, "limit_exceeded");

    let bob = app.viewer("bob");
    app.reserve(&bob, &sale_id, &key(), &json!({"quantity": 2}))
        .await
        .assert_status(201);
    let carol = app.viewer("carol");
    app.reserve(&carol, &sale_id, &key(), &json!({"quantity": 2}))
        .await
        .assert_error(409, "insufficient_stock");
    app.reserve(&carol, &sale_id, &key(), &json!({}))
        .await
        .assert_status(201);
    let sold_out = sale(&app, &sale_id).await;
    assert_eq!(counts(&sold_out), (0, 5, 0));
    assert_eq!(sold_out["status"], "sold_out");
    app.reserve(&app.viewer("dave"), &sale_id, &key(), &json!({}))
        .await
        .assert_error(409, "sold_out");

    // The room saw the stock fall to 0, then the sell-out.
    let events = room_events_until(&mut ws, |e| e["type"] == "sale.sold_out").await;
    let stock: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "sale.stock")
        .collect();
    let last = stock.last().expect("a sale.stock before sale.sold_out");
    assert_eq!(
        last["data"],
        json!({"sale_id": sale_id, "remaining": 0, "held": 5, "sold": 0})
    );
    assert_eq!(events.last().unwrap()["data"], json!({"sale_id": sale_id}));

    // Released units come back: the sale is live again and the room sees the stock.
    let released = app
        .delete(&format!("/api/v1/holds/{}", id(&first.body)), Some(&alice))
        .await;
    released.assert_status(200);
    assert_eq!(released.body["status"], "released");
    app.delete(&format!("/api/v1/holds/{}", id(&first.body)), Some(&alice))
        .await
        .assert_error(409, "hold_released");
    let again = sale(&app, &sale_id).await;
    assert_eq!(counts(&again), (2, 3, 0));
    assert_eq!(again["status"], "live");
    let back = ws.event_of("sale.stock").await;
    assert_eq!(back["data"]["remaining"], 2);
    // The replay of a released hold's key still answers the first response and
    // reserves nothing.
    let late = app
        .reserve(&alice, &sale_id, &k, &json!({"quantity": 2}))
        .await;
    late.assert_status(201);
    assert_eq!(late.body["id"], first.body["id"]);
    assert_eq!(counts(&sale(&app, &sale_id).await), (2, 3, 0));

    // Ending: final numbers, then sale.ended; reservations are refused.
    let ended = app
        .post(
            &format!("/api/v1/flash-sales/{sale_id}/end"),
            Some(&owner),
            &json!({}),
        )
        .await;
    ended.assert_status(200);
    assert_eq!(ended.body["status"], "ended");
    let events = room_events_until(&mut ws, |e| e["type"] == "sale.ended").await;
    assert_eq!(
        events.last().unwrap()["data"],
        json!({"sale_id": sale_id, "sold": 0})
    );
    app.reserve(&bob, &sale_id, &key(), &json!({}))
        .await
        .assert_error(409, "sale_ended");
    // Ending twice changes nothing.
    app.post(
        &format!("/api/v1/flash-sales/{sale_id}/end"),
        Some(&owner),
        &json!({}),
    )
    .await
    .assert_status(200);
    let detail = app.get(&format!("/api/v1/rooms/{room}"), None).await;
    assert_eq!(detail.body["live"]["active_sale_ids"], json!([]));

    // The allocation record: every successful hold, first come first served.
    let alloc = app
        .get(
            &format!("/api/v1/flash-sales/{sale_id}/allocations"),
            Some(&owner),
        )
        .await;
    alloc.assert_status(200);
    let items = alloc.body["items"].as_array().unwrap();
    let who: Vec<(u64, &str, i64, &str)> = items
        .iter()
        .map(|a| {
            (
                a["position"].as_u64().unwrap(),
                a["user_id"].as_str().unwrap(),
                a["quantity"].as_i64().unwrap(),
                a["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        who,
        vec![
            (1, "alice", 2, "released"),
            (2, "bob", 2, "held"),
            (3, "carol", 1, "held")
        ]
    );
    // Paging by cursor walks the same list.
    let page = app
        .get(
            &format!("/api/v1/flash-sales/{sale_id}/allocations?limit=2"),
            Some(&owner),
        )
        .await;
    assert_eq!(page.body["items"].as_array().unwrap().len(), 2);
    let cursor = page.body["next_cursor"].as_str().unwrap();
    let rest = app
        .get(
            &format!("/api/v1/flash-sales/{sale_id}/allocations?limit=2&cursor={cursor}"),
            Some(&owner),
        )
        .await;
    assert_eq!(rest.body["items"][0]["position"], 3);
    assert!(rest.body["next_cursor"].is_null());
    app.get(
        &format!("/api/v1/flash-sales/{sale_id}/allocations?cursor=bm9wZQ"),
        Some(&owner),
    )
    .await
    .assert_error(400, "bad_request");

    // Every room event reached the SQL log in the same order.
    assert!(app.state.live.flush(Duration::from_secs(5)).await);
    let log = app
        .get(&format!("/api/v1/rooms/{room}/events?limit=500"), None)
        .await;
    let types: Vec<&str> = log.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .filter(|t| t.starts_with("sale."))
        .collect();
    assert_eq!(types.first(), Some(&"sale.started"));
    assert_eq!(types.last(), Some(&"sale.ended"));
    let sold_out_at = types.iter().position(|t| *t == "sale.sold_out").unwrap();
    assert_eq!(types[sold_out_at - 1], "sale.stock");
}

#[tokio::test]
async fn reservations_answer_every_error_code_of_the_contract() {
    let app = spawn_app().await;
    let owner = app.streamer("coop-huayuan");
    let (room, product) = live_room(&app, &owner).await;
    let s = create_sale(
        &app,
        &owner,
        &room,
        json!({"product_id": product, "price": 1290, "stock": 10, "per_user_limit": 3}),
    )
    .await;
    let sale_id = id(&s);
    let buyer = app.viewer("buyer");
    let path = format!("/api/v1/flash-sales/{sale_id}/reservations");

    // No key; a malformed key.
    let r = app.post(&path, Some(&buyer), &json!({})).await;
    r.assert_error(400, "missing_idempotency_key");
    let long = "k".repeat(129);
    let r = app.reserve(&buyer, &sale_id, &long, &json!({})).await;
    r.assert_error(400, "bad_request");
    assert_eq!(r.error_field(), Some("Idempotency-Key"));
    // Quantities outside 1..=100.
    for q in [json!(0), json!(-1), json!(101), json!(1_000_000)] {
        let r = app
            .reserve(&buyer, &sale_id, &key(), &json!({"quantity": q}))
            .await;
        r.assert_error(400, "invalid_quantity");
        assert_eq!(r.error_field(), Some("quantity"));
    }
    for q in [
        json!("2"),
        json!(1.5),
        json!(1e300),
        json!(9_007_199_254_740_993_u64),
    ] {
        let r = app
            .reserve(&buyer, &sale_id, &key(), &json!({"quantity": q}))
            .await;
        r.assert_error(400, "bad_request");
        assert_eq!(r.error_field(), Some("quantity"), "{q}");
    }
    let r = app
        .reserve(&buyer, &sale_id, &key(), &json!({"qty": 1}))
        .await;
    r.assert_error(400, "bad_request");
    assert_eq!(r.error_field(), Some("qty"));
    // No token; unknown sale.
    let r = app
        .request_with(
            reqwest::Method::POST,
            &path,
            None,
            &[("Idempotency-Key", "k1")],
            Some(&json!({})),
        )
        .await;
    r.assert_error(401, "unauthorized");
    app.reserve(
        &buyer,
        "0192aaaa-0000-7000-8000-000000000000",
        &key(),
        &json!({}),
    )
    .await
    .assert_error(404, "not_found");
    app.get("/api/v1/flash-sales/nope", None)
        .await
        .assert_error(404, "not_found");
    // None of the refused requests took stock.
    assert_eq!(counts(&sale(&app, &sale_id).await), (10, 0, 0));

    // Not started yet: a scheduled sale is announced and refuses reservations.
    let mut ws = WsClient::connect(&app.base_url, &room, "", None).await;
    ws.event_of("room.snapshot").await;
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let scheduled = create_sale(
        &app,
        &owner,
        &room,
        json!({"product_id": product, "price": 1, "stock": 3, "starts_at": later}),
    )
    .await;
    assert_eq!(scheduled["status"], "scheduled");
    let announced = ws.event_of("sale.scheduled").await;
    assert_eq!(announced["data"]["sale"]["id"], scheduled["id"]);
    app.reserve(&buyer, &id(&scheduled), &key(), &json!({}))
        .await
        .assert_error(409, "not_started");

    // Another user's hold is invisible.
    let h = app.reserve(&buyer, &sale_id, &key(), &json!({})).await;
    h.assert_status(201);
    let hold_path = format!("/api/v1/holds/{}", id(&h.body));
    let other = app.viewer("someone-else");
    app.get(&hold_path, Some(&other))
        .await
        .assert_error(404, "not_found");
    app.delete(&hold_path, Some(&other))
        .await
        .assert_error(404, "not_found");
    app.get(&hold_path, Some(&app.admin("ops")))
        .await
        .assert_status(200);
    let mine = app.get(&hold_path, Some(&buyer)).await;
    mine.assert_status(200);
    assert_eq!(mine.body, h.body);
    app.get("/api/v1/holds/unknown", Some(&buyer))
        .await
        .assert_error(404, "not_found");
    app.delete("/api/v1/holds/unknown", Some(&buyer))
        .await
        .assert_error(404, "not_found");
}

#[tokio::test]
async fn creating_a_sale_checks_every_field_and_the_room() {
    let app = spawn_app().await;
    let owner = app.streamer("county-hanshou");
    let (room, product) = live_room(&app, &owner).await;
    let path = format!("/api/v1/rooms/{room}/flash-sales");
    let ok = json!({"product_id": product, "price": 500, "stock": 10});
    for (field, value) in [
        ("stock", json!(0)),
        ("stock", json!(-3)),
        ("price", json!(-1)),
        ("per_user_limit", json!(0)),
        ("duration_s", json!(0)),
        ("hold_ttl_s", json!(0)),
        ("hold_ttl_s", json!(3601)),
        ("price", json!("5")),
        ("starts_at", json!("tomorrow")),
    ] {
        let mut body = ok.clone();
        body[field] = value.clone();
        let r = app.post(&path, Some(&owner), &body).await;
        r.assert_error(400, "bad_request");
        assert_eq!(r.error_field(), Some(field), "{field} = {value}");
    }
    let r = app
        .post(
            &path,
            Some(&owner),
            &json!({"product_id": product, "price": 1}),
        )
        .await;
    r.assert_error(400, "bad_request");
    assert_eq!(r.error_field(), Some("stock"));
    // A sale that would be over already.
    let mut past = ok.clone();
    past["starts_at"] = json!("2020-01-01T00:00:00Z");
    past["duration_s"] = json!(60);
    app.post(&path, Some(&owner), &past)
        .await
        .assert_error(400, "bad_request");

    // The product must be in the bag.
    let elsewhere = id(&app.create_product(&owner, "not-in-bag").await);
    let mut body = ok.clone();
    body["product_id"] = json!(elsewhere);
    app.post(&path, Some(&owner), &body)
        .await
        .assert_error(409, "not_in_room");
    // Only the owner sells in the room.
    app.post(&path, Some(&app.streamer("rival")), &ok)
        .await
        .assert_error(403, "forbidden");
    app.post("/api/v1/rooms/unknown/flash-sales", Some(&owner), &ok)
        .await
        .assert_error(404, "not_found");

    // Ending the room ends its running sales; an ended room sells nothing.
    let running = id(&create_sale(&app, &owner, &room, ok.clone()).await);
    app.post(
        &format!("/api/v1/rooms/{room}/end"),
        Some(&owner),
        &json!({}),
    )
    .await
    .assert_status(200);
    assert_eq!(sale(&app, &running).await["status"], "ended");
    app.post(&path, Some(&owner), &ok)
        .await
        .assert_error(409, "room_ended");
}

#[tokio::test]
async fn unpaid_holds_expire_once_and_the_buyer_is_told() {
    let app = spawn_app_with(|s| s.hold_sweep_interval_ms = 100).await;
    let owner = app.streamer("coop-yanling");
    let (room, product) = live_room(&app, &owner).await;
    let s = create_sale(
        &app,
        &owner,
        &room,
        json!({"product_id": product, "price": 2590, "stock": 3, "per_user_limit": 3, "hold_ttl_s": 1}),
    )
    .await;
    let sale_id = id(&s);
    let buyer = app.viewer("peach-fan");
    let mut mine = WsClient::connect(&app.base_url, &room, &format!("token={buyer}"), None).await;
    mine.event_of("room.snapshot").await;
    let mut other = WsClient::connect(
        &app.base_url,
        &room,
        &format!("token={}", app.viewer("bystander")),
        None,
    )
    .await;
    other.event_of("room.snapshot").await;

    let h = app
        .reserve(&buyer, &sale_id, &key(), &json!({"quantity": 3}))
        .await;
    h.assert_status(201);
    let hold_id = id(&h.body);
    assert_eq!(sale(&app, &sale_id).await["status"], "sold_out");

    // Within the deadline (1 s TTL, expiry within 1 s; generous margin here).
    let expired = tokio::time::timeout(Duration::from_secs(10), mine.event_of("hold.expired"))
        .await
        .expect("hold.expired within 10 s");
    assert_eq!(
        expired["data"],
        json!({"hold_id": hold_id, "sale_id": sale_id})
    );
    assert!(expired.get("seq").is_none_or(Value::is_null));
    let after = sale(&app, &sale_id).await;
    assert_eq!(counts(&after), (3, 0, 0));
    assert_eq!(after["status"], "live");
    let status = app
        .get(&format!("/api/v1/holds/{hold_id}"), Some(&buyer))
        .await;
    assert_eq!(status.body["status"], "expired");
    app.delete(&format!("/api/v1/holds/{hold_id}"), Some(&buyer))
        .await
        .assert_error(409, "hold_expired");
    // The room saw the units come back.
    let events = room_events_until(&mut other, |e| {
        e["type"] == "sale.stock" && e["data"]["remaining"] == 3
    })
    .await;
    assert!(
        events.iter().all(|e| e["type"] != "hold.expired"),
        "hold.expired is private"
    );
    // Exactly once: the stock did not come back twice.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(counts(&sale(&app, &sale_id).await), (3, 0, 0));
}

#[tokio::test]
async fn reservations_past_the_users_rate_get_429_with_retry_after() {
    let app = spawn_app_with(|s| {
        s.reservations_per_user_per_s = 1;
        s.reservations_burst = 2;
    })
    .await;
    let owner = app.streamer("coop");
    let (room, product) = live_room(&app, &owner).await;
    let sale_id = id(&create_sale(
        &app,
        &owner,
        &room,
        json!({"product_id": product, "price": 1, "stock": 100, "per_user_limit": 100}),
    )
    .await);
    let buyer = app.viewer("eager");
    app.reserve(&buyer, &sale_id, &key(), &json!({}))
        .await
        .assert_status(201);
    app.reserve(&buyer, &sale_id, &key(), &json!({}))
        .await
        .assert_status(201);
    let r = app.reserve(&buyer, &sale_id, &key(), &json!({})).await;
    r.assert_error(429, "rate_limited");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
    // Another user is not affected.
    app.reserve(&app.viewer("calm"), &sale_id, &key(), &json!({}))
        .await
        .assert_status(201);
}

#[tokio::test]
async fn a_storm_with_retries_never_oversells_nor_passes_a_limit() {
    let app = spawn_app_with(|s| {
        s.reservations_per_user_per_s = 1000;
        s.reservations_burst = 1000;
    })
    .await;
    let owner = app.streamer("coop-storm");
    let (room, product) = live_room(&app, &owner).await;
    let stock = 60;
    let sale_id = id(&create_sale(
        &app,
        &owner,
        &room,
        json!({"product_id": product, "price": 990, "stock": stock, "per_user_limit": 2}),
    )
    .await);
    // 150 buyers, each sending 3 keys with quantities 1..=2, every key sent twice at
    // once (a retry racing the original).
    let client = app.client.clone();
    let mut tasks = Vec::new();
    for b in 0..150 {
        for k in 0..3 {
            let token = app.viewer(&format!("buyer-{b}"));
            let key = format!("buyer-{b}-key-{k}");
            let quantity = 1 + (b + k) % 2;
            for _ in 0..2 {
                let app_url = app.base_url.clone();
                let client = client.clone();
                let (token, key, sale_id) = (token.clone(), key.clone(), sale_id.clone());
                tasks.push(tokio::spawn(async move {
                    let r = client
                        .post(format!(
                            "{app_url}/api/v1/flash-sales/{sale_id}/reservations"
                        ))
                        .bearer_auth(&token)
                        .header("Idempotency-Key", &key)
                        .json(&json!({"quantity": quantity}))
                        .send()
                        .await
                        .unwrap();
                    let status = r.status().as_u16();
                    let body: Value = r.json().await.unwrap();
                    (format!("buyer-{b}"), key, status, body)
                }));
            }
        }
    }
    let mut holds_by_key: HashMap<String, HashSet<String>> = HashMap::new();
    let mut units_by_buyer: HashMap<String, i64> = HashMap::new();
    let mut hold_units: HashMap<String, i64> = HashMap::new();
    for t in tasks {
        let (buyer, key, status, body) = t.await.unwrap();
        match status {
            201 => {
                let hold = id(&body);
                holds_by_key.entry(key).or_default().insert(hold.clone());
                if hold_units
                    .insert(hold, body["quantity"].as_i64().unwrap())
                    .is_none()
                {
                    *units_by_buyer.entry(buyer).or_default() += body["quantity"].as_i64().unwrap();
                }
            }
            409 => {
                let code = body["error"]["code"].as_str().unwrap();
                assert!(
                    ["sold_out", "limit_exceeded", "insufficient_stock"].contains(&code),
                    "unexpected {code}"
                );
            }
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    for (key, holds) in &holds_by_key {
        assert_eq!(holds.len(), 1, "{key} made {holds:?}");
    }
    for (buyer, units) in &units_by_buyer {
        assert!(*units <= 2, "{buyer} holds {units}");
    }
    let held: i64 = hold_units.values().sum();
    assert_eq!(held, stock, "150 buyers × 2 ≥ 60 units: the sale sells out");
    let s = sale(&app, &sale_id).await;
    assert_eq!(counts(&s), (0, stock, 0));
    // The allocation record lists exactly these holds at positions 1..n.
    let alloc = app
        .get(
            &format!("/api/v1/flash-sales/{sale_id}/allocations?limit=500"),
            Some(&owner),
        )
        .await;
    let items = alloc.body["items"].as_array().unwrap();
    assert_eq!(items.len(), hold_units.len());
    for (i, a) in items.iter().enumerate() {
        assert_eq!(a["position"].as_u64().unwrap(), i as u64 + 1);
        assert_eq!(
            hold_units[a["hold_id"].as_str().unwrap()],
            a["quantity"].as_i64().unwrap()
        );
    }
}

#[tokio::test]
async fn sales_and_holds_survive_a_restart() {
    let app = spawn_app().await;
    let owner = app.streamer("coop-restart");
    let (room, product) = live_room(&app, &owner).await;
    let sale_id = id(&create_sale(
        &app,
        &owner,
        &room,
        json!({"product_id": product, "price": 990, "stock": 10, "per_user_limit": 5}),
    )
    .await);
    let buyer = app.viewer("loyal");
    let k = key();
    let first = app
        .reserve(&buyer, &sale_id, &k, &json!({"quantity": 3}))
        .await;
    first.assert_status(201);
    let second = app
        .reserve(&buyer, &sale_id, &key(), &json!({"quantity": 1}))
        .await;
    second.assert_status(201);
    app.delete(&format!("/api/v1/holds/{}", id(&second.body)), Some(&buyer))
        .await
        .assert_status(200);
    let before = sale(&app, &sale_id).await;
    assert_eq!(counts(&before), (7, 3, 0));

    let db = app.stop_keep_database().await;
    let app = spawn_app_on(db, |_| {}).await;
    let after = sale(&app, &sale_id).await;
    assert_eq!(counts(&after), (7, 3, 0));
    assert_eq!(after["status"], "live");
    let hold = app
        .get(&format!("/api/v1/holds/{}", id(&first.body)), Some(&buyer))
        .await;
    hold.assert_status(200);
    assert_eq!(hold.body["status"], "held");
    // The buyer's limit still counts the hold kept across the restart.
    app.reserve(&buyer, &sale_id, &key(), &json!({"quantity": 3}))
        .await
        .assert_error(409, "limit_exceeded");
    // Allocation positions continue after the restart.
    let next = app
        .reserve(&app.viewer("newcomer"), &sale_id, &key(), &json!({}))
        .await;
    next.assert_status(201);
    let alloc = app
        .get(
            &format!("/api/v1/flash-sales/{sale_id}/allocations"),
            Some(&owner),
        )
        .await;
    let positions: Vec<u64> = alloc.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions, vec![1, 2, 3]);
    // A new viewer's snapshot carries the sale.
    let mut ws = WsClient::connect(&app.base_url, &room, "", None).await;
    let snapshot = ws.event_of("room.snapshot").await;
    let sales = snapshot["data"]["sales"].as_array().unwrap();
    assert_eq!(sales.len(), 1);
    assert_eq!(sales[0]["id"], sale_id.as_str());
    assert_eq!(sales[0]["remaining"], 6);
}

#[tokio::test]
async fn concurrent_replays_of_one_key_make_one_hold() {
    let app = spawn_app().await;
    let owner = app.streamer("coop-replay");
    let (room, product) = live_room(&app, &owner).await;
    let sale_id = id(&create_sale(
        &app,
        &owner,
        &room,
        json!({"product_id": product, "price": 1, "stock": 50, "per_user_limit": 50}),
    )
    .await);
    let buyer = app.viewer("impatient");
    let k = key();
    let body = json!({"quantity": 2});
    let replies =
        futures::future::join_all((0..15).map(|_| app.reserve(&buyer, &sale_id, &k, &body))).await;
    let ids: HashSet<String> = replies
        .iter()
        .map(|r| {
            r.assert_status(201);
            id(&r.body)
        })
        .collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(counts(&sale(&app, &sale_id).await), (48, 2, 0));
}

#[tokio::test]
async fn a_sale_whose_engine_state_vanished_is_rebuilt_from_sql() {
    let app = spawn_app().await;
    let owner = app.streamer("coop-rebuild");
    let (room, product) = live_room(&app, &owner).await;
    let sale_id = id(&create_sale(
        &app,
        &owner,
        &room,
        json!({"product_id": product, "price": 990, "stock": 8, "per_user_limit": 4}),
    )
    .await);
    let buyer = app.viewer("rebuilt");
    let kept = app
        .reserve(&buyer, &sale_id, "kept-key", &json!({"quantity": 3}))
        .await;
    kept.assert_status(201);
    assert!(app.state.flash.flush(Duration::from_secs(5)).await);

    // The engine forgets the sale (Redis lost its keys; the memory engine restarted).
    match TestBackend::from_env() {
        TestBackend::Servers => {
            let url = std::env::var("HARVEST_TEST_REDIS_URL").unwrap();
            let client = redis::Client::open(url).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("*{sale_id}*"))
                .query_async(&mut conn)
                .await
                .unwrap();
            assert!(!keys.is_empty());
            let _: () = redis::cmd("DEL")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        TestBackend::Embedded => {
            let db = app.stop_keep_database().await;
            let app2 = spawn_app_on(db, |_| {}).await;
            return check_rebuilt(&app2, &sale_id, &buyer, &kept.body).await;
        }
    }
    check_rebuilt(&app, &sale_id, &buyer, &kept.body).await;
}

async fn check_rebuilt(app: &TestApp, sale_id: &str, buyer: &str, kept: &Value) {
    assert_eq!(counts(&sale(app, sale_id).await), (5, 3, 0));
    // The rebuild keeps the key's first answer: a replay reserves nothing.
    let replay = app
        .reserve(buyer, sale_id, "kept-key", &json!({"quantity": 3}))
        .await;
    replay.assert_status(201);
    assert_eq!(&replay.body, kept);
    app.reserve(buyer, sale_id, "kept-key", &json!({"quantity": 1}))
        .await
        .assert_error(409, "idempotency_key_reused");
    assert_eq!(counts(&sale(app, sale_id).await), (5, 3, 0));
    // The buyer's usage came back with the hold: one more unit fits, two do not.
    app.reserve(buyer, sale_id, &key(), &json!({"quantity": 2}))
        .await
        .assert_error(409, "limit_exceeded");
    let next = app
        .reserve(buyer, sale_id, &key(), &json!({"quantity": 1}))
        .await;
    next.assert_status(201);
    assert_eq!(next.body["quantity"], 1);
    let hold = app
        .get(&format!("/api/v1/holds/{}", id(kept)), Some(buyer))
        .await;
    assert_eq!(hold.body["status"], "held");
    assert_eq!(counts(&sale(app, sale_id).await), (4, 4, 0));
}
