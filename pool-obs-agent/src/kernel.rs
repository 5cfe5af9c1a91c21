//! What the kernel programs need of the kernel that runs them, in one place that attaching and
//! `pool-obs-agent kernel` share: the object and how it is opened, the facilities it uses, and
//! the stack each program's deepest chain of calls takes.

pub mod facilities;
pub mod stack;

use anyhow::{Context, Result};
use aya::{Ebpf, EbpfLoader, programs::Program};
use pool_obs_common::maps;

use crate::error::{Class, Refusal};
use facilities::Serves;

/// The kernel programs, as `pool-obs-ebpf` built them.
pub static KERNEL_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pool-obs"));

pub struct LoadSettings {
    /// Ring buffer size; the kernel rounds it up to a power-of-two number of pages.
    pub ring_bytes: u32,
    /// Wake the reader when this much data waits (0: on every event).
    pub wakeup_bytes: u64,
    /// Have the programs log every value they fail to read.
    pub debug_probes: bool,
}

/// `--ring-buffer-bytes`' default.
pub const DEFAULT_RING_BYTES: u32 = 4 << 20;

impl LoadSettings {
    pub fn new(ring_bytes: u32, debug_probes: bool) -> Self {
        // Wake the reader only when a quarter of the buffer waits; the drain timer does the rest.
        Self { ring_bytes, wakeup_bytes: u64::from(ring_bytes / 4), debug_probes }
    }
}

/// Creates the object's maps in the kernel; its programs are loaded one by one after.
pub fn open(settings: &LoadSettings) -> Result<Ebpf> {
    let debug_probes = u8::from(settings.debug_probes);
    EbpfLoader::new()
        // The threads' open calls, registers and CPU clocks are task storage, which only the
        // kernel programs use: aya creates it without a typed map of its own.
        .allow_unsupported_maps()
        .map_max_entries(maps::EVENTS, settings.ring_bytes)
        .override_global("WAKEUP_BYTES", &settings.wakeup_bytes, true)
        .override_global("DEBUG_PROBES", &debug_probes, true)
        .load(KERNEL_OBJECT)
        .context("loading the kernel programs")
}

/// Refuses to go on, with the exit code for an unsupported kernel, when the kernel lacks what
/// every probe needs; says in the log what else is off.
pub fn require_facilities() -> Result<facilities::Detected> {
    let detected = facilities::detect();
    if let Some(facility) = detected.blocking() {
        return Err(Refusal::new(Class::UnsupportedKernel, facility.missing_line()).into());
    }
    for facility in &detected.missing {
        tracing::warn!(feature = facility.serves.feature(), "{}", facility.missing_line());
    }
    Ok(detected)
}

/// One program of the object as this kernel took it.
pub struct Loaded {
    pub stack: stack::ProgramStack,
    /// The instructions the verifier walked, or why the kernel refused the program.
    pub verified: Result<u32, String>,
}

/// What each program serves: the CPU clocks and the sampler can be off on a kernel that lacks
/// them, every other program is a probe's.
fn program_serves(program: &str) -> Serves {
    match program {
        "cpu_switch" => Serves::CpuTime,
        "cpu_sample" => Serves::Profiles,
        _ => Serves::Probes,
    }
}

/// `pool-obs-agent kernel`: this kernel's facilities, then every program of the object loaded
/// and verified (not only those a manifest needs), with its stack and verified instructions.
/// Fails when the kernel lacks what every probe needs, refuses a probe's program, or a
/// program's chain of calls comes within 64 bytes of the verifier's limit
/// ([`stack::MARGIN_LIMIT`]).
pub fn check() -> Result<()> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("kernel {}", release.trim());
    let detected = facilities::detect();
    let mut off: Vec<&str> = Vec::new();
    let mut blocking: Vec<String> = Vec::new();
    for facility in &facilities::FACILITIES {
        let present = !detected.missing.iter().any(|missing| std::ptr::eq(*missing, facility));
        println!(
            "  {} {} (since {}; for {})",
            if present { "yes" } else { "NO " },
            facility.name,
            facility.since,
            facility.serves.feature()
        );
        match (present, facility.serves) {
            (true, _) => {}
            (false, Serves::Probes) => blocking.push(facility.missing_line()),
            (false, serves) => off.push(serves.feature()),
        }
    }
    println!("{:<20} {:>6}  {:<22} {:>9}", "program", "stack", "frames", "verified");
    for program in load_every_program()? {
        let stack = &program.stack;
        let verified = program.verified.as_ref().map_or("refused".to_string(), u32::to_string);
        println!(
            "{:<20} {:>6}  {:<22} {:>9}",
            stack.program,
            stack.combined(),
            stack.frames_text(),
            verified
        );
        if let Err(why) = &program.verified {
            match program_serves(&stack.program) {
                Serves::Probes => blocking.push(format!("the kernel refused {}: {why}", stack.program)),
                serves => off.push(serves.feature()),
            }
        }
        if stack.combined() > stack::MARGIN_LIMIT {
            blocking.push(format!(
                "{} takes {} bytes of stack, over the {} pool-obs allows itself under the verifier's {}",
                stack.program,
                stack.combined(),
                stack::MARGIN_LIMIT,
                stack::VERIFIER_LIMIT
            ));
        }
    }
    if !blocking.is_empty() {
        return Err(Refusal::new(Class::UnsupportedKernel, blocking.join("; ")).into());
    }
    off.sort_unstable();
    off.dedup();
    if off.is_empty() {
        println!("ok: this kernel runs every pool-obs program");
    } else {
        println!("ok: pool-obs runs here with {} off", off.join(", "));
    }
    Ok(())
}

/// Loads every program of the object into the kernel, each beside its stack, then drops them.
fn load_every_program() -> Result<Vec<Loaded>> {
    let stacks = stack::program_stacks(KERNEL_OBJECT).context("reading the kernel object")?;
    let mut ebpf = open(&LoadSettings::new(DEFAULT_RING_BYTES, false))?;
    let mut loaded = Vec::new();
    for stack in stacks {
        let program = ebpf
            .program_mut(&stack.program)
            .with_context(|| format!("the kernel object has no program {}", stack.program))?;
        let verified = load(program).map_err(|error| format!("{error:#}")).and_then(|()| {
            let info = program.info().map_err(|error| error.to_string())?;
            // Kernels before 5.16 do not count them.
            Ok(info.verified_instruction_count().unwrap_or(0))
        });
        loaded.push(Loaded { stack, verified });
    }
    Ok(loaded)
}

fn load(program: &mut Program) -> Result<()> {
    match program {
        Program::UProbe(program) => program.load()?,
        Program::RawTracePoint(program) => program.load()?,
        Program::PerfEvent(program) => program.load()?,
        other => anyhow::bail!("a program of a type pool-obs does not use: {:?}", other.prog_type()),
    }
    Ok(())
}
