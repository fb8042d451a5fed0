//! The core request path: every rejection of SPEC §7 that the core gateway
//! owns, asserted on the response *and* on what the upstream received.

use crate::support::*;
use jsonwebtoken::{Algorithm, Header};
use serde_json::json;

async fn gw() -> (TestGateway, &'static Keys) {
    let keys = Keys::generate();
    let gw = TestGateway::start(&TestGateway::default_toml(keys), "request_timeout = \"1s\"").await;
    (gw, keys)
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

#[tokio::test]
async fn valid_token_forwards_verified_identity_only() {
    let (gw, keys) = gw().await;
    let token = sign(
        keys,
        Algorithm::RS256,
        &claims(ISS_RSA, "alice", "chat extra"),
    );
    let r = get(
        &gw.url("/api/chat/messages?x=1"),
        &[
            ("authorization", &bearer(&token)),
            ("x-authgate-customer-id", "cid_spoofed"),
            ("X-AuthGate-Scopes", "admin"),
            ("x-request-id", "client-id-1"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(r.headers["x-request-id"], "client-id-1");
    let up = gw.upstream.only();
    assert_eq!(up.uri, "/api/chat/messages?x=1");
    assert_eq!(up.header("x-authgate-auth"), Some("authenticated"));
    let cid = up.header("x-authgate-customer-id").expect("customer id");
    assert!(cid.starts_with("cid_") && cid != "cid_spoofed", "{cid}");
    assert_eq!(
        up.headers.get_all("x-authgate-customer-id").iter().count(),
        1
    );
    assert_eq!(up.header("x-authgate-issuer"), Some("web"));
    assert_eq!(up.header("x-authgate-scopes"), Some("chat extra"));
    assert!(up
        .header("x-authgate-token-expires")
        .expect("exp")
        .parse::<i64>()
        .is_ok());
    assert_eq!(
        up.header("authorization"),
        None,
        "strip = true removes the token"
    );
    assert_eq!(up.header("x-request-id"), Some("client-id-1"));
    assert_eq!(up.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(up.header("x-forwarded-proto"), Some("http"));
    assert!(up.header("x-forwarded-host").is_some());
    assert!(!up.raw_text().contains(&token));
}

#[tokio::test]
async fn same_subject_same_namespace_same_customer_id() {
    let (gw, keys) = gw().await;
    let a = sign(keys, Algorithm::RS256, &claims(ISS_RSA, "bob", "chat"));
    let b = sign(keys, Algorithm::ES256, &claims(ISS_EC, "bob", "chat"));
    let c = sign(keys, Algorithm::HS256, &claims(ISS_HS, "bob", "chat"));
    for t in [&a, &b, &c] {
        assert_eq!(
            get(&gw.url("/api/chat/x"), &[("authorization", &bearer(t))])
                .await
                .status,
            200
        );
    }
    let seen = gw.upstream.seen();
    let ids: Vec<&str> = seen
        .iter()
        .map(|r| r.header("x-authgate-customer-id").expect("cid"))
        .collect();
    assert_eq!(ids[0], ids[1], "web and mobile share the namespace");
    assert_ne!(ids[0], ids[2], "omni has its own namespace");
    // And it is what `customer-id` prints.
    let rt = gw.shared.runtime.load();
    assert_eq!(rt.customer_id("customers", "bob"), ids[0]);
}

async fn refused(
    gw: &TestGateway,
    path: &str,
    headers: &[(&str, &str)],
    status: u16,
    code: &str,
) -> Reply {
    let r = get(&gw.url(path), headers).await;
    assert_error(&r, status, code);
    assert_eq!(
        gw.upstream.count(),
        0,
        "upstream must receive nothing for {code}"
    );
    r
}

#[tokio::test]
async fn alg_none_is_refused() {
    let (gw, _keys) = gw().await;
    use base64::Engine;
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let h = e.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let p = e.encode(serde_json::to_vec(&claims(ISS_HS, "eve", "chat")).expect("json"));
    for t in [format!("{h}.{p}."), format!("{h}.{p}.c2ln")] {
        let r = refused(
            &gw,
            "/api/chat/x",
            &[("authorization", &bearer(&t))],
            401,
            "invalid_token",
        )
        .await;
        assert!(r.headers["www-authenticate"]
            .to_str()
            .expect("ascii")
            .contains("error=\"invalid_token\""));
    }
}

#[tokio::test]
async fn hs256_signed_with_the_rsa_public_key_is_refused() {
    let keys = Keys::generate();
    // An issuer that allows both is impossible (config rejects mixing), so
    // the attack targets the RSA issuer with alg HS256.
    let gw = TestGateway::start(&TestGateway::default_toml(keys), "").await;
    let pem = std::fs::read(&keys.rsa_public).expect("pem");
    let t = forge_hs256(
        &json!({"alg": "HS256", "typ": "JWT"}),
        &json!(claims(ISS_RSA, "eve", "chat")),
        &pem,
    );
    refused(
        &gw,
        "/api/chat/x",
        &[("authorization", &bearer(&t))],
        401,
        "invalid_token",
    )
    .await;
}

#[tokio::test]
async fn wrong_signature_unknown_iss_wrong_aud_are_invalid() {
    let (gw, keys) = gw().await;
    let good = sign(keys, Algorithm::RS256, &claims(ISS_RSA, "a", "chat"));
    let mut bad_sig = good.clone();
    let last = bad_sig.pop().expect("char");
    bad_sig.push(if last == 'A' { 'B' } else { 'A' });
    let mut c = claims("https://evil.test", "a", "chat");
    let unknown_iss = sign(keys, Algorithm::RS256, &c);
    c = claims(ISS_RSA, "a", "chat");
    c.insert("aud".into(), json!("someone-else"));
    let wrong_aud = sign(keys, Algorithm::RS256, &c);
    c.remove("aud");
    let no_aud = sign(keys, Algorithm::RS256, &c);
    let mut other_sig = good.rsplit_once('.').expect("msg").0.to_owned();
    other_sig.push_str(".AAAA");
    for t in [bad_sig, unknown_iss, wrong_aud, no_aud, other_sig] {
        refused(
            &gw,
            "/api/chat/x",
            &[("authorization", &bearer(&t))],
            401,
            "invalid_token",
        )
        .await;
    }
}

#[tokio::test]
async fn issuer_not_allowed_on_route() {
    let (gw, keys) = gw().await;
    let t = sign(keys, Algorithm::ES256, &claims(ISS_EC, "a", "chat"));
    refused(
        &gw,
        "/api/web-only/x",
        &[("authorization", &bearer(&t))],
        401,
        "invalid_token",
    )
    .await;
    let t = sign(keys, Algorithm::RS256, &claims(ISS_RSA, "a", "chat"));
    assert_eq!(
        get(
            &gw.url("/api/web-only/x"),
            &[("authorization", &bearer(&t))]
        )
        .await
        .status,
        200
    );
}

#[tokio::test]
async fn time_claims() {
    let (gw, keys) = gw().await;
    let mut c = claims(ISS_RSA, "a", "chat");
    c.insert("nbf".into(), json!(now() + 300));
    let future = sign(keys, Algorithm::RS256, &c);
    refused(
        &gw,
        "/api/chat/x",
        &[("authorization", &bearer(&future))],
        401,
        "invalid_token",
    )
    .await;

    let mut c = claims(ISS_RSA, "a", "chat");
    c.remove("exp");
    let no_exp = sign(keys, Algorithm::RS256, &c);
    refused(
        &gw,
        "/api/chat/x",
        &[("authorization", &bearer(&no_exp))],
        401,
        "invalid_token",
    )
    .await;

    let mut c = claims(ISS_RSA, "a", "chat");
    c.insert("exp".into(), json!(now() - 120));
    let expired = sign(keys, Algorithm::RS256, &c);
    let r = refused(
        &gw,
        "/api/chat/x",
        &[("authorization", &bearer(&expired))],
        401,
        "token_expired",
    )
    .await;
    assert_eq!(r.body["needs_refresh"], true);
    assert!(r.headers["www-authenticate"]
        .to_str()
        .expect("ascii")
        .contains("invalid_token"));
    assert!(!r.raw.contains(&expired));

    // Inside the 30 s leeway: accepted.
    let mut c = claims(ISS_RSA, "a", "chat");
    c.insert("exp".into(), json!(now() - 10));
    let inside = sign(keys, Algorithm::RS256, &c);
    assert_eq!(
        get(
            &gw.url("/api/chat/x"),
            &[("authorization", &bearer(&inside))]
        )
        .await
        .status,
        200
    );
}

#[tokio::test]
async fn malformed_and_crit_tokens() {
    let (gw, keys) = gw().await;
    let mut h = Header::new(Algorithm::RS256);
    h.crit = Some(vec!["exp".into()]);
    let crit = sign_with_header(keys, h, &claims(ISS_RSA, "a", "chat"));
    for t in [
        "not!base64.@@@.###",
        "a.b.c",
        "eyJhbGciOiJSUzI1NiJ9.e30.e30",
        crit.as_str(),
        "opaque-no-introspection",
    ] {
        refused(
            &gw,
            "/api/chat/x",
            &[("authorization", &bearer(t))],
            401,
            "invalid_token",
        )
        .await;
    }
}

#[tokio::test]
async fn missing_token_and_scopes() {
    let (gw, keys) = gw().await;
    let r = refused(&gw, "/api/chat/x", &[], 401, "missing_token").await;
    assert_eq!(r.headers["www-authenticate"], "Bearer realm=\"authgate\"");
    // Other schemes count as absent.
    refused(
        &gw,
        "/api/chat/x",
        &[("authorization", "Basic dXNlcjpwdw==")],
        401,
        "missing_token",
    )
    .await;
    let t = sign(keys, Algorithm::RS256, &claims(ISS_RSA, "a", "chat"));
    let r = send(
        reqwest::Method::POST,
        &gw.url("/api/bill/pay"),
        &[("authorization", &bearer(&t))],
        None,
    )
    .await;
    assert_error(&r, 403, "insufficient_scope");
    assert_eq!(r.body["required_scopes"], json!(["paybill"]));
    assert_eq!(
        r.headers["www-authenticate"],
        "Bearer realm=\"authgate\", error=\"insufficient_scope\", scope=\"paybill\""
    );
    // scp array form grants too
    let mut c = claims(ISS_RSA, "a", "");
    c.remove("scope");
    c.insert("scp".into(), json!(["paybill"]));
    let t = sign(keys, Algorithm::RS256, &c);
    let r = send(
        reqwest::Method::POST,
        &gw.url("/api/bill/pay"),
        &[("authorization", &bearer(&t))],
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(
        gw.upstream.only().header("x-authgate-scopes"),
        Some("paybill")
    );
}

#[tokio::test]
async fn conflicting_credentials() {
    let (gw, keys) = gw().await;
    let t1 = sign(keys, Algorithm::RS256, &claims(ISS_RSA, "a", "chat"));
    let t2 = sign(keys, Algorithm::RS256, &claims(ISS_RSA, "b", "chat"));
    refused(
        &gw,
        "/api/chat/x",
        &[
            ("authorization", &bearer(&t1)),
            ("authorization", &bearer(&t1)),
        ],
        400,
        "conflicting_credentials",
    )
    .await;
    refused(
        &gw,
        "/api/chat/x",
        &[
            ("authorization", &bearer(&t1)),
            ("cookie", &format!("AuthCookie={t2}")),
        ],
        400,
        "conflicting_credentials",
    )
    .await;
    refused(
        &gw,
        "/api/chat/x",
        &[("cookie", &format!("AuthCookie={t1}; AuthCookie={t2}"))],
        400,
        "conflicting_credentials",
    )
    .await;
    // The same token in header and cookie is one identity, and both are stripped.
    let r = get(
        &gw.url("/api/chat/x"),
        &[
            ("authorization", &bearer(&t1)),
            ("cookie", &format!("theme=dark; AuthCookie={t1}")),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let up = gw.upstream.only();
    assert_eq!(up.header("cookie"), Some("theme=dark"));
    assert_eq!(up.header("authorization"), None);
}

#[tokio::test]
async fn spoofed_identity_headers_never_reach_the_upstream() {
    let (gw, keys) = gw().await;
    let t = sign(keys, Algorithm::RS256, &claims(ISS_RSA, "a", "chat"));
    let spoof = [
        ("x-authgate-customer-id", "cid_spoofed"),
        ("x-authgate-auth", "authenticated"),
        ("x-authgate-issuer", "web"),
    ];
    for (path, token) in [
        ("/api/chat/x", Some(&t)),
        ("/api/optional/x", None),
        ("/api/public/x", Some(&t)),
    ] {
        let mut h: Vec<(&str, &str)> = spoof.to_vec();
        let b;
        if let Some(t) = token {
            b = bearer(t);
            h.push(("authorization", &b));
        }
        assert_eq!(get(&gw.url(path), &h).await.status, 200, "{path}");
    }
    let seen = gw.upstream.seen();
    assert_eq!(seen.len(), 3);
    assert_ne!(
        seen[0].header("x-authgate-customer-id"),
        Some("cid_spoofed")
    );
    for anon in &seen[1..] {
        assert_eq!(anon.header("x-authgate-auth"), Some("anonymous"));
        assert_eq!(anon.header("x-authgate-customer-id"), None);
        assert_eq!(anon.header("x-authgate-issuer"), None);
    }
    // auth = "none" ignores credentials but does not strip them (only identity headers).
    assert_eq!(seen[2].header("x-authgate-auth"), Some("anonymous"));
}

#[tokio::test]
async fn connection_header_cannot_remove_injected_identity() {
    let (gw, keys) = gw().await;
    let t = sign(keys, Algorithm::RS256, &claims(ISS_RSA, "a", "chat"));
    let req = format!(
        "GET /api/chat/x HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {t}\r\nConnection: close, x-authgate-customer-id, x-hop\r\nx-hop: 1\r\nx-authgate-customer-id: cid_spoof\r\n\r\n"
    );
    let (status, _) = raw(gw.addr, req.as_bytes()).await;
    assert_eq!(status, 200);
    let up = gw.upstream.only();
    assert!(up
        .header("x-authgate-customer-id")
        .expect("injected")
        .starts_with("cid_"));
    assert_ne!(up.header("x-authgate-customer-id"), Some("cid_spoof"));
    assert_eq!(up.header("x-hop"), None);
}

#[tokio::test]
async fn raw_subject_with_crlf_is_refused_when_not_pseudonymized() {
    let keys = Keys::generate();
    let toml =
        TestGateway::default_toml(keys).replace("pseudonymize = true", "pseudonymize = false");
    let gw = TestGateway::start(&toml, "").await;
    for sub in [
        "alice\r\nx-authgate-auth: authenticated",
        "bob\nevil",
        "nul\0byte",
    ] {
        let t = sign(keys, Algorithm::RS256, &claims(ISS_RSA, sub, "chat"));
        refused(
            &gw,
            "/api/chat/x",
            &[("authorization", &bearer(&t))],
            401,
            "invalid_token",
        )
        .await;
    }
    let t = sign(
        keys,
        Algorithm::RS256,
        &claims(ISS_RSA, "plain-subject", "chat"),
    );
    assert_eq!(
        get(&gw.url("/api/chat/x"), &[("authorization", &bearer(&t))])
            .await
            .status,
        200
    );
    assert_eq!(
        gw.upstream.only().header("x-authgate-customer-id"),
        Some("plain-subject")
    );
}

#[tokio::test]
async fn ambiguous_paths_are_refused_and_normalized_paths_forwarded() {
    let (gw, keys) = gw().await;
    let t = sign(keys, Algorithm::RS256, &claims(ISS_RSA, "a", "chat"));
    for path in [
        "/api/chat/a%2Fb",
        "/api/chat/a%5Cb",
        "/api/chat/%00",
        "/api/../../etc",
        "/api/chat\\x",
        // raw (unescaped) non-ASCII: refused whether or not the rest of the
        // path is already normal (the fast path used to let it through)
        "/api/chat/caf\u{e9}",
        "/api/chat//caf\u{e9}",
    ] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n");
        let (status, text) = raw(gw.addr, req.as_bytes()).await;
        assert_eq!(status, 400, "{path}: {text}");
        assert!(text.contains("bad_request"), "{path}: {text}");
    }
    // `..` resolving to another route is matched on the resolved path.
    let req = format!("GET /api/public/../admin HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n");
    let (status, _) = raw(gw.addr, req.as_bytes()).await;
    assert_eq!(
        status, 404,
        "/api/public/../admin resolves to /admin: no route"
    );
    let req = "GET /api/public/%2e%2e/chat/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        .to_string();
    let (status, _) = raw(gw.addr, req.as_bytes()).await;
    assert_eq!(status, 401, "%2e%2e resolves into the protected route");
    assert_eq!(gw.upstream.count(), 0);
    let req = format!("GET //api//chat/./x HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n");
    let (status, _) = raw(gw.addr, req.as_bytes()).await;
    assert_eq!(status, 200);
    assert_eq!(gw.upstream.only().uri, "/api/chat/x");
}

#[tokio::test]
async fn not_found_and_method_not_allowed() {
    let (gw, keys) = gw().await;
    refused(&gw, "/nothing/here", &[], 404, "not_found").await;
    let t = sign(keys, Algorithm::RS256, &claims(ISS_RSA, "a", "paybill"));
    let r = get(&gw.url("/api/bill/pay"), &[("authorization", &bearer(&t))]).await;
    assert_error(&r, 405, "method_not_allowed");
    assert_eq!(r.headers["allow"], "POST");
    assert_eq!(gw.upstream.count(), 0);
}

#[tokio::test]
async fn query_tokens_only_on_websocket_upgrades() {
    let (gw, keys) = gw().await;
    let t = sign(keys, Algorithm::RS256, &claims(ISS_RSA, "a", "chat"));
    refused(
        &gw,
        &format!("/api/chat/x?access_token={t}"),
        &[],
        401,
        "missing_token",
    )
    .await;
}

#[tokio::test]
async fn upstream_down_and_slow() {
    let keys = Keys::generate();
    // An address nobody listens on: bind, take the port, close.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_addr = dead.local_addr().expect("addr");
    drop(dead);
    let upstream = Upstream::start().await;
    let gw = TestGateway::start_with_upstream(
        &TestGateway::default_toml(keys),
        "",
        upstream,
        &format!("http://{dead_addr}"),
    )
    .await;
    let r = get(&gw.url("/api/public/x"), &[]).await;
    assert_error(&r, 502, "upstream_unavailable");

    let gw = TestGateway::start(
        &TestGateway::default_toml(keys),
        "request_timeout = \"500ms\"",
    )
    .await;
    let r = get(&gw.url("/slow/x"), &[]).await;
    assert_error(&r, 504, "upstream_timeout");
}

#[tokio::test]
async fn admin_health_and_readiness() {
    let (gw, _keys) = gw().await;
    let admin = gw.admin.expect("admin");
    assert_eq!(get(&gw.url("/api/public/x"), &[]).await.status, 200);
    let r = get(&format!("http://{admin}/healthz"), &[]).await;
    assert_eq!(r.status, 200);
    let r = get(&format!("http://{admin}/readyz"), &[]).await;
    assert_eq!(r.status, 200);
    let r = get(&format!("http://{admin}/metrics"), &[]).await;
    assert!(r.raw.contains("authgate_requests_total"), "{}", r.raw);
}

#[tokio::test]
async fn oversized_head_is_431() {
    let keys = Keys::generate();
    let gw = TestGateway::start(&TestGateway::default_toml(keys), "max_header_bytes = 2048").await;
    let big = "a".repeat(3000);
    let r = get(&gw.url("/api/public/x"), &[("x-big", &big)]).await;
    assert_error(&r, 431, "header_too_large");
    assert_eq!(gw.upstream.count(), 0);
}

// ---- hardening found in review: each would have failed open before ----

#[tokio::test]
async fn path_parameters_cannot_smuggle_a_different_route() {
    let (gw, _keys) = gw().await;
    for path in [
        "/api/public/..;/bill/pay",
        "/api/public;x/y",
        "/api/public/%3B/x",
    ] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        let (status, text) = raw(gw.addr, req.as_bytes()).await;
        assert_eq!(status, 400, "{path}: {text}");
    }
    assert_eq!(gw.upstream.count(), 0);
}

#[tokio::test]
async fn unreadable_cookie_header_is_refused_not_skipped() {
    let (gw, keys) = gw().await;
    let t = sign(keys, Algorithm::RS256, &claims(ISS_RSA, "a", "chat"));
    let other = sign(keys, Algorithm::RS256, &claims(ISS_RSA, "b", "chat"));
    let mut bytes = format!(
        "GET /api/chat/x HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {t}\r\nCookie: AuthCookie={other}; x=~\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    // One obs-text byte (0xFF) in the Cookie header.
    if let Some(pos) = bytes.iter().position(|&b| b == b'~') {
        bytes[pos] = 0xFF;
    }
    let (status, _) = raw(gw.addr, &bytes).await;
    assert_eq!(status, 400);
    assert_eq!(gw.upstream.count(), 0);
}

#[tokio::test]
async fn malformed_bearer_is_invalid_not_anonymous() {
    let (gw, keys) = gw().await;
    let t = sign(keys, Algorithm::RS256, &claims(ISS_RSA, "a", "chat"));
    for value in [format!("Bearer\t{t}"), format!("Bearer{t}")] {
        let r = refused(
            &gw,
            "/api/optional/x",
            &[("authorization", &value)],
            401,
            "invalid_token",
        )
        .await;
        assert!(r.headers["www-authenticate"]
            .to_str()
            .expect("ascii")
            .contains("invalid_token"));
    }
}

#[tokio::test]
async fn tokens_are_stripped_on_every_route_and_from_plain_urls() {
    let (gw, keys) = gw().await;
    let t = sign(keys, Algorithm::RS256, &claims(ISS_RSA, "a", "chat"));
    let r = get(
        &gw.url(&format!("/api/public/x?keep=1&access_token={t}")),
        &[
            ("authorization", &bearer(&t)),
            ("cookie", &format!("AuthCookie={t}; theme=dark")),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let up = gw.upstream.only();
    assert_eq!(up.uri, "/api/public/x?keep=1");
    assert_eq!(up.header("authorization"), None);
    assert_eq!(up.header("cookie"), Some("theme=dark"));
    assert!(!up.raw_text().contains(&t));
    // Other schemes are the upstream's business and stay.
    let r = get(
        &gw.url("/api/public/y"),
        &[("authorization", "Basic dXNlcjpwdw==")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        gw.upstream.seen()[1].header("authorization"),
        Some("Basic dXNlcjpwdw==")
    );
}

#[tokio::test]
async fn another_issuers_expired_token_is_invalid_not_expired() {
    let (gw, keys) = gw().await;
    let mut c = claims(ISS_EC, "a", "chat");
    c.insert("exp".into(), json!(now() - 3600));
    let t = sign(keys, Algorithm::ES256, &c);
    let r = refused(
        &gw,
        "/api/web-only/x",
        &[("authorization", &bearer(&t))],
        401,
        "invalid_token",
    )
    .await;
    assert!(r.body.get("needs_refresh").is_none());
    // And a cached verification is still held to the route's list.
    let t = sign(keys, Algorithm::ES256, &claims(ISS_EC, "a", "chat"));
    assert_eq!(
        get(&gw.url("/api/chat/x"), &[("authorization", &bearer(&t))])
            .await
            .status,
        200
    );
    let r = get(
        &gw.url("/api/web-only/x"),
        &[("authorization", &bearer(&t))],
    )
    .await;
    assert_error(&r, 401, "invalid_token");
}

#[tokio::test]
async fn match_claims_fails_closed() {
    let keys = Keys::generate();
    let toml = format!(
        "{}\n[[routes]]\nname = \"mine\"\npath = \"/api/mine/{{*rest}}\"\nupstream = \"chat\"\nauth = \"required\"\nmatch_claims = {{ sub = \"header:x-customer\", \"/ext/cid\" = \"cookie:cid\" }}\n",
        TestGateway::default_toml(keys)
    );
    let gw = TestGateway::start(&toml, "").await;
    let t = sign(keys, Algorithm::RS256, &claims(ISS_RSA, "alice", "chat"));
    let b = bearer(&t);
    // equal: ok; absent: ok
    assert_eq!(
        get(
            &gw.url("/api/mine/x"),
            &[("authorization", &b), ("x-customer", "alice")]
        )
        .await
        .status,
        200
    );
    assert_eq!(
        get(&gw.url("/api/mine/x"), &[("authorization", &b)])
            .await
            .status,
        200
    );
    let before = gw.upstream.count();
    // different, declared twice, or declared while the token lacks the claim: 403
    for h in [
        vec![("x-customer", "bob")],
        vec![("x-customer", "alice"), ("x-customer", "bob")],
        vec![("cookie", "cid=victim")],
    ] {
        let mut headers = vec![("authorization", b.as_str())];
        headers.extend(h);
        let r = get(&gw.url("/api/mine/x"), &headers).await;
        assert_error(&r, 403, "identity_mismatch");
    }
    assert_eq!(gw.upstream.count(), before);
}
