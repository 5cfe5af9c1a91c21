//! A manifest in the pool's own terms: `model = "job.model"`, `outcome` by variant names,
//! compiled against the binary's DWARF for every place the function runs: its out-of-line
//! copies and each instance the optimiser inlined into a caller, each with its own locations.
//! [`compile`] turns a value path into what the kernel programs evaluate; this module finds
//! the sites and their parameters.

pub mod abi;
mod bindings;
pub mod compile;
pub mod coroutine;
pub mod location;
pub mod place;
pub mod ready;
pub mod signature;
pub mod types;
mod units;
pub mod variants;

use std::{path::Path, sync::Arc};

use gimli::{DebugInfoOffset, Dwarf, EndianArcSlice, RunTimeEndian, Unit, UnitOffset};
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
    /// With its generic arguments, for an instance of a generic function.
    generic: Option<String>,
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
    #[error(
        "`{pattern}` matches {} functions, name one by {}: {}",
        .matches.len(),
        if *.generic { "its generic arguments or its mangled name" } else { "its mangled name" },
        .matches.join(", ")
    )]
    Ambiguous { pattern: String, matches: Vec<String>, generic: bool },
    #[error(
        "no function is `{pattern}` (was the binary rebuilt? the hash changes): `{function}` is {}",
        .instances.iter().map(|instance| format!("`{instance}`")).collect::<Vec<_>>().join(", ")
    )]
    Rebuilt { pattern: String, function: String, instances: Vec<String> },
    #[error(
        "{function} is neither an `async fn` nor a function whose body is one async block: name the \
         async fn the request runs in"
    )]
    NotAsync { function: String },
}

impl SiteError {
    pub fn class(&self) -> Class {
        match self {
            SiteError::NotFound { .. } | SiteError::Rebuilt { .. } => Class::FunctionNotFound,
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
                    || name.generic.as_deref().is_some_and(|generic| glob_match(pattern, generic))
            })
            .collect();
        match matching.as_slice() {
            [] => Err(self.nearest(pattern)),
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
                    .map(|name| match &name.generic {
                        Some(generic) => format!("`{generic}` (mangled {})", name.mangled),
                        None => format!("{} (mangled {})", name.key, name.mangled),
                    })
                    .collect();
                matches.sort();
                let generic = matching.iter().any(|index| self.names[*index as usize].generic.is_some());
                Err(SiteError::Ambiguous { pattern: pattern.to_string(), matches, generic })
            }
        }
    }

    /// Why nothing matches `pattern`: a mangled name whose hash no function has (the binary
    /// was rebuilt) names the functions that share its demangled name.
    fn nearest(&self, pattern: &str) -> SiteError {
        let demangled = rustc_demangle::try_demangle(pattern).map(|name| format!("{name:#}"));
        if let Ok(function) = demangled
            && function != pattern
        {
            let mut instances: Vec<String> = self
                .names
                .iter()
                .filter(|name| name.function == function)
                .map(|name| name.generic.clone().unwrap_or_else(|| name.mangled.clone()))
                .collect();
            instances.sort();
            instances.dedup();
            if !instances.is_empty() {
                return SiteError::Rebuilt { pattern: pattern.to_string(), function, instances };
            }
        }
        SiteError::NotFound { pattern: pattern.to_string() }
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
