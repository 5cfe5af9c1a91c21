//! Where the pool's CPU goes: per model, while its threads serve that model's requests, and
//! per request; the rest of the process's CPU as `mode="other"`. The figures come from the
//! kernel's per-thread CPU clocks (`pool-obs-ebpf/src/cpu.rs`), exact to the context switch.

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue},
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

use super::{HistogramFamily, ModelLabels, latency_histogram, name};

type Seconds = Counter<f64, AtomicU64>;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types, reason = "label values are lower case")]
enum Mode {
    serving,
    other,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabels {
    pid: u32,
    mode: Mode,
}

pub(super) struct CpuFamilies {
    model: Family<ModelLabels, Seconds>,
    request: HistogramFamily<ModelLabels>,
    process: Family<ModeLabels, Seconds>,
}

/// One model's CPU series.
#[derive(Clone)]
pub struct ModelCpu {
    /// CPU time of the pool's threads while serving this model's requests.
    pub seconds: Seconds,
    /// Each request's CPU time.
    pub per_request: Histogram,
}

/// One process's CPU, serving a request or not.
#[derive(Clone)]
pub struct ProcessCpu {
    pub serving: Seconds,
    pub other: Seconds,
}

impl CpuFamilies {
    pub(super) fn new() -> Self {
        Self {
            model: Family::default(),
            request: Family::new_with_constructor(latency_histogram),
            process: Family::default(),
        }
    }

    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            name::MODEL_CPU,
            "CPU time of the pool's threads while they serve a request of the model, exact to the \
             context switch",
            self.model.clone(),
        );
        registry.register(
            name::REQUEST_CPU,
            "CPU time of each request, on the threads that served it",
            self.request.clone(),
        );
        registry.register(
            name::PROCESS_CPU,
            "CPU time of the pool process since the agent attached: serving a request, or not",
            self.process.clone(),
        );
    }

    pub(super) fn for_model(&self, labels: &ModelLabels) -> ModelCpu {
        ModelCpu {
            seconds: self.model.get_or_create(labels).clone(),
            per_request: self.request.get_or_create(labels).clone(),
        }
    }

    pub(super) fn for_process(&self, pid: u32) -> ProcessCpu {
        let mode = |mode| self.process.get_or_create(&ModeLabels { pid, mode }).clone();
        ProcessCpu { serving: mode(Mode::serving), other: mode(Mode::other) }
    }

    pub(super) fn forget_model(&self, labels: &ModelLabels) {
        self.model.remove(labels);
        self.request.remove(labels);
    }

    pub(super) fn forget_process(&self, pid: u32) {
        for mode in [Mode::serving, Mode::other] {
            self.process.remove(&ModeLabels { pid, mode });
        }
    }
}
