#![no_main]
//! Signature checking on hostile input: any bytes as the signed message and
//! any string as the base64url signature, for ECDSA (whose JWS r‖s form is
//! rewritten as DER before aws-lc sees it), RSA and HMAC keys. It must never
//! panic, and nothing a fuzzer makes up may verify.
use authgate::keys::{parse_public_pem, VerifyKey};
use jsonwebtoken::Algorithm;
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

/// Keys generated at start (no key is committed).
static KEYS: LazyLock<Vec<(Algorithm, VerifyKey)>> = LazyLock::new(|| {
    let pem = |alg: &'static rcgen::SignatureAlgorithm| {
        let pair = rcgen::KeyPair::generate_for(alg).expect("key");
        parse_public_pem(pair.public_key_pem().as_bytes()).expect("public key")
    };
    vec![
        (Algorithm::ES256, pem(&rcgen::PKCS_ECDSA_P256_SHA256)),
        (Algorithm::ES384, pem(&rcgen::PKCS_ECDSA_P384_SHA384)),
        (Algorithm::RS256, pem(&rcgen::PKCS_RSA_SHA256)),
    ]
});

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let (message, signature) = data.split_at(split);
    let signature = String::from_utf8_lossy(signature);
    for (alg, key) in KEYS.iter() {
        for try_alg in [*alg, Algorithm::ES256, Algorithm::HS256] {
            assert!(!key.verify(try_alg, message, &signature));
        }
    }
});
