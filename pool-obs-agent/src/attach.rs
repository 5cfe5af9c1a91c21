//! Loads the kernel programs and attaches them to the target's functions.

pub mod dwarf;
pub mod plan;
pub mod symbols;

use std::num::NonZeroU32;

use anyhow::{Context, Result};
use aya::{
    Ebpf, EbpfLoader,
    maps::Array,
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
    },
};
use pool_obs_common::{maps, probe::ProbeSpec};
use tracing::{info, warn};

use crate::{
    error::{Class, Refusal},
    manifest::At,
};
use plan::Plan;

static KERNEL_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pool-obs"));

const ENTRY_PROGRAM: &str = "probe_entry";
const RETURN_PROGRAM: &str = "probe_return";

pub struct LoadSettings {
    /// Ring buffer size; the kernel rounds it up to a power-of-two number of pages.
    pub ring_bytes: u32,
    /// Wake the reader when this much data waits (0: on every event).
    pub wakeup_bytes: u64,
    /// Have the programs log every value they fail to read.
    pub debug_probes: bool,
}

/// Loads the programs, fills `PROBES` from the plan and attaches every probe to `pid` only.
/// Dropping the returned [`Ebpf`] detaches everything.
pub fn attach(pid: NonZeroU32, plan: &Plan, settings: &LoadSettings) -> Result<Ebpf> {
    let debug_probes = u8::from(settings.debug_probes);
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(maps::EVENTS, settings.ring_bytes)
        .override_global("WAKEUP_BYTES", &settings.wakeup_bytes, true)
        .override_global("DEBUG_PROBES", &debug_probes, true)
        .load(KERNEL_OBJECT)
        .context("loading the kernel programs")?;
    write_specs(&mut ebpf, &plan.specs)?;
    let target = format!("/proc/{pid}/exe");
    for name in [ENTRY_PROGRAM, RETURN_PROGRAM] {
        uprobe(&mut ebpf, name)?.load().with_context(|| format!("loading {name} into the kernel"))?;
    }
    for attachment in &plan.attachments {
        let program = match attachment.at {
            At::Entry => ENTRY_PROGRAM,
            At::Return => RETURN_PROGRAM,
        };
        let point = UProbeAttachPoint {
            location: UProbeAttachLocation::AbsoluteOffset(attachment.file_offset),
            cookie: Some(attachment.cookie.into()),
        };
        uprobe(&mut ebpf, program)?
            .attach(point, &target, UProbeScope::OneProcess(pid))
            .map_err(|error| attach_failure(error.into(), &attachment.function, &target))?;
        info!(function = %attachment.function, at = ?attachment.at, offset = attachment.file_offset, "probe attached");
        if attachment.at == At::Return {
            warn!(
                function = %attachment.function,
                "return probe: a panic unwinding through this function aborts the pool, because the \
                 kernel's return trampoline has no unwind info; probe only functions that cannot panic"
            );
        }
    }
    Ok(ebpf)
}

/// A uprobe the kernel refused for lack of privilege is a refusal of its own: the capability
/// check before attaching cannot know that a user other than root needs CAP_SYS_ADMIN too.
fn attach_failure(error: anyhow::Error, function: &str, target: &str) -> anyhow::Error {
    let denied = error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
    });
    if !denied {
        return error.context(format!("attaching to {function} in {target}"));
    }
    Refusal::new(
        Class::Privilege,
        format!(
            "the kernel refused a uprobe on {function} (permission denied): as a user other than root \
             the agent needs CAP_SYS_ADMIN besides CAP_BPF and CAP_PERFMON: run it as root, or grant \
             it with `setcap cap_sys_admin,cap_bpf,cap_perfmon,cap_sys_ptrace+ep pool-obs-agent`"
        ),
    )
    .into()
}

fn write_specs(ebpf: &mut Ebpf, specs: &[ProbeSpec]) -> Result<()> {
    let map = ebpf.map_mut(maps::PROBES).context("the kernel object has no PROBES map")?;
    let mut table: Array<_, ProbeSpec> = Array::try_from(map)?;
    for (index, spec) in specs.iter().enumerate() {
        table.set(index as u32, spec, 0).context("writing a probe spec")?;
    }
    Ok(())
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut UProbe> {
    let program =
        ebpf.program_mut(name).with_context(|| format!("the kernel object has no program {name}"))?;
    Ok(program.try_into()?)
}
