//! Listeners: the accept loop (connection cap, TLS with ALPN, HTTP/1.1 and
//! HTTP/2 by the same builder), the admin listener, signals (SIGHUP reload,
//! SIGTERM/SIGINT drain) and graceful shutdown.
//!
//! hyper's `header_read_timeout` only works with a timer installed, so every
//! builder gets `TokioTimer`; without it slow request heads would be held
//! forever.

mod tls;

use crate::config::Config;
use crate::pipeline::{self, ConnInfo, Shared};
use crate::runtime::Runtime;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};

/// A gateway whose listeners are bound, ready to serve.
pub struct Gateway {
    pub shared: Arc<Shared>,
    listener: TcpListener,
    admin: Option<TcpListener>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Gateway {
    /// Builds the runtime from `config` and binds its listeners.
    pub async fn bind(config: Config) -> Result<Gateway, String> {
        let tls = match &config.listen.tls {
            Some(t) => Some(tls::acceptor(&config, t)?),
            None => None,
        };
        let listen = config.listen.addr;
        let admin_addr = config.admin.as_ref().map(|a| a.addr);
        let runtime = Runtime::build(config).map_err(|errors| {
            errors
                .iter()
                .map(|e| format!("{}: {}", e.key, e.message))
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        let admin = match admin_addr {
            Some(a) => Some(
                TcpListener::bind(a)
                    .await
                    .map_err(|e| format!("cannot listen on admin {a}: {e}"))?,
            ),
            None => None,
        };
        let shared = Arc::new(Shared::new(runtime));
        crate::keys::refresh::start(&shared);
        Ok(Gateway {
            shared,
            listener,
            admin,
            tls,
        })
    }

    /// The address the gateway listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The admin listener's address, if configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` completes, then drains: stops accepting,
    /// lets in-flight requests finish within `shutdown_grace`.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let Gateway {
            shared,
            listener,
            admin,
            tls,
        } = self;
        let admin_task = admin.map(|l| tokio::spawn(serve_admin(l, shared.clone())));
        let limits = shared.runtime.load().config.limits.clone();
        let builder = Arc::new(http_builder(&limits));
        let permits = Arc::new(Semaphore::new(limits.max_connections));
        let graceful = GracefulShutdown::new();
        let tls = tls.map(Arc::new);
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                () = &mut shutdown => break,
            };
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        // EMFILE and friends: back off instead of spinning.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let shared = shared.clone();
            let builder = builder.clone();
            let watcher = graceful.watcher();
            let tls = tls.clone();
            let handshake_timeout = limits.header_read_timeout;
            tokio::spawn(async move {
                // The connection slot lives as long as the connection — and,
                // after an upgrade, as long as its WebSocket tunnel.
                let slot = Arc::new(permit);
                shared.metrics.open_connections.inc();
                serve_connection(
                    stream,
                    peer,
                    slot,
                    shared.clone(),
                    builder,
                    watcher,
                    tls,
                    handshake_timeout,
                )
                .await;
                shared.metrics.open_connections.dec();
            });
        }
        shared.draining.store(true, Ordering::SeqCst);
        drop(listener);
        tracing::info!("draining: no longer accepting connections");
        let grace = shared.runtime.load().config.limits.shutdown_grace;
        if tokio::time::timeout(grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("shutdown_grace elapsed with requests still in flight");
        }
        if let Some(t) = admin_task {
            t.abort();
        }
    }
}

fn http_builder(limits: &crate::config::Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // hyper's own cap is a backstop; the exact limit and the JSON 431
        // come from the pipeline.
        .max_buf_size((limits.max_header_bytes * 2).max(16 * 1024))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(u32::try_from(limits.max_header_bytes * 2).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(64)
        .max_local_error_reset_streams(256)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

#[allow(clippy::too_many_arguments)]
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    slot: Arc<tokio::sync::OwnedSemaphorePermit>,
    shared: Arc<Shared>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: hyper_util::server::graceful::Watcher,
    tls: Option<Arc<tokio_rustls::TlsAcceptor>>,
    handshake_timeout: Duration,
) {
    let https = tls.is_some();
    let conn = ConnInfo {
        peer,
        https,
        slot: Some(slot),
    };
    let first_request = Arc::new(Notify::new());
    let seen = first_request.clone();
    let service = service_fn(move |req| {
        seen.notify_one();
        pipeline::handle(shared.clone(), conn.clone(), req)
    });
    match tls {
        None => {
            let c = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            let c = watcher.watch(c.into_owned());
            first_request_within(c, &first_request, handshake_timeout).await;
        }
        Some(acceptor) => {
            let stream =
                match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!("TLS handshake timed out");
                        return;
                    }
                };
            let c = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            let c = watcher.watch(c.into_owned());
            first_request_within(c, &first_request, handshake_timeout).await;
        }
    }
}

/// Drives `connection`, dropping it (which closes the socket) if no request
/// head has been read within `limit` of the connection's start.
///
/// hyper's `header_read_timeout` only runs once the HTTP/1 parser is
/// reading; before that, the auto builder waits without a deadline for the
/// bytes that tell HTTP/1 from the HTTP/2 preface, and HTTP/2 has no head
/// timeout at all. Without this, a client that connects and sends nothing
/// (or a partial preface, or just the preface) holds one of
/// `max_connections` forever: a slowloris that needs no bytes.
async fn first_request_within<C>(connection: C, first_request: &Notify, limit: Duration)
where
    C: Future,
{
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        _ = &mut connection => return,
        () = first_request.notified() => {}
        () = tokio::time::sleep(limit) => {
            tracing::debug!("no request within header_read_timeout; closing the connection");
            return;
        }
    }
    let _ = connection.await;
}

async fn serve_admin(listener: TcpListener, shared: Arc<Shared>) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Slow heads are dropped here too (the timer makes the timeout real).
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.runtime.load().config.limits.header_read_timeout);
    let builder = Arc::new(builder);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let shared = shared.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let r = crate::admin::handle(&shared, &req);
                async move { Ok::<_, std::convert::Infallible>(r) }
            });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Re-reads the configuration file and swaps the runtime in whole; an
/// invalid file leaves the running configuration untouched.
pub fn reload(shared: &Arc<Shared>, path: &Path) -> Result<(), String> {
    // Same loading and messages as `authgate check`.
    let result = crate::cli::load_and_build(path).map_err(|e| e.to_string());
    match result {
        Ok(rt) => {
            let old = shared.runtime.load();
            warn_start_only_changes(&old.config, &rt.config);
            rt.inherit_keys(&old);
            shared.runtime.store(Arc::new(rt));
            crate::keys::refresh::start(shared);
            shared
                .metrics
                .reloads
                .get_or_create(&crate::admin::metrics::ResultLabels { result: "success" })
                .inc();
            tracing::info!(file = %path.display(), "configuration reloaded");
            Ok(())
        }
        Err(message) => {
            shared
                .metrics
                .reloads
                .get_or_create(&crate::admin::metrics::ResultLabels { result: "failure" })
                .inc();
            tracing::error!(file = %path.display(), problems = %message, "reload refused; keeping the running configuration");
            Err(message)
        }
    }
}

/// Listener settings are read at start only; say so when a reload changes them.
fn warn_start_only_changes(old: &Config, new: &Config) {
    let listener = |c: &Config| {
        (
            c.listen.addr,
            c.listen
                .tls
                .as_ref()
                .map(|t| (t.cert.clone(), t.key.clone(), t.client_ca.clone())),
            c.listen.client_ca.clone(),
            c.admin.as_ref().map(|a| a.addr),
            c.limits.max_connections,
            c.limits.header_read_timeout,
            c.limits.max_header_bytes,
            c.limits.shutdown_grace,
            c.log.format,
        )
    };
    if listener(old) != listener(new) {
        tracing::warn!(
            "reload: [listen], [admin], [log] format and the listener's [limits] (max_connections, header_read_timeout, max_header_bytes for hyper's buffer, shutdown_grace) apply at the next restart; routes, issuers, upstreams, identity and the other limits are live"
        );
    }
}

/// `authgate run`: load, bind, serve until SIGTERM/SIGINT; SIGHUP reloads.
pub async fn run(path: PathBuf) -> Result<(), String> {
    let config = Config::load(&path).map_err(|e| e.to_string())?;
    crate::telemetry::init(&config.log);
    let gateway = Gateway::bind(config).await?;
    tracing::info!(
        listen = %gateway.local_addr(),
        admin = %gateway.admin_addr().map_or_else(|| "none".to_owned(), |a| a.to_string()),
        "authgate serving"
    );
    let shared = gateway.shared.clone();
    let reload_path = path.clone();
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            let _ = reload(&shared, &reload_path);
        }
    });
    gateway.serve(shutdown_signal()).await;
    tracing::info!("authgate stopped");
    Ok(())
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received");
}
