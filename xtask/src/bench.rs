//! `cargo xtask bench`: what pool-obs costs, measured side by side with the kernel's floor and
//! with bpftrace in one run. Configurations alternate round by round, and every figure is a
//! median with its range, because these machines are noisy.

mod agent;
mod overhead;
mod probes;
mod profiles;
mod scrape;

use std::{path::Path, time::Duration};

use agent::{agent_cpu, endpoints, loss};
use anyhow::{Context, Result, bail};
use overhead::demo_overhead;
use pool_obs_tests::processes::{Pool, StartFile, args, binary};
use probes::{build_patchable_target, probe_costs};
use profiles::{cpu_costs, stacks_against_perf};
use scrape::scrapes;

use crate::setup::{ensure_debian_packages, setup, workspace_root};

#[derive(clap::Args)]
pub struct Options {
    /// Fewer calls and rounds: done in under three minutes.
    #[arg(long)]
    quick: bool,
    /// Only these sections (repeatable): probes, agent-cpu, loss, endpoints, scrapes, overhead,
    /// cpu, stacks.
    #[arg(long)]
    only: Vec<String>,
}

struct Scale {
    rounds: usize,
    calls: u64,
    loss_calls: u64,
    paced_seconds: u64,
    requests_per_endpoint: usize,
    overhead_seconds: u64,
}

impl Scale {
    fn new(quick: bool) -> Self {
        if quick {
            Scale {
                rounds: 3,
                calls: 200_000,
                loss_calls: 600_000,
                paced_seconds: 3,
                requests_per_endpoint: 200,
                overhead_seconds: 5,
            }
        } else {
            Scale {
                rounds: 5,
                calls: 2_000_000,
                loss_calls: 4_000_000,
                paced_seconds: 10,
                requests_per_endpoint: 1000,
                overhead_seconds: 20,
            }
        }
    }
}

pub fn run(options: &Options) -> Result<()> {
    let tools = setup()?;
    tools.build_release()?;
    ensure_debian_packages(&["bpftrace", "bpftool", "linux-perf"])?;
    let scale = Scale::new(options.quick);
    if options.only.is_empty() || options.only.iter().any(|only| only == "probes") {
        build_patchable_target(&tools)?;
    }
    let sections: [(&str, Section); 8] = [
        ("probes", probe_costs),
        ("agent-cpu", agent_cpu),
        ("loss", loss),
        ("endpoints", endpoints),
        ("scrapes", scrapes),
        ("overhead", demo_overhead),
        ("cpu", cpu_costs),
        ("stacks", stacks_against_perf),
    ];
    if let Some(unknown) = options.only.iter().find(|only| !sections.iter().any(|(name, _)| name == *only)) {
        bail!("no bench section `{unknown}`: {}", sections.map(|(name, _)| name).join(", "));
    }
    let mut report = String::new();
    for (name, section) in sections {
        if options.only.is_empty() || options.only.iter().any(|only| only == name) {
            report += &section(&scale)?;
        }
    }
    println!("{report}");
    let saved = workspace_root().join("target").join("bench.md");
    std::fs::write(&saved, &report).with_context(|| format!("writing {}", saved.display()))?;
    eprintln!("xtask: the report is also in {}", saved.display());
    Ok(())
}

/// One section of the report.
type Section = fn(&Scale) -> Result<String>;

/// Median, minimum and maximum.
fn stats(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = if sorted.len() % 2 == 1 {
        sorted[sorted.len() / 2]
    } else {
        (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0
    };
    (median, sorted[0], sorted[sorted.len() - 1])
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**missed**" }
}

fn bench_target(start: &StartFile, extra: &[&str]) -> Pool {
    bench_target_at(&binary("bench-target"), start, extra)
}

/// A build of bench-target, waiting for `start`.
fn bench_target_at(path: &Path, start: &StartFile, extra: &[&str]) -> Pool {
    Pool::start_binary(path, &[args(extra), start.arg().to_vec()].concat())
}

/// The target's report: nanoseconds per call and calls made.
fn target_result(pool: &mut Pool) -> Result<TargetResult> {
    let line = pool.stdout.recv_timeout(Duration::from_secs(600)).context("bench-target's result")?;
    let result: serde_json::Value = serde_json::from_str(&line)?;
    pool.wait_for_exit();
    Ok(TargetResult {
        ns_per_call: result["ns_per_call"].as_f64().unwrap_or(f64::NAN),
        calls: result["calls"].as_u64().unwrap_or(0),
        uprobe_trampoline: result["uprobe_trampoline"].as_bool().unwrap_or(false),
    })
}

/// bench-target's result line.
struct TargetResult {
    ns_per_call: f64,
    calls: u64,
    /// Whether the kernel optimised a uprobe in it into a call to its trampoline.
    uprobe_trampoline: bool,
}

/// CPU seconds a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |index: usize| fields.get(index).and_then(|field| field.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of /proc/PID/stat, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / clock_ticks()
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// Turns the kernel's per-program run-time statistics on while alive.
struct BpfStats;

impl BpfStats {
    fn enable() -> Result<Self> {
        std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")
            .context("enabling kernel.bpf_stats_enabled")?;
        Ok(Self)
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
    }
}
