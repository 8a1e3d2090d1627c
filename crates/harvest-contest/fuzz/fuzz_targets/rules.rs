//! Feeds arbitrary bytes to the contest rules parser, as an organizer's request body
//! could.
//!
//! Neither parsing nor validation may panic; a refusal carries `bad_request` or
//! `invalid_rules`; accepted rules survive a JSON round trip with the same hash, and
//! valid rules build an engine.

#![no_main]

use harvest_contest::{Engine, Participant, Rules, rules_hash};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let rules = match Rules::from_json(data) {
        Ok(rules) => rules,
        Err(err) => {
            assert_eq!(err.code(), "bad_request");
            return;
        }
    };
    let again = Rules::from_json(rules.to_json().as_bytes()).expect("round trip");
    assert_eq!(again, rules);
    assert_eq!(rules_hash(&again), rules_hash(&rules));
    match rules.validate() {
        Err(err) => assert!(matches!(err.code(), "bad_request" | "invalid_rules")),
        Ok(()) => {
            let team = |id: &str| Participant {
                id: id.into(),
                name: id.into(),
                owner_id: format!("owner-{id}"),
                member_ids: vec![],
                room_ids: vec![format!("room-{id}")],
            };
            Engine::new(rules, vec![team("a"), team("b")]).expect("valid rules build an engine");
        }
    }
});
