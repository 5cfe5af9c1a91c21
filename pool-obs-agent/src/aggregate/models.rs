//! Models by key: each a label, its series, its sliding window and its live counts. A flood of
//! distinct keys stops at `--max-models`; the rest count under [`OTHER_MODELS`].

use pool_obs_common::event::{Header, MODEL_PRESENT, ModelKey};

use super::{Aggregator, ModelId, request_log::LogBudget, window::Window};
use crate::{
    outcome::ByStatus,
    publish::{ModelMetrics, ModelView, PollMetrics, WindowSummary, WorkerCounts},
};

/// The label for events whose model could not be known (no model in the manifest for that
/// function, and no earlier event for the same request or worker).
pub const UNKNOWN_MODEL: &str = "__unknown__";

/// The label for models past `--max-models`: a flood of distinct keys cannot grow the agent.
pub const OTHER_MODELS: &str = "__other__";

pub struct ModelState {
    pub label: String,
    pub(super) metrics: ModelMetrics,
    pub(super) window: Window,
    /// The window's statistics as of the last refresh.
    pub recent: WindowSummary,
    pub queued: u64,
    pub workers: u64,
    pub busy: u64,
    pub crashed: u64,
    pub memory_bytes: u64,
    pub requests: ByStatus<u64>,
    /// Made when the model's first async request ends.
    pub(super) polls: Option<PollMetrics>,
    /// Consecutive refreshes at which every worker was busy.
    pub saturated_refreshes: u32,
    pub(super) log_budget: LogBudget,
    /// The window slice `recent` was computed in, and whether events came since.
    pub(super) summarized_slice: Option<u64>,
    pub(super) changed: bool,
}

impl ModelState {
    /// The model as `/health` reports it; `workers_seen` when the manifest probes workers.
    pub fn view(&self, workers_seen: bool) -> ModelView<'_> {
        ModelView {
            label: &self.label,
            catch_all: self.label == UNKNOWN_MODEL || self.label == OTHER_MODELS,
            workers_seen,
            workers: WorkerCounts { total: self.workers, busy: self.busy, crashed: self.crashed },
            queued: self.queued,
            recent: self.recent,
            requests: self.requests,
            saturated_refreshes: self.saturated_refreshes,
        }
    }

    pub(super) fn publish_queue(&mut self, now_ns: u64) {
        self.metrics.queue_depth.set(self.queued as i64);
        self.window.record_queue_depth(now_ns, self.queued);
        self.changed = true;
    }

    pub(super) fn publish_workers(&self) {
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

impl Aggregator {
    /// The model the probe's manifest names, else the model the event carries, else
    /// `fallback`, else the unknown model.
    pub(super) fn model_of(&mut self, header: &Header, key: &ModelKey, fallback: Option<ModelId>) -> ModelId {
        self.model_named(header.probe, key)
            .or(fallback)
            .unwrap_or_else(|| self.model_id(UNKNOWN_MODEL.as_bytes(), false))
    }

    /// The model probe `probe`'s manifest names, else the model `key` carries, if present.
    pub(super) fn model_named(&mut self, probe: u32, key: &ModelKey) -> Option<ModelId> {
        let probe = self.probes.get(probe as usize);
        if let Some(constant) = probe.and_then(|probe| probe.constant_model.clone()) {
            return Some(self.model_id(constant.as_bytes(), false));
        }
        if key.state == MODEL_PRESENT {
            let captured = &key.bytes[..(key.captured as usize).min(key.bytes.len())];
            return Some(self.model_id(captured, key.len > u64::from(key.captured)));
        }
        None
    }

    pub(super) fn model_id(&mut self, key: &[u8], truncated: bool) -> ModelId {
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
            metrics: self.metrics.for_model(self.pid, &label),
            label,
            window: Window::new(self.settings.window),
            recent: WindowSummary::default(),
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
