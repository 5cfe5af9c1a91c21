//! Per-model state built from the event stream: the requests in flight, the live workers, the
//! sliding-window statistics, and the metric series they feed. Events arrive in the order the
//! kernel wrote them; each kind has its handler, `on_<event>`.

mod cpu;
mod departed;
mod futures;
mod handoffs;
mod models;
mod recent;
mod request_log;
mod requests;
mod samples;
pub mod window;
mod workers;

use std::{collections::HashMap, sync::Arc, time::Duration};

use hdrhistogram::Histogram;
use pool_obs_common::event::EventKind;
use prometheus_client::metrics::counter::Counter;
use tracing::{debug, info};

use crate::{
    anomaly::Anomaly,
    attach::plan::ProbeInfo,
    clock::WallClock,
    decode::Event,
    publish::{Metrics, ModelView, Timeline},
};
use departed::Departed;
use models::ModelState;
#[cfg(test)]
use models::{OTHER_MODELS, UNKNOWN_MODEL};
use recent::{RecentRequests, RequestRecord};
use requests::InFlight;
use workers::Worker;

/// Where request logs go: `RUST_LOG=pool_obs::requests=debug` shows every completed request.
pub const REQUEST_LOG: &str = "pool_obs::requests";
const WORKER_LOG: &str = "pool_obs::workers";
const ANOMALY_LOG: &str = "pool_obs::anomalies";

type ModelId = usize;

#[derive(Clone)]
pub struct Settings {
    /// The sliding window of quantiles, maximum queue depth and error rate.
    pub window: Duration,
    /// Requests slower than this are logged at info.
    pub slow_request: Duration,
    /// How many completed requests `/requests/{id}` remembers.
    pub recent_requests: usize,
    /// Distinct model keys tracked; the rest count under [`models::OTHER_MODELS`].
    pub max_models: usize,
    /// Requests in flight tracked at most.
    pub max_in_flight: usize,
    /// Requests in flight longer are forgotten.
    pub request_expiry: Duration,
}

/// What each probe's events came to, by probe index.
#[derive(Clone, Debug, Default)]
pub struct ProbeCounts {
    /// Events written.
    pub events: Vec<u64>,
    /// Events that contradicted the life of what the probe follows ([`Aggregator::contradiction`]).
    pub contradictions: Vec<u64>,
}

/// One process's requests, workers and models.
pub struct Aggregator {
    /// The process whose events these are: every series carries it.
    pid: u32,
    metrics: Arc<Metrics>,
    probes: Vec<ProbeInfo>,
    probed: Probed,
    settings: Settings,
    event_counters: Vec<(EventKind, Counter)>,
    by_probe: ProbeCounts,
    /// The kernel's count of lost events, as the last event carried it.
    lost_before: u64,
    model_ids: HashMap<Vec<u8>, ModelId>,
    models: Vec<ModelState>,
    /// Models with keys of their own, not counting the unknown and other models.
    tracked_models: usize,
    requests: HashMap<u64, InFlight>,
    /// By thread: the request it started last and has not ended, for requests that start and
    /// end at entry probes (a CPU sample's thread serves it).
    threads: HashMap<u32, u64>,
    /// Async requests in flight, by their future's address.
    futures: futures::Futures,
    recent: RecentRequests,
    workers: HashMap<u64, Worker>,
    departed: Departed,
    cpu: cpu::CpuSplit,
    merged_latency: Histogram<u32>,
}

/// Which events the manifest probes at all: only then does an event's absence mean something.
struct Probed {
    submissions: bool,
    spawns: bool,
}

impl Probed {
    fn of(probes: &[ProbeInfo]) -> Self {
        let probed = |kind| probes.iter().any(|probe| probe.event == kind);
        Self { submissions: probed(EventKind::RequestSubmitted), spawns: probed(EventKind::WorkerSpawned) }
    }
}

impl Aggregator {
    pub fn new(pid: u32, metrics: Arc<Metrics>, probes: Vec<ProbeInfo>, settings: Settings) -> Self {
        let event_counters = EventKind::ALL.map(|kind| (kind, metrics.event_counter(kind))).to_vec();
        let cpu = cpu::CpuSplit::new(metrics.cpu_for_process(pid));
        Self {
            pid,
            metrics,
            probed: Probed::of(&probes),
            by_probe: ProbeCounts { events: vec![0; probes.len()], contradictions: vec![0; probes.len()] },
            lost_before: 0,
            probes,
            event_counters,
            model_ids: HashMap::new(),
            models: Vec::new(),
            tracked_models: 0,
            requests: HashMap::new(),
            threads: HashMap::new(),
            futures: futures::Futures::default(),
            recent: RecentRequests::new(settings.recent_requests),
            workers: HashMap::new(),
            departed: Departed::default(),
            cpu,
            merged_latency: window::new_histogram(),
            settings,
        }
    }

    #[cfg(test)]
    pub fn models(&self) -> &[ModelState] {
        &self.models
    }

    /// Every model as `/health` reports it.
    pub fn views(&self) -> Vec<ModelView<'_>> {
        let workers_seen =
            self.probes.iter().any(|probe| probe.event == EventKind::WorkerSpawned || probe.has_worker_id);
        self.models.iter().map(|model| model.view(workers_seen)).collect()
    }

    /// Counts an event of `kind` in `pool_obs_events_total`.
    fn count_event(&self, kind: EventKind) {
        if let Some((_, counter)) = self.event_counters.iter().find(|(k, _)| *k == kind) {
            counter.inc();
        }
    }

    pub fn apply(&mut self, event: &Event) {
        self.count_event(event.kind());
        if let Some(count) = self.by_probe.events.get_mut(event.header().probe as usize) {
            *count += 1;
        }
        let lost_before = event.header().lost_before;
        if lost_before != self.lost_before {
            self.lost_before = lost_before;
            self.events_were_lost();
        }
        match event {
            Event::WorkerSpawned(event) => self.on_worker_spawned(event),
            Event::WorkerEvicted(event) => self.on_worker_evicted(event),
            Event::WorkerCrashed(event) => self.on_worker_crashed(event),
            Event::RequestSubmitted(event) => self.on_request_submitted(event),
            Event::RequestStarted(event) => self.on_request_started(event),
            Event::RequestEnded(event) => self.on_request_ended(event),
            Event::FuturePolled(event) => self.on_future_polled(event),
            Event::FutureDropped(event) => self.on_future_dropped(event),
            Event::HandoffRan(event) => self.on_handoff_ran(event),
            // A sample is labelled, not counted: see `label_sample`.
            Event::CpuSampled(_) => {}
        }
    }

    /// Brings the window statistics, their gauges and the saturation counts up to `now_ns`.
    pub fn refresh(&mut self, now_ns: u64) {
        self.expire_requests(now_ns);
        for model in &mut self.models {
            let slice = model.window.slice_index(now_ns);
            if model.changed || model.summarized_slice != Some(slice) {
                model.recent = model.window.summarize(now_ns, &mut self.merged_latency);
                model.summarized_slice = Some(slice);
                model.changed = false;
            }
            let quantiles = [model.recent.p50_ms, model.recent.p95_ms, model.recent.p99_ms];
            model.metrics.request_duration_quantiles.set_quantiles(quantiles.map(|millis| millis / 1000.0));
            model.metrics.queue_depth_max.set(model.recent.max_queue_depth as i64);
            let saturated = model.workers > 0 && model.busy == model.workers;
            model.saturated_refreshes = if saturated { model.saturated_refreshes + 1 } else { 0 };
        }
        self.log_suppressed(Some(now_ns));
    }

    /// The process has had `total_ns` of CPU time since it was followed.
    pub fn process_cpu(&mut self, total_ns: u64) {
        self.cpu.process_total(total_ns);
    }

    /// Counts, once the agent stops, the request lines not written.
    pub fn flush_request_logs(&mut self) {
        self.log_suppressed(None);
    }

    fn log_suppressed(&mut self, now_ns: Option<u64>) {
        for model in &mut self.models {
            if let Some(suppressed) = model.log_budget.take_suppressed(now_ns) {
                info!(
                    target: REQUEST_LOG,
                    pid = self.pid,
                    model = %model.label,
                    suppressed,
                    "more failed, timed-out or slow requests than {} a second: not logged one by one",
                    request_log::LINES_PER_SECOND
                );
            }
        }
    }

    /// A request in flight or recently completed, by the pool's own id.
    /// Events written so far, by probe index.
    pub fn by_probe(&self) -> &ProbeCounts {
        &self.by_probe
    }

    pub fn timeline(&self, request_id: u64, wall: &WallClock) -> Option<Timeline> {
        let label = |model: ModelId| self.models[model].label.clone();
        if let Some(request) = self.requests.get(&request_id) {
            let record = RequestRecord {
                model: request.model,
                worker: request.worker,
                status: None,
                submitted_ns: Some(request.submitted_ns),
                started_ns: request.started_ns,
                ended_ns: None,
                polls: None,
                cpu_ns: None,
            };
            return Some(record.timeline(request_id, label(request.model), wall));
        }
        if let Some(future) = self.futures.open.values().find(|future| future.request_id == Some(request_id))
        {
            return Some(future.record(None, None).timeline(request_id, label(future.model), wall));
        }
        self.recent.get(request_id).map(|record| record.timeline(request_id, label(record.model), wall))
    }

    fn anomaly(&self, kind: Anomaly, id: u64) {
        self.metrics.anomalies.add(kind, 1);
        debug!(target: ANOMALY_LOG, kind = kind.name(), id, "inconsistent event");
    }

    /// An anomaly an event of `probe` showed about the life of what it follows: counted by
    /// probe too, so that `/health` can name the probe whose counts it cannot vouch for.
    fn contradiction(&mut self, kind: Anomaly, id: u64, probe: u32) {
        self.anomaly(kind, id);
        if let Some(count) = self.by_probe.contradictions.get_mut(probe as usize) {
            *count += 1;
        }
    }
}

#[cfg(test)]
mod tests;
