#![no_main]
//! Strict body parsing and context validation never panic on hostile bytes.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(doc) = authgate::context::parse_json_body(data) {
        let _ = authgate::context::validate(&doc, authgate::config::PiiMode::Redact);
        let mut copy = doc.clone();
        let _ = authgate::context::remove_pointer(&mut copy, "/Auth/Token");
    }
});
