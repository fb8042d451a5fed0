//! `authgate token`: mint a signed test token — the "simulate the login
//! process" that end-to-end and load tests need. The algorithm is inferred
//! from the key unless given: RSA → RS256, EC P-256 → ES256, P-384 → ES384,
//! Ed25519 → EdDSA, anything that is not PEM → an HMAC secret (HS256).

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value};
use std::path::Path;

/// What to put in the token.
#[derive(Debug, Clone, Default)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub scopes: Vec<String>,
    /// Seconds from now until `exp`; negative mints an expired token.
    pub ttl_secs: i64,
    /// Extra claims (`--claim NAME=JSON`), applied last.
    pub extra: Vec<(String, Value)>,
    pub kid: Option<String>,
}

/// The kind of key a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
    Secret,
}

const OID_RSA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01];
const OID_P256: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2B, 0x81, 0x04, 0x00, 0x22];
const OID_ED25519: &[u8] = &[0x2B, 0x65, 0x70];

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Classifies a private key file.
pub fn key_kind(bytes: &[u8]) -> Result<KeyKind, String> {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Ok(KeyKind::Secret);
    };
    if !text.contains("-----BEGIN ") {
        return Ok(KeyKind::Secret);
    }
    if text.contains("BEGIN RSA PRIVATE KEY") {
        return Ok(KeyKind::Rsa);
    }
    if text.contains("BEGIN EC PRIVATE KEY") {
        return Err("SEC1 \"EC PRIVATE KEY\" files are not supported; convert with `openssl pkcs8 -topk8 -nocrypt -in KEY -out key.pk8.pem`".into());
    }
    if !text.contains("BEGIN PRIVATE KEY") {
        return Err("expected a PEM private key (PKCS#8 \"PRIVATE KEY\" or \"RSA PRIVATE KEY\") or an HMAC secret file".into());
    }
    let body: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN PRIVATE KEY"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .map_err(|_| "the PEM body is not base64".to_string())?;
    if contains(&der, OID_RSA) {
        Ok(KeyKind::Rsa)
    } else if contains(&der, OID_P256) {
        Ok(KeyKind::EcP256)
    } else if contains(&der, OID_P384) {
        Ok(KeyKind::EcP384)
    } else if contains(&der, OID_ED25519) {
        Ok(KeyKind::Ed25519)
    } else {
        Err("unsupported private key type (RSA, EC P-256/P-384 and Ed25519 are)".into())
    }
}

fn default_alg(kind: KeyKind) -> Algorithm {
    match kind {
        KeyKind::Rsa => Algorithm::RS256,
        KeyKind::EcP256 => Algorithm::ES256,
        KeyKind::EcP384 => Algorithm::ES384,
        KeyKind::Ed25519 => Algorithm::EdDSA,
        KeyKind::Secret => Algorithm::HS256,
    }
}

/// Reads the key file and builds the signing key for `alg`.
pub fn encoding_key(path: &Path, alg: Option<&str>) -> Result<(EncodingKey, Algorithm), String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let kind = key_kind(&bytes)?;
    let alg = match alg {
        None => default_alg(kind),
        Some("none") => return Err("alg `none` is never minted".into()),
        Some(a) => a.parse().map_err(|_| format!("unknown algorithm `{a}`"))?,
    };
    let bad = |e: jsonwebtoken::errors::Error| {
        format!("`{}` is not usable for {alg:?}: {e}", path.display())
    };
    let key = match (kind, alg.family()) {
        (KeyKind::Secret, jsonwebtoken::AlgorithmFamily::Hmac) => {
            let mut b = bytes;
            if b.last() == Some(&b'\n') {
                b.pop();
                if b.last() == Some(&b'\r') {
                    b.pop();
                }
            }
            EncodingKey::from_secret(&b)
        }
        (KeyKind::Rsa, jsonwebtoken::AlgorithmFamily::Rsa) => {
            EncodingKey::from_rsa_pem(&bytes).map_err(bad)?
        }
        (KeyKind::EcP256 | KeyKind::EcP384, jsonwebtoken::AlgorithmFamily::Ec) => {
            EncodingKey::from_ec_pem(&bytes).map_err(bad)?
        }
        (KeyKind::Ed25519, jsonwebtoken::AlgorithmFamily::Ed) => {
            EncodingKey::from_ed_pem(&bytes).map_err(bad)?
        }
        (k, _) => return Err(format!("a {k:?} key cannot sign {alg:?}")),
    };
    Ok((key, alg))
}

/// Mints a token; `now` is Unix seconds.
pub fn mint(
    key: &EncodingKey,
    alg: Algorithm,
    claims: &Claims,
    now: i64,
) -> Result<String, String> {
    let mut map = Map::new();
    map.insert("iss".into(), Value::from(claims.iss.clone()));
    map.insert("sub".into(), Value::from(claims.sub.clone()));
    match claims.aud.len() {
        0 => {}
        1 => {
            map.insert("aud".into(), Value::from(claims.aud[0].clone()));
        }
        _ => {
            map.insert("aud".into(), Value::from(claims.aud.clone()));
        }
    }
    if !claims.scopes.is_empty() {
        map.insert("scope".into(), Value::from(claims.scopes.join(" ")));
    }
    map.insert("iat".into(), Value::from(now));
    map.insert(
        "exp".into(),
        Value::from(now.saturating_add(claims.ttl_secs)),
    );
    for (k, v) in &claims.extra {
        map.insert(k.clone(), v.clone());
    }
    let mut header = Header::new(alg);
    header.kid = claims.kid.clone();
    jsonwebtoken::encode(&header, &Value::Object(map), key)
        .map_err(|e| format!("signing failed: {e}"))
}

/// Parses `NAME=JSON`; a value that is not JSON is taken as a string.
pub fn parse_claim(s: &str) -> Result<(String, Value), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not NAME=JSON"))?;
    if name.is_empty() {
        return Err(format!("`{s}` has an empty claim name"));
    }
    let v = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
    Ok((name.to_owned(), v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_parse() {
        assert_eq!(
            parse_claim("n=5").expect("ok"),
            ("n".into(), Value::from(5))
        );
        assert_eq!(
            parse_claim("s=abc").expect("ok"),
            ("s".into(), Value::from("abc"))
        );
        assert_eq!(
            parse_claim("o={\"a\":1}").expect("ok").1,
            serde_json::json!({"a": 1})
        );
        assert!(parse_claim("novalue").is_err());
        assert!(parse_claim("=1").is_err());
    }

    #[test]
    fn kinds() {
        assert_eq!(key_kind(b"some secret").expect("ok"), KeyKind::Secret);
        assert!(key_kind(b"-----BEGIN EC PRIVATE KEY-----\n").is_err());
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        assert_eq!(
            key_kind(kp.serialize_pem().as_bytes()).expect("ok"),
            KeyKind::EcP256
        );
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
        assert_eq!(
            key_kind(kp.serialize_pem().as_bytes()).expect("ok"),
            KeyKind::Ed25519
        );
    }
}
