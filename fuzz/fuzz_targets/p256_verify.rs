#![no_main]
//! The table-based ES256 verify (`authgate::keys::p256`) against aws-lc's,
//! on hostile input. It must never panic and must decide exactly as aws-lc
//! does:
//! - first byte even: a signature made with a fixed key over fuzzer bytes,
//!   then XORed with more fuzzer bytes (near-valid signatures; both must
//!   accept the untouched one);
//! - first byte odd: a fuzzer-made point as the key and fuzzer-made message
//!   and signature. Random coordinates are almost never a curve point, so in
//!   practice this mode checks that `from_sec1` refuses what aws-lc refuses;
//!   signatures under real keys are the even mode's job.
use authgate::keys::p256::P256Key;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair, UnparsedPublicKey};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

/// A key generated at start (no key is committed) and its table.
static KEY: LazyLock<(EcdsaKeyPair, P256Key)> = LazyLock::new(|| {
    let pair = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).expect("key");
    let table = P256Key::from_sec1(pair.public_key().as_ref()).expect("table");
    (pair, table)
});

fn aws_lc(point: &[u8], message: &[u8], sig: &[u8]) -> bool {
    UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
        .verify(message, sig)
        .is_ok()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let (pair, table) = &*KEY;
        let split = rest.len().min(usize::from(mode / 2));
        let (message, flips) = rest.split_at(split);
        let good = pair.sign(&SystemRandom::new(), message).expect("sign");
        let good = good.as_ref();
        let point = pair.public_key().as_ref();
        assert!(table.verify(message, good));
        let mut sig = good.to_vec();
        for (s, f) in sig.iter_mut().zip(flips) {
            *s ^= f;
        }
        assert_eq!(table.verify(message, &sig), aws_lc(point, message, &sig));
        if flips.len() > 64 {
            // A changed message with the original signature.
            let other = &flips[64..];
            assert_eq!(table.verify(other, good), aws_lc(point, other, good));
        }
    } else {
        if rest.len() < 64 + 64 {
            return;
        }
        let mut point = vec![4u8];
        point.extend_from_slice(&rest[..64]);
        let (sig, message) = rest[64..].split_at(64);
        match P256Key::from_sec1(&point) {
            Some(key) => assert_eq!(key.verify(message, sig), aws_lc(&point, message, sig)),
            None => assert!(!aws_lc(&point, message, sig)),
        }
    }
});
