//! The edge (issue 5): TLS and mTLS, h2c, WebSockets that end with their
//! token, streaming, CORS, hostile bytes on raw sockets, slowloris and the
//! connection cap. Every test starts a real gateway on 127.0.0.1:0 and
//! asserts both what the client got and what the upstream received.
//!
//! Every network action is bounded by [`within`]; nothing sleeps to
//! synchronise.

use crate::support::*;
use jsonwebtoken::Algorithm;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// The bound on every network step.
const BOUND: Duration = Duration::from_secs(15);

async fn within<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(BOUND, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {BOUND:?}: {what}"),
    }
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

fn token(keys: &Keys) -> String {
    sign(keys, Algorithm::RS256, &claims(ISS_RSA, "alice", "chat"))
}

fn token_expiring_at(keys: &Keys, exp: i64) -> String {
    let mut c = claims(ISS_RSA, "alice", "chat");
    c.insert("exp".into(), exp.into());
    sign(keys, Algorithm::RS256, &c)
}

async fn default_gateway(limits: &str) -> (TestGateway, &'static Keys) {
    let keys = Keys::generate();
    let gw = TestGateway::start(&TestGateway::default_toml(keys), limits).await;
    (gw, keys)
}

// ---------------------------------------------------------------------------
// Raw HTTP/1.1 helpers
// ---------------------------------------------------------------------------

/// Reads until the end of an HTTP head; returns the head and any bytes
/// read past it. `None` if the peer closed first.
async fn read_head<R: AsyncRead + Unpin>(s: &mut R) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Some((String::from_utf8_lossy(&buf).into_owned(), rest));
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn status_of(head: &str) -> u16 {
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The value of header `name` in a raw head (case-insensitive name).
fn head_header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Reads one response (head + `content-length` body) from a kept-alive
/// connection.
async fn read_response(s: &mut TcpStream) -> (u16, String, Vec<u8>) {
    let (head, mut body) = within("response head", read_head(s))
        .await
        .expect("connection closed before a response head");
    let len: usize = head_header(&head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while body.len() < len {
        let mut chunk = [0u8; 4096];
        let n = within("response body", s.read(&mut chunk))
            .await
            .expect("read body");
        assert!(n > 0, "closed mid-body");
        body.extend_from_slice(&chunk[..n]);
    }
    (status_of(&head), head, body)
}

/// Reads until EOF (or a reset), bounded.
async fn read_to_eof<R: AsyncRead + Unpin>(s: &mut R) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    within("peer to close the connection", async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    out
}

async fn connect(addr: SocketAddr) -> TcpStream {
    within("connect", TcpStream::connect(addr))
        .await
        .expect("connect")
}

// ---------------------------------------------------------------------------
// A raw upstream that can speak WebSocket (or refuse to), or plain HTTP/1.1
// ---------------------------------------------------------------------------

const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// RFC 6455 §1.3's accept value for [`WS_KEY`]; the upstream sends it and
/// the gateway must pass it through byte for byte.
const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
/// An unmasked text frame "hello" that the upstream writes in the same
/// TCP write as its 101 head.
const GREETING: [u8; 7] = [0x81, 0x05, b'h', b'e', b'l', b'l', b'o'];
const CLOSE_1008: [u8; 4] = [0x88, 0x02, 0x03, 0xF0];

#[derive(Clone, Copy)]
enum Mode {
    /// 101 + greeting frame, then echo every byte back.
    Upgrade,
    /// Answer this status (not 101) with a small body, then echo whatever
    /// else arrives on the connection (so a tunnel, if one existed, would
    /// be visible to the client).
    Refuse(u16),
    /// 200 "ok" to every request, keep-alive.
    Plain,
    /// 101, then send binary frames without pause while counting (and
    /// discarding) what arrives.
    Flood,
}

#[derive(Clone)]
struct RawUpstream {
    addr: SocketAddr,
    /// Every request head received, verbatim.
    heads: Arc<Mutex<Vec<String>>>,
    /// Every byte received after a head (tunnel traffic).
    after: Arc<Mutex<Vec<u8>>>,
    /// Notified when the gateway closes a tunnelled connection.
    closed: Arc<Notify>,
    /// Bytes received after the head, in `Flood` mode.
    received: Arc<tokio::sync::watch::Sender<usize>>,
}

impl RawUpstream {
    async fn start(mode: Mode) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let up = RawUpstream {
            addr: listener.local_addr().expect("addr"),
            heads: Arc::default(),
            after: Arc::default(),
            closed: Arc::default(),
            received: Arc::new(tokio::sync::watch::channel(0).0),
        };
        let u = up.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(u.clone().serve(s, mode));
            }
        });
        up
    }

    async fn serve(self, mut s: TcpStream, mode: Mode) {
        loop {
            let Some((head, rest)) = read_head(&mut s).await else {
                return;
            };
            self.heads.lock().expect("lock").push(head);
            let reply = match mode {
                Mode::Plain => {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                    continue;
                }
                Mode::Flood => {
                    let head = format!(
                        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {WS_ACCEPT}\r\n\r\n"
                    );
                    if s.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    self.flood(s, rest.len()).await;
                    return;
                }
                Mode::Upgrade => {
                    let mut r = format!(
                        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {WS_ACCEPT}\r\nSec-WebSocket-Protocol: chat\r\n\r\n"
                    )
                    .into_bytes();
                    r.extend_from_slice(&GREETING);
                    r
                }
                Mode::Refuse(code) => {
                    format!("HTTP/1.1 {code} Nope\r\ncontent-length: 7\r\n\r\nrefused").into_bytes()
                }
            };
            if s.write_all(&reply).await.is_err() {
                return;
            }
            // Echo: the tunnel (or the proof that there is none).
            let mut pending = rest;
            let mut buf = [0u8; 8192];
            loop {
                if !pending.is_empty() {
                    self.after.lock().expect("lock").extend_from_slice(&pending);
                    if s.write_all(&pending).await.is_err() {
                        break;
                    }
                }
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => pending = buf[..n].to_vec(),
                }
            }
            self.closed.notify_one();
            return;
        }
    }

    async fn flood(&self, s: TcpStream, already: usize) {
        let (mut r, mut w) = s.into_split();
        let mut frame = vec![0x82, 126, 0x40, 0x00];
        frame.resize(4 + 0x4000, b'x');
        let writer = async { while w.write_all(&frame).await.is_ok() {} };
        let received = self.received.clone();
        let reader = async move {
            let mut n = already;
            received.send_replace(n);
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(k) = r.read(&mut buf).await {
                if k == 0 {
                    break;
                }
                n += k;
                received.send_replace(n);
            }
        };
        // Whichever notices first that the gateway closed.
        tokio::select! {
            () = writer => {}
            () = reader => {}
        }
        self.closed.notify_one();
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().expect("lock").clone()
    }

    fn after(&self) -> Vec<u8> {
        self.after.lock().expect("lock").clone()
    }
}

/// A gateway whose `chat` upstream is `raw`.
async fn gateway_to(raw: &RawUpstream, toml: &str, limits: &str) -> TestGateway {
    let unused = Upstream::start().await;
    TestGateway::start_with_upstream(toml, limits, unused, &format!("http://{}", raw.addr)).await
}

fn ws_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: chat.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat\r\n{extra}\r\n"
    )
}

/// Sends an upgrade request and reads the response head; returns the
/// stream, the head and any bytes that followed it.
async fn ws_open(addr: SocketAddr, path: &str, extra: &str) -> (TcpStream, String, Vec<u8>) {
    let mut s = connect(addr).await;
    within(
        "write upgrade",
        s.write_all(ws_request(path, extra).as_bytes()),
    )
    .await
    .expect("write");
    let (head, rest) = within("upgrade response", read_head(&mut s))
        .await
        .expect("gateway closed before answering the upgrade");
    (s, head, rest)
}

/// Reads exactly `n` bytes, starting with `already`.
async fn read_exactly(s: &mut TcpStream, mut already: Vec<u8>, n: usize) -> Vec<u8> {
    let mut chunk = [0u8; 4096];
    while already.len() < n {
        let k = within("tunnel bytes", s.read(&mut chunk))
            .await
            .expect("read");
        assert!(k > 0, "tunnel closed early; got {already:?}");
        already.extend_from_slice(&chunk[..k]);
    }
    already
}

// ---------------------------------------------------------------------------
// 3. WebSockets
// ---------------------------------------------------------------------------

#[tokio::test]
async fn websocket_with_query_token_tunnels_both_ways_and_strips_the_token() {
    let keys = Keys::generate();
    let raw = RawUpstream::start(Mode::Upgrade).await;
    let gw = gateway_to(&raw, &TestGateway::default_toml(keys), "").await;
    let t = token(keys);
    let (mut s, head, rest) = ws_open(
        gw.addr,
        &format!("/ws?room=7&access_token={t}&lang=en"),
        "X-AuthGate-Customer-Id: cid_spoofed\r\n",
    )
    .await;
    assert_eq!(status_of(&head), 101, "{head}");
    assert_eq!(head_header(&head, "sec-websocket-accept"), Some(WS_ACCEPT));
    assert_eq!(head_header(&head, "sec-websocket-protocol"), Some("chat"));
    assert!(head_header(&head, "upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")));

    // upstream → client: the greeting written together with the 101 head.
    let got = read_exactly(&mut s, rest, GREETING.len()).await;
    assert_eq!(got, GREETING);
    // client → upstream → client: a masked frame, echoed byte for byte.
    let frame = [0x81, 0x82, 1, 2, 3, 4, b'o' ^ 1, b'k' ^ 2];
    within("write frame", s.write_all(&frame))
        .await
        .expect("write");
    let echoed = read_exactly(&mut s, Vec::new(), frame.len()).await;
    assert_eq!(echoed, frame);
    assert_eq!(raw.after(), frame, "the upstream got the frame intact");

    let heads = raw.heads();
    assert_eq!(heads.len(), 1, "{heads:?}");
    let up = &heads[0];
    let line = up.lines().next().expect("request line");
    assert_eq!(
        line, "GET /ws?room=7&lang=en HTTP/1.1",
        "token stripped from query"
    );
    assert!(!up.contains(&t) && !up.contains("access_token"), "{up}");
    assert_eq!(head_header(up, "sec-websocket-key"), Some(WS_KEY));
    assert_eq!(head_header(up, "sec-websocket-version"), Some("13"));
    assert!(head_header(up, "upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")));
    assert!(head_header(up, "connection").is_some_and(|v| v.eq_ignore_ascii_case("upgrade")));
    assert_eq!(head_header(up, "x-authgate-auth"), Some("authenticated"));
    let cid = head_header(up, "x-authgate-customer-id").expect("customer id");
    assert!(cid.starts_with("cid_") && cid != "cid_spoofed", "{cid}");
    assert_eq!(head_header(up, "host"), Some("chat.example"));
}

#[tokio::test]
async fn websocket_with_header_token_is_accepted_too() {
    let keys = Keys::generate();
    let raw = RawUpstream::start(Mode::Upgrade).await;
    let gw = gateway_to(&raw, &TestGateway::default_toml(keys), "").await;
    let t = token(keys);
    let (_s, head, _) = ws_open(
        gw.addr,
        "/ws",
        &format!("Authorization: {}\r\n", bearer(&t)),
    )
    .await;
    assert_eq!(status_of(&head), 101, "{head}");
    let heads = raw.heads();
    assert_eq!(heads.len(), 1);
    assert!(head_header(&heads[0], "authorization").is_none());
    assert!(!heads[0].contains(&t));
}

#[tokio::test]
async fn websocket_without_token_is_401_and_upstream_sees_nothing() {
    let keys = Keys::generate();
    let raw = RawUpstream::start(Mode::Upgrade).await;
    let gw = gateway_to(&raw, &TestGateway::default_toml(keys), "").await;
    let mut s = connect(gw.addr).await;
    within(
        "write",
        s.write_all(ws_request("/ws?room=1", "").as_bytes()),
    )
    .await
    .expect("write");
    let (status, head, body) = read_response(&mut s).await;
    assert_eq!(status, 401, "{head}");
    let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(body["error"], "missing_token");
    assert!(head_header(&head, "sec-websocket-accept").is_none());
    assert!(raw.heads().is_empty());
    // an empty access_token is no token either
    within(
        "write",
        s.write_all(ws_request("/ws?access_token=", "").as_bytes()),
    )
    .await
    .expect("write");
    let (status, _, _) = read_response(&mut s).await;
    assert_eq!(status, 401);
    assert!(raw.heads().is_empty());
}

#[tokio::test]
async fn websocket_with_expired_token_is_401_token_expired() {
    let keys = Keys::generate();
    let raw = RawUpstream::start(Mode::Upgrade).await;
    let gw = gateway_to(&raw, &TestGateway::default_toml(keys), "").await;
    let t = token_expiring_at(keys, now() - 120);
    let mut s = connect(gw.addr).await;
    within(
        "write",
        s.write_all(ws_request(&format!("/ws?access_token={t}"), "").as_bytes()),
    )
    .await
    .expect("write");
    let (status, head, body) = read_response(&mut s).await;
    assert_eq!(status, 401, "{head}");
    let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(body["error"], "token_expired");
    assert_eq!(body["needs_refresh"], true);
    assert!(head_header(&head, "www-authenticate").is_some_and(|v| v.contains("invalid_token")));
    assert!(raw.heads().is_empty());
}

#[tokio::test]
async fn websocket_on_a_plain_route_is_not_honoured_by_query_token() {
    // `query:` counts only on upgrades: a plain GET with ?access_token is
    // anonymous, so a required route refuses it.
    let keys = Keys::generate();
    let raw = RawUpstream::start(Mode::Plain).await;
    let gw = gateway_to(&raw, &TestGateway::default_toml(keys), "").await;
    let t = token(keys);
    let r = get(&gw.url(&format!("/api/chat/x?access_token={t}")), &[]).await;
    assert_error(&r, 401, "missing_token");
    assert!(raw.heads().is_empty());
}

async fn refused_upgrade_opens_no_tunnel(code: u16) {
    let keys = Keys::generate();
    let raw = RawUpstream::start(Mode::Refuse(code)).await;
    let gw = gateway_to(&raw, &TestGateway::default_toml(keys), "").await;
    let t = token(keys);
    let mut s = connect(gw.addr).await;
    within(
        "write",
        s.write_all(ws_request(&format!("/ws?access_token={t}"), "").as_bytes()),
    )
    .await
    .expect("write");
    let (status, head, body) = read_response(&mut s).await;
    assert_eq!(
        status, code,
        "the upstream's answer reaches the client: {head}"
    );
    assert_eq!(body, b"refused");
    assert!(head_header(&head, "sec-websocket-accept").is_none());
    assert!(head_header(&head, "upgrade").is_none(), "{head}");
    // Frame bytes now are not tunnelled: the gateway parses them as HTTP
    // (and refuses them), the upstream never sees them.
    let probe = b"\x81\x85PROBE-BYTES\r\n\r\n";
    within("write probe", s.write_all(probe))
        .await
        .expect("write");
    let tail = read_to_eof(&mut s).await;
    let tail = String::from_utf8_lossy(&tail);
    assert!(
        !tail.contains("PROBE"),
        "probe echoed: no tunnel allowed: {tail}"
    );
    if !tail.is_empty() {
        assert_eq!(status_of(&tail), 400, "{tail}");
    }
    assert_eq!(raw.heads().len(), 1);
    assert!(
        !String::from_utf8_lossy(&raw.after()).contains("PROBE"),
        "the upstream must not receive tunnel bytes"
    );
}

#[tokio::test]
async fn websocket_upstream_answering_403_opens_no_tunnel() {
    refused_upgrade_opens_no_tunnel(403).await;
}

#[tokio::test]
async fn websocket_upstream_answering_200_opens_no_tunnel() {
    refused_upgrade_opens_no_tunnel(200).await;
}

fn expiring_socket_toml(keys: &Keys) -> String {
    let base = TestGateway::default_toml(keys).replace("leeway = \"30s\"", "leeway = \"0s\"");
    format!(
        "{base}\n[[routes]]\nname = \"socket-expiring\"\npath = \"/ws-expiring\"\nupstream = \"chat\"\nauth = \"required\"\nclose_on_expiry = true\n"
    )
}

#[tokio::test]
async fn websocket_close_on_expiry_sends_1008_then_closes() {
    let keys = Keys::generate();
    let raw = RawUpstream::start(Mode::Upgrade).await;
    let gw = gateway_to(&raw, &expiring_socket_toml(keys), "").await;
    let t = token_expiring_at(keys, now() + 2);
    let (mut s, head, rest) = ws_open(gw.addr, &format!("/ws-expiring?access_token={t}"), "").await;
    assert_eq!(status_of(&head), 101, "{head}");
    // The upstream sends one frame and then stays idle; at exp the gateway
    // sends a 1008 close frame (at a frame boundary) and closes.
    let mut got = rest;
    got.extend(read_to_eof(&mut s).await);
    let mut want = GREETING.to_vec();
    want.extend_from_slice(&CLOSE_1008);
    assert_eq!(got, want);
    within("upstream side closed", raw.closed.notified()).await;
    assert_eq!(raw.heads().len(), 1);
}

#[tokio::test]
async fn websocket_close_on_expiry_with_already_expired_token_is_refused() {
    let keys = Keys::generate();
    let raw = RawUpstream::start(Mode::Upgrade).await;
    let gw = gateway_to(&raw, &expiring_socket_toml(keys), "").await;
    let t = token_expiring_at(keys, now() - 1);
    let mut s = connect(gw.addr).await;
    within(
        "write",
        s.write_all(ws_request(&format!("/ws-expiring?access_token={t}"), "").as_bytes()),
    )
    .await
    .expect("write");
    let (status, _, body) = read_response(&mut s).await;
    assert_eq!(status, 401);
    assert!(String::from_utf8_lossy(&body).contains("token_expired"));
    assert!(raw.heads().is_empty());
}

// ---------------------------------------------------------------------------
// 6. Hostile bytes on raw sockets
// ---------------------------------------------------------------------------

/// Sends `request` on a fresh connection and reads until the gateway closes
/// it (bounded); returns the first status and the whole text.
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut s = connect(addr).await;
    within("write", s.write_all(request)).await.expect("write");
    let text = String::from_utf8_lossy(&read_to_eof(&mut s).await).into_owned();
    (status_of(&text), text)
}

async fn public_gateway(limits: &str) -> (TestGateway, &'static Keys) {
    default_gateway(limits).await
}

#[tokio::test]
async fn content_length_with_chunked_cannot_smuggle_a_second_request() {
    let (gw, _) = public_gateway("").await;
    // Transfer-Encoding wins (RFC 9112 §6.3): the body is the empty chunked
    // body, Content-Length is dropped, and the connection is closed after
    // the response, so the "smuggled" request is never parsed.
    let smuggled = "GET /api/public/smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let body = format!("0\r\n\r\n{smuggled}");
    let req = format!(
        "POST /api/public/x HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{body}",
        body.len()
    );
    let (status, text) = raw_exchange(gw.addr, req.as_bytes()).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "one response: {text}");
    let up = gw.upstream.only();
    assert_eq!(up.uri, "/api/public/x");
    assert!(up.body.is_empty(), "{:?}", up.body);
    assert!(!up.raw_text().contains("smuggled"));
    assert!(up.header("content-length").is_none_or(|v| v == "0"));
}

#[tokio::test]
async fn conflicting_content_lengths_are_400() {
    let (gw, _) = public_gateway("").await;
    for cl in [
        "Content-Length: 3\r\nContent-Length: 5\r\n",
        "Content-Length: 3, 5\r\n",
        "Content-Length: -1\r\n",
        "Content-Length: 0x5\r\n",
    ] {
        let req =
            format!("POST /api/public/x HTTP/1.1\r\nHost: a\r\n{cl}Connection: close\r\n\r\nabcde");
        let (status, text) = raw_exchange(gw.addr, req.as_bytes()).await;
        assert_eq!(status, 400, "{cl:?}: {text}");
    }
    assert_eq!(gw.upstream.count(), 0);
}

#[tokio::test]
async fn transfer_encodings_not_ending_in_chunked_are_400() {
    let (gw, _) = public_gateway("").await;
    for (version, te) in [
        ("HTTP/1.1", "xchunked"),
        ("HTTP/1.1", "chunked, identity"),
        ("HTTP/1.1", "identity"),
        ("HTTP/1.1", "gzip"),
        ("HTTP/1.0", "chunked"),
    ] {
        let req = format!(
            "POST /api/public/x {version}\r\nHost: a\r\nTransfer-Encoding: {te}\r\nConnection: close\r\n\r\n5\r\nabcde\r\n0\r\n\r\n"
        );
        let (status, text) = raw_exchange(gw.addr, req.as_bytes()).await;
        assert_eq!(status, 400, "{version} {te:?}: {text}");
    }
    assert_eq!(gw.upstream.count(), 0);
}

#[tokio::test]
async fn obs_fold_nul_and_cr_in_headers_are_400() {
    let (gw, _) = public_gateway("").await;
    for bad in [
        &b"X-Folded: one\r\n two\r\n"[..],
        b"X-Folded: one\r\n\ttwo\r\n",
        b"X-Bad: a\0b\r\n",
        b"X-Bad: a\rb\r\n",
        b"X-Bad\0: a\r\n",
        b"X Bad: a\r\n",
        b"X-Bad : a\r\n",
    ] {
        let mut req = b"GET /api/public/x HTTP/1.1\r\nHost: a\r\n".to_vec();
        req.extend_from_slice(bad);
        req.extend_from_slice(b"Connection: close\r\n\r\n");
        let (status, text) = raw_exchange(gw.addr, &req).await;
        assert_eq!(status, 400, "{:?}: {text}", String::from_utf8_lossy(bad));
    }
    assert_eq!(gw.upstream.count(), 0);
}

#[tokio::test]
async fn nul_cr_lf_and_space_in_the_path_are_400() {
    let (gw, _) = public_gateway("").await;
    for target in [
        &b"/api/public/a\0b"[..],
        b"/api/public/a\rb",
        b"/api/public/a\nb",
        b"/api/public/a b",
        b"/api/public/a%00b",
        b"/api/public/a%0d%0aX-Injected:%201",
        b"/api/public/..%2f..%2fapi/chat/x",
    ] {
        let mut req = b"GET ".to_vec();
        req.extend_from_slice(target);
        req.extend_from_slice(b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let (status, text) = raw_exchange(gw.addr, &req).await;
        let shown = String::from_utf8_lossy(target);
        if shown.contains("%0d") {
            // Encoded CR LF is not ambiguous: it stays encoded in the path.
            assert_eq!(status, 200, "{shown:?}: {text}");
            let up = gw.upstream.only();
            assert_eq!(up.uri, "/api/public/a%0D%0AX-Injected:%201");
        } else {
            assert_eq!(status, 400, "{shown:?}: {text}");
        }
    }
    for r in gw.upstream.seen() {
        let t = r.raw_text();
        assert!(!t.contains('\r') && !t.contains('\0'), "{t:?}");
        assert!(r.header("x-injected").is_none());
    }
}

#[tokio::test]
async fn bare_lf_line_endings_are_reframed_for_the_upstream() {
    let (gw, _) = public_gateway("").await;
    // RFC 9112 §2.2 lets a recipient accept a bare LF; hyper does, and the
    // upstream receives a regenerated, CRLF-framed request.
    let (status, text) = raw_exchange(
        gw.addr,
        b"GET /api/public/lf HTTP/1.1\nHost: a\nX-One: 1\nConnection: close\n\n",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let up = gw.upstream.only();
    assert_eq!(up.uri, "/api/public/lf");
    assert_eq!(up.header("x-one"), Some("1"));
    assert_eq!(up.header("host"), Some("a"));
}

#[tokio::test]
async fn bare_lf_cannot_hide_a_header_from_the_gateway() {
    // `X-Hide: a\nX-AuthGate-Customer-Id: spoof` is two headers to hyper;
    // the identity prefix is stripped as usual.
    let (gw, _) = public_gateway("").await;
    let (status, text) = raw_exchange(
        gw.addr,
        b"GET /api/public/lf HTTP/1.1\r\nHost: a\r\nX-Hide: a\nX-AuthGate-Customer-Id: spoof\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let up = gw.upstream.only();
    assert!(!up.raw_text().contains("spoof"), "{}", up.raw_text());
    assert_eq!(up.header("x-authgate-auth"), Some("anonymous"));
    assert_eq!(up.header("x-hide"), Some("a"));
}

#[tokio::test]
async fn absolute_form_routes_on_the_path_and_goes_to_our_upstream() {
    let (gw, keys) = public_gateway("").await;
    let (status, text) = raw_exchange(
        gw.addr,
        b"GET http://other.example/api/public/abs?q=1 HTTP/1.1\r\nHost: gateway.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let up = gw.upstream.only();
    assert_eq!(up.uri, "/api/public/abs?q=1", "origin-form to our upstream");
    // A foreign authority does not get around authentication.
    let (status, text) = raw_exchange(
        gw.addr,
        b"GET http://other.example/api/chat/x HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 401, "{text}");
    assert_eq!(gw.upstream.count(), 1);
    // With a token: forwarded to our upstream, never to other.example.
    let t = token(keys);
    let req = format!(
        "GET https://other.example:8443/api/chat/x HTTP/1.1\r\nHost: other.example:8443\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n"
    );
    let (status, text) = raw_exchange(gw.addr, req.as_bytes()).await;
    assert_eq!(status, 200, "{text}");
    let seen = gw.upstream.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].uri, "/api/chat/x");
    assert_eq!(seen[1].header("x-authgate-auth"), Some("authenticated"));
}

#[tokio::test]
async fn authority_and_asterisk_form_are_not_proxied() {
    let (gw, _) = public_gateway("").await;
    for req in [
        &b"CONNECT other.example:443 HTTP/1.1\r\nHost: other.example:443\r\nConnection: close\r\n\r\n"[..],
        b"OPTIONS * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    ] {
        let (status, text) = raw_exchange(gw.addr, req).await;
        assert!(
            [400, 404, 405].contains(&status),
            "{}: {text}",
            String::from_utf8_lossy(req)
        );
    }
    assert_eq!(gw.upstream.count(), 0);
}

#[tokio::test]
async fn host_with_port_and_odd_case_is_forwarded_as_sent() {
    let (gw, _) = public_gateway("").await;
    let (status, text) = raw_exchange(
        gw.addr,
        b"GET /api/public/h HTTP/1.1\r\nHOST: Chat.Example.COM:8443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let up = gw.upstream.only();
    assert_eq!(up.header("host"), Some("Chat.Example.COM:8443"));
    assert_eq!(up.header("x-forwarded-host"), Some("Chat.Example.COM:8443"));
    assert_eq!(up.headers.get_all("host").iter().count(), 1);
}

#[tokio::test]
async fn missing_or_duplicate_host_is_400() {
    let (gw, _) = public_gateway("").await;
    for req in [
        &b"GET /api/public/h HTTP/1.1\r\nConnection: close\r\n\r\n"[..],
        b"GET /api/public/h HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
    ] {
        let (status, text) = raw_exchange(gw.addr, req).await;
        assert_eq!(status, 400, "{}: {text}", String::from_utf8_lossy(req));
    }
    assert_eq!(gw.upstream.count(), 0);
}

#[tokio::test]
async fn pipelined_requests_are_each_authenticated() {
    let (gw, _) = public_gateway("").await;
    let (_, text) = raw_exchange(
        gw.addr,
        b"GET /api/public/one HTTP/1.1\r\nHost: a\r\n\r\nGET /api/chat/two HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    let statuses: Vec<u16> = text
        .match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text[i + 9..i + 12].parse().ok())
        .collect();
    assert_eq!(statuses, [200, 401], "{text}");
    let up = gw.upstream.only();
    assert_eq!(up.uri, "/api/public/one");
}

/// A request head of exactly `size` bytes (start line, headers and the
/// blank line that ends the head).
fn head_of_size(size: usize) -> Vec<u8> {
    let start = "GET /api/public/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-Pad: ";
    let end = "\r\n\r\n";
    let pad = size - start.len() - end.len();
    format!("{start}{}{end}", "p".repeat(pad)).into_bytes()
}

#[tokio::test]
async fn head_one_byte_under_and_at_the_limit_is_accepted() {
    let (gw, _) = public_gateway("max_header_bytes = 4096").await;
    for size in [4095, 4096] {
        let req = head_of_size(size);
        assert_eq!(req.len(), size);
        let (status, text) = raw_exchange(gw.addr, &req).await;
        assert_eq!(status, 200, "{size}: {text}");
    }
    assert_eq!(gw.upstream.count(), 2);
}

#[tokio::test]
async fn head_one_byte_over_the_limit_is_431() {
    let (gw, _) = public_gateway("max_header_bytes = 4096").await;
    let (status, text) = raw_exchange(gw.addr, &head_of_size(4097)).await;
    assert_eq!(status, 431, "{text}");
    assert_eq!(gw.upstream.count(), 0);
}

#[tokio::test]
async fn head_over_the_limit_is_431_header_too_large() {
    let (gw, _) = public_gateway("max_header_bytes = 4096").await;
    // 3 bytes over: over the limit however the blank line is counted.
    let (status, text) = raw_exchange(gw.addr, &head_of_size(4099)).await;
    assert_eq!(status, 431, "{text}");
    let body = text.split("\r\n\r\n").nth(1).expect("body");
    let body: serde_json::Value = serde_json::from_str(body).expect("json body");
    assert_eq!(body["error"], "header_too_large");
    assert!(text
        .to_ascii_lowercase()
        .contains("content-type: application/json"));
    // Far over: hyper's own buffer limit answers 431 before the pipeline.
    let (status, text) = raw_exchange(gw.addr, &head_of_size(64 * 1024)).await;
    assert_eq!(status, 431, "{}", &text[..text.len().min(200)]);
    assert_eq!(gw.upstream.count(), 0);
}

// --- HTTP/2 on raw frames (clients refuse to send what we need to test) ---

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADERS: u8 = 0x1;
const FRAME_RST_STREAM: u8 = 0x3;
const FRAME_SETTINGS: u8 = 0x4;
const FRAME_GOAWAY: u8 = 0x7;

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("len").to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A HEADERS frame (END_STREAM | END_HEADERS) of HPACK literals without
/// indexing and without Huffman coding, so any bytes can be sent.
fn h2_request(stream: u32, path: &str, extra: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut block = Vec::new();
    let mut lit = |name: &[u8], value: &[u8]| {
        assert!(name.len() < 127 && value.len() < 127);
        block.push(0x00);
        block.push(u8::try_from(name.len()).expect("len"));
        block.extend_from_slice(name);
        block.push(u8::try_from(value.len()).expect("len"));
        block.extend_from_slice(value);
    };
    lit(b":method", b"GET");
    lit(b":scheme", b"http");
    lit(b":authority", b"chat.example");
    lit(b":path", path.as_bytes());
    for (n, v) in extra {
        lit(n, v);
    }
    h2_frame(FRAME_HEADERS, 0x5, stream, &block)
}

struct H2Frame {
    kind: u8,
    stream: u32,
    payload: Vec<u8>,
}

async fn h2_read(s: &mut TcpStream) -> Option<H2Frame> {
    let mut head = [0u8; 9];
    s.read_exact(&mut head).await.ok()?;
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.ok()?;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let kind = head[3];
    let flags = head[4];
    if kind == FRAME_SETTINGS && flags & 1 == 0 {
        // ACK the server's settings.
        let _ = s.write_all(&h2_frame(FRAME_SETTINGS, 1, 0, &[])).await;
    }
    Some(H2Frame {
        kind,
        stream,
        payload,
    })
}

/// What happened to an HTTP/2 stream.
#[derive(Debug, PartialEq)]
enum H2Outcome {
    Reset,
    GoAway,
    /// A response whose first HPACK byte is this (0x88 = :status 200,
    /// 0x8c = :status 400).
    Response(u8),
    Closed,
}

async fn h2_outcome(s: &mut TcpStream, stream: u32) -> H2Outcome {
    within("an HTTP/2 answer", async {
        loop {
            let Some(f) = h2_read(s).await else {
                return H2Outcome::Closed;
            };
            match f.kind {
                FRAME_GOAWAY => return H2Outcome::GoAway,
                FRAME_RST_STREAM if f.stream == stream => return H2Outcome::Reset,
                FRAME_HEADERS if f.stream == stream => {
                    return H2Outcome::Response(f.payload.first().copied().unwrap_or(0))
                }
                _ => {}
            }
        }
    })
    .await
}

async fn h2_open(addr: SocketAddr) -> TcpStream {
    let mut s = connect(addr).await;
    let mut hello = H2_PREFACE.to_vec();
    hello.extend(h2_frame(FRAME_SETTINGS, 0, 0, &[]));
    within("h2 preface", s.write_all(&hello))
        .await
        .expect("write");
    s
}

/// The gateway tells HTTP/2 prior knowledge from HTTP/1 by peeking at the
/// first bytes; a preface that arrives in pieces must still be HTTP/2, and
/// an HTTP/1 request on the next connection must still be HTTP/1.
#[tokio::test]
async fn h2c_preface_split_across_writes_is_still_http2() {
    let (gw, _) = public_gateway("").await;
    let mut s = connect(gw.addr).await;
    s.set_nodelay(true).expect("nodelay");
    for piece in [&H2_PREFACE[..3], &H2_PREFACE[3..15], &H2_PREFACE[15..]] {
        within("preface piece", async {
            s.write_all(piece).await?;
            s.flush().await
        })
        .await
        .expect("write");
        tokio::task::yield_now().await;
    }
    let mut rest = h2_frame(FRAME_SETTINGS, 0, 0, &[]);
    rest.extend(h2_request(1, "/api/public/split", &[]));
    within("write", s.write_all(&rest)).await.expect("write");
    assert_eq!(h2_outcome(&mut s, 1).await, H2Outcome::Response(0x88));
    assert_eq!(gw.upstream.only().uri, "/api/public/split");

    let (status, _) = raw_exchange(
        gw.addr,
        b"GET /api/public/h1 HTTP/1.1\r\nHost: chat.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(gw.upstream.count(), 2);
}

#[tokio::test]
async fn h2_connection_specific_headers_are_refused_by_the_h2_layer() {
    let (gw, _) = public_gateway("").await;
    let mut s = h2_open(gw.addr).await;
    let mut id = 1;
    for (name, value) in [
        (&b"connection"[..], &b"keep-alive"[..]),
        (b"transfer-encoding", b"chunked"),
        (b"upgrade", b"websocket"),
        (b"keep-alive", b"timeout=5"),
        (b"proxy-connection", b"keep-alive"),
        (b"te", b"gzip"),
    ] {
        within(
            "write",
            s.write_all(&h2_request(id, "/api/public/bad", &[(name, value)])),
        )
        .await
        .expect("write");
        let outcome = h2_outcome(&mut s, id).await;
        assert_eq!(
            outcome,
            H2Outcome::Reset,
            "{}",
            String::from_utf8_lossy(name)
        );
        id += 2;
    }
    // The same connection still serves a well-formed request: the resets
    // above were real refusals, not a broken test client.
    within(
        "write",
        s.write_all(&h2_request(id, "/api/public/good", &[(b"te", b"trailers")])),
    )
    .await
    .expect("write");
    assert_eq!(h2_outcome(&mut s, id).await, H2Outcome::Response(0x88));
    let up = gw.upstream.only();
    assert_eq!(up.uri, "/api/public/good");
}

#[tokio::test]
async fn h2_header_values_that_http1_cannot_carry_never_reach_the_upstream() {
    let (gw, _) = public_gateway("").await;
    for (name, value) in [
        (&b"x-bad"[..], &b"a\r\nx-injected: 1"[..]),
        (b"x-bad", b"a\nb"),
        (b"x-bad", b"a\0b"),
        (b"X-Upper", b"a"),
        (b"x-bad\r\nx-injected", b"a"),
    ] {
        let mut s = h2_open(gw.addr).await;
        within(
            "write",
            s.write_all(&h2_request(1, "/api/public/bad", &[(name, value)])),
        )
        .await
        .expect("write");
        let outcome = h2_outcome(&mut s, 1).await;
        assert!(
            matches!(
                outcome,
                H2Outcome::Reset | H2Outcome::GoAway | H2Outcome::Closed
            ) || outcome == H2Outcome::Response(0x8c),
            "{:?}: {outcome:?}",
            String::from_utf8_lossy(value)
        );
    }
    assert_eq!(gw.upstream.count(), 0);
}

/// The HEADERS block (HPACK) of the response on `stream`.
async fn h2_response_block(s: &mut TcpStream, stream: u32) -> Vec<u8> {
    within("an HTTP/2 response", async {
        loop {
            let f = h2_read(s).await.expect("the connection closed");
            assert!(f.kind != FRAME_GOAWAY && f.kind != FRAME_RST_STREAM);
            if f.kind == FRAME_HEADERS && f.stream == stream {
                return f.payload;
            }
        }
    })
    .await
}

/// How each field of an HPACK block is represented (RFC 7541 §6): the
/// first byte's pattern, walking the block without decoding its strings.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Hpack {
    Indexed,
    IncrementalIndexing,
    WithoutIndexing,
    NeverIndexed,
    SizeUpdate,
}

fn hpack_fields(mut block: &[u8]) -> Vec<Hpack> {
    // An integer with an N-bit prefix (RFC 7541 §5.1).
    fn int(block: &mut &[u8], prefix: u32) -> usize {
        let mask = (1usize << prefix) - 1;
        let mut v = usize::from(block[0]) & mask;
        *block = &block[1..];
        if v == mask {
            let mut shift = 0;
            loop {
                let b = block[0];
                *block = &block[1..];
                v += usize::from(b & 0x7f) << shift;
                shift += 7;
                if b & 0x80 == 0 {
                    break;
                }
            }
        }
        v
    }
    fn skip_string(block: &mut &[u8]) {
        let len = int(block, 7);
        *block = &block[len..];
    }
    let mut out = Vec::new();
    while !block.is_empty() {
        let first = block[0];
        let (kind, prefix) = match first {
            b if b & 0x80 != 0 => (Hpack::Indexed, 7),
            b if b & 0xc0 == 0x40 => (Hpack::IncrementalIndexing, 6),
            b if b & 0xe0 == 0x20 => (Hpack::SizeUpdate, 5),
            b if b & 0xf0 == 0x10 => (Hpack::NeverIndexed, 4),
            _ => (Hpack::WithoutIndexing, 4),
        };
        let index = int(&mut block, prefix);
        if !matches!(kind, Hpack::Indexed | Hpack::SizeUpdate) {
            if index == 0 {
                skip_string(&mut block);
            }
            skip_string(&mut block);
        }
        out.push(kind);
    }
    out
}

/// Each response's `x-request-id` is new, so HTTP/2 must not HPACK-index
/// it: indexed, the ids filled the connection's dynamic table, evicting the
/// headers that do repeat, and every response was compared with all of
/// them. It goes as the one never-indexed literal of each response (the
/// id is the only header authgate marks so), while what repeats is still
/// indexed.
#[tokio::test]
async fn h2_responses_send_the_request_id_as_a_never_indexed_literal() {
    let (gw, _) = public_gateway("").await;
    let mut s = h2_open(gw.addr).await;
    let mut later_indexed = 0;
    for i in 0..40u32 {
        let id = 2 * i + 1;
        within(
            "write",
            s.write_all(&h2_request(id, "/api/public/hpack", &[])),
        )
        .await
        .expect("write");
        let fields = hpack_fields(&h2_response_block(&mut s, id).await);
        assert_eq!(
            fields.iter().filter(|f| **f == Hpack::NeverIndexed).count(),
            1,
            "response {i}: {fields:?}"
        );
        if i > 0 {
            later_indexed += fields.iter().filter(|f| **f == Hpack::Indexed).count();
        }
    }
    // Repeating headers (`:status`, content-type…) come back as indexes.
    assert!(later_indexed >= 39, "{later_indexed}");
    assert_eq!(gw.upstream.count(), 40);
}

// ---------------------------------------------------------------------------
// 5. CORS
// ---------------------------------------------------------------------------

const ORIGIN: &str = "https://www.example.com";

async fn cors_gateway() -> (TestGateway, &'static Keys) {
    let keys = Keys::generate();
    let toml = format!(
        "{}\n[cors]\nallow_origins = [\"{ORIGIN}\"]\nallow_credentials = true\nallow_headers = [\"authorization\", \"content-type\"]\nmax_age = \"10m\"\n",
        TestGateway::default_toml(keys)
    );
    (TestGateway::start(&toml, "").await, keys)
}

fn assert_no_cors(r: &Reply) {
    for (name, _) in &r.headers {
        assert!(
            !name.as_str().starts_with("access-control-"),
            "unexpected CORS header {name}: {:?}",
            r.headers
        );
    }
}

fn vary_has_origin(r: &Reply) -> bool {
    r.headers
        .get_all("vary")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case("origin"))
}

#[tokio::test]
async fn cors_preflight_from_allowed_origin_is_answered_by_the_gateway() {
    let (gw, _) = cors_gateway().await;
    let r = send(
        reqwest::Method::OPTIONS,
        &gw.url("/api/chat/messages"),
        &[
            ("origin", ORIGIN),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "authorization, content-type",
            ),
        ],
        None,
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.raw);
    assert_eq!(r.headers["access-control-allow-origin"], ORIGIN);
    assert_eq!(r.headers["access-control-allow-credentials"], "true");
    assert!(vary_has_origin(&r), "{:?}", r.headers);
    assert_eq!(r.headers["access-control-max-age"], "600");
    let allow_headers = r.headers["access-control-allow-headers"]
        .to_str()
        .expect("ascii")
        .to_ascii_lowercase();
    assert!(allow_headers.contains("authorization") && allow_headers.contains("content-type"));
    assert!(r.headers["access-control-allow-methods"]
        .to_str()
        .expect("ascii")
        .contains("POST"));
    assert_eq!(
        gw.upstream.count(),
        0,
        "preflights never reach the upstream"
    );
}

#[tokio::test]
async fn cors_preflight_from_other_origins_is_an_ordinary_request() {
    let (gw, _) = cors_gateway().await;
    for origin in [
        "https://evil.example",
        "https://www.example.com.evil.example",
        "http://www.example.com",
        "null",
    ] {
        let r = send(
            reqwest::Method::OPTIONS,
            &gw.url("/api/chat/messages"),
            &[
                ("origin", origin),
                ("access-control-request-method", "POST"),
            ],
            None,
        )
        .await;
        assert_error(&r, 401, "missing_token");
        assert_no_cors(&r);
    }
    assert_eq!(gw.upstream.count(), 0);
}

#[tokio::test]
async fn cors_options_without_request_method_needs_auth() {
    let (gw, keys) = cors_gateway().await;
    let r = send(
        reqwest::Method::OPTIONS,
        &gw.url("/api/chat/messages"),
        &[("origin", ORIGIN)],
        None,
    )
    .await;
    assert_error(&r, 401, "missing_token");
    assert_eq!(gw.upstream.count(), 0);
    // With a token it is forwarded like any request.
    let t = token(keys);
    let r = send(
        reqwest::Method::OPTIONS,
        &gw.url("/api/chat/messages"),
        &[("origin", ORIGIN), ("authorization", &bearer(&t))],
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(gw.upstream.only().method, "OPTIONS");
}

#[tokio::test]
async fn cors_actual_request_from_allowed_origin_carries_cors_headers() {
    let (gw, keys) = cors_gateway().await;
    let t = token(keys);
    let r = get(
        &gw.url("/api/chat/messages"),
        &[("origin", ORIGIN), ("authorization", &bearer(&t))],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(r.headers["access-control-allow-origin"], ORIGIN);
    assert_eq!(r.headers["access-control-allow-credentials"], "true");
    assert!(vary_has_origin(&r));
    let up = gw.upstream.only();
    assert_eq!(up.header("x-authgate-auth"), Some("authenticated"));
    assert!(up.header("authorization").is_none());
    // Errors to an allowed origin carry them too, so the widget can read them.
    let r = get(&gw.url("/api/chat/messages"), &[("origin", ORIGIN)]).await;
    assert_error(&r, 401, "missing_token");
    assert_eq!(r.headers["access-control-allow-origin"], ORIGIN);
    // Never a wildcard with credentials, whoever asks.
    for origin in [ORIGIN, "https://evil.example"] {
        let r = get(&gw.url("/api/public/x"), &[("origin", origin)]).await;
        assert_eq!(r.status, 200);
        for v in r.headers.get_all("access-control-allow-origin") {
            assert_ne!(v, "*");
        }
    }
}

#[tokio::test]
async fn cors_actual_request_from_other_origin_has_no_cors_headers() {
    let (gw, keys) = cors_gateway().await;
    let t = token(keys);
    let r = get(
        &gw.url("/api/chat/messages"),
        &[
            ("origin", "https://evil.example"),
            ("authorization", &bearer(&t)),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_no_cors(&r);
    assert_eq!(gw.upstream.count(), 1);
}

// ---------------------------------------------------------------------------
// 2. h2c (prior knowledge)
// ---------------------------------------------------------------------------

fn h2c_client() -> reqwest::Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .timeout(BOUND)
        .build()
        .expect("client")
}

#[tokio::test]
async fn h2c_same_decisions_as_http1_and_upstream_gets_http1_with_host() {
    let keys = Keys::generate();
    let raw = RawUpstream::start(Mode::Plain).await;
    let gw = gateway_to(&raw, &TestGateway::default_toml(keys), "").await;
    let c = h2c_client();
    let t = token(keys);
    let r = within(
        "h2c request",
        c.get(gw.url("/api/chat/x?y=1"))
            .header("authorization", bearer(&t))
            .header("x-authgate-customer-id", "cid_spoofed")
            .send(),
    )
    .await
    .expect("h2c");
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let r = within("h2c request", c.get(gw.url("/api/chat/x")).send())
        .await
        .expect("h2c");
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = within("body", r.json()).await.expect("json");
    assert_eq!(body["error"], "missing_token");
    let r = within(
        "h2c request",
        c.get(gw.url("/api/chat/x"))
            .header("authorization", "Bearer not.a.token")
            .send(),
    )
    .await
    .expect("h2c");
    assert_eq!(r.status(), 401);

    let heads = raw.heads();
    assert_eq!(heads.len(), 1, "{heads:?}");
    let up = &heads[0];
    assert_eq!(
        up.lines().next(),
        Some("GET /api/chat/x?y=1 HTTP/1.1"),
        "{up}"
    );
    let addr = gw.addr.to_string();
    assert_eq!(head_header(up, "host"), Some(addr.as_str()));
    assert_eq!(head_header(up, "x-forwarded-host"), Some(addr.as_str()));
    assert_eq!(head_header(up, "x-authgate-auth"), Some("authenticated"));
    assert!(!up.contains("cid_spoofed") && !up.contains(&t));
    assert!(head_header(up, "authorization").is_none());
}

// ---------------------------------------------------------------------------
// 1. TLS, HTTP/2 by ALPN, mTLS
// ---------------------------------------------------------------------------

struct Pki {
    dir: tempfile::TempDir,
    server_cert_pem: String,
}

impl Pki {
    /// A self-signed server certificate for `localhost`.
    fn new() -> Pki {
        Pki::with_key(rcgen::KeyPair::generate().expect("ECDSA key"))
    }

    fn with_key(key_pair: rcgen::KeyPair) -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .expect("params")
            .self_signed(&key_pair)
            .expect("cert");
        let server = rcgen::CertifiedKey { cert, key_pair };
        let server_cert_pem = server.cert.pem();
        std::fs::write(dir.path().join("server.crt"), &server_cert_pem).expect("write");
        std::fs::write(
            dir.path().join("server.key"),
            server.key_pair.serialize_pem(),
        )
        .expect("write");
        Pki {
            dir,
            server_cert_pem,
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// `[listen.tls]`, optionally requiring client certificates.
    fn listen_tls(&self, client_ca: Option<&str>) -> String {
        let mut s = format!(
            "[listen.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            self.path("server.crt"),
            self.path("server.key")
        );
        if let Some(ca) = client_ca {
            s.push_str(&format!("client_ca = \"{ca}\"\n"));
        }
        s
    }
}

/// A CA (written to `dir/name.crt`) and a client certificate it signed,
/// as one PEM (certificate + key) for `reqwest::Identity`.
fn client_ca_and_identity(dir: &std::path::Path, name: &str) -> (String, Vec<u8>) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.distinguished_name
        .push(DnType::CommonName, format!("{name} test CA"));
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let ca_path = dir.join(format!("{name}.crt"));
    std::fs::write(&ca_path, ca_cert.pem()).expect("write");

    let client_key = KeyPair::generate().expect("key");
    let mut client = CertificateParams::new(Vec::<String>::new()).expect("params");
    client
        .distinguished_name
        .push(DnType::CommonName, "chat-widget");
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    client.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let client_cert = client
        .signed_by(&client_key, &ca_cert, &ca_key)
        .expect("sign");
    let identity = format!("{}{}", client_cert.pem(), client_key.serialize_pem()).into_bytes();
    (ca_path.display().to_string(), identity)
}

fn tls_client(
    pki: &Pki,
    addr: SocketAddr,
    http1_only: bool,
    identity: Option<&[u8]>,
) -> reqwest::Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(pki.server_cert_pem.as_bytes()).expect("pem"),
        )
        .resolve("localhost", addr)
        .https_only(true)
        .timeout(BOUND);
    if http1_only {
        b = b.http1_only();
    }
    if let Some(id) = identity {
        b = b.identity(reqwest::Identity::from_pem(id).expect("identity"));
    }
    b.build().expect("client")
}

fn https_url(gw: &TestGateway, path: &str) -> String {
    format!("https://localhost:{}{path}", gw.addr.port())
}

#[tokio::test]
async fn tls_http1_and_h2_by_alpn_accept_valid_tokens_and_forward_https() {
    let keys = Keys::generate();
    let pki = Pki::new();
    let toml = format!(
        "{}{}",
        pki.listen_tls(None),
        TestGateway::default_toml(keys)
    );
    let gw = TestGateway::start(&toml, "").await;
    let t = token(keys);
    for (http1, version) in [
        (true, reqwest::Version::HTTP_11),
        (false, reqwest::Version::HTTP_2),
    ] {
        let c = tls_client(&pki, gw.addr, http1, None);
        let r = within(
            "https request",
            c.get(https_url(&gw, "/api/chat/x"))
                .header("authorization", bearer(&t))
                .send(),
        )
        .await
        .expect("https");
        assert_eq!(r.version(), version);
        assert_eq!(r.status(), 200);
        let r = within("https request", c.get(https_url(&gw, "/api/chat/x")).send())
            .await
            .expect("https");
        assert_eq!(r.version(), version);
        assert_eq!(r.status(), 401);
    }
    let seen = gw.upstream.seen();
    assert_eq!(seen.len(), 2, "only the authenticated requests");
    for up in seen {
        assert_eq!(up.header("x-forwarded-proto"), Some("https"));
        assert_eq!(up.header("x-authgate-auth"), Some("authenticated"));
        let host = format!("localhost:{}", gw.addr.port());
        assert_eq!(up.header("x-forwarded-host"), Some(host.as_str()));
    }
    // Plain HTTP to the TLS port is not served.
    let (status, _) = raw(
        gw.addr,
        b"GET /api/public/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_ne!(status, 200);
    assert_eq!(gw.upstream.count(), 2);
}

#[tokio::test]
async fn mtls_requires_a_client_certificate_from_the_configured_ca() {
    let keys = Keys::generate();
    let pki = Pki::new();
    let (ca, identity) = client_ca_and_identity(pki.dir.path(), "clients");
    let (_other_ca, stranger) = client_ca_and_identity(pki.dir.path(), "strangers");
    let toml = format!(
        "{}{}",
        pki.listen_tls(Some(&ca)),
        TestGateway::default_toml(keys)
    );
    let gw = TestGateway::start(&toml, "").await;

    // No certificate: the handshake fails; routing is never reached (even
    // on a public route).
    for http1 in [true, false] {
        let c = tls_client(&pki, gw.addr, http1, None);
        let r = within(
            "https request",
            c.get(https_url(&gw, "/api/public/x")).send(),
        )
        .await;
        assert!(r.is_err(), "no client certificate must fail: {r:?}");
    }
    // A certificate from another CA: refused too.
    let c = tls_client(&pki, gw.addr, true, Some(&stranger));
    let r = within(
        "https request",
        c.get(https_url(&gw, "/api/public/x")).send(),
    )
    .await;
    assert!(r.is_err(), "a stranger's certificate must fail: {r:?}");
    assert_eq!(gw.upstream.count(), 0);

    // A certificate signed by client_ca: served, over both protocols.
    for http1 in [true, false] {
        let c = tls_client(&pki, gw.addr, http1, Some(&identity));
        let r = within(
            "https request",
            c.get(https_url(&gw, "/api/public/x")).send(),
        )
        .await
        .expect("mTLS request");
        assert_eq!(r.status(), 200);
    }
    let seen = gw.upstream.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen
        .iter()
        .all(|r| r.header("x-forwarded-proto") == Some("https")));
}

// ---------------------------------------------------------------------------
// 4. Streaming
// ---------------------------------------------------------------------------

/// An upstream that answers one SSE stream per connection: the first event,
/// then (only once `release` fires) the second event and the end.
async fn sse_upstream() -> (SocketAddr, tokio::sync::mpsc::UnboundedSender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let rx = rx.clone();
            tokio::spawn(async move {
                // Keep-alive: the gateway may reuse this connection.
                while read_head(&mut s).await.is_some() {
                    let chunk = |data: &str| format!("{:x}\r\n{data}\r\n", data.len());
                    let first = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n{}",
                    chunk("event: msg\ndata: one\n\n")
                );
                    if s.write_all(first.as_bytes()).await.is_err() {
                        return;
                    }
                    // Wait for the test to have seen event one.
                    if rx.lock().await.recv().await.is_none() {
                        return;
                    }
                    let rest = format!("{}0\r\n\r\n", chunk("event: msg\ndata: two\n\n"));
                    if s.write_all(rest.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, tx)
}

#[tokio::test]
async fn sse_events_reach_the_client_before_the_upstream_finishes() {
    let keys = Keys::generate();
    let (addr, release) = sse_upstream().await;
    let gw = TestGateway::start_with_upstream(
        &TestGateway::default_toml(keys),
        "request_timeout = \"30s\"",
        Upstream::start().await,
        &format!("http://{addr}"),
    )
    .await;
    let t = token(keys);
    for c in [client(), h2c_client()] {
        let mut r = within(
            "SSE response head",
            c.get(gw.url("/api/chat/events"))
                .header("authorization", bearer(&t))
                .header("accept", "text/event-stream")
                .send(),
        )
        .await
        .expect("request");
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        let mut got = Vec::new();
        // Event one must arrive while the upstream is still holding event two.
        while !got.ends_with(b"data: one\n\n") {
            let chunk = within("event one", r.chunk())
                .await
                .expect("chunk")
                .expect("stream ended before event one");
            got.extend_from_slice(&chunk);
        }
        assert!(!String::from_utf8_lossy(&got).contains("two"));
        release.send(()).expect("release");
        while let Some(chunk) = within("event two", r.chunk()).await.expect("chunk") {
            got.extend_from_slice(&chunk);
        }
        assert_eq!(
            String::from_utf8_lossy(&got),
            "event: msg\ndata: one\n\nevent: msg\ndata: two\n\n"
        );
    }
}

/// An upstream that counts body bytes as they arrive and keeps them.
struct CountingUpstream {
    addr: SocketAddr,
    received: tokio::sync::watch::Receiver<usize>,
    body: Arc<Mutex<Vec<u8>>>,
}

async fn counting_upstream() -> CountingUpstream {
    use http_body_util::BodyExt;
    let (tx, received) = tokio::sync::watch::channel(0usize);
    let tx = Arc::new(tx);
    let body: Arc<Mutex<Vec<u8>>> = Arc::default();
    let kept = body.clone();
    let addr = serve_http1(move || {
        let tx = tx.clone();
        let kept = kept.clone();
        hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let tx = tx.clone();
            let kept = kept.clone();
            async move {
                let mut body = req.into_body();
                let mut n = 0usize;
                while let Some(frame) = body.frame().await {
                    let Ok(frame) = frame else { break };
                    if let Some(data) = frame.data_ref() {
                        n += data.len();
                        kept.lock().expect("lock").extend_from_slice(data);
                        tx.send_replace(n);
                    }
                }
                Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                    bytes::Bytes::from(n.to_string()),
                )))
            }
        })
    })
    .await;
    CountingUpstream {
        addr,
        received,
        body,
    }
}

#[tokio::test]
async fn large_chunked_upload_streams_through_a_non_reading_route() {
    const TOTAL: usize = 8 << 20;
    const CHUNK: usize = 64 << 10;
    let keys = Keys::generate();
    let mut up = counting_upstream().await;
    // max_body_bytes is far below the upload: it only binds reading routes.
    let gw = TestGateway::start_with_upstream(
        &TestGateway::default_toml(keys),
        "max_body_bytes = 65536\nrequest_timeout = \"30s\"",
        Upstream::start().await,
        &format!("http://{}", up.addr),
    )
    .await;
    let data: Vec<u8> = (0..TOTAL).map(|i| (i % 251) as u8).collect();
    let mut s = connect(gw.addr).await;
    within(
        "head",
        s.write_all(
            b"POST /api/public/upload HTTP/1.1\r\nHost: a\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        ),
    )
    .await
    .expect("write");
    let (first, second) = data.split_at(TOTAL / 2);
    for part in first.chunks(CHUNK) {
        let mut c = format!("{:x}\r\n", part.len()).into_bytes();
        c.extend_from_slice(part);
        c.extend_from_slice(b"\r\n");
        within("upload", s.write_all(&c)).await.expect("write");
    }
    // The first half reaches the upstream before the client sends the rest:
    // the gateway streams rather than buffers.
    within(
        "first half at the upstream",
        up.received.wait_for(|&n| n >= TOTAL / 2),
    )
    .await
    .expect("watch");
    for part in second.chunks(CHUNK) {
        let mut c = format!("{:x}\r\n", part.len()).into_bytes();
        c.extend_from_slice(part);
        c.extend_from_slice(b"\r\n");
        within("upload", s.write_all(&c)).await.expect("write");
    }
    within("upload end", s.write_all(b"0\r\n\r\n"))
        .await
        .expect("write");
    let text = String::from_utf8_lossy(&read_to_eof(&mut s).await).into_owned();
    assert_eq!(status_of(&text), 200, "{text}");
    assert!(text.ends_with(&TOTAL.to_string()), "{text}");
    let body = up.body.lock().expect("lock");
    assert_eq!(body.len(), TOTAL);
    assert!(*body == data, "upload arrived intact");
}

/// An upstream whose every response is an endless stream of 64 KiB chunks;
/// `aborted` is notified when the gateway stops taking them.
async fn endless_upstream() -> (SocketAddr, Arc<Notify>) {
    let aborted = Arc::new(Notify::new());
    let signal = aborted.clone();
    let addr = serve_http1(move || {
        let signal = signal.clone();
        hyper::service::service_fn(move |_req: http::Request<hyper::body::Incoming>| {
            let signal = signal.clone();
            async move {
                let (mut tx, body) = http_body_util::channel::Channel::<bytes::Bytes>::new(4);
                tokio::spawn(async move {
                    let chunk = bytes::Bytes::from(vec![b'a'; 64 << 10]);
                    while tx.send_data(chunk.clone()).await.is_ok() {}
                    signal.notify_one();
                });
                Ok::<_, std::convert::Infallible>(http::Response::new(body))
            }
        })
    })
    .await;
    (addr, aborted)
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_after_send_timeout() {
    let keys = Keys::generate();
    let (up, aborted) = endless_upstream().await;
    let gw = TestGateway::start_with_upstream(
        &TestGateway::default_toml(keys),
        "send_timeout = \"1s\"",
        Upstream::start().await,
        &format!("http://{up}"),
    )
    .await;
    let mut s = connect(gw.addr).await;
    within(
        "request",
        s.write_all(b"GET /api/public/endless HTTP/1.1\r\nHost: a\r\n\r\n"),
    )
    .await
    .expect("write");
    // The client never reads: once the socket buffers are full the
    // gateway's writes block, and after send_timeout it drops the client
    // connection and with it the upstream exchange.
    within(
        "the gateway to give up on the stalled client",
        aborted.notified(),
    )
    .await;
    // Closed on our side too: what the kernel buffered, then EOF or reset
    // (an endless response would never end on its own).
    let got = read_to_eof(&mut s).await;
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        &got[..got.len().min(64)]
    );
}

// ---------------------------------------------------------------------------
// 7. Slowloris
// ---------------------------------------------------------------------------

#[tokio::test]
async fn slow_request_head_is_dropped_after_header_read_timeout() {
    let (gw, _) = public_gateway("header_read_timeout = \"1s\"").await;
    let mut s = connect(gw.addr).await;
    within(
        "half a head",
        s.write_all(b"GET /api/public/x HTTP/1.1\r\nHost: a\r\nX-Slow: "),
    )
    .await
    .expect("write");
    // No more bytes: the gateway must close (an optional 408 is fine).
    let text = String::from_utf8_lossy(&read_to_eof(&mut s).await).into_owned();
    assert!(text.is_empty() || status_of(&text) == 408, "{text}");
    assert_eq!(gw.upstream.count(), 0);
}

#[tokio::test]
async fn silent_connections_are_dropped_after_header_read_timeout() {
    let (gw, _) = public_gateway("header_read_timeout = \"1s\"").await;
    // Nothing at all, and a partial HTTP/2 preface: both must be closed,
    // or idle sockets would hold connection slots forever.
    let mut silent = connect(gw.addr).await;
    let mut partial = connect(gw.addr).await;
    within("partial preface", partial.write_all(b"PRI * HTTP/2.0\r\n"))
        .await
        .expect("write");
    // One byte that could start HTTP/1 or HTTP/2: undecided until the end.
    let mut undecided = connect(gw.addr).await;
    within("one byte", undecided.write_all(b"P"))
        .await
        .expect("write");
    // A full HTTP/2 preface and SETTINGS, then no request: dropped too
    // (HTTP/2 has no header read timeout of its own).
    let mut h2_idle = h2_open(gw.addr).await;
    // (HTTP/2 may say goodbye with frames first; it must still close.)
    let (a, b, c, _) = tokio::join!(
        read_to_eof(&mut silent),
        read_to_eof(&mut partial),
        read_to_eof(&mut undecided),
        read_to_eof(&mut h2_idle)
    );
    assert!(a.is_empty() && c.is_empty(), "{a:?} {c:?}");
    // "PRI" already means HTTP/2 to the gateway, whose server preface
    // (SETTINGS) may go out first; never an HTTP/1 answer.
    assert!(!b.starts_with(b"HTTP/"), "{b:?}");
    assert_eq!(gw.upstream.count(), 0);
}

#[tokio::test]
async fn stalled_tls_handshake_is_dropped() {
    let keys = Keys::generate();
    let pki = Pki::new();
    let toml = format!(
        "{}{}",
        pki.listen_tls(None),
        TestGateway::default_toml(keys)
    );
    let gw = TestGateway::start(&toml, "header_read_timeout = \"1s\"").await;
    let mut silent = connect(gw.addr).await;
    let _ = read_to_eof(&mut silent).await;
    // After a completed handshake, silence is dropped too.
    let mut tls = tls_connect(&pki, gw.addr).await;
    let _ = read_to_eof(&mut tls).await;
    assert_eq!(gw.upstream.count(), 0);
}

async fn tls_connect(pki: &Pki, addr: SocketAddr) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject;
    let cert = rustls_pki_types::CertificateDer::from_pem_slice(pki.server_cert_pem.as_bytes())
        .expect("pem");
    roots.add(cert).expect("root");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = connect(addr).await;
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    within("TLS handshake", connector.connect(name, tcp))
        .await
        .expect("handshake")
}

// ---------------------------------------------------------------------------
// 8. max_connections
// ---------------------------------------------------------------------------

/// One keep-alive request on `s`; returns the status.
async fn keep_alive_get(s: &mut TcpStream, path: &str) -> u16 {
    let req = format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n");
    within("write", s.write_all(req.as_bytes()))
        .await
        .expect("write");
    read_response(s).await.0
}

#[tokio::test]
async fn max_connections_caps_without_crashing_and_recovers() {
    let (gw, _) = public_gateway("max_connections = 2\nheader_read_timeout = \"60s\"").await;
    let mut a = connect(gw.addr).await;
    let mut b = connect(gw.addr).await;
    assert_eq!(keep_alive_get(&mut a, "/api/public/a").await, 200);
    assert_eq!(keep_alive_get(&mut b, "/api/public/b").await, 200);
    // A third connection while two are held: the kernel accepts it, the
    // gateway does not serve it yet (and does not fall over).
    let mut c = connect(gw.addr).await;
    within(
        "write",
        c.write_all(b"GET /api/public/c HTTP/1.1\r\nHost: a\r\n\r\n"),
    )
    .await
    .expect("write");
    // The admin listener keeps answering meanwhile.
    let admin = gw.admin.expect("admin");
    let r = get(&format!("http://{admin}/healthz"), &[]).await;
    assert_eq!(r.status, 200);
    // Closing one lets the waiting connection in.
    drop(a);
    let (status, _, _) = read_response(&mut c).await;
    assert_eq!(status, 200);
    drop(b);
    drop(c);
    // And fresh requests succeed.
    for _ in 0..3 {
        let r = get(&gw.url("/api/public/d"), &[]).await;
        assert_eq!(r.status, 200);
    }
    let seen: Vec<String> = gw.upstream.seen().into_iter().map(|r| r.uri).collect();
    assert_eq!(seen.len(), 6, "{seen:?}");
    assert!(seen.contains(&"/api/public/c".to_owned()));
}

#[tokio::test]
async fn websocket_directions_are_independent_so_busy_peers_do_not_deadlock() {
    // The upstream floods the client, and the client (not reading) sends a
    // large message: the client→upstream direction must keep flowing while
    // upstream→client is blocked on the client.
    let keys = Keys::generate();
    let raw = RawUpstream::start(Mode::Flood).await;
    let gw = gateway_to(&raw, &TestGateway::default_toml(keys), "").await;
    let t = token(keys);
    // A tiny receive window: the upstream→client direction blocks at once.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut s = within("connect", socket.connect(gw.addr))
        .await
        .expect("connect");
    within(
        "write upgrade",
        s.write_all(ws_request(&format!("/ws?access_token={t}"), "").as_bytes()),
    )
    .await
    .expect("write");
    let (head, _) = within("upgrade response", read_head(&mut s))
        .await
        .expect("head");
    assert_eq!(status_of(&head), 101, "{head}");
    // Far more than loopback socket buffers hold, so a stalled direction
    // cannot hide behind kernel buffering.
    const SIZE: usize = 64 << 20;
    let mut header = vec![0x82, 0xFF];
    header.extend_from_slice(&(SIZE as u64).to_be_bytes());
    header.extend_from_slice(&[0, 0, 0, 0]);
    let chunk = vec![b'm'; 1 << 20];
    within("client sends while the upstream floods", async {
        s.write_all(&header).await.expect("write");
        for _ in 0..SIZE / chunk.len() {
            s.write_all(&chunk).await.expect("write");
        }
    })
    .await;
    let total = header.len() + SIZE;
    let mut received = raw.received.subscribe();
    within(
        "the upstream gets the whole message",
        received.wait_for(|&n| n >= total),
    )
    .await
    .expect("watch");
}

#[tokio::test]
async fn websocket_close_on_expiry_also_closes_a_client_that_stopped_reading() {
    let keys = Keys::generate();
    let raw = RawUpstream::start(Mode::Flood).await;
    let gw = gateway_to(&raw, &expiring_socket_toml(keys), "").await;
    let t = token_expiring_at(keys, now() + 2);
    let (mut s, head, _) = ws_open(gw.addr, &format!("/ws-expiring?access_token={t}"), "").await;
    assert_eq!(status_of(&head), 101, "{head}");
    // The client never reads; the gateway's write to it blocks. At exp the
    // tunnel must end anyway: the upstream sees its connection closed.
    within(
        "the gateway to close the tunnel at exp",
        raw.closed.notified(),
    )
    .await;
    // And the client's side ends too (mid-frame: no close frame, just EOF).
    let _ = read_to_eof(&mut s).await;
}

#[tokio::test]
async fn h2_rapid_reset_flood_is_cut_off_and_the_gateway_keeps_serving() {
    let (gw, _) = public_gateway("").await;
    let mut s = h2_open(gw.addr).await;
    // CVE-2023-44487: open and immediately cancel streams, many times.
    let mut batch = Vec::new();
    for i in 0..2000u32 {
        let id = 2 * i + 1;
        batch.extend(h2_request(id, "/api/public/flood", &[]));
        batch.extend(h2_frame(FRAME_RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    // The gateway may stop reading midway; a failed write is fine.
    let _ = within("flood", s.write_all(&batch)).await;
    let goaway = within("GOAWAY or close", async {
        loop {
            match h2_read(&mut s).await {
                None => return false,
                Some(f) if f.kind == FRAME_GOAWAY => return true,
                Some(_) => {}
            }
        }
    })
    .await;
    assert!(goaway, "the flood ends with GOAWAY (ENHANCE_YOUR_CALM)");
    let forwarded = gw.upstream.count();
    assert!(forwarded < 2000, "{forwarded}");
    // Others are still served.
    let r = get(&gw.url("/api/public/after"), &[]).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn tls_with_an_rsa_certificate() {
    let keys = Keys::generate();
    let pki =
        Pki::with_key(rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA key"));
    let toml = format!(
        "{}{}",
        pki.listen_tls(None),
        TestGateway::default_toml(keys)
    );
    let gw = TestGateway::start(&toml, "").await;
    for http1 in [true, false] {
        let c = tls_client(&pki, gw.addr, http1, None);
        let r = within(
            "https request",
            c.get(https_url(&gw, "/api/public/x")).send(),
        )
        .await
        .expect("https");
        assert_eq!(r.status(), 200);
    }
    let seen = gw.upstream.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen
        .iter()
        .all(|r| r.header("x-forwarded-proto") == Some("https")));
}
