//! Issue 4: JWKS issuers that rotate and fail, introspection of opaque
//! tokens, the verification cache and the signed identity assertion —
//! against a controllable fake JWKS server and a fake introspection server,
//! plus interop with a real OpenID provider (`oidc-provider` from npm).
//!
//! Synchronisation is by polling with a deadline (admin `/readyz`, the fake
//! servers' request counters, `authgate_jwks_refresh_total`), never by
//! sleeping a guessed amount.

use crate::support::*;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

const ISS_IDP: &str = "https://idp.jwks.test";

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

// ---------------------------------------------------------------------------
// Polling and admin helpers
// ---------------------------------------------------------------------------

/// Polls `check` every 50 ms until it holds; panics after `within`.
async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn admin_url(gw: &TestGateway, path: &str) -> String {
    format!("http://{}{path}", gw.admin.expect("admin listener"))
}

async fn readyz(gw: &TestGateway) -> u16 {
    get(&admin_url(gw, "/readyz"), &[]).await.status
}

/// Sum of the samples of metric `name` whose label set contains every one
/// of `labels` (e.g. `result="success"`).
async fn metric(gw: &TestGateway, name: &str, labels: &[&str]) -> f64 {
    let text = get(&admin_url(gw, "/metrics"), &[]).await.raw;
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn jwks_refreshes(gw: &TestGateway, result: &str) -> f64 {
    metric(
        gw,
        "authgate_jwks_refresh_total",
        &["issuer=\"idp\"", &format!("result=\"{result}\"")],
    )
    .await
}

/// Waits until the gateway has *completed* a JWKS fetch that began after
/// this call: two more completed fetches of `result` (one may have been in
/// flight already). Needs a short `jwks_refresh`.
async fn wait_for_fresh_fetch(gw: &TestGateway, result: &str) {
    let base = jwks_refreshes(gw, result).await;
    eventually(
        &format!("two more JWKS fetches with result {result}"),
        Duration::from_secs(15),
        || async { jwks_refreshes(gw, result).await >= base + 2.0 },
    )
    .await;
}

// ---------------------------------------------------------------------------
// Signing keys and their JWKs
// ---------------------------------------------------------------------------

/// A private key with a `kid`, and the public JWK the fake IdP publishes.
struct Signer {
    kid: String,
    alg: Algorithm,
    key: EncodingKey,
    jwk: Value,
}

impl Signer {
    /// `jwk_alg` is what the JWK's `alg` says; tokens are signed with `alg`.
    fn new(kid: &str, alg: Algorithm, key: EncodingKey, jwk_alg: Algorithm) -> Signer {
        let mut jwk = Jwk::from_encoding_key(&key, jwk_alg).expect("jwk from key");
        jwk.common.key_id = Some(kid.to_owned());
        Signer {
            kid: kid.to_owned(),
            alg,
            key,
            jwk: serde_json::to_value(&jwk).expect("jwk json"),
        }
    }

    fn rsa(keys: &Keys, kid: &str) -> Signer {
        let key = EncodingKey::from_rsa_pem(keys.rsa_private.as_bytes()).expect("rsa");
        Signer::new(kid, Algorithm::RS256, key, Algorithm::RS256)
    }

    /// A fresh P-256 key (cheap, so every rotation gets a new one).
    fn fresh_ec(kid: &str) -> Signer {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ec");
        let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("ec key");
        Signer::new(kid, Algorithm::ES256, key, Algorithm::ES256)
    }

    /// A token for `sub` with scope `chat` and a fresh `jti` (so it is never
    /// a verification-cache hit).
    fn token(&self, sub: &str) -> String {
        self.token_as(self.alg, Some(&self.kid), sub)
    }

    fn token_as(&self, alg: Algorithm, kid: Option<&str>, sub: &str) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        let mut c = claims(ISS_IDP, sub, "chat");
        c.insert(
            "jti".into(),
            json!(format!("{:016x}", rand::random::<u64>())),
        );
        jsonwebtoken::encode(&header, &Value::Object(c), &self.key).expect("sign")
    }
}

fn jwk_set(signers: &[&Signer]) -> String {
    json!({ "keys": signers.iter().map(|s| s.jwk.clone()).collect::<Vec<_>>() }).to_string()
}

// ---------------------------------------------------------------------------
// A tiny hyper server shared by the fakes
// ---------------------------------------------------------------------------

type FakeBody = BoxBody<Bytes, Infallible>;
type Handler = Arc<
    dyn Fn(
            http::request::Parts,
            Bytes,
        ) -> Pin<Box<dyn Future<Output = Option<Response<FakeBody>>> + Send>>
        + Send
        + Sync,
>;

fn full_body(b: impl Into<Bytes>) -> FakeBody {
    Full::new(b.into()).boxed()
}

fn respond(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<FakeBody> {
    let mut r = Response::new(full_body(body));
    *r.status_mut() = StatusCode::from_u16(status).expect("status");
    r.headers_mut()
        .insert("content-type", content_type.parse().expect("ct"));
    r
}

/// A body that sends `first` and then never finishes (a stalled server).
struct Stalled {
    first: Option<Bytes>,
}

impl http_body::Body for Stalled {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.first.take() {
            Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
            None => Poll::Pending,
        }
    }
}

fn stalled(status: u16, first: &'static [u8]) -> Response<FakeBody> {
    let mut r = Response::new(BoxBody::new(Stalled {
        first: Some(Bytes::from_static(first)),
    }));
    *r.status_mut() = StatusCode::from_u16(status).expect("status");
    r.headers_mut()
        .insert("content-type", "application/json".parse().expect("ct"));
    r
}

/// Serves `handler` on 127.0.0.1:0. A handler answering `None` makes the
/// connection drop without a response.
async fn serve(handler: Handler) -> SocketAddr {
    serve_http1(move || {
        let handler = handler.clone();
        service_fn(move |req: Request<Incoming>| {
            let handler = handler.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
                    .unwrap_or_default();
                handler(parts, body)
                    .await
                    .ok_or_else(|| std::io::Error::other("dropped on purpose"))
            }
        })
    })
    .await
}

// ---------------------------------------------------------------------------
// Fake JWKS server
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JwksMode {
    Ok,
    /// The connection is dropped without an answer.
    Down,
    Status500,
    /// 200 with an HTML page.
    Html,
    /// 200 with the first half of the JWK Set.
    Truncated,
    /// 200, a few bytes of body, then nothing, forever.
    Stalled,
    /// Like `Ok`, but only once the test opens the gate.
    Gated,
}

struct JwksState {
    set: String,
    mode: JwksMode,
}

#[derive(Clone)]
struct FakeJwks {
    addr: SocketAddr,
    state: Arc<Mutex<JwksState>>,
    fetches: Arc<AtomicUsize>,
    gate: Arc<tokio::sync::watch::Sender<bool>>,
}

impl FakeJwks {
    async fn start(set: String, mode: JwksMode) -> FakeJwks {
        let state = Arc::new(Mutex::new(JwksState { set, mode }));
        let fetches = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::watch::channel(false).0);
        let (s, f, g) = (state.clone(), fetches.clone(), gate.clone());
        let handler: Handler = Arc::new(move |parts, _body| {
            let (s, f, g) = (s.clone(), f.clone(), g.clone());
            Box::pin(async move {
                if parts.uri.path() != "/jwks.json" {
                    return Some(respond(404, "text/plain", "not found"));
                }
                f.fetch_add(1, Ordering::SeqCst);
                let (set, mode) = {
                    let st = s.lock().expect("lock");
                    (st.set.clone(), st.mode)
                };
                match mode {
                    JwksMode::Ok => Some(respond(200, "application/json", set)),
                    JwksMode::Down => None,
                    JwksMode::Status500 => Some(respond(500, "text/plain", "oops")),
                    JwksMode::Html => Some(respond(
                        200,
                        "text/html",
                        "<html><body><h1>Maintenance</h1></body></html>",
                    )),
                    JwksMode::Truncated => {
                        let half = set[..set.len() / 2].to_owned();
                        Some(respond(200, "application/json", half))
                    }
                    JwksMode::Stalled => Some(stalled(200, b"{\"keys\":[")),
                    JwksMode::Gated => {
                        let _ = g.subscribe().wait_for(|open| *open).await;
                        let set = s.lock().expect("lock").set.clone();
                        Some(respond(200, "application/json", set))
                    }
                }
            })
        });
        let addr = serve(handler).await;
        FakeJwks {
            addr,
            state,
            fetches,
            gate,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }

    fn set_keys(&self, set: String) {
        self.state.lock().expect("lock").set = set;
    }

    fn set_mode(&self, mode: JwksMode) {
        self.state.lock().expect("lock").mode = mode;
    }

    fn open_gate(&self) {
        self.gate.send_replace(true);
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// A gateway with one JWKS issuer `idp` (RS256, RS384 and ES256 allowed)
/// and the route `/api/chat/{*rest}` (scope `chat`).
fn jwks_toml(keys: &Keys, jwks_url: &str, refresh: Option<&str>) -> String {
    let refresh = refresh
        .map(|r| format!("jwks_refresh = \"{r}\"\n"))
        .unwrap_or_default();
    format!(
        r#"
[credentials]
token = ["header:authorization"]
strip = true

[identity]
pseudonymize = true
key_file = "{id}"

[[issuers]]
name = "idp"
iss = "{ISS_IDP}"
audiences = ["{AUD}"]
algorithms = ["RS256", "RS384", "ES256"]
jwks_url = "{jwks_url}"
{refresh}
[[routes]]
name = "chat"
path = "/api/chat/{{*rest}}"
upstream = "chat"
auth = "required"
scopes = ["chat"]
"#,
        id = keys.id_key_file.display(),
    )
}

async fn jwks_gateway(keys: &Keys, jwks: &FakeJwks, refresh: Option<&str>) -> TestGateway {
    TestGateway::start(&jwks_toml(keys, &jwks.url(), refresh), "").await
}

async fn wait_ready(gw: &TestGateway) {
    eventually("admin /readyz 200", Duration::from_secs(15), || async {
        readyz(gw).await == 200
    })
    .await;
}

async fn chat(gw: &TestGateway, token: &str) -> Reply {
    get(&gw.url("/api/chat/m"), &[("authorization", &bearer(token))]).await
}

async fn assert_accepted(gw: &TestGateway, token: &str, what: &str) {
    let before = gw.upstream.count();
    let r = chat(gw, token).await;
    assert_eq!(r.status, 200, "{what}: {}", r.raw);
    assert_eq!(gw.upstream.count(), before + 1, "{what}: forwarded once");
    let up = gw.upstream.seen().pop().expect("forwarded");
    assert_eq!(
        up.header("x-authgate-auth"),
        Some("authenticated"),
        "{what}"
    );
    assert_eq!(up.header("x-authgate-issuer"), Some("idp"), "{what}");
    assert!(
        up.header("x-authgate-customer-id")
            .is_some_and(|c| c.starts_with("cid_")),
        "{what}"
    );
}

async fn assert_refused(gw: &TestGateway, token: &str, status: u16, code: &str, what: &str) {
    let before = gw.upstream.count();
    let r = chat(gw, token).await;
    assert_eq!(r.status, status, "{what}: {}", r.raw);
    assert_error(&r, status, code);
    assert_eq!(gw.upstream.count(), before, "{what}: nothing forwarded");
}

// ---------------------------------------------------------------------------
// JWKS faults
// ---------------------------------------------------------------------------

#[tokio::test]
async fn jwks_down_at_start_is_not_ready_and_503_until_it_comes_up() {
    let keys = Keys::generate();
    let k1 = Signer::rsa(keys, "k1");
    let jwks = FakeJwks::start(jwk_set(&[&k1]), JwksMode::Down).await;
    let gw = jwks_gateway(keys, &jwks, None).await;
    // The first fetch has been tried (and failed).
    eventually("a first JWKS fetch", Duration::from_secs(10), || async {
        jwks.fetches() >= 1
    })
    .await;
    assert_eq!(readyz(&gw).await, 503, "not ready without keys");
    assert_refused(
        &gw,
        &k1.token("alice"),
        503,
        "keys_unavailable",
        "issuer never loaded keys",
    )
    .await;
    // A 500 is no better than a dropped connection.
    jwks.set_mode(JwksMode::Status500);
    let n = jwks.fetches();
    eventually("a retry", Duration::from_secs(10), || async {
        jwks.fetches() > n
    })
    .await;
    assert_eq!(readyz(&gw).await, 503);

    jwks.set_mode(JwksMode::Ok);
    wait_ready(&gw).await;
    assert_accepted(&gw, &k1.token("alice"), "after the JWKS came up").await;
}

#[tokio::test]
async fn jwks_down_after_start_keeps_the_last_good_keys() {
    let keys = Keys::generate();
    let k1 = Signer::rsa(keys, "k1");
    let jwks = FakeJwks::start(jwk_set(&[&k1]), JwksMode::Ok).await;
    let gw = jwks_gateway(keys, &jwks, Some("1s")).await;
    wait_ready(&gw).await;
    assert_accepted(&gw, &k1.token("alice"), "keys loaded").await;

    for mode in [JwksMode::Down, JwksMode::Status500] {
        jwks.set_mode(mode);
        wait_for_fresh_fetch(&gw, "failure").await;
        assert_eq!(readyz(&gw).await, 200, "{mode:?}: still ready");
        assert_accepted(&gw, &k1.token("alice"), &format!("{mode:?}: old keys")).await;
    }
}

#[tokio::test]
async fn jwks_html_or_truncated_json_keeps_the_last_good_keys() {
    let keys = Keys::generate();
    let k1 = Signer::rsa(keys, "k1");
    let jwks = FakeJwks::start(jwk_set(&[&k1]), JwksMode::Ok).await;
    let gw = jwks_gateway(keys, &jwks, Some("1s")).await;
    wait_ready(&gw).await;
    for mode in [JwksMode::Html, JwksMode::Truncated] {
        jwks.set_mode(mode);
        let served = jwks.fetches();
        wait_for_fresh_fetch(&gw, "failure").await;
        assert!(jwks.fetches() > served, "{mode:?} was served");
        assert_eq!(readyz(&gw).await, 200, "{mode:?}: still ready");
        assert_accepted(&gw, &k1.token("bob"), &format!("{mode:?}: old keys")).await;
    }
    // A garbage document that *parses* but has no usable key changes nothing either.
    jwks.set_keys(r#"{"keys":[{"kty":"oct","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"}]}"#.into());
    jwks.set_mode(JwksMode::Ok);
    wait_for_fresh_fetch(&gw, "failure").await;
    assert_accepted(&gw, &k1.token("bob"), "set without usable keys").await;
}

#[tokio::test]
async fn jwks_stalled_body_does_not_wedge_the_refetch() {
    // A JWKS endpoint that sends headers and then hangs must not hold the
    // single-flight lock forever: the fetch is bounded as a whole.
    let keys = Keys::generate();
    let k1 = Signer::rsa(keys, "k1");
    let k2 = Signer::fresh_ec("k2");
    let jwks = FakeJwks::start(jwk_set(&[&k1]), JwksMode::Ok).await;
    let gw = jwks_gateway(keys, &jwks, Some("1s")).await;
    wait_ready(&gw).await;
    jwks.set_mode(JwksMode::Stalled);
    let n = jwks.fetches();
    eventually("a stalled fetch", Duration::from_secs(10), || async {
        jwks.fetches() > n
    })
    .await;
    jwks.set_keys(jwk_set(&[&k1, &k2]));
    jwks.set_mode(JwksMode::Ok);
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(14), chat(&gw, &k2.token("carol")))
        .await
        .expect("the request must not hang behind a stalled JWKS fetch");
    assert_eq!(r.status, 200, "{}", r.raw);
    assert!(started.elapsed() < Duration::from_secs(12));
}

#[tokio::test]
async fn jwk_alg_decides_not_the_token_header() {
    let keys = Keys::generate();
    let rsa = || EncodingKey::from_rsa_pem(keys.rsa_private.as_bytes()).expect("rsa");
    // The JWK says RS384; a token claiming RS256 with the same key is refused.
    let k384 = Signer::new("k384", Algorithm::RS384, rsa(), Algorithm::RS384);
    let jwks = FakeJwks::start(jwk_set(&[&k384]), JwksMode::Ok).await;
    let gw = jwks_gateway(keys, &jwks, Some("1s")).await;
    wait_ready(&gw).await;
    assert_accepted(&gw, &k384.token("dan"), "RS384 as the JWK says").await;
    for t in [
        k384.token_as(Algorithm::RS256, Some("k384"), "dan"),
        k384.token_as(Algorithm::RS256, None, "dan"),
        k384.token_as(Algorithm::PS256, Some("k384"), "dan"),
    ] {
        assert_refused(&gw, &t, 401, "invalid_token", "alg differs from the JWK").await;
    }
    // A key published for encryption (`use: enc`) never verifies.
    let mut enc = Signer::fresh_ec("k-enc");
    enc.jwk["use"] = json!("enc");
    jwks.set_keys(jwk_set(&[&k384, &enc]));
    wait_for_fresh_fetch(&gw, "success").await;
    assert_refused(&gw, &enc.token("dan"), 401, "invalid_token", "use: enc").await;
    // An HS256 token signed with the JWK's public modulus as the secret.
    let n = k384.jwk["n"].as_str().expect("n").to_owned();
    let forged = forge_hs256(
        &json!({"alg": "HS256", "kid": "k384"}),
        &json!(claims(ISS_IDP, "dan", "chat")),
        n.as_bytes(),
    );
    assert_refused(&gw, &forged, 401, "invalid_token", "HS256 with a JWK").await;
}

#[tokio::test]
async fn rotation_new_kid_is_accepted_after_exactly_one_refetch() {
    let keys = Keys::generate();
    let k1 = Signer::rsa(keys, "k1");
    let k2 = Signer::fresh_ec("k2");
    let jwks = FakeJwks::start(jwk_set(&[&k1]), JwksMode::Ok).await;
    // Default refresh (5 min): only the unknown-kid refetch can fetch.
    let gw = jwks_gateway(keys, &jwks, None).await;
    wait_ready(&gw).await;
    let base = jwks.fetches();
    assert_accepted(&gw, &k1.token("erin"), "k1").await;
    assert_eq!(jwks.fetches(), base, "a known kid fetches nothing");

    jwks.set_keys(jwk_set(&[&k1, &k2]));
    assert_accepted(&gw, &k2.token("erin"), "new kid k2").await;
    assert_eq!(jwks.fetches(), base + 1, "k2 took exactly one refetch");
    assert_accepted(&gw, &k2.token("erin"), "k2 again").await;
    assert_accepted(&gw, &k1.token("erin"), "k1 still in the set").await;
    assert_eq!(jwks.fetches(), base + 1, "no more fetches");
}

#[tokio::test]
async fn rotation_seen_by_many_clients_at_once_refuses_none_of_them() {
    // Twenty clients present the new kid while the one refetch is in
    // flight: those that waited for it must use what it brought.
    let keys = Keys::generate();
    let k1 = Signer::rsa(keys, "k1");
    let k2 = Signer::fresh_ec("k2");
    let jwks = FakeJwks::start(jwk_set(&[&k1]), JwksMode::Ok).await;
    let gw = jwks_gateway(keys, &jwks, None).await;
    wait_ready(&gw).await;
    let base = jwks.fetches();
    jwks.set_keys(jwk_set(&[&k1, &k2]));
    jwks.set_mode(JwksMode::Gated);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let (url, t) = (gw.url("/api/chat/m"), k2.token(&format!("user-{i}")));
        tasks.spawn(async move { get(&url, &[("authorization", &bearer(&t))]).await });
    }
    // The refetch is being served (and held); give the other requests a
    // chance to queue behind it: all twenty connections are open.
    eventually(
        "the unknown-kid refetch",
        Duration::from_secs(10),
        || async { jwks.fetches() > base },
    )
    .await;
    eventually(
        "twenty open connections",
        Duration::from_secs(10),
        || async { metric(&gw, "authgate_open_connections", &[]).await >= 20.0 },
    )
    .await;
    jwks.open_gate();
    let mut statuses = Vec::new();
    while let Some(r) = tasks.join_next().await {
        statuses.push(r.expect("task").status);
    }
    assert_eq!(statuses, vec![200; 20], "every client with the new kid");
    assert_eq!(gw.upstream.count(), 20);
    assert_eq!(jwks.fetches(), base + 1, "one refetch for all of them");
}

#[tokio::test]
async fn rotation_removed_kid_is_refused_after_a_refresh() {
    let keys = Keys::generate();
    let k1 = Signer::rsa(keys, "k1");
    let k2 = Signer::fresh_ec("k2");
    let jwks = FakeJwks::start(jwk_set(&[&k1, &k2]), JwksMode::Ok).await;
    let gw = jwks_gateway(keys, &jwks, Some("1s")).await;
    wait_ready(&gw).await;
    assert_accepted(&gw, &k1.token("frank"), "k1 in the set").await;
    assert_accepted(&gw, &k2.token("frank"), "k2 in the set").await;

    jwks.set_keys(jwk_set(&[&k2]));
    wait_for_fresh_fetch(&gw, "success").await;
    // A fresh token (new jti): a cached verification would not tell.
    assert_refused(&gw, &k1.token("frank"), 401, "invalid_token", "k1 removed").await;
    assert_accepted(&gw, &k2.token("frank"), "k2 stays").await;
}

#[tokio::test]
async fn a_flood_of_random_kids_fetches_at_most_twice() {
    let keys = Keys::generate();
    let k1 = Signer::fresh_ec("k1");
    let jwks = FakeJwks::start(jwk_set(&[&k1]), JwksMode::Ok).await;
    let gw = jwks_gateway(keys, &jwks, None).await;
    wait_ready(&gw).await;
    let base = jwks.fetches();
    let url = gw.url("/api/chat/flood");
    let client = client();
    let statuses = Arc::new(Mutex::new(Vec::with_capacity(1000)));
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..50 {
        let (client, url, statuses) = (client.clone(), url.clone(), statuses.clone());
        let tokens: Vec<String> = (0..20)
            .map(|i| {
                let kid = format!("rnd-{w}-{i}-{:x}", rand::random::<u64>());
                k1.token_as(Algorithm::ES256, Some(&kid), "mallory")
            })
            .collect();
        tasks.spawn(async move {
            for t in tokens {
                let r = client
                    .get(&url)
                    .header("authorization", bearer(&t))
                    .send()
                    .await
                    .expect("request");
                statuses.lock().expect("lock").push(r.status().as_u16());
            }
        });
    }
    let all = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(r) = tasks.join_next().await {
            r.expect("worker");
        }
    })
    .await;
    assert!(all.is_ok(), "the flood must finish");
    let statuses = statuses.lock().expect("lock").clone();
    assert_eq!(statuses.len(), 1000);
    assert!(statuses.iter().all(|&s| s == 401), "all refused");
    assert_eq!(gw.upstream.count(), 0, "nothing forwarded");
    let grew = jwks.fetches() - base;
    assert!(
        (1..=2).contains(&grew),
        "1,000 random kids caused {grew} JWKS fetches"
    );
    // And the real key still works.
    assert_accepted(&gw, &k1.token("alice"), "after the flood").await;
}

// ---------------------------------------------------------------------------
// Introspection
// ---------------------------------------------------------------------------

#[derive(Clone)]
enum IntroMode {
    Active(Value),
    Inactive,
    Status500,
    /// Never answers (waits on a `Notify` nobody fires).
    Slow,
    /// Answers 200 and stalls in the middle of the body.
    StalledBody,
}

#[derive(Debug, Clone)]
struct IntroRequest {
    authorization: Option<String>,
    content_type: Option<String>,
    body: String,
}

#[derive(Clone)]
struct FakeIntrospection {
    addr: SocketAddr,
    mode: Arc<Mutex<IntroMode>>,
    seen: Arc<Mutex<Vec<IntroRequest>>>,
}

impl FakeIntrospection {
    async fn start(mode: IntroMode) -> FakeIntrospection {
        let mode = Arc::new(Mutex::new(mode));
        let seen: Arc<Mutex<Vec<IntroRequest>>> = Arc::default();
        let never = Arc::new(tokio::sync::Notify::new());
        let (m, s) = (mode.clone(), seen.clone());
        let handler: Handler = Arc::new(move |parts, body| {
            let (m, s, never) = (m.clone(), s.clone(), never.clone());
            Box::pin(async move {
                let h = |n: &str| {
                    parts
                        .headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                };
                s.lock().expect("lock").push(IntroRequest {
                    authorization: h("authorization"),
                    content_type: h("content-type"),
                    body: String::from_utf8_lossy(&body).into_owned(),
                });
                let mode = m.lock().expect("lock").clone();
                match mode {
                    IntroMode::Active(v) => Some(respond(200, "application/json", v.to_string())),
                    IntroMode::Inactive => {
                        Some(respond(200, "application/json", r#"{"active":false}"#))
                    }
                    IntroMode::Status500 => Some(respond(500, "text/plain", "oops")),
                    IntroMode::Slow => {
                        never.notified().await;
                        None
                    }
                    IntroMode::StalledBody => Some(stalled(200, b"{\"active\":")),
                }
            })
        });
        let addr = serve(handler).await;
        FakeIntrospection { addr, mode, seen }
    }

    fn count(&self) -> usize {
        self.seen.lock().expect("lock").len()
    }

    fn seen(&self) -> Vec<IntroRequest> {
        self.seen.lock().expect("lock").clone()
    }

    fn set_mode(&self, mode: IntroMode) {
        *self.mode.lock().expect("lock") = mode;
    }
}

const INTRO_SECRET: &str = "s3cr3t-introspection-pw";

/// A gateway whose only issuer is an introspection endpoint; raw subjects
/// are forwarded (pseudonymize = false) so the test can see `sub`.
async fn intro_gateway(intro: &FakeIntrospection) -> (TestGateway, tempfile::TempDir) {
    intro_gateway_at(&format!("http://{}/oauth2/introspect", intro.addr), "").await
}

async fn intro_gateway_at(url: &str, issuer_extra: &str) -> (TestGateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("introspection.secret");
    std::fs::write(&secret, format!("{INTRO_SECRET}\n")).expect("write secret");
    let toml = format!(
        r#"
[credentials]
token = ["header:authorization"]
strip = true

[identity]
pseudonymize = false

[[issuers]]
name = "opaque"
kind = "introspection"
introspection_url = "{url}"
client_id = "authgate"
client_secret_file = "{secret}"
cache_ttl = "60s"
{issuer_extra}

[[routes]]
name = "chat"
path = "/api/chat/{{*rest}}"
upstream = "chat"
auth = "required"
scopes = ["chat"]
"#,
        secret = secret.display(),
    );
    (TestGateway::start(&toml, "").await, dir)
}

fn active(sub: &str, scope: &str) -> IntroMode {
    IntroMode::Active(json!({
        "active": true, "sub": sub, "scope": scope, "client_id": "web-app",
        "exp": now() + 600, "iat": now(), "token_type": "Bearer",
    }))
}

#[tokio::test]
async fn introspection_active_token_is_forwarded_and_cached() {
    use base64::Engine;
    let intro = FakeIntrospection::start(active("user-42", "chat history")).await;
    let (gw, _dir) = intro_gateway(&intro).await;
    assert_eq!(readyz(&gw).await, 200);
    let token = "opaque-Tok_en~1234567890";
    let r = chat(&gw, token).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let up = gw.upstream.only();
    assert_eq!(up.header("x-authgate-auth"), Some("authenticated"));
    assert_eq!(up.header("x-authgate-customer-id"), Some("user-42"));
    assert_eq!(up.header("x-authgate-issuer"), Some("opaque"));
    assert_eq!(up.header("x-authgate-scopes"), Some("chat history"));
    assert_eq!(up.header("authorization"), None, "token stripped");
    assert!(!up.raw_text().contains(token));

    let seen = intro.seen();
    assert_eq!(seen.len(), 1);
    let req = &seen[0];
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("authgate:{INTRO_SECRET}"));
    assert_eq!(
        req.authorization.as_deref(),
        Some(format!("Basic {basic}").as_str())
    );
    assert_eq!(
        req.content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    let form: Vec<(&str, String)> = req
        .body
        .split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            let v = percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8()
                .ok()?
                .into_owned();
            Some((k, v))
        })
        .collect();
    assert!(
        form.contains(&("token", token.to_owned())),
        "form body: {}",
        req.body
    );

    // The same token again: served from the cache.
    let r = chat(&gw, token).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(intro.count(), 1, "second request must not introspect");
    assert_eq!(gw.upstream.count(), 2);
    assert!(metric(&gw, "authgate_token_cache_hits_total", &[]).await >= 1.0);
}

#[tokio::test]
async fn introspection_inactive_is_invalid_token() {
    let intro = FakeIntrospection::start(IntroMode::Inactive).await;
    let (gw, _dir) = intro_gateway(&intro).await;
    assert_refused(&gw, "revoked-opaque", 401, "invalid_token", "active:false").await;
    assert_eq!(intro.count(), 1);
    // Active, but without the scope the route needs.
    intro.set_mode(active("user-7", "other"));
    assert_refused(&gw, "another-opaque", 403, "insufficient_scope", "scope").await;
}

#[tokio::test]
async fn introspection_500_is_keys_unavailable_and_not_cached() {
    let intro = FakeIntrospection::start(IntroMode::Status500).await;
    let (gw, _dir) = intro_gateway(&intro).await;
    assert_refused(&gw, "opaque-500", 503, "keys_unavailable", "500").await;
    // Not remembered: once the endpoint recovers, the same token passes.
    intro.set_mode(active("user-9", "chat"));
    let r = chat(&gw, "opaque-500").await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(intro.count(), 2);
    assert_eq!(
        gw.upstream.only().header("x-authgate-customer-id"),
        Some("user-9")
    );
}

#[tokio::test]
async fn introspection_unreachable_is_keys_unavailable() {
    // A port that was free a moment ago: connection refused.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    let (gw, _dir) = intro_gateway_at(&format!("http://{closed}/introspect"), "").await;
    assert_refused(&gw, "opaque-nowhere", 503, "keys_unavailable", "refused").await;
}

#[tokio::test]
async fn introspection_cache_never_outlives_exp() {
    let exp = now() + 2;
    let intro = FakeIntrospection::start(IntroMode::Active(json!({
        "active": true, "sub": "user-exp", "scope": "chat", "exp": exp,
    })))
    .await;
    let (gw, _dir) = intro_gateway_at(
        &format!("http://{}/oauth2/introspect", intro.addr),
        "leeway = \"0s\"",
    )
    .await;
    let r = chat(&gw, "opaque-short").await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(intro.count(), 1);
    // Cached until exp (cache_ttl is 60 s): then asked again, and refused.
    let deadline = Instant::now() + Duration::from_secs(10);
    let last = loop {
        let r = chat(&gw, "opaque-short").await;
        if r.status != 200 {
            break r;
        }
        assert_eq!(intro.count(), 1, "served from the cache while valid");
        assert!(Instant::now() < deadline, "the cached token never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(now() > exp, "refused only after exp");
    assert_error(&last, 401, "token_expired");
    assert_eq!(intro.count(), 2, "asked again once the cache entry ran out");
}

#[tokio::test]
async fn introspection_slower_than_its_timeout_is_keys_unavailable() {
    let intro = FakeIntrospection::start(IntroMode::Slow).await;
    let (gw, _dir) = intro_gateway(&intro).await;
    let started = Instant::now();
    assert_refused(&gw, "opaque-slow", 503, "keys_unavailable", "slow").await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(12),
        "bounded by the 5 s introspection timeout: {took:?}"
    );
    assert_eq!(intro.count(), 1);
}

#[tokio::test]
async fn introspection_stalled_body_is_keys_unavailable() {
    let intro = FakeIntrospection::start(IntroMode::StalledBody).await;
    let (gw, _dir) = intro_gateway(&intro).await;
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(14), chat(&gw, "opaque-stall"))
        .await
        .expect("a stalled introspection body must be bounded by the gateway");
    assert_error(&r, 503, "keys_unavailable");
    assert_eq!(gw.upstream.count(), 0);
    assert!(started.elapsed() < Duration::from_secs(12));
}

// ---------------------------------------------------------------------------
// Verification cache
// ---------------------------------------------------------------------------

#[tokio::test]
async fn verification_cache_hits_are_counted_and_route_checks_still_apply() {
    let keys = Keys::generate();
    let gw = TestGateway::start(&TestGateway::default_toml(keys), "").await;
    let hits0 = metric(&gw, "authgate_token_cache_hits_total", &[]).await;
    let misses0 = metric(&gw, "authgate_token_cache_misses_total", &[]).await;
    // An EC ("mobile") token with scope chat only.
    let t = sign(keys, Algorithm::ES256, &claims(ISS_EC, "grace", "chat"));
    let auth = bearer(&t);
    for _ in 0..2 {
        let r = get(&gw.url("/api/chat/x"), &[("authorization", &auth)]).await;
        assert_eq!(r.status, 200, "{}", r.raw);
    }
    let seen = gw.upstream.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0].header("x-authgate-customer-id"),
        seen[1].header("x-authgate-customer-id"),
        "a cache hit forwards the same identity"
    );
    assert!(metric(&gw, "authgate_token_cache_hits_total", &[]).await >= hits0 + 1.0);
    assert!(metric(&gw, "authgate_token_cache_misses_total", &[]).await >= misses0 + 1.0);

    // The cached identity still meets each route's own checks.
    let r = send(
        reqwest::Method::POST,
        &gw.url("/api/bill/pay"),
        &[("authorization", &auth)],
        None,
    )
    .await;
    assert_error(&r, 403, "insufficient_scope");
    let r = get(&gw.url("/api/web-only/x"), &[("authorization", &auth)]).await;
    assert_error(&r, 401, "invalid_token");
    assert_eq!(gw.upstream.count(), 2, "refusals forward nothing");
}

#[tokio::test]
async fn verification_cache_never_outlives_exp() {
    let keys = Keys::generate();
    let toml = TestGateway::default_toml(keys).replace("leeway = \"30s\"", "leeway = \"0s\"");
    let gw = TestGateway::start(&toml, "").await;
    let mut c = claims(ISS_RSA, "heidi", "chat");
    let exp = now() + 2;
    c.insert("exp".into(), json!(exp));
    let auth = bearer(&sign(keys, Algorithm::RS256, &c));
    let r = get(&gw.url("/api/chat/x"), &[("authorization", &auth)]).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    // Repeat (cache hits) until the token expires; it must be refused as
    // soon as `exp` has passed, cached or not.
    let deadline = Instant::now() + Duration::from_secs(10);
    let last = loop {
        let r = get(&gw.url("/api/chat/x"), &[("authorization", &auth)]).await;
        if r.status != 200 {
            break r;
        }
        assert!(Instant::now() < deadline, "the cached token never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(now() > exp, "refused only after exp");
    assert_error(&last, 401, "token_expired");
    assert!(
        gw.upstream
            .seen()
            .iter()
            .all(|r| r.header("x-authgate-token-expires") == Some(&exp.to_string())),
        "forwarded only while valid"
    );
}

// ---------------------------------------------------------------------------
// Signed identity assertion
// ---------------------------------------------------------------------------

#[tokio::test]
async fn identity_assertion_verifies_with_the_admin_jwks() {
    let keys = Keys::generate();
    for (alg, rcgen_alg) in [
        (Algorithm::ES256, &rcgen::PKCS_ECDSA_P256_SHA256),
        (Algorithm::EdDSA, &rcgen::PKCS_ED25519),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let pem = rcgen::KeyPair::generate_for(rcgen_alg)
            .expect("assertion key")
            .serialize_pem();
        let key_path = dir.path().join("assertion.pem");
        std::fs::write(&key_path, pem).expect("write key");
        let alg_name = format!("{alg:?}");
        let toml = TestGateway::default_toml(keys).replacen(
            "\n[[issuers]]",
            &format!(
                "\n[identity.assertion]\nkey = \"{}\"\nalg = \"{alg_name}\"\nttl = \"60s\"\n\n[[issuers]]",
                key_path.display()
            ),
            1,
        );
        let gw = TestGateway::start(&toml, "").await;
        let t = sign(
            keys,
            Algorithm::RS256,
            &claims(ISS_RSA, "ivan", "chat extra"),
        );
        let r = get(
            &gw.url("/api/chat/x"),
            &[
                ("authorization", &bearer(&t)),
                ("x-request-id", "assert-req-1"),
                ("x-authgate-assertion", "forged.by.client"),
            ],
        )
        .await;
        assert_eq!(r.status, 200, "{alg_name}: {}", r.raw);
        let up = gw.upstream.only();
        let assertion = up.header("x-authgate-assertion").expect("assertion");
        assert_ne!(assertion, "forged.by.client");
        assert_eq!(up.headers.get_all("x-authgate-assertion").iter().count(), 1);
        let cid = up.header("x-authgate-customer-id").expect("cid");

        // Verify it with the key published by the admin listener.
        let doc = get(&admin_url(&gw, "/.well-known/jwks.json"), &[]).await;
        assert_eq!(doc.status, 200);
        assert!(
            doc.body["keys"]
                .as_array()
                .is_some_and(|k| k.iter().all(|k| k.get("d").is_none())),
            "only public keys: {}",
            doc.raw
        );
        let set: JwkSet = serde_json::from_value(doc.body.clone()).expect("JWK Set");
        let header = jsonwebtoken::decode_header(assertion).expect("header");
        assert_eq!(header.alg, alg);
        let jwk = set
            .find(header.kid.as_deref().expect("kid"))
            .expect("kid published");
        let key = DecodingKey::from_jwk(jwk).expect("decoding key");
        let mut v = Validation::new(alg);
        v.set_issuer(&["authgate"]);
        v.validate_aud = false;
        v.set_required_spec_claims(&["exp", "iss", "sub"]);
        let data = jsonwebtoken::decode::<Value>(assertion, &key, &v)
            .unwrap_or_else(|e| panic!("{alg_name}: assertion does not verify: {e}"));
        let c = data.claims;
        assert_eq!(c["iss"], "authgate");
        assert_eq!(c["sub"], cid);
        assert_eq!(c["jti"], "assert-req-1");
        assert_eq!(c["scope"], "chat extra");
        let (iat, exp) = (
            c["iat"].as_i64().expect("iat"),
            c["exp"].as_i64().expect("exp"),
        );
        assert_eq!(exp - iat, 60);
        assert!((iat - now()).abs() <= 5);
        // A tampered assertion does not verify.
        let mut bad = assertion.to_owned();
        let last = bad.pop().expect("char");
        bad.push(if last == 'A' { 'B' } else { 'A' });
        assert!(jsonwebtoken::decode::<Value>(&bad, &key, &v).is_err());
    }
}

#[tokio::test]
async fn no_assertion_without_config_and_empty_admin_jwks() {
    let keys = Keys::generate();
    let gw = TestGateway::start(&TestGateway::default_toml(keys), "").await;
    let t = sign(keys, Algorithm::RS256, &claims(ISS_RSA, "judy", "chat"));
    let r = get(
        &gw.url("/api/chat/x"),
        &[
            ("authorization", &bearer(&t)),
            ("x-authgate-assertion", "forged.by.client"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(gw.upstream.only().header("x-authgate-assertion"), None);
    let doc = get(&admin_url(&gw, "/.well-known/jwks.json"), &[]).await;
    assert_eq!(doc.body, json!({"keys": []}));
}

// ---------------------------------------------------------------------------
// Interop with a real OpenID provider (oidc-provider from npm)
// ---------------------------------------------------------------------------

/// The OpenID provider started by `tests/interop/oidc-provider.mjs`.
struct Provider {
    child: tokio::process::Child,
    issuer: String,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Provider {
    async fn start(dir: &std::path::Path) -> Provider {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new("node")
            .arg(dir.join("oidc-provider.mjs"))
            .arg("0")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start node tests/interop/oidc-provider.mjs");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let issuer = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.expect("provider stdout") {
                if let Some(rest) = line.strip_prefix("ISSUER ") {
                    return rest.trim().to_owned();
                }
            }
            panic!("the provider exited before printing ISSUER");
        })
        .await
        .expect("the provider starts within 30 s");
        Provider {
            child,
            issuer,
            lines,
        }
    }

    /// Asks the provider to rotate: a new signing key first in its JWKS
    /// (the old one stays published for verification).
    async fn rotate(&mut self) -> String {
        use tokio::io::AsyncWriteExt;
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin.write_all(b"rotate\n").await.expect("write rotate");
        stdin.flush().await.expect("flush");
        tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = self.lines.next_line().await.expect("provider stdout") {
                if let Some(kid) = line.strip_prefix("ROTATED ") {
                    return kid.trim().to_owned();
                }
            }
            panic!("the provider exited while rotating");
        })
        .await
        .expect("rotation within 30 s")
    }

    async fn token(&self, client: &reqwest::Client) -> String {
        self.token_for(client, "urn:authgate:chat").await
    }

    async fn token_for(&self, client: &reqwest::Client, resource: &str) -> String {
        let r = client
            .post(format!("{}/token", self.issuer))
            .basic_auth("authgate-interop", Some("interop-client-secret"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("scope", "chat"),
                ("resource", resource),
            ])
            .send()
            .await
            .expect("token request");
        let status = r.status();
        let body: Value = r.json().await.expect("token json");
        assert!(status.is_success(), "token endpoint: {status} {body}");
        body["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }
}

#[tokio::test]
async fn interop_oidc_provider() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    if !dir.join("node_modules/oidc-provider").is_dir() {
        eprintln!(
            "\n**********************************************************************\n\
             SKIPPED: oidc-provider not installed; run npm ci --prefix tests/interop\n\
             **********************************************************************\n"
        );
        return;
    }
    let mut provider = Provider::start(&dir).await;
    let client = client();
    let discovery: Value = client
        .get(format!(
            "{}/.well-known/openid-configuration",
            provider.issuer
        ))
        .send()
        .await
        .expect("discovery")
        .json()
        .await
        .expect("discovery json");
    let jwks_uri = discovery["jwks_uri"].as_str().expect("jwks_uri");
    assert_eq!(discovery["issuer"], provider.issuer.as_str());
    let introspection = discovery["introspection_endpoint"]
        .as_str()
        .expect("introspection_endpoint");
    let secret_dir = tempfile::tempdir().expect("tempdir");
    let secret = secret_dir.path().join("introspector.secret");
    std::fs::write(&secret, "introspect-Secret_1.0~x\n").expect("write secret");

    let toml = format!(
        r#"
[credentials]
token = ["header:authorization"]
strip = true

[identity]
pseudonymize = false

[[issuers]]
name = "oidc"
iss = "{iss}"
audiences = ["urn:authgate:chat"]
algorithms = ["RS256", "ES256"]
jwks_url = "{jwks_uri}"

[[issuers]]
name = "oidc-opaque"
kind = "introspection"
introspection_url = "{introspection}"
client_id = "authgate-introspector"
client_secret_file = "{secret}"
audiences = ["urn:authgate:opaque"]

[[routes]]
name = "chat"
path = "/api/chat/{{*rest}}"
upstream = "chat"
auth = "required"
scopes = ["chat"]
"#,
        iss = provider.issuer,
        secret = secret.display(),
    );
    let gw = TestGateway::start(&toml, "").await;
    wait_ready(&gw).await;

    let token = provider.token(&client).await;
    let kid1 = jsonwebtoken::decode_header(&token)
        .expect("a JWT access token")
        .kid
        .expect("kid");
    let r = get(
        &gw.url("/api/chat/hello"),
        &[("authorization", &bearer(&token))],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let up = gw.upstream.only();
    assert_eq!(up.header("x-authgate-auth"), Some("authenticated"));
    assert_eq!(up.header("x-authgate-issuer"), Some("oidc"));
    assert_eq!(
        up.header("x-authgate-customer-id"),
        Some("authgate-interop"),
        "client_credentials tokens carry the client id as sub"
    );
    assert!(up
        .header("x-authgate-scopes")
        .is_some_and(|s| s.split(' ').any(|x| x == "chat")));
    assert_eq!(up.header("authorization"), None);

    // An opaque token from the same provider, checked by RFC 7662
    // introspection (HTTP Basic with a secret that needs form-encoding).
    let opaque = provider.token_for(&client, "urn:authgate:opaque").await;
    assert!(!opaque.contains('.'), "an opaque token: {opaque}");
    let r = get(
        &gw.url("/api/chat/hello"),
        &[("authorization", &bearer(&opaque))],
    )
    .await;
    assert_eq!(r.status, 200, "opaque token: {}", r.raw);
    let up = gw.upstream.seen().pop().expect("forwarded");
    assert_eq!(up.header("x-authgate-issuer"), Some("oidc-opaque"));
    assert_eq!(
        up.header("x-authgate-customer-id"),
        Some("authgate-interop")
    );
    assert_eq!(up.header("x-authgate-scopes"), Some("chat"));
    let r = get(
        &gw.url("/api/chat/hello"),
        &[("authorization", &bearer("not-a-token-the-provider-issued"))],
    )
    .await;
    assert_error(&r, 401, "invalid_token");
    assert_eq!(gw.upstream.count(), 2);

    // Rotation: a new key signs; the gateway fetches it on the unknown kid.
    let kid2 = provider.rotate().await;
    assert_ne!(kid1, kid2);
    let token2 = provider.token(&client).await;
    assert_eq!(
        jsonwebtoken::decode_header(&token2)
            .expect("jwt")
            .kid
            .as_deref(),
        Some(kid2.as_str()),
        "the new key signs"
    );
    let r = get(
        &gw.url("/api/chat/hello"),
        &[("authorization", &bearer(&token2))],
    )
    .await;
    assert_eq!(r.status, 200, "rotated token: {}", r.raw);
    assert_eq!(gw.upstream.count(), 3);
    // A token from the old key, still published, is still good.
    let r = get(
        &gw.url("/api/chat/hello"),
        &[("authorization", &bearer(&token))],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    // A tampered provider token is not.
    let mut bad = token2.clone();
    let last = bad.pop().expect("char");
    bad.push(if last == 'A' { 'B' } else { 'A' });
    let r = get(
        &gw.url("/api/chat/hello"),
        &[("authorization", &bearer(&bad))],
    )
    .await;
    assert_error(&r, 401, "invalid_token");
    assert_eq!(gw.upstream.count(), 4);
    let _ = provider.child.start_kill();
}

// ---------------------------------------------------------------------------
// An https JWKS behind a private CA: `ca` on the issuer (extension)
// ---------------------------------------------------------------------------

/// Serves `body` as JSON over TLS on 127.0.0.1 with a certificate signed by a
/// fresh private CA; returns (url, CA PEM path, fetch counter).
async fn tls_jwks_server(
    body: String,
    dir: &std::path::Path,
) -> (String, std::path::PathBuf, Arc<AtomicUsize>) {
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "authgate test-only CA");
    let ca = ca_params.self_signed(&ca_key).expect("ca cert");
    let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("leaf params")
        .signed_by(&leaf_key, &ca, &ca_key)
        .expect("leaf cert");
    let ca_path = dir.join("idp-ca.test-only.pem");
    std::fs::write(&ca_path, ca.pem()).expect("write ca");
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        rustls_pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).expect("key der"),
    )
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let fetches = Arc::new(AtomicUsize::new(0));
    let counter = fetches.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let body = body.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(Ok(tls)) =
                    tokio::time::timeout(Duration::from_secs(5), acceptor.accept(stream)).await
                else {
                    return;
                };
                let svc = service_fn(move |_req: Request<Incoming>| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let body = body.clone();
                    async move {
                        let mut r = Response::new(Full::new(Bytes::from(body)));
                        r.headers_mut()
                            .insert("content-type", "application/json".parse().expect("hv"));
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (
        format!("https://127.0.0.1:{}/jwks.json", addr.port()),
        ca_path,
        fetches,
    )
}

#[tokio::test]
async fn https_jwks_behind_a_private_ca_needs_the_issuer_ca() {
    let keys = Keys::generate();
    let signer = Signer::rsa(keys, "tls-kid");
    let dir = tempfile::tempdir().expect("tempdir");
    let (url, ca, fetches) = tls_jwks_server(jwk_set(&[&signer]), dir.path()).await;

    // Without `ca`: the certificate is not trusted, the issuer never loads
    // keys, and requests are 503 keys_unavailable — never a pass.
    let gw = TestGateway::start(&jwks_toml(keys, &url, None), "").await;
    eventually(
        "a failed JWKS fetch is counted",
        Duration::from_secs(15),
        || async {
            get(&admin_url(&gw, "/metrics"), &[])
                .await
                .raw
                .contains("authgate_jwks_refresh_total{issuer=\"idp\",result=\"failure\"}")
        },
    )
    .await;
    assert_eq!(readyz(&gw).await, 503);
    let r = get(
        &gw.url("/api/chat/x"),
        &[("authorization", &format!("Bearer {}", signer.token("u")))],
    )
    .await;
    assert_error(&r, 503, "keys_unavailable");
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        0,
        "no TLS handshake completed"
    );
    assert_eq!(gw.upstream.count(), 0);

    // With `ca`: keys load over HTTPS and tokens verify.
    let toml = jwks_toml(keys, &url, None).replace(
        &format!("jwks_url = \"{url}\""),
        &format!("jwks_url = \"{url}\"\nca = \"{}\"", ca.display()),
    );
    let gw = TestGateway::start(&toml, "").await;
    wait_ready(&gw).await;
    let r = get(
        &gw.url("/api/chat/x"),
        &[("authorization", &format!("Bearer {}", signer.token("u")))],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert!(fetches.load(Ordering::SeqCst) >= 1);
}
