//! The register values a probe's spec is evaluated against.

use aya_ebpf::bindings::pt_regs;

pub struct Registers {
    /// Integer argument registers (x86-64: rdi, rsi, rdx, rcx, r8, r9), as they were at the
    /// function's entry.
    pub args: [u64; 6],
    /// Return registers (rax, rdx); zero at entry.
    pub ret: [u64; 2],
}

impl Registers {
    /// # Safety
    /// `regs` is the program's context.
    pub unsafe fn at_entry(regs: *const pt_regs) -> Self {
        let r = unsafe { &*regs };
        Self { args: [r.rdi, r.rsi, r.rdx, r.rcx, r.r8, r.r9], ret: [0; 2] }
    }

    /// At a return, with the arguments saved at entry: by then their registers were reused.
    ///
    /// # Safety
    /// `regs` is the program's context.
    pub unsafe fn at_return(regs: *const pt_regs, args: [u64; 6]) -> Self {
        let r = unsafe { &*regs };
        Self { args, ret: [r.rax, r.rdx] }
    }
}

/// The stack pointer at the probe site.
///
/// # Safety
/// `regs` is the program's context.
pub unsafe fn stack_pointer(regs: *const pt_regs) -> u64 {
    unsafe { (*regs).rsp }
}
