//! Command-line options.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, ValueEnum};

#[derive(Parser, Debug)]
#[command(version, about = "Per-model metrics and health for a running Rust worker pool, from eBPF uprobes")]
pub struct Options {
    /// PID of the running pool.
    #[arg(long)]
    pub pid: u32,
    /// Probe manifest (TOML): which functions mean which events, and where their values live.
    #[arg(long)]
    pub manifest: PathBuf,
    /// Address to serve /metrics and /health on.
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub listen: SocketAddr,
    /// Ring buffer size in bytes; the kernel rounds it up to a power-of-two number of pages.
    #[arg(long, default_value_t = 4 << 20)]
    pub ring_buffer_bytes: u32,
    /// How often to drain the ring buffer when the kernel has not woken us, in milliseconds.
    #[arg(long, default_value_t = 10)]
    pub drain_interval_ms: u64,
    /// Length of the sliding window for quantiles, maximum queue depth and error rate, in seconds.
    #[arg(long, default_value_t = 60)]
    pub window_secs: u64,
    /// How often to sample the pool's resident memory from procfs, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub memory_interval_ms: u64,
    /// Requests slower than this (milliseconds) are logged at info, like failures and timeouts.
    #[arg(long, default_value_t = 1000)]
    pub slow_request_ms: u64,
    /// How many completed requests `/requests/{id}` remembers.
    #[arg(long, default_value_t = 10_000)]
    pub recent_requests: usize,
    /// Health: a model with more requests queued is degraded.
    #[arg(long)]
    pub max_queue_depth: Option<u64>,
    /// Health: a model whose share of failed and timed-out requests in the window is higher is
    /// degraded (0 to 1).
    #[arg(long)]
    pub max_error_rate: Option<f64>,
    /// Health: a model whose p99 latency in the window is higher (milliseconds) is degraded.
    #[arg(long)]
    pub max_p99_ms: Option<f64>,
    /// Log format on stderr; the level comes from RUST_LOG (default `info`).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}
