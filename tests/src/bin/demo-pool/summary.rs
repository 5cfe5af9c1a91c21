//! The pool's ground truth: what it did, per model, printed as one JSON line, and the access
//! log of every request it answered.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufWriter, Write},
    path::Path,
    sync::{Arc, Mutex},
    time::Instant,
};

pub use pool_obs_tests::ground_truth::Outcome;
use pool_obs_tests::ground_truth::{AccessLogLine, Bounds, Summary, Tally, model_text};

use crate::{clock::Bracket, pool::Pool};

/// What a client learns of its request: its outcome, and when the pool's probed functions saw
/// it submitted, started and ended.
pub struct Reply {
    pub outcome: Outcome,
    /// The worker that served it; none if it timed out in the queue.
    pub worker: Option<u64>,
    pub submitted: Bracket,
    /// None if it timed out in the queue or its worker crashed serving it.
    pub started: Option<Bracket>,
    pub ended: Bracket,
}

impl Reply {
    /// An answer the pool never gave, at `now`.
    pub fn lost(now: Instant) -> Self {
        let now = Bracket::at(now);
        Self { outcome: Outcome::Failed, worker: None, submitted: now, started: None, ended: now }
    }
}

/// The least and most time between two probed moments.
fn between(from: Bracket, to: Bracket) -> Bounds {
    let nanos = |later: Instant, earlier: Instant| later.saturating_duration_since(earlier).as_nanos() as u64;
    Bounds { at_least_ns: nanos(to.before, from.after), at_most_ns: nanos(to.after, from.before) }
}

/// The requests the clients saw answered.
#[derive(Clone)]
pub struct Report {
    requests: Arc<Mutex<BTreeMap<Vec<u8>, Tally>>>,
    access_log: Option<Arc<Mutex<BufWriter<File>>>>,
}

impl Report {
    pub fn new(access_log: Option<&Path>) -> std::io::Result<Self> {
        let access_log =
            access_log.map(File::create).transpose()?.map(|file| Arc::new(Mutex::new(BufWriter::new(file))));
        Ok(Self { requests: Arc::default(), access_log })
    }

    pub fn record(&self, model: &[u8], request_id: u64, reply: &Reply) {
        let total_us = reply.ended.after.saturating_duration_since(reply.submitted.after).as_micros() as u64;
        {
            let mut requests = self.requests.lock().unwrap();
            requests.entry(model.to_vec()).or_default().record(reply.outcome, total_us);
        }
        if let Some(log) = &self.access_log {
            let line = AccessLogLine {
                request_id,
                model: model_text(model),
                worker: reply.worker,
                outcome: reply.outcome,
                queue: reply.started.map(|started| between(reply.submitted, started)),
                total: between(reply.submitted, reply.ended),
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
            let record = lifecycle.get(&key).copied().unwrap_or_default();
            let summary = requests.entry(key.clone()).or_default().summary(record);
            (model_text(&key), summary)
        })
        .collect();
    Summary::print(models);
}
