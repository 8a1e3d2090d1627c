//! Checkout, the payment webhook, orders, refunds, export and stats.

use std::collections::HashSet;
use std::time::Duration;

use harvest_testkit::{TestApp, WsClient, spawn_app, spawn_app_on, spawn_app_with};
use hmac::{KeyInit, Mac};
use reqwest::Method;
use serde_json::{Value, json};

const WEBHOOK_SECRET: &str = "whsec-test";

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

fn key() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A live room with a running sale: (room, sale, owner token).
async fn sale(app: &TestApp, stock: i64, limit: i64, hold_ttl_s: i64) -> (String, String, String) {
    let owner = app.streamer("coop-orders");
    let room = id(&app.create_room(&owner, "orders").await);
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
    let s = app
        .post(
            &format!("/api/v1/rooms/{room}/flash-sales"),
            Some(&owner),
            &json!({"product_id": product, "price": 1290, "stock": stock,
                    "per_user_limit": limit, "hold_ttl_s": hold_ttl_s}),
        )
        .await;
    s.assert_status(201);
    (room, id(&s.body), owner)
}

async fn hold(app: &TestApp, buyer: &str, sale: &str, quantity: i64) -> String {
    let r = app
        .reserve(buyer, sale, &key(), &json!({"quantity": quantity}))
        .await;
    r.assert_status(201);
    id(&r.body)
}

async fn checkout(
    app: &TestApp,
    buyer: &str,
    hold: &str,
    key: &str,
) -> harvest_testkit::TestResponse {
    app.request_with(
        Method::POST,
        &format!("/api/v1/holds/{hold}/checkout"),
        Some(buyer),
        &[("Idempotency-Key", key)],
        Some(&json!({"method": "simulated"})),
    )
    .await
}

async fn sale_counts(app: &TestApp, sale: &str) -> (i64, i64, i64) {
    let s = app
        .get(&format!("/api/v1/flash-sales/{sale}"), None)
        .await
        .body;
    (
        s["remaining"].as_i64().unwrap(),
        s["held"].as_i64().unwrap(),
        s["sold"].as_i64().unwrap(),
    )
}

#[tokio::test]
async fn checkout_makes_one_order_whatever_the_repeats() {
    let app = spawn_app().await;
    let (room, sale_id, owner) = sale(&app, 10, 5, 300).await;
    // A token carrying a display name, for the masked public notice.
    let named = app.state.auth.mint(
        "zhang",
        Some("张三"),
        &[harvest_server::auth::Role::Viewer],
        Duration::from_secs(600),
    );
    let buyer = named.clone();
    let mut room_ws = WsClient::connect(&app.base_url, &room, "", None).await;
    room_ws.event_of("room.snapshot").await;
    let mut buyer_ws =
        WsClient::connect(&app.base_url, &room, &format!("token={named}"), None).await;
    buyer_ws.event_of("room.snapshot").await;

    let h = hold(&app, &named, &sale_id, 2).await;
    let first = checkout(&app, &buyer, &h, "pay-1").await;
    first.assert_status(200);
    let order = first.body.clone();
    assert_eq!(order["status"], "paid");
    assert_eq!(order["hold_id"], h.as_str());
    assert_eq!(order["sale_id"], sale_id.as_str());
    assert_eq!(order["room_id"], room.as_str());
    assert_eq!(order["buyer_id"], "zhang");
    assert_eq!(order["quantity"], 2);
    assert_eq!(order["unit_price"], 1290);
    assert_eq!(order["amount"], 2580);
    assert_eq!(order["currency"], "CNY");
    assert!(order["refunded_at"].is_null());
    assert_eq!(sale_counts(&app, &sale_id).await, (8, 0, 2));

    // Repeats with the same or another key, sequential and concurrent: the one order.
    let again = checkout(&app, &buyer, &h, "pay-2").await;
    again.assert_status(200);
    assert_eq!(again.body, order);
    let h2 = hold(&app, &buyer, &sale_id, 1).await;
    let keys: Vec<String> = (0..10).map(|i| format!("race-{i}")).collect();
    let replies =
        futures::future::join_all(keys.iter().map(|k| checkout(&app, &buyer, &h2, k))).await;
    let ids: HashSet<String> = replies
        .iter()
        .map(|r| {
            r.assert_status(200);
            id(&r.body)
        })
        .collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(sale_counts(&app, &sale_id).await, (7, 0, 3));

    // The room sees the masked notice; the buyer gets the order privately.
    let placed = room_ws.event_of("order.placed").await;
    assert_eq!(
        placed["data"],
        json!({"sale_id": sale_id, "product_id": order["product_id"], "quantity": 2, "buyer": "张*"})
    );
    assert!(placed["seq"].is_u64());
    let paid = buyer_ws.event_of("order.paid").await;
    assert_eq!(paid["data"]["order"]["id"], order["id"]);

    // The hold reads paid with its order.
    let read = app.get(&format!("/api/v1/holds/{h}"), Some(&buyer)).await;
    assert_eq!(read.body["status"], "paid");
    assert_eq!(read.body["order_id"], order["id"]);
    app.delete(&format!("/api/v1/holds/{h}"), Some(&buyer))
        .await
        .assert_error(409, "hold_paid");

    // Reads.
    let mine = app.get("/api/v1/orders?mine=true", Some(&buyer)).await;
    mine.assert_status(200);
    assert_eq!(mine.body["items"].as_array().unwrap().len(), 2);
    assert!(
        app.get("/api/v1/orders?mine=true", Some(&app.viewer("nobody")))
            .await
            .body["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    app.get("/api/v1/orders", Some(&buyer))
        .await
        .assert_error(400, "bad_request");
    let oid = id(&order);
    app.get(&format!("/api/v1/orders/{oid}"), Some(&owner))
        .await
        .assert_status(200);
    app.get(
        &format!("/api/v1/orders/{oid}"),
        Some(&app.viewer("stranger")),
    )
    .await
    .assert_error(404, "not_found");

    // Stats before and after a refund.
    let stats = app
        .get(&format!("/api/v1/rooms/{room}/stats"), Some(&owner))
        .await
        .body;
    assert_eq!(stats["orders_paid"], 2);
    assert_eq!(stats["gmv_paid"], 2580 + 1290);
    assert_eq!(stats["buyers_distinct"], 1);
    assert_eq!(stats["refunds"], 0);
    assert_eq!(stats["viewers_unique"], 1);
    assert_eq!(stats["conversion"], 1.0);

    let refund_path = format!("/api/v1/orders/{oid}/refund");
    let reason = json!({"reason": "bruised fruit"});
    app.post(&refund_path, Some(&buyer), &reason)
        .await
        .assert_error(403, "forbidden");
    app.post(&refund_path, Some(&app.organizer("org")), &reason)
        .await
        .assert_error(403, "forbidden");
    app.post(&refund_path, Some(&app.streamer("rival")), &reason)
        .await
        .assert_error(404, "not_found");
    let refunded = app.post(&refund_path, Some(&owner), &reason).await;
    refunded.assert_status(200);
    assert_eq!(refunded.body["status"], "refunded");
    assert!(refunded.body["refunded_at"].is_string());
    app.post(&refund_path, Some(&owner), &reason)
        .await
        .assert_error(409, "already_refunded");
    // Units do not return to the sale.
    assert_eq!(sale_counts(&app, &sale_id).await, (7, 0, 3));
    let stats = app
        .get(&format!("/api/v1/rooms/{room}/stats"), Some(&owner))
        .await
        .body;
    assert_eq!(stats["orders_paid"], 1);
    assert_eq!(stats["gmv_paid"], 1290);
    assert_eq!(stats["refunds"], 1);

    // The export, as JSON and CSV.
    let json_export = app
        .get(
            &format!("/api/v1/rooms/{room}/orders?format=json"),
            Some(&owner),
        )
        .await;
    let items = json_export.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    let csv = app
        .get(
            &format!("/api/v1/rooms/{room}/orders?format=csv"),
            Some(&owner),
        )
        .await;
    csv.assert_status(200);
    assert!(
        csv.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let lines: Vec<&str> = csv.text.lines().collect();
    assert_eq!(
        lines[0],
        "id,hold_id,sale_id,room_id,product_id,buyer_id,quantity,unit_price,amount,currency,status,paid_at,refunded_at"
    );
    assert_eq!(lines.len(), 3);
    for (line, item) in lines[1..].iter().zip(items) {
        let cells: Vec<&str> = line.split(',').collect();
        assert_eq!(cells.len(), 13);
        assert_eq!(cells[0], item["id"]);
        assert_eq!(cells[6], item["quantity"].to_string());
        assert_eq!(cells[8], item["amount"].to_string());
        assert_eq!(cells[10], item["status"]);
    }
    assert!(lines[1].ends_with('Z') || lines[1].contains(",refunded,"));
    app.get(
        &format!("/api/v1/rooms/{room}/orders?format=xml"),
        Some(&owner),
    )
    .await
    .assert_error(400, "bad_request");
}

#[tokio::test]
async fn checkout_refuses_what_cannot_be_paid() {
    let app = spawn_app_with(|s| s.hold_sweep_interval_ms = 100).await;
    let (_room, sale_id, _owner) = sale(&app, 10, 10, 1).await;
    let buyer = app.viewer("late-buyer");
    let h = hold(&app, &buyer, &sale_id, 1).await;
    let path = format!("/api/v1/holds/{h}/checkout");
    app.post(&path, Some(&buyer), &json!({"method": "simulated"}))
        .await
        .assert_error(400, "missing_idempotency_key");
    let r = app
        .request_with(
            Method::POST,
            &path,
            Some(&buyer),
            &[("Idempotency-Key", "k")],
            Some(&json!({"method": "card"})),
        )
        .await;
    r.assert_error(400, "bad_request");
    assert_eq!(r.error_field(), Some("method"));
    checkout(&app, &app.viewer("thief"), &h, "k")
        .await
        .assert_error(404, "not_found");
    checkout(&app, &buyer, "no-such-hold", "k")
        .await
        .assert_error(404, "not_found");

    let released = hold(&app, &buyer, &sale_id, 1).await;
    app.delete(&format!("/api/v1/holds/{released}"), Some(&buyer))
        .await
        .assert_status(200);
    checkout(&app, &buyer, &released, "k")
        .await
        .assert_error(409, "hold_released");

    // The 1 s hold runs out.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    checkout(&app, &buyer, &h, "k2")
        .await
        .assert_error(409, "hold_expired");
    assert_eq!(sale_counts(&app, &sale_id).await, (10, 0, 0));
}

async fn webhook(
    app: &TestApp,
    body: &Value,
    t: i64,
    secret: &str,
) -> harvest_testkit::TestResponse {
    let raw = serde_json::to_vec(body).unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(&raw);
    let sig = format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()));
    raw_webhook(app, raw, Some(&sig)).await
}

async fn raw_webhook(
    app: &TestApp,
    raw: Vec<u8>,
    sig: Option<&str>,
) -> harvest_testkit::TestResponse {
    let mut req = app
        .client
        .post(app.url("/api/v1/payments/webhook"))
        .header("content-type", "application/json")
        .body(raw);
    if let Some(sig) = sig {
        req = req.header("Harvest-Signature", sig);
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    harvest_testkit::TestResponse {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    }
}

fn now_s() -> i64 {
    chrono::Utc::now().timestamp()
}

#[tokio::test]
async fn the_webhook_pays_once_per_hold_and_refuses_what_it_must() {
    let app = spawn_app_with(|s| {
        s.payment_webhook_secret = Some(harvest_server::config::Secret::new(WEBHOOK_SECRET));
        s.hold_sweep_interval_ms = 100;
    })
    .await;
    let (_room, sale_id, _owner) = sale(&app, 10, 10, 2).await;
    let buyer = app.viewer("web-buyer");
    let h = hold(&app, &buyer, &sale_id, 2).await;
    let event = |event_id: &str, amount: i64, status: &str| {
        json!({"event_id": event_id, "hold_id": h, "provider_ref": "pay-123",
               "amount": amount, "currency": "CNY", "status": status})
    };

    // Signatures.
    let e1 = event("evt-1", 2580, "succeeded");
    webhook(&app, &e1, now_s(), "wrong-secret")
        .await
        .assert_error(401, "invalid_signature");
    webhook(&app, &e1, now_s() - 301, WEBHOOK_SECRET)
        .await
        .assert_error(401, "invalid_signature");
    raw_webhook(&app, serde_json::to_vec(&e1).unwrap(), None)
        .await
        .assert_error(401, "invalid_signature");
    raw_webhook(&app, b"{}".to_vec(), Some("t=abc,v1=00"))
        .await
        .assert_error(401, "invalid_signature");

    // Amount checks and unknown holds.
    webhook(
        &app,
        &event("evt-amt", 2579, "succeeded"),
        now_s(),
        WEBHOOK_SECRET,
    )
    .await
    .assert_error(409, "amount_mismatch");
    let mut unknown = e1.clone();
    unknown["hold_id"] = json!("no-such-hold");
    unknown["event_id"] = json!("evt-unknown");
    webhook(&app, &unknown, now_s(), WEBHOOK_SECRET)
        .await
        .assert_error(404, "not_found");
    // A signed but malformed body names its field.
    let mut bad = e1.clone();
    bad["amount"] = json!(-5);
    let r = webhook(&app, &bad, now_s(), WEBHOOK_SECRET).await;
    r.assert_error(400, "bad_request");
    assert_eq!(r.error_field(), Some("amount"));

    // A failed payment leaves the hold held.
    let failed = webhook(
        &app,
        &event("evt-failed", 2580, "failed"),
        now_s(),
        WEBHOOK_SECRET,
    )
    .await;
    failed.assert_status(200);
    assert_eq!(failed.body, json!({"order_id": null}));
    assert_eq!(sale_counts(&app, &sale_id).await, (8, 2, 0));

    // Success; replays of the event and new events for the paid hold: one order.
    let ok = webhook(&app, &e1, now_s(), WEBHOOK_SECRET).await;
    ok.assert_status(200);
    let order_id = ok.body["order_id"].as_str().unwrap().to_owned();
    let replay = webhook(&app, &e1, now_s(), WEBHOOK_SECRET).await;
    assert_eq!(replay.body, ok.body);
    let second = webhook(
        &app,
        &event("evt-2", 2580, "succeeded"),
        now_s(),
        WEBHOOK_SECRET,
    )
    .await;
    second.assert_status(200);
    assert_eq!(second.body["order_id"], order_id.as_str());
    let racing: Vec<Value> = (0..8)
        .map(|i| event(&format!("evt-race-{i}"), 2580, "succeeded"))
        .collect();
    let replies = futures::future::join_all(
        racing
            .iter()
            .map(|e| webhook(&app, e, now_s(), WEBHOOK_SECRET)),
    )
    .await;
    for r in replies {
        r.assert_status(200);
        assert_eq!(r.body["order_id"], order_id.as_str());
    }
    assert_eq!(sale_counts(&app, &sale_id).await, (8, 0, 2));
    let order = app
        .get(&format!("/api/v1/orders/{order_id}"), Some(&buyer))
        .await;
    assert_eq!(order.body["hold_id"], h.as_str());
    // The replay of an amount mismatch returns its first answer.
    webhook(
        &app,
        &event("evt-amt", 2580, "succeeded"),
        now_s(),
        WEBHOOK_SECRET,
    )
    .await
    .assert_error(409, "amount_mismatch");

    // A payment after expiry: recorded for refund, no order, no stock.
    let late = hold(&app, &buyer, &sale_id, 1).await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let late_event = json!({"event_id": "evt-late", "hold_id": late, "provider_ref": "pay-late",
                            "amount": 1290, "currency": "CNY", "status": "succeeded"});
    webhook(&app, &late_event, now_s(), WEBHOOK_SECRET)
        .await
        .assert_error(409, "hold_expired");
    webhook(&app, &late_event, now_s(), WEBHOOK_SECRET)
        .await
        .assert_error(409, "hold_expired");
    assert_eq!(
        app.state.store.late_payments(&late).await.unwrap(),
        vec![("evt-late".to_owned(), "hold_expired".to_owned())]
    );
    assert_eq!(sale_counts(&app, &sale_id).await, (8, 0, 2));
}

#[tokio::test]
async fn without_a_secret_the_webhook_is_disabled() {
    let app = spawn_app().await;
    webhook(&app, &json!({}), now_s(), "anything")
        .await
        .assert_error(401, "invalid_signature");
}

#[tokio::test]
async fn paid_units_survive_a_restart_and_count_against_the_limit() {
    let app = spawn_app().await;
    let (_room, sale_id, _owner) = sale(&app, 10, 3, 300).await;
    let buyer = app.viewer("repeat-customer");
    let h = hold(&app, &buyer, &sale_id, 2).await;
    checkout(&app, &buyer, &h, "k").await.assert_status(200);
    let open = hold(&app, &buyer, &sale_id, 1).await;
    assert_eq!(sale_counts(&app, &sale_id).await, (7, 1, 2));
    let db = app.stop_keep_database().await;
    let app = spawn_app_on(db, |_| {}).await;
    assert_eq!(sale_counts(&app, &sale_id).await, (7, 1, 2));
    app.reserve(&buyer, &sale_id, &key(), &json!({}))
        .await
        .assert_error(409, "limit_exceeded");
    let paid = checkout(&app, &buyer, &open, "k2").await;
    paid.assert_status(200);
    assert_eq!(sale_counts(&app, &sale_id).await, (7, 0, 3));
}
