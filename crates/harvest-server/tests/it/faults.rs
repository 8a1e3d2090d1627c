//! Fault tests (RELIABILITY.md R4 and R5): each test starts its own Redis or
//! PostgreSQL, kills it in the middle of a sale, brings it back, and counts that
//! nothing was oversold, lost or duplicated. They start their own servers whatever the
//! backend pass; names contain `process_` so the runner keeps them in the serial group.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use harvest_server::config::SecretUrl;
use harvest_testkit::{
    PrivatePostgres, PrivateRedis, TestApp, TestBackend, TestDatabase, TestResponse, spawn_app_on,
};
use reqwest::Method;
use serde_json::{Value, json};

/// Generous bound for "within a few seconds" (the contract says 2 s).
const NOTICE: Duration = Duration::from_secs(6);
/// Longest any single request may take while a dependency is down (a hung request
/// would run into the server's 30 s request timeout).
const REQUEST_BOUND: Duration = Duration::from_secs(15);

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

fn key() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A live room of `owner` with a running sale: (room id, sale id).
async fn open_sale(
    app: &TestApp,
    owner: &str,
    stock: i64,
    limit: i64,
    hold_ttl_s: i64,
) -> (String, String) {
    let room = id(&app.create_room(owner, "fault sale").await);
    let product = id(&app.create_product(owner, &key()).await);
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
    let sale = app
        .post(
            &format!("/api/v1/rooms/{room}/flash-sales"),
            Some(owner),
            &json!({"product_id": product, "price": 500, "stock": stock,
                    "per_user_limit": limit, "hold_ttl_s": hold_ttl_s}),
        )
        .await;
    sale.assert_status(201);
    (room, id(&sale.body))
}

async fn checkout(app: &TestApp, buyer: &str, hold: &str, key: &str) -> TestResponse {
    app.request_with(
        Method::POST,
        &format!("/api/v1/holds/{hold}/checkout"),
        Some(buyer),
        &[("Idempotency-Key", key)],
        Some(&json!({"method": "simulated"})),
    )
    .await
}

/// (remaining, held, sold) of a sale, which must answer 200.
async fn counts(app: &TestApp, sale: &str) -> (i64, i64, i64) {
    let r = app.get(&format!("/api/v1/flash-sales/{sale}"), None).await;
    r.assert_status(200);
    let n = |f: &str| r.body[f].as_i64().unwrap();
    (n("remaining"), n("held"), n("sold"))
}

async fn readyz(app: &TestApp) -> TestResponse {
    app.get("/readyz", None).await
}

/// Polls `/readyz` until `done` holds; panics after `within`. Returns the time it took
/// and the last answer.
async fn await_readyz(
    app: &TestApp,
    within: Duration,
    what: &str,
    done: impl Fn(&TestResponse) -> bool,
) -> (Duration, TestResponse) {
    let started = Instant::now();
    loop {
        let r = readyz(app).await;
        if done(&r) {
            return (started.elapsed(), r);
        }
        assert!(
            started.elapsed() < within,
            "/readyz: {what} not seen within {within:?}; last answer {} {}",
            r.status,
            r.text
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the test knows of one hold.
#[derive(Debug, Clone)]
struct Held {
    buyer: String,
    token: String,
    quantity: i64,
    order_id: Option<String>,
}

/// The test's own count of every hold it was given.
#[derive(Default)]
struct Ledger {
    holds: HashMap<String, Held>,
    released: HashSet<String>,
}

impl Ledger {
    fn paid_units(&self) -> i64 {
        self.holds
            .values()
            .filter(|h| h.order_id.is_some())
            .map(|h| h.quantity)
            .sum()
    }

    fn held_units(&self) -> i64 {
        self.holds
            .iter()
            .filter(|(id, h)| h.order_id.is_none() && !self.released.contains(*id))
            .map(|(_, h)| h.quantity)
            .sum()
    }

    fn order_ids(&self) -> HashMap<String, String> {
        self.holds
            .iter()
            .filter_map(|(hold, h)| h.order_id.clone().map(|o| (o, hold.clone())))
            .collect()
    }

    /// Units each buyer holds or bought.
    fn units_by_buyer(&self) -> HashMap<String, i64> {
        let mut out = HashMap::new();
        for (id, h) in &self.holds {
            if !self.released.contains(id) {
                *out.entry(h.buyer.clone()).or_default() += h.quantity;
            }
        }
        out
    }

    /// Reserves and records the hold; the answer must be 201.
    async fn reserve(
        &mut self,
        app: &TestApp,
        buyer: &str,
        sale: &str,
        key: &str,
        quantity: i64,
    ) -> String {
        let token = app.viewer(buyer);
        let r = app
            .reserve(&token, sale, key, &json!({"quantity": quantity}))
            .await;
        r.assert_status(201);
        assert_eq!(r.body["quantity"], quantity);
        let hold = id(&r.body);
        let known = self.holds.insert(
            hold.clone(),
            Held {
                buyer: buyer.to_owned(),
                token,
                quantity,
                order_id: None,
            },
        );
        assert!(
            known.is_none(),
            "a new key gave a hold already given: {hold}"
        );
        hold
    }

    /// Pays a hold; the answer must be 200 with its order.
    async fn pay(&mut self, app: &TestApp, hold: &str) -> String {
        let h = self.holds.get_mut(hold).unwrap();
        let r = checkout(app, &h.token, hold, &key()).await;
        r.assert_status(200);
        check_order(&r.body, hold, h);
        let order = id(&r.body);
        h.order_id = Some(order.clone());
        order
    }
}

fn check_order(order: &Value, hold: &str, h: &Held) {
    assert_eq!(order["hold_id"], hold, "{order}");
    assert_eq!(order["status"], "paid", "{order}");
    assert_eq!(order["buyer_id"], h.buyer.as_str(), "{order}");
    assert_eq!(order["quantity"], h.quantity, "{order}");
    assert_eq!(order["amount"], h.quantity * 500, "{order}");
}

/// Every order the test was answered with is in the room's export exactly once, and
/// nothing else is; each paid hold reads `paid` with its order.
async fn check_orders(app: &TestApp, owner: &str, room: &str, ledger: &Ledger) {
    let export = app
        .get(&format!("/api/v1/rooms/{room}/orders"), Some(owner))
        .await;
    export.assert_status(200);
    let items = export.body["items"].as_array().unwrap();
    let expected = ledger.order_ids();
    assert_eq!(items.len(), expected.len(), "order count: {}", export.text);
    let ids: HashSet<&str> = items.iter().map(|o| o["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), items.len(), "duplicate order ids");
    let holds: HashSet<&str> = items
        .iter()
        .map(|o| o["hold_id"].as_str().unwrap())
        .collect();
    assert_eq!(holds.len(), items.len(), "two orders for one hold");
    for o in items {
        let order = o["id"].as_str().unwrap();
        let hold = expected
            .get(order)
            .unwrap_or_else(|| panic!("an order nobody was answered with: {o}"));
        check_order(o, hold, &ledger.holds[hold]);
    }
    for (hold, h) in &ledger.holds {
        let Some(order) = &h.order_id else { continue };
        let read = app
            .get(&format!("/api/v1/holds/{hold}"), Some(&h.token))
            .await;
        read.assert_status(200);
        assert_eq!(read.body["status"], "paid", "{}", read.text);
        assert_eq!(read.body["order_id"], order.as_str(), "{}", read.text);
    }
}

// ------------------------------------------------------------------ R4 -----

#[tokio::test]
async fn process_redis_killed_mid_sale_then_restarted_empty_is_rebuilt_from_sql() {
    let started = Instant::now();
    let mut redis = PrivateRedis::start().await;
    let redis_url = redis.url();
    let app = spawn_app_on(TestDatabase::create().await, |s| {
        s.redis_url = Some(SecretUrl::new(redis_url));
        s.reservations_per_user_per_s = 1000;
        s.reservations_burst = 1000;
    })
    .await;
    assert_eq!(app.state.flash.backend(), "redis");
    let owner = app.streamer("coop-redis-loss");
    let stock = 24;
    let limit = 2;
    let (room, sale) = open_sale(&app, &owner, stock, limit, 300).await;

    // Before the loss: ten buyers hold 1 or 2 units; four pay, one releases.
    let mut ledger = Ledger::default();
    let mut early = Vec::new();
    for i in 0..10 {
        let hold = ledger
            .reserve(&app, &format!("early-{i}"), &sale, &key(), 1 + i % 2)
            .await;
        early.push(hold);
    }
    for hold in &early[..4] {
        ledger.pay(&app, hold).await;
    }
    let h = &ledger.holds[&early[9]];
    app.delete(&format!("/api/v1/holds/{}", early[9]), Some(&h.token))
        .await
        .assert_status(200);
    ledger.released.insert(early[9].clone());
    let (paid, held) = (ledger.paid_units(), ledger.held_units());
    assert_eq!((paid, held), (6, 7));
    assert_eq!(counts(&app, &sale).await, (stock - paid - held, held, paid));

    // A second, quiet sale: one hold that runs out while Redis is down, and no
    // request for that sale afterwards.
    let (_, quiet_sale) = open_sale(&app, &owner, 3, 1, 2).await;
    let quiet_buyer = app.viewer("quiet-buyer");
    let quiet = app
        .reserve(&quiet_buyer, &quiet_sale, &key(), &json!({}))
        .await;
    quiet.assert_status(201);
    let quiet_hold = id(&quiet.body);
    app.get("/readyz", None).await.assert_status(200);
    // A quiet moment: the room has heard the latest numbers, nothing is pending.
    tokio::time::sleep(Duration::from_millis(600)).await;

    // Redis dies.
    redis.kill();
    let (noticed, down) = await_readyz(&app, NOTICE, "503 after the Redis kill", |r| {
        r.status == 503
    })
    .await;
    eprintln!("readyz 503 {noticed:?} after the kill");
    assert_eq!(down.body["status"], "unavailable");
    assert_ne!(down.body["checks"]["redis"], "ok", "{}", down.text);
    assert_eq!(down.body["checks"]["sql"], "ok", "{}", down.text);

    // While it is down: reservations answer 503 `unavailable`, never 201 or 500,
    // and within a bounded time; so do checkouts and releases, which need the engine.
    let down_buyers: Vec<(String, String)> =
        (0..12).map(|i| (format!("down-{i}"), key())).collect();
    for round in 0..3 {
        let replies = futures::future::join_all(down_buyers.iter().map(|(buyer, k)| {
            let token = app.viewer(buyer);
            let (app, sale) = (&app, &sale);
            async move {
                let t = Instant::now();
                let r = app.reserve(&token, sale, k, &json!({"quantity": 1})).await;
                (r, t.elapsed())
            }
        }))
        .await;
        for (r, took) in replies {
            r.assert_error(503, "unavailable");
            assert!(
                took < REQUEST_BOUND,
                "round {round}: a reservation took {took:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let e0 = &ledger.holds[&early[0]];
    app.reserve(&e0.token, &sale, &key(), &json!({"quantity": 1}))
        .await
        .assert_error(503, "unavailable");
    let e4 = &ledger.holds[&early[4]];
    checkout(&app, &e4.token, &early[4], &key())
        .await
        .assert_error(503, "unavailable");
    let e6 = &ledger.holds[&early[6]];
    app.delete(&format!("/api/v1/holds/{}", early[6]), Some(&e6.token))
        .await
        .assert_error(503, "unavailable");
    app.get(&format!("/api/v1/flash-sales/{sale}"), None)
        .await
        .assert_error(503, "unavailable");
    app.get("/readyz", None).await.assert_status(503);

    // Redis comes back empty on the same port.
    redis.restart_empty().await;

    // As soon as it answers, a buyer pays a hold made before the loss: the engine knows
    // neither the hold nor its sale any more; the sale is rebuilt from SQL and paid.
    let e4 = ledger.holds[&early[4]].clone();
    let since = Instant::now();
    let paid_after = loop {
        let r = checkout(&app, &e4.token, &early[4], &key()).await;
        if r.status != 503 || since.elapsed() > NOTICE {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    paid_after.assert_status(200);
    check_order(&paid_after.body, &early[4], &e4);
    ledger.holds.get_mut(&early[4]).unwrap().order_id = Some(id(&paid_after.body));
    let (paid, held) = (ledger.paid_units(), ledger.held_units());
    assert_eq!((paid, held), (7, 6));
    // Rebuilt as stock − paid − unexpired holds.
    assert_eq!(counts(&app, &sale).await, (stock - paid - held, held, paid));
    let keys = redis
        .command(&[
            "EVAL",
            "return #redis.call('KEYS', ARGV[1])",
            "0",
            &format!("*{sale}*"),
        ])
        .await;
    assert_ne!(
        keys.as_deref(),
        Some("0"),
        "the rebuilt sale lives in Redis again"
    );
    assert!(keys.is_some());

    let (back, _) = await_readyz(&app, NOTICE, "200 after the Redis restart", |r| {
        r.status == 200
    })
    .await;
    eprintln!("readyz 200 {back:?} after the restart");

    // The quiet sale is rebuilt without a request for it: its run-out hold expires and
    // the unit returns.
    let since = Instant::now();
    loop {
        let r = app
            .get(&format!("/api/v1/holds/{quiet_hold}"), Some(&quiet_buyer))
            .await;
        r.assert_status(200);
        if r.body["status"] == "expired" {
            break;
        }
        assert!(
            since.elapsed() < NOTICE,
            "the quiet sale's hold never expired after the loss: {}",
            r.text
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("quiet hold expired {:?} after readyz", since.elapsed());
    assert_eq!(counts(&app, &quiet_sale).await, (3, 0, 0));

    // Each buyer's limit still holds: usage came back with the holds and orders.
    for (i, quantity) in [(1, 1), (4, 2), (5, 1), (6, 2)] {
        let h = &ledger.holds[&early[i]];
        app.reserve(&h.token, &sale, &key(), &json!({"quantity": quantity}))
            .await
            .assert_error(409, "limit_exceeded");
    }
    // A hold made before the loss can still be released.
    let e6 = &ledger.holds[&early[6]];
    let released = app
        .delete(&format!("/api/v1/holds/{}", early[6]), Some(&e6.token))
        .await;
    released.assert_status(200);
    assert_eq!(released.body["status"], "released");
    ledger.released.insert(early[6].clone());
    let e5 = &ledger.holds[&early[5]];
    let read = app
        .get(&format!("/api/v1/holds/{}", early[5]), Some(&e5.token))
        .await;
    assert_eq!(read.body["status"], "held", "{}", read.text);
    let (paid, held) = (ledger.paid_units(), ledger.held_units());
    assert_eq!(counts(&app, &sale).await, (stock - paid - held, held, paid));

    // The keys refused while Redis was down are fresh attempts now: they sell the rest.
    let remaining = stock - paid - held;
    assert_eq!(remaining, 12);
    let mut late = Vec::new();
    for (buyer, k) in &down_buyers {
        late.push(ledger.reserve(&app, buyer, &sale, k, 1).await);
    }
    app.reserve(&app.viewer("too-late"), &sale, &key(), &json!({}))
        .await
        .assert_error(409, "sold_out");
    for hold in &late[..6] {
        ledger.pay(&app, hold).await;
    }

    // The numbers match the test's own count.
    let (remaining, held, sold) = counts(&app, &sale).await;
    assert_eq!(remaining + held + sold, stock);
    assert!(sold <= stock);
    assert_eq!(sold, ledger.paid_units());
    assert_eq!(held, ledger.held_units());
    assert_eq!(remaining, 0);
    for (buyer, units) in ledger.units_by_buyer() {
        assert!(units <= limit, "{buyer} has {units} units");
    }
    check_orders(&app, &owner, &room, &ledger).await;

    // The allocation record lists every hold once, positions continuing after the loss.
    let alloc = app
        .get(
            &format!("/api/v1/flash-sales/{sale}/allocations?limit=500"),
            Some(&owner),
        )
        .await;
    alloc.assert_status(200);
    let items = alloc.body["items"].as_array().unwrap();
    assert_eq!(items.len(), ledger.holds.len());
    let position = |hold: &str| {
        items
            .iter()
            .find(|a| a["hold_id"] == hold)
            .and_then(|a| a["position"].as_u64())
            .unwrap_or_else(|| panic!("{hold} missing from the allocations"))
    };
    let last_early = early.iter().map(|h| position(h)).max().unwrap();
    let first_late = late.iter().map(|h| position(h)).min().unwrap();
    assert!(
        first_late > last_early,
        "positions restarted after the loss"
    );
    let positions: HashSet<u64> = items
        .iter()
        .map(|a| a["position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions.len(), items.len(), "a position given twice");
    eprintln!("took {:?}", started.elapsed());
}

// ------------------------------------------------------------------ R5 -----

#[tokio::test]
async fn process_sql_down_at_payment_orders_wait_in_the_file_journal() {
    sql_down_at_payment(false).await;
}

#[tokio::test]
async fn process_sql_down_at_payment_orders_wait_in_the_redis_journal() {
    sql_down_at_payment(true).await;
}

/// Buyers hold units; PostgreSQL stops while they pay: every checkout answers 200 with
/// an order (journaled) or 503; once PostgreSQL is back, the journal is replayed and
/// every order answered 200 is in SQL exactly once.
async fn sql_down_at_payment(with_redis: bool) {
    let started = Instant::now();
    let Some(mut pg) = PrivatePostgres::start().await else {
        return;
    };
    let redis = if with_redis {
        Some(PrivateRedis::start().await)
    } else {
        None
    };
    eprintln!("servers up after {:?}", started.elapsed());
    // The SQLite test database only lends its temporary folder (the file journal's home).
    let folder = TestDatabase::create_on(TestBackend::Embedded).await;
    let (pg_url, redis_url) = (pg.url(), redis.as_ref().map(PrivateRedis::url));
    let app = spawn_app_on(folder, |s| {
        s.database_url = SecretUrl::new(pg_url);
        s.redis_url = redis_url.map(SecretUrl::new);
        s.reservations_per_user_per_s = 1000;
        s.reservations_burst = 1000;
    })
    .await;
    assert_eq!(
        app.state.flash.backend(),
        if with_redis { "redis" } else { "memory" }
    );
    let owner = app.streamer("coop-sql-loss");
    let stock = 40;
    let (room, sale) = open_sale(&app, &owner, stock, 2, 300).await;

    let mut ledger = Ledger::default();
    let mut holds = Vec::new();
    for i in 0..14 {
        holds.push(
            ledger
                .reserve(&app, &format!("buyer-{i}"), &sale, &key(), 1 + i % 2)
                .await,
        );
    }
    for hold in &holds[..2] {
        ledger.pay(&app, hold).await;
    }
    app.get("/readyz", None).await.assert_status(200);

    // PostgreSQL stops while the other twelve pay, all at once.
    pg.stop().await;
    let down_at = Instant::now();
    let replies = futures::future::join_all(holds[2..].iter().map(|hold| {
        let h = ledger.holds[hold].clone();
        let app = &app;
        async move {
            let t = Instant::now();
            let r = checkout(app, &h.token, hold, &key()).await;
            (hold.clone(), r, t.elapsed())
        }
    }))
    .await;
    let mut journaled = 0;
    let mut refused = Vec::new();
    for (hold, r, took) in replies {
        assert!(took < REQUEST_BOUND, "a checkout took {took:?}");
        match r.status.as_u16() {
            200 => {
                let h = ledger.holds.get_mut(&hold).unwrap();
                check_order(&r.body, &hold, h);
                h.order_id = Some(id(&r.body));
                journaled += 1;
            }
            503 => {
                r.assert_error(503, "unavailable");
                refused.push(hold);
            }
            other => panic!("checkout while SQL is down answered {other}: {}", r.text),
        }
    }
    eprintln!(
        "{journaled} checkouts journaled, {} refused, in {:?}",
        refused.len(),
        down_at.elapsed()
    );
    assert!(journaled > 0, "no order was journaled while SQL was down");

    // A repeat of a journaled payment answers the same order.
    let (hold, h) = ledger
        .holds
        .iter()
        .find(|(hold, h)| h.order_id.is_some() && !holds[..2].contains(hold))
        .unwrap();
    let again = checkout(&app, &h.token, hold, &key()).await;
    again.assert_status(200);
    assert_eq!(again.body["id"], h.order_id.as_deref().unwrap());
    // Reads that need SQL answer 503, never 500.
    app.get(&format!("/api/v1/rooms/{room}/orders"), Some(&owner))
        .await
        .assert_error(503, "unavailable");

    // A buyer who arrives during the outage: the engine may hold the units (their
    // record reaches SQL later) and the payment is journaled like the others.
    let newcomer = app.viewer("newcomer");
    let r = app
        .reserve(&newcomer, &sale, &key(), &json!({"quantity": 1}))
        .await;
    match r.status.as_u16() {
        201 => {
            let hold = id(&r.body);
            let h = Held {
                buyer: "newcomer".into(),
                token: newcomer,
                quantity: 1,
                order_id: None,
            };
            let paid = checkout(&app, &h.token, &hold, &key()).await;
            let order_id = match paid.status.as_u16() {
                200 => {
                    check_order(&paid.body, &hold, &h);
                    journaled += 1;
                    Some(id(&paid.body))
                }
                _ => {
                    paid.assert_error(503, "unavailable");
                    refused.push(hold.clone());
                    None
                }
            };
            eprintln!("newcomer held during the outage, checkout {}", paid.status);
            ledger.holds.insert(hold.clone(), Held { order_id, ..h });
            holds.push(hold);
        }
        _ => {
            r.assert_error(503, "unavailable");
            eprintln!("newcomer refused during the outage");
        }
    }

    // Readiness: 503, SQL named, and the orders waiting in the journal counted.
    let (_, r) = await_readyz(&app, NOTICE, "503 with the journal depth", |r| {
        r.status == 503 && r.body["checks"]["journal_depth"].is_u64()
    })
    .await;
    assert_eq!(r.body["status"], "unavailable");
    assert_ne!(r.body["checks"]["sql"], "ok", "{}", r.text);
    assert_eq!(
        r.body["checks"]["journal_depth"], journaled,
        "one journal entry per order answered: {}",
        r.text
    );

    // PostgreSQL comes back: the journal drains within a few seconds.
    pg.start_again().await;
    let (drained, r) = await_readyz(&app, Duration::from_secs(15), "200, journal empty", |r| {
        r.status == 200
    })
    .await;
    eprintln!("journal replayed {drained:?} after PostgreSQL restarted");
    assert!(
        r.body["checks"].get("journal_depth").is_none(),
        "{}",
        r.text
    );
    assert_eq!(r.body["checks"]["sql"], "ok");

    // The refused payments go through now; repeats answer the same orders.
    for hold in &refused {
        ledger.pay(&app, hold).await;
    }
    for hold in &holds {
        let h = &ledger.holds[hold];
        let r = checkout(&app, &h.token, hold, &key()).await;
        r.assert_status(200);
        assert_eq!(r.body["id"], h.order_id.as_deref().unwrap());
    }

    // Every order answered 200 is in SQL exactly once; the sale counts them sold.
    check_orders(&app, &owner, &room, &ledger).await;
    let sold = ledger.paid_units();
    assert_eq!(counts(&app, &sale).await, (stock - sold, 0, sold));
    eprintln!("took {:?}", started.elapsed());
}
