//! Operations, in process: rate limits (per IP, per customer, bounded bucket
//! memory, `X-Forwarded-For` only from trusted proxies), the `/metrics`
//! families of SPEC §8, and reloads that keep the old routes on failure.

use crate::support::*;
use authgate::config::Config;
use authgate::pipeline::ratelimit::MAX_KEYS;
use authgate::server::Gateway;
use jsonwebtoken::Algorithm;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// A gateway like [`TestGateway`], but with extra `[listen]` keys (the
/// support helper writes `[listen]` itself).
struct ListenGateway {
    addr: SocketAddr,
    upstream: Upstream,
    shared: Arc<authgate::pipeline::Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl ListenGateway {
    async fn start(listen_extra: &str, body: &str) -> ListenGateway {
        let upstream = Upstream::start().await;
        let toml = format!(
            "[listen]\naddr = \"127.0.0.1:0\"\n{listen_extra}\n\n[admin]\naddr = \"127.0.0.1:0\"\n\n[log]\nlevel = \"warn\"\n\n[upstreams.chat]\nurl = \"http://{}\"\nconnect_timeout = \"1s\"\n{body}",
            upstream.addr
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, toml).expect("write config");
        let config = match Config::load(&path) {
            Ok(c) => c,
            Err(e) => panic!("test config invalid: {e}"),
        };
        let gateway = Gateway::bind(config).await.expect("bind gateway");
        let addr = gateway.local_addr();
        let shared = gateway.shared.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(gateway.serve(async move {
            let _ = rx.await;
        }));
        ListenGateway {
            addr,
            upstream,
            shared,
            stop: Some(tx),
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for ListenGateway {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// One limited public route, keyed by IP.
fn ip_limited(rate: &str, burst: u32) -> String {
    format!(
        r#"
[identity]
pseudonymize = false

[[routes]]
name = "limited"
path = "/limited/{{*rest}}"
upstream = "chat"
auth = "none"
rate_limit = {{ per = "ip", rate = "{rate}", burst = {burst} }}
"#
    )
}

/// Sends GETs until the first non-200 (at most `max`); returns (200s, the refusal).
async fn until_refused(url: &str, headers: &[(&str, &str)], max: usize) -> (usize, Reply) {
    for i in 0..max {
        let r = get(url, headers).await;
        if r.status != 200 {
            return (i, r);
        }
    }
    panic!("no refusal within {max} requests to {url}");
}

#[tokio::test]
async fn ip_rate_limit_refuses_the_request_after_the_burst() {
    // A slow refill ("5/m") so that a loaded test machine cannot refill a
    // token between the requests; the burst is what is being tested.
    let gw = TestGateway::start(&ip_limited("5/m", 5), "").await;
    for i in 0..5 {
        let r = get(&gw.url("/limited/x"), &[]).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.raw);
    }
    let r = get(&gw.url("/limited/x"), &[]).await;
    assert_error(&r, 429, "rate_limited");
    let retry: u64 = r.headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("Retry-After is delta-seconds");
    assert!((1..=12).contains(&retry), "one token per 12 s: {retry}");
    assert_eq!(
        gw.upstream.count(),
        5,
        "the refused request is not forwarded"
    );
}

#[tokio::test]
async fn ip_rate_limit_of_five_per_second() {
    // The brief's figures: rate 5/s, burst 5. At least the burst passes,
    // then a refusal with `Retry-After: 1`; only passed requests reach the
    // upstream.
    let gw = TestGateway::start(&ip_limited("5/s", 5), "").await;
    let (passed, r) = until_refused(&gw.url("/limited/x"), &[], 1000).await;
    assert!(passed >= 5, "the burst passes: {passed}");
    assert_error(&r, 429, "rate_limited");
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(gw.upstream.count(), passed);
}

#[tokio::test]
async fn customer_rate_limits_are_independent() {
    let keys = Keys::generate();
    let body = format!(
        r#"
[identity]
pseudonymize = true
key_file = "{id}"

[[issuers]]
name = "mobile"
iss = "{ISS_EC}"
audiences = ["{AUD}"]
algorithms = ["ES256"]
keys = ["{ec}"]

[[routes]]
name = "limited"
path = "/limited/{{*rest}}"
upstream = "chat"
auth = "required"
rate_limit = {{ per = "customer", rate = "3/m", burst = 3 }}
"#,
        id = keys.id_key_file.display(),
        ec = keys.ec_public.display(),
    );
    let gw = TestGateway::start(&body, "").await;
    let alice = bearer(&sign(keys, Algorithm::ES256, &claims(ISS_EC, "alice", "")));
    let bob = bearer(&sign(keys, Algorithm::ES256, &claims(ISS_EC, "bob", "")));
    for _ in 0..3 {
        let r = get(&gw.url("/limited/x"), &[("authorization", &alice)]).await;
        assert_eq!(r.status, 200, "{}", r.raw);
    }
    let r = get(&gw.url("/limited/x"), &[("authorization", &alice)]).await;
    assert_error(&r, 429, "rate_limited");
    assert!(r.headers.contains_key("retry-after"));
    // Same IP, other customer: its own bucket.
    for _ in 0..3 {
        let r = get(&gw.url("/limited/x"), &[("authorization", &bob)]).await;
        assert_eq!(r.status, 200, "bob has his own bucket: {}", r.raw);
    }
    let r = get(&gw.url("/limited/x"), &[("authorization", &bob)]).await;
    assert_error(&r, 429, "rate_limited");
    // A fresh token for alice is still alice.
    let mut c = claims(ISS_EC, "alice", "");
    c.insert("jti".into(), "another".into());
    let again = bearer(&sign(keys, Algorithm::ES256, &c));
    let r = get(&gw.url("/limited/x"), &[("authorization", &again)]).await;
    assert_error(&r, 429, "rate_limited");
    let seen = gw.upstream.seen();
    assert_eq!(seen.len(), 6);
    let ids: std::collections::BTreeSet<&str> = seen
        .iter()
        .map(|r| r.header("x-authgate-customer-id").expect("cid"))
        .collect();
    assert_eq!(ids.len(), 2);
}

#[tokio::test]
async fn forwarded_for_is_ignored_from_an_untrusted_peer() {
    // 127.0.0.1 is not a trusted proxy here: every request is the same client
    // whatever `X-Forwarded-For` claims.
    let gw =
        ListenGateway::start("trusted_proxies = [\"10.0.0.0/8\"]", &ip_limited("3/m", 3)).await;
    for i in 0..3 {
        let xff = format!("198.51.100.{i}");
        let r = get(&gw.url("/limited/x"), &[("x-forwarded-for", &xff)]).await;
        assert_eq!(r.status, 200, "{}", r.raw);
    }
    let r = get(
        &gw.url("/limited/x"),
        &[("x-forwarded-for", "198.51.100.99")],
    )
    .await;
    assert_error(&r, 429, "rate_limited");
    assert_eq!(gw.upstream.count(), 3);
}

#[tokio::test]
async fn forwarded_for_from_a_trusted_proxy_picks_the_rightmost_untrusted_hop() {
    let gw = ListenGateway::start(
        "trusted_proxies = [\"127.0.0.1/32\"]",
        &ip_limited("3/m", 3),
    )
    .await;
    // A client forging left-most entries is still keyed by the address
    // the trusted proxy appended.
    for i in 0..3 {
        let xff = format!("203.0.113.{i}, 192.0.2.7");
        let r = get(&gw.url("/limited/x"), &[("x-forwarded-for", &xff)]).await;
        assert_eq!(r.status, 200, "{}", r.raw);
    }
    let r = get(
        &gw.url("/limited/x"),
        &[("x-forwarded-for", "203.0.113.200, 192.0.2.7")],
    )
    .await;
    assert_error(&r, 429, "rate_limited");
    // Another client behind the proxy has its own bucket.
    let r = get(&gw.url("/limited/x"), &[("x-forwarded-for", "192.0.2.8")]).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(gw.upstream.count(), 4);
}

#[tokio::test]
async fn ten_thousand_client_ips_keep_bucket_memory_bounded() {
    const N: usize = 10_000;
    let gw = ListenGateway::start(
        "trusted_proxies = [\"127.0.0.1/32\"]",
        &ip_limited("1/m", 1),
    )
    .await;
    // One keep-alive client, a few connections in parallel.
    let client = client();
    let next = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (client, next, ok) = (client.clone(), next.clone(), ok.clone());
        let url = gw.url("/limited/x");
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= N {
                    break;
                }
                let xff = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 0xff, i & 0xff);
                let r = client
                    .get(&url)
                    .header("x-forwarded-for", xff)
                    .send()
                    .await
                    .expect("request");
                if r.status() == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("10,000 requests finish")
            .expect("task");
    }
    // Every distinct client had its own one-token bucket.
    assert_eq!(ok.load(Ordering::Relaxed), N);
    assert_eq!(gw.upstream.count(), N);
    let rt = gw.shared.runtime.load();
    let limiter = rt.routes[0].rate_limit.as_ref().expect("limiter");
    let held = limiter.len();
    assert!(held <= MAX_KEYS, "{held} buckets > {MAX_KEYS}");
    assert!(held <= N, "one bucket per client at most: {held}");
    // And far more distinct keys than the cap still stay under it.
    let t0 = std::time::Instant::now();
    for i in 0..(4 * MAX_KEYS as u32) {
        let _ = limiter.check(std::net::IpAddr::from(i.to_be_bytes()), t0);
    }
    assert!(limiter.len() <= MAX_KEYS, "{}", limiter.len());
}

// ------------------------------------------------------------------ metrics

async fn scrape(admin: SocketAddr) -> String {
    let r = get(&format!("http://{admin}/metrics"), &[]).await;
    assert_eq!(r.status, 200);
    r.raw
}

/// The value of the first sample whose line starts with `prefix`.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_expose_the_spec_families() {
    let keys = Keys::generate();
    let gw = TestGateway::start(&TestGateway::default_toml(keys), "").await;
    let admin = gw.admin.expect("admin");
    let token = bearer(&sign(
        keys,
        Algorithm::RS256,
        &claims(ISS_RSA, "m1", "chat"),
    ));
    for _ in 0..2 {
        let r = get(&gw.url("/api/chat/x"), &[("authorization", &token)]).await;
        assert_eq!(r.status, 200, "{}", r.raw);
    }
    let r = get(&gw.url("/api/chat/x"), &[]).await;
    assert_error(&r, 401, "missing_token");
    let r = get(&gw.url("/nowhere"), &[]).await;
    assert_error(&r, 404, "not_found");
    let text = scrape(admin).await;
    assert_eq!(
        sample(
            &text,
            "authgate_requests_total{route=\"chat\",status=\"200\",auth=\"authenticated\",error=\"\"}"
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "authgate_requests_total{route=\"chat\",status=\"401\",auth=\"anonymous\",error=\"missing_token\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        text.contains("authgate_requests_total{route=\"(none)\",status=\"404\""),
        "{text}"
    );
    assert!(
        text.contains("authgate_request_duration_seconds_bucket{le=")
            || text.contains("authgate_request_duration_seconds_bucket{route=\"chat\""),
        "{text}"
    );
    assert!(
        sample(
            &text,
            "authgate_request_duration_seconds_count{route=\"chat\"}"
        ) >= Some(3.0),
        "{text}"
    );
    assert!(
        sample(&text, "authgate_token_cache_hits_total") >= Some(1.0),
        "the second use of a token is a cache hit: {text}"
    );
    assert!(
        sample(&text, "authgate_token_cache_misses_total") >= Some(1.0),
        "{text}"
    );
    assert!(
        text.contains("# TYPE authgate_jwks_refresh counter"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE authgate_upstream_errors counter"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE authgate_config_reloads counter"),
        "{text}"
    );
    // Label values are route names, never paths or client data.
    assert!(!text.contains("/api/chat"), "{text}");
    assert!(!text.contains("/nowhere"), "{text}");
    assert!(!text.contains("m1"), "{text}");
}

#[tokio::test]
async fn metrics_count_upstream_errors_by_kind() {
    let keys = Keys::generate();
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
    let text = scrape(gw.admin.expect("admin")).await;
    assert_eq!(
        sample(
            &text,
            "authgate_upstream_errors_total{upstream=\"chat\",kind=\"connect\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "authgate_requests_total{route=\"public\",status=\"502\",auth=\"anonymous\",error=\"upstream_unavailable\"}"
        ),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test]
async fn reload_success_and_failure_are_counted_and_failure_keeps_the_routes() {
    let keys = Keys::generate();
    let gw = TestGateway::start(&TestGateway::default_toml(keys), "").await;
    let admin = gw.admin.expect("admin");
    let original = std::fs::read_to_string(&gw.config_path).expect("read config");
    assert_eq!(get(&gw.url("/added/x"), &[]).await.status, 404);

    // A valid change: one more route.
    let added = format!(
        "{original}\n[[routes]]\nname = \"added\"\npath = \"/added/{{*rest}}\"\nupstream = \"chat\"\nauth = \"none\"\n"
    );
    std::fs::write(&gw.config_path, &added).expect("write");
    authgate::server::reload(&gw.shared, &gw.config_path).expect("valid reload");
    let r = get(&gw.url("/added/x"), &[]).await;
    assert_eq!(r.status, 200, "the new route serves: {}", r.raw);
    assert_eq!(gw.upstream.count(), 1);

    // An invalid change: a typo and a missing upstream. Nothing changes.
    let broken = format!(
        "{added}\n[[routes]]\nname = \"broken\"\npath = \"/broken/{{*rest}}\"\nupstream = \"chat\"\nscoeps = [\"x\"]\n\n[[routes]]\nname = \"broken2\"\npath = \"/broken2\"\nupstream = \"nope\"\n"
    );
    std::fs::write(&gw.config_path, &broken).expect("write");
    let err = authgate::server::reload(&gw.shared, &gw.config_path).expect_err("invalid reload");
    assert!(err.contains("routes[8].scoeps"), "{err}");
    assert!(err.contains("routes[9].upstream"), "{err}");
    assert_eq!(
        get(&gw.url("/added/x"), &[]).await.status,
        200,
        "the running configuration stays"
    );
    assert_eq!(get(&gw.url("/api/public/x"), &[]).await.status, 200);
    assert_eq!(get(&gw.url("/broken/x"), &[]).await.status, 404);
    let token = bearer(&sign(keys, Algorithm::RS256, &claims(ISS_RSA, "r1", "")));
    let r = get(&gw.url("/api/chat/x"), &[("authorization", &token)]).await;
    assert_error(&r, 403, "insufficient_scope");

    // A file that parses but whose key file is missing: refused at build time.
    let missing_key = added.replace(
        &keys.ec_public.display().to_string(),
        "/nonexistent/ec.pub.pem",
    );
    std::fs::write(&gw.config_path, &missing_key).expect("write");
    let err = authgate::server::reload(&gw.shared, &gw.config_path).expect_err("missing key");
    assert!(err.contains("issuers[1].keys[0]"), "{err}");
    assert_eq!(get(&gw.url("/added/x"), &[]).await.status, 200);
    let mobile = bearer(&sign(keys, Algorithm::ES256, &claims(ISS_EC, "r2", "chat")));
    let r = get(&gw.url("/api/chat/x"), &[("authorization", &mobile)]).await;
    assert_eq!(r.status, 200, "the EC issuer keeps its keys: {}", r.raw);

    let text = scrape(admin).await;
    assert_eq!(
        sample(&text, "authgate_config_reloads_total{result=\"success\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "authgate_config_reloads_total{result=\"failure\"}"),
        Some(2.0),
        "{text}"
    );
}
