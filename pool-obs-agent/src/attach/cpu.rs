//! The kernel's CPU clocks (`pool-obs-ebpf/src/cpu.rs`), user side: started once at load,
//! then told which processes are followed, and read for each process's total.

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, PerCpuHashMap, PerCpuValues},
    programs::RawTracePoint,
    util::nr_cpus,
};
use pool_obs_common::maps;

use crate::clock::monotonic_ns;

const PROGRAM: &str = "cpu_switch";
const TRACEPOINT: &str = "sched_switch";

/// The followed processes' CPU time, as the kernel adds it up at each context switch.
pub struct CpuClocks {
    processes: PerCpuHashMap<MapData, u32, u64>,
    cpus: usize,
}

impl CpuClocks {
    /// Starts every CPU's slice now, then attaches the program that keeps the clocks.
    pub fn start(ebpf: &mut Ebpf) -> Result<Self> {
        let cpus = nr_cpus().map_err(|(what, error)| anyhow!("{what}: {error}"))?;
        let now = monotonic_ns();
        let map = ebpf.map_mut(maps::SLICE_STARTED).context("the kernel object has no SLICE_STARTED map")?;
        let mut slices: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
        slices.set(0, PerCpuValues::try_from(vec![now; cpus])?, 0).context("starting the CPU clocks")?;
        let program: &mut RawTracePoint = ebpf
            .program_mut(PROGRAM)
            .with_context(|| format!("the kernel object has no {PROGRAM} program"))?
            .try_into()?;
        program.load().with_context(|| format!("loading {PROGRAM} into the kernel"))?;
        program.attach(TRACEPOINT).with_context(|| format!("attaching to the {TRACEPOINT} tracepoint"))?;
        let map = ebpf.take_map(maps::PROCESS_CPU).context("the kernel object has no PROCESS_CPU map")?;
        Ok(Self { processes: PerCpuHashMap::try_from(map)?, cpus })
    }

    /// Counts `pid`'s CPU time from now.
    pub fn follow(&mut self, pid: u32) -> Result<()> {
        let zero = PerCpuValues::try_from(vec![0u64; self.cpus])?;
        self.processes.insert(pid, zero, 0).context("following a process's CPU time")
    }

    pub fn unfollow(&mut self, pid: u32) {
        let _ = self.processes.remove(&pid);
    }

    /// `pid`'s CPU time since it was followed, to its threads' last context switches.
    pub fn process_ns(&self, pid: u32) -> Option<u64> {
        let values = self.processes.get(&pid, 0).ok()?;
        Some(values.iter().sum())
    }
}
