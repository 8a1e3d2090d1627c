//! The real `harvest` binary: signals, startup with embedded defaults, and the CLI.
//! Test names start with `process_` so the runner can limit how many run at once.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use harvest_testkit::{HarvestProcess, TestDatabase};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_harvest");

fn harvest(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).current_dir(dir).env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run harvest")
}

#[tokio::test]
async fn process_serves_on_embedded_defaults_and_creates_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut p = HarvestProcess::start(Path::new(BIN), dir.path(), &[]).await;
    eprintln!("healthy after {:?}", started.elapsed());
    let db = dir.path().join("data/harvest.db");
    assert!(
        db.exists(),
        "the SQLite file is created at ./data/harvest.db"
    );
    let secret = dir.path().join("data/jwt_secret");
    assert!(secret.exists(), "a JWT secret is generated");
    // A token minted by `harvest token` in the same folder is accepted by the server.
    let out = harvest(
        dir.path(),
        &["token", "--sub", "s1", "--role", "streamer"],
        &[],
    );
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        token.matches('\n').count(),
        1,
        "only the token and a newline"
    );
    let r = reqwest::Client::new()
        .post(p.url("/api/v1/rooms"))
        .bearer_auth(token.trim())
        .json(&serde_json::json!({"title": "first"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    p.signal("INT");
    let status = p
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exits after SIGINT");
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn process_sigterm_turns_readiness_off_drains_and_exits_zero() {
    let db = TestDatabase::create().await;
    let mut env = vec![
        ("HARVEST_DATABASE_URL", db.url().to_owned()),
        ("HARVEST_JWT_SECRET", "sigterm-secret".to_owned()),
        ("HARVEST_SHUTDOWN_DELAY_MS", "1500".to_owned()),
    ];
    if let Some(redis) = db.redis_url() {
        env.push(("HARVEST_REDIS_URL", redis.to_owned()));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut p = HarvestProcess::start(Path::new(BIN), db.dir(), &env).await;
    let ready = reqwest::get(p.url("/readyz")).await.unwrap();
    assert_eq!(ready.status().as_u16(), 200);

    // An in-flight request: headers and half a body sent before the signal.
    let token = harvest_server::auth::Authenticator::new(b"sigterm-secret")
        .unwrap()
        .mint(
            "s1",
            None,
            &[harvest_server::auth::Role::Streamer],
            Duration::from_secs(600),
        );
    let body = br#"{"title":"in flight"}"#;
    let mut stream = tokio::net::TcpStream::connect(&p.addr).await.unwrap();
    let head = format!(
        "POST /api/v1/rooms HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        p.addr,
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body[..5]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let signalled = Instant::now();
    p.signal("TERM");
    // Readiness turns 503 at once, while the listener still answers.
    let mut saw_unready = false;
    while signalled.elapsed() < Duration::from_millis(1200) {
        if let Ok(r) = reqwest::get(p.url("/readyz")).await
            && r.status().as_u16() == 503
        {
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["status"], "unavailable");
            saw_unready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(saw_unready, "readyz did not turn 503 after SIGTERM");

    // The in-flight request completes.
    stream.write_all(&body[5..]).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");

    let status = p
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exit within 10 s");
    assert!(status.success(), "exit status {status}");
    assert!(signalled.elapsed() < Duration::from_secs(10));
    // New connections are refused once it has gone.
    assert!(tokio::net::TcpStream::connect(&p.addr).await.is_err());
}

#[tokio::test]
async fn process_config_redacts_secrets_and_shows_layers() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("harvest.toml"),
        "listen = \"127.0.0.1:7000\"\nnode_id = \"from-file\"\n",
    )
    .unwrap();
    let out = harvest(
        dir.path(),
        &["config", "--listen", "127.0.0.1:9000"],
        &[
            ("HARVEST_JWT_SECRET", "top-secret-jwt"),
            ("HARVEST_PAYMENT_WEBHOOK_SECRET", "top-secret-hook"),
            (
                "HARVEST_DATABASE_URL",
                "postgres://app:top-secret-pw@db.internal/harvest",
            ),
            ("HARVEST_NODE_ID", "from-env"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let all = format!("{text}{}", String::from_utf8_lossy(&out.stderr));
    for secret in ["top-secret-jwt", "top-secret-hook", "top-secret-pw"] {
        assert!(!all.contains(secret), "{secret} leaked:\n{all}");
    }
    let parsed: toml::Table = text.parse().expect("config prints TOML");
    assert_eq!(parsed["listen"].as_str(), Some("127.0.0.1:9000"));
    assert_eq!(parsed["node_id"].as_str(), Some("from-env"));
    assert_eq!(parsed["jwt_secret"].as_str(), Some("[redacted]"));
    assert_eq!(
        parsed["database_url"].as_str(),
        Some("postgres://app:***@db.internal/harvest")
    );

    // A bad setting is a clear error and a failing exit status.
    let out = harvest(
        dir.path(),
        &["config"],
        &[("HARVEST_REQUEST_TIMEOUT_S", "soon")],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("HARVEST_REQUEST_TIMEOUT_S"));
}

#[tokio::test]
async fn process_migrate_and_token_commands() {
    let db = TestDatabase::create().await;
    let out = harvest(
        db.dir(),
        &["migrate"],
        &[("HARVEST_DATABASE_URL", db.url())],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Running it again is a no-op.
    let out = harvest(
        db.dir(),
        &["migrate"],
        &[("HARVEST_DATABASE_URL", db.url())],
    );
    assert!(out.status.success());

    let out = harvest(
        db.dir(),
        &[
            "token",
            "--sub",
            "org-1",
            "--role",
            "organizer",
            "--role",
            "admin",
            "--name",
            "Hunan Post",
            "--ttl",
            "2h",
        ],
        &[("HARVEST_JWT_SECRET", "cli-secret")],
    );
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap();
    let user = harvest_server::auth::Authenticator::new(b"cli-secret")
        .unwrap()
        .verify(token.trim())
        .unwrap();
    assert_eq!(user.id, "org-1");
    assert_eq!(user.name, "Hunan Post");
    assert!(user.is_admin());

    let out = harvest(
        db.dir(),
        &["token", "--sub", "x", "--role", "emperor"],
        &[("HARVEST_JWT_SECRET", "s")],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown role"));
}

#[tokio::test]
async fn process_reconcile_reports_drift_and_fixes_it() {
    use serde_json::json;
    let app = harvest_testkit::spawn_app().await;
    let owner = app.streamer("coop-reconcile");
    let room = app.create_room(&owner, "reconcile").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let product = app.create_product(&owner, "kiwi-box").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.post(
        &format!("/api/v1/rooms/{room}/products"),
        Some(&owner),
        &json!({"product_id": product}),
    )
    .await
    .assert_status(200);
    let sale = app
        .post(
            &format!("/api/v1/rooms/{room}/flash-sales"),
            Some(&owner),
            &json!({"product_id": product, "price": 990, "stock": 20, "per_user_limit": 5}),
        )
        .await;
    sale.assert_status(201);
    let sale_id = sale.body["id"].as_str().unwrap().to_owned();
    let buyer = app.viewer("reconciled");
    for (i, pay) in [(0, true), (1, false), (2, true)] {
        let hold = app
            .reserve(&buyer, &sale_id, &format!("k{i}"), &json!({"quantity": 1}))
            .await;
        hold.assert_status(201);
        if pay {
            app.request_with(
                reqwest::Method::POST,
                &format!(
                    "/api/v1/holds/{}/checkout",
                    hold.body["id"].as_str().unwrap()
                ),
                Some(&buyer),
                &[("Idempotency-Key", "pay")],
                Some(&json!({"method": "simulated"})),
            )
            .await
            .assert_status(200);
        }
    }
    assert!(app.state.flash.flush(Duration::from_secs(5)).await);
    let dir = tempfile::tempdir().unwrap();
    let database_url = app.state.settings.database_url.expose().to_owned();
    let redis_url = std::env::var("HARVEST_TEST_REDIS_URL").ok();
    let prefix = app.state.settings.redis_key_prefix.clone();
    let mut env = vec![
        ("HARVEST_DATABASE_URL", database_url.as_str()),
        ("HARVEST_REDIS_KEY_PREFIX", prefix.as_str()),
    ];
    let servers = harvest_testkit::TestBackend::from_env() == harvest_testkit::TestBackend::Servers;
    if servers {
        env.push(("HARVEST_REDIS_URL", redis_url.as_deref().unwrap()));
    }
    let out = harvest(dir.path(), &["reconcile"], &env);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("0 drifts"), "{stdout}");
    if !servers {
        assert!(
            stdout.contains("only the SQL record was checked"),
            "{stdout}"
        );
        return;
    }
    // Redis loses the sale: a drift, repaired by --fix from SQL.
    let client = redis::Client::open(redis_url.clone().unwrap()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("*{sale_id}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .unwrap();
    let out = harvest(dir.path(), &["reconcile", "--sale", &sale_id], &env);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("missing from the stock engine"), "{stdout}");
    let out = harvest(
        dir.path(),
        &["reconcile", "--sale", &sale_id, "--fix"],
        &env,
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("fixed: sale"), "{stdout}");
    let out = harvest(dir.path(), &["reconcile"], &env);
    assert!(out.status.success());
    // The serving node reads the rebuilt counts: 2 sold, 1 held.
    let s = app
        .get(&format!("/api/v1/flash-sales/{sale_id}"), None)
        .await
        .body;
    assert_eq!(
        (
            s["remaining"].as_i64(),
            s["held"].as_i64(),
            s["sold"].as_i64()
        ),
        (Some(17), Some(1), Some(2))
    );
}
