#![no_main]
//! Token extraction from hostile headers and query strings, and the strip
//! of what was taken. The input is split at NUL bytes into: a cookie and
//! query-parameter name, an `Authorization` value, two `Cookie` values, a
//! query string and an `X-Api-Key` value.
//!
//! Never a panic; a token found is non-empty visible ASCII of at most
//! 16 KiB; the cookie readers agree with the `str::split` definition they
//! replaced; after `cookie_without`/`query_without` no value of that name
//! is left, and every other cookie pair is kept, in order.
use authgate::config::Locator;
use authgate::pipeline::extract;
use http::{HeaderValue, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|&b| b == 0);
    let name = parts
        .next()
        .and_then(|n| std::str::from_utf8(n).ok())
        .filter(|n| {
            !n.is_empty()
                && n.len() <= 64
                && n.bytes()
                    .all(|b| b.is_ascii_graphic() && !b"=;,\"\\".contains(&b))
        })
        .unwrap_or("t")
        .to_owned();
    let auth = parts.next();
    let cookies: Vec<&[u8]> = parts.by_ref().take(2).collect();
    let query = parts.next().and_then(|q| std::str::from_utf8(q).ok());
    let api_key = parts.next();

    let uri = match query {
        Some(q) => format!("/chat?{q}"),
        None => "/chat".to_owned(),
    };
    let mut builder = Request::builder().uri(uri.as_str());
    if builder.uri_ref().is_none() {
        builder = Request::builder().uri("/chat");
    }
    let Ok(request) = builder.body(()) else {
        return;
    };
    let (mut head, ()) = request.into_parts();
    let mut add = |name: http::HeaderName, value: Option<&[u8]>| {
        if let Some(v) = value.and_then(|v| HeaderValue::from_bytes(v).ok()) {
            head.headers.append(name, v);
        }
    };
    add(http::header::AUTHORIZATION, auth);
    for c in &cookies {
        add(http::header::COOKIE, Some(c));
    }
    add(http::HeaderName::from_static("x-api-key"), api_key);

    let locators = [
        Locator::Header("authorization".into()),
        Locator::Cookie(name.clone()),
        Locator::Query(name.clone()),
        Locator::Header("x-api-key".into()),
    ];
    for upgrade in [false, true] {
        if let Ok(Some(c)) = extract::credential(&head, &locators, upgrade, None) {
            assert!(!c.token.is_empty());
            assert!(c.token.len() <= 16_384);
            assert!(c.token.bytes().all(|b| b.is_ascii_graphic()));
            assert!(!c.sources.is_empty());
        }
    }

    // The cookie reader against its definition: split at `;`, trim, split
    // each pair at its first `=`.
    let readable: Vec<&str> = head
        .headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let reference: Vec<&str> = readable
        .iter()
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter_map(|p| p.split_once('='))
        .filter(|(k, _)| k.trim() == name)
        .map(|(_, v)| v.trim().trim_matches('"'))
        .collect();
    let found: Vec<&str> = extract::cookie_values(&head, &name).collect();
    assert_eq!(found, reference);

    // Stripping leaves no cookie of the name and keeps every other pair.
    for v in &readable {
        let kept = extract::cookie_without(v, &name);
        let others: Vec<&str> = v
            .split(';')
            .map(str::trim)
            .filter(|p| !p.is_empty() && p.split_once('=').map_or(*p, |(k, _)| k.trim()) != name)
            .collect();
        match &kept {
            None => assert!(others.is_empty()),
            Some(k) => {
                let mut h = http::request::Request::new(()).into_parts().0;
                let hv = HeaderValue::from_str(k)
                    .expect("cookie_without keeps a readable header readable");
                h.headers.insert(http::header::COOKIE, hv);
                assert_eq!(extract::cookie_values(&h, &name).count(), 0);
                let kept_pairs: Vec<&str> = k.split("; ").collect();
                assert_eq!(kept_pairs, others);
            }
        }
    }

    if let Some(q) = head.uri.query() {
        if let Some(rest) = extract::query_without(q, &name) {
            assert!(extract::query_values(&rest, &name).next().is_none());
        }
    }
});
