//! What the service itself counts, to compare with the agent: each request's outcome and
//! latency as its handler saw them (a request whose handler is dropped before it answers is
//! cancelled), loads and unloads, and the CPU time of each model's inference and tokenizing.

use std::{
    collections::BTreeMap,
    sync::{Mutex, mpsc},
    time::{Duration, Instant},
};

use pool_obs_tests::ground_truth::{Lifecycle, ModelSummary, Outcome, Summary, Tally};

/// What happened, sent as it happens and counted at the end: a send takes no lock, so that
/// the count does not lengthen the requests it measures when the threads contend.
enum Record {
    Served { model: String, outcome: Outcome, latency: Duration },
    Loaded(String),
    Unloaded(String),
    Inferred(String, Duration),
    Tokenized(String, Duration),
}

pub struct Truth {
    records: mpsc::Sender<Record>,
    received: Mutex<mpsc::Receiver<Record>>,
}

#[derive(Default)]
struct Counts {
    tally: Tally,
    lifecycle: Lifecycle,
    cpu: Duration,
    tokenizing: Duration,
}

impl Default for Truth {
    fn default() -> Self {
        let (records, received) = mpsc::channel();
        Truth { records, received: Mutex::new(received) }
    }
}

impl Truth {
    pub fn serving(&self, model: &str) -> Serving<'_> {
        Serving { truth: self, model: model.to_string(), started: Instant::now(), outcome: None }
    }

    pub fn loaded(&self, model: &str) {
        let _ = self.records.send(Record::Loaded(model.to_string()));
    }

    pub fn unloaded(&self, model: &str) {
        let _ = self.records.send(Record::Unloaded(model.to_string()));
    }

    pub fn inferred(&self, model: &str, cpu: Duration) {
        let _ = self.records.send(Record::Inferred(model.to_string(), cpu));
    }

    pub fn tokenized(&self, model: &str, cpu: Duration) {
        let _ = self.records.send(Record::Tokenized(model.to_string(), cpu));
    }

    pub fn print(&self) {
        let mut models: BTreeMap<String, Counts> = BTreeMap::new();
        for record in self.received.lock().unwrap().try_iter() {
            match record {
                Record::Served { model, outcome, latency } => {
                    models.entry(model).or_default().tally.record(outcome, latency.as_micros() as u64)
                }
                Record::Loaded(model) => models.entry(model).or_default().lifecycle.spawns += 1,
                Record::Unloaded(model) => models.entry(model).or_default().lifecycle.evictions += 1,
                Record::Inferred(model, cpu) => models.entry(model).or_default().cpu += cpu,
                Record::Tokenized(model, cpu) => models.entry(model).or_default().tokenizing += cpu,
            }
        }
        let summaries = models.iter_mut().map(|(model, counts)| {
            let mut summary: ModelSummary = counts.tally.summary(counts.lifecycle);
            summary.cpu_seconds = counts.cpu.as_secs_f64();
            summary.spawned_cpu_seconds = counts.tokenizing.as_secs_f64();
            (model.clone(), summary)
        });
        Summary::print(summaries.collect());
    }
}

/// One request in its handler: recorded when it is dropped, cancelled unless it finished.
pub struct Serving<'a> {
    truth: &'a Truth,
    model: String,
    started: Instant,
    outcome: Option<Outcome>,
}

impl Serving<'_> {
    pub fn finish(&mut self, outcome: Outcome) {
        self.outcome = Some(outcome);
    }
}

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        let latency = self.started.elapsed();
        let outcome = self.outcome.unwrap_or(Outcome::Cancelled);
        let model = std::mem::take(&mut self.model);
        let _ = self.truth.records.send(Record::Served { model, outcome, latency });
    }
}
