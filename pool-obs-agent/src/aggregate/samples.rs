//! Which model a CPU sample's thread was serving: the request of the innermost call it had
//! open (its model read at entry, or its future's or request's), else the request it started
//! last and has not ended (for requests that start and end at entry probes); else none.

use pool_obs_common::event::{CpuSampled, EventKind, MODEL_PRESENT, NOT_IN_CALL};

use super::{Aggregator, ModelId, models::model_label};

impl Aggregator {
    /// The label of the model the sampled thread was serving, or `None` when it served none.
    pub fn label_sample(&mut self, sample: &CpuSampled) -> Option<String> {
        self.count_event(EventKind::CpuSampled);
        if sample.header.probe != NOT_IN_CALL
            && let Some(label) = self.label_of_call(sample)
        {
            return Some(label);
        }
        let request = self.threads.get(&sample.header.tid)?;
        let model = self.requests.get(request)?.model;
        Some(self.models[model].label.clone())
    }

    fn label_of_call(&self, sample: &CpuSampled) -> Option<String> {
        let probe = self.probes.get(sample.header.probe as usize)?;
        if let Some(constant) = &probe.constant_model {
            return Some(constant.clone());
        }
        let key = &sample.model;
        if key.state == MODEL_PRESENT {
            let captured = &key.bytes[..(key.captured as usize).min(key.bytes.len())];
            return Some(match self.model_ids.get(captured) {
                Some(model) => self.models[*model].label.clone(),
                None => model_label(captured, key.len > u64::from(key.captured)),
            });
        }
        let model: Option<ModelId> = match () {
            _ if sample.future != 0 => self.futures.open.get(&sample.future).map(|future| future.model),
            _ if probe.has_request_id => self.requests.get(&sample.request_id).map(|request| request.model),
            _ => None,
        };
        model.map(|model| self.models[model].label.clone())
    }
}
