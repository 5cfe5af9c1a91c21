//! The events the kernel programs write into the `EVENTS` ring buffer.
//!
//! Every record starts with a [`Header`] whose `kind` says which struct follows. Values the
//! manifest did not ask for are zero. All structs are `repr(C)`, 8-byte aligned and free of
//! padding the kernel could leave uninitialised.

/// The lifecycle events a manifest can map a function to.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    WorkerSpawned = 1,
    WorkerEvicted = 2,
    WorkerCrashed = 3,
    RequestSubmitted = 4,
    RequestStarted = 5,
    RequestEnded = 6,
    /// One poll of a request's future (an `async fn` or an async block): a manifest's
    /// `async_request` probe.
    FuturePolled = 7,
    /// A request's future dropped: before it was ready, the request was cancelled.
    FutureDropped = 8,
    /// A thread of a followed process on the CPU, sampled while a profile is taken: its
    /// registers, the top of its user stack, and the call it was in.
    CpuSampled = 9,
    /// Work a request handed to another thread (a `spawn_blocking` closure, a rayon job) ran
    /// there: the agent's own probes, no manifest line.
    HandoffRan = 10,
}

impl EventKind {
    pub const ALL: [EventKind; 10] = [
        EventKind::WorkerSpawned,
        EventKind::WorkerEvicted,
        EventKind::WorkerCrashed,
        EventKind::RequestSubmitted,
        EventKind::RequestStarted,
        EventKind::RequestEnded,
        EventKind::FuturePolled,
        EventKind::FutureDropped,
        EventKind::CpuSampled,
        EventKind::HandoffRan,
    ];

    /// The events a manifest can name: a future's drop comes with its `async_request`,
    /// samples with a profile, and hand-offs with the runtimes the agent knows.
    pub fn in_manifests(self) -> bool {
        !matches!(self, EventKind::FutureDropped | EventKind::CpuSampled | EventKind::HandoffRan)
    }

    pub fn from_u32(raw: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| *kind as u32 == raw)
    }

    /// The name used in manifests, logs and the `event` metric label.
    pub const fn name(self) -> &'static str {
        match self {
            EventKind::WorkerSpawned => "worker_spawned",
            EventKind::WorkerEvicted => "worker_evicted",
            EventKind::WorkerCrashed => "worker_crashed",
            EventKind::RequestSubmitted => "request_submitted",
            EventKind::RequestStarted => "request_started",
            EventKind::RequestEnded => "request_ended",
            EventKind::FuturePolled => "async_request",
            EventKind::FutureDropped => "future_dropped",
            EventKind::CpuSampled => "cpu_sample",
            EventKind::HandoffRan => "handoff_ran",
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Header {
    /// An [`EventKind`] as `u32`.
    pub kind: u32,
    /// Index of the probe spec (the attach cookie) that produced the event.
    pub probe: u32,
    /// Kernel thread id (the pool thread that ran the probed function).
    pub tid: u32,
    /// Its process (thread group) id: which of the followed processes wrote the event.
    pub pid: u32,
    /// `bpf_ktime_get_ns` when the probe fired.
    pub ts_ns: u64,
    /// How many of the probes' events the kernel had dropped for want of room, on every CPU,
    /// when it wrote this one (a count that may miss losses at the same instant on two CPUs):
    /// when it changes from one event to the next, some were lost in between, and what the
    /// agent follows then may have missed its end.
    pub lost_before: u64,
}

/// How many bytes of a model key are captured; longer keys are truncated.
pub const MODEL_KEY_CAPACITY: usize = 64;

/// A model key ("registry key") as read from the target.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ModelKey {
    /// The key's length in the target, which may exceed what was captured.
    pub len: u64,
    /// One of the `MODEL_*` states below.
    pub state: u32,
    /// Bytes captured into `bytes`.
    pub captured: u32,
    pub bytes: [u8; MODEL_KEY_CAPACITY],
}

/// The manifest gives no model for this probe: the agent finds it from the request or worker id.
pub const MODEL_ABSENT: u32 = 0;

impl ModelKey {
    /// No model read.
    pub const ABSENT: ModelKey =
        ModelKey { len: 0, state: MODEL_ABSENT, captured: 0, bytes: [0; MODEL_KEY_CAPACITY] };
}
pub const MODEL_PRESENT: u32 = 1;
/// The manifest gives a model, but its bytes could not be read.
pub const MODEL_UNREADABLE: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct WorkerSpawned {
    pub header: Header,
    pub model: ModelKey,
    pub worker_id: u64,
    pub memory_bytes: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct WorkerEvicted {
    pub header: Header,
    pub model: ModelKey,
    pub worker_id: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct WorkerCrashed {
    pub header: Header,
    pub model: ModelKey,
    pub worker_id: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RequestSubmitted {
    pub header: Header,
    pub model: ModelKey,
    pub request_id: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RequestStarted {
    pub header: Header,
    pub model: ModelKey,
    pub request_id: u64,
    pub worker_id: u64,
    /// The thread's CPU clock (see [`RequestEnded::cpu_ns`]).
    pub cpu_ns: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RequestEnded {
    pub header: Header,
    pub model: ModelKey,
    pub request_id: u64,
    pub worker_id: u64,
    /// The raw value the manifest's outcome rule is applied to, in user space.
    pub outcome_value: u64,
    /// A second raw value for the rule: the variant of the enum inside the variant that
    /// `outcome_value` names, such as the `JobError` of an `Err(JobError::Timeout)`.
    pub outcome_detail: u64,
    /// For a return probe: when the probed call was entered on this thread, else 0.
    pub entered_ns: u64,
    /// The thread's CPU clock when the probed call was entered (for a return probe), and now:
    /// the on-CPU time the kernel gave the thread since the agent attached. Their difference
    /// is the call's CPU time.
    pub entered_cpu_ns: u64,
    pub cpu_ns: u64,
    /// A [`CallEnding`] as `u8`: how the probed call ended.
    pub ending: u8,
    pub _reserved: [u8; 7],
}

/// One poll of a request's future, from its start to its return. The model and request id are
/// read at the first poll only (the future's state is then `Unresumed`, and its arguments are
/// where the debug info says); later polls carry them as zero.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FuturePolled {
    pub header: Header,
    pub model: ModelKey,
    pub request_id: u64,
    /// The future's address: pinned, so it names the request until the future is dropped.
    pub future: u64,
    /// The future's raw state tag when the poll started and when it returned.
    pub state_before: u64,
    pub state_after: u64,
    /// As in [`RequestEnded`], from the `Ready` value; meaningless unless the poll made the
    /// future ready.
    pub outcome_value: u64,
    pub outcome_detail: u64,
    /// When the poll started.
    pub entered_ns: u64,
    /// The thread's CPU clock when the poll started, and when it returned.
    pub entered_cpu_ns: u64,
    pub cpu_ns: u64,
    /// A [`CallEnding`] as `u8`: a poll a panic unwound through never returned.
    pub ending: u8,
    pub _reserved: [u8; 7],
}

/// A request's future dropped, and its state then.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FutureDropped {
    pub header: Header,
    pub future: u64,
    pub state: u64,
}

/// A run of work handed off by a request, on the thread that ran it: from the start of the run
/// to its end (or to the unwinding that ended it). Its header's `probe` is the run site's spec;
/// the request is named as the thread that made the work named its own innermost call then.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HandoffRan {
    pub header: Header,
    /// The spec of the call the work was made in: how `request_id` and `future` read.
    pub request_probe: u32,
    /// The spec of the site that made the work: which runtime it went through.
    pub made_by: u32,
    /// A [`CallEnding`] as `u8`.
    pub ending: u8,
    pub _reserved: [u8; 7],
    pub model: ModelKey,
    pub request_id: u64,
    pub future: u64,
    pub entered_ns: u64,
    /// The running thread's CPU clock when the run started, and when it ended, less the runs
    /// of other hand-offs nested in it.
    pub entered_cpu_ns: u64,
    pub cpu_ns: u64,
}

/// How many bytes of the user stack a sample copies, from its stack pointer up: as
/// `perf record --call-graph dwarf` does, for the agent to unwind with `.eh_frame`.
pub const SAMPLE_STACK_BYTES: usize = 16 << 10;

/// One CPU sample of a thread of a followed process. In the ring buffer it is followed by
/// [`SAMPLE_STACK_BYTES`] of its user stack, of which `stack_len` were read ([`CpuSampleRecord`]).
/// Its header's `probe` is the spec of the innermost call the thread has open, or
/// [`NOT_IN_CALL`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CpuSampled {
    pub header: Header,
    /// The innermost call with a return probe the thread was in (a request, or a poll of one),
    /// as its entry read it: absent when none, or when it is known only at its return.
    pub model: ModelKey,
    pub request_id: u64,
    pub future: u64,
    /// The user registers the unwinding starts from.
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// Bytes of the stack copied: less than [`SAMPLE_STACK_BYTES`] near the stack's top.
    pub stack_len: u64,
}

/// A sampled thread had no call with a return probe open.
pub const NOT_IN_CALL: u32 = u32::MAX;

/// A sample as the kernel writes it.
#[repr(C)]
pub struct CpuSampleRecord {
    pub sample: CpuSampled,
    pub stack: [u8; SAMPLE_STACK_BYTES],
}

/// How a call followed by a return probe ended.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallEnding {
    /// It returned (or the event comes from an entry probe).
    Returned = 0,
    /// It never returned: a panic unwound through it. The outcome value means nothing.
    Unwound = 1,
    /// A poll inlined into a caller returned `Ready`: seen where the caller binds the value,
    /// which is where the outcome was read. The state tag after it means nothing.
    Ready = 2,
}

impl CallEnding {
    pub fn from_u8(raw: u8) -> Option<Self> {
        [CallEnding::Returned, CallEnding::Unwound, CallEnding::Ready]
            .into_iter()
            .find(|ending| *ending as u8 == raw)
    }
}
