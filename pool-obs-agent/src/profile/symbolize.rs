//! Addresses to the functions a person reads: from DWARF where the binary has it, with the
//! functions inlined at the address (a release build inlines most of a pool's own code, and a
//! profile that named only the outer function would hide the hot one); else from the symbol
//! table. Names are demangled, without their hashes.

use std::{borrow::Cow, sync::Arc};

use gimli::{Dwarf, EndianArcSlice, LittleEndian, SectionId};
use object::{Object, ObjectSection, ObjectSymbol};

type Reader = EndianArcSlice<LittleEndian>;

/// One function at an address, and where in it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Frame {
    pub function: String,
    pub file: String,
    pub line: u32,
}

/// What an object file says of its addresses.
pub struct Symbols {
    dwarf: Option<addr2line::Context<Reader>>,
    /// Function symbols by address, sorted, with their sizes and mangled names (demangled
    /// when looked up: a binary has tens of thousands, a profile names a few hundred).
    table: Vec<(u64, u64, String)>,
}

impl Symbols {
    pub fn load(data: &[u8]) -> Self {
        let Ok(file) = object::File::parse(data) else {
            return Self { dwarf: None, table: Vec::new() };
        };
        let mut table: Vec<(u64, u64, String)> = file
            .symbols()
            .chain(file.dynamic_symbols())
            .filter(|symbol| symbol.kind() == object::SymbolKind::Text && symbol.address() != 0)
            .filter_map(|symbol| Some((symbol.address(), symbol.size(), symbol.name().ok()?.to_string())))
            .collect();
        table.sort_by_key(|(address, _, _)| *address);
        table.dedup_by_key(|(address, _, _)| *address);
        let has_dwarf = file.section_by_name(".debug_info").is_some();
        let dwarf = has_dwarf.then(|| dwarf_context(&file)).flatten();
        Self { dwarf, table }
    }

    /// The functions at `address` (an object address), innermost (inlined) first.
    pub fn frames(&self, address: u64) -> Vec<Frame> {
        let mut frames = Vec::new();
        if let Some(context) = &self.dwarf
            && let Ok(mut found) = context.find_frames(address).skip_all_loads()
        {
            while let Ok(Some(frame)) = found.next() {
                let Some(function) = frame.function.as_ref().and_then(|function| function.raw_name().ok())
                else {
                    continue;
                };
                let location = frame.location.as_ref();
                frames.push(Frame {
                    function: demangled(&function),
                    file: location.and_then(|location| location.file).unwrap_or_default().to_string(),
                    line: location.and_then(|location| location.line).unwrap_or(0),
                });
            }
        }
        if frames.is_empty()
            && let Some(function) = self.symbol(address)
        {
            frames.push(Frame { function: demangled(function), file: String::new(), line: 0 });
        }
        frames
    }

    fn symbol(&self, address: u64) -> Option<&str> {
        let index = self.table.partition_point(|(start, _, _)| *start <= address).checked_sub(1)?;
        let (start, size, name) = &self.table[index];
        (*size == 0 || address < start + size).then_some(name.as_str())
    }
}

fn dwarf_context(file: &object::File<'_>) -> Option<addr2line::Context<Reader>> {
    let load = |id: SectionId| -> Result<Reader, gimli::Error> {
        let bytes: Cow<'_, [u8]> = file
            .section_by_name(id.name())
            .and_then(|section| section.uncompressed_data().ok())
            .unwrap_or(Cow::Borrowed(&[]));
        Ok(Reader::new(Arc::from(bytes.as_ref()), LittleEndian))
    };
    let dwarf = Dwarf::load(load).ok()?;
    addr2line::Context::from_dwarf(dwarf).ok()
}

/// A symbol's name as Rust writes it, without the hash; other names as they are.
pub fn demangled(name: &str) -> String {
    match rustc_demangle::try_demangle(name) {
        Ok(demangled) => format!("{demangled:#}"),
        Err(_) => name.to_string(),
    }
}
