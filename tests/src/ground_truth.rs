//! What the reference pool says it did: its summary (one JSON line on stdout at the end of the
//! load, at exit and on SIGUSR1) and its access log (one JSON line per answered request). The
//! pool writes these types and the tests read them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Failed,
    Timeout,
}

#[derive(Serialize, Deserialize, Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Requests {
    pub ok: u64,
    pub failed: u64,
    pub timeout: u64,
}

impl Requests {
    pub fn total(&self) -> u64 {
        self.ok + self.failed + self.timeout
    }
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ModelSummary {
    pub requests: Requests,
    pub spawns: u64,
    pub evictions: u64,
    pub crashes: u64,
    /// The longest the model's queue was, measured as requests were queued.
    pub max_queue_depth: usize,
    /// Client-side latency, submission to reply, nearest-rank quantiles.
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Summary {
    pub pid: u32,
    /// By model key as text: as it is when UTF-8, else with Rust's byte escapes.
    pub models: BTreeMap<String, ModelSummary>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct AccessLogLine {
    pub request_id: u64,
    pub model: String,
    /// None when the request timed out in the queue.
    pub worker: Option<u64>,
    pub outcome: Outcome,
    pub queue_us: Option<u64>,
    pub total_us: u64,
}

/// A model key as text: as it is when it is UTF-8, else with Rust's byte escapes.
pub fn model_text(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(text) => text.to_string(),
        Err(_) => key.escape_ascii().to_string(),
    }
}
