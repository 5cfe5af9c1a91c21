//! The HTTP endpoints: `GET /metrics` (OpenMetrics text) and `GET /health` (JSON).

use std::{future::Future, sync::Arc};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header::CONTENT_TYPE},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::{net::TcpListener, sync::watch};

use super::metrics::Metrics;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The health report as served: rendered once per refresh, shared by every request.
#[derive(Clone)]
pub struct RenderedHealth {
    pub code: StatusCode,
    pub body: Arc<str>,
}

#[derive(Clone)]
pub struct Endpoints {
    pub metrics: Arc<Metrics>,
    pub health: watch::Receiver<RenderedHealth>,
}

pub async fn serve(
    listener: TcpListener,
    endpoints: Endpoints,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router =
        Router::new().route("/metrics", get(metrics)).route("/health", get(health)).with_state(endpoints);
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

async fn metrics(State(endpoints): State<Endpoints>) -> Response {
    ([(CONTENT_TYPE, OPENMETRICS)], endpoints.metrics.encode()).into_response()
}

async fn health(State(endpoints): State<Endpoints>) -> Response {
    let RenderedHealth { code, body } = endpoints.health.borrow().clone();
    (code, [(CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}
