//! Which processes the agent follows, and what it keeps of each. `--pid` names one process;
//! `--exe` every process that runs that file (the same device and inode), those running when
//! the agent starts and those that start later, found by a scan of /proc at each refresh.
//! Each process gets its probes of its own (attached to it alone, so that no other process
//! pays for them), its own aggregator, and series labelled with its pid. An exited process is
//! detached at once; with `--exe`, its series stay for `--keep-exited` so that the last scrapes
//! see its final counts, then go, as a restarted pool's new series start from zero.

use std::{
    collections::{BTreeMap, BTreeSet},
    num::NonZeroU32,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Result;
use aya::Ebpf;
use tracing::{info, warn};

use crate::{
    aggregate::{self, Aggregator},
    anomaly::Anomaly,
    attach::{self, ProcessLinks, cpu::CpuClocks, plan::Plan, sampling::Sampler},
    decode::{self, Event},
    memory::MemorySampler,
    profile::{
        self, Collector, Selection,
        objects::{Objects, ProcessCode},
    },
    publish::{Metrics, ProcessMetrics},
    target::Target,
};

mod cgroup;
mod executable;
pub mod targets;

pub use executable::Executable;

/// What to follow.
pub enum Selector {
    /// These processes, each with its own manifest.
    Pids(Vec<NonZeroU32>),
    /// Every process that runs one of these executables; the index of each is its target in
    /// the plan ([`crate::attach::plan::Attachment::target`]).
    Exe(Vec<Executable>),
}

impl Selector {
    /// What the agent follows, for people.
    pub fn shown(&self) -> String {
        match self {
            Selector::Pids(pids) => {
                let pids: Vec<String> = pids.iter().map(ToString::to_string).collect();
                format!("PID {}", pids.join(", "))
            }
            Selector::Exe(executables) => {
                let shown: Vec<&str> =
                    executables.iter().map(|executable| executable.shown.as_str()).collect();
                format!("every process of {}", shown.join(", "))
            }
        }
    }
}

/// One process followed.
pub struct Followed {
    /// Which executable it runs, of the agent's.
    pub executable: usize,
    pub target: Target,
    pub aggregator: Aggregator,
    pub memory: MemorySampler,
    pub metrics: ProcessMetrics,
    /// Where its code is, for profiles: `None` if it could not be read.
    code: Option<ProcessCode>,
    /// Its probes, until it exits.
    links: Option<ProcessLinks>,
    /// When it was seen gone.
    pub exited: Option<Instant>,
}

pub struct Fleet {
    pub selector: Selector,
    /// The kernel's CPU clocks, when they could be started.
    cpu: Option<CpuClocks>,
    /// The profile being taken, which the samples go to.
    pub profile: Option<Collector>,
    /// The processes' code files, loaded for profiles and kept for the next.
    objects: Objects,
    pub processes: BTreeMap<u32, Followed>,
    /// Processes refused past `max_processes`, warned of once each.
    refused: BTreeSet<u32>,
    max_processes: usize,
    keep_exited: Duration,
    metrics: Arc<Metrics>,
    settings: aggregate::Settings,
}

impl Fleet {
    pub fn new(
        selector: Selector,
        cpu: Option<CpuClocks>,
        metrics: Arc<Metrics>,
        settings: aggregate::Settings,
        max_processes: usize,
        keep_exited: Duration,
    ) -> Self {
        Self {
            selector,
            cpu,
            profile: None,
            objects: Objects::default(),
            processes: BTreeMap::new(),
            refused: BTreeSet::new(),
            max_processes,
            keep_exited,
            metrics,
            settings,
        }
    }

    /// Follows `target`, a process of executable `executable`: attaches that executable's
    /// probes to it alone, then counts its events.
    pub fn follow(&mut self, ebpf: &mut Ebpf, plan: &Plan, target: Target, executable: usize) -> Result<()> {
        let pid = target.pid.get();
        if let Some(earlier) = self.processes.remove(&pid) {
            // Its PID's earlier process, exited: its series go now, as the new one's begin.
            self.forget(earlier);
        }
        let first = !self.processes.values().any(|process| process.executable == executable);
        // Its threads' clocks run from before its first probe fires.
        if let Some(cpu) = self.cpu.as_mut()
            && let Err(error) = cpu.follow(pid)
        {
            // Its requests are counted all the same; only their CPU time is not.
            warn!(pid, "the process's CPU time is not counted: {error:#}");
        }
        let links = match attach::attach_process(ebpf, target.pid, plan, executable, first) {
            Ok(links) => links,
            Err(error) => {
                if let Some(cpu) = self.cpu.as_mut() {
                    cpu.unfollow(pid);
                }
                return Err(error);
            }
        };
        let container = cgroup::of(pid);
        let metrics = self.metrics.for_process(pid, &container.id, &container.pod_uid);
        metrics.up.set(1);
        let mut memory = MemorySampler::new(pid);
        let sample = memory.sample();
        metrics.memory.set(sample.resident_bytes as i64);
        metrics.memory_peak.set(sample.peak_resident_bytes as i64);
        self.metrics.probes_attached.inc_by(links.len() as i64);
        info!(pid, exe = %target.exe, probes = links.len(), "following the process");
        let aggregator =
            Aggregator::new(pid, self.metrics.clone(), plan.probes.clone(), self.settings.clone());
        self.processes.insert(
            pid,
            Followed {
                executable,
                target,
                aggregator,
                memory,
                metrics,
                code: ProcessCode::capture(pid),
                links: Some(links),
                exited: None,
            },
        );
        Ok(())
    }

    /// With `--exe`: follows the processes of the file that started since the last look.
    pub fn discover(&mut self, ebpf: &mut Ebpf, plan: &Plan) {
        let Selector::Exe(executables) = &mut self.selector else { return };
        let Ok(entries) = std::fs::read_dir("/proc") else { return };
        // An exited process's PID may be taken by a new process: that one is followed.
        let known = |pid: &u32| {
            self.processes.get(pid).is_some_and(|process| process.exited.is_none())
                || self.refused.contains(pid)
        };
        let started: Vec<(u32, usize)> = entries
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| !known(pid))
            .filter_map(|pid| {
                Some((pid, executables.iter_mut().position(|executable| executable.runs_in(pid))?))
            })
            .collect();
        for (pid, executable) in started {
            let live = self.processes.values().filter(|process| process.exited.is_none()).count();
            if live >= self.max_processes {
                self.refused.insert(pid);
                self.metrics.processes_refused.inc();
                warn!(
                    pid,
                    max_processes = self.max_processes,
                    "not following the process: {} are followed already (--max-processes)",
                    self.max_processes
                );
                continue;
            }
            let followed = Target::open(pid)
                .map_err(anyhow::Error::from)
                .and_then(|target| self.follow(ebpf, plan, target, executable));
            if let Err(error) = followed {
                // It may have exited meanwhile; a real problem shows on every process.
                warn!(pid, "cannot follow the process: {error:#}");
            }
        }
    }

    /// Notices the processes that exited: detaches them, and with `--exe`, forgets those gone
    /// longer than `--keep-exited`.
    pub fn check_exits(&mut self, ebpf: &mut Ebpf, now: Instant) {
        for (pid, process) in &mut self.processes {
            if process.exited.is_some() || process.target.is_alive() {
                continue;
            }
            process.exited = Some(now);
            process.metrics.up.set(0);
            if let Some(cpu) = self.cpu.as_mut() {
                cpu.unfollow(*pid);
            }
            if let Some(links) = process.links.take() {
                self.metrics.probes_attached.dec_by(links.len() as i64);
                attach::detach_process(ebpf, links);
            }
            info!(pid, "the process exited");
        }
        if matches!(self.selector, Selector::Pids(_)) {
            return;
        }
        let gone: Vec<u32> = self
            .processes
            .iter()
            .filter(|(_, process)| {
                process.exited.is_some_and(|at| now.duration_since(at) >= self.keep_exited)
            })
            .map(|(pid, _)| *pid)
            .collect();
        for pid in gone {
            if let Some(process) = self.processes.remove(&pid) {
                self.forget(process);
            }
        }
        self.refused.retain(|pid| Path::new(&format!("/proc/{pid}")).exists());
    }

    /// Forgets an exited process: its series go.
    fn forget(&self, mut process: Followed) {
        process.aggregator.flush_request_logs();
        self.metrics.forget_process(&process.metrics);
    }

    /// Counts one ring-buffer record in the aggregator of the process that wrote it.
    pub fn apply(&mut self, record: &[u8]) {
        match decode::decode(record) {
            Ok(Event::CpuSampled(sample)) => {
                let (Some(process), Some(profile)) =
                    (self.processes.get_mut(&sample.header.pid), self.profile.as_mut())
                else {
                    return;
                };
                let model = process.aggregator.label_sample(&sample);
                let model = model.as_deref().unwrap_or(profile::IDLE);
                if profile.wants(sample.header.pid, model)
                    && let Some(code) = &process.code
                {
                    profile.add(
                        &sample,
                        model,
                        decode::sample_stack(record, &sample),
                        code,
                        &mut self.objects,
                    );
                }
            }
            Ok(event) => {
                if let Some(process) = self.processes.get_mut(&event.header().pid) {
                    process.aggregator.apply(&event);
                }
            }
            Err(error) => {
                self.metrics.anomalies.add(Anomaly::UndecodableEvent, 1);
                warn!(%error, "undecodable event");
            }
        }
    }

    pub fn all_exited(&self) -> bool {
        self.processes.values().all(|process| process.exited.is_some())
    }

    /// Starts a profile of `selection`: samples go to it until [`Fleet::stop_sampling`], and the
    /// caller takes it.
    pub fn start_profile(
        &mut self,
        sampler: Option<&mut Sampler>,
        selection: Selection,
    ) -> Result<(), String> {
        if self.profile.is_some() {
            return Err("a profile is being taken: one at a time, ask again when it is done".into());
        }
        if let Some(pid) = selection.pid
            && self.processes.get(&pid).is_none_or(|process| process.exited.is_some())
        {
            return Err(format!("the agent does not follow a running process {pid}"));
        }
        let sampler = sampler.ok_or("CPU profiles are not available: see the agent's log at its start")?;
        sampler.switch(true).map_err(|error| format!("{error:#}"))?;
        info!(seconds = selection.seconds, model = ?selection.model, pid = ?selection.pid, "taking a CPU profile");
        self.profile = Some(Collector::new(selection));
        Ok(())
    }

    /// Stops sampling; the profile, once the caller drained the samples still in the ring.
    pub fn stop_sampling(&mut self, sampler: Option<&mut Sampler>) {
        if let Some(sampler) = sampler
            && let Err(error) = sampler.switch(false)
        {
            warn!("{error:#}");
        }
    }

    /// Brings each running process's CPU time up to the kernel's count.
    pub fn sample_cpu(&mut self) {
        for (pid, process) in self.processes.iter_mut().filter(|(_, process)| process.exited.is_none()) {
            if let Some(total_ns) = self.cpu.as_ref().and_then(|cpu| cpu.process_ns(*pid)) {
                process.aggregator.process_cpu(total_ns);
            }
        }
    }

    pub fn sample_memory(&mut self) {
        for process in self.processes.values_mut().filter(|process| process.exited.is_none()) {
            let sample = process.memory.sample();
            process.metrics.memory.set(sample.resident_bytes as i64);
            process.metrics.memory_peak.set(sample.peak_resident_bytes as i64);
            self.metrics.system_memory.set(sample.system_bytes as i64);
        }
    }
}
