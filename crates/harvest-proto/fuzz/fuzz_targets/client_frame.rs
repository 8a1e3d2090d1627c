//! Feeds arbitrary bytes to both client-frame decoders, as a WebSocket peer could.
//!
//! Neither may panic; a refusal must carry one of the decode error codes; an accepted
//! frame must re-encode to a frame that decodes to itself.

#![no_main]

use harvest_proto::ws::{
    decode_client_json, decode_client_proto, encode_client_json, encode_client_proto,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for (decoded, json) in [(decode_client_json(data), true), (decode_client_proto(data), false)] {
        match decoded {
            Err(err) => assert!(err.counts_as_bad(), "unexpected code {}", err.code),
            Ok(frame) => {
                let again = if json {
                    decode_client_json(&encode_client_json(&frame))
                } else {
                    decode_client_proto(&encode_client_proto(&frame))
                };
                assert_eq!(again.as_ref(), Ok(&frame));
            }
        }
    }
});
