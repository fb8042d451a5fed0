//! Extract: find the one token a request carries (SPEC §3 "Locators").
//!
//! Every configured locator is consulted, not just the first that matches:
//! if two places carry different tokens, or a place carries two values
//! (two `Authorization` headers, two cookies of the name that differ), the
//! request is refused with `conflicting_credentials` — a request never
//! carries two identities. `query:` is honoured only on WebSocket upgrades.

use crate::config::Locator;
use crate::error::Rejection;
use http::request::Parts;
use serde_json::Value;

/// The token a request carries and every locator that carried it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub token: String,
    /// Indexes into the locator list, for stripping.
    pub sources: Vec<usize>,
}

/// Finds the request's token, if any.
pub fn credential(
    parts: &Parts,
    locators: &[Locator],
    is_upgrade: bool,
    body: Option<&Value>,
) -> Result<Option<Credential>, Rejection> {
    check_cookie_headers(parts)?;
    let mut found: Option<Credential> = None;
    for (i, locator) in locators.iter().enumerate() {
        let value = match locator {
            Locator::Header(name) => header(parts, name)?,
            Locator::Cookie(name) => cookie(parts, name)?,
            Locator::Query(name) if is_upgrade => query(parts, name)?,
            Locator::Query(_) => None,
            Locator::Body(pointer) => match body.and_then(|b| b.pointer(pointer)) {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => return Err(Rejection::InvalidToken),
            },
        };
        let Some(token) = value.filter(|t| !t.is_empty()) else {
            continue;
        };
        match &mut found {
            None => {
                found = Some(Credential {
                    token,
                    sources: vec![i],
                })
            }
            Some(c) if c.token == token => c.sources.push(i),
            Some(_) => return Err(Rejection::ConflictingCredentials),
        }
    }
    if let Some(c) = &found {
        // A token is a visible-ASCII string; anything else cannot be valid
        // and must not reach a log or a header.
        if c.token.len() > 16_384 || !c.token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Rejection::InvalidToken);
        }
    }
    Ok(found)
}

fn header(parts: &Parts, name: &str) -> Result<Option<String>, Rejection> {
    let mut values = parts.headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Rejection::ConflictingCredentials);
    }
    let text = value.to_str().map_err(|_| Rejection::InvalidToken)?.trim();
    if name == "authorization" {
        return match bearer(text) {
            Some(t) => Ok(Some(t.to_owned())),
            // An empty `Bearer` counts as absent, like an empty cookie.
            None if text.eq_ignore_ascii_case("bearer") => Ok(None),
            // `Bearer<tab>…`, `Bearer…`: a bearer credential we cannot read is
            // refused, never treated as absent (a lenient upstream might read it).
            None if is_bearer_scheme(text) => Err(Rejection::InvalidToken),
            None => Ok(None),
        };
    }
    Ok(Some(text.to_owned()))
}

/// The credentials of a `Bearer` authorization value; other schemes: `None`.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim_matches(' '))
}

/// Whether an authorization value claims the Bearer scheme, well-formed or not.
pub fn is_bearer_scheme(value: &str) -> bool {
    value
        .get(..6)
        .is_some_and(|s| s.eq_ignore_ascii_case("bearer"))
}

/// Refuses `Cookie` headers that are not visible ASCII: a cookie hidden in
/// an unreadable header would escape the conflict check and the strip.
pub fn check_cookie_headers(parts: &Parts) -> Result<(), Rejection> {
    for v in parts.headers.get_all(http::header::COOKIE) {
        if v.to_str().is_err() {
            return Err(Rejection::BadRequest);
        }
    }
    Ok(())
}

/// Whether `name` occurs anywhere in a `Cookie` value: if not, no cookie of
/// that name can be in it. A vector search, where splitting a browser's
/// kilobytes of cookies into pairs costs ≈ 10 instructions per byte.
pub fn may_hold_cookie(value: &[u8], name: &str) -> bool {
    memchr::memmem::find(value, name.as_bytes()).is_some()
}

/// The `;`-separated pieces of a `Cookie` value, as `str::split(';')` gives
/// them, found by vector search (`split` walks the kilobytes of a
/// browser's cookies much more slowly).
fn semicolon_pieces(value: &str) -> impl Iterator<Item = &str> {
    let mut start = 0;
    let mut ends = memchr::memchr_iter(b';', value.as_bytes()).chain(Some(value.len()));
    std::iter::from_fn(move || {
        let end = ends.next()?;
        // `;` is one byte in UTF-8: both ends are character boundaries.
        let piece = value.get(start..end);
        start = end + 1;
        piece
    })
}

/// A trimmed cookie pair split at its first `=`: the trimmed name (the
/// whole pair when there is no `=`) and the untrimmed value, if any.
fn split_pair(pair: &str) -> (&str, Option<&str>) {
    match memchr::memchr(b'=', pair.as_bytes()) {
        Some(i) => (
            pair.get(..i).unwrap_or(pair).trim_ascii(),
            pair.get(i + 1..),
        ),
        None => (pair, None),
    }
}

/// Every value of cookie `name` across all `Cookie` headers.
pub fn cookie_values<'a>(parts: &'a Parts, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    parts
        .headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter(move |v| may_hold_cookie(v.as_bytes(), name))
        .filter_map(|v| v.to_str().ok())
        .flat_map(semicolon_pieces)
        // `to_str` let only visible ASCII and tabs through, so ASCII
        // trimming is all the trimming there is (and much cheaper).
        .map(str::trim_ascii)
        .filter_map(move |pair| match split_pair(pair) {
            (k, Some(v)) if k == name => Some(v.trim_ascii().trim_matches('"')),
            _ => None,
        })
}

fn cookie(parts: &Parts, name: &str) -> Result<Option<String>, Rejection> {
    let mut out: Option<&str> = None;
    for v in cookie_values(parts, name) {
        match out {
            None => out = Some(v),
            Some(prev) if prev == v => {}
            Some(_) => return Err(Rejection::ConflictingCredentials),
        }
    }
    Ok(out.map(str::to_owned))
}

/// Every percent-decoded value of query parameter `name`.
pub fn query_values<'a>(
    query: &'a str,
    name: &'a str,
) -> impl Iterator<Item = Option<String>> + 'a {
    query.split('&').filter_map(move |pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_encoding::percent_decode_str(k).decode_utf8().ok()?;
        (k == name).then(|| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8()
                .ok()
                .map(|c| c.into_owned())
        })
    })
}

fn query(parts: &Parts, name: &str) -> Result<Option<String>, Rejection> {
    let Some(q) = parts.uri.query() else {
        return Ok(None);
    };
    let mut out: Option<String> = None;
    for v in query_values(q, name) {
        let v = v.ok_or(Rejection::InvalidToken)?;
        match &out {
            None => out = Some(v),
            Some(prev) if *prev == v => {}
            Some(_) => return Err(Rejection::ConflictingCredentials),
        }
    }
    Ok(out)
}

/// The query string without parameter `name` (for `strip`).
pub fn query_without(query: &str, name: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let k = pair.split_once('=').map_or(*pair, |(k, _)| k);
            percent_encoding::percent_decode_str(k)
                .decode_utf8()
                .map_or(true, |k| k != name)
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

/// The `Cookie` header value without cookie `name` (for `strip`). `value`
/// comes from `HeaderValue::to_str` (visible ASCII and tabs), so pairs are
/// trimmed of ASCII whitespace only.
pub fn cookie_without(value: &str, name: &str) -> Option<String> {
    let mut kept = String::with_capacity(value.len());
    for pair in semicolon_pieces(value).map(str::trim_ascii) {
        if pair.is_empty() || split_pair(pair).0 == name {
            continue;
        }
        if !kept.is_empty() {
            kept.push_str("; ");
        }
        kept.push_str(pair);
    }
    (!kept.is_empty()).then_some(kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn parts(headers: &[(&str, &str)], uri: &str) -> Parts {
        let mut b = Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("request").into_parts().0
    }

    fn locs() -> Vec<Locator> {
        [
            "header:authorization",
            "cookie:AuthCookie",
            "body:/Auth/Token",
            "query:access_token",
        ]
        .iter()
        .map(|l| Locator::parse(l).expect("locator"))
        .collect()
    }

    #[test]
    fn bearer_any_case_other_schemes_absent() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bEaReR abc"), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
        let p = parts(&[("authorization", "Bearer\teyJ.x.y")], "/");
        assert_eq!(
            credential(&p, &locs(), false, None),
            Err(Rejection::InvalidToken)
        );
        let p = parts(&[("authorization", "Bearereyj.x.y")], "/");
        assert_eq!(
            credential(&p, &locs(), false, None),
            Err(Rejection::InvalidToken)
        );
        let p = parts(&[("authorization", "Bearer ")], "/");
        assert_eq!(credential(&p, &locs(), false, None), Ok(None));
        let p = parts(&[("authorization", "Basic dXNlcjpwYXNz")], "/");
        assert_eq!(credential(&p, &locs(), false, None), Ok(None));
    }

    #[test]
    fn same_token_in_two_places_is_one_credential() {
        let p = parts(
            &[
                ("authorization", "Bearer t1"),
                ("cookie", "a=b; AuthCookie=t1"),
            ],
            "/",
        );
        let c = credential(&p, &locs(), false, None)
            .expect("ok")
            .expect("some");
        assert_eq!(c.token, "t1");
        assert_eq!(c.sources, vec![0, 1]);
    }

    #[test]
    fn conflicts_are_refused() {
        let l = locs();
        let p = parts(
            &[("authorization", "Bearer t1"), ("cookie", "AuthCookie=t2")],
            "/",
        );
        assert_eq!(
            credential(&p, &l, false, None),
            Err(Rejection::ConflictingCredentials)
        );
        let p = parts(
            &[
                ("authorization", "Bearer t1"),
                ("authorization", "Bearer t1"),
            ],
            "/",
        );
        assert_eq!(
            credential(&p, &l, false, None),
            Err(Rejection::ConflictingCredentials)
        );
        let p = parts(
            &[("cookie", "AuthCookie=t1"), ("cookie", "AuthCookie=t2")],
            "/",
        );
        assert_eq!(
            credential(&p, &l, false, None),
            Err(Rejection::ConflictingCredentials)
        );
        let p = parts(&[("cookie", "AuthCookie=t1; AuthCookie=t1")], "/");
        assert!(credential(&p, &l, false, None)
            .expect("same twice")
            .is_some());
        let body = serde_json::json!({"Auth": {"Token": "t9"}});
        let p = parts(&[("authorization", "Bearer t1")], "/");
        assert_eq!(
            credential(&p, &l, false, Some(&body)),
            Err(Rejection::ConflictingCredentials)
        );
    }

    #[test]
    fn query_only_on_upgrades() {
        let l = locs();
        let p = parts(&[], "/ws?x=1&access_token=a%2Eb");
        assert_eq!(credential(&p, &l, false, None), Ok(None));
        let c = credential(&p, &l, true, None).expect("ok").expect("some");
        assert_eq!(c.token, "a.b");
        assert_eq!(
            query_without("x=1&access_token=a", "access_token").as_deref(),
            Some("x=1")
        );
        assert_eq!(query_without("access_token=a", "access_token"), None);
    }

    #[test]
    fn non_ascii_and_non_string_tokens_are_invalid() {
        let l = locs();
        let p = parts(&[("cookie", "AuthCookie=t\tx")], "/");
        assert_eq!(
            credential(&p, &l, false, None),
            Err(Rejection::InvalidToken)
        );
        let body = serde_json::json!({"Auth": {"Token": 42}});
        let p = parts(&[], "/");
        assert_eq!(
            credential(&p, &l, false, Some(&body)),
            Err(Rejection::InvalidToken)
        );
    }

    /// The reference: `str::split` and `split_once`, as the code was.
    fn reference_without(value: &str, name: &str) -> Option<String> {
        let kept: Vec<&str> = value
            .split(';')
            .map(str::trim)
            .filter(|pair| !pair.is_empty())
            .filter(|pair| pair.split_once('=').map_or(*pair, |(k, _)| k).trim() != name)
            .collect();
        (!kept.is_empty()).then(|| kept.join("; "))
    }

    fn reference_values<'a>(value: &'a str, name: &'a str) -> Vec<&'a str> {
        value
            .split(';')
            .filter_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                (k.trim() == name).then(|| v.trim().trim_matches('"'))
            })
            .collect()
    }

    proptest::proptest! {
        /// The vector-search parsing decides as `split` did, on values made
        /// of the bytes that matter (and any visible ASCII).
        #[test]
        fn cookie_parsing_is_the_split_definition(
            value in "([ \t;=\"]|a|A|x|AuthCookie|[!-~]){0,60}",
        ) {
            proptest::prop_assert_eq!(semicolon_pieces(&value).collect::<Vec<_>>(), value.split(';').collect::<Vec<_>>());
            proptest::prop_assert_eq!(cookie_without(&value, "AuthCookie"), reference_without(&value, "AuthCookie"));
            let p = parts(&[("cookie", value.as_str())], "/");
            proptest::prop_assert_eq!(
                cookie_values(&p, "AuthCookie").collect::<Vec<_>>(),
                reference_values(&value, "AuthCookie")
            );
        }
    }

    #[test]
    fn cookie_values_only_of_that_name() {
        let p = parts(
            &[
                ("cookie", "a=1; b=2"),
                ("cookie", "xAuthCookie=no; c=AuthCookie"),
                ("cookie", "d=4;  AuthCookie = \"t1\" ; e=5"),
            ],
            "/",
        );
        let found: Vec<&str> = cookie_values(&p, "AuthCookie").collect();
        assert_eq!(found, ["t1"]);
        assert!(may_hold_cookie(b"a=1; AuthCookie=t", "AuthCookie"));
        assert!(!may_hold_cookie(b"a=1; authcookie=t", "AuthCookie"));
        assert_eq!(
            cookie_values(&parts(&[("cookie", "a=1")], "/"), "AuthCookie").count(),
            0
        );
    }

    #[test]
    fn cookie_strip_keeps_the_others() {
        assert_eq!(
            cookie_without("a=1; AuthCookie=x; b=2", "AuthCookie").as_deref(),
            Some("a=1; b=2")
        );
        assert_eq!(cookie_without("AuthCookie=x", "AuthCookie"), None);
    }
}
