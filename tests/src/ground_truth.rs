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
    /// Dropped by its client before it was answered.
    Cancelled,
}

#[derive(Serialize, Deserialize, Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Requests {
    pub ok: u64,
    pub failed: u64,
    pub timeout: u64,
    #[serde(default)]
    pub cancelled: u64,
}

impl Requests {
    pub fn total(&self) -> u64 {
        self.ok + self.failed + self.timeout + self.cancelled
    }

    /// Each count by its `status` label.
    pub fn by_status(&self) -> [(&'static str, u64); 4] {
        [("ok", self.ok), ("failed", self.failed), ("timeout", self.timeout), ("cancelled", self.cancelled)]
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
    /// Requests whose handler panicked (the pool caught it): counted in `requests.failed`.
    #[serde(default)]
    pub panics: u64,
    /// Polls of the requests' futures, for an async pool.
    #[serde(default)]
    pub polls: u64,
    /// CPU time of the threads serving the requests, and the rest of their wall time, for a
    /// pool that measures them.
    #[serde(default)]
    pub cpu_seconds: f64,
    #[serde(default)]
    pub offcpu_seconds: f64,
    /// CPU time of the tasks the requests spawned, for a pool that spawns and measures them.
    #[serde(default)]
    pub spawned_cpu_seconds: f64,
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
    /// How long it waited for a worker: none when it timed out in the queue or its worker
    /// crashed serving it.
    pub queue: Option<Bounds>,
    /// From submission to its end.
    pub total: Bounds,
}

/// A span between two probed moments, as the pool can tell it: each moment lies between the
/// pool's clock reading just before the probed call and its first inside it, so the span a
/// probe measures lies within these bounds however the threads were scheduled.
#[derive(Serialize, Deserialize, Debug, Clone, Copy)]
pub struct Bounds {
    pub at_least_ns: u64,
    pub at_most_ns: u64,
}

impl Bounds {
    /// Whether `millis` lies within, give or take `slack_ns` for reading one clock two ways.
    pub fn holds(&self, millis: f64, slack_ns: f64) -> bool {
        let nanos = millis * 1e6;
        nanos >= self.at_least_ns as f64 - slack_ns && nanos <= self.at_most_ns as f64 + slack_ns
    }
}

/// A model key as text: as it is when it is UTF-8, else with Rust's byte escapes.
pub fn model_text(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(text) => text.to_string(),
        Err(_) => key.escape_ascii().to_string(),
    }
}

/// Counts and latencies of one model's answered requests, as a pool's client saw them.
#[derive(Default, Debug)]
pub struct Tally {
    pub requests: Requests,
    /// Failed requests whose handler panicked.
    pub panics: u64,
    latencies_us: Vec<u64>,
}

impl Tally {
    pub fn record(&mut self, outcome: Outcome, latency_us: u64) {
        match outcome {
            Outcome::Ok => self.requests.ok += 1,
            Outcome::Failed => self.requests.failed += 1,
            Outcome::Timeout => self.requests.timeout += 1,
            Outcome::Cancelled => self.requests.cancelled += 1,
        }
        // Latency quantiles are of the requests that finished, as the agent's are.
        if outcome != Outcome::Cancelled {
            self.latencies_us.push(latency_us);
        }
    }

    pub fn summary(&mut self, lifecycle: Lifecycle) -> ModelSummary {
        self.latencies_us.sort_unstable();
        ModelSummary {
            requests: self.requests,
            spawns: lifecycle.spawns,
            evictions: lifecycle.evictions,
            crashes: lifecycle.crashes,
            max_queue_depth: lifecycle.max_queue_depth,
            p50_ms: quantile_ms(&self.latencies_us, 0.5),
            p99_ms: quantile_ms(&self.latencies_us, 0.99),
            panics: self.panics,
            polls: 0,
            cpu_seconds: 0.0,
            offcpu_seconds: 0.0,
            spawned_cpu_seconds: 0.0,
        }
    }
}

/// What happened to a model's workers, and how long its queue got.
#[derive(Clone, Copy, Default, Debug)]
pub struct Lifecycle {
    pub spawns: u64,
    pub evictions: u64,
    pub crashes: u64,
    pub max_queue_depth: usize,
}

/// The nearest-rank quantile of sorted latencies, in milliseconds.
fn quantile_ms(sorted_us: &[u64], quantile: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((quantile * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
    sorted_us[rank - 1] as f64 / 1000.0
}

impl Summary {
    /// Prints the summary as one JSON line on stdout, where the tests read it.
    pub fn print(models: BTreeMap<String, ModelSummary>) {
        use std::io::Write;
        let summary = Summary { pid: std::process::id(), models };
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{}", serde_json::to_string(&summary).expect("a summary serialises"));
        let _ = stdout.flush();
    }
}

/// The CPU time the calling thread has had (`CLOCK_THREAD_CPUTIME_ID`): how a pool measures
/// its requests' CPU time, to compare with the agent's.
pub fn thread_cpu() -> std::time::Duration {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    std::time::Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}
