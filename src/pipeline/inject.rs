//! Inject: strip first, then set (SPEC §6).
//!
//! 1. Remove hop-by-hop headers and every header the client named in
//!    `Connection` (before anything is injected, so a client cannot use
//!    `Connection: x-authgate-…` to delete what the gateway sets).
//! 2. Remove every client header starting with the identity prefix.
//! 3. Set the identity headers from verified data only.

use crate::identity::Identity;
use crate::runtime::IdentityHeaders;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::header::{CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use std::net::IpAddr;

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Whether a header is hop-by-hop (never forwarded).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    *name == CONNECTION
        || *name == KEEP_ALIVE
        || *name == PROXY_CONNECTION
        || *name == TE
        || *name == TRAILER
        || *name == TRANSFER_ENCODING
        || *name == UPGRADE
        || *name == http::header::PROXY_AUTHORIZATION
        || *name == http::header::PROXY_AUTHENTICATE
}

/// Removes hop-by-hop headers and those named in `Connection`. One pass
/// over the (usually few) headers; removals only when there is something
/// to remove.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| is_hop_by_hop(k))
        .cloned()
        .collect();
    for h in doomed {
        headers.remove(h);
    }
}

/// Removes every header whose name starts with `prefix` (lower-case).
pub fn strip_prefixed(headers: &mut HeaderMap, prefix: &str) {
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with(prefix))
        .cloned()
        .collect();
    for k in doomed {
        headers.remove(k);
    }
}

/// Sets `x-authgate-auth` and, when authenticated, the identity headers.
/// `scopes` is the effective scope header (the token's, or `Auth.Scopes`).
pub fn identity_headers(
    headers: &mut HeaderMap,
    names: &IdentityHeaders,
    identity: &Identity,
    issuer_name: Option<&HeaderValue>,
    scopes: Option<HeaderValue>,
) {
    match identity {
        Identity::Anonymous => {
            headers.insert(names.auth.clone(), HeaderValue::from_static("anonymous"));
        }
        Identity::Authenticated(v) => {
            headers.insert(
                names.auth.clone(),
                HeaderValue::from_static("authenticated"),
            );
            headers.insert(names.customer_id.clone(), v.customer_id.clone());
            if let Some(name) = issuer_name {
                headers.insert(names.issuer.clone(), name.clone());
            }
            headers.insert(
                names.scopes.clone(),
                scopes.unwrap_or_else(|| v.scopes_header.clone()),
            );
            if let Some(exp) = &v.exp_header {
                headers.insert(names.token_expires.clone(), exp.clone());
            }
            if let Some(ctx) = &v.context {
                headers.insert(names.context.clone(), ctx.clone());
            }
        }
    }
}

/// Appends the peer to `X-Forwarded-For`, sets `-Proto` and `-Host`.
pub fn forwarded(headers: &mut HeaderMap, peer: IpAddr, https: bool, host: Option<HeaderValue>) {
    let peer = peer.to_string();
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if headers.get_all(&X_FORWARDED_FOR).iter().count() == 1 => {
            format!("{prev}, {peer}")
        }
        _ => {
            let all: Vec<&str> = headers
                .get_all(&X_FORWARDED_FOR)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            if all.is_empty() {
                peer
            } else {
                format!("{}, {peer}", all.join(", "))
            }
        }
    };
    if let Ok(v) = HeaderValue::try_from(xff) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if https { "https" } else { "http" }),
    );
    match host {
        Some(h) => {
            headers.insert(X_FORWARDED_HOST, h);
        }
        None => {
            headers.remove(X_FORWARDED_HOST);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_named_headers_go_first() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("close, x-authgate-customer-id, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-authgate-customer-id", HeaderValue::from_static("spoof"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-other", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-other"], "kept");
    }

    #[test]
    fn prefixed_headers_go_whatever_their_case() {
        let mut h = HeaderMap::new();
        h.append("X-AuthGate-Customer-Id", HeaderValue::from_static("a"));
        h.append("x-authgate-customer-id", HeaderValue::from_static("b"));
        h.append("x-authgate-anything", HeaderValue::from_static("c"));
        h.append("x-authgatex", HeaderValue::from_static("kept"));
        strip_prefixed(&mut h, "x-authgate-");
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("2.2.2.2"));
        forwarded(
            &mut h,
            "127.0.0.1".parse().expect("ip"),
            false,
            Some(HeaderValue::from_static("example.com")),
        );
        assert_eq!(h[X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 127.0.0.1");
        assert_eq!(h[X_FORWARDED_PROTO], "http");
        assert_eq!(h[X_FORWARDED_HOST], "example.com");
    }
}
