//! The server-to-client event envelope, its two encodings, and batching.

use bytes::{BufMut, Bytes, BytesMut};
use prost::DecodeError;
use prost::encoding::{self, DecodeContext, WireType};
use serde::de::Error as _;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::data::*;
use crate::pb::ProtoField;
#[cfg(test)]
use crate::pb::{FieldSpec, ProtoMessage};

/// The delivery lane of an event.
///
/// - `Room`: the lossless, sequenced lane (`seq`); never dropped for a connected client.
/// - `Social`: chat, likes, viewer counts; no `seq`, may be sampled or coalesced under load.
/// - `Private`: events for one user's (or one connection's) eyes: no `seq`, never dropped.
///   `session.welcome` and `room.snapshot` travel here too: they are addressed to one
///   connection and are not part of the room's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    Room,
    Social,
    Private,
}

impl Lane {
    /// The lane's name, as in the `lane` label of the event metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Room => "room",
            Self::Social => "social",
            Self::Private => "private",
        }
    }

    /// Whether events of this lane carry a `seq`.
    pub fn is_sequenced(self) -> bool {
        self == Self::Room
    }
}

/// Declares [`EventData`] from one table: variant (= data struct), event type, protobuf
/// oneof tag, lane.
macro_rules! events {
    ($($variant:ident = $ty:literal, $tag:literal, $lane:ident;)+) => {
        /// The `data` of an event; the variant is the event's `type`.
        #[derive(Debug, Clone, PartialEq)]
        pub enum EventData {
            $(
                #[doc = concat!("`", $ty, "`")]
                $variant($variant),
            )+
        }

        impl EventData {
            /// Every event type, in declaration order.
            pub const TYPES: &'static [&'static str] = &[$($ty),+];

            /// The event's `type` (`sale.stock`).
            pub fn event_type(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => $ty,)+
                }
            }

            /// The lane events of this type travel in.
            pub fn lane(&self) -> Lane {
                match self {
                    $(Self::$variant(_) => Lane::$lane,)+
                }
            }

            /// The lane of an event type; `None` for an unknown type.
            pub fn lane_of(event_type: &str) -> Option<Lane> {
                match event_type {
                    $($ty => Some(Lane::$lane),)+
                    _ => None,
                }
            }

            fn from_json(event_type: &str, data: serde_json::Value) -> Result<Self, serde_json::Error> {
                match event_type {
                    $($ty => serde_json::from_value(data).map(Self::$variant),)+
                    other => Err(serde_json::Error::custom(format!("unknown event type `{other}`"))),
                }
            }

            fn proto_len(&self) -> usize {
                match self {
                    $(Self::$variant(d) => encoding::message::encoded_len($tag, d),)+
                }
            }

            fn proto_encode(&self, buf: &mut impl BufMut) {
                match self {
                    $(Self::$variant(d) => encoding::message::encode($tag, d, buf),)+
                }
            }

            /// Merges oneof member `tag` into `slot`; `Ok(false)` when `tag` is no member.
            fn proto_merge(
                slot: &mut Option<Self>,
                tag: u32,
                wire_type: WireType,
                buf: &mut &[u8],
                ctx: DecodeContext,
            ) -> Result<bool, DecodeError> {
                match tag {
                    $($tag => {
                        if let Some(Self::$variant(d)) = slot {
                            encoding::message::merge(wire_type, d, buf, ctx)?;
                        } else {
                            let mut d = $variant::default();
                            encoding::message::merge(wire_type, &mut d, buf, ctx)?;
                            *slot = Some(Self::$variant(d));
                        }
                        Ok(true)
                    })+
                    _ => Ok(false),
                }
            }

            /// The oneof members as `.proto` fields (`sale.stock` → `SaleStock sale_stock`).
            #[cfg(test)]
            pub(crate) fn proto_fields() -> Vec<FieldSpec> {
                vec![$(FieldSpec {
                    name: $ty.replace('.', "_"),
                    proto_type: <$variant as ProtoMessage>::NAME.to_owned(),
                    tag: $tag,
                },)+]
            }

            /// The data messages, for the `.proto` drift test.
            #[cfg(test)]
            pub(crate) fn proto_messages() -> Vec<(&'static str, Vec<FieldSpec>)> {
                vec![$((<$variant as ProtoMessage>::NAME, <$variant as ProtoMessage>::fields()),)+]
            }
        }

        impl Serialize for EventData {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                match self {
                    $(Self::$variant(d) => d.serialize(serializer),)+
                }
            }
        }

        $(
            impl From<$variant> for EventData {
                fn from(data: $variant) -> Self {
                    Self::$variant(data)
                }
            }
        )+
    };
}

// Oneof tags 3..=15 take one byte on the wire: they go to the frequent events.
events! {
    SessionWelcome = "session.welcome", 16, Private;
    RoomSnapshot = "room.snapshot", 17, Private;
    RoomStatusChanged = "room.status", 18, Room;
    RoomProducts = "room.products", 19, Room;
    ProductPinned = "product.pinned", 20, Room;
    SaleScheduled = "sale.scheduled", 21, Room;
    SaleStarted = "sale.started", 12, Room;
    SaleStock = "sale.stock", 6, Room;
    SaleSoldOut = "sale.sold_out", 13, Room;
    SaleEnded = "sale.ended", 14, Room;
    OrderPlaced = "order.placed", 7, Room;
    ChatDeleted = "chat.deleted", 22, Room;
    PkStarted = "pk.started", 23, Room;
    PkScore = "pk.score", 8, Room;
    PkEnded = "pk.ended", 24, Room;
    ContestStandings = "contest.standings", 9, Room;
    ChatMessage = "chat.message", 3, Social;
    Likes = "likes", 4, Social;
    RoomViewers = "room.viewers", 5, Social;
    HoldExpired = "hold.expired", 15, Private;
    OrderPaid = "order.paid", 25, Private;
    TestMessage = "test.message", 26, Room;
    ErrorEvent = "error", 11, Private;
    Pong = "pong", 10, Private;
}

/// One server-to-client event: `{"type": "...", "seq": 17, "ts": 1764420000123, "data": {...}}`.
///
/// `seq` is set on room-lane events only (the hub assigns it when it appends the event
/// to the room's history) and is omitted from the JSON otherwise. `ts` is the server's
/// clock in milliseconds since the Unix epoch when the event was created.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub seq: Option<u64>,
    pub ts: i64,
    pub data: EventData,
}

const SEQ_TAG: u32 = 1;
const TS_TAG: u32 = 2;

impl Event {
    /// A room event with its seq.
    pub fn room(seq: u64, ts: i64, data: impl Into<EventData>) -> Self {
        Self {
            seq: Some(seq),
            ts,
            data: data.into(),
        }
    }

    /// A social or private event (no seq).
    pub fn unsequenced(ts: i64, data: impl Into<EventData>) -> Self {
        Self {
            seq: None,
            ts,
            data: data.into(),
        }
    }

    /// The event's `type`.
    pub fn event_type(&self) -> &'static str {
        self.data.event_type()
    }

    /// The lane the event travels in.
    pub fn lane(&self) -> Lane {
        self.data.lane()
    }

    /// Checks the lane rule: a room event has a seq (≥ 1), no other event has one.
    pub fn check_seq(&self) -> Result<(), String> {
        match (self.lane().is_sequenced(), self.seq) {
            (true, Some(seq)) if seq >= 1 => Ok(()),
            (true, Some(_)) => Err(format!(
                "`{}` has seq 0; seqs start at 1",
                self.event_type()
            )),
            (true, None) => Err(format!("room event `{}` has no seq", self.event_type())),
            (false, Some(_)) => Err(format!(
                "`{}` is not a room event but has a seq",
                self.event_type()
            )),
            (false, None) => Ok(()),
        }
    }

    fn proto_len(&self) -> usize {
        self.seq.field_len(SEQ_TAG) + self.ts.field_len(TS_TAG) + self.data.proto_len()
    }

    fn proto_encode(&self, buf: &mut impl BufMut) {
        self.seq.encode_field(SEQ_TAG, buf);
        self.ts.encode_field(TS_TAG, buf);
        self.data.proto_encode(buf);
    }

    fn proto_decode(mut buf: &[u8]) -> Result<Self, EventDecodeError> {
        let ctx = DecodeContext::default();
        let (mut seq, mut ts, mut data) = (None::<u64>, 0i64, None);
        while !buf.is_empty() {
            let (tag, wire_type) = encoding::decode_key(&mut buf)?;
            match tag {
                SEQ_TAG => seq.merge_field(wire_type, &mut buf, ctx.clone())?,
                TS_TAG => ts.merge_field(wire_type, &mut buf, ctx.clone())?,
                _ => {
                    if !EventData::proto_merge(&mut data, tag, wire_type, &mut buf, ctx.clone())? {
                        encoding::skip_field(wire_type, tag, &mut buf, ctx.clone())?;
                    }
                }
            }
        }
        let data = data.ok_or(EventDecodeError::NoData)?;
        let event = Self { seq, ts, data };
        event.check_seq().map_err(EventDecodeError::Seq)?;
        Ok(event)
    }

    /// The `.proto` fields of `Event` (envelope and oneof members).
    #[cfg(test)]
    pub(crate) fn proto_fields() -> Vec<FieldSpec> {
        let mut fields = vec![
            FieldSpec {
                name: "seq".into(),
                proto_type: <Option<u64> as ProtoField>::proto_type(),
                tag: SEQ_TAG,
            },
            FieldSpec {
                name: "ts".into(),
                proto_type: <i64 as ProtoField>::proto_type(),
                tag: TS_TAG,
            },
        ];
        fields.extend(EventData::proto_fields());
        fields
    }
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Event", 3 + usize::from(self.seq.is_some()))?;
        s.serialize_field("type", self.event_type())?;
        if let Some(seq) = self.seq {
            s.serialize_field("seq", &seq)?;
        }
        s.serialize_field("ts", &self.ts)?;
        s.serialize_field("data", &self.data)?;
        s.end()
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            #[serde(rename = "type")]
            event_type: String,
            #[serde(default)]
            seq: Option<u64>,
            ts: i64,
            data: serde_json::Value,
        }
        let raw = Raw::deserialize(deserializer)?;
        let data = EventData::from_json(&raw.event_type, raw.data)
            .map_err(|e| D::Error::custom(format_args!("`{}` data: {e}", raw.event_type)))?;
        let event = Event {
            seq: raw.seq,
            ts: raw.ts,
            data,
        };
        event.check_seq().map_err(D::Error::custom)?;
        Ok(event)
    }
}

/// Why server events could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum EventDecodeError {
    #[error("invalid JSON event: {0}")]
    Json(#[from] serde_json::Error),
    #[error("invalid protobuf event: {0}")]
    Proto(#[from] DecodeError),
    #[error("invalid protobuf event: no member of the `data` oneof is set")]
    NoData,
    #[error("invalid protobuf frame: an event is longer than the frame")]
    Truncated,
    /// A room event without `seq`, or another event with one.
    #[error("{0}")]
    Seq(String),
}

/// Encodes an event as one JSON object: `{"type":..,"seq":..,"ts":..,"data":{..}}`.
pub fn encode_json(event: &Event) -> Bytes {
    let mut out = BytesMut::with_capacity(128).writer();
    // Serialising the wire types cannot fail: every map key is a string.
    serde_json::to_writer(&mut out, event).expect("wire types serialize to JSON");
    out.into_inner().freeze()
}

/// Encodes an event as a protobuf `Event` message (not length-delimited).
pub fn encode_proto(event: &Event) -> Bytes {
    let mut out = BytesMut::with_capacity(event.proto_len());
    event.proto_encode(&mut out);
    out.freeze()
}

/// A JSON batch `[e1,e2,...]` made by concatenating events encoded by [`encode_json`].
pub fn json_batch(events: &[Bytes]) -> Bytes {
    let len = 2 + events.iter().map(|e| e.len() + 1).sum::<usize>();
    let mut out = BytesMut::with_capacity(len);
    out.put_u8(b'[');
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        out.put_slice(event);
    }
    out.put_u8(b']');
    out.freeze()
}

/// A binary frame: the protobuf `ServerFrame { repeated Event events = 1; }` made by
/// writing each event encoded by [`encode_proto`] as field 1 (key byte `0x0A`, varint
/// length, bytes). One event is a frame of one.
pub fn proto_frame(events: &[Bytes]) -> Bytes {
    let len = events
        .iter()
        .map(|e| 1 + encoding::encoded_len_varint(e.len() as u64) + e.len())
        .sum();
    let mut out = BytesMut::with_capacity(len);
    for event in events {
        out.put_u8(SERVER_FRAME_EVENT_KEY);
        encoding::encode_varint(event.len() as u64, &mut out);
        out.put_slice(event);
    }
    out.freeze()
}

/// A JSON batch of `pieces` in order: each piece is one event encoded by
/// [`encode_json`] (`false`) or a batch made by [`json_batch`] (`true`), whose events
/// are spliced in without their brackets.
pub fn json_join(pieces: &[(&Bytes, bool)]) -> Bytes {
    let inner = |(bytes, batch): &(&Bytes, bool)| -> Bytes {
        if *batch && bytes.len() >= 2 {
            bytes.slice(1..bytes.len() - 1)
        } else {
            (*bytes).clone()
        }
    };
    let parts: Vec<Bytes> = pieces.iter().map(inner).filter(|p| !p.is_empty()).collect();
    json_batch(&parts)
}

/// A binary frame of `pieces` in order: each piece is one event encoded by
/// [`encode_proto`] (`false`) or a frame made by [`proto_frame`] (`true`), copied as it
/// is (frames concatenate).
pub fn proto_join(pieces: &[(&Bytes, bool)]) -> Bytes {
    let len = pieces
        .iter()
        .map(|(b, framed)| {
            if *framed {
                b.len()
            } else {
                1 + encoding::encoded_len_varint(b.len() as u64) + b.len()
            }
        })
        .sum();
    let mut out = BytesMut::with_capacity(len);
    for (bytes, framed) in pieces {
        if !*framed {
            out.put_u8(SERVER_FRAME_EVENT_KEY);
            encoding::encode_varint(bytes.len() as u64, &mut out);
        }
        out.put_slice(bytes);
    }
    out.freeze()
}

/// The key of `ServerFrame.events`: field 1, wire type 2 (length-delimited).
const SERVER_FRAME_EVENT_KEY: u8 = (1 << 3) | WireType::LengthDelimited as u8;

/// Decodes one JSON event object.
pub fn decode_json_event(bytes: &[u8]) -> Result<Event, EventDecodeError> {
    Ok(serde_json::from_slice(bytes)?)
}

/// Decodes a JSON text frame: one event object or a batch array of them.
pub fn decode_json_frame(bytes: &[u8]) -> Result<Vec<Event>, EventDecodeError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        Ok(serde_json::from_slice(bytes)?)
    } else {
        Ok(vec![serde_json::from_slice(bytes)?])
    }
}

/// Decodes one protobuf `Event` message (as made by [`encode_proto`]).
pub fn decode_proto_event(bytes: &[u8]) -> Result<Event, EventDecodeError> {
    Event::proto_decode(bytes)
}

/// Decodes a binary frame (a protobuf `ServerFrame`) into its events, in order.
pub fn decode_proto_frame(mut bytes: &[u8]) -> Result<Vec<Event>, EventDecodeError> {
    let ctx = DecodeContext::default();
    let mut events = Vec::new();
    while !bytes.is_empty() {
        let (tag, wire_type) = encoding::decode_key(&mut bytes)?;
        if tag != 1 {
            encoding::skip_field(wire_type, tag, &mut bytes, ctx.clone())?;
            continue;
        }
        encoding::check_wire_type(WireType::LengthDelimited, wire_type)?;
        let len = encoding::decode_varint(&mut bytes)?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&len| len <= bytes.len())
            .ok_or(EventDecodeError::Truncated)?;
        let (event, rest) = bytes.split_at(len);
        events.push(Event::proto_decode(event)?);
        bytes = rest;
    }
    Ok(events)
}

/// `Event` and `ServerFrame` and the data messages, for the `.proto` drift test.
#[cfg(test)]
pub(crate) fn proto_messages() -> Vec<(&'static str, Vec<FieldSpec>)> {
    let mut all = vec![
        ("Event", Event::proto_fields()),
        (
            "ServerFrame",
            vec![FieldSpec {
                name: "events".into(),
                proto_type: "repeated Event".into(),
                tag: 1,
            }],
        ),
    ];
    all.extend(EventData::proto_messages());
    all
}
