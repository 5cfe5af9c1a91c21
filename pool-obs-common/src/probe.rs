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

/// How many calls with return probes one thread may have open (entered, not yet returned) at
/// once; deeper ones are counted in [`crate::counters::Counter::CallsTooDeep`] and not followed.
pub const MAX_OPEN_CALLS: usize = 8;

impl Scalar {
    /// Whether the value comes from a return register: at a return probe it is read at the
    /// return; every other value is read at the call's entry.
    pub const fn reads_return(&self) -> bool {
        self.base == BASE_RET
    }
}

/// The attach cookie of one probe site: which spec it runs, and how the stack pointer at that
/// site relates to the one at the probed function's entry (`entry_sp = rsp + sp_offset`). The
/// entry sp names a call: it is the same at the function's first instruction, after the
/// prologue pushes it is `rsp + pushed`, at a `ret` it is `rsp`, and after a uretprobe's return
/// it is `rsp - 8`. It tells recursive calls apart, and a call whose frame is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cookie {
    /// Index of the spec in `PROBES`.
    pub probe: u32,
    pub sp_offset: i32,
}

impl Cookie {
    pub const fn encode(self) -> u64 {
        ((self.sp_offset as u32 as u64) << 32) | self.probe as u64
    }

    pub const fn decode(raw: u64) -> Self {
        Self { probe: raw as u32, sp_offset: (raw >> 32) as u32 as i32 }
    }

    /// The probed call's entry stack pointer, from `rsp` at this site.
    pub const fn entry_sp(self, rsp: u64) -> u64 {
        rsp.wrapping_add(self.sp_offset as i64 as u64)
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeSpec {
    /// The [`crate::event::EventKind`] to write, or 0 for an entry probe that only saves
    /// arguments for a return probe.
    pub kind: u32,
    pub _reserved0: u32,
    pub _reserved1: u32,
    pub _reserved: u32,
    /// The model key: a (pointer, length) pair, as a `&str` or `String` is laid out.
    pub model_ptr: Scalar,
    pub model_len: Scalar,
    pub worker_id: Scalar,
    pub request_id: Scalar,
    pub memory_bytes: Scalar,
    pub outcome: Scalar,
}

impl ProbeSpec {
    /// Whether the model key comes from a return register (see [`Scalar::reads_return`]).
    pub const fn model_reads_return(&self) -> bool {
        self.model_ptr.reads_return() || self.model_len.reads_return()
    }
}

#[cfg(test)]
mod tests {
    use super::Cookie;

    #[test]
    fn cookies_round_trip_with_negative_offsets() {
        for cookie in [Cookie { probe: 7, sp_offset: -8 }, Cookie { probe: 0, sp_offset: 56 }] {
            assert_eq!(Cookie::decode(cookie.encode()), cookie);
        }
        assert_eq!(Cookie { probe: 1, sp_offset: -8 }.entry_sp(0x1008), 0x1000);
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: both are repr(C), Copy, and every bit pattern is a valid value.
    unsafe impl aya::Pod for super::ProbeSpec {}
    unsafe impl aya::Pod for super::Scalar {}
}
