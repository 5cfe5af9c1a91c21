//! Where a future's poll, inlined into a caller that goes on after it, returned `Ready`. A
//! wrapper whose output is the future's (`Counted<F>`) returns the poll's value, so its return
//! is the poll's end. A parent `async fn` (`service.handle(&req).await`) or a wrapper with an
//! output of its own (`tokio::time::timeout`) does not: it binds the `Ready` value to a
//! variable (the `.await`'s `result`, `Timeout`'s `v`) and goes on, and may poll the next
//! request's future before it returns. That variable's first located address is taken to be
//! on the `Ready` path alone, as rustc lays the code out, and says where the value is: there
//! the poll ended, and its outcome is read. (Where that is wrong, the future is left
//! `Returned` at the caller's return, which user space counts as `ready_not_bound`.)

use gimli::{AttributeValue, EntriesTreeNode, UnitOffset, constants};

use super::{DebugUnits, Parameter, R, Site, SourceInfo, types::Shape, types::TypeId};

/// What may hold a `Ready` value in a scope: variables, and calls inlined beside the poll.
#[derive(Default)]
struct Holders {
    variables: Vec<Binding>,
    consumers: Vec<Binding>,
}

/// The variable a caller binds an inlined poll's `Ready` value to.
#[derive(Clone, Debug)]
pub struct Binding {
    pub name: String,
    unit: usize,
    entry: UnitOffset,
    /// Where its locations start, lowest first: the candidate places of the poll's end.
    pub starts: Vec<u64>,
}

impl SourceInfo {
    /// The variable that `caller`, the function an inlined poll at `poll` runs in, binds the
    /// poll's `Ready` value to: the nearest one of the future's output type in the scopes
    /// around the poll (not inside it, nor in other calls inlined beside it) that the debug
    /// info locates somewhere.
    pub fn ready_binding(
        &self,
        caller: &Site,
        poll: &Site,
        poll_type: Option<TypeId>,
    ) -> Result<Binding, String> {
        let output =
            self.output_of(poll_type).ok_or("the debug info has no `Ready` value type for its poll")?;
        let output_name = self.type_name(Some(output));
        let units = &self.units;
        let unit = &units.units[caller.unit];
        let mut tree = unit.entries_tree(Some(caller.entry)).map_err(|error| error.to_string())?;
        let mut path = Vec::new();
        let found = poll.unit == caller.unit
            && units
                .path_to(tree.root().map_err(|error| error.to_string())?, poll.entry, &mut path)
                .map_err(|error| error.to_string())?;
        if !found {
            return Err(format!("{:#x} is not inside {}", poll.address, caller.function));
        }
        // From the poll's enclosing scope outwards; each scope's own variables, and those of
        // its blocks, but not those of the scope the poll is in (already searched) or of
        // other inlined calls.
        for depth in (0..path.len() - 1).rev() {
            let mut tree = unit.entries_tree(Some(path[depth])).map_err(|error| error.to_string())?;
            let mut holders = Holders::default();
            let root = tree.root().map_err(|error| error.to_string())?;
            units
                .holders_of_type(caller.unit, root, path[depth + 1], &output_name, &mut holders)
                .map_err(|error| error.to_string())?;
            // No variable holds it: a call inlined beside the poll may take it as its first
            // argument (`handler(args).await.into_response()`), from its first instruction.
            let mut bindings =
                if holders.variables.is_empty() { holders.consumers } else { holders.variables };
            match bindings.len() {
                0 => continue,
                1 => return Ok(bindings.remove(0)),
                _ => {
                    let names: Vec<String> =
                        bindings.iter().map(|binding| format!("`{}`", binding.name)).collect();
                    return Err(format!(
                        "its caller binds `{output_name}` to {} around the poll, and pool-obs cannot tell \
                         which is the poll's",
                        names.join(" and ")
                    ));
                }
            }
        }
        Err(format!(
            "{} never binds its `Ready` value (`{output_name}`) to a variable the debug info locates",
            caller.function
        ))
    }

    /// The binding, located at `site`'s address (a site of the caller).
    pub fn bound_at(&self, site: &Site, binding: &Binding) -> Result<Parameter, String> {
        let unit = &self.units.units[binding.unit];
        let entry = unit.entry(binding.entry).map_err(|error| error.to_string())?;
        self.units.located(site, &entry, binding.name.clone()).map_err(|error| error.to_string())
    }

    /// The name of the `T` of a `Poll<T>`: the type of a future's `Ready` value.
    pub fn output_type_name(&self, poll_type: Option<TypeId>) -> Option<String> {
        self.output_of(poll_type).map(|output| self.type_name(Some(output)))
    }

    /// The `T` of a `Poll<T>`.
    fn output_of(&self, poll_type: Option<TypeId>) -> Option<TypeId> {
        let poll = self.units.type_of(poll_type?).ok()?;
        let Shape::Struct { variants: Some(variants), .. } = &poll.shape else { return None };
        variants.variants.iter().find_map(|variant| {
            let data = self.units.type_of(variant.member.ty).ok()?;
            match &data.shape {
                Shape::Struct { members, .. } if data.name == "Ready" => {
                    members.first().map(|member| member.ty)
                }
                _ => None,
            }
        })
    }
}

impl DebugUnits {
    /// The entries from `node` down to `target`, pushed onto `path`; whether it was found.
    fn path_to(
        &self,
        node: EntriesTreeNode<R>,
        target: UnitOffset,
        path: &mut Vec<UnitOffset>,
    ) -> gimli::Result<bool> {
        path.push(node.entry().offset());
        if node.entry().offset() == target {
            return Ok(true);
        }
        let mut children = node.children();
        while let Some(child) = children.next()? {
            if self.path_to(child, target, path)? {
                return Ok(true);
            }
        }
        path.pop();
        Ok(false)
    }

    /// What in `node` and its lexical blocks (leaving out the child `skip`) may hold a value of
    /// type `output`: located variables of that type, and inlined calls whose first parameter
    /// is of that type and located (the value is that parameter, from the call's first
    /// instruction).
    fn holders_of_type(
        &self,
        unit: usize,
        node: EntriesTreeNode<R>,
        skip: UnitOffset,
        output: &str,
        found: &mut Holders,
    ) -> gimli::Result<()> {
        let of_output = |entry: &gimli::DebuggingInformationEntry<R>| {
            let ty = self.inherited_type(unit, entry);
            ty.and_then(|ty| self.type_of(ty).ok()).is_some_and(|ty| ty.name == output)
        };
        let mut children = node.children();
        while let Some(child) = children.next()? {
            let entry = child.entry().clone();
            if entry.offset() == skip {
                continue;
            }
            match entry.tag() {
                constants::DW_TAG_lexical_block => self.holders_of_type(unit, child, skip, output, found)?,
                constants::DW_TAG_variable if of_output(&entry) => {
                    let starts = self.location_starts(unit, &entry)?;
                    if !starts.is_empty() {
                        let name = self.name_of(unit, &entry).unwrap_or_else(|| "_".to_string());
                        found.variables.push(Binding { name, unit, entry: entry.offset(), starts });
                    }
                }
                constants::DW_TAG_inlined_subroutine => {
                    let Some(start) = self.entry_address(&self.units[unit], &entry)? else { continue };
                    let mut parameters = child.children();
                    let Some(first) = parameters.next()? else { continue };
                    let parameter = first.entry();
                    if parameter.tag() != constants::DW_TAG_formal_parameter
                        || parameter.attr_value(constants::DW_AT_location)?.is_none()
                        || !of_output(parameter)
                    {
                        continue;
                    }
                    let function = self.name_of(unit, &entry).map(|name| short_function(&name));
                    let parameter_name = self.name_of(unit, parameter).unwrap_or_else(|| "_".to_string());
                    let name = format!("{parameter_name}` of `{}", function.unwrap_or_default());
                    found.consumers.push(Binding {
                        name,
                        unit,
                        entry: parameter.offset(),
                        starts: vec![start],
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Where a variable's location list entries start, lowest first.
    fn location_starts(
        &self,
        unit: usize,
        entry: &gimli::DebuggingInformationEntry<R>,
    ) -> gimli::Result<Vec<u64>> {
        let dwarf_unit = &self.units[unit];
        let Some(value) = entry.attr_value(constants::DW_AT_location)? else { return Ok(Vec::new()) };
        if matches!(value, AttributeValue::Exprloc(_)) {
            return Ok(Vec::new());
        }
        let Some(offset) = self.dwarf.attr_locations_offset(dwarf_unit, value)? else {
            return Ok(Vec::new());
        };
        let mut list = self.dwarf.locations(dwarf_unit, offset)?;
        let mut starts = Vec::new();
        while let Some(item) = list.next()? {
            if item.range.begin < item.range.end {
                starts.push(item.range.begin);
            }
        }
        starts.sort_unstable();
        starts.dedup();
        Ok(starts)
    }
}

/// A function's name for people: its last path segment, without generic arguments
/// (`<Result<T,E> as IntoResponse>::into_response<Json<Reply>, AppError>`: `into_response`).
fn short_function(name: &str) -> String {
    let demangled = format!("{:#}", rustc_demangle::demangle(name));
    let mut depth = 0usize;
    let mut last = 0;
    let bytes = demangled.as_bytes();
    for (index, byte) in bytes.iter().enumerate() {
        match byte {
            b'<' => depth += 1,
            b'>' => depth = depth.saturating_sub(1),
            b':' if depth == 0 && bytes.get(index + 1) == Some(&b':') => last = index + 2,
            _ => {}
        }
    }
    let segment = &demangled[last.min(demangled.len())..];
    segment.split('<').next().filter(|plain| !plain.is_empty()).unwrap_or(segment).to_string()
}
