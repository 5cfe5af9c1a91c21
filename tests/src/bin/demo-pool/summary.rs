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
use pool_obs_tests::ground_truth::{AccessLogLine, Summary, Tally, model_text};

use crate::pool::Pool;

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
        let total_us = reply.total.as_micros() as u64;
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
            let record = lifecycle.get(&key).copied().unwrap_or_default();
            let summary = requests.entry(key.clone()).or_default().summary(record);
            (model_text(&key), summary)
        })
        .collect();
    Summary::print(models);
}
