//! The admin listener: `/healthz` (200 while the process serves), `/readyz`
//! (200 once configured, every issuer has keys, and not draining),
//! `/metrics` (Prometheus text) and `/.well-known/jwks.json` (the public key
//! of the identity assertion, or an empty set).

pub mod metrics;

use crate::pipeline::forward::{full, Body};
use crate::pipeline::Shared;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Answers one admin request.
pub fn handle<B>(shared: &Arc<Shared>, req: &Request<B>) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n".into(),
        );
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            let rt = shared.runtime.load();
            if shared.draining.load(Ordering::SeqCst) {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "draining\n".into(),
                )
            } else if !rt.keys_ready() {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "waiting for issuer keys\n".into(),
                )
            } else {
                text(StatusCode::OK, "text/plain", "ready\n".into())
            }
        }
        "/metrics" => text(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            shared.metrics.encode(),
        ),
        "/.well-known/jwks.json" => {
            let rt = shared.runtime.load();
            text(StatusCode::OK, "application/json", rt.assertion_jwks())
        }
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}
