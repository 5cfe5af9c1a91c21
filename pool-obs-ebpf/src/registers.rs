//! The register values a probe's spec is evaluated against.

use aya_ebpf::{
    EbpfContext,
    programs::{ProbeContext, RetProbeContext},
};

/// What an entry probe keeps for the return probe of the same call: by the time the function
/// returns its argument registers have been reused, and the hidden result pointer with them.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SavedEntry {
    pub args: [u64; 6],
    pub entered_ns: u64,
}

pub struct Registers {
    /// Integer argument registers, as they were at the function's entry.
    pub args: [u64; 6],
    /// Return registers (rax, rdx); zero at entry.
    pub ret: [u64; 2],
}

impl Registers {
    pub fn at_entry(ctx: &ProbeContext) -> Self {
        Self { args: core::array::from_fn(|n| ctx.arg(n).unwrap_or(0)), ret: [0; 2] }
    }

    pub fn at_return(ctx: &RetProbeContext, saved: &SavedEntry) -> Self {
        // On x86-64 the second return register, rdx, is also the third argument register.
        let rdx = ProbeContext::new(ctx.as_ptr()).arg(2).unwrap_or(0);
        Self { args: saved.args, ret: [ctx.ret(), rdx] }
    }
}
