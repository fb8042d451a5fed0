//! Verification cost alone (issue 4): µs per token for RS256, ES256, EdDSA
//! and HS256, first verification vs verification-cache hit, measured on
//! `authgate::pipeline::verify::jwt` with a real `Runtime` (no network, no
//! HTTP). See bench/verify_cost/README.md.
//!
//!     cargo bench --bench verify_cost
//!     FIRST=5000 HITS=1000000 cargo bench --bench verify_cost
//!
//! "first": a fresh token every iteration (new `jti`), so every call hashes
//! the token, misses the cache, parses, checks the signature and the
//! claims, derives the pseudonymous customer id and fills the cache.
//! "cache hit": the same token again and again (hash + cache lookup).

use authgate::config::Config;
use authgate::runtime::Runtime;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Case {
    alg: Algorithm,
    iss: &'static str,
    key: EncodingKey,
}

fn main() {
    let first_n = env_usize("FIRST", 2_000);
    let hits_n = env_usize("HITS", 200_000);
    let rounds = env_usize("ROUNDS", 3).max(1);

    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, data: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, data).expect("write");
        p
    };
    let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("rsa");
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ec");
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed");
    let hmac = b"verify-cost-bench-secret-0123456789abcdef".to_vec();
    let rsa_pub = write("rsa.pub.pem", rsa.public_key_pem().as_bytes());
    let ec_pub = write("ec.pub.pem", ec.public_key_pem().as_bytes());
    let ed_pub = write("ed.pub.pem", ed.public_key_pem().as_bytes());
    let hs_file = write("hs.secret", &hmac);
    let id_file = write("id.key", b"verify-cost-bench-customer-id-key\n");
    let toml = format!(
        r#"
[listen]
addr = "127.0.0.1:0"

[upstreams.chat]
url = "http://127.0.0.1:9"

[identity]
pseudonymize = true
key_file = "{id}"

[[issuers]]
name = "rs"
iss = "https://rs.bench"
audiences = ["chat-gateway"]
algorithms = ["RS256"]
keys = ["{rsa}"]

[[issuers]]
name = "es"
iss = "https://es.bench"
audiences = ["chat-gateway"]
algorithms = ["ES256"]
keys = ["{ec}"]

[[issuers]]
name = "ed"
iss = "https://ed.bench"
audiences = ["chat-gateway"]
algorithms = ["EdDSA"]
keys = ["{ed}"]

[[issuers]]
name = "hs"
iss = "https://hs.bench"
audiences = ["chat-gateway"]
algorithms = ["HS256"]
secret_file = "{hs}"

[[routes]]
name = "chat"
path = "/api/{{*rest}}"
upstream = "chat"
auth = "required"
"#,
        id = id_file.display(),
        rsa = rsa_pub.display(),
        ec = ec_pub.display(),
        ed = ed_pub.display(),
        hs = hs_file.display(),
    );
    let path = write("gateway.toml", toml.as_bytes());
    let config = Config::load(&path).unwrap_or_else(|e| panic!("bench config: {e}"));
    let rt = Runtime::build(config).unwrap_or_else(|e| panic!("bench runtime: {e:?}"));

    let cases = [
        Case {
            alg: Algorithm::RS256,
            iss: "https://rs.bench",
            key: EncodingKey::from_rsa_pem(rsa.serialize_pem().as_bytes()).expect("rsa"),
        },
        Case {
            alg: Algorithm::ES256,
            iss: "https://es.bench",
            key: EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).expect("ec"),
        },
        Case {
            alg: Algorithm::EdDSA,
            iss: "https://ed.bench",
            key: EncodingKey::from_ed_pem(ed.serialize_pem().as_bytes()).expect("ed"),
        },
        Case {
            alg: Algorithm::HS256,
            iss: "https://hs.bench",
            key: EncodingKey::from_secret(&hmac),
        },
    ];

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let mint = |c: &Case, n: usize| -> String {
        let claims = json!({
            "iss": c.iss, "sub": format!("customer-{}", n % 1000), "aud": "chat-gateway",
            "scope": "chat paybill", "iat": now, "exp": now + 900,
            "jti": format!("bench-{n:08}"),
        });
        let mut header = Header::new(c.alg);
        header.kid = Some("bench-key".into());
        jsonwebtoken::encode(&header, &claims, &c.key).expect("sign")
    };

    println!(
        "verify_cost: {first_n} fresh tokens per alg (first verification), {hits_n} cache hits, best of {rounds} rounds"
    );
    let mut rows = Vec::new();
    let mut serial = 0usize;
    for c in &cases {
        let mut best_first = Duration::MAX;
        let mut best_hit = Duration::MAX;
        for _ in 0..rounds {
            // Fresh tokens, minted outside the timed loop.
            let tokens: Vec<String> = (0..first_n)
                .map(|_| {
                    serial += 1;
                    mint(c, serial)
                })
                .collect();
            let t = Instant::now();
            for tok in &tokens {
                let (r, _) = authgate::pipeline::verify::jwt(&rt, black_box(tok), now, None);
                assert!(r.is_ok(), "{:?}: {:?}", c.alg, r.err());
                black_box(r.ok());
            }
            best_first = best_first.min(t.elapsed() / first_n as u32);

            let tok = tokens.last().expect("a token");
            let (warm, _) = authgate::pipeline::verify::jwt(&rt, tok, now, None);
            assert!(warm.is_ok());
            let t = Instant::now();
            for _ in 0..hits_n {
                let (r, outcome) = authgate::pipeline::verify::jwt(&rt, black_box(tok), now, None);
                debug_assert_eq!(outcome, authgate::pipeline::verify::CacheOutcome::Hit);
                black_box(r.ok());
            }
            best_hit = best_hit.min(t.elapsed() / hits_n as u32);
        }
        rows.push((c.alg, best_first, best_hit));
    }

    let us = |d: Duration| d.as_nanos() as f64 / 1000.0;
    println!();
    println!("| alg | first verification (µs/token) | cache hit (µs/token) | first / hit |");
    println!("|---|---:|---:|---:|");
    for (alg, first, hit) in &rows {
        println!(
            "| {alg:?} | {:.2} | {:.3} | {:.0}× |",
            us(*first),
            us(*hit),
            us(*first) / us(*hit)
        );
    }
    let rs_first = rows
        .iter()
        .find(|r| r.0 == Algorithm::RS256)
        .map(|r| us(r.1))
        .unwrap_or(f64::NAN);
    let worst_hit = rows.iter().map(|r| us(r.2)).fold(0.0, f64::max);
    let ratio = rs_first / worst_hit;
    println!();
    println!(
        "RS256 first / slowest cache hit = {ratio:.0}× (target ≥ 20×): {}",
        if ratio >= 20.0 { "OK" } else { "BELOW TARGET" }
    );
    if std::env::var_os("VERIFY_COST_STRICT").is_some() && ratio < 20.0 {
        std::process::exit(1);
    }
}
