//! # authgate — a reverse-proxy authentication gateway for chat backends
//!
//! The life of a request:
//!
//! ```text
//!  client ──► server (a worker per core: own SO_REUSEPORT listener, accept,
//!             HTTP/1 or HTTP/2 by peek/ALPN, TLS, limits) ──► pipeline::handle
//!                                                    │ load one Runtime snapshot (ArcSwap)
//!   path::normalize ──► Runtime::resolve (route) ──► read body? (only body: locators)
//!   context::validate ──► extract::credential ──► verify::jwt / introspection (cached)
//!   authorize (scopes, Auth.Scopes) ──► match_claims ──► rate limit
//!   inject (strip hop-by-hop, Connection-named, prefixed, credentials; then set identity)
//!   forward::forward (this worker's pool slot, deadline) ──► response streams back (or WebSocket tunnel)
//!   any Rejection ──► error::Rejection::to_response (JSON, WWW-Authenticate)
//!   telemetry::access_log + admin::metrics
//! ```
//!
//! | stage | module |
//! |---|---|
//! | command line | [`cli`], [`token`], [`demo`] |
//! | configuration | [`config`] → [`runtime`] (reload in [`server::reload`]) |
//! | workers, listeners, TLS, shutdown | [`server`] |
//! | the request path | [`pipeline`] and its stage modules |
//! | keys, JWKS, introspection | [`keys`] |
//! | identity, customer ids | [`identity`] |
//! | the chat context object, lwicontexts | [`context`] |
//! | rejections | [`error`] |
//! | admin endpoints, metrics | [`admin`] |
//! | logs | [`telemetry`] |
//! | request deadlines | [`timer`] |

pub mod admin;
pub mod cli;
pub mod config;
pub mod context;
pub mod demo;
pub mod error;
pub mod identity;
pub mod keys;
pub mod pipeline;
pub mod runtime;
pub mod server;
pub mod telemetry;
pub mod timer;
pub mod token;
