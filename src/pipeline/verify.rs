//! Verify: turn a token into a [`Verified`] identity (SPEC §4).
//!
//! Order matters: the signature is checked before any claim, so a forged
//! token never learns whether it is "expired" rather than "invalid". The
//! algorithm must be on the issuer's allow-list *and* match the key's own
//! family; `none`, `crit`, and unknown issuers are refused; `jku`/`x5u`/`jwk`
//! header parameters are ignored, never followed. Results are cached by the
//! SHA-256 of the token and never reused past `exp` (+ leeway) or `max_age`.

use crate::error::Rejection;
use crate::identity::Verified;
use crate::runtime::{IssuerRt, Runtime};
use base64::Engine;
use http::HeaderValue;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// A refusal and the reason, for the log only (never sent to the client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub rejection: Rejection,
    pub reason: &'static str,
}

/// The reason given when no key matches the token's `kid`/`alg`; for a JWKS
/// issuer it triggers a refetch.
pub const NO_KEY: &str = "no key for kid/alg";

/// The JWKS store of the issuer a JWT names, if it has one.
pub fn jwks_store_for(rt: &Runtime, token: &str) -> Option<Arc<crate::keys::jwks::JwksStore>> {
    let payload = token.split('.').nth(1)?;
    let claims: Map<String, Value> = serde_json::from_slice(&b64(payload).ok()?).ok()?;
    let idx = rt.issuer_by_iss(claims.get("iss")?.as_str()?)?;
    match &rt.issuers[idx].keys {
        crate::keys::KeySource::Jwks(s) => Some(s.clone()),
        crate::keys::KeySource::Static(_) => None,
    }
}

/// An `invalid_token` refusal (shared with introspection).
pub(crate) fn invalid(reason: &'static str) -> Denied {
    Denied {
        rejection: Rejection::InvalidToken,
        reason,
    }
}

/// Whether a token has the JWT shape (three dot-separated parts).
pub fn is_jwt_shaped(token: &str) -> bool {
    token.bytes().filter(|&b| b == b'.').count() == 2
}

/// The cache key of a token.
pub fn cache_key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// How verification went, for the cache metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit,
    Miss,
}

/// Verifies a JWT, using and filling the cache. `allowed` is the route's
/// issuer list, applied as soon as `iss` picks the issuer (and on hits).
pub fn jwt(
    rt: &Runtime,
    token: &str,
    now: u64,
    allowed: Option<&[usize]>,
) -> (Result<Arc<Verified>, Denied>, CacheOutcome) {
    let key = cache_key(token);
    if let Some(v) = cached(rt, &key, now) {
        return (check_allowed(v, allowed), CacheOutcome::Hit);
    }
    let result = verify_uncached(rt, token, now, allowed).map(Arc::new);
    if let Ok(v) = &result {
        rt.token_cache.insert(key, v.clone());
    }
    (result, CacheOutcome::Miss)
}

/// A cached verification still inside its validity, if any.
pub fn cached(rt: &Runtime, key: &[u8; 32], now: u64) -> Option<Arc<Verified>> {
    let v = rt.token_cache.get(key)?;
    if now <= v.valid_until {
        return Some(v);
    }
    rt.token_cache.remove(key);
    None
}

/// The route's issuer list, applied to a (cached) verification.
pub fn check_allowed(v: Arc<Verified>, allowed: Option<&[usize]>) -> Result<Arc<Verified>, Denied> {
    match allowed {
        Some(list) if !list.contains(&v.issuer) => Err(invalid("issuer not allowed on route")),
        _ => Ok(v),
    }
}

fn b64(part: &str) -> Result<Vec<u8>, Denied> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| invalid("malformed base64"))
}

fn verify_uncached(
    rt: &Runtime,
    token: &str,
    now: u64,
    allowed: Option<&[usize]>,
) -> Result<Verified, Denied> {
    let mut parts = token.splitn(3, '.');
    let (Some(h64), Some(p64), Some(sig)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(invalid("not a JWT"));
    };
    if h64.is_empty() || p64.is_empty() || sig.is_empty() || sig.contains('.') {
        return Err(invalid("empty or extra JWT part"));
    }
    let header: Map<String, Value> =
        serde_json::from_slice(&b64(h64)?).map_err(|_| invalid("header is not a JSON object"))?;
    if header.contains_key("crit") {
        return Err(invalid("crit header"));
    }
    let alg_name = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("no alg"))?;
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.as_str()),
        Some(_) => return Err(invalid("kid is not a string")),
    };
    let claims: Map<String, Value> =
        serde_json::from_slice(&b64(p64)?).map_err(|_| invalid("payload is not a JSON object"))?;
    let iss = claims
        .get("iss")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("no iss"))?;
    let issuer_idx = rt
        .issuer_by_iss(iss)
        .ok_or_else(|| invalid("unknown issuer"))?;
    if allowed.is_some_and(|list| !list.contains(&issuer_idx)) {
        return Err(invalid("issuer not allowed on route"));
    }
    let issuer = &rt.issuers[issuer_idx];
    // `none` and anything unknown fail to parse; the allow-list decides the rest.
    let alg: Algorithm = alg_name.parse().map_err(|_| invalid("unsupported alg"))?;
    if !issuer.algorithms.contains(&alg) {
        return Err(invalid("alg not allowed for issuer"));
    }
    let keys = issuer.keys.current().ok_or(Denied {
        rejection: Rejection::KeysUnavailable,
        reason: "issuer has no keys yet",
    })?;
    let message = &token.as_bytes()[..h64.len() + 1 + p64.len()];
    // At most 8 candidates are tried; whether there was any at all picks
    // the reason (NO_KEY triggers a JWKS refetch).
    let mut tried = 0usize;
    let verified = keys.candidates(kid, alg).take(8).any(|k| {
        tried += 1;
        k.verify(alg, message, sig)
    });
    if !verified {
        return Err(invalid(if tried == 0 { NO_KEY } else { "bad signature" }));
    }
    // Signature good: now the claims.
    let exp = numeric(&claims, "exp")?.ok_or_else(|| invalid("no exp"))?;
    if now > exp.saturating_add(issuer.leeway) {
        return Err(Denied {
            rejection: Rejection::TokenExpired,
            reason: "expired",
        });
    }
    if let Some(nbf) = numeric(&claims, "nbf")? {
        if now.saturating_add(issuer.leeway) < nbf {
            return Err(invalid("not yet valid (nbf)"));
        }
    }
    let iat = numeric(&claims, "iat")?;
    if let Some(iat) = iat {
        if iat > now.saturating_add(issuer.leeway) {
            return Err(invalid("issued in the future (iat)"));
        }
    }
    let mut valid_until = exp.saturating_add(issuer.leeway);
    if let Some(max_age) = issuer.max_age {
        let iat = iat.ok_or_else(|| invalid("max_age needs iat"))?;
        let limit = iat.saturating_add(max_age).saturating_add(issuer.leeway);
        if now > limit {
            return Err(invalid("older than max_age"));
        }
        valid_until = valid_until.min(limit);
    }
    check_audience(issuer, &claims)?;
    finish(rt, issuer_idx, &claims, Some(exp), valid_until)
}

/// `aud` (a string or an array) must name one of the issuer's `audiences`
/// when they are configured; a token without `aud` then fails.
pub fn check_audience(issuer: &IssuerRt, claims: &Map<String, Value>) -> Result<(), Denied> {
    let Some(audiences) = &issuer.audiences else {
        return Ok(());
    };
    let ok = match claims.get("aud") {
        Some(Value::String(a)) => audiences.iter().any(|w| w == a),
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .any(|a| audiences.iter().any(|w| w == a)),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(invalid("audience mismatch"))
    }
}

/// Builds the [`Verified`] from claims that passed every check. Shared with
/// introspection, whose response is a claim set too.
pub fn finish(
    rt: &Runtime,
    issuer_idx: usize,
    claims: &Map<String, Value>,
    exp: Option<u64>,
    valid_until: u64,
) -> Result<Verified, Denied> {
    let issuer: &IssuerRt = &rt.issuers[issuer_idx];
    let subject = rt
        .identity
        .claim
        .get(claims)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid("no customer id claim"))?;
    // A pseudonymized id always passes; a raw subject (no id key) must be
    // a plain header value.
    let customer_id = rt.customer_id(&issuer.namespace, subject);
    if customer_id.len() > 256
        || !customer_id
            .bytes()
            .all(|b| b == b' ' || b.is_ascii_graphic())
    {
        return Err(invalid("subject is not a valid header value"));
    }
    let customer_id = HeaderValue::try_from(customer_id)
        .map_err(|_| invalid("subject is not a valid header value"))?;
    let scopes = scopes(claims, issuer.scope_claim.as_deref())?;
    let context = match &issuer.context_claim {
        Some(name) => match claims.get(name) {
            None => None,
            Some(v) => Some(
                crate::context::parse_lwicontexts(v, issuer.context_keys.as_deref())
                    .map_err(|()| invalid("context claim is not a JSON object of primitives"))?,
            ),
        },
        None => None,
    };
    let kept = rt
        .identity
        .kept_claims
        .iter()
        .filter_map(|k| Some((k.clone(), claims.get(k)?.clone())))
        .collect();
    let scopes_header = HeaderValue::try_from(scopes.join(" ")).map_err(|_| invalid("scope"))?;
    Ok(Verified {
        issuer: issuer_idx,
        customer_id,
        scopes,
        scopes_header,
        exp: exp.unwrap_or(valid_until),
        exp_header: exp.map(HeaderValue::from),
        valid_until,
        context,
        claims: kept,
    })
}

/// A NumericDate claim: absent, or a non-negative number (fractions floored).
/// Shared with introspection, whose `exp`/`nbf` follow the same rules.
pub(crate) fn numeric(
    claims: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<u64>, Denied> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(u) = n.as_u64() {
                Ok(Some(u))
            } else {
                match n.as_f64() {
                    Some(f) if (0.0..1.0e15).contains(&f) => Ok(Some(f.floor() as u64)),
                    _ => Err(invalid("time claim out of range")),
                }
            }
        }
        Some(_) => Err(invalid("time claim is not a number")),
    }
}

/// An RFC 6749 §3.3 scope-token, `1*( %x21 / %x23-5B / %x5D-7E )`: visible
/// ASCII except space, `"` and backslash.
pub(crate) fn is_scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
}

/// Scopes from `scope_claim` (default `scope`, then `scp`): a space-separated
/// string or an array of strings. Sorted, de-duplicated.
pub fn scopes(claims: &Map<String, Value>, claim: Option<&str>) -> Result<Vec<String>, Denied> {
    let value = match claim {
        Some(c) => claims.get(c),
        None => claims.get("scope").or_else(|| claims.get("scp")),
    };
    let mut out: Vec<String> = match value {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => s
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| invalid("scope array holds a non-string"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(invalid("scope claim has the wrong type")),
    };
    if !out.iter().all(|s| is_scope_token(s)) {
        return Err(invalid("scope with illegal characters"));
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn scope_shapes() {
        assert_eq!(
            scopes(&map(json!({"scope": "b a  b"})), None).expect("ok"),
            vec!["a", "b"]
        );
        assert_eq!(
            scopes(&map(json!({"scp": ["x", "y"]})), None).expect("ok"),
            vec!["x", "y"]
        );
        assert_eq!(
            scopes(&map(json!({"roles": ["r"]})), Some("roles")).expect("ok"),
            vec!["r"]
        );
        assert_eq!(
            scopes(&map(json!({})), None).expect("ok"),
            Vec::<String>::new()
        );
        assert!(scopes(&map(json!({"scope": 5})), None).is_err());
        assert!(scopes(&map(json!({"scope": [1]})), None).is_err());
        assert!(scopes(&map(json!({"scope": "a\"b"})), None).is_err());
    }

    #[test]
    fn numeric_dates() {
        let c = map(json!({"exp": 10, "nbf": 2.7, "iat": -1, "x": "1"}));
        assert_eq!(numeric(&c, "exp"), Ok(Some(10)));
        assert_eq!(numeric(&c, "nbf"), Ok(Some(2)));
        assert!(numeric(&c, "iat").is_err());
        assert!(numeric(&c, "x").is_err());
        assert_eq!(numeric(&c, "none"), Ok(None));
    }

    #[test]
    fn jwt_shape() {
        assert!(is_jwt_shaped("a.b.c"));
        assert!(is_jwt_shaped("a.b."));
        assert!(!is_jwt_shaped("opaque-token"));
        assert!(!is_jwt_shaped("a.b.c.d"));
    }
}
