//! Server events: both encodings round-trip, exact JSON, batching by concatenation.

use std::collections::BTreeSet;

use bytes::Bytes;
use harvest_proto::ws::*;
use serde_json::{Value, json};

use crate::samples::{self, TS, all_events, more_events};

#[test]
fn samples_cover_every_event_type() {
    let types: Vec<&str> = all_events().iter().map(Event::event_type).collect();
    assert_eq!(types, EventData::TYPES);
}

#[test]
fn every_event_round_trips_through_json() {
    for event in all_events().into_iter().chain(more_events()) {
        let bytes = encode_json(&event);
        let back = decode_json_event(&bytes).unwrap_or_else(|e| {
            panic!(
                "{}: {e}\n{}",
                event.event_type(),
                String::from_utf8_lossy(&bytes)
            )
        });
        assert_eq!(back, event);
        // serde's Serialize gives the same text.
        assert_eq!(serde_json::to_vec(&event).unwrap(), bytes.to_vec());
    }
}

#[test]
fn every_event_round_trips_through_protobuf() {
    for event in all_events().into_iter().chain(more_events()) {
        let bytes = encode_proto(&event);
        let back =
            decode_proto_event(&bytes).unwrap_or_else(|e| panic!("{}: {e}", event.event_type()));
        assert_eq!(back, event);
    }
}

#[test]
fn json_envelope_is_type_seq_ts_data_and_seq_only_on_room_events() {
    for event in all_events() {
        let text = String::from_utf8(encode_json(&event).to_vec()).unwrap();
        let value: Value = serde_json::from_str(&text).unwrap();
        let keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let prefix = format!("{{\"type\":\"{}\",", event.event_type());
        assert!(text.starts_with(&prefix), "{text}");
        if event.lane() == Lane::Room {
            assert_eq!(keys.len(), 4, "{text}");
            assert!(text[prefix.len()..].starts_with("\"seq\":"), "{text}");
        } else {
            assert_eq!(keys.len(), 3, "{text}");
            assert!(text[prefix.len()..].starts_with("\"ts\":"), "{text}");
        }
        assert!(text.contains(",\"data\":{"), "{text}");
    }
}

#[test]
fn lanes_follow_the_api() {
    let lane = |t: &str| EventData::lane_of(t).unwrap();
    for t in [
        "room.status",
        "room.products",
        "product.pinned",
        "sale.scheduled",
        "sale.started",
        "sale.stock",
        "sale.sold_out",
        "sale.ended",
        "order.placed",
        "chat.deleted",
        "pk.started",
        "pk.score",
        "pk.ended",
        "contest.standings",
        "test.message",
    ] {
        assert_eq!(lane(t), Lane::Room, "{t}");
    }
    for t in ["chat.message", "likes", "room.viewers"] {
        assert_eq!(lane(t), Lane::Social, "{t}");
    }
    for t in [
        "hold.expired",
        "order.paid",
        "error",
        "pong",
        "session.welcome",
        "room.snapshot",
    ] {
        assert_eq!(lane(t), Lane::Private, "{t}");
    }
    assert_eq!(EventData::lane_of("sale.restocked"), None);
    assert_eq!(
        [Lane::Room, Lane::Social, Lane::Private].map(Lane::as_str),
        ["room", "social", "private"]
    );
}

fn golden(event: Event, expected: &str) {
    let text = String::from_utf8(encode_json(&event).to_vec()).unwrap();
    assert_eq!(text, expected);
    assert_eq!(decode_json_event(expected.as_bytes()).unwrap(), event);
}

#[test]
fn golden_sale_stock() {
    golden(
        Event::room(
            17,
            TS,
            SaleStock {
                sale_id: "s1".into(),
                remaining: 3,
                held: 1,
                sold: 6,
            },
        ),
        r#"{"type":"sale.stock","seq":17,"ts":1764420000123,"data":{"sale_id":"s1","remaining":3,"held":1,"sold":6}}"#,
    );
}

#[test]
fn golden_anonymous_welcome_has_null_user_and_no_seq() {
    golden(
        Event::unsequenced(
            TS,
            SessionWelcome {
                session_id: "sess-1".into(),
                room_id: "r1".into(),
                user_id: None,
                epoch: "ep-1".into(),
                last_seq: 41,
                recovered: false,
            },
        ),
        r#"{"type":"session.welcome","ts":1764420000123,"data":{"session_id":"sess-1","room_id":"r1","user_id":null,"epoch":"ep-1","last_seq":41,"recovered":false}}"#,
    );
}

#[test]
fn golden_unpin_and_error_nulls() {
    golden(
        Event::room(3, TS, ProductPinned { product: None }),
        r#"{"type":"product.pinned","seq":3,"ts":1764420000123,"data":{"product":null}}"#,
    );
    golden(
        Event::unsequenced(
            TS,
            ErrorEvent {
                code: WsErrorCode::UnknownType,
                message: "unknown frame type".into(),
                r#ref: None,
            },
        ),
        r#"{"type":"error","ts":1764420000123,"data":{"code":"unknown_type","message":"unknown frame type","ref":null}}"#,
    );
    golden(
        Event::unsequenced(
            TS,
            Pong {
                nonce: "n-1".into(),
            },
        ),
        r#"{"type":"pong","ts":1764420000123,"data":{"nonce":"n-1"}}"#,
    );
}

#[test]
fn golden_pinned_product_with_nulls_and_timestamp() {
    golden(
        Event::room(
            4,
            TS,
            ProductPinned {
                product: Some(samples::product("p2", false)),
            },
        ),
        concat!(
            r#"{"type":"product.pinned","seq":4,"ts":1764420000123,"data":{"product":{"id":"p2","#,
            r#""owner_id":"u-coop","sku":"SKU-p2","title":"十八洞猕猴桃 5斤装","origin":null,"#,
            r#""unit":null,"list_price":3990,"currency":"CNY","image_url":null,"#,
            r#""created_at":"2025-11-01T02:03:04.567Z"}}}"#
        ),
    );
}

#[test]
fn golden_match_field_is_named_match() {
    let event = Event::room(
        9,
        TS,
        PkEnded {
            r#match: samples::pk_match(MatchStatus::Ended),
        },
    );
    golden(
        event,
        concat!(
            r#"{"type":"pk.ended","seq":9,"ts":1764420000123,"data":{"match":{"id":"m1","#,
            r#""contest_id":"c1","participant_ids":["pa","pb"],"starts_at":"2025-11-29T09:00:00Z","#,
            r#""ends_at":"2025-11-29T09:05:00Z","metric":"paid_gmv","status":"ended","#,
            r#""scores":[{"participant_id":"pa","value":12000},{"participant_id":"pb","value":0}],"#,
            r#""winner_ids":["pa"]}}}"#
        ),
    );
}

#[test]
fn snapshot_and_standings_json_shapes() {
    let snapshot = &all_events()[1];
    let value: Value = serde_json::from_slice(&encode_json(snapshot)).unwrap();
    let data = &value["data"];
    let keys: BTreeSet<&str> = data
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "room",
            "viewers",
            "likes",
            "pinned_product",
            "products",
            "sales",
            "match",
            "standings",
            "recent_chat"
        ])
    );
    assert_eq!(data["room"]["ended_at"], Value::Null);
    assert_eq!(data["room"]["status"], "live");
    assert_eq!(data["sales"][0]["status"], "live");
    let row = &data["standings"][0]["rows"][0];
    assert_eq!(
        row["metrics"],
        json!({"paid_gmv": 12000, "paid_orders": 6, "distinct_buyers": 3, "likes": 1234,
            "match_wins": 1, "judges": 87.5})
    );
    assert_eq!(row["points"], json!({"paid_gmv": 60.0, "judges": 35.0}));
    assert_eq!(row["total"], json!(95.0));

    let order = all_events()
        .into_iter()
        .find(|e| e.event_type() == "order.paid")
        .unwrap();
    let value: Value = serde_json::from_slice(&encode_json(&order)).unwrap();
    assert_eq!(value["data"]["order"]["refunded_at"], Value::Null);
    assert_eq!(value["data"]["order"]["status"], "paid");
}

#[test]
fn json_batch_is_an_array_of_the_encoded_events() {
    let events = all_events();
    let encoded: Vec<Bytes> = events.iter().map(encode_json).collect();
    let batch = json_batch(&encoded);
    assert_eq!(batch[0], b'[');
    assert_eq!(decode_json_frame(&batch).unwrap(), events);
    // Each encoded event appears verbatim: nothing was re-encoded.
    let text = String::from_utf8(batch.to_vec()).unwrap();
    for e in &encoded {
        assert!(text.contains(std::str::from_utf8(e).unwrap()));
    }
    assert_eq!(&json_batch(&[])[..], b"[]");
    assert_eq!(
        decode_json_frame(&json_batch(&encoded[..1])).unwrap(),
        events[..1]
    );
    // A lone event object is a frame too.
    assert_eq!(decode_json_frame(&encoded[3]).unwrap(), events[3..4]);
}

#[test]
fn proto_frame_concatenates_length_delimited_events() {
    let events = all_events();
    let encoded: Vec<Bytes> = events.iter().map(encode_proto).collect();
    let frame = proto_frame(&encoded);
    assert_eq!(decode_proto_frame(&frame).unwrap(), events);
    // Byte layout: 0x0A, varint length, the event's bytes, for each event.
    let first = &encoded[0];
    assert_eq!(frame[0], 0x0A);
    assert!(first.len() < 128);
    assert_eq!(frame[1] as usize, first.len());
    assert_eq!(&frame[2..2 + first.len()], &first[..]);
    // The snapshot is longer than 127 bytes: a two-byte length.
    assert!(encoded[1].len() >= 128);
    assert_eq!(
        decode_proto_frame(&proto_frame(&encoded[1..2])).unwrap(),
        events[1..2]
    );
    assert!(decode_proto_frame(&[]).unwrap().is_empty());
}

#[test]
fn encoding_frames_one_or_many() {
    let events = all_events();
    for encoding in [Encoding::Json, Encoding::Protobuf] {
        let encoded: Vec<Bytes> = events.iter().map(|e| encoding.encode(e)).collect();
        assert_eq!(
            encoding.decode_frame(&encoding.frame(&encoded)).unwrap(),
            events
        );
        let one = encoding.frame(&encoded[7..8]);
        assert_eq!(encoding.decode_frame(&one).unwrap(), events[7..8]);
    }
    // In JSON a single event goes out as it is, not as a one-element array.
    let one = encode_json(&events[7]);
    assert_eq!(Encoding::Json.frame(std::slice::from_ref(&one)), one);
}

#[test]
fn subprotocol_negotiation() {
    assert_eq!(Encoding::negotiate([]), None);
    assert_eq!(
        Encoding::negotiate(["harvest.v1.json"]),
        Some(Encoding::Json)
    );
    assert_eq!(
        Encoding::negotiate(["chat, harvest.v1.protobuf"]),
        Some(Encoding::Protobuf)
    );
    assert_eq!(
        Encoding::negotiate(["harvest.v1.protobuf", "harvest.v1.json"]),
        Some(Encoding::Protobuf)
    );
    assert_eq!(Encoding::negotiate(["harvest.v2.json"]), None);
    assert_eq!(Encoding::default(), Encoding::Json);
    for e in [Encoding::Json, Encoding::Protobuf] {
        assert_eq!(Encoding::from_subprotocol(e.subprotocol()), Some(e));
    }
    assert!(Encoding::Protobuf.is_binary() && !Encoding::Json.is_binary());
}

#[test]
fn decoders_enforce_the_seq_rule() {
    let no_seq = r#"{"type":"sale.sold_out","ts":1,"data":{"sale_id":"s1"}}"#;
    assert!(decode_json_event(no_seq.as_bytes()).is_err());
    let seq_zero = r#"{"type":"sale.sold_out","seq":0,"ts":1,"data":{"sale_id":"s1"}}"#;
    assert!(decode_json_event(seq_zero.as_bytes()).is_err());
    let social_seq = r#"{"type":"likes","seq":5,"ts":1,"data":{"total":9}}"#;
    assert!(decode_json_event(social_seq.as_bytes()).is_err());

    let bad = Event {
        seq: None,
        ts: 1,
        data: SaleSoldOut {
            sale_id: "s1".into(),
        }
        .into(),
    };
    assert!(bad.check_seq().is_err());
    assert!(matches!(
        decode_proto_event(&encode_proto(&bad)),
        Err(EventDecodeError::Seq(_))
    ));
}

#[test]
fn event_decoders_reject_garbage() {
    for bad in [
        &br#"{"type":"sale.restocked","seq":1,"ts":1,"data":{}}"#[..],
        br#"{"type":"likes","ts":1,"data":{"total":-1}}"#,
        br#"{"type":"likes","ts":1}"#,
        br#"{"type":"pk.score","seq":1,"ts":1,"data":{"match_id":"m","scores":[],"leader_ids":[],"ends_at":"soon"}}"#,
        br#"[{"type":"likes","ts":1,"data":{"total":1}},"#,
        b"",
    ] {
        assert!(decode_json_frame(bad).is_err(), "{}", String::from_utf8_lossy(bad));
    }
    // A frame whose length prefix runs past its end, and an event without data.
    assert!(matches!(
        decode_proto_frame(&[0x0A, 0x05, 0x10]),
        Err(EventDecodeError::Truncated)
    ));
    assert!(matches!(
        decode_proto_event(&[0x10, 0x01]),
        Err(EventDecodeError::NoData)
    ));
    // A timestamp that is not RFC 3339 inside a nested message.
    let started = SaleStarted {
        sale: samples::sale(SaleStatus::Live),
    };
    let mut event = encode_proto(&Event::room(1, 1, started)).to_vec();
    let at = event.windows(4).position(|w| w == b"2025").unwrap();
    event[at] = b'X';
    let err = decode_proto_event(&event).unwrap_err().to_string();
    assert!(
        err.contains("Sale.starts_at") || err.contains("Sale.ends_at"),
        "{err}"
    );
}

#[test]
fn close_codes_and_error_codes() {
    assert_eq!(close::ALL, [1001, 1008, 4001, 4003, 4004, 4008, 4029]);
    for code in close::ALL {
        assert!(close::reason(code).is_some());
    }
    assert_eq!(close::reason(1000), None);
    assert!(close::should_resume(close::GOING_AWAY) && close::should_resume(close::TOO_SLOW));
    assert!(!close::should_resume(close::BANNED));
    assert_eq!(
        WsErrorCode::ALL.map(WsErrorCode::as_str),
        [
            "bad_frame",
            "unknown_type",
            "too_large",
            "unauthorized",
            "muted",
            "rate_limited",
            "text_too_long",
            "empty_text"
        ]
    );
    let bad: Vec<_> = WsErrorCode::ALL
        .into_iter()
        .filter(|c| c.counts_as_bad())
        .collect();
    assert_eq!(
        bad,
        [
            WsErrorCode::BadFrame,
            WsErrorCode::UnknownType,
            WsErrorCode::TooLarge
        ]
    );
}
