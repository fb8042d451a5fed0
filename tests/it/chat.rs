//! The chat contract (SPEC §3 body locators, §4 `context_claim`, §5, §6):
//! body tokens, the ASAPP context object, the PII guard, Omnichannel
//! `lwicontexts`, `match_claims`, and one customer id across channels —
//! each asserted on the response *and* on what the upstream received.

use crate::support::*;
use jsonwebtoken::Algorithm;
use serde_json::{json, Map, Value};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ISS_PARTNER: &str = "https://partner.issuer.test";

/// A gateway configuration that reads bodies: the token may sit in the
/// header, the `AuthCookie` cookie or `Auth.Token`; routes:
///
/// - `/api/chat/{*rest}` required, scope `chat`, context, `sub` = `CustomerId`
/// - `/api/bill/{*rest}` required, scope `paybill`, context
/// - `/api/context/{*rest}` optional, context (analytics before login)
/// - `/api/agent/{*rest}` required, no scopes, omni issuer only
/// - `/api/stream/{*rest}` optional, no context: reads the body only for the token
///
/// Issuers: `web` (RS256), `mobile` (ES256) and `omni` (HS256, `lwicontexts`)
/// share the `customers` namespace; `partner` (EdDSA) is in `partners`.
fn chat_toml(keys: &Keys, pii: &str) -> String {
    format!(
        r#"
[credentials]
token = ["header:authorization", "cookie:AuthCookie", "body:/Auth/Token", "query:access_token"]
strip = true

[identity]
pseudonymize = true
key_file = "{id}"
customer_info_pii = "{pii}"

[[issuers]]
name = "web"
iss = "{ISS_RSA}"
audiences = ["{AUD}"]
algorithms = ["RS256"]
keys = ["{rsa}"]
leeway = "30s"
namespace = "customers"

[[issuers]]
name = "mobile"
iss = "{ISS_EC}"
audiences = ["{AUD}"]
algorithms = ["ES256"]
keys = ["{ec}"]
leeway = "30s"
namespace = "customers"

[[issuers]]
name = "omni"
iss = "{ISS_HS}"
algorithms = ["HS256"]
secret_file = "{hs}"
leeway = "30s"
context_claim = "lwicontexts"
context_keys = ["msdyn_cartvalue", "msdyn_isvip"]
namespace = "customers"

[[issuers]]
name = "partner"
iss = "{ISS_PARTNER}"
audiences = ["{AUD}"]
algorithms = ["EdDSA"]
keys = ["{ed}"]
leeway = "30s"
namespace = "partners"

[[routes]]
name = "chat"
path = "/api/chat/{{*rest}}"
upstream = "chat"
auth = "required"
scopes = ["chat"]
context = "body:/"
match_claims = {{ sub = "body:/CustomerId" }}

[[routes]]
name = "bill"
path = "/api/bill/{{*rest}}"
upstream = "chat"
auth = "required"
scopes = ["paybill"]
context = "body:/"

[[routes]]
name = "context"
path = "/api/context/{{*rest}}"
upstream = "chat"
auth = "optional"
context = "body:/"

[[routes]]
name = "agent"
path = "/api/agent/{{*rest}}"
upstream = "chat"
auth = "required"
issuers = ["omni"]

[[routes]]
name = "stream"
path = "/api/stream/{{*rest}}"
upstream = "chat"
auth = "optional"
"#,
        id = keys.id_key_file.display(),
        rsa = keys.rsa_public.display(),
        ec = keys.ec_public.display(),
        ed = keys.ed_public.display(),
        hs = keys.hmac_file.display(),
    )
}

const LIMITS: &str = "max_body_bytes = 65536\nrequest_timeout = \"5s\"";

async fn gw_with(pii: &str) -> (TestGateway, &'static Keys) {
    let keys = Keys::generate();
    (
        TestGateway::start(&chat_toml(keys, pii), LIMITS).await,
        keys,
    )
}

async fn gw() -> (TestGateway, &'static Keys) {
    gw_with("redact").await
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// A web (RS256) token for `sub` with `scope`.
fn web(keys: &Keys, sub: &str, scope: &str) -> String {
    sign(keys, Algorithm::RS256, &claims(ISS_RSA, sub, scope))
}

/// POSTs `body` as `application/json`.
async fn post_json(url: &str, headers: &[(&str, &str)], body: &Value) -> Reply {
    post_raw(url, headers, "application/json", body.to_string()).await
}

async fn post_raw(
    url: &str,
    headers: &[(&str, &str)],
    ct: &str,
    body: impl Into<Vec<u8>>,
) -> Reply {
    send(reqwest::Method::POST, url, headers, Some((ct, body.into()))).await
}

/// Asserts an error reply and that the upstream received nothing.
fn refused(gw: &TestGateway, r: &Reply, status: u16, code: &str) {
    assert_error(r, status, code);
    assert_eq!(
        gw.upstream.count(),
        0,
        "upstream must receive nothing for {code}: {:#?}",
        gw.upstream.seen()
    );
}

fn upstream_json(up: &Recorded) -> Value {
    serde_json::from_slice(&up.body).expect("upstream body is JSON")
}

fn assert_content_length_matches(up: &Recorded) {
    let cl: usize = up
        .header("content-length")
        .expect("content-length forwarded")
        .parse()
        .expect("numeric content-length");
    assert_eq!(cl, up.body.len(), "Content-Length must match the body");
}

const IDENTITY_HEADERS: [&str; 6] = [
    "x-authgate-customer-id",
    "x-authgate-issuer",
    "x-authgate-scopes",
    "x-authgate-token-expires",
    "x-authgate-context",
    "x-authgate-assertion",
];

// ---------------------------------------------------------------------------
// Body tokens
// ---------------------------------------------------------------------------

#[tokio::test]
async fn body_token_is_accepted_and_stripped_keeping_every_other_member() {
    let (gw, keys) = gw().await;
    let token = web(keys, "alice", "chat");
    let body = json!({
        "CustomerId": "alice",
        "Auth": {
            "Token": token,
            "Scopes": ["chat"],
            "Cookies": {"session": "s1"},
            "Headers": {"X-Custom-Header": "v"},
            "Body": {"customParam": "p"}
        },
        "message": {"text": "héllo", "n": [1, 2.5, true, null]},
        "ExternalSessionId": "j6oAOxCWZh"
    });
    let r = post_json(&gw.url("/api/chat/send"), &[], &body).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let up = gw.upstream.only();
    assert_eq!(up.method, "POST");
    assert_eq!(up.header("x-authgate-auth"), Some("authenticated"));
    assert_eq!(up.header("x-authgate-issuer"), Some("web"));
    assert_eq!(up.header("x-authgate-scopes"), Some("chat"));
    let mut expected = body.clone();
    expected["Auth"]
        .as_object_mut()
        .expect("Auth")
        .remove("Token");
    assert_eq!(upstream_json(&up), expected, "only Auth.Token is removed");
    assert_content_length_matches(&up);
    assert!(
        !up.raw_text().contains(&token),
        "the token never goes upstream"
    );
}

#[tokio::test]
async fn body_token_on_a_route_without_context_is_stripped_too() {
    let (gw, keys) = gw().await;
    let token = web(keys, "alice", "chat");
    let body = json!({"Auth": {"Token": token}, "text": "hi"});
    let r = post_json(&gw.url("/api/stream/x"), &[], &body).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let up = gw.upstream.only();
    assert_eq!(up.header("x-authgate-auth"), Some("authenticated"));
    assert_eq!(upstream_json(&up), json!({"Auth": {}, "text": "hi"}));
    assert_content_length_matches(&up);
}

#[tokio::test]
async fn body_token_differing_from_header_token_is_conflicting() {
    let (gw, keys) = gw().await;
    let a = web(keys, "alice", "chat");
    let b = web(keys, "bob", "chat");
    let r = post_json(
        &gw.url("/api/chat/send"),
        &[("authorization", &bearer(&a))],
        &json!({"Auth": {"Token": b}}),
    )
    .await;
    refused(&gw, &r, 400, "conflicting_credentials");
    // A cookie and a body token that differ, too.
    let r = post_json(
        &gw.url("/api/chat/send"),
        &[("cookie", &format!("AuthCookie={a}"))],
        &json!({"Auth": {"Token": b}}),
    )
    .await;
    refused(&gw, &r, 400, "conflicting_credentials");
}

#[tokio::test]
async fn same_token_in_header_and_body_is_one_credential() {
    let (gw, keys) = gw().await;
    let a = web(keys, "alice", "chat");
    let r = post_json(
        &gw.url("/api/chat/send"),
        &[("authorization", &bearer(&a))],
        &json!({"Auth": {"Token": a, "Scopes": ["chat"]}, "text": "hi"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let up = gw.upstream.only();
    assert_eq!(up.header("x-authgate-auth"), Some("authenticated"));
    assert_eq!(up.header("authorization"), None, "both sources stripped");
    assert_eq!(
        upstream_json(&up),
        json!({"Auth": {"Scopes": ["chat"]}, "text": "hi"})
    );
    assert_content_length_matches(&up);
    assert!(!up.raw_text().contains(&a));
}

#[tokio::test]
async fn non_string_body_token_is_refused() {
    let (gw, _keys) = gw().await;
    // On a context route the context validator names the field.
    let r = post_json(
        &gw.url("/api/context/x"),
        &[],
        &json!({"Auth": {"Token": 42}}),
    )
    .await;
    refused(&gw, &r, 400, "invalid_context");
    assert_eq!(r.body["field"], "Auth.Token");
}

// ---------------------------------------------------------------------------
// Bad bodies
// ---------------------------------------------------------------------------

#[tokio::test]
async fn duplicate_token_keys_are_refused_rather_than_guessed() {
    let (gw, keys) = gw().await;
    let a = web(keys, "alice", "chat");
    for body in [
        r#"{"Auth":{"Token":"a","Token":"b"}}"#.to_owned(),
        format!(r#"{{"Auth":{{"Token":"{a}","Token":"{a}"}}}}"#),
        format!(r#"{{"Auth":{{"Token":"{a}"}},"Auth":{{"Token":"x"}}}}"#),
        // the same key, once escaped
        format!(r#"{{"Auth":{{"Token":"{a}","T\u006fken":"x"}}}}"#),
    ] {
        let r = post_raw(&gw.url("/api/chat/send"), &[], "application/json", body).await;
        refused(&gw, &r, 400, "bad_request");
    }
    // also on an optional route without context
    let r = post_raw(
        &gw.url("/api/stream/x"),
        &[],
        "application/json",
        r#"{"Auth":{"Token":"a","Token":"b"}}"#,
    )
    .await;
    refused(&gw, &r, 400, "bad_request");
}

#[tokio::test]
async fn malformed_non_json_and_deep_bodies_are_bad_requests() {
    let (gw, keys) = gw().await;
    let a = web(keys, "alice", "chat");
    let auth = bearer(&a);
    let h: &[(&str, &str)] = &[("authorization", &auth)];
    let url = gw.url("/api/chat/send");
    for body in [
        r#"{"Auth":"#.to_owned(),
        r#"{"Auth":{}} trailing"#.to_owned(),
        "not json".to_owned(),
        "[".repeat(10_000),
        format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
        format!("{}1{}", r#"{"a":"#.repeat(10_000), "}".repeat(10_000)),
    ] {
        let r = post_raw(&url, h, "application/json", body).await;
        refused(&gw, &r, 400, "bad_request");
    }
    // Invalid UTF-8.
    let r = post_raw(&url, h, "application/json", b"{\"a\":\"\xff\"}".to_vec()).await;
    refused(&gw, &r, 400, "bad_request");
    // Valid JSON under a non-JSON content type, or none at all.
    for ct in ["text/plain", "application/x-www-form-urlencoded", ""] {
        let r = post_raw(&url, h, ct, r#"{"text":"hi"}"#).await;
        refused(&gw, &r, 400, "bad_request");
    }
    // The gateway is still alive and a good body still goes through.
    let r = post_raw(
        &url,
        h,
        "application/json; charset=utf-8",
        r#"{"text":"hi"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let up = gw.upstream.only();
    assert_eq!(
        &up.body[..],
        br#"{"text":"hi"}"#,
        "untouched body is forwarded byte for byte"
    );
}

/// Sends a request head and `total` bytes of body (chunked when asked) and
/// returns the status and the response, reading only until the response is
/// complete (the gateway may close without reading the rest).
async fn send_big(addr: SocketAddr, head: String, total: usize, chunked: bool) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await?;
        let piece = vec![b' '; 64 * 1024];
        let mut sent = 0;
        while sent < total {
            let n = piece.len().min(total - sent);
            if chunked {
                wr.write_all(format!("{n:x}\r\n").as_bytes()).await?;
            }
            wr.write_all(&piece[..n]).await?;
            if chunked {
                wr.write_all(b"\r\n").await?;
            }
            sent += n;
        }
        if chunked {
            wr.write_all(b"0\r\n\r\n").await?;
        }
        wr.flush().await
    });
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 8192];
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            // Stop once the head and a Content-Length body are complete.
            let text = String::from_utf8_lossy(&buf).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let cl = text[..end]
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())
                            .flatten()
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + cl {
                    break;
                }
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(20), read).await;
    writer.abort();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[tokio::test]
async fn ten_megabyte_body_on_a_reading_route_is_413() {
    let (gw, keys) = gw().await;
    let a = web(keys, "alice", "chat");
    const TEN_MB: usize = 10 * 1024 * 1024;
    for path in ["/api/chat/send", "/api/context/x", "/api/stream/x"] {
        // Declared with Content-Length.
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {a}\r\nContent-Type: application/json\r\nContent-Length: {TEN_MB}\r\n\r\n"
        );
        let (status, text) = send_big(gw.addr, head, TEN_MB, false).await;
        assert_eq!(status, 413, "{path} with Content-Length: {text}");
        assert!(text.contains("\"payload_too_large\""), "{text}");
        // Chunked, no Content-Length: refused once the limit is crossed.
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {a}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        let (status, text) = send_big(gw.addr, head, TEN_MB, true).await;
        assert_eq!(status, 413, "{path} chunked: {text}");
        assert!(text.contains("\"payload_too_large\""), "{text}");
    }
    assert_eq!(gw.upstream.count(), 0, "upstream must receive nothing");
    // Just at the limit is fine (a JSON string padded to exactly 65536 bytes).
    let pad = 65536 - r#"{"p":""}"#.len();
    let body = format!(r#"{{"p":"{}"}}"#, "x".repeat(pad));
    assert_eq!(body.len(), 65536);
    let r = post_raw(
        &gw.url("/api/context/x"),
        &[],
        "application/json",
        body.clone(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(gw.upstream.only().body.len(), body.len());
}

// ---------------------------------------------------------------------------
// The context object
// ---------------------------------------------------------------------------

#[tokio::test]
async fn every_context_member_of_the_wrong_type_names_its_field() {
    let (gw, keys) = gw().await;
    let mut cases: Vec<(Value, &str)> = vec![
        (json!({"Auth": "x"}), "Auth"),
        (json!({"Auth": {"Scopes": "chat"}}), "Auth.Scopes"),
        (json!({"Auth": {"Scopes": ["chat", 7]}}), "Auth.Scopes[1]"),
        (
            json!({"Auth": {"Scopes": ["chat", "a b"]}}),
            "Auth.Scopes[1]",
        ),
        (json!({"Auth": {"Cookies": {"x": 1}}}), "Auth.Cookies.x"),
        (json!({"Auth": {"Cookies": ["x"]}}), "Auth.Cookies"),
        (
            json!({"Auth": {"Headers": {"X-H": {"a": "b"}}}}),
            "Auth.Headers.X-H",
        ),
        (
            json!({"Auth": {"Body": {"customParam": false}}}),
            "Auth.Body.customParam",
        ),
        (json!({"Auth": {"Body": "p"}}), "Auth.Body"),
        (
            json!({"CustomerInfo": {"category": ["payment"]}}),
            "CustomerInfo.category",
        ),
        (
            json!({"CustomerInfo": {"category": "payment", "n": 3}}),
            "CustomerInfo.n",
        ),
        (json!({"CustomerInfo": "payment"}), "CustomerInfo"),
        (
            json!({"Segments": ["north america", "usa", 3]}),
            "Segments[2]",
        ),
        (json!({"Segments": "usa"}), "Segments"),
        (json!({"CompanySubdivision": 42}), "CompanySubdivision"),
        (json!({"CompanySubdivision": ["a"]}), "CompanySubdivision"),
        (
            json!({"CompanySubdivision": {"division": 1}}),
            "CompanySubdivision.division",
        ),
        (json!({"ExternalSessionId": 12345}), "ExternalSessionId"),
        (json!({"ExternalSessionId": "a\nb"}), "ExternalSessionId"),
        (
            json!({"ExternalSessionType": {"t": "visitID"}}),
            "ExternalSessionType",
        ),
        (json!(["not", "an", "object"]), "(context)"),
    ];
    cases.push((
        json!({"ExternalSessionId": "x".repeat(257)}),
        "ExternalSessionId",
    ));
    for (body, field) in &cases {
        // Anonymous, on the optional route …
        let r = post_json(&gw.url("/api/context/x"), &[], body).await;
        refused(&gw, &r, 400, "invalid_context");
        assert_eq!(r.body["field"], *field, "{body}: {}", r.raw);
    }
    // … and authenticated on the chat route: the type error wins.
    let a = web(keys, "alice", "chat");
    for (body, field) in &cases {
        let r = post_json(
            &gw.url("/api/chat/x"),
            &[("authorization", &bearer(&a))],
            body,
        )
        .await;
        refused(&gw, &r, 400, "invalid_context");
        assert_eq!(r.body["field"], *field, "{body}: {}", r.raw);
    }
}

#[tokio::test]
async fn valid_context_is_forwarded_as_ascii_json_headers() {
    let (gw, keys) = gw().await;
    let a = web(keys, "alice", "chat");
    let body = json!({
        "CustomerId": "alice",
        "Auth": {"Scopes": ["chat"]},
        "CustomerInfo": {"category": "café", "parent_page": "Pay my Bill", "quote": "say \"hi\""},
        "ExternalSessionId": "j6oAOxCWZh",
        "ExternalSessionType": "visitID",
        "CompanySubdivision": "divisionId",
        "Segments": ["north america", "usa", "northeast", "Zürich"],
        "Unknown": {"ignored": [1, 2]}
    });
    let r = post_json(
        &gw.url("/api/chat/x"),
        &[
            ("authorization", &bearer(&a)),
            ("x-authgate-customer-info", "{\"spoofed\":\"1\"}"),
            ("x-authgate-segments", "[\"vip\"]"),
        ],
        &body,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let up = gw.upstream.only();
    assert_eq!(
        up.header("x-authgate-customer-info"),
        Some(r#"{"category":"caf\u00e9","parent_page":"Pay my Bill","quote":"say \"hi\""}"#)
    );
    assert_eq!(
        up.header("x-authgate-segments"),
        Some(r#"["north america","usa","northeast","Z\u00fcrich"]"#)
    );
    assert_eq!(up.header("x-authgate-subdivision"), Some(r#""divisionId""#));
    assert_eq!(up.header("x-authgate-session-id"), Some("j6oAOxCWZh"));
    assert_eq!(up.header("x-authgate-session-type"), Some("visitID"));
    for name in [
        "x-authgate-customer-info",
        "x-authgate-segments",
        "x-authgate-subdivision",
    ] {
        assert_eq!(up.headers.get_all(name).iter().count(), 1, "{name}");
        let v = up.header(name).expect("ascii");
        assert!(v.is_ascii(), "{name}: {v}");
    }
    // The JSON headers parse back to what the client sent.
    let info: Value =
        serde_json::from_str(up.header("x-authgate-customer-info").expect("info")).expect("json");
    assert_eq!(info, body["CustomerInfo"]);
    // No token was stripped, so the body is forwarded byte for byte.
    assert_eq!(upstream_json(&up), body);
    assert_content_length_matches(&up);

    // The object form of CompanySubdivision is compact JSON.
    let r = post_json(
        &gw.url("/api/chat/x"),
        &[("authorization", &bearer(&a))],
        &json!({"CompanySubdivision": {"brand": "Contoso Café", "division": "east"}}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let up = gw.upstream.seen().pop().expect("second request");
    assert_eq!(
        up.header("x-authgate-subdivision"),
        Some(r#"{"brand":"Contoso Caf\u00e9","division":"east"}"#)
    );
    assert_eq!(up.header("x-authgate-customer-info"), None);
    assert_eq!(up.header("x-authgate-segments"), None);
    assert_eq!(up.header("x-authgate-session-id"), None);

    // Control characters never reach a header raw.
    let r = post_json(
        &gw.url("/api/chat/x"),
        &[("authorization", &bearer(&a))],
        &json!({
            "CustomerInfo": {"note": "line1\r\nx-authgate-customer-id: cid_evil\u{0}\u{7f}"},
            "Segments": ["tab\there", "\u{2028}"]
        }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let up = gw.upstream.seen().pop().expect("third request");
    assert_eq!(
        up.header("x-authgate-customer-info"),
        Some(r#"{"note":"line1\r\nx-authgate-customer-id: cid_evil\u0000\u007f"}"#)
    );
    assert_eq!(
        up.header("x-authgate-segments"),
        Some(r#"["tab\there","\u2028"]"#)
    );
    assert_eq!(
        up.headers.get_all("x-authgate-customer-id").iter().count(),
        1
    );
    assert_ne!(up.header("x-authgate-customer-id"), Some("cid_evil"));
}

#[tokio::test]
async fn requested_scopes_must_be_granted_and_become_the_effective_scopes() {
    let (gw, keys) = gw().await;
    let a = web(keys, "alice", "paybill chat history");
    let auth = bearer(&a);
    let h: &[(&str, &str)] = &[("authorization", &auth)];

    // Not granted: 403 naming the missing scope.
    let r = post_json(
        &gw.url("/api/chat/x"),
        h,
        &json!({"Auth": {"Scopes": ["chat", "admin"]}}),
    )
    .await;
    refused(&gw, &r, 403, "insufficient_scope");
    assert_eq!(r.body["required_scopes"], json!(["admin"]), "{}", r.raw);
    let www = r.headers["www-authenticate"].to_str().expect("ascii");
    assert!(www.contains("insufficient_scope"), "{www}");

    // The route's scopes are checked against the requested set: the token
    // has `chat`, but the client asked only for `paybill`.
    let r = post_json(
        &gw.url("/api/chat/x"),
        h,
        &json!({"Auth": {"Scopes": ["paybill"]}}),
    )
    .await;
    refused(&gw, &r, 403, "insufficient_scope");
    assert_eq!(r.body["required_scopes"], json!(["chat"]), "{}", r.raw);

    // An empty request grants nothing either.
    let r = post_json(&gw.url("/api/chat/x"), h, &json!({"Auth": {"Scopes": []}})).await;
    refused(&gw, &r, 403, "insufficient_scope");

    // A granted subset: exactly the requested ones, sorted, deduplicated.
    let r = post_json(
        &gw.url("/api/chat/x"),
        h,
        &json!({"Auth": {"Scopes": ["paybill", "chat", "paybill"]}}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(
        gw.upstream.only().header("x-authgate-scopes"),
        Some("chat paybill")
    );

    // Without Auth.Scopes: the token's scopes.
    let r = post_json(&gw.url("/api/chat/x"), h, &json!({"text": "hi"})).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(
        gw.upstream.seen()[1].header("x-authgate-scopes"),
        Some("chat history paybill")
    );

    // On the paybill route, asking for just that.
    let r = post_json(
        &gw.url("/api/bill/pay"),
        h,
        &json!({"Auth": {"Scopes": ["paybill"]}}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(
        gw.upstream.seen()[2].header("x-authgate-scopes"),
        Some("paybill")
    );
}

#[tokio::test]
async fn context_without_a_token_is_forwarded_as_anonymous_analytics() {
    let (gw, _keys) = gw().await;
    let body = json!({
        "CustomerInfo": {"action": "ASAPP", "category": "payment", "parent_page": "Pay my Bill"},
        "ExternalSessionId": "j6oAOxCWZh",
        "ExternalSessionType": "visitID",
        "CompanySubdivision": "divisionId",
        "Segments": ["north america", "usa", "northeast"]
    });
    let r = post_json(
        &gw.url("/api/context/analytics"),
        &[
            ("x-authgate-customer-id", "cid_spoofed"),
            ("x-authgate-auth", "authenticated"),
            ("x-authgate-scopes", "admin"),
        ],
        &body,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let up = gw.upstream.only();
    assert_eq!(up.header("x-authgate-auth"), Some("anonymous"));
    for name in IDENTITY_HEADERS {
        assert_eq!(
            up.header(name),
            None,
            "{name} must not be set for anonymous"
        );
    }
    assert_eq!(
        up.header("x-authgate-customer-info"),
        Some(r#"{"action":"ASAPP","category":"payment","parent_page":"Pay my Bill"}"#)
    );
    assert_eq!(
        up.header("x-authgate-segments"),
        Some(r#"["north america","usa","northeast"]"#)
    );
    assert_eq!(up.header("x-authgate-subdivision"), Some(r#""divisionId""#));
    assert_eq!(up.header("x-authgate-session-id"), Some("j6oAOxCWZh"));
    assert_eq!(up.header("x-authgate-session-type"), Some("visitID"));
    assert_eq!(upstream_json(&up), body);

    // Without a token, Auth.Scopes grants nothing and costs nothing.
    let r = post_json(
        &gw.url("/api/context/analytics"),
        &[],
        &json!({"Auth": {"Scopes": ["paybill"]}, "Segments": ["usa"]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let up = gw.upstream.seen().pop().expect("second");
    assert_eq!(up.header("x-authgate-auth"), Some("anonymous"));
    assert_eq!(up.header("x-authgate-scopes"), None);
    assert_eq!(up.header("x-authgate-segments"), Some(r#"["usa"]"#));

    // A context on a required route still needs a token.
    let r = post_json(&gw.url("/api/chat/x"), &[], &body).await;
    assert_error(&r, 401, "missing_token");
    assert_eq!(gw.upstream.count(), 2);
}

// ---------------------------------------------------------------------------
// PII guard
// ---------------------------------------------------------------------------

/// One value per detector, and one that must not trip any of them.
const PII_VALUES: [(&str, &str); 6] = [
    ("email", "reach me at alice.smith@example.com please"),
    ("card_spaces", "4111 1111 1111 1111"),
    ("card_dashes", "5555-5555-5555-4444"),
    ("card_plain", "4111111111111111"),
    ("ssn", "123-45-6789"),
    ("ssn_text", "my ssn is 078-05-1120."),
];
const NOT_PII: [(&str, &str); 4] = [
    ("order_id", "2024123100004567"),
    ("order_spaced", "2024 1231 0000 4567"),
    ("phone_like", "555-12-34"),
    ("category", "payment"),
];

#[tokio::test]
async fn pii_redact_replaces_the_value_in_the_header() {
    let (gw, _keys) = gw_with("redact").await;
    for (key, value) in PII_VALUES {
        let body = json!({"CustomerInfo": {key: value, "category": "payment"}});
        let r = post_json(&gw.url("/api/context/x"), &[], &body).await;
        assert_eq!(r.status, 200, "{key}: {}", r.raw);
        let up = gw.upstream.seen().pop().expect("forwarded");
        let info: Value =
            serde_json::from_str(up.header("x-authgate-customer-info").expect("info"))
                .expect("json");
        assert_eq!(
            info,
            json!({key: "[redacted]", "category": "payment"}),
            "{key}"
        );
        let headers: String = up
            .headers
            .iter()
            .map(|(k, v)| format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())))
            .collect();
        assert!(
            !headers.contains(value),
            "{key} leaked in a header: {headers}"
        );
    }
    assert_eq!(gw.upstream.count(), PII_VALUES.len());
}

#[tokio::test]
async fn pii_redact_means_the_upstream_never_sees_it() {
    let (gw, _keys) = gw_with("redact").await;
    for (key, value) in PII_VALUES {
        let body = json!({"CustomerInfo": {key: value, "category": "payment"}});
        let r = post_json(&gw.url("/api/context/x"), &[], &body).await;
        assert_eq!(r.status, 200, "{key}: {}", r.raw);
        let up = gw.upstream.seen().pop().expect("forwarded");
        assert!(
            !up.raw_text().contains(value),
            "{key}: the upstream received the PII: {}",
            up.raw_text()
        );
    }
}

#[tokio::test]
async fn pii_reject_names_the_field_and_forwards_nothing() {
    let (gw, keys) = gw_with("reject").await;
    for (key, value) in PII_VALUES {
        let body = json!({"CustomerInfo": {"category": "payment", key: value}});
        let r = post_json(&gw.url("/api/context/x"), &[], &body).await;
        refused(&gw, &r, 403, "pii_rejected");
        assert_eq!(r.body["field"], format!("CustomerInfo.{key}"), "{}", r.raw);
        assert!(!r.raw.contains(value), "the error never echoes the value");
    }
    // Authenticated too; and a type error elsewhere wins over PII.
    let a = web(keys, "alice", "chat");
    let r = post_json(
        &gw.url("/api/chat/x"),
        &[("authorization", &bearer(&a))],
        &json!({"CustomerInfo": {"email": "alice@example.com"}}),
    )
    .await;
    refused(&gw, &r, 403, "pii_rejected");
    assert_eq!(r.body["field"], "CustomerInfo.email");
    let r = post_json(
        &gw.url("/api/context/x"),
        &[],
        &json!({"CustomerInfo": {"email": "alice@example.com"}, "Segments": [1]}),
    )
    .await;
    refused(&gw, &r, 400, "invalid_context");
    assert_eq!(r.body["field"], "Segments[0]");
}

#[tokio::test]
async fn pii_allow_forwards_the_values() {
    let (gw, _keys) = gw_with("allow").await;
    let info: Map<String, Value> = PII_VALUES
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
        .collect();
    let body = json!({"CustomerInfo": info});
    let r = post_json(&gw.url("/api/context/x"), &[], &body).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let up = gw.upstream.only();
    let got: Value =
        serde_json::from_str(up.header("x-authgate-customer-info").expect("info")).expect("json");
    assert_eq!(got, Value::Object(info));
}

#[tokio::test]
async fn ordinary_values_are_not_pii() {
    for mode in ["redact", "reject"] {
        let (gw, _keys) = gw_with(mode).await;
        let info: Map<String, Value> = NOT_PII
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
            .collect();
        let r = post_json(
            &gw.url("/api/context/x"),
            &[],
            &json!({"CustomerInfo": info}),
        )
        .await;
        assert_eq!(r.status, 200, "{mode}: {}", r.raw);
        let up = gw.upstream.only();
        let got: Value = serde_json::from_str(up.header("x-authgate-customer-info").expect("info"))
            .expect("json");
        assert_eq!(got, Value::Object(info), "{mode}");
    }
}

// ---------------------------------------------------------------------------
// lwicontexts
// ---------------------------------------------------------------------------

/// Microsoft's published sample payload shape, with fresh times.
fn omni_claims(sub: &str, lwicontexts: Value) -> Map<String, Value> {
    let now = now();
    let v = json!({
        "sub": sub,
        "lwicontexts": lwicontexts,
        "iat": now,
        "iss": ISS_HS,
        "exp": now + 600,
        "nbf": now,
    });
    match v {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn lwicontexts_forwards_only_the_configured_keys() {
    let (gw, keys) = gw().await;
    let sub = "87b4d06c-abc2-e811-a9b0-000d3a10e09e";
    let t = sign(
        keys,
        Algorithm::HS256,
        &omni_claims(
            sub,
            json!("{\"msdyn_cartvalue\":\"10000\", \"msdyn_isvip\":\"false\", \"portalcontactid\":\"drop-me\", \"n\":1.5, \"b\":true, \"z\":null}"),
        ),
    );
    let r = get(
        &gw.url("/api/agent/start"),
        &[
            ("authorization", &bearer(&t)),
            ("x-authgate-context", "{\"msdyn_isvip\":\"true\"}"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let up = gw.upstream.only();
    assert_eq!(up.header("x-authgate-auth"), Some("authenticated"));
    assert_eq!(up.header("x-authgate-issuer"), Some("omni"));
    assert_eq!(
        up.header("x-authgate-context"),
        Some(r#"{"msdyn_cartvalue":"10000","msdyn_isvip":"false"}"#)
    );
    assert_eq!(up.headers.get_all("x-authgate-context").iter().count(), 1);
    let rt = gw.shared.runtime.load();
    assert_eq!(
        up.header("x-authgate-customer-id"),
        Some(rt.customer_id("customers", sub).as_str())
    );
    assert!(
        !up.raw_text().contains(sub),
        "the raw subject never goes upstream"
    );

    // Primitive values keep their JSON type; non-ASCII is escaped.
    let t = sign(
        keys,
        Algorithm::HS256,
        &omni_claims(
            sub,
            json!("{\"msdyn_cartvalue\":10000,\"msdyn_isvip\":false}"),
        ),
    );
    let r = get(
        &gw.url("/api/agent/start"),
        &[("authorization", &bearer(&t))],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(
        gw.upstream.seen()[1].header("x-authgate-context"),
        Some(r#"{"msdyn_cartvalue":10000,"msdyn_isvip":false}"#)
    );
    let t = sign(
        keys,
        Algorithm::HS256,
        &omni_claims(sub, json!("{\"msdyn_isvip\":\"sí\"}")),
    );
    let r = get(
        &gw.url("/api/agent/start"),
        &[("authorization", &bearer(&t))],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(
        gw.upstream.seen()[2].header("x-authgate-context"),
        Some(r#"{"msdyn_isvip":"s\u00ed"}"#)
    );
}

#[tokio::test]
async fn lwicontexts_that_is_not_a_string_of_primitives_is_invalid_token() {
    let (gw, keys) = gw().await;
    for bad in [
        json!("{\"msdyn_cartvalue\":{\"amount\":\"10000\"}}"),
        json!("{\"msdyn_isvip\":[\"false\"]}"),
        json!("{\"portalcontactid\":{\"dropped\":\"but still nested\"}}"),
        json!("[\"msdyn_cartvalue\",\"10000\"]"),
        json!("{\"msdyn_cartvalue\":\"10000\","),
        json!("not json"),
        json!("\"a string\""),
        json!("{\"msdyn_isvip\":\"false\",\"msdyn_isvip\":\"true\"}"),
        json!({"msdyn_cartvalue": "10000"}),
        json!(42),
        json!(true),
        json!(["{}"]),
    ] {
        let t = sign(
            keys,
            Algorithm::HS256,
            &omni_claims("contact-1", bad.clone()),
        );
        let r = get(
            &gw.url("/api/agent/start"),
            &[("authorization", &bearer(&t))],
        )
        .await;
        refused(&gw, &r, 401, "invalid_token");
        let www = r.headers["www-authenticate"].to_str().expect("ascii");
        assert!(www.contains("error=\"invalid_token\""), "{bad}: {www}");
    }
}

// ---------------------------------------------------------------------------
// match_claims
// ---------------------------------------------------------------------------

#[tokio::test]
async fn match_claims_sub_against_body_customer_id() {
    let (gw, keys) = gw().await;
    let a = web(keys, "alice", "chat");
    let auth = bearer(&a);
    let h: &[(&str, &str)] = &[("authorization", &auth)];
    let url = gw.url("/api/chat/x");
    for body in [
        json!({"CustomerId": "mallory"}),
        json!({"CustomerId": "Alice"}),
        json!({"CustomerId": 42}),
        json!({"CustomerId": ["alice"]}),
    ] {
        let r = post_json(&url, h, &body).await;
        refused(&gw, &r, 403, "identity_mismatch");
    }
    // Same with the token in the body.
    let r = post_json(
        &url,
        &[],
        &json!({"CustomerId": "mallory", "Auth": {"Token": a}}),
    )
    .await;
    refused(&gw, &r, 403, "identity_mismatch");

    for body in [
        json!({"CustomerId": "alice", "text": "hi"}),
        json!({"text": "absent"}),
        json!({"CustomerId": null}),
    ] {
        let r = post_json(&url, h, &body).await;
        assert_eq!(r.status, 200, "{body}: {}", r.raw);
        let up = gw.upstream.seen().pop().expect("forwarded");
        assert_eq!(up.header("x-authgate-auth"), Some("authenticated"));
        assert_eq!(upstream_json(&up), body, "the body is forwarded as sent");
    }
    // No body at all: nothing declared, nothing to mismatch.
    let r = get(&url, h).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(gw.upstream.count(), 4);
}

// ---------------------------------------------------------------------------
// One identity across channels
// ---------------------------------------------------------------------------

#[tokio::test]
async fn one_customer_id_across_web_mobile_and_sdk() {
    let (gw, keys) = gw().await;
    let sub = "carol@example.com";
    let web_t = sign(keys, Algorithm::RS256, &claims(ISS_RSA, sub, "chat"));
    let mobile_t = sign(keys, Algorithm::ES256, &claims(ISS_EC, sub, "chat"));
    let sdk_t = sign(keys, Algorithm::HS256, &claims(ISS_HS, sub, "chat"));
    let partner_t = sign(keys, Algorithm::EdDSA, &claims(ISS_PARTNER, sub, "chat"));
    let url = gw.url("/api/chat/x");
    let body = json!({"text": "hi"});

    // web: cookie
    let r = post_json(
        &url,
        &[("cookie", &format!("theme=dark; AuthCookie={web_t}"))],
        &body,
    )
    .await;
    assert_eq!(r.status, 200, "web: {}", r.raw);
    // mobile: bearer header
    let r = post_json(&url, &[("authorization", &bearer(&mobile_t))], &body).await;
    assert_eq!(r.status, 200, "mobile: {}", r.raw);
    // SDK: Auth.Token in the context object
    let r = post_json(&url, &[], &json!({"Auth": {"Token": sdk_t}, "text": "hi"})).await;
    assert_eq!(r.status, 200, "sdk: {}", r.raw);
    // another namespace
    let r = post_json(&url, &[("authorization", &bearer(&partner_t))], &body).await;
    assert_eq!(r.status, 200, "partner: {}", r.raw);

    let seen = gw.upstream.seen();
    assert_eq!(seen.len(), 4);
    let issuers: Vec<&str> = seen
        .iter()
        .map(|r| r.header("x-authgate-issuer").expect("issuer"))
        .collect();
    assert_eq!(issuers, ["web", "mobile", "omni", "partner"]);
    let ids: Vec<&str> = seen
        .iter()
        .map(|r| r.header("x-authgate-customer-id").expect("cid"))
        .collect();
    assert!(ids[0].starts_with("cid_"), "{}", ids[0]);
    assert_eq!(ids[0], ids[1], "web and mobile");
    assert_eq!(ids[0], ids[2], "web and SDK");
    assert_ne!(ids[0], ids[3], "another namespace never collides");
    for r in &seen {
        assert!(
            !r.raw_text().contains(sub),
            "opaque: no raw subject upstream"
        );
        assert_eq!(r.header("authorization"), None);
        assert!(r.body.len() < 64, "every token stripped: {:?}", r.body);
    }
    assert_eq!(seen[0].header("cookie"), Some("theme=dark"));
    assert_eq!(upstream_json(&seen[2]), json!({"Auth": {}, "text": "hi"}));

    // The operator's tool prints exactly what the gateway forwarded.
    let rt = gw.shared.runtime.load();
    assert_eq!(rt.customer_id("customers", sub), ids[0]);
    assert_eq!(rt.customer_id("partners", sub), ids[3]);
    for (ns, id) in [("customers", ids[0]), ("partners", ids[3])] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_authgate"))
            .arg("customer-id")
            .arg("--config")
            .arg(&gw.config_path)
            .args(["--namespace", ns, sub])
            .output()
            .expect("run authgate customer-id");
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), id, "{ns}");
    }
}

#[tokio::test]
async fn chunked_body_token_is_stripped_with_a_correct_content_length() {
    let (gw, keys) = gw().await;
    let a = web(keys, "alice", "chat");
    let body = format!(r#"{{"Auth":{{"Token":"{a}"}},"text":"hi"}}"#);
    let (first, rest) = body.split_at(10);
    let req = format!(
        "POST /api/chat/x HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{first}\r\n{:x}\r\n{rest}\r\n0\r\n\r\n",
        first.len(),
        rest.len()
    );
    let (status, text) = raw(gw.addr, req.as_bytes()).await;
    assert_eq!(status, 200, "{text}");
    let up = gw.upstream.only();
    assert_eq!(up.header("transfer-encoding"), None);
    assert_content_length_matches(&up);
    assert_eq!(upstream_json(&up), json!({"Auth": {}, "text": "hi"}));
    // Unchanged chunked body (no token in it): forwarded as sent.
    let req = "POST /api/context/x HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\n{\"a\":\r\n3\r\n\"b\"\r\n1\r\n}\r\n0\r\n\r\n";
    let (status, text) = raw(gw.addr, req.as_bytes()).await;
    assert_eq!(status, 200, "{text}");
    let up = gw.upstream.seen().pop().expect("second");
    assert_eq!(&up.body[..], br#"{"a":"b"}"#);
}

#[tokio::test]
async fn stripping_the_body_token_keeps_numbers_as_sent() {
    let (gw, keys) = gw().await;
    let a = web(keys, "alice", "chat");
    let body = format!(r#"{{"Auth":{{"Token":"{a}"}},"big":123456789012345678901234567890}}"#);
    let r = post_raw(&gw.url("/api/chat/x"), &[], "application/json", body).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let up = gw.upstream.only();
    let text = String::from_utf8_lossy(&up.body).into_owned();
    assert!(text.contains("123456789012345678901234567890"), "{text}");
    assert!(!text.contains(&a));
}
