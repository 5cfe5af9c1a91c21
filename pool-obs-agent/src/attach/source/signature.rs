//! A function's signature as the register syntax's `check` and `symbols` see it: each
//! parameter's name, type name, size and kind, and the functions that were inlined away.
//! Read from the same DWARF as source paths.

use std::collections::BTreeMap;

use super::{SourceInfo, types::Shape};
use crate::attach::symbols::glob_match;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TypeKind {
    Pointer,
    Float,
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeInfo {
    pub name: String,
    pub size: u64,
    pub kind: TypeKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Param {
    pub name: String,
    pub ty: TypeInfo,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionInfo {
    pub address: u64,
    pub params: Vec<Param>,
    pub returns: Option<TypeInfo>,
}

impl SourceInfo {
    /// The signature of the out-of-line function at `address`.
    pub fn function_at(&self, address: u64) -> Option<FunctionInfo> {
        let placement =
            self.placements.iter().find(|placement| !placement.inlined && placement.address == address)?;
        let site = &self.site(placement);
        let info = |ty| {
            let ty = self.units.type_of(ty).ok()?;
            let kind = match ty.shape {
                Shape::Pointer(_) => TypeKind::Pointer,
                Shape::Float => TypeKind::Float,
                _ => TypeKind::Other,
            };
            Some(TypeInfo { name: ty.name, size: ty.size, kind })
        };
        let unknown = || TypeInfo { name: "?".to_string(), size: 8, kind: TypeKind::Other };
        let params = self
            .parameters(site)
            .ok()?
            .into_iter()
            .map(|parameter| Param {
                name: parameter.name,
                ty: parameter.ty.and_then(info).unwrap_or_else(unknown),
            })
            .collect();
        Some(FunctionInfo { address, params, returns: self.return_type(site).and_then(info) })
    }

    /// Every function with inlined instances, by demangled name (a closure's with its number),
    /// with how many it has.
    pub fn inlined_functions(&self) -> BTreeMap<&str, usize> {
        let mut inlined = BTreeMap::new();
        for placement in self.placements.iter().filter(|placement| placement.inlined) {
            *inlined.entry(self.names[placement.name as usize].key.as_str()).or_default() += 1;
        }
        inlined
    }

    /// A function matching `pattern` that the compiler inlined into its callers.
    pub fn inlined(&self, pattern: &str) -> Option<&str> {
        self.placements
            .iter()
            .filter(|placement| placement.inlined)
            .map(|placement| &self.names[placement.name as usize])
            .find(|name| glob_match(pattern, &name.function) || glob_match(pattern, &name.key))
            .map(|name| name.function.as_str())
    }
}
