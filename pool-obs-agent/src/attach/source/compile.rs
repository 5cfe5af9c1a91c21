//! Compiles a value path (`job.model`, `return.Ok.id`) at one site into the [`Scalar`]s the
//! kernel programs evaluate: the path's first name is a parameter located by DWARF at the
//! site's address, each later name a field, and pointers on the way (`&`, `Box`, `Arc`, `Rc`)
//! are read through. Whatever cannot be read at that address is refused, with what can.
//! Outcomes by variant names are in [`super::variants`].

use pool_obs_common::probe::{Register, Scalar};

use super::{
    Parameter, Site, SourceInfo, abi,
    location::{Address, Location, Origin},
    place::{dereference, field, read},
    types::{Member, Shape, Type, TypeId},
};
use crate::manifest::value::StrValue;

/// Fields that smart pointers and their insides keep the pointer or the value in: `Arc`'s
/// `ptr`, `NonNull`'s `pointer`, `ArcInner`'s `data`, `RcInner`'s `value`, `Pin`'s `__pointer`.
const SEE_THROUGH: [&str; 5] = ["ptr", "pointer", "__pointer", "data", "value"];
/// How many pointers and wrappers one step of a path may pass through.
const MAX_HOPS: usize = 8;

/// Which side of a call a value is read on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Entry,
    /// At a return of an out-of-line copy: `return` names the value returned.
    Return,
}

/// One site's view of the debug info: where each parameter is at its address.
pub struct Scope<'a> {
    pub(super) info: &'a SourceInfo,
    site: &'a Site,
    parameters: Vec<Parameter>,
    /// A closure's captured variables, found by name after its parameters.
    captures: Vec<Parameter>,
    side: Side,
    /// Where a caller binds an inlined poll's `Ready` value: what `return` names there.
    ready: Option<Parameter>,
}

/// A value found by a path: its type and where it is.
#[derive(Clone, Debug)]
pub(super) struct Found {
    pub(super) ty: Type,
    pub(super) location: Location,
}

impl<'a> Scope<'a> {
    pub fn new(info: &'a SourceInfo, site: &'a Site, side: Side) -> Result<Self, String> {
        let mut parameters = info.parameters(site)?;
        let mut captures = info.captures(site)?;
        if site.inlined.is_none() {
            at_entry(info, site, &mut parameters);
            // A capture in a stack slot is copied there by the closure's own code.
            for capture in
                captures.iter_mut().filter(|capture| capture.whole_scope && in_stack_slot(&capture.location))
            {
                capture.location = Err("in a stack slot the closure writes only after its entry".to_string());
            }
        }
        Ok(Self { info, site, parameters, captures, side, ready: None })
    }

    /// The scope where the caller of an inlined poll binds the future's `Ready` value (see
    /// [`super::ready`]): `return` names that value, as it names a poll's return value at the
    /// poll function's own return.
    pub fn of_ready(info: &'a SourceInfo, site: &'a Site, bound: Parameter) -> Self {
        Self {
            info,
            site,
            parameters: Vec::new(),
            captures: Vec::new(),
            side: Side::Return,
            ready: Some(bound),
        }
    }

    /// The scope of a future's first poll, at its poll function's site: the names are the
    /// async fn's arguments, which the future's state holds while it is unresumed, and the
    /// future is the poll's first parameter (a `Pin<&mut>` to the state), whose location this
    /// returns.
    pub fn of_future<'m>(
        mut self,
        arguments: impl IntoIterator<Item = &'m Member>,
    ) -> Result<(Self, Location), String> {
        let pinned = self.parameters.first().ok_or("the poll takes no future")?;
        let future = pinned
            .location
            .clone()
            .map_err(|why| format!("the future's address is {why} at {}", self.where_()))?;
        let state = dereference(&future, "the future")?;
        let mut located = Vec::new();
        for member in arguments {
            located.push(Parameter {
                name: member.name.clone(),
                ty: Some(member.ty),
                location: field(&state, member.offset, 8, &member.name),
                whole_scope: false,
            });
        }
        self.parameters = located;
        self.captures.clear();
        Ok((self, future))
    }

    /// An integer of any width up to 8 bytes, or a struct that wraps one (`StatusCode`, whose
    /// one field is a `NonZero<u16>`, whose one field is the `u16`).
    pub fn integer(&self, path: &str) -> Result<Scalar, String> {
        let mut found = self.value(path)?;
        for _ in 0..MAX_HOPS {
            let Shape::Struct { members, variants: None } = &found.ty.shape else { break };
            let [member] = members.as_slice() else { break };
            found = self.member(&found, &member.clone(), path)?;
        }
        match found.ty.shape {
            Shape::Integer | Shape::Enumeration(_) if (1..=8).contains(&found.ty.size) => {
                read(&found.location, found.ty.size as u8, path)
            }
            _ => Err(format!("`{path}` is a `{}`, not an integer", found.ty.name)),
        }
    }

    /// A string: `&str`, `String`, `&[u8]`, `Vec<u8>` or `Cow<str>`.
    pub fn string(&self, path: &str) -> Result<StrValue, String> {
        let found = self.value(path)?;
        let (ptr, len) = self
            .string_parts(found.ty.clone(), 0)
            .map_err(|problem| format!("`{path}` is a `{}`, not a string ({problem})", found.ty.name))?;
        Ok(StrValue {
            ptr: read(&field(&found.location, ptr, 8, path)?, 8, path)?,
            len: read(&field(&found.location, len, 8, path)?, 8, path)?,
        })
    }

    /// The name of the type `path` names, if it names a value here.
    pub fn value_type(&self, path: &str) -> Option<String> {
        self.value(path).ok().map(|found| found.ty.name)
    }

    /// The fields of the struct at `path` (through pointers), for `init`'s suggestions.
    pub fn field_names(&self, path: &str) -> Vec<String> {
        let Ok(found) = self.value(path) else { return Vec::new() };
        match &found.ty.shape {
            Shape::Struct { members, variants: None } => members
                .iter()
                .filter(|member| !member.name.starts_with("__") && !member.name.is_empty())
                .map(|member| member.name.clone())
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The parameters and where each is here, or why not: what `check` shows, and what a
    /// refusal suggests instead.
    pub fn available(&self) -> String {
        let names: Vec<String> = self
            .parameters
            .iter()
            .chain(&self.captures)
            .filter(|parameter| parameter.location.is_ok())
            .map(|parameter| format!("`{}`", parameter.name))
            .collect();
        let mut names = names;
        if self.side == Side::Return {
            names.push("`return`".to_string());
        }
        if names.is_empty() { "nothing".to_string() } else { names.join(", ") }
    }

    /// What `path` names, read through the pointers it is (a `&Job` stands for the `Job`).
    pub(super) fn value(&self, path: &str) -> Result<Found, String> {
        self.through_pointers(self.walk(path)?, path)
    }

    /// The value at `path`; a part of it the compiler did not keep is refused with what is
    /// available instead.
    fn walk(&self, path: &str) -> Result<Found, String> {
        self.walk_steps(path).map_err(|problem| {
            if problem.contains("optimised out") && !problem.contains("available here") {
                format!("{problem}: available here: {}", self.available())
            } else {
                problem
            }
        })
    }

    fn walk_steps(&self, path: &str) -> Result<Found, String> {
        let mut steps = path.split('.');
        let first = steps.next().unwrap_or_default();
        let mut found = self.root(first, path)?;
        for step in steps {
            found = self.step(found, step, path)?;
        }
        Ok(found)
    }

    fn root(&self, name: &str, path: &str) -> Result<Found, String> {
        if name == "return"
            && let Some(bound) = &self.ready
        {
            let location = bound.location.clone().map_err(|why| {
                format!("the `Ready` value its caller binds (`{}`) is {why} at {}", bound.name, self.where_())
            })?;
            return Ok(Found { ty: self.type_of(bound.ty, name)?, location });
        }
        if name == "return" {
            return match self.side {
                Side::Return => self.returned(path),
                Side::Entry => Err(format!(
                    "`{path}` reads the returned value, which only exists with `at = \"return\"`"
                )),
            };
        }
        let Some(parameter) =
            self.parameters.iter().chain(&self.captures).find(|parameter| parameter.name == name)
        else {
            return Err(format!(
                "`{}` has no parameter `{name}`: it has {}",
                self.site.function,
                self.all_names()
            ));
        };
        let location = parameter.location.clone().map_err(|why| {
            format!("`{name}` is {why} at {}: available here: {}", self.where_(), self.available())
        })?;
        let ty = self.type_of(parameter.ty, name)?;
        Ok(Found { ty, location })
    }

    /// Where a value the function returns is, by the Rust ABI on x86-64: over 16 bytes it is
    /// written through the hidden pointer the caller passed in rdi (which, unlike C, the
    /// function need not return in rax); up to 8 bytes it is in rax; up to 16 in rax and rdx,
    /// split where a pair of scalars splits.
    fn returned(&self, path: &str) -> Result<Found, String> {
        let id = self
            .info
            .return_type(self.site)
            .ok_or_else(|| format!("`{path}`: `{}` returns nothing", self.site.function))?;
        let ty = self.type_of(Some(id), "return")?;
        let rax = Location::Register { origin: Origin::Return(0), byte_offset: 0 };
        let rdx = Location::Register { origin: Origin::Return(1), byte_offset: 0 };
        let location = match ty.size {
            0 => return Err(format!("`{path}`: `{}` returns nothing", self.site.function)),
            1..=8 => rax,
            9..=16 => {
                let split = abi::return_split(self.info.units(), &ty);
                Location::Pieces(vec![(split, Some(rax)), (ty.size - split, Some(rdx))])
            }
            _ => Location::Memory(Address::of(Origin::ResultPointer)),
        };
        Ok(Found { ty, location })
    }

    fn step(&self, found: Found, name: &str, path: &str) -> Result<Found, String> {
        let mut found = found;
        let wanted =
            if name.chars().all(|c| c.is_ascii_digit()) { format!("__{name}") } else { name.to_string() };
        for _ in 0..MAX_HOPS {
            match &found.ty.shape {
                Shape::Pointer(target) => {
                    let target = *target;
                    found = Found {
                        ty: self.type_of(target, path)?,
                        location: dereference(&found.location, path)?,
                    };
                }
                Shape::Struct { members, variants } => {
                    let by_name = |member: &&Member| member.name == wanted;
                    if let Some(member) = members.iter().find(by_name) {
                        return self.member(&found, member, path);
                    }
                    if let Some(variant) =
                        variants.iter().flat_map(|v| v.variants.iter()).find(|v| v.name == wanted)
                    {
                        return self.member(&found, &variant.member, path);
                    }
                    let Some(inner) = SEE_THROUGH
                        .iter()
                        .find_map(|through| members.iter().find(|member| member.name == *through))
                    else {
                        let fields: Vec<String> = members
                            .iter()
                            .map(|member| member.name.clone())
                            .chain(variants.iter().flat_map(|v| v.variants.iter().map(|v| v.name.clone())))
                            .map(|name| format!("`{}`", name.trim_start_matches("__")))
                            .collect();
                        return Err(format!(
                            "`{path}`: `{}` has no field `{name}`; it has {}",
                            found.ty.name,
                            if fields.is_empty() { "none".to_string() } else { fields.join(", ") }
                        ));
                    };
                    found = self.member(&found, inner, path)?;
                }
                _ => return Err(format!("`{path}`: `{}` has no fields, so no `{name}`", found.ty.name)),
            }
        }
        Err(format!("`{path}`: too many pointers to follow to `{name}`"))
    }

    fn member(&self, found: &Found, member: &Member, path: &str) -> Result<Found, String> {
        let ty = self.type_of(Some(member.ty), path)?;
        let location = field(&found.location, member.offset, ty.size.max(1), path)?;
        Ok(Found { ty, location })
    }

    /// A value that is a pointer (`&T`, `Box<T>`) stands for what it points at.
    fn through_pointers(&self, found: Found, path: &str) -> Result<Found, String> {
        let mut found = found;
        for _ in 0..MAX_HOPS {
            let Shape::Pointer(target) = found.ty.shape else { return Ok(found) };
            found = Found { ty: self.type_of(target, path)?, location: dereference(&found.location, path)? };
        }
        Err(format!("`{path}`: too many pointers to follow"))
    }

    /// The offsets of a string's pointer and length within it.
    fn string_parts(&self, ty: Type, depth: usize) -> Result<(u64, u64), String> {
        if depth > MAX_HOPS {
            return Err("nested too deep".to_string());
        }
        let Shape::Struct { members, variants } = &ty.shape else {
            return Err("no pointer and length".to_string());
        };
        let named = |name: &str| members.iter().find(|member| member.name == name);
        if let (Some(ptr), Some(len)) = (named("data_ptr"), named("length")) {
            return Ok((ptr.offset, len.offset));
        }
        if let Some(vec) = named("vec") {
            let (ptr, len) = self.string_parts(self.info.units().type_of(vec.ty)?, depth + 1)?;
            return Ok((vec.offset + ptr, vec.offset + len));
        }
        if let (Some(buf), Some(len)) = (named("buf"), named("len")) {
            let ptr = self.first_pointer(buf.ty, depth)?;
            return Ok((buf.offset + ptr, len.offset));
        }
        if let Some(variants) = variants {
            // `Cow<str>`: every variant must keep its bytes at the same offsets.
            let mut parts = None;
            for variant in &variants.variants {
                let payload = self.info.units().type_of(variant.member.ty)?;
                let inner = match &payload.shape {
                    Shape::Struct { members, .. } if members.len() == 1 => members[0].clone(),
                    _ => return Err(format!("variant `{}` holds no string", variant.name)),
                };
                let (ptr, len) = self.string_parts(self.info.units().type_of(inner.ty)?, depth + 1)?;
                let at = variant.member.offset + inner.offset;
                let these = (at + ptr, at + len);
                if parts.is_some_and(|parts| parts != these) {
                    return Err("its variants keep their bytes in different places".to_string());
                }
                parts = Some(these);
            }
            return parts.ok_or_else(|| "no variants".to_string());
        }
        Err("no pointer and length".to_string())
    }

    fn first_pointer(&self, id: TypeId, depth: usize) -> Result<u64, String> {
        if depth > MAX_HOPS {
            return Err("nested too deep".to_string());
        }
        let ty = self.info.units().type_of(id)?;
        match &ty.shape {
            Shape::Pointer(_) => Ok(0),
            Shape::Struct { members, .. } => members
                .iter()
                .find_map(|member| self.first_pointer(member.ty, depth + 1).ok().map(|at| member.offset + at))
                .ok_or_else(|| "no pointer".to_string()),
            _ => Err("no pointer".to_string()),
        }
    }

    fn type_of(&self, id: Option<TypeId>, what: &str) -> Result<Type, String> {
        let id = id.ok_or_else(|| format!("`{what}` has no type in the debug info"))?;
        self.info.units().type_of(id)
    }

    fn all_names(&self) -> String {
        let names: Vec<String> = self
            .parameters
            .iter()
            .chain(&self.captures)
            .map(|parameter| format!("`{}`", parameter.name))
            .collect();
        if names.is_empty() { "none".to_string() } else { names.join(", ") }
    }

    fn where_(&self) -> String {
        match &self.site.inlined {
            Some(inlined) => format!("{:#x} (inlined at {})", self.site.address, inlined.call),
            None => format!("{:#x}", self.site.address),
        }
    }
}

/// At an out-of-line function's first instruction, a parameter that DWARF keeps in a stack
/// slot for the whole function is still in the register the caller passed it in: it is read
/// there, as the ABI places it, when the parameters DWARF locates in registers there agree
/// with the ABI (the optimiser did not change the function's signature).
fn at_entry(info: &SourceInfo, site: &Site, parameters: &mut [Parameter]) {
    let types: Vec<Option<TypeId>> = parameters.iter().map(|parameter| parameter.ty).collect();
    let by_abi = abi::arguments(info.units(), &types, info.return_type(site));
    let in_registers = |location: &Location| match location {
        Location::Register { .. } => true,
        Location::Pieces(pieces) => {
            pieces.iter().all(|(_, piece)| matches!(piece, Some(Location::Register { .. })))
        }
        _ => false,
    };
    let agrees = parameters.iter().zip(&by_abi).all(|(parameter, abi)| match &parameter.location {
        Ok(location) if in_registers(location) => abi.as_ref() == Some(location),
        _ => true,
    });
    for (parameter, abi) in parameters.iter_mut().zip(by_abi) {
        if !(parameter.whole_scope && in_stack_slot(&parameter.location)) {
            continue;
        }
        parameter.location = match abi {
            Some(location) if agrees => Ok(location),
            _ => Err("in a stack slot written only after the function's entry, and the optimiser changed \
                      the function's signature, so its register at entry is not known"
                .to_string()),
        };
    }
}

fn in_stack_slot(location: &Result<Location, String>) -> bool {
    matches!(
        location,
        Ok(Location::Memory(Address { origin: Origin::General(Register::Rsp | Register::Rbp), .. }))
    )
}
