//! The register values a probe's spec is evaluated against.

use aya_ebpf::bindings::pt_regs;
use pool_obs_common::probe::Register;

pub struct Registers {
    /// The general registers, in DWARF's order ([`Register`]), as they were at the function's
    /// entry (or at the probe site, for an entry probe).
    pub general: [u64; Register::COUNT],
    /// Return registers (rax, rdx); zero at entry.
    pub ret: [u64; 2],
}

/// The general registers at a probe site, in DWARF's order.
///
/// # Safety
/// `regs` is the program's context.
pub unsafe fn general(regs: *const pt_regs) -> [u64; Register::COUNT] {
    let r = unsafe { &*regs };
    [
        r.rax, r.rdx, r.rcx, r.rbx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13,
        r.r14, r.r15,
    ]
}

impl Registers {
    /// # Safety
    /// `regs` is the program's context.
    pub unsafe fn at_entry(regs: *const pt_regs) -> Self {
        Self { general: unsafe { general(regs) }, ret: [0; 2] }
    }

    /// At a return, with the registers saved at entry: by then they were reused.
    ///
    /// # Safety
    /// `regs` is the program's context.
    pub unsafe fn at_return(regs: *const pt_regs, general: [u64; Register::COUNT]) -> Self {
        let r = unsafe { &*regs };
        Self { general, ret: [r.rax, r.rdx] }
    }
}

/// The stack pointer at the probe site.
///
/// # Safety
/// `regs` is the program's context.
pub unsafe fn stack_pointer(regs: *const pt_regs) -> u64 {
    unsafe { (*regs).rsp }
}
