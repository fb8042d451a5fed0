//! Metric families (Prometheus text via prometheus-client). Label values are
//! bounded: route names from the configuration, status codes, error codes,
//! issuer and upstream names — never paths or client data.

use crate::server::PerWorker;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// A shared label value (route names are `Arc<str>` in the runtime).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Name(pub Arc<str>);

impl EncodeLabelValue for Name {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&&*self.0, encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: Name,
    pub status: u16,
    pub auth: &'static str,
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JwksLabels {
    pub issuer: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: String,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.5, 14))
}

/// Every metric the gateway keeps. Lives across reloads.
pub struct Metrics {
    pub registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub jwks_refresh: Family<JwksLabels, Counter>,
    pub upstream_errors: Family<UpstreamLabels, Counter>,
    pub reloads: Family<ResultLabels, Counter>,
    pub open_connections: Gauge,
    /// Handles for recently seen request label sets, one list per worker.
    handles: PerWorker<Vec<RequestHandles>>,
}

/// The request counter and duration histogram of one label set: clones
/// that share the family's metric.
struct RequestHandles {
    route: Arc<str>,
    status: u16,
    auth: &'static str,
    error: &'static str,
    requests: Counter,
    duration: Histogram,
}

/// Label sets a worker keeps handles for; past this its list starts over
/// (routes × statuses × outcomes seen by one worker are usually far fewer).
const MAX_HANDLES: usize = 64;

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let duration: Family<RouteLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let cache_hits = Counter::default();
        let cache_misses = Counter::default();
        let jwks_refresh = Family::<JwksLabels, Counter>::default();
        let upstream_errors = Family::<UpstreamLabels, Counter>::default();
        let reloads = Family::<ResultLabels, Counter>::default();
        let open_connections = Gauge::default();
        registry.register(
            "authgate_requests",
            "Requests by route, status, auth outcome and error code",
            requests.clone(),
        );
        registry.register(
            "authgate_request_duration_seconds",
            "Time from request head to response head, by route",
            duration.clone(),
        );
        registry.register(
            "authgate_token_cache_hits",
            "Token verifications answered from the cache",
            cache_hits.clone(),
        );
        registry.register(
            "authgate_token_cache_misses",
            "Token verifications that ran in full",
            cache_misses.clone(),
        );
        registry.register(
            "authgate_jwks_refresh",
            "JWKS fetches by issuer and result",
            jwks_refresh.clone(),
        );
        registry.register(
            "authgate_upstream_errors",
            "Failed upstream exchanges by upstream and kind",
            upstream_errors.clone(),
        );
        registry.register(
            "authgate_config_reloads",
            "Configuration reloads by result",
            reloads.clone(),
        );
        registry.register(
            "authgate_open_connections",
            "Client connections currently open",
            open_connections.clone(),
        );
        Metrics {
            registry,
            requests,
            duration,
            cache_hits,
            cache_misses,
            jwks_refresh,
            upstream_errors,
            reloads,
            open_connections,
            handles: PerWorker::new(),
        }
    }

    /// Counts one request and observes its duration. The worker's list of
    /// handles saves the families' lock and label hashing on every request.
    pub fn record_request(
        &self,
        route: &Arc<str>,
        status: u16,
        auth: &'static str,
        error: &'static str,
        seconds: f64,
    ) {
        let mut list = self.handles.lock();
        let found = list.iter().position(|h| {
            h.status == status && h.auth == auth && h.error == error && h.route == *route
        });
        let h = match found {
            Some(i) => &list[i],
            None => {
                if list.len() >= MAX_HANDLES {
                    list.clear();
                }
                let label = Name(route.clone());
                list.push(RequestHandles {
                    route: route.clone(),
                    status,
                    auth,
                    error,
                    requests: self
                        .requests
                        .get_or_create(&RequestLabels {
                            route: label.clone(),
                            status,
                            auth,
                            error,
                        })
                        .clone(),
                    duration: self
                        .duration
                        .get_or_create(&RouteLabels { route: label })
                        .clone(),
                });
                &list[list.len() - 1]
            }
        };
        h.requests.inc();
        h.duration.observe(seconds);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_the_spec_families() {
        let m = Metrics::new();
        m.requests
            .get_or_create(&RequestLabels {
                route: Name(Arc::from("chat")),
                status: 200,
                auth: "authenticated",
                error: "",
            })
            .inc();
        m.duration
            .get_or_create(&RouteLabels {
                route: Name(Arc::from("chat")),
            })
            .observe(0.001);
        m.cache_hits.inc();
        let text = m.encode();
        for family in [
            "authgate_requests_total{route=\"chat\",status=\"200\",auth=\"authenticated\",error=\"\"} 1",
            "authgate_request_duration_seconds_bucket",
            "authgate_token_cache_hits_total 1",
            "authgate_token_cache_misses_total 0",
        ] {
            assert!(text.contains(family), "{family} missing in\n{text}");
        }
    }

    #[test]
    fn cached_handles_count_into_the_families_even_past_the_cap() {
        let m = Metrics::new();
        let route: Arc<str> = Arc::from("chat");
        // the same route under another Arc (a reload) shares the metric
        let reloaded: Arc<str> = Arc::from("chat");
        for status in 100..(100 + MAX_HANDLES as u16 + 6) {
            m.record_request(&route, status, "anonymous", "", 0.001);
        }
        m.record_request(&route, 100, "anonymous", "", 0.001);
        m.record_request(&reloaded, 100, "anonymous", "", 0.001);
        let count = |status: u16| {
            m.requests
                .get_or_create(&RequestLabels {
                    route: Name(route.clone()),
                    status,
                    auth: "anonymous",
                    error: "",
                })
                .get()
        };
        assert_eq!(count(100), 3);
        assert_eq!(count(101), 1);
        assert_eq!(count(100 + MAX_HANDLES as u16 + 5), 1);
        let text = m.encode();
        assert!(
            text.contains(&format!(
                "authgate_request_duration_seconds_count{{route=\"chat\"}} {}",
                MAX_HANDLES + 8
            )),
            "{text}"
        );
    }
}
