//! The kernel half of pool-obs. Two generic programs serve every probe in the manifest: the
//! attach cookie indexes `PROBES`, whose spec says which event to write and where its values
//! live. Flow: probe fires → [`registers`] captured → [`read`] evaluates the spec → [`emit`]
//! writes the typed event into `EVENTS`.
#![no_std]
#![no_main]

mod emit;
mod read;
mod registers;

use aya_ebpf::{
    EbpfContext, Global,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_current_pid_tgid, generated::bpf_get_attach_cookie, generated::bpf_ktime_get_ns},
    macros::{map, uprobe, uretprobe},
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RetProbeContext},
};
use pool_obs_common::{
    counters,
    probe::{MAX_PROBES, ProbeSpec, SAVES_NOTHING},
};
use registers::{Registers, SavedEntry};

/// The agent sizes this at load time (`--ring-buffer-bytes`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

#[map]
static PROBES: Array<ProbeSpec> = Array::with_max_entries(MAX_PROBES, 0);

/// Arguments and entry time of calls in flight, for their return probes, keyed by
/// [`entry_key`]. LRU so that calls that never return (a panicking worker) cannot fill it.
#[map]
static ENTRIES: LruHashMap<u64, SavedEntry> = LruHashMap::with_max_entries(65_536, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counters::COUNT, 0);

/// Wake the reader only once this many bytes are waiting; below that it drains on a timer.
/// A wakeup per event costs more than the probe itself. 0 wakes on every event.
#[unsafe(no_mangle)]
static WAKEUP_BYTES: Global<u64> = Global::new(0);

/// Non-zero under `--debug-probes`: log every failed read. Set at load time, so that when it is
/// zero the verifier removes the logging code.
#[unsafe(no_mangle)]
static DEBUG_PROBES: Global<u8> = Global::new(0);

#[uprobe]
pub fn probe_entry(ctx: ProbeContext) {
    let Some((index, spec)) = probe_spec(&ctx) else {
        return;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let registers = Registers::at_entry(&ctx);
    if spec.saves_for != SAVES_NOTHING {
        save_entry(entry_key(spec.saves_for), SavedEntry { args: registers.args, entered_ns: now });
    }
    emit::event(&ctx, spec, index, now, &registers, 0);
}

#[uretprobe]
pub fn probe_return(ctx: RetProbeContext) {
    let Some((index, spec)) = probe_spec(&ctx) else {
        return;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(saved) = take_entry(entry_key(index)) else {
        count(counters::RETURNS_WITHOUT_ENTRY);
        return;
    };
    let registers = Registers::at_return(&ctx, &saved);
    emit::event(&ctx, spec, index, now, &registers, saved.entered_ns);
}

/// A thread's slot is reused call after call: overwritten in place at entry, marked empty (a
/// zero entry time) at return. Two lookups cost less than an update and a delete.
fn save_entry(key: u64, saved: SavedEntry) {
    match ENTRIES.get_ptr_mut(key) {
        Some(slot) => {
            if unsafe { (*slot).entered_ns } != 0 {
                count(counters::ENTRIES_WITHOUT_RETURN);
            }
            unsafe { *slot = saved }
        }
        // On failure the return probe counts the missing entry.
        None => {
            let _ = ENTRIES.insert(key, saved, 0);
        }
    }
}

fn take_entry(key: u64) -> Option<SavedEntry> {
    let slot = ENTRIES.get_ptr_mut(key)?;
    let saved = unsafe { *slot };
    if saved.entered_ns == 0 {
        return None;
    }
    unsafe { (*slot).entered_ns = 0 };
    Some(saved)
}

fn probe_spec<C: EbpfContext>(ctx: &C) -> Option<(u32, &'static ProbeSpec)> {
    let index = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    match PROBES.get(index) {
        Some(spec) if spec.kind != 0 || spec.saves_for != SAVES_NOTHING => Some((index, spec)),
        _ => {
            count(counters::UNKNOWN_PROBES);
            None
        }
    }
}

/// One slot per (thread, return probe): a thread is inside at most one call of a function at a
/// time unless it recurses, and pools' lifecycle functions do not.
fn entry_key(return_probe: u32) -> u64 {
    let tid = bpf_get_current_pid_tgid() as u32;
    ((return_probe as u64) << 32) | tid as u64
}

pub(crate) fn thread_id() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

pub(crate) fn count(counter: u32) {
    if let Some(value) = COUNTERS.get_ptr_mut(counter) {
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
