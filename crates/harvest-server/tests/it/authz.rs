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
    /// An order of the viewer's in that sale.
    order: String,
    /// A live contest of `organizer-1` between the room and three other streamers'
    /// rooms; `participants[0]` owns the room.
    contest: String,
    participants: Vec<String>,
    /// Rooms of the four participants, in order.
    contest_rooms: Vec<(String, String)>,
    /// A running match between the first two participants.
    pk: String,
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
    let viewer = app.viewer("viewer-1");
    let paid = app
        .reserve(&viewer, &sale, &format!("{n}-paid"), &json!({}))
        .await;
    paid.assert_status(201);
    let order = app
        .request_with(
            Method::POST,
            &format!(
                "/api/v1/holds/{}/checkout",
                paid.body["id"].as_str().unwrap()
            ),
            Some(&viewer),
            &[("Idempotency-Key", "fixture")],
            Some(&json!({"method": "simulated"})),
        )
        .await;
    order.assert_status(200);
    let order = order.body["id"].as_str().unwrap().to_owned();
    let mut contest_rooms = vec![("owner".to_owned(), room.clone())];
    for other in ["other-streamer", "peach-coop", "veg-coop"] {
        let token = app.streamer(other);
        let r = app.create_room(&token, other).await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        contest_rooms.push((other.to_owned(), r));
    }
    let organizer = app.organizer("organizer-1");
    let contest = app
        .post(
            "/api/v1/contests",
            Some(&organizer),
            &contest_body(&contest_rooms),
        )
        .await;
    contest.assert_status(201);
    let participants: Vec<String> = contest.body["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect();
    let contest = contest.body["id"].as_str().unwrap().to_owned();
    let pk = app
        .post(
            &format!("/api/v1/contests/{contest}/matches"),
            Some(&organizer),
            &json!({"participant_ids": [participants[0], participants[1]]}),
        )
        .await;
    pk.assert_status(201);
    let pk = pk.body["id"].as_str().unwrap().to_owned();
    Fixture {
        room,
        in_bag,
        outside,
        sale,
        hold,
        order,
        contest,
        participants,
        contest_rooms,
        pk,
    }
}

/// A contest body over `(owner, room)` pairs, live for the next hour.
fn contest_body(rooms: &[(String, String)]) -> Value {
    let now = chrono::Utc::now();
    let participants: Vec<Value> = rooms
        .iter()
        .map(|(owner, room)| json!({"name": owner, "owner_id": owner, "room_ids": [room]}))
        .collect();
    json!({
        "title": "authz contest",
        "starts_at": (now - chrono::Duration::seconds(1)).to_rfc3339(),
        "ends_at": (now + chrono::Duration::hours(1)).to_rfc3339(),
        "participants": participants,
        "scoring": {"metrics": [{"metric": "paid_gmv", "weight": 100}]},
    })
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
            path: |_| "/".into(),
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
        Row {
            method: Method::POST,
            path: |f| format!("/api/v1/holds/{}/checkout", f.hold),
            body: |_| Some(json!({"method": "simulated"})),
            idempotent: true,
            expect: [401, 200, 404, 404, 404, 404],
        },
        // Signed by the payment provider, not by a JWT: unsigned calls are refused.
        Row {
            method: Method::POST,
            path: |_| "/api/v1/payments/webhook".into(),
            body: |_| Some(json!({})),
            idempotent: false,
            expect: [401; 6],
        },
        Row {
            method: Method::GET,
            path: |_| "/api/v1/orders?mine=true".into(),
            body: |_| None,
            idempotent: false,
            expect: [401, 200, 200, 200, 200, 200],
        },
        Row {
            method: Method::GET,
            path: |f| format!("/api/v1/orders/{}", f.order),
            body: |_| None,
            idempotent: false,
            expect: [401, 200, 200, 404, 200, 200],
        },
        Row {
            method: Method::POST,
            path: |f| format!("/api/v1/orders/{}/refund", f.order),
            body: |_| Some(json!({"reason": "damaged in transit"})),
            idempotent: false,
            expect: [401, 403, 200, 404, 403, 200],
        },
        Row {
            method: Method::GET,
            path: |f| format!("/api/v1/rooms/{}/orders", f.room),
            body: |_| None,
            idempotent: false,
            expect: [401, 403, 200, 403, 200, 200],
        },
        Row {
            method: Method::POST,
            path: |_| "/api/v1/contests".into(),
            body: |f| Some(contest_body(&f.contest_rooms)),
            idempotent: false,
            expect: [401, 403, 403, 403, 201, 201],
        },
        Row {
            method: Method::GET,
            path: |f| format!("/api/v1/contests/{}", f.contest),
            body: |_| None,
            idempotent: false,
            expect: public,
        },
        // Only the organizer who created the contest (or an admin) changes it.
        Row {
            method: Method::POST,
            path: |f| format!("/api/v1/contests/{}/matches", f.contest),
            body: |f| {
                Some(
                    json!({"participant_ids": [f.participants[2], f.participants[3]], "duration_s": 60}),
                )
            },
            idempotent: false,
            expect: [401, 403, 403, 403, 201, 201],
        },
        Row {
            method: Method::GET,
            path: |f| format!("/api/v1/matches/{}", f.pk),
            body: |_| None,
            idempotent: false,
            expect: public,
        },
        Row {
            method: Method::PUT,
            path: |f| format!("/api/v1/contests/{}/judge-scores", f.contest),
            body: |f| Some(json!({"judge": "li", "scores": {f.participants[0].clone(): 88}})),
            idempotent: false,
            expect: [401, 403, 403, 403, 204, 204],
        },
        Row {
            method: Method::GET,
            path: |f| format!("/api/v1/contests/{}/standings", f.contest),
            body: |_| None,
            idempotent: false,
            expect: public,
        },
        // Allowed callers are told it is too early: the contest runs for another hour.
        Row {
            method: Method::POST,
            path: |f| format!("/api/v1/contests/{}/settle", f.contest),
            body: |_| None,
            idempotent: false,
            expect: [401, 403, 403, 403, 409, 409],
        },
        Row {
            method: Method::GET,
            path: |f| format!("/api/v1/contests/{}/audit", f.contest),
            body: |_| None,
            idempotent: false,
            expect: [401, 403, 403, 403, 200, 200],
        },
        Row {
            method: Method::POST,
            path: |f| format!("/api/v1/admin/rooms/{}/test-events", f.room),
            body: |_| Some(json!({"text": "k=1"})),
            idempotent: false,
            expect: [401, 403, 403, 403, 403, 200],
        },
    ]
}

#[tokio::test]
async fn every_route_for_every_caller() {
    // The viewer reserves in every fixture: lift the per-user reservation rate.
    let app = spawn_app_with(|s| {
        s.reservations_per_user_per_s = 100_000;
        s.reservations_burst = 100_000;
        s.test_publish = true;
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
                    401 if path.ends_with("/webhook") => "invalid_signature",
                    401 => "unauthorized",
                    403 => "forbidden",
                    404 => "not_found",
                    409 if path.ends_with("/settle") => "too_early",
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
    let path = path.split('?').next().unwrap_or_default();
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
        order: "{order}".into(),
        contest: "{contest}".into(),
        participants: vec!["{p}".into(); 4],
        contest_rooms: Vec::new(),
        pk: "{match}".into(),
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
