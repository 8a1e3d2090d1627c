use harvest_testkit::{StatusCode, TestBackend, spawn_app, spawn_app_with};
use serde_json::{Value, json};

#[tokio::test]
async fn healthz_and_readyz_answer_ok() {
    let app = spawn_app().await;
    let r = app.get("/healthz", None).await;
    r.assert_status(200);
    assert_eq!(r.body, json!({"status": "ok"}));
    let r = app.get("/readyz", None).await;
    r.assert_status(200);
    assert_eq!(r.body["status"], "ok");
    assert_eq!(r.body["checks"]["sql"], "ok");
    match TestBackend::from_env() {
        TestBackend::Servers => assert_eq!(r.body["checks"]["redis"], "ok"),
        TestBackend::Embedded => assert!(r.body["checks"].get("redis").is_none()),
    }
}

#[tokio::test]
async fn readyz_names_an_unreachable_redis() {
    let port = harvest_testkit::free_port();
    let app = spawn_app_with(|s| {
        s.redis_url = Some(harvest_server::config::SecretUrl::new(format!(
            "redis://127.0.0.1:{port}"
        )));
        s.redis_timeout_ms = 300;
    })
    .await;
    let started = std::time::Instant::now();
    let r = app.get("/readyz", None).await;
    r.assert_status(503);
    assert_eq!(r.body["status"], "unavailable");
    assert_eq!(r.body["checks"]["sql"], "ok");
    assert!(
        r.body["checks"]["redis"]
            .as_str()
            .unwrap()
            .starts_with("unavailable"),
        "{}",
        r.text
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "readiness must not hang on a dead dependency"
    );
    // Liveness does not depend on Redis.
    app.get("/healthz", None).await.assert_status(200);
}

#[tokio::test]
async fn metrics_expose_process_and_http_series() {
    let app = spawn_app().await;
    app.get("/healthz", None).await.assert_status(200);
    app.get("/api/v1/products/nope", None)
        .await
        .assert_status(404);
    let r = app.get("/metrics", None).await;
    r.assert_status(200);
    assert!(
        r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    for needle in [
        "process_resident_memory_bytes ",
        "process_cpu_seconds_total ",
        "harvest_http_requests_total{route=\"/healthz\",status=\"200\"}",
        "harvest_http_requests_total{route=\"/api/v1/products/{id}\",status=\"404\"}",
    ] {
        assert!(r.text.contains(needle), "missing {needle} in\n{}", r.text);
    }
    let rss: f64 = r
        .text
        .lines()
        .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(rss > 1_000_000.0, "rss {rss}");
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json_errors() {
    let app = spawn_app().await;
    app.get("/no/such/thing", None)
        .await
        .assert_error(404, "not_found");
    let r = app
        .request(reqwest::Method::PUT, "/healthz", None, None)
        .await;
    r.assert_error(405, "method_not_allowed");
    assert!(r.headers.get("allow").is_some());
    // A path parameter that is not valid UTF-8 is rejected by the extractor.
    app.get("/api/v1/products/%FF", None)
        .await
        .assert_error(400, "bad_request");
}

#[tokio::test]
async fn openapi_documents_every_route_with_errors() {
    let app = spawn_app().await;
    let r = app.get("/openapi.json", None).await;
    r.assert_status(200);
    let doc = &r.body;
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    let expected: &[(&str, &[&str])] = &[
        ("/healthz", &["get"]),
        ("/readyz", &["get"]),
        ("/metrics", &["get"]),
        ("/", &["get"]),
        ("/api/v1/products", &["get", "post"]),
        ("/api/v1/products/{id}", &["get"]),
        ("/api/v1/rooms", &["get", "post"]),
        ("/api/v1/rooms/{id}", &["get"]),
        ("/api/v1/rooms/{id}/start", &["post"]),
        ("/api/v1/rooms/{id}/end", &["post"]),
        ("/api/v1/rooms/{id}/products", &["post"]),
        ("/api/v1/rooms/{id}/products/{product_id}", &["delete"]),
        ("/api/v1/rooms/{id}/pin", &["post"]),
        ("/api/v1/rooms/{id}/events", &["get"]),
        ("/api/v1/rooms/{id}/stats", &["get"]),
        ("/api/v1/rooms/{id}/moderation/mutes", &["post"]),
        ("/api/v1/rooms/{id}/moderation/bans", &["post"]),
        ("/api/v1/rooms/{id}/chat/{message_id}", &["delete"]),
        ("/api/v1/admin/rooms/{id}/test-events", &["post"]),
        ("/ws/rooms/{room_id}", &["get"]),
        ("/api/v1/rooms/{id}/flash-sales", &["post"]),
        ("/api/v1/flash-sales/{id}", &["get"]),
        ("/api/v1/flash-sales/{id}/end", &["post"]),
        ("/api/v1/flash-sales/{id}/allocations", &["get"]),
        ("/api/v1/flash-sales/{id}/reservations", &["post"]),
        ("/api/v1/holds/{id}", &["get", "delete"]),
        ("/api/v1/holds/{id}/checkout", &["post"]),
        ("/api/v1/payments/webhook", &["post"]),
        ("/api/v1/orders", &["get"]),
        ("/api/v1/orders/{id}", &["get"]),
        ("/api/v1/orders/{id}/refund", &["post"]),
        ("/api/v1/rooms/{id}/orders", &["get"]),
        ("/api/v1/contests", &["post"]),
        ("/api/v1/contests/{id}", &["get"]),
        ("/api/v1/contests/{id}/matches", &["post"]),
        ("/api/v1/matches/{id}", &["get"]),
        ("/api/v1/contests/{id}/judge-scores", &["put"]),
        ("/api/v1/contests/{id}/standings", &["get"]),
        ("/api/v1/contests/{id}/settle", &["post"]),
        ("/api/v1/contests/{id}/audit", &["get"]),
    ];
    for (path, methods) in expected {
        let item = paths
            .get(*path)
            .unwrap_or_else(|| panic!("{path} undocumented"));
        for method in *methods {
            let op = &item[*method];
            assert!(op.is_object(), "{method} {path} undocumented");
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|k| k.starts_with('2') || k == "101"),
                "{method} {path} has no success response"
            );
            if path.starts_with("/api/") {
                let error = responses
                    .iter()
                    .find(|(k, _)| k.starts_with('4'))
                    .unwrap_or_else(|| panic!("{method} {path} documents no error"));
                let schema = &error.1["content"]["application/json"]["schema"]["$ref"];
                assert_eq!(schema, "#/components/schemas/ErrorBody", "{method} {path}");
            }
            if *method == "post" && op.get("requestBody").is_none() {
                assert!(
                    path.ends_with("/start") || path.ends_with("/end") || path.ends_with("/settle"),
                    "{method} {path} documents no request body"
                );
            }
        }
    }
    let documented: usize = paths.len();
    assert_eq!(
        documented,
        expected.len(),
        "every documented path is listed in this test: {:?}",
        paths.keys().collect::<Vec<_>>()
    );
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    // The error schema lists the codes.
    let codes = &doc["components"]["schemas"]["ErrorCode"]["enum"];
    assert!(
        codes
            .as_array()
            .unwrap()
            .contains(&Value::from("duplicate_sku"))
    );
}

#[tokio::test]
async fn oversized_bodies_answer_413() {
    let app = spawn_app().await;
    let token = app.streamer("s1");
    let big = format!(
        r#"{{"sku":"a","title":"{}","list_price":1}}"#,
        "x".repeat(70 * 1024)
    );
    let r = app
        .raw(
            reqwest::Method::POST,
            "/api/v1/products",
            Some(&token),
            Some("application/json"),
            big.into_bytes(),
        )
        .await;
    r.assert_error(413, "payload_too_large");
    // The server keeps working.
    assert_eq!(app.get("/healthz", None).await.status, StatusCode::OK);
}

#[tokio::test]
async fn slow_handlers_hit_the_request_deadline_as_503() {
    // A request whose body never finishes arriving is cut by the deadline.
    let app = spawn_app_with(|s| s.request_timeout_s = 1).await;
    let token = app.streamer("s1");
    let (mut tx, rx) = futures_channel();
    let body = reqwest::Body::wrap_stream(rx);
    let send = app
        .client
        .post(app.url("/api/v1/products"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(body)
        .send();
    tx.try_send(Ok(bytes::Bytes::from_static(b"{\"sku\":")))
        .unwrap();
    let response = send.await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().get("retry-after").is_some());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
    drop(tx);
}

type Chunk = Result<bytes::Bytes, std::io::Error>;

fn futures_channel() -> (
    futures::channel::mpsc::Sender<Chunk>,
    futures::channel::mpsc::Receiver<Chunk>,
) {
    futures::channel::mpsc::channel(4)
}
