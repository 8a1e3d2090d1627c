//! Fresh databases for tests: a SQLite file in a temporary folder, or a PostgreSQL
//! database cloned from a migrated template (created once per schema, under an
//! advisory lock so parallel test processes agree).

use std::path::Path;

use harvest_store::{Backend, Store, StoreOptions};
use sqlx::{AnyConnection, Connection, Executor};

/// Which servers the tests run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestBackend {
    /// SQLite and in-process engines.
    Embedded,
    /// PostgreSQL and Redis.
    Servers,
}

impl TestBackend {
    /// `HARVEST_TEST_BACKEND`: `embedded` (default) or `servers`.
    pub fn from_env() -> Self {
        match std::env::var("HARVEST_TEST_BACKEND").as_deref() {
            Ok("servers") => Self::Servers,
            Ok("embedded") | Err(_) => Self::Embedded,
            Ok(other) => panic!("HARVEST_TEST_BACKEND={other:?}: expected embedded or servers"),
        }
    }
}

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the suite through scripts/test, which starts the servers")
    })
}

/// A database (and Redis, for the servers backend) that belongs to one test.
pub struct TestDatabase {
    url: String,
    redis_url: Option<String>,
    dir: tempfile::TempDir,
    postgres: Option<(String, String)>,
}

impl TestDatabase {
    /// A fresh, empty, migrated database on the backend the environment selects.
    pub async fn create() -> Self {
        Self::create_on(TestBackend::from_env()).await
    }

    pub async fn create_on(backend: TestBackend) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        match backend {
            TestBackend::Embedded => {
                let url = format!("sqlite://{}", dir.path().join("harvest.db").display());
                Self {
                    url,
                    redis_url: None,
                    dir,
                    postgres: None,
                }
            }
            TestBackend::Servers => {
                let admin = required_env("HARVEST_TEST_POSTGRES_URL");
                let redis = required_env("HARVEST_TEST_REDIS_URL");
                let name = format!("t_{}", uuid::Uuid::now_v7().simple());
                create_postgres_database(&admin, &name).await;
                Self {
                    url: with_database(&admin, &name),
                    redis_url: Some(redis),
                    dir,
                    postgres: Some((admin, name)),
                }
            }
        }
    }

    /// The database URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The Redis URL, for the servers backend.
    pub fn redis_url(&self) -> Option<&str> {
        self.redis_url.as_deref()
    }

    /// A temporary folder that lives as long as the database.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Connects a store to it and migrates it.
    pub async fn store(&self) -> Store {
        let store = Store::connect(&self.url, StoreOptions::default())
            .await
            .expect("connect test store");
        store.migrate().await.expect("migrate test store");
        store
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some((admin, name)) = self.postgres.take() else {
            return;
        };
        // Best effort: drop the database from a thread of its own, since Drop cannot
        // await and may run inside a runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut conn = AnyConnection::connect(&admin).await.ok()?;
                conn.execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                )))
                .await
                .ok()?;
                Some(())
            })
        })
        .join();
    }
}

/// `admin` with its database name replaced by `name`.
fn with_database(admin: &str, name: &str) -> String {
    let mut url = url::Url::parse(admin).expect("HARVEST_TEST_POSTGRES_URL is a URL");
    url.set_path(&format!("/{name}"));
    url.to_string()
}

async fn create_postgres_database(admin: &str, name: &str) {
    sqlx::any::install_default_drivers();
    let template = format!(
        "harvest_tpl_{}",
        Store::schema_fingerprint(Backend::Postgres)
    );
    let mut conn = AnyConnection::connect(admin)
        .await
        .expect("connect to HARVEST_TEST_POSTGRES_URL");
    conn.execute("SELECT pg_advisory_lock(727274)")
        .await
        .expect("advisory lock");
    let exists = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT 1 FROM pg_database WHERE datname = '{template}'"
    )))
    .fetch_optional(&mut conn)
    .await
    .expect("look up template");
    if exists.is_none() {
        conn.execute(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE \"{template}\""
        )))
        .await
        .expect("create template");
        let store = Store::connect(&with_database(admin, &template), StoreOptions::default())
            .await
            .expect("connect template");
        store.migrate().await.expect("migrate template");
        store.close().await;
    }
    conn.execute("SELECT pg_advisory_unlock(727274)")
        .await
        .expect("advisory unlock");
    // Cloning fails while another session touches the template; retry briefly.
    let mut attempt = 0;
    loop {
        let result = conn
            .execute(sqlx::AssertSqlSafe(format!(
                "CREATE DATABASE \"{name}\" TEMPLATE \"{template}\""
            )))
            .await;
        match result {
            Ok(_) => break,
            Err(e) if attempt < 50 => {
                attempt += 1;
                let _ = e;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot create test database {name}: {e}"),
        }
    }
    let _ = conn.close().await;
}
