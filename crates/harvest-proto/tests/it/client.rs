//! Client frames: round trips, every bad-input class of RELIABILITY.md, and arbitrary
//! bytes that must never panic either decoder.

use harvest_proto::ws::*;
use proptest::prelude::*;

use crate::samples::client_frames;

#[test]
fn every_client_frame_round_trips() {
    for frame in client_frames() {
        let json = encode_client_json(&frame);
        assert_eq!(
            decode_client_json(&json).unwrap(),
            frame,
            "{}",
            String::from_utf8_lossy(&json)
        );
        let proto = encode_client_proto(&frame);
        assert_eq!(decode_client_proto(&proto).unwrap(), frame);
        for encoding in [Encoding::Json, Encoding::Protobuf] {
            let bytes = match encoding {
                Encoding::Json => json.clone(),
                Encoding::Protobuf => proto.clone(),
            };
            assert_eq!(encoding.decode_client(&bytes).unwrap(), frame);
        }
    }
    let types: Vec<_> = client_frames()
        .iter()
        .map(ClientFrame::frame_type)
        .collect();
    for t in ClientFrame::TYPES {
        assert!(types.contains(&t));
    }
}

#[test]
fn json_client_frames_as_the_api_writes_them() {
    let cases = [
        (
            r#"{"type":"chat.send","text":"hello","ref":"client-id"}"#,
            ClientFrame::ChatSend(ChatSend {
                text: "hello".into(),
                r#ref: Some("client-id".into()),
            }),
        ),
        (
            r#"{"type":"like","count":1}"#,
            ClientFrame::Like(Like {
                count: 1,
                r#ref: None,
            }),
        ),
        (
            r#"{"type":"like","count":100,"ref":null}"#,
            ClientFrame::Like(Like {
                count: 100,
                r#ref: None,
            }),
        ),
        (
            r#" { "nonce" : "x", "type" : "ping" } "#,
            ClientFrame::Ping(Ping {
                nonce: "x".into(),
                r#ref: None,
            }),
        ),
    ];
    for (text, frame) in cases {
        assert_eq!(
            decode_client_json(text.as_bytes()).unwrap(),
            frame,
            "{text}"
        );
    }
    assert_eq!(
        &encode_client_json(&ClientFrame::Like(Like {
            count: 3,
            r#ref: None
        }))[..],
        br#"{"type":"like","count":3}"#
    );
    assert_eq!(
        ClientFrame::ChatSend(ChatSend {
            text: "t".into(),
            r#ref: Some("r".into())
        })
        .ref_id(),
        Some("r")
    );
}

/// Asserts the error code, and the echoed ref.
#[track_caller]
fn json_err(frame: impl AsRef<[u8]>, code: WsErrorCode, r#ref: Option<&str>) {
    let frame = frame.as_ref();
    let err = decode_client_json(frame).expect_err(&String::from_utf8_lossy(frame));
    assert_eq!(
        err.code,
        code,
        "{}: {}",
        String::from_utf8_lossy(frame),
        err.message
    );
    assert_eq!(
        err.r#ref.as_deref(),
        r#ref,
        "{}",
        String::from_utf8_lossy(frame)
    );
    assert!(!err.message.is_empty());
}

#[test]
fn json_not_json_and_invalid_utf8_are_bad_frames() {
    use WsErrorCode::BadFrame;
    json_err("hello", BadFrame, None);
    json_err("", BadFrame, None);
    json_err(r#"{"type":"ping","nonce":"x""#, BadFrame, None);
    json_err(r#"{"type":"ping","nonce":"x"} trailing"#, BadFrame, None);
    json_err(b"\xff\xfe", BadFrame, None);
    json_err(
        b"{\"type\":\"ping\",\"nonce\":\"\xc3\x28\"}",
        BadFrame,
        None,
    );
    // Not an object.
    for text in [
        "[]",
        r#"[{"type":"ping","nonce":"x"}]"#,
        r#""ping""#,
        "null",
        "42",
        "true",
    ] {
        json_err(text, BadFrame, None);
    }
    // Deep nesting is refused, not a stack overflow.
    let deep = format!("{}{}", "[".repeat(2000), "]".repeat(2000));
    json_err(&deep, BadFrame, None);
    let deep = format!(
        r#"{{"type":"ping","nonce":{}1{}}}"#,
        "[".repeat(1000),
        "]".repeat(1000)
    );
    json_err(&deep, BadFrame, None);
}

#[test]
fn binary_frames_in_a_json_session_are_bad_frames() {
    let err = FrameError::binary_in_json_session();
    assert_eq!(err.code, WsErrorCode::BadFrame);
    assert!(err.counts_as_bad());
    // Protobuf bytes handed to the JSON decoder are refused the same way.
    let proto = encode_client_proto(&ClientFrame::Ping(Ping {
        nonce: "n".into(),
        r#ref: None,
    }));
    json_err(&proto, WsErrorCode::BadFrame, None);
    assert_eq!(
        FrameError::text_in_protobuf_session().code,
        WsErrorCode::BadFrame
    );
}

#[test]
fn frames_over_4_kib_are_too_large() {
    // Exactly 4096 bytes is allowed.
    let filler = "x".repeat(MAX_CLIENT_FRAME_BYTES - r#"{"type":"ping","nonce":""}"#.len());
    let at_limit = format!(r#"{{"type":"ping","nonce":"{filler}"}}"#);
    assert_eq!(at_limit.len(), MAX_CLIENT_FRAME_BYTES);
    assert!(decode_client_json(at_limit.as_bytes()).is_ok());
    let over = format!(r#"{{"type":"ping","nonce":"{filler}x","ref":"r"}}"#);
    json_err(&over, WsErrorCode::TooLarge, None);
    // Over 1 MiB, and garbage: the size is checked before anything is parsed.
    let huge = vec![b'{'; 1 << 21];
    json_err(&huge, WsErrorCode::TooLarge, None);
    let err = decode_client_proto(&huge).unwrap_err();
    assert_eq!(err.code, WsErrorCode::TooLarge);
    let proto = encode_client_proto(&ClientFrame::ChatSend(ChatSend {
        text: "x".repeat(4096),
        r#ref: None,
    }));
    assert_eq!(
        decode_client_proto(&proto).unwrap_err().code,
        WsErrorCode::TooLarge
    );
}

#[test]
fn unknown_types_are_unknown_type_and_echo_ref() {
    json_err(
        r#"{"type":"chat.edit","text":"x","ref":"r1"}"#,
        WsErrorCode::UnknownType,
        Some("r1"),
    );
    json_err(
        r#"{"type":"","ref":"r2"}"#,
        WsErrorCode::UnknownType,
        Some("r2"),
    );
    json_err(
        r#"{"type":"PING","nonce":"x"}"#,
        WsErrorCode::UnknownType,
        None,
    );
    let long_type = format!(r#"{{"type":"{}"}}"#, "t".repeat(3000));
    let err = decode_client_json(long_type.as_bytes()).unwrap_err();
    assert_eq!(err.code, WsErrorCode::UnknownType);
    assert!(err.message.len() < 200, "the echoed type is cut short");
}

#[test]
fn missing_fields_are_bad_frames() {
    use WsErrorCode::BadFrame;
    json_err(r#"{"text":"hi","ref":"r"}"#, BadFrame, Some("r"));
    json_err(r#"{"type":"chat.send","ref":"r"}"#, BadFrame, Some("r"));
    json_err(r#"{"type":"like","ref":"r"}"#, BadFrame, Some("r"));
    json_err(r#"{"type":"ping"}"#, BadFrame, None);
    json_err("{}", BadFrame, None);
}

#[test]
fn wrong_types_are_bad_frames() {
    use WsErrorCode::BadFrame;
    json_err(r#"{"type":7,"ref":"r"}"#, BadFrame, Some("r"));
    json_err(r#"{"type":null}"#, BadFrame, None);
    json_err(
        r#"{"type":"chat.send","text":5,"ref":"r"}"#,
        BadFrame,
        Some("r"),
    );
    json_err(r#"{"type":"chat.send","text":null}"#, BadFrame, None);
    json_err(r#"{"type":"chat.send","text":["a"]}"#, BadFrame, None);
    json_err(
        r#"{"type":"like","count":"3","ref":"r"}"#,
        BadFrame,
        Some("r"),
    );
    json_err(r#"{"type":"like","count":true}"#, BadFrame, None);
    json_err(r#"{"type":"ping","nonce":{}}"#, BadFrame, None);
    json_err(r#"{"type":"ping","nonce":1}"#, BadFrame, None);
    // A `ref` that is not a string cannot be echoed.
    json_err(r#"{"type":"ping","nonce":"x","ref":5}"#, BadFrame, None);
    json_err(
        r#"{"type":"ping","nonce":"x","ref":{"id":1}}"#,
        BadFrame,
        None,
    );
    // Unknown fields, as in the HTTP API.
    json_err(
        r#"{"type":"ping","nonce":"x","ref":"r","extra":1}"#,
        BadFrame,
        Some("r"),
    );
    json_err(r#"{"type":"like","count":1,"cnt":2}"#, BadFrame, None);
}

#[test]
fn huge_and_out_of_range_numbers_are_bad_frames() {
    use WsErrorCode::BadFrame;
    for count in [
        "0",
        "101",
        "-1",
        "1.5",
        "1e2",
        "1.0",
        "4294967297",
        "18446744073709551616",
        "99999999999999999999999999999999999999",
        "-0",
    ] {
        json_err(
            format!(r#"{{"type":"like","count":{count},"ref":"r"}}"#),
            BadFrame,
            Some("r"),
        );
    }
    // Outside f64 altogether: not even JSON serde can read.
    json_err(r#"{"type":"like","count":1e400,"ref":"r"}"#, BadFrame, None);

    // Protobuf: a count varint above u32::MAX, and counts outside 1..=100.
    let mut like = vec![0x12, 0x00, 0x08];
    like.extend(varint(u64::from(u32::MAX) + 2));
    like[1] = (like.len() - 2) as u8;
    assert_eq!(decode_client_proto(&like).unwrap_err().code, BadFrame);
    for count in [0, 101, u32::MAX] {
        let frame = encode_client_proto(&ClientFrame::Like(Like {
            count,
            r#ref: Some("r".into()),
        }));
        let err = decode_client_proto(&frame).unwrap_err();
        assert_eq!(
            (err.code, err.r#ref.as_deref()),
            (BadFrame, Some("r")),
            "count {count}"
        );
    }
}

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

#[test]
fn protobuf_bad_input() {
    use WsErrorCode::{BadFrame, UnknownType};
    let code = |bytes: &[u8]| decode_client_proto(bytes).unwrap_err().code;
    // Empty frame, garbage, truncated messages.
    assert_eq!(code(&[]), BadFrame);
    assert_eq!(code(&[0xff; 16]), BadFrame);
    assert_eq!(code(&[0x0a, 0x05, 0x0a]), BadFrame);
    let ping = encode_client_proto(&ClientFrame::Ping(Ping {
        nonce: "nonce".into(),
        r#ref: None,
    }));
    assert_eq!(code(&ping[..ping.len() - 1]), BadFrame);
    // Invalid UTF-8 in `text`.
    assert_eq!(code(&[0x0a, 0x04, 0x0a, 0x02, 0xc3, 0x28]), BadFrame);
    // A wire type that does not match the field.
    assert_eq!(code(&[0x08, 0x01]), BadFrame);
    // JSON text in a protobuf session.
    assert_eq!(code(br#"{"type":"ping","nonce":"x"}"#), BadFrame);
    // A newer client's frame type (an unknown oneof member) is unknown_type.
    assert_eq!(code(&[0x22, 0x02, 0x08, 0x01]), UnknownType);
    // Proto3 has no "missing": an absent text reads as empty (the server answers
    // empty_text), an absent nonce as empty.
    assert_eq!(
        decode_client_proto(&[0x0a, 0x00]).unwrap(),
        ClientFrame::ChatSend(ChatSend {
            text: String::new(),
            r#ref: None
        })
    );
    // An empty Like has count 0, outside 1..=100.
    assert_eq!(code(&[0x12, 0x00]), BadFrame);
}

#[test]
fn frame_errors_become_error_events() {
    let err = decode_client_json(br#"{"type":"nope","ref":"abc"}"#).unwrap_err();
    assert!(err.counts_as_bad());
    let event = Event::unsequenced(1, err.to_event());
    assert_eq!(
        std::str::from_utf8(&encode_json(&event)).unwrap(),
        r#"{"type":"error","ts":1,"data":{"code":"unknown_type","message":"unknown frame type `nope`; expected chat.send, like or ping","ref":"abc"}}"#
    );
    let data: ErrorEvent = err.clone().into();
    assert_eq!(data, err.to_event());
    assert_eq!(err.to_string(), format!("unknown_type: {}", err.message));
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    ProptestConfig::with_cases(cases)
}

fn is_decode_code(code: WsErrorCode) -> bool {
    code.counts_as_bad()
}

fn arb_ref() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(".{0,20}")
}

fn arb_frame() -> impl Strategy<Value = ClientFrame> {
    prop_oneof![
        (".{0,200}", arb_ref())
            .prop_map(|(text, r)| ClientFrame::ChatSend(ChatSend { text, r#ref: r })),
        (1u32..=100, arb_ref()).prop_map(|(count, r)| ClientFrame::Like(Like { count, r#ref: r })),
        (".{0,40}", arb_ref()).prop_map(|(nonce, r)| ClientFrame::Ping(Ping { nonce, r#ref: r })),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..6000)) {
        for result in [decode_client_json(&bytes), decode_client_proto(&bytes)] {
            if let Err(err) = result {
                prop_assert!(is_decode_code(err.code), "{err}");
            }
        }
    }

    #[test]
    fn json_like_text_never_panics(text in r#"[{}\[\]":,0-9a-z.\-e ]{0,300}"#) {
        if let Err(err) = decode_client_json(text.as_bytes()) {
            prop_assert!(is_decode_code(err.code), "{err}");
        }
    }

    #[test]
    fn random_frames_round_trip(frame in arb_frame()) {
        prop_assert_eq!(decode_client_json(&encode_client_json(&frame)).unwrap(), frame.clone());
        prop_assert_eq!(decode_client_proto(&encode_client_proto(&frame)).unwrap(), frame);
    }

    #[test]
    fn mutated_frames_never_panic(
        frame in arb_frame(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        for mut bytes in [encode_client_json(&frame).to_vec(), encode_client_proto(&frame).to_vec()] {
            for (at, byte) in &flips {
                let i = at.index(bytes.len());
                bytes[i] = *byte;
            }
            let _ = decode_client_json(&bytes);
            let _ = decode_client_proto(&bytes);
        }
    }

    #[test]
    fn server_event_decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let _ = decode_json_frame(&bytes);
        let _ = decode_proto_frame(&bytes);
        let _ = decode_proto_event(&bytes);
    }
}
