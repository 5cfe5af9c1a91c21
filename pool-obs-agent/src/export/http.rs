//! The HTTP endpoints: `GET /metrics` (OpenMetrics text), `GET /health` (JSON) and
//! `GET /requests/{id}` (a request's timeline, JSON).

use std::{
    future::Future,
    pin::pin,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, Query, Request, State},
    http::{
        HeaderMap, StatusCode,
        header::{
            ACCEPT, ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING, VARY,
        },
    },
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc, oneshot, watch},
    task::JoinSet,
};
use tokio_io_timeout::TimeoutStream;
use tracing::warn;

use super::compression::{self, GzipDemand};
use crate::{
    profile::{self, Selection},
    publish::{Format, Metrics, Timeline},
};

const JSON: &str = "application/json";

/// The health report as served: rendered once per refresh, shared by every request without a
/// copy (at 10,000 models it is megabytes).
#[derive(Clone)]
pub struct RenderedHealth {
    pub code: StatusCode,
    pub body: Bytes,
    /// `body` gzipped, while clients ask for it ([`GzipDemand`]).
    pub gzipped: Option<Bytes>,
}

impl RenderedHealth {
    /// With its gzipped body, if `demand` wants one now.
    pub fn compressed_for(mut self, demand: &GzipDemand) -> Self {
        if demand.wanted(Instant::now()) {
            self.gzipped = Some(compression::gzip(&self.body));
        }
        self
    }
}

/// A `/profile`, taken by the task that owns the aggregator.
pub struct ProfileOrder {
    pub selection: Selection,
    pub reply: ProfileReply,
}

/// Where a profile goes once taken: its bytes, or why it was not.
pub type ProfileReply = oneshot::Sender<Result<Vec<u8>, String>>;

/// A `/requests/{id}` lookup, answered by the task that owns the aggregator.
pub struct RequestQuery {
    pub request_id: u64,
    pub reply: oneshot::Sender<Option<Timeline>>,
}

#[derive(Clone)]
pub struct Endpoints {
    pub metrics: Arc<Metrics>,
    pub health: watch::Receiver<RenderedHealth>,
    pub gzip_demand: GzipDemand,
    pub requests: mpsc::Sender<RequestQuery>,
    pub profiles: mpsc::Sender<ProfileOrder>,
}

/// What one client may take of the agent. A scraper needs one connection and a few hundred
/// bytes of headers; the limits keep slow or hostile clients from holding the rest.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once; further clients wait in the kernel's accept queue.
    pub max_connections: usize,
    /// A client must send a request's headers within this long (idle connections included),
    /// and a response it leaves unread this long is abandoned with its connection.
    pub client_timeout: Duration,
    /// After this long a connection is closed once its current response is written.
    pub connection_lifetime: Duration,
    /// Open connections get this long to finish once asked to close (at the end of their
    /// lifetime, or at shutdown); then they are dropped.
    pub close_timeout: Duration,
}

/// Headers past this size get 431: no scraper sends more than a few hundred bytes.
const MAX_HEADER_BYTES: usize = 16 * 1024;

pub async fn serve(
    listener: TcpListener,
    endpoints: Endpoints,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/requests/{id}", get(request))
        .route("/profile", get(profile))
        .layer(middleware::from_fn(reject_bodies))
        .with_state(endpoints);
    let service = TowerToHyperService::new(router);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (closing, _) = broadcast::channel::<()>(1);
    let mut shutdown = pin!(shutdown);
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = accept(&listener, &slots) => accepted,
        };
        let (stream, slot) = accepted;
        let connection = serve_connection(stream, service.clone(), limits, closing.subscribe());
        connections.spawn(async move {
            connection.await;
            drop(slot);
        });
        while connections.try_join_next().is_some() {}
    }
    let _ = closing.send(());
    let _ = tokio::time::timeout(limits.close_timeout, connections.join_all()).await;
}

/// Raises the soft limit on open files to the hard limit, so that `max_connections` clients
/// fit: the soft limit is often 1,024, and the probes and maps hold descriptors too.
pub fn raise_open_file_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: both calls only read or write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// The next connection, once a slot is free for it. Accept errors (out of file descriptors,
/// a client gone before it was accepted) are logged and waited out, never fatal.
async fn accept(listener: &TcpListener, slots: &Arc<Semaphore>) -> (TcpStream, OwnedSemaphorePermit) {
    let slot = slots.clone().acquire_owned().await.expect("the semaphore is never closed");
    loop {
        match listener.accept().await {
            Ok((stream, _)) => return (stream, slot),
            Err(error) => {
                warn!(%error, "accepting an HTTP connection failed; retrying in 100 ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    service: TowerToHyperService<Router>,
    limits: Limits,
    mut closing: broadcast::Receiver<()>,
) {
    let mut stream = TimeoutStream::new(stream);
    stream.set_write_timeout(Some(limits.client_timeout));
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.client_timeout)
        .max_header_size(MAX_HEADER_BYTES)
        .serve_connection(TokioIo::new(Box::pin(stream)), service);
    let mut connection = pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => return,
        _ = tokio::time::sleep(limits.connection_lifetime) => {}
        _ = closing.recv() => {}
    }
    connection.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(limits.close_timeout, connection).await;
}

/// No endpoint reads a body: one announced is refused before anything reads it.
async fn reject_bodies(request: Request, next: Next) -> Response {
    let announced = request.headers().get(CONTENT_LENGTH).is_some_and(|length| length != "0")
        || request.headers().contains_key(TRANSFER_ENCODING);
    if announced {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "these endpoints take no request body".to_string());
    }
    next.run(request).await
}

/// OpenMetrics for scrapers that accept it (Prometheus does), the Prometheus text format for
/// the rest (curl, promtool); gzipped for those that accept it (Prometheus does), at the
/// fastest level: a tenth of the bytes on the wire, for the agent's CPU.
async fn metrics(State(endpoints): State<Endpoints>, headers: HeaderMap) -> Response {
    let accept = headers.get(ACCEPT).and_then(|accept| accept.to_str().ok()).unwrap_or_default();
    let format = Format::from_accept(accept);
    let text = endpoints.metrics.encode(format);
    let vary = (VARY, ACCEPT_ENCODING.as_str());
    if compression::accepts_gzip(&headers) {
        let gzipped = compression::gzip(text.as_bytes());
        return ([(CONTENT_TYPE, format.content_type()), vary, (CONTENT_ENCODING, "gzip")], gzipped)
            .into_response();
    }
    ([(CONTENT_TYPE, format.content_type()), vary], text).into_response()
}

async fn health(State(endpoints): State<Endpoints>, headers: HeaderMap) -> Response {
    let RenderedHealth { code, body, gzipped } = endpoints.health.borrow().clone();
    let accepts_gzip = compression::accepts_gzip(&headers);
    if accepts_gzip {
        endpoints.gzip_demand.note(Instant::now());
    }
    let vary = (VARY, ACCEPT_ENCODING.as_str());
    match gzipped.filter(|_| accepts_gzip) {
        Some(gzipped) => {
            (code, [(CONTENT_TYPE, JSON), vary, (CONTENT_ENCODING, "gzip")], gzipped).into_response()
        }
        None => (code, [(CONTENT_TYPE, JSON), vary], body).into_response(),
    }
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

/// The longest profile taken.
pub const MAX_PROFILE_SECONDS: u64 = 300;

#[derive(serde::Deserialize)]
struct ProfileQuery {
    seconds: Option<u64>,
    model: Option<String>,
    pid: Option<u32>,
    /// `pprof` (the default), `svg` or `folded`.
    format: Option<String>,
}

/// A CPU profile of the followed processes over `seconds` (10 by default), pprof or SVG.
async fn profile(State(endpoints): State<Endpoints>, Query(query): Query<ProfileQuery>) -> Response {
    let seconds = query.seconds.unwrap_or(10);
    if !(1..=MAX_PROFILE_SECONDS).contains(&seconds) {
        return error(StatusCode::BAD_REQUEST, format!("seconds={seconds}: from 1 to {MAX_PROFILE_SECONDS}"));
    }
    let format = match query.format.as_deref() {
        None => profile::Format::Pprof,
        Some(name) => match profile::Format::named(name) {
            Some(format) => format,
            None => return error(StatusCode::BAD_REQUEST, format!("format={name}: pprof, svg or folded")),
        },
    };
    let selection = Selection { seconds, model: query.model, pid: query.pid, format };
    let (reply, answer) = oneshot::channel();
    if endpoints.profiles.send(ProfileOrder { selection, reply }).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the agent is shutting down".to_string());
    }
    match tokio::time::timeout(Duration::from_secs(seconds + 60), answer).await {
        Ok(Ok(Ok(bytes))) => (StatusCode::OK, [(CONTENT_TYPE, format.content_type())], bytes).into_response(),
        Ok(Ok(Err(why))) => error(StatusCode::CONFLICT, why),
        _ => error(StatusCode::SERVICE_UNAVAILABLE, "the agent did not finish the profile".to_string()),
    }
}

fn error(code: StatusCode, message: String) -> Response {
    (code, [(CONTENT_TYPE, JSON)], serde_json::json!({ "error": message }).to_string()).into_response()
}
