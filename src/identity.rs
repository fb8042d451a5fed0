//! Who the request is: `Identity::Authenticated` with verified data, or
//! `Identity::Anonymous`. And the opaque customer id: `cid_` + unpadded
//! base64url of HMAC-SHA256(key, namespace ‖ 0x00 ‖ subject), so the same
//! subject in the same namespace always maps to the same id, different
//! namespaces never collide, and only the key holder can trace it back.

use base64::Engine;
use hmac::{Hmac, Mac};
use http::HeaderValue;
use secrecy::{ExposeSecret, SecretSlice};
use sha2::Sha256;
use std::sync::Arc;

/// What verification established about a token. Cached by token hash.
#[derive(Debug)]
pub struct Verified {
    /// Index of the issuer in the runtime.
    pub issuer: usize,
    /// The forwarded customer id (pseudonymized or the raw subject).
    pub customer_id: HeaderValue,
    /// Granted scopes, sorted and de-duplicated.
    pub scopes: Vec<String>,
    /// The granted scopes as the forwarded header value.
    pub scopes_header: HeaderValue,
    /// `exp`, Unix seconds, when the token has one (an introspection answer
    /// may not); otherwise the end of the cached validity.
    pub exp: u64,
    /// `x-authgate-token-expires`: only when `exp` is the token's own.
    pub exp_header: Option<HeaderValue>,
    /// The last second at which this result may be reused without
    /// re-verifying (exp + leeway, or earlier with `max_age`).
    pub valid_until: u64,
    /// Verified `context_claim` members as compact ASCII JSON.
    pub context: Option<HeaderValue>,
    /// The verified top-level claims that `match_claims` needs.
    pub claims: serde_json::Map<String, serde_json::Value>,
}

/// The outcome of authentication for one request.
#[derive(Debug, Clone)]
pub enum Identity {
    Authenticated(Arc<Verified>),
    Anonymous,
}

impl Identity {
    pub fn label(&self) -> &'static str {
        match self {
            Identity::Authenticated(_) => "authenticated",
            Identity::Anonymous => "anonymous",
        }
    }

    pub fn customer_id(&self) -> Option<&str> {
        match self {
            Identity::Authenticated(v) => v.customer_id.to_str().ok(),
            Identity::Anonymous => None,
        }
    }
}

/// The pseudonymization key, pre-keyed. No `Debug`: it is a secret.
pub struct CustomerIdKey {
    mac: Hmac<Sha256>,
}

impl CustomerIdKey {
    pub fn new(key: &SecretSlice<u8>) -> CustomerIdKey {
        // HMAC accepts keys of any length; `new_from_slice` cannot fail.
        let mac = match Hmac::<Sha256>::new_from_slice(key.expose_secret()) {
            Ok(m) => m,
            Err(_) => unreachable_hmac(),
        };
        CustomerIdKey { mac }
    }

    /// `cid_` + base64url(HMAC-SHA256(key, namespace ‖ 0x00 ‖ subject)).
    pub fn customer_id(&self, namespace: &str, subject: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(namespace.as_bytes());
        mac.update(&[0]);
        mac.update(subject.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut out = String::with_capacity(4 + 43);
        out.push_str("cid_");
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(digest, &mut out);
        out
    }
}

#[cold]
fn unreachable_hmac() -> ! {
    // Hmac::new_from_slice only fails for fixed-size-key MACs.
    std::process::abort()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(bytes: &[u8]) -> CustomerIdKey {
        CustomerIdKey::new(&SecretSlice::from(bytes.to_vec()))
    }

    #[test]
    fn matches_the_documented_construction() {
        // Independent computation of the SPEC formula.
        let mut mac = Hmac::<Sha256>::new_from_slice(b"k3y").expect("hmac");
        mac.update(b"customers\0alice");
        let want = format!(
            "cid_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        );
        assert_eq!(key(b"k3y").customer_id("customers", "alice"), want);
        assert_eq!(want.len(), 4 + 43);
    }

    #[test]
    fn namespaces_and_keys_separate_ids() {
        let k = key(b"k3y");
        assert_eq!(k.customer_id("a", "bob"), k.customer_id("a", "bob"));
        assert_ne!(k.customer_id("a", "bob"), k.customer_id("b", "bob"));
        // The separator stops ("ab","c") colliding with ("a","bc").
        assert_ne!(k.customer_id("ab", "c"), k.customer_id("a", "bc"));
        assert_ne!(
            k.customer_id("a", "bob"),
            key(b"other").customer_id("a", "bob")
        );
    }
}
