//! The WebSocket protocol end to end: real clients against the real server.

use std::time::Duration;

use harvest_testkit::{TestApp, WsClient, WsItem, spawn_app, spawn_app_with};
use serde_json::{Value, json};

async fn live_room(app: &TestApp, owner: &str) -> (String, String) {
    let token = app.streamer(owner);
    let room = app.create_room(&token, "live").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    (token, room)
}

fn seq(e: &Value) -> u64 {
    e["seq"].as_u64().unwrap_or_else(|| panic!("no seq in {e}"))
}

#[tokio::test]
async fn welcome_snapshot_then_room_events_in_seq_order() {
    let app = spawn_app().await;
    let (s, room) = live_room(&app, "owner").await;
    let product = app.create_product(&s, "kiwi").await;
    let pid = product["id"].as_str().unwrap();
    app.post(
        &format!("/api/v1/rooms/{room}/products"),
        Some(&s),
        &json!({"product_id": pid}),
    )
    .await
    .assert_status(200);

    let mut ws = WsClient::connect(&app.base_url, &room, "", None).await;
    assert_eq!(
        ws.protocol, None,
        "no subprotocol offered: JSON, none selected"
    );
    let welcome = ws.event().await;
    assert_eq!(welcome["type"], "session.welcome");
    assert!(welcome.get("seq").is_none());
    let w = &welcome["data"];
    assert_eq!(w["room_id"], room.as_str());
    assert!(w["user_id"].is_null());
    assert_eq!(w["recovered"], false);
    assert_eq!(w["last_seq"], 1, "the bag change was event 1");
    let snapshot = ws.event().await;
    assert_eq!(snapshot["type"], "room.snapshot");
    let snap = &snapshot["data"];
    assert_eq!(snap["room"]["id"], room.as_str());
    assert_eq!(snap["products"][0]["id"], pid);
    assert!(snap["pinned_product"].is_null());
    assert_eq!(snap["sales"], json!([]));
    assert!(snap["match"].is_null());
    assert_eq!(snap["standings"], json!([]));

    app.post(&format!("/api/v1/rooms/{room}/start"), Some(&s), &json!({}))
        .await
        .assert_status(200);
    app.post(
        &format!("/api/v1/rooms/{room}/pin"),
        Some(&s),
        &json!({"product_id": pid}),
    )
    .await
    .assert_status(200);
    app.delete(&format!("/api/v1/rooms/{room}/products/{pid}"), Some(&s))
        .await
        .assert_status(200);
    let status = ws.event_of("room.status").await;
    assert_eq!(seq(&status), 2);
    assert_eq!(status["data"], json!({"status": "live"}));
    assert!(status["ts"].as_i64().unwrap() > 1_700_000_000_000);
    let pinned = ws.event_of("product.pinned").await;
    assert_eq!(seq(&pinned), 3);
    assert_eq!(pinned["data"]["product"]["id"], pid);
    let bag = ws.event_of("room.products").await;
    assert_eq!(seq(&bag), 4);
    assert_eq!(bag["data"], json!({"product_ids": []}));
    let unpinned = ws.event_of("product.pinned").await;
    assert_eq!(seq(&unpinned), 5);
    assert!(unpinned["data"]["product"].is_null());

    // The same log over HTTP, once persisted.
    let mut log = Value::Null;
    for _ in 0..50 {
        log = app
            .get(&format!("/api/v1/rooms/{room}/events?after_seq=1"), None)
            .await
            .body;
        if log["items"].as_array().is_some_and(|i| i.len() == 4) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(log["epoch"], w["epoch"]);
    assert_eq!(log["last_seq"], 5);
    let items = log["items"].as_array().unwrap();
    assert_eq!(items.iter().map(seq).collect::<Vec<_>>(), vec![2, 3, 4, 5]);
    assert_eq!(items[0], status);
    let limited = app
        .get(&format!("/api/v1/rooms/{room}/events?limit=1"), None)
        .await
        .body;
    assert_eq!(limited["items"].as_array().unwrap().len(), 1);
    assert_eq!(limited["last_seq"], 5);
    app.get(&format!("/api/v1/rooms/{room}/events?after_seq=-1"), None)
        .await
        .assert_error(400, "bad_request");
}

#[tokio::test]
async fn reconnecting_with_since_recovers_exactly_the_missed_events() {
    let app = spawn_app().await;
    let (s, room) = live_room(&app, "owner").await;
    let mut ws = WsClient::connect(&app.base_url, &room, "", None).await;
    let welcome = ws.event().await;
    let epoch = welcome["data"]["epoch"].as_str().unwrap().to_owned();
    ws.event_of("room.snapshot").await;
    app.post(&format!("/api/v1/rooms/{room}/start"), Some(&s), &json!({}))
        .await
        .assert_status(200);
    let seen = seq(&ws.event_of("room.status").await);
    ws.close().await;

    // Missed while away.
    let mut products = Vec::new();
    for i in 0..3 {
        let p = app.create_product(&s, &format!("p{i}")).await;
        let pid = p["id"].as_str().unwrap().to_owned();
        app.post(
            &format!("/api/v1/rooms/{room}/products"),
            Some(&s),
            &json!({"product_id": pid}),
        )
        .await
        .assert_status(200);
        products.push(pid);
    }
    let mut ws = WsClient::connect(
        &app.base_url,
        &room,
        &format!("since={seen}&epoch={epoch}"),
        None,
    )
    .await;
    let welcome = ws.event().await;
    assert_eq!(welcome["data"]["recovered"], true);
    assert_eq!(welcome["data"]["last_seq"], seen + 3);
    for (i, expected) in (seen + 1..=seen + 3).enumerate() {
        let e = ws.event().await;
        assert_eq!(e["type"], "room.products", "{e}");
        assert_eq!(seq(&e), expected);
        assert_eq!(e["data"]["product_ids"].as_array().unwrap().len(), i + 1);
    }
    // Then live events continue the sequence.
    app.post(&format!("/api/v1/rooms/{room}/end"), Some(&s), &json!({}))
        .await
        .assert_status(200);
    assert_eq!(seq(&ws.event_of("room.status").await), seen + 4);

    // A wrong epoch gets a snapshot instead.
    let mut ws = WsClient::connect(
        &app.base_url,
        &room,
        &format!("since={seen}&epoch=bogus"),
        None,
    )
    .await;
    assert_eq!(ws.event().await["data"]["recovered"], false);
    assert_eq!(ws.event().await["type"], "room.snapshot");
}

#[tokio::test]
async fn refused_connections_close_with_their_code() {
    let app = spawn_app().await;
    let (s, room) = live_room(&app, "owner").await;
    let mut ws = WsClient::connect(&app.base_url, &room, "token=garbage", None).await;
    assert_eq!(
        ws.next(Duration::from_secs(10)).await,
        WsItem::Closed(Some(4001))
    );
    let mut ws = WsClient::connect(
        &app.base_url,
        "01a2283d-a686-731c-9bef-ac8219437b7f",
        "",
        None,
    )
    .await;
    assert_eq!(
        ws.next(Duration::from_secs(10)).await,
        WsItem::Closed(Some(4004))
    );

    // A ban closes the open connection with 4003 and refuses the next one.
    let troll = app.viewer("troll");
    let mut open = WsClient::connect(&app.base_url, &room, &format!("token={troll}"), None).await;
    assert_eq!(open.event().await["type"], "session.welcome");
    app.post(
        &format!("/api/v1/rooms/{room}/moderation/bans"),
        Some(&s),
        &json!({"user_id": "troll"}),
    )
    .await
    .assert_status(204);
    assert_eq!(open.closed().await, Some(4003));
    let mut again = WsClient::connect(&app.base_url, &room, &format!("token={troll}"), None).await;
    assert_eq!(
        again.next(Duration::from_secs(10)).await,
        WsItem::Closed(Some(4003))
    );
    // Anonymous watching still works, and the query is validated before the upgrade.
    let mut anon = WsClient::connect(&app.base_url, &room, "", None).await;
    assert_eq!(anon.event().await["type"], "session.welcome");
    let r = app.get(&format!("/ws/rooms/{room}?since=x"), None).await;
    r.assert_error(400, "bad_request");
}

#[tokio::test]
async fn chat_flows_masked_and_bad_frames_get_errors() {
    let app = spawn_app_with(|s| s.chat_sensitive_words = vec!["scam".into()]).await;
    let (s, room) = live_room(&app, "owner").await;
    let alice = app.viewer("alice");
    let mut watcher = WsClient::connect(&app.base_url, &room, "", None).await;
    watcher.event_of("room.snapshot").await;
    let mut ws = WsClient::connect(&app.base_url, &room, &format!("token={alice}"), None).await;
    ws.event_of("room.snapshot").await;

    ws.send_json(
        &json!({"type": "chat.send", "text": "  this is no SCAM, buy kiwis  ", "ref": "c1"}),
    )
    .await;
    let msg = watcher.event_of("chat.message").await;
    assert!(msg.get("seq").is_none(), "chat is social: no seq");
    assert_eq!(msg["data"]["user_id"], "alice");
    assert_eq!(msg["data"]["name"], "alice");
    assert_eq!(msg["data"]["text"], "this is no ****, buy kiwis");
    let message_id = msg["data"]["id"].as_str().unwrap().to_owned();

    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"type": "chat.send", "text": "   ", "ref": "e1"}),
            "empty_text",
        ),
        (
            json!({"type": "chat.send", "text": "长".repeat(201), "ref": "e2"}),
            "text_too_long",
        ),
        (json!({"type": "dance", "ref": "e3"}), "unknown_type"),
        (
            json!({"type": "like", "count": 0, "ref": "e4"}),
            "bad_frame",
        ),
        (
            json!({"type": "like", "count": 1e40, "ref": "e5"}),
            "bad_frame",
        ),
        (
            json!({"type": "chat.send", "text": 7, "ref": "e6"}),
            "bad_frame",
        ),
    ];
    for (frame, code) in &cases {
        ws.send_json(frame).await;
        let e = ws.event_of("error").await;
        assert_eq!(e["data"]["code"], *code, "{frame}: {e}");
        assert_eq!(e["data"]["ref"], frame["ref"]);
    }
    ws.send_text("not json").await;
    let e = ws.event_of("error").await;
    assert_eq!(e["data"]["code"], "bad_frame");
    assert!(e["data"]["ref"].is_null());
    ws.send_binary(vec![1, 2, 3]).await;
    assert_eq!(ws.event_of("error").await["data"]["code"], "bad_frame");
    ws.send_text(&format!(
        r#"{{"type":"ping","nonce":"{}"}}"#,
        "x".repeat(5000)
    ))
    .await;
    assert_eq!(ws.event_of("error").await["data"]["code"], "too_large");
    // The connection still works.
    ws.send_json(&json!({"type": "ping", "nonce": "n-1"})).await;
    assert_eq!(ws.event_of("pong").await["data"], json!({"nonce": "n-1"}));

    // Anonymous viewers may not chat or like.
    watcher
        .send_json(&json!({"type": "chat.send", "text": "hi", "ref": "a"}))
        .await;
    assert_eq!(
        watcher.event_of("error").await["data"]["code"],
        "unauthorized"
    );
    watcher
        .send_json(&json!({"type": "like", "count": 1}))
        .await;
    assert_eq!(
        watcher.event_of("error").await["data"]["code"],
        "unauthorized"
    );

    // Deleting a message is a room event.
    app.delete(&format!("/api/v1/rooms/{room}/chat/{message_id}"), Some(&s))
        .await
        .assert_status(204);
    let deleted = watcher.event_of("chat.deleted").await;
    assert_eq!(deleted["data"], json!({"message_id": message_id}));
    assert!(deleted["seq"].is_u64());

    // Muted users get `muted`.
    app.post(
        &format!("/api/v1/rooms/{room}/moderation/mutes"),
        Some(&s),
        &json!({"user_id": "alice", "duration_s": 60}),
    )
    .await
    .assert_status(204);
    ws.send_json(&json!({"type": "chat.send", "text": "hello?", "ref": "m"}))
        .await;
    assert_eq!(ws.event_of("error").await["data"]["code"], "muted");
}

#[tokio::test]
async fn chat_is_rate_limited_per_user() {
    let app = spawn_app().await;
    let (_, room) = live_room(&app, "owner").await;
    let bob = app.viewer("bob");
    let mut ws = WsClient::connect(&app.base_url, &room, &format!("token={bob}"), None).await;
    ws.event_of("room.snapshot").await;
    for i in 0..8 {
        ws.send_json(
            &json!({"type": "chat.send", "text": format!("m{i}"), "ref": format!("r{i}")}),
        )
        .await;
    }
    let mut limited = 0;
    let mut echoed = 0;
    while let Some(WsItem::Event(e)) = ws.try_next(Duration::from_millis(1500)).await {
        match e["type"].as_str().unwrap() {
            "error" => {
                assert_eq!(e["data"]["code"], "rate_limited");
                limited += 1;
            }
            "chat.message" => echoed += 1,
            _ => {}
        }
    }
    assert!(
        (5..=6).contains(&echoed),
        "burst of 5 (plus one refill): {echoed}"
    );
    assert_eq!(echoed + limited, 8);
}

#[tokio::test]
async fn twenty_one_bad_frames_close_the_connection_with_1008() {
    let app = spawn_app().await;
    let (_, room) = live_room(&app, "owner").await;
    let mut ws = WsClient::connect(&app.base_url, &room, "", None).await;
    ws.event_of("room.snapshot").await;
    for _ in 0..21 {
        ws.send_text("{").await;
    }
    let mut errors = 0;
    let code = loop {
        match ws.next(Duration::from_secs(10)).await {
            WsItem::Event(e) if e["type"] == "error" => errors += 1,
            WsItem::Event(_) => {}
            WsItem::Closed(code) => break code,
        }
    };
    assert_eq!(code, Some(1008));
    assert!(errors >= 20, "{errors}");
    // The server is fine.
    app.get("/healthz", None).await.assert_status(200);
}

#[tokio::test]
async fn likes_and_viewer_counts_are_pushed() {
    let app = spawn_app().await;
    let (_, room) = live_room(&app, "owner").await;
    let carol = app.viewer("carol");
    let mut ws = WsClient::connect(&app.base_url, &room, &format!("token={carol}"), None).await;
    ws.event_of("room.snapshot").await;
    let _second = WsClient::connect(&app.base_url, &room, "", None).await;
    let viewers = ws.event_of("room.viewers").await;
    assert!(viewers["data"]["count"].as_u64().unwrap() >= 1);
    ws.send_json(&json!({"type": "like", "count": 3})).await;
    ws.send_json(&json!({"type": "like", "count": 4})).await;
    loop {
        let likes = ws.event_of("likes").await;
        if likes["data"]["total"] == 7 {
            break;
        }
        assert!(likes["data"]["total"].as_u64().unwrap() < 7);
    }
    let owner = app.streamer("owner");
    let stats = app
        .get(&format!("/api/v1/rooms/{room}/stats"), Some(&owner))
        .await;
    stats.assert_status(200);
    assert_eq!(stats.body["likes"], 7);
    assert_eq!(stats.body["viewers_now"], 2);
    assert_eq!(stats.body["viewers_unique"], 1);
    assert_eq!(stats.body["conversion"], 0.0);
}

#[tokio::test]
async fn protobuf_sessions_get_binary_frames_of_the_same_events() {
    let app = spawn_app().await;
    let (s, room) = live_room(&app, "owner").await;
    let mut ws = WsClient::connect(&app.base_url, &room, "", Some("harvest.v1.protobuf")).await;
    assert_eq!(ws.protocol.as_deref(), Some("harvest.v1.protobuf"));
    assert!(ws.is_protobuf());
    assert_eq!(ws.event().await["type"], "session.welcome");
    assert_eq!(ws.event().await["type"], "room.snapshot");
    app.post(&format!("/api/v1/rooms/{room}/start"), Some(&s), &json!({}))
        .await
        .assert_status(200);
    let status = ws.event_of("room.status").await;
    assert_eq!(status["data"]["status"], "live");
    assert_eq!(seq(&status), 1);
    // A text frame in a protobuf session is a bad frame, answered in protobuf.
    ws.send_text("{}").await;
    assert_eq!(ws.event_of("error").await["data"]["code"], "bad_frame");
    let ping = harvest_proto::ws::encode_client_proto(&harvest_proto::ws::ClientFrame::Ping(
        harvest_proto::ws::Ping {
            nonce: "pb".into(),
            r#ref: None,
        },
    ));
    ws.send_binary(ping.to_vec()).await;
    assert_eq!(ws.event_of("pong").await["data"]["nonce"], "pb");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_with_4008_and_others_get_everything() {
    let app = spawn_app_with(|s| s.ws_outbound_queue_bytes = 64 * 1024).await;
    let (s, room) = live_room(&app, "owner").await;
    let product = app.create_product(&s, "big").await;
    let pid = product["id"].as_str().unwrap().to_owned();
    app.post(
        &format!("/api/v1/rooms/{room}/products"),
        Some(&s),
        &json!({"product_id": pid}),
    )
    .await
    .assert_status(200);
    let mut slow = WsClient::connect(&app.base_url, &room, "", None).await;
    slow.event_of("room.snapshot").await;
    let mut fast = WsClient::connect(&app.base_url, &room, "", None).await;
    fast.event_of("room.snapshot").await;
    // Publish far more than socket buffers hold while `slow` reads nothing.
    let publisher = {
        let live = app.state.live.clone();
        let room = room.clone();
        let p = app.state.store.product(&pid).await.unwrap();
        tokio::spawn(async move {
            for _ in 0..20_000 {
                live.publish(
                    &room,
                    harvest_proto::ws::ProductPinned {
                        product: Some(p.clone()),
                    },
                )
                .await
                .unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    let mut last = 0;
    while last < 20_001 {
        let e = fast.event_of("product.pinned").await;
        let s = seq(&e);
        assert!(s > last, "strictly increasing");
        if last > 0 {
            assert_eq!(s, last + 1, "no gap");
        }
        last = s;
    }
    publisher.await.unwrap();
    assert!(fast.batches > 0, "a backlog goes out in batches");
    assert_eq!(slow.closed().await, Some(4008));
    let metrics = app.get("/metrics", None).await.text;
    assert!(
        metrics.contains("harvest_slow_consumer_disconnects_total"),
        "{metrics}"
    );
}

#[tokio::test]
async fn shutdown_closes_websockets_with_1001() {
    let app = spawn_app().await;
    let (_, room) = live_room(&app, "owner").await;
    let mut ws = WsClient::connect(&app.base_url, &room, "", None).await;
    ws.event_of("room.snapshot").await;
    let stop = tokio::spawn(app.stop());
    assert_eq!(ws.closed().await, Some(1001));
    stop.await.unwrap();
}

#[tokio::test]
async fn a_restarted_node_resumes_the_sequence_and_recovery() {
    let app = spawn_app().await;
    let (s, room) = live_room(&app, "owner").await;
    let mut ws = WsClient::connect(&app.base_url, &room, "", None).await;
    let epoch = ws.event().await["data"]["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    ws.event_of("room.snapshot").await;
    app.post(&format!("/api/v1/rooms/{room}/start"), Some(&s), &json!({}))
        .await
        .assert_status(200);
    let seen = seq(&ws.event_of("room.status").await);
    let p = app.create_product(&s, "after").await;
    let pid = p["id"].as_str().unwrap().to_owned();
    app.post(
        &format!("/api/v1/rooms/{room}/products"),
        Some(&s),
        &json!({"product_id": pid}),
    )
    .await
    .assert_status(200);
    // The server stops (clients get 1001) and a new one starts on the same database.
    let database = app.stop_keep_database().await;
    assert_eq!(ws.closed().await, Some(1001));
    let app = harvest_testkit::spawn_app_on(database, |_| {}).await;
    let mut ws = WsClient::connect(
        &app.base_url,
        &room,
        &format!("since={seen}&epoch={epoch}"),
        None,
    )
    .await;
    let welcome = ws.event().await;
    assert_eq!(welcome["data"]["epoch"], epoch.as_str());
    assert_eq!(welcome["data"]["recovered"], true, "{welcome}");
    let missed = ws.event().await;
    assert_eq!(missed["type"], "room.products");
    assert_eq!(seq(&missed), seen + 1);
    app.post(&format!("/api/v1/rooms/{room}/end"), Some(&s), &json!({}))
        .await
        .assert_status(200);
    assert_eq!(seq(&ws.event_of("room.status").await), seen + 2);
}

#[tokio::test]
async fn the_test_publish_path_is_off_unless_configured() {
    let app = spawn_app().await;
    let (_, room) = live_room(&app, "owner").await;
    let r = app
        .post(
            &format!("/api/v1/admin/rooms/{room}/test-events"),
            Some(&app.admin("admin")),
            &json!({"text": "hello"}),
        )
        .await;
    r.assert_status(404);
    assert_eq!(r.error_code(), Some("not_found"));
    assert!(r.text.contains("test_publish"), "{}", r.text);
}

#[tokio::test]
async fn a_busy_room_sends_its_events_in_batches_to_json_and_protobuf_sessions() {
    // A long window, so that events published back to back surely share it.
    let app = spawn_app_with(|s| {
        s.test_publish = true;
        s.room_batch_window_ms = 300;
    })
    .await;
    let (s, room) = live_room(&app, "owner").await;
    app.post(&format!("/api/v1/rooms/{room}/start"), Some(&s), &json!({}))
        .await
        .assert_status(200);
    let mut json_ws = WsClient::connect(&app.base_url, &room, "", None).await;
    let mut proto_ws =
        WsClient::connect(&app.base_url, &room, "", Some("harvest.v1.protobuf")).await;
    for ws in [&mut json_ws, &mut proto_ws] {
        assert_eq!(ws.event().await["type"], "session.welcome");
        assert_eq!(ws.event().await["type"], "room.snapshot");
    }
    let admin = app.admin("admin");
    let path = format!("/api/v1/admin/rooms/{room}/test-events");
    // Bad input is refused and publishes nothing.
    let r = app
        .post(&path, Some(&admin), &json!({"text": "x".repeat(4097)}))
        .await;
    r.assert_status(400);
    assert_eq!(r.error_code(), Some("bad_request"));
    app.post(&path, Some(&app.streamer("owner")), &json!({"text": "t"}))
        .await
        .assert_status(403);
    let mut seqs = Vec::new();
    for i in 0..6 {
        let r = app
            .post(&path, Some(&admin), &json!({"text": format!("m{i}")}))
            .await;
        r.assert_status(200);
        seqs.push(r.body["seq"].as_u64().unwrap());
    }
    assert_eq!(seqs, (2..=7).collect::<Vec<_>>(), "room.status was seq 1");
    for ws in [&mut json_ws, &mut proto_ws] {
        let mut got = Vec::new();
        while got.len() < 6 {
            let e = ws.event().await;
            assert_eq!(e["type"], "test.message", "{e}");
            got.push((seq(&e), e["data"]["text"].as_str().unwrap().to_owned()));
        }
        let want: Vec<(u64, String)> = (0..6).map(|i| (i + 2, format!("m{i}"))).collect();
        assert_eq!(got, want);
        assert!(ws.batches >= 1, "events close together share a frame");
    }
    // They are in the room's event log like any room event (written behind).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let log = app
            .get(&format!("/api/v1/rooms/{room}/events?after_seq=1"), None)
            .await;
        let types: Vec<String> = log.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_owned())
            .collect();
        if types.len() == 6 || std::time::Instant::now() > deadline {
            assert_eq!(types, vec!["test.message"; 6]);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
