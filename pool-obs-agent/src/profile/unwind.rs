//! A sample's stack, unwound in user space from the registers and the copy of the stack's top
//! that the kernel took: at each frame the call-frame information in `.eh_frame` (which Rust
//! keeps for panics) gives the caller's stack pointer and where the return address and the
//! caller's rbp were saved, as `perf record --call-graph dwarf` does. Where a frame has no
//! call-frame information, frame pointers are followed, if the code keeps them.

use std::{collections::HashMap, sync::Arc};

use gimli::{
    BaseAddresses, CfaRule, EhFrame, EhFrameHdr, RegisterRule, UnwindContext, UnwindSection, X86_64,
};

use super::objects::{AddressSpace, Module};

/// Frames past this are cut: a runaway recursion is not worth unwinding whole.
const MAX_FRAMES: usize = 128;

/// The registers unwinding needs, at one frame.
#[derive(Clone, Copy, Debug)]
pub struct Registers {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
}

/// The copy of the stack's top: `bytes` from address `sp` up.
pub struct Stack<'a> {
    pub sp: u64,
    pub bytes: &'a [u8],
}

impl Stack<'_> {
    fn read(&self, address: u64) -> Option<u64> {
        let offset = usize::try_from(address.checked_sub(self.sp)?).ok()?;
        let word = self.bytes.get(offset..offset.checked_add(8)?)?;
        Some(u64::from_le_bytes(word.try_into().ok()?))
    }
}

/// The return addresses of a sample's stack, innermost first, starting with its own `ip`.
pub fn unwind(space: &AddressSpace, stack: &Stack<'_>, start: Registers, context: &mut Unwinder) -> Vec<u64> {
    let mut frames = vec![start.ip];
    let mut registers = start;
    while frames.len() < MAX_FRAMES {
        // A return address is the instruction after the call: the call itself is one before.
        let lookup = if frames.len() == 1 { registers.ip } else { registers.ip - 1 };
        let caller =
            match space.module(lookup).and_then(|module| context.step(module, lookup, registers, stack)) {
                Some(caller) => caller,
                None => match frame_pointer_step(registers, stack) {
                    Some(caller) => caller,
                    None => break,
                },
            };
        // The stack grows down: a caller's frame is above its callee's.
        if caller.ip == 0 || caller.sp <= registers.sp {
            break;
        }
        frames.push(caller.ip);
        registers = caller;
    }
    frames
}

/// With frame pointers: `[rbp]` is the caller's rbp, `[rbp + 8]` the return address.
fn frame_pointer_step(registers: Registers, stack: &Stack<'_>) -> Option<Registers> {
    let bp = registers.bp;
    Some(Registers { ip: stack.read(bp.checked_add(8)?)?, sp: bp.checked_add(16)?, bp: stack.read(bp)? })
}

/// How to find a frame's caller at one address, from its call-frame information: the CFA as
/// a register plus an offset, and where the return address and rbp were saved.
#[derive(Clone, Copy)]
struct Rule {
    cfa_from_rbp: bool,
    cfa_offset: i64,
    return_address: i64,
    /// `None`: rbp is the callee's.
    saved_rbp: Option<i64>,
}

/// The state unwinding keeps between frames (gimli's evaluation context), and the rules found
/// so far: a profile samples the same few hundred addresses over and over.
pub struct Unwinder {
    context: Box<UnwindContext<usize>>,
    rules: HashMap<(usize, u64), Option<Rule>>,
}

impl Default for Unwinder {
    fn default() -> Self {
        Self { context: Box::new(UnwindContext::new()), rules: HashMap::new() }
    }
}

impl Unwinder {
    /// The caller's registers, from the call-frame information of the code at `lookup`.
    fn step(
        &mut self,
        module: &Module,
        lookup: u64,
        registers: Registers,
        stack: &Stack<'_>,
    ) -> Option<Registers> {
        let address = module.object_address(lookup);
        let key = (Arc::as_ptr(&module.object) as usize, address);
        let rule = match self.rules.get(&key) {
            Some(rule) => *rule,
            None => {
                let rule = self.rule(module, address);
                self.rules.insert(key, rule);
                rule
            }
        }?;
        let base = if rule.cfa_from_rbp { registers.bp } else { registers.sp };
        let cfa = base.checked_add_signed(rule.cfa_offset)?;
        let ip = stack.read(cfa.checked_add_signed(rule.return_address)?)?;
        let bp = match rule.saved_rbp {
            Some(offset) => stack.read(cfa.checked_add_signed(offset)?)?,
            None => registers.bp,
        };
        Some(Registers { ip, sp: cfa, bp })
    }

    /// The rule at `address` of `module`'s object, from `.eh_frame`.
    fn rule(&mut self, module: &Module, address: u64) -> Option<Rule> {
        let object = &module.object;
        let (eh_frame_data, eh_frame_address) = object.eh_frame.clone()?;
        let eh_frame = EhFrame::from(eh_frame_data);
        let mut bases = BaseAddresses::default().set_eh_frame(eh_frame_address).set_text(object.text_address);
        let row = match object.eh_frame_hdr.clone() {
            Some((hdr_data, hdr_address)) => {
                bases = bases.set_eh_frame_hdr(hdr_address);
                let header = EhFrameHdr::from(hdr_data).parse(&bases, 8).ok()?;
                let table = header.table()?;
                let fde = table.fde_for_address(&eh_frame, &bases, address, EhFrame::cie_from_offset).ok()?;
                fde.unwind_info_for_address(&eh_frame, &bases, &mut self.context, address).ok()?.clone()
            }
            None => eh_frame
                .unwind_info_for_address(&bases, &mut self.context, address, EhFrame::cie_from_offset)
                .ok()?
                .clone(),
        };
        let (cfa_from_rbp, cfa_offset) = match row.cfa() {
            CfaRule::RegisterAndOffset { register, offset } => match *register {
                X86_64::RSP => (false, *offset),
                X86_64::RBP => (true, *offset),
                _ => return None,
            },
            CfaRule::Expression(_) => return None,
        };
        let return_address = match row.register(X86_64::RA) {
            RegisterRule::Offset(offset) => offset,
            // The outermost frame (`_start`, a thread's entry) marks its return undefined.
            _ => return None,
        };
        let saved_rbp = match row.register(X86_64::RBP) {
            RegisterRule::Offset(offset) => Some(offset),
            RegisterRule::Undefined | RegisterRule::SameValue => None,
            _ => return None,
        };
        Some(Rule { cfa_from_rbp, cfa_offset, return_address, saved_rbp })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{
        objects::{Objects, ProcessCode},
        symbolize::Symbols,
    };

    /// This thread's registers here, and a copy of its stack's top (up to 16 KiB, less where
    /// the stack ends), as the kernel takes them.
    #[inline(never)]
    fn sample_this_thread() -> (Registers, Vec<u8>) {
        let (ip, sp, bp): (u64, u64, u64);
        // SAFETY: reads three registers.
        unsafe {
            std::arch::asm!("lea {ip}, [rip]", "mov {sp}, rsp", "mov {bp}, rbp", ip = out(reg) ip, sp = out(reg) sp, bp = out(reg) bp);
        }
        let mut bytes = vec![0u8; 16 << 10];
        for size in [16 << 10, 8 << 10, 4 << 10, 2 << 10] {
            let local = libc::iovec { iov_base: bytes.as_mut_ptr().cast(), iov_len: size };
            let remote = libc::iovec { iov_base: sp as *mut _, iov_len: size };
            // SAFETY: copies our own memory into `bytes`, failing rather than faulting.
            let copied = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
            if copied == size as isize {
                bytes.truncate(size);
                break;
            }
        }
        (Registers { ip, sp, bp }, bytes)
    }

    #[inline(never)]
    fn a_caller_of_the_sample() -> (Registers, Vec<u8>) {
        std::hint::black_box(sample_this_thread())
    }

    #[test]
    fn a_threads_own_stack_unwinds_through_its_callers() {
        let (registers, bytes) = a_caller_of_the_sample();
        let mut objects = Objects::default();
        let space = objects.address_space(&ProcessCode::capture(std::process::id()).expect("our own code"));
        let stack = Stack { sp: registers.sp, bytes: &bytes };
        let frames = unwind(&space, &stack, registers, &mut Unwinder::default());
        let module = space.module(registers.ip).expect("this code is mapped");
        let symbols = Symbols::load(module.object.data());
        let names: Vec<String> = frames
            .iter()
            .enumerate()
            .flat_map(|(index, address)| {
                let address = if index == 0 { *address } else { address - 1 };
                let module = space.module(address)?;
                Some(symbols.frames(module.object_address(address)).into_iter().map(|frame| frame.function))
            })
            .flatten()
            .collect();
        let position = |name: &str| names.iter().position(|frame| frame.ends_with(name));
        // Through the caller to frames above it (which: the test function may be inlined into
        // the harness's, and the copy of the stack may end before the thread's start).
        let (sampled, caller) = (position("sample_this_thread"), position("a_caller_of_the_sample"));
        assert!(sampled.is_some() && sampled < caller, "{names:#?}");
        assert!(caller.is_some_and(|caller| caller + 2 < names.len()), "{names:#?}");
    }

    #[test]
    fn frame_pointers_are_followed_where_there_is_no_call_frame_information() {
        // Two frames: rbp at 0x1010 holds the caller's rbp (0x1030) and, above it, the return
        // address 0x4000_0010.
        let mut bytes = vec![0u8; 0x40];
        bytes[0x10..0x18].copy_from_slice(&0x1030u64.to_le_bytes());
        bytes[0x18..0x20].copy_from_slice(&0x4000_0010u64.to_le_bytes());
        let stack = Stack { sp: 0x1000, bytes: &bytes };
        let caller =
            frame_pointer_step(Registers { ip: 0x4000_0100, sp: 0x1000, bp: 0x1010 }, &stack).unwrap();
        assert_eq!((caller.ip, caller.sp, caller.bp), (0x4000_0010, 0x1020, 0x1030));
        // Outside the copy, nothing is read.
        assert!(frame_pointer_step(Registers { ip: 0, sp: 0x1000, bp: 0x1038 }, &stack).is_none());
    }
}
