//! What the aggregator shows the exporters, as of its last refresh: each model's state, the
//! sliding window's statistics, a request's timeline. Plain values, so that `export` reads
//! nothing of the aggregator's own.

use serde::Serialize;

use crate::outcome::ByStatus;

/// What the window says about a model; latencies in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct WindowSummary {
    pub requests: u64,
    pub avg_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_queue_depth: u64,
    pub error_rate: f64,
}

/// One model as `/health` reports it.
#[derive(Clone, Debug)]
pub struct ModelView<'a> {
    pub label: &'a str,
    /// A catch-all bucket (`__unknown__`, `__other__`), not a model with workers of its own.
    pub catch_all: bool,
    /// Whether the pool's workers are seen at all (the manifest probes them): without, a
    /// model's health does not depend on them.
    pub workers_seen: bool,
    pub workers: WorkerCounts,
    pub queued: u64,
    pub recent: WindowSummary,
    pub requests: ByStatus<u64>,
    /// Every worker busy for this many refreshes in a row.
    pub saturated_refreshes: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerCounts {
    pub total: u64,
    pub busy: u64,
    pub crashed: u64,
}

/// A request's timeline as `/requests/{id}` serves it.
#[derive(Serialize, Debug)]
pub struct Timeline {
    pub request_id: u64,
    pub model: String,
    /// `queued`, `running` or `completed`.
    pub state: &'static str,
    pub outcome: Option<&'static str>,
    pub worker: Option<u64>,
    pub submitted: Option<String>,
    pub started: Option<String>,
    pub ended: Option<String>,
    pub total_ms: Option<f64>,
    pub queue_ms: Option<f64>,
    pub service_ms: Option<f64>,
    /// For an async request: its future's polls, and the time inside them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub polls: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub busy_ms: Option<f64>,
    /// On the CPU and off it while served (waiting on a lock, I/O, a sleep, or the scheduler).
    pub cpu_ms: Option<f64>,
    pub offcpu_ms: Option<f64>,
}
