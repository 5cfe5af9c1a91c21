//! Counters the kernel programs keep in the per-CPU `COUNTERS` array, by index.

/// An event could not be written because the ring buffer was full.
pub const EVENTS_LOST: u32 = 0;
/// A value could not be read from the target's memory (bad manifest offset, paged-out memory).
pub const READ_FAILURES: u32 = 1;
/// A return probe fired without the matching entry (the call began before we attached, or the
/// entry table was full).
pub const RETURNS_WITHOUT_ENTRY: u32 = 2;
/// A probe fired with an attach cookie that has no probe spec.
pub const UNKNOWN_PROBES: u32 = 3;
/// An entry was saved over one whose return never came (a recursive call, or a return the
/// kernel did not report): that call is not counted.
pub const ENTRIES_WITHOUT_RETURN: u32 = 4;

pub const COUNT: u32 = 5;
