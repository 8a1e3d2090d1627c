//! Test kit: start the real Harvest server on port 0 with a fresh store, mint tokens,
//! and talk to it over real HTTP.
//!
//! The backend comes from `HARVEST_TEST_BACKEND`: `embedded` (default: a SQLite file
//! in a temporary folder, in-process engines) or `servers` (a fresh PostgreSQL
//! database cloned from a migrated template, and Redis), with the servers named by
//! `HARVEST_TEST_POSTGRES_URL` (an admin URL) and `HARVEST_TEST_REDIS_URL`. The
//! repository's test command starts private servers and runs the suite once per
//! backend, so every test runs against both.

mod database;
mod process;
mod servers;
mod ws;

use std::net::SocketAddr;
use std::time::Duration;

use harvest_server::auth::{Authenticator, Role};
use harvest_server::{AppState, Settings};
use reqwest::Method;
use serde_json::Value;

pub use database::{TestBackend, TestDatabase};
pub use process::{HarvestProcess, free_port};
pub use reqwest::StatusCode;
pub use servers::{PrivatePostgres, PrivateRedis, PrivateRedisCluster};
pub use ws::{WsClient, WsItem};

/// A running server and what a test needs to talk to it.
pub struct TestApp {
    pub addr: SocketAddr,
    pub base_url: String,
    pub client: reqwest::Client,
    pub state: AppState,
    auth: Authenticator,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    // Dropped last: the database outlives the server.
    database: Option<TestDatabase>,
}

/// The JWT secret every test server uses.
pub const TEST_JWT_SECRET: &str = "harvest-test-secret";

/// Starts a server with a fresh store on the backend the environment selects.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Like [`spawn_app`], letting the test adjust the settings first.
pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_on(TestDatabase::create().await, configure).await
}

/// Starts a server on an existing test database (e.g. one a stopped server used).
pub async fn spawn_app_on(
    database: TestDatabase,
    configure: impl FnOnce(&mut Settings),
) -> TestApp {
    let mut settings = base_settings(&database);
    configure(&mut settings);
    let state = harvest_server::build_state(settings)
        .await
        .expect("test server state builds");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind port 0");
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(harvest_server::serve(listener, state.clone(), async {
        let _ = rx.await;
    }));
    let auth = Authenticator::new(TEST_JWT_SECRET.as_bytes()).unwrap();
    TestApp {
        addr,
        base_url: format!("http://{addr}"),
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        state,
        auth,
        shutdown: Some(tx),
        server: Some(server),
        database: Some(database),
    }
}

/// Settings for a test server on `database`: port 0, the test secret, a temporary
/// data folder, Redis when the backend has it, short shutdown delays.
pub fn base_settings(database: &TestDatabase) -> Settings {
    Settings {
        listen: "127.0.0.1:0".into(),
        database_url: harvest_server::config::SecretUrl::new(database.url()),
        redis_url: database
            .redis_url()
            .map(harvest_server::config::SecretUrl::new),
        jwt_secret: Some(harvest_server::config::Secret::new(TEST_JWT_SECRET)),
        // Test servers share one Redis: each database keeps to its own keys, as
        // separate deployments would; a server restarted on the same database finds
        // its keys again, as a restarted node would.
        redis_key_prefix: format!(
            "hv:{}:",
            database
                .dir()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string())
        ),
        data_dir: database.dir().join("data"),
        shutdown_delay_ms: 0,
        shutdown_grace_s: 5,
        node_id: "test-node".into(),
        ..Settings::default()
    }
}

/// An HTTP answer: status, headers and the body parsed as JSON (`Value::Null` when the
/// body is empty or not JSON; `text` keeps it raw).
#[derive(Debug)]
pub struct TestResponse {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl TestResponse {
    /// The `error.code` of an error body.
    pub fn error_code(&self) -> Option<&str> {
        self.body.pointer("/error/code").and_then(Value::as_str)
    }

    /// The `error.details.field` of an error body.
    pub fn error_field(&self) -> Option<&str> {
        self.body
            .pointer("/error/details/field")
            .and_then(Value::as_str)
    }

    /// Asserts the status and error code, with the body in the failure message.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) -> &Self {
        assert_eq!(self.status.as_u16(), status, "status; body: {}", self.text);
        assert_eq!(self.error_code(), Some(code), "code; body: {}", self.text);
        assert!(
            self.body
                .pointer("/error/message")
                .is_some_and(Value::is_string),
            "error message; body: {}",
            self.text
        );
        assert!(
            self.body
                .pointer("/error/details")
                .is_some_and(Value::is_object),
            "error details; body: {}",
            self.text
        );
        self
    }

    /// Asserts the status, with the body in the failure message.
    #[track_caller]
    pub fn assert_status(&self, status: u16) -> &Self {
        assert_eq!(self.status.as_u16(), status, "status; body: {}", self.text);
        self
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// A token for `sub` with `roles`, valid for an hour.
    pub fn token(&self, sub: &str, roles: &[Role]) -> String {
        self.auth.mint(sub, None, roles, Duration::from_secs(3600))
    }

    pub fn viewer(&self, sub: &str) -> String {
        self.token(sub, &[Role::Viewer])
    }

    pub fn streamer(&self, sub: &str) -> String {
        self.token(sub, &[Role::Streamer])
    }

    pub fn organizer(&self, sub: &str) -> String {
        self.token(sub, &[Role::Organizer])
    }

    pub fn admin(&self, sub: &str) -> String {
        self.token(sub, &[Role::Admin])
    }

    /// Sends a request; `body` is sent as JSON when present.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> TestResponse {
        let mut req = self.client.request(method, self.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        Self::read(req.send().await.expect("request sent")).await
    }

    /// Like [`TestApp::request`], with extra headers.
    pub async fn request_with(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> TestResponse {
        let mut req = self.client.request(method, self.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        Self::read(req.send().await.expect("request sent")).await
    }

    /// Reserves units of a flash sale with an `Idempotency-Key`.
    pub async fn reserve(
        &self,
        token: &str,
        sale_id: &str,
        key: &str,
        body: &Value,
    ) -> TestResponse {
        self.request_with(
            Method::POST,
            &format!("/api/v1/flash-sales/{sale_id}/reservations"),
            Some(token),
            &[("Idempotency-Key", key)],
            Some(body),
        )
        .await
    }

    /// Sends raw bytes with a content type of the test's choosing.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> TestResponse {
        let mut req = self.client.request(method, self.url(path)).body(body);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(ct) = content_type {
            req = req.header(reqwest::header::CONTENT_TYPE, ct);
        }
        Self::read(req.send().await.expect("request sent")).await
    }

    async fn read(response: reqwest::Response) -> TestResponse {
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        TestResponse {
            status,
            headers,
            body,
            text,
        }
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> TestResponse {
        self.request(Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> TestResponse {
        self.request(Method::POST, path, token, Some(body)).await
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> TestResponse {
        self.request(Method::DELETE, path, token, None).await
    }

    /// Creates a product as `token`'s streamer and returns its JSON.
    pub async fn create_product(&self, token: &str, sku: &str) -> Value {
        let r = self
            .post(
                "/api/v1/products",
                Some(token),
                &serde_json::json!({"sku": sku, "title": format!("Product {sku}"), "list_price": 1990}),
            )
            .await;
        r.assert_status(201);
        r.body
    }

    /// Creates a room as `token`'s streamer and returns its JSON.
    pub async fn create_room(&self, token: &str, title: &str) -> Value {
        let r = self
            .post(
                "/api/v1/rooms",
                Some(token),
                &serde_json::json!({"title": title}),
            )
            .await;
        r.assert_status(201);
        r.body
    }

    /// Stops the server and hands back its database, for a restart on the same data.
    pub async fn stop_keep_database(mut self) -> TestDatabase {
        let database = self.database.take().expect("database present");
        self.stop().await;
        database
    }

    /// Stops the server the way a signal would and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server
                .await
                .expect("server task")
                .expect("server stopped cleanly");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}
