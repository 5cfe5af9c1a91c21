//! The calls with return probes that each thread has open: entered and not yet returned.
//!
//! A call is named by its entry stack pointer. The stack grows down, so every frame still
//! alive when a thread is at stack pointer `sp` has an entry sp above `sp`: an open call whose
//! entry sp is at or below the current one is gone without having returned — a panic unwound
//! through it. Every probe hit on a thread (an entry, a return, a caught panic, the thread's
//! exit) closes such calls as unwound, so no return-side probe needs the kernel to rewrite a
//! return address, and a panic cannot meet a uretprobe trampoline it cannot unwind through.

use aya_ebpf::macros::btf_map;
use pool_obs_common::{
    counters::Counter,
    event::ModelKey,
    probe::{MAX_OPEN_CALLS, Register},
};

use crate::{PROBES, count, emit, task_storage::TaskStorage};

/// One call entered and not yet returned: what its return probe needs of its entry.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct OpenCall {
    /// The stack pointer at the function's entry (pointing at its return address).
    pub sp: u64,
    pub entered_ns: u64,
    /// The thread's CPU clock at entry ([`crate::cpu::thread_clock`]).
    pub entered_cpu_ns: u64,
    /// Index of the return probe's spec.
    pub return_probe: u32,
    /// Index of the spec of the call whose request this is: the return probe's own, but for a
    /// hand-off's run, which serves the request of the call it was made in.
    pub request_probe: u32,
    /// The general registers at entry, in DWARF's order.
    pub registers: [u64; Register::COUNT],
    /// For a hand-off's run: the spec of the site that made the work.
    pub handoff_made_by: u32,
    pub _reserved: u32,
    /// The return probe's model and ids, read at entry from the arguments, while what they
    /// point at is certainly alive.
    pub model: ModelKey,
    pub request_id: u64,
    pub worker_id: u64,
    /// For a poll of a request's future: its address (0 until an inlined poll fills it in),
    /// and its state tag when the poll started.
    pub future: u64,
    pub state: u64,
}

/// A thread's open calls, outermost first: entry sps descend.
#[repr(C)]
pub struct OpenCalls {
    pub depth: u64,
    pub calls: [OpenCall; MAX_OPEN_CALLS],
}

/// On each thread's task: created empty (zeroed) at its first call, freed with the task.
#[btf_map]
static OPEN_CALLS: TaskStorage<OpenCalls> = TaskStorage::new();

/// Which open calls a stack pointer shows to be gone.
#[derive(Clone, Copy)]
pub enum Gone {
    /// Entry sp at or below this: at a new entry, or when a panic is caught.
    AtOrBelow(u64),
    /// Entry sp strictly below this: at a return, the call at this sp is the one returning.
    Below(u64),
}

impl Gone {
    /// Every one: the thread is exiting. (A variant without a value would leave a register
    /// unset in the call, which the verifier refuses.)
    pub const ALL: Gone = Gone::AtOrBelow(u64::MAX);

    fn includes(self, sp: u64) -> bool {
        match self {
            Gone::AtOrBelow(limit) => sp <= limit,
            Gone::Below(limit) => sp < limit,
        }
    }
}

/// The current thread's open calls, created if `create`.
pub fn of_current_thread(create: bool) -> Option<*mut OpenCalls> {
    OPEN_CALLS.current(create)
}

// The slots are indexed by the counter of a bounded loop, never by arithmetic on `depth`: LLVM
// computes `index * size` before the bounds check, and the verifier then rejects the pointer.

/// Closes the open calls that `gone` shows to have unwound, innermost first, writing their
/// events.
pub fn close_unwound(calls: *mut OpenCalls, gone: Gone, now: u64) {
    for index in (0..MAX_OPEN_CALLS).rev() {
        // SAFETY: `calls` points into a map value for the whole program run.
        let depth = unsafe { (*calls).depth };
        if index as u64 >= depth {
            continue;
        }
        let top = unsafe { &(*calls).calls[index] };
        if !gone.includes(top.sp) {
            return;
        }
        count(Counter::CallsUnwound);
        if let Some(spec) = PROBES.get(top.return_probe) {
            emit::unwound(spec, top, now);
        }
        unsafe { (*calls).depth = index as u64 };
    }
}

/// Opens a call for the return probe `return_probe`, filling its slot with `fill`; false when
/// the thread has too many open.
pub fn open(calls: *mut OpenCalls, sp: u64, return_probe: u32, fill: impl FnOnce(&mut OpenCall)) -> bool {
    // SAFETY: as above.
    let depth = unsafe { (*calls).depth };
    for index in 0..MAX_OPEN_CALLS {
        if index as u64 == depth {
            let slot = unsafe { &mut (*calls).calls[index] };
            slot.sp = sp;
            slot.return_probe = return_probe;
            slot.request_probe = return_probe;
            fill(slot);
            unsafe { (*calls).depth = index as u64 + 1 };
            return true;
        }
    }
    count(Counter::CallsTooDeep);
    false
}

/// The innermost open call, if it is the one entered at `sp` for `return_probe`: where an
/// inlined poll fills in its future, and where its caller binds the future's `Ready` value.
pub fn innermost(calls: *mut OpenCalls, sp: u64, return_probe: u32) -> Option<*mut OpenCall> {
    // SAFETY: as above.
    let depth = unsafe { (*calls).depth };
    for index in 0..MAX_OPEN_CALLS {
        if index as u64 + 1 == depth {
            let top = unsafe { &mut (*calls).calls[index] };
            if top.sp != sp || top.return_probe != return_probe {
                return None;
            }
            return Some(top);
        }
    }
    None
}

/// The innermost open call, whatever it is: what a CPU sample names the thread's work by, and
/// what work handed off from the thread is made in.
pub fn innermost_open(calls: *mut OpenCalls) -> Option<*mut OpenCall> {
    // SAFETY: as above.
    let depth = unsafe { (*calls).depth };
    for index in 0..MAX_OPEN_CALLS {
        if index as u64 + 1 == depth {
            return Some(unsafe { &mut (*calls).calls[index] });
        }
    }
    None
}

/// Takes the innermost open call if it is the one returning at `sp` for `return_probe`. The
/// slot it points at stays as it is until the program run ends.
pub fn take(calls: *mut OpenCalls, sp: u64, return_probe: u32) -> Option<*const OpenCall> {
    // SAFETY: as above.
    let depth = unsafe { (*calls).depth };
    for index in 0..MAX_OPEN_CALLS {
        if index as u64 + 1 == depth {
            let top = unsafe { &(*calls).calls[index] };
            if top.sp != sp || top.return_probe != return_probe {
                return None;
            }
            unsafe { (*calls).depth = index as u64 };
            return Some(top);
        }
    }
    None
}

/// The innermost open call's CPU time leaves out `cpu_ns`: the run of a hand-off nested in it
/// (a rayon worker waiting in a `join` runs other jobs meanwhile), which counts for its own
/// request.
pub fn lend_cpu(calls: *mut OpenCalls, cpu_ns: u64) {
    if let Some(call) = innermost_open(calls) {
        // SAFETY: as above.
        unsafe { (*call).entered_cpu_ns += cpu_ns };
    }
}
