//! ES256 verification alone: authgate's table-based P-256 verify
//! (`src/keys/p256.rs`) against aws-lc's, same keys and signatures,
//! interleaved rounds. See bench/PERFORMANCE.md, *ES256 verification*.
//!
//!     cargo run --release --example p256_speed
//!     N=20000 ROUNDS=5 taskset -c 0 target/release/examples/p256_speed

use authgate::keys::p256::P256Key;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair, UnparsedPublicKey};
use std::time::Instant;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let n = env("N", 3000);
    let rounds = env("ROUNDS", 3);
    let rng = SystemRandom::new();
    let pair =
        EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).expect("key pair");
    let public = pair.public_key().as_ref().to_vec();
    let t = Instant::now();
    let _ = P256Key::from_sec1(&public).expect("table");
    let first = t.elapsed();
    let t = Instant::now();
    let table = P256Key::from_sec1(&public).expect("table");
    println!(
        "table build: {:.1} ms for the first key (with the generator's table), {:.1} ms for a key",
        first.as_secs_f64() * 1e3,
        t.elapsed().as_secs_f64() * 1e3
    );
    let messages: Vec<Vec<u8>> = (0..n)
        .map(|i| format!("eyJhbGciOiJFUzI1NiJ9.message-{i}").into_bytes())
        .collect();
    let signatures: Vec<Vec<u8>> = messages
        .iter()
        .map(|m| pair.sign(&rng, m).expect("sign").as_ref().to_vec())
        .collect();
    let aws = UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &public);
    println!("{n} signatures per round, µs per verification:");
    for round in 0..rounds {
        let t = Instant::now();
        for (m, s) in messages.iter().zip(&signatures) {
            assert!(table.verify(m, s));
        }
        let ours = t.elapsed().as_secs_f64() * 1e6 / n as f64;
        let t = Instant::now();
        for (m, s) in messages.iter().zip(&signatures) {
            assert!(aws.verify(m, s).is_ok());
        }
        let theirs = t.elapsed().as_secs_f64() * 1e6 / n as f64;
        println!(
            "round {round}: table {ours:.1}  aws-lc {theirs:.1}  ratio {:.2}",
            ours / theirs
        );
    }
}
