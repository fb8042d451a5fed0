//! The JWKS store of one issuer: the last good key set, replaced whole, and
//! the fetch that fills it.
//!
//! - A background task refreshes every `jwks_refresh` (and retries quickly
//!   until the first success).
//! - A token with an unknown `kid` triggers one refetch at most every 30 s,
//!   single-flight: a flood of random `kid`s causes one fetch, not thousands.
//! - A failed fetch, or one returning garbage, keeps the last good keys.
//! - Keys carry their own `alg` (JWK `alg`) or family; never the token's.

use super::KeySet;
use crate::admin::metrics::{JwksLabels, Metrics};
use crate::pipeline::forward::{full, UpstreamClient};
use arc_swap::ArcSwapOption;
use http_body_util::BodyExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Minimum time between two unknown-`kid` refetches.
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// Largest JWKS document accepted.
pub const MAX_JWKS_BYTES: usize = 1 << 20;

/// Keys fetched from `jwks_url`. `current()` is lock-free on the hot path.
pub struct JwksStore {
    pub issuer: String,
    /// Index of the issuer in the runtime (picks its fetch client).
    pub issuer_index: usize,
    pub url: http::Uri,
    pub refresh: Duration,
    keys: ArcSwapOption<KeySet>,
    last_refetch: Mutex<Option<Instant>>,
    in_flight: tokio::sync::Mutex<()>,
}

impl JwksStore {
    pub fn new(
        issuer: String,
        issuer_index: usize,
        url: http::Uri,
        refresh: Duration,
    ) -> JwksStore {
        JwksStore {
            issuer,
            issuer_index,
            url,
            refresh,
            keys: ArcSwapOption::empty(),
            last_refetch: Mutex::new(None),
            in_flight: tokio::sync::Mutex::new(()),
        }
    }

    /// The last good keys, `None` until the first successful fetch.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.keys.load_full()
    }

    /// Replaces the keys after a successful fetch (or a reload carry-over).
    pub fn store(&self, keys: Arc<KeySet>) {
        self.keys.store(Some(keys));
    }

    /// Fetches and, if the document is a usable JWK Set, stores it.
    pub async fn fetch(&self, client: &UpstreamClient, metrics: &Metrics) -> bool {
        let _one = self.in_flight.lock().await;
        self.fetch_locked(client, metrics).await
    }

    async fn fetch_locked(&self, client: &UpstreamClient, metrics: &Metrics) -> bool {
        let result = fetch_keys(&self.url, client, self.current()).await;
        let ok = match result {
            Ok(set) => {
                self.store(Arc::new(set));
                true
            }
            Err(reason) => {
                tracing::warn!(issuer = %self.issuer, reason, "JWKS fetch failed; keeping the last good keys");
                false
            }
        };
        metrics
            .jwks_refresh
            .get_or_create(&JwksLabels {
                issuer: self.issuer.clone(),
                result: if ok { "success" } else { "failure" },
            })
            .inc();
        ok
    }

    /// On an unknown `kid`: refetch unless one happened in the last 30 s.
    /// Concurrent callers wait for the one fetch in flight.
    ///
    /// Returns whether the caller should verify again. That includes the
    /// callers that did *not* fetch: while they waited, the fetch in flight
    /// may have brought exactly the key they lack (a rotation seen by many
    /// clients at once must not refuse all but one of them). Verifying
    /// again is cheap when the `kid` is still unknown: no key is a
    /// candidate, so no signature is checked.
    pub async fn refetch_for_unknown_kid(
        &self,
        client: &UpstreamClient,
        metrics: &Metrics,
    ) -> bool {
        let _one = self.in_flight.lock().await;
        {
            let mut last = match self.last_refetch.lock() {
                Ok(l) => l,
                Err(p) => p.into_inner(),
            };
            if last.is_some_and(|t| t.elapsed() < REFETCH_INTERVAL) {
                return self.current().is_some();
            }
            *last = Some(Instant::now());
        }
        self.fetch_locked(client, metrics).await
    }
}

/// Bound on one whole JWKS fetch (connect, headers and body).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// One fetch, bounded as a whole: a server that sends headers and then
/// stalls must not hold the single-flight lock (and every request waiting
/// on an unknown `kid`) forever.
async fn fetch_keys(
    url: &http::Uri,
    client: &UpstreamClient,
    previous: Option<Arc<KeySet>>,
) -> Result<KeySet, &'static str> {
    tokio::time::timeout(FETCH_TIMEOUT, fetch_keys_unbounded(url, client, previous))
        .await
        .map_err(|_| "timed out")?
}

async fn fetch_keys_unbounded(
    url: &http::Uri,
    client: &UpstreamClient,
    previous: Option<Arc<KeySet>>,
) -> Result<KeySet, &'static str> {
    let request = http::Request::get(url.clone())
        .header(http::header::ACCEPT, "application/json")
        .body(full(bytes::Bytes::new()))
        .map_err(|_| "bad request")?;
    let response = client
        .send(request, FETCH_TIMEOUT)
        .await
        .map_err(|e| e.kind())?;
    if !response.status().is_success() {
        return Err("non-2xx status");
    }
    let body = http_body_util::Limited::new(response.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|_| "body unreadable or too large")?
        .to_bytes();
    // Parsing prepares every key, and a new P-256 key's ES256 table takes a
    // few ms of CPU (the generator's, on the first one, ≈ 10): off the
    // worker thread, so the connections it serves do not wait for it.
    let keys = tokio::task::spawn_blocking(move || super::parse_jwks(&body, previous.as_deref()))
        .await
        .map_err(|_| "key preparation failed")?
        .map_err(|_| "not a usable JWK Set")?;
    Ok(KeySet { keys })
}
