//! The CPU sampler (`pool-obs-ebpf/src/sample.rs`), user side. It is attached at start to a
//! `cpu-clock` software event on every online CPU (no PMU is needed), and switched on only
//! while a profile is taken: once attached, the agent may give up its capabilities (with
//! `--pid`), and a profile asked for later still works. Switched off, each tick costs one
//! map lookup.

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf,
    maps::{Array, MapData},
    programs::{
        PerfEvent,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
    util::online_cpus,
};
use pool_obs_common::maps;

const PROGRAM: &str = "cpu_sample";

/// The sampler, attached and switched off.
pub struct Sampler {
    switch: Array<MapData, u32>,
}

impl Sampler {
    /// Attaches the sampler to every online CPU, `hz` times a second, switched off.
    pub fn attach(ebpf: &mut Ebpf, hz: u64) -> Result<Self> {
        let cpus = online_cpus().map_err(|(what, error)| anyhow!("{what}: {error}"))?;
        let program: &mut PerfEvent = ebpf
            .program_mut(PROGRAM)
            .with_context(|| format!("the kernel object has no program {PROGRAM}"))?
            .try_into()?;
        program.load().with_context(|| format!("loading {PROGRAM} into the kernel"))?;
        for cpu in cpus {
            program
                .attach(
                    PerfEventConfig::Software(SoftwareEvent::CpuClock),
                    PerfEventScope::AllProcessesOneCpu { cpu },
                    SamplePolicy::Frequency(hz),
                    false,
                )
                .with_context(|| format!("sampling CPU {cpu} (a cpu-clock perf event)"))?;
        }
        let map = ebpf.take_map(maps::SAMPLING).context("the kernel object has no SAMPLING map")?;
        Ok(Self { switch: Array::try_from(map)? })
    }

    /// Switches sampling on or off.
    pub fn switch(&mut self, on: bool) -> Result<()> {
        self.switch.set(0, u32::from(on), 0).context("switching the CPU sampler")
    }
}
