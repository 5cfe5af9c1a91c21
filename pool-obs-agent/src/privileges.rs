//! What the kernel must allow before anything is attached: the capabilities to load BPF
//! programs and open perf events, and uprobe support itself.

use std::path::Path;

use crate::error::{Class, Refusal};

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;
const UPROBE_PMU: &str = "/sys/bus/event_source/devices/uprobe";

/// CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN, which covers both.
pub fn require_capabilities() -> Result<(), Refusal> {
    let effective = effective_capabilities();
    let has = |capability: u32| effective & (1 << capability) != 0;
    if has(CAP_SYS_ADMIN) {
        return Ok(());
    }
    let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|(bit, _)| !has(*bit))
        .map(|(_, name)| name)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Refusal::new(
        Class::Privilege,
        format!(
            "pool-obs-agent lacks {}: run it as root, or grant it with \
             `setcap cap_bpf,cap_perfmon,cap_sys_ptrace+ep pool-obs-agent`",
            missing.join(" and ")
        ),
    ))
}

fn effective_capabilities() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let hex = status.lines().find_map(|line| line.strip_prefix("CapEff:"))?;
            u64::from_str_radix(hex.trim(), 16).ok()
        })
        .unwrap_or(0)
}

pub fn require_uprobes() -> Result<(), Refusal> {
    if Path::new(UPROBE_PMU).exists() {
        return Ok(());
    }
    Err(Refusal::new(
        Class::NoUprobes,
        format!(
            "this kernel has no uprobe support ({UPROBE_PMU} is missing): it needs CONFIG_UPROBES and CONFIG_UPROBE_EVENTS"
        ),
    ))
}
