//! The Redis bus: how several nodes share a room.
//!
//! - **Sequencing.** A room event gets its `seq` in Redis: one script increments the
//!   room's counter, appends the event (without its seq) to the room's stream under the
//!   id `0-<seq>`, and publishes it on the room's channel, atomically. So the seq is
//!   gap-free and the same on every node, the stream holds the recent history any node
//!   can recover from, and the channel carries the events in seq order. The room's
//!   epoch lives beside the counter; when Redis loses them, the next append or open
//!   starts a new epoch (and clients take a snapshot).
//! - **Delivery.** Each node subscribes once per room it serves, so Redis carries one
//!   message per node per event, not one per viewer. A node encodes each event once per
//!   encoding and appends it to the room only when it is the next seq; a gap (a message
//!   lost while the subscription reconnected) is filled from the stream first.
//! - **Social and private events** take the cheaper path: delivered on the node that
//!   produced them at once, and published for the others, which skip their own.
//! - **Presence and likes** are summed in Redis: each node writes its own viewer count
//!   with a timestamp (a dead node's entry is ignored after 15 s) and adds its new likes
//!   to the room's total; every node pushes the totals to its own viewers.
//!
//! Keys carry a hash tag per room (`{prefix}{room:ID}:...`), so a room's keys stay in
//! one slot of a Redis Cluster and its scripts run on the node that owns the room.
//!
//! **Redis Cluster.** With several node URLs the commands and scripts go through a
//! cluster connection (routed by the room's slot). Delivery uses classic pub/sub: a
//! message published on any cluster node reaches subscribers on every node (over the
//! cluster bus), so each harvest node keeps one subscription connection, to the first
//! cluster node of the list that answers, and moves to the next one when it drops.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use dashmap::{DashMap, DashSet};
use futures::StreamExt;
use harvest_hub::{
    Bus, BusError, Delivered, Encode, Encoded, Encoding, Hub, Lane, RoomChannel, RoomInit,
    SocialKind,
};
use harvest_proto::ws as wire;
use harvest_stock::RedisConn;
use redis::aio::PubSubSink;

use super::WireEvent;

/// A dead node's viewers stop counting after this long without an update.
const PRESENCE_TTL_MS: i64 = 15_000;

const APPEND: &str = r#"
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
  redis.call('SET', KEYS[2], 0)
  redis.call('DEL', KEYS[3])
end
local seq = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '0-' .. seq, 'b', ARGV[2])
redis.call('PUBLISH', ARGV[4], 'R' .. epoch .. '\n' .. seq .. '\n' .. ARGV[2])
return {epoch, seq}
"#;

const OPEN: &str = r#"
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
  redis.call('SET', KEYS[2], 0)
  redis.call('DEL', KEYS[3])
end
local seq = tonumber(redis.call('GET', KEYS[2]) or '0')
local entries = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', ARGV[2])
return {epoch, seq, entries}
"#;

/// The bus of a node that shares its rooms with other nodes through Redis.
#[derive(Clone)]
pub struct RedisBus {
    inner: Arc<Inner>,
}

struct Inner {
    prefix: String,
    node_id: String,
    /// One client per configured node; the subscription uses the first that answers.
    clients: Vec<redis::Client>,
    conn: RedisConn,
    timeout: Duration,
    history: usize,
    append: redis::Script,
    open: redis::Script,
    sink: tokio::sync::Mutex<Option<PubSubSink>>,
    /// Rooms this node serves (subscribed, or to subscribe after a reconnect).
    rooms: DashSet<String>,
    hub: OnceLock<Hub>,
    /// Likes of each room already added to the shared total.
    likes_flushed: DashMap<String, u64>,
    /// Totals last pushed to this node's viewers.
    pushed: DashMap<String, (u64, u64)>,
}

fn unavailable(e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(e.to_string())
}

impl RedisBus {
    /// A bus on the Redis at `url` (one server, or comma-separated Redis Cluster nodes).
    pub fn new(
        url: &str,
        prefix: &str,
        node_id: &str,
        timeout: Duration,
        history: usize,
    ) -> anyhow::Result<Self> {
        let clients = harvest_stock::redis_urls(url)
            .iter()
            .map(|u| redis::Client::open(u.as_str()))
            .collect::<Result<Vec<_>, _>>()?;
        anyhow::ensure!(!clients.is_empty(), "empty Redis URL");
        let conn = RedisConn::new_lazy(url, timeout)?;
        Ok(Self {
            inner: Arc::new(Inner {
                prefix: prefix.to_owned(),
                node_id: node_id.to_owned(),
                clients,
                conn,
                timeout,
                history: history.max(1),
                append: redis::Script::new(APPEND),
                open: redis::Script::new(OPEN),
                sink: tokio::sync::Mutex::new(None),
                rooms: DashSet::new(),
                hub: OnceLock::new(),
                likes_flushed: DashMap::new(),
                pushed: DashMap::new(),
            }),
        })
    }

    /// Connects the bus to the node's hub and starts the subscriber.
    pub fn attach(&self, hub: Hub) {
        if self.inner.hub.set(hub).is_ok() {
            let bus = self.clone();
            tokio::spawn(async move { bus.subscriber().await });
        }
    }

    fn key(&self, room_id: &str, suffix: &str) -> String {
        format!("{}{{room:{room_id}}}:{suffix}", self.inner.prefix)
    }

    fn room_channel(&self, room_id: &str) -> String {
        format!("{}room:{room_id}", self.inner.prefix)
    }

    fn private_channel(&self) -> String {
        format!("{}private", self.inner.prefix)
    }

    async fn timed<T>(
        &self,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, BusError> {
        match tokio::time::timeout(self.inner.timeout, fut).await {
            Ok(result) => result.map_err(unavailable),
            Err(_) => Err(BusError::Unavailable("redis call timed out".into())),
        }
    }

    /// Subscribes to a room and reads where its shared log stands: epoch, last seq and
    /// the recent history. Subscribing first means no event can fall between the two.
    pub async fn open(&self, room_id: &str) -> Result<RoomInit, BusError> {
        self.inner.rooms.insert(room_id.to_owned());
        let deadline = tokio::time::Instant::now() + self.inner.timeout;
        loop {
            if let Some(sink) = self.inner.sink.lock().await.as_mut() {
                let channel = self.room_channel(room_id);
                self.timed(sink.subscribe(channel)).await?;
                break;
            }
            // The subscription is (re)connecting: wait for it, so that no event of
            // this room can be published unseen between reading its log and listening.
            if tokio::time::Instant::now() >= deadline {
                return Err(BusError::Unavailable(
                    "the Redis subscription is not connected".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.read_log(room_id).await
    }

    async fn read_log(&self, room_id: &str) -> Result<RoomInit, BusError> {
        let mut conn = self.inner.conn.clone();
        let mut invocation = self.inner.open.prepare_invoke();
        invocation
            .key(self.key(room_id, "epoch"))
            .key(self.key(room_id, "seq"))
            .key(self.key(room_id, "log"))
            .arg(harvest_hub::new_epoch())
            .arg(self.inner.history);
        let (epoch, seq, entries): (String, u64, redis::Value) =
            self.timed(invocation.invoke_async(&mut conn)).await?;
        let mut history: Vec<Arc<Encoded>> = parse_entries(&entries)
            .into_iter()
            .filter_map(|(s, body)| encode(s, &body))
            .collect();
        history.reverse();
        Ok(RoomInit {
            epoch,
            last_seq: seq,
            history,
        })
    }

    /// Delivers what the room missed from the shared log: after a (re)subscription, or
    /// when its epoch changed (then its sessions are closed so clients take a snapshot).
    pub async fn catch_up(&self, room: &Arc<RoomChannel>) -> Result<(), BusError> {
        let init = self.read_log(&room.id).await?;
        let (epoch, last) = room.position();
        if init.epoch != epoch {
            tracing::warn!(room_id = %room.id, "the room's shared log has a new epoch");
            room.reset(init, wire::close::GOING_AWAY);
            return Ok(());
        }
        if init.last_seq <= last {
            return Ok(());
        }
        let oldest = init.history.first().and_then(|e| e.seq).unwrap_or(u64::MAX);
        if oldest > last + 1 {
            // The log no longer holds everything the room missed: start over.
            tracing::warn!(
                room_id = %room.id,
                position = last,
                log_last = init.last_seq,
                log_oldest = oldest,
                "the room's shared log no longer holds what the room missed; starting over"
            );
            room.reset(init, wire::close::GOING_AWAY);
            return Ok(());
        }
        for e in init.history {
            room.deliver(&epoch, e);
        }
        Ok(())
    }

    async fn range(
        &self,
        room_id: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<Arc<Encoded>>, BusError> {
        let mut conn = self.inner.conn.clone();
        let entries: redis::Value = self
            .timed(
                redis::cmd("XRANGE")
                    .arg(self.key(room_id, "log"))
                    .arg(format!("0-{from}"))
                    .arg(format!("0-{to}"))
                    .query_async(&mut conn),
            )
            .await?;
        Ok(parse_entries(&entries)
            .into_iter()
            .filter_map(|(s, body)| encode(s, &body))
            .collect())
    }

    /// Publishes a private event for the user's connections on the other nodes.
    pub fn private(&self, user_id: &str, event: &dyn Encode) {
        let body = event.encode(None, Encoding::Json);
        let mut payload = format!("P{}\n{user_id}\n", self.inner.node_id).into_bytes();
        payload.extend_from_slice(&body);
        self.fire(self.private_channel(), payload);
    }

    fn fire(&self, channel: String, payload: Vec<u8>) {
        let bus = self.clone();
        tokio::spawn(async move {
            let mut conn = bus.inner.conn.clone();
            let published: Result<i64, BusError> = bus
                .timed(
                    redis::cmd("PUBLISH")
                        .arg(channel)
                        .arg(payload)
                        .query_async(&mut conn),
                )
                .await;
            if let Err(e) = published {
                tracing::warn!(error = %e, "could not publish to the other nodes");
            }
        });
    }

    /// Adds this node's new likes of a room to the shared total, records this node's
    /// viewer count, and returns the room's totals over every node.
    pub async fn sync_presence(&self, room: &Arc<RoomChannel>) -> Result<(u64, u64), BusError> {
        let now = harvest_hub::now_ms();
        let likes = room.likes();
        let flushed = self
            .inner
            .likes_flushed
            .get(&room.id)
            .map(|v| *v)
            .unwrap_or(0);
        let delta = likes.saturating_sub(flushed);
        let mut conn = self.inner.conn.clone();
        let mut pipe = redis::pipe();
        pipe.cmd("INCRBY")
            .arg(self.key(&room.id, "likes"))
            .arg(delta)
            .cmd("HSET")
            .arg(self.key(&room.id, "presence"))
            .arg(&self.inner.node_id)
            .arg(format!("{}:{now}", room.viewers()))
            .ignore()
            .cmd("HGETALL")
            .arg(self.key(&room.id, "presence"));
        let (total_likes, presence): (u64, HashMap<String, String>) =
            self.timed(pipe.query_async(&mut conn)).await?;
        self.inner.likes_flushed.insert(room.id.clone(), likes);
        let viewers = presence
            .values()
            .filter_map(|v| v.split_once(':'))
            .filter_map(|(count, at)| Some((count.parse::<u64>().ok()?, at.parse::<i64>().ok()?)))
            .filter(|(_, at)| now - at < PRESENCE_TTL_MS)
            .map(|(count, _)| count)
            .sum();
        room.set_cluster_totals(viewers, total_likes);
        Ok((viewers, total_likes))
    }

    /// The totals to push to this node's viewers of a room, when they changed since the
    /// last push: `(viewers, likes)`, each `None` when unchanged (viewers are not looked
    /// at when `None` is given).
    pub fn changed_totals(
        &self,
        room_id: &str,
        viewers: Option<u64>,
        likes: u64,
    ) -> (Option<u64>, Option<u64>) {
        let mut entry = self
            .inner
            .pushed
            .entry(room_id.to_owned())
            .or_insert((u64::MAX, 0));
        let before = *entry;
        let viewers = viewers.filter(|&v| v != before.0);
        if let Some(v) = viewers {
            entry.0 = v;
        }
        entry.1 = likes;
        (viewers, (before.1 != likes).then_some(likes))
    }

    async fn subscriber(self) {
        let Some(hub) = self.inner.hub.get().cloned() else {
            return;
        };
        let mut node = 0;
        loop {
            let client = &self.inner.clients[node % self.inner.clients.len()];
            let connected = tokio::time::timeout(self.inner.timeout, client.get_async_pubsub())
                .await
                .unwrap_or_else(|_| Err((redis::ErrorKind::Io, "connect timed out").into()));
            match connected {
                Ok(pubsub) => {
                    let (mut sink, mut stream) = pubsub.split();
                    let mut ok = sink.subscribe(self.private_channel()).await.is_ok();
                    let rooms: Vec<String> = self.inner.rooms.iter().map(|r| r.clone()).collect();
                    for room in &rooms {
                        ok = ok && sink.subscribe(self.room_channel(room)).await.is_ok();
                    }
                    if ok {
                        *self.inner.sink.lock().await = Some(sink);
                        // Rooms opened while the subscription was down subscribed
                        // nowhere: subscribe them now too.
                        for room in self
                            .inner
                            .rooms
                            .iter()
                            .map(|r| r.clone())
                            .collect::<Vec<_>>()
                        {
                            if !rooms.contains(&room)
                                && let Some(sink) = self.inner.sink.lock().await.as_mut()
                            {
                                let _ = sink.subscribe(self.room_channel(&room)).await;
                            }
                        }
                        for room in hub.rooms() {
                            if let Err(e) = self.catch_up(&room).await {
                                tracing::warn!(room_id = %room.id, error = %e, "cannot catch up a room");
                            }
                        }
                        while let Some(msg) = stream.next().await {
                            self.on_message(&hub, &msg).await;
                        }
                        *self.inner.sink.lock().await = None;
                        tracing::warn!("the Redis subscription ended; reconnecting");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot subscribe to Redis; retrying"),
            }
            // Another cluster node next time (the same server when there is one).
            node += 1;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn on_message(&self, hub: &Hub, msg: &redis::Msg) {
        let channel = msg.get_channel_name();
        let payload = msg.get_payload_bytes();
        if channel == self.private_channel() {
            let Some((node, rest)) = split_line(payload.get(1..).unwrap_or_default()) else {
                return;
            };
            if node == self.inner.node_id.as_bytes() {
                return;
            }
            let Some((user, body)) = split_line(rest) else {
                return;
            };
            if let (Ok(user), Some(event)) = (std::str::from_utf8(user), decode(body)) {
                hub.private(user, &event);
            }
            return;
        }
        let Some(room_id) = channel.strip_prefix(&format!("{}room:", self.inner.prefix)) else {
            return;
        };
        match payload.first() {
            Some(b'R') => self.on_room_event(hub, room_id, &payload[1..]).await,
            Some(b'S') => {
                let Some((node, rest)) = split_line(&payload[1..]) else {
                    return;
                };
                if node == self.inner.node_id.as_bytes() {
                    return;
                }
                let Some((kind, body)) = split_line(rest) else {
                    return;
                };
                let kind = match kind {
                    b"chat" => SocialKind::Chat,
                    b"likes" => SocialKind::Likes,
                    _ => SocialKind::Viewers,
                };
                if let Some(event) = decode(body) {
                    hub.social_local(room_id, kind, &event);
                }
            }
            _ => {}
        }
    }

    async fn on_room_event(&self, hub: &Hub, room_id: &str, payload: &[u8]) {
        let Some(room) = hub.existing_room(room_id) else {
            return;
        };
        let Some((epoch, rest)) = split_line(payload) else {
            return;
        };
        let Some((seq, body)) = split_line(rest) else {
            return;
        };
        let (Ok(epoch), Some(seq)) = (
            std::str::from_utf8(epoch),
            std::str::from_utf8(seq)
                .ok()
                .and_then(|s| s.parse::<u64>().ok()),
        ) else {
            return;
        };
        let Some(encoded) = encode(seq, body) else {
            tracing::warn!(room_id, seq, "undecodable room event on the bus");
            return;
        };
        match room.deliver(epoch, encoded.clone()).0 {
            Delivered::Appended | Delivered::Duplicate => {}
            Delivered::Gap { from, to } => match self.range(room_id, from, to).await {
                Ok(missing) if missing.len() as u64 == to - from + 1 => {
                    for e in missing {
                        room.deliver(epoch, e);
                    }
                    room.deliver(epoch, encoded);
                }
                _ => {
                    if let Err(e) = self.catch_up(&room).await {
                        tracing::warn!(room_id, error = %e, "cannot fill a gap in the room's events");
                    }
                }
            },
            Delivered::OtherEpoch => {
                if let Err(e) = self.catch_up(&room).await {
                    tracing::warn!(room_id, error = %e, "cannot follow the room's new epoch");
                }
            }
        }
    }
}

/// `(first line, rest)` of a `\n`-separated payload.
fn split_line(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = bytes.iter().position(|&b| b == b'\n')?;
    Some((&bytes[..at], &bytes[at + 1..]))
}

fn decode(body: &[u8]) -> Option<WireEvent> {
    let event = wire::decode_json_event(body).ok()?;
    Some(WireEvent {
        ts: event.ts,
        data: event.data,
    })
}

/// A room event read from the bus, encoded with its seq.
fn encode(seq: u64, body: &[u8]) -> Option<Arc<Encoded>> {
    let event = decode(body)?;
    Some(Arc::new(Encoded::new(
        Lane::Room,
        Some(seq),
        event.ts,
        &event,
    )))
}

/// `(seq, body)` of stream entries (`[[id, [field, value, ...]], ...]`, ids `0-<seq>`).
fn parse_entries(value: &redis::Value) -> Vec<(u64, Vec<u8>)> {
    let redis::Value::Array(entries) = value else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|entry| {
            let redis::Value::Array(parts) = entry else {
                return None;
            };
            let id = match parts.first()? {
                redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                redis::Value::SimpleString(s) => s.clone(),
                _ => return None,
            };
            let seq = id.split_once('-')?.1.parse().ok()?;
            let redis::Value::Array(fields) = parts.get(1)? else {
                return None;
            };
            let body = fields.chunks(2).find_map(|kv| match kv {
                [redis::Value::BulkString(k), redis::Value::BulkString(v)] if k == b"b" => {
                    Some(v.clone())
                }
                _ => None,
            })?;
            Some((seq, body))
        })
        .collect()
}

#[async_trait]
impl Bus for RedisBus {
    async fn append(
        &self,
        room: &Arc<RoomChannel>,
        event: &dyn Encode,
    ) -> Result<(String, Arc<Encoded>), BusError> {
        // The log keeps the event's JSON with a placeholder seq (a room event always
        // has one); the real seq is the entry's id, and every reader encodes the event
        // again with it.
        let body = event.encode(Some(1), Encoding::Json);
        let mut conn = self.inner.conn.clone();
        let mut invocation = self.inner.append.prepare_invoke();
        invocation
            .key(self.key(&room.id, "epoch"))
            .key(self.key(&room.id, "seq"))
            .key(self.key(&room.id, "log"))
            .arg(harvest_hub::new_epoch())
            .arg(body.as_ref())
            .arg(self.inner.history)
            .arg(self.room_channel(&room.id));
        let (epoch, seq): (String, u64) = self.timed(invocation.invoke_async(&mut conn)).await?;
        let encoded = Arc::new(Encoded::new(
            Lane::Room,
            Some(seq),
            harvest_hub::now_ms(),
            event,
        ));
        Ok((epoch, encoded))
    }

    fn social(&self, room: &Arc<RoomChannel>, kind: SocialKind, event: &dyn Encode) {
        harvest_hub::LocalBus.social(room, kind, event);
        let kind = match kind {
            SocialKind::Chat => "chat",
            SocialKind::Likes => "likes",
            SocialKind::Viewers => "viewers",
        };
        let body = event.encode(None, Encoding::Json);
        let mut payload = format!("S{}\n{kind}\n", self.inner.node_id).into_bytes();
        payload.extend_from_slice(&body);
        self.fire(self.room_channel(&room.id), payload);
    }
}
