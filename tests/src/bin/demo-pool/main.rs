//! `demo-pool`: the reference worker pool pool-obs is tested against.
//!
//! A pool keyed by model name. Workers are threads that each hold real, touched memory; they are
//! spawned on demand, evicted least-recently-used when the memory budget is exceeded, and
//! sometimes crash (panic) and are replaced. Requests wait in per-model queues; each ends ok,
//! failed, or timed out in the queue. The pool knows nothing of pool-obs: its only output is the
//! ground-truth summary it prints as JSON on exit and on SIGUSR1.

mod clock;
mod load;
mod pool;
mod summary;

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use clap::Parser;

#[derive(Parser, Debug, Clone)]
#[command(about = "A reference worker pool keyed by model name")]
pub struct Options {
    /// Model names (registry keys), comma-separated; `\xNN`, `\n` and `\\` escapes make
    /// any byte.
    #[arg(long, value_delimiter = ',', default_value = "llama-7b,mistral-7b,phi-3,gemma-2b")]
    pub models: Vec<String>,
    /// Requests per second offered by the built-in load generator.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Requests to send before exiting; 0 runs until killed.
    #[arg(long, default_value_t = 0)]
    pub requests: u64,
    /// Mean service time of a request, in microseconds.
    #[arg(long, default_value_t = 5_000)]
    pub work_us: u64,
    /// CPU time a request computes for before its service time, in microseconds of its
    /// thread's CPU time: the model's forward pass. 0 (the default) computes nothing.
    #[arg(long, default_value_t = 0)]
    pub cpu_us: u64,
    /// A request still queued after this long times out.
    #[arg(long, default_value_t = 200)]
    pub timeout_ms: u64,
    /// Probability that a client's deadline is only a few microseconds, so that its request
    /// times out in the queue.
    #[arg(long, default_value_t = 0.01)]
    pub impatient_rate: f64,
    /// Probability that a request fails.
    #[arg(long, default_value_t = 0.05)]
    pub fail_rate: f64,
    /// Probability that serving a request crashes its worker.
    #[arg(long, default_value_t = 0.002)]
    pub crash_rate: f64,
    /// Workers a model may have at most.
    #[arg(long, default_value_t = 2)]
    pub max_workers: usize,
    /// Memory each worker allocates and touches, in MiB.
    #[arg(long, default_value_t = 16)]
    pub worker_memory_mb: u64,
    /// Memory budget for all workers, in MiB; past it the least recently used are evicted.
    #[arg(long, default_value_t = 64)]
    pub memory_budget_mb: u64,
    /// Seed for every random choice, so runs repeat.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Evict workers idle for longer than this, in milliseconds; 0 never does.
    #[arg(long, default_value_t = 0)]
    pub idle_evict_ms: u64,
    /// Wait until this file exists before sending load.
    #[arg(long)]
    pub start_file: Option<PathBuf>,
    /// After the load, keep running this long (milliseconds) before the final summary.
    #[arg(long, default_value_t = 0)]
    pub linger_ms: u64,
    /// Write one JSON line per answered request here.
    #[arg(long)]
    pub access_log: Option<PathBuf>,
}

static SUMMARY_REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn request_summary(_signal: libc::c_int) {
    SUMMARY_REQUESTED.store(true, Ordering::Relaxed);
}

fn main() {
    let options = Options::parse();
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe { libc::signal(libc::SIGUSR1, request_summary as *const () as libc::sighandler_t) };
    quiet_worker_panics();

    let models: Vec<Vec<u8>> = options.models.iter().map(|model| unescape(model)).collect();
    let pool = Arc::new(pool::Pool::new(&options));
    pool::Pool::supervise(&pool);
    let report = match summary::Report::new(options.access_log.as_deref()) {
        Ok(report) => report,
        Err(error) => {
            eprintln!("demo-pool: cannot write the access log: {error}");
            std::process::exit(2);
        }
    };
    print_summaries_on_request(pool.clone(), report.clone());
    eprintln!("demo-pool: ready, pid {}", std::process::id());

    pool_obs_tests::processes::await_start_file(options.start_file.as_deref());
    load::run(&pool, &options, &models, &report);
    summary::print(&pool, &report);
    if options.linger_ms > 0 {
        thread::sleep(Duration::from_millis(options.linger_ms));
        summary::print(&pool, &report);
    }
}

/// Decodes `\xNN`, `\n` and `\<char>` escapes into bytes.
fn unescape(text: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (c, chars.clone().next()) {
            ('\\', Some('n')) => {
                chars.next();
                bytes.push(b'\n');
            }
            ('\\', Some('x')) => {
                chars.next();
                let hex: String = chars.by_ref().take(2).collect();
                bytes.push(u8::from_str_radix(&hex, 16).unwrap_or(b'?'));
            }
            ('\\', Some(escaped)) => {
                chars.next();
                bytes.extend_from_slice(escaped.encode_utf8(&mut [0; 4]).as_bytes());
            }
            _ => bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    bytes
}

/// A crashing worker is an expected event here: one line, not a backtrace.
fn quiet_worker_panics() {
    std::panic::set_hook(Box::new(|info| {
        let thread = thread::current();
        let payload = info.payload();
        let message =
            payload.downcast_ref::<String>().map(String::as_str).or(payload.downcast_ref::<&str>().copied());
        eprintln!("demo-pool: {} crashed: {}", thread.name().unwrap_or("thread"), message.unwrap_or("panic"));
    }));
}

fn print_summaries_on_request(pool: Arc<pool::Pool>, report: summary::Report) {
    thread::spawn(move || {
        loop {
            thread::sleep(Duration::from_millis(10));
            if SUMMARY_REQUESTED.swap(false, Ordering::Relaxed) {
                summary::print(&pool, &report);
            }
        }
    });
}
