//! Background JWKS refresh: one task per JWKS issuer of the current runtime.

use crate::pipeline::Shared;
use std::sync::Arc;

/// Starts refresh tasks for the current runtime's JWKS issuers.
pub fn start(_shared: &Arc<Shared>) {}
