//! The signed identity assertion (`[identity.assertion]`): a short-lived JWT
//! signed by the gateway (ES256 or EdDSA) in `x-authgate-assertion`, so a
//! backend that must not trust network position can verify what it
//! receives. Its public key is served at the admin `/.well-known/jwks.json`.

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use serde_json::json;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use std::path::Path;

/// Signs assertions. No `Debug`: it holds a private key.
pub struct AssertionSigner {
    key: EncodingKey,
    /// `alg` and `kid`, built once.
    header: Header,
    pub kid: String,
    pub ttl_secs: u64,
    /// The public JWK Set document, pre-rendered.
    pub jwks: String,
}

impl AssertionSigner {
    /// Loads a PKCS#8 PEM private key for `alg` ("ES256" or "EdDSA").
    pub fn load(path: &Path, alg: &str, ttl_secs: u64) -> Result<AssertionSigner, String> {
        let pem = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
        let pair = rcgen::KeyPair::from_pem(&pem)
            .map_err(|e| format!("`{}` is not a PKCS#8 private key: {e}", path.display()))?;
        let raw = pair.public_key_raw().to_vec();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let kid = b64(&Sha256::digest(&raw)[..12]);
        let (alg, key, jwk) = match alg {
            "ES256" => {
                if !pair.is_compatible(&rcgen::PKCS_ECDSA_P256_SHA256) || raw.len() != 65 {
                    return Err("alg ES256 needs a P-256 key".into());
                }
                let key =
                    EncodingKey::from_ec_pem(pem.as_bytes()).map_err(|e| format!("key: {e}"))?;
                let jwk = json!({"kty": "EC", "crv": "P-256", "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
                                 "alg": "ES256", "use": "sig", "kid": kid});
                (Algorithm::ES256, key, jwk)
            }
            "EdDSA" => {
                if !pair.is_compatible(&rcgen::PKCS_ED25519) {
                    return Err("alg EdDSA needs an Ed25519 key".into());
                }
                let key =
                    EncodingKey::from_ed_pem(pem.as_bytes()).map_err(|e| format!("key: {e}"))?;
                let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&raw),
                                 "alg": "EdDSA", "use": "sig", "kid": kid});
                (Algorithm::EdDSA, key, jwk)
            }
            other => return Err(format!("alg `{other}` is not ES256 or EdDSA")),
        };
        let mut header = Header::new(alg);
        header.kid = Some(kid.clone());
        Ok(AssertionSigner {
            key,
            header,
            kid,
            ttl_secs,
            jwks: json!({ "keys": [jwk] }).to_string(),
        })
    }

    /// Signs the assertion for one request. `ctx` is the verified context,
    /// already compact JSON: it is embedded as it is, not parsed again.
    pub fn sign(
        &self,
        customer_id: &str,
        scopes: &str,
        ctx: Option<&RawValue>,
        request_id: &str,
        now: u64,
    ) -> Option<String> {
        #[derive(Serialize)]
        struct Claims<'a> {
            iss: &'static str,
            sub: &'a str,
            scope: &'a str,
            iat: u64,
            exp: u64,
            jti: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            ctx: Option<&'a RawValue>,
        }
        let claims = Claims {
            iss: "authgate",
            sub: customer_id,
            scope: scopes,
            iat: now,
            exp: now + self.ttl_secs,
            jti: request_id,
            ctx,
        };
        jsonwebtoken::encode(&self.header, &claims, &self.key).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The verified context goes in as a JSON object (not a string), the
    /// other claims as given, and no `ctx` at all without a context.
    #[test]
    fn claims_embed_the_context_as_json() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("a.pem");
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        std::fs::write(&path, pair.serialize_pem()).expect("write");
        let signer = AssertionSigner::load(&path, "ES256", 60).expect("signer");
        let payload = |jwt: &str| -> serde_json::Value {
            let part = jwt.split('.').nth(1).expect("payload");
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .expect("base64url");
            serde_json::from_slice(&bytes).expect("json")
        };
        let ctx: Box<RawValue> =
            serde_json::from_str(r#"{"msdyn_isvip":"true","n":5}"#).expect("raw");
        let jwt = signer
            .sign("cid_1", "chat extra", Some(&ctx), "req-1", 1_000)
            .expect("signed");
        let c = payload(&jwt);
        assert_eq!(
            c,
            json!({"iss": "authgate", "sub": "cid_1", "scope": "chat extra", "iat": 1000,
                   "exp": 1060, "jti": "req-1", "ctx": {"msdyn_isvip": "true", "n": 5}})
        );
        let header = jsonwebtoken::decode_header(&jwt).expect("header");
        assert_eq!(header.kid.as_deref(), Some(signer.kid.as_str()));
        let bare = signer
            .sign("cid_1", "", None, "req-2", 1_000)
            .expect("signed");
        assert!(payload(&bare).get("ctx").is_none());
    }
}
