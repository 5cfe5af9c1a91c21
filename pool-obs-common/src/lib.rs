//! Types that cross the kernel/user boundary. Each event kind's wire struct is defined once, in
//! [`event`]; the kernel half that fills it lives in `pool-obs-ebpf/src/emit.rs` and the user half
//! that consumes it in `pool-obs-agent/src/decode.rs`, under the same name.
#![no_std]

pub mod counters;
pub mod event;
pub mod probe;

/// Names of the maps in the kernel object, as the agent looks them up.
pub mod maps {
    pub const EVENTS: &str = "EVENTS";
    pub const PROBES: &str = "PROBES";
    pub const COUNTERS: &str = "COUNTERS";
    /// Per-CPU, by probe index: reads of the target's memory that failed.
    pub const PROBE_READ_FAILURES: &str = "PROBE_READ_FAILURES";
    /// By pid: the followed processes, and their on-CPU time since the agent attached.
    pub const PROCESS_CPU: &str = "PROCESS_CPU";
    /// One entry: non-zero while a profile is taken.
    pub const SAMPLING: &str = "SAMPLING";
    /// Per-CPU: when the task now running there got the CPU.
    pub const SLICE_STARTED: &str = "SLICE_STARTED";
}
