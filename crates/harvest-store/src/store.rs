use std::future::Future;
use std::path::Path;
use std::str::FromStr;
use std::sync::Once;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

use crate::StoreError;

static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend a database URL names.
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            "sqlite" => Ok(Self::Sqlite),
            "postgres" | "postgresql" => Ok(Self::Postgres),
            _ => Err(StoreError::InvalidUrl(format!(
                "unsupported scheme {scheme:?}: use sqlite:// or postgres://"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

/// Connection settings of a [`Store`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Most connections the pool opens.
    pub max_connections: u32,
    /// How long a call waits for a connection and for its answer before it is
    /// reported [`StoreError::Unavailable`].
    pub timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
            timeout: Duration::from_secs(2),
        }
    }
}

/// The SQL system of record. Cheap to clone: it is a pool handle.
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) pool: AnyPool,
    backend: Backend,
    timeout: Duration,
}

fn install_drivers() {
    static ONCE: Once = Once::new();
    ONCE.call_once(sqlx::any::install_default_drivers);
}

impl Store {
    /// Connects to `url` (`sqlite://path` or `postgres://...`). A SQLite file and its
    /// folder are created when missing. Does not migrate: call [`Store::migrate`].
    pub async fn connect(url: &str, options: StoreOptions) -> Result<Self, StoreError> {
        install_drivers();
        let backend = Backend::from_url(url)?;
        let url = match backend {
            Backend::Sqlite => prepare_sqlite_url(url)?,
            Backend::Postgres => url.to_owned(),
        };
        let connect_options =
            AnyConnectOptions::from_str(&url).map_err(|e| StoreError::InvalidUrl(e.to_string()))?;
        let pool_options = AnyPoolOptions::new()
            .max_connections(match backend {
                // One writer at a time in SQLite; a few readers beside it.
                Backend::Sqlite => options.max_connections.min(8),
                Backend::Postgres => options.max_connections,
            })
            .acquire_timeout(options.timeout)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute(
                            "PRAGMA busy_timeout = 5000; PRAGMA synchronous = NORMAL; \
                             PRAGMA foreign_keys = ON;",
                        )
                        .await?;
                    }
                    Ok(())
                })
            });
        let pool = tokio::time::timeout(
            options.timeout * 2,
            pool_options.connect_with(connect_options),
        )
        .await
        .map_err(|_| StoreError::Unavailable("timed out connecting to the database".into()))??;
        let store = Self {
            pool,
            backend,
            timeout: options.timeout,
        };
        if backend == Backend::Sqlite {
            // WAL lets readers run beside the writer; the mode is stored in the file.
            store
                .timed(async { store.pool.execute("PRAGMA journal_mode = WAL").await })
                .await?;
        }
        Ok(store)
    }

    /// Applies every pending migration of this backend.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATOR,
            Backend::Postgres => &POSTGRES_MIGRATOR,
        };
        migrator.run(&self.pool).await?;
        Ok(())
    }

    /// A short fingerprint of this backend's migrations: equal fingerprints mean equal
    /// schemas (test kits name their template databases with it).
    pub fn schema_fingerprint(backend: Backend) -> String {
        let migrator = match backend {
            Backend::Sqlite => &SQLITE_MIGRATOR,
            Backend::Postgres => &POSTGRES_MIGRATOR,
        };
        // FNV-1a over every migration's version and checksum.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for m in migrator.iter() {
            for b in m.version.to_le_bytes().iter().chain(m.checksum.iter()) {
                hash ^= u64::from(*b);
                hash = hash.wrapping_mul(0x100_0000_01b3);
            }
        }
        format!("{hash:016x}")
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Checks the database answers a trivial query within the timeout.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.timed(async { sqlx::query("SELECT 1").execute(&self.pool).await })
            .await
            .map(|_| ())
    }

    /// Closes every connection; later calls fail with [`StoreError::Unavailable`].
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Runs a database call under the store's timeout.
    pub(crate) async fn timed<T>(
        &self,
        fut: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(result) => result.map_err(StoreError::from),
            Err(_) => Err(StoreError::Unavailable("database call timed out".into())),
        }
    }
}

/// Makes sure a SQLite URL creates its file (`mode=rwc`) and that the file's folder
/// exists.
fn prepare_sqlite_url(url: &str) -> Result<String, StoreError> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| StoreError::InvalidUrl("expected sqlite://PATH".into()))?;
    let (path, query) = match rest.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (rest, None),
    };
    if path.is_empty() {
        return Err(StoreError::InvalidUrl("sqlite url names no file".into()));
    }
    if path != ":memory:"
        && let Some(parent) = Path::new(path).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(|e| {
            StoreError::InvalidUrl(format!("cannot create {}: {e}", parent.display()))
        })?;
    }
    Ok(match query {
        Some(q) if q.contains("mode=") => url.to_owned(),
        Some(q) => format!("sqlite://{path}?{q}&mode=rwc"),
        None => format!("sqlite://{path}?mode=rwc"),
    })
}

pub(crate) fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn from_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

pub(crate) fn from_ms_opt(ms: Option<i64>) -> Option<DateTime<Utc>> {
    ms.map(from_ms)
}

/// The current time, truncated to the millisecond the store keeps.
pub fn now() -> DateTime<Utc> {
    from_ms(Utc::now().timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_get_create_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/h.db");
        let url = format!("sqlite://{}", path.display());
        let prepared = prepare_sqlite_url(&url).unwrap();
        assert_eq!(prepared, format!("{url}?mode=rwc"));
        assert!(path.parent().unwrap().is_dir());
        assert_eq!(
            prepare_sqlite_url("sqlite://x.db?mode=ro").unwrap(),
            "sqlite://x.db?mode=ro"
        );
        assert!(prepare_sqlite_url("sqlite://").is_err());
    }

    #[test]
    fn backends_from_urls() {
        assert_eq!(Backend::from_url("sqlite://a.db").unwrap(), Backend::Sqlite);
        assert_eq!(
            Backend::from_url("postgres://h/db").unwrap(),
            Backend::Postgres
        );
        assert_eq!(
            Backend::from_url("postgresql://h/db").unwrap(),
            Backend::Postgres
        );
        assert!(Backend::from_url("mysql://h/db").is_err());
    }
}
