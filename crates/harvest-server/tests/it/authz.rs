//! The authorization table: every route × every kind of caller, with the expected
//! status. A new route adds its row here.

use harvest_testkit::{TestApp, spawn_app, spawn_app_with};
use reqwest::Method;
use serde_json::{Value, json};

/// The callers of every row, in column order.
#[derive(Debug, Clone, Copy)]
enum Caller {
    Anonymous,
    Viewer,
    Owner,
    OtherStreamer,
    Organizer,
    Admin,
}

const CALLERS: [Caller; 6] = [
    Caller::Anonymous,
    Caller::Viewer,
    Caller::Owner,
    Caller::OtherStreamer,
    Caller::Organizer,
    Caller::Admin,
];

impl Caller {
    fn token(self, app: &TestApp) -> Option<String> {
        match self {
            Self::Anonymous => None,
            Self::Viewer => Some(app.viewer("viewer-1")),
            Self::Owner => Some(app.streamer("owner")),
            Self::OtherStreamer => Some(app.streamer("other-streamer")),
            Self::Organizer => Some(app.organizer("organizer-1")),
            Self::Admin => Some(app.admin("admin-1")),
        }
    }
}

/// What each row works on: a fresh room of `owner` in the given state, with a product
/// of `owner` in its bag and a second one outside it.
struct Fixture {
    room: String,
    in_bag: String,
    outside: String,
    /// A live flash sale of `in_bag` in the room.
    sale: String,
    /// A hold of the viewer's in that sale.
    hold: String,
}

async fn fixture(app: &TestApp) -> Fixture {
    let owner = app.streamer("owner");
    let n = uuid::Uuid::now_v7().simple().to_string();
    let room = app.create_room(&owner, "authz").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let in_bag = app.create_product(&owner, &format!("in-{n}")).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let outside = app.create_product(&owner, &format!("out-{n}")).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.post(
        &format!("/api/v1/rooms/{room}/products"),
        Some(&owner),
        &json!({"product_id": in_bag}),
    )
    .await
    .assert_status(200);
    let sale = app
        .post(
            &format!("/api/v1/rooms/{room}/flash-sales"),
            Some(&owner),
            &json!({"product_id": in_bag, "price": 990, "stock": 1000, "per_user_limit": 10}),
        )
        .await;
    sale.assert_status(201);
    let sale = sale.body["id"].as_str().unwrap().to_owned();
    let hold = app
        .reserve(&app.viewer("viewer-1"), &sale, &n, &json!({}))
        .await;
    hold.assert_status(201);
    let hold = hold.body["id"].as_str().unwrap().to_owned();
    Fixture {
        room,
        in_bag,
        outside,
        sale,
        hold,
    }
}

struct Row {
    method: Method,
    path: fn(&Fixture) -> String,
    body: fn(&Fixture) -> Option<Value>,
    /// Whether the request carries a fresh `Idempotency-Key`.
    idempotent: bool,
    /// Expected status for anonymous, viewer, owner, other streamer, organizer, admin.
    expect: [u16; 6],
}

fn rows() -> Vec<Row> {
    let public = [200; 6];
    let streamers = [401, 403, 201, 201, 403, 201];
    let owner_only = [401, 403, 200, 403, 403, 200];
    let owner_no_content = [401, 403, 204, 403, 403, 204];
    vec![
        Row {
            method: Method::GET,
            path: |_| "/healthz".into(),
            body: |_| None,
            idempotent: false,
            expect: public,
        },
        Row {
            method: Method::GET,
            path: |_| "/readyz".into(),
            body: |_| None,
            idempotent: false,
            expect: public,
        },
        Row {
            method: Method::GET,
            path: |_| "/metrics".into(),
            body: |_| None,
            idempotent: false,
            expect: public,
        },
        Row {
            method: Method::GET,
            path: |_| "/openapi.json".into(),
            body: |_| None,
            idempotent: false,
            expect: public,
        },
        Row {
            method: Method::POST,
            path: |_| "/api/v1/products".into(),
            body: |_| {
                Some(
                    json!({"sku": uuid::Uuid::now_v7().to_string(), "title": "t", "list_price": 100}),
                )
            },
            idempotent: false,
            expect: streamers,
        },
        Row {
            method: Method::GET,
            path: |_| "/api/v1/products".into(),
            body: |_| None,
            idempotent: false,
            expect: public,
        },
        Row {
            method: Method::GET,
            path: |f| format!("/api/v1/products/{}", f.in_bag),
            body: |_| None,
            idempotent: false,
            expect: public,
        },
        Row {
            method: Method::POST,
            path: |_| "/api/v1/rooms".into(),
            body: |_| Some(json!({"title": "a room"})),
            idempotent: false,
            expect: streamers,
        },
        Row {
            method: Method::GET,
            path: |_| "/api/v1/rooms".into(),
            body: |_| None,
            idempotent: false,
            expect: public,
        },
        Row {
            method: Method::GET,
            path: |f| format!("/api/v1/rooms/{}", f.room),
            body: |_| None,
            idempotent: false,
            expect: public,
        },
        Row {
            method: Method::POST,
            path: |f| format!("/api/v1/rooms/{}/start", f.room),
            body: |_| None,
            idempotent: false,
            expect: owner_only,
        },
        Row {
            method: Method::POST,
            path: |f| format!("/api/v1/rooms/{}/end", f.room),
            body: |_| None,
            idempotent: false,
            expect: owner_only,
        },
        Row {
            method: Method::POST,
            path: |f| format!("/api/v1/rooms/{}/products", f.room),
            body: |f| Some(json!({"product_id": f.outside})),
            idempotent: false,
            expect: owner_only,
        },
        Row {
            method: Method::DELETE,
            path: |f| format!("/api/v1/rooms/{}/products/{}", f.room, f.in_bag),
            body: |_| None,
            idempotent: false,
            expect: owner_only,
        },
        Row {
            method: Method::POST,
            path: |f| format!("/api/v1/rooms/{}/pin", f.room),
            body: |f| Some(json!({"product_id": f.in_bag})),
            idempotent: false,
            expect: owner_only,
        },
        Row {
            method: Method::GET,
            path: |f| format!("/api/v1/rooms/{}/events", f.room),
            body: |_| None,
            idempotent: false,
            expect: public,
        },
        Row {
            method: Method::GET,
            path: |f| format!("/api/v1/rooms/{}/stats", f.room),
            body: |_| None,
            idempotent: false,
            expect: [401, 403, 200, 403, 200, 200],
        },
        Row {
            method: Method::POST,
            path: |f| format!("/api/v1/rooms/{}/moderation/mutes", f.room),
            body: |_| Some(json!({"user_id": "troll", "duration_s": 60})),
            idempotent: false,
            expect: owner_no_content,
        },
        Row {
            method: Method::POST,
            path: |f| format!("/api/v1/rooms/{}/moderation/bans", f.room),
            body: |_| Some(json!({"user_id": "troll"})),
            idempotent: false,
            expect: owner_no_content,
        },
        Row {
            method: Method::DELETE,
            path: |f| format!("/api/v1/rooms/{}/chat/{}", f.room, f.outside),
            body: |_| None,
            idempotent: false,
            expect: owner_no_content,
        },
        // A plain GET (no upgrade) of the WebSocket endpoint is a 400 for everyone; who
        // may connect is checked by the WebSocket tests.
        Row {
            method: Method::GET,
            path: |f| format!("/ws/rooms/{}", f.room),
            body: |_| None,
            idempotent: false,
            expect: [400; 6],
        },
        Row {
            method: Method::POST,
            path: |f| format!("/api/v1/rooms/{}/flash-sales", f.room),
            body: |f| Some(json!({"product_id": f.in_bag, "price": 100, "stock": 5})),
            idempotent: false,
            expect: [401, 403, 201, 403, 403, 201],
        },
        Row {
            method: Method::GET,
            path: |f| format!("/api/v1/flash-sales/{}", f.sale),
            body: |_| None,
            idempotent: false,
            expect: public,
        },
        Row {
            method: Method::POST,
            path: |f| format!("/api/v1/flash-sales/{}/end", f.sale),
            body: |_| None,
            idempotent: false,
            expect: owner_only,
        },
        Row {
            method: Method::GET,
            path: |f| format!("/api/v1/flash-sales/{}/allocations", f.sale),
            body: |_| None,
            idempotent: false,
            expect: [401, 403, 200, 403, 200, 200],
        },
        Row {
            method: Method::POST,
            path: |f| format!("/api/v1/flash-sales/{}/reservations", f.sale),
            body: |_| Some(json!({"quantity": 1})),
            idempotent: true,
            expect: [401, 201, 201, 201, 201, 201],
        },
        // Another buyer's hold is invisible: 404, not 403.
        Row {
            method: Method::GET,
            path: |f| format!("/api/v1/holds/{}", f.hold),
            body: |_| None,
            idempotent: false,
            expect: [401, 200, 404, 404, 404, 200],
        },
        Row {
            method: Method::DELETE,
            path: |f| format!("/api/v1/holds/{}", f.hold),
            body: |_| None,
            idempotent: false,
            expect: [401, 200, 404, 404, 404, 404],
        },
    ]
}

#[tokio::test]
async fn every_route_for_every_caller() {
    // The viewer reserves in every fixture: lift the per-user reservation rate.
    let app = spawn_app_with(|s| {
        s.reservations_per_user_per_s = 100_000;
        s.reservations_burst = 100_000;
    })
    .await;
    let mut failures = Vec::new();
    for row in rows() {
        for (caller, expected) in CALLERS.iter().zip(row.expect) {
            let f = fixture(&app).await;
            let path = (row.path)(&f);
            let token = caller.token(&app);
            let key = uuid::Uuid::now_v7().to_string();
            let headers: &[(&str, &str)] = if row.idempotent {
                &[("Idempotency-Key", key.as_str())]
            } else {
                &[]
            };
            let r = app
                .request_with(
                    row.method.clone(),
                    &path,
                    token.as_deref(),
                    headers,
                    (row.body)(&f).as_ref(),
                )
                .await;
            if r.status.as_u16() != expected {
                failures.push(format!(
                    "{} {path} as {caller:?}: expected {expected}, got {} {}",
                    row.method, r.status, r.text
                ));
            }
            if expected >= 400 {
                let code = match expected {
                    400 => "bad_request",
                    401 => "unauthorized",
                    403 => "forbidden",
                    404 => "not_found",
                    _ => unreachable!(),
                };
                if r.error_code() != Some(code) {
                    failures.push(format!(
                        "{} {path} as {caller:?}: code {:?}",
                        row.method,
                        r.error_code()
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `/a/{x}/b/{y}` → `/a/{}/b/{}`.
fn template(path: &str) -> String {
    path.split('/')
        .map(|seg| {
            if seg.starts_with('{') && seg.ends_with('}') {
                "{}"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn the_table_covers_every_documented_operation() {
    let app = spawn_app().await;
    let doc = app.get("/openapi.json", None).await.body;
    let f = Fixture {
        room: "{room}".into(),
        in_bag: "{product}".into(),
        outside: "{other}".into(),
        sale: "{sale}".into(),
        hold: "{hold}".into(),
    };
    let covered: Vec<(String, String)> = rows()
        .iter()
        .map(|r| {
            (
                r.method.as_str().to_ascii_lowercase(),
                template(&(r.path)(&f)),
            )
        })
        .collect();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let wanted = (method.clone(), template(path));
            assert!(
                covered.contains(&wanted),
                "{method} {path} has no row in the authorization table"
            );
        }
    }
}
