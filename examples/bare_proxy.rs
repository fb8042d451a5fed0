//! The floor under authgate's proxy cost: hyper's HTTP/1 server and client
//! on one current-thread runtime with a LIFO pool of upstream connections —
//! the same building blocks and runtime shape as authgate, and nothing else:
//! no routing, no header rules, no timeouts, no metrics, no logs.
//!
//! NOT a gateway. It exists so `bench/instructions.sh` (and anyone with
//! wrk) can measure how much of authgate's per-request cost is hyper and
//! tokio, and how much is authgate's own work.
//!
//!     cargo run --release --example bare_proxy -- 127.0.0.1:8081 127.0.0.1:8080

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = BoxBody<Bytes, BoxError>;
type Pool = Arc<Mutex<Vec<SendRequest<Body>>>>;

fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        return Err("usage: bare_proxy LISTEN_ADDR UPSTREAM_ADDR".into());
    };
    let listen: SocketAddr = listen.parse()?;
    let upstream: SocketAddr = upstream.parse()?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(listen, upstream))
}

async fn serve(listen: SocketAddr, upstream: SocketAddr) -> Result<(), BoxError> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let pool: Pool = Arc::default();
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let pool = pool.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req| forward(req, pool.clone(), upstream));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn forward(
    req: Request<Incoming>,
    pool: Pool,
    upstream: SocketAddr,
) -> Result<Response<Body>, BoxError> {
    let idle = {
        let mut idle = pool.lock().map_err(|_| "pool lock poisoned")?;
        std::iter::from_fn(|| idle.pop()).find(SendRequest::is_ready)
    };
    let mut sender = match idle {
        Some(s) => s,
        None => match connect(upstream).await {
            Ok(s) => s,
            Err(_) => return Ok(bad_gateway()),
        },
    };
    let (parts, body) = req.into_parts();
    let req = Request::from_parts(parts, body.map_err(BoxError::from).boxed());
    let response = sender.send_request(req).await;
    // Back on the stack; `is_ready` at checkout skips it while the response
    // body is still streaming.
    if let Ok(mut idle) = pool.lock() {
        idle.push(sender);
    }
    match response {
        Ok(r) => Ok(r.map(|b| b.map_err(BoxError::from).boxed())),
        Err(_) => Ok(bad_gateway()),
    }
}

async fn connect(upstream: SocketAddr) -> Result<SendRequest<Body>, BoxError> {
    let stream = tokio::net::TcpStream::connect(upstream).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

fn bad_gateway() -> Response<Body> {
    let mut r = Response::new(Empty::new().map_err(BoxError::from).boxed());
    *r.status_mut() = StatusCode::BAD_GATEWAY;
    r
}
