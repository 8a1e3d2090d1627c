//! One room's channel: its event log (epoch, seq, bounded history), its sessions, and
//! its presence and like counters.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;

use crate::queue::{Pushed, Session, SessionId};
use crate::{Encode, Encoded, Framing, Lane, SocialKind, now_ms};

/// How much history a room keeps: the last `events` room events or the last `age`,
/// whichever retains more.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retention {
    pub events: usize,
    pub age: Duration,
}

struct Log {
    epoch: String,
    last_seq: u64,
    history: VecDeque<Arc<Encoded>>,
    /// Room events in the history not yet queued for the sessions: they go out together
    /// as one batch when the room's batch window closes.
    pending: Vec<Arc<Encoded>>,
    /// When room events were last queued for the sessions.
    last_fanout: Option<Instant>,
    /// A flush of `pending` is scheduled with the batcher.
    flush_scheduled: bool,
}

/// Flushes the rooms' pending batches when their windows close: one task per hub.
///
/// A room event that finds its room quiet (nothing queued for the sessions in the last
/// window) goes out at once; one that follows closely waits for the window to close and
/// goes out with the others as one batch, framed once per encoding and shared by every
/// session. Under load each session then gets at most one room frame per window, however
/// many events the room publishes, and the cost of fan-out follows the window, not the
/// event rate.
pub(crate) struct Batcher {
    pub window: Duration,
    due: Mutex<Vec<(Instant, Weak<RoomChannel>)>>,
    notify: Notify,
    closed: AtomicBool,
}

impl Batcher {
    pub fn new(window: Duration) -> Arc<Self> {
        Arc::new(Self {
            window,
            due: Mutex::new(Vec::new()),
            notify: Notify::new(),
            closed: AtomicBool::new(false),
        })
    }

    fn schedule(&self, at: Instant, room: Weak<RoomChannel>) {
        self.due.lock().push((at, room));
        self.notify.notify_one();
    }

    /// Stops [`Batcher::run`].
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.notify.notify_one();
    }

    /// Flushes each scheduled room when its window closes, until closed.
    pub async fn run(self: Arc<Self>) {
        while !self.closed.load(Ordering::Relaxed) {
            let next = self.due.lock().iter().map(|(at, _)| *at).min();
            let Some(at) = next else {
                self.notify.notified().await;
                continue;
            };
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                // An earlier window may have been scheduled: look again.
                _ = self.notify.notified() => continue,
            }
            let now = Instant::now();
            let ready: Vec<Weak<RoomChannel>> = {
                let mut due = self.due.lock();
                let mut ready = Vec::new();
                due.retain(|(at, room)| {
                    if *at <= now {
                        ready.push(room.clone());
                        false
                    } else {
                        true
                    }
                });
                ready
            };
            for room in ready.iter().filter_map(Weak::upgrade) {
                room.flush();
            }
        }
    }
}

/// A room's fan-out channel.
pub struct RoomChannel {
    pub id: String,
    log: Mutex<Log>,
    this: Weak<RoomChannel>,
    framing: Arc<dyn Framing>,
    batcher: Option<Arc<Batcher>>,
    max_batch: usize,
    sessions: RwLock<HashMap<SessionId, Arc<Session>>>,
    retention: Retention,
    chat_cap: u32,
    chat_window: Mutex<(i64, u32)>,
    // Presence and stats.
    peak: AtomicUsize,
    unique: Mutex<HashSet<String>>,
    likes: AtomicU64,
    likes_published: AtomicU64,
    viewers_published: AtomicUsize,
    chat_messages: AtomicU64,
    /// Viewers and likes summed over every node serving the room, when a shared bus
    /// reports them (`u64::MAX`: not reported, use this node's figures).
    cluster_viewers: AtomicU64,
    cluster_likes: AtomicU64,
}

/// What [`RoomChannel::deliver`] did with an event sequenced elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// The next event: kept in the history and queued for every session.
    Appended,
    /// Already delivered (seq at or below the room's position): ignored.
    Duplicate,
    /// Events between the room's position and this one are missing: nothing was done;
    /// deliver `from..=to` first.
    Gap { from: u64, to: u64 },
    /// The event belongs to another epoch: nothing was done.
    OtherEpoch,
}

/// What the delivery of one event did, for metrics.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Fanout {
    pub queued: u64,
    pub dropped: u64,
    pub overflowed: u64,
}

impl RoomChannel {
    pub(crate) fn new(
        id: &str,
        init: crate::RoomInit,
        retention: Retention,
        chat_cap: u32,
        framing: Arc<dyn Framing>,
        batcher: Option<Arc<Batcher>>,
        max_batch: usize,
    ) -> Arc<Self> {
        let history = init
            .history
            .into_iter()
            .filter(|e| e.seq.is_some_and(|s| s <= init.last_seq))
            .collect();
        Arc::new_cyclic(|this| Self {
            id: id.to_owned(),
            log: Mutex::new(Log {
                epoch: init.epoch,
                last_seq: init.last_seq,
                history,
                pending: Vec::new(),
                last_fanout: None,
                flush_scheduled: false,
            }),
            this: this.clone(),
            framing,
            batcher,
            max_batch: max_batch.max(1),
            sessions: RwLock::new(HashMap::new()),
            retention,
            chat_cap,
            chat_window: Mutex::new((0, 0)),
            peak: AtomicUsize::new(0),
            unique: Mutex::new(HashSet::new()),
            likes: AtomicU64::new(0),
            likes_published: AtomicU64::new(0),
            viewers_published: AtomicUsize::new(0),
            chat_messages: AtomicU64::new(0),
            cluster_viewers: AtomicU64::new(u64::MAX),
            cluster_likes: AtomicU64::new(u64::MAX),
        })
    }

    /// Queues a room event for every session: at once when the room was quiet for a
    /// batch window (or batching is off), else with the room's next batch.
    fn fan_out_room(&self, log: &mut Log, event: Arc<Encoded>) -> Fanout {
        let Some(batcher) = &self.batcher else {
            return self.fan_out(|s| s.push_lossless(event.clone()));
        };
        let now = Instant::now();
        let quiet = log.pending.is_empty()
            && log
                .last_fanout
                .is_none_or(|t| now.duration_since(t) >= batcher.window);
        if quiet {
            log.last_fanout = Some(now);
            return self.fan_out(|s| s.push_lossless(event.clone()));
        }
        log.pending.push(event);
        if log.pending.len() >= self.max_batch {
            return self.flush_locked(log);
        }
        if !log.flush_scheduled {
            log.flush_scheduled = true;
            let at = log.last_fanout.unwrap_or(now) + batcher.window;
            batcher.schedule(at, self.this.clone());
        }
        Fanout::default()
    }

    /// Queues the pending room events for every session as one batch.
    fn flush_locked(&self, log: &mut Log) -> Fanout {
        if log.pending.is_empty() {
            return Fanout::default();
        }
        let pending = std::mem::take(&mut log.pending);
        log.last_fanout = Some(Instant::now());
        if self.sessions.read().is_empty() {
            // Nobody to frame the batch for: the events are in the history already.
            return Fanout::default();
        }
        let item = match pending.as_slice() {
            [one] => one.clone(),
            _ => Arc::new(Encoded::batch(&pending, &*self.framing)),
        };
        self.fan_out(|s| s.push_lossless(item.clone()))
    }

    /// The batch window closed: queues what is pending.
    fn flush(&self) {
        let mut log = self.log.lock();
        log.flush_scheduled = false;
        let fanout = self.flush_locked(&mut log);
        drop(log);
        crate::hub::record(Lane::Room, 0, fanout);
    }

    /// Delivers a room event whose `seq` was assigned elsewhere (a shared log): it is
    /// appended only when it is the next one of the room's epoch, so sessions see every
    /// seq once and in order.
    pub fn deliver(&self, epoch: &str, encoded: Arc<Encoded>) -> (Delivered, u64) {
        let Some(seq) = encoded.seq else {
            return (Delivered::Duplicate, 0);
        };
        let mut log = self.log.lock();
        if log.epoch != epoch {
            return (Delivered::OtherEpoch, 0);
        }
        if seq <= log.last_seq {
            return (Delivered::Duplicate, 0);
        }
        if seq > log.last_seq + 1 {
            return (
                Delivered::Gap {
                    from: log.last_seq + 1,
                    to: seq - 1,
                },
                0,
            );
        }
        log.last_seq = seq;
        log.history.push_back(encoded.clone());
        self.trim(&mut log);
        let fanout = self.fan_out_room(&mut log, encoded);
        drop(log);
        crate::hub::record(Lane::Room, 1, fanout);
        (Delivered::Appended, fanout.queued)
    }

    /// Starts a new epoch (the shared log was lost or reset): the history is dropped and
    /// every session is closed with `code` so its client reconnects and takes a snapshot.
    pub fn reset(&self, init: crate::RoomInit, code: u16) {
        let mut log = self.log.lock();
        log.epoch = init.epoch;
        log.last_seq = init.last_seq;
        log.history = init.history.into_iter().collect();
        log.pending.clear();
        drop(log);
        self.close_all(code);
    }

    /// Records the viewers and likes of the room summed over every node.
    pub fn set_cluster_totals(&self, viewers: u64, likes: u64) {
        self.cluster_viewers.store(viewers, Ordering::Relaxed);
        self.cluster_likes.store(likes, Ordering::Relaxed);
    }

    /// Open connections to the room on every node (this node's when no shared bus
    /// reports them).
    pub fn viewers_total(&self) -> u64 {
        match self.cluster_viewers.load(Ordering::Relaxed) {
            u64::MAX => self.viewers() as u64,
            n => n,
        }
    }

    /// Likes of the room on every node (this node's when no shared bus reports them).
    pub fn likes_total(&self) -> u64 {
        match self.cluster_likes.load(Ordering::Relaxed) {
            u64::MAX => self.likes(),
            n => n,
        }
    }

    /// The room's epoch and latest seq.
    pub fn position(&self) -> (String, u64) {
        let log = self.log.lock();
        (log.epoch.clone(), log.last_seq)
    }

    /// Appends a room event: assigns the next seq, keeps it in the history, and queues
    /// it for every session, all under the log lock so every session sees seqs in order.
    /// Returns the encoded event.
    pub(crate) fn publish(&self, event: &dyn Encode) -> (String, Arc<Encoded>, Fanout) {
        let mut log = self.log.lock();
        let seq = log.last_seq + 1;
        let encoded = Arc::new(Encoded::new(Lane::Room, Some(seq), now_ms(), event));
        log.last_seq = seq;
        log.history.push_back(encoded.clone());
        self.trim(&mut log);
        let fanout = self.fan_out_room(&mut log, encoded.clone());
        let epoch = log.epoch.clone();
        drop(log);
        (epoch, encoded, fanout)
    }

    /// Queues a social event for every session. Chat above the room's per-second cap is
    /// dropped for everyone (sampling), so a huge room stays readable and cheap.
    pub(crate) fn social(&self, kind: SocialKind, event: &dyn Encode) -> Option<Fanout> {
        let encoded = Arc::new(Encoded::new(Lane::Social, None, now_ms(), event));
        self.social_encoded(kind, encoded)
    }

    /// Queues an encoded social event for every session of this node (chat sampled at
    /// the room's cap).
    pub(crate) fn social_encoded(&self, kind: SocialKind, encoded: Arc<Encoded>) -> Option<Fanout> {
        if kind == SocialKind::Chat {
            self.chat_messages.fetch_add(1, Ordering::Relaxed);
            if !self.admit_chat() {
                return None;
            }
        }
        Some(self.fan_out(|s| s.push_social(encoded.clone(), kind)))
    }

    fn admit_chat(&self) -> bool {
        let second = now_ms() / 1000;
        let mut w = self.chat_window.lock();
        if w.0 != second {
            *w = (second, 0);
        }
        if w.1 >= self.chat_cap {
            return false;
        }
        w.1 += 1;
        true
    }

    fn fan_out(&self, push: impl Fn(&Session) -> Pushed) -> Fanout {
        let mut f = Fanout::default();
        for session in self.sessions.read().values() {
            match push(session) {
                Pushed::Queued => f.queued += 1,
                Pushed::Dropped => {
                    f.queued += 1;
                    f.dropped += 1;
                }
                Pushed::Overflow => f.overflowed += 1,
                Pushed::Closed => {}
            }
        }
        f
    }

    fn trim(&self, log: &mut Log) {
        let horizon = now_ms() - self.retention.age.as_millis() as i64;
        while log.history.len() > self.retention.events
            && log.history.front().is_some_and(|e| e.ts < horizon)
        {
            log.history.pop_front();
        }
    }

    /// Registers a session. With `since` (epoch, seq) it also returns the missed events
    /// when the history still holds all of them (`Some(replay)`), or `None` when the
    /// client must take a snapshot. Registration and replay happen under the log lock:
    /// no event can fall between them.
    pub(crate) fn join(
        &self,
        session: Arc<Session>,
        since: Option<(&str, u64)>,
    ) -> (String, u64, Option<Vec<Arc<Encoded>>>) {
        let mut log = self.log.lock();
        // The sessions already here get what is pending first: the new one starts
        // after it (at `last_seq`, or with the replay).
        let flushed = self.flush_locked(&mut log);
        crate::hub::record(Lane::Room, 0, flushed);
        self.trim(&mut log);
        let replay = since.and_then(|(epoch, since)| {
            if epoch != log.epoch || since > log.last_seq {
                return None;
            }
            if since == log.last_seq {
                return Some(Vec::new());
            }
            let first = log.history.front()?.seq?;
            if since + 1 < first {
                return None;
            }
            Some(
                log.history
                    .iter()
                    .filter(|e| e.seq.is_some_and(|s| s > since))
                    .cloned()
                    .collect(),
            )
        });
        if let Some(events) = &replay {
            for e in events {
                session.push_lossless(e.clone());
            }
        }
        if let Some(user) = &session.user_id {
            self.unique.lock().insert(user.clone());
        }
        let mut sessions = self.sessions.write();
        sessions.insert(session.id, session);
        self.peak.fetch_max(sessions.len(), Ordering::Relaxed);
        (log.epoch.clone(), log.last_seq, replay)
    }

    /// Removes a session.
    pub(crate) fn leave(&self, id: SessionId) -> Option<Arc<Session>> {
        self.sessions.write().remove(&id)
    }

    /// Closes every session of `user_id` with `code`; returns how many.
    pub fn close_user(&self, user_id: &str, code: u16) -> usize {
        let sessions = self.sessions.read();
        let mut n = 0;
        for s in sessions.values() {
            if s.user_id.as_deref() == Some(user_id) {
                s.close(code);
                n += 1;
            }
        }
        n
    }

    /// Closes every session with `code`.
    pub fn close_all(&self, code: u16) {
        for s in self.sessions.read().values() {
            s.close(code);
        }
    }

    /// Open connections to the room on this node.
    pub fn viewers(&self) -> usize {
        self.sessions.read().len()
    }

    /// Adds likes; returns the new total.
    pub fn add_likes(&self, n: u64) -> u64 {
        self.likes.fetch_add(n, Ordering::Relaxed) + n
    }

    pub fn likes(&self) -> u64 {
        self.likes.load(Ordering::Relaxed)
    }

    /// The like total if it changed since the last call.
    pub fn likes_changed(&self) -> Option<u64> {
        let now = self.likes();
        (self.likes_published.swap(now, Ordering::Relaxed) != now).then_some(now)
    }

    /// The viewer count if it changed since the last call.
    pub fn viewers_changed(&self) -> Option<usize> {
        let now = self.viewers();
        (self.viewers_published.swap(now, Ordering::Relaxed) != now).then_some(now)
    }

    /// Presence and activity figures of the room on this node.
    pub fn stats(&self) -> crate::RoomStats {
        crate::RoomStats {
            viewers_now: self.viewers() as u64,
            viewers_peak: self.peak.load(Ordering::Relaxed) as u64,
            viewers_unique: self.unique.lock().len() as u64,
            likes: self.likes(),
            chat_messages: self.chat_messages.load(Ordering::Relaxed),
        }
    }

    /// Room events after `after_seq`, from the in-memory history, in order.
    pub fn history_after(&self, after_seq: u64) -> Vec<Arc<Encoded>> {
        let log = self.log.lock();
        log.history
            .iter()
            .filter(|e| e.seq.is_some_and(|s| s > after_seq))
            .cloned()
            .collect()
    }
}
