//! What a function's machine code says about probing it: where it returns, whether a panic can
//! unwind out of it, and where an entry probe can sit. Decoded with iced-x86; what the kernel
//! does with each instruction is that of Linux's x86 uprobes (arch/x86/kernel/uprobes.c),
//! checked on 6.18: an instruction with a LOCK or ES/CS/SS/DS prefix is refused, `push`, `nop`,
//! `jmp`, `call` and `jcc` are emulated (about 0.5–1 µs a hit here), and everything else —
//! `ret` included — is single-stepped out of line (about 15 µs a hit in these VMs).

use std::{collections::BTreeSet, fmt};

use iced_x86::{
    Decoder, DecoderOptions, FlowControl, Formatter, Instruction, InstructionInfoFactory, IntelFormatter,
    Mnemonic, OpAccess, OpKind, Register,
};

/// The decoder's name for a register the kernel programs read.
pub fn decoder_register(register: pool_obs_common::probe::Register) -> Register {
    use pool_obs_common::probe::Register as R;
    match register {
        R::Rax => Register::RAX,
        R::Rdx => Register::RDX,
        R::Rcx => Register::RCX,
        R::Rbx => Register::RBX,
        R::Rsi => Register::RSI,
        R::Rdi => Register::RDI,
        R::Rbp => Register::RBP,
        R::Rsp => Register::RSP,
        R::R8 => Register::R8,
        R::R9 => Register::R9,
        R::R10 => Register::R10,
        R::R11 => Register::R11,
        R::R12 => Register::R12,
        R::R13 => Register::R13,
        R::R14 => Register::R14,
        R::R15 => Register::R15,
    }
}

/// How the kernel treats a uprobe on an instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handling {
    /// Emulated in the kernel: the cheap case.
    Emulated,
    /// Copied out of line and single-stepped: correct, but about 15× dearer here.
    SingleStepped,
    /// Refused (`ENOTSUPP`): the probe cannot be attached there.
    Refused(&'static str),
}

/// One decoded instruction of a function.
#[derive(Clone)]
pub struct Op {
    pub offset: u64,
    pub instruction: Instruction,
    /// Legacy prefix bytes, as encoded (iced-x86 folds some of them away).
    prefixes: Vec<u8>,
}

impl Op {
    pub fn handling(&self) -> Handling {
        if self.prefixes.contains(&0xf0) {
            return Handling::Refused("LOCK prefix");
        }
        if self.prefixes.iter().any(|prefix| matches!(prefix, 0x26 | 0x2e | 0x36 | 0x3e)) {
            return Handling::Refused("segment prefix");
        }
        let instruction = &self.instruction;
        let operand_size_prefix = self.prefixes.contains(&0x66);
        let emulated = match instruction.flow_control() {
            FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch | FlowControl::Call => {
                !operand_size_prefix && instruction.op0_kind() != OpKind::Register
            }
            FlowControl::Next => {
                instruction.mnemonic() == Mnemonic::Nop
                    || (instruction.mnemonic() == Mnemonic::Push
                        && instruction.op0_kind() == OpKind::Register
                        && instruction.op0_register().size() == 8)
            }
            _ => false,
        };
        if emulated { Handling::Emulated } else { Handling::SingleStepped }
    }

    pub fn text(&self) -> String {
        let mut text = String::new();
        IntelFormatter::new().format(&self.instruction, &mut text);
        text
    }
}

impl fmt::Display for Handling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Handling::Emulated => f.write_str("emulated by the kernel"),
            Handling::SingleStepped => {
                f.write_str("single-stepped by the kernel (about 15x an emulated probe)")
            }
            Handling::Refused(why) => write!(f, "refused by the kernel ({why})"),
        }
    }
}

/// A function's instructions, from its first byte to its symbol's end.
pub struct FunctionCode {
    pub ops: Vec<Op>,
    size: u64,
    /// Offsets that a branch inside the function jumps to.
    targets: BTreeSet<u64>,
}

/// Where a probe on a function goes, with the stack pointer's distance from its value at entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    pub offset: u64,
    /// `entry_sp = rsp + sp_offset` at this site.
    pub sp_offset: i32,
    pub handling: Handling,
    pub instruction: String,
}

impl Site {
    /// A uretprobe: attached at the function's entry, it fires where the call returns, with
    /// the stack pointer one word above the entry's (the return address popped).
    pub fn uretprobe() -> Self {
        Site { offset: 0, sp_offset: -8, handling: Handling::Emulated, instruction: "uretprobe".into() }
    }
}

/// Why a function cannot be probed as asked.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unprobeable {
    #[error(
        "the kernel cannot probe `{instruction}` at +{offset:#x} ({why}), and no later instruction \
         of the entry block keeps the values the manifest reads ({stopped}): probe a function that \
         calls it"
    )]
    NoEntrySite { instruction: String, offset: u64, why: &'static str, stopped: String },
    #[error(
        "it leaves by a tail call (`{instruction}` at +{offset:#x}), where its result is not yet known: \
         probe the function it jumps to at return, or the function that receives the result"
    )]
    TailCall { instruction: String, offset: u64 },
    #[error("it has no return instruction (it never returns): probe its entry instead")]
    NoReturn,
    #[error("its machine code could not be decoded as x86-64")]
    Undecodable,
}

impl FunctionCode {
    pub fn decode(bytes: &[u8], address: u64) -> Self {
        let mut decoder = Decoder::with_ip(64, bytes, address, DecoderOptions::NONE);
        let mut ops = Vec::new();
        let mut targets = BTreeSet::new();
        let end = address + bytes.len() as u64;
        while decoder.can_decode() {
            let position = decoder.position();
            let instruction = decoder.decode();
            if instruction.is_invalid() {
                break;
            }
            if matches!(
                instruction.flow_control(),
                FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch
            ) && (address..end).contains(&instruction.near_branch_target())
            {
                targets.insert(instruction.near_branch_target() - address);
            }
            let prefixes = legacy_prefixes(&bytes[position..position + instruction.len()]);
            ops.push(Op { offset: instruction.ip() - address, instruction, prefixes });
        }
        Self { ops, size: bytes.len() as u64, targets }
    }

    /// The registers a RIP-relative `lea` loads with one of `addresses`: where the function
    /// takes a function's address, as a value (a function pointer in a struct it builds).
    pub fn address_loads(&self, addresses: &[u64]) -> Vec<Register> {
        self.ops
            .iter()
            .filter(|op| {
                op.instruction.mnemonic() == Mnemonic::Lea && op.instruction.is_ip_rel_memory_operand()
            })
            .filter(|op| addresses.contains(&op.instruction.ip_rel_memory_address()))
            .map(|op| op.instruction.op0_register())
            .collect()
    }

    /// Whether a jump stays in the function: to one of its instructions, or through a jump table.
    fn jumps_inside(&self, op: &Op) -> bool {
        match op.instruction.flow_control() {
            FlowControl::IndirectBranch => self.is_jump_table(op),
            _ => self.contains(op.instruction.near_branch_target()),
        }
    }

    /// The first instruction by which a panic could leave the function — a call, or a jump out
    /// of it — or `None`: a function that calls nothing cannot raise a panic nor pass one on.
    pub fn may_unwind_by(&self) -> Option<&Op> {
        self.ops.iter().find(|op| match op.instruction.flow_control() {
            FlowControl::Call | FlowControl::IndirectCall => true,
            FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch => {
                !self.contains(op.instruction.near_branch_target())
            }
            FlowControl::IndirectBranch => !self.is_jump_table(op),
            _ => false,
        })
    }

    /// Every return instruction, each a probe site where the stack pointer is the entry's.
    /// A jump out of the function is a tail call: the result is computed by another function,
    /// after this one's last instruction. But an unconditional jump that `frees_only` (to a
    /// deallocation, after the result was written through the result pointer) is where the call
    /// ends, its frame gone: an exit too.
    pub fn exits(&self, frees_only: impl Fn(&Instruction) -> bool) -> Result<Vec<Site>, Unprobeable> {
        let mut exits = Vec::new();
        for op in &self.ops {
            let exit =
                || Site { offset: op.offset, sp_offset: 0, handling: op.handling(), instruction: op.text() };
            let tail_call = match op.instruction.flow_control() {
                FlowControl::Return => {
                    exits.push(exit());
                    false
                }
                FlowControl::UnconditionalBranch | FlowControl::IndirectBranch
                    if !self.jumps_inside(op) && frees_only(&op.instruction) =>
                {
                    exits.push(exit());
                    false
                }
                FlowControl::UnconditionalBranch
                | FlowControl::ConditionalBranch
                | FlowControl::IndirectBranch => !self.jumps_inside(op),
                _ => false,
            };
            if tail_call {
                return Err(Unprobeable::TailCall { instruction: op.text(), offset: op.offset });
            }
        }
        if exits.is_empty() {
            return Err(Unprobeable::NoReturn);
        }
        Ok(exits)
    }

    /// Where an entry probe goes: the first instruction, unless the kernel refuses or
    /// single-steps it; then the first later instruction of the entry block that it emulates
    /// (or at least accepts) with `reads` — the argument registers the manifest reads, and the
    /// memory they point at — still as they were at entry. The block ends at the first branch
    /// or at an instruction another branch jumps to, so that the site runs once per call.
    /// Where a probe on an inlined instance that starts at `offset` may sit, best first: its
    /// first instruction that is not a `nop` (the compiler counts the padding that aligns a
    /// jump target as the instance's; it is never executed when a jump leads there, and does
    /// nothing when it is), then the instructions that follow it in a straight line, for values
    /// the compiler makes available a few instructions in. None is a jump target, so every
    /// pass through the instance's entry passes each of them once. Empty if no instruction
    /// starts at `offset`.
    pub fn inlined_entries(&self, offset: u64) -> Vec<Site> {
        const AT_MOST: usize = 8;
        let Some(first) = self.ops.iter().position(|op| op.offset == offset) else { return Vec::new() };
        let Some(start) = self.ops[first..].iter().position(|op| op.instruction.mnemonic() != Mnemonic::Nop)
        else {
            return Vec::new();
        };
        let mut sites = Vec::new();
        for (index, op) in self.ops[first + start..].iter().enumerate().take(AT_MOST) {
            if index > 0 && self.targets.contains(&op.offset) {
                break;
            }
            sites.push(Site {
                offset: op.offset,
                sp_offset: 0,
                handling: op.handling(),
                instruction: op.text(),
            });
            if op.instruction.flow_control() != FlowControl::Next {
                break;
            }
        }
        sites
    }

    /// The instructions between offsets `ranges` that read `size` bytes of memory at a base
    /// register plus a displacement: (offset, base, displacement). Where an inlined future's
    /// poll reads its state tag to pick up where it left off.
    pub fn memory_reads(&self, ranges: &[(u64, u64)], size: usize) -> Vec<(u64, Register, i64)> {
        let mut info = InstructionInfoFactory::new();
        self.ops
            .iter()
            .filter(|op| ranges.iter().any(|(start, end)| (*start..*end).contains(&op.offset)))
            .filter_map(|op| {
                let instruction = &op.instruction;
                let read = info.info(instruction).used_memory().iter().any(|memory| {
                    memory.access() == OpAccess::Read
                        && memory.index() == Register::None
                        && memory.base() == instruction.memory_base()
                });
                let base = instruction.memory_base();
                (read
                    && instruction.memory_size().size() == size
                    && !matches!(base, Register::None | Register::RIP))
                .then(|| (op.offset, base, instruction.memory_displacement64() as i64))
            })
            .collect()
    }

    /// Where the code goes after each store of the constant `value` (`size` bytes) at
    /// `[base + displacement]` outside `ranges`: the first instruction inside `ranges` on the
    /// straight line from the store, through unconditional jumps. A caller that has just made
    /// an inlined future `Unresumed` enters its poll there, past the poll's read of that tag.
    pub fn after_stores(
        &self,
        value: u64,
        size: usize,
        at: (Register, i64),
        ranges: &[(u64, u64)],
    ) -> Vec<u64> {
        const AT_MOST: usize = 32;
        let inside = |offset: u64| ranges.iter().any(|(start, end)| (*start..*end).contains(&offset));
        let index_of = |offset: u64| self.ops.iter().position(|op| op.offset == offset);
        let mut entries = Vec::new();
        for (store, op) in self.ops.iter().enumerate() {
            let instruction = &op.instruction;
            let stores_value = instruction.mnemonic() == Mnemonic::Mov
                && instruction.op0_kind() == OpKind::Memory
                && instruction.memory_index() == Register::None
                && (instruction.memory_base(), instruction.memory_displacement64() as i64) == at
                && instruction.memory_size().size() == size
                && matches!(
                    instruction.op1_kind(),
                    OpKind::Immediate8 | OpKind::Immediate16 | OpKind::Immediate32
                )
                && instruction.immediate(1) == value;
            if !stores_value || inside(op.offset) {
                continue;
            }
            let mut index = store + 1;
            for _ in 0..AT_MOST {
                let Some(next) = self.ops.get(index) else { break };
                if inside(next.offset) {
                    entries.push(next.offset);
                    break;
                }
                match next.instruction.flow_control() {
                    FlowControl::Next => index += 1,
                    FlowControl::UnconditionalBranch
                        if self.contains(next.instruction.near_branch_target()) =>
                    {
                        let target = next.instruction.near_branch_target() - self.ops[0].instruction.ip();
                        let Some(jumped) = index_of(target) else { break };
                        index = jumped;
                    }
                    _ => break,
                }
            }
        }
        entries.sort_unstable();
        entries.dedup();
        entries
    }

    pub fn entry_site(&self, reads: &[Register]) -> Result<Site, Unprobeable> {
        let first = self.ops.first().ok_or(Unprobeable::Undecodable)?;
        let site = |op: &Op, sp_offset: i32| Site {
            offset: op.offset,
            sp_offset,
            handling: op.handling(),
            instruction: op.text(),
        };
        if first.handling() == Handling::Emulated {
            return Ok(site(first, 0));
        }
        let mut accepted = (first.handling() == Handling::SingleStepped).then(|| site(first, 0));
        let mut pushed = 0i32;
        let mut info = InstructionInfoFactory::new();
        let mut stopped = "the function's end".to_string();
        for (index, op) in self.ops.iter().enumerate() {
            if index > 0 {
                if self.targets.contains(&op.offset) {
                    stopped = format!("+{:#x} is a branch target", op.offset);
                    break;
                }
                match op.handling() {
                    Handling::Emulated => return Ok(site(op, pushed)),
                    Handling::SingleStepped if accepted.is_none() => accepted = Some(site(op, pushed)),
                    _ => {}
                }
            }
            if op.instruction.flow_control() != FlowControl::Next {
                stopped = format!("`{}` at +{:#x} ends the entry block", op.text(), op.offset);
                break;
            }
            match clobbers(&mut info, &op.instruction, reads) {
                Some(Clobber::StackPointer(delta)) => pushed -= delta,
                Some(Clobber::Value(what)) => {
                    stopped = format!("`{}` at +{:#x} overwrites {what}", op.text(), op.offset);
                    break;
                }
                None => {}
            }
        }
        match (accepted, first.handling()) {
            (Some(site), _) => Ok(site),
            (None, Handling::Refused(why)) => Err(Unprobeable::NoEntrySite {
                instruction: first.text(),
                offset: first.offset,
                why,
                stopped,
            }),
            (None, _) => unreachable!("the first instruction is accepted when not refused"),
        }
    }

    fn contains(&self, address: u64) -> bool {
        let start = self.ops.first().map_or(0, |op| op.instruction.ip());
        (start..start + self.size).contains(&address)
    }

    /// LLVM's x86-64 jump tables: `movsxd reg, dword [base + index*4]`, `add reg, base`,
    /// `jmp reg` (position-independent) or `jmp qword [index*8 + table]`. Any other indirect
    /// jump leaves the function.
    fn is_jump_table(&self, jump: &Op) -> bool {
        let instruction = &jump.instruction;
        if instruction.op0_kind() == OpKind::Memory {
            return !instruction.is_ip_rel_memory_operand() && instruction.memory_index_scale() == 8;
        }
        let Some(position) = self.ops.iter().position(|op| op.offset == jump.offset) else {
            return false;
        };
        self.ops[position.saturating_sub(4)..position].iter().any(|op| {
            op.instruction.mnemonic() == Mnemonic::Movsxd
                && op.instruction.op1_kind() == OpKind::Memory
                && op.instruction.memory_index_scale() == 4
        })
    }
}

enum Clobber {
    /// `rsp` moves by a known amount (a push, `sub rsp, imm`): values stay where they were.
    StackPointer(i32),
    /// A register read, or memory read through one, is written; or `rsp` moves unknowably.
    Value(String),
}

fn clobbers(
    info: &mut InstructionInfoFactory,
    instruction: &Instruction,
    reads: &[Register],
) -> Option<Clobber> {
    let increment = instruction.stack_pointer_increment();
    let is_sub_rsp_imm = instruction.mnemonic() == Mnemonic::Sub
        && instruction.op0_kind() == OpKind::Register
        && instruction.op0_register() == Register::RSP
        && matches!(
            instruction.op1_kind(),
            OpKind::Immediate8to64 | OpKind::Immediate32to64 | OpKind::Immediate8
        );
    let info = info.info(instruction);
    for used in info.used_registers() {
        let written = matches!(
            used.access(),
            OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
        );
        let register = used.register().full_register();
        if !written {
            continue;
        }
        if register == Register::RSP {
            if increment != 0 {
                continue;
            }
            if is_sub_rsp_imm {
                return Some(Clobber::StackPointer(-(instruction.immediate(1) as i64 as i32)));
            }
            return Some(Clobber::Value("rsp".to_string()));
        }
        if reads.contains(&register) {
            return Some(Clobber::Value(format!("{register:?}").to_lowercase()));
        }
    }
    for memory in info.used_memory() {
        let written = matches!(memory.access(), OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite);
        let base = memory.base().full_register();
        if written && reads.contains(&base) {
            return Some(Clobber::Value(format!("memory through {base:?}").to_lowercase()));
        }
    }
    (increment != 0).then_some(Clobber::StackPointer(increment))
}

/// The legacy prefix bytes an instruction starts with.
fn legacy_prefixes(bytes: &[u8]) -> Vec<u8> {
    bytes
        .iter()
        .take_while(|byte| {
            matches!(byte, 0xf0 | 0xf2 | 0xf3 | 0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0x66 | 0x67)
        })
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(bytes: &[u8]) -> FunctionCode {
        FunctionCode::decode(bytes, 0x1000)
    }

    #[test]
    fn a_lock_prefixed_first_instruction_moves_to_the_return_where_rdi_is_intact() {
        // lock inc qword [rip+0x100]; mov rax, [rdi]; ret
        let function = code(&[0xf0, 0x48, 0xff, 0x05, 0x00, 0x01, 0x00, 0x00, 0x48, 0x8b, 0x07, 0xc3]);
        assert_eq!(function.ops[0].handling(), Handling::Refused("LOCK prefix"));
        let site = function.entry_site(&[Register::RDI]).unwrap();
        assert_eq!((site.offset, site.sp_offset, site.handling), (8, 0, Handling::SingleStepped));
    }

    #[test]
    fn a_single_stepped_first_instruction_moves_to_the_first_push_with_the_offset_of_the_stack() {
        // sub rsp, 8; push rbx; ret
        let function = code(&[0x48, 0x83, 0xec, 0x08, 0x53, 0xc3]);
        let site = function.entry_site(&[Register::RDI]).unwrap();
        assert_eq!((site.offset, site.sp_offset, site.handling), (4, 8, Handling::Emulated));
    }

    #[test]
    fn no_site_past_a_write_to_a_register_the_manifest_reads() {
        // lock inc qword [rip+0x100]; mov rdi, rsi; push rbx; ret
        let function = code(&[0xf0, 0x48, 0xff, 0x05, 0x00, 0x01, 0x00, 0x00, 0x48, 0x89, 0xf7, 0x53, 0xc3]);
        // The mov itself is a site (it runs before it writes), single-stepped.
        assert_eq!(function.entry_site(&[Register::RDI]).unwrap().offset, 8);
        let error = code(&[0xf0, 0x48, 0xff, 0x05, 0x00, 0x01, 0x00, 0x00, 0xf0, 0x48, 0xff, 0x07, 0xc3])
            .entry_site(&[Register::RDI])
            .unwrap_err();
        assert!(matches!(error, Unprobeable::NoEntrySite { .. }), "{error}");
    }

    #[test]
    fn a_push_first_is_kept() {
        let function = code(&[0x55, 0x48, 0x89, 0xe5, 0x5d, 0xc3]);
        let site = function.entry_site(&[]).unwrap();
        assert_eq!((site.offset, site.handling), (0, Handling::Emulated));
    }

    #[test]
    fn exits_are_every_return_and_a_tail_call_is_refused() {
        // test rdi, rdi; je +1; ret; ret
        let function = code(&[0x48, 0x85, 0xff, 0x74, 0x01, 0xc3, 0xc3]);
        let offsets: Vec<u64> = function.exits(|_| false).unwrap().iter().map(|site| site.offset).collect();
        assert_eq!(offsets, [5, 6]);
        assert!(function.may_unwind_by().is_none());
        // jmp rel32 far away
        let tail = code(&[0x48, 0x85, 0xff, 0xe9, 0x00, 0x10, 0x00, 0x00]);
        assert!(matches!(tail.exits(|_| false), Err(Unprobeable::TailCall { offset: 3, .. })));
        assert!(tail.may_unwind_by().is_some());
        // jne rel32 far away: a conditional tail call
        let conditional = code(&[0x48, 0x85, 0xff, 0x0f, 0x85, 0x00, 0x10, 0x00, 0x00, 0xc3]);
        assert!(matches!(conditional.exits(|_| false), Err(Unprobeable::TailCall { offset: 3, .. })));
    }

    #[test]
    fn a_jump_to_a_deallocation_after_the_result_is_written_is_an_exit_and_a_conditional_one_is_not() {
        // mov [rbx], rax; add rsp, 8; pop rbx; jmp qword ptr [rip+0x1000] (the GOT slot of
        // `__rust_dealloc`, as `frees_only` finds it); then a return elsewhere.
        let bytes =
            [0x48, 0x89, 0x03, 0x48, 0x83, 0xc4, 0x08, 0x5b, 0xff, 0x25, 0x00, 0x10, 0x00, 0x00, 0xc3];
        let frees = |instruction: &Instruction| instruction.ip_rel_memory_address() == 0x200e;
        let exits = code(&bytes).exits(frees).unwrap();
        let found: Vec<(u64, i32)> = exits.iter().map(|site| (site.offset, site.sp_offset)).collect();
        assert_eq!(found, [(8, 0), (14, 0)]);
        assert_eq!(exits[0].handling, Handling::SingleStepped);
        // je to the same place: the call may go on, so the jump is no exit.
        let conditional = code(&[0x48, 0x85, 0xff, 0x0f, 0x84, 0x00, 0x10, 0x00, 0x00, 0xc3]);
        assert!(matches!(conditional.exits(|_| true), Err(Unprobeable::TailCall { offset: 3, .. })));
        // A jump elsewhere stays a tail call whose result is not yet known.
        assert!(matches!(code(&bytes).exits(|_| false), Err(Unprobeable::TailCall { offset: 8, .. })));
    }

    #[test]
    fn a_call_means_a_panic_may_unwind_through() {
        // call rel32; ret
        let function = code(&[0xe8, 0x00, 0x00, 0x00, 0x00, 0xc3]);
        assert_eq!(function.may_unwind_by().unwrap().offset, 0);
    }
}
