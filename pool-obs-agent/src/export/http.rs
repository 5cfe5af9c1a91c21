//! The HTTP endpoints: `GET /metrics` (OpenMetrics text), `GET /health` (JSON) and
//! `GET /requests/{id}` (a request's timeline, JSON).

use std::{future::Future, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{Path, State},
    http::{
        HeaderMap, StatusCode,
        header::{ACCEPT, CONTENT_TYPE},
    },
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot, watch},
};

use super::metrics::{Format, Metrics};
use crate::aggregate::Timeline;

const JSON: &str = "application/json";

/// The health report as served: rendered once per refresh, shared by every request.
#[derive(Clone)]
pub struct RenderedHealth {
    pub code: StatusCode,
    pub body: Arc<str>,
}

/// A `/requests/{id}` lookup, answered by the task that owns the aggregator.
pub struct RequestQuery {
    pub request_id: u64,
    pub reply: oneshot::Sender<Option<Timeline>>,
}

#[derive(Clone)]
pub struct Endpoints {
    pub metrics: Arc<Metrics>,
    pub health: watch::Receiver<RenderedHealth>,
    pub requests: mpsc::Sender<RequestQuery>,
}

pub async fn serve(
    listener: TcpListener,
    endpoints: Endpoints,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/requests/{id}", get(request))
        .with_state(endpoints);
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

/// OpenMetrics for scrapers that accept it (Prometheus does), the Prometheus text format for
/// the rest (curl, promtool).
async fn metrics(State(endpoints): State<Endpoints>, headers: HeaderMap) -> Response {
    let accept = headers.get(ACCEPT).and_then(|accept| accept.to_str().ok()).unwrap_or_default();
    let format = Format::from_accept(accept);
    ([(CONTENT_TYPE, format.content_type())], endpoints.metrics.encode(format)).into_response()
}

async fn health(State(endpoints): State<Endpoints>) -> Response {
    let RenderedHealth { code, body } = endpoints.health.borrow().clone();
    (code, [(CONTENT_TYPE, JSON)], body.to_string()).into_response()
}

async fn request(State(endpoints): State<Endpoints>, Path(id): Path<String>) -> Response {
    let Ok(request_id) = id.parse::<u64>() else {
        return error(StatusCode::BAD_REQUEST, format!("`{id}` is not a request id: ids are integers"));
    };
    let (reply, answer) = oneshot::channel();
    if endpoints.requests.send(RequestQuery { request_id, reply }).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the agent is shutting down".to_string());
    }
    match tokio::time::timeout(Duration::from_secs(2), answer).await {
        Ok(Ok(Some(timeline))) => match serde_json::to_string(&timeline) {
            Ok(body) => (StatusCode::OK, [(CONTENT_TYPE, JSON)], body).into_response(),
            Err(failure) => error(StatusCode::INTERNAL_SERVER_ERROR, failure.to_string()),
        },
        Ok(Ok(None)) => error(
            StatusCode::NOT_FOUND,
            format!("request {request_id} is neither in flight nor among the recently completed"),
        ),
        _ => error(StatusCode::SERVICE_UNAVAILABLE, "the agent did not answer in time".to_string()),
    }
}

fn error(code: StatusCode, message: String) -> Response {
    (code, [(CONTENT_TYPE, JSON)], serde_json::json!({ "error": message }).to_string()).into_response()
}
