//! The JWKS store of one issuer: the last good key set, replaced whole.

use super::KeySet;
use arc_swap::ArcSwapOption;
use std::sync::Arc;
use std::time::Duration;

/// Keys fetched from `jwks_url`. `current()` is lock-free on the hot path.
pub struct JwksStore {
    pub issuer: String,
    pub url: http::Uri,
    pub refresh: Duration,
    keys: ArcSwapOption<KeySet>,
}

impl JwksStore {
    pub fn new(issuer: String, url: http::Uri, refresh: Duration) -> JwksStore {
        JwksStore {
            issuer,
            url,
            refresh,
            keys: ArcSwapOption::empty(),
        }
    }

    /// The last good keys, `None` until the first successful fetch.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.keys.load_full()
    }

    /// Replaces the keys after a successful fetch.
    pub fn store(&self, keys: KeySet) {
        self.keys.store(Some(Arc::new(keys)));
    }
}
