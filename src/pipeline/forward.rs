//! Forward: the pooled upstream client and the exchange with a deadline.
//!
//! One hyper client per `[upstreams.NAME]` (HTTP/1.1; `https://` verified
//! against the webpki roots plus the upstream's optional `ca` file). The
//! request body streams from the client connection and the response body
//! streams back; neither is buffered here.

use crate::config::{Config, Upstream};
use crate::error::Rejection;
use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

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

/// A body of fixed bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    boxed(http_body_util::Full::new(bytes.into()))
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
    client: Client<HttpsConnector<HttpConnector>, Body>,
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
        let client = build_client(
            ca.as_deref(),
            upstream.connect_timeout.unwrap_or(Duration::from_secs(2)),
            max_idle.clamp(1, 4096),
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
            client,
        })
    }

    /// A client for JWKS and introspection fetches (absolute URIs).
    pub fn fetcher() -> Result<UpstreamClient, String> {
        Ok(UpstreamClient {
            name: "fetch".into(),
            scheme: Scheme::HTTP,
            authority: Authority::from_static("localhost"),
            base_path: String::new(),
            client: build_client(None, Duration::from_secs(5), 8)?,
        })
    }

    /// The upstream URI for a normalized path and the (possibly rewritten) query.
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
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|_| Rejection::BadRequest)
    }

    /// Sends `request`, waiting at most `timeout` for the response head.
    pub async fn send(
        &self,
        request: Request<Body>,
        timeout: Duration,
    ) -> Result<Response<Incoming>, UpstreamError> {
        match tokio::time::timeout(timeout, self.client.request(request)).await {
            Err(_) => Err(UpstreamError::Timeout),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) if e.is_connect() => Err(UpstreamError::Connect),
            Ok(Err(_)) => Err(UpstreamError::Reset),
        }
    }
}

fn build_client(
    ca: Option<&Path>,
    connect_timeout: Duration,
    max_idle: usize,
) -> Result<Client<HttpsConnector<HttpConnector>, Body>, String> {
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
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(max_idle)
        .build(connector))
}
