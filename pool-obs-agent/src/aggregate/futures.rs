//! Async requests: a request is a future, from its first poll to the poll that leaves it
//! `Returned` (its outcome from the `Ready` value), or to its drop before that (cancelled).
//! Each poll event carries the future's state before and after it, or says it ended `Ready`
//! where an inlined poll's caller bound the value; the future's address names the request
//! while it lives (it is pinned).

use pool_obs_common::event::{CallEnding, FutureDropped, FuturePolled};

use super::{
    Aggregator, ModelId,
    recent::{Polls, RequestRecord},
};
use crate::{anomaly::Anomaly, outcome::Status};

/// An async request in flight.
pub struct OpenFuture {
    pub model: ModelId,
    pub request_id: Option<u64>,
    pub first_poll_ns: u64,
    pub polls: Polls,
}

impl OpenFuture {
    /// What `/requests/{id}` and the request log show of it, ended with `status` at `ended_ns`.
    pub fn record(&self, status: Option<Status>, ended_ns: Option<u64>) -> RequestRecord {
        RequestRecord {
            model: self.model,
            worker: None,
            status,
            // A future is submitted and started at its first poll.
            submitted_ns: Some(self.first_poll_ns),
            started_ns: Some(self.first_poll_ns),
            ended_ns,
            polls: Some(self.polls),
            cpu_ns: Some(self.polls.cpu_ns),
        }
    }
}

impl Aggregator {
    pub(super) fn on_future_polled(&mut self, event: &FuturePolled) {
        let Some(probe) = self.probes.get(event.header.probe as usize) else { return };
        let Some(states) = probe.future.clone() else { return };
        let rule = probe.outcome.clone();
        let has_request_id = probe.has_request_id;
        if event.state_before == states.unresumed {
            self.first_poll(event, has_request_id);
        }
        // Polled first before the agent attached: not followed.
        let Some(future) = self.futures.get_mut(&event.future) else { return };
        future.polls.count += 1;
        future.polls.busy_ns += event.header.ts_ns.saturating_sub(event.entered_ns);
        let ending = CallEnding::from_u8(event.ending);
        let unwound = ending == Some(CallEnding::Unwound);
        if !unwound {
            // A poll a panic unwound through was closed later, by the thread's next probe.
            future.polls.cpu_ns += event.cpu_ns.saturating_sub(event.entered_cpu_ns);
        }
        let classified =
            || rule.map_or(Status::Ok, |rule| rule.classify(event.outcome_value, event.outcome_detail));
        let status = if unwound || event.state_after == states.panicked {
            // The poll panicked: the request failed.
            Status::Failed
        } else if ending == Some(CallEnding::Ready) {
            classified()
        } else if event.state_after == states.returned && states.ready_bound {
            // Ready, but not where its outcome is read.
            self.anomaly(Anomaly::ReadyNotBound, event.future);
            Status::Failed
        } else if event.state_after == states.returned {
            classified()
        } else {
            return;
        };
        let ended_ns = (!unwound).then_some(event.header.ts_ns);
        self.end_future(event.future, status, ended_ns, event.header.ts_ns);
    }

    pub(super) fn on_future_dropped(&mut self, event: &FutureDropped) {
        if self.futures.contains_key(&event.future) {
            self.end_future(event.future, Status::Cancelled, Some(event.header.ts_ns), event.header.ts_ns);
        }
    }

    fn first_poll(&mut self, event: &FuturePolled, has_request_id: bool) {
        if self.futures.contains_key(&event.future) {
            // Its drop was not seen: the address now holds another future.
            self.anomaly(Anomaly::FutureReused, event.future);
            self.end_future(event.future, Status::Cancelled, None, event.entered_ns);
        }
        let request_id = has_request_id.then_some(event.request_id);
        if !self.has_room_for(request_id.unwrap_or(event.future)) {
            return;
        }
        let model = self.model_of(&event.header, &event.model, None);
        let future =
            OpenFuture { model, request_id, first_poll_ns: event.entered_ns, polls: Polls::default() };
        self.futures.insert(event.future, future);
    }

    fn end_future(&mut self, address: u64, status: Status, ended_ns: Option<u64>, seen_ns: u64) {
        let Some(future) = self.futures.remove(&address) else { return };
        let record = future.record(Some(status), ended_ns);
        self.end_request(future.request_id, record, seen_ns);
    }

    /// Futures in flight for longer than the expiry: leaked, or their drop is not probed.
    pub(super) fn expire_futures(&mut self, now_ns: u64, expiry: u64) {
        let expired: Vec<u64> = self
            .futures
            .iter()
            .filter(|(_, future)| now_ns.saturating_sub(future.first_poll_ns) > expiry)
            .map(|(address, _)| *address)
            .collect();
        for address in expired {
            if let Some(future) = self.futures.remove(&address) {
                self.anomaly(Anomaly::RequestExpired, future.request_id.unwrap_or(address));
            }
        }
    }
}
