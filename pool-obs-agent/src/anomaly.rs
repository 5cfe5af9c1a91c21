//! Events that contradict what the agent knows of the pool. Each is counted in
//! `pool_obs_anomalies_total{kind}` and then handled as well as it can be: nothing panics and no
//! gauge goes below zero. A few right after attaching are expected, for the requests and workers
//! that predate the agent; a steady stream means a manifest reads the wrong values.

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Anomaly {
    /// A request ended that the agent never saw begin, although the manifest probes
    /// submissions. (With starts probed alone, a request that times out in the queue ends
    /// without a start, as it should.)
    RequestEndWithoutStart,
    /// A request started that the agent never saw submitted, although the manifest probes
    /// submissions.
    RequestStartWithoutSubmit,
    /// A request was submitted under the id of one still in flight.
    RequestIdReused,
    /// An event named a worker that is not live: never seen spawned although the manifest
    /// probes spawns, or already evicted or crashed. (A worker starting a request just after
    /// its eviction is not one: it took that request before it was told to leave.)
    WorkerNotSpawned,
    /// A worker was spawned under the id of one still live.
    WorkerIdReused,
    /// A request was submitted while `--max-in-flight` requests were: it is not followed.
    RequestUntracked,
    /// A request was in flight longer than `--request-expiry-secs`: its end was lost or is not
    /// probed, and it is forgotten.
    RequestExpired,
    /// A return probe fired without its entry: the call began before the agent attached.
    ReturnWithoutEntry,
    /// A call with a return probe ended by unwinding (a panic): a `request_ended` at its
    /// return counts the request as failed; any other event did not happen.
    Unwound,
    /// A call with a return probe was nested deeper than the kernel follows per thread: it is
    /// not counted, and its return shows as `return_without_entry`.
    CallTooDeep,
    /// A kernel program fired for a probe it had no description of.
    UnknownProbe,
    /// A ring-buffer record that is no event this agent knows.
    UndecodableEvent,
    /// A caller polled an inlined request future twice in one of its own calls: the first
    /// poll's end was not seen (its request ends when its future is dropped).
    PollsMerged,
    /// A request's future was polled for the first time at the address of one still open,
    /// whose drop was not seen: the old one is forgotten, counted under no status.
    FutureReused,
    /// An inlined poll left its future `Returned` without passing where its caller binds the
    /// `Ready` value, where the outcome is read: the request ends as failed, its outcome unread.
    ReadyNotBound,
    /// A request future's state changed between two of its polls the agent saw, or between
    /// its last one and its drop: it was polled where no probe is, and its poll count and time
    /// are short.
    PollNotSeen,
    /// A request future was dropped `Returned` without the agent seeing the poll that made it
    /// ready: it was not cancelled, and its outcome is unknown, so it is counted under no
    /// status.
    ReadyNotSeen,
    /// A request future was dropped after polls the agent never saw, perhaps to its end:
    /// polled first before the agent attached, or where no probe is. Its request is counted
    /// nowhere.
    FirstPollNotSeen,
    /// A request future was open when the kernel dropped events for want of room in the ring
    /// buffer: its end may be another future's at the same address, so it is counted under no
    /// status (`pool_obs_events_lost_total` says how many were lost).
    OpenAcrossLostEvents,
    /// A request ended that nothing names a model for: its probe reads no model, no request id
    /// to find its start by, and no worker. It is counted under `model="__unknown__"`.
    RequestUnattributed,
    /// Work a request handed to another thread could not be remembered in the kernel (its map
    /// was full): its run's CPU counts for no model.
    HandoffLost,
}

impl Anomaly {
    pub const ALL: [Anomaly; 21] = [
        Anomaly::RequestEndWithoutStart,
        Anomaly::RequestStartWithoutSubmit,
        Anomaly::RequestIdReused,
        Anomaly::WorkerNotSpawned,
        Anomaly::WorkerIdReused,
        Anomaly::RequestUntracked,
        Anomaly::RequestExpired,
        Anomaly::ReturnWithoutEntry,
        Anomaly::Unwound,
        Anomaly::CallTooDeep,
        Anomaly::UnknownProbe,
        Anomaly::UndecodableEvent,
        Anomaly::PollsMerged,
        Anomaly::FutureReused,
        Anomaly::ReadyNotBound,
        Anomaly::PollNotSeen,
        Anomaly::ReadyNotSeen,
        Anomaly::FirstPollNotSeen,
        Anomaly::OpenAcrossLostEvents,
        Anomaly::RequestUnattributed,
        Anomaly::HandoffLost,
    ];

    /// Whether it casts doubt on what the probes read, for `/health`'s rate of anomalies. A call
    /// a panic unwound through does not: the pool panicked, and the agent counted the request
    /// as failed, or the worker as crashed. Nor does a hand-off lost: only CPU time goes
    /// unattributed, and `mode="other"` shows it.
    pub fn doubts_the_values(self) -> bool {
        !matches!(self, Anomaly::Unwound | Anomaly::HandoffLost)
    }

    /// The `kind` label.
    pub fn name(self) -> &'static str {
        match self {
            Anomaly::RequestEndWithoutStart => "request_end_without_start",
            Anomaly::RequestStartWithoutSubmit => "request_start_without_submit",
            Anomaly::RequestIdReused => "request_id_reused",
            Anomaly::WorkerNotSpawned => "worker_not_spawned",
            Anomaly::WorkerIdReused => "worker_id_reused",
            Anomaly::RequestUntracked => "request_untracked",
            Anomaly::RequestExpired => "request_expired",
            Anomaly::ReturnWithoutEntry => "return_without_entry",
            Anomaly::Unwound => "unwound",
            Anomaly::CallTooDeep => "call_too_deep",
            Anomaly::UnknownProbe => "unknown_probe",
            Anomaly::UndecodableEvent => "undecodable_event",
            Anomaly::PollsMerged => "polls_merged",
            Anomaly::FutureReused => "future_reused",
            Anomaly::ReadyNotBound => "ready_not_bound",
            Anomaly::PollNotSeen => "poll_not_seen",
            Anomaly::ReadyNotSeen => "ready_not_seen",
            Anomaly::FirstPollNotSeen => "first_poll_not_seen",
            Anomaly::OpenAcrossLostEvents => "open_across_lost_events",
            Anomaly::RequestUnattributed => "request_unattributed",
            Anomaly::HandoffLost => "handoff_lost",
        }
    }
}
