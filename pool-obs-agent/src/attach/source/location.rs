//! Where DWARF says a variable is at one address, kept symbolic: the kernel evaluates it at
//! each hit, so a location becomes a register, loads and offsets, never a number. Only the
//! operations LLVM emits for Rust variables are understood; any other is refused by name
//! rather than guessed at.

use gimli::{Operation, Reader as _};
use pool_obs_common::probe::Register;

use super::R;

/// Where an address (or a value computed like one) comes from at a probe hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    General(Register),
    /// Return register 0 (rax) or 1 (rdx), at a return.
    Return(u8),
    /// At a return, the pointer the caller passed in rdi for a result returned through memory:
    /// the Rust ABI does not return it in rax.
    ResultPointer,
}

/// An address: a register, then loads of `*(value + offset)`, then `addend` added.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    pub origin: Origin,
    pub loads: Vec<i64>,
    pub addend: i64,
}

impl Address {
    pub fn of(origin: Origin) -> Self {
        Self { origin, loads: Vec::new(), addend: 0 }
    }

    pub fn offset(mut self, by: i64) -> Self {
        self.addend = self.addend.wrapping_add(by);
        self
    }

    /// The address stored at this one.
    pub fn load(mut self) -> Self {
        self.loads.push(self.addend);
        self.addend = 0;
        self
    }
}

/// Where a value is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// In a register; its bytes from `byte_offset` on are the value's.
    Register {
        origin: Origin,
        byte_offset: u8,
    },
    /// In memory, at this address.
    Memory(Address),
    /// Nowhere: the value is what this address expression computes (`DW_OP_stack_value`).
    Computed(Address),
    Constant(u64),
    /// Split over pieces, in order: (size in bytes, where; `None` where optimised out).
    Pieces(Vec<(u64, Option<Location>)>),
}

impl Location {
    pub fn register(register: Register) -> Self {
        Location::Register { origin: Origin::General(register), byte_offset: 0 }
    }

    /// The memory the value is kept in: a `Memory` location's address, or that of the last
    /// load of a `Computed` one that ends in a load (`DW_OP_breg14 112, DW_OP_deref,
    /// DW_OP_stack_value` is the value stored at `r14 + 112`).
    pub fn stored_at(&self) -> Option<Address> {
        match self {
            Location::Memory(address) => Some(address.clone()),
            Location::Computed(address) if address.addend == 0 => {
                let mut stored = address.clone();
                stored.addend = stored.loads.pop()?;
                Some(stored)
            }
            _ => None,
        }
    }
}

/// A value on the expression stack.
#[derive(Clone, Debug)]
enum Entry {
    Address(Address),
    Constant(u64),
}

/// Evaluates a location expression. `frame_base` is the enclosing function's, for
/// `DW_OP_fbreg`. `Ok(None)`: the expression is empty (the value is optimised out).
pub fn evaluate(
    expression: gimli::Expression<R>,
    encoding: gimli::Encoding,
    frame_base: Option<Origin>,
) -> Result<Option<Location>, String> {
    let mut operations = expression.operations(encoding);
    let mut stack: Vec<Entry> = Vec::new();
    let mut current: Option<Location> = None;
    let mut pieces: Vec<(u64, Option<Location>)> = Vec::new();
    let mut pieced = false;
    while let Some(operation) = operations.next().map_err(|error| error.to_string())? {
        match operation {
            Operation::Register { register } => current = Some(Location::register(register_of(register)?)),
            Operation::RegisterOffset { register, offset, .. } => stack
                .push(Entry::Address(Address::of(Origin::General(register_of(register)?)).offset(offset))),
            Operation::FrameOffset { offset } => match frame_base {
                Some(origin) => stack.push(Entry::Address(Address::of(origin).offset(offset))),
                None => return Err("a frame base other than a register".to_string()),
            },
            Operation::PlusConstant { value } => match stack.last_mut() {
                Some(Entry::Address(address)) => address.addend = address.addend.wrapping_add(value as i64),
                Some(Entry::Constant(constant)) => *constant = constant.wrapping_add(value),
                None => return Err("DW_OP_plus_uconst on an empty stack".to_string()),
            },
            Operation::Deref { size: 8, space: false, .. } => match stack.pop() {
                Some(Entry::Address(address)) => stack.push(Entry::Address(address.load())),
                _ => return Err("DW_OP_deref of a constant".to_string()),
            },
            Operation::Plus | Operation::Minus => {
                let (Some(right), Some(left)) = (stack.pop(), stack.pop()) else {
                    return Err(format!("{operation:?} on a stack of fewer than two values"));
                };
                let minus = matches!(operation, Operation::Minus);
                stack.push(match (left, right) {
                    (Entry::Address(address), Entry::Constant(constant)) => {
                        let by = if minus { (constant as i64).wrapping_neg() } else { constant as i64 };
                        Entry::Address(address.offset(by))
                    }
                    (Entry::Constant(constant), Entry::Address(address)) if !minus => {
                        Entry::Address(address.offset(constant as i64))
                    }
                    (Entry::Constant(left), Entry::Constant(right)) => Entry::Constant(if minus {
                        left.wrapping_sub(right)
                    } else {
                        left.wrapping_add(right)
                    }),
                    _ => return Err(format!("the DWARF operation {operation:?} on two registers")),
                });
            }
            Operation::UnsignedConstant { value } => stack.push(Entry::Constant(value)),
            Operation::SignedConstant { value } => stack.push(Entry::Constant(value as u64)),
            Operation::StackValue => {
                current = match stack.pop() {
                    Some(Entry::Address(address)) => Some(Location::Computed(address)),
                    Some(Entry::Constant(constant)) => Some(Location::Constant(constant)),
                    None => return Err("DW_OP_stack_value on an empty stack".to_string()),
                }
            }
            Operation::ImplicitValue { data } => {
                let bytes = data.to_slice().map_err(|error| error.to_string())?;
                let mut word = [0u8; 8];
                let len = bytes.len().min(8);
                word[..len].copy_from_slice(&bytes[..len]);
                current = Some(Location::Constant(u64::from_le_bytes(word)));
            }
            Operation::Piece { size_in_bits, bit_offset: None } if size_in_bits % 8 == 0 => {
                pieced = true;
                let location = current.take().or_else(|| match stack.pop() {
                    Some(Entry::Address(address)) => Some(Location::Memory(address)),
                    Some(Entry::Constant(constant)) => Some(Location::Constant(constant)),
                    None => None,
                });
                stack.clear();
                pieces.push((size_in_bits / 8, location));
            }
            Operation::EntryValue { .. } => {
                return Err("only its value at the function's entry (DW_OP_entry_value)".to_string());
            }
            other => return Err(format!("the DWARF operation {other:?}")),
        }
    }
    if pieced {
        return Ok(Some(Location::Pieces(pieces)));
    }
    if current.is_some() {
        return Ok(current);
    }
    match stack.pop() {
        Some(Entry::Address(address)) => Ok(Some(Location::Memory(address))),
        Some(Entry::Constant(_)) => Err("a value at a fixed address".to_string()),
        None => Ok(None),
    }
}

fn register_of(register: gimli::Register) -> Result<Register, String> {
    u8::try_from(register.0)
        .ok()
        .and_then(Register::from_u8)
        .ok_or_else(|| format!("DWARF register {} (not a general register)", register.0))
}

#[cfg(test)]
mod tests {
    use gimli::{Encoding, EndianArcSlice, Expression, Format, RunTimeEndian};

    use super::*;

    fn expression(bytes: &[u8]) -> Expression<R> {
        Expression(EndianArcSlice::new(bytes.into(), RunTimeEndian::Little))
    }

    fn evaluate_bytes(bytes: &[u8], frame_base: Option<Origin>) -> Result<Option<Location>, String> {
        let encoding = Encoding { format: Format::Dwarf32, version: 5, address_size: 8 };
        evaluate(expression(bytes), encoding, frame_base)
    }

    #[test]
    fn registers_stack_slots_and_computed_pointers() {
        // DW_OP_reg5
        assert_eq!(evaluate_bytes(&[0x55], None), Ok(Some(Location::register(Register::Rdi))));
        // DW_OP_breg7 +24 (a stack slot)
        let slot = Address::of(Origin::General(Register::Rsp)).offset(24);
        assert_eq!(evaluate_bytes(&[0x77, 24], None), Ok(Some(Location::Memory(slot.clone()))));
        // DW_OP_breg7 +24, DW_OP_stack_value: a pointer to that slot
        assert_eq!(evaluate_bytes(&[0x77, 24, 0x9f], None), Ok(Some(Location::Computed(slot))));
        // DW_OP_fbreg +80 with the frame base in rsp
        let frame_base = Origin::General(Register::Rsp);
        let at_80 = Address::of(Origin::General(Register::Rsp)).offset(80);
        assert_eq!(evaluate_bytes(&[0x91, 0xd0, 0x00], Some(frame_base)), Ok(Some(Location::Memory(at_80))));
    }

    #[test]
    fn a_value_computed_by_a_load_is_stored_where_it_is_loaded_from() {
        // DW_OP_breg14 +112, DW_OP_deref, DW_OP_stack_value: the value stored at r14 + 112
        let loaded = evaluate_bytes(&[0x7e, 0xf0, 0x00, 0x06, 0x9f], None).unwrap().unwrap();
        let stored = Address::of(Origin::General(Register::R14)).offset(112);
        assert_eq!(loaded.stored_at(), Some(stored.clone()));
        assert_eq!(Location::Memory(stored.clone()).stored_at(), Some(stored.clone()));
        // DW_OP_breg14 +112, DW_OP_stack_value: an address, kept nowhere
        assert_eq!(Location::Computed(stored).stored_at(), None);
    }

    #[test]
    fn pieces_keep_their_sizes_and_gaps() {
        // DW_OP_reg4, DW_OP_piece 8, DW_OP_piece 8, DW_OP_reg0, DW_OP_piece 8
        let pieces = evaluate_bytes(&[0x54, 0x93, 8, 0x93, 8, 0x50, 0x93, 8], None).unwrap().unwrap();
        assert_eq!(
            pieces,
            Location::Pieces(vec![
                (8, Some(Location::register(Register::Rsi))),
                (8, None),
                (8, Some(Location::register(Register::Rax))),
            ])
        );
    }

    #[test]
    fn a_pointer_computed_by_subtracting_a_constant() {
        // DW_OP_breg7 +8, DW_OP_deref, DW_OP_constu 0x28, DW_OP_minus, DW_OP_stack_value
        let computed = evaluate_bytes(&[0x77, 8, 0x06, 0x10, 0x28, 0x1c, 0x9f], None).unwrap().unwrap();
        let address = Address::of(Origin::General(Register::Rsp)).offset(8).load().offset(-0x28);
        assert_eq!(computed, Location::Computed(address));
    }

    #[test]
    fn entry_values_are_refused_by_name() {
        // DW_OP_entry_value(DW_OP_reg5), DW_OP_stack_value
        let refused = evaluate_bytes(&[0xa3, 1, 0x55, 0x9f], None).unwrap_err();
        assert!(refused.contains("DW_OP_entry_value"), "{refused}");
        assert_eq!(evaluate_bytes(&[], None), Ok(None));
    }
}
