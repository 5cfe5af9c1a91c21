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
    /// Log format on stderr; the level comes from RUST_LOG (default `info`).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}
