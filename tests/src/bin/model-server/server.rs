//! The service: `POST /v1/models/{model}/infer` runs the model on tokio's blocking pool under
//! the request's deadline, with at most a few requests per model at once.

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{Path, Request, State},
    http::StatusCode,
    middleware::{self, Next},
    response::Response,
    routing::post,
};
use pool_obs_tests::ground_truth::{Outcome, thread_cpu};
use serde::{Deserialize, Serialize};

use crate::{error::AppError, registry::Registry, truth::Truth};

pub struct App {
    pub registry: Registry,
    pub truth: Arc<Truth>,
}

#[derive(Serialize, Deserialize)]
pub struct InferRequest {
    pub id: u64,
    pub prompt: Vec<u32>,
    pub deadline_ms: u64,
    /// What the test load asks of the model: to fail, or to take longer than the deadline.
    pub fails: bool,
    pub slow: bool,
}

#[derive(Serialize, Deserialize)]
pub struct Reply {
    pub id: u64,
    pub model: String,
    pub text: String,
}

pub fn routes(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/models/{model}/infer", post(infer))
        .route_layer(middleware::from_fn_with_state(app.clone(), measured))
        .with_state(app)
}

pub async fn infer(
    State(app): State<Arc<App>>,
    Path(model): Path<String>,
    Json(req): Json<InferRequest>,
) -> Result<Json<Reply>, AppError> {
    run(&app, &model, req).await
}

/// The service's own measure of each request, as a middleware takes it: its outcome by the
/// answer's status, from the request to the answer, or cancelled when the client went away.
async fn measured(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let model = request.uri().path().split('/').nth(3).unwrap_or_default().to_string();
    let mut serving = app.truth.serving(&model);
    let response = next.run(request).await;
    serving.finish(match response.status() {
        StatusCode::OK => Outcome::Ok,
        StatusCode::GATEWAY_TIMEOUT => Outcome::Timeout,
        _ => Outcome::Failed,
    });
    response
}

async fn run(app: &Arc<App>, model: &str, req: InferRequest) -> Result<Json<Reply>, AppError> {
    let handle = app.registry.get_or_load(model);
    let permit = handle.permits.clone().try_acquire_owned().map_err(|_| AppError::Overloaded)?;
    let truth = app.truth.clone();
    let deadline = Duration::from_millis(req.deadline_ms);
    let (id, fails, slow) = (req.id, req.fails, req.slow);
    // Tokenizing is a task of its own, so that a long prompt yields to the other requests.
    let tokenizing = tokio::spawn(tokenize(req.prompt, truth.clone(), handle.name.clone()));
    let prompt = tokenizing.await.map_err(|join| AppError::Failed(join.to_string()))?;
    let task = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let started = thread_cpu();
        let answer = forward(&handle.weights, &prompt, fails, slow);
        truth.inferred(&handle.name, thread_cpu() - started);
        answer
    });
    match tokio::time::timeout(deadline, task).await {
        Err(_) => Err(AppError::Timeout),
        Ok(Err(join)) => Err(AppError::Failed(join.to_string())),
        Ok(Ok(Err(why))) => Err(AppError::Failed(why)),
        Ok(Ok(Ok(text))) => Ok(Json(Reply { id, model: model.to_string(), text })),
    }
}

/// The prompt as the model reads it: each half of it a pass of its own, with a yield between.
async fn tokenize(prompt: Vec<u32>, truth: Arc<Truth>, model: String) -> Vec<u32> {
    let mut cpu = Duration::ZERO;
    let mut tokens = Vec::with_capacity(prompt.len());
    for half in prompt.chunks(prompt.len().div_ceil(2).max(1)) {
        let started = thread_cpu();
        tokens.extend(half.iter().map(|token| {
            (0..40_000u32).fold(*token, |state, round| state.wrapping_mul(2_654_435_761).wrapping_add(round))
        }));
        cpu += thread_cpu() - started;
        tokio::task::yield_now().await;
    }
    truth.tokenized(&model, cpu);
    tokens
}

/// The model: passes over the prompt through its weights, then the accelerator's wait.
fn forward(weights: &[u8], prompt: &[u32], fails: bool, slow: bool) -> Result<String, String> {
    let mut state = 0u64;
    for pass in 0..8_000u64 {
        for token in prompt {
            let weight = weights[(*token as usize * 131 + pass as usize) % weights.len()];
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(u64::from(weight) ^ pass);
        }
    }
    std::thread::sleep(Duration::from_micros(if slow { 30_000 } else { 500 }));
    if fails { Err(format!("model diverged at state {state:x}")) } else { Ok(format!("{state:016x}")) }
}
