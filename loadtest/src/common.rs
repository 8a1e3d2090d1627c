//! What every scenario shares: the target and its HTTP API, tokens, `/metrics`,
//! process limits and CPU time, and WebSocket connections with admission retries.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use futures::StreamExt;
use harvest_proto::ws::{Encoding, Event, EventData, close};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::hist::Histogram;

/// Timeout of every HTTP request the load generator makes.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a TCP connect, a WebSocket handshake, or the first frame after it.
const WS_STEP_TIMEOUT: Duration = Duration::from_secs(15);
/// Attempts per WebSocket connection before it counts as a connect failure.
const CONNECT_ATTEMPTS: u32 = 10;
/// File descriptors kept free for HTTP clients, the runtime and stdio.
pub const FD_RESERVE: u64 = 64;

/// A WebSocket client connection.
pub type Ws = WebSocketStream<TcpStream>;

/// Options every scenario accepts to reach the server.
#[derive(Debug, Clone, clap::Args)]
pub struct TargetArgs {
    /// Base URL of a running `harvest serve`.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Allow a target that is not a loopback address.
    #[arg(long)]
    pub allow_remote: bool,
    /// HS256 secret the server signs tokens with (its HARVEST_JWT_SECRET); the load
    /// generator mints its own streamer and chatter tokens with it.
    #[arg(long, env = "HARVEST_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Use the protobuf subprotocol (`harvest.v1.protobuf`) instead of JSON.
    #[arg(long)]
    pub protobuf: bool,
    /// Spread client source addresses over this many loopback addresses (127.0.1.1,
    /// 127.0.1.2, ...) to pass the ephemeral-port limit of one address; 0 lets the
    /// kernel choose. Only for an IPv4 loopback target.
    #[arg(long, default_value_t = 64)]
    pub source_ips: u32,
    /// WebSocket connection attempts in flight at once.
    #[arg(long, default_value_t = 500)]
    pub concurrency: usize,
    /// New WebSocket connection attempts per second (the server admits 5,000/s by
    /// default and closes the rest with 4029, which are retried with backoff).
    #[arg(long, default_value_t = 4000)]
    pub connect_rate: u32,
    /// Longest time for the whole connect phase, in seconds.
    #[arg(long, default_value_t = 180)]
    pub connect_timeout: u64,
    /// Client WebSocket read buffer per connection, in bytes.
    #[arg(long, default_value_t = 8192)]
    pub ws_read_buffer: usize,
    /// Print one JSON summary object on stdout.
    #[arg(long)]
    pub json: bool,
}

impl TargetArgs {
    pub fn encoding(&self) -> Encoding {
        if self.protobuf {
            Encoding::Protobuf
        } else {
            Encoding::Json
        }
    }

    pub fn check(&self) -> anyhow::Result<()> {
        if self.concurrency == 0 || self.concurrency > 10_000 {
            bail!("--concurrency must be in 1..=10000");
        }
        if self.connect_rate == 0 {
            bail!("--connect-rate must be at least 1");
        }
        if !(1..=3600).contains(&self.connect_timeout) {
            bail!("--connect-timeout must be in 1..=3600 seconds");
        }
        if self.source_ips > 60_000 {
            bail!("--source-ips must be at most 60000");
        }
        if !(256..=16 * 1024 * 1024).contains(&self.ws_read_buffer) {
            bail!("--ws-read-buffer must be in 256..=16777216 bytes");
        }
        Ok(())
    }
}

/// A resolved target: its HTTP base URL and socket address.
#[derive(Debug, Clone)]
pub struct Target {
    /// `http://host:port` without a trailing slash.
    pub base: String,
    /// `host:port` for the WebSocket `Host` header and URLs.
    pub authority: String,
    pub addr: SocketAddr,
}

impl Target {
    /// Parses and resolves `url`; refuses a non-loopback address unless `allow_remote`.
    pub async fn resolve(url: &str, allow_remote: bool) -> anyhow::Result<Self> {
        let parsed = url::Url::parse(url).with_context(|| format!("invalid --url {url:?}"))?;
        if parsed.scheme() != "http" {
            bail!(
                "--url must be an http:// URL (got scheme {:?})",
                parsed.scheme()
            );
        }
        let host = parsed
            .host_str()
            .with_context(|| format!("--url {url:?} has no host"))?
            .to_owned();
        let port = parsed.port_or_known_default().unwrap_or(80);
        let lookup_host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((lookup_host.as_str(), port))
            .await
            .with_context(|| format!("cannot resolve {host}"))?
            .collect();
        let Some(&addr) = addrs.iter().find(|a| a.is_ipv4()).or(addrs.first()) else {
            bail!("{host} resolves to no address");
        };
        if !allow_remote && !addrs.iter().all(|a| a.ip().is_loopback()) {
            bail!(
                "refusing target {url}: {host} is not a loopback address \
                 (load is only sent to this machine; pass --allow-remote to override)"
            );
        }
        let authority = match addr {
            SocketAddr::V4(a) => a.to_string(),
            SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
        };
        Ok(Self {
            base: format!("http://{authority}"),
            authority,
            addr,
        })
    }

    /// The WebSocket URL of a room, with an optional token.
    pub fn ws_url(&self, room_id: &str, token: Option<&str>) -> String {
        let mut url = format!("ws://{}/ws/rooms/{room_id}", self.authority);
        if let Some(token) = token {
            url.push_str("?token=");
            url.push_str(token);
        }
        url
    }

    /// Source addresses to spread client sockets over: `count` addresses from
    /// 127.0.1.1 on, when the target is IPv4 loopback; else none (kernel's choice).
    pub fn source_ips(&self, count: u32) -> Vec<IpAddr> {
        if count == 0 || !matches!(self.addr.ip(), IpAddr::V4(ip) if ip.is_loopback()) {
            return Vec::new();
        }
        let first = u32::from(Ipv4Addr::new(127, 0, 1, 1));
        (0..count)
            .map(|i| IpAddr::V4(Ipv4Addr::from(first + i)))
            .collect()
    }
}

/// HS256 tokens signed like `harvest token` signs them.
pub struct Minter {
    key: jsonwebtoken::EncodingKey,
    exp: u64,
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    name: &'a str,
    exp: u64,
    iat: u64,
    roles: &'a [&'a str],
}

impl Minter {
    /// Tokens valid for `ttl` from now.
    pub fn new(secret: &str, ttl: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            key: jsonwebtoken::EncodingKey::from_secret(secret.as_bytes())
                .context("unusable --jwt-secret")?,
            exp: unix_s() + ttl.as_secs(),
        })
    }

    pub fn token(&self, sub: &str, name: &str, roles: &[&str]) -> anyhow::Result<String> {
        let claims = Claims {
            sub,
            name,
            exp: self.exp,
            iat: unix_s(),
            roles,
        };
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &self.key)
            .context("cannot sign a token")
    }
}

/// Seconds since the Unix epoch.
pub fn unix_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Microseconds since the Unix epoch.
pub fn unix_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// A short id for this run, to keep its skus and user ids apart from other runs.
pub fn run_id() -> String {
    format!("{:x}", unix_ms())
}

/// The server's HTTP API, as one streamer.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

/// Server figures read from `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerSample {
    pub rss_bytes: u64,
    pub cpu_s: f64,
}

impl Api {
    pub fn new(target: &Target, token: Option<String>) -> anyhow::Result<Self> {
        Self::new_base(&target.base, token)
    }

    /// The API with a client that keeps up to `idle` connections open between
    /// requests (for a caller with that many requests in flight).
    pub fn new_pooled(target: &Target, token: Option<String>, idle: usize) -> anyhow::Result<Self> {
        Self::new_base_pooled(&target.base, token, idle)
    }

    /// The same API with a client of its own keeping up to `idle` connections open.
    pub fn fresh_pooled(&self, idle: usize) -> anyhow::Result<Self> {
        Self::new_base_pooled(&self.base, self.token.clone(), idle)
    }

    fn new_base(base: &str, token: Option<String>) -> anyhow::Result<Self> {
        Self::new_base_pooled(base, token, 4)
    }

    fn new_base_pooled(base: &str, token: Option<String>, idle: usize) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(idle)
            .no_proxy()
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self {
            http,
            base: base.to_owned(),
            token,
        })
    }

    /// The same API with a client of its own (for use on another runtime).
    pub fn fresh(&self) -> anyhow::Result<Self> {
        Self::new_base(&self.base, self.token.clone())
    }

    /// `GET /healthz`, with a clear message when nothing answers.
    pub async fn check_reachable(&self) -> anyhow::Result<()> {
        let url = format!("{}/healthz", self.base);
        let response = self.http.get(&url).send().await.map_err(|e| {
            anyhow::anyhow!(
                "cannot reach harvest at {}: {} (is `harvest serve` running there?)",
                self.base,
                error_chain(&e)
            )
        })?;
        if !response.status().is_success() {
            bail!(
                "{url} answered {}; is this a harvest server?",
                response.status()
            );
        }
        Ok(())
    }

    /// One request to the API with this client's token; the answer's JSON (`Null` when
    /// empty), or an error naming the request and the status.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method.clone(), &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{method} {path}: {}", error_chain(&e)))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .with_context(|| format!("{method} {path}: reading the answer"))?;
        if !status.is_success() {
            bail!(
                "{method} {path} answered {status}: {}",
                truncate(&text, 300)
            );
        }
        if text.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).with_context(|| format!("{method} {path}: answer is not JSON"))
    }

    /// Creates a product and returns its id.
    pub async fn create_product(&self, sku: &str) -> anyhow::Result<String> {
        let product = self
            .call(
                reqwest::Method::POST,
                "/api/v1/products",
                Some(json!({"sku": sku, "title": "Load-test kiwi, 5 kg", "origin": "Huayuan, Hunan", "list_price": 3990})),
            )
            .await?;
        id_of(&product, "product")
    }

    /// Creates `count` products (`lt-{run_id}-{i}`) and a live room titled `title`
    /// with all of them in its bag; returns the room's id and the products' ids.
    pub async fn live_room_with_bag(
        &self,
        run_id: &str,
        count: u64,
        title: &str,
    ) -> anyhow::Result<(String, Vec<String>)> {
        let mut product_ids = Vec::new();
        for i in 0..count {
            product_ids.push(
                self.create_product(&format!("lt-{run_id}-{i}"))
                    .await
                    .context("setup: creating a product (is --jwt-secret the server's secret?)")?,
            );
        }
        let room_id = self
            .create_live_room(title, &product_ids)
            .await
            .context("setup: creating and starting the room")?;
        Ok((room_id, product_ids))
    }

    /// Creates a room, adds products to its bag, starts it; returns its id.
    pub async fn create_live_room(
        &self,
        title: &str,
        product_ids: &[String],
    ) -> anyhow::Result<String> {
        let room = self
            .call(
                reqwest::Method::POST,
                "/api/v1/rooms",
                Some(json!({"title": title})),
            )
            .await?;
        let room_id = id_of(&room, "room")?;
        for product_id in product_ids {
            self.call(
                reqwest::Method::POST,
                &format!("/api/v1/rooms/{room_id}/products"),
                Some(json!({"product_id": product_id})),
            )
            .await?;
        }
        self.call(
            reqwest::Method::POST,
            &format!("/api/v1/rooms/{room_id}/start"),
            None,
        )
        .await?;
        Ok(room_id)
    }

    /// Pins `product_id` (or unpins with `None`): one `product.pinned` room event.
    pub async fn pin(&self, room_id: &str, product_id: Option<&str>) -> anyhow::Result<()> {
        self.call(
            reqwest::Method::POST,
            &format!("/api/v1/rooms/{room_id}/pin"),
            Some(json!({"product_id": product_id})),
        )
        .await
        .map(|_| ())
    }

    /// Publishes a `test.message` room event through the admin-only test publish path
    /// (the server must run with `HARVEST_TEST_PUBLISH=true`).
    pub async fn test_event(&self, room_id: &str, text: &str) -> anyhow::Result<()> {
        self.call(
            reqwest::Method::POST,
            &format!("/api/v1/admin/rooms/{room_id}/test-events"),
            Some(json!({"text": text})),
        )
        .await
        .map(|_| ())
    }

    /// The room's latest seq (from the live room log).
    pub async fn last_seq(&self, room_id: &str) -> anyhow::Result<u64> {
        let page = self
            .call(
                reqwest::Method::GET,
                &format!("/api/v1/rooms/{room_id}/events?after_seq=0&limit=1"),
                None,
            )
            .await?;
        page.get("last_seq")
            .and_then(Value::as_u64)
            .context("the room's event log has no last_seq")
    }

    /// Ends the room (cleanup after a run).
    pub async fn end_room(&self, room_id: &str) -> anyhow::Result<()> {
        self.call(
            reqwest::Method::POST,
            &format!("/api/v1/rooms/{room_id}/end"),
            None,
        )
        .await
        .map(|_| ())
    }

    /// RSS and CPU time of the server process, from `/metrics`.
    pub async fn server_sample(&self) -> anyhow::Result<ServerSample> {
        let text = self.metrics_text().await?;
        let rss = metric_value(&text, "process_resident_memory_bytes")
            .context("/metrics has no process_resident_memory_bytes")?;
        let cpu = metric_value(&text, "process_cpu_seconds_total")
            .context("/metrics has no process_cpu_seconds_total")?;
        Ok(ServerSample {
            rss_bytes: rss as u64,
            cpu_s: cpu,
        })
    }
}

fn id_of(value: &Value, what: &str) -> anyhow::Result<String> {
    value
        .get("id")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .with_context(|| format!("the created {what} has no id: {value}"))
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// An error and its sources on one line (reqwest hides the useful part in the chain).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// The value of a Prometheus metric in the text exposition format: the sum over its
/// series (one series for unlabelled metrics). `None` when absent.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    let mut total = None;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || !line.starts_with(name) {
            continue;
        }
        let rest = &line[name.len()..];
        let rest = match rest.chars().next() {
            Some('{') => match rest.find('}') {
                Some(end) => &rest[end + 1..],
                None => continue,
            },
            Some(c) if c.is_whitespace() => rest,
            _ => continue, // a longer name with this prefix
        };
        if let Some(value) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            *total.get_or_insert(0.0) += value;
        }
    }
    total
}

/// The labels of a Prometheus sample, in their order: (name, value).
pub type Labels = Vec<(String, String)>;

/// One sample line of the Prometheus text format: its metric name, its labels (values
/// unescaped) and its value. `None` for comments, blank and malformed lines.
pub fn parse_sample(line: &str) -> Option<(&str, Labels, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        // key="value" pairs; values may hold `}`, `,` and escaped quotes.
        let mut chars = inner.char_indices().peekable();
        let mut end = None;
        loop {
            while chars
                .next_if(|(_, c)| *c == ',' || c.is_whitespace())
                .is_some()
            {}
            match chars.peek() {
                Some((i, '}')) => {
                    end = Some(*i + 1);
                    break;
                }
                None => break,
                _ => {}
            }
            let mut key = String::new();
            while let Some((_, c)) = chars.next_if(|(_, c)| *c != '=') {
                key.push(c);
            }
            chars.next(); // '='
            if chars.next().map(|(_, c)| c) != Some('"') {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()?.1 {
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    '"' => break,
                    c => value.push(c),
                }
            }
            labels.push((key.trim().to_owned(), value));
        }
        rest = &inner[end?..];
    }
    let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    Some((name, labels, value))
}

/// A Prometheus histogram's series for one label value, read from `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistogramSample {
    /// `(le, cumulative count)` in ascending `le`, `+Inf` last.
    pub buckets: Vec<(f64, f64)>,
    pub sum: f64,
    pub count: f64,
}

impl HistogramSample {
    /// The series of histogram `name` whose label `label` is `value` (buckets, sum and
    /// count added up over any other labels); `None` when absent.
    pub fn read(text: &str, name: &str, label: &str, value: &str) -> Option<Self> {
        let (bucket, sum, count) = (
            format!("{name}_bucket"),
            format!("{name}_sum"),
            format!("{name}_count"),
        );
        let mut h = Self::default();
        let mut buckets: Vec<(f64, f64)> = Vec::new();
        let mut found = false;
        for (metric, labels, v) in text.lines().filter_map(parse_sample) {
            if !labels.iter().any(|(k, lv)| k == label && lv == value) {
                continue;
            }
            if metric == bucket {
                let Some(le) = labels
                    .iter()
                    .find(|(k, _)| k == "le")
                    .and_then(|(_, le)| le.parse::<f64>().ok())
                else {
                    continue;
                };
                match buckets.iter_mut().find(|(b, _)| *b == le) {
                    Some(slot) => slot.1 += v,
                    None => buckets.push((le, v)),
                }
            } else if metric == sum {
                h.sum += v;
            } else if metric == count {
                h.count += v;
                found = true;
            }
        }
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        h.buckets = buckets;
        found.then_some(h)
    }

    /// What was recorded between `before` and `self` (absent `before`: since start).
    pub fn since(&self, before: Option<&Self>) -> Self {
        let Some(b) = before else {
            return self.clone();
        };
        let earlier = |le: f64| {
            b.buckets
                .iter()
                .find(|(x, _)| *x == le)
                .map_or(0.0, |(_, c)| *c)
        };
        Self {
            buckets: self
                .buckets
                .iter()
                .map(|&(le, c)| (le, (c - earlier(le)).max(0.0)))
                .collect(),
            sum: (self.sum - b.sum).max(0.0),
            count: (self.count - b.count).max(0.0),
        }
    }

    /// The mean, when anything was recorded.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0.0).then(|| self.sum / self.count)
    }

    /// The upper bound of the bucket holding quantile `q` (nearest rank); `None` when
    /// empty, infinite when it lies above the last finite bucket.
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        if self.count <= 0.0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * self.count).ceil().max(1.0);
        self.buckets
            .iter()
            .find(|(_, c)| *c >= rank)
            .map(|(le, _)| *le)
            .or(Some(f64::INFINITY))
    }
}

/// The first value of label `label` on any series of `/metrics` whose name starts
/// with `prefix` (e.g. a `database` label on a build-info gauge).
pub fn metric_label(text: &str, prefix: &str, label: &str) -> Option<String> {
    text.lines()
        .filter_map(parse_sample)
        .filter(|(name, _, _)| name.starts_with(prefix))
        .find_map(|(_, labels, _)| labels.into_iter().find(|(k, _)| k == label).map(|(_, v)| v))
}

/// The 1-minute load average, from `/proc/loadavg`.
pub fn load_avg_1m() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPU time (user + system) this process used so far, in seconds.
pub fn client_cpu_s() -> f64 {
    use nix::sys::resource::{UsageWho, getrusage};
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(usage) => {
            let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
            secs(usage.user_time()) + secs(usage.system_time())
        }
        Err(_) => 0.0,
    }
}

/// CPU time of the whole machine so far, in seconds, from `/proc/stat` (USER_HZ =
/// 100): busy (all but idle and iowait) and its softirq part (loopback networking
/// mostly); zeros when unreadable.
pub fn machine_cpu_s() -> (f64, f64) {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|text| text.lines().next().map(busy_ticks))
        .map_or((0.0, 0.0), |(busy, softirq)| {
            (busy as f64 / 100.0, softirq as f64 / 100.0)
        })
}

/// Busy and softirq ticks of a `/proc/stat` `cpu` line (busy: user, nice, system,
/// irq, softirq, steal).
fn busy_ticks(line: &str) -> (u64, u64) {
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let busy = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| fields.get(i))
        .sum();
    (busy, fields.get(6).copied().unwrap_or(0))
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the soft limit in force.
pub fn raise_nofile() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Err(_) => 1024,
    }
}

/// Fails unless this process may open `connections` sockets (plus a reserve).
pub fn check_nofile(connections: u64) -> anyhow::Result<u64> {
    let limit = raise_nofile();
    if connections + FD_RESERVE > limit {
        bail!(
            "RLIMIT_NOFILE is {limit} (raised to the hard limit): this process can hold at most \
             {} connections, {connections} asked. Raise the hard limit (`ulimit -Hn`, needs \
             CAP_SYS_RESOURCE) or ask for fewer connections; the server needs as many file \
             descriptors as connections too.",
            limit.saturating_sub(FD_RESERVE)
        );
    }
    Ok(limit)
}

/// A monotonic clock shared by all tasks: microseconds since the start of the process.
#[derive(Clone, Copy)]
pub struct Clock {
    origin: Instant,
}

impl Clock {
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }

    pub fn now_us(&self) -> u64 {
        self.origin.elapsed().as_micros() as u64
    }
}

/// Why a WebSocket connection could not be opened.
#[derive(Debug)]
pub enum ConnectError {
    /// Closed with 4029 (node full or connecting too fast): retry later.
    TryLater,
    /// Closed with another code before any event.
    Closed(u16),
    /// Anything else (TCP, handshake, timeout, unexpected first frame).
    Other(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TryLater => write!(f, "closed with 4029 (try later)"),
            Self::Closed(code) => write!(f, "closed with {code} before the welcome"),
            Self::Other(e) => f.write_str(e),
        }
    }
}

/// Counters of the connect phase.
#[derive(Default)]
pub struct ConnectStats {
    pub connected: AtomicU64,
    pub failed: AtomicU64,
    pub retries: AtomicU64,
    /// The last failure's message, for the summary.
    pub last_error: std::sync::Mutex<Option<String>>,
}

impl ConnectStats {
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|g| g.clone())
    }
}

/// Opens WebSocket connections to one target with bounded concurrency, a bounded
/// attempt rate, spread source addresses and retries after 4029.
pub struct Connector {
    target: Target,
    encoding: Encoding,
    config: WebSocketConfig,
    sources: Vec<IpAddr>,
    next_source: AtomicUsize,
    in_flight: Semaphore,
    pacer: tokio::sync::Mutex<tokio::time::Interval>,
    deadline: tokio::time::Instant,
    pub stats: ConnectStats,
}

impl Connector {
    pub fn new(target: &Target, args: &TargetArgs) -> Arc<Self> {
        let config = WebSocketConfig::default()
            .read_buffer_size(args.ws_read_buffer)
            .write_buffer_size(0)
            .max_write_buffer_size(1024 * 1024)
            .max_message_size(Some(16 * 1024 * 1024))
            .max_frame_size(Some(16 * 1024 * 1024));
        let period = Duration::from_secs_f64(1.0 / f64::from(args.connect_rate));
        let mut pacer = tokio::time::interval(period);
        pacer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Arc::new(Self {
            target: target.clone(),
            encoding: args.encoding(),
            config,
            sources: target.source_ips(args.source_ips),
            next_source: AtomicUsize::new(0),
            in_flight: Semaphore::new(args.concurrency),
            pacer: tokio::sync::Mutex::new(pacer),
            deadline: tokio::time::Instant::now() + Duration::from_secs(args.connect_timeout),
            stats: ConnectStats::default(),
        })
    }

    /// Opens one connection to `url` and reads up to its `session.welcome`, retrying
    /// 4029 and transient errors with exponential backoff. Counts the outcome.
    pub async fn open(&self, url: &str) -> Option<(Ws, Vec<Event>)> {
        let mut last = String::new();
        for attempt in 0..CONNECT_ATTEMPTS {
            if tokio::time::Instant::now() >= self.deadline {
                last = "connect phase timed out".into();
                break;
            }
            let outcome = {
                let Ok(_permit) = self.in_flight.acquire().await else {
                    break;
                };
                self.pacer.lock().await.tick().await;
                tokio::time::timeout_at(self.deadline, self.attempt(url))
                    .await
                    .unwrap_or_else(|_| Err(ConnectError::Other("connect phase timed out".into())))
            };
            match outcome {
                Ok(ok) => {
                    self.stats.connected.fetch_add(1, Ordering::Relaxed);
                    return Some(ok);
                }
                Err(ConnectError::Closed(code)) if !close::should_resume(code) => {
                    last = ConnectError::Closed(code).to_string();
                    break;
                }
                Err(e) => {
                    last = e.to_string();
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    let backoff_ms = (100u64 << attempt.min(5)).min(3_000);
                    let jitter = rand::random_range(0..=backoff_ms / 2);
                    tokio::time::sleep(Duration::from_millis(backoff_ms + jitter)).await;
                }
            }
        }
        self.stats.failed.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut slot) = self.stats.last_error.lock() {
            *slot = Some(last);
        }
        None
    }

    async fn attempt(&self, url: &str) -> Result<(Ws, Vec<Event>), ConnectError> {
        let other =
            |what: &str, e: &dyn std::fmt::Display| ConnectError::Other(format!("{what}: {e}"));
        // The URL names the node (viewers may be spread over several); the target's
        // address is the fallback.
        let addr = url::Url::parse(url)
            .ok()
            .and_then(|u| {
                let host = u.host_str()?.to_owned();
                format!("{host}:{}", u.port_or_known_default()?)
                    .parse::<SocketAddr>()
                    .ok()
            })
            .unwrap_or(self.target.addr);
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(|e| other("socket", &e))?;
        if !self.sources.is_empty() {
            let i = self.next_source.fetch_add(1, Ordering::Relaxed) % self.sources.len();
            socket
                .bind(SocketAddr::new(self.sources[i], 0))
                .map_err(|e| other("bind", &e))?;
        }
        let stream = tokio::time::timeout(WS_STEP_TIMEOUT, socket.connect(addr))
            .await
            .map_err(|_| ConnectError::Other("TCP connect timed out".into()))?
            .map_err(|e| other("TCP connect", &e))?;
        let _ = stream.set_nodelay(true);
        let mut request = url
            .into_client_request()
            .map_err(|e| other("request", &e))?;
        if self.encoding == Encoding::Protobuf {
            request.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_static(harvest_proto::ws::SUBPROTOCOL_PROTOBUF),
            );
        }
        let (mut ws, _) = tokio::time::timeout(
            WS_STEP_TIMEOUT,
            tokio_tungstenite::client_async_with_config(request, stream, Some(self.config)),
        )
        .await
        .map_err(|_| ConnectError::Other("WebSocket handshake timed out".into()))?
        .map_err(|e| other("WebSocket handshake", &e))?;
        loop {
            let message = tokio::time::timeout(WS_STEP_TIMEOUT, ws.next())
                .await
                .map_err(|_| ConnectError::Other("no welcome within 15 s".into()))?;
            let events = match message {
                None => return Err(ConnectError::Other("closed before the welcome".into())),
                Some(Err(e)) => return Err(other("reading the welcome", &e)),
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.map(|f| u16::from(f.code)).unwrap_or(1005);
                    return Err(if code == close::TRY_LATER {
                        ConnectError::TryLater
                    } else {
                        ConnectError::Closed(code)
                    });
                }
                Some(Ok(message)) => match decode(self.encoding, &message) {
                    Some(Ok(events)) => events,
                    Some(Err(e)) => return Err(other("decoding the welcome", &e)),
                    None => continue, // ping/pong
                },
            };
            return match events.first() {
                Some(Event {
                    data: EventData::SessionWelcome(_),
                    ..
                }) => Ok((ws, events)),
                Some(e) => Err(ConnectError::Other(format!(
                    "first event is {}, not session.welcome",
                    e.event_type()
                ))),
                None => Err(ConnectError::Other("empty first frame".into())),
            };
        }
    }
}

/// Decodes a server frame of `encoding`; `None` for control frames.
pub fn decode(
    encoding: Encoding,
    message: &Message,
) -> Option<Result<Vec<Event>, harvest_proto::ws::EventDecodeError>> {
    match (encoding, message) {
        (Encoding::Json, Message::Text(text)) => {
            Some(harvest_proto::ws::decode_json_frame(text.as_bytes()))
        }
        (Encoding::Protobuf, Message::Binary(bytes)) => {
            Some(harvest_proto::ws::decode_proto_frame(bytes))
        }
        (Encoding::Json, Message::Binary(bytes)) => {
            Some(harvest_proto::ws::decode_json_frame(bytes))
        }
        (Encoding::Protobuf, Message::Text(text)) => {
            Some(harvest_proto::ws::decode_proto_frame(text.as_bytes()))
        }
        _ => None,
    }
}

/// A client using more than this share of one core is the bottleneck itself.
pub const CLIENT_BOUND_CORES: f64 = 0.9;

/// Rounded to 0.01, for the summaries.
pub fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Rounded to 0.001, for the summaries (targets are checked before rounding).
pub fn round3(v: Option<f64>) -> Option<f64> {
    v.map(|v| (v * 1000.0).round() / 1000.0)
}

/// `a / b`, when both are finite and `b` is positive.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (a.is_finite() && b.is_finite() && b > 0.0).then(|| a / b)
}

/// `count` per second of `seconds`, rounded to 0.01.
pub fn per_s(count: u64, seconds: f64) -> f64 {
    round2(count as f64 / seconds.max(1e-9))
}

/// A flash sale as `GET /api/v1/flash-sales/{id}` gives it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SaleState {
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub stock: u64,
    #[serde(default)]
    pub remaining: u64,
    #[serde(default)]
    pub held: u64,
    #[serde(default)]
    pub sold: u64,
}

/// What a flash-sale scenario sets up before any timing.
#[derive(Debug, Clone)]
pub struct SaleSpec {
    pub price: u64,
    pub stock: u64,
    pub per_user_limit: u64,
    pub duration_s: u64,
    pub hold_ttl_s: u64,
}

/// The product, live room and live flash sale a scenario created.
#[derive(Debug, Clone)]
pub struct SaleSetup {
    pub product_id: String,
    pub room_id: String,
    pub sale_id: String,
}

impl Api {
    /// As a streamer: creates a product (sku `lt-<sku_tag>-<run_id>`), a live room with
    /// it in its bag and a flash sale of it, and waits up to 5 s for the sale to be
    /// `live`.
    pub async fn setup_sale(
        &self,
        run_id: &str,
        sku_tag: &str,
        room_title: &str,
        spec: &SaleSpec,
    ) -> anyhow::Result<SaleSetup> {
        let product_id = self
            .create_product(&format!("lt-{sku_tag}-{run_id}"))
            .await
            .context("setup: creating the product (is --jwt-secret the server's secret?)")?;
        let room_id = self
            .create_live_room(
                &format!("{room_title} {run_id}"),
                std::slice::from_ref(&product_id),
            )
            .await
            .context("setup: creating and starting the room")?;
        let sale = self
            .call(
                reqwest::Method::POST,
                &format!("/api/v1/rooms/{room_id}/flash-sales"),
                Some(json!({
                    "product_id": product_id,
                    "price": spec.price,
                    "stock": spec.stock,
                    "per_user_limit": spec.per_user_limit,
                    "duration_s": spec.duration_s,
                    "hold_ttl_s": spec.hold_ttl_s,
                })),
            )
            .await
            .context("setup: creating the flash sale")?;
        let sale_id = id_of(&sale, "sale")?;
        let live_by = Instant::now() + Duration::from_secs(5);
        loop {
            let state = self.sale_state(&sale_id).await?;
            if state.status == "live" {
                break;
            }
            if Instant::now() >= live_by {
                bail!(
                    "sale {sale_id} is {:?}, not live, 5 s after its creation",
                    state.status
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(SaleSetup {
            product_id,
            room_id,
            sale_id,
        })
    }

    /// Reads a flash sale.
    pub async fn sale_state(&self, sale_id: &str) -> anyhow::Result<SaleState> {
        let value = self
            .call(
                reqwest::Method::GET,
                &format!("/api/v1/flash-sales/{sale_id}"),
                None,
            )
            .await?;
        serde_json::from_value(value).context("the sale's answer is not a Sale")
    }

    /// Ends the sale and the room (cleanup after a run); failures are only noted.
    pub async fn end_sale_and_room(&self, setup: &SaleSetup) {
        let sale_id = &setup.sale_id;
        if let Err(e) = self
            .call(
                reqwest::Method::POST,
                &format!("/api/v1/flash-sales/{sale_id}/end"),
                None,
            )
            .await
        {
            crate::report::note(None, format!("could not end sale {sale_id}: {e:#}"));
        }
        if let Err(e) = self.end_room(&setup.room_id).await {
            crate::report::note(None, format!("could not end room {}: {e:#}", setup.room_id));
        }
    }

    /// `/readyz` as JSON (its body also when it answers 503), or `None`.
    pub async fn readiness(&self) -> Option<Value> {
        let response = self
            .http
            .get(format!("{}/readyz", self.base))
            .send()
            .await
            .ok()?;
        response.json::<Value>().await.ok()
    }

    /// The stock engine: `redis` when `/readyz` checks Redis, else `memory`.
    pub async fn server_engine(&self) -> Option<String> {
        self.readiness().await.map(|r| {
            if r.pointer("/checks/redis").is_some() {
                "redis".to_owned()
            } else {
                "memory".to_owned()
            }
        })
    }

    /// The text of `/metrics`.
    pub async fn metrics_text(&self) -> anyhow::Result<String> {
        let response = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("GET /metrics: {}", error_chain(&e)))?;
        if !response.status().is_success() {
            bail!("GET /metrics answered {}", response.status());
        }
        response
            .text()
            .await
            .context("GET /metrics: reading the answer")
    }
}

/// `Authorization: Bearer <token>` headers of `count` viewers, user ids from `user_of`,
/// minted before any timing.
pub fn mint_bearers(
    minter: &Minter,
    count: u64,
    user_of: &dyn Fn(u32) -> String,
) -> anyhow::Result<Vec<reqwest::header::HeaderValue>> {
    let mut auth = Vec::with_capacity(count as usize);
    for buyer in 0..count as u32 {
        let token = minter.token(&user_of(buyer), &format!("buyer {buyer}"), &["viewer"])?;
        auth.push(
            reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .context("token header")?,
        );
    }
    Ok(auth)
}

/// Keep-alive HTTP/1.1 clients, one per source address, together pooling `concurrency`
/// connections.
pub fn http_clients(
    target: &Target,
    source_ips: u32,
    concurrency: usize,
) -> anyhow::Result<Vec<reqwest::Client>> {
    let sources: Vec<Option<IpAddr>> = match target.source_ips(source_ips) {
        ips if ips.is_empty() => vec![None],
        ips => ips.into_iter().map(Some).collect(),
    };
    let per_client = concurrency.div_ceil(sources.len()) + 8;
    sources
        .into_iter()
        .map(|ip| {
            reqwest::Client::builder()
                .http1_only()
                .timeout(HTTP_TIMEOUT)
                .connect_timeout(Duration::from_secs(5))
                .pool_max_idle_per_host(per_client)
                .pool_idle_timeout(Duration::from_secs(300))
                .tcp_nodelay(true)
                .local_address(ip)
                .no_proxy()
                .build()
                .context("cannot build the HTTP client")
        })
        .collect()
}

/// A record of one request whose latency a phase reports.
pub trait Timed {
    fn latency_us(&self) -> u64;
}

/// The outcome of one phase of HTTP requests.
pub struct PhaseOutcome<T> {
    pub records: Vec<T>,
    pub elapsed_s: f64,
    pub client_cpu_s: f64,
    /// Stopped at the deadline with items left.
    pub truncated: bool,
}

impl<T> PhaseOutcome<T> {
    /// This process's CPU over the phase, in cores.
    pub fn client_cores(&self) -> f64 {
        self.client_cpu_s / self.elapsed_s.max(1e-9)
    }
}

impl<T: Timed> PhaseOutcome<T> {
    /// The latency of every record.
    pub fn latency(&self) -> Histogram {
        let h = Histogram::new();
        for r in &self.records {
            h.record(r.latency_us());
        }
        h
    }
}

/// Runs `items` work items with `concurrency` workers, each looping over the next item
/// on its own keep-alive client, until all are done or `limit` has passed. A work item
/// returns the records of the requests it made. `prefix` names the progress bar (none
/// when `None`).
pub async fn run_phase<T, F, Fut>(
    prefix: Option<&'static str>,
    clients: &[reqwest::Client],
    concurrency: usize,
    items: usize,
    limit: Duration,
    work: F,
) -> PhaseOutcome<T>
where
    T: Send + 'static,
    F: Fn(reqwest::Client, u32, Instant) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<T>> + Send + 'static,
{
    let work = Arc::new(work);
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let bar = prefix.map(|p| crate::report::bar(items as u64, p));
    let cpu_before = client_cpu_s();
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + limit;
    let mut workers = JoinSet::new();
    for w in 0..concurrency.min(items) {
        let client = clients[w % clients.len()].clone();
        let (work, next, done) = (work.clone(), next.clone(), done.clone());
        workers.spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= items {
                    return (out, false);
                }
                if tokio::time::Instant::now() >= deadline {
                    return (out, true);
                }
                out.extend(work(client.clone(), i as u32, start).await);
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    // Every request times out after HTTP_TIMEOUT (a work item makes at most a few
    // requests one after the other), so workers end by then; the guard is for safety.
    let hard_stop = deadline + 2 * HTTP_TIMEOUT + Duration::from_secs(5);
    let mut records = Vec::with_capacity(items);
    let mut truncated = false;
    loop {
        tokio::select! {
            joined = workers.join_next() => match joined {
                None => break,
                Some(Ok((out, cut))) => {
                    records.extend(out);
                    truncated |= cut;
                }
                Some(Err(_)) => truncated = true,
            },
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                if let Some(bar) = &bar {
                    bar.set_position(done.load(Ordering::Relaxed));
                }
                if tokio::time::Instant::now() >= hard_stop {
                    workers.abort_all();
                    truncated = true;
                }
            }
        }
    }
    let elapsed_s = start.elapsed().as_secs_f64();
    let client_cpu_s = client_cpu_s() - cpu_before;
    if let Some(bar) = bar {
        bar.set_position(done.load(Ordering::Relaxed));
        bar.finish();
    }
    if truncated {
        crate::report::note(
            None,
            format!(
                "{}: stopped at --duration-limit ({} s) with {} of {items} items done",
                prefix.unwrap_or("warm-up"),
                limit.as_secs(),
                done.load(Ordering::Relaxed)
            ),
        );
    }
    PhaseOutcome {
        records,
        elapsed_s,
        client_cpu_s,
        truncated,
    }
}

// Buyers: reservations and checkouts through HTTP, shared by `checkout` and `contest`.

/// Attempts per reservation (429 and 503 are retried).
pub const RESERVE_ATTEMPTS: u32 = 30;

/// The buyer of hold `i`: buyers take turns.
pub fn buyer_of(hold: u64, buyers: u64) -> u32 {
    (hold % buyers.max(1)) as u32
}

/// An order as the checkout answer or the export gives it (only what is checked).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct OrderSeen {
    pub id: String,
    #[serde(default)]
    pub hold_id: String,
    #[serde(default)]
    pub buyer_id: String,
    #[serde(default)]
    pub quantity: i64,
    #[serde(default)]
    pub amount: i64,
    #[serde(default)]
    pub status: String,
    /// When the order was paid (the server's clock).
    #[serde(default)]
    pub paid_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// One checkout request (or a failure to get its answer).
#[derive(Debug, Clone, Default)]
pub struct PayRecord {
    /// Index of the hold in the run's list of holds.
    pub hold: u32,
    /// HTTP status; 0 when no answer came (connection error, timeout).
    pub status: u16,
    /// The error code of an error answer (`http_<status>` when the body has none).
    pub code: Option<String>,
    /// The order of a 200 answer.
    pub order: Option<OrderSeen>,
    pub latency_us: u64,
    /// What went wrong, for 5xx answers, unreadable answers and failures.
    pub detail: Option<String>,
}

impl Timed for PayRecord {
    fn latency_us(&self) -> u64 {
        self.latency_us
    }
}

/// The body of an error answer (API.md §1), as far as the code.
#[derive(Deserialize)]
pub struct ErrorBody {
    pub error: ErrorInner,
}

/// The `error` object of an error answer.
#[derive(Deserialize)]
pub struct ErrorInner {
    pub code: String,
}

/// Reads a checkout answer: the order of a 200, else the error code (`http_<status>`
/// when the body carries none). Returns (code, order, detail).
pub fn parse_checkout(
    status: u16,
    body: &[u8],
) -> (Option<String>, Option<OrderSeen>, Option<String>) {
    let text = || String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
    if status == 200 {
        return match serde_json::from_slice::<OrderSeen>(body) {
            Ok(o) if !o.id.is_empty() => (None, Some(o), None),
            _ => (
                Some("invalid_answer".into()),
                None,
                Some(format!("200 without an order: {}", text())),
            ),
        };
    }
    let code = serde_json::from_slice::<ErrorBody>(body)
        .map(|e| e.error.code)
        .unwrap_or_else(|_| format!("http_{status}"));
    let detail = (status >= 500).then(|| format!("{status}: {}", text()));
    (Some(code), None, detail)
}

/// The key of an error in the `errors` object: `<status>/<code>`, or `no_answer`.
pub fn error_key(record: &PayRecord) -> String {
    match (record.status, &record.code) {
        (0, _) => "no_answer".into(),
        (s, Some(code)) => format!("{s}/{code}"),
        (s, None) => format!("{s}/http_{s}"),
    }
}

/// One reservation: the hold it gave, or why none came.
#[derive(Debug, Clone, Default)]
pub struct ReserveRecord {
    pub item: u32,
    pub hold_id: Option<String>,
    /// The last answer's code when no hold came (`<status>/<code>`, or
    /// `no_answer: ...`).
    pub failure: Option<String>,
    pub retries: u64,
}

/// The buyers of one flash sale: what every reservation and checkout needs.
pub struct Buyers {
    /// `http://host:port` of the target.
    pub base: String,
    pub sale_id: String,
    /// Reservation `item` belongs to buyer `item mod buyers`.
    pub buyers: u64,
    /// `Bearer <token>` of each buyer.
    pub auth: Vec<reqwest::header::HeaderValue>,
    /// Idempotency-Key prefix of this run.
    pub key_prefix: String,
}

impl Buyers {
    /// Reserves hold `item` (one unit) for its buyer, retrying 429 (after its
    /// Retry-After) and 503.
    pub async fn reserve(&self, client: &reqwest::Client, item: u32) -> ReserveRecord {
        let buyer = buyer_of(u64::from(item), self.buyers);
        let url = format!(
            "{}/api/v1/flash-sales/{}/reservations",
            self.base, self.sale_id
        );
        let key = format!("{}-hold-{item}", self.key_prefix);
        let mut record = ReserveRecord {
            item,
            ..Default::default()
        };
        for attempt in 0..RESERVE_ATTEMPTS {
            let answer = client
                .post(&url)
                .header(AUTHORIZATION, self.auth[buyer as usize].clone())
                .header("idempotency-key", &key)
                .header(CONTENT_TYPE, "application/json")
                .body(r#"{"quantity":1}"#)
                .send()
                .await;
            let (status, retry_after, body) = match answer {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let retry_after = response
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok());
                    (status, retry_after, response.bytes().await.ok())
                }
                Err(e) => {
                    record.failure = Some(format!("no_answer: {}", error_chain(&e)));
                    return record;
                }
            };
            let body = body.unwrap_or_default();
            if status == 201 || status == 200 {
                #[derive(Deserialize)]
                struct Created {
                    id: String,
                }
                match serde_json::from_slice::<Created>(&body) {
                    Ok(c) => {
                        record.hold_id = Some(c.id);
                        record.failure = None;
                    }
                    Err(_) => record.failure = Some(format!("{status}/invalid_answer")),
                }
                return record;
            }
            let code = serde_json::from_slice::<ErrorBody>(&body)
                .map(|e| e.error.code)
                .unwrap_or_else(|_| format!("http_{status}"));
            record.failure = Some(format!("{status}/{code}"));
            if (status == 429 || status == 503) && attempt + 1 < RESERVE_ATTEMPTS {
                record.retries += 1;
                let wait_ms =
                    retry_after.map_or(500, |s| s.clamp(1, 10) * 1000) + rand::random_range(0..250);
                tokio::time::sleep(Duration::from_millis(wait_ms)).await;
                continue;
            }
            return record;
        }
        record
    }

    /// Pays hold `hold` (its id `hold_id`) with `key`.
    pub async fn checkout(
        &self,
        client: &reqwest::Client,
        hold: u32,
        hold_id: &str,
        buyer: u32,
        key: &str,
    ) -> PayRecord {
        let url = format!("{}/api/v1/holds/{hold_id}/checkout", self.base);
        let sent = Instant::now();
        let answer = client
            .post(&url)
            .header(AUTHORIZATION, self.auth[buyer as usize].clone())
            .header("idempotency-key", key)
            .header(CONTENT_TYPE, "application/json")
            .body(r#"{"method":"simulated"}"#)
            .send()
            .await;
        let mut record = PayRecord {
            hold,
            ..Default::default()
        };
        match answer {
            Ok(response) => {
                let status = response.status().as_u16();
                match response.bytes().await {
                    Ok(bytes) => {
                        record.status = status;
                        (record.code, record.order, record.detail) = parse_checkout(status, &bytes);
                    }
                    Err(e) => {
                        record.detail = Some(format!("reading the answer: {}", error_chain(&e)))
                    }
                }
            }
            Err(e) => record.detail = Some(error_chain(&e)),
        }
        record.latency_us = sent.elapsed().as_micros() as u64;
        record
    }

    pub fn pay_key(&self, hold: u32) -> String {
        format!("{}-pay-{hold}", self.key_prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
# HELP process_resident_memory_bytes Resident memory size in bytes.
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 27262976
process_cpu_seconds_total 1.25
harvest_events_delivered_total{lane=\"room\"} 10
harvest_events_delivered_total{lane=\"social\"} 5.5
harvest_events_delivered_total_extra 99
";

    #[test]
    fn reads_prometheus_values() {
        assert_eq!(
            metric_value(SAMPLE, "process_resident_memory_bytes"),
            Some(27_262_976.0)
        );
        assert_eq!(
            metric_value(SAMPLE, "process_cpu_seconds_total"),
            Some(1.25)
        );
        assert_eq!(
            metric_value(SAMPLE, "harvest_events_delivered_total"),
            Some(15.5)
        );
        assert_eq!(metric_value(SAMPLE, "process_open_fds"), None);
    }

    #[test]
    fn parses_samples_with_awkward_labels() {
        let (name, labels, value) = parse_sample(
            r#"harvest_http_request_seconds_bucket{route="/api/v1/holds/{id}/checkout",le="0.005"} 42"#,
        )
        .unwrap();
        assert_eq!(name, "harvest_http_request_seconds_bucket");
        assert_eq!(
            labels,
            [
                ("route".to_owned(), "/api/v1/holds/{id}/checkout".to_owned()),
                ("le".to_owned(), "0.005".to_owned())
            ]
        );
        assert_eq!(value, 42.0);
        let (_, labels, _) = parse_sample(r#"x{a="q\"}, b",b="2"} 1.5"#).unwrap();
        assert_eq!(labels[0].1, "q\"}, b");
        assert_eq!(labels[1], ("b".to_owned(), "2".to_owned()));
        assert_eq!(parse_sample("plain 3").unwrap().2, 3.0);
        assert!(parse_sample("# TYPE x counter").is_none());
        assert!(parse_sample("broken{a=1} 2").is_none());
        assert!(parse_sample("noval").is_none());
    }

    const HIST: &str = r#"
# TYPE harvest_http_request_seconds histogram
harvest_http_request_seconds_bucket{route="/a/{id}/checkout",le="0.001"} 2
harvest_http_request_seconds_bucket{route="/a/{id}/checkout",le="0.01"} 8
harvest_http_request_seconds_bucket{route="/a/{id}/checkout",le="0.1"} 10
harvest_http_request_seconds_bucket{route="/a/{id}/checkout",le="+Inf"} 10
harvest_http_request_seconds_sum{route="/a/{id}/checkout"} 0.25
harvest_http_request_seconds_count{route="/a/{id}/checkout"} 10
harvest_http_request_seconds_bucket{route="/healthz",le="0.001"} 99
harvest_http_request_seconds_count{route="/healthz"} 99
harvest_build_info{version="1",database="postgres"} 1
"#;

    #[test]
    fn reads_and_subtracts_histograms() {
        let h = HistogramSample::read(
            HIST,
            "harvest_http_request_seconds",
            "route",
            "/a/{id}/checkout",
        )
        .unwrap();
        assert_eq!(h.count, 10.0);
        assert_eq!(h.buckets.len(), 4);
        assert_eq!(h.buckets[3].0, f64::INFINITY);
        assert_eq!(h.mean(), Some(0.025));
        assert_eq!(h.quantile_bound(0.5), Some(0.01));
        assert_eq!(h.quantile_bound(0.2), Some(0.001));
        assert_eq!(h.quantile_bound(0.99), Some(0.1));
        let before = HistogramSample {
            buckets: vec![(0.001, 2.0), (0.01, 2.0), (0.1, 2.0), (f64::INFINITY, 2.0)],
            sum: 0.001,
            count: 2.0,
        };
        let d = h.since(Some(&before));
        assert_eq!(d.count, 8.0);
        assert_eq!(d.quantile_bound(0.5), Some(0.01));
        assert_eq!(d.buckets[0], (0.001, 0.0));
        assert_eq!(h.since(None), h);
        assert!(
            HistogramSample::read(HIST, "harvest_http_request_seconds", "route", "/b").is_none()
        );
        let empty = HistogramSample::default();
        assert_eq!((empty.mean(), empty.quantile_bound(0.5)), (None, None));
        let above = HistogramSample {
            buckets: vec![(0.001, 0.0)],
            sum: 9.0,
            count: 1.0,
        };
        assert_eq!(above.quantile_bound(0.99), Some(f64::INFINITY));
    }

    #[test]
    fn finds_a_label_on_any_series() {
        assert_eq!(
            metric_label(HIST, "harvest_", "database").as_deref(),
            Some("postgres")
        );
        assert_eq!(metric_label(HIST, "harvest_", "engine"), None);
    }

    #[test]
    fn checkout_answers_are_parsed() {
        let (code, o, detail) = parse_checkout(
            200,
            br#"{"id":"o1","hold_id":"h0","sale_id":"s","buyer_id":"u-0","quantity":1,"unit_price":990,"amount":990,"currency":"CNY","status":"paid","paid_at":"2026-11-30T08:00:01.250Z"}"#,
        );
        assert_eq!((code, detail), (None, None));
        let o = o.unwrap();
        assert_eq!(
            (o.id.as_str(), o.hold_id.as_str(), o.buyer_id.as_str()),
            ("o1", "h0", "u-0")
        );
        assert_eq!((o.quantity, o.amount, o.status.as_str()), (1, 990, "paid"));
        assert_eq!(
            o.paid_at.map(|t| t.timestamp_millis()),
            Some(1_796_025_601_250)
        );
        let (code, o, detail) = parse_checkout(
            503,
            br#"{"error":{"code":"unavailable","message":"retry","details":{}}}"#,
        );
        assert_eq!((code.as_deref(), o), (Some("unavailable"), None));
        assert!(detail.unwrap().starts_with("503: "));
        let (code, _, detail) = parse_checkout(409, br#"{"error":{"code":"hold_expired"}}"#);
        assert_eq!((code.as_deref(), detail), (Some("hold_expired"), None));
        let (code, _, _) = parse_checkout(502, b"Bad Gateway");
        assert_eq!(code.as_deref(), Some("http_502"));
        let (code, o, detail) = parse_checkout(200, b"{}");
        assert_eq!((code.as_deref(), o), (Some("invalid_answer"), None));
        assert!(detail.unwrap().starts_with("200 without an order"));
    }

    #[test]
    fn machine_busy_ticks() {
        assert_eq!(busy_ticks("cpu  100 5 50 1000 20 3 2 1 0 0"), (161, 2));
    }

    #[tokio::test]
    async fn refuses_remote_targets() {
        let err = Target::resolve("http://192.0.2.1:8080", false)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not a loopback"), "{err}");
        let ok = Target::resolve("http://192.0.2.1:8080", true)
            .await
            .unwrap();
        assert_eq!(ok.base, "http://192.0.2.1:8080");
        let local = Target::resolve("http://127.0.0.1:8080", false)
            .await
            .unwrap();
        assert_eq!(local.ws_url("r1", None), "ws://127.0.0.1:8080/ws/rooms/r1");
        assert!(Target::resolve("https://127.0.0.1", false).await.is_err());
    }

    #[test]
    fn spreads_sources_over_loopback() {
        let target = Target {
            base: "http://127.0.0.1:8080".into(),
            authority: "127.0.0.1:8080".into(),
            addr: "127.0.0.1:8080".parse().unwrap(),
        };
        let ips = target.source_ips(3);
        assert_eq!(
            ips,
            ["127.0.1.1", "127.0.1.2", "127.0.1.3"]
                .map(|s| s.parse::<IpAddr>().unwrap())
                .to_vec()
        );
        assert!(target.source_ips(0).is_empty());
    }

    #[test]
    fn minted_tokens_are_hs256_with_roles() {
        let minter = Minter::new("s3cret", Duration::from_secs(60)).unwrap();
        let token = minter.token("u-1", "U One", &["streamer"]).unwrap();
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.required_spec_claims = ["exp", "sub"].into_iter().map(String::from).collect();
        let data = jsonwebtoken::decode::<Value>(
            &token,
            &jsonwebtoken::DecodingKey::from_secret(b"s3cret").unwrap(),
            &validation,
        )
        .unwrap();
        assert_eq!(data.claims["sub"], "u-1");
        assert_eq!(data.claims["roles"], json!(["streamer"]));
    }
}
