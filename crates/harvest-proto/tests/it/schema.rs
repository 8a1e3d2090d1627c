//! `proto/harvest.v1.json.schema.json` describes what the encoders write.

use harvest_proto::ws::*;
use jsonschema::Validator;
use serde_json::{Value, json};

use crate::samples::{all_events, client_frames, more_events};

fn schema() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../proto/harvest.v1.json.schema.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("read the schema"))
        .expect("schema is JSON")
}

/// A validator for one definition of the schema (`None`: the root).
fn validator(def: Option<&str>) -> Validator {
    let mut schema = schema();
    if let Some(def) = def {
        let root = schema.as_object_mut().unwrap();
        root.remove("oneOf");
        root.insert("$ref".into(), Value::from(format!("#/$defs/{def}")));
    }
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("schema compiles")
}

#[track_caller]
fn assert_valid(validator: &Validator, instance: &Value) {
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{instance}\n{}", errors.join("\n"));
}

#[test]
fn schema_is_valid_draft_2020_12() {
    let schema = schema();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    jsonschema::meta::validate(&schema).expect("valid against its meta-schema");
}

#[test]
fn schema_names_every_event_type_and_error_code() {
    let schema = schema();
    let branches = schema["$defs"]["Event"]["oneOf"].as_array().unwrap();
    let types: Vec<&str> = branches
        .iter()
        .map(|b| b["properties"]["type"]["const"].as_str().unwrap())
        .collect();
    assert_eq!(types, EventData::TYPES);
    let listed: Vec<&str> = schema["$defs"]["Event"]["properties"]["type"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(listed, EventData::TYPES);
    // Room events require seq; the others do not allow it.
    for (branch, ty) in branches.iter().zip(EventData::TYPES) {
        let requires_seq = branch["required"]
            .as_array()
            .unwrap()
            .contains(&json!("seq"));
        let room = EventData::lane_of(ty) == Some(Lane::Room);
        assert_eq!(requires_seq, room, "{ty}");
        assert_eq!(branch["properties"].get("seq").is_some(), room, "{ty}");
    }
    let codes = schema["$defs"]["WsErrorCode"]["enum"].clone();
    assert_eq!(codes, json!(WsErrorCode::ALL.map(WsErrorCode::as_str)));
    let metrics = schema["$defs"]["Metric"]["enum"].clone();
    assert_eq!(metrics, json!(Metric::ALL.map(Metric::as_str)));
}

#[test]
fn every_encoded_event_validates() {
    let event = validator(Some("Event"));
    let root = validator(None);
    let events: Vec<Event> = all_events().into_iter().chain(more_events()).collect();
    for e in &events {
        let value: Value = serde_json::from_slice(&encode_json(e)).unwrap();
        assert_valid(&event, &value);
        assert_valid(&root, &value);
    }
    let batch: Vec<_> = events.iter().map(encode_json).collect();
    let batch: Value = serde_json::from_slice(&json_batch(&batch)).unwrap();
    assert_valid(&validator(Some("ServerFrame")), &batch);
    assert_valid(&root, &batch);
}

#[test]
fn every_client_frame_validates() {
    let client = validator(Some("ClientFrame"));
    let root = validator(None);
    for frame in client_frames() {
        let value: Value = serde_json::from_slice(&encode_client_json(&frame)).unwrap();
        assert_valid(&client, &value);
        assert_valid(&root, &value);
    }
    assert_valid(
        &client,
        &json!({"type": "chat.send", "text": "x", "ref": null}),
    );
}

#[test]
fn schema_rejects_what_the_protocol_forbids() {
    let root = validator(None);
    let invalid = [
        // A room event without seq; a social event with one.
        json!({"type": "sale.sold_out", "ts": 1, "data": {"sale_id": "s"}}),
        json!({"type": "likes", "seq": 3, "ts": 1, "data": {"total": 1}}),
        // Missing and extra data fields; a nullable field left out instead of null.
        json!({"type": "sale.ended", "seq": 1, "ts": 1, "data": {"sale_id": "s"}}),
        json!({"type": "pong", "ts": 1, "data": {"nonce": "n", "extra": 1}}),
        json!({"type": "product.pinned", "seq": 1, "ts": 1, "data": {}}),
        json!({"type": "error", "ts": 1, "data": {"code": "bad_frame", "message": "m"}}),
        json!({"type": "error", "ts": 1, "data": {"code": "oops", "message": "m", "ref": null}}),
        // Unknown event type; timestamp not RFC 3339; seq 0.
        json!({"type": "sale.restocked", "seq": 1, "ts": 1, "data": {}}),
        json!({"type": "pk.score", "seq": 1, "ts": 1,
            "data": {"match_id": "m", "scores": [], "leader_ids": [], "ends_at": "soon"}}),
        json!({"type": "chat.deleted", "seq": 0, "ts": 1, "data": {"message_id": "m"}}),
        // Client frames: count out of range, unknown type, missing field, unknown field.
        json!({"type": "like", "count": 101}),
        json!({"type": "like", "count": 0}),
        json!({"type": "chat.edit", "text": "x"}),
        json!({"type": "ping"}),
        json!({"type": "ping", "nonce": "n", "extra": true}),
        json!([]),
    ];
    for instance in invalid {
        assert!(!root.is_valid(&instance), "accepted {instance}");
    }
}

/// Every JSON example of docs/protocol.md decodes and matches the schema.
#[test]
fn protocol_doc_examples_are_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/protocol.md");
    let doc = std::fs::read_to_string(path).expect("read docs/protocol.md");
    let root = validator(None);
    let mut seen = std::collections::BTreeSet::new();
    let mut blocks = doc.split("```json\n").skip(1);
    let mut count = 0;
    for block in blocks.by_ref() {
        let example = block.split("```").next().unwrap().trim();
        let value: Value =
            serde_json::from_str(example).unwrap_or_else(|e| panic!("{e}: {example}"));
        assert_valid(&root, &value);
        if value.get("data").is_some() || value.is_array() {
            for event in
                decode_json_frame(example.as_bytes()).unwrap_or_else(|e| panic!("{e}: {example}"))
            {
                seen.insert(event.event_type());
            }
        } else {
            decode_client_json(example.as_bytes()).unwrap_or_else(|e| panic!("{e}: {example}"));
        }
        count += 1;
    }
    assert!(count > 20);
    let all: std::collections::BTreeSet<_> = EventData::TYPES.iter().copied().collect();
    let missing: Vec<_> = all.difference(&seen).collect();
    // Scheduled sales and started matches share their example with their siblings.
    assert_eq!(
        missing,
        [&"pk.started", &"sale.scheduled"],
        "events without an example"
    );
}
