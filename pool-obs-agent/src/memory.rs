//! The target's memory, from procfs: resident memory of the pool process and every process
//! descended from it, and the machine's total.

use std::collections::HashMap;

use procfs::{Current, Meminfo, process::all_processes};

#[derive(Clone, Copy, Debug, Default)]
pub struct MemorySample {
    pub resident_bytes: u64,
    /// The largest `resident_bytes` sampled so far.
    pub peak_resident_bytes: u64,
    pub system_bytes: u64,
}

pub struct MemorySampler {
    pid: i32,
    page_size: u64,
    last: MemorySample,
}

impl MemorySampler {
    pub fn new(pid: u32) -> Self {
        Self { pid: pid as i32, page_size: procfs::page_size(), last: MemorySample::default() }
    }

    pub fn last(&self) -> MemorySample {
        self.last
    }

    /// Samples now; a process that exits mid-sample simply stops counting.
    pub fn sample(&mut self) -> MemorySample {
        let resident_pages: u64 = self
            .family()
            .into_iter()
            .filter_map(|pid| procfs::process::Process::new(pid).ok()?.statm().ok())
            .map(|statm| statm.resident)
            .sum();
        let resident_bytes = resident_pages * self.page_size;
        self.last = MemorySample {
            resident_bytes,
            peak_resident_bytes: self.last.peak_resident_bytes.max(resident_bytes),
            system_bytes: Meminfo::current().map_or(self.last.system_bytes, |meminfo| meminfo.mem_total),
        };
        self.last
    }

    /// The target and its descendants.
    fn family(&self) -> Vec<i32> {
        let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
        if let Ok(processes) = all_processes() {
            for stat in processes.flatten().filter_map(|process| process.stat().ok()) {
                children.entry(stat.ppid).or_default().push(stat.pid);
            }
        }
        let mut family = vec![self.pid];
        let mut next = 0;
        while let Some(&pid) = family.get(next) {
            family.extend(children.get(&pid).into_iter().flatten());
            next += 1;
        }
        family
    }
}
