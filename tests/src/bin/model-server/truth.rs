//! What the service itself counts, to compare with the agent: each request's outcome and
//! latency as its handler saw them (a request whose handler is dropped before it answers is
//! cancelled), loads and unloads, and the CPU time of each model's inference.

use std::{
    collections::BTreeMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use pool_obs_tests::ground_truth::{Lifecycle, ModelSummary, Outcome, Summary, Tally};

#[derive(Default)]
pub struct Truth {
    models: Mutex<BTreeMap<String, Counts>>,
}

#[derive(Default)]
struct Counts {
    tally: Tally,
    lifecycle: Lifecycle,
    cpu: Duration,
}

impl Truth {
    pub fn serving(&self, model: &str) -> Serving<'_> {
        Serving { truth: self, model: model.to_string(), started: Instant::now(), outcome: None }
    }

    pub fn loaded(&self, model: &str) {
        self.with(model, |counts| counts.lifecycle.spawns += 1);
    }

    pub fn unloaded(&self, model: &str) {
        self.with(model, |counts| counts.lifecycle.evictions += 1);
    }

    pub fn inferred(&self, model: &str, cpu: Duration) {
        self.with(model, |counts| counts.cpu += cpu);
    }

    fn with(&self, model: &str, change: impl FnOnce(&mut Counts)) {
        change(self.models.lock().unwrap().entry(model.to_string()).or_default());
    }

    pub fn print(&self) {
        let mut models = self.models.lock().unwrap();
        let summaries = models.iter_mut().map(|(model, counts)| {
            let mut summary: ModelSummary = counts.tally.summary(counts.lifecycle);
            summary.cpu_seconds = counts.cpu.as_secs_f64();
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
        let latency = self.started.elapsed().as_micros() as u64;
        let outcome = self.outcome.unwrap_or(Outcome::Cancelled);
        self.truth.with(&self.model, |counts| counts.tally.record(outcome, latency));
    }
}
