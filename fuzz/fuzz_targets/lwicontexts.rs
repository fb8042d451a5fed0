#![no_main]
//! The lwicontexts claim parser and duration parser never panic.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let claim = serde_json::Value::String(s.to_owned());
        let _ = authgate::context::parse_lwicontexts(&claim, None);
        let _ = authgate::config::duration::parse_signed(s);
    }
});
