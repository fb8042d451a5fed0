//! Background JWKS refresh: one task per JWKS issuer of the current runtime.
//! A task holds only a `Weak` reference to its store, so it ends by itself
//! once a reload has replaced the runtime and the last request using the
//! old one has finished.

use crate::pipeline::Shared;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Starts refresh tasks for the current runtime's JWKS issuers. Must be
/// called from within a tokio runtime.
pub fn start(shared: &Arc<Shared>) {
    let rt = shared.runtime.load_full();
    for store in rt.jwks_stores() {
        let store = Arc::downgrade(store);
        let shared = Arc::downgrade(shared);
        tokio::spawn(refresh_loop(store, shared));
    }
}

async fn refresh_loop(store: Weak<crate::keys::jwks::JwksStore>, shared: Weak<Shared>) {
    let mut retry = Duration::from_millis(500);
    loop {
        let (Some(s), Some(sh)) = (store.upgrade(), shared.upgrade()) else {
            return;
        };
        let rt = sh.runtime.load_full();
        let ok = s.fetch(rt.fetcher(s.issuer_index), &sh.metrics).await;
        let wait = if ok || s.current().is_some() {
            retry = Duration::from_millis(500);
            s.refresh
        } else {
            // Never loaded: retry quickly, backing off to the refresh period.
            retry = (retry * 2).min(s.refresh).min(Duration::from_secs(10));
            retry
        };
        drop((s, sh, rt));
        tokio::time::sleep(wait).await;
    }
}
