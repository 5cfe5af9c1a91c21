//! Where the pool's CPU goes: per model, while its threads serve that model's requests, and
//! per request ([`ModelCpu`], encoded with the other per-model series in `super::models`); the
//! process's CPU serving requests or not, as `mode="serving"|"other"`. The figures come from
//! the kernel's per-thread CPU clocks (`pool-obs-ebpf/src/cpu.rs`), exact to the context switch.

use std::sync::{Arc, atomic::AtomicU64};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue},
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use super::{Latencies, name};
use crate::attach::plan::Via;

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
    process: Family<ModeLabels, Seconds>,
}

/// One model's CPU series, encoded with the other per-model ones (`super::models`).
#[derive(Clone)]
pub struct ModelCpu {
    /// CPU time of the pool's threads while serving this model's requests.
    pub seconds: Seconds,
    /// Each request's CPU time.
    pub per_request: Arc<Latencies>,
    /// Of `seconds`, the time of work the model's requests handed to other threads.
    pub handed_off: HandedOff,
}

/// CPU time of work handed off, by the runtime it went through.
#[derive(Clone, Default)]
pub struct HandedOff {
    spawn_blocking: Seconds,
    spawn: Seconds,
    rayon: Seconds,
}

impl HandedOff {
    pub const VIAS: [Via; 3] = [Via::spawn_blocking, Via::spawn, Via::rayon];

    pub fn via(&self, via: Via) -> &Seconds {
        match via {
            Via::spawn_blocking => &self.spawn_blocking,
            Via::spawn => &self.spawn,
            Via::rayon => &self.rayon,
        }
    }
}

/// One process's CPU, serving a request or not.
#[derive(Clone)]
pub struct ProcessCpu {
    pub serving: Seconds,
    pub other: Seconds,
}

impl CpuFamilies {
    pub(super) fn new() -> Self {
        Self { process: Family::default() }
    }

    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            name::PROCESS_CPU,
            "CPU time of the pool process since the agent attached: serving a request, or not",
            self.process.clone(),
        );
    }

    pub(super) fn for_process(&self, pid: u32) -> ProcessCpu {
        let mode = |mode| self.process.get_or_create(&ModeLabels { pid, mode }).clone();
        ProcessCpu { serving: mode(Mode::serving), other: mode(Mode::other) }
    }

    pub(super) fn forget_process(&self, pid: u32) {
        for mode in [Mode::serving, Mode::other] {
            self.process.remove(&ModeLabels { pid, mode });
        }
    }
}
