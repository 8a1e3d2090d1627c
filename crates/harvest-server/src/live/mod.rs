//! Live rooms: the bridge between the hub and the rest of the server.
//!
//! [`Live`] opens a room's channel from its stored log position, publishes room events
//! (encoded once per encoding, sequenced by the hub) and hands each one to the
//! persister, which appends them to the SQL event log in order within about a second.
//! It also keeps what the WebSocket sessions share: recent chat, mutes and bans, chat
//! and like limits, and the presence ticker that pushes viewer counts and like totals.

pub mod redis_bus;
pub mod sessions;
pub mod ws;

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use harvest_hub::{Encode, Encoded, Hub, HubConfig, Lane, RoomChannel, RoomInit, SocialKind};
use harvest_proto::ws::{self as wire, Event, EventData};
use harvest_store::{RoomEventRecord, Store};
use tokio::sync::mpsc;

use crate::config::Settings;

/// An event on its way to the wire: the hub asks it to encode itself with the seq it
/// assigned.
pub struct WireEvent {
    pub ts: i64,
    pub data: EventData,
}

impl WireEvent {
    pub fn new(data: impl Into<EventData>) -> Self {
        Self {
            ts: harvest_hub::now_ms(),
            data: data.into(),
        }
    }

    fn event(&self, seq: Option<u64>) -> Event {
        Event {
            seq,
            ts: self.ts,
            data: self.data.clone(),
        }
    }
}

impl Encode for WireEvent {
    fn encode(&self, seq: Option<u64>, encoding: harvest_hub::Encoding) -> Bytes {
        let event = self.event(seq);
        match encoding {
            harvest_hub::Encoding::Json => wire::encode_json(&event),
            harvest_hub::Encoding::Protobuf => wire::encode_proto(&event),
        }
    }
}

/// Batches pre-encoded events: a JSON array, or a protobuf `ServerFrame`.
pub struct WireFraming;

impl harvest_hub::Framing for WireFraming {
    fn frame(&self, encoding: harvest_hub::Encoding, events: &[Bytes]) -> Bytes {
        match encoding {
            harvest_hub::Encoding::Json => wire::json_batch(events),
            harvest_hub::Encoding::Protobuf => wire::proto_frame(events),
        }
    }

    /// Every binary frame is a `ServerFrame`, even with one event.
    fn wraps_single(&self, encoding: harvest_hub::Encoding) -> bool {
        encoding == harvest_hub::Encoding::Protobuf
    }

    fn join(&self, encoding: harvest_hub::Encoding, pieces: &[harvest_hub::Piece<'_>]) -> Bytes {
        let pieces: Vec<(&Bytes, bool)> = pieces.iter().map(|p| (p.bytes, p.framed)).collect();
        match encoding {
            harvest_hub::Encoding::Json => wire::json_join(&pieces),
            harvest_hub::Encoding::Protobuf => wire::proto_join(&pieces),
        }
    }
}

/// Limits of the live layer, from the settings.
#[derive(Debug, Clone)]
pub struct LiveLimits {
    pub chat_max_chars: usize,
    pub likes_per_connection_per_s: u32,
    pub bad_frame_limit: u32,
}

/// Shared state of the live layer. Cheap to clone.
#[derive(Clone)]
pub struct Live {
    pub hub: Hub,
    store: Store,
    persist: mpsc::UnboundedSender<PersistMsg>,
    recent_chat: Arc<DashMap<String, VecDeque<wire::ChatMessage>>>,
    mutes: Arc<DashMap<(String, String), i64>>,
    chat_limiter: Arc<DefaultKeyedRateLimiter<String>>,
    pub limits: Arc<LiveLimits>,
    masker: Arc<Masker>,
    open_lock: Arc<tokio::sync::Mutex<()>>,
    /// The shared bus when several nodes serve rooms (Redis configured).
    redis: Option<redis_bus::RedisBus>,
    /// Where WebSocket sessions run.
    pub sessions: Arc<sessions::SessionRuntime>,
}

/// Room events the history keeps when a room opens from the SQL log.
const PRELOAD_EVENTS: u32 = 1000;

impl Live {
    /// Builds the live layer and starts its persister.
    pub fn start(settings: &Settings, store: Store) -> anyhow::Result<Self> {
        let redis = match &settings.redis_url {
            Some(url) => Some(redis_bus::RedisBus::new(
                url.expose(),
                &settings.redis_key_prefix,
                &settings.node_id,
                Duration::from_millis(settings.redis_timeout_ms.max(1)),
                settings.history_events,
            )?),
            None => None,
        };
        let config = HubConfig {
            history_events: settings.history_events,
            history_age: Duration::from_secs(settings.history_age_s),
            lossless_queue_bytes: settings.ws_outbound_queue_bytes,
            social_queue_len: 64,
            chat_per_viewer_per_s: settings.chat_per_viewer_per_s.max(1),
            max_batch: 64,
            batch_window: Duration::from_millis(settings.room_batch_window_ms),
            max_connections: settings.max_connections,
            new_connections_per_s: settings.new_connections_per_s.max(1),
        };
        let hub = match &redis {
            Some(bus) => {
                let hub = Hub::with_bus(config, Arc::new(WireFraming), Arc::new(bus.clone()));
                bus.attach(hub.clone());
                hub
            }
            None => Hub::new(config, Arc::new(WireFraming)),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(persist_loop(store.clone(), rx));
        let per_s = NonZeroU32::new(settings.chat_per_user_per_s.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(settings.chat_burst.max(1)).unwrap_or(NonZeroU32::MIN);
        Ok(Self {
            hub,
            store,
            persist: tx,
            recent_chat: Arc::new(DashMap::new()),
            mutes: Arc::new(DashMap::new()),
            chat_limiter: Arc::new(RateLimiter::keyed(
                Quota::per_second(per_s).allow_burst(burst),
            )),
            limits: Arc::new(LiveLimits {
                chat_max_chars: settings.chat_max_chars.max(1),
                likes_per_connection_per_s: settings.likes_per_connection_per_s.max(1),
                bad_frame_limit: wire::BAD_FRAME_LIMIT,
            }),
            masker: Arc::new(Masker::new(&settings.chat_sensitive_words)),
            open_lock: Arc::new(tokio::sync::Mutex::new(())),
            redis,
            sessions: Arc::new(sessions::SessionRuntime::new(settings.ws_threads)?),
        })
    }

    /// Waits (at most `timeout`) until every room event published so far is in SQL.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.persist.send(PersistMsg::Flush(tx)).is_err() {
            return false;
        }
        matches!(tokio::time::timeout(timeout, rx).await, Ok(Ok(())))
    }

    /// The room's channel, opened from the SQL log (epoch, position, recent history)
    /// when it is not open on this node yet.
    pub async fn open_room(
        &self,
        room_id: &str,
    ) -> Result<Arc<RoomChannel>, harvest_store::StoreError> {
        if let Some(room) = self.hub.existing_room(room_id) {
            return Ok(room);
        }
        let _guard = self.open_lock.lock().await;
        if let Some(room) = self.hub.existing_room(room_id) {
            return Ok(room);
        }
        if let Some(bus) = &self.redis {
            let unavailable =
                |e: harvest_hub::BusError| harvest_store::StoreError::Unavailable(e.to_string());
            let init = bus.open(room_id).await.map_err(unavailable)?;
            self.load_mutes(room_id).await?;
            let room = self.hub.room_with(room_id, || init);
            // Events appended between reading the log and the room existing here.
            bus.catch_up(&room).await.map_err(unavailable)?;
            return Ok(room);
        }
        let init = match self.store.room_log(room_id).await? {
            Some((epoch, last_seq)) => {
                let records = self
                    .store
                    .recent_room_events(room_id, &epoch, PRELOAD_EVENTS)
                    .await?;
                let history = records.iter().filter_map(reencode).collect();
                RoomInit {
                    epoch,
                    last_seq: u64::try_from(last_seq).unwrap_or(0),
                    history,
                }
            }
            None => RoomInit::fresh(),
        };
        self.load_mutes(room_id).await?;
        Ok(self.hub.room_with(room_id, || init))
    }

    async fn load_mutes(&self, room_id: &str) -> Result<(), harvest_store::StoreError> {
        for (user, until) in self
            .store
            .room_mutes(room_id, harvest_hub::now_ms())
            .await?
        {
            self.mutes.insert((room_id.to_owned(), user), until);
        }
        Ok(())
    }

    /// Publishes a room event: sequenced and delivered by the hub, then persisted.
    pub async fn publish(
        &self,
        room_id: &str,
        data: impl Into<EventData>,
    ) -> Result<u64, PublishError> {
        self.open_room(room_id).await?;
        let event = WireEvent::new(data);
        let event_type = event.data.event_type();
        let (epoch, encoded) = self.hub.publish_in_epoch(room_id, &event).await?;
        let seq = encoded.seq.unwrap_or_default();
        let record = RoomEventRecord {
            room_id: room_id.to_owned(),
            epoch,
            seq: seq as i64,
            event_type: event_type.to_owned(),
            ts: encoded.ts,
            body: String::from_utf8_lossy(encoded.bytes(harvest_hub::Encoding::Json)).into_owned(),
        };
        if self.persist.send(PersistMsg::Event(record)).is_err() {
            tracing::warn!(
                room_id,
                seq,
                "event log persister stopped; event kept in memory only"
            );
        }
        Ok(seq)
    }

    /// Delivers a social event to a room.
    pub fn social(&self, room_id: &str, kind: SocialKind, data: impl Into<EventData>) {
        self.hub.social(room_id, kind, &WireEvent::new(data));
    }

    /// Delivers a private event to every session of a user.
    pub fn private(&self, user_id: &str, data: impl Into<EventData>) -> usize {
        let event = WireEvent::new(data);
        if let Some(bus) = &self.redis {
            bus.private(user_id, &event);
        }
        self.hub.private(user_id, &event)
    }

    /// Encodes a one-off event for one session.
    pub fn once(&self, lane: Lane, data: impl Into<EventData>) -> Arc<Encoded> {
        self.hub.encode_once(lane, &WireEvent::new(data))
    }

    /// The last chat messages of a room, oldest first.
    pub fn recent_chat(&self, room_id: &str) -> Vec<wire::ChatMessage> {
        self.recent_chat
            .get(room_id)
            .map(|c| c.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub(crate) fn remember_chat(&self, room_id: &str, message: wire::ChatMessage) {
        let mut entry = self.recent_chat.entry(room_id.to_owned()).or_default();
        if entry.len() >= wire::RECENT_CHAT_MAX {
            entry.pop_front();
        }
        entry.push_back(message);
    }

    /// Removes a chat message from the recent chat; returns whether it was there.
    pub fn forget_chat(&self, room_id: &str, message_id: &str) -> bool {
        match self.recent_chat.get_mut(room_id) {
            Some(mut c) => {
                let before = c.len();
                c.retain(|m| m.id != message_id);
                c.len() != before
            }
            None => false,
        }
    }

    /// Mutes a user in a room until `until_ms` (kept in SQL, so it outlives a restart).
    pub async fn mute(
        &self,
        room_id: &str,
        user_id: &str,
        until_ms: i64,
    ) -> Result<(), harvest_store::StoreError> {
        self.store.mute_user(room_id, user_id, until_ms).await?;
        self.mutes
            .insert((room_id.to_owned(), user_id.to_owned()), until_ms);
        Ok(())
    }

    pub fn is_muted(&self, room_id: &str, user_id: &str) -> bool {
        let key = (room_id.to_owned(), user_id.to_owned());
        match self.mutes.get(&key).map(|v| *v) {
            Some(until) if until > harvest_hub::now_ms() => true,
            Some(_) => {
                self.mutes.remove(&key);
                false
            }
            None => false,
        }
    }

    /// Bans a user from a room (kept in SQL): open connections close with 4003, new
    /// ones are refused.
    pub async fn ban(&self, room_id: &str, user_id: &str) -> Result<(), harvest_store::StoreError> {
        self.store.ban_user(room_id, user_id).await?;
        if let Some(room) = self.hub.existing_room(room_id) {
            room.close_user(user_id, wire::close::BANNED);
        }
        Ok(())
    }

    pub async fn is_banned(
        &self,
        room_id: &str,
        user_id: &str,
    ) -> Result<bool, harvest_store::StoreError> {
        self.store.is_banned(room_id, user_id).await
    }

    /// Whether a user may send one more chat message now.
    pub(crate) fn chat_allowed(&self, user_id: &str) -> bool {
        self.chat_limiter.check_key(&user_id.to_owned()).is_ok()
    }

    /// Masks every character of each sensitive word with `*`.
    pub fn mask(&self, text: &str) -> String {
        self.masker.mask(text)
    }

    /// Presence, likes and chat figures of a room on this node.
    pub fn room_stats(&self, room_id: &str) -> harvest_hub::RoomStats {
        self.hub
            .existing_room(room_id)
            .map(|r| r.stats())
            .unwrap_or_default()
    }

    /// Pushes like totals (at most twice a second) and viewer counts (at most once a
    /// second, when changed) to every open room, until the hub is dropped.
    pub fn spawn_presence(&self) -> tokio::task::JoinHandle<()> {
        let live = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut n: u64 = 0;
            loop {
                tick.tick().await;
                n += 1;
                if let Some(bus) = &live.redis {
                    for room in live.hub.rooms() {
                        match bus.sync_presence(&room).await {
                            Ok((viewers, likes)) => {
                                let viewers = n.is_multiple_of(2).then_some(viewers);
                                let (viewers, likes) = bus.changed_totals(&room.id, viewers, likes);
                                if let Some(total) = likes {
                                    live.hub.social_local(
                                        &room.id,
                                        SocialKind::Likes,
                                        &WireEvent::new(wire::Likes { total }),
                                    );
                                }
                                if let Some(count) = viewers {
                                    live.hub.social_local(
                                        &room.id,
                                        SocialKind::Viewers,
                                        &WireEvent::new(wire::RoomViewers { count }),
                                    );
                                }
                            }
                            Err(e) => {
                                tracing::warn!(room_id = %room.id, error = %e, "cannot share presence")
                            }
                        }
                    }
                    continue;
                }
                for room in live.hub.rooms() {
                    if let Some(total) = room.likes_changed() {
                        live.social(&room.id, SocialKind::Likes, wire::Likes { total });
                    }
                    if n.is_multiple_of(2)
                        && let Some(count) = room.viewers_changed()
                    {
                        live.social(
                            &room.id,
                            SocialKind::Viewers,
                            wire::RoomViewers {
                                count: count as u64,
                            },
                        );
                    }
                }
            }
        })
    }

    /// Closes every WebSocket with 1001 and stops accepting events for the log.
    pub fn close(&self) {
        self.hub.close_all(wire::close::GOING_AWAY);
    }
}

/// Why a room event could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Store(#[from] harvest_store::StoreError),
    #[error(transparent)]
    Bus(#[from] harvest_hub::BusError),
}

impl From<PublishError> for crate::error::ApiError {
    fn from(err: PublishError) -> Self {
        match err {
            PublishError::Store(e) => e.into(),
            PublishError::Bus(e) => {
                tracing::warn!(error = %e, "room event bus unavailable");
                let mut api = crate::error::ApiError::new(
                    harvest_proto::ErrorCode::Unavailable,
                    "live delivery is unavailable; retry",
                );
                api.retry_after = Some(1);
                api
            }
        }
    }
}

/// Turns a stored event back into shared bytes for the history.
fn reencode(record: &RoomEventRecord) -> Option<Arc<Encoded>> {
    let event = wire::decode_json_event(record.body.as_bytes()).ok()?;
    let proto = wire::encode_proto(&event);
    Some(Arc::new(Encoded::from_parts(
        Lane::Room,
        event.seq,
        event.ts,
        Bytes::from(record.body.clone().into_bytes()),
        proto,
    )))
}

/// Masks sensitive words: every character of a match becomes `*` (ASCII letters match
/// case-insensitively; the leftmost-longest match wins where words overlap).
pub struct Masker {
    automaton: Option<aho_corasick::AhoCorasick>,
}

impl Masker {
    pub fn new(words: &[String]) -> Self {
        let words: Vec<&str> = words
            .iter()
            .map(|w| w.trim())
            .filter(|w| !w.is_empty())
            .collect();
        let automaton = if words.is_empty() {
            None
        } else {
            aho_corasick::AhoCorasick::builder()
                .ascii_case_insensitive(true)
                .match_kind(aho_corasick::MatchKind::LeftmostLongest)
                .build(&words)
                .ok()
        };
        Self { automaton }
    }

    pub fn mask(&self, text: &str) -> String {
        let Some(ac) = &self.automaton else {
            return text.to_owned();
        };
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for m in ac.find_iter(text) {
            out.push_str(&text[last..m.start()]);
            out.extend(std::iter::repeat_n(
                '*',
                text[m.start()..m.end()].chars().count(),
            ));
            last = m.end();
        }
        out.push_str(&text[last..]);
        out
    }
}

/// What the persister receives.
enum PersistMsg {
    Event(RoomEventRecord),
    /// Answer once everything before this message is written.
    Flush(tokio::sync::oneshot::Sender<()>),
}

async fn persist_loop(store: Store, mut rx: mpsc::UnboundedReceiver<PersistMsg>) {
    let mut batch: Vec<RoomEventRecord> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut flushes = Vec::new();
        let mut take = |msg: PersistMsg, batch: &mut Vec<RoomEventRecord>| match msg {
            PersistMsg::Event(e) => batch.push(e),
            PersistMsg::Flush(tx) => flushes.push(tx),
        };
        take(first, &mut batch);
        // Gather what arrives in the next 50 ms, up to 500 events.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(50);
        while batch.len() < 500 {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(msg)) => take(msg, &mut batch),
                _ => break,
            }
        }
        write_batch(&store, &mut batch).await;
        for tx in flushes {
            let _ = tx.send(());
        }
    }
}

/// Writes a batch, retrying with backoff while the database is unavailable (events stay
/// in order; nothing is dropped while the process lives).
async fn write_batch(store: &Store, batch: &mut Vec<RoomEventRecord>) {
    if batch.is_empty() {
        return;
    }
    let mut delay = Duration::from_millis(100);
    for attempt in 0..50 {
        match store.append_room_events(batch).await {
            Ok(()) => {
                batch.clear();
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, attempt, events = batch.len(), "writing room events failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
    tracing::error!(events = batch.len(), "giving up writing room events");
    batch.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masking_covers_every_character_of_a_match() {
        let m = Masker::new(&["spam".to_owned(), "坏话".to_owned(), " ".to_owned()]);
        assert_eq!(
            m.mask("no SPAM here, spammy 坏话!"),
            "no **** here, ****my **!"
        );
        assert_eq!(m.mask("clean"), "clean");
        assert_eq!(m.mask(""), "");
        assert_eq!(Masker::new(&[]).mask("spam"), "spam");
    }
}
