//! Layered configuration: built-in defaults < `harvest.toml` (or `--config FILE`) <
//! `HARVEST_*` environment variables < command-line flags.
//!
//! Every file key is the environment variable's name in lower case without the
//! `HARVEST_` prefix. Resolution takes the environment as a map so it can be tested
//! without touching the process environment. Secrets are wrapped in [`Secret`] and
//! URLs carrying passwords in [`SecretUrl`]; neither prints its secret part.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The configuration file read from the working directory when `--config` is absent.
pub const DEFAULT_CONFIG_FILE: &str = "harvest.toml";
const ENV_PREFIX: &str = "HARVEST_";

/// A secret string: debug output, `harvest config` and logs show `[redacted]`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself; call only where it is used, never to print it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

/// A connection URL that may carry a password; it prints with the password masked.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// The URL (or comma-separated URLs) with every password replaced by `***`.
    pub fn redacted(&self) -> String {
        self.0
            .split(',')
            .map(|part| match url::Url::parse(part.trim()) {
                Ok(mut url) if url.password().is_some() => {
                    let _ = url.set_password(Some("***"));
                    url.to_string()
                }
                Ok(_) => part.trim().to_owned(),
                Err(_) => "[unparsable url]".to_owned(),
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The effective settings of a Harvest process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Address the HTTP and WebSocket server listens on.
    pub listen: String,
    /// `sqlite://PATH` or `postgres://...`.
    pub database_url: SecretUrl,
    /// `redis://...`, or several comma-separated for Redis Cluster; unset = in-process.
    pub redis_url: Option<SecretUrl>,
    /// HS256 secret for bearer tokens; unset = generated once into `data_dir/jwt_secret`.
    pub jwt_secret: Option<Secret>,
    /// HMAC secret of the payment webhook; unset = webhook disabled.
    pub payment_webhook_secret: Option<Secret>,
    /// Whether the simulated checkout method is enabled.
    pub payment_simulated: bool,
    /// This node's name in a cluster (default: the host name).
    pub node_id: String,
    /// Words masked with `*` in chat.
    pub chat_sensitive_words: Vec<String>,
    /// Folder for local state: the SQLite file by default and the generated JWT secret.
    pub data_dir: PathBuf,
    /// `text` or `json` log lines.
    pub log_format: LogFormat,
    /// Largest request body accepted, in bytes.
    pub request_body_limit_bytes: u64,
    /// Longest an HTTP request may take before it is answered 503.
    pub request_timeout_s: u64,
    /// Timeout of every SQL call, in milliseconds.
    pub sql_timeout_ms: u64,
    /// Size of the SQL connection pool.
    pub sql_max_connections: u32,
    /// Timeout of every Redis call, in milliseconds.
    pub redis_timeout_ms: u64,
    /// Prefix of every Redis key this deployment writes (deployments sharing one Redis
    /// must use different prefixes).
    pub redis_key_prefix: String,
    /// After SIGTERM or SIGINT, how long `/readyz` answers 503 while new requests are
    /// still served, so load balancers stop routing here before the listener closes.
    pub shutdown_delay_ms: u64,
    /// Longest wait for in-flight requests to finish during shutdown.
    pub shutdown_grace_s: u64,
    /// Room events kept in memory per room for recovery (with `history_age_s`,
    /// whichever retains more).
    pub history_events: usize,
    pub history_age_s: u64,
    /// Days the SQL room event log keeps events.
    pub event_retention_days: u64,
    /// A connection's lossless outbound queue limit in bytes (past it: close 4008).
    pub ws_outbound_queue_bytes: usize,
    /// WebSocket read and write buffer sizes per connection, in bytes.
    pub ws_read_buffer_bytes: usize,
    pub ws_write_buffer_bytes: usize,
    /// A room event that follows the room's previous one within this many milliseconds
    /// waits for the window to close and goes out with the others as one batch frame
    /// (0: every room event goes out at once).
    pub room_batch_window_ms: u64,
    /// Worker threads of the runtime that runs WebSocket sessions, apart from the one
    /// serving HTTP, so API requests never queue behind a room's fan-out (0: one per
    /// CPU).
    pub ws_threads: usize,
    /// Serves `POST /api/v1/admin/rooms/{id}/test-events` (admin only), which publishes
    /// `test.message` room events for load tests. Off by default.
    pub test_publish: bool,
    /// Most open WebSocket connections on this node (past it: close 4029).
    pub max_connections: usize,
    /// Most new WebSocket connections per second on this node (past it: close 4029).
    pub new_connections_per_s: u32,
    /// Chat messages per second each viewer receives; a busier room is sampled.
    pub chat_per_viewer_per_s: u32,
    /// Chat messages a user may send per second, and the burst allowed.
    pub chat_per_user_per_s: u32,
    pub chat_burst: u32,
    /// Longest chat message, in Unicode code points after trimming.
    pub chat_max_chars: usize,
    /// `like` frames a connection may send per second.
    pub likes_per_connection_per_s: u32,
    /// Reservations a user may make per second, and the burst allowed (past it: 429).
    pub reservations_per_user_per_s: u32,
    pub reservations_burst: u32,
    /// How often due holds are looked for and expired, in milliseconds.
    pub hold_sweep_interval_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            database_url: SecretUrl::new("sqlite://./data/harvest.db"),
            redis_url: None,
            jwt_secret: None,
            payment_webhook_secret: None,
            payment_simulated: true,
            node_id: hostname::get()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "harvest".into()),
            chat_sensitive_words: Vec::new(),
            data_dir: PathBuf::from("./data"),
            log_format: LogFormat::Text,
            request_body_limit_bytes: 64 * 1024,
            request_timeout_s: 30,
            sql_timeout_ms: 2000,
            sql_max_connections: 16,
            redis_timeout_ms: 1000,
            redis_key_prefix: "hv:".into(),
            shutdown_delay_ms: 500,
            shutdown_grace_s: 8,
            history_events: 1000,
            history_age_s: 600,
            event_retention_days: 30,
            ws_outbound_queue_bytes: 1024 * 1024,
            ws_read_buffer_bytes: 2048,
            ws_write_buffer_bytes: 4096,
            room_batch_window_ms: 10,
            ws_threads: 0,
            test_publish: false,
            max_connections: 200_000,
            new_connections_per_s: 5_000,
            chat_per_viewer_per_s: 20,
            chat_per_user_per_s: 1,
            chat_burst: 5,
            chat_max_chars: 200,
            likes_per_connection_per_s: 10,
            reservations_per_user_per_s: 20,
            reservations_burst: 20,
            hold_sweep_interval_ms: 250,
        }
    }
}

/// How an environment value is turned into a setting.
#[derive(Clone, Copy)]
enum Kind {
    Str,
    Int,
    Bool,
    /// Comma-separated list of strings.
    List,
}

/// Every setting with the kind of its value: the environment variable is
/// `HARVEST_` + the upper-cased key.
const KEYS: &[(&str, Kind)] = &[
    ("listen", Kind::Str),
    ("database_url", Kind::Str),
    ("redis_url", Kind::Str),
    ("jwt_secret", Kind::Str),
    ("payment_webhook_secret", Kind::Str),
    ("payment_simulated", Kind::Bool),
    ("node_id", Kind::Str),
    ("chat_sensitive_words", Kind::List),
    ("data_dir", Kind::Str),
    ("log_format", Kind::Str),
    ("request_body_limit_bytes", Kind::Int),
    ("request_timeout_s", Kind::Int),
    ("sql_timeout_ms", Kind::Int),
    ("sql_max_connections", Kind::Int),
    ("redis_timeout_ms", Kind::Int),
    ("redis_key_prefix", Kind::Str),
    ("shutdown_delay_ms", Kind::Int),
    ("shutdown_grace_s", Kind::Int),
    ("history_events", Kind::Int),
    ("history_age_s", Kind::Int),
    ("event_retention_days", Kind::Int),
    ("ws_outbound_queue_bytes", Kind::Int),
    ("ws_read_buffer_bytes", Kind::Int),
    ("ws_write_buffer_bytes", Kind::Int),
    ("room_batch_window_ms", Kind::Int),
    ("ws_threads", Kind::Int),
    ("test_publish", Kind::Bool),
    ("max_connections", Kind::Int),
    ("new_connections_per_s", Kind::Int),
    ("chat_per_viewer_per_s", Kind::Int),
    ("chat_per_user_per_s", Kind::Int),
    ("chat_burst", Kind::Int),
    ("chat_max_chars", Kind::Int),
    ("likes_per_connection_per_s", Kind::Int),
    ("reservations_per_user_per_s", Kind::Int),
    ("reservations_burst", Kind::Int),
    ("hold_sweep_interval_ms", Kind::Int),
];

/// The file key of every setting, in the order of [`Settings`].
pub fn keys() -> impl Iterator<Item = &'static str> {
    KEYS.iter().map(|(key, _)| *key)
}

/// The environment variable of a setting's file key: `HARVEST_` + the key upper-cased.
pub fn env_var(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.to_ascii_uppercase())
}

/// Settings given as command-line flags (the top layer).
#[derive(Debug, Clone, Default)]
pub struct Flags {
    pub config: Option<PathBuf>,
    pub listen: Option<String>,
    pub database_url: Option<String>,
    pub redis_url: Option<String>,
}

/// Why the configuration could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid {origin}: {message}")]
    Invalid { origin: String, message: String },
}

fn invalid(origin: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        origin: origin.into(),
        message: message.into(),
    }
}

fn env_value(var: &str, raw: &str, kind: Kind) -> Result<toml::Value, ConfigError> {
    Ok(match kind {
        Kind::Str => toml::Value::String(raw.to_owned()),
        Kind::Int => toml::Value::Integer(
            raw.trim()
                .parse()
                .map_err(|_| invalid(var, format!("expected an integer, got {raw:?}")))?,
        ),
        Kind::Bool => toml::Value::Boolean(match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            _ => return Err(invalid(var, format!("expected true or false, got {raw:?}"))),
        }),
        Kind::List => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|w| !w.is_empty())
                .map(|w| toml::Value::String(w.to_owned()))
                .collect(),
        ),
    })
}

impl Settings {
    /// Resolves the layers. `env` is the process environment (only `HARVEST_*` keys
    /// are read; unknown ones are ignored so tools may share the prefix).
    pub fn resolve(env: &HashMap<String, String>, flags: &Flags) -> Result<Self, ConfigError> {
        let mut table = toml::Table::new();
        let (path, required) = match &flags.config {
            Some(path) => (path.clone(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_FILE), false),
        };
        if required || path.exists() {
            table = read_file(&path)?;
        }
        let known: BTreeMap<&str, Kind> = KEYS.iter().copied().collect();
        for (var, raw) in env {
            let Some(key) = var.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let key = key.to_ascii_lowercase();
            if let Some(kind) = known.get(key.as_str()) {
                table.insert(key, env_value(var, raw, *kind)?);
            }
        }
        let flag_values = [
            ("listen", &flags.listen),
            ("database_url", &flags.database_url),
            ("redis_url", &flags.redis_url),
        ];
        for (key, value) in flag_values {
            if let Some(value) = value {
                table.insert(key.into(), toml::Value::String(value.clone()));
            }
        }
        // An empty Redis URL means "no Redis", whichever layer said it.
        if table.get("redis_url").and_then(|v| v.as_str()) == Some("") {
            table.remove("redis_url");
        }
        let settings: Settings = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| invalid("configuration", e.message().to_owned()))?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        harvest_store::Backend::from_url(self.database_url.expose())
            .map_err(|e| invalid("database_url", e.to_string()))?;
        if let Some(redis) = &self.redis_url {
            for url in redis.expose().split(',') {
                if !url.trim().starts_with("redis://") && !url.trim().starts_with("rediss://") {
                    return Err(invalid("redis_url", "expected redis://HOST:PORT"));
                }
            }
        }
        if self.request_body_limit_bytes == 0 {
            return Err(invalid("request_body_limit_bytes", "must be positive"));
        }
        if self.node_id.trim().is_empty() {
            return Err(invalid("node_id", "must not be empty"));
        }
        Ok(())
    }

    /// The listen address as a socket address.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen.parse().map_err(|_| {
            invalid(
                "listen",
                format!("expected HOST:PORT, got {:?}", self.listen),
            )
        })
    }

    /// The effective settings as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// The JWT secret: the configured one, else the one generated into
    /// `data_dir/jwt_secret` (created with mode 0600 on first use, with a warning).
    pub fn jwt_secret(&self) -> anyhow::Result<Secret> {
        if let Some(secret) = &self.jwt_secret {
            return Ok(secret.clone());
        }
        let path = self.data_dir.join("jwt_secret");
        match std::fs::read_to_string(&path) {
            Ok(s) if !s.trim().is_empty() => return Ok(Secret::new(s.trim())),
            Ok(_) => anyhow::bail!(
                "{} is empty; delete it or set HARVEST_JWT_SECRET",
                path.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
        }
        std::fs::create_dir_all(&self.data_dir)?;
        let secret: String = {
            use rand::Rng;
            let bytes: [u8; 32] = rand::rng().random();
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        };
        write_private(&path, &secret)?;
        tracing::warn!(
            path = %path.display(),
            "HARVEST_JWT_SECRET is not set: generated a secret for this machine; set one in production"
        );
        // Another process may have won the race to create the file: read it back.
        Ok(Secret::new(std::fs::read_to_string(&path)?.trim()))
    }
}

fn read_file(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    text.parse::<toml::Table>()
        .map_err(|e| invalid(path.display().to_string(), e.message().to_owned()))
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut file) => file.write_all(contents.as_bytes()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_key_is_a_field_of_the_settings() {
        let table = toml::Value::try_from(Settings {
            redis_url: Some(SecretUrl::new("redis://r:6379")),
            jwt_secret: Some(Secret::new("s")),
            payment_webhook_secret: Some(Secret::new("w")),
            ..Settings::default()
        })
        .unwrap();
        let fields: Vec<&str> = table
            .as_table()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut listed: Vec<&str> = keys().collect();
        listed.sort_unstable();
        let mut fields = fields;
        fields.sort_unstable();
        assert_eq!(listed, fields);
        assert_eq!(env_var("node_id"), "HARVEST_NODE_ID");
    }

    #[test]
    fn defaults_apply_without_any_layer() {
        // Tests run in the crate folder, which has no harvest.toml.
        assert!(!Path::new(DEFAULT_CONFIG_FILE).exists());
        let s = Settings::resolve(&env(&[]), &Flags::default()).unwrap();
        assert_eq!(s.listen, "127.0.0.1:8080");
        assert_eq!(s.database_url.expose(), "sqlite://./data/harvest.db");
        assert!(s.redis_url.is_none());
        assert!(s.payment_simulated);
        assert_eq!(s.request_body_limit_bytes, 65536);
    }

    #[test]
    fn layers_override_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("h.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:1000\"\nnode_id = \"from-file\"\nchat_sensitive_words = [\"a\", \"b\"]\n\
             request_timeout_s = 7\n",
        )
        .unwrap();
        let flags = Flags {
            config: Some(file),
            listen: Some("127.0.0.1:3000".into()),
            ..Flags::default()
        };
        let s = Settings::resolve(
            &env(&[
                ("HARVEST_LISTEN", "127.0.0.1:2000"),
                ("HARVEST_NODE_ID", "from-env"),
                ("HARVEST_CHAT_SENSITIVE_WORDS", "x, y,,z"),
                ("HARVEST_PAYMENT_SIMULATED", "false"),
                ("HARVEST_SOMETHING_ELSE", "ignored"),
                ("PATH", "/bin"),
            ]),
            &flags,
        )
        .unwrap();
        assert_eq!(s.listen, "127.0.0.1:3000", "flags beat env");
        assert_eq!(s.node_id, "from-env", "env beats file");
        assert_eq!(s.request_timeout_s, 7, "file beats defaults");
        assert_eq!(s.chat_sensitive_words, vec!["x", "y", "z"]);
        assert!(!s.payment_simulated);
    }

    #[test]
    fn bad_values_are_reported_with_their_origin() {
        let flags = Flags::default();
        let err = Settings::resolve(&env(&[("HARVEST_SQL_TIMEOUT_MS", "soon")]), &flags)
            .unwrap_err()
            .to_string();
        assert!(err.contains("HARVEST_SQL_TIMEOUT_MS"), "{err}");
        let err = Settings::resolve(&env(&[("HARVEST_LISTEN", "nowhere")]), &flags)
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen"), "{err}");
        let err = Settings::resolve(&env(&[("HARVEST_DATABASE_URL", "mysql://x")]), &flags)
            .unwrap_err()
            .to_string();
        assert!(err.contains("database_url"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("h.toml");
        std::fs::write(&file, "lisen = \"typo\"\n").unwrap();
        let err = Settings::resolve(
            &env(&[]),
            &Flags {
                config: Some(file),
                ..Flags::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("lisen"), "{err}");
        let missing = Flags {
            config: Some(dir.path().join("absent.toml")),
            ..Flags::default()
        };
        assert!(Settings::resolve(&env(&[]), &missing).is_err());
    }

    #[test]
    fn secrets_never_print() {
        let s = Settings::resolve(
            &env(&[
                ("HARVEST_JWT_SECRET", "jwt-very-secret"),
                ("HARVEST_PAYMENT_WEBHOOK_SECRET", "hook-very-secret"),
                (
                    "HARVEST_DATABASE_URL",
                    "postgres://harvest:pg-very-secret@db:5432/harvest",
                ),
                (
                    "HARVEST_REDIS_URL",
                    "redis://:redis-very-secret@r1:6379,redis://r2:6379",
                ),
            ]),
            &Flags::default(),
        )
        .unwrap();
        for rendered in [s.to_redacted_toml(), format!("{s:?}")] {
            for secret in [
                "jwt-very-secret",
                "hook-very-secret",
                "pg-very-secret",
                "redis-very-secret",
            ] {
                assert!(!rendered.contains(secret), "{secret} leaked in {rendered}");
            }
            assert!(rendered.contains("[redacted]"), "{rendered}");
            assert!(
                rendered.contains("postgres://harvest:***@db:5432/harvest"),
                "{rendered}"
            );
        }
    }

    #[test]
    fn generated_jwt_secret_is_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let s = Settings {
            data_dir: dir.path().join("data"),
            ..Settings::default()
        };
        let first = s.jwt_secret().unwrap();
        let second = s.jwt_secret().unwrap();
        assert_eq!(first.expose(), second.expose());
        assert_eq!(first.expose().len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("data/jwt_secret"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
