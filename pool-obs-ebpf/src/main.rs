//! The kernel half of pool-obs. Generic programs serve every probe in the manifest: the
//! attach cookie indexes `PROBES`, whose spec says which event to write and where its values
//! live. Flow: probe fires → [`registers`] captured → [`read`] evaluates the spec → [`emit`]
//! writes the typed event into `EVENTS`. Calls with return probes are followed by
//! [`calls`], which also notices the calls a panic unwound through; [`handoff`] follows the work
//! a request hands to another thread. Beside the probes,
//! [`cpu`] keeps each followed thread's CPU clock at every context switch, and [`sample`]
//! takes the CPU samples of a profile.
#![no_std]
#![no_main]

mod calls;
mod cpu;
mod emit;
mod handoff;
mod read;
mod registers;
mod sample;
mod task_storage;

use aya_ebpf::{
    EbpfContext, Global,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, pt_regs},
    helpers::{bpf_get_current_pid_tgid, generated::bpf_get_attach_cookie, generated::bpf_ktime_get_ns},
    macros::{map, raw_tracepoint, uprobe, uretprobe},
    maps::{Array, PerCpuArray, RingBuf},
    programs::{ProbeContext, RawTracePointContext, RetProbeContext},
};
use calls::Gone;
use emit::Hit;
use pool_obs_common::{
    counters::Counter,
    probe::{Cookie, MAX_PROBES, ProbeSpec},
};
use registers::{Registers, stack_pointer};

/// The agent sizes this at load time (`--ring-buffer-bytes`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

#[map]
static PROBES: Array<ProbeSpec> = Array::with_max_entries(MAX_PROBES, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// The probes' events lost on every CPU, one number: each event carries it (`lost_before`), so
/// that the agent knows, in order, where a loss fell.
#[map]
static PROBE_EVENTS_LOST: Array<u64> = Array::with_max_entries(1, 0);

/// Failed reads by probe, so that `/health` can name a probe whose manifest reads the wrong place.
#[map]
static PROBE_READ_FAILURES: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_PROBES, 0);

/// Wake the reader only once this many bytes are waiting; below that it drains on a timer.
/// A wakeup per event costs more than the probe itself. 0 wakes on every event.
#[unsafe(no_mangle)]
static WAKEUP_BYTES: Global<u64> = Global::new(0);

/// Non-zero under `--debug-probes`: log every failed read. Set at load time, so that when it is
/// zero the verifier removes the logging code.
#[unsafe(no_mangle)]
static DEBUG_PROBES: Global<u8> = Global::new(0);

/// At a function's entry, or at the first instruction after it where the values are intact.
#[uprobe]
pub fn probe_entry(ctx: ProbeContext) {
    let Some((cookie, spec)) = probe_spec(&ctx) else {
        return;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(registers) = (unsafe { Registers::at_site(ctx.regs) }) else {
        lost_event();
        return;
    };
    emit::event(&ctx, spec, &Hit { probe: cookie.probe, now }, &registers);
}

/// At the same site as an entry probe: opens the call for the return probe the cookie names,
/// reading the values it takes from the arguments. A program of its own, beside
/// `probe_entry` (one trap serves both), keeps each small enough for the verifier.
#[uprobe]
pub fn probe_call(ctx: ProbeContext) {
    let Some((cookie, spec)) = probe_spec(&ctx) else {
        return;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let sp = cookie.entry_sp(unsafe { stack_pointer(ctx.regs) });
    // When there is no room, the return counts its missing entry.
    let Some(calls) = calls::of_current_thread(true) else {
        return;
    };
    calls::close_unwound(calls, Gone::AtOrBelow(sp), now);
    // Too deep, it is counted; its return then counts its missing entry.
    let _ = calls::open(calls, sp, cookie.probe, |call| {
        call.entered_ns = now;
        call.entered_cpu_ns = cpu::thread_clock(now);
        unsafe { registers::copy(ctx.regs, &mut call.registers) };
        // SAFETY: `read_at_entry` writes the call's values, never its registers.
        let general: *const registers::General = &call.registers;
        let general = unsafe { &*general };
        emit::read_at_entry(&ctx, spec, cookie.probe, &Registers::saved(general), call);
    });
}

/// At a poll of a request's future that the optimiser inlined into its caller: fills the
/// future in to the caller's call, which `probe_call` opened at the caller's entry and whose
/// return probes write the poll's event.
#[uprobe]
pub fn probe_poll(ctx: ProbeContext) {
    in_callers_call(&ctx, |spec, hit, registers, call| emit::fill_poll(&ctx, spec, hit, registers, call));
}

/// Where the caller of an inlined poll binds the future's `Ready` value (a parent `async fn`'s
/// `.await`, a wrapper such as `Timeout`): the poll `probe_poll` filled in ended there, ready.
#[uprobe]
pub fn probe_ready(ctx: ProbeContext) {
    in_callers_call(&ctx, |spec, hit, registers, call| emit::ready(&ctx, spec, hit, registers, call));
}

/// At a site inside a function whose call `probe_call` opened: `act` on that call, with the
/// registers here. A call entered before the agent attached is not there; its return counts it.
#[inline(always)]
fn in_callers_call(
    ctx: &ProbeContext,
    act: impl FnOnce(&ProbeSpec, &Hit, &Registers<'_>, &mut calls::OpenCall),
) {
    let Some((cookie, spec)) = probe_spec(ctx) else {
        return;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let sp = cookie.entry_sp(unsafe { stack_pointer(ctx.regs) });
    let Some(call) =
        calls::of_current_thread(false).and_then(|calls| calls::innermost(calls, sp, cookie.probe))
    else {
        return;
    };
    let Some(registers) = (unsafe { Registers::at_site(ctx.regs) }) else {
        lost_event();
        return;
    };
    // SAFETY: the slot stays as it is until this program run ends.
    act(spec, &Hit { probe: cookie.probe, now }, &registers, unsafe { &mut *call });
}

/// A uretprobe: only on functions the agent showed cannot unwind, or by the manifest's
/// explicit `unsafe_uretprobe`, since a panic cannot unwind through its trampoline.
#[uretprobe]
pub fn probe_return(ctx: RetProbeContext) {
    returned(&ctx);
}

/// A uprobe on one of the function's return instructions: safe whatever the function does.
#[uprobe]
pub fn probe_exit(ctx: ProbeContext) {
    returned(&ctx);
}

/// At the runtime's catch of a panic (`__rust_panic_cleanup`): the calls it unwound through
/// are closed now rather than at the thread's next probed call.
#[uprobe]
pub fn probe_unwind_caught(ctx: ProbeContext) {
    if let Some(calls) = calls::of_current_thread(false) {
        let sp = cookie(&ctx).entry_sp(unsafe { stack_pointer(ctx.regs) });
        calls::close_unwound(calls, Gone::AtOrBelow(sp), unsafe { bpf_ktime_get_ns() });
    }
}

/// A thread that exits with calls open unwound through them (or never returned). Its open
/// calls and CPU clock go with its task.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn thread_exit(_ctx: RawTracePointContext) -> i32 {
    if let Some(calls) = calls::of_current_thread(false) {
        calls::close_unwound(calls, Gone::ALL, unsafe { bpf_ktime_get_ns() });
    }
    0
}

fn returned<C: EbpfContext>(ctx: &C) {
    let Some((cookie, spec)) = probe_spec(ctx) else {
        return;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let regs = ctx.as_ptr() as *const pt_regs;
    let sp = cookie.entry_sp(unsafe { stack_pointer(regs) });
    let call = calls::of_current_thread(false).and_then(|calls| {
        calls::close_unwound(calls, Gone::Below(sp), now);
        calls::take(calls, sp, cookie.probe)
    });
    let Some(call) = call else {
        count(Counter::ReturnsWithoutEntry);
        return;
    };
    // SAFETY: the slot stays as it is until this program run ends.
    let call = unsafe { &*call };
    let registers = unsafe { Registers::at_return(regs, &call.registers) };
    emit::returned(ctx, spec, &Hit { probe: cookie.probe, now }, &registers, call);
}

fn cookie<C: EbpfContext>(ctx: &C) -> Cookie {
    Cookie::decode(unsafe { bpf_get_attach_cookie(ctx.as_ptr()) })
}

pub(crate) fn probe_spec<C: EbpfContext>(ctx: &C) -> Option<(Cookie, &'static ProbeSpec)> {
    let cookie = cookie(ctx);
    match PROBES.get(cookie.probe) {
        Some(spec) if spec.kind != 0 => Some((cookie, spec)),
        _ => {
            count(Counter::UnknownProbes);
            None
        }
    }
}

/// The current process and thread ids, from one helper call.
pub(crate) fn current_ids() -> (u32, u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    ((pid_tgid >> 32) as u32, pid_tgid as u32)
}

/// A read of the target's memory failed for `probe`.
pub(crate) fn count_read_failure(probe: u32) {
    count(Counter::ReadFailures);
    if let Some(value) = PROBE_READ_FAILURES.get_ptr_mut(probe) {
        unsafe { *value += 1 };
    }
}

/// A probe's event that could not be written: counted on this CPU, and in the number every
/// later event carries.
pub(crate) fn lost_event() {
    count(Counter::EventsLost);
    if let Some(total) = PROBE_EVENTS_LOST.get_ptr_mut(0) {
        // SAFETY: a map value, valid for the program run. Other CPUs add to it too, and the
        // BPF target has no atomic add in Rust: two losses at once may count one, or set it
        // back by one. It changes all the same, and the agent looks for a change, not a count
        // (`COUNTERS` counts them exactly).
        unsafe { *total = (*total).wrapping_add(1) };
    }
}

/// The probes' events lost so far, on every CPU.
pub(crate) fn events_lost_so_far() -> u64 {
    PROBE_EVENTS_LOST.get(0).copied().unwrap_or(0)
}

pub(crate) fn count(counter: Counter) {
    if let Some(value) = COUNTERS.get_ptr_mut(counter.index()) {
        unsafe { *value += 1 };
    }
}

/// Flags for a ring-buffer submit: no wakeup until enough data waits for the reader.
pub(crate) fn wakeup_flags() -> u64 {
    let threshold = WAKEUP_BYTES.load();
    if threshold == 0 {
        0
    } else if EVENTS.query(BPF_RB_AVAIL_DATA.into()) >= threshold {
        BPF_RB_FORCE_WAKEUP.into()
    } else {
        BPF_RB_NO_WAKEUP.into()
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
