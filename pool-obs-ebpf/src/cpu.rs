//! Each followed thread's CPU clock: the on-CPU time the kernel gave it since the agent
//! attached. It is kept at every context switch (`sched_switch`), so that a probe reads the
//! clock at the instant it fires, and a request's CPU time is the difference between the
//! clock at its end and at its start, on one thread. No sampling: the figure is exact to the
//! switch, and costs one map update per switch of a followed thread.
//!
//! At `sched_switch` the task still current is the one leaving the CPU; it got the CPU at the
//! previous switch on this CPU, whose time `SLICE_STARTED` keeps (the agent sets it for every
//! CPU before attaching, so the first slice is counted from then).

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated::bpf_ktime_get_ns},
    macros::{btf_map, map, raw_tracepoint},
    maps::{PerCpuArray, PerCpuHashMap},
    programs::RawTracePointContext,
};

use crate::task_storage::TaskStorage;

/// The followed processes (the agent adds and removes them), with their on-CPU time: per CPU,
/// so that threads switching on several CPUs at once each add to their own.
#[map]
static PROCESS_CPU: PerCpuHashMap<u32, u64> = PerCpuHashMap::with_max_entries(4096, 0);

/// On each thread of a followed process: its on-CPU time, to its last switch. Freed with the
/// thread's task.
#[btf_map]
static THREAD_CPU: TaskStorage<u64> = TaskStorage::new();

#[map]
static SLICE_STARTED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn cpu_switch(_ctx: RawTracePointContext) -> i32 {
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(started) = SLICE_STARTED.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot of a per-CPU map, for this program run alone.
    let slice = now.saturating_sub(unsafe { *started });
    unsafe { *started = now };
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(process) = PROCESS_CPU.get_ptr_mut((pid_tgid >> 32) as u32) else {
        return 0;
    };
    // SAFETY: this CPU's value, for this program run alone.
    unsafe { *process += slice };
    // Only this thread's own switches write its clock, and it runs on one CPU at a time.
    if let Some(thread) = THREAD_CPU.current(true) {
        unsafe { *thread += slice };
    }
    0
}

/// The current thread's CPU clock at `now`: its time to its last switch, and its current slice.
#[inline(always)]
pub fn thread_clock(now: u64) -> u64 {
    // SAFETY: the current task's value, read once, for this program run.
    let until_switch = THREAD_CPU.current(false).map_or(0, |thread| unsafe { *thread });
    let started = SLICE_STARTED.get(0).copied().unwrap_or(now);
    until_switch + now.saturating_sub(started)
}

/// Whether the agent follows process `pid`.
#[inline(always)]
pub fn is_followed(pid: u32) -> bool {
    PROCESS_CPU.get_ptr(pid).is_some()
}
