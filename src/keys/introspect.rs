//! RFC 7662 token introspection for tokens that are not JWTs.
//!
//! `POST token=…` with HTTP Basic client credentials. `active: false` is
//! `invalid_token`; an unreachable, slow or failing endpoint is
//! `keys_unavailable` (503) — never a pass. Active results are cached for
//! `min(cache_ttl, exp)`; inactive ones for a few seconds.

use crate::error::Rejection;
use crate::identity::Verified;
use crate::pipeline::forward::full;
use crate::pipeline::verify::{self, invalid, Denied};
use crate::runtime::Runtime;
use base64::Engine;
use http::HeaderValue;
use http_body_util::BodyExt;
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretSlice};
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;

/// How long an inactive answer is remembered.
pub const NEGATIVE_TTL_SECS: u64 = 5;
const TIMEOUT: Duration = Duration::from_secs(5);
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

fn unavailable(reason: &'static str) -> Denied {
    Denied {
        rejection: Rejection::KeysUnavailable,
        reason,
    }
}

/// `application/x-www-form-urlencoded` leaves `*-._` and alphanumerics as
/// they are. Escaping more (e.g. `-` as `%2D`) breaks HTTP Basic credentials
/// at the many servers that do not form-decode them (RFC 6749 §2.3.1 asks
/// for the encoding; real servers mostly compare the raw bytes).
const FORM: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'*')
    .remove(b'-')
    .remove(b'.')
    .remove(b'_');

fn form_encode(s: impl AsRef<[u8]>) -> String {
    percent_encoding::percent_encode(s.as_ref(), FORM).to_string()
}

/// The `Authorization` value for the introspection request:
/// `Basic base64(form(client_id) ":" form(client_secret))` (RFC 6749
/// §2.3.1), marked sensitive so it is never logged or HPACK-indexed. Built
/// once per runtime; the intermediate copies of the secret are sized up
/// front (no reallocation leaves a stray copy) and zeroed on drop.
pub fn basic_authorization(
    client_id: &str,
    client_secret: &SecretSlice<u8>,
) -> Result<HeaderValue, String> {
    let secret = client_secret.expose_secret();
    let mut pair = Zeroizing::new(String::with_capacity(
        3 * (client_id.len() + secret.len()) + 1,
    ));
    pair.extend(percent_encoding::percent_encode(client_id.as_bytes(), FORM));
    pair.push(':');
    pair.extend(percent_encoding::percent_encode(secret, FORM));
    let mut line = Zeroizing::new(String::with_capacity(6 + pair.len().div_ceil(3) * 4));
    line.push_str("Basic ");
    base64::engine::general_purpose::STANDARD.encode_string(pair.as_bytes(), &mut line);
    let mut value = HeaderValue::from_str(&line)
        .map_err(|_| "the client credentials do not make a header value".to_string())?;
    value.set_sensitive(true);
    Ok(value)
}

/// Verifies an opaque token with the introspection issuer, using the cache.
pub async fn verify(
    rt: &Runtime,
    token: &str,
    now: u64,
    allowed: Option<&[usize]>,
) -> (Result<Arc<Verified>, Denied>, verify::CacheOutcome) {
    let key = verify::cache_key(token);
    if let Some(v) = verify::cached(rt, &key, now) {
        return (verify::check_allowed(v, allowed), verify::CacheOutcome::Hit);
    }
    if let (Some(idx), Some(list)) = (rt.introspection_issuer, allowed) {
        if !list.contains(&idx) {
            return (
                Err(invalid("issuer not allowed on route")),
                verify::CacheOutcome::Miss,
            );
        }
    }
    if rt
        .negative_cache
        .get(&key)
        .is_some_and(|until| now <= until)
    {
        return (Err(invalid("inactive (cached)")), verify::CacheOutcome::Hit);
    }
    // Bounded concurrency towards the IdP: a flood of random opaque tokens
    // must not turn the gateway into an amplifier.
    let Ok(_permit) = rt.introspection_permits.try_acquire() else {
        return (
            Err(unavailable("introspection concurrency limit")),
            verify::CacheOutcome::Miss,
        );
    };
    // Boxed: the exchange's future is large, and unboxed it would size the
    // future of every request that verifies a token, cache hits included.
    let result = Box::pin(introspect(rt, token, now)).await;
    match &result {
        Ok(v) => rt.token_cache.insert(key, v.clone()),
        Err(d) if d.rejection == Rejection::InvalidToken => {
            rt.negative_cache.insert(key, now + NEGATIVE_TTL_SECS)
        }
        Err(_) => {}
    }
    (result, verify::CacheOutcome::Miss)
}

async fn introspect(rt: &Runtime, token: &str, now: u64) -> Result<Arc<Verified>, Denied> {
    let Some(idx) = rt.introspection_issuer else {
        return Err(invalid("not a JWT and no introspection issuer"));
    };
    let issuer = &rt.issuers[idx];
    let Some(cfg) = &issuer.introspection else {
        return Err(unavailable("introspection not configured"));
    };
    let body = format!("token={}&token_type_hint=access_token", form_encode(token));
    let request = http::Request::post(cfg.url.clone())
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::AUTHORIZATION, cfg.authorization.clone())
        .body(full(body))
        .map_err(|_| unavailable("cannot build request"))?;
    // The whole exchange, body included, is bounded: a server that sends
    // headers and then stalls must not hold the request forever.
    let exchange = async {
        let response = rt
            .fetcher(idx)
            .send(request, TIMEOUT)
            .await
            .map_err(|_| unavailable("introspection endpoint unreachable"))?;
        if !response.status().is_success() {
            return Err(unavailable("introspection endpoint failed"));
        }
        Ok(
            http_body_util::Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|_| unavailable("introspection response unreadable"))?
                .to_bytes(),
        )
    };
    let bytes = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| unavailable("introspection endpoint too slow"))??;
    let claims: Map<String, Value> = serde_json::from_slice(&bytes)
        .map_err(|_| unavailable("introspection response is not JSON"))?;
    if claims.get("active") != Some(&Value::Bool(true)) {
        return Err(invalid("inactive token"));
    }
    let ttl = cfg.cache_ttl.as_secs().max(1);
    let exp = verify::numeric(&claims, "exp")?;
    if let Some(exp) = exp {
        if now > exp.saturating_add(issuer.leeway) {
            return Err(Denied {
                rejection: Rejection::TokenExpired,
                reason: "expired",
            });
        }
    }
    if let Some(nbf) = verify::numeric(&claims, "nbf")? {
        if now.saturating_add(issuer.leeway) < nbf {
            return Err(invalid("not yet valid (nbf)"));
        }
    }
    verify::check_audience(issuer, &claims)?;
    let cache_until = now.saturating_add(ttl);
    // RFC 7662 makes `exp` optional. Without it the result is cached for
    // `cache_ttl` only, and no `x-authgate-token-expires` is forwarded (the
    // header is the token's `exp`, which is unknown).
    let valid_until = match exp {
        Some(exp) => cache_until.min(exp.saturating_add(issuer.leeway)),
        None => cache_until,
    };
    verify::finish(rt, idx, &claims, exp, valid_until).map(Arc::new)
}

#[cfg(test)]
mod tests {
    use super::{basic_authorization, form_encode};

    #[test]
    fn form_encoding_keeps_the_unreserved_form_characters() {
        assert_eq!(form_encode("a-b.c_d*e9"), "a-b.c_d*e9");
        assert_eq!(form_encode("a b:c/d+e%"), "a%20b%3Ac%2Fd%2Be%25");
        assert_eq!(form_encode("é"), "%C3%A9");
    }

    #[test]
    fn basic_authorization_is_form_encoded_base64_and_sensitive() {
        let secret = secrecy::SecretSlice::from(b"s3cr:t/+".to_vec());
        let v = basic_authorization("my client", &secret).expect("header");
        assert!(v.is_sensitive());
        // base64("my%20client:s3cr%3At%2F%2B")
        assert_eq!(v, "Basic bXklMjBjbGllbnQ6czNjciUzQXQlMkYlMkI=");
    }
}
