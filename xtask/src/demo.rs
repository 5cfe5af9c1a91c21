//! `cargo xtask demo`: the reference pool under its default load, the agent attached to its
//! PID, and the per-model request counts printed as they rise.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::Result;
use pool_obs_tests::{
    openmetrics::Exposition,
    processes::{Agent, Pool, manifest, stop},
};

use crate::setup::setup;

#[derive(clap::Args)]
pub struct Options {
    /// Where the agent serves /metrics and /health.
    #[arg(long, default_value = "127.0.0.1:9464")]
    listen: SocketAddr,
    /// Stop after this many seconds instead of at Ctrl-C.
    #[arg(long)]
    seconds: Option<u64>,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_signal: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

pub fn run(options: &Options) -> Result<()> {
    setup()?.build_release()?;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, request_stop as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, request_stop as *const () as libc::sighandler_t);
    }
    let mut pool = Pool::start(&[]);
    let mut agent = Agent::attach(pool.pid(), &manifest("demo-pool.toml"), options.listen, &[]);
    println!("pool-obs is attached to demo-pool (pid {}).", pool.pid());
    println!("  metrics: http://{}/metrics", options.listen);
    println!("  health:  http://{}/health", options.listen);
    println!("Press Ctrl-C to stop.");

    let deadline = options.seconds.map(|seconds| Instant::now() + Duration::from_secs(seconds));
    let mut last_report = Instant::now();
    while !STOP.load(Ordering::Relaxed) && deadline.is_none_or(|deadline| Instant::now() < deadline) {
        if pool.child.try_wait()?.is_some() || agent.child.try_wait()?.is_some() {
            break;
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            print_requests_by_model(&agent);
            last_report = Instant::now();
        }
        thread::sleep(Duration::from_millis(100));
    }
    print_requests_by_model(&agent);
    let agent_status = stop(&mut agent.child, libc::SIGINT);
    stop(&mut pool.child, libc::SIGTERM);
    println!("agent stopped ({agent_status}); demo-pool stopped.");
    Ok(())
}

fn print_requests_by_model(agent: &Agent) {
    let Ok(response) = pool_obs_tests::http::get(agent.address, "/metrics") else {
        return;
    };
    let exposition = Exposition::parse(&response.body);
    let mut by_model: BTreeMap<&str, [u64; 3]> = BTreeMap::new();
    for sample in exposition.samples.iter().filter(|sample| sample.name == "pool_requests_total") {
        let (Some(model), Some(status)) = (sample.labels.get("model"), sample.labels.get("status")) else {
            continue;
        };
        let slot = ["ok", "failed", "timeout"].iter().position(|name| name == status).unwrap_or(1);
        by_model.entry(model).or_default()[slot] += sample.value as u64;
    }
    let line: Vec<String> = by_model
        .iter()
        .map(|(model, [ok, failed, timeout])| format!("{model}: {ok} ok, {failed} failed, {timeout} timeout"))
        .collect();
    println!("requests  {}", line.join(" | "));
}
