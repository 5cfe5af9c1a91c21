//! Work a request hands to another thread: a closure for tokio's blocking pool, a job for
//! rayon's workers. Where the work is made (`handoff_made`), on the request's thread, its key
//! (the task's or job's address) is remembered with the request of the innermost call the
//! thread has open. Where it runs (`handoff_ran`), maybe on another thread, a call is opened
//! for that request, as if the request's own probe had opened it: CPU samples of the run carry
//! the request, and the run's end (`handoff_returned`) writes its CPU time. A run nested in
//! another (a rayon worker waiting in a `join` runs other jobs) lends its time out of the
//! enclosing call, so that no CPU counts twice.
//!
//! Some work is made where no probe can see it: rayon's `join` pushes its second half, a job on
//! the running thread's own stack, onto that worker's deque from code inlined into the caller,
//! and another worker may steal it. So a run of rayon's marks its thread's stack below it, by
//! 64 KiB granule, as its request's (`STACK_SPANS`), and a job whose key no making site gave is
//! looked up there: a job on a stack belongs to the run that stack's thread is in.

use aya_ebpf::{
    EbpfContext,
    bindings::pt_regs,
    helpers::generated::bpf_ktime_get_ns,
    macros::{btf_map, map, uprobe, uretprobe},
    maps::LruHashMap,
    programs::{ProbeContext, RetProbeContext},
};
use pool_obs_common::{
    counters::Counter,
    event::{CallEnding, ModelKey},
    probe::ProbeSpec,
};

use crate::{
    calls::{self, Gone},
    count, cpu,
    emit::{self, Hit},
    probe_spec,
    registers::{self, Registers, stack_pointer},
    task_storage::TaskStorage,
};

/// The request a hand-off was made in, as its innermost call named it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Origin {
    pub model: ModelKey,
    pub request_id: u64,
    pub future: u64,
    pub request_probe: u32,
    /// The spec of the site that made the work: which runtime it went through.
    pub made_by: u32,
    /// Non-zero: the work runs many times (a spawned task), and its key stays until the runtime
    /// makes other work at its address.
    pub runs_many: u64,
}

impl Origin {
    /// Sets it to the request `call` serves, for work made at the site of spec `made_by`, which
    /// runs many times if `runs_many`.
    #[inline(always)]
    fn set(&mut self, call: &calls::OpenCall, made_by: u32, runs_many: u8) {
        self.model = call.model;
        self.request_id = call.request_id;
        self.future = call.future;
        self.request_probe = call.request_probe;
        self.made_by = made_by;
        self.runs_many = u64::from(runs_many);
    }
}

/// Hand-offs made and not yet run, by key. Least recently used first out: work that never runs
/// (a task cancelled before a thread took it) leaves in time.
#[map]
static HANDOFFS: LruHashMap<u64, Origin> = LruHashMap::with_max_entries(16 << 10, 0);

/// The hand-off's key: the register the spec names, at the site.
#[inline(always)]
fn handoff_key(ctx: &ProbeContext, spec: &ProbeSpec) -> Option<u64> {
    // SAFETY: the program's context.
    let registers = unsafe { Registers::at_site(ctx.regs) }?;
    registers::one(registers.general, spec.handoff_key)
}

/// A run's stack, from its entry down: where jobs made during it live.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Span {
    /// The run's entry stack pointer: the span's jobs are below it.
    pub top: u64,
    pub origin: Origin,
}

/// Spans by granule of the stack (address >> `GRANULE_SHIFT`).
#[map]
static STACK_SPANS: LruHashMap<u64, Span> = LruHashMap::with_max_entries(4 << 10, 0);

const GRANULE_SHIFT: u32 = 16;
/// How far below a run's entry its jobs may be: four granules, 256 KiB of stack.
const SPAN_GRANULES: u64 = 4;

/// Each thread's origin or span being written: built in place, where 120 bytes on the BPF
/// stack would take `handoff_ran` past the verifier's margin.
#[btf_map]
static SCRATCH: TaskStorage<Span> = TaskStorage::new();

/// Where work is handed off: remembered if the thread is serving a request.
#[uprobe]
#[allow(clippy::needless_borrows_for_generic_args, reason = "a copy would be on the BPF stack")]
pub fn handoff_made(ctx: ProbeContext) {
    let Some((cookie, spec)) = probe_spec(&ctx) else {
        return;
    };
    let Some(key) = handoff_key(&ctx, spec) else {
        return;
    };
    let Some(call) = calls::of_current_thread(false).and_then(calls::innermost_open) else {
        // Made outside any request: work an earlier request made at this address is gone.
        let _ = HANDOFFS.remove(key);
        return;
    };
    // SAFETY: the slot stays as it is until this program run ends.
    let call = unsafe { &*call };
    let Some(scratch) = SCRATCH.current(true) else {
        count(Counter::HandoffsLost);
        return;
    };
    // SAFETY: the current task's value, for this program run alone.
    let origin = unsafe { &mut (*scratch).origin };
    origin.set(call, cookie.probe, spec.runs_many);
    if HANDOFFS.insert(key, &*origin, 0).is_err() {
        count(Counter::HandoffsLost);
    }
}

/// Where handed-off work starts to run: the run serves the request it was made in. Work of no
/// request (most of a runtime's tasks) costs a map lookup.
#[uprobe]
pub fn handoff_ran(ctx: ProbeContext) {
    let Some((cookie, spec)) = probe_spec(&ctx) else {
        return;
    };
    let Some(key) = handoff_key(&ctx, spec) else {
        return;
    };
    // SAFETY: the value is copied into the call before the key is removed.
    let made = unsafe { HANDOFFS.get(key) };
    let Some(origin) = made.or_else(|| on_a_stack(spec, key)) else {
        return;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let sp = cookie.entry_sp(unsafe { stack_pointer(ctx.regs) });
    let opened = calls::of_current_thread(true).is_some_and(|calls| {
        calls::close_unwound(calls, Gone::AtOrBelow(sp), now);
        calls::open(calls, sp, cookie.probe, |call| {
            call.entered_ns = now;
            call.entered_cpu_ns = cpu::thread_clock(now);
            call.model = origin.model;
            call.request_id = origin.request_id;
            call.future = origin.future;
            call.request_probe = origin.request_probe;
            call.handoff_made_by = origin.made_by;
            call.worker_id = 0;
            call.state = 0;
        })
    });
    // Only a run whose end will unmark its stack marks it.
    if opened && spec.jobs_on_stack != 0 {
        mark_stack(sp, |into| *into = *origin);
    }
    if made.is_some_and(|made| made.runs_many == 0) {
        let _ = HANDOFFS.remove(key);
    }
}

/// The request of the run whose stack holds the job at `key`, for work whose runtime makes
/// jobs on stacks.
#[inline(always)]
fn on_a_stack(spec: &ProbeSpec, key: u64) -> Option<&'static Origin> {
    if spec.jobs_on_stack == 0 {
        return None;
    }
    // SAFETY: a map value, read before this program run ends.
    let span = unsafe { STACK_SPANS.get(key >> GRANULE_SHIFT) }?;
    (key < span.top && span.top - key <= SPAN_GRANULES << GRANULE_SHIFT).then_some(&span.origin)
}

/// Marks the stack below `top` as the run's, whose request `origin` writes.
#[inline(always)]
#[allow(clippy::needless_borrows_for_generic_args, reason = "a copy would be on the BPF stack")]
fn mark_stack(top: u64, origin: impl FnOnce(&mut Origin)) {
    let Some(span) = SCRATCH.current(true) else { return };
    // SAFETY: the current task's value, for this program run alone.
    let span = unsafe { &mut *span };
    span.top = top;
    origin(&mut span.origin);
    for below in 0..SPAN_GRANULES {
        let _ = STACK_SPANS.insert((top >> GRANULE_SHIFT) - below, &*span, 0);
    }
}

/// A run ended whose stack was marked: its granules go back to the run it was nested in, if
/// that was one of the same runtime's, or are unmarked.
#[inline(always)]
fn unmark_stack(calls: *mut calls::OpenCalls, top: u64, probe: u32) {
    if let Some(outer) = calls::innermost_open(calls) {
        // SAFETY: the slot stays as it is until this program run ends.
        let outer = unsafe { &*outer };
        if outer.return_probe == probe {
            mark_stack(outer.sp, |into| into.set(outer, outer.handoff_made_by, 0));
            return;
        }
    }
    for below in 0..SPAN_GRANULES {
        let granule = (top >> GRANULE_SHIFT) - below;
        // SAFETY: a map value, read before this program run ends.
        if unsafe { STACK_SPANS.get(granule) }.is_some_and(|span| span.top == top) {
            let _ = STACK_SPANS.remove(granule);
        }
    }
}

/// The end of a run `handoff_ran` may have opened (a uretprobe: the runtimes catch a panic of
/// the work inside the run, so none unwinds through it).
#[uretprobe]
pub fn handoff_returned(ctx: RetProbeContext) {
    let Some((cookie, spec)) = probe_spec(&ctx) else {
        return;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let sp = cookie.entry_sp(unsafe { stack_pointer(ctx.as_ptr() as *const pt_regs) });
    let Some(calls) = calls::of_current_thread(false) else {
        return;
    };
    calls::close_unwound(calls, Gone::Below(sp), now);
    // Most runs were of no request's work: nothing was opened for them.
    let Some(call) = calls::take(calls, sp, cookie.probe) else {
        return;
    };
    // SAFETY: the slot stays as it is until this program run ends.
    let cpu_ns =
        emit::handoff_ran(unsafe { &*call }, &Hit { probe: cookie.probe, now }, CallEnding::Returned);
    calls::lend_cpu(calls, cpu_ns);
    if spec.jobs_on_stack != 0 {
        unmark_stack(calls, sp, cookie.probe);
    }
}
