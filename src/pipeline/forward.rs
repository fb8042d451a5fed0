//! Forward: the pooled upstream client and the exchange with a deadline.
//!
//! One client per `[upstreams.NAME]` (HTTP/1.1; `https://` verified against
//! the webpki roots plus the upstream's optional `ca` file). The request body
//! streams from the client connection and the response body streams back;
//! neither is buffered here.
//!
//! The pool is deliberately small: a LIFO stack of idle hyper HTTP/1
//! `SendRequest` handles for one origin. A connection goes back on the stack
//! when its response body ends (see [`PooledBody`]) — no per-request task,
//! no pool keys, no URI rewriting; this measurably beat hyper-util's generic
//! pooled client on the per-request CPU budget (bench/PERFORMANCE.md). A
//! request whose pooled connection turns out to be closed before anything
//! was written is retried once on a fresh connection.

use crate::config::{Config, Upstream};
use crate::error::Rejection;
use crate::server::gather::Gathered;
use crate::server::PerWorker;
use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tower_service::Service;

/// Errors of bodies that flow through the gateway.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every request and response the gateway handles.
pub type Body = BoxBody<Bytes, BoxError>;

/// Wraps any body into [`Body`].
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

/// Largest buffer one upstream connection reads into.
pub const UPSTREAM_READ_BUF: usize = 64 * 1024;

type Io = hyper_rustls::MaybeHttpsStream<hyper_util::rt::TokioIo<tokio::net::TcpStream>>;

/// The connector's future with its boxed error erased here, outside any
/// `async fn` (keeps the request future provably `Send`).
fn connect_io(
    connector: &HttpsConnector<HttpConnector>,
    target: Uri,
) -> Pin<Box<dyn std::future::Future<Output = Result<Io, ()>> + Send>> {
    let fut = connector.clone().call(target);
    Box::pin(async move { fut.await.map_err(drop) })
}

/// The HTTP/1 handshake, and the connection task spawned; boxed as `Send`
/// outside any `async fn` (rustc cannot prove it `Send` inside one).
fn handshake(
    io: Io,
) -> Pin<Box<dyn std::future::Future<Output = Result<SendRequest<Body>, ()>> + Send>> {
    Box::pin(async move {
        // Cap what one upstream read may pull in: a slow client reading a
        // large response holds at most this much in flight (hyper's default
        // is ~400 KiB per connection).
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .max_buf_size(UPSTREAM_READ_BUF)
            .handshake::<Gathered<Io>, Body>(Gathered(io))
            .await
            .map_err(drop)?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(sender)
    })
}

fn box_incoming(b: Incoming) -> Body {
    b.map_err(|e| Box::new(e) as BoxError).boxed()
}

/// A body of fixed bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    boxed(http_body_util::Full::new(bytes.into()))
}

/// An empty body. Zero-sized, so boxing it allocates nothing.
pub fn empty() -> Body {
    http_body_util::Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

pin_project_lite::pin_project! {
    /// An exchange under its deadline; the deadline's passing is
    /// [`UpstreamError::Timeout`].
    struct TimedExchange<F> {
        #[pin]
        inner: crate::timer::Timeout<F>,
    }
}

impl<F> std::future::Future for TimedExchange<F>
where
    F: std::future::Future<Output = Result<Response<Body>, UpstreamError>>,
{
    type Output = Result<Response<Body>, UpstreamError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project()
            .inner
            .poll(cx)
            .map(|r| r.unwrap_or(Err(UpstreamError::Timeout)))
    }
}

/// Why an exchange failed; the `kind` label of `authgate_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    Connect,
    Reset,
    Timeout,
}

impl UpstreamError {
    pub fn kind(self) -> &'static str {
        match self {
            UpstreamError::Connect => "connect",
            UpstreamError::Reset => "reset",
            UpstreamError::Timeout => "timeout",
        }
    }

    pub fn rejection(self) -> Rejection {
        match self {
            UpstreamError::Connect | UpstreamError::Reset => Rejection::UpstreamUnavailable,
            UpstreamError::Timeout => Rejection::UpstreamTimeout,
        }
    }
}

/// A pooled client bound to one upstream base URL.
pub struct UpstreamClient {
    pub name: String,
    scheme: Scheme,
    authority: Authority,
    /// Path prefix of the upstream URL, without a trailing slash.
    base_path: String,
    connector: HttpsConnector<HttpConnector>,
    pool: Arc<Pool>,
}

/// Idle connections to one origin.
struct Pool {
    /// One LIFO per per-core worker: a worker reuses only the upstream
    /// connections whose tasks run on its own runtime, so no request wakes
    /// another thread.
    idle: PerWorker<Vec<SendRequest<Body>>>,
    max_idle: usize,
}

impl Pool {
    fn new(max_idle: usize) -> Arc<Pool> {
        Arc::new(Pool {
            idle: PerWorker::new(),
            max_idle,
        })
    }

    fn checkout(&self) -> Option<SendRequest<Body>> {
        let mut idle = self.idle.lock();
        while let Some(s) = idle.pop() {
            if s.is_ready() {
                return Some(s);
            }
        }
        None
    }

    fn put(&self, sender: SendRequest<Body>) {
        let mut idle = self.idle.lock();
        if idle.len() < self.max_idle {
            idle.push(sender);
        }
    }

    /// Returns a connection whose response just ended.
    fn release(self: &Arc<Self>, mut sender: SendRequest<Body>) {
        if sender.is_ready() {
            self.put(sender);
        } else if !sender.is_closed() {
            // The connection task has not caught up with the end of the body
            // yet; wait for it off the request path.
            let pool = self.clone();
            tokio::spawn(async move {
                if sender.ready().await.is_ok() {
                    pool.put(sender);
                }
            });
        }
    }
}

/// A response body that hands its connection back to the pool when it ends.
pub struct PooledBody {
    inner: Incoming,
    sender: Option<SendRequest<Body>>,
    pool: Arc<Pool>,
}

impl PooledBody {
    fn finish(&mut self) {
        if let Some(s) = self.sender.take() {
            self.pool.release(s);
        }
    }
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.finish(),
            // An error leaves the connection unusable: drop it.
            Poll::Ready(Some(Err(_))) => this.sender = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // An empty body (204, HEAD, Content-Length: 0) may never be polled.
        if http_body::Body::is_end_stream(&self.inner) {
            self.finish();
        }
    }
}

impl UpstreamClient {
    /// The client for an `[upstreams.NAME]` entry.
    pub fn new(
        name: &str,
        upstream: &Upstream,
        config: &Config,
        max_idle: usize,
    ) -> Result<UpstreamClient, String> {
        let uri: Uri = upstream
            .url
            .parse()
            .map_err(|_| format!("`{}` is not a URL", upstream.url))?;
        let ca = upstream.ca.as_ref().map(|p| config.resolve(p));
        let connector = build_connector(
            ca.as_deref(),
            upstream.connect_timeout.unwrap_or(Duration::from_secs(2)),
        )?;
        let scheme = uri.scheme().cloned().unwrap_or(Scheme::HTTP);
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("`{}` has no host", upstream.url))?;
        Ok(UpstreamClient {
            name: name.to_owned(),
            scheme,
            authority,
            base_path: uri.path().trim_end_matches('/').to_owned(),
            connector,
            pool: Pool::new(max_idle.clamp(1, 4096)),
        })
    }

    /// A client for JWKS and introspection fetches ([`UpstreamClient::send`]):
    /// each request's URI is absolute and names its own origin.
    pub fn fetcher(ca: Option<&Path>) -> Result<UpstreamClient, String> {
        Ok(UpstreamClient {
            name: "fetch".into(),
            scheme: Scheme::HTTP,
            authority: Authority::from_static("localhost"),
            base_path: String::new(),
            connector: build_connector(ca, Duration::from_secs(5))?,
            pool: Pool::new(0),
        })
    }

    /// Whether [`UpstreamClient::uri_for`] leaves a path as it is (the
    /// upstream URL has no path prefix).
    pub fn forwards_path_as_is(&self) -> bool {
        self.base_path.is_empty()
    }

    /// The upstream URI (origin-form) for a normalized path and the
    /// (possibly rewritten) query.
    pub fn uri_for(&self, path: &str, query: Option<&str>) -> Result<Uri, Rejection> {
        let mut pq = String::with_capacity(
            self.base_path.len() + path.len() + 1 + query.map_or(0, str::len),
        );
        pq.push_str(&self.base_path);
        pq.push_str(path);
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        let pq = PathAndQuery::try_from(pq).map_err(|_| Rejection::BadRequest)?;
        Ok(Uri::from(pq))
    }

    /// Forwards `request` (origin-form URI) to this client's upstream,
    /// waiting for the response head until `deadline` at most. The response
    /// body returns the connection to the pool when it ends.
    ///
    /// Not an `async fn`, and neither is [`UpstreamClient::exchange`]: an
    /// `async fn` keeps its arguments twice in its state (as passed, and
    /// moved into the body's locals) and copies them from one to the other
    /// when it starts — a 240-byte request, at each level. This returns
    /// the exchange inside its timeout directly.
    pub fn forward(
        &self,
        request: Request<Body>,
        deadline: Instant,
    ) -> impl std::future::Future<Output = Result<Response<Body>, UpstreamError>> + Send + '_ {
        TimedExchange {
            inner: crate::timer::timeout_at(deadline, self.exchange(request)),
        }
    }

    /// A one-off request to the origin its absolute URI names (JWKS,
    /// introspection), on a fresh connection; at most `timeout` for the head.
    pub async fn send(
        &self,
        mut request: Request<Body>,
        timeout: Duration,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let uri = request.uri().clone();
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(UpstreamError::Connect);
        };
        let origin = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|_| UpstreamError::Connect)?;
        if !request.headers().contains_key(http::header::HOST) {
            if let Ok(h) = http::HeaderValue::from_str(authority.as_str()) {
                request.headers_mut().insert(http::header::HOST, h);
            }
        }
        *request.uri_mut() = Uri::from(
            uri.path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        let exchange = async {
            let mut sender = self.connect(Some(&origin)).await?;
            sender
                .try_send_request(request)
                .await
                .map_err(|_| UpstreamError::Reset)
        };
        match tokio::time::timeout(timeout, exchange).await {
            Err(_) => Err(UpstreamError::Timeout),
            Ok(r) => r,
        }
    }

    /// One exchange on a pooled connection, retried once on a fresh one
    /// when the pooled one turns out closed. Not an `async fn`: see
    /// [`UpstreamClient::forward`].
    #[allow(clippy::manual_async_fn)]
    fn exchange(
        &self,
        mut request: Request<Body>,
    ) -> impl std::future::Future<Output = Result<Response<Body>, UpstreamError>> + Send + '_ {
        // The block uses the request it captured in place (see `forward`).
        async move {
            for attempt in 0..2 {
                let (mut sender, reused) = match self.pool.checkout() {
                    Some(s) => (s, true),
                    None => (self.connect(None).await?, false),
                };
                match sender.try_send_request(request).await {
                    Ok(response) => {
                        if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                            // The connection now belongs to the upgrade.
                            return Ok(response.map(box_incoming));
                        }
                        let pool = self.pool.clone();
                        return Ok(response.map(|inner| {
                            PooledBody {
                                inner,
                                sender: Some(sender),
                                pool,
                            }
                            .map_err(|e| Box::new(e) as BoxError)
                            .boxed()
                        }));
                    }
                    Err(mut e) => match e.take_message() {
                        // Not written: a pooled connection closed under us.
                        Some(r) if reused && attempt == 0 => request = r,
                        _ => return Err(UpstreamError::Reset),
                    },
                }
            }
            Err(UpstreamError::Reset)
        }
    }

    async fn connect(&self, origin: Option<&Uri>) -> Result<SendRequest<Body>, UpstreamError> {
        let target = match origin {
            Some(o) => o.clone(),
            None => Uri::builder()
                .scheme(self.scheme.clone())
                .authority(self.authority.clone())
                .path_and_query("/")
                .build()
                .map_err(|_| UpstreamError::Connect)?,
        };
        let io = connect_io(&self.connector, target)
            .await
            .map_err(|()| UpstreamError::Connect)?;
        handshake(io).await.map_err(|()| UpstreamError::Connect)
    }
}

fn build_connector(
    ca: Option<&Path>,
    connect_timeout: Duration,
) -> Result<HttpsConnector<HttpConnector>, String> {
    let mut roots =
        rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("cannot read CA file `{}`: {e}", path.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("CA file `{}`: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("CA file `{}` holds no certificate", path.display()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("CA file `{}`: {e}", path.display()))?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http))
}
