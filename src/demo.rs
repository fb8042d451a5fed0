//! `authgate demo`: a built-in echo chat backend and the gateway in front of
//! it, on free local ports, with freshly generated keys; prints curl
//! commands that work when pasted, and runs until Ctrl-C.
//!
//! The echo backend answers every request with JSON describing what it
//! received (method, path, headers, body), so the identity headers the
//! gateway injected — and the ones it stripped — are visible.

use crate::config::Config;
use crate::pipeline::forward::{full, Body};
use crate::server::Gateway;
use crate::token::{self, Claims};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Map, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tokio::net::TcpListener;

/// The demo's web issuer.
pub const WEB_ISS: &str = "https://login.demo.authgate.test";
/// The demo's Omnichannel-style issuer.
pub const OMNI_ISS: &str = "contosohelp.com";

/// Starts an echo backend on 127.0.0.1:0; returns its address.
pub async fn start_echo_backend() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    Ok::<_, std::convert::Infallible>(echo(req).await)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// The RFC 6455 `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn websocket_accept(key: &[u8]) -> String {
    use base64::Engine;
    use sha1::Digest;
    let mut h = sha1::Sha1::new();
    h.update(key);
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// Echoes WebSocket messages: reads client frames (masked), answers each
/// text/binary frame unmasked, answers ping with pong and close with close.
async fn websocket_echo(upgraded: hyper::upgrade::Upgraded, greeting: String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut io = TokioIo::new(upgraded);
    let frame = |opcode: u8, payload: &[u8]| {
        let mut f = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => f.push(n as u8),
            n if n < 65_536 => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(payload);
        f
    };
    if io.write_all(&frame(1, greeting.as_bytes())).await.is_err() {
        return;
    }
    loop {
        let mut head = [0u8; 2];
        if io.read_exact(&mut head).await.is_err() {
            return;
        }
        let opcode = head[0] & 0x0f;
        let len = match head[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                if io.read_exact(&mut b).await.is_err() {
                    return;
                }
                u64::from(u16::from_be_bytes(b))
            }
            127 => {
                let mut b = [0u8; 8];
                if io.read_exact(&mut b).await.is_err() {
                    return;
                }
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        };
        if len > 1 << 20 {
            return;
        }
        let mut mask = [0u8; 4];
        if head[1] & 0x80 != 0 && io.read_exact(&mut mask).await.is_err() {
            return;
        }
        let mut payload = vec![0u8; len as usize];
        if io.read_exact(&mut payload).await.is_err() {
            return;
        }
        if head[1] & 0x80 != 0 {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
        }
        let reply = match opcode {
            0x8 => {
                let _ = io.write_all(&frame(0x8, &payload)).await;
                return;
            }
            0x9 => frame(0xA, &payload),
            0xA => continue,
            op => frame(op, &payload),
        };
        if io.write_all(&reply).await.is_err() {
            return;
        }
    }
}

async fn echo(mut req: Request<Incoming>) -> Response<Body> {
    if let Some(key) = req.headers().get("sec-websocket-key").cloned() {
        let identity: Map<String, Value> = req
            .headers()
            .iter()
            .filter(|(k, _)| k.as_str().starts_with("x-authgate-"))
            .map(|(k, v)| (k.as_str().to_owned(), Value::from(v.to_str().unwrap_or(""))))
            .collect();
        let greeting =
            json!({"echo": "authgate demo chat socket", "identity": identity}).to_string();
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on_upgrade.await {
                websocket_echo(up, greeting).await;
            }
        });
        let mut r = Response::new(full(bytes::Bytes::new()));
        *r.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
        let h = r.headers_mut();
        h.insert(
            http::header::UPGRADE,
            http::HeaderValue::from_static("websocket"),
        );
        h.insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("Upgrade"),
        );
        if let Ok(v) = http::HeaderValue::try_from(websocket_accept(key.as_bytes())) {
            h.insert("sec-websocket-accept", v);
        }
        return r;
    }
    let (parts, body) = req.into_parts();
    let mut headers = Map::new();
    for (k, v) in &parts.headers {
        headers.insert(
            k.as_str().to_owned(),
            Value::from(String::from_utf8_lossy(v.as_bytes()).into_owned()),
        );
    }
    let bytes = match http_body_util::Limited::new(body, 1 << 20).collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => bytes::Bytes::new(),
    };
    let body_value = serde_json::from_slice::<Value>(&bytes)
        .unwrap_or_else(|_| Value::from(String::from_utf8_lossy(&bytes).into_owned()));
    let identity: Map<String, Value> = headers
        .iter()
        .filter(|(k, _)| k.starts_with("x-authgate-"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let reply = json!({
        "echo": "authgate demo chat backend",
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "identity": identity,
        "headers": headers,
        "body": body_value,
    });
    let mut r = Response::new(full(serde_json::to_vec_pretty(&reply).unwrap_or_default()));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// Files the demo generated.
pub struct DemoFiles {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub web_key: PathBuf,
    pub omni_secret: PathBuf,
}

/// Writes fresh keys and a gateway.toml for an upstream at `echo`.
pub fn write_files(dir: &Path, echo: SocketAddr, tls: bool) -> Result<DemoFiles, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let w = |name: &str, data: &[u8]| -> Result<PathBuf, String> {
        let p = dir.join(name);
        std::fs::write(&p, data).map_err(|e| format!("{}: {e}", p.display()))?;
        Ok(p)
    };
    let web = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| format!("key generation: {e}"))?;
    let web_key = w("web-issuer.key.pem", web.serialize_pem().as_bytes())?;
    w("web-issuer.pub.pem", web.public_key_pem().as_bytes())?;
    let hex = |n: usize| -> String {
        (0..n)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect()
    };
    let omni_secret = w("omnichannel.secret", hex(32).as_bytes())?;
    w("customer-id.key", hex(32).as_bytes())?;
    let mut listen = String::from("addr = \"127.0.0.1:0\"\n");
    if tls {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .map_err(|e| format!("certificate generation: {e}"))?;
        w("gateway.crt", ck.cert.pem().as_bytes())?;
        w("gateway.key", ck.key_pair.serialize_pem().as_bytes())?;
        listen.push_str("tls = { cert = \"gateway.crt\", key = \"gateway.key\" }\n");
    }
    let toml = format!(
        r#"# Generated by `authgate demo` — throwaway keys, local ports.
[listen]
{listen}
[admin]
addr = "127.0.0.1:0"

[log]
format = "pretty"
level = "info"

[upstreams.chat]
url = "http://{echo}"

[credentials]
token = ["header:authorization", "cookie:AuthCookie", "body:/Auth/Token", "query:access_token"]
strip = true

[identity]
pseudonymize = true
key_file = "customer-id.key"
customer_info_pii = "redact"

[[issuers]]
name = "web"
iss = "{WEB_ISS}"
audiences = ["chat-gateway"]
algorithms = ["ES256"]
keys = ["web-issuer.pub.pem"]
leeway = "30s"
namespace = "customers"

[[issuers]]
name = "omnichannel"
iss = "{OMNI_ISS}"
algorithms = ["HS256"]
secret_file = "omnichannel.secret"
context_claim = "lwicontexts"
context_keys = ["msdyn_cartvalue", "msdyn_isvip"]
namespace = "customers"

[cors]
allow_origins = ["https://www.example.com"]
allow_credentials = true
allow_headers = ["authorization", "content-type"]
max_age = "10m"

[[routes]]
name = "chat"
path = "/api/chat/{{*rest}}"
upstream = "chat"
auth = "required"
scopes = ["chat"]
context = "body:/"

[[routes]]
name = "pay-bill"
path = "/api/bill/{{*rest}}"
methods = ["POST"]
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
name = "chat-socket"
path = "/ws"
upstream = "chat"
auth = "required"
close_on_expiry = true

[[routes]]
name = "public"
path = "/api/public/{{*rest}}"
upstream = "chat"
auth = "none"
"#
    );
    let config = w("gateway.toml", toml.as_bytes())?;
    Ok(DemoFiles {
        dir: dir.to_owned(),
        config,
        web_key,
        omni_secret,
    })
}

/// Mints a demo token with the web issuer's key.
pub fn web_token(
    files: &DemoFiles,
    sub: &str,
    scopes: &[&str],
    ttl_secs: i64,
) -> Result<String, String> {
    let (key, alg) = token::encoding_key(&files.web_key, None)?;
    let claims = Claims {
        iss: WEB_ISS.into(),
        sub: sub.into(),
        aud: vec!["chat-gateway".into()],
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        ttl_secs,
        extra: Vec::new(),
        kid: None,
    };
    token::mint(&key, alg, &claims, now())
}

/// Mints an Omnichannel-style HS256 token with `lwicontexts`.
pub fn omni_token(files: &DemoFiles, sub: &str, ttl_secs: i64) -> Result<String, String> {
    let (key, alg) = token::encoding_key(&files.omni_secret, Some("HS256"))?;
    let claims = Claims {
        iss: OMNI_ISS.into(),
        sub: sub.into(),
        aud: Vec::new(),
        scopes: vec!["chat".into()],
        ttl_secs,
        extra: vec![
            (
                "lwicontexts".into(),
                Value::from("{\"msdyn_cartvalue\":\"10000\",\"msdyn_isvip\":\"false\",\"portalcontactid\":\"drop-me\"}"),
            ),
            ("nbf".into(), Value::from(now() - 5)),
        ],
        kid: None,
    };
    token::mint(&key, alg, &claims, now())
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

/// `authgate demo`.
pub async fn run(tls: bool) -> Result<(), String> {
    let echo = start_echo_backend()
        .await
        .map_err(|e| format!("echo backend: {e}"))?;
    let dir = std::env::temp_dir().join(format!("authgate-demo-{}", std::process::id()));
    let files = write_files(&dir, echo, tls)?;
    let config = Config::load(&files.config).map_err(|e| e.to_string())?;
    let gateway = Gateway::bind(config).await?;
    let addr = gateway.local_addr();
    let admin = gateway
        .admin_addr()
        .map_or_else(String::new, |a| a.to_string());
    let valid = web_token(&files, "alice@example.com", &["chat"], 3600)?;
    let expired = web_token(&files, "alice@example.com", &["chat"], -600)?;
    let omni = omni_token(&files, "contact-0042", 3600)?;
    let scheme = if tls { "https" } else { "http" };
    let k = if tls {
        format!(" --cacert {}", dir.join("gateway.crt").display())
    } else {
        String::new()
    };
    let base = format!(
        "{scheme}://{}",
        if tls {
            format!("localhost:{}", addr.port())
        } else {
            addr.to_string()
        }
    );
    println!(
        r#"
authgate demo — gateway on {base}, echo chat backend on http://{echo}, admin on http://{admin}
configuration and throwaway keys: {dir}

# 1. A valid token (scope "chat"): 200, and the backend shows the identity headers it received
curl -s{k} {base}/api/chat/messages -H 'Authorization: Bearer {valid}'

# 2. An expired token: 401 token_expired with "needs_refresh": true
curl -s{k} -i {base}/api/chat/messages -H 'Authorization: Bearer {expired}'

# 3. A token without the "paybill" scope: 403 insufficient_scope
curl -s{k} -i -X POST {base}/api/bill/pay -H 'Authorization: Bearer {valid}' -H 'content-type: application/json' -d '{{}}'

# 4. Anonymous: no token on a public route; the spoofed identity header never reaches the backend
curl -s{k} {base}/api/public/faq -H 'x-authgate-customer-id: cid_spoofed'

# 5. No token on a protected route: 401 missing_token
curl -s{k} -i {base}/api/chat/messages

# 6. ASAPP-style context object in the body (token in Auth.Token, CustomerInfo, Segments)
curl -s{k} {base}/api/chat/messages -H 'content-type: application/json' -d '{{"Auth":{{"Token":"{valid}","Scopes":["chat"]}},"CustomerInfo":{{"category":"payment","parent_page":"Pay my Bill","email":"alice@example.com"}},"ExternalSessionId":"j6oAOxCWZh","ExternalSessionType":"visitID","Segments":["north america","usa"]}}'

# 7. Omnichannel-style HS256 token with lwicontexts (forwarded as x-authgate-context)
curl -s{k} {base}/api/chat/messages -H 'Authorization: Bearer {omni}'

# 8. A WebSocket chat session (token in the query: browsers cannot set headers there; stripped before forwarding)
python3 examples/websocket/ws_client.py{ca} '{ws}://{wshost}/ws?access_token={valid}'

# Same customer id for the same subject on every channel:
#   cargo run --release -- customer-id --config {config} --namespace customers alice@example.com
# Admin: curl -s http://{admin}/readyz ; curl -s http://{admin}/metrics
# Press Ctrl-C to stop.
"#,
        dir = dir.display(),
        config = files.config.display(),
        ca = if tls {
            format!(" --cafile {}", dir.join("gateway.crt").display())
        } else {
            String::new()
        },
        ws = if tls { "wss" } else { "ws" },
        wshost = base.split("://").nth(1).unwrap_or(""),
    );
    crate::telemetry::init(&crate::config::Log {
        format: crate::config::LogFormat::Pretty,
        level: "info".into(),
    });
    gateway.serve(crate::server::shutdown_signal()).await;
    let _ = std::fs::remove_dir_all(&files.dir);
    Ok(())
}
