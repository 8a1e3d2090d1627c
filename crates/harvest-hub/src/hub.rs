//! The hub: every room channel of this node, admission control, private delivery,
//! and the metrics of fan-out.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use dashmap::DashMap;
use parking_lot::Mutex;

use crate::queue::{QueueLimits, Session};
use crate::room::{Batcher, Fanout, Retention, RoomChannel};
use crate::{Encode, Encoded, Encoding, Framing, Lane, SocialKind, now_ms};

/// Tunables of the hub; see `docs/configuration.md` for the settings that feed them.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Room events kept per room for recovery (with `history_age`: whichever retains more).
    pub history_events: usize,
    pub history_age: Duration,
    /// A session's lossless backlog limit in bytes; past it the session closes with 4008.
    pub lossless_queue_bytes: usize,
    /// Chat messages a slow session may have waiting before the oldest is dropped.
    pub social_queue_len: usize,
    /// Chat messages per second delivered to each viewer (the room samples above it).
    pub chat_per_viewer_per_s: u32,
    /// Most events in one batch frame.
    pub max_batch: usize,
    /// A room event that follows the room's last fan-out within this window waits for
    /// the window to close and goes out with the others as one batch frame, framed once
    /// and shared by every session (zero: every event goes out at once). It bounds the
    /// room frames per session per second under load, at the price of up to one window
    /// of latency for events that arrive close together. Needs a tokio runtime.
    pub batch_window: Duration,
    /// Most open connections on this node.
    pub max_connections: usize,
    /// Most new connections per second on this node.
    pub new_connections_per_s: u32,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            history_events: 1000,
            history_age: Duration::from_secs(600),
            lossless_queue_bytes: 1024 * 1024,
            social_queue_len: 64,
            chat_per_viewer_per_s: 20,
            max_batch: 64,
            batch_window: Duration::ZERO,
            max_connections: 200_000,
            new_connections_per_s: 5_000,
        }
    }
}

/// Why a connection was refused by admission control (close code 4029).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the node is full")]
    Full,
    #[error("too many new connections; retry shortly")]
    TooFast,
}

/// Presence and activity of one room on this node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoomStats {
    pub viewers_now: u64,
    pub viewers_peak: u64,
    pub viewers_unique: u64,
    pub likes: u64,
    pub chat_messages: u64,
}

/// Node-wide figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HubStats {
    pub connections: usize,
    pub rooms: usize,
}

/// A registered session and where it starts.
pub struct Joined {
    pub session: Arc<Session>,
    pub epoch: String,
    pub last_seq: u64,
    /// `true` when the missed events were queued; `false` when a snapshot must be sent.
    pub recovered: bool,
    /// Releases the connection slot and leaves the room when dropped.
    pub guard: SessionGuard,
}

/// Leaves the room and frees the admission slot when the connection ends.
pub struct SessionGuard {
    hub: Weak<Inner>,
    room: Arc<RoomChannel>,
    session: Arc<Session>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.room.leave(self.session.id);
        if let Some(hub) = self.hub.upgrade() {
            hub.connections.fetch_sub(1, Ordering::Relaxed);
            metrics::gauge!("harvest_ws_connections").decrement(1.0);
            if let Some(user) = &self.session.user_id
                && let Some(mut list) = hub.users.get_mut(user)
            {
                list.retain(|w| {
                    w.strong_count() > 0 && !std::ptr::eq(w.as_ptr(), Arc::as_ptr(&self.session))
                });
            }
        }
    }
}

struct Inner {
    config: HubConfig,
    bus: Arc<dyn crate::Bus>,
    framing: Arc<dyn Framing>,
    batcher: Option<Arc<Batcher>>,
    rooms: DashMap<String, Arc<RoomChannel>>,
    users: DashMap<String, Vec<Weak<Session>>>,
    connections: AtomicUsize,
    admission: Mutex<(i64, u32)>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(batcher) = &self.batcher {
            batcher.close();
        }
    }
}

/// The hub of this node. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl Hub {
    /// A hub on the single-node [`crate::LocalBus`].
    pub fn new(config: HubConfig, framing: Arc<dyn Framing>) -> Self {
        Self::with_bus(config, framing, Arc::new(crate::LocalBus))
    }

    /// A hub whose room events go through `bus`.
    pub fn with_bus(
        config: HubConfig,
        framing: Arc<dyn Framing>,
        bus: Arc<dyn crate::Bus>,
    ) -> Self {
        describe_metrics();
        let batcher = (!config.batch_window.is_zero())
            .then(|| tokio::runtime::Handle::try_current().ok())
            .flatten()
            .map(|runtime| {
                let batcher = Batcher::new(config.batch_window);
                runtime.spawn(batcher.clone().run());
                batcher
            });
        Self {
            inner: Arc::new(Inner {
                config,
                bus,
                framing,
                batcher,
                rooms: DashMap::new(),
                users: DashMap::new(),
                connections: AtomicUsize::new(0),
                admission: Mutex::new((0, 0)),
            }),
        }
    }

    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    /// The room's channel, created on first use from `init` (called only when the room
    /// is not yet open on this node).
    /// The bus room events go through.
    pub fn bus(&self) -> &Arc<dyn crate::Bus> {
        &self.inner.bus
    }

    pub fn room_with(&self, room_id: &str, init: impl FnOnce() -> RoomInit) -> Arc<RoomChannel> {
        if let Some(room) = self.inner.rooms.get(room_id) {
            return room.clone();
        }
        let entry = self
            .inner
            .rooms
            .entry(room_id.to_owned())
            .or_insert_with(|| {
                metrics::gauge!("harvest_rooms").increment(1.0);
                RoomChannel::new(
                    room_id,
                    init(),
                    Retention {
                        events: self.inner.config.history_events,
                        age: self.inner.config.history_age,
                    },
                    self.inner.config.chat_per_viewer_per_s,
                    self.inner.framing.clone(),
                    self.inner.batcher.clone(),
                    self.inner.config.max_batch,
                )
            });
        entry.clone()
    }

    /// The room's channel, created with a fresh epoch when it is not open yet.
    pub fn room(&self, room_id: &str) -> Arc<RoomChannel> {
        self.room_with(room_id, RoomInit::fresh)
    }

    /// The room's channel if it is open on this node.
    pub fn existing_room(&self, room_id: &str) -> Option<Arc<RoomChannel>> {
        self.inner.rooms.get(room_id).map(|r| r.clone())
    }

    /// Every open room.
    pub fn rooms(&self) -> Vec<Arc<RoomChannel>> {
        self.inner.rooms.iter().map(|r| r.clone()).collect()
    }

    /// Admission control: takes a connection slot, or says why not.
    pub fn admit(&self) -> Result<Admission, Refusal> {
        let cfg = &self.inner.config;
        {
            let second = now_ms() / 1000;
            let mut w = self.inner.admission.lock();
            if w.0 != second {
                *w = (second, 0);
            }
            if w.1 >= cfg.new_connections_per_s {
                return Err(Refusal::TooFast);
            }
            w.1 += 1;
        }
        let prev = self.inner.connections.fetch_add(1, Ordering::Relaxed);
        if prev >= cfg.max_connections {
            self.inner.connections.fetch_sub(1, Ordering::Relaxed);
            return Err(Refusal::Full);
        }
        metrics::gauge!("harvest_ws_connections").increment(1.0);
        Ok(Admission {
            hub: Arc::downgrade(&self.inner),
            joined: false,
        })
    }

    /// Joins a room with an admitted connection. See [`Joined`].
    pub fn join(
        &self,
        mut admission: Admission,
        room: &Arc<RoomChannel>,
        user_id: Option<String>,
        encoding: Encoding,
        since: Option<(&str, u64)>,
    ) -> Joined {
        let cfg = &self.inner.config;
        let session = Arc::new(Session::new(
            &room.id,
            user_id.clone(),
            encoding,
            QueueLimits {
                lossless_bytes: cfg.lossless_queue_bytes,
                social_len: cfg.social_queue_len,
                max_batch: cfg.max_batch,
            },
            self.inner.framing.clone(),
        ));
        let (epoch, last_seq, replay) = room.join(session.clone(), since);
        if let Some(user) = user_id {
            self.inner
                .users
                .entry(user)
                .or_default()
                .push(Arc::downgrade(&session));
        }
        admission.joined = true;
        Joined {
            guard: SessionGuard {
                hub: Arc::downgrade(&self.inner),
                room: room.clone(),
                session: session.clone(),
            },
            session,
            epoch,
            last_seq,
            recovered: replay.is_some(),
        }
    }

    /// Appends a room event to a room (opening the room if needed) through the bus, which
    /// assigns its `seq` and delivers it.
    pub async fn publish(
        &self,
        room_id: &str,
        event: &dyn Encode,
    ) -> Result<Arc<Encoded>, crate::BusError> {
        Ok(self.publish_in_epoch(room_id, event).await?.1)
    }

    /// Like [`Hub::publish`], also returning the epoch the event was appended in.
    pub async fn publish_in_epoch(
        &self,
        room_id: &str,
        event: &dyn Encode,
    ) -> Result<(String, Arc<Encoded>), crate::BusError> {
        let room = self.room(room_id);
        self.inner.bus.append(&room, event).await
    }

    /// Delivers a social event to a room's sessions through the bus.
    pub fn social(&self, room_id: &str, kind: SocialKind, event: &dyn Encode) {
        if let Some(room) = self.existing_room(room_id) {
            self.inner.bus.social(&room, kind, event);
        }
    }

    /// Delivers a social event to the room's sessions on this node only (what a shared
    /// bus does with a social event that arrived from the network).
    pub fn social_local(&self, room_id: &str, kind: SocialKind, event: &dyn Encode) {
        if let Some(room) = self.existing_room(room_id) {
            crate::Bus::social(&crate::LocalBus, &room, kind, event);
        }
    }

    /// Delivers a private event to every session of `user_id` on this node; returns how
    /// many sessions it reached.
    pub fn private(&self, user_id: &str, event: &dyn Encode) -> usize {
        let Some(list) = self.inner.users.get(user_id).map(|l| l.clone()) else {
            return 0;
        };
        let encoded = Arc::new(Encoded::new(Lane::Private, None, now_ms(), event));
        let mut fanout = Fanout::default();
        for session in list.iter().filter_map(Weak::upgrade) {
            match session.push_lossless(encoded.clone()) {
                crate::queue::Pushed::Overflow => fanout.overflowed += 1,
                crate::queue::Pushed::Closed => {}
                _ => fanout.queued += 1,
            }
        }
        record(Lane::Private, 1, fanout);
        fanout.queued as usize
    }

    /// Encodes a one-off event for one session (welcome, snapshot).
    pub fn encode_once(&self, lane: Lane, event: &dyn Encode) -> Arc<Encoded> {
        Arc::new(Encoded::new(lane, None, now_ms(), event))
    }

    /// Closes every connection of the node (shutdown: 1001).
    pub fn close_all(&self, code: u16) {
        for room in self.inner.rooms.iter() {
            room.close_all(code);
        }
    }

    pub fn stats(&self) -> HubStats {
        HubStats {
            connections: self.inner.connections.load(Ordering::Relaxed),
            rooms: self.inner.rooms.len(),
        }
    }
}

/// A connection slot; dropped without joining, it is given back.
pub struct Admission {
    hub: Weak<Inner>,
    joined: bool,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if !self.joined
            && let Some(hub) = self.hub.upgrade()
        {
            hub.connections.fetch_sub(1, Ordering::Relaxed);
            metrics::gauge!("harvest_ws_connections").decrement(1.0);
        }
    }
}

/// Where a room's log starts when it opens on this node: a stored epoch and position
/// with the recent history, or a fresh epoch.
#[derive(Debug, Default)]
pub struct RoomInit {
    pub epoch: String,
    pub last_seq: u64,
    /// Recent room events of this epoch, in seq order, to serve recovery.
    pub history: Vec<Arc<Encoded>>,
}

impl RoomInit {
    /// A new epoch with no events.
    pub fn fresh() -> Self {
        Self {
            epoch: new_epoch(),
            last_seq: 0,
            history: Vec::new(),
        }
    }
}

/// A fresh, opaque epoch.
pub fn new_epoch() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

pub(crate) fn record(lane: Lane, published: u64, f: Fanout) {
    let lane = lane.as_str();
    metrics::counter!("harvest_events_published_total", "lane" => lane).increment(published);
    if f.dropped > 0 {
        metrics::counter!("harvest_events_dropped_total", "lane" => lane).increment(f.dropped);
    }
    if f.overflowed > 0 {
        metrics::counter!("harvest_slow_consumer_disconnects_total").increment(f.overflowed);
    }
}

fn describe_metrics() {
    metrics::describe_gauge!(
        "harvest_ws_connections",
        "open WebSocket connections on this node"
    );
    metrics::describe_gauge!("harvest_rooms", "rooms open on this node");
    metrics::describe_counter!(
        "harvest_events_published_total",
        "events published, by lane"
    );
    metrics::describe_counter!(
        "harvest_events_delivered_total",
        "events written to sockets, by lane"
    );
    metrics::describe_counter!(
        "harvest_events_dropped_total",
        "social events dropped or coalesced, by lane"
    );
    metrics::describe_counter!(
        "harvest_slow_consumer_disconnects_total",
        "connections closed with 4008 because their lossless queue overflowed"
    );
}
