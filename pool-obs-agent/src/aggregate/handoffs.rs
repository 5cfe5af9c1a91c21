//! Work a request handed to another thread (`pool-obs-ebpf/src/handoff.rs`): each run's CPU
//! time counts for the request's model, by the runtime it went through, and for the request
//! itself (`/requests/{id}`'s `cpu_ms`). A run names its request as the call it was made in
//! did: by the model read at that call's entry, or by its future or request id. A run whose
//! request the agent no longer holds counts for no model: its CPU stays `mode="other"`.

use pool_obs_common::event::HandoffRan;

use super::{Aggregator, ModelId};
use crate::attach::plan::HandoffSite;

impl Aggregator {
    pub(super) fn on_handoff_ran(&mut self, event: &HandoffRan) {
        let made_by = self.probes.get(event.made_by as usize).and_then(|probe| probe.handoff);
        let Some(HandoffSite::Made(via)) = made_by else { return };
        let cpu_ns = event.cpu_ns.saturating_sub(event.entered_cpu_ns);
        let Some(Served { model, counted_at_end }) = self.handoff_request(event, cpu_ns) else { return };
        let metrics = &self.models[model].metrics.cpu;
        metrics.handed_off.via(via).inc_by(cpu_ns as f64 / 1e9);
        if !counted_at_end {
            metrics.seconds.inc_by(cpu_ns as f64 / 1e9);
            self.cpu.serve(cpu_ns);
        }
        self.models[model].changed = true;
    }

    /// The request the run served, with `cpu_ns` added to it.
    fn handoff_request(&mut self, event: &HandoffRan, cpu_ns: u64) -> Option<Served> {
        let has_request_id = self.probes.get(event.request_probe as usize)?.has_request_id;
        let read_model = self.model_named(event.request_probe, &event.model);
        if event.future != 0 {
            // The future open at that address now, if the work was made in it: a run that
            // started before its first poll was made in an older one.
            if let Some(future) = self.futures.open.get_mut(&event.future)
                && future.first_poll_ns <= event.entered_ns
            {
                future.handoff_cpu_ns += cpu_ns;
                let model = read_model.unwrap_or(future.model);
                return Some(Served { model, counted_at_end: true });
            }
            let ended = self.futures.just_ended.get(&event.future).copied()?;
            if let Some(request_id) = ended.request_id {
                self.recent.add_cpu(request_id, cpu_ns);
            }
            return Some(Served { model: read_model.unwrap_or(ended.model), counted_at_end: false });
        }
        if has_request_id {
            let model = match self.requests.get(&event.request_id) {
                Some(request) => Some(request.model),
                None => {
                    self.recent.add_cpu(event.request_id, cpu_ns);
                    self.recent.get(event.request_id).map(|record| record.model)
                }
            };
            return read_model.or(model).map(|model| Served { model, counted_at_end: false });
        }
        read_model.map(|model| Served { model, counted_at_end: false })
    }
}

/// The model a run served, and whether its request is open and counts the run's CPU time for
/// it when it ends (with its own, in its model's CPU and its CPU histogram).
struct Served {
    model: ModelId,
    counted_at_end: bool,
}
