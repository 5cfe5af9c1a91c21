//! Reads a binary's DWARF debug info: each function's parameters and their types, so that
//! `check` can say which parameter really sits in the register a manifest names, and the
//! functions that were inlined away.

use std::{borrow::Cow, collections::BTreeMap, path::Path};

use gimli::{
    AttributeValue, DebuggingInformationEntry, Dwarf, EndianSlice, RunTimeEndian, Unit, UnitOffset,
    UnitSectionOffset, constants,
};
use object::{Object, ObjectSection};

use super::symbols::glob_match;

type Reader<'a> = EndianSlice<'a, RunTimeEndian>;

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

pub struct DebugInfo {
    functions: Vec<FunctionInfo>,
    /// Demangled names of functions that were inlined, with how many inlined instances each has.
    inlined: BTreeMap<String, usize>,
}

impl DebugInfo {
    /// The binary's debug info, or `None` when it has none.
    pub fn read(path: &Path) -> Result<Option<Self>, String> {
        let data = std::fs::read(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        let file = object::File::parse(&*data).map_err(|error| error.to_string())?;
        if file.section_by_name(".debug_info").is_none() {
            return Ok(None);
        }
        let load = |id: gimli::SectionId| -> Result<Cow<[u8]>, gimli::Error> {
            Ok(file
                .section_by_name(id.name())
                .and_then(|section| section.uncompressed_data().ok())
                .unwrap_or_default())
        };
        let sections = gimli::DwarfSections::load(load).map_err(|error: gimli::Error| error.to_string())?;
        let dwarf = sections.borrow(|section| EndianSlice::new(section, RunTimeEndian::Little));
        let mut info = DebugInfo { functions: Vec::new(), inlined: BTreeMap::new() };
        info.collect(&dwarf).map_err(|error| format!("reading DWARF: {error}"))?;
        Ok(Some(info))
    }

    pub fn function_at(&self, address: u64) -> Option<&FunctionInfo> {
        self.functions.iter().find(|function| function.address == address)
    }

    /// A function matching `pattern` that the compiler inlined into its callers.
    pub fn inlined(&self, pattern: &str) -> Option<&str> {
        self.inlined.keys().find(|name| glob_match(pattern, name)).map(String::as_str)
    }

    /// Every function that was inlined, by demangled name, with its number of inlined instances.
    pub fn inlined_functions(&self) -> impl Iterator<Item = (&str, usize)> {
        self.inlined.iter().map(|(name, instances)| (name.as_str(), *instances))
    }

    fn collect(&mut self, dwarf: &Dwarf<Reader>) -> gimli::Result<()> {
        // Inlined instances name their function by the offset of its abstract entry, which can
        // be in another unit: both are joined once every unit is read.
        let mut abstract_names: BTreeMap<UnitSectionOffset, String> = BTreeMap::new();
        let mut instances: BTreeMap<UnitSectionOffset, usize> = BTreeMap::new();
        let mut headers = dwarf.units();
        while let Some(header) = headers.next()? {
            let unit = dwarf.unit(header)?;
            let mut entries = unit.entries();
            while let Some((_, entry)) = entries.next_dfs()? {
                if entry.tag() == constants::DW_TAG_inlined_subroutine {
                    let origin = match entry.attr_value(constants::DW_AT_abstract_origin)? {
                        Some(AttributeValue::UnitRef(offset)) => offset.to_unit_section_offset(&unit),
                        Some(AttributeValue::DebugInfoRef(offset)) => {
                            UnitSectionOffset::DebugInfoOffset(offset)
                        }
                        _ => continue,
                    };
                    *instances.entry(origin).or_default() += 1;
                    continue;
                }
                if entry.tag() != constants::DW_TAG_subprogram {
                    continue;
                }
                if entry.attr(constants::DW_AT_inline)?.is_some() {
                    if let Some(name) = linkage_name(dwarf, &unit, entry)? {
                        abstract_names.insert(entry.offset().to_unit_section_offset(&unit), name);
                    }
                    continue;
                }
                if let Some(AttributeValue::Addr(address)) = entry.attr_value(constants::DW_AT_low_pc)? {
                    let params = parameters(dwarf, &unit, entry.offset())?;
                    let returns = type_of(dwarf, &unit, entry)?;
                    self.functions.push(FunctionInfo { address, params, returns });
                }
            }
        }
        for (origin, name) in abstract_names {
            *self.inlined.entry(name).or_default() += instances.get(&origin).copied().unwrap_or(0);
        }
        Ok(())
    }
}

/// The entry an attribute is found on: the entry itself, or the abstract origin or
/// specification it completes.
fn origin<'a>(
    unit: &'a Unit<Reader>,
    entry: &DebuggingInformationEntry<'a, 'a, Reader<'a>>,
    attribute: gimli::DwAt,
) -> gimli::Result<Option<DebuggingInformationEntry<'a, 'a, Reader<'a>>>> {
    if entry.attr(attribute)?.is_some() {
        return Ok(Some(entry.clone()));
    }
    for link in [constants::DW_AT_abstract_origin, constants::DW_AT_specification] {
        if let Some(AttributeValue::UnitRef(offset)) = entry.attr_value(link)? {
            let linked = unit.entry(offset)?;
            return origin(unit, &linked, attribute);
        }
    }
    Ok(None)
}

fn string_attr(
    dwarf: &Dwarf<Reader>,
    unit: &Unit<Reader>,
    entry: &DebuggingInformationEntry<Reader>,
    attribute: gimli::DwAt,
) -> gimli::Result<Option<String>> {
    let Some(owner) = origin(unit, entry, attribute)? else { return Ok(None) };
    let Some(value) = owner.attr_value(attribute)? else { return Ok(None) };
    Ok(Some(dwarf.attr_string(unit, value)?.to_string_lossy().into_owned()))
}

fn linkage_name(
    dwarf: &Dwarf<Reader>,
    unit: &Unit<Reader>,
    entry: &DebuggingInformationEntry<Reader>,
) -> gimli::Result<Option<String>> {
    let mangled = string_attr(dwarf, unit, entry, constants::DW_AT_linkage_name)?;
    Ok(mangled.map(|mangled| format!("{:#}", rustc_demangle::demangle(&mangled))))
}

fn parameters(dwarf: &Dwarf<Reader>, unit: &Unit<Reader>, function: UnitOffset) -> gimli::Result<Vec<Param>> {
    let mut tree = unit.entries_tree(Some(function))?;
    let mut children = tree.root()?.children();
    let mut params = Vec::new();
    while let Some(child) = children.next()? {
        let entry = child.entry();
        if entry.tag() != constants::DW_TAG_formal_parameter {
            continue;
        }
        let name = string_attr(dwarf, unit, entry, constants::DW_AT_name)?.unwrap_or_else(|| "_".to_string());
        let ty = type_of(dwarf, unit, entry)?.unwrap_or(TypeInfo {
            name: "?".to_string(),
            size: 8,
            kind: TypeKind::Other,
        });
        params.push(Param { name, ty });
    }
    Ok(params)
}

fn type_of(
    dwarf: &Dwarf<Reader>,
    unit: &Unit<Reader>,
    entry: &DebuggingInformationEntry<Reader>,
) -> gimli::Result<Option<TypeInfo>> {
    let Some(owner) = origin(unit, entry, constants::DW_AT_type)? else { return Ok(None) };
    let Some(AttributeValue::UnitRef(offset)) = owner.attr_value(constants::DW_AT_type)? else {
        return Ok(None);
    };
    let ty = unit.entry(offset)?;
    let name = string_attr(dwarf, unit, &ty, constants::DW_AT_name)?.unwrap_or_else(|| "?".to_string());
    let size = ty.attr_value(constants::DW_AT_byte_size)?.and_then(|size| size.udata_value()).unwrap_or(8);
    let float =
        ty.attr_value(constants::DW_AT_encoding)? == Some(AttributeValue::Encoding(constants::DW_ATE_float));
    let kind = match ty.tag() {
        constants::DW_TAG_pointer_type | constants::DW_TAG_reference_type => TypeKind::Pointer,
        constants::DW_TAG_base_type if float => TypeKind::Float,
        _ => TypeKind::Other,
    };
    Ok(Some(TypeInfo { name, size, kind }))
}
