//! Logging: tracing-subscriber in JSON (default) or pretty form, and the
//! one access-log line per request. Only opaque data is logged: request id,
//! route name, method, status, auth outcome, error code, a fixed reason
//! string, the opaque customer id and latencies — never a token, cookie,
//! `Authorization` value, secret or raw subject.

use crate::config::{Log, LogFormat};
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; `RUST_LOG` overrides the configured level.
/// Safe to call more than once (later calls are ignored).
pub fn init(log: &Log) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    let _ = match log.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// The fields of one access-log line.
pub struct AccessLine<'a> {
    pub request_id: &'a str,
    pub route: &'a str,
    pub method: &'a str,
    pub status: u16,
    pub auth: &'static str,
    pub error: Option<&'static str>,
    pub reason: Option<&'static str>,
    pub customer_id: Option<&'a str>,
    pub upstream_ms: Option<f64>,
    pub latency_ms: f64,
    pub pii_redacted: usize,
}

/// Writes the access-log line (target `authgate::access`, level INFO).
pub fn access_log(l: &AccessLine<'_>) {
    tracing::info!(
        target: "authgate::access",
        request_id = l.request_id,
        route = l.route,
        method = l.method,
        status = l.status,
        auth = l.auth,
        error = l.error,
        reason = l.reason,
        customer_id = l.customer_id,
        upstream_ms = l.upstream_ms,
        latency_ms = l.latency_ms,
        pii_redacted = l.pii_redacted,
        "request"
    );
}
