#![no_main]
//! JWT verification (`pipeline::verify::jwt`) on hostile tokens, against a
//! runtime with one HS256 issuer whose secret this target knows.
//!
//! The first input byte picks the mode:
//! - even: the rest, as text, is the token. It must be refused: nothing
//!   made up without the secret may verify.
//! - odd: the rest is split at the first NUL into a JOSE header and a claim
//!   set (any bytes), base64url-encoded and **correctly signed** with the
//!   secret. That reaches every claim check behind the signature; whatever
//!   is accepted must satisfy them: an `HS256` header without `crit`, the
//!   issuer's `iss` and audience, a numeric `exp` not passed (with the
//!   leeway), `nbf`/`iat` not in the future, and a customer id and scopes
//!   that are valid header values.
//!
//! Never a panic, in either mode.
use authgate::config::Config;
use authgate::pipeline::verify;
use authgate::runtime::Runtime;
use aws_lc_rs::hmac;
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use std::path::Path;
use std::sync::OnceLock;

const SECRET: &str = "fuzz-only-secret-0123456789abcdef";
const ISS: &str = "https://issuer.fuzz.test";
const NOW: u64 = 1_800_000_000;
const LEEWAY: u64 = 30;

fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        // SAFETY: set once, before any other thread of this process exists.
        unsafe { std::env::set_var("AUTHGATE_FUZZ_HS_SECRET", SECRET) };
        let config = Config::parse(
            &format!(
                r#"
[listen]
addr = "127.0.0.1:0"

[identity]
pseudonymize = false

[upstreams.app]
url = "http://127.0.0.1:9"

[[issuers]]
name = "hs"
iss = "{ISS}"
audiences = ["chat"]
algorithms = ["HS256"]
secret_env = "AUTHGATE_FUZZ_HS_SECRET"
leeway = "{LEEWAY}s"
context_claim = "lwicontexts"

[[routes]]
name = "r"
path = "/x"
upstream = "app"
auth = "required"
"#
            ),
            Path::new("/nonexistent/gateway.toml"),
        )
        .expect("the fuzz configuration parses");
        Runtime::build(config).expect("the fuzz configuration builds")
    })
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn time(claims: &Map<String, Value>, name: &str) -> Option<u64> {
    let n = claims.get(name)?.as_number()?;
    n.as_u64().or_else(|| n.as_f64().map(|f| f.floor() as u64))
}

fuzz_target!(|data: &[u8]| {
    let rt = runtime();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let Ok(token) = std::str::from_utf8(rest) else {
            return;
        };
        let (result, _) = verify::jwt(rt, token, NOW, None);
        assert!(result.is_err(), "a token made up without the secret verified");
        return;
    }

    let (header, claims) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &b"{}"[..]),
    };
    let signing_input = format!("{}.{}", b64(header), b64(claims));
    let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes());
    let tag = hmac::sign(&key, signing_input.as_bytes());
    let token = format!("{signing_input}.{}", b64(tag.as_ref()));
    let (result, _) = verify::jwt(rt, &token, NOW, None);
    let Ok(v) = result else {
        return;
    };

    let header: Map<String, Value> =
        serde_json::from_slice(header).expect("accepted: the header is a JSON object");
    assert_eq!(header.get("alg").and_then(Value::as_str), Some("HS256"));
    assert!(!header.contains_key("crit"));
    let claims: Map<String, Value> =
        serde_json::from_slice(claims).expect("accepted: the claims are a JSON object");
    assert_eq!(claims.get("iss").and_then(Value::as_str), Some(ISS));
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == "chat",
        Some(Value::Array(l)) => l.iter().any(|a| a.as_str() == Some("chat")),
        _ => false,
    };
    assert!(aud_ok, "accepted without the audience");
    let exp = time(&claims, "exp").expect("accepted: exp is a number");
    assert!(NOW <= exp.saturating_add(LEEWAY), "accepted after exp");
    if let Some(nbf) = time(&claims, "nbf") {
        assert!(nbf <= NOW + LEEWAY, "accepted before nbf");
    }
    if let Some(iat) = time(&claims, "iat") {
        assert!(iat <= NOW + LEEWAY, "accepted with iat in the future");
    }
    assert!(v.valid_until <= exp.saturating_add(LEEWAY));
    let sub = claims.get("sub").and_then(Value::as_str).unwrap_or("");
    assert!(!sub.is_empty());
    assert_eq!(v.customer_id.as_bytes(), sub.as_bytes());
    assert!(v
        .scopes
        .iter()
        .all(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')));
    assert!(v.scopes.windows(2).all(|w| w[0] < w[1]), "scopes sorted, unique");

    // The second time comes from the cache, and says the same.
    let (again, outcome) = verify::jwt(rt, &token, NOW, None);
    assert_eq!(outcome, verify::CacheOutcome::Hit);
    let again = again.expect("a cached verification stays valid until valid_until");
    assert_eq!(again.customer_id, v.customer_id);
});
