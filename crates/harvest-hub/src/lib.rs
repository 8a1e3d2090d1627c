//! The live-room hub: rooms, sessions, per-connection queues with two lanes, history
//! with `seq`/`epoch` recovery, batching, presence counts.
//!
//! The hub is encoding-agnostic: an event arrives as something that can [`Encode`]
//! itself once per wire encoding (JSON, protobuf), and the hub shares the resulting
//! bytes across every session of the room, so delivering an event to ten thousand
//! viewers allocates nothing per viewer beyond a reference count.
//!
//! **Lanes.** Room events (the lossless lane) get a per-room `seq` assigned under the
//! room's lock, are kept in a bounded history, and are queued for every session in
//! order; a session whose lossless backlog passes its byte limit is closed (4008) rather
//! than ever skipping one. Social events (chat, like totals, viewer counts) go through a
//! small bounded queue per session: like totals and viewer counts are coalesced to the
//! latest value, chat is capped per viewer per second and the oldest is dropped when a
//! viewer falls behind. Private events go to one user's sessions on the lossless path.
//!
//! **Recovery.** A client that reconnects with `since` and `epoch` gets exactly the room
//! events it missed when the history still holds them; otherwise it is told
//! `recovered: false` and receives a fresh snapshot, built by the caller. Registering
//! the session and reading the replay happen under the room lock, so no event falls in
//! between.
//!
//! **The bus.** Where a room event gets its `seq` and how it reaches the other nodes
//! serving the room is the [`Bus`]'s business: [`LocalBus`] appends to the room's
//! in-memory log on this node; a networked bus appends where every node can read.
//!
//! **Writers.** Each session's socket task calls [`Session::next_frame`], which waits
//! for work and returns one frame: a single event, or a batch of everything pending when
//! the connection has a backlog. A slow socket only ever delays itself.

mod bus;
mod hub;
mod queue;
mod room;

pub use bus::{Bus, BusError, LocalBus};
pub use hub::{
    Admission, Hub, HubConfig, HubStats, Joined, Refusal, RoomInit, RoomStats, SessionGuard,
    new_epoch,
};
pub use queue::{CLOSE_TOO_SLOW, Frame, Session, SessionId};
pub use room::{Delivered, RoomChannel};

use std::sync::Arc;

use bytes::Bytes;

/// The wire encodings a session may speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    Json,
    Protobuf,
}

/// Which delivery rules an event follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Room events: sequenced, retained, never dropped for a connected client.
    Room,
    /// Chat, likes and viewer counts: sampled or coalesced under load.
    Social,
    /// To one user's sessions only; never dropped.
    Private,
}

impl Lane {
    /// Every lane, e.g. to export a zero for each before any event.
    pub const ALL: [Lane; 3] = [Lane::Room, Lane::Social, Lane::Private];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Room => "room",
            Self::Social => "social",
            Self::Private => "private",
        }
    }
}

/// How a social event is treated when a session falls behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SocialKind {
    /// A chat message: capped per viewer per second; the oldest is dropped first.
    Chat,
    /// A like total: only the latest matters.
    Likes,
    /// A viewer count: only the latest matters.
    Viewers,
}

/// Something the hub can put on the wire: it encodes itself once per encoding, with
/// the `seq` the hub assigned (room events) or none.
pub trait Encode: Send + Sync {
    fn encode(&self, seq: Option<u64>, encoding: Encoding) -> Bytes;
}

/// How several encoded events become one frame of an encoding (a JSON array, or a
/// protobuf frame message), without re-encoding them.
pub trait Framing: Send + Sync + 'static {
    /// One frame holding `events` (at least one).
    fn frame(&self, encoding: Encoding, events: &[Bytes]) -> Bytes;

    /// Whether a single event is also wrapped by [`Framing::frame`] in this encoding
    /// (otherwise it goes out as it is).
    fn wraps_single(&self, _encoding: Encoding) -> bool {
        false
    }

    /// One frame holding the events of `pieces` in order, where a piece is either one
    /// encoded event or a whole frame made by [`Framing::frame`] (a room's batch),
    /// whose events are spliced in without re-encoding them.
    fn join(&self, encoding: Encoding, pieces: &[Piece<'_>]) -> Bytes;
}

/// A part of a frame being joined: one event, or a frame of several.
#[derive(Debug, Clone, Copy)]
pub struct Piece<'a> {
    pub bytes: &'a Bytes,
    /// `bytes` is a frame made by [`Framing::frame`] rather than one event.
    pub framed: bool,
}

/// One event, encoded once per encoding and shared by every session; or a room's
/// batch of consecutive room events, framed once per encoding (see
/// [`HubConfig::batch_window`](crate::HubConfig::batch_window)).
#[derive(Debug)]
pub struct Encoded {
    pub lane: Lane,
    /// The event's seq (a batch: its last event's).
    pub seq: Option<u64>,
    /// Server time in ms when the event was created (a batch: its last event's).
    pub ts: i64,
    json: Bytes,
    protobuf: Bytes,
    /// Events held: 1, or the size of a batch.
    count: u32,
    /// The bytes are a frame of [`Framing::frame`], not one event.
    framed: bool,
}

impl Encoded {
    /// An event already encoded in both encodings (e.g. read back from the log).
    pub fn from_parts(lane: Lane, seq: Option<u64>, ts: i64, json: Bytes, protobuf: Bytes) -> Self {
        Self {
            lane,
            seq,
            ts,
            json,
            protobuf,
            count: 1,
            framed: false,
        }
    }

    /// Consecutive events framed once per encoding, to be queued as one item. `events`
    /// holds at least two single events of one lane.
    pub fn batch(events: &[Arc<Encoded>], framing: &dyn Framing) -> Self {
        let last = events.last().expect("a batch holds events");
        let frame = |encoding| {
            let parts: Vec<Bytes> = events.iter().map(|e| e.bytes(encoding).clone()).collect();
            framing.frame(encoding, &parts)
        };
        Self {
            lane: last.lane,
            seq: last.seq,
            ts: last.ts,
            json: frame(Encoding::Json),
            protobuf: frame(Encoding::Protobuf),
            count: events.iter().map(|e| e.count).sum(),
            framed: true,
        }
    }

    /// Encodes `event` in both encodings.
    pub fn new(lane: Lane, seq: Option<u64>, ts: i64, event: &dyn Encode) -> Self {
        Self {
            lane,
            seq,
            ts,
            json: event.encode(seq, Encoding::Json),
            protobuf: event.encode(seq, Encoding::Protobuf),
            count: 1,
            framed: false,
        }
    }

    /// Events held: 1, or the size of a batch.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Whether the bytes are a frame of several events (a room's batch).
    pub fn is_framed(&self) -> bool {
        self.framed
    }

    /// The bytes of one encoding.
    pub fn bytes(&self, encoding: Encoding) -> &Bytes {
        match encoding {
            Encoding::Json => &self.json,
            Encoding::Protobuf => &self.protobuf,
        }
    }

    /// Bytes this event costs in a session's queue (the larger encoding, so the limit
    /// holds for either).
    pub fn cost(&self) -> usize {
        self.json.len().max(self.protobuf.len())
    }
}

/// The current time in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
