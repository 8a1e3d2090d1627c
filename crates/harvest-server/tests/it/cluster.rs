//! Several nodes on one Redis and one SQL store: room events keep one gap-free `seq`
//! on every node, chat and presence cross nodes, a buy storm split across nodes never
//! oversells, and a node killed mid-sale loses nothing (RELIABILITY.md R6, R8, R9).
//!
//! Each test runs twice: with the nodes on one Redis server, and on a local Redis
//! Cluster of three masters (`redis_cluster_*`, `process_redis_cluster_*`). Each starts
//! its own Redis, so it runs the same on the embedded pass (SQLite file shared by the
//! nodes) and on the servers pass (PostgreSQL).

use std::path::Path;
use std::time::{Duration, Instant};

use harvest_testkit::{
    HarvestProcess, PrivateRedis, PrivateRedisCluster, TestApp, WsClient, WsItem, spawn_app_with,
};
use serde_json::{Value, json};

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

fn key() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The Redis the nodes share: one server, or a Redis Cluster of three masters.
enum SharedRedis {
    One(PrivateRedis),
    Cluster(PrivateRedisCluster),
}

impl SharedRedis {
    async fn start(cluster: bool) -> Self {
        if cluster {
            Self::Cluster(PrivateRedisCluster::start().await)
        } else {
            Self::One(PrivateRedis::start().await)
        }
    }

    /// `redis_url`: one URL, or the cluster's nodes comma-separated.
    fn url(&self) -> String {
        match self {
            Self::One(r) => r.url(),
            Self::Cluster(c) => c.url(),
        }
    }
}

/// Two in-process nodes sharing `redis`, node B on node A's store and key prefix.
async fn two_nodes(redis: &SharedRedis) -> (TestApp, TestApp) {
    let url = redis.url();
    let a = spawn_app_with(|s| {
        s.redis_url = Some(harvest_server::config::SecretUrl::new(&url));
        s.node_id = "node-a".into();
    })
    .await;
    let database_url = a.state.settings.database_url.expose().to_owned();
    let prefix = a.state.settings.redis_key_prefix.clone();
    let b = spawn_app_with(|s| {
        s.redis_url = Some(harvest_server::config::SecretUrl::new(&url));
        s.database_url = harvest_server::config::SecretUrl::new(&database_url);
        s.redis_key_prefix = prefix;
        s.node_id = "node-b".into();
    })
    .await;
    (a, b)
}

/// A live room of `owner` with a product in its bag: (room, product).
async fn live_room(app: &TestApp, owner: &str) -> (String, String) {
    let room = id(&app.create_room(owner, "cluster").await);
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
    (room, product)
}

/// The next event of type `ty` within `within`.
async fn wait_event(ws: &mut WsClient, ty: &str, within: Duration) -> Value {
    let until = Instant::now() + within;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match ws.try_next(left).await {
            Some(WsItem::Event(e)) if e["type"] == ty => return e,
            Some(WsItem::Event(_)) => {}
            Some(WsItem::Closed(code)) => panic!("closed with {code:?} while waiting for {ty}"),
            None => break,
        }
    }
    panic!("no {ty} within {within:?}")
}

/// Room events (those with a seq) received within `within`.
async fn room_events(ws: &mut WsClient, within: Duration) -> Vec<Value> {
    let until = Instant::now() + within;
    let mut out = Vec::new();
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match ws.try_next(left).await {
            Some(WsItem::Event(e)) if e["seq"].is_u64() => out.push(e),
            Some(WsItem::Event(_)) => {}
            Some(WsItem::Closed(code)) => panic!("closed with {code:?}"),
            None => break,
        }
    }
    out
}

fn seqs(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

#[tokio::test]
async fn cluster_room_events_chat_and_presence_cross_nodes_with_one_seq() {
    room_events_chat_and_presence_cross_nodes_with_one_seq(false).await;
}

#[tokio::test]
async fn redis_cluster_room_events_chat_and_presence_cross_nodes_with_one_seq() {
    room_events_chat_and_presence_cross_nodes_with_one_seq(true).await;
}

async fn room_events_chat_and_presence_cross_nodes_with_one_seq(cluster: bool) {
    let redis = SharedRedis::start(cluster).await;
    let (a, b) = two_nodes(&redis).await;
    let owner = a.streamer("coop-cluster");
    let (room, product) = live_room(&a, &owner).await;

    let mut on_a = WsClient::connect(&a.base_url, &room, "", None).await;
    let fan = b.viewer("fan-b");
    let mut on_b = WsClient::connect(&b.base_url, &room, &format!("token={fan}"), None).await;
    let welcome_a = wait_event(&mut on_a, "session.welcome", Duration::from_secs(5)).await;
    let welcome_b = wait_event(&mut on_b, "session.welcome", Duration::from_secs(5)).await;
    assert_eq!(welcome_a["data"]["epoch"], welcome_b["data"]["epoch"]);
    // A node hears its own room events back from Redis: the room's last events may
    // still be on their way when a viewer joins (longer on a cluster, where they cross
    // the cluster bus), and then follow the welcome. Both viewers end at the same seq.
    let mut positions = Vec::new();
    for (ws, welcome) in [(&mut on_a, &welcome_a), (&mut on_b, &welcome_b)] {
        let mut at = welcome["data"]["last_seq"].as_u64().unwrap();
        for e in room_events(ws, Duration::from_millis(300)).await {
            assert_eq!(e["seq"], at + 1, "gap-free after the welcome: {e}");
            at += 1;
        }
        positions.push(at);
    }
    assert_eq!(positions[0], positions[1], "both viewers at the same seq");
    let last = positions[0];

    // A room event published through node B reaches node A's viewer with the same seq.
    b.post(
        &format!("/api/v1/rooms/{room}/pin"),
        Some(&owner),
        &json!({"product_id": product}),
    )
    .await
    .assert_status(200);
    let pinned_a = wait_event(&mut on_a, "product.pinned", Duration::from_secs(5)).await;
    let pinned_b = wait_event(&mut on_b, "product.pinned", Duration::from_secs(5)).await;
    assert_eq!(pinned_a["seq"], last + 1);
    assert_eq!(pinned_a["seq"], pinned_b["seq"]);
    assert_eq!(pinned_a["data"], pinned_b["data"]);

    // Events published alternately on both nodes keep one gap-free order everywhere.
    for i in 0..6 {
        let node = if i % 2 == 0 { &a } else { &b };
        node.post(
            &format!("/api/v1/rooms/{room}/pin"),
            Some(&owner),
            &json!({"product_id": if i % 3 == 2 { Value::Null } else { json!(product) }}),
        )
        .await
        .assert_status(200);
    }
    let got_a = room_events(&mut on_a, Duration::from_millis(1500)).await;
    let got_b = room_events(&mut on_b, Duration::from_millis(500)).await;
    let expected: Vec<u64> = (last + 2..=last + 7).collect();
    assert_eq!(seqs(&got_a), expected, "node A: {got_a:?}");
    assert_eq!(seqs(&got_b), expected, "node B: {got_b:?}");
    assert_eq!(got_a, got_b, "both nodes deliver the same events");

    // Chat sent on node B reaches node A's viewer.
    on_b.send_json(&json!({"type": "chat.send", "text": "kiwis look great", "ref": "c1"}))
        .await;
    let chat = wait_event(&mut on_a, "chat.message", Duration::from_secs(5)).await;
    assert_eq!(chat["data"]["text"], "kiwis look great");
    assert_eq!(chat["data"]["user_id"], "fan-b");

    // Viewer counts are summed over both nodes: a third viewer joins on node B.
    let _extra = WsClient::connect(&b.base_url, &room, "", None).await;
    let until = Instant::now() + Duration::from_secs(6);
    loop {
        let v = wait_event(&mut on_a, "room.viewers", Duration::from_secs(6)).await;
        if v["data"]["count"] == 3 {
            break;
        }
        assert!(Instant::now() < until, "viewers never summed to 3: {v}");
    }

    // A viewer of node A reconnects to node B with `since` and recovers what it missed.
    let position = got_a.last().unwrap()["seq"].as_u64().unwrap();
    let epoch = welcome_a["data"]["epoch"].as_str().unwrap().to_owned();
    drop(on_a);
    for _ in 0..3 {
        a.post(
            &format!("/api/v1/rooms/{room}/pin"),
            Some(&owner),
            &json!({"product_id": product}),
        )
        .await
        .assert_status(200);
    }
    let mut back = WsClient::connect(
        &b.base_url,
        &room,
        &format!("since={position}&epoch={epoch}"),
        None,
    )
    .await;
    let welcome = wait_event(&mut back, "session.welcome", Duration::from_secs(5)).await;
    assert_eq!(welcome["data"]["recovered"], true, "{welcome}");
    let recovered = room_events(&mut back, Duration::from_millis(1500)).await;
    assert_eq!(
        seqs(&recovered),
        (position + 1..=position + 3).collect::<Vec<_>>()
    );
    b.stop().await;
    a.stop().await;
}

#[tokio::test]
async fn cluster_buy_storm_split_across_two_nodes_never_oversells() {
    buy_storm_split_across_two_nodes_never_oversells(false).await;
}

#[tokio::test]
async fn redis_cluster_buy_storm_split_across_two_nodes_never_oversells() {
    buy_storm_split_across_two_nodes_never_oversells(true).await;
}

async fn buy_storm_split_across_two_nodes_never_oversells(cluster: bool) {
    let redis = SharedRedis::start(cluster).await;
    let (a, b) = two_nodes(&redis).await;
    let owner = a.streamer("coop-storm");
    let (room, product) = live_room(&a, &owner).await;
    let sale = a
        .post(
            &format!("/api/v1/rooms/{room}/flash-sales"),
            Some(&owner),
            &json!({"product_id": product, "price": 990, "stock": 40, "per_user_limit": 1}),
        )
        .await;
    sale.assert_status(201);
    let sale = id(&sale.body);
    let mut tasks = Vec::new();
    for i in 0..120 {
        let node = if i % 2 == 0 {
            a.base_url.clone()
        } else {
            b.base_url.clone()
        };
        let token = a.viewer(&format!("storm-{i}"));
        let sale = sale.clone();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let r = client
                .post(format!("{node}/api/v1/flash-sales/{sale}/reservations"))
                .bearer_auth(token)
                .header("Idempotency-Key", key())
                .json(&json!({"quantity": 1}))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            (status, body)
        }));
    }
    let mut held = 0;
    for t in tasks {
        let (status, body) = t.await.unwrap();
        match status {
            201 => held += 1,
            409 => assert_eq!(body["error"]["code"], "sold_out", "{body}"),
            429 => {}
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(held, 40, "exactly the stock was held");
    for node in [&a, &b] {
        let s = node.get(&format!("/api/v1/flash-sales/{sale}"), None).await;
        assert_eq!(s.body["remaining"], 0);
        assert_eq!(s.body["held"], 40);
        assert_eq!(s.body["status"], "sold_out");
    }
    b.stop().await;
    a.stop().await;
}

const BIN: &str = env!("CARGO_BIN_EXE_harvest");

#[tokio::test]
async fn process_cluster_node_killed_mid_sale_loses_nothing() {
    node_killed_mid_sale_loses_nothing(false).await;
}

#[tokio::test]
async fn process_redis_cluster_node_killed_mid_sale_loses_nothing() {
    node_killed_mid_sale_loses_nothing(true).await;
}

async fn node_killed_mid_sale_loses_nothing(cluster: bool) {
    let redis = SharedRedis::start(cluster).await;
    let database = harvest_testkit::TestDatabase::create().await;
    let redis_url = redis.url();
    let prefix = format!("hv:{}:", uuid::Uuid::now_v7().simple());
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let env = |node: &'static str| {
        vec![
            ("HARVEST_DATABASE_URL", database.url().to_owned()),
            ("HARVEST_REDIS_URL", redis_url.clone()),
            ("HARVEST_REDIS_KEY_PREFIX", prefix.clone()),
            (
                "HARVEST_JWT_SECRET",
                harvest_testkit::TEST_JWT_SECRET.to_owned(),
            ),
            ("HARVEST_NODE_ID", node.to_owned()),
        ]
    };
    let start = |dir: &Path, node: &'static str| {
        let env = env(node);
        let dir = dir.to_owned();
        async move {
            let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            HarvestProcess::start(Path::new(BIN), &dir, &pairs).await
        }
    };
    let node_a = start(dir_a.path(), "node-a").await;
    let node_b = start(dir_b.path(), "node-b").await;
    let auth =
        harvest_server::auth::Authenticator::new(harvest_testkit::TEST_JWT_SECRET.as_bytes())
            .unwrap();
    let token = |sub: &str, role: harvest_server::auth::Role| {
        auth.mint(sub, None, &[role], Duration::from_secs(3600))
    };
    let owner = token("coop-crash", harvest_server::auth::Role::Streamer);
    let http = reqwest::Client::new();
    let call = |url: String, token: &str, body: Option<Value>, idem: bool| {
        let mut req = match &body {
            Some(b) => http.post(url).json(b),
            None => http.post(url),
        }
        .bearer_auth(token);
        if idem {
            req = req.header("Idempotency-Key", key());
        }
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (s, room) = call(
        node_a.url("/api/v1/rooms"),
        &owner,
        Some(json!({"title": "crash"})),
        false,
    )
    .await;
    assert_eq!(s, 201);
    let room = id(&room);
    let (s, product) = call(
        node_a.url("/api/v1/products"),
        &owner,
        Some(json!({"sku": key(), "title": "Yanling peach", "list_price": 2990})),
        false,
    )
    .await;
    assert_eq!(s, 201);
    let product = id(&product);
    assert_eq!(
        call(
            node_a.url(&format!("/api/v1/rooms/{room}/products")),
            &owner,
            Some(json!({"product_id": product})),
            false
        )
        .await
        .0,
        200
    );
    assert_eq!(
        call(
            node_a.url(&format!("/api/v1/rooms/{room}/start")),
            &owner,
            None,
            false
        )
        .await
        .0,
        200
    );
    let (s, sale) = call(
        node_a.url(&format!("/api/v1/rooms/{room}/flash-sales")),
        &owner,
        Some(json!({"product_id": product, "price": 1990, "stock": 10, "per_user_limit": 1, "hold_ttl_s": 2})),
        false,
    )
    .await;
    assert_eq!(s, 201, "{sale}");
    let sale = id(&sale);

    // A viewer watches on node A; buyers hold 4 units there.
    let mut viewer = WsClient::connect(&format!("http://{}", node_a.addr), &room, "", None).await;
    let welcome = wait_event(&mut viewer, "session.welcome", Duration::from_secs(5)).await;
    let epoch = welcome["data"]["epoch"].as_str().unwrap().to_owned();
    let mut seen = welcome["data"]["last_seq"].as_u64().unwrap();
    for e in room_events(&mut viewer, Duration::from_millis(500)).await {
        seen = e["seq"].as_u64().unwrap();
    }
    for i in 0..4 {
        let buyer = token(&format!("early-{i}"), harvest_server::auth::Role::Viewer);
        let (s, body) = call(
            node_a.url(&format!("/api/v1/flash-sales/{sale}/reservations")),
            &buyer,
            Some(json!({})),
            true,
        )
        .await;
        assert_eq!(s, 201, "{body}");
    }
    for e in room_events(&mut viewer, Duration::from_millis(800)).await {
        seen = e["seq"].as_u64().unwrap();
    }

    // Node A dies without a word.
    node_a.signal("KILL");
    drop(viewer);
    drop(node_a);

    // Node B keeps selling: the 6 free units, then sold out; A's holds expire after
    // their 2 s and give their units back, which B sells too.
    let mut held = 0;
    for i in 0..6 {
        let buyer = token(&format!("late-{i}"), harvest_server::auth::Role::Viewer);
        let (s, body) = call(
            node_b.url(&format!("/api/v1/flash-sales/{sale}/reservations")),
            &buyer,
            Some(json!({})),
            true,
        )
        .await;
        assert_eq!(s, 201, "{body}");
        held += 1;
    }
    assert_eq!(held, 6);
    let until = Instant::now() + Duration::from_secs(10);
    let mut again = 0;
    let mut i = 0;
    while again < 4 {
        assert!(
            Instant::now() < until,
            "node A's holds never expired ({again} resold)"
        );
        let buyer = token(&format!("after-{i}"), harvest_server::auth::Role::Viewer);
        i += 1;
        let (s, body) = call(
            node_b.url(&format!("/api/v1/flash-sales/{sale}/reservations")),
            &buyer,
            Some(json!({})),
            true,
        )
        .await;
        match s {
            201 => again += 1,
            409 | 429 => tokio::time::sleep(Duration::from_millis(200)).await,
            other => panic!("unexpected {other}: {body}"),
        }
    }
    let s: Value = http
        .get(node_b.url(&format!("/api/v1/flash-sales/{sale}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        s["held"].as_i64().unwrap()
            + s["sold"].as_i64().unwrap()
            + s["remaining"].as_i64().unwrap(),
        10
    );
    assert!(s["held"].as_i64().unwrap() <= 10);

    // A's viewer reconnects to B with `since` and recovers every room event it missed.
    let mut back = WsClient::connect(
        &format!("http://{}", node_b.addr),
        &room,
        &format!("since={seen}&epoch={epoch}"),
        None,
    )
    .await;
    let welcome = wait_event(&mut back, "session.welcome", Duration::from_secs(5)).await;
    assert_eq!(welcome["data"]["recovered"], true, "{welcome}");
    let last = welcome["data"]["last_seq"].as_u64().unwrap();
    assert!(last > seen, "events happened while the viewer was away");
    let missed = room_events(&mut back, Duration::from_millis(1500)).await;
    let got = seqs(&missed);
    assert_eq!(got.first().copied(), Some(seen + 1), "{missed:?}");
    assert!(
        got.windows(2).all(|w| w[1] == w[0] + 1),
        "gap-free: {got:?}"
    );
    assert!(got.last().copied().unwrap() >= last);
}

#[tokio::test]
async fn cluster_contest_counts_orders_paid_through_either_node_with_one_score_pusher() {
    contest_counts_orders_paid_through_either_node_with_one_score_pusher(false).await;
}

#[tokio::test]
async fn redis_cluster_contest_counts_orders_paid_through_either_node_with_one_score_pusher() {
    contest_counts_orders_paid_through_either_node_with_one_score_pusher(true).await;
}

async fn contest_counts_orders_paid_through_either_node_with_one_score_pusher(cluster: bool) {
    let redis = SharedRedis::start(cluster).await;
    let (a, b) = two_nodes(&redis).await;
    let kiwi = a.streamer("kiwi-x");
    let orange = a.streamer("orange-x");
    let (room_k, product_k) = live_room(&a, &kiwi).await;
    let (room_o, product_o) = live_room(&a, &orange).await;
    let mut sales = Vec::new();
    for (room, product, owner) in [(&room_k, &product_k, &kiwi), (&room_o, &product_o, &orange)] {
        let s = a
            .post(
                &format!("/api/v1/rooms/{room}/flash-sales"),
                Some(owner),
                &json!({"product_id": product, "price": 1000, "stock": 100, "per_user_limit": 10}),
            )
            .await;
        s.assert_status(201);
        sales.push(id(&s.body));
    }
    let organizer = a.organizer("festival-x");
    let now = chrono::Utc::now();
    let c = a
        .post(
            "/api/v1/contests",
            Some(&organizer),
            &json!({
                "title": "two nodes",
                "starts_at": (now - chrono::Duration::seconds(1)).to_rfc3339(),
                "ends_at": (now + chrono::Duration::seconds(60)).to_rfc3339(),
                "participants": [
                    {"name": "kiwi", "owner_id": "kiwi-x", "room_ids": [room_k]},
                    {"name": "orange", "owner_id": "orange-x", "room_ids": [room_o]}],
                "scoring": {"metrics": [{"metric": "paid_gmv", "weight": 100}]}
            }),
        )
        .await;
    c.assert_status(201);
    let contest = id(&c.body);
    let team_k = c.body["participants"][0]["id"].as_str().unwrap().to_owned();
    let team_o = c.body["participants"][1]["id"].as_str().unwrap().to_owned();
    let mut viewer_k = WsClient::connect(&b.base_url, &room_k, "", None).await;
    let mut viewer_o = WsClient::connect(&a.base_url, &room_o, "", None).await;
    wait_event(&mut viewer_k, "room.snapshot", Duration::from_secs(5)).await;
    wait_event(&mut viewer_o, "room.snapshot", Duration::from_secs(5)).await;
    let m = a
        .post(
            &format!("/api/v1/contests/{contest}/matches"),
            Some(&organizer),
            &json!({"participant_ids": [team_k, team_o], "duration_s": 10}),
        )
        .await;
    m.assert_status(201);
    let match_id = id(&m.body);
    // Kiwi buyers pay through node B, orange buyers through node A: 3 against 2.
    for (i, (node, sale)) in [
        (&b, &sales[0]),
        (&b, &sales[0]),
        (&b, &sales[0]),
        (&a, &sales[1]),
        (&a, &sales[1]),
    ]
    .into_iter()
    .enumerate()
    {
        let buyer = node.viewer(&format!("x-buyer-{i}"));
        let hold = node.reserve(&buyer, sale, &key(), &json!({})).await;
        hold.assert_status(201);
        node.request_with(
            reqwest::Method::POST,
            &format!("/api/v1/holds/{}/checkout", id(&hold.body)),
            Some(&buyer),
            &[("Idempotency-Key", &key())],
            Some(&json!({"method": "simulated"})),
        )
        .await
        .assert_status(200);
    }
    // Node A created the contest; within a few seconds its standings include the
    // orders paid through node B, and so do node B's.
    for node in [&a, &b] {
        let until = Instant::now() + Duration::from_secs(6);
        loop {
            let s = node
                .get(&format!("/api/v1/contests/{contest}/standings"), None)
                .await;
            s.assert_status(200);
            let gmv = |p: &str| {
                s.body["rows"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|r| r["participant_id"] == p)
                    .map(|r| r["metrics"]["paid_gmv"].as_i64().unwrap())
            };
            if gmv(&team_k) == Some(3000) && gmv(&team_o) == Some(2000) {
                break;
            }
            assert!(
                Instant::now() < until,
                "standings never counted both nodes: {}",
                s.body
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // One node pushes the score bar: at most two pk.score a second in each room, and
    // one pk.ended with the kiwi team ahead.
    for viewer in [&mut viewer_k, &mut viewer_o] {
        let until = Instant::now() + Duration::from_secs(14);
        let mut scores = Vec::new();
        let mut ended = Vec::new();
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match viewer.try_next(left).await {
                Some(WsItem::Event(e)) if e["type"] == "pk.score" => scores.push(e),
                Some(WsItem::Event(e)) if e["type"] == "pk.ended" => {
                    ended.push(e);
                    break;
                }
                Some(WsItem::Event(_)) => {}
                Some(WsItem::Closed(code)) => panic!("closed with {code:?}"),
                None => break,
            }
        }
        assert_eq!(ended.len(), 1, "one pk.ended");
        assert_eq!(ended[0]["data"]["match"]["id"], match_id.as_str());
        assert_eq!(ended[0]["data"]["match"]["winner_ids"], json!([team_k]));
        for pair in scores.windows(2) {
            let gap = pair[1]["ts"].as_i64().unwrap() - pair[0]["ts"].as_i64().unwrap();
            assert!(gap >= 500, "pk.score {gap} ms apart: one pusher at a time");
        }
    }
    b.stop().await;
    a.stop().await;
}
