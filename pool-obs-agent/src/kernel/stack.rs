//! The stack each kernel program needs, computed from the object the way the verifier counts
//! it, so that a program that would not load on some kernel fails a test here first.
//!
//! The verifier gives every function of a program (its subprograms) a frame as deep as the
//! lowest stack slot it touches, rounds each frame up (to 32 bytes on 6.1; 16 with the JIT on
//! later kernels), and refuses a program whose deepest chain of calls needs more than 512
//! bytes. Kernels from 6.13 may give some programs a private stack, where only each frame must
//! fit: the chain's rule is the one every supported kernel enforces, so it is the one checked.
//!
//! A kernel reports the depths only in its verifier log, which aya 0.14 keeps only when a load
//! fails; so they are read off the instructions here. A frame's depth is the lowest offset
//! from the frame pointer (r10) that an instruction reads, writes or hands to a helper,
//! through r10 or a register copied from it plus a constant. That is at least what the
//! verifier finds on any path it walks: the figure can only err on the safe side.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use aya_obj::{Object, generated::bpf_insn};

/// The verifier's limit for a chain of calls.
pub const VERIFIER_LIMIT: u32 = 512;
/// Ours: 64 bytes under the verifier's, so that the next field added to a program cannot
/// silently cross the line on someone else's kernel.
pub const MARGIN_LIMIT: u32 = 448;
/// The coarsest rounding of a frame any supported kernel applies (6.1's, and the interpreter's).
const FRAME_ROUNDING: u32 = 32;

/// One program's deepest chain of calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramStack {
    pub program: String,
    /// Each frame's own depth, outermost first, as the verifier log prints them.
    pub frames: Vec<u32>,
}

impl ProgramStack {
    /// The chain's stack, each frame rounded as the strictest kernel rounds it.
    pub fn combined(&self) -> u32 {
        combined(&self.frames)
    }

    /// `408+120+16`, as the verifier's log says it.
    pub fn frames_text(&self) -> String {
        self.frames.iter().map(u32::to_string).collect::<Vec<_>>().join("+")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("the kernel object cannot be parsed")]
    Parse(#[from] aya_obj::ParseError),
    #[error("the kernel object's calls cannot be linked")]
    Link(#[from] aya_obj::relocation::EbpfRelocationError),
}

/// Every program's deepest chain of calls, by program name.
pub fn program_stacks(object: &[u8]) -> Result<Vec<ProgramStack>, StackError> {
    let mut object = Object::parse(object)?;
    let text_sections: HashSet<usize> = object.functions.keys().map(|(section, _)| *section).collect();
    // Appends each program's callees to its own instructions, as the loader does.
    object.relocate_calls(&text_sections)?;
    let mut stacks: Vec<ProgramStack> = object
        .programs
        .iter()
        .filter_map(|(name, program)| {
            let function = object.functions.get(&program.function_key())?;
            Some(ProgramStack { program: name.clone(), frames: deepest_chain(&function.instructions) })
        })
        .collect();
    stacks.sort_by(|a, b| a.program.cmp(&b.program));
    Ok(stacks)
}

fn combined(frames: &[u32]) -> u32 {
    frames.iter().map(|depth| depth.max(&1).next_multiple_of(FRAME_ROUNDING)).sum()
}

const CLASS_LD: u8 = 0x00;
const CLASS_LDX: u8 = 0x01;
const CLASS_ST: u8 = 0x02;
const CLASS_STX: u8 = 0x03;
const CLASS_JMP: u8 = 0x05;
const CLASS_ALU64: u8 = 0x07;
const OP_ADD: u8 = 0x00;
const OP_SUB: u8 = 0x10;
const OP_MOV: u8 = 0xb0;
const SOURCE_REGISTER: u8 = 0x08;
const CALL: u8 = 0x85;
const LOAD_IMM64: u8 = 0x18;
const PSEUDO_CALL: u8 = 1;
const PSEUDO_FUNC: u8 = 4;
const FRAME_POINTER: usize = 10;

/// The frames of the deepest chain of calls in a linked program.
fn deepest_chain(instructions: &[bpf_insn]) -> Vec<u32> {
    let calls = call_targets(instructions);
    let starts: BTreeSet<usize> = std::iter::once(0).chain(calls.iter().map(|(_, target)| *target)).collect();
    let starts: Vec<usize> = starts.into_iter().filter(|start| *start < instructions.len()).collect();
    let subprogram_of = |pc: usize| starts.partition_point(|start| *start <= pc) - 1;
    let depths: Vec<u32> = starts
        .iter()
        .enumerate()
        .map(|(index, start)| {
            let end = starts.get(index + 1).copied().unwrap_or(instructions.len());
            frame_depth(&instructions[*start..end])
        })
        .collect();
    let mut callees: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    for (pc, target) in &calls {
        if let Ok(callee) = starts.binary_search(target) {
            callees.entry(subprogram_of(*pc)).or_default().insert(callee);
        }
    }
    chain_from(0, &depths, &callees, &mut Vec::new())
}

/// The deepest chain from subprogram `index` (the verifier refuses recursion, so `path` only
/// guards against an object it would refuse anyway).
fn chain_from(
    index: usize,
    depths: &[u32],
    callees: &BTreeMap<usize, BTreeSet<usize>>,
    path: &mut Vec<usize>,
) -> Vec<u32> {
    path.push(index);
    let mut deepest: Vec<u32> = Vec::new();
    for callee in callees.get(&index).into_iter().flatten() {
        if path.contains(callee) {
            continue;
        }
        let chain = chain_from(*callee, depths, callees, path);
        if combined(&chain) > combined(&deepest) {
            deepest = chain;
        }
    }
    path.pop();
    std::iter::once(depths[index]).chain(deepest).collect()
}

/// Where each BPF-to-BPF call (and each function whose address is taken) goes: `(pc, target)`.
fn call_targets(instructions: &[bpf_insn]) -> Vec<(usize, usize)> {
    instructions
        .iter()
        .enumerate()
        .filter(|(_, insn)| {
            (insn.code == CALL && insn.src_reg() == PSEUDO_CALL)
                || (insn.code == LOAD_IMM64 && insn.src_reg() == PSEUDO_FUNC)
        })
        .filter_map(|(pc, insn)| {
            let target = pc as i64 + 1 + i64::from(insn.imm);
            usize::try_from(target).ok().map(|target| (pc, target))
        })
        .collect()
}

/// The depth of one function's frame: the lowest stack offset it reaches.
fn frame_depth(instructions: &[bpf_insn]) -> u32 {
    // Registers known to hold the frame pointer plus a constant.
    let mut offsets: [Option<i64>; 11] = [None; 11];
    offsets[FRAME_POINTER] = Some(0);
    let mut lowest: i64 = 0;
    let mut reach = |offset: i64| lowest = lowest.min(offset);
    let mut skip_next = false;
    for insn in instructions {
        if std::mem::take(&mut skip_next) {
            continue;
        }
        let dst = usize::from(insn.dst_reg()).min(FRAME_POINTER);
        let src = usize::from(insn.src_reg()).min(FRAME_POINTER);
        let off = i64::from(insn.off);
        match insn.code & 0x07 {
            CLASS_LDX => {
                if let Some(base) = offsets[src] {
                    reach(base + off);
                }
                offsets[dst] = None;
            }
            CLASS_ST | CLASS_STX => {
                if let Some(base) = offsets[dst] {
                    reach(base + off);
                }
            }
            CLASS_LD => {
                skip_next = insn.code == LOAD_IMM64;
                offsets[dst] = None;
            }
            CLASS_ALU64 => {
                let op = insn.code & 0xf0;
                let by_register = insn.code & SOURCE_REGISTER != 0;
                offsets[dst] = match (op, by_register) {
                    (OP_MOV, true) if insn.off == 0 => offsets[src],
                    (OP_ADD, false) => offsets[dst].map(|base| base + i64::from(insn.imm)),
                    (OP_SUB, false) => offsets[dst].map(|base| base - i64::from(insn.imm)),
                    _ => None,
                };
                if let Some(offset) = offsets[dst] {
                    reach(offset);
                }
            }
            CLASS_JMP if insn.code == CALL => offsets[..6].fill(None),
            CLASS_JMP => {}
            // 32-bit arithmetic and JMP32 leave no frame pointer in a register.
            _ => offsets[dst] = None,
        }
        offsets[FRAME_POINTER] = Some(0);
    }
    u32::try_from(-lowest).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> bpf_insn {
        // SAFETY: an instruction is plain bytes; all zeroes is a valid one.
        let mut insn: bpf_insn = unsafe { std::mem::zeroed() };
        insn.code = code;
        insn.off = off;
        insn.imm = imm;
        insn.set_dst_reg(dst);
        insn.set_src_reg(src);
        insn
    }

    const EXIT: u8 = 0x95;
    const STX_DW: u8 = 0x7b;
    const MOV64_X: u8 = 0xbf;
    const ADD64_K: u8 = 0x07;

    #[test]
    fn a_frame_is_as_deep_as_its_lowest_store_or_pointer_handed_to_a_helper() {
        let program = [
            insn(STX_DW, 10, 1, -8, 0),
            insn(MOV64_X, 2, 10, 0, 0),
            insn(ADD64_K, 2, 0, 0, -120),
            insn(CALL, 0, 0, 0, 4),
            insn(EXIT, 0, 0, 0, 0),
        ];
        assert_eq!(deepest_chain(&program), vec![120]);
    }

    #[test]
    fn the_deepest_chain_of_calls_adds_each_frame_rounded_up() {
        // main: 40 bytes, calls a (16 bytes, calls b: 200 bytes) and c (100 bytes).
        let program = [
            insn(STX_DW, 10, 1, -40, 0),
            insn(CALL, 0, PSEUDO_CALL, 0, 2),
            insn(CALL, 0, PSEUDO_CALL, 0, 4),
            insn(EXIT, 0, 0, 0, 0),
            insn(STX_DW, 10, 1, -16, 0),
            insn(CALL, 0, PSEUDO_CALL, 0, 2),
            insn(EXIT, 0, 0, 0, 0),
            insn(STX_DW, 10, 1, -100, 0),
            insn(EXIT, 0, 0, 0, 0),
            insn(STX_DW, 10, 1, -200, 0),
            insn(EXIT, 0, 0, 0, 0),
        ];
        let stack = ProgramStack { program: "p".into(), frames: deepest_chain(&program) };
        assert_eq!(stack.frames, vec![40, 16, 200]);
        assert_eq!(stack.combined(), 64 + 32 + 224);
        assert_eq!(stack.frames_text(), "40+16+200");
    }

    #[test]
    fn every_kernel_program_leaves_the_margin_under_the_verifiers_limit() {
        let stacks = program_stacks(crate::kernel::KERNEL_OBJECT).expect("the object parses");
        assert!(stacks.len() >= 10, "{stacks:?}");
        for stack in &stacks {
            println!("{:<20} {:>4} bytes ({})", stack.program, stack.combined(), stack.frames_text());
        }
        let over: Vec<_> = stacks.iter().filter(|stack| stack.combined() > MARGIN_LIMIT).collect();
        assert!(over.is_empty(), "over {MARGIN_LIMIT} bytes of stack: {over:?}");
    }
}
