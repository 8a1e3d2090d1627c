//! Token edge cases over HTTP: every bad token is a 401 with code `unauthorized`, on
//! protected and public routes alike.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use harvest_testkit::{TEST_JWT_SECRET, spawn_app};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn sign(header: Value, claims: Value, secret: &[u8]) -> String {
    let msg = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(msg.as_bytes());
    format!("{msg}.{}", B64.encode(mac.finalize().into_bytes()))
}

#[tokio::test]
async fn bad_tokens_are_refused_everywhere() {
    let app = spawn_app().await;
    let key = TEST_JWT_SECRET.as_bytes();
    let hs = json!({"alg": "HS256", "typ": "JWT"});
    let roles = json!(["streamer"]);
    let cases = vec![
        (
            "expired",
            sign(
                hs.clone(),
                json!({"sub": "u", "exp": now() - 60, "roles": roles}),
                key,
            ),
        ),
        (
            "not yet valid",
            sign(
                hs.clone(),
                json!({"sub": "u", "exp": now() + 600, "nbf": now() + 60, "roles": roles}),
                key,
            ),
        ),
        (
            "wrong secret",
            sign(
                hs.clone(),
                json!({"sub": "u", "exp": now() + 60, "roles": roles}),
                b"not-the-secret",
            ),
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                B64.encode(r#"{"alg":"none","typ":"JWT"}"#),
                B64.encode(json!({"sub": "u", "exp": now() + 60, "roles": roles}).to_string())
            ),
        ),
        (
            "HS384",
            sign(
                json!({"alg": "HS384"}),
                json!({"sub": "u", "exp": now() + 60, "roles": roles}),
                key,
            ),
        ),
        (
            "RS256 header",
            sign(
                json!({"alg": "RS256"}),
                json!({"sub": "u", "exp": now() + 60, "roles": roles}),
                key,
            ),
        ),
        (
            "missing sub",
            sign(hs.clone(), json!({"exp": now() + 60, "roles": roles}), key),
        ),
        (
            "missing exp",
            sign(hs.clone(), json!({"sub": "u", "roles": roles}), key),
        ),
        (
            "sub not a string",
            sign(hs.clone(), json!({"sub": 42, "exp": now() + 60}), key),
        ),
        ("garbage", "garbage".to_owned()),
        ("three dots of garbage", "a.b.c".to_owned()),
    ];
    for (what, token) in &cases {
        let r = app
            .post("/api/v1/rooms", Some(token), &json!({"title": "t"}))
            .await;
        assert_eq!(r.status.as_u16(), 401, "{what}: {}", r.text);
        assert_eq!(r.error_code(), Some("unauthorized"), "{what}");
        // A public route refuses a bad token too rather than silently ignoring it.
        let r = app.get("/api/v1/rooms/x", Some(token)).await;
        assert_eq!(
            r.status.as_u16(),
            401,
            "{what} on a public route: {}",
            r.text
        );
    }
    // Wrong scheme and missing header.
    let r = app
        .client
        .post(app.url("/api/v1/rooms"))
        .header("authorization", "Basic dXNlcjpwYXNz")
        .json(&json!({"title": "t"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    app.post("/api/v1/rooms", None, &json!({"title": "t"}))
        .await
        .assert_error(401, "unauthorized");

    // Unknown roles are ignored; a hand-made valid token works.
    let ok = sign(
        hs.clone(),
        json!({"sub": "u", "exp": now() + 60, "roles": ["streamer", "emperor"], "name": "李四"}),
        key,
    );
    app.post("/api/v1/rooms", Some(&ok), &json!({"title": "t"}))
        .await
        .assert_status(201);
    let only_unknown = sign(
        hs,
        json!({"sub": "u", "exp": now() + 60, "roles": ["emperor"]}),
        key,
    );
    app.post("/api/v1/rooms", Some(&only_unknown), &json!({"title": "t"}))
        .await
        .assert_error(403, "forbidden");
    // The server is still fine.
    app.get("/healthz", None).await.assert_status(200);
}
