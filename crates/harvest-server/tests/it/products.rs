use harvest_testkit::spawn_app;
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn create_get_and_list_products() {
    let app = spawn_app().await;
    let s1 = app.streamer("coop-huayuan");
    let r = app
        .post(
            "/api/v1/products",
            Some(&s1),
            &json!({
                "sku": "kiwi-5kg",
                "title": "  十八洞猕猴桃 Shibadong kiwi  ",
                "origin": "Huayuan, Hunan",
                "unit": "5 kg box",
                "list_price": 6990,
                "image_url": "https://img.example/kiwi.jpg"
            }),
        )
        .await;
    r.assert_status(201);
    let p = &r.body;
    assert_eq!(p["owner_id"], "coop-huayuan");
    assert_eq!(
        p["title"], "十八洞猕猴桃 Shibadong kiwi",
        "titles are trimmed"
    );
    assert_eq!(p["currency"], "CNY");
    assert_eq!(p["list_price"], 6990);
    assert!(p["created_at"].as_str().unwrap().ends_with('Z'));
    let id = p["id"].as_str().unwrap();
    let got = app.get(&format!("/api/v1/products/{id}"), None).await;
    got.assert_status(200);
    assert_eq!(&got.body, p);

    let s2 = app.streamer("coop-mayang");
    app.post(
        "/api/v1/products",
        Some(&s2),
        &json!({"sku": "orange", "title": "Mayang rock-sugar orange", "list_price": 3990, "currency": "USD"}),
    )
    .await
    .assert_status(201);
    // The same sku under another owner is fine; under the same owner it is not.
    app.post(
        "/api/v1/products",
        Some(&s2),
        &json!({"sku": "kiwi-5kg", "title": "x", "list_price": 1}),
    )
    .await
    .assert_status(201);
    app.post(
        "/api/v1/products",
        Some(&s1),
        &json!({"sku": "kiwi-5kg", "title": "again", "list_price": 1}),
    )
    .await
    .assert_error(409, "duplicate_sku");

    let all = app.get("/api/v1/products", None).await;
    all.assert_status(200);
    assert_eq!(all.body["items"].as_array().unwrap().len(), 3);
    assert!(all.body["next_cursor"].is_null());
    let mine = app.get("/api/v1/products?owner=coop-mayang", None).await;
    assert_eq!(mine.body["items"].as_array().unwrap().len(), 2);
    let q = app.get("/api/v1/products?q=ORANGE", None).await;
    assert_eq!(q.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(q.body["items"][0]["currency"], "USD");
    let q = app.get("/api/v1/products?q=%E7%8C%95", None).await; // 猕
    assert_eq!(q.body["items"].as_array().unwrap().len(), 1);
    let q = app.get("/api/v1/products?q=%25", None).await; // a literal %
    assert_eq!(q.body["items"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn product_pages_follow_cursors_in_creation_order() {
    let app = spawn_app().await;
    let s = app.streamer("s");
    let mut created = Vec::new();
    for i in 0..7 {
        created.push(app.create_product(&s, &format!("sku-{i}")).await["id"].clone());
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/products?limit=3&cursor={c}"),
            None => "/api/v1/products?limit=3".to_owned(),
        };
        let page = app.get(&path, None).await;
        page.assert_status(200);
        let items = page.body["items"].as_array().unwrap();
        assert!(items.len() <= 3);
        seen.extend(items.iter().map(|p| p["id"].clone()));
        match page.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, created);
}

#[tokio::test]
async fn product_input_errors_name_the_field() {
    let app = spawn_app().await;
    let s = app.streamer("s");
    let cases = [
        (json!({"title": "t", "list_price": 1}), "sku"),
        (json!({"sku": "a", "list_price": 1}), "title"),
        (json!({"sku": "a", "title": "t"}), "list_price"),
        (
            json!({"sku": "a", "title": "t", "list_price": -1}),
            "list_price",
        ),
        (
            json!({"sku": "a", "title": "t", "list_price": 9007199254740992_i64}),
            "list_price",
        ),
        (
            json!({"sku": "a", "title": "t", "list_price": 1.5}),
            "list_price",
        ),
        (
            json!({"sku": "a", "title": "t", "list_price": "1"}),
            "list_price",
        ),
        (
            json!({"sku": "a", "title": "t", "list_price": 1, "colour": "red"}),
            "colour",
        ),
        (json!({"sku": 7, "title": "t", "list_price": 1}), "sku"),
        (json!({"sku": "", "title": "t", "list_price": 1}), "sku"),
        (
            json!({"sku": "a", "title": "   ", "list_price": 1}),
            "title",
        ),
        (
            json!({"sku": "a", "title": "bell\u{7}", "list_price": 1}),
            "title",
        ),
        (
            json!({"sku": "a", "title": "x".repeat(201), "list_price": 1}),
            "title",
        ),
        (
            json!({"sku": "a", "title": "t", "list_price": 1, "currency": "cny"}),
            "currency",
        ),
        (
            json!({"sku": "a", "title": "t", "list_price": 1, "image_url": "javascript:alert(1)"}),
            "image_url",
        ),
        (
            json!({"sku": "a", "title": "t", "list_price": 1, "origin": null, "unit": 5}),
            "unit",
        ),
    ];
    for (body, field) in cases {
        let r = app.post("/api/v1/products", Some(&s), &body).await;
        r.assert_error(400, "bad_request");
        assert_eq!(r.error_field(), Some(field), "{body}: {}", r.text);
    }
    // Huge numbers beyond 64 bits are still a clean 400.
    let r = app
        .raw(
            Method::POST,
            "/api/v1/products",
            Some(&s),
            Some("application/json"),
            br#"{"sku":"a","title":"t","list_price":123456789012345678901234567890}"#.to_vec(),
        )
        .await;
    r.assert_error(400, "bad_request");
    assert_eq!(r.error_field(), Some("list_price"));
    // Nothing was created by any of them.
    let all = app.get("/api/v1/products", None).await;
    assert_eq!(all.body["items"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn malformed_bodies_and_content_types() {
    let app = spawn_app().await;
    let s = app.streamer("s");
    for body in [
        &b"{"[..],
        b"",
        b"[1,2]",
        b"null",
        b"\xff\xfe",
        b"{\"sku\":\"a\"} x",
    ] {
        let r = app
            .raw(
                Method::POST,
                "/api/v1/products",
                Some(&s),
                Some("application/json"),
                body.to_vec(),
            )
            .await;
        r.assert_error(400, "bad_request");
    }
    let good = br#"{"sku":"a","title":"t","list_price":1}"#.to_vec();
    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let r = app
            .raw(Method::POST, "/api/v1/products", Some(&s), ct, good.clone())
            .await;
        r.assert_error(415, "unsupported_media_type");
    }
    app.raw(
        Method::POST,
        "/api/v1/products",
        Some(&s),
        Some("application/json; charset=utf-8"),
        good,
    )
    .await
    .assert_status(201);
}

#[tokio::test]
async fn product_reads_reject_bad_ids_and_parameters() {
    let app = spawn_app().await;
    app.get("/api/v1/products/does-not-exist", None)
        .await
        .assert_error(404, "not_found");
    app.get(
        "/api/v1/products/01a2283d-a686-731c-9bef-ac8219437b7f",
        None,
    )
    .await
    .assert_error(404, "not_found");
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=abc", "limit"),
        ("cursor=not-a-cursor", "cursor"),
        ("cursor=%00%01", "cursor"),
        ("sort=price", "sort"),
    ] {
        let r = app.get(&format!("/api/v1/products?{query}"), None).await;
        r.assert_error(400, "bad_request");
        assert_eq!(r.error_field(), Some(field), "{query}: {}", r.text);
    }
    app.get("/api/v1/products?limit=500", None)
        .await
        .assert_status(200);
}

#[tokio::test]
async fn nul_characters_are_refused_before_reaching_the_database() {
    let app = spawn_app().await;
    let s = app.streamer("s");
    let room = app.create_room(&s, "r").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = app
        .post(
            &format!("/api/v1/rooms/{room}/products"),
            Some(&s),
            &json!({"product_id": "a\u{0}b"}),
        )
        .await;
    r.assert_error(400, "bad_request");
    assert_eq!(r.error_field(), Some("product_id"));
    let r = app
        .post(
            "/api/v1/products",
            Some(&s),
            &json!({"sku": "a", "title": "t", "list_price": 1, "origin": "x\u{0}"}),
        )
        .await;
    r.assert_error(400, "bad_request");
    assert_eq!(r.error_field(), Some("origin"));
    app.get("/api/v1/products/a%00b", None)
        .await
        .assert_error(400, "bad_request");
    app.get("/api/v1/products?q=%00", None)
        .await
        .assert_error(400, "bad_request");
    app.get("/healthz", None).await.assert_status(200);
}
