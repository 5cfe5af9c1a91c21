//! The code a sampled process runs: its executable mappings (`/proc/PID/maps`), each an ELF
//! file loaded once for every process that maps it, with what unwinding (`.eh_frame`) and
//! symbolising (DWARF, else the symbol table) need.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use gimli::{EndianArcSlice, LittleEndian};
use object::{Object, ObjectSection, ObjectSegment};

pub type Reader = EndianArcSlice<LittleEndian>;

/// One ELF file, as unwinding and symbolising need it.
pub struct ObjectFile {
    pub path: PathBuf,
    /// The file, mapped: its pages are the page cache's, shared with the pool.
    data: memmap2::Mmap,
    /// `.eh_frame` and `.eh_frame_hdr`: their bytes and addresses.
    pub eh_frame: Option<(Reader, u64)>,
    pub eh_frame_hdr: Option<(Reader, u64)>,
    pub text_address: u64,
    /// Loadable segments: (virtual address, file offset, file size).
    segments: Vec<(u64, u64, u64)>,
}

impl ObjectFile {
    fn load(path: &Path) -> Option<Self> {
        let file = std::fs::File::open(path).ok()?;
        // SAFETY: the mapping is read only; a binary rewritten in place while mapped (which
        // the loader forbids for a running executable) would show changed bytes, not unsafety
        // in what we read, since every read is bounds-checked.
        let data = unsafe { memmap2::Mmap::map(&file) }.ok()?;
        let file = object::File::parse(&*data).ok()?;
        let section = |name: &str| {
            let section = file.section_by_name(name)?;
            let bytes = section.data().ok()?;
            Some((Reader::new(Arc::from(bytes), LittleEndian), section.address()))
        };
        let segments = file
            .segments()
            .map(|segment| {
                let (offset, size) = segment.file_range();
                (segment.address(), offset, size)
            })
            .collect();
        Some(Self {
            path: path.to_path_buf(),
            eh_frame: section(".eh_frame"),
            eh_frame_hdr: section(".eh_frame_hdr"),
            text_address: file.section_by_name(".text").map_or(0, |text| text.address()),
            segments,
            data,
        })
    }

    /// The file's own address of the byte at file offset `offset`, where a mapping starts.
    /// A segment need not start on a page: the mapping of the code segment then starts in
    /// the page it shares with the segment before, so the segment that starts in that page
    /// is the one mapped, not the one the offset falls in.
    fn address_of_offset(&self, offset: u64) -> Option<u64> {
        let starts_in_page = |start: u64| start & !0xfff == offset;
        self.segments
            .iter()
            .rev()
            .find(|(_, start, _)| starts_in_page(*start))
            .or_else(|| {
                self.segments.iter().find(|(_, start, size)| (*start..start + size).contains(&offset))
            })
            .map(|(address, start, _)| address.wrapping_add(offset).wrapping_sub(*start))
    }

    /// The whole file.
    pub fn data(&self) -> &[u8] {
        &self.data
    }
}

/// An executable mapping of a process: runtime addresses `start..end` hold `object`'s code,
/// at its own addresses less `bias`.
pub struct Module {
    pub start: u64,
    pub end: u64,
    pub bias: u64,
    pub object: Arc<ObjectFile>,
}

impl Module {
    /// The object's own address for runtime address `address`.
    pub fn object_address(&self, address: u64) -> u64 {
        address.wrapping_sub(self.bias)
    }
}

/// The executable mappings of one process.
pub struct AddressSpace {
    modules: Vec<Module>,
    /// Code the kernel maps with no file (`[vdso]`): named, not unwound.
    special: Vec<(u64, u64, String)>,
}

impl AddressSpace {
    pub fn module(&self, address: u64) -> Option<&Module> {
        self.modules.iter().find(|module| (module.start..module.end).contains(&address))
    }

    /// The name of the fileless code at `address`, such as `[vdso]`.
    pub fn special(&self, address: u64) -> Option<&str> {
        let (_, _, name) = self.special.iter().find(|(start, end, _)| (*start..*end).contains(&address))?;
        Some(name)
    }
}

/// Where a process's code is found, taken when the agent starts following it: with `--pid`
/// the agent then gives up the capabilities that reading another process's `/proc` files
/// needs. Its root directory stays open (a pool in a container sees its own files), and its
/// mappings are read again when they can be.
pub struct ProcessCode {
    pid: u32,
    maps: String,
    root: std::fs::File,
}

impl ProcessCode {
    pub fn capture(pid: u32) -> Option<Self> {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
        let root = std::fs::File::open(format!("/proc/{pid}/root")).ok()?;
        Some(Self { pid, maps, root })
    }

    fn maps(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/maps", self.pid)).unwrap_or_else(|_| self.maps.clone())
    }

    /// A file of the process, as it sees it.
    fn path(&self, path: &str) -> PathBuf {
        use std::os::fd::AsRawFd;
        PathBuf::from(format!("/proc/self/fd/{}{path}", self.root.as_raw_fd()))
    }
}

/// Every object loaded so far, by path and inode: replicas share their executable, and a
/// file replaced at the same path is another.
#[derive(Default)]
pub struct Objects {
    by_file: HashMap<(String, u64), Option<Arc<ObjectFile>>>,
}

impl Objects {
    /// The executable mappings of the process whose code is `code`.
    pub fn address_space(&mut self, code: &ProcessCode) -> AddressSpace {
        let maps = code.maps();
        let (mut modules, mut special) = (Vec::new(), Vec::new());
        for line in maps.lines() {
            let Some(mapping) = Mapping::parse(line) else { continue };
            if mapping.path.starts_with('[') {
                special.push((mapping.start, mapping.end, mapping.path.to_string()));
                continue;
            }
            let path = code.path(mapping.path);
            let object = self
                .by_file
                .entry((mapping.path.to_string(), mapping.inode))
                .or_insert_with(|| ObjectFile::load(&path).map(Arc::new));
            let Some(object) = object.clone() else { continue };
            let Some(address) = object.address_of_offset(mapping.offset) else { continue };
            modules.push(Module {
                start: mapping.start,
                end: mapping.end,
                bias: mapping.start.wrapping_sub(address),
                object,
            });
        }
        AddressSpace { modules, special }
    }
}

/// One line of `/proc/PID/maps` that maps code: a file's, or the kernel's (`[vdso]`).
struct Mapping<'a> {
    start: u64,
    end: u64,
    offset: u64,
    inode: u64,
    path: &'a str,
}

impl<'a> Mapping<'a> {
    fn parse(line: &'a str) -> Option<Self> {
        let mut fields = line.split_whitespace();
        let (start, end) = fields.next()?.split_once('-')?;
        let permissions = fields.next()?;
        let offset = fields.next()?;
        let _device = fields.next()?;
        let inode = fields.next()?.parse().ok()?;
        let path = fields.next()?;
        if !permissions.contains('x') || !(path.starts_with('/') || path.starts_with('[')) {
            return None;
        }
        Some(Self {
            start: u64::from_str_radix(start, 16).ok()?,
            end: u64::from_str_radix(end, 16).ok()?,
            offset: u64::from_str_radix(offset, 16).ok()?,
            inode,
            path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_that_map_code_from_a_file_are_kept() {
        let code = "55d0c8a00000-55d0c8b00000 r-xp 00040000 fd:01 1234   /usr/bin/pool";
        let mapping = Mapping::parse(code).expect("code");
        assert_eq!((mapping.start, mapping.end, mapping.offset), (0x55d0c8a00000, 0x55d0c8b00000, 0x40000));
        assert_eq!((mapping.inode, mapping.path), (1234, "/usr/bin/pool"));
        assert!(Mapping::parse("7ffd0000-7ffd1000 rw-p 00000000 00:00 0   [stack]").is_none());
        let vdso = Mapping::parse("7ffd0000-7ffd1000 r-xp 00000000 00:00 0   [vdso]").expect("code");
        assert_eq!(vdso.path, "[vdso]");
        assert!(Mapping::parse("55d0c8900000-55d0c8a00000 r--p 00000000 fd:01 1234 /usr/bin/pool").is_none());
    }

    #[test]
    fn the_running_test_binary_maps_to_its_own_addresses() {
        let mut objects = Objects::default();
        let space = objects.address_space(&ProcessCode::capture(std::process::id()).expect("our own code"));
        let here = the_running_test_binary_maps_to_its_own_addresses as *const () as u64;
        let module = space.module(here).expect("this function's code is mapped");
        let address = module.object_address(here);
        assert!(
            module.object.segments.iter().any(|(start, _, size)| (*start..start + size).contains(&address))
        );
    }
}
