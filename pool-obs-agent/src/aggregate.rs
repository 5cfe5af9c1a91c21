//! Per-model state built from the event stream: the requests in flight, the live workers, and
//! the metric series they feed. Events arrive in the order the kernel wrote them.

use std::collections::HashMap;

use pool_obs_common::event::{
    EventKind, MODEL_PRESENT, ModelKey, RequestEnded, RequestStarted, RequestSubmitted, WorkerCrashed,
    WorkerEvicted, WorkerSpawned,
};
use prometheus_client::metrics::counter::Counter;

use crate::{
    attach::plan::ProbeInfo,
    decode::Event,
    export::metrics::{Metrics, ModelMetrics},
    outcome::Status,
};

/// The label for events whose model could not be known (no model in the manifest for that
/// function, and no earlier event for the same request or worker).
pub const UNKNOWN_MODEL: &str = "__unknown__";

type ModelId = usize;

pub struct Aggregator {
    metrics: std::sync::Arc<Metrics>,
    probes: Vec<ProbeInfo>,
    event_counters: Vec<(EventKind, Counter)>,
    model_ids: HashMap<Vec<u8>, ModelId>,
    models: Vec<ModelState>,
    requests: HashMap<u64, InFlight>,
    workers: HashMap<u64, Worker>,
}

pub struct ModelState {
    pub label: String,
    metrics: ModelMetrics,
    pub queued: u64,
    pub workers: u64,
    pub busy: u64,
    pub crashed: u64,
    pub memory_bytes: u64,
    pub requests: [u64; 3],
}

struct InFlight {
    model: ModelId,
    submitted_ns: u64,
    started_ns: Option<u64>,
    worker: Option<u64>,
}

struct Worker {
    model: ModelId,
    memory_bytes: u64,
    serving: Option<u64>,
    /// Evicted while serving: it finishes (or crashes on) its request, then leaves.
    retiring: bool,
}

/// When a request's phases happened, as far as the events tell.
struct Timeline {
    submitted_ns: Option<u64>,
    started_ns: Option<u64>,
    ended_ns: u64,
}

impl Aggregator {
    pub fn new(metrics: std::sync::Arc<Metrics>, probes: Vec<ProbeInfo>) -> Self {
        let event_counters = EventKind::ALL.map(|kind| (kind, metrics.event_counter(kind))).to_vec();
        Self {
            metrics,
            probes,
            event_counters,
            model_ids: HashMap::new(),
            models: Vec::new(),
            requests: HashMap::new(),
            workers: HashMap::new(),
        }
    }

    pub fn models(&self) -> &[ModelState] {
        &self.models
    }

    pub fn apply(&mut self, event: &Event) {
        let kind = event.kind();
        if let Some((_, counter)) = self.event_counters.iter().find(|(k, _)| *k == kind) {
            counter.inc();
        }
        match event {
            Event::WorkerSpawned(event) => self.on_worker_spawned(event),
            Event::WorkerEvicted(event) => self.on_worker_evicted(event),
            Event::WorkerCrashed(event) => self.on_worker_crashed(event),
            Event::RequestSubmitted(event) => self.on_request_submitted(event),
            Event::RequestStarted(event) => self.on_request_started(event),
            Event::RequestEnded(event) => self.on_request_ended(event),
        }
    }

    fn on_worker_spawned(&mut self, event: &WorkerSpawned) {
        let model = self.model_of(&event.model, None);
        self.models[model].metrics.worker_spawns.inc();
        self.remove_worker(event.worker_id);
        let worker = Worker { model, memory_bytes: event.memory_bytes, serving: None, retiring: false };
        self.workers.insert(event.worker_id, worker);
        let state = &mut self.models[model];
        state.workers += 1;
        state.memory_bytes += event.memory_bytes;
        state.publish_workers();
    }

    fn on_worker_evicted(&mut self, event: &WorkerEvicted) {
        let model = self.model_of(&event.model, self.worker_model(event.worker_id));
        self.models[model].metrics.worker_evictions.inc();
        match self.workers.get_mut(&event.worker_id) {
            Some(worker) if worker.serving.is_some() => worker.retiring = true,
            _ => self.remove_worker(event.worker_id),
        }
    }

    fn on_worker_crashed(&mut self, event: &WorkerCrashed) {
        let model = self.model_of(&event.model, self.worker_model(event.worker_id));
        let state = &mut self.models[model];
        state.metrics.worker_crashes.inc();
        state.crashed += 1;
        // The request the worker was serving died with it: the pool's client sees a failure.
        let serving = self.workers.get(&event.worker_id).and_then(|worker| worker.serving);
        if let Some(request) = serving.and_then(|id| self.requests.remove(&id)) {
            let timeline = Timeline {
                submitted_ns: Some(request.submitted_ns),
                started_ns: request.started_ns,
                ended_ns: event.header.ts_ns,
            };
            self.end_request(request.model, Status::Failed, &timeline);
        }
        self.remove_worker(event.worker_id);
    }

    fn on_request_submitted(&mut self, event: &RequestSubmitted) {
        let model = self.model_of(&event.model, None);
        let request = InFlight { model, submitted_ns: event.header.ts_ns, started_ns: None, worker: None };
        if let Some(reused) = self.requests.insert(event.request_id, request) {
            self.unqueue(&reused);
        }
        self.models[model].queued += 1;
        self.models[model].publish_queue();
    }

    fn on_request_started(&mut self, event: &RequestStarted) {
        let worker_model = self.worker_model(event.worker_id);
        let known = self.requests.get(&event.request_id).map(|request| request.model);
        let model = self.model_of(&event.model, known.or(worker_model));
        let now = event.header.ts_ns;
        let request = self
            .requests
            .entry(event.request_id)
            // Submitted before we attached: it starts its life here.
            .or_insert(InFlight { model, submitted_ns: now, started_ns: Some(now), worker: None });
        let was_queued = request.started_ns.is_none();
        let request_model = request.model;
        request.started_ns = Some(now);
        request.worker = Some(event.worker_id);
        if was_queued {
            let state = &mut self.models[request_model];
            state.queued = state.queued.saturating_sub(1);
            state.publish_queue();
        }
        self.worker_serves(event.worker_id, request_model, Some(event.request_id));
    }

    fn on_request_ended(&mut self, event: &RequestEnded) {
        let probe = self.probes.get(event.header.probe as usize);
        let status = probe
            .and_then(|probe| probe.outcome.as_ref())
            .map_or(Status::Failed, |rule| rule.classify(event.outcome_value));
        let correlated_by_id = probe.is_some_and(|probe| probe.has_request_id);
        let request = correlated_by_id.then(|| self.requests.remove(&event.request_id)).flatten();
        let worker_id = request.as_ref().and_then(|request| request.worker).or(Some(event.worker_id));
        let fallback =
            request.as_ref().map(|request| request.model).or(worker_id.and_then(|id| self.worker_model(id)));
        let model = self.model_of(&event.model, fallback);
        let entered = (event.entered_ns != 0).then_some(event.entered_ns);
        let timeline = match &request {
            Some(request) => {
                self.unqueue(request);
                Timeline {
                    submitted_ns: Some(request.submitted_ns),
                    started_ns: request.started_ns,
                    ended_ns: event.header.ts_ns,
                }
            }
            // The call itself is the request: it was submitted and started when it was entered.
            None => Timeline { submitted_ns: entered, started_ns: entered, ended_ns: event.header.ts_ns },
        };
        self.end_request(model, status, &timeline);
        if let Some(worker_id) = worker_id {
            self.worker_serves(worker_id, model, None);
        }
    }

    fn end_request(&mut self, model: ModelId, status: Status, timeline: &Timeline) {
        let state = &mut self.models[model];
        state.requests[status as usize] += 1;
        state.metrics.requests(status).inc();
        let seconds = |from: u64, to: u64| to.saturating_sub(from) as f64 / 1e9;
        if let Some(submitted) = timeline.submitted_ns {
            state.metrics.request_duration.observe(seconds(submitted, timeline.ended_ns));
        }
        if let Some(started) = timeline.started_ns {
            state.metrics.request_service.observe(seconds(started, timeline.ended_ns));
            if let Some(submitted) = timeline.submitted_ns {
                state.metrics.request_queue.observe(seconds(submitted, started));
            }
        }
    }

    /// A request that ends or is replaced while still queued leaves the queue.
    fn unqueue(&mut self, request: &InFlight) {
        if request.started_ns.is_none() {
            let state = &mut self.models[request.model];
            state.queued = state.queued.saturating_sub(1);
            state.publish_queue();
        }
    }

    /// Marks a worker busy with `request` or idle; a worker first seen here existed before we
    /// attached and joins the live set.
    fn worker_serves(&mut self, worker_id: u64, model: ModelId, request: Option<u64>) {
        let worker = self.workers.entry(worker_id).or_insert_with(|| {
            self.models[model].workers += 1;
            Worker { model, memory_bytes: 0, serving: None, retiring: false }
        });
        let was_busy = worker.serving.is_some();
        worker.serving = request;
        let retired = worker.retiring && request.is_none();
        let state = &mut self.models[worker.model];
        match (was_busy, request.is_some()) {
            (false, true) => state.busy += 1,
            (true, false) => state.busy -= 1,
            _ => {}
        }
        state.publish_workers();
        if retired {
            self.remove_worker(worker_id);
        }
    }

    fn remove_worker(&mut self, worker_id: u64) {
        let Some(worker) = self.workers.remove(&worker_id) else {
            return;
        };
        let state = &mut self.models[worker.model];
        state.workers -= 1;
        state.memory_bytes -= worker.memory_bytes;
        if worker.serving.is_some() {
            state.busy -= 1;
        }
        state.publish_workers();
    }

    fn worker_model(&self, worker_id: u64) -> Option<ModelId> {
        self.workers.get(&worker_id).map(|worker| worker.model)
    }

    /// The model an event names, else `fallback`, else the unknown model.
    fn model_of(&mut self, key: &ModelKey, fallback: Option<ModelId>) -> ModelId {
        if key.state == MODEL_PRESENT {
            let captured = &key.bytes[..(key.captured as usize).min(key.bytes.len())];
            return self.model_id(captured, key.len > u64::from(key.captured));
        }
        fallback.unwrap_or_else(|| self.model_id(UNKNOWN_MODEL.as_bytes(), false))
    }

    fn model_id(&mut self, key: &[u8], truncated: bool) -> ModelId {
        if let Some(id) = self.model_ids.get(key) {
            return *id;
        }
        let label = model_label(key, truncated);
        let id = self.models.len();
        self.models.push(ModelState {
            metrics: self.metrics.for_model(&label),
            label,
            queued: 0,
            workers: 0,
            busy: 0,
            crashed: 0,
            memory_bytes: 0,
            requests: [0; 3],
        });
        self.model_ids.insert(key.to_vec(), id);
        id
    }
}

impl ModelState {
    fn publish_queue(&self) {
        self.metrics.queue_depth.set(self.queued as i64);
    }

    fn publish_workers(&self) {
        self.metrics.workers_busy.set(self.busy as i64);
        self.metrics.workers_idle.set((self.workers - self.busy) as i64);
        self.metrics.worker_memory.set(self.memory_bytes as i64);
    }
}

/// A model key as a label value: as it is when it is UTF-8, else with Rust's byte escapes
/// (`\xff`, `\"`, `\n`); `…` ends a key longer than what the probe captured.
pub fn model_label(key: &[u8], truncated: bool) -> String {
    let mut label = match std::str::from_utf8(key) {
        Ok(text) => text.to_string(),
        Err(_) => key.escape_ascii().to_string(),
    };
    if truncated {
        label.push('…');
    }
    label
}

#[cfg(test)]
mod tests;
