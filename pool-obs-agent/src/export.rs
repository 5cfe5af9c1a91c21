//! What the agent serves: Prometheus metrics and the health report, over HTTP.

pub mod compression;
pub mod health;
pub mod http;
