//! `model-server-more`: `model-server` with one more handler, `embed`, that its clients never
//! call. The optimiser lays out the handlers' shared code otherwise when there are two: the
//! agent must count the same requests as in the build with one.

#[path = "../model-server/client.rs"]
mod client;
#[path = "../model-server/error.rs"]
mod error;
#[path = "../model-server/registry.rs"]
mod registry;
#[path = "../model-server/run.rs"]
mod run;
#[path = "../model-server/server.rs"]
mod server;
#[path = "../model-server/truth.rs"]
mod truth;

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, State},
    routing::post,
};

use crate::{error::AppError, server::App};

#[derive(serde::Deserialize)]
pub struct EmbedRequest {
    pub text: String,
}

pub async fn embed(
    State(app): State<Arc<App>>,
    Path(model): Path<String>,
    Json(req): Json<EmbedRequest>,
) -> Result<Json<Vec<f32>>, AppError> {
    let handle = app.registry.get_or_load(&model);
    let _permit = handle.permits.try_acquire().map_err(|_| AppError::Overloaded)?;
    let embedding = req.text.bytes().map(|byte| f32::from(byte) / 255.0).collect();
    Ok(Json(embedding))
}

fn routes(app: Arc<App>) -> Router {
    server::routes(app.clone())
        .merge(Router::new().route("/v1/models/{model}/embed", post(embed)).with_state(app))
}

fn main() {
    run::main(routes);
}
