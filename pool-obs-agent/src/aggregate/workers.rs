//! The pool's workers as the events show them: spawned, serving a request, evicted (after the
//! request in hand, if any) or crashed (failing the request in hand). Workers that predate the
//! agent join when they first serve.

use pool_obs_common::event::{Header, WorkerCrashed, WorkerEvicted, WorkerSpawned};
use tracing::{info, warn};

use super::{Aggregator, InFlight, ModelId, RequestRecord, WORKER_LOG};
use crate::{anomaly::Anomaly, outcome::Status};

pub(super) struct Worker {
    pub(super) model: ModelId,
    pub(super) memory_bytes: u64,
    pub(super) serving: Option<u64>,
    /// Evicted while serving: it finishes (or crashes on) its request, then leaves.
    pub(super) retiring: bool,
}

impl Aggregator {
    pub(super) fn on_worker_spawned(&mut self, event: &WorkerSpawned) {
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
        info!(target: WORKER_LOG, pid = self.pid, model = %state.label, worker_id = event.worker_id, memory_bytes, "worker spawned");
    }

    pub(super) fn on_worker_evicted(&mut self, event: &WorkerEvicted) {
        let model = self.model_of(&event.header, &event.model, self.worker_model(event.worker_id));
        self.expect_live_worker(event.worker_id);
        let state = &self.models[model];
        state.metrics.worker_evictions.inc();
        let memory_bytes = self.workers.get(&event.worker_id).map_or(0, |worker| worker.memory_bytes);
        info!(target: WORKER_LOG, pid = self.pid, model = %state.label, worker_id = event.worker_id, memory_bytes, "worker evicted");
        match self.workers.get_mut(&event.worker_id) {
            Some(worker) if worker.serving.is_some() => worker.retiring = true,
            _ => self.remove_worker(event.worker_id),
        }
    }

    pub(super) fn on_worker_crashed(&mut self, event: &WorkerCrashed) {
        let model = self.model_of(&event.header, &event.model, self.worker_model(event.worker_id));
        self.expect_live_worker(event.worker_id);
        let state = &mut self.models[model];
        state.metrics.worker_crashes.inc();
        state.crashed += 1;
        let worker = self.workers.get(&event.worker_id);
        let memory_bytes = worker.map_or(0, |worker| worker.memory_bytes);
        warn!(target: WORKER_LOG, pid = self.pid, model = %state.label, worker_id = event.worker_id, memory_bytes, "worker crashed");
        // The request the worker was serving died with it: the pool's client sees a failure.
        let serving = worker.and_then(|worker| worker.serving);
        let served_here = |request: &InFlight| request.worker == Some(event.worker_id);
        if let Some((request_id, request)) = serving
            .filter(|id| self.requests.get(id).is_some_and(served_here))
            .and_then(|id| self.remove_request(id).map(|request| (id, request)))
        {
            let record = RequestRecord {
                model: request.model,
                worker: Some(event.worker_id),
                status: Some(Status::Failed),
                submitted_ns: Some(request.submitted_ns),
                started_ns: request.started_ns,
                ended_ns: Some(event.header.ts_ns),
                polls: None,
                cpu_ns: None,
            };
            self.end_request(Some(request_id), record, event.header.ts_ns);
        }
        self.remove_worker(event.worker_id);
    }

    /// The worker an event names, if its probe reads one: otherwise the field means nothing.
    pub(super) fn named_worker(&self, header: &Header, worker_id: u64) -> Option<u64> {
        let probe = self.probes.get(header.probe as usize);
        probe.is_some_and(|probe| probe.has_worker_id).then_some(worker_id)
    }

    /// Marks a worker busy with `request` or idle. A worker first seen here existed before we
    /// attached and joins the live set; one that had left serves its last request and leaves.
    pub(super) fn worker_serves(&mut self, worker_id: u64, model: ModelId, request: Option<u64>) {
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
    pub(super) fn worker_finishes(&mut self, worker_id: u64, model: ModelId, request: Option<u64>) {
        let serving = self.workers.get(&worker_id).and_then(|worker| worker.serving);
        if request.is_none() || serving.is_none() || serving == request {
            self.worker_serves(worker_id, model, None);
        }
    }

    pub(super) fn remove_worker(&mut self, worker_id: u64) {
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
    pub(super) fn expect_worker_to_serve(&self, worker_id: u64) {
        if !self.departed.contains(worker_id) {
            self.expect_live_worker(worker_id);
        }
    }

    /// Counts an event naming a worker the agent does not know as live, when it would know.
    pub(super) fn expect_live_worker(&self, worker_id: u64) {
        if self.probed.spawns && !self.workers.contains_key(&worker_id) {
            self.anomaly(Anomaly::WorkerNotSpawned, worker_id);
        }
    }

    pub(super) fn worker_model(&self, worker_id: u64) -> Option<ModelId> {
        self.workers.get(&worker_id).map(|worker| worker.model)
    }
}
