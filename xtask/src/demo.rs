//! `cargo xtask demo`: the reference pool under its default load, the agent attached to its
//! PID, and a per-model table refreshed every second from the agent's `/metrics`. The agent's
//! log goes to a file the demo names, so that the terminal shows the table, not the log.

use std::{
    collections::BTreeMap,
    io::{IsTerminal, Write},
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
    let pool_log = std::env::current_dir()?.join("target/demo-pool.log");
    // A millisecond of CPU per request, so that the flame graph has something to show.
    let mut pool = Pool::start_logging_to(&["--cpu-us".to_string(), "1000".to_string()], &pool_log);
    let log = std::env::current_dir()?.join("target/demo-agent.log");
    let mut agent = Agent::attach_logging_to(pool.pid(), &manifest("demo-pool.toml"), options.listen, &log);
    println!("pool-obs is attached to demo-pool (pid {}).", pool.pid());
    println!("  metrics: http://{}/metrics", options.listen);
    println!("  health:  http://{}/health", options.listen);
    println!("  logs:    {} (the agent), {} (the pool)", log.display(), pool_log.display());
    let flame = std::env::current_dir()?.join("target/demo-flame.svg");
    println!("  CPU by model: {} (a 5 s profile, written 5 s from now)", flame.display());
    println!("Press Ctrl-C to stop.\n");
    let address = agent.address;
    let profiled = thread::spawn(move || {
        thread::sleep(Duration::from_secs(5));
        let profile = pool_obs_tests::http::get(address, "/profile?seconds=5&format=svg");
        match profile {
            Ok(response) if response.status == 200 => std::fs::write(&flame, response.body)
                .map(|()| format!("CPU by model: {}", flame.display()))
                .unwrap_or_else(|error| format!("cannot write {}: {error}", flame.display())),
            Ok(response) => format!("no flame graph: {}", response.body),
            Err(error) => format!("no flame graph: {error}"),
        }
    });

    let deadline = options.seconds.map(|seconds| Instant::now() + Duration::from_secs(seconds));
    let mut table = Table { live: std::io::stdout().is_terminal(), lines: 0 };
    let mut last_report = Instant::now();
    while !STOP.load(Ordering::Relaxed) && deadline.is_none_or(|deadline| Instant::now() < deadline) {
        if pool.child.try_wait()?.is_some() || agent.child.try_wait()?.is_some() {
            break;
        }
        // Redrawn in place every second on a terminal; printed every 5 s into a file or pipe.
        let every = if table.live { Duration::from_secs(1) } else { Duration::from_secs(5) };
        if last_report.elapsed() >= every {
            table.show(&agent);
            last_report = Instant::now();
        }
        thread::sleep(Duration::from_millis(100));
    }
    table.show(&agent);
    if profiled.is_finished()
        && let Ok(said) = profiled.join()
    {
        println!("{said}");
    }
    let agent_status = stop(&mut agent.child, libc::SIGINT);
    stop(&mut pool.child, libc::SIGTERM);
    println!("agent stopped ({agent_status}); demo-pool stopped.");
    Ok(())
}

/// The per-model table, and how many lines of the terminal it took last.
struct Table {
    live: bool,
    lines: usize,
}

/// One model's row.
#[derive(Default)]
struct Row {
    statuses: BTreeMap<String, u64>,
    p50_ms: f64,
    p99_ms: f64,
    busy: u64,
    idle: u64,
    queued: u64,
    cpu_seconds: f64,
}

impl Table {
    fn show(&mut self, agent: &Agent) {
        let Ok(response) = pool_obs_tests::http::get(agent.address, "/metrics") else {
            return;
        };
        let exposition = Exposition::parse(&response.body);
        let mut rows: BTreeMap<String, Row> = BTreeMap::new();
        for sample in &exposition.samples {
            let Some(model) = sample.labels.get("model") else { continue };
            let row = rows.entry(model.clone()).or_default();
            let label = |name: &str| sample.labels.get(name).map(String::as_str);
            match (sample.name.as_str(), label("status"), label("quantile"), label("state")) {
                ("pool_requests_total", Some(status), _, _) => {
                    *row.statuses.entry(status.to_string()).or_default() += sample.value as u64;
                }
                ("pool_request_duration_quantile_seconds", _, Some("0.5"), _) => {
                    row.p50_ms = sample.value * 1e3
                }
                ("pool_request_duration_quantile_seconds", _, Some("0.99"), _) => {
                    row.p99_ms = sample.value * 1e3
                }
                ("pool_workers", _, _, Some("busy")) => row.busy = sample.value as u64,
                ("pool_workers", _, _, Some("idle")) => row.idle = sample.value as u64,
                ("pool_queue_depth", _, _, _) => row.queued = sample.value as u64,
                ("pool_model_cpu_seconds_total", _, _, _) => row.cpu_seconds = sample.value,
                _ => {}
            }
        }
        let mut text = format!(
            "{:<16} {:>8} {:>7} {:>8} {:>10} {:>9} {:>9} {:>8} {:>6} {:>8}\n",
            "model", "ok", "failed", "timeout", "cancelled", "p50 ms", "p99 ms", "workers", "queue", "CPU s"
        );
        for (model, row) in &rows {
            let count = |status: &str| row.statuses.get(status).copied().unwrap_or(0);
            text += &format!(
                "{model:<16} {:>8} {:>7} {:>8} {:>10} {:>9.2} {:>9.2} {:>8} {:>6} {:>8.3}\n",
                count("ok"),
                count("failed"),
                count("timeout"),
                count("cancelled"),
                row.p50_ms,
                row.p99_ms,
                format!("{}/{}", row.busy, row.busy + row.idle),
                row.queued,
                row.cpu_seconds
            );
        }
        let mut out = std::io::stdout().lock();
        if self.live && self.lines > 0 {
            // Back over the last table, and clear what was below it.
            let _ = write!(out, "\x1b[{}A\x1b[J", self.lines);
        }
        let _ = write!(out, "{text}");
        if !self.live {
            let _ = writeln!(out);
        }
        let _ = out.flush();
        self.lines = text.lines().count();
    }
}
