//! Per-model state built from the event stream: the requests in flight, the live workers, the
//! sliding-window statistics, and the metric series they feed. Events arrive in the order the
//! kernel wrote them; each kind has its handler, `on_<event>`.

mod departed;
mod futures;
mod request_log;
mod requests;
pub mod window;

use std::{collections::HashMap, sync::Arc, time::Duration};

use hdrhistogram::Histogram;
use pool_obs_common::event::{
    CallEnding, EventKind, Header, MODEL_PRESENT, ModelKey, RequestEnded, RequestStarted, RequestSubmitted,
    WorkerCrashed, WorkerEvicted, WorkerSpawned,
};
use prometheus_client::metrics::counter::Counter;
use tracing::{debug, info, warn};

use crate::{
    anomaly::Anomaly,
    attach::plan::ProbeInfo,
    clock::WallClock,
    decode::{DecodeError, Event},
    outcome::{ByStatus, Status},
    publish::{Metrics, ModelMetrics, PollMetrics},
};
use departed::Departed;
use request_log::LogBudget;
pub use requests::Timeline;
use requests::{RecentRequests, RequestRecord};
use window::Window;

/// The label for events whose model could not be known (no model in the manifest for that
/// function, and no earlier event for the same request or worker).
pub const UNKNOWN_MODEL: &str = "__unknown__";

/// The label for models past `--max-models`: a flood of distinct keys cannot grow the agent.
pub const OTHER_MODELS: &str = "__other__";

/// Where request logs go: `RUST_LOG=pool_obs::requests=debug` shows every completed request.
pub const REQUEST_LOG: &str = "pool_obs::requests";
const WORKER_LOG: &str = "pool_obs::workers";
const ANOMALY_LOG: &str = "pool_obs::anomalies";

type ModelId = usize;

pub struct Settings {
    /// The sliding window of quantiles, maximum queue depth and error rate.
    pub window: Duration,
    /// Requests slower than this are logged at info.
    pub slow_request: Duration,
    /// How many completed requests `/requests/{id}` remembers.
    pub recent_requests: usize,
    /// Distinct model keys tracked; the rest count under [`OTHER_MODELS`].
    pub max_models: usize,
    /// Requests in flight tracked at most.
    pub max_in_flight: usize,
    /// Requests in flight longer are forgotten.
    pub request_expiry: Duration,
}

pub struct Aggregator {
    metrics: Arc<Metrics>,
    probes: Vec<ProbeInfo>,
    probed: Probed,
    settings: Settings,
    event_counters: Vec<(EventKind, Counter)>,
    /// Events written, by probe index.
    events_by_probe: Vec<u64>,
    model_ids: HashMap<Vec<u8>, ModelId>,
    models: Vec<ModelState>,
    /// Models with keys of their own, not counting the unknown and other models.
    tracked_models: usize,
    requests: HashMap<u64, InFlight>,
    /// Async requests in flight, by their future's address.
    futures: HashMap<u64, futures::OpenFuture>,
    recent: RecentRequests,
    workers: HashMap<u64, Worker>,
    departed: Departed,
    merged_latency: Histogram<u32>,
}

pub struct ModelState {
    pub label: String,
    metrics: ModelMetrics,
    window: Window,
    /// The window's statistics as of the last refresh.
    pub recent: window::Summary,
    pub queued: u64,
    pub workers: u64,
    pub busy: u64,
    pub crashed: u64,
    pub memory_bytes: u64,
    pub requests: ByStatus<u64>,
    /// Made when the model's first async request ends.
    polls: Option<PollMetrics>,
    /// Consecutive refreshes at which every worker was busy.
    pub saturated_refreshes: u32,
    log_budget: LogBudget,
    /// The window slice `recent` was computed in, and whether events came since.
    summarized_slice: Option<u64>,
    changed: bool,
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

impl Aggregator {
    pub fn new(metrics: Arc<Metrics>, probes: Vec<ProbeInfo>, settings: Settings) -> Self {
        let event_counters = EventKind::ALL.map(|kind| (kind, metrics.event_counter(kind))).to_vec();
        Self {
            metrics,
            probed: Probed::of(&probes),
            events_by_probe: vec![0; probes.len()],
            probes,
            event_counters,
            model_ids: HashMap::new(),
            models: Vec::new(),
            tracked_models: 0,
            requests: HashMap::new(),
            futures: HashMap::new(),
            recent: RecentRequests::new(settings.recent_requests),
            workers: HashMap::new(),
            departed: Departed::default(),
            merged_latency: window::new_histogram(),
            settings,
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
        if let Some(count) = self.events_by_probe.get_mut(event.header().probe as usize) {
            *count += 1;
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

    /// Counts, once the agent stops, the request lines not written.
    pub fn flush_request_logs(&mut self) {
        self.log_suppressed(None);
    }

    fn log_suppressed(&mut self, now_ns: Option<u64>) {
        for model in &mut self.models {
            if let Some(suppressed) = model.log_budget.take_suppressed(now_ns) {
                info!(
                    target: REQUEST_LOG,
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
    pub fn events_by_probe(&self) -> &[u64] {
        &self.events_by_probe
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
            };
            return Some(record.timeline(request_id, label(request.model), wall));
        }
        if let Some(future) = self.futures.values().find(|future| future.request_id == Some(request_id)) {
            return Some(future.record(None, None).timeline(request_id, label(future.model), wall));
        }
        self.recent.get(request_id).map(|record| record.timeline(request_id, label(record.model), wall))
    }

    fn on_worker_spawned(&mut self, event: &WorkerSpawned) {
        let model = self.model_of(&event.header, &event.model, None);
        let scale = self.probes.get(event.header.probe as usize).map_or(1.0, |probe| probe.memory_scale);
        let memory_bytes = (event.memory_bytes as f64 * scale) as u64;
        self.models[model].metrics.worker_spawns.inc();
        if self.workers.contains_key(&event.worker_id) {
            self.anomaly(Anomaly::WorkerIdReused, event.worker_id);
            self.remove_worker(event.worker_id);
        }
        self.departed.forget(event.worker_id);
        let worker = Worker { model, memory_bytes, serving: None, retiring: false };
        self.workers.insert(event.worker_id, worker);
        let state = &mut self.models[model];
        state.workers += 1;
        state.memory_bytes += memory_bytes;
        state.publish_workers();
        info!(target: WORKER_LOG, model = %state.label, worker_id = event.worker_id, memory_bytes, "worker spawned");
    }

    fn on_worker_evicted(&mut self, event: &WorkerEvicted) {
        let model = self.model_of(&event.header, &event.model, self.worker_model(event.worker_id));
        self.expect_live_worker(event.worker_id);
        let state = &self.models[model];
        state.metrics.worker_evictions.inc();
        let memory_bytes = self.workers.get(&event.worker_id).map_or(0, |worker| worker.memory_bytes);
        info!(target: WORKER_LOG, model = %state.label, worker_id = event.worker_id, memory_bytes, "worker evicted");
        match self.workers.get_mut(&event.worker_id) {
            Some(worker) if worker.serving.is_some() => worker.retiring = true,
            _ => self.remove_worker(event.worker_id),
        }
    }

    fn on_worker_crashed(&mut self, event: &WorkerCrashed) {
        let model = self.model_of(&event.header, &event.model, self.worker_model(event.worker_id));
        self.expect_live_worker(event.worker_id);
        let state = &mut self.models[model];
        state.metrics.worker_crashes.inc();
        state.crashed += 1;
        let worker = self.workers.get(&event.worker_id);
        let memory_bytes = worker.map_or(0, |worker| worker.memory_bytes);
        warn!(target: WORKER_LOG, model = %state.label, worker_id = event.worker_id, memory_bytes, "worker crashed");
        // The request the worker was serving died with it: the pool's client sees a failure.
        let serving = worker.and_then(|worker| worker.serving);
        let served_here = |request: &InFlight| request.worker == Some(event.worker_id);
        if let Some((request_id, request)) = serving
            .filter(|id| self.requests.get(id).is_some_and(served_here))
            .and_then(|id| self.requests.remove(&id).map(|request| (id, request)))
        {
            let record = RequestRecord {
                model: request.model,
                worker: Some(event.worker_id),
                status: Some(Status::Failed),
                submitted_ns: Some(request.submitted_ns),
                started_ns: request.started_ns,
                ended_ns: Some(event.header.ts_ns),
                polls: None,
            };
            self.end_request(Some(request_id), record, event.header.ts_ns);
        }
        self.remove_worker(event.worker_id);
    }

    fn on_request_submitted(&mut self, event: &RequestSubmitted) {
        let model = self.model_of(&event.header, &event.model, None);
        if !self.has_room_for(event.request_id) {
            return;
        }
        let request = InFlight { model, submitted_ns: event.header.ts_ns, started_ns: None, worker: None };
        if let Some(reused) = self.requests.insert(event.request_id, request) {
            self.anomaly(Anomaly::RequestIdReused, event.request_id);
            self.unqueue(&reused, event.header.ts_ns);
        }
        let state = &mut self.models[model];
        state.queued += 1;
        state.publish_queue(event.header.ts_ns);
    }

    fn on_request_started(&mut self, event: &RequestStarted) {
        let worker = self.named_worker(&event.header, event.worker_id);
        let worker_model = worker.and_then(|worker| self.worker_model(worker));
        let known = self.requests.get(&event.request_id).map(|request| request.model);
        if known.is_none() && self.probed.submissions {
            self.anomaly(Anomaly::RequestStartWithoutSubmit, event.request_id);
        }
        if let Some(worker) = worker {
            self.expect_worker_to_serve(worker);
        }
        let model = self.model_of(&event.header, &event.model, known.or(worker_model));
        if !self.has_room_for(event.request_id) {
            return;
        }
        let now = event.header.ts_ns;
        let request = self
            .requests
            .entry(event.request_id)
            // Submitted before we attached: it starts its life here.
            .or_insert(InFlight { model, submitted_ns: now, started_ns: Some(now), worker: None });
        let was_queued = request.started_ns.is_none();
        let request_model = request.model;
        request.started_ns = Some(now);
        let previous_worker = std::mem::replace(&mut request.worker, worker);
        if let Some(previous) = previous_worker.filter(|previous| Some(*previous) != worker) {
            self.worker_finishes(previous, request_model, Some(event.request_id));
        }
        if was_queued {
            let state = &mut self.models[request_model];
            state.queued = state.queued.saturating_sub(1);
            state.publish_queue(now);
        }
        if let Some(worker) = worker {
            self.worker_serves(worker, request_model, Some(event.request_id));
        }
    }

    /// The worker an event names, if its probe reads one: otherwise the field means nothing.
    fn named_worker(&self, header: &Header, worker_id: u64) -> Option<u64> {
        let probe = self.probes.get(header.probe as usize);
        probe.is_some_and(|probe| probe.has_worker_id).then_some(worker_id)
    }

    fn on_request_ended(&mut self, event: &RequestEnded) {
        let probe = self.probes.get(event.header.probe as usize);
        // A call a panic unwound through failed; when it ended is not known, only when the
        // kernel noticed.
        let unwound = CallEnding::from_u8(event.ending) == Some(CallEnding::Unwound);
        let status = match probe.and_then(|probe| probe.outcome.as_ref()) {
            _ if unwound => Status::Failed,
            Some(rule) => rule.classify(event.outcome_value, event.outcome_detail),
            None => Status::Failed,
        };
        let request_id = probe.is_some_and(|probe| probe.has_request_id).then_some(event.request_id);
        let request = request_id.and_then(|id| self.requests.remove(&id));
        if let Some(id) = request_id.filter(|_| request.is_none() && self.probed.submissions) {
            self.anomaly(Anomaly::RequestEndWithoutStart, id);
        }
        let named_worker = self.named_worker(&event.header, event.worker_id);
        if let Some(worker) = named_worker.filter(|_| request.is_none()) {
            self.expect_worker_to_serve(worker);
        }
        let worker = request.as_ref().and_then(|request| request.worker).or(named_worker);
        let fallback =
            request.as_ref().map(|request| request.model).or(worker.and_then(|id| self.worker_model(id)));
        let model = self.model_of(&event.header, &event.model, fallback);
        let entered = (event.entered_ns != 0).then_some(event.entered_ns);
        let ended_ns = (!unwound).then_some(event.header.ts_ns);
        let record = match &request {
            Some(request) => {
                self.unqueue(request, event.header.ts_ns);
                let worker = request.worker;
                RequestRecord {
                    model,
                    worker,
                    status: Some(status),
                    submitted_ns: Some(request.submitted_ns),
                    started_ns: request.started_ns,
                    ended_ns,
                    polls: None,
                }
            }
            // The call itself is the request: it was submitted and started when it was entered.
            None => RequestRecord {
                model,
                worker: None,
                status: Some(status),
                submitted_ns: entered,
                started_ns: entered,
                ended_ns,
                polls: None,
            },
        };
        self.end_request(request_id, record, event.header.ts_ns);
        if let Some(worker) = worker {
            self.worker_finishes(worker, model, request_id);
        }
    }

    /// Counts a request that ended, as the kernel saw it at `seen_ns`.
    fn end_request(&mut self, request_id: Option<u64>, record: RequestRecord, seen_ns: u64) {
        let status = record.status.unwrap_or(Status::Failed);
        let (total, queue, service) = record.durations();
        let state = &mut self.models[record.model];
        *state.requests.get_mut(status) += 1;
        state.metrics.requests(status).inc();
        let seconds = |duration: Duration| duration.as_secs_f64();
        if let Some(total) = total {
            state.metrics.request_duration.observe(seconds(total));
            state.metrics.request_duration_quantiles.observe(seconds(total));
        }
        if let Some(queue) = queue {
            state.metrics.request_queue.observe(seconds(queue));
        }
        if let Some(service) = service {
            state.metrics.request_service.observe(seconds(service));
        }
        if let Some(polls) = record.polls {
            let metrics = state.polls.get_or_insert_with(|| self.metrics.polls_for(&state.label));
            metrics.polls.inc_by(polls.count);
            metrics.busy_seconds.inc_by(polls.busy_ns as f64 / 1e9);
        }
        state.window.record_request(record.ended_ns.unwrap_or(seen_ns), status, total);
        state.changed = true;
        let notable = status != Status::Ok || total.is_some_and(|total| total > self.settings.slow_request);
        let logged = !notable || state.log_budget.admit(seen_ns);
        if logged {
            log_request(&state.label, request_id, &record, notable);
        }
        if let Some(request_id) = request_id {
            self.recent.insert(request_id, record);
        }
    }

    /// Whether `request_id` is followed or can be: past `max_in_flight`, new ones are not.
    fn has_room_for(&self, request_id: u64) -> bool {
        let room = self.requests.len() + self.futures.len() < self.settings.max_in_flight
            || self.requests.contains_key(&request_id);
        if !room {
            self.anomaly(Anomaly::RequestUntracked, request_id);
        }
        room
    }

    /// Forgets requests in flight for longer than the expiry: their ends were lost or are not
    /// probed, and they would otherwise stay queued or busy forever.
    fn expire_requests(&mut self, now_ns: u64) {
        let expiry = self.settings.request_expiry.as_nanos() as u64;
        self.expire_futures(now_ns, expiry);
        let expired: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, request)| {
                now_ns.saturating_sub(request.started_ns.unwrap_or(request.submitted_ns)) > expiry
            })
            .map(|(id, _)| *id)
            .collect();
        for request_id in expired {
            let Some(request) = self.requests.remove(&request_id) else { continue };
            self.anomaly(Anomaly::RequestExpired, request_id);
            self.unqueue(&request, now_ns);
            if let Some(worker) = request.worker {
                self.worker_finishes(worker, request.model, Some(request_id));
            }
        }
    }

    /// A request that ends or is replaced while still queued leaves the queue.
    fn unqueue(&mut self, request: &InFlight, now_ns: u64) {
        if request.started_ns.is_none() {
            let state = &mut self.models[request.model];
            state.queued = state.queued.saturating_sub(1);
            state.publish_queue(now_ns);
        }
    }

    /// Marks a worker busy with `request` or idle. A worker first seen here existed before we
    /// attached and joins the live set; one that had left serves its last request and leaves.
    fn worker_serves(&mut self, worker_id: u64, model: ModelId, request: Option<u64>) {
        let departed = self.departed.contains(worker_id);
        if departed && request.is_none() && !self.workers.contains_key(&worker_id) {
            return;
        }
        let worker = self.workers.entry(worker_id).or_insert_with(|| {
            self.models[model].workers += 1;
            Worker { model, memory_bytes: 0, serving: None, retiring: departed }
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

    /// The worker is done with `request` (with its current request, if `None`) and idle, unless
    /// it has moved on to another request since.
    fn worker_finishes(&mut self, worker_id: u64, model: ModelId, request: Option<u64>) {
        let serving = self.workers.get(&worker_id).and_then(|worker| worker.serving);
        if request.is_none() || serving.is_none() || serving == request {
            self.worker_serves(worker_id, model, None);
        }
    }

    fn remove_worker(&mut self, worker_id: u64) {
        let Some(worker) = self.workers.remove(&worker_id) else {
            return;
        };
        self.departed.insert(worker_id);
        let state = &mut self.models[worker.model];
        state.workers -= 1;
        state.memory_bytes -= worker.memory_bytes;
        if worker.serving.is_some() {
            state.busy -= 1;
        }
        state.publish_workers();
    }

    /// As [`Self::expect_live_worker`], except that a worker that left lately may still serve
    /// the request it took before it was told to leave.
    fn expect_worker_to_serve(&self, worker_id: u64) {
        if !self.departed.contains(worker_id) {
            self.expect_live_worker(worker_id);
        }
    }

    /// Counts an event naming a worker the agent does not know as live, when it would know.
    fn expect_live_worker(&self, worker_id: u64) {
        if self.probed.spawns && !self.workers.contains_key(&worker_id) {
            self.anomaly(Anomaly::WorkerNotSpawned, worker_id);
        }
    }

    pub fn undecodable(&self, error: &DecodeError) {
        self.metrics.anomalies.add(Anomaly::UndecodableEvent, 1);
        warn!(%error, "undecodable event");
    }

    fn anomaly(&self, kind: Anomaly, id: u64) {
        self.metrics.anomalies.add(kind, 1);
        debug!(target: ANOMALY_LOG, kind = kind.name(), id, "inconsistent event");
    }

    fn worker_model(&self, worker_id: u64) -> Option<ModelId> {
        self.workers.get(&worker_id).map(|worker| worker.model)
    }

    /// The model the probe's manifest names, else the model the event carries, else
    /// `fallback`, else the unknown model.
    fn model_of(&mut self, header: &Header, key: &ModelKey, fallback: Option<ModelId>) -> ModelId {
        let probe = self.probes.get(header.probe as usize);
        if let Some(constant) = probe.and_then(|probe| probe.constant_model.clone()) {
            return self.model_id(constant.as_bytes(), false);
        }
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
        let reserved = key == UNKNOWN_MODEL.as_bytes() || key == OTHER_MODELS.as_bytes();
        if !reserved {
            if self.tracked_models >= self.settings.max_models {
                return self.model_id(OTHER_MODELS.as_bytes(), false);
            }
            self.tracked_models += 1;
        }
        let label = model_label(key, truncated);
        let id = self.models.len();
        self.models.push(ModelState {
            metrics: self.metrics.for_model(&label),
            label,
            window: Window::new(self.settings.window),
            recent: window::Summary::default(),
            queued: 0,
            workers: 0,
            busy: 0,
            crashed: 0,
            memory_bytes: 0,
            requests: ByStatus::default(),
            polls: None,
            saturated_refreshes: 0,
            log_budget: LogBudget::default(),
            summarized_slice: None,
            changed: false,
        });
        self.model_ids.insert(key.to_vec(), id);
        id
    }
}

impl ModelState {
    fn publish_queue(&mut self, now_ns: u64) {
        self.metrics.queue_depth.set(self.queued as i64);
        self.window.record_queue_depth(now_ns, self.queued);
        self.changed = true;
    }

    fn publish_workers(&self) {
        self.metrics.workers_busy.set(self.busy as i64);
        self.metrics.workers_idle.set((self.workers - self.busy) as i64);
        self.metrics.worker_memory.set(self.memory_bytes as i64);
    }
}

/// Every completed request at debug; failures, timeouts and slow requests at info.
/// A completed request's line: at info if it failed, timed out or was slow (`notable`), else
/// at debug.
fn log_request(model: &str, request_id: Option<u64>, record: &RequestRecord, notable: bool) {
    let (total, queue, service) = record.durations();
    let millis = |duration: Option<Duration>| duration.map(|duration| duration.as_secs_f64() * 1000.0);
    let status = record.status.map(Status::as_str);
    macro_rules! request_event {
        ($level:ident) => {
            $level!(
                target: REQUEST_LOG,
                model,
                request_id,
                worker = record.worker,
                total_ms = millis(total),
                queue_ms = millis(queue),
                service_ms = millis(service),
                outcome = status,
                "request completed"
            )
        };
    }
    if notable {
        request_event!(info);
    } else {
        request_event!(debug);
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
