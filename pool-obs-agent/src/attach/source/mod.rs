//! A manifest in the pool's own terms: `model = "job.model"`, `outcome` by variant names,
//! compiled against the binary's DWARF for every place the function runs: its out-of-line
//! copies and each instance the optimiser inlined into a caller, each with its own locations.
//! [`compile`] turns a value path into what the kernel programs evaluate; this module finds
//! the sites and their parameters.

pub mod abi;
pub mod compile;
pub mod coroutine;
pub mod location;
pub mod place;
pub mod ready;
pub mod signature;
pub mod types;
pub mod variants;

use std::{collections::HashMap, path::Path, sync::Arc};

use gimli::{
    AttributeValue, DebugInfoOffset, DebuggingInformationEntry, Dwarf, EndianArcSlice, Reader as _,
    RunTimeEndian, Unit, UnitOffset, UnitSectionOffset, constants,
};
use object::{Object, ObjectSection};

use super::symbols::glob_match;
use crate::error::Class;
use location::{Location, Origin};
use types::TypeId;

type R = EndianArcSlice<RunTimeEndian>;

/// Every unit of the binary's DWARF, parsed once.
pub struct DebugUnits {
    dwarf: Dwarf<R>,
    units: Vec<Unit<R>>,
    /// Where each unit starts in `.debug_info`, for references across units.
    starts: Vec<DebugInfoOffset>,
}

/// Where a function runs: a copy of its own, or an instance inlined into another function.
#[derive(Clone, Debug)]
pub struct Site {
    /// The function's demangled name, without the hash.
    pub function: String,
    /// The name that tells it apart: its demangled name, with a closure's number as DWARF
    /// gives it (`pool::main::{closure#1}`) where several closures share one.
    pub key: String,
    /// The site's first instruction, as a virtual address.
    pub address: u64,
    /// `None` for an out-of-line copy.
    pub inlined: Option<Inlined>,
    unit: usize,
    entry: UnitOffset,
    /// The register the enclosing function's frame base is in (`DW_OP_fbreg` counts from it).
    frame_base: Option<Origin>,
}

/// A function's names, once per function however many places it runs in.
struct Name {
    function: String,
    key: String,
    mangled: String,
}

/// Where a function runs, compactly: a binary has tens of thousands of these.
struct Placement {
    name: u32,
    address: u64,
    inlined: bool,
    unit: u32,
    entry: UnitOffset,
    frame_base: Option<Origin>,
}

impl Site {
    /// The same site, probed at another of its addresses.
    pub fn at(&self, address: u64) -> Site {
        Site { address, ..self.clone() }
    }
}

#[derive(Clone, Debug)]
pub struct Inlined {
    /// The source line of the call that was inlined, as `file:line`.
    pub call: String,
}

/// Why a pattern names no one function in the debug info.
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    #[error("the debug info has no function matching `{pattern}`")]
    NotFound { pattern: String },
    #[error("`{pattern}` matches {} functions, name one by its mangled name: {}", .matches.len(), .matches.join(", "))]
    Ambiguous { pattern: String, matches: Vec<String> },
    #[error(
        "{function} is neither an `async fn` nor a function whose body is one async block: name the \
         async fn the request runs in"
    )]
    NotAsync { function: String },
}

impl SiteError {
    pub fn class(&self) -> Class {
        match self {
            SiteError::NotFound { .. } => Class::FunctionNotFound,
            SiteError::Ambiguous { .. } => Class::AmbiguousFunction,
            SiteError::NotAsync { .. } => Class::SourceValue,
        }
    }
}

/// A parameter of the function at one site.
#[derive(Clone, Debug)]
pub struct Parameter {
    pub name: String,
    pub ty: Option<TypeId>,
    /// Where it is at the site's address; `Err` says why it is not available there.
    pub location: Result<Location, String>,
    /// The location is one for the whole function, not a list by address: for a stack slot,
    /// only true once the slot is written.
    pub whole_scope: bool,
}

pub struct SourceInfo {
    units: DebugUnits,
    names: Vec<Name>,
    placements: Vec<Placement>,
}

impl SourceInfo {
    /// The binary's debug info, or `None` when it has none.
    pub fn read(path: &Path) -> Result<Option<Self>, String> {
        let data = std::fs::read(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        Self::from_data(data.into())
    }

    /// The debug info in a file already read.
    pub fn from_data(data: Arc<[u8]>) -> Result<Option<Self>, String> {
        let file = object::File::parse(&*data).map_err(|error| error.to_string())?;
        if file.section_by_name(".debug_info").is_none() {
            return Ok(None);
        }
        let whole = EndianArcSlice::new(data.clone(), RunTimeEndian::Little);
        // Sections are ranges of the one copy of the file; only a compressed one is copied.
        let load = |id: gimli::SectionId| -> Result<R, gimli::Error> {
            let Some(section) = file.section_by_name(id.name()) else {
                return Ok(EndianArcSlice::new(Arc::from(&[][..]), RunTimeEndian::Little));
            };
            match (section.compressed_file_range(), section.file_range()) {
                (Ok(range), Some((offset, size))) if range.format == object::CompressionFormat::None => {
                    Ok(whole.range(offset as usize..(offset + size) as usize))
                }
                _ => {
                    let bytes = section.uncompressed_data().unwrap_or_default();
                    Ok(EndianArcSlice::new(Arc::from(&*bytes), RunTimeEndian::Little))
                }
            }
        };
        let dwarf = Dwarf::load(load).map_err(|error| format!("reading DWARF: {error}"))?;
        let mut units = Vec::new();
        let mut starts = Vec::new();
        let mut headers = dwarf.units();
        while let Some(header) = headers.next().map_err(|error| error.to_string())? {
            let Some(start) = header.offset().as_debug_info_offset() else { continue };
            starts.push(start);
            units.push(dwarf.unit(header).map_err(|error| error.to_string())?);
        }
        let units = DebugUnits { dwarf, units, starts };
        let (names, placements) = units.placements().map_err(|error| format!("reading DWARF: {error}"))?;
        Ok(Some(SourceInfo { units, names, placements }))
    }

    /// A placement as a site, with its names and, when inlined, its call's source line.
    fn site(&self, placement: &Placement) -> Site {
        let name = &self.names[placement.name as usize];
        let unit = placement.unit as usize;
        let inlined = placement.inlined.then(|| Inlined {
            call: self
                .units
                .units
                .get(unit)
                .and_then(|dwarf_unit| {
                    let entry = dwarf_unit.entry(placement.entry).ok()?;
                    self.units.call_site(dwarf_unit, &entry)
                })
                .unwrap_or_else(|| "?".to_string()),
        });
        Site {
            function: name.function.clone(),
            key: name.key.clone(),
            address: placement.address,
            inlined,
            unit,
            entry: placement.entry,
            frame_base: placement.frame_base,
        }
    }

    /// Every site of the one function that `pattern` names (a demangled name, `*` matching any
    /// run of characters, or a mangled name), out-of-line copies first.
    pub fn sites(&self, pattern: &str) -> Result<Vec<Site>, SiteError> {
        let matching: Vec<u32> = (0..self.names.len() as u32)
            .filter(|index| {
                let name = &self.names[*index as usize];
                name.mangled == pattern
                    || glob_match(pattern, &name.function)
                    || glob_match(pattern, &name.key)
            })
            .collect();
        match matching.as_slice() {
            [] => Err(SiteError::NotFound { pattern: pattern.to_string() }),
            [name] => {
                let mut sites: Vec<Site> = self
                    .placements
                    .iter()
                    .filter(|placement| placement.name == *name)
                    .map(|placement| self.site(placement))
                    .collect();
                sites.sort_by_key(|site| (site.inlined.is_some(), site.address));
                sites.dedup_by_key(|site| site.address);
                Ok(sites)
            }
            _ => {
                let mut matches: Vec<String> = matching
                    .iter()
                    .map(|index| &self.names[*index as usize])
                    .map(|name| format!("{} (mangled {})", name.key, name.mangled))
                    .collect();
                matches.sort();
                Err(SiteError::Ambiguous { pattern: pattern.to_string(), matches })
            }
        }
    }

    /// Every site of every function whose demangled name is `function`.
    pub fn sites_named(&self, function: &str) -> Vec<Site> {
        let mut sites: Vec<Site> = self
            .placements
            .iter()
            .filter(|placement| self.names[placement.name as usize].function == function)
            .map(|placement| self.site(placement))
            .collect();
        sites.sort_by_key(|site| (site.inlined.is_some(), site.address));
        sites.dedup_by_key(|site| site.address);
        sites
    }

    /// The out-of-line function that starts at `address`, as a site.
    pub fn function_site(&self, address: u64) -> Option<Site> {
        self.placements
            .iter()
            .find(|placement| !placement.inlined && placement.address == address)
            .map(|placement| self.site(placement))
    }

    /// The site's parameters, each located at the site's address.
    pub fn parameters(&self, site: &Site) -> Result<Vec<Parameter>, String> {
        self.units.parameters(site).map_err(|error| error.to_string())
    }

    /// What a closure captured, located at the site's address (nothing for other functions).
    pub fn captures(&self, site: &Site) -> Result<Vec<Parameter>, String> {
        self.units.captures(site).map_err(|error| error.to_string())
    }

    /// The variables declared directly in the site's function (not in its blocks), located at
    /// the site's address.
    pub fn variables(&self, site: &Site) -> Result<Vec<Parameter>, String> {
        self.units.variables(site).map_err(|error| error.to_string())
    }

    /// The address ranges an inlined instance's code covers (its inlined calls' included).
    pub fn instance_ranges(&self, site: &Site) -> Vec<(u64, u64)> {
        let unit = &self.units.units[site.unit];
        let Ok(entry) = unit.entry(site.entry) else { return Vec::new() };
        let Ok(mut ranges) = self.units.dwarf.die_ranges(unit, &entry) else { return Vec::new() };
        let mut covered = Vec::new();
        while let Ok(Some(range)) = ranges.next() {
            covered.push((range.begin, range.end));
        }
        covered
    }

    /// The function's return type, if it returns a value.
    pub fn return_type(&self, site: &Site) -> Option<TypeId> {
        let unit = &self.units.units[site.unit];
        let entry = unit.entry(site.entry).ok()?;
        self.units.inherited_type(site.unit, &entry)
    }

    /// A type's name as the debug info has it, for people.
    pub fn type_name(&self, ty: Option<TypeId>) -> String {
        ty.and_then(|ty| self.units.type_of(ty).ok()).map_or_else(|| "?".to_string(), |ty| ty.name)
    }

    pub fn units(&self) -> &DebugUnits {
        &self.units
    }
}

impl DebugUnits {
    fn placements(&self) -> gimli::Result<(Vec<Name>, Vec<Placement>)> {
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
                    let next = names.len() as u32;
                    by_mangled.insert(mangled.clone(), next);
                    names.push(Name { function, key, mangled });
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
    fn entry_address(
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

    fn call_site(&self, unit: &Unit<R>, entry: &DebuggingInformationEntry<R>) -> Option<String> {
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
    fn linkage_name(&self, unit: usize, entry: &DebuggingInformationEntry<R>) -> Option<String> {
        let owner = self.owner_of(unit, entry, constants::DW_AT_linkage_name)?;
        let value = owner.1.attr_value(constants::DW_AT_linkage_name).ok()??;
        let text = self.dwarf.attr_string(&self.units[owner.0], value).ok()?;
        Some(text.to_string_lossy().ok()?.into_owned())
    }

    /// The entry that carries `attribute` for `entry`: itself, or what it completes.
    fn owner_of<'a>(
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
    fn resolve(&self, unit: usize, value: AttributeValue<R>) -> Option<(usize, UnitOffset)> {
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

    fn name_of(&self, unit: usize, entry: &DebuggingInformationEntry<R>) -> Option<String> {
        let (owner_unit, owner) = self.owner_of(unit, entry, constants::DW_AT_name)?;
        let value = owner.attr_value(constants::DW_AT_name).ok()??;
        let text = self.dwarf.attr_string(&self.units[owner_unit], value).ok()?;
        Some(text.to_string_lossy().ok()?.into_owned())
    }

    /// The type of an entry, through its abstract origin.
    fn inherited_type(&self, unit: usize, entry: &DebuggingInformationEntry<R>) -> Option<TypeId> {
        let (owner_unit, owner) = self.owner_of(unit, entry, constants::DW_AT_type)?;
        self.type_attr(owner_unit, &owner)
    }

    fn type_attr(&self, unit: usize, entry: &DebuggingInformationEntry<R>) -> Option<TypeId> {
        let value = entry.attr_value(constants::DW_AT_type).ok()??;
        let (unit, offset) = self.resolve(unit, value)?;
        Some(TypeId { unit, offset })
    }

    /// The site's parameters, in the function's order: each located at the site's address, or
    /// optimised out where the site's entry does not list it (its abstract entry names them
    /// all).
    fn parameters(&self, site: &Site) -> gimli::Result<Vec<Parameter>> {
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
    fn captures(&self, site: &Site) -> gimli::Result<Vec<Parameter>> {
        if !site.function.ends_with("{{closure}}") {
            return Ok(Vec::new());
        }
        self.variables(site)
    }

    fn variables(&self, site: &Site) -> gimli::Result<Vec<Parameter>> {
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
    fn located(
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

    fn each_parameter(
        &self,
        unit: usize,
        offset: UnitOffset,
        visit: impl FnMut(&DebuggingInformationEntry<R>) -> gimli::Result<()>,
    ) -> gimli::Result<()> {
        self.each_child(unit, offset, constants::DW_TAG_formal_parameter, visit)
    }

    fn each_child(
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
    fn location_at(
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
