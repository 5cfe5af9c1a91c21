//! What CPU time per model and profiles cost, and whether pool-obs's stacks agree with `perf`'s.

use std::{
    collections::BTreeMap,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use pool_obs_tests::{
    bpf, http,
    processes::{Agent, Pool, StartFile, args, free_address, manifest, stop},
};

use super::{BpfStats, Scale, cpu_seconds, verdict};

/// What CPU time per model and profiles cost: the context-switch program that keeps threads'
/// CPU clocks (always on), and a profile at 99 Hz (on demand), on `cpu-pool`.
pub(super) fn cpu_costs(scale: &Scale) -> Result<String> {
    let _stats = BpfStats::enable()?;
    // The CPU clocks alone for `idle` s, then a profile of `profile_seconds`.
    let (idle, profile_seconds) = (scale.paced_seconds, 10);
    let requests = (120 * (idle + profile_seconds + 2)).to_string();
    let start = StartFile::new("cpu-costs");
    let mut pool =
        Pool::start_named("cpu-pool", &[args(&["--requests", &requests]), start.arg().to_vec()].concat());
    let mut agent = Agent::attach(pool.pid(), &manifest("cpu-pool.toml"), free_address(), &[]);
    let agent_pid = agent.child.id();
    start.start();
    // First half: CPU clocks only. Second half: a profile as well.
    let before = (bpf::run_times(agent_pid), cpu_seconds(agent_pid), Instant::now());
    thread::sleep(Duration::from_secs(idle));
    let middle = (bpf::run_times(agent_pid), cpu_seconds(agent_pid), Instant::now());
    let path = format!("/profile?seconds={profile_seconds}&format=folded");
    let profile = http::get_waiting(agent.address, &path, Duration::from_secs(profile_seconds + 30))?;
    let after = (bpf::run_times(agent_pid), cpu_seconds(agent_pid), Instant::now());
    pool.summary();
    pool.wait_for_exit();
    stop(&mut agent.child, libc::SIGTERM);
    let program =
        |times: &BTreeMap<String, (u64, u64)>, name: &str| times.get(name).copied().unwrap_or((0, 0));
    let per_run = |from: &BTreeMap<String, (u64, u64)>, to: &BTreeMap<String, (u64, u64)>, name: &str| {
        let ((time_0, runs_0), (time_1, runs_1)) = (program(from, name), program(to, name));
        let runs = runs_1.saturating_sub(runs_0);
        ((time_1.saturating_sub(time_0)) as f64 / runs.max(1) as f64, runs)
    };
    let (switch_ns, switches) = per_run(&before.0, &middle.0, "cpu_switch");
    let first_half = middle.2.duration_since(before.2).as_secs_f64();
    let switch_share = 100.0 * switch_ns * switches as f64 / 1e9 / first_half;
    let (sample_ns, samples) = per_run(&middle.0, &after.0, "cpu_sample");
    let second_half = after.2.duration_since(middle.2).as_secs_f64();
    let sample_kernel_share = 100.0 * sample_ns * samples as f64 / 1e9 / second_half;
    let agent_idle = 100.0 * (middle.1 - before.1) / first_half;
    let agent_profiling = 100.0 * (after.1 - middle.1) / second_half;
    let sampling_share = sample_kernel_share + (agent_profiling - agent_idle).max(0.0);
    Ok(format!(
        "### CPU time per model and profiles (`cpu-pool`: {idle} s, then a {profile_seconds} s profile)\n\n\
         | | per run | runs/s | share of one core |\n|---|---|---|---|\n\
         | `cpu_switch` (sched_switch, every process; always on) | {switch_ns:.0} ns | {:.0} | {switch_share:.3}% |\n\
         | `cpu_sample` (99 Hz on each CPU, while profiling) | {sample_ns:.0} ns | {:.0} | {sample_kernel_share:.3}% |\n\
         | the agent, not profiling | | | {agent_idle:.2}% |\n\
         | the agent, profiling (unwinding each sample; symbolising at the end included) | | | {agent_profiling:.2}% |\n\n\
         A {profile_seconds} s profile ({} distinct stacks) cost {sampling_share:.2}% of a core in all \
         (target: under 1%: {}).\n\n",
        switches as f64 / first_half,
        samples as f64 / second_half,
        profile.body.lines().count(),
        verdict(sampling_share < 1.0),
    ))
}

/// What one tool's stacks of `cpu-pool` show: samples, mean depth, the share that reach the
/// thread's start (unwound whole), and the share of the model's samples with its hot function.
struct StackSummary {
    samples: u64,
    mean_depth: f64,
    whole: f64,
    hot: f64,
}

impl StackSummary {
    /// From stacks (frames innermost first, with `(model, frames, count)`), the model's samples
    /// only.
    fn of<'a>(stacks: impl Iterator<Item = (Vec<&'a str>, u64)>) -> Self {
        let (mut samples, mut frames, mut whole, mut hot) = (0, 0, 0, 0);
        for (stack, count) in stacks {
            samples += count;
            frames += stack.len() as u64 * count;
            let has = |name: &str| stack.iter().any(|frame| frame.contains(name));
            if has("start_thread") || has("thread_start") {
                whole += count;
            }
            if has("dense_forward") || has("sparse_lookup") {
                hot += count;
            }
        }
        let share = |part: u64| part as f64 / samples.max(1) as f64;
        Self {
            samples,
            mean_depth: frames as f64 / samples.max(1) as f64,
            whole: share(whole),
            hot: share(hot),
        }
    }

    fn row(&self, tool: &str) -> String {
        format!(
            "| {tool} | {} | {:.1} | {:.1}% | {:.1}% |\n",
            self.samples,
            self.mean_depth,
            100.0 * self.whole,
            100.0 * self.hot
        )
    }
}

/// The same seconds of `cpu-pool`, profiled by pool-obs and by `perf record --call-graph dwarf`
/// at once: do the stacks agree?
pub(super) fn stacks_against_perf(_: &Scale) -> Result<String> {
    let seconds = 4;
    let start = StartFile::new("against-perf");
    let mut pool =
        Pool::start_named("cpu-pool", &[args(&["--requests", "900"]), start.arg().to_vec()].concat());
    let mut agent = Agent::attach(pool.pid(), &manifest("cpu-pool.toml"), free_address(), &[]);
    start.start();
    let data = std::env::temp_dir().join(format!("pool-obs-bench-{}.perf.data", std::process::id()));
    let perf = Command::new("perf")
        .args(["record", "-F", "99", "--call-graph", "dwarf", "-p", &pool.pid().to_string(), "-o"])
        .arg(&data)
        .args(["--", "sleep", &seconds.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("running perf record")?;
    let path = format!("/profile?seconds={seconds}&format=folded");
    let ours = http::get_waiting(agent.address, &path, Duration::from_secs(seconds + 30))?;
    perf.wait_with_output()?;
    pool.summary();
    pool.wait_for_exit();
    stop(&mut agent.child, libc::SIGTERM);
    let script = Command::new("perf").args(["script", "-i"]).arg(&data).output().context("perf script")?;
    std::fs::remove_file(&data).ok();
    let text = String::from_utf8_lossy(&script.stdout);
    // perf script: a header line per sample, then one frame per line, then a blank line. Only
    // the samples pool-obs would name a model for (inside `serve`) are compared.
    let perf_stacks = text.split("\n\n").filter_map(|sample| {
        let frames: Vec<&str> =
            sample.lines().skip(1).map(str::trim).filter(|line| !line.is_empty()).collect();
        frames.iter().any(|frame| frame.contains("cpu_pool::serve")).then_some((frames, 1))
    });
    let perf = StackSummary::of(perf_stacks);
    // Folded: the model first, then frames outermost first; the same samples, inside `serve`.
    let our_stacks = ours.body.lines().filter_map(|line| {
        let (stack, count) = line.rsplit_once(' ')?;
        let mut frames: Vec<&str> = stack.split(';').skip(1).collect();
        frames.reverse();
        frames.iter().any(|frame| frame.contains("cpu_pool::serve")).then_some((frames, count.parse().ok()?))
    });
    let ours = StackSummary::of(our_stacks);
    Ok(format!(
        "### Stacks against `perf record --call-graph dwarf` (`cpu-pool`, the same {seconds} s, 99 Hz)\n\n\
         Samples taken inside `serve`. Inlined functions count as frames in both.\n\n\
         | profiler | samples | mean frames | unwound to the thread's start | hot function on the stack |\n|---|---|---|---|---|\n{}{}\n",
        ours.row("pool-obs (16 KiB of stack, `.eh_frame` in the agent)"),
        perf.row("perf (8 KiB of stack, libunwind/libdw)")
    ))
}
