//! Fills each event's wire struct (defined in `pool_obs_common::event`) and writes it into the
//! `EVENTS` ring buffer.

use aya_ebpf::EbpfContext;
use pool_obs_common::{
    counters,
    event::{
        EventKind, Header, RequestEnded, RequestStarted, RequestSubmitted, WorkerCrashed, WorkerEvicted,
        WorkerSpawned,
    },
    probe::ProbeSpec,
};

use crate::{
    EVENTS, count,
    read::{self, Reader},
    registers::Registers,
    thread_id, wakeup_flags,
};

/// Writes the event `spec` asks for, if any. `entered_ns` is the entry time of a return
/// probe's call, 0 at an entry probe.
pub fn event<C: EbpfContext>(
    ctx: &C,
    spec: &ProbeSpec,
    probe: u32,
    now: u64,
    registers: &Registers,
    entered_ns: u64,
) {
    let Some(kind) = EventKind::from_u32(spec.kind) else {
        return;
    };
    let header = Header { kind: spec.kind, probe, tid: thread_id(), _reserved: 0, ts_ns: now };
    let reader = Reader::new(ctx, registers, spec, probe);
    let model = reader.model();
    let worker_id = || reader.value(&spec.worker_id, read::WORKER_ID);
    let request_id = || reader.value(&spec.request_id, read::REQUEST_ID);
    match kind {
        EventKind::WorkerSpawned => submit(WorkerSpawned {
            header,
            model,
            worker_id: worker_id(),
            memory_bytes: reader.value(&spec.memory_bytes, read::MEMORY_BYTES),
        }),
        EventKind::WorkerEvicted => submit(WorkerEvicted { header, model, worker_id: worker_id() }),
        EventKind::WorkerCrashed => submit(WorkerCrashed { header, model, worker_id: worker_id() }),
        EventKind::RequestSubmitted => submit(RequestSubmitted { header, model, request_id: request_id() }),
        EventKind::RequestStarted => {
            submit(RequestStarted { header, model, request_id: request_id(), worker_id: worker_id() })
        }
        EventKind::RequestEnded => submit(RequestEnded {
            header,
            model,
            request_id: request_id(),
            worker_id: worker_id(),
            outcome_value: reader.value(&spec.outcome, read::OUTCOME),
            entered_ns,
        }),
    }
    reader.report_failure();
}

fn submit<T: 'static>(event: T) {
    let flags = wakeup_flags();
    match EVENTS.reserve::<T>(0) {
        Some(mut entry) => {
            entry.write(event);
            entry.submit(flags);
        }
        None => count(counters::EVENTS_LOST),
    }
}
