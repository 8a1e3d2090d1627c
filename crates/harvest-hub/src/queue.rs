//! A session's outbound queue: a lossless lane (room and private events, in order,
//! bounded in bytes) and a small social lane (chat capped and dropped oldest-first;
//! like totals and viewer counts coalesced to the latest value).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::{Encoded, Encoding, Framing, Lane, Piece, SocialKind};

/// A process-unique session number.
pub type SessionId = u64;

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// What the socket task sends next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// One frame of the session's encoding (a single event or a batch).
    Data {
        bytes: Bytes,
        /// Events in the frame per lane: room, social, private.
        counts: [u32; 3],
    },
    /// Close the connection with this code.
    Close(u16),
}

/// Limits of one session's queue.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueLimits {
    pub lossless_bytes: usize,
    pub social_len: usize,
    pub max_batch: usize,
}

#[derive(Default)]
struct State {
    /// Welcome and snapshot: sent before anything else.
    front: VecDeque<Arc<Encoded>>,
    lossless: VecDeque<Arc<Encoded>>,
    lossless_bytes: usize,
    chat: VecDeque<Arc<Encoded>>,
    likes: Option<Arc<Encoded>>,
    viewers: Option<Arc<Encoded>>,
    /// Nothing is sent until the caller has put the welcome in front.
    started: bool,
    closing: Option<u16>,
    /// Close with this code once what is queued has been sent.
    finishing: Option<u16>,
}

/// One WebSocket connection to a room.
pub struct Session {
    pub id: SessionId,
    /// The opaque id sent in `session.welcome`.
    pub key: String,
    pub room_id: String,
    pub user_id: Option<String>,
    pub encoding: Encoding,
    limits: QueueLimits,
    framing: Arc<dyn Framing>,
    state: Mutex<State>,
    notify: Notify,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("room_id", &self.room_id)
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

/// Why an event could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    Queued,
    /// A social event was dropped (or replaced one that was dropped).
    Dropped,
    /// The lossless lane overflowed: the session is now closing with 4008.
    Overflow,
    /// The session is already closing.
    Closed,
}

/// Close code for a connection whose lossless queue overflowed.
pub const CLOSE_TOO_SLOW: u16 = 4008;

impl Session {
    pub(crate) fn new(
        room_id: &str,
        user_id: Option<String>,
        encoding: Encoding,
        limits: QueueLimits,
        framing: Arc<dyn Framing>,
    ) -> Self {
        Self {
            id: NEXT_SESSION.fetch_add(1, Ordering::Relaxed),
            key: uuid::Uuid::now_v7().to_string(),
            room_id: room_id.to_owned(),
            user_id,
            encoding,
            limits,
            framing,
            state: Mutex::new(State::default()),
            notify: Notify::new(),
        }
    }

    /// Puts the first events (welcome, then snapshot) in front of everything queued so
    /// far and lets the socket task start sending.
    pub fn start(&self, first: Vec<Arc<Encoded>>) {
        let mut st = self.state.lock();
        for ev in first.into_iter().rev() {
            st.front.push_front(ev);
        }
        st.started = true;
        drop(st);
        self.notify.notify_one();
    }

    /// Queues a room or private event; closes the session with 4008 when the lossless
    /// backlog would pass its byte limit.
    pub(crate) fn push_lossless(&self, event: Arc<Encoded>) -> Pushed {
        let mut st = self.state.lock();
        if st.closing.is_some() || st.finishing.is_some() {
            return Pushed::Closed;
        }
        let cost = event.cost();
        if st.lossless_bytes + cost > self.limits.lossless_bytes {
            st.closing = Some(CLOSE_TOO_SLOW);
            st.lossless.clear();
            st.lossless_bytes = 0;
            st.chat.clear();
            drop(st);
            self.notify.notify_one();
            return Pushed::Overflow;
        }
        st.lossless_bytes += cost;
        st.lossless.push_back(event);
        drop(st);
        self.notify.notify_one();
        Pushed::Queued
    }

    /// Queues an event for this session alone (an `error` or `pong`) on the lossless
    /// lane.
    pub fn push(&self, event: Arc<Encoded>) {
        self.push_lossless(event);
    }

    /// Queues a social event by its kind's rule.
    pub(crate) fn push_social(&self, event: Arc<Encoded>, kind: SocialKind) -> Pushed {
        let mut st = self.state.lock();
        if st.closing.is_some() || st.finishing.is_some() {
            return Pushed::Closed;
        }
        let outcome = match kind {
            SocialKind::Chat => {
                let dropped = if st.chat.len() >= self.limits.social_len {
                    st.chat.pop_front();
                    Pushed::Dropped
                } else {
                    Pushed::Queued
                };
                st.chat.push_back(event);
                dropped
            }
            SocialKind::Likes => replace(&mut st.likes, event),
            SocialKind::Viewers => replace(&mut st.viewers, event),
        };
        drop(st);
        self.notify.notify_one();
        outcome
    }

    /// Asks the socket task to close the connection with `code` (nothing more is sent).
    pub fn close(&self, code: u16) {
        let mut st = self.state.lock();
        if st.closing.is_none() {
            st.closing = Some(code);
        }
        drop(st);
        self.notify.notify_one();
    }

    /// Sends what is already queued, then closes with `code`; nothing queued later is
    /// sent.
    pub fn finish(&self, code: u16) {
        let mut st = self.state.lock();
        if st.finishing.is_none() {
            st.finishing = Some(code);
        }
        drop(st);
        self.notify.notify_one();
    }

    /// Whether the session is closing, and with which code.
    pub fn closing(&self) -> Option<u16> {
        self.state.lock().closing
    }

    /// Bytes waiting in the lossless lane.
    pub fn backlog_bytes(&self) -> usize {
        self.state.lock().lossless_bytes
    }

    /// Waits until there is something to send and returns it: one event as it is, or
    /// everything pending (up to the batch limit) as one batch frame.
    pub async fn next_frame(&self) -> Frame {
        loop {
            if let Some(frame) = self.take_frame() {
                return frame;
            }
            self.notify.notified().await;
        }
    }

    /// The next frame if one is ready, without waiting.
    pub fn take_frame(&self) -> Option<Frame> {
        let mut st = self.state.lock();
        if let Some(code) = st.closing {
            return Some(Frame::Close(code));
        }
        if !st.started {
            return None;
        }
        let max = self.limits.max_batch.max(1);
        let mut events: Vec<Arc<Encoded>> = Vec::new();
        // Events taken so far (a room's batch counts as its events).
        let mut n = 0usize;
        while n < max
            && let Some(ev) = st.front.pop_front()
        {
            n += ev.count() as usize;
            events.push(ev);
        }
        while n < max
            && let Some(ev) = st.lossless.pop_front()
        {
            st.lossless_bytes -= ev.cost();
            n += ev.count() as usize;
            events.push(ev);
        }
        while n < max
            && let Some(ev) = st.chat.pop_front()
        {
            n += 1;
            events.push(ev);
        }
        if n < max
            && let Some(ev) = st.likes.take()
        {
            n += 1;
            events.push(ev);
        }
        if n < max
            && let Some(ev) = st.viewers.take()
        {
            events.push(ev);
        }
        let finishing = st.finishing;
        drop(st);
        if events.is_empty() {
            return finishing.map(Frame::Close);
        }
        let mut counts = [0u32; 3];
        for ev in &events {
            counts[match ev.lane {
                Lane::Room => 0,
                Lane::Social => 1,
                Lane::Private => 2,
            }] += ev.count();
        }
        let bytes = match events.as_slice() {
            // A room's batch is already a frame: sent as it is, shared with every session.
            [one] if one.is_framed() => one.bytes(self.encoding).clone(),
            [one] if !self.framing.wraps_single(self.encoding) => one.bytes(self.encoding).clone(),
            _ if events.iter().any(|e| e.is_framed()) => {
                let pieces: Vec<Piece<'_>> = events
                    .iter()
                    .map(|e| Piece {
                        bytes: e.bytes(self.encoding),
                        framed: e.is_framed(),
                    })
                    .collect();
                self.framing.join(self.encoding, &pieces)
            }
            _ => {
                let parts: Vec<Bytes> = events
                    .iter()
                    .map(|e| e.bytes(self.encoding).clone())
                    .collect();
                self.framing.frame(self.encoding, &parts)
            }
        };
        Some(Frame::Data { bytes, counts })
    }
}

fn replace(slot: &mut Option<Arc<Encoded>>, event: Arc<Encoded>) -> Pushed {
    match slot.replace(event) {
        Some(_) => Pushed::Dropped,
        None => Pushed::Queued,
    }
}
