//! The protobuf encoding of the wire types, without generated code.
//!
//! # One set of types, two encodings
//!
//! Every wire shape is one Rust struct. serde gives it its JSON encoding; the
//! [`proto_message!`] macro below implements [`prost::Message`] for the very same struct
//! from a list of `field = tag` pairs. There is no second "protobuf mirror" type to keep in
//! sync, and the JSON and protobuf encodings of a value carry the same field names and the
//! same values.
//!
//! `#[derive(prost::Message)]` cannot do this: it only accepts prost's own field types, so
//! `Product.created_at: DateTime<Utc>`, `Room.status: RoomStatus` and the other typed fields
//! would need `String` mirrors. Instead, the codec of each field is chosen by its Rust type
//! through [`ProtoField`]:
//!
//! | Rust type | `.proto` type | notes |
//! |---|---|---|
//! | `String`, `bool`, `i64`, `u64`, `u32`, `f64` | `string`, `bool`, `int64`, `uint64`, `uint32`, `double` | proto3 implicit presence: the default value is not written |
//! | `DateTime<Utc>` | `string` | RFC 3339 in UTC, the exact text of the JSON encoding; always written |
//! | `Option<DateTime<Utc>>` | `optional string` | absent = JSON `null` |
//! | `Option<String>`, `Option<u64>` | `optional string`, `optional uint64` | absent = JSON `null` |
//! | status enums, [`Metric`](crate::Metric), error codes | `string` | the snake_case name of JSON; always written |
//! | a message `M` | `M` | always written |
//! | `Option<M>` | `M` | absent = JSON `null` |
//! | `Vec<String>`, `Vec<M>` | `repeated string`, `repeated M` | |
//! | `BTreeMap<Metric, f64>` | `map<string, double>` | |
//!
//! The actual wire work is done by `prost::encoding`, the functions prost's own derive
//! expands to. Decoding is stricter than prost's derive where that matters to us: a `uint32`
//! varint above `u32::MAX` is an error (prost truncates it), as are an unparsable timestamp
//! and an unknown enum name.
//!
//! # Keeping the `.proto` honest
//!
//! The macro destructures the struct without `..`, so a field added to a struct and not to
//! its tag list (or the other way round) does not compile. Each message also reports its
//! `(field, proto type, tag)` table ([`ProtoMessage::fields`]); a unit test compares the
//! tables of every message with `proto/harvest/v1/events.proto`, so drift between the Rust
//! types and the `.proto` file fails the build's tests.

use std::collections::BTreeMap;

use bytes::{Buf, BufMut};
use chrono::{DateTime, SecondsFormat, Utc};
use prost::DecodeError;
use prost::encoding::{self, DecodeContext, WireType};

use crate::{Metric, Product, Room, RoomStatus};

/// One field of a protobuf message as the `.proto` file declares it.
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldSpec {
    pub name: String,
    /// The type as written in the `.proto` file, label included (`optional string`).
    pub proto_type: String,
    pub tag: u32,
}

/// A message of `events.proto` implemented by a Rust type of this crate.
pub(crate) trait ProtoMessage: prost::Message + Default {
    /// The message's name in `events.proto`.
    const NAME: &'static str;
    /// The message's fields, in tag-list order.
    #[cfg(test)]
    fn fields() -> Vec<FieldSpec>;
}

/// How one Rust field type is written to, and read from, a protobuf field.
pub(crate) trait ProtoField {
    /// The field's type in `events.proto`, label included.
    #[cfg(test)]
    fn proto_type() -> String;
    fn encode_field(&self, tag: u32, buf: &mut impl BufMut);
    fn field_len(&self, tag: u32) -> usize;
    fn merge_field(
        &mut self,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError>;
}

/// The proto type of a field, found through a value of it (the macro has no type tokens).
#[cfg(test)]
pub(crate) fn proto_type_of<T: ProtoField>(_: &T) -> String {
    T::proto_type()
}

/// Implements [`prost::Message`] and [`ProtoMessage`] for a struct from its `field = tag`
/// list. The struct must implement `Default` (decoding starts from it).
macro_rules! proto_message {
    ($ty:ident { $($field:ident = $tag:literal),+ $(,)? }) => {
        impl ::prost::Message for $ty {
            fn encode_raw(&self, buf: &mut impl ::bytes::BufMut) {
                let $ty { $($field),+ } = self;
                $( $crate::pb::ProtoField::encode_field($field, $tag, buf); )+
            }

            fn merge_field(
                &mut self,
                tag: u32,
                wire_type: ::prost::encoding::WireType,
                buf: &mut impl ::bytes::Buf,
                ctx: ::prost::encoding::DecodeContext,
            ) -> ::std::result::Result<(), ::prost::DecodeError> {
                match tag {
                    $(
                        $tag => $crate::pb::ProtoField::merge_field(
                            &mut self.$field, wire_type, buf, ctx,
                        )
                        .map_err(|mut e| {
                            e.push(
                                <Self as $crate::pb::ProtoMessage>::NAME,
                                $crate::pb::strip_raw(stringify!($field)),
                            );
                            e
                        }),
                    )+
                    _ => ::prost::encoding::skip_field(wire_type, tag, buf, ctx),
                }
            }

            fn encoded_len(&self) -> usize {
                let $ty { $($field),+ } = self;
                0 $( + $crate::pb::ProtoField::field_len($field, $tag) )+
            }

            fn clear(&mut self) {
                *self = Self::default();
            }
        }

        impl $crate::pb::ProtoMessage for $ty {
            const NAME: &'static str = stringify!($ty);

            #[cfg(test)]
            fn fields() -> Vec<$crate::pb::FieldSpec> {
                let sample = Self::default();
                vec![$(
                    $crate::pb::FieldSpec {
                        name: $crate::pb::strip_raw(stringify!($field)).to_owned(),
                        proto_type: $crate::pb::proto_type_of(&sample.$field),
                        tag: $tag,
                    },
                )+]
            }
        }
    };
}

/// `r#match` → `match`: the wire name of a raw identifier.
pub(crate) const fn strip_raw(ident: &'static str) -> &'static str {
    match ident.as_bytes() {
        [b'r', b'#', rest @ ..] => match std::str::from_utf8(rest) {
            Ok(s) => s,
            Err(_) => ident,
        },
        _ => ident,
    }
}

/// A decoding error for a value that is well-formed protobuf but not a valid field value
/// (an unparsable timestamp, an unknown status name, a `uint32` out of range).
///
/// `DecodeError::new` is the constructor prost documents for hand-written `Message`
/// implementations; prost 0.14.2 deprecated it without offering a replacement, so its one
/// use is kept here.
#[allow(deprecated)]
#[cold]
pub(crate) fn decode_error(description: impl Into<std::borrow::Cow<'static, str>>) -> DecodeError {
    DecodeError::new(description)
}

// --- strings -------------------------------------------------------------------------

fn encode_str(tag: u32, value: &str, buf: &mut impl BufMut) {
    encoding::encode_key(tag, WireType::LengthDelimited, buf);
    encoding::encode_varint(value.len() as u64, buf);
    buf.put_slice(value.as_bytes());
}

fn str_len(tag: u32, len: usize) -> usize {
    encoding::key_len(tag) + encoding::encoded_len_varint(len as u64) + len
}

fn merge_string(
    wire_type: WireType,
    buf: &mut impl Buf,
    ctx: DecodeContext,
) -> Result<String, DecodeError> {
    let mut s = String::new();
    encoding::string::merge(wire_type, &mut s, buf, ctx)?;
    Ok(s)
}

impl ProtoField for String {
    #[cfg(test)]
    fn proto_type() -> String {
        "string".into()
    }
    fn encode_field(&self, tag: u32, buf: &mut impl BufMut) {
        if !self.is_empty() {
            encode_str(tag, self, buf);
        }
    }
    fn field_len(&self, tag: u32) -> usize {
        if self.is_empty() {
            0
        } else {
            str_len(tag, self.len())
        }
    }
    fn merge_field(
        &mut self,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        encoding::string::merge(wire_type, self, buf, ctx)
    }
}

impl ProtoField for Option<String> {
    #[cfg(test)]
    fn proto_type() -> String {
        "optional string".into()
    }
    fn encode_field(&self, tag: u32, buf: &mut impl BufMut) {
        if let Some(s) = self {
            encode_str(tag, s, buf);
        }
    }
    fn field_len(&self, tag: u32) -> usize {
        self.as_ref().map_or(0, |s| str_len(tag, s.len()))
    }
    fn merge_field(
        &mut self,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        encoding::string::merge(wire_type, self.get_or_insert_default(), buf, ctx)
    }
}

impl ProtoField for Vec<String> {
    #[cfg(test)]
    fn proto_type() -> String {
        "repeated string".into()
    }
    fn encode_field(&self, tag: u32, buf: &mut impl BufMut) {
        for s in self {
            encode_str(tag, s, buf);
        }
    }
    fn field_len(&self, tag: u32) -> usize {
        self.iter().map(|s| str_len(tag, s.len())).sum()
    }
    fn merge_field(
        &mut self,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        encoding::string::merge_repeated(wire_type, self, buf, ctx)
    }
}

// --- numbers -------------------------------------------------------------------------

macro_rules! scalar_field {
    ($ty:ty, $module:ident, $proto:literal, $zero:expr) => {
        impl ProtoField for $ty {
            #[cfg(test)]
            fn proto_type() -> String {
                $proto.into()
            }
            fn encode_field(&self, tag: u32, buf: &mut impl BufMut) {
                if *self != $zero {
                    encoding::$module::encode(tag, self, buf);
                }
            }
            fn field_len(&self, tag: u32) -> usize {
                if *self == $zero {
                    0
                } else {
                    encoding::$module::encoded_len(tag, self)
                }
            }
            fn merge_field(
                &mut self,
                wire_type: WireType,
                buf: &mut impl Buf,
                ctx: DecodeContext,
            ) -> Result<(), DecodeError> {
                encoding::$module::merge(wire_type, self, buf, ctx)
            }
        }
    };
}

scalar_field!(bool, bool, "bool", false);
scalar_field!(i64, int64, "int64", 0);
scalar_field!(u64, uint64, "uint64", 0);
scalar_field!(f64, double, "double", 0.0);

/// `uint32`, but a varint above `u32::MAX` is an error instead of being truncated.
impl ProtoField for u32 {
    #[cfg(test)]
    fn proto_type() -> String {
        "uint32".into()
    }
    fn encode_field(&self, tag: u32, buf: &mut impl BufMut) {
        if *self != 0 {
            encoding::uint32::encode(tag, self, buf);
        }
    }
    fn field_len(&self, tag: u32) -> usize {
        if *self == 0 {
            0
        } else {
            encoding::uint32::encoded_len(tag, self)
        }
    }
    fn merge_field(
        &mut self,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        let mut wide = 0u64;
        encoding::uint64::merge(wire_type, &mut wide, buf, ctx)?;
        *self = u32::try_from(wide).map_err(|_| decode_error("uint32 value out of range"))?;
        Ok(())
    }
}

impl ProtoField for Option<u64> {
    #[cfg(test)]
    fn proto_type() -> String {
        "optional uint64".into()
    }
    fn encode_field(&self, tag: u32, buf: &mut impl BufMut) {
        if let Some(v) = self {
            encoding::uint64::encode(tag, v, buf);
        }
    }
    fn field_len(&self, tag: u32) -> usize {
        self.as_ref()
            .map_or(0, |v| encoding::uint64::encoded_len(tag, v))
    }
    fn merge_field(
        &mut self,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        encoding::uint64::merge(wire_type, self.get_or_insert_default(), buf, ctx)
    }
}

// --- timestamps ----------------------------------------------------------------------

/// The RFC 3339 text of a timestamp, identical to chrono's serde (JSON) encoding.
pub(crate) fn rfc3339(ts: &DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// The length of [`rfc3339`] without formatting, for the common case.
fn rfc3339_len(ts: &DateTime<Utc>) -> usize {
    use chrono::{Datelike, Timelike};
    let nanos = ts.nanosecond();
    if !(0..=9999).contains(&ts.year()) || nanos >= 1_000_000_000 {
        return rfc3339(ts).len();
    }
    // `YYYY-MM-DDTHH:MM:SSZ` plus the shortest of `.mmm`, `.uuuuuu`, `.nnnnnnnnn`.
    20 + match nanos {
        0 => 0,
        n if n % 1_000_000 == 0 => 4,
        n if n % 1_000 == 0 => 7,
        _ => 10,
    }
}

fn parse_rfc3339(s: &str) -> Result<DateTime<Utc>, DecodeError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| decode_error("invalid RFC 3339 timestamp"))
}

impl ProtoField for DateTime<Utc> {
    #[cfg(test)]
    fn proto_type() -> String {
        "string".into()
    }
    fn encode_field(&self, tag: u32, buf: &mut impl BufMut) {
        encode_str(tag, &rfc3339(self), buf);
    }
    fn field_len(&self, tag: u32) -> usize {
        str_len(tag, rfc3339_len(self))
    }
    fn merge_field(
        &mut self,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        *self = parse_rfc3339(&merge_string(wire_type, buf, ctx)?)?;
        Ok(())
    }
}

impl ProtoField for Option<DateTime<Utc>> {
    #[cfg(test)]
    fn proto_type() -> String {
        "optional string".into()
    }
    fn encode_field(&self, tag: u32, buf: &mut impl BufMut) {
        if let Some(ts) = self {
            ts.encode_field(tag, buf);
        }
    }
    fn field_len(&self, tag: u32) -> usize {
        self.as_ref().map_or(0, |ts| ts.field_len(tag))
    }
    fn merge_field(
        &mut self,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        *self = Some(parse_rfc3339(&merge_string(wire_type, buf, ctx)?)?);
        Ok(())
    }
}

// --- enums written as their names ---------------------------------------------------

/// A closed set of snake_case names, written as a `string` field.
pub(crate) trait WireEnum: Copy + Sized + 'static {
    const WHAT: &'static str;
    fn as_str(self) -> &'static str;
    fn parse(s: &str) -> Option<Self>;
}

/// Implements [`ProtoField`] for [`WireEnum`] types (always written, unknown names rejected).
macro_rules! enum_field {
    ($($ty:ty),+ $(,)?) => {$(
        impl $crate::pb::ProtoField for $ty {
            #[cfg(test)]
            fn proto_type() -> String {
                "string".into()
            }
            fn encode_field(&self, tag: u32, buf: &mut impl ::bytes::BufMut) {
                $crate::pb::encode_enum(*self, tag, buf);
            }
            fn field_len(&self, tag: u32) -> usize {
                $crate::pb::enum_len(*self, tag)
            }
            fn merge_field(
                &mut self,
                wire_type: ::prost::encoding::WireType,
                buf: &mut impl ::bytes::Buf,
                ctx: ::prost::encoding::DecodeContext,
            ) -> ::std::result::Result<(), ::prost::DecodeError> {
                *self = $crate::pb::merge_enum(wire_type, buf, ctx)?;
                Ok(())
            }
        }
    )+};
}

pub(crate) fn encode_enum<E: WireEnum>(value: E, tag: u32, buf: &mut impl BufMut) {
    encode_str(tag, value.as_str(), buf);
}

pub(crate) fn enum_len<E: WireEnum>(value: E, tag: u32) -> usize {
    str_len(tag, value.as_str().len())
}

pub(crate) fn merge_enum<E: WireEnum>(
    wire_type: WireType,
    buf: &mut impl Buf,
    ctx: DecodeContext,
) -> Result<E, DecodeError> {
    let s = merge_string(wire_type, buf, ctx)?;
    E::parse(&s).ok_or_else(|| decode_error(format!("unknown {} `{s}`", E::WHAT)))
}

impl WireEnum for RoomStatus {
    const WHAT: &'static str = "room status";
    fn as_str(self) -> &'static str {
        RoomStatus::as_str(self)
    }
    fn parse(s: &str) -> Option<Self> {
        RoomStatus::parse(s)
    }
}

enum_field!(RoomStatus);

// --- messages ------------------------------------------------------------------------

impl<M: ProtoMessage> ProtoField for M {
    #[cfg(test)]
    fn proto_type() -> String {
        M::NAME.into()
    }
    fn encode_field(&self, tag: u32, buf: &mut impl BufMut) {
        encoding::message::encode(tag, self, buf);
    }
    fn field_len(&self, tag: u32) -> usize {
        encoding::message::encoded_len(tag, self)
    }
    fn merge_field(
        &mut self,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        encoding::message::merge(wire_type, self, buf, ctx)
    }
}

impl<M: ProtoMessage> ProtoField for Option<M> {
    #[cfg(test)]
    fn proto_type() -> String {
        M::NAME.into()
    }
    fn encode_field(&self, tag: u32, buf: &mut impl BufMut) {
        if let Some(m) = self {
            encoding::message::encode(tag, m, buf);
        }
    }
    fn field_len(&self, tag: u32) -> usize {
        self.as_ref()
            .map_or(0, |m| encoding::message::encoded_len(tag, m))
    }
    fn merge_field(
        &mut self,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        encoding::message::merge(wire_type, self.get_or_insert_default(), buf, ctx)
    }
}

impl<M: ProtoMessage> ProtoField for Vec<M> {
    #[cfg(test)]
    fn proto_type() -> String {
        format!("repeated {}", M::NAME)
    }
    fn encode_field(&self, tag: u32, buf: &mut impl BufMut) {
        encoding::message::encode_repeated(tag, self, buf);
    }
    fn field_len(&self, tag: u32) -> usize {
        encoding::message::encoded_len_repeated(tag, self)
    }
    fn merge_field(
        &mut self,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        encoding::message::merge_repeated(wire_type, self, buf, ctx)
    }
}

// --- map<string, double> keyed by metric --------------------------------------------

/// One entry of a `map<string, double>`: on the wire a map is a repeated message with the
/// key at tag 1 and the value at tag 2.
#[derive(Debug, Default)]
struct PointsEntry {
    key: Metric,
    value: f64,
}

impl prost::Message for PointsEntry {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        ProtoField::encode_field(&self.key, 1, buf);
        ProtoField::encode_field(&self.value, 2, buf);
    }
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => ProtoField::merge_field(&mut self.key, wire_type, buf, ctx),
            2 => ProtoField::merge_field(&mut self.value, wire_type, buf, ctx),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }
    fn encoded_len(&self) -> usize {
        ProtoField::field_len(&self.key, 1) + ProtoField::field_len(&self.value, 2)
    }
    fn clear(&mut self) {
        *self = Self::default();
    }
}

impl ProtoField for BTreeMap<Metric, f64> {
    #[cfg(test)]
    fn proto_type() -> String {
        "map<string, double>".into()
    }
    fn encode_field(&self, tag: u32, buf: &mut impl BufMut) {
        for (&key, &value) in self {
            encoding::message::encode(tag, &PointsEntry { key, value }, buf);
        }
    }
    fn field_len(&self, tag: u32) -> usize {
        self.iter()
            .map(|(&key, &value)| encoding::message::encoded_len(tag, &PointsEntry { key, value }))
            .sum()
    }
    fn merge_field(
        &mut self,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        let mut entry = PointsEntry::default();
        encoding::message::merge(wire_type, &mut entry, buf, ctx)?;
        self.insert(entry.key, entry.value);
        Ok(())
    }
}

// --- the existing HTTP types, which travel in events too ------------------------------

proto_message!(Product {
    id = 1,
    owner_id = 2,
    sku = 3,
    title = 4,
    origin = 5,
    unit = 6,
    list_price = 7,
    currency = 8,
    image_url = 9,
    created_at = 10,
});

proto_message!(Room {
    id = 1,
    title = 2,
    description = 3,
    streamer_id = 4,
    status = 5,
    playback_url = 6,
    scheduled_start = 7,
    started_at = 8,
    ended_at = 9,
    created_at = 10,
});

/// Every message of `events.proto` with its fields, for the drift test.
#[cfg(test)]
pub(crate) fn all_messages() -> Vec<(&'static str, Vec<FieldSpec>)> {
    use crate::contest::{Match, Metrics, Score, Standings, StandingsRow};
    use crate::{Order, Sale};

    fn entry<M: ProtoMessage>() -> (&'static str, Vec<FieldSpec>) {
        (M::NAME, M::fields())
    }
    let mut all = vec![
        entry::<Product>(),
        entry::<Room>(),
        entry::<Sale>(),
        entry::<Order>(),
        entry::<Match>(),
        entry::<Score>(),
        entry::<Standings>(),
        entry::<StandingsRow>(),
        entry::<Metrics>(),
    ];
    all.extend(crate::ws::proto_messages());
    all
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// `message Name { type name = tag; ... }` as (message, fields), from the `.proto` text.
    /// Nested blocks (`oneof x { ... }`) belong to the enclosing message.
    fn parse_proto(text: &str) -> BTreeMap<String, Vec<FieldSpec>> {
        let mut messages = BTreeMap::new();
        let mut current: Option<String> = None;
        let mut depth = 0usize;
        for raw in text.lines() {
            let line = raw.split("//").next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("message ") {
                assert_eq!(depth, 0, "nested message `{line}`: keep messages flat");
                let name = rest.trim_end_matches('{').trim().to_owned();
                messages.insert(name.clone(), Vec::new());
                current = Some(name);
                depth = 1;
                continue;
            }
            if line.ends_with('{') {
                depth += 1;
                continue;
            }
            if line == "}" {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    current = None;
                }
                continue;
            }
            let Some(message) = &current else { continue };
            let Some(decl) = line.strip_suffix(';') else {
                panic!("unexpected line in message {message}: `{line}`")
            };
            let (left, tag) = decl.split_once('=').expect("field without tag");
            let (proto_type, name) = left.trim().rsplit_once(' ').expect("field without type");
            messages.get_mut(message).unwrap().push(FieldSpec {
                name: name.to_owned(),
                proto_type: proto_type.trim().to_owned(),
                tag: tag.trim().parse().expect("tag is a number"),
            });
        }
        messages
    }

    #[test]
    fn events_proto_matches_the_rust_types() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../proto/harvest/v1/events.proto"
        );
        let text = std::fs::read_to_string(path).expect("read events.proto");
        let proto = parse_proto(&text);
        let rust: BTreeMap<String, Vec<FieldSpec>> = all_messages()
            .into_iter()
            .map(|(name, fields)| (name.to_owned(), fields))
            .collect();

        let proto_names: Vec<_> = proto.keys().collect();
        let rust_names: Vec<_> = rust.keys().collect();
        assert_eq!(proto_names, rust_names, "message sets differ");
        for (name, fields) in &rust {
            let mut expected = fields.clone();
            let mut found = proto[name].clone();
            expected.sort_by_key(|f| f.tag);
            found.sort_by_key(|f| f.tag);
            assert_eq!(found, expected, "message {name}: .proto and Rust differ");
            let mut tags: Vec<_> = found.iter().map(|f| f.tag).collect();
            tags.dedup();
            assert_eq!(tags.len(), found.len(), "message {name}: duplicate tag");
        }
    }

    #[test]
    fn rfc3339_length_matches_formatting() {
        for ts in [
            "2025-11-29T12:00:00Z",
            "2025-11-29T12:00:00.123Z",
            "2025-11-29T12:00:00.120Z",
            "2025-11-29T12:00:00.000123Z",
            "2025-11-29T12:00:00.000000123Z",
            "0001-01-01T00:00:00Z",
        ] {
            let t = parse_rfc3339(ts).unwrap();
            assert_eq!(rfc3339(&t), ts);
            assert_eq!(rfc3339_len(&t), ts.len(), "{ts}");
            // The same text as serde's JSON encoding.
            assert_eq!(
                serde_json::to_value(t).unwrap(),
                serde_json::Value::from(ts)
            );
        }
        let far = DateTime::<Utc>::MAX_UTC;
        assert_eq!(rfc3339_len(&far), rfc3339(&far).len());
    }

    #[test]
    fn strip_raw_identifiers() {
        assert_eq!(strip_raw("r#match"), "match");
        assert_eq!(strip_raw("r#ref"), "ref");
        assert_eq!(strip_raw("room"), "room");
    }

    /// The hand-rolled codec writes the bytes prost's derive would for the same fields.
    #[test]
    fn codec_agrees_with_prost_derive() {
        #[derive(Clone, PartialEq, prost::Message)]
        struct DerivedProduct {
            #[prost(string, tag = "1")]
            id: String,
            #[prost(string, tag = "2")]
            owner_id: String,
            #[prost(string, tag = "3")]
            sku: String,
            #[prost(string, tag = "4")]
            title: String,
            #[prost(string, optional, tag = "5")]
            origin: Option<String>,
            #[prost(string, optional, tag = "6")]
            unit: Option<String>,
            #[prost(int64, tag = "7")]
            list_price: i64,
            #[prost(string, tag = "8")]
            currency: String,
            #[prost(string, optional, tag = "9")]
            image_url: Option<String>,
            #[prost(string, tag = "10")]
            created_at: String,
        }
        use prost::Message;
        let created_at = parse_rfc3339("2025-11-29T08:30:00.250Z").unwrap();
        let product = Product {
            id: "p1".into(),
            owner_id: "u1".into(),
            sku: "KIWI-5".into(),
            title: "十八洞猕猴桃 5斤".into(),
            origin: Some("湖南花垣".into()),
            unit: None,
            list_price: 3990,
            currency: "CNY".into(),
            image_url: Some(String::new()),
            created_at,
        };
        let derived = DerivedProduct {
            id: "p1".into(),
            owner_id: "u1".into(),
            sku: "KIWI-5".into(),
            title: "十八洞猕猴桃 5斤".into(),
            origin: Some("湖南花垣".into()),
            unit: None,
            list_price: 3990,
            currency: "CNY".into(),
            image_url: Some(String::new()),
            created_at: "2025-11-29T08:30:00.250Z".into(),
        };
        let ours = product.encode_to_vec();
        assert_eq!(ours, derived.encode_to_vec());
        assert_eq!(ours.len(), product.encoded_len());
        assert_eq!(Product::decode(ours.as_slice()).unwrap(), product);

        #[derive(Clone, PartialEq, prost::Message)]
        struct DerivedRow {
            #[prost(btree_map = "string, double", tag = "1")]
            points: std::collections::BTreeMap<String, f64>,
            #[prost(uint32, tag = "2")]
            rank: u32,
            #[prost(string, repeated, tag = "3")]
            ids: Vec<String>,
        }
        #[derive(Debug, Default)]
        struct Row {
            points: BTreeMap<Metric, f64>,
            rank: u32,
            ids: Vec<String>,
        }
        proto_message!(Row { points = 1, rank = 2, ids = 3 });
        let row = Row {
            points: [
                (Metric::PaidGmv, 60.0),
                (Metric::Judges, 0.0),
                (Metric::Likes, 12.5),
            ]
            .into_iter()
            .collect(),
            rank: 3,
            ids: vec!["a".into(), String::new(), "c".into()],
        };
        let derived = DerivedRow {
            points: [("paid_gmv", 60.0), ("judges", 0.0), ("likes", 12.5)]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            rank: 3,
            ids: vec!["a".into(), String::new(), "c".into()],
        };
        // Map entry order differs (our keys sort by metric, prost's by string), so compare
        // through decoding rather than bytes.
        let ours = row.encode_to_vec();
        assert_eq!(ours.len(), row.encoded_len());
        assert_eq!(DerivedRow::decode(ours.as_slice()).unwrap(), derived);
        let back = Row::decode(derived.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back.points, row.points);
        assert_eq!((back.rank, back.ids), (row.rank, row.ids));
    }

    #[test]
    fn decoding_is_strict_where_prost_is_lax() {
        use prost::Message;
        // uint32 field 2 of Row with a value above u32::MAX.
        #[derive(Debug, Default)]
        struct Narrow {
            n: u32,
        }
        proto_message!(Narrow { n = 1 });
        let mut buf = Vec::new();
        encoding::uint64::encode(1, &(u64::from(u32::MAX) + 1), &mut buf);
        assert!(Narrow::decode(buf.as_slice()).is_err());

        // A Room whose status is not a room status, and a Product with a bad timestamp.
        let mut buf = Vec::new();
        encode_str(5, "paused", &mut buf);
        assert!(Room::decode(buf.as_slice()).is_err());
        let mut buf = Vec::new();
        encode_str(10, "yesterday", &mut buf);
        assert!(Product::decode(buf.as_slice()).is_err());
    }
}
