//! Verification keys: static PEM files and JWK Sets, HMAC secrets, and the
//! JWKS store that later refreshes them.
//!
//! The contract: a key carries its own family (and, from a JWK, its own
//! `alg`); the token header only *selects* among keys whose family matches
//! an algorithm the issuer allows. An HMAC secret is never a candidate for a
//! public-key algorithm and a public key never for an HMAC one, so the
//! classic "HS256 signed with the RSA public key" confusion cannot happen.

pub mod assertion;
pub mod introspect;
pub mod jwks;
pub mod refresh;

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use secrecy::{ExposeSecret, SecretSlice};
use std::path::Path;
use std::sync::Arc;

/// One key able to verify signatures.
pub struct VerifyKey {
    /// The JWK `kid`, if any (PEM keys have none).
    pub kid: Option<String>,
    /// The JWK `alg`, if any: the only algorithm this key verifies.
    pub alg: Option<Algorithm>,
    pub family: AlgorithmFamily,
    pub key: DecodingKey,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material (an HMAC secret lives here too).
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("family", &self.family)
            .finish_non_exhaustive()
    }
}

impl VerifyKey {
    /// Whether this key may verify a token signed with `alg`.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        self.family == alg.family() && self.alg.is_none_or(|a| a == alg)
    }

    /// Verifies `signature` (base64url) over `message` with `alg`.
    pub fn verify(&self, alg: Algorithm, message: &[u8], signature: &str) -> bool {
        self.accepts(alg)
            && jsonwebtoken::crypto::verify(signature, message, &self.key, alg).unwrap_or(false)
    }
}

/// The keys of one issuer at one moment. Immutable; replaced whole.
#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: Vec<VerifyKey>,
}

impl KeySet {
    /// Keys that may verify a token with this `kid` and `alg`: keys with the
    /// same `kid`, plus keys without one (PEM files). Without a token `kid`,
    /// every key of the right family.
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a VerifyKey> + 'a {
        self.keys.iter().filter(move |k| {
            k.accepts(alg)
                && match (kid, k.kid.as_deref()) {
                    (Some(want), Some(have)) => want == have,
                    _ => true,
                }
        })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Reads one `keys = [...]` entry: a PEM public key or certificate, or a JWK
/// Set file (recognised by a leading `{`).
pub fn load_key_file(path: &Path) -> Result<Vec<VerifyKey>, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let trimmed = bytes.trim_ascii_start();
    if trimmed.first() == Some(&b'{') {
        return parse_jwks(trimmed).map_err(|e| format!("`{}`: {e}", path.display()));
    }
    parse_public_pem(&bytes)
        .map(|k| vec![k])
        .map_err(|e| format!("`{}`: {e}", path.display()))
}

/// A PEM `PUBLIC KEY`, `RSA PUBLIC KEY` or `CERTIFICATE`.
pub fn parse_public_pem(pem: &[u8]) -> Result<VerifyKey, String> {
    let text = std::str::from_utf8(pem).map_err(|_| "not a PEM file".to_string())?;
    if text.contains("PRIVATE KEY") {
        return Err("holds a PRIVATE key; give the gateway only the public key".into());
    }
    if !text.contains("-----BEGIN ") {
        return Err("not a PEM public key, certificate, or JWK Set".into());
    }
    type Parse = fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>;
    let attempts: [(AlgorithmFamily, Parse); 3] = [
        (AlgorithmFamily::Rsa, DecodingKey::from_rsa_pem),
        (AlgorithmFamily::Ec, DecodingKey::from_ec_pem),
        (AlgorithmFamily::Ed, DecodingKey::from_ed_pem),
    ];
    for (family, parse) in attempts {
        if let Ok(key) = parse(pem) {
            return Ok(VerifyKey {
                kid: None,
                alg: None,
                family,
                key,
            });
        }
    }
    Err(
        "unsupported PEM key (RSA, EC P-256/P-384 or Ed25519 public keys and certificates are)"
            .into(),
    )
}

/// Parses a JWK Set. Keys with `use` other than `sig`, symmetric (`oct`)
/// keys, keys for encryption algorithms and malformed keys are skipped; a
/// set left without any usable key is an error.
pub fn parse_jwks(bytes: &[u8]) -> Result<Vec<VerifyKey>, String> {
    let set: JwkSet = serde_json::from_slice(bytes).map_err(|e| format!("not a JWK Set: {e}"))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
            continue;
        }
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa,
            AlgorithmParameters::EllipticCurve(_) => AlgorithmFamily::Ec,
            AlgorithmParameters::OctetKeyPair(_) => AlgorithmFamily::Ed,
            AlgorithmParameters::OctetKey(_) => continue,
        };
        let alg = match jwk.common.key_algorithm {
            None => None,
            Some(ka) => match ka.to_string().parse::<Algorithm>() {
                Ok(a) if a.family() == family => Some(a),
                _ => continue,
            },
        };
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        keys.push(VerifyKey {
            kid: jwk.common.key_id.clone(),
            alg,
            family,
            key,
        });
    }
    if keys.is_empty() {
        return Err("no usable signing key in the set".into());
    }
    Ok(keys)
}

/// The key set made of an HMAC secret.
pub fn hmac_keyset(secret: &SecretSlice<u8>) -> KeySet {
    KeySet {
        keys: vec![VerifyKey {
            kid: None,
            alg: None,
            family: AlgorithmFamily::Hmac,
            key: DecodingKey::from_secret(secret.expose_secret()),
        }],
    }
}

/// Reads a secret from an environment variable or a file (raw bytes; one
/// trailing newline of a file is not part of it). Errors never echo it.
pub fn load_secret(env: Option<&str>, file: Option<&Path>) -> Result<SecretSlice<u8>, String> {
    let bytes = match (env, file) {
        (Some(var), _) => match std::env::var_os(var) {
            Some(v) if !v.is_empty() => v.into_encoded_bytes(),
            Some(_) => return Err(format!("environment variable `{var}` is empty")),
            None => return Err(format!("environment variable `{var}` is not set")),
        },
        (None, Some(path)) => {
            let mut b = std::fs::read(path)
                .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
            if b.last() == Some(&b'\n') {
                b.pop();
                if b.last() == Some(&b'\r') {
                    b.pop();
                }
            }
            if b.is_empty() {
                return Err(format!("`{}` is empty", path.display()));
            }
            b
        }
        (None, None) => return Err("no secret source".into()),
    };
    Ok(SecretSlice::from(bytes))
}

/// Where an issuer's keys come from.
pub enum KeySource {
    /// Loaded once at startup / reload.
    Static(Arc<KeySet>),
    /// Fetched from `jwks_url` and refreshed.
    Jwks(Arc<jwks::JwksStore>),
}

impl KeySource {
    /// The current keys, or `None` when a JWKS never loaded.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        match self {
            KeySource::Static(k) => Some(k.clone()),
            KeySource::Jwks(store) => store.current(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_keys_and_garbage_are_refused() {
        assert!(parse_public_pem(
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        )
        .expect_err("private")
        .contains("PRIVATE"));
        assert!(parse_public_pem(b"hello").is_err());
        assert!(parse_jwks(b"{\"keys\": []}").is_err());
        assert!(parse_jwks(b"{\"keys\": [{\"kty\":\"oct\",\"k\":\"c2VjcmV0\"}]}").is_err());
        assert!(parse_jwks(b"<html>").is_err());
    }

    #[test]
    fn jwks_keeps_kid_alg_and_skips_encryption_keys() {
        let set = br#"{"keys":[
            {"kty":"EC","crv":"P-256","kid":"a","alg":"ES256","use":"sig",
             "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty":"EC","crv":"P-256","kid":"b","use":"enc",
             "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty":"EC","crv":"P-256","kid":"c","alg":"RS256",
             "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
        ]}"#;
        let keys = parse_jwks(set).expect("one usable key");
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("a"));
        let ks = KeySet { keys };
        assert_eq!(ks.candidates(Some("a"), Algorithm::ES256).count(), 1);
        assert_eq!(ks.candidates(Some("a"), Algorithm::ES384).count(), 0);
        assert_eq!(ks.candidates(Some("z"), Algorithm::ES256).count(), 0);
        assert_eq!(ks.candidates(None, Algorithm::HS256).count(), 0);
    }

    #[test]
    fn secret_file_loses_one_trailing_newline() {
        let dir = std::env::temp_dir().join(format!("authgate-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let p = dir.join("s");
        std::fs::write(&p, b"abc\n\n").expect("write");
        let s = load_secret(None, Some(&p)).expect("secret");
        assert_eq!(s.expose_secret(), b"abc\n");
        std::fs::write(&p, b"\n").expect("write");
        assert!(load_secret(None, Some(&p)).is_err());
        assert!(load_secret(Some("AUTHGATE_SURELY_UNSET_VAR"), None)
            .expect_err("unset")
            .contains("not set"));
    }
}
