#![no_main]
//! The configuration parser reports problems; it never panics.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = authgate::config::Config::parse(s, std::path::Path::new("fuzz.toml"));
    }
});
