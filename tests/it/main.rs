//! One integration binary: a real gateway on 127.0.0.1:0, a recording
//! upstream, and assertions on what the upstream received.

mod chat;
mod core;
mod edge;
mod keys;
mod ops;
mod support;
