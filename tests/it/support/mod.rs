//! Test support: a recording upstream, throwaway keys, token minting, and a
//! real gateway on 127.0.0.1:0 built from a TOML snippet.

#![allow(dead_code)]

use authgate::config::Config;
use authgate::server::Gateway;
use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Map, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One request the upstream received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Everything received, as text (uri, headers, body).
    pub fn raw_text(&self) -> String {
        let mut s = self.uri.clone();
        for (k, v) in &self.headers {
            s.push_str(&format!("\n{k}: {}", String::from_utf8_lossy(v.as_bytes())));
        }
        s.push_str(&String::from_utf8_lossy(&self.body));
        s
    }
}

/// Binds 127.0.0.1:0 and serves every connection with HTTP/1.1 and a
/// service made by `make`.
pub async fn serve_http1<F, S, B>(make: F) -> SocketAddr
where
    F: Fn() -> S + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let service = make();
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A recording upstream. Paths starting with `/slow` answer after 3 s.
#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Recorded>>>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let seen: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let s = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let s = s.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            let slow = parts.uri.path().starts_with("/slow");
                            s.lock().expect("lock").push(Recorded {
                                method: parts.method.to_string(),
                                uri: parts.uri.to_string(),
                                headers: parts.headers.clone(),
                                body,
                            });
                            if slow {
                                tokio::time::sleep(Duration::from_secs(3)).await;
                            }
                            let mut r = Response::new(Full::new(Bytes::from_static(
                                b"{\"upstream\":\"ok\"}",
                            )));
                            r.headers_mut()
                                .insert("content-type", "application/json".parse().expect("hv"));
                            r.headers_mut()
                                .insert("x-upstream", "yes".parse().expect("hv"));
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream { addr, seen }
    }

    /// Everything received so far.
    pub fn seen(&self) -> Vec<Recorded> {
        self.seen.lock().expect("lock").clone()
    }

    /// The single request received; panics if there were more or none.
    pub fn only(&self) -> Recorded {
        let seen = self.seen();
        assert_eq!(
            seen.len(),
            1,
            "upstream should have received exactly one request: {seen:#?}"
        );
        seen[0].clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().expect("lock").len()
    }
}

/// Throwaway keys written to a temp dir.
pub struct Keys {
    pub dir: tempfile::TempDir,
    pub rsa_private: String,
    pub rsa_public: PathBuf,
    pub ec_private: String,
    pub ec_public: PathBuf,
    pub ed_private: String,
    pub ed_public: PathBuf,
    pub hmac_secret: Vec<u8>,
    pub hmac_file: PathBuf,
    pub id_key_file: PathBuf,
}

impl Keys {
    /// One set of keys per test process (RSA generation is slow in debug builds).
    pub fn generate() -> &'static Keys {
        static KEYS: std::sync::OnceLock<Keys> = std::sync::OnceLock::new();
        KEYS.get_or_init(Keys::fresh)
    }

    pub fn fresh() -> Keys {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, data: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, data).expect("write");
            p
        };
        let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("rsa");
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ec");
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed");
        let rsa_public = write("rsa.pub.pem", rsa.public_key_pem().as_bytes());
        let ec_public = write("ec.pub.pem", ec.public_key_pem().as_bytes());
        let ed_public = write("ed.pub.pem", ed.public_key_pem().as_bytes());
        let hmac_secret = b"0123456789abcdef0123456789abcdef-test-only".to_vec();
        let hmac_file = write("hmac.secret", &[hmac_secret.as_slice(), b"\n"].concat());
        let id_key_file = write("id.key", b"test-only-customer-id-key-32-bytes!\n");
        Keys {
            rsa_private: rsa.serialize_pem(),
            ec_private: ec.serialize_pem(),
            ed_private: ed.serialize_pem(),
            dir,
            rsa_public,
            ec_public,
            ed_public,
            hmac_secret,
            hmac_file,
            id_key_file,
        }
    }
}

pub const ISS_RSA: &str = "https://rsa.issuer.test";
pub const ISS_EC: &str = "https://ec.issuer.test";
pub const ISS_HS: &str = "hs.issuer.test";
pub const AUD: &str = "chat-gateway";

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// Standard claims: iss, sub, aud, scope, iat, exp = now + 600.
pub fn claims(iss: &str, sub: &str, scope: &str) -> Map<String, Value> {
    let v = json!({
        "iss": iss, "sub": sub, "aud": AUD, "scope": scope,
        "iat": now(), "exp": now() + 600,
    });
    match v {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

/// Signs `claims` with `alg` using the matching test key.
pub fn sign(keys: &Keys, alg: Algorithm, claims: &Map<String, Value>) -> String {
    sign_with_header(keys, Header::new(alg), claims)
}

pub fn sign_with_header(keys: &Keys, header: Header, claims: &Map<String, Value>) -> String {
    let key = match header.alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => {
            EncodingKey::from_rsa_pem(keys.rsa_private.as_bytes()).expect("rsa key")
        }
        Algorithm::ES256 | Algorithm::ES384 => {
            EncodingKey::from_ec_pem(keys.ec_private.as_bytes()).expect("ec key")
        }
        Algorithm::EdDSA => EncodingKey::from_ed_pem(keys.ed_private.as_bytes()).expect("ed key"),
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            EncodingKey::from_secret(&keys.hmac_secret)
        }
    };
    jsonwebtoken::encode(&header, &Value::Object(claims.clone()), &key).expect("sign")
}

/// Builds a token from raw JSON header and payload with an HMAC signature
/// over them using `secret` (for hostile-header tests).
pub fn forge_hs256(header: &Value, claims: &Value, secret: &[u8]) -> String {
    use base64::Engine;
    use hmac::Mac;
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let h = e.encode(serde_json::to_vec(header).expect("json"));
    let p = e.encode(serde_json::to_vec(claims).expect("json"));
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("hmac");
    mac.update(format!("{h}.{p}").as_bytes());
    format!("{h}.{p}.{}", e.encode(mac.finalize().into_bytes()))
}

/// A running gateway.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub upstream: Upstream,
    pub config_path: PathBuf,
    pub shared: Arc<authgate::pipeline::Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub done: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl TestGateway {
    /// The default test configuration: three issuers (RSA "web", EC
    /// "mobile", HS256 "omni"), pseudonymization on, and routes:
    /// `/api/chat/{*rest}` required + scope chat; `/api/bill/{*rest}` POST
    /// required + paybill; `/api/web-only/{*rest}` issuers = ["web"];
    /// `/api/optional/{*rest}` optional; `/api/public/{*rest}` none;
    /// `/ws` required; `/slow/{*rest}` required.
    pub fn default_toml(keys: &Keys) -> String {
        format!(
            r#"
[credentials]
token = ["header:authorization", "cookie:AuthCookie", "query:access_token"]
strip = true

[identity]
pseudonymize = true
key_file = "{id}"

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

[[routes]]
name = "chat"
path = "/api/chat/{{*rest}}"
upstream = "chat"
auth = "required"
scopes = ["chat"]

[[routes]]
name = "bill"
path = "/api/bill/{{*rest}}"
methods = ["POST"]
upstream = "chat"
auth = "required"
scopes = ["paybill"]

[[routes]]
name = "web-only"
path = "/api/web-only/{{*rest}}"
upstream = "chat"
auth = "required"
issuers = ["web"]

[[routes]]
name = "optional"
path = "/api/optional/{{*rest}}"
upstream = "chat"
auth = "optional"

[[routes]]
name = "public"
path = "/api/public/{{*rest}}"
upstream = "chat"
auth = "none"

[[routes]]
name = "socket"
path = "/ws"
upstream = "chat"
auth = "required"

[[routes]]
name = "slow"
path = "/slow/{{*rest}}"
upstream = "chat"
auth = "none"
"#,
            id = keys.id_key_file.display(),
            rsa = keys.rsa_public.display(),
            ec = keys.ec_public.display(),
            hs = keys.hmac_file.display(),
        )
    }

    /// Starts a gateway with `[listen]`, `[admin]`, `[limits]` and
    /// `[upstreams.chat]` (pointing at a fresh recording upstream) prepended
    /// to `body`. `limits` is the body of the `[limits]` table.
    pub async fn start(body: &str, limits: &str) -> TestGateway {
        let upstream = Upstream::start().await;
        Self::start_with_upstream(body, limits, upstream, &format!("http://{}", "UPSTREAM")).await
    }

    pub async fn start_with_upstream(
        body: &str,
        limits: &str,
        upstream: Upstream,
        url: &str,
    ) -> TestGateway {
        let url = url.replace("UPSTREAM", &upstream.addr.to_string());
        let toml = format!(
            "[listen]\naddr = \"127.0.0.1:0\"\n\n[admin]\naddr = \"127.0.0.1:0\"\n\n[limits]\n{limits}\n\n[log]\nlevel = \"warn\"\n\n[upstreams.chat]\nurl = \"{url}\"\nconnect_timeout = \"1s\"\n{body}"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("gateway.toml");
        std::fs::write(&config_path, toml).expect("write config");
        let config = match Config::load(&config_path) {
            Ok(c) => c,
            Err(e) => panic!("test config invalid: {e}"),
        };
        let gateway = Gateway::bind(config).await.expect("bind gateway");
        let addr = gateway.local_addr();
        let admin = gateway.admin_addr();
        let shared = gateway.shared.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let done = tokio::spawn(gateway.serve(async move {
            let _ = rx.await;
        }));
        TestGateway {
            addr,
            admin,
            upstream,
            config_path,
            shared,
            stop: Some(tx),
            done: Some(done),
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Begins a graceful shutdown.
    pub fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A reqwest client without proxies, redirects or connection reuse surprises.
pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client")
}

/// A parsed response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
    pub raw: String,
}

pub async fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    send(reqwest::Method::GET, url, headers, None).await
}

pub async fn send(
    method: reqwest::Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<(&str, Vec<u8>)>,
) -> Reply {
    let mut rb = client().request(method, url);
    let mut map = reqwest::header::HeaderMap::new();
    for (k, v) in headers {
        map.append(
            reqwest::header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            reqwest::header::HeaderValue::from_str(v).expect("value"),
        );
    }
    rb = rb.headers(map);
    if let Some((ct, b)) = body {
        rb = rb.header("content-type", ct).body(b);
    }
    let r = rb.send().await.expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let raw = r.text().await.expect("body");
    let body = serde_json::from_str(&raw).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        body,
        raw,
    }
}

/// Sends raw bytes and returns the status code and the whole response text.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// Asserts an error reply's status, code and request id.
pub fn assert_error(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status, status, "status for {code}: {}", r.raw);
    assert_eq!(r.body["error"], code, "{}", r.raw);
    assert!(r.body["request_id"].is_string(), "{}", r.raw);
    assert_eq!(r.headers["content-type"], "application/json");
}
