//! `harvest demo`: the service on embedded defaults with a seeded, running scenario
//! from the Hunan rural e-commerce festival.
//!
//! It starts the normal server ([`crate::build_state`] and [`crate::serve`]), then plays
//! every part through the public HTTP and WebSocket API, like real clients would:
//! two streamers create their farm products and rooms and go live; an organizer runs a
//! PK contest between them with judges' scores and back-to-back 5-minute PK matches;
//! each room runs flash sales that sell out, one after another; simulated viewers chat,
//! like, reserve and pay (most pay, a few release or let the hold expire). Tokens are
//! minted with the server's own [`crate::auth::Authenticator`]; the console offers the
//! demo identities at `/console/demo.json` (only under `harvest demo`).
//!
//! Unless a database is configured, the demo uses a fresh SQLite file in a temporary
//! folder, removed at exit, so `./data/harvest.db` is never touched and every run
//! starts from the same scenario. It runs until SIGINT or SIGTERM, then stops the
//! simulation and shuts the server down in its usual order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::Utc;
use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use rand::Rng;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::auth::Role;
use crate::config::{SecretUrl, Settings};
use crate::state::AppState;

/// The database URL a setting resolves to when nothing configures one.
const DEFAULT_DATABASE_URL: &str = "sqlite://./data/harvest.db";
/// How long the demo's tokens stay valid.
const TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Length of each PK match.
const MATCH_SECONDS: i64 = 300;

/// A farm product of the scenario.
struct Farm {
    sku: &'static str,
    title: &'static str,
    origin: &'static str,
    unit: &'static str,
    list_price: i64,
    /// Flash-sale price, in fen.
    sale_price: i64,
}

/// A streamer of the scenario with their room and products.
struct Streamer {
    sub: &'static str,
    name: &'static str,
    participant: &'static str,
    room_title: &'static str,
    room_description: &'static str,
    products: [Farm; 2],
    chat: &'static [&'static str],
}

const STREAMERS: [Streamer; 2] = [
    Streamer {
        sub: "coop-huayuan",
        name: "花垣十八洞合作社 Huayuan Shibadong co-op",
        participant: "Huayuan kiwi co-op",
        room_title: "十八洞猕猴桃丰收直播 · Shibadong kiwi harvest live",
        room_description: "Straight from the Shibadong orchards in Huayuan county, Xiangxi: \
                           kiwis picked this morning, and Yanling yellow peaches from our \
                           neighbours.",
        products: [
            Farm {
                sku: "kiwi-shibadong-5kg",
                title: "十八洞猕猴桃 Shibadong kiwis",
                origin: "Shibadong, Huayuan, Xiangxi, Hunan",
                unit: "5 kg box",
                list_price: 6990,
                sale_price: 3990,
            },
            Farm {
                sku: "peach-yanling-3kg",
                title: "炎陵黄桃 Yanling yellow peaches",
                origin: "Yanling, Zhuzhou, Hunan",
                unit: "3 kg box",
                list_price: 5990,
                sale_price: 3290,
            },
        ],
        chat: &[
            "十八洞的猕猴桃太好吃了！",
            "红心的还是绿心的？",
            "Kiwis this sweet? Ordering two boxes",
            "黄桃罐头yyds",
            "老家的味道",
            "主播辛苦了，果园好美",
        ],
    },
    Streamer {
        sub: "coop-mayang",
        name: "麻阳橙农合作社 Mayang orange growers",
        participant: "Mayang orange growers",
        room_title: "麻阳冰糖橙果园直播 · Mayang rock-sugar orange orchard live",
        room_description: "Rock-sugar oranges from the hills of Mayang, Huaihua, and \
                           seasonal vegetables from Hanshou, packed on the day of the sale.",
        products: [
            Farm {
                sku: "orange-mayang-5kg",
                title: "麻阳冰糖橙 Mayang rock-sugar oranges",
                origin: "Mayang, Huaihua, Hunan",
                unit: "5 kg box",
                list_price: 3990,
                sale_price: 1990,
            },
            Farm {
                sku: "veg-hanshou-4kg",
                title: "汉寿时令蔬菜 Hanshou seasonal vegetables",
                origin: "Hanshou, Changde, Hunan",
                unit: "4 kg box",
                list_price: 4590,
                sale_price: 2590,
            },
        ],
        chat: &[
            "冰糖橙甜过初恋",
            "麻阳的橙子每年都买",
            "Oranges for the whole office!",
            "汉寿的藕有吗？",
            "蔬菜新鲜吗？",
            "果园直播太治愈了",
        ],
    },
];

const CHAT_COMMON: &[&str] = &[
    "好甜！",
    "已下单，期待收货",
    "支持乡村振兴！",
    "包邮吗？",
    "第一次买，试试看",
    "冲冲冲！",
    "价格很实惠",
    "Cheering from Changsha!",
    "什么时候发货？",
    "PK加油！",
];

const VIEWER_NAMES: &[&str] = &[
    "张伟", "王芳", "李娜", "刘洋", "陈静", "杨磊", "赵敏", "黄婷", "周杰", "吴霞", "徐强", "孙丽",
    "马超", "胡兰", "朱琳", "郭峰", "何娟", "林涛", "罗丹", "高翔", "梁雪", "宋佳", "谢宇", "唐颖",
];

/// Simulated viewers connected to each room.
const CHATTERS_PER_ROOM: usize = 6;

/// Runs `harvest demo` until a shutdown signal.
pub async fn run(mut settings: Settings) -> anyhow::Result<()> {
    // A fresh database unless one is configured: never the default ./data/harvest.db.
    let _temp = if settings.database_url.expose() == DEFAULT_DATABASE_URL {
        let dir = tempfile::Builder::new()
            .prefix("harvest-demo-")
            .tempdir()
            .context("cannot create a temporary folder for the demo database")?;
        settings.database_url =
            SecretUrl::new(format!("sqlite://{}", dir.path().join("demo.db").display()));
        Some(dir)
    } else {
        None
    };
    let temporary = _temp.is_some();
    let addr = settings.listen_addr()?;
    let state = crate::build_state(settings).await?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = reachable(listener.local_addr()?);
    tracing::info!(addr = %local, "harvest demo is serving");

    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let mut server = tokio::spawn(crate::serve(listener, state.clone(), async move {
        let _ = stop_rx.wait_for(|stop| *stop).await;
    }));

    let base = format!("http://{local}");
    let mut tasks = JoinSet::new();
    let seeded = tokio::select! {
        seeded = seed(&state, &base, &mut tasks) => seeded,
        () = crate::app::shutdown_signal() => Err(anyhow::anyhow!("interrupted while seeding")),
    };
    let outcome = match seeded {
        Ok(demo) => {
            print_banner(&demo, &base, temporary);
            state.set_demo_identities(demo.console_json(&base));
            tokio::select! {
                () = crate::app::shutdown_signal() => Ok(()),
                joined = &mut server => match joined {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e),
                    Err(e) => Err(e.into()),
                },
            }
        }
        Err(e) => Err(e.context("the demo scenario could not be seeded")),
    };
    eprintln!("harvest demo: stopping");
    tasks.shutdown().await;
    let _ = stop_tx.send(true);
    if !server.is_finished() {
        match server.await {
            Ok(result) => result?,
            Err(e) => return Err(e.into()),
        }
    }
    outcome
}

/// The address clients reach for a listen address (`0.0.0.0` → `127.0.0.1`).
fn reachable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}

/// A signed-in identity of the scenario.
struct Identity {
    label: &'static str,
    sub: String,
    name: String,
    roles: Vec<Role>,
    token: String,
    page: String,
}

/// What the seeding made.
struct Demo {
    identities: Vec<Identity>,
    rooms: Vec<(String, String)>,
    contest_id: String,
    contest_title: String,
}

impl Demo {
    fn console_json(&self, base: &str) -> Value {
        json!({
            "console_url": format!("{base}/"),
            "contest_id": self.contest_id,
            "contest_title": self.contest_title,
            "rooms": self.rooms.iter().map(|(id, title)| json!({"id": id, "title": title})).collect::<Vec<_>>(),
            "identities": self.identities.iter().map(|i| json!({
                "label": i.label,
                "sub": i.sub,
                "name": i.name,
                "roles": i.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
                "token": i.token,
                "page": i.page,
            })).collect::<Vec<_>>(),
        })
    }
}

fn print_banner(demo: &Demo, base: &str, temporary: bool) {
    let mut out = String::new();
    out.push_str(&format!(
        "\nHarvest demo is live: open {base}/ in a browser\n\n"
    ));
    for i in &demo.identities {
        out.push_str(&format!("  {:<22} {base}/{}\n", i.label, i.page));
    }
    out.push_str(
        "\nIn the console, \"Sign in\" offers each identity in one click. Or paste a token:\n\n",
    );
    for i in &demo.identities {
        out.push_str(&format!("  {} ({})\n  {}\n\n", i.label, i.sub, i.token));
    }
    if temporary {
        out.push_str("Data: a temporary SQLite database, deleted when the demo stops.\n");
    }
    out.push_str("Simulated viewers are chatting, liking and buying. Press Ctrl-C to stop.\n");
    println!("{out}");
}

// ------------------------------------------------------------------ client ---

/// The demo's HTTP client of its own public API.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    /// Calls the API; returns the status and the parsed body (null when empty).
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(key) = idempotency_key {
            req = req.header("Idempotency-Key", key);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let res = req.send().await?;
        let status = res.status().as_u16();
        let text = res.text().await?;
        let value = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok((status, value))
    }

    /// Like [`Api::call`] but any non-2xx answer is an error naming it.
    async fn ok(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let (status, value) = self.call(method.clone(), path, token, body, None).await?;
        if !(200..300).contains(&status) {
            bail!("{method} {path} answered {status}: {value}");
        }
        Ok(value)
    }
}

fn str_of(v: &Value, key: &str) -> anyhow::Result<String> {
    v[key]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no {key} in {v}"))
}

fn random(range: std::ops::Range<u64>) -> u64 {
    rand::rng().random_range(range)
}

fn random_ms(range: std::ops::Range<u64>) -> Duration {
    Duration::from_millis(random(range))
}

fn key() -> String {
    uuid::Uuid::now_v7().to_string()
}

// ------------------------------------------------------------------- seeding ---

/// A room of the scenario and what runs in it.
struct RoomPlan {
    room_id: String,
    owner_token: String,
    products: Vec<(String, i64)>,
    /// The sale buyers aim at (the running one).
    current_sale: Arc<Mutex<Option<String>>>,
}

async fn seed(state: &AppState, base: &str, tasks: &mut JoinSet<()>) -> anyhow::Result<Demo> {
    let api = Api {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()?,
        base: base.to_owned(),
    };
    let mint =
        |sub: &str, name: &str, roles: &[Role]| state.auth.mint(sub, Some(name), roles, TOKEN_TTL);
    let organizer_token = mint(
        "festival-office",
        "电商节组委会 Festival office",
        &[Role::Organizer],
    );
    let viewer_token = mint("demo-viewer", "小美 Xiaomei", &[Role::Viewer]);

    let mut plans = Vec::new();
    for s in &STREAMERS {
        let token = mint(s.sub, s.name, &[Role::Streamer]);
        let mut products = Vec::new();
        for f in &s.products {
            let body = json!({"sku": f.sku, "title": f.title, "origin": f.origin, "unit": f.unit, "list_price": f.list_price});
            let (status, p) = api
                .call(Method::POST, "/api/v1/products", &token, Some(&body), None)
                .await?;
            let id = match status {
                201 => str_of(&p, "id")?,
                // A configured database may hold an earlier run's products: reuse them.
                409 => {
                    let list = api
                        .ok(
                            Method::GET,
                            &format!("/api/v1/products?owner={}&q={}", s.sub, f.sku),
                            &token,
                            None,
                        )
                        .await?;
                    list["items"]
                        .as_array()
                        .and_then(|items| items.iter().find(|p| p["sku"] == f.sku))
                        .map(|p| str_of(p, "id"))
                        .context("an existing demo product could not be found")??
                }
                _ => bail!("creating product {} answered {status}: {p}", f.sku),
            };
            products.push((id, f.sale_price));
        }
        let room = api
            .ok(
                Method::POST,
                "/api/v1/rooms",
                &token,
                Some(&json!({"title": s.room_title, "description": s.room_description})),
            )
            .await?;
        let room_id = str_of(&room, "id")?;
        for (pid, _) in &products {
            api.ok(
                Method::POST,
                &format!("/api/v1/rooms/{room_id}/products"),
                &token,
                Some(&json!({"product_id": pid})),
            )
            .await?;
        }
        api.ok(
            Method::POST,
            &format!("/api/v1/rooms/{room_id}/pin"),
            &token,
            Some(&json!({"product_id": products[0].0})),
        )
        .await?;
        api.ok(
            Method::POST,
            &format!("/api/v1/rooms/{room_id}/start"),
            &token,
            None,
        )
        .await?;
        plans.push(RoomPlan {
            room_id,
            owner_token: token,
            products,
            current_sale: Arc::new(Mutex::new(None)),
        });
    }

    // The contest: both rooms, from a minute ago for a day.
    let now = Utc::now();
    let contest_title = "919 湖南乡村电商节 PK · Hunan rural e-commerce festival".to_owned();
    let contest = api
        .ok(
            Method::POST,
            "/api/v1/contests",
            &organizer_token,
            Some(&json!({
                "title": contest_title,
                "starts_at": (now - chrono::Duration::minutes(1)).to_rfc3339(),
                "ends_at": (now + chrono::Duration::hours(24)).to_rfc3339(),
                "settle_grace_s": 600,
                "participants": STREAMERS.iter().zip(&plans).map(|(s, p)| json!({
                    "name": s.participant, "owner_id": s.sub, "room_ids": [p.room_id],
                })).collect::<Vec<_>>(),
                "scoring": {
                    "mode": "weighted",
                    "metrics": [
                        {"metric": "paid_gmv", "weight": 40},
                        {"metric": "distinct_buyers", "weight": 20},
                        {"metric": "likes", "weight": 15},
                        {"metric": "match_wins", "weight": 15},
                        {"metric": "judges", "weight": 10},
                    ],
                    "exclude_self_purchase": true,
                },
            })),
        )
        .await?;
    let contest_id = str_of(&contest, "id")?;
    let participants: Vec<String> = contest["participants"]
        .as_array()
        .context("contest without participants")?
        .iter()
        .map(|p| str_of(p, "id"))
        .collect::<anyhow::Result<_>>()?;
    for (judge, scores) in [
        ("Judge Li 李评委", [88, 91]),
        ("Judge Wang 王评委", [93, 85]),
    ] {
        let scores: serde_json::Map<String, Value> = participants
            .iter()
            .zip(scores)
            .map(|(p, s)| (p.clone(), json!(s)))
            .collect();
        api.ok(
            Method::PUT,
            &format!("/api/v1/contests/{contest_id}/judge-scores"),
            &organizer_token,
            Some(&json!({"judge": judge, "scores": scores})),
        )
        .await?;
    }

    // Everything that keeps the scenario alive.
    tasks.spawn(pk_matches(
        api.clone(),
        organizer_token.clone(),
        contest_id.clone(),
        participants,
    ));
    let buyers: Vec<(String, String)> = VIEWER_NAMES
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let sub = format!("sim-{:02}", i + 1);
            let token = mint(&sub, name, &[Role::Viewer]);
            (sub, token)
        })
        .collect();
    let ws_base = base.replacen("http://", "ws://", 1);
    for (r, (plan, streamer)) in plans.iter().zip(&STREAMERS).enumerate() {
        tasks.spawn(flash_sales(
            api.clone(),
            plan.owner_token.clone(),
            plan.room_id.clone(),
            plan.products.clone(),
            plan.current_sale.clone(),
        ));
        tasks.spawn(shoppers(
            api.clone(),
            buyers.iter().map(|(_, t)| t.clone()).collect(),
            plan.current_sale.clone(),
        ));
        for c in 0..CHATTERS_PER_ROOM {
            let (_, token) = &buyers[(r * CHATTERS_PER_ROOM + c) % buyers.len()];
            tasks.spawn(chatter(
                format!("{ws_base}/ws/rooms/{}?token={token}", plan.room_id),
                streamer.chat,
            ));
        }
    }

    let first_room = &plans[0].room_id;
    let mut identities = vec![Identity {
        label: "Viewer",
        sub: "demo-viewer".into(),
        name: "小美 Xiaomei".into(),
        roles: vec![Role::Viewer],
        token: viewer_token,
        page: format!("#/viewer/{first_room}"),
    }];
    for (plan, s) in plans.iter().zip(&STREAMERS) {
        identities.push(Identity {
            label: if s.sub == "coop-huayuan" {
                "Streamer (kiwis)"
            } else {
                "Streamer (oranges)"
            },
            sub: s.sub.into(),
            name: s.name.into(),
            roles: vec![Role::Streamer],
            token: plan.owner_token.clone(),
            page: format!("#/streamer/{}", plan.room_id),
        });
    }
    identities.push(Identity {
        label: "Organizer",
        sub: "festival-office".into(),
        name: "电商节组委会 Festival office".into(),
        roles: vec![Role::Organizer],
        token: organizer_token,
        page: format!("#/organizer/{contest_id}"),
    });
    Ok(Demo {
        identities,
        rooms: plans
            .iter()
            .zip(&STREAMERS)
            .map(|(p, s)| (p.room_id.clone(), s.room_title.to_owned()))
            .collect(),
        contest_id,
        contest_title,
    })
}

// --------------------------------------------------------------- the scenario ---

/// Back-to-back PK matches between the two rooms: 5 minutes each, a short break to
/// show the winner, then the next.
async fn pk_matches(api: Api, token: String, contest_id: String, participants: Vec<String>) {
    loop {
        let body = json!({"participant_ids": participants, "duration_s": MATCH_SECONDS, "metric": "paid_gmv"});
        match api
            .call(
                Method::POST,
                &format!("/api/v1/contests/{contest_id}/matches"),
                &token,
                Some(&body),
                None,
            )
            .await
        {
            Ok((201, m)) => {
                let id = m["id"].as_str().unwrap_or_default().to_owned();
                // Wait for the end, then leave the winner on screen for a while.
                loop {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    match api
                        .call(
                            Method::GET,
                            &format!("/api/v1/matches/{id}"),
                            &token,
                            None,
                            None,
                        )
                        .await
                    {
                        Ok((200, m)) if m["status"] == "ended" => break,
                        Ok((404, _)) => break,
                        _ => {}
                    }
                }
                tokio::time::sleep(Duration::from_secs(15)).await;
            }
            Ok((status, body)) => {
                tracing::debug!(status, %body, "demo: a PK match could not start yet");
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            Err(e) => {
                tracing::debug!(error = %e, "demo: creating a PK match failed");
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
        }
    }
}

/// One flash sale after another in a room, alternating its products: each sells out,
/// stays sold out for a moment, ends, and the next starts after a short pause.
async fn flash_sales(
    api: Api,
    token: String,
    room_id: String,
    products: Vec<(String, i64)>,
    current: Arc<Mutex<Option<String>>>,
) {
    for round in 0usize.. {
        let (product_id, price) = &products[round % products.len()];
        let _ = api
            .call(
                Method::POST,
                &format!("/api/v1/rooms/{room_id}/pin"),
                &token,
                Some(&json!({"product_id": product_id})),
                None,
            )
            .await;
        let body = json!({
            "product_id": product_id, "price": price, "stock": 36, "per_user_limit": 2,
            "duration_s": 240, "hold_ttl_s": 60,
        });
        let sale = match api
            .call(
                Method::POST,
                &format!("/api/v1/rooms/{room_id}/flash-sales"),
                &token,
                Some(&body),
                None,
            )
            .await
        {
            Ok((201, sale)) => sale,
            other => {
                tracing::debug!(?other, "demo: a flash sale could not start");
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
        };
        let sale_id = sale["id"].as_str().unwrap_or_default().to_owned();
        *current.lock() = Some(sale_id.clone());
        // Until it ends by the clock, or 20 s after it sold out.
        let mut sold_out_for = 0;
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let status = match api
                .call(
                    Method::GET,
                    &format!("/api/v1/flash-sales/{sale_id}"),
                    &token,
                    None,
                    None,
                )
                .await
            {
                Ok((200, s)) => s["status"].as_str().unwrap_or_default().to_owned(),
                _ => continue,
            };
            match status.as_str() {
                "ended" => break,
                "sold_out" => {
                    sold_out_for += 2;
                    if sold_out_for >= 20 {
                        let _ = api
                            .call(
                                Method::POST,
                                &format!("/api/v1/flash-sales/{sale_id}/end"),
                                &token,
                                None,
                                None,
                            )
                            .await;
                        break;
                    }
                }
                _ => sold_out_for = 0,
            }
        }
        *current.lock() = None;
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

/// Simulated buyers of a room: every few seconds one reserves a unit of the running
/// sale; most pay a moment later, some release the hold, a few let it expire.
async fn shoppers(api: Api, tokens: Vec<String>, current: Arc<Mutex<Option<String>>>) {
    loop {
        tokio::time::sleep(random_ms(1500..3500)).await;
        let Some(sale_id) = current.lock().clone() else {
            continue;
        };
        let token = tokens[random(0..tokens.len() as u64) as usize].clone();
        let reserved = api
            .call(
                Method::POST,
                &format!("/api/v1/flash-sales/{sale_id}/reservations"),
                &token,
                Some(&json!({"quantity": 1})),
                Some(&key()),
            )
            .await;
        let Ok((201, hold)) = reserved else { continue };
        let Some(hold_id) = hold["id"].as_str().map(str::to_owned) else {
            continue;
        };
        let api = api.clone();
        tokio::spawn(async move {
            tokio::time::sleep(random_ms(1000..6000)).await;
            match random(0..100) {
                0..85 => {
                    let _ = api
                        .call(
                            Method::POST,
                            &format!("/api/v1/holds/{hold_id}/checkout"),
                            &token,
                            Some(&json!({"method": "simulated"})),
                            Some(&key()),
                        )
                        .await;
                }
                85..95 => {
                    let _ = api
                        .call(
                            Method::DELETE,
                            &format!("/api/v1/holds/{hold_id}"),
                            &token,
                            None,
                            None,
                        )
                        .await;
                }
                // The rest let their hold expire.
                _ => {}
            }
        });
    }
}

/// A simulated viewer on a room's WebSocket: chats every few seconds and likes often;
/// reads (and drops) everything the room sends; reconnects after a drop.
async fn chatter(url: String, room_lines: &'static [&'static str]) {
    loop {
        if let Ok((ws, _)) = tokio_tungstenite::connect_async(url.as_str()).await {
            let (mut tx, mut rx) = ws.split();
            let reader = tokio::spawn(async move { while let Some(Ok(_)) = rx.next().await {} });
            tokio::time::sleep(random_ms(0..4000)).await;
            let mut next_chat = tokio::time::Instant::now() + random_ms(2000..9000);
            loop {
                if reader.is_finished() {
                    break;
                }
                let frame = if tokio::time::Instant::now() >= next_chat {
                    next_chat = tokio::time::Instant::now() + random_ms(5000..14000);
                    let line = if random(0..2) == 0 {
                        room_lines[random(0..room_lines.len() as u64) as usize]
                    } else {
                        CHAT_COMMON[random(0..CHAT_COMMON.len() as u64) as usize]
                    };
                    json!({"type": "chat.send", "text": line})
                } else {
                    json!({"type": "like", "count": random(1..6)})
                };
                if tx.send(Message::text(frame.to_string())).await.is_err() {
                    break;
                }
                tokio::time::sleep(random_ms(600..2200)).await;
            }
            reader.abort();
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
