//! Where a part of a value is, and the scalar the kernel evaluates to read it: fields of a
//! value in memory, in a register or split into pieces, and pointers read through.

use pool_obs_common::probe::{Base, MAX_DEREFS, Register, Scalar};

use super::location::{Address, Location, Origin};

/// The part of a value `size` bytes long at `offset` in it.
pub(super) fn field(location: &Location, offset: u64, size: u64, path: &str) -> Result<Location, String> {
    match location {
        Location::Memory(address) => Ok(Location::Memory(address.clone().offset(offset as i64))),
        Location::Register { origin, byte_offset } => {
            let at = u64::from(*byte_offset) + offset;
            if at + size.min(8) > 8 {
                return Err(format!("`{path}` lies past the end of the register holding it"));
            }
            Ok(Location::Register { origin: *origin, byte_offset: at as u8 })
        }
        Location::Computed(_) if offset == 0 => Ok(location.clone()),
        Location::Computed(_) => {
            Err(format!("`{path}` is part of a value the compiler computes, not stores"))
        }
        Location::Constant(value) => {
            Ok(Location::Constant(value.checked_shr(8 * offset as u32).unwrap_or(0)))
        }
        Location::Pieces(pieces) => {
            let end = offset + size;
            // The pieces the part overlaps, each cut to it: one, or a smaller split value.
            let mut part: Vec<(u64, Option<Location>)> = Vec::new();
            let mut start = 0;
            for (piece_size, piece) in pieces {
                let (from, to) = (offset.max(start), end.min(start + piece_size));
                if from < to {
                    let cut = match piece {
                        Some(piece) => Some(field(piece, from - start, to - from, path)?),
                        None => None,
                    };
                    part.push((to - from, cut));
                }
                start += piece_size;
            }
            match part.as_slice() {
                [(whole, Some(only))] if *whole == size => Ok(only.clone()),
                [] | [(_, None)] => {
                    Err(format!("`{path}` is optimised out (that part of the value is not kept)"))
                }
                _ => Ok(Location::Pieces(part)),
            }
        }
    }
}

/// The first `size` bytes of a split value, which must lie in one piece.
fn whole_piece(location: &Location, size: u64, path: &str) -> Result<Location, String> {
    match field(location, 0, size, path)? {
        Location::Pieces(_) => Err(format!("`{path}` straddles the pieces the value is split into")),
        part => Ok(part),
    }
}

/// What a pointer held at `location` points at.
pub(super) fn dereference(location: &Location, path: &str) -> Result<Location, String> {
    match location {
        Location::Memory(address) => Ok(Location::Memory(address.clone().load())),
        Location::Register { origin, byte_offset: 0 } => Ok(Location::Memory(Address::of(*origin))),
        Location::Computed(address) => Ok(Location::Memory(address.clone())),
        Location::Pieces(_) => dereference(&whole_piece(location, 8, path)?, path),
        _ => Err(format!("`{path}` goes through a pointer the compiler did not keep")),
    }
}

/// The scalar the kernel evaluates to read `size` bytes at `location`.
pub fn read(location: &Location, size: u8, path: &str) -> Result<Scalar, String> {
    // (base, register, read at the return)
    let start = |origin: Origin| match origin {
        Origin::General(register) => (Base::Register, register as u8, 0),
        Origin::Return(index) => (Base::Return, index, 1),
        Origin::ResultPointer => (Base::Register, Register::Rdi as u8, 1),
    };
    let from = |address: &Address, extra_load: bool| {
        let mut loads = address.loads.clone();
        let mut addend = address.addend;
        if extra_load {
            loads.push(addend);
            addend = 0;
        }
        if loads.len() > MAX_DEREFS {
            return Err(format!(
                "`{path}` takes {} pointer loads; at most {MAX_DEREFS} are supported",
                loads.len()
            ));
        }
        let (base, reg, at_return) = start(address.origin);
        let mut offsets = [0; MAX_DEREFS];
        offsets[..loads.len()].copy_from_slice(&loads);
        Ok(Scalar {
            base: base as u8,
            reg,
            derefs: loads.len() as u8,
            size,
            offsets,
            addend,
            at_return,
            ..Scalar::default()
        })
    };
    match location {
        Location::Memory(address) => from(address, true),
        Location::Computed(address) => from(address, false),
        Location::Register { origin, byte_offset } => {
            let (base, reg, at_return) = start(*origin);
            Ok(Scalar { base: base as u8, reg, size, shift: byte_offset * 8, at_return, ..Scalar::default() })
        }
        Location::Constant(value) => {
            Ok(Scalar { base: Base::Constant as u8, constant: *value, size, ..Scalar::default() })
        }
        Location::Pieces(_) => read(&whole_piece(location, u64::from(size), path)?, size, path),
    }
}

/// A scalar as `check` shows it: `*(*(rsp + 0x50) + 0x8) as u64`.
pub fn show(scalar: &Scalar) -> String {
    let mut text = match scalar.base() {
        Some(Base::Constant) => return format!("{:#x}", scalar.constant),
        Some(Base::Absent) | None => return "-".to_string(),
        Some(Base::Register) => {
            Register::from_u8(scalar.reg).map_or("?".to_string(), |register| register.name().to_string())
        }
        Some(Base::Return) => ["ret", "ret1"].get(scalar.reg as usize).unwrap_or(&"?").to_string(),
    };
    for offset in &scalar.offsets[..scalar.derefs as usize] {
        text = match offset {
            0 => format!("*{text}"),
            offset if *offset < 0 => format!("*({text} - {:#x})", offset.unsigned_abs()),
            offset => format!("*({text} + {offset:#x})"),
        };
    }
    if scalar.addend != 0 {
        text = format!("({text} + {:#x})", scalar.addend);
    }
    if scalar.shift != 0 {
        text = format!("({text} >> {})", scalar.shift);
    }
    let when = if scalar.at_return != 0 && scalar.base() == Some(Base::Register) {
        " at the return (rdi as at entry)"
    } else {
        ""
    };
    format!("{text} as u{}{when}", u32::from(scalar.size) * 8)
}

/// Moves values read relative to the stack pointer at a function's entry to a probe placed
/// after its prologue pushed `sp_offset` bytes.
pub fn rebase_stack(scalar: &mut Scalar, sp_offset: i32) {
    if scalar.base() != Some(Base::Register) || scalar.reg != Register::Rsp as u8 || sp_offset == 0 {
        return;
    }
    if scalar.derefs > 0 {
        scalar.offsets[0] += i64::from(sp_offset);
    } else {
        scalar.addend += i64::from(sp_offset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_register(register: Register) -> Option<Location> {
        Some(Location::register(register))
    }

    #[test]
    fn a_part_of_a_split_value_is_its_pieces_cut_to_it() {
        // 8 bytes in r15, 4 in r12, 4 optimised out, 8 in rbp.
        let split = Location::Pieces(vec![
            (8, in_register(Register::R15)),
            (4, in_register(Register::R12)),
            (4, None),
            (8, in_register(Register::Rbp)),
        ]);
        // In one piece: that piece.
        assert_eq!(field(&split, 16, 8, "p"), Ok(Location::register(Register::Rbp)));
        let high_half = Location::Register { origin: Origin::General(Register::R15), byte_offset: 4 };
        assert_eq!(field(&split, 4, 4, "p"), Ok(high_half.clone()));
        // Over several: a smaller split value, whose own fields are found in it.
        let part = field(&split, 4, 12, "p").unwrap();
        assert_eq!(
            part,
            Location::Pieces(vec![(4, Some(high_half)), (4, in_register(Register::R12)), (4, None)])
        );
        assert_eq!(field(&part, 4, 4, "p"), Ok(Location::register(Register::R12)));
        // An integer must lie in one piece, and a part that was not kept is refused.
        assert!(read(&part, 8, "p").unwrap_err().contains("straddles"));
        assert!(field(&split, 12, 4, "p").unwrap_err().contains("optimised out"));
    }
}
