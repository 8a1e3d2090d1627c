//! Client-to-server frames, their decoders, and the WebSocket error codes.

use bytes::{Bytes, BytesMut};
use prost::DecodeError;
use prost::encoding::{self, DecodeContext, WireType};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::{ErrorEvent, LIKE_COUNT_MAX, MAX_CLIENT_FRAME_BYTES};
use crate::pb::{ProtoMessage, WireEnum};

/// The `code` of an `error` event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WsErrorCode {
    /// Not JSON, invalid UTF-8, not an object, a missing, mistyped, unknown or out-of-range
    /// field, an undecodable protobuf message, or a frame of the wrong kind (binary in a
    /// JSON session, text in a protobuf session).
    #[default]
    BadFrame,
    /// A well-formed frame whose `type` is not `chat.send`, `like` or `ping`.
    UnknownType,
    /// A frame over 4 KiB.
    TooLarge,
    /// `chat.send` or `like` without a token.
    Unauthorized,
    /// `chat.send` from a muted user.
    Muted,
    /// Over the chat or like rate limit.
    RateLimited,
    /// Chat text longer than the limit (200 code points by default) after trimming.
    TextTooLong,
    /// Chat text empty after trimming.
    EmptyText,
}

impl WsErrorCode {
    pub const ALL: [WsErrorCode; 8] = [
        Self::BadFrame,
        Self::UnknownType,
        Self::TooLarge,
        Self::Unauthorized,
        Self::Muted,
        Self::RateLimited,
        Self::TextTooLong,
        Self::EmptyText,
    ];

    /// The snake_case code as it appears in `error` events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadFrame => "bad_frame",
            Self::UnknownType => "unknown_type",
            Self::TooLarge => "too_large",
            Self::Unauthorized => "unauthorized",
            Self::Muted => "muted",
            Self::RateLimited => "rate_limited",
            Self::TextTooLong => "text_too_long",
            Self::EmptyText => "empty_text",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Whether a frame answered with this code counts as bad: the 21st bad frame within
    /// 10 s closes the connection with 1008.
    pub fn counts_as_bad(self) -> bool {
        matches!(self, Self::BadFrame | Self::UnknownType | Self::TooLarge)
    }
}

impl std::fmt::Display for WsErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl WireEnum for WsErrorCode {
    const WHAT: &'static str = "error code";
    fn as_str(self) -> &'static str {
        WsErrorCode::as_str(self)
    }
    fn parse(s: &str) -> Option<Self> {
        WsErrorCode::parse(s)
    }
}

enum_field!(WsErrorCode);

/// A refused client frame: the code and message of the `error` event to answer with,
/// and the frame's `ref` when it could be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct FrameError {
    pub code: WsErrorCode,
    pub message: String,
    pub r#ref: Option<String>,
}

impl FrameError {
    pub fn new(code: WsErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            r#ref: None,
        }
    }

    /// The same error, echoing `r#ref`.
    pub fn with_ref(mut self, r#ref: Option<String>) -> Self {
        self.r#ref = r#ref;
        self
    }

    fn bad(message: impl Into<String>) -> Self {
        Self::new(WsErrorCode::BadFrame, message)
    }

    /// A binary frame arrived in a `harvest.v1.json` session.
    pub fn binary_in_json_session() -> Self {
        Self::bad("binary frames are not accepted in a harvest.v1.json session")
    }

    /// A text frame arrived in a `harvest.v1.protobuf` session.
    pub fn text_in_protobuf_session() -> Self {
        Self::bad("text frames are not accepted in a harvest.v1.protobuf session")
    }

    /// Whether this frame counts towards the bad-frame limit.
    pub fn counts_as_bad(&self) -> bool {
        self.code.counts_as_bad()
    }

    /// The `error` event data answering the frame.
    pub fn to_event(&self) -> ErrorEvent {
        ErrorEvent {
            code: self.code,
            message: self.message.clone(),
            r#ref: self.r#ref.clone(),
        }
    }
}

impl From<FrameError> for ErrorEvent {
    fn from(e: FrameError) -> Self {
        ErrorEvent {
            code: e.code,
            message: e.message,
            r#ref: e.r#ref,
        }
    }
}

/// `chat.send`: post a chat message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChatSend {
    pub text: String,
    /// Chosen by the client; echoed in the `error` event refusing the frame.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
}

/// `like`: add `count` (1..=100) likes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Like {
    pub count: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
}

/// `ping`: answered by a private `pong` with the same nonce.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Ping {
    pub nonce: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
}

proto_message!(ChatSend { text = 1, r#ref = 2 });
proto_message!(Like { count = 1, r#ref = 2 });
proto_message!(Ping { nonce = 1, r#ref = 2 });

/// A client-to-server frame. JSON: `{"type":"chat.send","text":"...","ref":"..."}`,
/// `{"type":"like","count":3}`, `{"type":"ping","nonce":"..."}`; `ref` is optional on
/// every type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type")]
pub enum ClientFrame {
    #[serde(rename = "chat.send")]
    ChatSend(ChatSend),
    #[serde(rename = "like")]
    Like(Like),
    #[serde(rename = "ping")]
    Ping(Ping),
}

impl ClientFrame {
    /// Every client frame type.
    pub const TYPES: [&'static str; 3] = ["chat.send", "like", "ping"];

    pub fn frame_type(&self) -> &'static str {
        match self {
            Self::ChatSend(_) => "chat.send",
            Self::Like(_) => "like",
            Self::Ping(_) => "ping",
        }
    }

    /// The frame's `ref`, to echo in an `error` event.
    pub fn ref_id(&self) -> Option<&str> {
        match self {
            Self::ChatSend(f) => f.r#ref.as_deref(),
            Self::Like(f) => f.r#ref.as_deref(),
            Self::Ping(f) => f.r#ref.as_deref(),
        }
    }

    fn validate(self) -> Result<Self, FrameError> {
        if let Self::Like(like) = &self
            && !(1..=LIKE_COUNT_MAX).contains(&like.count)
        {
            return Err(FrameError::bad(format!(
                "`count` must be an integer in 1..={LIKE_COUNT_MAX}"
            ))
            .with_ref(like.r#ref.clone()));
        }
        Ok(self)
    }
}

// Oneof tags of `ClientFrame`.
const CHAT_SEND_TAG: u32 = 1;
const LIKE_TAG: u32 = 2;
const PING_TAG: u32 = 3;

/// Encodes a client frame as a JSON text frame (for clients, tests and the load generator).
pub fn encode_client_json(frame: &ClientFrame) -> Bytes {
    Bytes::from(serde_json::to_vec(frame).expect("client frames serialize to JSON"))
}

/// Encodes a client frame as a protobuf `ClientFrame` message.
pub fn encode_client_proto(frame: &ClientFrame) -> Bytes {
    let mut out = BytesMut::new();
    match frame {
        ClientFrame::ChatSend(f) => encoding::message::encode(CHAT_SEND_TAG, f, &mut out),
        ClientFrame::Like(f) => encoding::message::encode(LIKE_TAG, f, &mut out),
        ClientFrame::Ping(f) => encoding::message::encode(PING_TAG, f, &mut out),
    }
    out.freeze()
}

/// Decodes a JSON client frame (the payload of a text frame).
///
/// Errors, in the order they are checked: `too_large` (over 4096 bytes; not parsed), then
/// `bad_frame` (invalid UTF-8, not JSON, not an object, `ref` neither a string nor null,
/// `type` missing or not a string), then `unknown_type`, then `bad_frame` for the fields of
/// the type (missing, mistyped, unknown, or `count` outside 1..=100). Every error after the
/// `ref` check echoes the frame's `ref`.
pub fn decode_client_json(frame: &[u8]) -> Result<ClientFrame, FrameError> {
    check_size(frame)?;
    let text =
        std::str::from_utf8(frame).map_err(|_| FrameError::bad("frame is not valid UTF-8"))?;
    let value: Value = serde_json::from_str(text)
        .map_err(|e| FrameError::bad(format!("frame is not JSON: {e}")))?;
    let Value::Object(mut fields) = value else {
        return Err(FrameError::bad("frame must be a JSON object"));
    };
    let r#ref = match fields.remove("ref") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err(FrameError::bad("`ref` must be a string or null")),
    };
    let bad = |message: String| FrameError::bad(message).with_ref(r#ref.clone());
    let frame_type = match fields.remove("type") {
        Some(Value::String(s)) => s,
        Some(_) => return Err(bad("`type` must be a string".into())),
        None => return Err(bad("missing field `type`".into())),
    };
    let frame = match frame_type.as_str() {
        "chat.send" => ClientFrame::ChatSend(ChatSend {
            text: take_string(&mut fields, "text").map_err(bad)?,
            r#ref: r#ref.clone(),
        }),
        "like" => ClientFrame::Like(Like {
            count: take_count(&mut fields).map_err(bad)?,
            r#ref: r#ref.clone(),
        }),
        "ping" => ClientFrame::Ping(Ping {
            nonce: take_string(&mut fields, "nonce").map_err(bad)?,
            r#ref: r#ref.clone(),
        }),
        other => {
            let shown: String = other.chars().take(64).collect();
            return Err(FrameError::new(
                WsErrorCode::UnknownType,
                format!("unknown frame type `{shown}`; expected chat.send, like or ping"),
            )
            .with_ref(r#ref));
        }
    };
    if let Some(field) = fields.keys().next() {
        let shown: String = field.chars().take(64).collect();
        return Err(bad(format!(
            "unknown field `{shown}` in a `{frame_type}` frame"
        )));
    }
    frame.validate()
}

fn take_string(fields: &mut Map<String, Value>, name: &str) -> Result<String, String> {
    match fields.remove(name) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(format!("`{name}` must be a string")),
        None => Err(format!("missing field `{name}`")),
    }
}

fn take_count(fields: &mut Map<String, Value>) -> Result<u32, String> {
    let out_of_range = || format!("`count` must be an integer in 1..={LIKE_COUNT_MAX}");
    match fields.remove("count") {
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| (1..=LIKE_COUNT_MAX).contains(n))
            .ok_or_else(out_of_range),
        Some(_) => Err(out_of_range()),
        None => Err("missing field `count`".into()),
    }
}

fn check_size(frame: &[u8]) -> Result<(), FrameError> {
    if frame.len() > MAX_CLIENT_FRAME_BYTES {
        return Err(FrameError::new(
            WsErrorCode::TooLarge,
            format!(
                "frame of {} bytes is over the {MAX_CLIENT_FRAME_BYTES}-byte limit",
                frame.len()
            ),
        ));
    }
    Ok(())
}

/// Decodes a protobuf `ClientFrame` message (the payload of a binary frame).
///
/// `too_large` over 4096 bytes; `bad_frame` for bytes that are not a `ClientFrame`
/// (including invalid UTF-8 in a string and a `count` varint above `u32::MAX`), for a
/// frame with no member of the `frame` oneof set, and for `count` outside 1..=100;
/// `unknown_type` for a frame whose only fields have tags this version does not know (a
/// newer client's frame type). Proto3 cannot tell an absent string from an empty one, so an
/// absent `text` reads as empty (answered `empty_text` by the server).
pub fn decode_client_proto(mut frame: &[u8]) -> Result<ClientFrame, FrameError> {
    check_size(frame)?;
    let invalid = |e: DecodeError| FrameError::bad(format!("not a ClientFrame message: {e}"));
    let ctx = DecodeContext::default();
    let mut decoded: Option<ClientFrame> = None;
    let mut unknown_tag = false;
    while !frame.is_empty() {
        let (tag, wire_type) = encoding::decode_key(&mut frame).map_err(invalid)?;
        let merged = match tag {
            CHAT_SEND_TAG => merge_member(
                &mut decoded,
                wire_type,
                &mut frame,
                &ctx,
                |f| match f {
                    ClientFrame::ChatSend(m) => Some(m),
                    _ => None,
                },
                ClientFrame::ChatSend,
            ),
            LIKE_TAG => merge_member(
                &mut decoded,
                wire_type,
                &mut frame,
                &ctx,
                |f| match f {
                    ClientFrame::Like(m) => Some(m),
                    _ => None,
                },
                ClientFrame::Like,
            ),
            PING_TAG => merge_member(
                &mut decoded,
                wire_type,
                &mut frame,
                &ctx,
                |f| match f {
                    ClientFrame::Ping(m) => Some(m),
                    _ => None,
                },
                ClientFrame::Ping,
            ),
            _ => {
                unknown_tag = true;
                encoding::skip_field(wire_type, tag, &mut frame, ctx.clone())
            }
        };
        merged.map_err(invalid)?;
    }
    match decoded {
        Some(frame) => frame.validate(),
        None if unknown_tag => Err(FrameError::new(
            WsErrorCode::UnknownType,
            "ClientFrame has no known frame type (expected chat_send, like or ping)",
        )),
        None => Err(FrameError::bad("empty ClientFrame: no frame type set")),
    }
}

/// Merges a oneof member into `slot`: into the same member if it is already set (protobuf
/// merge semantics), else into a fresh one that replaces the previous member.
fn merge_member<M: ProtoMessage>(
    slot: &mut Option<ClientFrame>,
    wire_type: WireType,
    buf: &mut &[u8],
    ctx: &DecodeContext,
    get: impl FnOnce(&mut ClientFrame) -> Option<&mut M>,
    wrap: impl FnOnce(M) -> ClientFrame,
) -> Result<(), DecodeError> {
    if let Some(existing) = slot.as_mut().and_then(get) {
        return encoding::message::merge(wire_type, existing, buf, ctx.clone());
    }
    let mut member = M::default();
    encoding::message::merge(wire_type, &mut member, buf, ctx.clone())?;
    *slot = Some(wrap(member));
    Ok(())
}

/// `ClientFrame` and its members, for the `.proto` drift test.
#[cfg(test)]
pub(crate) fn proto_messages() -> Vec<(&'static str, Vec<crate::pb::FieldSpec>)> {
    use crate::pb::FieldSpec;
    let member = |name: &str, message: &str, tag| FieldSpec {
        name: name.into(),
        proto_type: message.into(),
        tag,
    };
    let frame = vec![
        member("chat_send", ChatSend::NAME, CHAT_SEND_TAG),
        member("like", Like::NAME, LIKE_TAG),
        member("ping", Ping::NAME, PING_TAG),
    ];
    vec![
        ("ClientFrame", frame),
        (ChatSend::NAME, ChatSend::fields()),
        (Like::NAME, Like::fields()),
        (Ping::NAME, Ping::fields()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_serialize_as_their_names() {
        for code in WsErrorCode::ALL {
            assert_eq!(
                serde_json::to_value(code).unwrap(),
                Value::from(code.as_str())
            );
            assert_eq!(WsErrorCode::parse(code.as_str()), Some(code));
        }
    }

    #[test]
    fn a_repeated_oneof_member_merges() {
        // Two `like` members: protobuf merges them field by field.
        let mut bytes = encode_client_proto(&ClientFrame::Like(Like {
            count: 5,
            r#ref: None,
        }))
        .to_vec();
        bytes.extend_from_slice(&encode_client_proto(&ClientFrame::Like(Like {
            count: 0,
            r#ref: Some("r".into()),
        })));
        assert_eq!(
            decode_client_proto(&bytes).unwrap(),
            ClientFrame::Like(Like {
                count: 5,
                r#ref: Some("r".into())
            })
        );
    }
}
