//! The WebSocket protocol of `GET /ws/rooms/{room_id}` (API.md §6): server events,
//! client frames, error and close codes, and both encodings.
//!
//! - [`Event`] is the envelope `{type, seq, ts, data}`; [`EventData`] has one variant per
//!   event type, each carrying the data struct of the same name ([`SaleStock`] for
//!   `sale.stock`). [`Event::lane`] tells the [`Lane`].
//! - Encode each event once ([`encode_json`] or [`encode_proto`], or [`Encoding::encode`])
//!   and share the `Bytes`; batches are made from the encoded events by concatenation
//!   ([`json_batch`], [`proto_frame`]), never by re-encoding.
//! - [`decode_client_json`] and [`decode_client_proto`] turn a client frame into a
//!   [`ClientFrame`] or a [`FrameError`] carrying the `error` event's code and the frame's
//!   `ref`. They never panic, whatever the input.
//! - The protobuf schema is `proto/harvest/v1/events.proto`; the JSON Schema is
//!   `proto/harvest.v1.json.schema.json`; the protocol is described for client authors in
//!   `docs/protocol.md`.

mod client;
mod data;
mod event;

pub use client::{
    ChatSend, ClientFrame, FrameError, Like, Ping, WsErrorCode, decode_client_json,
    decode_client_proto, encode_client_json, encode_client_proto,
};
pub use data::*;
pub use event::{
    Event, EventData, EventDecodeError, Lane, decode_json_event, decode_json_frame,
    decode_proto_event, decode_proto_frame, encode_json, encode_proto, json_batch, json_join,
    proto_frame, proto_join,
};
// The shapes events carry, re-exported for convenience.
pub use crate::{
    Match, MatchStatus, Metric, Metrics, Order, OrderStatus, Product, Room, RoomStatus, Sale,
    SaleStatus, Score, Standings, StandingsRow,
};

use bytes::Bytes;

/// The subprotocol of the JSON encoding (the default when the client offers none).
pub const SUBPROTOCOL_JSON: &str = "harvest.v1.json";
/// The subprotocol of the protobuf encoding.
pub const SUBPROTOCOL_PROTOBUF: &str = "harvest.v1.protobuf";

/// The largest client frame, in bytes; larger ones are answered `too_large`.
pub const MAX_CLIENT_FRAME_BYTES: usize = 4096;
/// The largest `count` of a `like` frame (the smallest is 1).
pub const LIKE_COUNT_MAX: u32 = 100;
/// Bad frames (`bad_frame`, `unknown_type`, `too_large`) allowed within
/// [`BAD_FRAME_WINDOW_S`]; one more closes the connection with [`close::POLICY`].
pub const BAD_FRAME_LIMIT: u32 = 20;
/// The window of [`BAD_FRAME_LIMIT`], in seconds.
pub const BAD_FRAME_WINDOW_S: u64 = 10;
/// The most chat messages `room.snapshot.recent_chat` holds.
pub const RECENT_CHAT_MAX: usize = 50;

/// WebSocket close codes the server uses.
pub mod close {
    /// Server shutting down: reconnect (elsewhere) with `since` and `epoch`.
    pub const GOING_AWAY: u16 = 1001;
    /// Policy violation: too many bad frames.
    pub const POLICY: u16 = 1008;
    /// The `token` is invalid (expired, badly signed, malformed...).
    pub const INVALID_TOKEN: u16 = 4001;
    /// The user is banned from the room.
    pub const BANNED: u16 = 4003;
    /// No such room.
    pub const ROOM_NOT_FOUND: u16 = 4004;
    /// Too slow: the outbound queue passed its limit; reconnect with `since`.
    pub const TOO_SLOW: u16 = 4008;
    /// Node full or connecting too fast: retry later, with backoff.
    pub const TRY_LATER: u16 = 4029;

    /// Every close code, for documentation and exhaustive tests.
    pub const ALL: [u16; 7] = [
        GOING_AWAY,
        POLICY,
        INVALID_TOKEN,
        BANNED,
        ROOM_NOT_FOUND,
        TOO_SLOW,
        TRY_LATER,
    ];

    /// A short reason to put in the close frame, for the codes above.
    pub fn reason(code: u16) -> Option<&'static str> {
        Some(match code {
            GOING_AWAY => "server shutting down",
            POLICY => "too many bad frames",
            INVALID_TOKEN => "invalid token",
            BANNED => "banned",
            ROOM_NOT_FOUND => "room not found",
            TOO_SLOW => "too slow",
            TRY_LATER => "try later",
            _ => return None,
        })
    }

    /// Whether a client should reconnect with `since` after this close code (the server
    /// is going away or the client fell behind) rather than give up.
    pub fn should_resume(code: u16) -> bool {
        matches!(code, GOING_AWAY | TOO_SLOW | TRY_LATER)
    }
}

/// The encoding of a session, chosen by its subprotocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// `harvest.v1.json`: text frames.
    #[default]
    Json,
    /// `harvest.v1.protobuf`: binary frames.
    Protobuf,
}

impl Encoding {
    pub fn subprotocol(self) -> &'static str {
        match self {
            Self::Json => SUBPROTOCOL_JSON,
            Self::Protobuf => SUBPROTOCOL_PROTOBUF,
        }
    }

    pub fn from_subprotocol(name: &str) -> Option<Self> {
        match name {
            SUBPROTOCOL_JSON => Some(Self::Json),
            SUBPROTOCOL_PROTOBUF => Some(Self::Protobuf),
            _ => None,
        }
    }

    /// Picks the session's encoding from the `Sec-WebSocket-Protocol` header values the
    /// client sent (each may list several, comma-separated): the first supported one.
    /// `None` when the client offered none that is supported: the session then speaks
    /// JSON and the server selects no subprotocol.
    pub fn negotiate<'a>(offered: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        offered
            .into_iter()
            .flat_map(|value| value.split(','))
            .find_map(|name| Self::from_subprotocol(name.trim()))
    }

    /// Encodes one event for this session's encoding.
    pub fn encode(self, event: &Event) -> Bytes {
        match self {
            Self::Json => encode_json(event),
            Self::Protobuf => encode_proto(event),
        }
    }

    /// One frame holding events encoded by [`Encoding::encode`]. In JSON, a single event is
    /// sent as it is and several as an array; in protobuf, every frame is a `ServerFrame`.
    pub fn frame(self, events: &[Bytes]) -> Bytes {
        match (self, events) {
            (Self::Json, [one]) => one.clone(),
            (Self::Json, many) => json_batch(many),
            (Self::Protobuf, many) => proto_frame(many),
        }
    }

    /// Whether frames of this encoding are binary (else text).
    pub fn is_binary(self) -> bool {
        self == Self::Protobuf
    }

    /// Decodes a client frame of this encoding.
    pub fn decode_client(self, frame: &[u8]) -> Result<ClientFrame, FrameError> {
        match self {
            Self::Json => decode_client_json(frame),
            Self::Protobuf => decode_client_proto(frame),
        }
    }

    /// Decodes a server frame of this encoding into its events.
    pub fn decode_frame(self, frame: &[u8]) -> Result<Vec<Event>, EventDecodeError> {
        match self {
            Self::Json => decode_json_frame(frame),
            Self::Protobuf => decode_proto_frame(frame),
        }
    }
}

/// The WebSocket messages of `events.proto`, for the drift test.
#[cfg(test)]
pub(crate) fn proto_messages() -> Vec<(&'static str, Vec<crate::pb::FieldSpec>)> {
    let mut all = event::proto_messages();
    all.extend(client::proto_messages());
    all
}
