//! The kernel facilities the programs use, detected on the running kernel rather than assumed
//! from its version: distributions backport, and configurations differ.
//!
//! Each is probed the way libbpf and aya probe them (a map created, a tiny program loaded that
//! calls the helper): what a kernel lacks is named with the first Linux release that has it.

use std::path::Path;

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported},
};

/// What a facility is needed for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Serves {
    /// Every probe: without it the agent cannot run.
    Probes,
    /// CPU time per model (`pool_model_cpu_seconds_total`, a request's `cpu_ms`).
    CpuTime,
    /// CPU profiles (`/profile`).
    Profiles,
}

impl Serves {
    /// The feature that is off without it, as the log and `/health` name it.
    pub fn feature(self) -> &'static str {
        match self {
            Serves::Probes => "probes",
            Serves::CpuTime => "cpu_time",
            Serves::Profiles => "profiles",
        }
    }
}

pub struct Facility {
    pub name: &'static str,
    /// The first Linux release that has it.
    pub since: &'static str,
    pub serves: Serves,
    present: fn() -> bool,
}

fn helper(helper: BpfHelper) -> bool {
    is_helper_supported(ProgramType::KProbe, helper).unwrap_or(false)
}

pub const FACILITIES: [Facility; 9] = [
    Facility {
        name: "uprobes through perf_event_open (/sys/bus/event_source/devices/uprobe)",
        since: "4.17",
        serves: Serves::Probes,
        present: || Path::new("/sys/bus/event_source/devices/uprobe/type").exists(),
    },
    Facility {
        name: "the kernel's BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF)",
        since: "5.4",
        serves: Serves::Probes,
        present: || Path::new("/sys/kernel/btf/vmlinux").exists(),
    },
    Facility {
        name: "reads of user memory (bpf_probe_read_user)",
        since: "5.5",
        serves: Serves::Probes,
        present: || helper(BpfHelper::BPF_FUNC_probe_read_user),
    },
    Facility {
        name: "ring buffers (BPF_MAP_TYPE_RINGBUF)",
        since: "5.8",
        serves: Serves::Probes,
        present: || is_map_supported(MapType::RingBuf).unwrap_or(false),
    },
    Facility {
        name: "task-local storage (BPF_MAP_TYPE_TASK_STORAGE)",
        since: "5.11",
        serves: Serves::Probes,
        present: || is_map_supported(MapType::TaskStorage).unwrap_or(false),
    },
    Facility {
        name: "task-local storage from uprobe programs (bpf_task_storage_get)",
        since: "5.13",
        serves: Serves::Probes,
        present: || helper(BpfHelper::BPF_FUNC_task_storage_get),
    },
    Facility {
        name: "attach cookies (bpf_get_attach_cookie)",
        since: "5.15",
        serves: Serves::Probes,
        present: || helper(BpfHelper::BPF_FUNC_get_attach_cookie),
    },
    Facility {
        name: "raw tracepoint programs (sched_switch, for CPU clocks)",
        since: "4.17",
        serves: Serves::CpuTime,
        present: || is_program_supported(ProgramType::RawTracePoint).unwrap_or(false),
    },
    Facility {
        name: "perf event programs (cpu-clock sampling)",
        since: "4.9",
        serves: Serves::Profiles,
        present: || is_program_supported(ProgramType::PerfEvent).unwrap_or(false),
    },
];

/// What this kernel lacks of [`FACILITIES`].
pub struct Detected {
    pub missing: Vec<&'static Facility>,
}

pub fn detect() -> Detected {
    Detected { missing: FACILITIES.iter().filter(|facility| !(facility.present)()).collect() }
}

impl Facility {
    /// One line: what is missing, since when kernels have it, and what goes without it.
    pub fn missing_line(&self) -> String {
        match self.serves {
            Serves::Probes => format!(
                "this kernel lacks {} (Linux {} and later have it), which every probe needs",
                self.name, self.since
            ),
            serves => format!(
                "this kernel lacks {} (Linux {} and later have it): {} off",
                self.name,
                self.since,
                serves.feature()
            ),
        }
    }
}

impl Detected {
    /// The first facility every probe needs that the kernel lacks.
    pub fn blocking(&self) -> Option<&'static Facility> {
        self.missing.iter().copied().find(|facility| facility.serves == Serves::Probes)
    }

    /// Whether what `serves` needs is all there.
    pub fn has(&self, serves: Serves) -> bool {
        !self.missing.iter().any(|facility| facility.serves == serves)
    }
}
