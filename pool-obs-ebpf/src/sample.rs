//! CPU samples for profiles: attached by the agent to a `cpu-clock` perf event on every CPU,
//! and switched on (`SAMPLING`) only while a profile is taken. A sample of a followed process's thread copies its user
//! registers and the top of its user stack, to be unwound in user space with `.eh_frame` (as
//! `perf record --call-graph dwarf` does: Rust release binaries rarely keep frame pointers),
//! and the innermost call the thread has open, which names the request it serves.

use core::ptr::{addr_of_mut, write};

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_RING_SIZE, pt_regs},
    helpers::{
        bpf_probe_read_kernel,
        generated::{bpf_get_current_task_btf, bpf_ktime_get_ns, bpf_probe_read_user, bpf_task_pt_regs},
    },
    macros::{map, perf_event},
    maps::Array,
    programs::PerfEventContext,
};
use pool_obs_common::{
    counters::Counter,
    event::{CpuSampleRecord, EventKind, Header, ModelKey, NOT_IN_CALL, SAMPLE_STACK_BYTES},
};

use crate::{EVENTS, calls, count, cpu, current_ids, events_lost_so_far};

/// The stack sizes tried in turn: a read that crosses the end of the stack's mapping fails
/// whole, so near the top a smaller one is read.
const STACK_READS: [usize; 5] = [SAMPLE_STACK_BYTES, 8 << 10, 4 << 10, 2 << 10, 1 << 10];

/// Non-zero while the agent takes a profile.
#[map]
static SAMPLING: Array<u32> = Array::with_max_entries(1, 0);

#[perf_event]
pub fn cpu_sample(ctx: PerfEventContext) -> u32 {
    if SAMPLING.get(0).is_none_or(|on| *on == 0) {
        return 0;
    }
    let (pid, tid) = current_ids();
    if !cpu::is_followed(pid) {
        return 0;
    }
    // A sample is 16 KiB: past half the ring, the pool's own events get the room.
    let (waiting, size) = (EVENTS.query(BPF_RB_AVAIL_DATA.into()), EVENTS.query(BPF_RB_RING_SIZE.into()));
    if waiting > size / 2 {
        count(Counter::SamplesDropped);
        return 0;
    }
    let Some(regs) = user_registers(&ctx) else {
        count(Counter::SamplesDropped);
        return 0;
    };
    let Some(mut entry) = EVENTS.reserve::<CpuSampleRecord>(0) else {
        count(Counter::EventsLost);
        return 0;
    };
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points at the reserved entry, written field by field in place: at 16
    // KiB it cannot pass through the BPF stack.
    unsafe {
        let sample = addr_of_mut!((*record).sample);
        let (mut probe, mut model, mut request_id, mut future) = (NOT_IN_CALL, ModelKey::ABSENT, 0, 0);
        if let Some(call) = calls::of_current_thread(false).and_then(calls::innermost_open) {
            probe = (*call).request_probe;
            model = (*call).model;
            request_id = (*call).request_id;
            future = (*call).future;
        }
        write(
            addr_of_mut!((*sample).header),
            Header {
                kind: EventKind::CpuSampled as u32,
                probe,
                tid,
                pid,
                ts_ns: bpf_ktime_get_ns(),
                lost_before: events_lost_so_far(),
            },
        );
        write(addr_of_mut!((*sample).model), model);
        write(addr_of_mut!((*sample).request_id), request_id);
        write(addr_of_mut!((*sample).future), future);
        write(addr_of_mut!((*sample).ip), regs.rip);
        write(addr_of_mut!((*sample).sp), regs.rsp);
        write(addr_of_mut!((*sample).bp), regs.rbp);
        let stack = addr_of_mut!((*record).stack).cast::<u8>();
        let mut copied = 0u64;
        for size in STACK_READS {
            if bpf_probe_read_user(stack.cast(), size as u32, regs.rsp as *const _) == 0 {
                copied = size as u64;
                break;
            }
        }
        write(addr_of_mut!((*sample).stack_len), copied);
    }
    entry.submit(0);
    0
}

/// The thread's user registers: those of the sample when it interrupted user code, else (in
/// a system call, say) those saved when the thread entered the kernel.
fn user_registers(ctx: &PerfEventContext) -> Option<pt_regs> {
    // SAFETY: a perf event program's context starts with the registers at the sample.
    let regs = unsafe { *ctx.as_ptr().cast::<pt_regs>() };
    if regs.cs & 3 == 3 {
        return Some(regs);
    }
    // SAFETY: helpers for the current task, which is a user thread of a followed process.
    let saved = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const pt_regs;
    let regs = unsafe { bpf_probe_read_kernel(saved) }.ok()?;
    (regs.rsp != 0).then_some(regs)
}
