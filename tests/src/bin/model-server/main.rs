//! `model-server`: an axum model server written the way its users write one, built in release
//! with nothing to make probing easy. `POST /v1/models/{model}/infer` (in `server.rs`) loads
//! the model on first use (the registry unloads the least recently used and the idle ones),
//! takes one of the model's permits, and runs the model on tokio's blocking pool under the
//! request's deadline. Its clients (in `client.rs`) sometimes give up and drop the
//! connection. At the end it prints what its handlers counted (`truth.rs`).

mod client;
mod error;
mod registry;
mod run;
mod server;
mod truth;

fn main() {
    run::main(server::routes);
}
