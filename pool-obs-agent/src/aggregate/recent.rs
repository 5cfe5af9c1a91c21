//! What the agent keeps of each request it saw end, for `/requests/{id}`: the last
//! `--recent-requests` of them, and how each becomes the timeline served.

use std::{
    collections::{HashMap, VecDeque},
    time::Duration,
};

use super::ModelId;
use crate::{
    clock::{WallClock, rfc3339},
    outcome::Status,
    publish::Timeline,
};

/// What the agent saw of one request, in `CLOCK_MONOTONIC` nanoseconds.
#[derive(Clone, Copy, Debug)]
pub struct RequestRecord {
    pub model: ModelId,
    pub worker: Option<u64>,
    /// `None` while in flight.
    pub status: Option<Status>,
    pub submitted_ns: Option<u64>,
    pub started_ns: Option<u64>,
    pub ended_ns: Option<u64>,
    /// For an async request: its future's polls.
    pub polls: Option<Polls>,
    /// The CPU time of the threads that served it, from its start to its end: unknown when
    /// it started on one thread and ended on another, or a panic ended it.
    pub cpu_ns: Option<u64>,
}

/// How often an async request's future was polled, and for how long in all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Polls {
    pub count: u64,
    pub busy_ns: u64,
    /// CPU time inside the polls.
    pub cpu_ns: u64,
}

impl RequestRecord {
    /// Total (submitted → ended), queue (submitted → started) and service (started → ended).
    pub fn durations(&self) -> (Option<Duration>, Option<Duration>, Option<Duration>) {
        let between =
            |from: Option<u64>, to: Option<u64>| Some(Duration::from_nanos(to?.saturating_sub(from?)));
        (
            between(self.submitted_ns, self.ended_ns),
            between(self.submitted_ns, self.started_ns),
            between(self.started_ns, self.ended_ns),
        )
    }

    /// Time off the CPU while it was served: service time less CPU time.
    pub fn off_cpu(&self) -> Option<Duration> {
        let (_, _, service) = self.durations();
        Some(service?.saturating_sub(Duration::from_nanos(self.cpu_ns?)))
    }

    pub fn timeline(&self, request_id: u64, model: String, wall: &WallClock) -> Timeline {
        let (total, queue, service) = self.durations();
        let millis = |duration: Option<Duration>| duration.map(|duration| duration.as_secs_f64() * 1000.0);
        let state = match (self.status, self.started_ns) {
            (Some(_), _) => "completed",
            (None, Some(_)) => "running",
            (None, None) => "queued",
        };
        Timeline {
            request_id,
            model,
            state,
            outcome: self.status.map(Status::as_str),
            worker: self.worker,
            submitted: self.submitted_ns.map(|ns| rfc3339(wall.at(ns))),
            started: self.started_ns.map(|ns| rfc3339(wall.at(ns))),
            ended: self.ended_ns.map(|ns| rfc3339(wall.at(ns))),
            total_ms: millis(total),
            queue_ms: millis(queue),
            service_ms: millis(service),
            polls: self.polls.map(|polls| polls.count),
            busy_ms: self.polls.map(|polls| polls.busy_ns as f64 / 1e6),
            cpu_ms: self.cpu_ns.map(|ns| ns as f64 / 1e6),
            offcpu_ms: millis(self.off_cpu()),
        }
    }
}

/// The last `capacity` completed requests, by id.
pub struct RecentRequests {
    capacity: usize,
    by_id: HashMap<u64, RequestRecord>,
    order: VecDeque<u64>,
}

impl RecentRequests {
    pub fn new(capacity: usize) -> Self {
        Self { capacity, by_id: HashMap::new(), order: VecDeque::new() }
    }

    pub fn insert(&mut self, request_id: u64, record: RequestRecord) {
        if self.capacity == 0 {
            return;
        }
        if self.by_id.insert(request_id, record).is_none() {
            self.order.push_back(request_id);
        }
        while self.order.len() > self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.by_id.remove(&oldest);
            }
        }
    }

    pub fn get(&self, request_id: u64) -> Option<&RequestRecord> {
        self.by_id.get(&request_id)
    }

    /// Adds the CPU time of work the request handed off whose run ended after it did.
    pub fn add_cpu(&mut self, request_id: u64, cpu_ns: u64) {
        if let Some(cpu) = self.by_id.get_mut(&request_id).and_then(|record| record.cpu_ns.as_mut()) {
            *cpu += cpu_ns;
        }
    }
}
