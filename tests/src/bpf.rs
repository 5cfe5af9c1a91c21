//! What BPF objects exist: the ones a process holds (from its fdinfo) and the ones the kernel
//! lists (from `bpftool`).

use std::{collections::BTreeSet, process::Command};

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Objects {
    pub programs: BTreeSet<u64>,
    pub links: BTreeSet<u64>,
}

/// The programs and links whose file descriptors `pid` holds.
pub fn held_by(pid: u32) -> Objects {
    let mut objects = Objects::default();
    let fdinfo = std::fs::read_dir(format!("/proc/{pid}/fdinfo")).expect("read the process's fdinfo");
    for entry in fdinfo.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else { continue };
        for line in text.lines() {
            let id = |prefix| line.strip_prefix(prefix).and_then(|id: &str| id.trim().parse().ok());
            if let Some(id) = id("prog_id:") {
                objects.programs.insert(id);
            }
            if let Some(id) = id("link_id:") {
                objects.links.insert(id);
            }
        }
    }
    objects
}

/// Which of `held` the kernel still lists after waiting up to two seconds: it frees programs and
/// links in deferred work once their last file descriptor closes, not at once.
pub fn still_listed(held: &Objects) -> Objects {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let listed = listed();
        let remaining = Objects {
            programs: held.programs.intersection(&listed.programs).copied().collect(),
            links: held.links.intersection(&listed.links).copied().collect(),
        };
        let empty = remaining.programs.is_empty() && remaining.links.is_empty();
        if empty || std::time::Instant::now() > deadline {
            return remaining;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Every program and link the kernel has loaded, as `bpftool` lists them.
pub fn listed() -> Objects {
    Objects { programs: bpftool_ids("prog"), links: bpftool_ids("link") }
}

fn bpftool_ids(kind: &str) -> BTreeSet<u64> {
    let output = Command::new("bpftool")
        .args([kind, "list", "--json"])
        .output()
        .expect("run bpftool (cargo xtask setup installs it)");
    assert!(
        output.status.success(),
        "bpftool {kind} list failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let items: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).expect("bpftool prints JSON");
    items.iter().filter_map(|item| item["id"].as_u64()).collect()
}

/// What every agent holds besides its manifest's probes, as (programs, links): the tracepoint
/// programs of threads' exits and of their CPU clocks at context switches (a link each), and
/// the CPU sampler, on a perf event per online CPU.
pub fn every_agents_own() -> (usize, usize) {
    // SAFETY: sysconf reads a system setting.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) } as usize;
    (3, 2 + cpus)
}

/// The run time the kernel counted for each program `pid` holds, by name, as (total ns, runs):
/// only while `kernel.bpf_stats_enabled` is 1.
pub fn run_times(pid: u32) -> std::collections::BTreeMap<String, (u64, u64)> {
    let held = held_by(pid);
    let output = Command::new("bpftool").args(["prog", "list", "--json"]).output().expect("run bpftool");
    let programs: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    let mut times = std::collections::BTreeMap::new();
    for program in programs.as_array().into_iter().flatten() {
        if !program["id"].as_u64().is_some_and(|id| held.programs.contains(&id)) {
            continue;
        }
        let name = program["name"].as_str().unwrap_or("?").to_string();
        let runs = (program["run_time_ns"].as_u64().unwrap_or(0), program["run_cnt"].as_u64().unwrap_or(0));
        times.insert(name, runs);
    }
    times
}
