#![no_main]
//! Key material from outside: a JWK Set as a JWKS endpoint serves it
//! (`keys::parse_jwks`) and a PEM key file (`keys::parse_public_pem`).
//! Never a panic; a set is accepted only with at least one usable key.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(keys) = authgate::keys::parse_jwks(data, None) {
        assert!(!keys.is_empty());
    }
    let _ = authgate::keys::parse_public_pem(data);
});
