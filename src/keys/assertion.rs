//! The signed identity assertion (`[identity.assertion]`): a short-lived JWT
//! signed by the gateway (ES256 or EdDSA) in `x-authgate-assertion`, so a
//! backend that must not trust network position can verify what it
//! receives. Its public key is served at the admin `/.well-known/jwks.json`.

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::Path;

/// Signs assertions. No `Debug`: it holds a private key.
pub struct AssertionSigner {
    key: EncodingKey,
    alg: Algorithm,
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
        Ok(AssertionSigner {
            key,
            alg,
            kid,
            ttl_secs,
            jwks: json!({ "keys": [jwk] }).to_string(),
        })
    }

    /// Signs the assertion for one request.
    pub fn sign(
        &self,
        customer_id: &str,
        scopes: &str,
        ctx: Option<Value>,
        request_id: &str,
        now: u64,
    ) -> Option<String> {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        let mut claims = json!({
            "iss": "authgate",
            "sub": customer_id,
            "scope": scopes,
            "iat": now,
            "exp": now + self.ttl_secs,
            "jti": request_id,
        });
        if let (Some(ctx), Some(map)) = (ctx, claims.as_object_mut()) {
            map.insert("ctx".into(), ctx);
        }
        jsonwebtoken::encode(&header, &claims, &self.key).ok()
    }
}
