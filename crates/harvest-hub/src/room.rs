//! One room's channel: its event log (epoch, seq, bounded history), its sessions, and
//! its presence and like counters.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

use crate::queue::{Pushed, Session, SessionId};
use crate::{Encode, Encoded, Lane, SocialKind, now_ms};

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
}

/// A room's fan-out channel.
pub struct RoomChannel {
    pub id: String,
    log: Mutex<Log>,
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
    ) -> Self {
        let history = init
            .history
            .into_iter()
            .filter(|e| e.seq.is_some_and(|s| s <= init.last_seq))
            .collect();
        Self {
            id: id.to_owned(),
            log: Mutex::new(Log {
                epoch: init.epoch,
                last_seq: init.last_seq,
                history,
            }),
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
    pub(crate) fn publish(&self, event: &dyn Encode) -> (Arc<Encoded>, Fanout) {
        let mut log = self.log.lock();
        let seq = log.last_seq + 1;
        let encoded = Arc::new(Encoded::new(Lane::Room, Some(seq), now_ms(), event));
        log.last_seq = seq;
        log.history.push_back(encoded.clone());
        self.trim(&mut log);
        let fanout = self.fan_out(|s| s.push_lossless(encoded.clone()));
        drop(log);
        (encoded, fanout)
    }

    /// Queues a social event for every session. Chat above the room's per-second cap is
    /// dropped for everyone (sampling), so a huge room stays readable and cheap.
    pub(crate) fn social(&self, kind: SocialKind, event: &dyn Encode) -> Option<Fanout> {
        if kind == SocialKind::Chat {
            self.chat_messages.fetch_add(1, Ordering::Relaxed);
            if !self.admit_chat() {
                return None;
            }
        }
        let encoded = Arc::new(Encoded::new(Lane::Social, None, now_ms(), event));
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
