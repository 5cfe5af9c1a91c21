//! Counters the kernel programs keep in the per-CPU `COUNTERS` array, indexed by [`Counter`].

/// One kernel counter; its discriminant is its index in `COUNTERS`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// An event could not be written: the ring buffer was full, or the kernel had no memory
    /// for the thread's copy of the registers.
    EventsLost = 0,
    /// A value could not be read from the target's memory (bad manifest offset, paged-out memory).
    ReadFailures = 1,
    /// A return fired without the matching entry (the call began before we attached, or it was
    /// nested deeper than the kernel follows).
    ReturnsWithoutEntry = 2,
    /// A probe fired with an attach cookie that has no probe spec.
    UnknownProbes = 3,
    /// A call with a return probe ended by unwinding (a panic): it never returned.
    CallsUnwound = 4,
    /// A call with a return probe was entered while a thread already had
    /// [`crate::probe::MAX_OPEN_CALLS`] such calls open: it is not followed.
    CallsTooDeep = 5,
    /// A caller polled an inlined request future twice in one call: the first poll's end was
    /// not seen.
    PollsMerged = 6,
    /// A CPU sample of a followed thread not taken: the ring buffer was half full (the pool's
    /// events come first), or the thread's user registers could not be read.
    SamplesDropped = 7,
    /// Work a request handed off could not be remembered (no room in the kernel's map): its run
    /// counts for no model.
    HandoffsLost = 8,
}

impl Counter {
    pub const ALL: [Counter; 9] = [
        Counter::EventsLost,
        Counter::ReadFailures,
        Counter::ReturnsWithoutEntry,
        Counter::UnknownProbes,
        Counter::CallsUnwound,
        Counter::CallsTooDeep,
        Counter::PollsMerged,
        Counter::SamplesDropped,
        Counter::HandoffsLost,
    ];

    /// The size of the `COUNTERS` array.
    pub const COUNT: u32 = Self::ALL.len() as u32;

    pub const fn index(self) -> u32 {
        self as u32
    }
}
