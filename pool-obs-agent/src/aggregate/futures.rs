//! Async requests: a request is a future, from its first poll to the poll that leaves it
//! `Returned` (its outcome from the `Ready` value), or to its drop before that (cancelled).
//! Each poll event carries the future's state before and after it, or says it ended `Ready`
//! where an inlined poll's caller bound the value; the future's address names the request
//! while it lives (it is pinned).

use std::collections::HashMap;

use pool_obs_common::event::{CallEnding, FutureDropped, FuturePolled};

use super::{
    Aggregator, ModelId,
    recent::{Polls, RequestRecord},
};
use crate::{anomaly::Anomaly, outcome::Status};

/// The request futures the agent follows: those open, and those that ended whose drop is still
/// to come (a future is dropped after its last poll), so that the drop of a `Returned` future
/// the agent never saw polled is told from the drop of one it counted.
#[derive(Default)]
pub struct Futures {
    pub open: HashMap<u64, OpenFuture>,
    /// Ended futures' addresses, with when they ended.
    ended: HashMap<u64, u64>,
    /// Futures dropped `Returned` whose last poll's end is still to come: a caller that drops
    /// the future as soon as it is ready (axum's handlers) does so before the place where it
    /// binds the value, so the poll's end comes after the drop, and says how it ended. By
    /// address: when it was dropped, and by which probe.
    dropped_in_poll: HashMap<u64, (u64, u32)>,
    /// The last future that ended at each address, for the work it handed off whose run ends
    /// after it: its model, request id and when it ended.
    pub just_ended: HashMap<u64, JustEnded>,
}

/// A future that ended, as work it handed off finds it.
#[derive(Clone, Copy)]
pub struct JustEnded {
    pub model: ModelId,
    pub request_id: Option<u64>,
    pub ended_ns: u64,
}

/// How long after a future's drop the end of the poll it was dropped in may come; past it, the
/// poll's end was not seen.
const DROP_IN_POLL_GRACE_NS: u64 = 1_000_000_000;

/// How long after a future ended the runs of work it handed off may still end and count for it.
const HANDOFF_GRACE_NS: u64 = 1_000_000_000;

/// An async request in flight.
pub struct OpenFuture {
    pub model: ModelId,
    pub request_id: Option<u64>,
    pub first_poll_ns: u64,
    pub polls: Polls,
    /// CPU time of the work it handed to other threads, whose runs ended while it was open.
    pub handoff_cpu_ns: u64,
    /// Its state when the last poll the agent saw returned, when that poll's end says it
    /// (`None` after a poll that ended where its caller bound the value): the next poll must
    /// find it so, and so must its drop, or a poll ran unseen.
    pub last_state: Option<u64>,
    /// Open when the kernel dropped events for want of room: its polls, its drop, or another
    /// future's at its address may be among them, so how it ends cannot be vouched for.
    pub open_across_loss: bool,
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
            cpu_ns: Some(self.polls.cpu_ns + self.handoff_cpu_ns),
        }
    }
}

impl Aggregator {
    pub(super) fn on_future_polled(&mut self, event: &FuturePolled) {
        let Some(probe) = self.probes.get(event.header.probe as usize) else { return };
        let Some(states) = probe.future.clone() else { return };
        let rule = probe.outcome.clone();
        let has_request_id = probe.has_request_id;
        // The probe that saw it dropped during this poll, once the poll had left it `Returned`.
        let dropped = match self.futures.dropped_in_poll.get(&event.future) {
            Some(&(dropped_ns, probe)) if (event.entered_ns..=event.header.ts_ns).contains(&dropped_ns) => {
                self.futures.dropped_in_poll.remove(&event.future);
                Some(probe)
            }
            // Dropped before this poll began: the end of the poll it was dropped in never came.
            Some(_) => {
                self.unended_drop(event.future);
                None
            }
            None => None,
        };
        if event.state_before == states.unresumed {
            self.first_poll(event, has_request_id);
        }
        // Polled first before the agent attached: not followed.
        let Some(future) = self.futures.open.get_mut(&event.future) else { return };
        let unseen = future.last_state.is_some_and(|state| state != event.state_before);
        let ending = CallEnding::from_u8(event.ending);
        future.last_state = (ending == Some(CallEnding::Returned)).then_some(event.state_after);
        future.polls.count += 1;
        future.polls.busy_ns += event.header.ts_ns.saturating_sub(event.entered_ns);
        let unwound = ending == Some(CallEnding::Unwound);
        if !unwound {
            // A poll a panic unwound through was closed later, by the thread's next probe.
            future.polls.cpu_ns += event.cpu_ns.saturating_sub(event.entered_cpu_ns);
        }
        if unseen {
            self.contradiction(Anomaly::PollNotSeen, event.future, event.header.probe);
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
            if let Some(drop_probe) = dropped {
                // Dropped `Returned` in a poll that left it in another state: polled unseen.
                self.contradiction(Anomaly::ReadyNotSeen, event.future, drop_probe);
                self.futures.open.remove(&event.future);
            }
            return;
        };
        let ended_ns = (!unwound).then_some(event.header.ts_ns);
        self.end_future(event.future, status, ended_ns, event.header.ts_ns, event.header.probe);
        if dropped.is_none() {
            // Its drop comes after.
            self.futures.ended.insert(event.future, event.header.ts_ns);
        }
    }

    /// A future dropped before the agent saw it ready was cancelled, unless its state says
    /// otherwise: dropped `Returned`, it was ready unseen; in another state than its last poll
    /// left, it was polled unseen; open nowhere, its first poll went unseen.
    pub(super) fn on_future_dropped(&mut self, event: &FutureDropped) {
        let probe = event.header.probe;
        let Some(states) = self.probes.get(probe as usize).and_then(|probe| probe.future.clone()) else {
            return;
        };
        if self.futures.ended.remove(&event.future).is_some() {
            return;
        }
        if event.state == states.returned {
            // The end of the poll it was dropped in, still to come, says whether it was seen.
            self.futures.dropped_in_poll.insert(event.future, (event.header.ts_ns, probe));
            return;
        }
        let Some(future) = self.futures.open.get(&event.future) else {
            // Polled, maybe to its end, and never seen: its request counted nowhere.
            if event.state != states.unresumed {
                self.contradiction(Anomaly::FirstPollNotSeen, event.future, probe);
            }
            return;
        };
        if future.last_state.is_some_and(|state| state != event.state) {
            self.contradiction(Anomaly::PollNotSeen, event.future, probe);
        }
        let seen_ns = event.header.ts_ns;
        self.end_future(event.future, Status::Cancelled, Some(seen_ns), seen_ns, probe);
    }

    /// A future dropped `Returned` whose poll's end never came: ready unseen if it was open;
    /// else polled, maybe to its end, and never seen.
    fn unended_drop(&mut self, address: u64) {
        let Some((_, probe)) = self.futures.dropped_in_poll.remove(&address) else { return };
        let anomaly = match self.futures.open.remove(&address) {
            Some(_) => Anomaly::ReadyNotSeen,
            None => Anomaly::FirstPollNotSeen,
        };
        self.contradiction(anomaly, address, probe);
    }

    fn first_poll(&mut self, event: &FuturePolled, has_request_id: bool) {
        // An ended future here was dropped unseen (its drop site is not probed): it was counted.
        self.futures.ended.remove(&event.future);
        if self.futures.open.remove(&event.future).is_some() {
            // Its drop was not seen, so neither is how it ended (ready or cancelled): the
            // address now holds another future, and the old one is counted under no status.
            self.contradiction(Anomaly::FutureReused, event.future, event.header.probe);
        }
        let request_id = has_request_id.then_some(event.request_id);
        if !self.has_room_for(request_id.unwrap_or(event.future)) {
            return;
        }
        let model = self.model_of(&event.header, &event.model, None);
        let future = OpenFuture {
            model,
            request_id,
            first_poll_ns: event.entered_ns,
            polls: Polls::default(),
            handoff_cpu_ns: 0,
            last_state: None,
            open_across_loss: false,
        };
        self.futures.open.insert(event.future, future);
    }

    fn end_future(&mut self, address: u64, status: Status, ended_ns: Option<u64>, seen_ns: u64, probe: u32) {
        let Some(future) = self.futures.open.remove(&address) else { return };
        let ended = JustEnded { model: future.model, request_id: future.request_id, ended_ns: seen_ns };
        self.futures.just_ended.insert(address, ended);
        if future.open_across_loss {
            self.contradiction(Anomaly::OpenAcrossLostEvents, address, probe);
            return;
        }
        let record = future.record(Some(status), ended_ns);
        self.end_request(future.request_id, record, seen_ns);
    }

    /// The kernel dropped events: every future open now may have lost some of its own.
    pub(super) fn events_were_lost(&mut self) {
        for future in self.futures.open.values_mut() {
            future.open_across_loss = true;
        }
    }

    /// Futures in flight for longer than the expiry: leaked, or their drop is not probed. Ended
    /// ones whose drop has not come by then are forgotten.
    pub(super) fn expire_futures(&mut self, now_ns: u64, expiry: u64) {
        self.futures.ended.retain(|_, ended_ns| now_ns.saturating_sub(*ended_ns) <= expiry);
        self.futures.just_ended.retain(|_, ended| now_ns.saturating_sub(ended.ended_ns) <= HANDOFF_GRACE_NS);
        let unended: Vec<u64> = self
            .futures
            .dropped_in_poll
            .iter()
            .filter(|(_, (dropped_ns, _))| now_ns.saturating_sub(*dropped_ns) > DROP_IN_POLL_GRACE_NS)
            .map(|(address, _)| *address)
            .collect();
        for address in unended {
            self.unended_drop(address);
        }
        let expired: Vec<u64> = self
            .futures
            .open
            .iter()
            .filter(|(_, future)| now_ns.saturating_sub(future.first_poll_ns) > expiry)
            .map(|(address, _)| *address)
            .collect();
        for address in expired {
            if let Some(future) = self.futures.open.remove(&address) {
                self.anomaly(Anomaly::RequestExpired, future.request_id.unwrap_or(address));
            }
        }
    }
}
