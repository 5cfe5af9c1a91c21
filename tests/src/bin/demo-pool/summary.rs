//! The pool's ground truth: what it did, per model, printed as one JSON line.

use std::{
    collections::BTreeMap,
    io::Write,
    sync::{Arc, Mutex},
};

use serde::Serialize;

use crate::pool::{Lifecycle, Pool};

#[derive(Serialize, Default, Clone, Copy)]
pub struct Requests {
    pub ok: u64,
    pub failed: u64,
    pub timeout: u64,
}

/// Outcomes of the requests the load generator saw complete.
#[derive(Clone, Default)]
pub struct Report {
    requests: Arc<Mutex<BTreeMap<String, Requests>>>,
}

#[derive(Clone, Copy)]
pub enum Outcome {
    Ok,
    Failed,
    Timeout,
}

impl Report {
    pub fn record(&self, model: &str, outcome: Outcome) {
        let mut requests = self.requests.lock().unwrap();
        let counts = requests.entry(model.to_string()).or_default();
        match outcome {
            Outcome::Ok => counts.ok += 1,
            Outcome::Failed => counts.failed += 1,
            Outcome::Timeout => counts.timeout += 1,
        }
    }
}

#[derive(Serialize)]
struct ModelSummary {
    requests: Requests,
    spawns: u64,
    evictions: u64,
    crashes: u64,
}

#[derive(Serialize)]
struct Summary {
    pid: u32,
    models: BTreeMap<String, ModelSummary>,
}

pub fn print(pool: &Pool, report: &Report) {
    let requests = report.requests.lock().unwrap().clone();
    let lifecycle = pool.lifecycle();
    let names = requests.keys().chain(lifecycle.keys()).cloned();
    let models = names
        .map(|name| {
            let Lifecycle { spawns, evictions, crashes } = lifecycle.get(&name).copied().unwrap_or_default();
            let requests = requests.get(&name).copied().unwrap_or_default();
            (name, ModelSummary { requests, spawns, evictions, crashes })
        })
        .collect();
    let summary = Summary { pid: std::process::id(), models };
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{}", serde_json::to_string(&summary).unwrap());
    let _ = stdout.flush();
}
