//! Command-line options.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    aggregate,
    export::{health::Thresholds, http},
    kernel::{self, LoadSettings},
    publish::Bucketed,
};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Per-model metrics and health for a running Rust worker pool, from eBPF uprobes",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: Options,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List the functions of a binary that can be probed, by demangled name.
    Symbols {
        #[command(flatten)]
        target: Binary,
        #[command(flatten)]
        debug: DebugFile,
        /// Only names matching this pattern (`*` matches any run of characters).
        pattern: Option<String>,
    },
    /// Check a manifest against a binary without attaching: every function resolves once, and
    /// with debug info, every value names the parameter its register really holds.
    Check {
        /// The manifest to check.
        #[arg(long)]
        manifest: PathBuf,
        #[command(flatten)]
        target: Binary,
        #[command(flatten)]
        debug: DebugFile,
    },
    /// Write a starter manifest for the named functions, from their signatures in the debug
    /// info: which register holds which parameter, and the values a probe could read.
    Init {
        #[command(flatten)]
        target: Binary,
        #[command(flatten)]
        debug: DebugFile,
        /// The functions, as a manifest names them.
        #[arg(required = true)]
        functions: Vec<String>,
    },
    /// Check that this kernel runs pool-obs: the facilities it uses, and every kernel program
    /// loaded and verified, with its stack and verified instructions (needs root).
    Kernel,
    /// Take a CPU profile, split by model, from the agent that follows the pool: pprof (gzip
    /// protobuf), or an SVG flame graph if FILE ends in .svg, or folded stacks in .folded.
    Profile {
        /// Only this process's samples, of those the agent follows.
        #[arg(long)]
        pid: Option<u32>,
        /// How long to sample, at 99 Hz on every CPU.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Only this model's samples (`__idle__`: threads serving no request).
        #[arg(long)]
        model: Option<String>,
        /// Where to write the profile.
        #[arg(short = 'o', long)]
        output: PathBuf,
        /// The agent's address (its --listen).
        #[arg(long, default_value = "127.0.0.1:9464")]
        agent: SocketAddr,
    },
}

/// Where the binary's DWARF is, when it is not in the binary, beside it (`.gnu_debuglink`) or
/// under /usr/lib/debug.
#[derive(Args, Debug, Default)]
pub struct DebugFile {
    /// A file of the binary's debug info (`objcopy --only-keep-debug`).
    #[arg(long)]
    pub debug_file: Option<PathBuf>,
}

/// The binary to read: a running process's, or a file.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct Binary {
    /// A running process, whose executable is read.
    #[arg(long)]
    pub pid: Option<u32>,
    /// An executable file.
    #[arg(long)]
    pub binary: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct Options {
    /// PID of the running pool. Repeat it, each with its --manifest, for several.
    #[arg(long, conflicts_with_all = ["exe", "targets"])]
    pub pid: Vec<u32>,
    /// Follow every process that runs this executable: those running now and those that start
    /// later, each with series of its own (`pid` label), until it exits. A path names the file;
    /// a name (no `/`) finds it as processes in containers run it (the first such process's
    /// executable, and every process of that name with the same bytes).
    /// Repeat it, each with its --manifest, for several pools.
    #[arg(long, conflicts_with = "targets")]
    pub exe: Vec<PathBuf>,
    /// A TOML file of the pools to follow, instead of the flags: `[[target]]` tables, each with
    /// `exe` or `pid`, and `manifest` (relative to the file).
    #[arg(long)]
    pub targets: Option<PathBuf>,
    /// With --exe: how long (seconds) an exited process's series stay, so that the last scrapes
    /// see its final counts.
    #[arg(long, default_value_t = 300)]
    pub keep_exited_secs: u64,
    /// With --exe: processes followed at once; further ones are refused, with a warning, and
    /// counted in pool_obs_processes_refused_total.
    #[arg(long, default_value_t = 64)]
    pub max_processes: usize,
    /// Probe manifest (TOML): which functions mean which events, and where their values live.
    /// With several --exe or --pid, one for each, in the same order.
    #[arg(long, conflicts_with = "targets")]
    pub manifest: Vec<PathBuf>,
    /// Address to serve /metrics, /health and /requests/{id} on.
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub listen: SocketAddr,
    /// HTTP connections served at once; further clients wait to be accepted.
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// Seconds an HTTP client has to send a request's headers, and may leave a response
    /// unread; idle connections are closed after as long.
    #[arg(long, default_value_t = 10)]
    pub http_timeout_secs: u64,
    /// Ring buffer size in bytes; the kernel rounds it up to a power-of-two number of pages.
    #[arg(long, default_value_t = kernel::DEFAULT_RING_BYTES)]
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
    /// Distinct model keys to track; events of further keys count under model="__other__".
    #[arg(long, default_value_t = 1000)]
    pub max_models: usize,
    /// Requests in flight to track at most; submissions past it count as the anomaly
    /// `request_untracked`, so that lost or unprobed ends cannot grow the agent.
    #[arg(long, default_value_t = 1 << 18)]
    pub max_in_flight: usize,
    /// A request in flight this long (seconds) is forgotten and counted as `request_expired`:
    /// its end was lost or is not probed.
    #[arg(long, default_value_t = 600)]
    pub request_expiry_secs: u64,
    /// Detach and exit when the target process exits, instead of staying up to report it.
    #[arg(long)]
    pub exit_with_target: bool,
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
    /// Have the kernel programs log every value they fail to read (probe, field, address, error).
    #[arg(long)]
    pub debug_probes: bool,
    /// Log format on stderr; the level comes from RUST_LOG (default `info`).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// The latency histograms written with all their buckets; the others keep their +Inf
    /// bucket, sum and count.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "duration")]
    pub histogram_buckets: Vec<HistogramName>,
    #[command(flatten)]
    pub debug: DebugFile,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// A latency histogram, as `--histogram-buckets` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum HistogramName {
    Duration,
    Queue,
    Service,
    Cpu,
}

impl Options {
    pub fn load_settings(&self) -> LoadSettings {
        LoadSettings::new(self.ring_buffer_bytes, self.debug_probes)
    }

    pub fn aggregation_settings(&self) -> aggregate::Settings {
        aggregate::Settings {
            window: Duration::from_secs(self.window_secs.max(1)),
            slow_request: Duration::from_millis(self.slow_request_ms),
            recent_requests: self.recent_requests,
            max_models: self.max_models,
            max_in_flight: self.max_in_flight,
            request_expiry: Duration::from_secs(self.request_expiry_secs.max(1)),
        }
    }

    pub fn bucketed(&self) -> Bucketed {
        let named = |name| self.histogram_buckets.contains(&name);
        Bucketed {
            duration: named(HistogramName::Duration),
            queue: named(HistogramName::Queue),
            service: named(HistogramName::Service),
            cpu: named(HistogramName::Cpu),
        }
    }

    pub fn http_limits(&self) -> http::Limits {
        http::Limits {
            max_connections: self.max_connections.max(1),
            client_timeout: Duration::from_secs(self.http_timeout_secs.max(1)),
            connection_lifetime: Duration::from_secs(300),
            close_timeout: Duration::from_secs(10),
        }
    }

    pub fn health_thresholds(&self) -> Thresholds {
        Thresholds {
            max_queue_depth: self.max_queue_depth,
            max_error_rate: self.max_error_rate,
            max_p99_ms: self.max_p99_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use clap::CommandFactory;

    use super::Cli;

    /// The flags of the docs' table under `header`: `--pid PID` is `pid`.
    fn listed(header: &str) -> BTreeSet<String> {
        crate::docs::first_column(header)
            .iter()
            .filter_map(|flag| Some(flag.split([' ', '`']).next()?.trim_start_matches("--").to_string()))
            .collect()
    }

    fn defined(command: &clap::Command) -> BTreeSet<String> {
        command
            .get_arguments()
            .filter_map(|argument| argument.get_long().map(str::to_string))
            .filter(|flag| flag != "help" && flag != "version")
            .collect()
    }

    #[test]
    fn the_docs_list_every_flag_of_the_agent_and_no_other() {
        assert_eq!(listed("| flag | default | meaning |"), defined(&Cli::command()));
    }

    #[test]
    fn the_docs_list_every_flag_of_profile_and_no_other() {
        let command = Cli::command();
        let profile = command.find_subcommand("profile").expect("the profile command");
        assert_eq!(listed("| `profile` flag | default | meaning |"), defined(profile));
    }
}
