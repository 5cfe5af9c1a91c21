//! The compiled form of one manifest probe, stored in the `PROBES` array at the index that is
//! also the probe's attach cookie. The kernel programs are generic: this spec tells them which
//! event to write and where each of its values lives.

/// How many pointer hops a [`Scalar`] may take from its base: a field of a struct behind an
/// `Arc` behind a reference in a stack slot takes four.
pub const MAX_DEREFS: usize = 4;
/// Capacity of the `PROBES` array.
pub const MAX_PROBES: u32 = 256;

/// Where a [`Scalar`] starts. Stored as its `u8` in [`Scalar::base`], since the kernel reads
/// specs from a map that could hold any byte.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Base {
    /// The value is not wanted; it reads as 0.
    Absent = 0,
    /// The value is [`Scalar::constant`].
    Constant = 1,
    /// General register [`Scalar::reg`], a [`Register`]. At a return probe this is the
    /// register's value at the call's entry, saved by the entry half.
    Register = 2,
    /// Return register `reg` (0 = rax, 1 = rdx), only at a return probe.
    Return = 3,
}

impl Base {
    pub const fn from_u8(raw: u8) -> Option<Self> {
        match raw {
            0 => Some(Base::Absent),
            1 => Some(Base::Constant),
            2 => Some(Base::Register),
            3 => Some(Base::Return),
            _ => None,
        }
    }
}

/// The x86-64 general registers, numbered as DWARF numbers them (so that a location compiled
/// from debug info needs no table) and as the kernel programs capture them.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Register {
    Rax = 0,
    Rdx = 1,
    Rcx = 2,
    Rbx = 3,
    Rsi = 4,
    Rdi = 5,
    Rbp = 6,
    Rsp = 7,
    R8 = 8,
    R9 = 9,
    R10 = 10,
    R11 = 11,
    R12 = 12,
    R13 = 13,
    R14 = 14,
    R15 = 15,
}

impl Register {
    pub const COUNT: usize = 16;
    pub const ALL: [Register; Register::COUNT] = [
        Register::Rax,
        Register::Rdx,
        Register::Rcx,
        Register::Rbx,
        Register::Rsi,
        Register::Rdi,
        Register::Rbp,
        Register::Rsp,
        Register::R8,
        Register::R9,
        Register::R10,
        Register::R11,
        Register::R12,
        Register::R13,
        Register::R14,
        Register::R15,
    ];
    /// The integer argument registers of the System V ABI, in order.
    pub const ARGUMENTS: [Register; 6] =
        [Register::Rdi, Register::Rsi, Register::Rdx, Register::Rcx, Register::R8, Register::R9];

    pub const fn from_u8(raw: u8) -> Option<Self> {
        if (raw as usize) < Register::COUNT { Some(Register::ALL[raw as usize]) } else { None }
    }

    /// Which integer argument this register carries at a function's entry, if any.
    pub fn argument_index(self) -> Option<usize> {
        Register::ARGUMENTS.iter().position(|argument| *argument == self)
    }

    pub const fn name(self) -> &'static str {
        match self {
            Register::Rax => "rax",
            Register::Rdx => "rdx",
            Register::Rcx => "rcx",
            Register::Rbx => "rbx",
            Register::Rsi => "rsi",
            Register::Rdi => "rdi",
            Register::Rbp => "rbp",
            Register::Rsp => "rsp",
            Register::R8 => "r8",
            Register::R9 => "r9",
            Register::R10 => "r10",
            Register::R11 => "r11",
            Register::R12 => "r12",
            Register::R13 => "r13",
            Register::R14 => "r14",
            Register::R15 => "r15",
        }
    }
}

/// Where one integer lives: a base, then up to [`MAX_DEREFS`] loads of `*(value + offset)`,
/// then `addend` added, then the value shifted right by `shift` bits and truncated to `size`
/// bytes (a field inside a register, or an integer narrower than its load).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scalar {
    /// A [`Base`].
    pub base: u8,
    /// A [`Register`] for [`Base::Register`]; 0 or 1 for [`Base::Return`].
    pub reg: u8,
    pub derefs: u8,
    /// Width of the value in bytes: 1, 2, 4 or 8.
    pub size: u8,
    /// Bits to shift the value right by before truncating it.
    pub shift: u8,
    /// Non-zero: at a return probe, read this value at the return, though it starts from a
    /// register saved at entry (the pointer to a result returned through memory).
    pub at_return: u8,
    pub _reserved: [u8; 2],
    pub offsets: [i64; MAX_DEREFS],
    /// Added after the loads: a constant address offset that no load follows.
    pub addend: i64,
    /// The value, for [`Base::Constant`].
    pub constant: u64,
}

/// How many calls with return probes one thread may have open (entered, not yet returned) at
/// once; deeper ones are counted in [`crate::counters::Counter::CallsTooDeep`] and not followed.
pub const MAX_OPEN_CALLS: usize = 8;

impl Scalar {
    /// Whether the value is the returned one: at a return probe it is read at the return;
    /// every other value is read at the call's entry.
    pub const fn reads_return(&self) -> bool {
        self.base == Base::Return as u8 || self.at_return != 0
    }

    pub const fn base(&self) -> Option<Base> {
        Base::from_u8(self.base)
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
    /// For a future's events: where its state tag is, from the future's address.
    pub state_offset: u32,
    /// The state tag's width in bytes: 1, 2, 4 or 8 (0: no state to read).
    pub state_size: u8,
    /// Non-zero when the poll is inlined into a caller ([`crate::probe::Cookie`]'s call is the
    /// caller's, opened at its entry): the future's values are read at the inlined poll's own
    /// site, not at the call's entry.
    pub poll_inlined: u8,
    /// For a hand-off's probes: the [`Register`] that holds the hand-off's key (the task's or
    /// job's address) at the site.
    pub handoff_key: u8,
    /// Non-zero for a hand-off run whose work may make jobs on its own thread's stack that
    /// another thread runs (rayon's `join`): the run's stack is marked as its request's.
    pub jobs_on_stack: u8,
    /// The state tag of a future not yet polled: only then are its arguments read.
    pub unresumed: u32,
    /// Non-zero where a hand-off is made whose work runs many times (a spawned task, polled
    /// until it ends): every run serves the request, not only the first.
    pub runs_many: u8,
    pub _reserved: [u8; 7],
    /// The model key: a (pointer, length) pair, as a `&str` or `String` is laid out.
    pub model_ptr: Scalar,
    pub model_len: Scalar,
    pub worker_id: Scalar,
    pub request_id: Scalar,
    pub memory_bytes: Scalar,
    pub outcome: Scalar,
    /// The second value an outcome rule by variant names may need (see
    /// [`crate::event::RequestEnded::outcome_detail`]).
    pub outcome_detail: Scalar,
    /// A future's address (a `Pin<&mut Self>` at its poll, a `*mut Self` at its drop).
    pub future: Scalar,
}

impl ProbeSpec {
    /// Whether the model key comes from a return register (see [`Scalar::reads_return`]).
    pub const fn model_reads_return(&self) -> bool {
        self.model_ptr.reads_return() || self.model_len.reads_return()
    }

    /// Every value the spec reads.
    pub const fn scalars(&self) -> [Scalar; 8] {
        [
            self.model_ptr,
            self.model_len,
            self.worker_id,
            self.request_id,
            self.memory_bytes,
            self.outcome,
            self.outcome_detail,
            self.future,
        ]
    }

    /// Every value the spec reads, to change in place.
    pub fn scalars_mut(&mut self) -> [&mut Scalar; 8] {
        [
            &mut self.model_ptr,
            &mut self.model_len,
            &mut self.worker_id,
            &mut self.request_id,
            &mut self.memory_bytes,
            &mut self.outcome,
            &mut self.outcome_detail,
            &mut self.future,
        ]
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
