//! Finds the pool's functions in its ELF symbol table by demangled Rust path.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

use iced_x86::{FlowControl, Instruction};
use object::{
    Object, ObjectSection, ObjectSymbol, ObjectSymbolTable, RelocationFlags, RelocationTarget, SymbolKind,
    elf,
};

use super::{debug_file, machine_code::FunctionCode, source::SourceInfo};
use crate::error::{Class, Refusal};
use std::sync::Arc;

/// A function that can be probed.
#[derive(Clone, Debug)]
pub struct Symbol {
    /// Demangled path without the hash, e.g. `demo_pool::pool::Pool::serve`.
    pub name: String,
    pub mangled: String,
    pub address: u64,
    pub size: u64,
    /// Where the function's first instruction sits in the file: what uprobes attach to.
    pub file_offset: u64,
}

pub struct SymbolTable {
    /// The file of the binary's DWARF, if it has any (see [`super::debug_file`]).
    debug: Option<PathBuf>,
    /// The whole file, for the functions' machine code, and its DWARF when it holds it.
    data: Arc<[u8]>,
    /// The file read, to tell whether the DWARF is in it.
    path: PathBuf,
    symbols: Vec<Symbol>,
    /// What each slot of the global offset table holds once the loader filled it in: the
    /// target of a `jmp [rip+slot]`.
    got: HashMap<u64, Landing>,
}

/// Where a jump through the global offset table lands.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Landing {
    /// At an address of this binary.
    Address(u64),
    /// At a function of a shared library, by name.
    Import(String),
}

/// The last path segment of the functions that only free memory: a function whose last act is
/// to jump to one of them has written its result already.
const DEALLOCATORS: [&str; 7] =
    ["__rust_dealloc", "__rdl_dealloc", "__rg_dealloc", "free", "cfree", "mi_free", "_rjem_sdallocx"];

/// Why a binary's functions cannot be found as asked. Each says its exit code: [`Self::class`].
#[derive(Debug, thiserror::Error)]
pub enum SymbolError {
    #[error("cannot read {path}")]
    Unreadable {
        path: String,
        #[source]
        source: ReadError,
    },
    #[error("{path} has no symbol table (stripped): rebuild the pool without `strip` to profile it")]
    Stripped { path: String },
    /// A program with no Rust functions: not a pool pool-obs can profile.
    #[error("{path} is not a Rust program (no function has a Rust name): give the PID or binary of the pool")]
    NotRust { path: String },
    #[error("{}", not_found(pattern, nearest))]
    NotFound { pattern: String, nearest: Vec<String> },
    #[error("`{pattern}` matches {} functions, name one: {}", .matches.len(), .matches.join(", "))]
    Ambiguous { pattern: String, matches: Vec<String> },
}

/// What failed reading a binary.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Elf(#[from] object::Error),
}

fn not_found(pattern: &str, nearest: &[String]) -> String {
    if nearest.is_empty() {
        format!("no function matches `{pattern}`: list candidates with `pool-obs-agent symbols`")
    } else {
        format!("no function matches `{pattern}`; nearest: {}", nearest.join(", "))
    }
}

impl SymbolError {
    pub fn class(&self) -> Class {
        match self {
            SymbolError::Unreadable { .. } => Class::Process,
            SymbolError::Stripped { .. } | SymbolError::NotRust { .. } => Class::StrippedBinary,
            SymbolError::NotFound { .. } => Class::FunctionNotFound,
            SymbolError::Ambiguous { .. } => Class::AmbiguousFunction,
        }
    }
}

impl SymbolTable {
    /// Reads the executable at `path`; `shown` names it in errors (the pool's own path, and its
    /// PID when it runs).
    fn read(path: &Path, shown: &str) -> Result<Self, SymbolError> {
        let shown = shown.to_string();
        let unreadable = |source: ReadError| SymbolError::Unreadable { path: shown.clone(), source };
        let data: Arc<[u8]> = std::fs::read(path).map_err(|error| unreadable(error.into()))?.into();
        let file = object::File::parse(&*data).map_err(|error| unreadable(error.into()))?;
        if file.symbol_table().is_none() {
            return Err(if built_by_rustc(&file) {
                SymbolError::Stripped { path: shown }
            } else {
                SymbolError::NotRust { path: shown }
            });
        }
        let symbols: Vec<Symbol> = file
            .symbols()
            .filter(|symbol| symbol.kind() == SymbolKind::Text && symbol.is_definition() && symbol.size() > 0)
            .filter_map(|symbol| {
                let mangled = symbol.name().ok()?;
                let section = file.section_by_index(symbol.section_index()?).ok()?;
                let (section_offset, _) = section.file_range()?;
                let file_offset = symbol.address().checked_sub(section.address())? + section_offset;
                Some(Symbol {
                    name: format!("{:#}", rustc_demangle::demangle(mangled)),
                    mangled: mangled.to_string(),
                    address: symbol.address(),
                    size: symbol.size(),
                    file_offset,
                })
            })
            .collect();
        if !symbols.iter().any(|symbol| is_rust_mangled(&symbol.mangled)) {
            return Err(SymbolError::NotRust { path: shown });
        }
        let got = got_landings(&file);
        drop(file);
        Ok(Self { debug: None, data, path: path.to_path_buf(), symbols, got })
    }

    /// The function's machine code, decoded.
    pub fn code(&self, symbol: &Symbol) -> FunctionCode {
        let start = symbol.file_offset as usize;
        let bytes = self.data.get(start..start.saturating_add(symbol.size as usize)).unwrap_or_default();
        FunctionCode::decode(bytes, symbol.address)
    }

    /// `entry_sp = rsp + offset` at `address`, inside some function: see [`super::frames`].
    pub fn entry_sp_offset(&self, address: u64) -> Result<i32, String> {
        super::frames::entry_sp_offset(&self.data, address)
    }

    /// Whether `instruction`, an unconditional jump, lands in a function that only frees
    /// memory: directly, or through the global offset table.
    pub fn frees_only(&self, instruction: &Instruction) -> bool {
        let landing = match instruction.flow_control() {
            FlowControl::UnconditionalBranch => Some(Landing::Address(instruction.near_branch_target())),
            FlowControl::IndirectBranch if instruction.is_ip_rel_memory_operand() => {
                self.got.get(&instruction.ip_rel_memory_address()).cloned()
            }
            _ => None,
        };
        let name = match &landing {
            Some(Landing::Address(address)) => self.containing(*address).map(|symbol| symbol.name.as_str()),
            Some(Landing::Import(name)) => Some(name.split('@').next().unwrap_or(name)),
            None => None,
        };
        name.is_some_and(|name| DEALLOCATORS.contains(&last_segment(name)))
    }

    /// The function whose code holds `address`.
    pub fn containing(&self, address: u64) -> Option<&Symbol> {
        self.symbols.iter().find(|symbol| (symbol.address..symbol.address + symbol.size).contains(&address))
    }

    /// Whether some function has a symbol under this demangled name.
    pub fn has_function(&self, name: &str) -> bool {
        self.symbols.iter().any(|symbol| symbol.name == name)
    }

    /// Every function matching `pattern`, by name then address.
    pub fn matching(&self, pattern: &str) -> Vec<&Symbol> {
        let mut found: Vec<&Symbol> =
            self.symbols.iter().filter(|symbol| glob_match(pattern, &symbol.name)).collect();
        found.sort_by(|a, b| (&a.name, a.address).cmp(&(&b.name, b.address)));
        found
    }

    /// Like [`SymbolTable::resolve`], but a function that is missing because the compiler
    /// inlined it everywhere is reported as such when the binary's debug info shows it.
    pub fn locate(&self, pattern: &str) -> anyhow::Result<Vec<&Symbol>> {
        match self.resolve(pattern) {
            Err(SymbolError::NotFound { .. }) if let Some(name) = self.inlined(pattern) => Err(Refusal::new(
                Class::InlinedFunction,
                format!(
                    "`{name}` was inlined into its callers and has no symbol of its own: name its \
                     values by their source paths (`worker_id = \"worker.id\"`), which probes every \
                     inlined instance, or probe a function that calls it"
                ),
            )
            .into()),
            other => Ok(other?),
        }
    }

    /// The symbols of the binary at `path`, whose real path is `executable` (`path` may be
    /// `/proc/PID/exe`), and where its DWARF is (see [`debug_file::find`]); `shown` names it in
    /// errors.
    pub fn open(
        path: &Path,
        executable: &Path,
        shown: &str,
        debug_file: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let mut table = Self::read(path, shown)?;
        table.debug = debug_file::find(&table.data, path, executable, debug_file)
            .map_err(|error| Refusal::new(Class::Process, error))?;
        Ok(table)
    }

    /// The file of the binary's DWARF, if it has any.
    pub fn debug_info(&self) -> Option<&Path> {
        self.debug.as_deref()
    }

    /// The binary's DWARF, read once: the file already read when the DWARF is in the binary.
    pub fn read_debug_info(&self) -> Result<Option<SourceInfo>, String> {
        match self.debug.as_deref() {
            None => Ok(None),
            Some(path) if path == self.path => SourceInfo::from_data(self.data.clone()),
            Some(path) => SourceInfo::read(path),
        }
    }

    fn inlined(&self, pattern: &str) -> Option<String> {
        let debug = self.read_debug_info().ok()??;
        debug.inlined(pattern).map(str::to_string)
    }

    /// Every copy of the one function whose demangled name matches `pattern` (`*` matches any
    /// run of characters), or whose mangled name is `pattern`. Legacy demangling drops generic
    /// arguments, so instances of one generic function can share a demangled name, never a
    /// mangled one. A function can have several copies, one per codegen unit that uses it, each
    /// a symbol of the same mangled name at its own address: all are returned, since all run.
    /// Aliases at the same address count once.
    pub fn resolve(&self, pattern: &str) -> Result<Vec<&Symbol>, SymbolError> {
        let by_address: BTreeMap<u64, &Symbol> = self
            .symbols
            .iter()
            .filter(|symbol| symbol.mangled == pattern || glob_match(pattern, &symbol.name))
            .map(|symbol| (symbol.address, symbol))
            .collect();
        let functions: BTreeMap<&str, &str> =
            by_address.values().map(|symbol| (symbol.mangled.as_str(), symbol.name.as_str())).collect();
        match functions.len() {
            1 => Ok(by_address.into_values().collect()),
            0 => Err(SymbolError::NotFound { pattern: pattern.to_string(), nearest: self.nearest(pattern) }),
            _ => {
                // Where names repeat, only the mangled names tell the functions apart.
                let repeats = |name: &str| functions.values().filter(|other| **other == name).count() > 1;
                let mut matches: Vec<String> = functions
                    .iter()
                    .map(|(mangled, name)| match repeats(name) {
                        true => format!("{name} (mangled {mangled})"),
                        false => name.to_string(),
                    })
                    .collect();
                matches.sort();
                Err(SymbolError::Ambiguous { pattern: pattern.to_string(), matches })
            }
        }
    }

    /// The functions whose last path segment is closest to the pattern's (two edits at most),
    /// those in the pattern's own module first; five at most.
    fn nearest(&self, pattern: &str) -> Vec<String> {
        let wanted = last_segment(pattern).replace('*', "");
        let module = pattern.rsplit_once("::").map_or("", |(module, _)| module);
        let scored: Vec<(usize, bool, &str)> = self
            .symbols
            .iter()
            .map(|symbol| {
                let distance = edit_distance(&wanted, last_segment(&symbol.name));
                (distance, !symbol.name.starts_with(module), symbol.name.as_str())
            })
            .filter(|(distance, _, _)| *distance <= 2)
            .collect();
        let Some(closest) = scored.iter().map(|(distance, _, _)| *distance).min() else {
            return Vec::new();
        };
        let mut near: Vec<_> = scored.into_iter().filter(|(distance, _, _)| *distance == closest).collect();
        near.sort();
        near.dedup_by(|a, b| a.2 == b.2);
        near.into_iter().take(5).map(|(_, _, name)| name.to_string()).collect()
    }
}

/// The global offset table's slots, from the dynamic relocations: a slot of this binary's own
/// function holds its address plus the load bias (`R_X86_64_RELATIVE`), an imported one its
/// symbol (`R_X86_64_GLOB_DAT`, `R_X86_64_JUMP_SLOT`).
fn got_landings(file: &object::File) -> HashMap<u64, Landing> {
    let Some(relocations) = file.dynamic_relocations() else { return HashMap::new() };
    let imported = |index| {
        let symbol = file.dynamic_symbol_table()?.symbol_by_index(index).ok()?;
        Some(Landing::Import(symbol.name().ok()?.to_string()))
    };
    relocations
        .filter_map(|(slot, relocation)| {
            let RelocationFlags::Elf { r_type } = relocation.flags() else { return None };
            let landing = match (r_type, relocation.target()) {
                (elf::R_X86_64_RELATIVE, _) => Some(Landing::Address(relocation.addend() as u64)),
                (elf::R_X86_64_GLOB_DAT | elf::R_X86_64_JUMP_SLOT, RelocationTarget::Symbol(index)) => {
                    imported(index)
                }
                _ => None,
            }?;
            Some((slot, landing))
        })
        .collect()
}

/// Legacy (`_ZN…17h<hash>E`) or v0 (`_R…`) Rust mangling.
fn is_rust_mangled(symbol: &str) -> bool {
    symbol.starts_with("_R") || (symbol.starts_with("_ZN") && symbol.contains("17h"))
}

/// Whether the compiler left its name in `.comment`, as rustc does; `strip` keeps that section.
fn built_by_rustc(file: &object::File) -> bool {
    file.section_by_name(".comment")
        .and_then(|section| section.data().ok())
        .is_some_and(|comment| comment.windows(5).any(|window| window == b"rustc"))
}

fn last_segment(path: &str) -> &str {
    path.rsplit("::").next().unwrap_or(path)
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, a_char) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, b_char) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(a_char != *b_char);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// Whether `text` matches `pattern`, where `*` matches any run of characters.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let mut parts: Vec<&str> = parts.collect();
    let Some(last) = parts.pop() else {
        return rest.is_empty();
    };
    for part in parts {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::{edit_distance, glob_match};

    #[test]
    fn distances() {
        assert_eq!(edit_distance("serv", "serve"), 1);
        assert_eq!(edit_distance("spawn_wroker", "spawn_worker"), 2);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }

    #[test]
    fn globs() {
        assert!(glob_match("demo::Pool::serve", "demo::Pool::serve"));
        assert!(!glob_match("demo::Pool::serve", "demo::Pool::serve_all"));
        assert!(glob_match("*::Pool::serve", "demo::pool::Pool::serve"));
        assert!(glob_match("demo::*::serve", "demo::pool::Pool::serve"));
        assert!(!glob_match("demo::*::serve", "demo::pool::Pool::serve_all"));
        assert!(glob_match("*serve*", "x::serve::y"));
        assert!(glob_match("*", "anything"));
        assert!(!glob_match("a*b*c", "acb"));
    }
}
