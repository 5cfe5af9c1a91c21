//! Requests that are function calls: submitted, started on a worker, ended with an outcome
//! (or by a crash, or expired), each counted once it ends. Async requests, which are futures,
//! are in [`super::futures`].

use std::time::Duration;

use pool_obs_common::event::{CallEnding, MODEL_ABSENT, RequestEnded, RequestStarted, RequestSubmitted};
use tracing::{debug, info};

use super::{Aggregator, ModelId, REQUEST_LOG, RequestRecord};
use crate::{anomaly::Anomaly, outcome::Status};

pub(super) struct InFlight {
    pub(super) model: ModelId,
    pub(super) submitted_ns: u64,
    pub(super) started_ns: Option<u64>,
    pub(super) worker: Option<u64>,
    /// The starting thread's CPU clock when it started.
    pub(super) started_cpu: Option<ThreadClock>,
}

/// A thread's CPU clock (`cpu_ns` of the events), which only that thread's events continue.
#[derive(Clone, Copy)]
pub(super) struct ThreadClock {
    tid: u32,
    cpu_ns: u64,
}

impl ThreadClock {
    /// The CPU time from this reading to `later`, if `later` is of the same thread.
    fn until(self, later: ThreadClock) -> Option<u64> {
        (self.tid == later.tid).then(|| later.cpu_ns.saturating_sub(self.cpu_ns))
    }
}

/// Every completed request at debug; failures, timeouts and slow requests at info.
/// A completed request's line: at info if it failed, timed out or was slow (`notable`), else
/// at debug.
fn log_request(pid: u32, model: &str, request_id: Option<u64>, record: &RequestRecord, notable: bool) {
    let (total, queue, service) = record.durations();
    let millis = |duration: Option<Duration>| duration.map(|duration| duration.as_secs_f64() * 1000.0);
    let status = record.status.map(Status::as_str);
    macro_rules! request_event {
        ($level:ident) => {
            $level!(
                target: REQUEST_LOG,
                pid,
                model,
                request_id,
                worker = record.worker,
                total_ms = millis(total),
                queue_ms = millis(queue),
                service_ms = millis(service),
                cpu_ms = record.cpu_ns.map(|ns| ns as f64 / 1e6),
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

impl Aggregator {
    pub(super) fn on_request_submitted(&mut self, event: &RequestSubmitted) {
        let model = self.model_of(&event.header, &event.model, None);
        if !self.has_room_for(event.request_id) {
            return;
        }
        let request = InFlight {
            model,
            submitted_ns: event.header.ts_ns,
            started_ns: None,
            worker: None,
            started_cpu: None,
        };
        if let Some(reused) = self.requests.insert(event.request_id, request) {
            self.anomaly(Anomaly::RequestIdReused, event.request_id);
            self.unqueue(&reused, event.header.ts_ns);
        }
        let state = &mut self.models[model];
        state.queued += 1;
        state.publish_queue(event.header.ts_ns);
    }

    pub(super) fn on_request_started(&mut self, event: &RequestStarted) {
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
            .or_insert(InFlight {
                model,
                submitted_ns: now,
                started_ns: Some(now),
                worker: None,
                started_cpu: None,
            });
        let was_queued = request.started_ns.is_none();
        let request_model = request.model;
        request.started_ns = Some(now);
        request.started_cpu = Some(ThreadClock { tid: event.header.tid, cpu_ns: event.cpu_ns });
        self.threads.insert(event.header.tid, event.request_id);
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

    pub(super) fn on_request_ended(&mut self, event: &RequestEnded) {
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
        let named_model = probe.is_none_or(|probe| probe.constant_model.is_some());
        let request = request_id.and_then(|id| self.remove_request(id));
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
        let unattributed =
            request_id.is_none() && fallback.is_none() && event.model.state == MODEL_ABSENT && !named_model;
        if unattributed {
            // Nothing names its model: it lands under `__unknown__`, and says so.
            self.contradiction(Anomaly::RequestUnattributed, event.header.tid.into(), event.header.probe);
        }
        let model = self.model_of(&event.header, &event.model, fallback);
        let entered = (event.entered_ns != 0).then_some(event.entered_ns);
        let ended_ns = (!unwound).then_some(event.header.ts_ns);
        let clock_now = ThreadClock { tid: event.header.tid, cpu_ns: event.cpu_ns };
        // From the probed call's entry (on this thread), else from the request's start on the
        // same thread; a call a panic unwound through was closed later, by the thread's next
        // probe.
        let cpu_ns = match (entered, &request) {
            _ if unwound => None,
            (Some(_), _) => Some(event.cpu_ns.saturating_sub(event.entered_cpu_ns)),
            (None, Some(request)) => request.started_cpu.and_then(|started| started.until(clock_now)),
            (None, None) => None,
        };
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
                    cpu_ns,
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
                cpu_ns,
            },
        };
        self.end_request(request_id, record, event.header.ts_ns);
        if let Some(worker) = worker {
            self.worker_finishes(worker, model, request_id);
        }
    }

    /// Counts a request that ended, as the kernel saw it at `seen_ns`.
    pub(super) fn end_request(&mut self, request_id: Option<u64>, record: RequestRecord, seen_ns: u64) {
        let status = record.status.unwrap_or(Status::Failed);
        let (total, queue, service) = record.durations();
        let state = &mut self.models[record.model];
        *state.requests.get_mut(status) += 1;
        state.metrics.requests(status).inc();
        let seconds = |duration: Duration| duration.as_secs_f64();
        // A cancelled request did not finish: its time is kept apart from the latencies of
        // those that did (`pool_request_cancelled_seconds`, below).
        let cancelled = status == Status::Cancelled;
        if let Some(total) = total.filter(|_| !cancelled) {
            state.metrics.request_duration.observe(seconds(total));
            state.metrics.request_duration_quantiles.observe(seconds(total));
        }
        if let Some(queue) = queue {
            state.metrics.request_queue.observe(seconds(queue));
        }
        if let Some(service) = service {
            state.metrics.request_service.observe(seconds(service));
        }
        if let Some(cpu_ns) = record.cpu_ns {
            state.metrics.cpu.seconds.inc_by(cpu_ns as f64 / 1e9);
            state.metrics.cpu.per_request.observe(cpu_ns as f64 / 1e9);
            self.cpu.serve(cpu_ns);
        }
        if let Some(polls) = record.polls {
            let metrics = state.polls.get_or_insert_with(|| self.metrics.polls_for(self.pid, &state.label));
            metrics.polls.inc_by(polls.count);
            metrics.busy_seconds.inc_by(polls.busy_ns as f64 / 1e9);
            if let Some(total) = total.filter(|_| cancelled) {
                metrics.cancelled_seconds.inc_by(seconds(total));
            }
        }
        let finished = total.filter(|_| !cancelled);
        state.window.record_request(record.ended_ns.unwrap_or(seen_ns), status, finished);
        state.changed = true;
        let notable = status != Status::Ok || total.is_some_and(|total| total > self.settings.slow_request);
        let logged = !notable || state.log_budget.admit(seen_ns);
        if logged {
            log_request(self.pid, &state.label, request_id, &record, notable);
        }
        if let Some(request_id) = request_id {
            self.recent.insert(request_id, record);
        }
    }

    /// Whether `request_id` is followed or can be: past `max_in_flight`, new ones are not.
    pub(super) fn has_room_for(&self, request_id: u64) -> bool {
        let room = self.requests.len() + self.futures.open.len() < self.settings.max_in_flight
            || self.requests.contains_key(&request_id);
        if !room {
            self.anomaly(Anomaly::RequestUntracked, request_id);
        }
        room
    }

    /// Forgets requests in flight for longer than the expiry: their ends were lost or are not
    /// probed, and they would otherwise stay queued or busy forever.
    pub(super) fn expire_requests(&mut self, now_ns: u64) {
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
            let Some(request) = self.remove_request(request_id) else { continue };
            self.anomaly(Anomaly::RequestExpired, request_id);
            self.unqueue(&request, now_ns);
            if let Some(worker) = request.worker {
                self.worker_finishes(worker, request.model, Some(request_id));
            }
        }
    }

    /// Forgets a request in flight, and that its thread serves it.
    pub(super) fn remove_request(&mut self, request_id: u64) -> Option<InFlight> {
        let request = self.requests.remove(&request_id)?;
        if let Some(started) = request.started_cpu
            && self.threads.get(&started.tid) == Some(&request_id)
        {
            self.threads.remove(&started.tid);
        }
        Some(request)
    }

    /// A request that ends or is replaced while still queued leaves the queue.
    pub(super) fn unqueue(&mut self, request: &InFlight, now_ns: u64) {
        if request.started_ns.is_none() {
            let state = &mut self.models[request.model];
            state.queued = state.queued.saturating_sub(1);
            state.publish_queue(now_ns);
        }
    }
}
