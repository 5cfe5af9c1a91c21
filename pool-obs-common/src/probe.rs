//! The compiled form of one manifest probe, stored in the `PROBES` array at the index that is
//! also the probe's attach cookie. The kernel programs are generic: this spec tells them which
//! event to write and where each of its values lives.

/// How many pointer hops a [`Scalar`] may take from its base.
pub const MAX_DEREFS: usize = 3;
/// Capacity of the `PROBES` array.
pub const MAX_PROBES: u32 = 256;

/// The value is not wanted; it reads as 0.
pub const BASE_ABSENT: u8 = 0;
/// The value is `constant`.
pub const BASE_CONSTANT: u8 = 1;
/// Integer argument register `reg` (x86-64: rdi, rsi, rdx, rcx, r8, r9). At a return probe this
/// is the register's value at entry, saved by the entry half.
pub const BASE_ARG: u8 = 2;
/// Return register `reg` (0 = rax, 1 = rdx), only at a return probe.
pub const BASE_RET: u8 = 3;

/// Where one integer lives: a base, then up to [`MAX_DEREFS`] loads of `*(value + offset)`,
/// then truncation to `size` bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scalar {
    pub base: u8,
    pub reg: u8,
    pub derefs: u8,
    /// Width of the value in bytes: 1, 2, 4 or 8.
    pub size: u8,
    pub _reserved: u32,
    pub offsets: [i64; MAX_DEREFS],
    pub constant: u64,
}

/// The probe fires at the function's entry.
pub const AT_ENTRY: u32 = 0;
/// The probe fires at the function's return; argument values are those saved at entry.
pub const AT_RETURN: u32 = 1;

/// `ProbeSpec::saves_for` when the entry probe saves nothing for a return probe.
pub const SAVES_NOTHING: u32 = u32::MAX;

/// How much of the probed function's name the spec keeps, for `--debug-probes` logs.
pub const FUNCTION_NAME_CAPACITY: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeSpec {
    /// The [`crate::event::EventKind`] to write, or 0 for an entry probe that only saves
    /// arguments for a return probe.
    pub kind: u32,
    /// [`AT_ENTRY`] or [`AT_RETURN`].
    pub at: u32,
    /// For an entry probe: index of the return probe of the same function whose arguments and
    /// entry time it saves, or [`SAVES_NOTHING`].
    pub saves_for: u32,
    pub _reserved: u32,
    /// The model key: a (pointer, length) pair, as a `&str` or `String` is laid out.
    pub model_ptr: Scalar,
    pub model_len: Scalar,
    pub worker_id: Scalar,
    pub request_id: Scalar,
    pub memory_bytes: Scalar,
    pub outcome: Scalar,
    /// The end of the probed function's demangled name, UTF-8, `function_name_len` bytes.
    pub function_name: [u8; FUNCTION_NAME_CAPACITY],
    pub function_name_len: u32,
    pub _reserved2: u32,
}

impl Default for ProbeSpec {
    fn default() -> Self {
        Self {
            kind: 0,
            at: AT_ENTRY,
            saves_for: SAVES_NOTHING,
            _reserved: 0,
            model_ptr: Scalar::default(),
            model_len: Scalar::default(),
            worker_id: Scalar::default(),
            request_id: Scalar::default(),
            memory_bytes: Scalar::default(),
            outcome: Scalar::default(),
            function_name: [0; FUNCTION_NAME_CAPACITY],
            function_name_len: 0,
            _reserved2: 0,
        }
    }
}

impl ProbeSpec {
    /// Keeps the end of `name` (the most telling part of a path), cut on a character boundary.
    pub fn set_function_name(&mut self, name: &str) {
        let mut start = name.len().saturating_sub(FUNCTION_NAME_CAPACITY);
        while !name.is_char_boundary(start) {
            start += 1;
        }
        let tail = &name.as_bytes()[start..];
        self.function_name[..tail.len()].copy_from_slice(tail);
        self.function_name_len = tail.len() as u32;
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: both are repr(C), Copy, and every bit pattern is a valid value.
    unsafe impl aya::Pod for super::ProbeSpec {}
    unsafe impl aya::Pod for super::Scalar {}
}
