#![no_main]
//! Path normalization must never panic, and its output must be a fixed point.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(once) = authgate::pipeline::path::normalize(s) {
            let twice = authgate::pipeline::path::normalize(&once).map(|c| c.into_owned());
            assert_eq!(twice.as_deref(), Ok(once.as_ref()));
        }
    }
});
