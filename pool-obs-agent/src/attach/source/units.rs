//! Walking the DWARF: where each function runs (its out-of-line copies and inlined instances),
//! the names and types of the entries there, and the parameters, captures and variables in
//! scope at a site.

use std::collections::HashMap;

use gimli::{
    AttributeValue, DebuggingInformationEntry, Reader as _, Unit, UnitOffset, UnitSectionOffset, constants,
};

use super::{
    DebugUnits, Name, Parameter, Placement, R, Site,
    location::{self, Location, Origin},
    types::TypeId,
};

impl DebugUnits {
    pub(super) fn placements(&self) -> gimli::Result<(Vec<Name>, Vec<Placement>)> {
        let mut names: Vec<Name> = Vec::new();
        let mut by_mangled: HashMap<String, u32> = HashMap::new();
        // By the entry that names the function (its abstract origin or specification).
        let mut named: HashMap<(usize, UnitOffset), Option<u32>> = HashMap::new();
        let mut placements = Vec::new();
        for (index, unit) in self.units.iter().enumerate() {
            // The frame base of the function each entry is in, by depth.
            let mut frames: Vec<(isize, Option<Origin>)> = Vec::new();
            let mut depth = 0isize;
            let mut entries = unit.entries();
            while let Some((delta, entry)) = entries.next_dfs()? {
                depth += delta;
                while frames.last().is_some_and(|(at, _)| *at >= depth) {
                    frames.pop();
                }
                let tag = entry.tag();
                if tag != constants::DW_TAG_subprogram && tag != constants::DW_TAG_inlined_subroutine {
                    continue;
                }
                let inlined = tag == constants::DW_TAG_inlined_subroutine;
                let concrete = inlined
                    || (entry.attr(constants::DW_AT_inline)?.is_none()
                        && entry.attr(constants::DW_AT_declaration)?.is_none());
                if !concrete {
                    continue;
                }
                let Some(address) = self.entry_address(unit, entry)?.filter(|address| *address > 1) else {
                    continue;
                };
                if !inlined {
                    let frame_base = match entry.attr_value(constants::DW_AT_frame_base)? {
                        Some(AttributeValue::Exprloc(expression)) => {
                            match location::evaluate(expression, unit.encoding(), None) {
                                Ok(Some(Location::Register { origin, .. })) => Some(origin),
                                _ => None,
                            }
                        }
                        _ => None,
                    };
                    frames.push((depth, frame_base));
                }
                let frame_base = frames.last().and_then(|(_, base)| *base);
                let origin = [constants::DW_AT_abstract_origin, constants::DW_AT_specification]
                    .into_iter()
                    .find_map(|link| entry.attr_value(link).ok().flatten())
                    .and_then(|link| self.resolve(index, link))
                    .unwrap_or((index, entry.offset()));
                let name = *named.entry(origin).or_insert_with(|| {
                    let mangled = self.linkage_name(index, entry)?;
                    if let Some(known) = by_mangled.get(&mangled) {
                        return Some(*known);
                    }
                    let function = format!("{:#}", rustc_demangle::demangle(&mangled));
                    // Closures and futures share one demangled name; DWARF numbers them.
                    let key = match (function.strip_suffix("{{closure}}"), self.name_of(index, entry)) {
                        (Some(path), Some(name))
                            if ["{closure#", "{async_fn#", "{async_block#"]
                                .iter()
                                .any(|kind| name.starts_with(kind)) =>
                        {
                            format!("{path}{name}")
                        }
                        _ => function.clone(),
                    };
                    // One instance of a generic function, by its generic arguments as DWARF
                    // names them (`lifecycle<…::load::{closure#0}::{closure_env#2}>`): a name
                    // that survives a rebuild, where the mangled name's hash does not.
                    let generic =
                        self.name_of(index, entry).filter(|name| name.contains('<')).and_then(|name| {
                            let (path, last) = function.rsplit_once("::")?;
                            name.starts_with(&format!("{last}<")).then(|| format!("{path}::{name}"))
                        });
                    let next = names.len() as u32;
                    by_mangled.insert(mangled.clone(), next);
                    names.push(Name { function, key, mangled, generic });
                    Some(next)
                });
                let Some(name) = name else { continue };
                placements.push(Placement {
                    name,
                    address,
                    inlined,
                    unit: index as u32,
                    entry: entry.offset(),
                    frame_base,
                });
            }
        }
        Ok((names, placements))
    }

    /// Where a function or inlined instance starts: its entry pc, else its lowest address
    /// (`low_pc`, or the first of its ranges, as gdb takes it).
    pub(super) fn entry_address(
        &self,
        unit: &Unit<R>,
        entry: &DebuggingInformationEntry<R>,
    ) -> gimli::Result<Option<u64>> {
        for attribute in [constants::DW_AT_entry_pc, constants::DW_AT_low_pc] {
            if let Some(value) = entry.attr_value(attribute)? {
                return self.dwarf.attr_address(unit, value);
            }
        }
        let Some(ranges) = self.dwarf.die_ranges(unit, entry).ok() else { return Ok(None) };
        let mut ranges = ranges;
        Ok(ranges.next()?.map(|range| range.begin))
    }

    pub(super) fn call_site(&self, unit: &Unit<R>, entry: &DebuggingInformationEntry<R>) -> Option<String> {
        let line = entry.attr_value(constants::DW_AT_call_line).ok()??.udata_value()?;
        let file = match entry.attr_value(constants::DW_AT_call_file).ok()?? {
            AttributeValue::FileIndex(index) => index,
            _ => return Some(format!("line {line}")),
        };
        let program = unit.line_program.as_ref()?;
        let header = program.header();
        let file = header.file(file)?;
        let name = self.dwarf.attr_string(unit, file.path_name()).ok()?;
        let name = name.to_string_lossy().ok()?.into_owned();
        let short = name.rsplit('/').next().unwrap_or(&name).to_string();
        Some(format!("{short}:{line}"))
    }

    /// The mangled name of the function an entry is or instantiates, through its abstract
    /// origin and specification.
    pub(super) fn linkage_name(&self, unit: usize, entry: &DebuggingInformationEntry<R>) -> Option<String> {
        let owner = self.owner_of(unit, entry, constants::DW_AT_linkage_name)?;
        let value = owner.1.attr_value(constants::DW_AT_linkage_name).ok()??;
        let text = self.dwarf.attr_string(&self.units[owner.0], value).ok()?;
        Some(text.to_string_lossy().ok()?.into_owned())
    }

    /// The entry that carries `attribute` for `entry`: itself, or what it completes.
    pub(super) fn owner_of<'a>(
        &'a self,
        unit: usize,
        entry: &DebuggingInformationEntry<R>,
        attribute: gimli::DwAt,
    ) -> Option<(usize, DebuggingInformationEntry<'a, 'a, R>)> {
        let mut current = (unit, self.units[unit].entry(entry.offset()).ok()?);
        for _ in 0..8 {
            if current.1.attr(attribute).ok()?.is_some() {
                return Some(current);
            }
            let link = [constants::DW_AT_abstract_origin, constants::DW_AT_specification]
                .into_iter()
                .find_map(|link| current.1.attr_value(link).ok().flatten())?;
            let (next_unit, offset) = self.resolve(current.0, link)?;
            current = (next_unit, self.units[next_unit].entry(offset).ok()?);
        }
        None
    }

    /// A reference attribute, as (unit, offset).
    pub(super) fn resolve(&self, unit: usize, value: AttributeValue<R>) -> Option<(usize, UnitOffset)> {
        match value {
            AttributeValue::UnitRef(offset) => Some((unit, offset)),
            AttributeValue::DebugInfoRef(offset) => {
                let index = self.starts.partition_point(|start| start.0 <= offset.0).checked_sub(1)?;
                let unit_offset =
                    UnitSectionOffset::DebugInfoOffset(offset).to_unit_offset(&self.units[index])?;
                Some((index, unit_offset))
            }
            _ => None,
        }
    }

    pub(super) fn name_of(&self, unit: usize, entry: &DebuggingInformationEntry<R>) -> Option<String> {
        let (owner_unit, owner) = self.owner_of(unit, entry, constants::DW_AT_name)?;
        let value = owner.attr_value(constants::DW_AT_name).ok()??;
        let text = self.dwarf.attr_string(&self.units[owner_unit], value).ok()?;
        Some(text.to_string_lossy().ok()?.into_owned())
    }

    /// The type of an entry, through its abstract origin.
    pub(super) fn inherited_type(&self, unit: usize, entry: &DebuggingInformationEntry<R>) -> Option<TypeId> {
        let (owner_unit, owner) = self.owner_of(unit, entry, constants::DW_AT_type)?;
        self.type_attr(owner_unit, &owner)
    }

    pub(super) fn type_attr(&self, unit: usize, entry: &DebuggingInformationEntry<R>) -> Option<TypeId> {
        let value = entry.attr_value(constants::DW_AT_type).ok()??;
        let (unit, offset) = self.resolve(unit, value)?;
        Some(TypeId { unit, offset })
    }

    /// The site's parameters, in the function's order: each located at the site's address, or
    /// optimised out where the site's entry does not list it (its abstract entry names them
    /// all).
    pub(super) fn parameters(&self, site: &Site) -> gimli::Result<Vec<Parameter>> {
        let mut listed = Vec::new();
        self.each_parameter(site.unit, site.entry, |entry| {
            let name = self.name_of(site.unit, entry).unwrap_or_else(|| "_".to_string());
            listed.push(self.located(site, entry, name)?);
            Ok(())
        })?;
        let unit = &self.units[site.unit];
        let entry = unit.entry(site.entry)?;
        // A declaration (DW_AT_specification) lists only the parameters' types.
        let Some((origin_unit, origin)) = entry
            .attr_value(constants::DW_AT_abstract_origin)?
            .and_then(|link| self.resolve(site.unit, link))
        else {
            return Ok(listed);
        };
        let mut ordered = Vec::new();
        self.each_parameter(origin_unit, origin, |entry| {
            let Some(name) = self.name_of(origin_unit, entry) else { return Ok(()) };
            match listed.iter().position(|parameter| parameter.name == name) {
                Some(index) => ordered.push(listed.remove(index)),
                None => ordered.push(Parameter {
                    name,
                    ty: self.type_attr(origin_unit, entry),
                    location: Err("optimised out".to_string()),
                    whole_scope: false,
                }),
            }
            Ok(())
        })?;
        ordered.extend(listed);
        Ok(ordered)
    }

    /// The variables a closure captured, which rustc describes as variables of the closure's
    /// body, each located at the site's address.
    pub(super) fn captures(&self, site: &Site) -> gimli::Result<Vec<Parameter>> {
        if !site.function.ends_with("{{closure}}") {
            return Ok(Vec::new());
        }
        self.variables(site)
    }

    pub(super) fn variables(&self, site: &Site) -> gimli::Result<Vec<Parameter>> {
        let mut captures = Vec::new();
        self.each_child(site.unit, site.entry, constants::DW_TAG_variable, |entry| {
            if let Some(name) = self.name_of(site.unit, entry) {
                captures.push(self.located(site, entry, name)?);
            }
            Ok(())
        })?;
        Ok(captures)
    }

    /// A parameter or variable of the site's function, located at the site's address.
    pub(super) fn located(
        &self,
        site: &Site,
        entry: &DebuggingInformationEntry<R>,
        name: String,
    ) -> gimli::Result<Parameter> {
        let ty = self.inherited_type(site.unit, entry);
        let whole_scope =
            matches!(entry.attr_value(constants::DW_AT_location)?, Some(AttributeValue::Exprloc(_)));
        let location = self.location_at(site, entry)?;
        Ok(Parameter { name, ty, location, whole_scope })
    }

    pub(super) fn each_parameter(
        &self,
        unit: usize,
        offset: UnitOffset,
        visit: impl FnMut(&DebuggingInformationEntry<R>) -> gimli::Result<()>,
    ) -> gimli::Result<()> {
        self.each_child(unit, offset, constants::DW_TAG_formal_parameter, visit)
    }

    pub(super) fn each_child(
        &self,
        unit: usize,
        offset: UnitOffset,
        tag: gimli::DwTag,
        mut visit: impl FnMut(&DebuggingInformationEntry<R>) -> gimli::Result<()>,
    ) -> gimli::Result<()> {
        let mut tree = self.units[unit].entries_tree(Some(offset))?;
        let root = tree.root()?;
        let mut children = root.children();
        while let Some(child) = children.next()? {
            if child.entry().tag() == tag {
                visit(child.entry())?;
            }
        }
        Ok(())
    }

    /// Where the parameter `entry` is at the site's address.
    pub(super) fn location_at(
        &self,
        site: &Site,
        entry: &DebuggingInformationEntry<R>,
    ) -> gimli::Result<Result<Location, String>> {
        let unit = &self.units[site.unit];
        let optimised_out = || Err("optimised out".to_string());
        let expression = match entry.attr_value(constants::DW_AT_location)? {
            None => return Ok(optimised_out()),
            Some(AttributeValue::Exprloc(expression)) => expression,
            Some(value) => {
                let Some(offset) = self.dwarf.attr_locations_offset(unit, value)? else {
                    return Ok(optimised_out());
                };
                let mut list = self.dwarf.locations(unit, offset)?;
                let mut found = None;
                while let Some(item) = list.next()? {
                    if item.range.begin <= site.address && site.address < item.range.end {
                        found = Some(item.data);
                        break;
                    }
                }
                match found {
                    Some(expression) => expression,
                    None => return Ok(optimised_out()),
                }
            }
        };
        Ok(match location::evaluate(expression, unit.encoding(), site.frame_base) {
            Ok(Some(location)) => Ok(location),
            Ok(None) => optimised_out(),
            Err(unsupported) => Err(format!("computed by {unsupported}, which pool-obs does not evaluate,")),
        })
    }
}
