//! Where the x86-64 Rust ABI puts a function's arguments and result, from their types. DWARF
//! says where a value is at each address, but LLVM describes a parameter it spills to a stack
//! slot by that slot alone, for the whole function: at the function's first instruction the
//! slot is not written yet, and the value is still in the register the caller put it in.
//!
//! As rustc lays them out: a scalar takes one integer register, a pair of scalars (`&str`,
//! `Option<u64>`, a struct of two integers) two; any other value up to 8 bytes one, and larger
//! ones are passed by pointer. A result over 16 bytes is written through a pointer the caller
//! passes first. Floats take vector registers, which the probes do not read.

use std::collections::BTreeMap;

use pool_obs_common::probe::Register;

use super::{
    DebugUnits,
    location::{Address, Location, Origin},
    types::{Shape, Type, TypeId},
};

/// How a value is made of scalars: their offsets, and whether each is a float.
pub fn scalars(units: &DebugUnits, ty: &Type) -> BTreeMap<u64, bool> {
    let mut found = BTreeMap::new();
    collect(units, ty, 0, &mut found, 0);
    found
}

fn collect(units: &DebugUnits, ty: &Type, at: u64, found: &mut BTreeMap<u64, bool>, depth: usize) {
    if depth > 8 || ty.size == 0 {
        return;
    }
    match &ty.shape {
        Shape::Struct { members, variants } => {
            let members = members.iter().chain(variants.iter().flat_map(|variants| {
                std::iter::once(&variants.discriminant)
                    .chain(variants.variants.iter().map(|variant| &variant.member))
            }));
            for member in members {
                if let Ok(inner) = units.type_of(member.ty) {
                    collect(units, &inner, at + member.offset, found, depth + 1);
                }
            }
        }
        Shape::Float => {
            found.insert(at, true);
        }
        _ => {
            found.entry(at).or_insert(false);
        }
    }
}

/// Where a 9-to-16-byte value returned in rax and rdx splits between them: at its second
/// scalar's offset for a pair of scalars (an `Option<u32>` splits at 4), else at 8.
pub fn return_split(units: &DebugUnits, ty: &Type) -> u64 {
    let offsets: Vec<u64> = scalars(units, ty).into_keys().collect();
    match offsets.as_slice() {
        [0, second] if *second < 8 => *second,
        _ => 8,
    }
}

/// Where each argument is at the function's first instruction, by the ABI; `None` for one the
/// probes cannot read there (a float, a value on the stack, or past the sixth register).
pub fn arguments(
    units: &DebugUnits,
    parameters: &[Option<TypeId>],
    returns: Option<TypeId>,
) -> Vec<Option<Location>> {
    let mut registers = Register::ARGUMENTS.into_iter();
    let returned = returns.and_then(|id| units.type_of(id).ok());
    if returned.is_some_and(|ty| ty.size > 16) {
        registers.next();
    }
    let whole = |register: Register| Location::register(register);
    parameters
        .iter()
        .map(|ty| {
            let ty = ty.and_then(|id| units.type_of(id).ok())?;
            let scalars = scalars(units, &ty);
            if ty.size == 0 || scalars.values().any(|float| *float) {
                return None;
            }
            match scalars.len() {
                2 => {
                    let second = *scalars.keys().nth(1).expect("two");
                    let (first_register, second_register) = (registers.next()?, registers.next()?);
                    Some(Location::Pieces(vec![
                        (second, Some(whole(first_register))),
                        (ty.size - second, Some(whole(second_register))),
                    ]))
                }
                _ if ty.size <= 8 => registers.next().map(whole),
                _ => {
                    registers.next().map(|register| Location::Memory(Address::of(Origin::General(register))))
                }
            }
        })
        .collect()
}
