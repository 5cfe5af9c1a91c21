//! The pool's ground truth: what it did, per model, printed as one JSON line, and the access
//! log of every request it answered.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufWriter, Write},
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

pub use pool_obs_tests::ground_truth::Outcome;
use pool_obs_tests::ground_truth::{AccessLogLine, ModelSummary, Requests, Summary, model_text};

use crate::pool::{Lifecycle, Pool};

/// What a client learns of its request.
pub struct Reply {
    pub outcome: Outcome,
    /// The worker that served it; none if it timed out in the queue.
    pub worker: Option<u64>,
    /// How long it waited for a worker; none if it timed out in the queue.
    pub queued: Option<Duration>,
    /// From submission to the reply.
    pub total: Duration,
}

#[derive(Default)]
struct ModelRequests {
    counts: Requests,
    latencies_us: Vec<u64>,
}

/// The requests the clients saw answered.
#[derive(Clone)]
pub struct Report {
    requests: Arc<Mutex<BTreeMap<Vec<u8>, ModelRequests>>>,
    access_log: Option<Arc<Mutex<BufWriter<File>>>>,
}

impl Report {
    pub fn new(access_log: Option<&Path>) -> std::io::Result<Self> {
        let access_log =
            access_log.map(File::create).transpose()?.map(|file| Arc::new(Mutex::new(BufWriter::new(file))));
        Ok(Self { requests: Arc::default(), access_log })
    }

    pub fn record(&self, model: &[u8], request_id: u64, reply: &Reply) {
        let total_us = reply.total.as_micros() as u64;
        {
            let mut requests = self.requests.lock().unwrap();
            let entry = requests.entry(model.to_vec()).or_default();
            match reply.outcome {
                Outcome::Ok => entry.counts.ok += 1,
                Outcome::Failed => entry.counts.failed += 1,
                Outcome::Timeout => entry.counts.timeout += 1,
            }
            entry.latencies_us.push(total_us);
        }
        if let Some(log) = &self.access_log {
            let line = AccessLogLine {
                request_id,
                model: model_text(model),
                worker: reply.worker,
                outcome: reply.outcome,
                queue_us: reply.queued.map(|queued| queued.as_micros() as u64),
                total_us,
            };
            let mut log = log.lock().unwrap();
            let _ = serde_json::to_writer(&mut *log, &line);
            let _ = writeln!(log);
        }
    }

    fn flush(&self) {
        if let Some(log) = &self.access_log {
            let _ = log.lock().unwrap().flush();
        }
    }
}

pub fn print(pool: &Pool, report: &Report) {
    report.flush();
    let lifecycle = pool.lifecycle();
    let mut requests = report.requests.lock().unwrap();
    let keys: Vec<Vec<u8>> = requests.keys().chain(lifecycle.keys()).cloned().collect();
    let models = keys
        .into_iter()
        .map(|key| {
            let Lifecycle { spawns, evictions, crashes, max_queue_depth } =
                lifecycle.get(&key).copied().unwrap_or_default();
            let entry = requests.entry(key.clone()).or_default();
            entry.latencies_us.sort_unstable();
            let summary = ModelSummary {
                requests: entry.counts,
                spawns,
                evictions,
                crashes,
                max_queue_depth,
                p50_ms: quantile_ms(&entry.latencies_us, 0.5),
                p99_ms: quantile_ms(&entry.latencies_us, 0.99),
            };
            (model_text(&key), summary)
        })
        .collect();
    let summary = Summary { pid: std::process::id(), models };
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{}", serde_json::to_string(&summary).unwrap());
    let _ = stdout.flush();
}

/// The nearest-rank quantile of sorted latencies, in milliseconds.
fn quantile_ms(sorted_us: &[u64], quantile: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((quantile * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
    sorted_us[rank - 1] as f64 / 1000.0
}
