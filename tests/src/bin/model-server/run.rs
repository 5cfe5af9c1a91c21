//! The process: the service on a tokio runtime, the registry's sweeper, and the clients' load
//! on a runtime of their own; at the end, what the handlers counted.

use std::{path::PathBuf, sync::Arc, time::Duration};

use axum::Router;
use clap::Parser;
use pool_obs_tests::processes::await_start_file;

use crate::{client, registry, server, truth};

#[derive(Parser)]
#[command(about = "An axum model server")]
struct Options {
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "bert-tiny,whisper-small,llama-7b,mistral-7b,t5-large,phi-2"
    )]
    models: Vec<String>,
    #[arg(long, default_value_t = 14_400)]
    requests: u64,
    #[arg(long, default_value_t = 36)]
    clients: u64,
    #[arg(long, default_value_t = 0.05)]
    fail_rate: f64,
    /// Probability that the model takes longer than the request's deadline.
    #[arg(long, default_value_t = 0.03)]
    slow_rate: f64,
    /// Probability that the client gives up and drops its connection.
    #[arg(long, default_value_t = 0.03)]
    drop_rate: f64,
    /// Models loaded at once, and how long one may stay idle.
    #[arg(long, default_value_t = 4)]
    capacity: usize,
    #[arg(long, default_value_t = 200)]
    idle_ms: u64,
    /// Requests a model serves at once; more are refused as overloaded.
    #[arg(long, default_value_t = 10)]
    concurrency: usize,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Wait for this file to exist before starting the load.
    #[arg(long)]
    start_file: Option<PathBuf>,
}

pub fn main(routes: fn(Arc<server::App>) -> Router) {
    let options = Options::parse();
    let truth = Arc::new(truth::Truth::default());
    let registry = registry::Registry::new(
        options.capacity,
        Duration::from_millis(options.idle_ms),
        options.concurrency,
        truth.clone(),
    );
    let app = Arc::new(server::App { registry, truth: truth.clone() });
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = runtime.spawn({
        let service = axum::serve(listener, routes(app.clone()));
        async move {
            service
                .with_graceful_shutdown(async {
                    stopped.await.ok();
                })
                .await
                .unwrap()
        }
    });
    let sweeper = runtime.spawn({
        let app = app.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                app.registry.evict_idle();
            }
        }
    });
    eprintln!("model-server: ready on {address}, pid {}", std::process::id());
    await_start_file(options.start_file.as_deref());

    let load = Arc::new(client::Load {
        models: options.models,
        requests: options.requests,
        clients: options.clients,
        seed: options.seed,
        fail_rate: options.fail_rate,
        slow_rate: options.slow_rate,
        drop_rate: options.drop_rate,
    });
    let clients = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    clients.block_on(async {
        let tasks: Vec<_> = (0..load.clients)
            .map(|nth| {
                let load = load.clone();
                tokio::spawn(async move { load.client(address, nth).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
    let _ = stop.send(());
    runtime.block_on(server).unwrap();
    sweeper.abort();
    truth.print();
}
