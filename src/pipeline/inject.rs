//! Inject: strip first, then set (SPEC §6).
//!
//! 1. Remove hop-by-hop headers and every header the client named in
//!    `Connection` (before anything is injected, so a client cannot use
//!    `Connection: x-authgate-…` to delete what the gateway sets).
//! 2. Remove every client header starting with the identity prefix.
//! 3. Set the identity headers from verified data only.

use crate::identity::Identity;
use crate::runtime::IdentityHeaders;
use http::header::CONNECTION;
use http::header::{Entry, HeaderMap, HeaderName, HeaderValue};
use std::net::IpAddr;

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Whether a header is hop-by-hop (never forwarded). One string match
/// (by length first) instead of nine name comparisons.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    is_hop_by_hop_name(name.as_str())
}

/// [`is_hop_by_hop`] on a name already lower-case (a `HeaderName`'s).
#[inline]
pub fn is_hop_by_hop_name(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authorization"
            | "proxy-authenticate"
    )
}

/// Removes hop-by-hop headers and those named in `Connection`. One pass
/// over the (usually few) headers finds what is there; removals only of
/// that, and no allocation for the common single `Connection` value
/// (`keep-alive` on nearly every upstream response).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Whether Connection is present, and any other hop-by-hop header.
    let (mut connection, mut others) = (false, false);
    for k in headers.keys().filter(|k| is_hop_by_hop(k)) {
        if *k == CONNECTION {
            connection = true;
        } else {
            others = true;
        }
    }
    if connection {
        // One lookup takes every `Connection` value out; a second value is
        // rare (and only then is anything kept aside).
        if let Entry::Occupied(e) = headers.entry(CONNECTION) {
            let (_, mut values) = e.remove_entry_mult();
            let first = values.next();
            let rest: Vec<HeaderValue> = values.collect();
            for v in first.iter().chain(&rest) {
                remove_named(headers, v);
            }
        }
    }
    // Hop-by-hop headers go whether or not `Connection` named them.
    if others {
        while let Some(name) = headers.keys().find(|k| is_hop_by_hop(k)).cloned() {
            headers.remove(name);
        }
    }
}

/// Removes every header a `Connection` value names (tokens that are not
/// header names name nothing). Hop-by-hop names are left to
/// [`strip_hop_by_hop`], which removes those headers anyway — so the usual
/// `keep-alive` token costs no lookup.
fn remove_named(headers: &mut HeaderMap, value: &HeaderValue) {
    // What nearly every upstream and client sends: nothing to look up.
    if value.as_bytes().eq_ignore_ascii_case(b"keep-alive") {
        return;
    }
    let Ok(v) = value.to_str() else { return };
    for token in v.split(',') {
        let token = token.trim();
        if token.eq_ignore_ascii_case("keep-alive") {
            continue;
        }
        if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
            if !is_hop_by_hop(&name) {
                headers.remove(name);
            }
        }
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

/// The peer address as an `X-Forwarded-For` element; built once per
/// connection (formatting an address costs more than the rest of this step).
pub fn peer_element(peer: IpAddr) -> HeaderValue {
    HeaderValue::try_from(peer.to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Which `X-Forwarded-*` headers the client's request carried (from the
/// head scan): absent ones need no lookup.
#[derive(Debug, Clone, Copy)]
pub struct Present {
    pub forwarded_for: bool,
    pub forwarded_host: bool,
}

impl Present {
    /// No knowledge: look everything up.
    pub const UNKNOWN: Present = Present {
        forwarded_for: true,
        forwarded_host: true,
    };
}

/// Appends the peer to `X-Forwarded-For`, sets `-Proto` and `-Host`.
pub fn forwarded(
    headers: &mut HeaderMap,
    peer: &HeaderValue,
    https: bool,
    host: Option<HeaderValue>,
    present: Present,
) {
    let mut prev = present
        .forwarded_for
        .then(|| headers.get_all(&X_FORWARDED_FOR).iter())
        .into_iter()
        .flatten()
        .filter_map(|v| v.to_str().ok())
        .peekable();
    let xff = if prev.peek().is_none() {
        Some(peer.clone())
    } else {
        let mut all = String::with_capacity(128);
        for p in prev {
            all.push_str(p);
            all.push_str(", ");
        }
        all.push_str(peer.to_str().unwrap_or("unknown"));
        HeaderValue::try_from(all).ok()
    };
    if let Some(v) = xff {
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
        None if present.forwarded_host => {
            headers.remove(X_FORWARDED_HOST);
        }
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{TRANSFER_ENCODING, UPGRADE};

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
    fn upstream_keep_alive_goes_and_so_does_what_connection_names() {
        // The lone keep-alive fast path, any case; `close` still removes a
        // header literally named close.
        for value in ["keep-alive", "Keep-Alive", "close", "keep-alive, x-a"] {
            let mut h = HeaderMap::new();
            h.insert(CONNECTION, HeaderValue::from_static(value));
            h.insert("close", HeaderValue::from_static("1"));
            h.insert("x-a", HeaderValue::from_static("1"));
            h.insert("content-type", HeaderValue::from_static("application/json"));
            strip_hop_by_hop(&mut h);
            assert!(!h.contains_key(CONNECTION), "{value}");
            assert_eq!(h.contains_key("close"), value != "close", "{value}");
            assert_eq!(h.contains_key("x-a"), !value.contains("x-a"), "{value}");
            assert!(h.contains_key("content-type"));
        }
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        let mut h = HeaderMap::new();
        h.append(CONNECTION, HeaderValue::from_static("x-a"));
        h.append(CONNECTION, HeaderValue::from_static("x-b, bogus name"));
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert("x-b", HeaderValue::from_static("2"));
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-c", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-c"], "kept");
    }

    proptest::proptest! {
        /// Against the definition: every hop-by-hop header and every header
        /// any `Connection` value names is gone, and nothing else.
        #[test]
        fn strips_exactly_hop_by_hop_and_connection_named(
            headers in proptest::collection::vec((0..8usize, 0..6usize), 0..10),
        ) {
            const NAMES: [&str; 8] = [
                "connection", "keep-alive", "te", "upgrade", "x-a", "close", "accept", "proxy-connection",
            ];
            const VALUES: [&str; 6] = ["keep-alive", "x-a", "close, te", "Keep-Alive, accept", "a b", "1"];
            let mut h = HeaderMap::new();
            for (n, v) in headers {
                h.append(NAMES[n], HeaderValue::from_static(VALUES[v]));
            }
            let named: Vec<String> = h
                .get_all(CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(|t| t.trim().to_ascii_lowercase())
                .collect();
            let mut want = h.clone();
            let doomed: Vec<HeaderName> = h
                .keys()
                .filter(|k| is_hop_by_hop(k) || named.iter().any(|n| n == k.as_str()))
                .cloned()
                .collect();
            for k in doomed {
                want.remove(k);
            }
            strip_hop_by_hop(&mut h);
            proptest::prop_assert_eq!(h, want);
        }
    }

    #[test]
    fn forwarded_for_starts_with_the_peer() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_HOST, HeaderValue::from_static("spoofed"));
        forwarded(
            &mut h,
            &peer_element("::1".parse().expect("ip")),
            true,
            None,
            Present::UNKNOWN,
        );
        assert_eq!(h[X_FORWARDED_FOR], "::1");
        assert_eq!(h[X_FORWARDED_PROTO], "https");
        assert!(!h.contains_key(X_FORWARDED_HOST));
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("2.2.2.2"));
        forwarded(
            &mut h,
            &peer_element("127.0.0.1".parse().expect("ip")),
            false,
            Some(HeaderValue::from_static("example.com")),
            Present::UNKNOWN,
        );
        assert_eq!(h[X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 127.0.0.1");
        assert_eq!(h[X_FORWARDED_PROTO], "http");
        assert_eq!(h[X_FORWARDED_HOST], "example.com");
    }
}
