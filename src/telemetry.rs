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

/// The customer id as it may be logged: only the opaque pseudonym form
/// (`cid_` + 43 base64url characters). With `pseudonymize = false` the
/// forwarded id *is* the raw subject, which must never reach a log line, so
/// it is left out (`customer_id_withheld = true` says so). A raw subject
/// that happens to have exactly the pseudonym's shape is indistinguishable
/// here; it is opaque-looking by construction.
pub fn loggable_customer_id(id: &str) -> Option<&str> {
    let tail = id.strip_prefix("cid_")?;
    (tail.len() == 43
        && tail
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    .then_some(id)
}

/// Whether [`access_log`] writes lines: what only the log needs (the
/// upstream's time) is not measured otherwise.
pub fn access_log_enabled() -> bool {
    tracing::enabled!(target: "authgate::access", tracing::Level::INFO)
}

/// Writes the access-log line (target `authgate::access`, level INFO).
pub fn access_log(l: &AccessLine<'_>) {
    // Checked first: the customer-id check below runs on every request
    // otherwise, logged or not.
    if !access_log_enabled() {
        return;
    }
    let customer_id = l.customer_id.and_then(loggable_customer_id);
    let withheld = l.customer_id.is_some() && customer_id.is_none();
    tracing::info!(
        target: "authgate::access",
        request_id = l.request_id,
        route = l.route,
        method = l.method,
        status = l.status,
        auth = l.auth,
        error = l.error,
        reason = l.reason,
        customer_id = customer_id,
        customer_id_withheld = withheld.then_some(true),
        upstream_ms = l.upstream_ms,
        latency_ms = l.latency_ms,
        pii_redacted = l.pii_redacted,
        "request"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pseudonyms_are_logged() {
        let cid = "cid_oMlxuXNY2RfciWv-Um_7Tis7ljD94R_HDM4aGK4jlCY";
        assert_eq!(loggable_customer_id(cid), Some(cid));
        for raw in [
            "alice@example.com",
            "cid_short",
            "cid_oMlxuXNY2RfciWv-Um_7Tis7ljD94R_HDM4aGK4jlC@",
            "",
        ] {
            assert_eq!(loggable_customer_id(raw), None, "{raw}");
        }
    }
}
