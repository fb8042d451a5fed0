//! The request path: route → extract → verify → authorize → inject → forward.
//!
//! [`handle`] is the whole life of one request. It loads one runtime
//! snapshot, runs [`run`] — which reads like the algorithm — and turns any
//! [`Rejection`] into the JSON error, then writes the access-log line and
//! the metrics. Each stage is a plain function in its own module.

pub mod clientip;
pub mod extract;
pub mod forward;
pub mod inject;
pub mod path;
pub mod ratelimit;
pub mod rewrite;
pub mod verify;
mod websocket;

use crate::admin::metrics::{Metrics, UpstreamLabels};
use crate::config::{AuthMode, Locator};
use crate::error::Rejection;
use crate::identity::Identity;
use crate::runtime::{RouteMatch, RouteRt, Runtime};
use arc_swap::ArcSwap;
use bytes::Bytes;
use forward::Body;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::Uri;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::value::RawValue;
use serde_json::Value;
use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// State shared by every connection; survives reloads.
pub struct Shared {
    pub runtime: ArcSwap<Runtime>,
    pub metrics: Metrics,
    /// Set when shutdown begins: `/readyz` answers 503.
    pub draining: AtomicBool,
    ids: RequestIds,
}

impl Shared {
    pub fn new(runtime: Runtime) -> Shared {
        Shared {
            runtime: ArcSwap::from_pointee(runtime),
            metrics: Metrics::new(),
            draining: AtomicBool::new(false),
            ids: RequestIds::new(),
        }
    }
}

/// Per-connection facts.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// `peer`'s address as an `X-Forwarded-For` element (formatted once).
    pub peer_element: HeaderValue,
    pub https: bool,
    /// The connection's `max_connections` slot; a WebSocket tunnel keeps it.
    pub slot: Option<Arc<tokio::sync::OwnedSemaphorePermit>>,
}

/// Unique request ids: a random per-process prefix and a counter.
struct RequestIds {
    /// The prefix's 16 hex digits, written once.
    prefix: [u8; 16],
    counter: AtomicU64,
}

impl RequestIds {
    fn new() -> RequestIds {
        RequestIds::starting_at(rand::random(), 0)
    }

    fn starting_at(prefix: u64, counter: u64) -> RequestIds {
        let mut digits = [0u8; 16];
        hex_digits(&mut digits, prefix);
        RequestIds {
            prefix: digits,
            counter: AtomicU64::new(counter),
        }
    }

    /// 24 lower-case hex digits: the prefix, then the counter's low 32 bits.
    fn next(&self) -> HeaderValue {
        let n = self.counter.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff;
        let mut text = [0u8; 24];
        text[..16].copy_from_slice(&self.prefix);
        hex_digits(&mut text[16..], n);
        // Owned by a reference-counted allocation from the start: the
        // value is cloned for the response, and a clone of bytes copied
        // into a plain vector allocates again to share them.
        HeaderValue::from_maybe_shared(Bytes::from_owner(text))
            .unwrap_or_else(|_| HeaderValue::from_static("0"))
    }
}

/// Writes the low `dst.len()` hex digits of `v` into `dst`, most significant first.
fn hex_digits(dst: &mut [u8], v: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, c) in dst.iter_mut().rev().enumerate() {
        *c = HEX[((v >> (i * 4)) & 0xf) as usize];
    }
}

/// The request id as the response carries it: marked sensitive, so that
/// HTTP/2 sends it as a never-indexed literal (RFC 7541 §6.2.3). Every id is
/// new, so HPACK-indexing it only filled the connection's dynamic table with
/// ids nobody repeats, evicting the headers that do repeat, and each response
/// compared its id with every one of them (≈ 58 comparisons per response
/// under `h2load -m 10`). HTTP/1 ignores the flag; the value is unchanged.
fn response_request_id(id: &HeaderValue) -> HeaderValue {
    let mut id = id.clone();
    id.set_sensitive(true);
    id
}

/// The `Host` an absolute-form target or HTTP/2 `:authority` gives the
/// upstream: `host[:port]`, without userinfo, the port as a number.
fn authority_host(uri: &Uri) -> Option<HeaderValue> {
    let authority = uri.authority()?;
    let (text, host) = (authority.as_str(), authority.host());
    // Nearly always (every HTTP/2 request has an authority) the authority
    // already is exactly that: no userinfo before the host, and no port or
    // one spelled as its number would be. Then it is copied as it is.
    let as_is = match text.strip_prefix(host) {
        Some("") => true,
        Some(rest) => rest.strip_prefix(':').is_some_and(|digits| {
            digits.parse::<u16>().is_ok() && (digits == "0" || !digits.starts_with(['0', '+']))
        }),
        None => false,
    };
    if as_is {
        return HeaderValue::from_str(text).ok();
    }
    let with_port = match authority.port_u16() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    };
    HeaderValue::try_from(with_port).ok()
}

/// Whether a client-supplied request id may be reused.
pub fn valid_request_id(id: &[u8]) -> bool {
    (1..=128).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"._~:-".contains(b))
}

/// The request id, as text and as the header value (built once).
#[derive(Clone, Copy)]
struct RequestId<'a> {
    text: &'a str,
    header: &'a HeaderValue,
}

/// Route label for requests that matched no route (no allocation per request).
static NO_ROUTE: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("(none)"));

/// What the access log and metrics need to know about a request.
struct Outcome {
    route: Option<Arc<str>>,
    identity: Identity,
    error: Option<&'static str>,
    reason: Option<&'static str>,
    token_presented: bool,
    upstream_secs: Option<f64>,
    pii_redacted: usize,
    cors_origin: Option<HeaderValue>,
}

/// Serves one request. Never fails: every problem becomes a response.
///
/// Not an `async fn`, for the reason given at [`run`]; here it also sizes
/// the slot hyper keeps for the service future in every connection, idle
/// or not.
#[allow(clippy::manual_async_fn)]
pub fn handle(
    shared: Arc<Shared>,
    conn: ConnInfo,
    req: Request<Incoming>,
) -> impl std::future::Future<Output = Result<Response<Body>, Infallible>> + Send {
    async move {
        let start = Instant::now();
        let rt = shared.runtime.load_full();
        let (head, client_request_id) = Head::scan(&req, &rt.identity.headers.prefix);
        let request_id = match client_request_id {
            Some(v) if valid_request_id(v.as_bytes()) => v,
            _ => shared.ids.next(),
        };
        let method = req.method().clone();
        let mut out = Outcome {
            route: None,
            identity: Identity::Anonymous,
            error: None,
            reason: None,
            token_presented: false,
            upstream_secs: None,
            pii_redacted: 0,
            cors_origin: None,
        };
        // `run` is boxed: hyper keeps each connection's service-future slot
        // allocated while the connection idles, so the slot stays small and the
        // (large) request state lives only while a request is in flight.
        // Valid ids are visible ASCII (checked above, or generated as hex).
        let request_id_text = request_id.to_str().unwrap_or_default();
        let ids = RequestId {
            text: request_id_text,
            header: &request_id,
        };
        let mut response = match Box::pin(run(&shared, &rt, conn, req, head, ids, &mut out)).await {
            Ok(r) => r,
            Err(rejection) => reject(rejection, request_id_text, &mut out),
        };
        response
            .headers_mut()
            .insert(X_REQUEST_ID.clone(), response_request_id(&request_id));
        if let Some(origin) = out.cors_origin.take() {
            cors_actual(&rt, &mut response, origin);
        }
        let elapsed = start.elapsed().as_secs_f64();
        let route = out.route.clone().unwrap_or_else(|| NO_ROUTE.clone());
        shared.metrics.record_request(
            &route,
            response.status().as_u16(),
            out.identity.label(),
            out.error.unwrap_or(""),
            elapsed,
        );
        crate::telemetry::access_log(&crate::telemetry::AccessLine {
            request_id: request_id_text,
            route: &route,
            method: method.as_str(),
            status: response.status().as_u16(),
            auth: out.identity.label(),
            error: out.error,
            reason: out.reason,
            // telemetry logs it only when it is an opaque `cid_…` pseudonym.
            customer_id: out.identity.customer_id(),
            upstream_ms: out.upstream_secs.map(|s| s * 1000.0),
            latency_ms: elapsed * 1000.0,
            pii_redacted: out.pii_redacted,
        });
        Ok(response)
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What one pass over the request head found. Later stages look a header
/// up only when this pass saw it: a lookup of an absent custom header
/// still hashes its name, and most requests carry none of these.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Head {
    /// The head's size as a client would have sent it over HTTP/1.1.
    size: usize,
    /// A CR, LF or NUL in some header value.
    unsafe_byte: bool,
    hosts: usize,
    /// The first `Host` value.
    host: Option<HeaderValue>,
    /// An `Authorization` header.
    authorization: bool,
    cookie: bool,
    upgrade: bool,
    /// A header [`inject::strip_hop_by_hop`] removes.
    hop_by_hop: bool,
    /// A header with the identity prefix ([`inject::strip_prefixed`]).
    prefixed: bool,
    forwarded_for: bool,
    forwarded_host: bool,
}

impl Head {
    /// Scans the head once; also returns the client's first `X-Request-Id`.
    fn scan<B>(req: &Request<B>, prefix: &str) -> (Head, Option<HeaderValue>) {
        let uri = req.uri();
        let mut head = Head {
            size: req.method().as_str().len()
                + uri.path_and_query().map_or(1, |pq| pq.as_str().len())
                + uri.authority().map_or(0, |a| a.as_str().len() + 8)
                + 12 // version, spaces, CRLF
                + 2, // the blank line that ends the head
            ..Head::default()
        };
        let mut request_id = None;
        for (k, v) in req.headers() {
            let name = k.as_str();
            head.size += name.len() + v.len() + 4;
            head.unsafe_byte |= has_unsafe_byte(v.as_bytes());
            match name {
                "host" => {
                    head.hosts += 1;
                    if head.host.is_none() {
                        head.host = Some(v.clone());
                    }
                }
                "authorization" => head.authorization = true,
                "cookie" => head.cookie = true,
                "upgrade" => {
                    head.upgrade = true;
                    head.hop_by_hop = true;
                }
                "x-forwarded-for" => head.forwarded_for = true,
                "x-forwarded-host" => head.forwarded_host = true,
                "x-request-id" => {
                    if request_id.is_none() {
                        request_id = Some(v.clone());
                    }
                }
                _ => head.hop_by_hop |= inject::is_hop_by_hop_name(name),
            }
            head.prefixed |= name.starts_with(prefix);
        }
        (head, request_id)
    }

    /// 431 beyond `max`; 400 for a CR, LF or NUL in a header value —
    /// nothing HTTP/1.1 could not carry goes upstream, whatever the
    /// client's protocol.
    fn check(&self, max: usize) -> Result<(), Rejection> {
        if self.size > max {
            Err(Rejection::HeaderTooLarge)
        } else if self.unsafe_byte {
            Err(Rejection::BadRequest)
        } else {
            Ok(())
        }
    }
}

/// A CR, LF or NUL: bytes HTTP/1.1 cannot carry in a header value. Long
/// values by vector search (memchr): a browser's cookie header alone may be
/// kilobytes.
fn has_unsafe_byte(value: &[u8]) -> bool {
    if value.len() < 16 {
        // Most values are short: memchr's dispatch would cost more than the
        // bytes.
        value.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n')
    } else {
        memchr::memchr3(0, b'\r', b'\n', value).is_some()
    }
}

fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.method() == Method::GET
        && req
            .headers()
            .get(http::header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
        && req
            .headers()
            .get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// The life of one request; reads like the algorithm.
///
/// Not an `async fn`: one keeps its arguments twice in its state (as
/// passed, and moved into the body's locals), and this state is moved into
/// its allocation whole on every request (see `handle`); the block below
/// uses what it captured in place.
#[allow(clippy::manual_async_fn)]
fn run<'a>(
    shared: &'a Shared,
    rt: &'a Runtime,
    conn: ConnInfo,
    mut req: Request<Incoming>,
    head: Head,
    request_id: RequestId<'a>,
    out: &'a mut Outcome,
) -> impl std::future::Future<Output = Result<Response<Body>, Rejection>> + Send + 'a {
    async move {
        let limits = &rt.config.limits;
        head.check(limits.max_header_bytes)?;
        // HTTP/1.1 needs exactly one Host (RFC 9112 §3.2); HTTP/2 uses :authority.
        if req.version() == Version::HTTP_11 && head.hosts != 1 {
            return Err(Rejection::BadRequest);
        }
        // The request target, held apart from the request (a reference count):
        // the path borrows from it, and when neither the path nor the query
        // changes on the way, the upstream request reuses it as it is.
        // A target without a path (authority form) is refused, as an empty path
        // would be by `normalize`.
        let target = req
            .uri()
            .path_and_query()
            .cloned()
            .ok_or(Rejection::BadRequest)?;
        let path = path::normalize(target.path()).map_err(|_| Rejection::BadRequest)?;
        // CORS: a genuine preflight from an allowed origin is answered here.
        if let Some(origin) = cors_origin(rt, &req) {
            if req.method() == Method::OPTIONS
                && req
                    .headers()
                    .contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
            {
                return Ok(cors_preflight(rt, origin));
            }
            out.cors_origin = Some(origin);
        }
        // route
        let route_idx = match rt.resolve(&path, req.method()) {
            RouteMatch::Found(i) => i,
            RouteMatch::NotFound => return Err(Rejection::NotFound),
            RouteMatch::MethodNotAllowed(candidates) => {
                return Err(Rejection::MethodNotAllowed {
                    allow: rt.allow_header(candidates),
                })
            }
        };
        let route = &rt.routes[route_idx];
        out.route = Some(route.name.clone());
        let upgrade = head.upgrade && is_websocket_upgrade(&req);
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();

        // read the body only where a `body:` locator needs it
        let (mut json, raw, streaming) = if route.reads_body {
            // The body gets the same deadline as the upstream exchange: a client
            // trickling a body must not hold a connection slot forever.
            let bytes = crate::timer::timeout(
                limits.request_timeout,
                read_body(body, &parts, limits.max_body_bytes),
            )
            .await
            .map_err(|_| Rejection::BadRequest)??;
            (parse_body(&parts, &bytes)?, Some(bytes), None)
        } else {
            (None, None, Some(body))
        };

        // context object (validated before the token so a wrong-typed
        // `Auth.Token` is reported as a context error naming the field)
        let context = match (&route.context, &json) {
            (Some(Locator::Body(ptr)), Some(doc)) => match crate::context::pointer(doc, ptr) {
                None | Some(Value::Null) => None,
                Some(ctx) => {
                    let c = crate::context::validate(ctx, rt.identity.pii)?;
                    out.pii_redacted = c.pii_redacted;
                    Some(c)
                }
            },
            _ => None,
        };

        // Per-IP limits run before verification, so floods of bad tokens are
        // limited too; per-customer limits need the identity and run after.
        let client_ip = || {
            clientip::rate_key(clientip::client_ip(
                conn.peer.ip(),
                parts
                    .headers
                    .get_all(&inject::X_FORWARDED_FOR)
                    .iter()
                    .filter_map(|v| v.to_str().ok()),
                &rt.trusted_proxies,
            ))
        };
        if let Some(limiter) = route.rate_limit.as_ref().filter(|l| !l.per_customer) {
            if let Err(retry_after_secs) = limiter.check(client_ip(), Instant::now()) {
                return Err(Rejection::RateLimited { retry_after_secs });
            }
        }

        // extract
        let credential = if route.auth == AuthMode::None {
            if head.cookie {
                extract::check_cookie_headers(&parts)?;
            }
            None
        } else {
            match extract::credential(&parts, &rt.locators, upgrade, json.as_ref()) {
                Ok(c) => c,
                Err(e) => {
                    // A presented but unreadable token still gets error="invalid_token".
                    out.token_presented = e == Rejection::InvalidToken;
                    return Err(e);
                }
            }
        };
        out.token_presented = credential.is_some();

        // verify
        let identity = match (&credential, route.auth) {
            (_, AuthMode::None) | (None, AuthMode::Optional) => Identity::Anonymous,
            (None, AuthMode::Required) => return Err(Rejection::MissingToken),
            (Some(c), _) => {
                // The route's issuer list is applied inside verification, right
                // after `iss` picks the issuer: a token of another issuer is
                // `invalid_token`, never `token_expired` or `keys_unavailable`.
                let verified =
                    verify_token(shared, rt, &c.token, route.issuers.as_deref(), out).await?;
                Identity::Authenticated(verified)
            }
        };
        out.identity = identity.clone();

        // authorize
        let effective_scopes = authorize(route, &identity, context.as_ref())?;
        match_claims(route, &identity, &parts, json.as_ref())?;
        if let Some(limiter) = route.rate_limit.as_ref().filter(|l| l.per_customer) {
            let verdict = match identity.customer_id() {
                Some(cid) => limiter.check(cid, Instant::now()),
                None => limiter.check(client_ip(), Instant::now()),
            };
            if let Err(retry_after_secs) = verdict {
                return Err(Rejection::RateLimited { retry_after_secs });
            }
        }

        // inject: strip first, then set
        let upgrade_value = upgrade
            .then(|| parts.headers.get(http::header::UPGRADE).cloned())
            .flatten();
        // The request target's authority wins over Host (absolute-form, RFC 9112
        // §3.2.2; HTTP/2 :authority); it is never used for routing.
        let host = authority_host(&parts.uri).or(head.host);
        let mut query: Option<Cow<'_, str>> = target.query().map(Cow::Borrowed);
        if head.hop_by_hop {
            inject::strip_hop_by_hop(&mut parts.headers);
        }
        if head.prefixed {
            inject::strip_prefixed(&mut parts.headers, &rt.identity.headers.prefix);
        }
        // Body edits happen on the client's bytes (number spelling, key order
        // and whitespace preserved); `reserialize` is the fallback when an edit
        // cannot be made in place (e.g. a member inside an array).
        let mut edited: Option<Vec<u8>> = None;
        let mut reserialize = false;
        let mut edit = |f: &dyn Fn(&[u8]) -> Option<Vec<u8>>| match edited
            .as_deref()
            .or(raw.as_deref())
            .and_then(f)
        {
            Some(bytes) => edited = Some(bytes),
            None => reserialize = true,
        };
        // Redacted PII must not reach the upstream in the body either.
        if let (Some(c), Some(Locator::Body(ptr)), Some(doc)) =
            (&context, &route.context, json.as_mut())
        {
            if c.pii_redacted > 0 {
                for key in redact_body(doc, ptr) {
                    let at = format!("{ptr}/CustomerInfo/{}", rewrite::escape_segment(&key));
                    let redacted = format!("\"{}\"", crate::context::REDACTED);
                    edit(&|b| rewrite::replace_value(b, &at, &redacted));
                }
            }
        }
        // strip = true: every place a token may travel is emptied, on every
        // route — whether or not a token was found or used there — so nothing
        // unverified rides along to the upstream (or into its URL logs).
        if rt.config.credentials.strip {
            for locator in &rt.locators {
                match locator {
                    Locator::Header(name) if name == "authorization" => {
                        let bearer = head.authorization
                            && parts
                                .headers
                                .get(http::header::AUTHORIZATION)
                                .and_then(|v| v.to_str().ok())
                                .is_some_and(|v| extract::is_bearer_scheme(v.trim()));
                        if bearer {
                            parts.headers.remove(http::header::AUTHORIZATION);
                        }
                    }
                    Locator::Header(name) => {
                        parts.headers.remove(name.as_str());
                    }
                    // Nothing to strip when the head scan saw no `Cookie`.
                    Locator::Cookie(name) if head.cookie => strip_cookie(&mut parts.headers, name),
                    Locator::Cookie(_) => {}
                    Locator::Query(name) => {
                        query = query
                            .as_deref()
                            .and_then(|q| extract::query_without(q, name))
                            .map(Cow::Owned);
                    }
                    Locator::Body(ptr) => {
                        if let Some(doc) = json.as_mut() {
                            if crate::context::remove_pointer(doc, ptr) {
                                edit(&|b| rewrite::remove_member(b, ptr));
                            }
                        }
                    }
                }
            }
        }
        let names = &rt.identity.headers;
        let issuer_name = match &identity {
            Identity::Authenticated(v) => Some(&rt.issuers[v.issuer].name_header),
            Identity::Anonymous => None,
        };
        inject::identity_headers(
            &mut parts.headers,
            names,
            &identity,
            issuer_name,
            effective_scopes,
        );
        if let Some(c) = context {
            for (name, value) in [
                (&names.customer_info, c.customer_info),
                (&names.segments, c.segments),
                (&names.subdivision, c.subdivision),
                (&names.session_id, c.session_id),
                (&names.session_type, c.session_type),
            ] {
                if let Some(v) = value {
                    parts.headers.insert(name.clone(), v);
                }
            }
        }
        if let (Some(signer), Identity::Authenticated(v)) = (&rt.assertion, &identity) {
            // The effective scopes, as injected (Auth.Scopes may narrow them).
            let scopes = parts
                .headers
                .get(&names.scopes)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("");
            let ctx = v
                .context
                .as_ref()
                .and_then(|c| serde_json::from_slice::<&RawValue>(c.as_bytes()).ok());
            let cid = v.customer_id.to_str().unwrap_or("");
            let jwt = signer.sign(cid, scopes, ctx, request_id.text, now_unix());
            if let Some(h) = jwt.and_then(|j| HeaderValue::try_from(j).ok()) {
                parts.headers.insert(names.assertion.clone(), h);
            }
        }
        inject::forwarded(
            &mut parts.headers,
            &conn.peer_element,
            conn.https,
            host.clone(),
            inject::Present {
                forwarded_for: head.forwarded_for,
                forwarded_host: head.forwarded_host,
            },
        );
        if let Some(h) = host {
            parts.headers.insert(HOST, h);
        }
        parts
            .headers
            .insert(X_REQUEST_ID.clone(), request_id.header.clone());
        if let (true, Some(u)) = (upgrade, upgrade_value) {
            parts.headers.insert(
                http::header::CONNECTION,
                HeaderValue::from_static("upgrade"),
            );
            parts.headers.insert(http::header::UPGRADE, u);
        }

        // forward
        let upstream = &rt.upstreams[route.upstream];
        // Unchanged: the client's target is already what uri_for would build.
        parts.uri = if matches!(path, Cow::Borrowed(_))
            && query.as_deref() == target.query()
            && upstream.forwards_path_as_is()
        {
            Uri::from(target.clone())
        } else {
            upstream.uri_for(&path, query.as_deref())?
        };
        parts.version = Version::HTTP_11;
        let rewritten = match (&json, reserialize, edited) {
            (Some(doc), true, _) => {
                Some(serde_json::to_vec(doc).map_err(|_| Rejection::BadRequest)?)
            }
            (_, _, edited) => edited,
        };
        let body: Body = match (rewritten, raw) {
            (Some(bytes), _) => {
                parts
                    .headers
                    .insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
                forward::full(bytes)
            }
            (None, Some(bytes)) => forward::full(bytes),
            // A request that has ended already (no body: most GETs) gets an
            // empty body that costs no allocation.
            (None, None) => match streaming {
                Some(b) if !http_body::Body::is_end_stream(&b) => forward::boxed(b),
                _ => forward::empty(),
            },
        };
        // One clock read for the deadline and the access log's upstream time
        // (a second only when that log is on).
        let sent = Instant::now();
        let deadline = crate::timer::deadline_after(sent, limits.request_timeout);
        let result = upstream
            .forward(Request::from_parts(parts, body), deadline)
            .await;
        if crate::telemetry::access_log_enabled() {
            out.upstream_secs = Some(sent.elapsed().as_secs_f64());
        }
        let mut response = match result {
            Ok(r) => r,
            Err(e) => {
                out.reason = Some(e.kind());
                count_upstream_error(shared, &upstream.name, e);
                return Err(e.rejection());
            }
        };
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client_upgrade) = client_upgrade {
                let deadline = match (&identity, route.close_on_expiry) {
                    (Identity::Authenticated(v), true) => Some(v.exp),
                    _ => None,
                };
                spawn_tunnel(client_upgrade, &mut response, deadline, conn.slot.clone());
                let (parts, _) = response.into_parts();
                return Ok(Response::from_parts(parts, forward::empty()));
            }
            // An upgrade nobody asked for is not passed on.
            return Err(Rejection::UpstreamUnavailable);
        }
        inject::strip_hop_by_hop(response.headers_mut());
        if rt.config.cors.is_some() {
            // The gateway alone decides CORS: an upstream's reflected origin
            // must not reach an origin the configuration does not allow.
            inject::strip_prefixed(response.headers_mut(), "access-control-");
        }
        Ok(response)
    }
}

// Paths few requests take, kept out of line: the code a proxied request
// runs through stays denser (see bench/PERFORMANCE.md, *Where the time
// goes*: a request's cost is as much the distinct code it runs as its
// instructions).

#[cold]
#[inline(never)]
fn reject(rejection: Rejection, request_id: &str, out: &mut Outcome) -> Response<Body> {
    out.error = Some(rejection.code());
    rejection
        .to_response(request_id, out.token_presented)
        .map(forward::full)
}

#[cold]
#[inline(never)]
fn count_upstream_error(shared: &Shared, upstream: &str, e: forward::UpstreamError) {
    shared
        .metrics
        .upstream_errors
        .get_or_create(&UpstreamLabels {
            upstream: upstream.to_owned(),
            kind: e.kind(),
        })
        .inc();
}

/// The WebSocket tunnel, on its own task; it keeps the connection's slot.
#[cold]
#[inline(never)]
fn spawn_tunnel(
    client: hyper::upgrade::OnUpgrade,
    response: &mut Response<Body>,
    deadline: Option<u64>,
    slot: Option<Arc<tokio::sync::OwnedSemaphorePermit>>,
) {
    let upstream = hyper::upgrade::on(response);
    tokio::spawn(async move {
        websocket::tunnel(client, upstream, deadline).await;
        drop(slot);
    });
}

async fn verify_token(
    shared: &Shared,
    rt: &Runtime,
    token: &str,
    allowed: Option<&[usize]>,
    out: &mut Outcome,
) -> Result<Arc<crate::identity::Verified>, Rejection> {
    let now = now_unix();
    // Introspection boxes its network exchange, and the refetch below is
    // boxed here: unboxed, their large futures would size every request's
    // future (moved into its allocation in full on each request).
    let (mut result, mut cache) = if verify::is_jwt_shaped(token) {
        verify::jwt(rt, token, now, allowed)
    } else {
        crate::keys::introspect::verify(rt, token, now, allowed).await
    };
    // An unknown `kid` at a JWKS issuer: one single-flight refetch, then retry.
    if let Err(d) = &result {
        if d.reason == verify::NO_KEY {
            if let Some(store) = verify::jwks_store_for(rt, token) {
                let refetch = Box::pin(
                    store.refetch_for_unknown_kid(rt.fetcher(store.issuer_index), &shared.metrics),
                );
                if refetch.await {
                    (result, cache) = verify::jwt(rt, token, now, allowed);
                }
            }
        }
    }
    match cache {
        verify::CacheOutcome::Hit => shared.metrics.cache_hits.inc(),
        verify::CacheOutcome::Miss => shared.metrics.cache_misses.inc(),
    };
    result.map_err(|d| {
        out.reason = Some(d.reason);
        d.rejection
    })
}

/// Scopes: requested (`Auth.Scopes`) must be granted; the route's must be in
/// the effective set. Returns the header value when it differs from the token's.
fn authorize(
    route: &RouteRt,
    identity: &Identity,
    context: Option<&crate::context::Context>,
) -> Result<Option<HeaderValue>, Rejection> {
    let Identity::Authenticated(v) = identity else {
        return Ok(None);
    };
    let requested = context.and_then(|c| c.requested_scopes.as_ref());
    let mut effective_header = None;
    let effective: Vec<&str> = match requested {
        Some(req) => {
            let missing: Vec<String> = req
                .iter()
                .filter(|s| v.scopes.binary_search(s).is_err())
                .cloned()
                .collect();
            if !missing.is_empty() {
                return Err(Rejection::InsufficientScope { required: missing });
            }
            let mut eff: Vec<&str> = req.iter().map(String::as_str).collect();
            eff.sort_unstable();
            eff.dedup();
            effective_header =
                Some(HeaderValue::try_from(eff.join(" ")).map_err(|_| Rejection::InvalidToken)?);
            eff
        }
        None => v.scopes.iter().map(String::as_str).collect(),
    };
    if !route.scopes.iter().all(|s| effective.contains(&s.as_str())) {
        return Err(Rejection::InsufficientScope {
            required: route.scopes.clone(),
        });
    }
    Ok(effective_header)
}

/// `match_claims`: a verified claim must equal what the request declares.
fn match_claims(
    route: &RouteRt,
    identity: &Identity,
    parts: &http::request::Parts,
    json: Option<&Value>,
) -> Result<(), Rejection> {
    let Identity::Authenticated(v) = identity else {
        return Ok(());
    };
    for (claim, locator) in &route.match_claims {
        // Every value the request declares at that place (fail closed:
        // unreadable is a bad request, two different values a mismatch).
        let mut declared: Vec<Value> = match locator {
            Locator::Body(ptr) => json
                .and_then(|d| crate::context::pointer(d, ptr))
                .cloned()
                .into_iter()
                .collect(),
            Locator::Header(name) => parts
                .headers
                .get_all(name.as_str())
                .iter()
                .map(|h| {
                    h.to_str()
                        .map(|s| Value::String(s.to_owned()))
                        .map_err(|_| Rejection::BadRequest)
                })
                .collect::<Result<_, _>>()?,
            Locator::Cookie(name) => extract::cookie_values(parts, name)
                .map(|s| Value::String(s.to_owned()))
                .collect(),
            Locator::Query(name) => match parts.uri.query() {
                None => Vec::new(),
                Some(q) => extract::query_values(q, name)
                    .map(|v| v.map(Value::String).ok_or(Rejection::BadRequest))
                    .collect::<Result<_, _>>()?,
            },
        };
        declared.retain(|d| !d.is_null());
        declared.dedup();
        match (declared.as_slice(), claim.get(&v.claims)) {
            ([], _) => {}
            ([d], Some(a)) if d == a => {}
            // Declared but different, declared twice, or declared while the
            // verified token has no such claim: refuse.
            _ => return Err(Rejection::IdentityMismatch),
        }
    }
    Ok(())
}

/// Replaces PII-looking `CustomerInfo` values in the context object at
/// `ptr`; returns the keys it redacted.
fn redact_body(doc: &mut Value, ptr: &str) -> Vec<String> {
    let Some(Value::Object(info)) = doc
        .pointer_mut(ptr)
        .and_then(|ctx| ctx.get_mut("CustomerInfo"))
    else {
        return Vec::new();
    };
    let mut redacted = Vec::new();
    for (key, value) in info.iter_mut() {
        if value.as_str().is_some_and(crate::context::looks_like_pii) {
            *value = Value::from(crate::context::REDACTED);
            redacted.push(key.clone());
        }
    }
    redacted
}

fn strip_cookie(headers: &mut http::HeaderMap, name: &str) {
    // The usual case, one readable `Cookie` header that cannot hold the
    // cookie, is forwarded as it is: rebuilding it would change nothing but
    // spacing and empty pairs. Several headers are still joined into one.
    let mut values = headers.get_all(http::header::COOKIE).iter();
    match (values.next(), values.next()) {
        (None, _) => return,
        (Some(only), None)
            if !extract::may_hold_cookie(only.as_bytes(), name) && only.to_str().is_ok() =>
        {
            return
        }
        _ => {}
    }
    let kept: Vec<String> = headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| extract::cookie_without(v, name))
        .collect();
    headers.remove(http::header::COOKIE);
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::try_from(kept.join("; ")) {
            headers.insert(http::header::COOKIE, v);
        }
    }
}

async fn read_body(
    body: Incoming,
    parts: &http::request::Parts,
    limit: usize,
) -> Result<Bytes, Rejection> {
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(Rejection::PayloadTooLarge);
    }
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Rejection::PayloadTooLarge),
        Err(_) => Err(Rejection::BadRequest),
    }
}

fn parse_body(parts: &http::request::Parts, bytes: &Bytes) -> Result<Option<Value>, Rejection> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let is_json = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .is_some_and(|m| {
            m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
        });
    if !is_json {
        return Err(Rejection::BadRequest);
    }
    crate::context::parse_json_body(bytes)
        .map(Some)
        .map_err(|_| Rejection::BadRequest)
}

fn cors_origin<B>(rt: &Runtime, req: &Request<B>) -> Option<HeaderValue> {
    let cors = rt.config.cors.as_ref()?;
    let origin = req.headers().get(http::header::ORIGIN)?;
    let o = origin.to_str().ok()?;
    cors.allow_origins
        .iter()
        .any(|a| a == o || a == "*")
        .then(|| origin.clone())
}

fn cors_preflight(rt: &Runtime, origin: HeaderValue) -> Response<Body> {
    use http::header::*;
    let mut r = Response::new(forward::empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    let Some(cors) = rt.config.cors.as_ref() else {
        return r;
    };
    let h = r.headers_mut();
    let methods = cors
        .allow_methods
        .as_ref()
        .map(|m| m.join(", "))
        .unwrap_or_else(|| "GET, HEAD, POST, PUT, PATCH, DELETE".into());
    if let Ok(v) = HeaderValue::try_from(methods) {
        h.insert(ACCESS_CONTROL_ALLOW_METHODS, v);
    }
    if !cors.allow_headers.is_empty() {
        if let Ok(v) = HeaderValue::try_from(cors.allow_headers.join(", ")) {
            h.insert(ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
    }
    if let Some(age) = cors.max_age {
        h.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from(age.as_secs()));
    }
    cors_headers(cors, h, origin);
    r
}

fn cors_actual(rt: &Runtime, response: &mut Response<Body>, origin: HeaderValue) {
    if let Some(cors) = rt.config.cors.as_ref() {
        cors_headers(cors, response.headers_mut(), origin);
    }
}

fn cors_headers(cors: &crate::config::Cors, h: &mut http::HeaderMap, origin: HeaderValue) {
    use http::header::*;
    h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.append(VARY, HeaderValue::from_static("Origin"));
    if cors.allow_credentials {
        h.insert(
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cookies(values: &[&[u8]]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for v in values {
            h.append(
                http::header::COOKIE,
                HeaderValue::from_bytes(v).expect("value"),
            );
        }
        h
    }

    fn cookie_header(h: &http::HeaderMap) -> Vec<&[u8]> {
        h.get_all(http::header::COOKIE)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect()
    }

    #[test]
    fn strip_cookie_takes_the_token_cookie_and_only_it() {
        // One header without the cookie: forwarded exactly as sent.
        let mut h = cookies(&[b"a=1;  b=2;; authcookie=3"]);
        strip_cookie(&mut h, "AuthCookie");
        assert_eq!(cookie_header(&h), [&b"a=1;  b=2;; authcookie=3"[..]]);
        // The name occurs only inside another cookie's name or value: the
        // full rebuild, and still nothing of that name is removed.
        let mut h = cookies(&[b"xAuthCookie=1;  b=AuthCookie"]);
        strip_cookie(&mut h, "AuthCookie");
        assert_eq!(cookie_header(&h), [&b"xAuthCookie=1; b=AuthCookie"[..]]);
        // The cookie itself goes, wherever it is.
        for v in [
            &b"AuthCookie=t; a=1"[..],
            b"a=1; AuthCookie=t",
            b"a=1;AuthCookie = t ;b=2",
        ] {
            let mut h = cookies(&[v]);
            strip_cookie(&mut h, "AuthCookie");
            let left = cookie_header(&h);
            assert!(
                left.iter()
                    .all(|l| !l.windows(10).any(|w| w == b"AuthCookie")),
                "{:?}",
                String::from_utf8_lossy(v)
            );
            assert!(!left.is_empty());
        }
        let mut h = cookies(&[b"AuthCookie=t"]);
        strip_cookie(&mut h, "AuthCookie");
        assert!(cookie_header(&h).is_empty());
        // Several headers are joined into one (HTTP/2 cookie crumbs), with
        // or without the cookie.
        let mut h = cookies(&[b"a=1", b"b=2"]);
        strip_cookie(&mut h, "AuthCookie");
        assert_eq!(cookie_header(&h), [&b"a=1; b=2"[..]]);
        let mut h = cookies(&[b"a=1", b"AuthCookie=t"]);
        strip_cookie(&mut h, "AuthCookie");
        assert_eq!(cookie_header(&h), [&b"a=1"[..]]);
        // An unreadable header (obs-text) is not forwarded, as before.
        let mut h = cookies(&[b"a=\xe9"]);
        strip_cookie(&mut h, "AuthCookie");
        assert!(cookie_header(&h).is_empty());
        let mut h = http::HeaderMap::new();
        strip_cookie(&mut h, "AuthCookie");
        assert!(h.is_empty());
    }

    #[test]
    fn the_response_request_id_is_never_indexed() {
        let id = HeaderValue::from_static("0123456789abcdef01234567");
        let sent = response_request_id(&id);
        assert!(sent.is_sensitive());
        assert_eq!(sent, id);
        // The upstream's copy is not touched.
        assert!(!id.is_sensitive());
    }

    #[test]
    fn request_ids() {
        assert!(valid_request_id(b"abc-123_.~:X"));
        assert!(!valid_request_id(b""));
        assert!(!valid_request_id(b"a b"));
        assert!(!valid_request_id(b"a\"b"));
        assert!(!valid_request_id(&[b'a'; 129]));
        assert!(valid_request_id(&[b'a'; 128]));
        let ids = RequestIds::new();
        assert_ne!(ids.next(), ids.next());
        assert!(valid_request_id(ids.next().as_bytes()));
        let fixed = RequestIds::starting_at(0x0123_4567_89ab_cdef, 0x1_0000_00ff);
        assert_eq!(fixed.next(), "0123456789abcdef000000ff");
        assert_eq!(fixed.next(), "0123456789abcdef00000100");
    }
}

#[cfg(test)]
mod head_scan {
    use super::*;
    use proptest::prelude::*;

    const NAMES: &[&str] = &[
        "host",
        "cookie",
        "upgrade",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "proxy-authorization",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-request-id",
        "x-authgate-customer-id",
        "X-AuthGate-Scopes",
        "x-authgatex",
        "x-other",
        "accept",
        "authorization",
        "proxy-authenticate",
    ];
    const VALUES: &[&str] = &[
        "a",
        "x-other",
        "keep-alive",
        "close, accept",
        "x-authgate-scopes",
    ];

    fn request(headers: &[(usize, usize)]) -> Request<()> {
        let mut b = Request::builder().uri("/p?q=1");
        for &(n, v) in headers {
            b = b.header(NAMES[n], VALUES[v]);
        }
        b.body(()).expect("request")
    }

    #[test]
    fn finds_what_each_stage_looks_for() {
        let req = request(&[(0, 0), (0, 0), (1, 0), (12, 0), (12, 1), (16, 0)]);
        let (head, id) = Head::scan(&req, "x-authgate-");
        assert_eq!(head.hosts, 2);
        assert_eq!(
            head.host.as_ref().expect("host"),
            VALUES[0],
            "the first value"
        );
        assert!(head.cookie && !head.upgrade && !head.hop_by_hop && !head.prefixed);
        assert!(!head.authorization);
        assert!(!head.forwarded_for && !head.forwarded_host);
        assert_eq!(id.expect("request id"), "a", "the first value");
        assert_eq!(head.check(head.size), Ok(()));
        assert_eq!(head.check(head.size - 1), Err(Rejection::HeaderTooLarge));
        let req = request(&[(2, 0), (10, 0), (11, 0), (14, 0), (18, 1)]);
        let (head, id) = Head::scan(&req, "x-authgate-");
        assert!(head.upgrade && head.hop_by_hop && head.prefixed && head.authorization);
        assert_eq!((head.hosts, head.host.as_ref()), (0, None));
        assert!(head.forwarded_for && head.forwarded_host && id.is_none());
        // (CR, LF and NUL cannot be put in a HeaderValue by safe code; the
        // unsafe_byte check is a backstop for what hyper hands over.)
        let unsafe_head = Head {
            unsafe_byte: true,
            ..head
        };
        assert_eq!(unsafe_head.check(8192), Err(Rejection::BadRequest));
    }

    #[test]
    fn unsafe_bytes_are_found_anywhere() {
        assert!(!has_unsafe_byte(b""));
        assert!(!has_unsafe_byte(&[b'a'; 4096]));
        for bad in [0u8, b'\r', b'\n'] {
            for len in [1usize, 15, 16, 31, 32, 33, 64, 100, 4096] {
                for at in [0, len / 2, len - 1] {
                    let mut v = vec![b'a'; len];
                    v[at] = bad;
                    assert!(has_unsafe_byte(&v), "{bad} at {at} of {len}");
                }
            }
        }
    }

    /// The `Host` built from an authority, as it was defined before the
    /// shortcut: host, then the port number if there is one.
    fn authority_host_reference(uri: &Uri) -> Option<HeaderValue> {
        uri.host().and_then(|h| {
            let hp = match uri.port_u16() {
                Some(p) => format!("{h}:{p}"),
                None => h.to_owned(),
            };
            HeaderValue::try_from(hp).ok()
        })
    }

    #[test]
    fn authority_host_drops_userinfo_and_spells_the_port_as_a_number() {
        for (target, want) in [
            ("http://chat.example/x", Some("chat.example")),
            ("http://chat.example:8080/x", Some("chat.example:8080")),
            ("http://u:p@chat.example:8080/x", Some("chat.example:8080")),
            ("http://chat.example:08080/x", Some("chat.example:8080")),
            ("http://chat.example:/x", Some("chat.example")),
            ("http://[::1]:443/x", Some("[::1]:443")),
            ("/x", None),
        ] {
            let uri: Uri = target.parse().expect("uri");
            assert_eq!(
                authority_host(&uri)
                    .as_ref()
                    .map(|v| v.to_str().expect("ascii")),
                want,
                "{target}"
            );
        }
    }

    proptest! {
        /// Any authority the URI parser accepts gives the same `Host` with
        /// the shortcut as without it.
        #[test]
        fn authority_host_is_the_reference(
            userinfo in proptest::option::of("[a-z:]{0,4}"),
            host in "[a-z0-9.-]{1,12}|\\[[0-9a-f:]{2,8}\\]",
            port in proptest::option::of("[+0-9]{0,7}"),
        ) {
            let mut authority = String::new();
            if let Some(u) = &userinfo {
                authority.push_str(u);
                authority.push('@');
            }
            authority.push_str(&host);
            if let Some(p) = &port {
                authority.push(':');
                authority.push_str(p);
            }
            if let Ok(uri) = format!("http://{authority}/x").parse::<Uri>() {
                prop_assert_eq!(authority_host(&uri), authority_host_reference(&uri), "{}", authority);
            }
        }

        /// The vector search decides as the byte-by-byte definition.
        #[test]
        fn unsafe_byte_search_is_the_definition(v in proptest::collection::vec(any::<u8>(), 0..300)) {
            prop_assert_eq!(
                has_unsafe_byte(&v),
                v.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n')
            );
        }

        /// Skipping a stage's lookup when the scan saw nothing for it gives
        /// the same upstream headers as always running it.
        #[test]
        fn skipping_absent_headers_changes_nothing(
            headers in proptest::collection::vec((0..NAMES.len(), 0..VALUES.len()), 0..12),
            host in proptest::option::of(Just(HeaderValue::from_static("h.example"))),
        ) {
            let req = request(&headers);
            let (head, _) = Head::scan(&req, "x-authgate-");
            let peer = HeaderValue::from_static("10.0.0.1");
            let mut always = req.headers().clone();
            inject::strip_hop_by_hop(&mut always);
            inject::strip_prefixed(&mut always, "x-authgate-");
            inject::forwarded(&mut always, &peer, false, host.clone(), inject::Present::UNKNOWN);
            let mut skipping = req.headers().clone();
            if head.hop_by_hop {
                inject::strip_hop_by_hop(&mut skipping);
            }
            if head.prefixed {
                inject::strip_prefixed(&mut skipping, "x-authgate-");
            }
            let present = inject::Present {
                forwarded_for: head.forwarded_for,
                forwarded_host: head.forwarded_host,
            };
            inject::forwarded(&mut skipping, &peer, false, host, present);
            prop_assert_eq!(always, skipping);
        }
    }
}

#[cfg(test)]
mod size_probe {
    use super::*;

    fn future_size<F, Fut>(_: F) -> usize
    where
        F: Fn(Arc<Shared>, ConnInfo, Request<Incoming>) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// hyper keeps one service-future slot per connection for as long as the
    /// connection lives; boxing `run` keeps that slot small (it was ~4 KB).
    #[test]
    fn the_per_connection_future_slot_stays_small() {
        // 648 bytes at 2026-12-06; 920 when `handle` was an `async fn`
        // (its arguments held twice). Every connection keeps this slot.
        let size = future_size(handle);
        assert!(size <= 768, "handle future grew to {size} bytes");
    }
}
