//! The register values a probe's spec is evaluated against.
//!
//! The sixteen general registers are copied out of the context once a hit, and never onto the
//! BPF stack: 128 bytes there cost a quarter of the verifier's 512 for a chain of calls, and
//! took six programs over it. A call's copy lives in its open call; a site's, in the thread's
//! own scratch (task storage: a thread runs one program at a time, where a per-CPU buffer could
//! be overwritten by another thread's probe if this one were preempted).

use aya_ebpf::{bindings::pt_regs, macros::btf_map};
use pool_obs_common::probe::Register;

use crate::task_storage::TaskStorage;

/// The general registers, in DWARF's order ([`Register`]).
pub type General = [u64; Register::COUNT];

/// Each thread's copy of the registers at the probe site it is in.
#[btf_map]
static SITE_REGISTERS: TaskStorage<General> = TaskStorage::new();

pub struct Registers<'a> {
    /// As they were at the function's entry (or at the probe site, for a probe at a site).
    pub general: &'a General,
    /// Return registers (rax, rdx); zero but at a return.
    pub ret: [u64; 2],
}

impl<'a> Registers<'a> {
    /// The registers at a probe site, copied into the thread's scratch; `None` when the kernel
    /// has no memory for it.
    ///
    /// # Safety
    /// `regs` is the program's context.
    pub unsafe fn at_site(regs: *const pt_regs) -> Option<Registers<'static>> {
        let scratch = SITE_REGISTERS.current(true)?;
        // SAFETY: the current task's value, for this program run alone.
        let general = unsafe { &mut *scratch };
        unsafe { copy(regs, general) };
        Some(Registers { general, ret: [0; 2] })
    }

    /// The registers saved at a call's entry, before it returned.
    pub fn saved(general: &'a General) -> Self {
        Self { general, ret: [0; 2] }
    }

    /// At a return: the registers saved at entry (by then the general ones were reused), and
    /// the return registers now.
    ///
    /// # Safety
    /// `regs` is the program's context.
    pub unsafe fn at_return(regs: *const pt_regs, general: &'a General) -> Self {
        let r = unsafe { &*regs };
        Self { general, ret: [r.rax, r.rdx] }
    }
}

/// Copies the general registers at a probe site into `into`, in DWARF's order.
///
/// # Safety
/// `regs` is the program's context.
#[inline(always)]
pub unsafe fn copy(regs: *const pt_regs, into: &mut General) {
    let r = unsafe { &*regs };
    // One load and one store a register, in turn: loading all sixteen first would spill half
    // of them onto the stack (BPF has ten registers).
    into[0] = r.rax;
    into[1] = r.rdx;
    into[2] = r.rcx;
    into[3] = r.rbx;
    into[4] = r.rsi;
    into[5] = r.rdi;
    into[6] = r.rbp;
    into[7] = r.rsp;
    into[8] = r.r8;
    into[9] = r.r9;
    into[10] = r.r10;
    into[11] = r.r11;
    into[12] = r.r12;
    into[13] = r.r13;
    into[14] = r.r14;
    into[15] = r.r15;
}

/// The stack pointer at the probe site.
///
/// # Safety
/// `regs` is the program's context.
pub unsafe fn stack_pointer(regs: *const pt_regs) -> u64 {
    unsafe { (*regs).rsp }
}

/// One of `general`, by its number in DWARF's order ([`Register`]); `None` for a number that
/// names none. Indexed by a loop's counter: an index computed from `register` would be scaled
/// before its bounds check, which the verifier refuses.
#[inline(always)]
pub fn one(general: &General, register: u8) -> Option<u64> {
    for (index, value) in general.iter().enumerate() {
        if index == register as usize {
            return Some(*value);
        }
    }
    None
}
