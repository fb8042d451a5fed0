#![no_main]
//! Strict body parsing and context validation never panic on hostile bytes.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(doc) = authgate::context::parse_json_body(data) {
        let _ = authgate::context::validate(&doc, authgate::config::PiiMode::Redact);
        let mut copy = doc.clone();
        // Byte-level removal must agree with removal on the parsed value.
        if authgate::context::remove_pointer(&mut copy, "/Auth/Token") {
            if let Some(out) = authgate::pipeline::rewrite::remove_member(data, "/Auth/Token") {
                let reparsed: serde_json::Value =
                    serde_json::from_slice(&out).expect("byte edit keeps valid JSON");
                assert_eq!(reparsed, copy);
            }
        }
    }
});
