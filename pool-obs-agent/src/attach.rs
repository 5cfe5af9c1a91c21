//! Loads the kernel programs and attaches them to the target's functions.

pub mod cpu;
pub mod debug_file;
pub mod frames;
pub mod machine_code;
pub mod plan;
pub mod sampling;
pub mod source;
pub mod symbols;
pub mod verdicts;

use std::num::NonZeroU32;

use anyhow::{Context, Result};
use aya::{
    Ebpf,
    maps::Array,
    programs::{
        RawTracePoint, UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
    },
};
use pool_obs_common::{maps, probe::ProbeSpec};
use tracing::{info, warn};

use crate::{
    error::{Class, Refusal},
    kernel::{self, LoadSettings},
};
use machine_code::Handling;
use plan::{Attachment, Plan, Program};

/// Closes the calls a thread still had open when it exited (its CPU clock goes with its task).
const THREAD_EXIT_PROGRAM: &str = "thread_exit";
const THREAD_EXIT_TRACEPOINT: &str = "sched_process_exit";
/// `ENOTSUPP`: the kernel's answer to a uprobe on an instruction it cannot handle.
const ENOTSUPP: i32 = 524;

/// Loads the programs the plan uses and fills `PROBES` from it; the probes are attached process
/// by process, by [`attach_process`]. Dropping the returned [`Ebpf`] detaches everything.
pub fn load(plan: &Plan, settings: &LoadSettings) -> Result<Ebpf> {
    let mut ebpf = kernel::open(settings)?;
    write_specs(&mut ebpf, &plan.specs)?;
    // Only the programs the plan uses are loaded: what `bpftool prog` shows is what runs.
    let used = Program::ALL
        .into_iter()
        .filter(|program| plan.attachments.iter().any(|attachment| attachment.program == *program));
    for program in used {
        let name = program.name();
        uprobe(&mut ebpf, name)?.load().with_context(|| format!("loading {name} into the kernel"))?;
    }
    // With every plan, as the CPU clocks and the sampler are: a thread that exits with calls
    // open ends them then, not at the next probe that looks.
    let program: &mut RawTracePoint = ebpf
        .program_mut(THREAD_EXIT_PROGRAM)
        .context("the kernel object has no thread_exit program")?
        .try_into()?;
    program.load().context("loading thread_exit into the kernel")?;
    program.attach(THREAD_EXIT_TRACEPOINT).context("attaching to the sched_process_exit tracepoint")?;
    Ok(ebpf)
}

/// One process's uprobes, to detach when it is no longer followed.
pub struct ProcessLinks(Vec<(Program, UProbeLinkId)>);

impl ProcessLinks {
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// Attaches the plan's probes for executable `executable` to process `pid` only (its
/// executable as `/proc/PID/exe` names it, so a process in another mount namespace is found
/// too). `log` says each probe's site, for the first process.
pub fn attach_process(
    ebpf: &mut Ebpf,
    pid: NonZeroU32,
    plan: &Plan,
    executable: usize,
    log: bool,
) -> Result<ProcessLinks> {
    let target = format!("/proc/{pid}/exe");
    let mut links = ProcessLinks(Vec::new());
    for attachment in plan.attachments.iter().filter(|attachment| attachment.target == executable) {
        let point = UProbeAttachPoint {
            location: UProbeAttachLocation::AbsoluteOffset(attachment.file_offset),
            cookie: Some(attachment.cookie.encode()),
        };
        let attached = uprobe(ebpf, attachment.program.name())?
            .attach(point, &target, UProbeScope::OneProcess(pid))
            .map_err(|error| attach_failure(error.into(), attachment, &target));
        let link = match attached {
            Ok(link) => link,
            Err(error) => {
                // What was attached to this process goes with it.
                detach_process(ebpf, links);
                return Err(error);
            }
        };
        links.0.push((attachment.program, link));
        if !log {
            continue;
        }
        info!(
            function = %attachment.function,
            program = attachment.program.name(),
            offset = attachment.site.offset,
            instruction = %attachment.site.instruction,
            "probe attached: {}", attachment.reason
        );
        if let Some(caution) = attachment.caution {
            warn!(function = %attachment.function, "{caution}");
        }
    }
    Ok(links)
}

/// Detaches a process's uprobes. The kernel takes its time to unregister a uprobe (measured:
/// 0.7 s for five), so their links are closed on a thread of their own, not on the one that
/// drains the events.
pub fn detach_process(ebpf: &mut Ebpf, links: ProcessLinks) {
    let mut owned = Vec::with_capacity(links.0.len());
    for (program, link) in links.0 {
        if let Ok(program) = uprobe(ebpf, program.name())
            && let Ok(link) = program.take_link(link)
        {
            owned.push(link);
        }
    }
    let closing = std::thread::Builder::new().name("detach".into()).spawn(move || drop(owned));
    if let Err(error) = closing {
        warn!(%error, "cannot start a thread to detach an exited process's probes");
    }
}

/// A uprobe the kernel refused for lack of privilege, or on an instruction it cannot probe,
/// is a refusal of its own: the capability check before attaching cannot know that a user
/// other than root needs CAP_SYS_ADMIN too, and `Unknown error 524` helps nobody.
fn attach_failure(error: anyhow::Error, attachment: &Attachment, target: &str) -> anyhow::Error {
    let function = &attachment.function;
    let io_error = error.chain().find_map(|cause| cause.downcast_ref::<std::io::Error>());
    if io_error.and_then(std::io::Error::raw_os_error) == Some(ENOTSUPP) {
        return Refusal::new(
            Class::Unprobeable,
            format!(
                "the kernel cannot probe `{}` at {function}+{:#x} ({}): probe a function that calls it",
                attachment.site.instruction,
                attachment.site.offset,
                match attachment.site.handling {
                    Handling::Refused(why) => why,
                    _ => "ENOTSUPP",
                }
            ),
        )
        .into();
    }
    if io_error.is_none_or(|io| io.kind() != std::io::ErrorKind::PermissionDenied) {
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
