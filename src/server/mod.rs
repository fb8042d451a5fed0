//! Workers and listeners: one accept loop per worker (a current-thread
//! runtime each, its own `SO_REUSEPORT` listener; see [`set_per_core`]), the
//! shared connection cap, TLS with ALPN, HTTP/1.1 or HTTP/2 per connection,
//! the admin listener, signals (SIGHUP reload, SIGTERM/SIGINT drain) and
//! graceful shutdown across all workers.
//!
//! hyper's `header_read_timeout` only works with a timer installed, so every
//! builder gets [`HyperTimer`] (the coarse deadlines of [`crate::timer`]);
//! without one, slow request heads would be held forever.

pub(crate) mod gather;
mod send_timeout;
mod tls;

use crate::config::Config;
use crate::pipeline::{self, ConnInfo, Shared};
use crate::runtime::Runtime;
use crate::timer::{HyperTimer, Signal};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use send_timeout::SendTimeout;
use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};

/// A gateway whose listeners are bound, ready to serve.
pub struct Gateway {
    pub shared: Arc<Shared>,
    listener: TcpListener,
    /// Per-core mode: one more listener on the same port (`SO_REUSEPORT`)
    /// for each extra worker, handed to that worker's runtime.
    extra: Vec<std::net::TcpListener>,
    admin: Option<TcpListener>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Accept loops, each on its own current-thread runtime (see
/// [`set_per_core`]); 1 unless per-core mode is on.
static PER_CORE: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    /// Which per-core worker this thread is (0: the main runtime's thread).
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Per-core mode (the binary's default; `AUTHGATE_RUNTIME=multi-thread`
/// turns it off): `n` accept loops, each with its own `SO_REUSEPORT`
/// listener on one current-thread runtime, so a connection, its requests
/// and its upstream connections stay on one thread: no work-stealing and no
/// cross-thread wake-ups. The kernel spreads new connections over the
/// listeners. Set before [`Gateway::bind`]; the caller runs the gateway on
/// a current-thread runtime, which becomes worker 0.
pub fn set_per_core(n: usize) {
    PER_CORE.store(n.max(1), Ordering::Relaxed);
}

/// The number of per-core workers (1 when per-core mode is off).
pub fn per_core() -> usize {
    PER_CORE.load(Ordering::Relaxed)
}

/// The per-core worker running on this thread (0 outside per-core mode).
fn worker_index() -> usize {
    WORKER.with(Cell::get)
}

/// One `Mutex<T>` per per-core worker (one in all outside per-core mode):
/// each worker locks only its own, so the lock is never contended and the
/// value stays with the thread that uses it.
pub(crate) struct PerWorker<T>(Box<[std::sync::Mutex<T>]>);

impl<T: Default> PerWorker<T> {
    /// One value per worker; call after [`set_per_core`].
    pub(crate) fn new() -> PerWorker<T> {
        PerWorker((0..per_core()).map(|_| Default::default()).collect())
    }
}

impl<T> PerWorker<T> {
    /// This worker's value. A poisoned lock is taken anyway: what these
    /// hold (idle connections, metric handles) stays valid.
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, T> {
        self.0[worker_index() % self.0.len()]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A listening socket with `SO_REUSEPORT`, so that each per-core worker can
/// have its own on the same port. Linux only shares the port between
/// sockets of the same effective user.
fn bind_reuseport(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
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
        let workers = per_core();
        let cannot = |e: std::io::Error| format!("cannot listen on {listen}: {e}");
        let listener = if workers > 1 {
            if listen.port() != 0 {
                // SO_REUSEPORT would let this instance share a port that
                // another instance of the same user already serves. A plain
                // bind first keeps "address in use" an error, as without it.
                drop(std::net::TcpListener::bind(listen).map_err(cannot)?);
            }
            bind_reuseport(listen).map_err(cannot)?
        } else {
            TcpListener::bind(listen).await.map_err(cannot)?
        };
        let mut extra = Vec::new();
        if workers > 1 {
            // Port 0 resolved once: every worker listens on the same port.
            let bound = listener.local_addr().map_err(cannot)?;
            for _ in 1..workers {
                let l = bind_reuseport(bound).map_err(cannot)?;
                extra.push(l.into_std().map_err(cannot)?);
            }
        }
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
            extra,
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
            extra,
            admin,
            tls,
        } = self;
        let admin_task = admin.map(|l| tokio::spawn(serve_admin(l, shared.clone())));
        let limits = shared.runtime.load().config.limits.clone();
        let accept = Accept {
            shared: shared.clone(),
            http: Arc::new(Http::new(&limits)),
            // One connection cap for all workers.
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            tls: tls.map(Arc::new),
        };
        // Graceful shutdown: every connection holds a receiver, and
        // `closed()` resolves when the last one is gone; the signal asks
        // them to finish (fired on drop too: a gateway that is dropped
        // instead of drained lets its connections finish).
        let (drain_tx, drain_members) = watch::channel(false);
        let signal = FireOnDrop(Arc::new(Signal::default()));
        let drain_rx = Drain {
            _member: drain_members,
            signal: signal.0.clone(),
        };
        // Per-core workers: `stop` ends their accept loops, `done` (after the
        // drain) their runtimes.
        let (stop_tx, stop_rx) = watch::channel(false);
        let (done_tx, done_rx) = watch::channel(false);
        for (i, listener) in extra.into_iter().enumerate() {
            let worker = Worker {
                index: i + 1,
                listener,
                accept: accept.clone(),
                drain: drain_rx.clone(),
                stop: stop_rx.clone(),
                done: done_rx.clone(),
            };
            if let Err(e) = std::thread::Builder::new()
                .name(format!("authgate-worker-{}", i + 1))
                .spawn(move || worker.run())
            {
                tracing::error!(error = %e, "cannot start a per-core worker thread");
            }
        }
        accept.run(listener, drain_rx, shutdown).await;
        shared.draining.store(true, Ordering::SeqCst);
        let _ = stop_tx.send(true);
        tracing::info!("draining: no longer accepting connections");
        let grace = shared.runtime.load().config.limits.shutdown_grace;
        signal.0.fire();
        if tokio::time::timeout(grace, drain_tx.closed())
            .await
            .is_err()
        {
            tracing::warn!("shutdown_grace elapsed with requests still in flight");
        }
        let _ = done_tx.send(true);
        if let Some(t) = admin_task {
            t.abort();
        }
    }
}

/// A connection's part in the graceful drain: while any `_member` lives
/// the gateway waits (up to `shutdown_grace`); `signal` asks it to finish.
#[derive(Clone)]
struct Drain {
    _member: watch::Receiver<bool>,
    signal: Arc<Signal>,
}

/// Fires the drain signal when the gateway's serve future ends or is dropped.
struct FireOnDrop(Arc<Signal>);

impl Drop for FireOnDrop {
    fn drop(&mut self) {
        self.0.fire();
    }
}

/// A per-core worker beyond the first: its own thread, current-thread
/// runtime and `SO_REUSEPORT` listener.
struct Worker {
    index: usize,
    listener: std::net::TcpListener,
    accept: Accept,
    drain: Drain,
    /// Ends the accept loop (the gateway is draining).
    stop: watch::Receiver<bool>,
    /// Ends the runtime, and with it this worker's connections (the drain
    /// is over or `shutdown_grace` ran out).
    done: watch::Receiver<bool>,
}

impl Worker {
    fn run(self) {
        let Worker {
            index,
            listener,
            accept,
            drain,
            mut stop,
            mut done,
        } = self;
        WORKER.set(index);
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot start a per-core worker");
                return;
            }
        };
        runtime.block_on(async move {
            match TcpListener::from_std(listener) {
                Ok(l) => {
                    let stopped = async {
                        let _ = stop.wait_for(|s| *s).await;
                    };
                    accept.run(l, drain, stopped).await;
                }
                Err(e) => {
                    // The drain must not wait for a worker that never served.
                    drop(drain);
                    tracing::error!(error = %e, "per-core worker listener");
                }
            }
            let _ = done.wait_for(|d| *d).await;
        });
    }
}

/// What an accept loop needs; one per worker, sharing the gateway's state.
#[derive(Clone)]
struct Accept {
    shared: Arc<Shared>,
    http: Arc<Http>,
    permits: Arc<Semaphore>,
    tls: Option<Arc<tokio_rustls::TlsAcceptor>>,
}

impl Accept {
    /// Accepts connections on `listener` until `shutdown`, each served on
    /// its own task of the current runtime, each holding a `drain` receiver.
    async fn run(&self, listener: TcpListener, drain: Drain, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                p = self.permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
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
            let shared = self.shared.clone();
            let http = self.http.clone();
            let drain = drain.clone();
            let tls = self.tls.clone();
            tokio::spawn(async move {
                // The connection slot lives as long as the connection — and,
                // after an upgrade, as long as its WebSocket tunnel.
                let slot = Arc::new(permit);
                shared.metrics.open_connections.inc();
                serve_connection(stream, peer, slot, shared.clone(), http, drain, tls).await;
                shared.metrics.open_connections.dec();
            });
        }
        // Dropping the listener here closes this worker's socket at once.
    }
}

/// The HTTP/1.1 and HTTP/2 connection builders, configured once.
///
/// Each connection is handed to exactly one of them: over TLS by ALPN, in
/// cleartext by peeking at its first bytes (the HTTP/2 prior-knowledge
/// preface or not). Peeking rather than reading keeps hyper's HTTP/1 read
/// buffer at its initial 8 KiB: a version sniffer that consumes the first
/// bytes and replays them makes hyper's first real read find 24 bytes
/// already buffered and double the buffer to 16 KiB, for the whole life of
/// every keep-alive connection.
struct Http {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    /// Deadline for the TLS handshake and the first request head.
    first_request: Duration,
    /// How long a write to the client may make no progress.
    send_timeout: Duration,
}

impl Http {
    fn new(limits: &crate::config::Limits) -> Http {
        let mut h1 = http1::Builder::new();
        h1.timer(HyperTimer)
            .header_read_timeout(limits.header_read_timeout)
            // hyper's own cap is a backstop; the exact limit and the JSON 431
            // come from the pipeline.
            .max_buf_size((limits.max_header_bytes * 2).max(16 * 1024))
            .keep_alive(true);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(HyperTimer)
            .max_concurrent_streams(256)
            .max_header_list_size(u32::try_from(limits.max_header_bytes * 2).unwrap_or(u32::MAX))
            .max_pending_accept_reset_streams(64)
            .max_local_error_reset_streams(256)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20));
        Http {
            h1,
            h2,
            first_request: limits.header_read_timeout,
            send_timeout: limits.send_timeout,
        }
    }
}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a cleartext connection speaks HTTP/2 with prior knowledge, from
/// its first bytes, without consuming them. `None`: the peer closed or
/// failed before sending enough to tell.
///
/// Three bytes decide: `PRI` starts only the HTTP/2 preface (RFC 9113 §3.4
/// reserves the method), anything else is HTTP/1 — and hyper's HTTP/2
/// server then checks the rest of the preface itself, within the caller's
/// deadline. Only "P" or "PR" alone leave the question open (POST, PUT,
/// PATCH, PROPFIND, …); those are peeked again with a growing pause, so a
/// peer that stops there costs a handful of wake-ups until the deadline.
async fn sniff_h2(stream: &TcpStream) -> Option<bool> {
    const DECIDES: usize = 3;
    let mut buf = [0u8; DECIDES];
    let mut pause = Duration::from_millis(2);
    loop {
        // `peek` waits until there is something to see.
        let n = match stream.peek(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => n,
        };
        if buf[..n] != H2_PREFACE[..n] {
            return Some(false);
        }
        if n == DECIDES {
            return Some(true);
        }
        // Peeking again at once would spin on the same bytes.
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    slot: Arc<tokio::sync::OwnedSemaphorePermit>,
    shared: Arc<Shared>,
    http: Arc<Http>,
    drain: Drain,
    tls: Option<Arc<tokio_rustls::TlsAcceptor>>,
) {
    let deadline = crate::timer::deadline_in(http.first_request);
    let conn = ConnInfo {
        peer,
        peer_element: crate::pipeline::inject::peer_element(peer.ip()),
        https: tls.is_some(),
        slot: Some(slot),
    };
    let first_request = Notify::new();
    let seen = &first_request;
    let service = move |req| {
        seen.notify_one();
        pipeline::handle(shared.clone(), conn.clone(), req)
    };
    match tls {
        None => match crate::timer::timeout_at(deadline, sniff_h2(&stream)).await {
            Ok(Some(h2)) => {
                let stream = SendTimeout::new(stream, http.send_timeout);
                serve_io(&http, stream, h2, service, &first_request, deadline, drain).await
            }
            Ok(None) => {}
            Err(_) => {
                tracing::debug!("no request within header_read_timeout; closing the connection")
            }
        },
        Some(acceptor) => {
            let stream = SendTimeout::new(stream, http.send_timeout);
            if let Some(stream) = tls_handshake(&acceptor, stream, deadline).await {
                let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                serve_io(&http, stream, h2, service, &first_request, deadline, drain).await;
            }
        }
    }
}

/// Serves `io` as HTTP/2 or HTTP/1 (with upgrades) until it ends.
///
/// The connection is boxed, and built in one expression (a named local
/// would keep its slot in this future's frame even once moved): the
/// connection task then holds a pointer, not room for the largest protocol.
async fn serve_io<I, F, Fut, B>(
    http: &Http,
    io: I,
    h2: bool,
    handle: F,
    first_request: &Notify,
    deadline: std::time::Instant,
    drain: Drain,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Fn(hyper::Request<hyper::body::Incoming>) -> Fut,
    Fut: std::future::Future<Output = Result<hyper::Response<B>, std::convert::Infallible>>
        + Send
        + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if h2 {
        // Each HTTP/2 stream is a task of its own, and spawning one moves
        // its future several times (into the task cell, into its stage):
        // boxed, that future is a pointer instead of the request's state.
        let service = service_fn(move |req| Box::pin(handle(req)));
        let c = Box::pin(http.h2.serve_connection(TokioIo::new(io), service));
        drive(c, first_request, deadline, drain).await;
    } else {
        let c = Box::pin(
            http.h1
                .serve_connection(TokioIo::new(io), service_fn(handle))
                .with_upgrades(),
        );
        drive(c, first_request, deadline, drain).await;
    }
}

/// The TLS handshake, finished by `deadline`; the stream comes back boxed
/// (a rustls connection is large, and the caller's future would otherwise
/// reserve room for it for the connection's whole life).
async fn tls_handshake(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: SendTimeout<TcpStream>,
    deadline: std::time::Instant,
) -> Option<Box<tokio_rustls::server::TlsStream<SendTimeout<TcpStream>>>> {
    match crate::timer::timeout_at(deadline, Box::pin(acceptor.accept(stream))).await {
        Ok(Ok(s)) => Some(Box::new(s)),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            None
        }
    }
}

/// A served connection that can be asked to finish gracefully: HTTP/1
/// closes after the response in flight, HTTP/2 sends GOAWAY.
trait Graceful: Future {
    fn finish(self: Pin<&mut Self>);
}

impl<I, S, B> Graceful for http1::UpgradeableConnection<I, S>
where
    http1::UpgradeableConnection<I, S>: Future,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn finish(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, B> Graceful for http2::Connection<I, S, TokioExecutor>
where
    http2::Connection<I, S, TokioExecutor>: Future,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    TokioExecutor: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn finish(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Drives `connection` to its end, dropping it (which closes the socket)
/// if no request head has been read by `deadline`, and finishing it
/// gracefully when the gateway drains.
///
/// hyper's `header_read_timeout` only runs once the HTTP/1 parser is
/// reading; HTTP/2 has no head timeout at all. Without this, a client that
/// connects and sends nothing (or a partial preface, or just the preface)
/// holds one of `max_connections` forever: a slowloris that needs no bytes.
async fn drive<C: Graceful>(
    mut connection: Pin<Box<C>>,
    first_request: &Notify,
    deadline: std::time::Instant,
    drain: Drain,
) {
    // The member is held to the end: the gateway waits for every one to be
    // dropped before it exits. The wait is polled each time the connection
    // is woken, so it is the signal's cheap one, not a watch receiver's.
    let mut draining = drain.signal.wait();
    tokio::select! {
        _ = connection.as_mut() => return,
        () = first_request.notified() => {}
        () = &mut draining => {
            // Nothing was asked on this connection yet: just close it.
            return;
        }
        () = crate::timer::sleep_until(deadline) => {
            tracing::debug!("no request within header_read_timeout; closing the connection");
            return;
        }
    }
    tokio::select! {
        _ = connection.as_mut() => return,
        () = &mut draining => connection.as_mut().finish(),
    }
    let _ = connection.await;
}

async fn serve_admin(listener: TcpListener, shared: Arc<Shared>) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Slow heads are dropped here too (the timer makes the timeout real).
    builder
        .http1()
        .timer(HyperTimer)
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
            c.limits.send_timeout,
            c.limits.max_header_bytes,
            c.limits.shutdown_grace,
            c.log.format,
        )
    };
    if listener(old) != listener(new) {
        tracing::warn!(
            "reload: [listen], [admin], [log] format and the listener's [limits] (max_connections, header_read_timeout, send_timeout, max_header_bytes for hyper's buffer, shutdown_grace) apply at the next restart; routes, issuers, upstreams, identity and the other limits are live"
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
