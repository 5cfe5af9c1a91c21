//! What the kernel must allow before anything is attached: the capabilities to load BPF
//! programs and open perf events, and uprobe support itself. Once attached, the agent gives up
//! every capability it no longer needs.

use std::{io, path::Path};

use crate::error::{Class, Refusal};

const CAP_SETPCAP: u32 = 8;
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
             `setcap cap_sys_admin,cap_bpf,cap_perfmon,cap_sys_ptrace+ep pool-obs-agent`",
            missing.join(" and ")
        ),
    ))
}

fn effective_capabilities() -> u64 {
    capability_set("CapEff")
}

/// One of the capability sets `/proc/self/status` shows (`CapEff`, `CapPrm`, `CapBnd`...).
fn capability_set(name: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let hex = status.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))?;
            u64::from_str_radix(hex.trim(), 16).ok()
        })
        .unwrap_or(0)
}

/// Gives up every capability for good: from the bounding, ambient, inheritable, permitted and
/// effective sets. What the agent does once attached (read the ring buffer and the counters
/// through descriptors it holds, read procfs, serve on a bound socket) needs none, and an agent
/// exploited through its HTTP port then holds no privilege.
pub fn drop_all_capabilities() -> io::Result<()> {
    // The bounding set first, when we may (it takes CAP_SETPCAP, which goes last). Without
    // CAP_SETPCAP it stays: no-new-privs already keeps an exec from gaining anything from it.
    let may_shrink_bounding_set = effective_capabilities() & (1 << CAP_SETPCAP) != 0;
    for capability in (0..=last_capability()).filter(|_| may_shrink_bounding_set) {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, capability, 0, 0, 0) } != 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EINVAL) {
                return Err(error);
            }
        }
    }
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    }
    let header = CapabilityHeader { version: CAPABILITY_VERSION_3, pid: 0 };
    let none = [CapabilityData::default(); 2];
    // SAFETY: capset reads a version 3 header and two data structs, which is what it is given.
    if unsafe { libc::syscall(libc::SYS_capset, &header, none.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The capability sets this process holds now, as `/proc/self/status` shows them, for a log.
pub fn held_capabilities() -> String {
    let [effective, permitted, bounding] = ["CapEff", "CapPrm", "CapBnd"].map(capability_set);
    format!("effective {effective:#x}, permitted {permitted:#x}, bounding {bounding:#x}")
}

fn last_capability() -> libc::c_ulong {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(63)
}

const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapabilityHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapabilityData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
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
