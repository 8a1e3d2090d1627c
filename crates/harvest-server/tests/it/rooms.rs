use harvest_testkit::{TestApp, spawn_app};
use serde_json::{Value, json};

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn room_lifecycle_scheduled_live_ended() {
    let app = spawn_app().await;
    let s = app.streamer("official-huayuan");
    let r = app
        .post(
            "/api/v1/rooms",
            Some(&s),
            &json!({
                "title": "Huayuan kiwi harvest live",
                "description": "Straight from the orchard\nfree shipping",
                "scheduled_start": "2026-09-19T10:00:00+08:00",
                "playback_url": "https://cdn.example/live/huayuan.m3u8"
            }),
        )
        .await;
    r.assert_status(201);
    let room = r.body.clone();
    assert_eq!(room["status"], "scheduled");
    assert_eq!(room["streamer_id"], "official-huayuan");
    assert_eq!(room["scheduled_start"], "2026-09-19T02:00:00Z");
    assert!(room["started_at"].is_null() && room["ended_at"].is_null());
    let rid = id(&room);

    let detail = app.get(&format!("/api/v1/rooms/{rid}"), None).await;
    detail.assert_status(200);
    assert_eq!(detail.body["title"], room["title"]);
    assert_eq!(
        detail.body["live"],
        json!({"viewers": 0, "likes": 0, "pinned_product_id": null, "product_ids": [],
               "active_sale_ids": [], "match_id": null})
    );

    let live = app
        .post(&format!("/api/v1/rooms/{rid}/start"), Some(&s), &json!({}))
        .await;
    live.assert_status(200);
    assert_eq!(live.body["status"], "live");
    assert!(live.body["started_at"].is_string());
    app.post(&format!("/api/v1/rooms/{rid}/start"), Some(&s), &json!({}))
        .await
        .assert_error(409, "invalid_state");

    let listed = app.get("/api/v1/rooms?status=live", None).await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(
        app.get("/api/v1/rooms?status=scheduled", None).await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        0
    );

    let ended = app
        .post(&format!("/api/v1/rooms/{rid}/end"), Some(&s), &json!({}))
        .await;
    ended.assert_status(200);
    assert_eq!(ended.body["status"], "ended");
    assert!(ended.body["ended_at"].is_string());
    let again = app
        .post(&format!("/api/v1/rooms/{rid}/end"), Some(&s), &json!({}))
        .await;
    again.assert_error(409, "invalid_state");
    assert_eq!(again.body["error"]["details"]["status"], "ended");
    app.post(&format!("/api/v1/rooms/{rid}/start"), Some(&s), &json!({}))
        .await
        .assert_error(409, "invalid_state");

    // A scheduled room may end without going live.
    let other = app.create_room(&s, "cancelled").await;
    app.post(
        &format!("/api/v1/rooms/{}/end", id(&other)),
        Some(&s),
        &json!({}),
    )
    .await
    .assert_status(200);
    let mine = app
        .get("/api/v1/rooms?streamer=official-huayuan&status=ended", None)
        .await;
    assert_eq!(mine.body["items"].as_array().unwrap().len(), 2);
}

async fn room_with_products(app: &TestApp, owner: &str, n: usize) -> (String, String, Vec<String>) {
    let token = app.streamer(owner);
    let room = id(&app.create_room(&token, "bag").await);
    let mut products = Vec::new();
    for i in 0..n {
        products.push(id(&app
            .create_product(&token, &format!("{owner}-{i}"))
            .await));
    }
    (token, room, products)
}

#[tokio::test]
async fn product_bag_keeps_order_and_ignores_repeats() {
    let app = spawn_app().await;
    let (s, room, p) = room_with_products(&app, "s", 3).await;
    let bag = format!("/api/v1/rooms/{room}/products");
    for pid in [&p[2], &p[0], &p[2], &p[1]] {
        app.post(&bag, Some(&s), &json!({"product_id": pid}))
            .await
            .assert_status(200);
    }
    let detail = app.get(&format!("/api/v1/rooms/{room}"), None).await;
    assert_eq!(
        detail.body["live"]["product_ids"],
        json!([p[2], p[0], p[1]])
    );

    let r = app.delete(&format!("{bag}/{}", p[0]), Some(&s)).await;
    r.assert_status(200);
    assert_eq!(r.body, json!({"product_ids": [p[2], p[1]]}));
    app.delete(&format!("{bag}/{}", p[0]), Some(&s))
        .await
        .assert_error(404, "not_found");
    // Re-adding puts it at the end.
    let r = app.post(&bag, Some(&s), &json!({"product_id": p[0]})).await;
    assert_eq!(r.body, json!({"product_ids": [p[2], p[1], p[0]]}));
}

#[tokio::test]
async fn pinning_requires_the_bag_and_removal_unpins() {
    let app = spawn_app().await;
    let (s, room, p) = room_with_products(&app, "s", 2).await;
    let pin = format!("/api/v1/rooms/{room}/pin");
    app.post(&pin, Some(&s), &json!({"product_id": p[0]}))
        .await
        .assert_error(409, "not_in_room");
    app.post(
        &format!("/api/v1/rooms/{room}/products"),
        Some(&s),
        &json!({"product_id": p[0]}),
    )
    .await
    .assert_status(200);
    let r = app.post(&pin, Some(&s), &json!({"product_id": p[0]})).await;
    r.assert_status(200);
    assert_eq!(r.body, json!({"pinned_product_id": p[0]}));
    assert_eq!(
        app.get(&format!("/api/v1/rooms/{room}"), None).await.body["live"]["pinned_product_id"],
        json!(p[0])
    );
    let r = app.post(&pin, Some(&s), &json!({"product_id": null})).await;
    assert_eq!(r.body, json!({"pinned_product_id": null}));
    app.post(&pin, Some(&s), &json!({"product_id": p[0]}))
        .await
        .assert_status(200);
    app.delete(&format!("/api/v1/rooms/{room}/products/{}", p[0]), Some(&s))
        .await
        .assert_status(200);
    assert!(
        app.get(&format!("/api/v1/rooms/{room}"), None).await.body["live"]["pinned_product_id"]
            .is_null()
    );
    // The key is required (null unpins; absent is a mistake).
    let r = app.post(&pin, Some(&s), &json!({})).await;
    r.assert_error(400, "bad_request");
    assert_eq!(r.error_field(), Some("product_id"));
    app.post(&pin, Some(&s), &json!({"product_id": "nope"}))
        .await
        .assert_error(409, "not_in_room");
}

#[tokio::test]
async fn only_the_owner_changes_a_room_and_only_with_own_products() {
    let app = spawn_app().await;
    let (owner, room, p) = room_with_products(&app, "owner", 1).await;
    let (_, _, foreign) = room_with_products(&app, "rival", 1).await;
    let rival = app.streamer("rival");
    let bag = format!("/api/v1/rooms/{room}/products");
    app.post(&bag, Some(&rival), &json!({"product_id": p[0]}))
        .await
        .assert_error(403, "forbidden");
    app.post(&bag, Some(&owner), &json!({"product_id": foreign[0]}))
        .await
        .assert_error(403, "forbidden");
    let r = app
        .post(&bag, Some(&owner), &json!({"product_id": "missing"}))
        .await;
    r.assert_error(404, "not_found");
    // An admin may act for the owner, still only with the owner's products.
    let admin = app.admin("root");
    app.post(&bag, Some(&admin), &json!({"product_id": p[0]}))
        .await
        .assert_status(200);
    app.post(&bag, Some(&admin), &json!({"product_id": foreign[0]}))
        .await
        .assert_error(403, "forbidden");
    app.post(
        &format!("/api/v1/rooms/{room}/start"),
        Some(&admin),
        &json!({}),
    )
    .await
    .assert_status(200);
}

#[tokio::test]
async fn room_errors_are_precise() {
    let app = spawn_app().await;
    let s = app.streamer("s");
    for (body, field) in [
        (json!({}), "title"),
        (json!({"title": ""}), "title"),
        (
            json!({"title": "t", "scheduled_start": "tomorrow"}),
            "scheduled_start",
        ),
        (
            json!({"title": "t", "playback_url": "rtmp://x/y"}),
            "playback_url",
        ),
        (
            json!({"title": "t", "description": "a\u{0}b"}),
            "description",
        ),
        (json!({"title": "t", "status": "live"}), "status"),
    ] {
        let r = app.post("/api/v1/rooms", Some(&s), &body).await;
        r.assert_error(400, "bad_request");
        assert_eq!(r.error_field(), Some(field), "{body}: {}", r.text);
    }
    let unknown = "01a2283d-a686-731c-9bef-ac8219437b7f";
    app.get(&format!("/api/v1/rooms/{unknown}"), None)
        .await
        .assert_error(404, "not_found");
    for path in ["start", "end"] {
        app.post(
            &format!("/api/v1/rooms/{unknown}/{path}"),
            Some(&s),
            &json!({}),
        )
        .await
        .assert_error(404, "not_found");
    }
    app.post(
        &format!("/api/v1/rooms/{unknown}/pin"),
        Some(&s),
        &json!({"product_id": null}),
    )
    .await
    .assert_error(404, "not_found");
    app.get("/api/v1/rooms?status=open", None)
        .await
        .assert_error(400, "bad_request");
    let r = app.get("/api/v1/rooms?cursor=zzz", None).await;
    r.assert_error(400, "bad_request");
    assert_eq!(r.error_field(), Some("cursor"));
}
