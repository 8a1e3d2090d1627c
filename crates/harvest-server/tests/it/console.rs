//! The web console at `GET /` and its embedded assets, the demo identities that only
//! `harvest demo` hands out, and `harvest demo` itself as a real process.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harvest_testkit::{free_port, spawn_app};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_harvest");

#[tokio::test]
async fn the_console_page_and_every_asset_it_names_load() {
    let app = spawn_app().await;
    let r = app.get("/", None).await;
    r.assert_status(200);
    let ct = r.headers["content-type"].to_str().unwrap();
    assert!(ct.starts_with("text/html"), "{ct}");
    assert!(
        r.text.contains("<title>Harvest console</title>"),
        "{}",
        r.text
    );
    assert_eq!(r.headers["cache-control"], "no-cache");

    // Every /console/ file the page names, and every module the scripts import.
    let mut wanted: Vec<String> = r
        .text
        .split('"')
        .filter(|s| s.starts_with("/console/"))
        .map(str::to_owned)
        .collect();
    assert!(wanted.iter().any(|s| s == "/console/app.js"), "{wanted:?}");
    let mut seen = Vec::new();
    while let Some(path) = wanted.pop() {
        if seen.contains(&path) {
            continue;
        }
        let asset = app.get(&path, None).await;
        assert_eq!(asset.status.as_u16(), 200, "{path}: {}", asset.text);
        let ct = asset.headers["content-type"].to_str().unwrap().to_owned();
        let expected = match path.rsplit('.').next().unwrap() {
            "js" => "text/javascript",
            "css" => "text/css",
            "svg" => "image/svg+xml",
            "html" => "text/html",
            other => panic!("unexpected asset type {other}"),
        };
        assert!(ct.starts_with(expected), "{path}: {ct}");
        assert!(asset.headers.get("etag").is_some(), "{path} has an ETag");
        if path.ends_with(".js") {
            for import in asset
                .text
                .split('"')
                .filter(|s| s.starts_with("./") && s.ends_with(".js"))
            {
                wanted.push(format!("/console/{}", &import[2..]));
            }
        }
        seen.push(path);
    }
    for name in harvest_server::console::asset_names() {
        if name != "index.html" {
            assert!(
                seen.contains(&format!("/console/{name}")),
                "{name} is embedded but nothing loads it"
            );
        }
    }
}

#[tokio::test]
async fn assets_revalidate_with_their_etag_and_unknown_ones_are_json_404s() {
    let app = spawn_app().await;
    let first = app.get("/console/app.js", None).await;
    let etag = first.headers["etag"].to_str().unwrap().to_owned();
    let again = app
        .request_with(
            reqwest::Method::GET,
            "/console/app.js",
            None,
            &[("If-None-Match", etag.as_str())],
            None,
        )
        .await;
    assert_eq!(again.status.as_u16(), 304);
    assert!(again.text.is_empty());
    app.get("/console/nope.js", None)
        .await
        .assert_error(404, "not_found");
    app.get("/console/../Cargo.toml", None)
        .await
        .assert_error(404, "not_found");
}

#[tokio::test]
async fn serve_never_exposes_demo_identities() {
    let app = spawn_app().await;
    app.get("/console/demo.json", None)
        .await
        .assert_error(404, "not_found");
    // Only `harvest demo` sets them; once set they are served, uncached.
    app.state
        .set_demo_identities(json!({"identities": [{"label": "Viewer", "token": "t"}]}));
    let r = app.get("/console/demo.json", None).await;
    r.assert_status(200);
    assert_eq!(r.body["identities"][0]["label"], "Viewer");
    assert_eq!(r.headers["cache-control"], "no-store");
}

async fn get_json(client: &reqwest::Client, url: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    match req.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

/// Waits up to `timeout` for `check` to hold, polling every 250 ms.
async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn process_demo_seeds_a_living_scenario_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let stdout = std::fs::File::create(dir.path().join("demo.out")).unwrap();
    let mut child = Command::new(BIN)
        .args(["demo", "--listen", &format!("127.0.0.1:{port}")])
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(stdout)
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();

    // The identities appear once the scenario is seeded.
    let deadline = Instant::now() + Duration::from_secs(30);
    let demo = loop {
        let (status, body) = get_json(&client, &format!("{base}/console/demo.json"), None).await;
        if status == 200 {
            break body;
        }
        if let Some(exit) = child.try_wait().unwrap() {
            panic!("harvest demo exited early with {exit}");
        }
        assert!(
            Instant::now() < deadline,
            "the demo identities never appeared"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let out = std::fs::read_to_string(dir.path().join("demo.out")).unwrap();
    assert!(out.contains(&format!("{base}/")), "{out}");
    let identities = demo["identities"].as_array().unwrap();
    let labels: Vec<&str> = identities
        .iter()
        .map(|i| i["label"].as_str().unwrap())
        .collect();
    assert_eq!(
        labels,
        [
            "Viewer",
            "Streamer (kiwis)",
            "Streamer (oranges)",
            "Organizer"
        ]
    );
    for identity in identities {
        let token = identity["token"].as_str().unwrap();
        assert!(out.contains(token), "every token is printed");
        let page = identity["page"].as_str().unwrap();
        assert!(out.contains(&format!("{base}/{page}")), "{out}");
    }
    let organizer = identities[3]["token"].as_str().unwrap();

    // Two live rooms with the festival's products, a contest with both.
    let (_, rooms) = get_json(&client, &format!("{base}/api/v1/rooms?status=live"), None).await;
    let rooms = rooms["items"].as_array().unwrap().clone();
    assert_eq!(rooms.len(), 2, "{rooms:?}");
    let (_, products) = get_json(&client, &format!("{base}/api/v1/products"), None).await;
    let titles = products["items"].to_string();
    for wanted in ["Shibadong", "Mayang", "Yanling", "Hanshou"] {
        assert!(titles.contains(wanted), "{wanted} in {titles}");
    }
    let contest = demo["contest_id"].as_str().unwrap();
    let (status, standings) = get_json(
        &client,
        &format!("{base}/api/v1/contests/{contest}/standings"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(standings["rows"].as_array().unwrap().len(), 2);

    // The rooms live: chat, likes, a flash sale selling, a PK match running.
    let room = rooms[0]["id"].as_str().unwrap().to_owned();
    eventually(
        Duration::from_secs(40),
        "chat, likes and a paid order",
        || {
            let client = &client;
            let url = format!("{base}/api/v1/rooms/{room}/stats");
            async move {
                let (_, s) = get_json(client, &url, Some(organizer)).await;
                s["chat_messages"].as_u64() > Some(0)
                    && s["likes"].as_u64() > Some(0)
                    && s["orders_paid"].as_u64() > Some(0)
                    && s["viewers_now"].as_u64() > Some(0)
            }
        },
    )
    .await;
    // The order is announced to the room after it is stored, so the room's
    // event log may lag the stats by a moment: read the whole log until the
    // announcements are there.
    eventually(
        Duration::from_secs(20),
        "sale.started, pk.started, order.placed and product.pinned in the room's event log",
        || {
            let client = &client;
            let room = &room;
            let base = &base;
            async move {
                let mut types = String::new();
                let mut after = 0u64;
                loop {
                    let (_, page) = get_json(
                        client,
                        &format!("{base}/api/v1/rooms/{room}/events?after_seq={after}&limit=500"),
                        None,
                    )
                    .await;
                    let items = page["items"].as_array().cloned().unwrap_or_default();
                    let Some(last) = items.last().and_then(|e| e["seq"].as_u64()) else {
                        break;
                    };
                    types.push_str(&page["items"].to_string());
                    after = last;
                }
                [
                    "sale.started",
                    "pk.started",
                    "order.placed",
                    "product.pinned",
                ]
                .iter()
                .all(|wanted| types.contains(wanted))
            }
        },
    )
    .await;

    // SIGINT: a clean stop, and ./data/harvest.db was never used.
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "harvest demo did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "{exit}");
    assert!(!Path::new(&dir.path().join("data/harvest.db")).exists());
}
