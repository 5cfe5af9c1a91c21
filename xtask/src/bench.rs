//! `cargo xtask bench`: what pool-obs costs, measured side by side with the kernel's floor and
//! with bpftrace in one run. Configurations alternate round by round, and every figure is a
//! median with its range, because these machines are noisy.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use pool_obs_tests::{
    bpf, http,
    processes::{Agent, Pool, StartFile, args, binary, free_address, manifest, stop, vm_rss_bytes},
};

use crate::setup::{self, Tools, ensure_debian_packages, setup, workspace_root};

#[derive(clap::Args)]
pub struct Options {
    /// Fewer calls and rounds: done in under three minutes.
    #[arg(long)]
    quick: bool,
    /// Only these sections (repeatable): probes, agent-cpu, loss, endpoints, overhead, cpu, stacks.
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
    let sections: [(&str, Section); 7] = [
        ("probes", probe_costs),
        ("agent-cpu", agent_cpu),
        ("loss", loss),
        ("endpoints", endpoints),
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Config {
    NoProbe,
    FloorEntry,
    FloorEntryReturn,
    BpftraceHistogram,
    BpftracePrint,
    PoolObs,
    PoolObsEntryOnly,
    PoolObsUretprobe,
    EntryOnPush,
    EntryOnLeaf,
    EntryOnNop,
    EntryOnCanonicalNop,
}

impl Config {
    const ALL: [Config; 12] = [
        Config::NoProbe,
        Config::FloorEntry,
        Config::FloorEntryReturn,
        Config::BpftraceHistogram,
        Config::BpftracePrint,
        Config::PoolObs,
        Config::PoolObsEntryOnly,
        Config::PoolObsUretprobe,
        Config::EntryOnPush,
        Config::EntryOnLeaf,
        Config::EntryOnNop,
        Config::EntryOnCanonicalNop,
    ];

    fn label(self) -> &'static str {
        match self {
            Config::NoProbe => "1. no probe",
            Config::FloorEntry => "2. empty entry probe (floor for one hit)",
            Config::FloorEntryReturn => "3. empty entry + return probe (floor for timing a call)",
            Config::BpftraceHistogram => "4. bpftrace, per-model latency histogram",
            Config::BpftracePrint => "5. bpftrace, one line per call",
            Config::PoolObs => {
                "6. pool-obs: model, request id, latency, outcome, every event exported (return: a probe on each `ret`)"
            }
            Config::PoolObsEntryOnly => {
                "7. pool-obs, entry-only probe set: the same, from `begin` and `end` entries"
            }
            Config::PoolObsUretprobe => "8. pool-obs as 6, with `unsafe_uretprobe` (a uretprobe instead)",
            Config::EntryOnPush => {
                "9. pool-obs, one entry probe on `begin` (first instruction `push`, emulated)"
            }
            Config::EntryOnLeaf => {
                "10. pool-obs, one entry probe on `tally`, a leaf whose first instruction is single-stepped (placed on the branch after it)"
            }
            Config::EntryOnNop => {
                "11. pool-obs as 9, the target built with `-Z patchable-function-entry=5` (first instruction LLVM's 5-byte `nop`, emulated)"
            }
            Config::EntryOnCanonicalNop => {
                "12. pool-obs as 9, `begin` entered through the canonical 5-byte `nop`, which the kernel turns into a call to its uprobe trampoline"
            }
        }
    }

    fn bpftrace_script(self) -> Option<&'static str> {
        match self {
            Config::FloorEntry => Some("floor-entry.bt"),
            Config::FloorEntryReturn => Some("floor-entry-return.bt"),
            Config::BpftraceHistogram => Some("per-model-hist.bt"),
            Config::BpftracePrint => Some("per-event-print.bt"),
            _ => None,
        }
    }

    /// The manifest of a pool-obs configuration.
    fn manifest(self) -> Option<&'static str> {
        match self {
            Config::PoolObs => Some("bench-target.toml"),
            Config::PoolObsEntryOnly => Some("bench-target-entry-only.toml"),
            Config::PoolObsUretprobe => Some("bench-target-uretprobe.toml"),
            Config::EntryOnPush | Config::EntryOnNop => Some("bench-target-entry-begin.toml"),
            Config::EntryOnLeaf => Some("bench-target-entry-tally.toml"),
            Config::EntryOnCanonicalNop => Some("bench-target-entry-nop5.toml"),
            _ => None,
        }
    }

    /// What bench-target calls besides `--calls`.
    fn target_mode(self) -> &'static [&'static str] {
        match self {
            Config::PoolObsEntryOnly => &["--entry-only"],
            Config::EntryOnPush | Config::EntryOnLeaf | Config::EntryOnNop => &["--leaf"],
            Config::EntryOnCanonicalNop => &["--leaf", "--through-nop5"],
            _ => &[],
        }
    }

    /// The bench-target binary it runs.
    fn target(self) -> PathBuf {
        match self {
            Config::EntryOnNop => patchable_target(),
            _ => binary("bench-target"),
        }
    }
}

/// Where `build_patchable_target` puts its build.
fn patchable_target() -> PathBuf {
    workspace_root().join("target").join("patchable").join("release").join("bench-target")
}

/// bench-target built with the nightly's `-Z patchable-function-entry=5`, which puts a 5-byte
/// `nop` at every function's entry: the agent probes it as the first instruction.
fn build_patchable_target(tools: &Tools) -> Result<()> {
    let target_dir = workspace_root().join("target").join("patchable");
    setup::run(
        tools
            .cargo(Some("nightly"))
            .args(["build", "--release", "-p", "pool-obs-tests", "--bin", "bench-target", "--target-dir"])
            .arg(&target_dir)
            .env("RUSTFLAGS", "-Z patchable-function-entry=5")
            .env_remove("RUSTUP_TOOLCHAIN"),
    )
}

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

/// Table 1: nanoseconds per call of the probed function under each configuration.
fn probe_costs(scale: &Scale) -> Result<String> {
    let symbol = mangled_symbol(&binary("bench-target"), "handle_request")?;
    let _stats = BpfStats::enable()?;
    let mut results: BTreeMap<Config, Vec<f64>> = BTreeMap::new();
    let mut program_times: BTreeMap<Config, Vec<f64>> = BTreeMap::new();
    let mut optimised_rounds = 0;
    for round in 0..scale.rounds {
        let mut order = Config::ALL.to_vec();
        order.rotate_left(round % Config::ALL.len());
        for config in order {
            let run = run_config(config, scale.calls, &symbol)?;
            let ns = run.target.ns_per_call;
            eprintln!("xtask: round {} {:?}: {ns:.0} ns/call", round + 1, config);
            results.entry(config).or_default().push(ns);
            if let Some(program_ns) = run.program_ns {
                program_times.entry(config).or_default().push(program_ns);
            }
            if config == Config::EntryOnCanonicalNop && run.target.uprobe_trampoline {
                optimised_rounds += 1;
            }
        }
    }
    let median = |config| stats(&results[&config]).0;
    let (none, floor) = (median(Config::NoProbe), median(Config::FloorEntryReturn));
    let entry_only = median(Config::PoolObsEntryOnly);
    let mut table = format!(
        "### Cost per call of `handle_request` ({} calls at zero work, 4 models, {} rounds)\n\n\
         | configuration | ns per call, median (min–max) | × no probe | × entry+return floor | programs' own ns per call |\n|---|---|---|---|---|\n",
        scale.calls, scale.rounds
    );
    for config in Config::ALL {
        let (m, low, high) = stats(&results[&config]);
        let programs =
            program_times.get(&config).map_or("".to_string(), |times| format!("{:.0}", stats(times).0));
        table += &format!(
            "| {} | {m:.0} ({low:.0}–{high:.0}) | {:.1} | {:.2} | {programs} |\n",
            config.label(),
            m / none,
            m / floor
        );
    }
    let pool_obs = median(Config::PoolObs);
    let (uretprobe, on_push, on_leaf, on_nop, on_canonical_nop) = (
        median(Config::PoolObsUretprobe),
        median(Config::EntryOnPush),
        median(Config::EntryOnLeaf),
        median(Config::EntryOnNop),
        median(Config::EntryOnCanonicalNop),
    );
    let per_event = |config| median(config) - none;
    let targets = [
        ("pool-obs ≤ 1.15 × the entry+return floor", pool_obs / floor, pool_obs / floor <= 1.15),
        (
            "pool-obs ≤ 0.6 × bpftrace's histogram",
            pool_obs / median(Config::BpftraceHistogram),
            pool_obs / median(Config::BpftraceHistogram) <= 0.6,
        ),
        (
            "pool-obs with `unsafe_uretprobe` ≤ 1.15 × the entry+return floor",
            uretprobe / floor,
            uretprobe / floor <= 1.15,
        ),
        (
            "entry probe on a single-stepped leaf, placed, ≤ 1.2 × one on `push`",
            on_leaf / on_push,
            on_leaf / on_push <= 1.2,
        ),
        (
            "per event, bpftrace printing ≥ 5 × pool-obs",
            per_event(Config::BpftracePrint) / per_event(Config::PoolObs),
            per_event(Config::BpftracePrint) / per_event(Config::PoolObs) >= 5.0,
        ),
    ];
    table += &format!(
        "\nWhere a pool offers entry points for both ends of a request, the entry-only probe set costs \
         {entry_only:.0} ns instead of {pool_obs:.0} ns ({:+.0}%), needs no saved arguments, and stays safe \
         if the function panics.\n",
        100.0 * (entry_only - pool_obs) / pool_obs
    );
    table += &format!(
        "\nA return probe is a probe on each return instruction, which this kernel single-steps, unless \
         the function cannot unwind: {pool_obs:.0} ns per call, against {uretprobe:.0} ns with \
         `unsafe_uretprobe` (×{:.1}), which aborts the pool if a panic unwinds through it.\n",
        pool_obs / uretprobe
    );
    table += &format!(
        "\nBuilt with `-Z patchable-function-entry=5`, `begin` starts with a 5-byte `nop`, and an entry \
         probe there costs {on_nop:.0} ns per call against {on_push:.0} ns on its `push` ({:+.0}%).\n",
        100.0 * (on_nop - on_push) / on_push
    );
    table += &format!(
        "\nOn the canonical 5-byte `nop` (`0f 1f 44 00 00`; LLVM's is `0f 1f 44 00 08`, which the kernel \
         only emulates), the kernel replaced the probe's trap with a call to its uprobe trampoline in \
         {optimised_rounds} of {} rounds: {on_canonical_nop:.0} ns per call, against {on_nop:.0} ns on LLVM's \
         `nop` ({:+.0}%).\n",
        scale.rounds,
        100.0 * (on_canonical_nop - on_nop) / on_nop
    );
    table += "\n| target | measured ratio | |\n|---|---|---|\n";
    for (target, ratio, met) in targets {
        table += &format!("| {target} | {ratio:.2} | {} |\n", verdict(met));
    }
    Ok(table + "\n")
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**missed**" }
}

/// The mangled name of the one function whose demangled name ends in `::name`.
fn mangled_symbol(binary: &Path, name: &str) -> Result<String> {
    let output = Command::new("nm").arg(binary).output().context("running nm")?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .filter_map(|line| line.split_whitespace().nth(2))
        .find(|symbol| symbol.contains(&format!("{}{name}", name.len())))
        .map(str::to_string)
        .with_context(|| format!("no `{name}` in {}", binary.display()))
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

/// One configuration's run: the target's result and the probes' programs' own nanoseconds per
/// call.
struct ConfigRun {
    target: TargetResult,
    program_ns: Option<f64>,
}

/// One configuration's cost per call, and its probe programs' own run time per call (the
/// kernel's `bpf_stats`: the program alone, without the trap that runs it).
fn run_config(config: Config, calls: u64, symbol: &str) -> Result<ConfigRun> {
    let start = StartFile::new("bench");
    let calls_arg = calls.to_string();
    let mut target_args = vec!["--calls", &calls_arg];
    target_args.extend_from_slice(config.target_mode());
    let target_path = config.target();
    let mut target = bench_target_at(&target_path, &start, &target_args);
    let mut tracer = match config.bpftrace_script() {
        Some(script) => Some(Bpftrace::start(script, &target_path, symbol)?),
        None => None,
    };
    let agent =
        config.manifest().map(|name| Agent::attach(target.pid(), &manifest(name), free_address(), &[]));
    start.start();
    let result = target_result(&mut target)?;
    let made = result.calls;
    // The probes' programs: pool-obs's `probe_*`; all of bpftrace's (BEGIN and END run once).
    let program_ns = |pid: u32, probe: fn(&str) -> bool| {
        let times = bpf::run_times(pid);
        let total: u64 = times.iter().filter(|(name, _)| probe(name)).map(|(_, (ns, _))| ns).sum();
        (made > 0).then(|| total as f64 / made as f64)
    };
    let mut programs = None;
    if let Some(mut agent) = agent {
        let exported = agent.metrics_after(made).sum("pool_requests_total") as u64;
        programs = program_ns(agent.child.id(), |name| name.starts_with("probe_"));
        stop(&mut agent.child, libc::SIGTERM);
        if exported != made {
            bail!("pool-obs exported {exported} of {made} calls");
        }
    }
    if let Some(tracer) = tracer.as_mut() {
        programs = program_ns(tracer.child.id(), |_| true);
        stop(&mut tracer.child, libc::SIGINT);
    }
    Ok(ConfigRun { target: result, program_ns: programs })
}

/// bpftrace running one of the peers' reference scripts, its output drained.
struct Bpftrace {
    child: Child,
}

impl Bpftrace {
    fn start(script: &str, target: &Path, symbol: &str) -> Result<Self> {
        let source = workspace_root().join("xtask").join("bpftrace").join(script);
        let text =
            std::fs::read_to_string(&source).with_context(|| format!("reading {}", source.display()))?;
        let text = text.replace("BIN", &target.display().to_string()).replace("SYM", symbol);
        let path: PathBuf = std::env::temp_dir().join(format!("pool-obs-{}-{script}", std::process::id()));
        std::fs::write(&path, text)?;
        let mut child =
            Command::new("bpftrace").arg(&path).stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
        let (ready, is_ready) = mpsc::channel();
        let stdout = BufReader::new(child.stdout.take().context("bpftrace's stdout")?);
        thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if line == "READY" {
                    let _ = ready.send(());
                }
            }
        });
        is_ready.recv_timeout(Duration::from_secs(60)).context("bpftrace did not print READY")?;
        Ok(Self { child })
    }
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

/// The agent's CPU while the target makes 100k calls a second.
fn agent_cpu(scale: &Scale) -> Result<String> {
    let rate = 100_000u64;
    let mut shares = Vec::new();
    for _ in 0..scale.rounds {
        let start = StartFile::new("cpu");
        let calls = (rate * scale.paced_seconds).to_string();
        let mut target = bench_target(&start, &["--calls", &calls, "--rate", &rate.to_string()]);
        let mut agent =
            Agent::attach(target.pid(), &manifest("bench-target-uretprobe.toml"), free_address(), &[]);
        let before = cpu_seconds(agent.child.id());
        start.start();
        let began = Instant::now();
        let made = target_result(&mut target)?.calls;
        agent.metrics_after(made);
        let seconds = began.elapsed().as_secs_f64();
        shares.push(100.0 * (cpu_seconds(agent.child.id()) - before) / seconds);
        stop(&mut agent.child, libc::SIGTERM);
    }
    let (m, low, high) = stats(&shares);
    Ok(format!(
        "### Agent CPU\n\nThis section, the next two and their targets measure the agent, so the target runs \
         under `bench-target-uretprobe.toml`: return-instruction probes would not let it make 100k calls a \
         second.\n\nAt 100k events/s for {} s: **{m:.1}% of one core** ({low:.1}–{high:.1}), draining, \
         decoding and aggregating every event (the time includes settling after the load).\n\n",
        scale.paced_seconds
    ))
}

/// Lost events at the highest rate the target reaches on two threads, for a few ring-buffer
/// sizes and drain intervals.
fn loss(scale: &Scale) -> Result<String> {
    let mut table = format!(
        "### Lost events ({} calls on 2 threads, as fast as the probes let them go)\n\n\
         | ring buffer | drain every | events/s reached | lost |\n|---|---|---|---|\n",
        scale.loss_calls
    );
    let mut best_lossless: f64 = 0.0;
    for ring in [64u32 << 10, 1 << 20, 4 << 20] {
        for drain_ms in [10u64, 100] {
            let start = StartFile::new("loss");
            let calls = scale.loss_calls.to_string();
            let mut target = bench_target(&start, &["--calls", &calls, "--threads", "2"]);
            let settings =
                ["--ring-buffer-bytes", &ring.to_string(), "--drain-interval-ms", &drain_ms.to_string()];
            let mut agent = Agent::attach(
                target.pid(),
                &manifest("bench-target-uretprobe.toml"),
                free_address(),
                &settings,
            );
            start.start();
            let TargetResult { ns_per_call, calls: made, .. } = target_result(&mut target)?;
            let metrics = agent.metrics_accounting_for(made);
            stop(&mut agent.child, libc::SIGTERM);
            let lost = metrics.value("pool_obs_events_lost_total", &[]).unwrap_or(0.0);
            // ns_per_call is the run's elapsed time over all calls, of both threads.
            let rate = 1e9 / ns_per_call;
            if lost == 0.0 {
                best_lossless = best_lossless.max(rate);
            }
            table += &format!(
                "| {} KiB | {drain_ms} ms | {:.0}k | {lost:.0} ({:.2}%) |\n",
                ring >> 10,
                rate / 1000.0,
                100.0 * lost / made as f64
            );
        }
    }
    table += &format!(
        "\nHighest rate with zero lost events: **{:.0}k events/s** (target: zero lost at 500k: {}); \
         the target cannot call faster with the probes in place on this machine's two cores.\n\n",
        best_lossless / 1000.0,
        verdict(best_lossless >= 500_000.0)
    );
    Ok(table)
}

/// `/health` and `/metrics` latency with many models, and the agent's memory at 10,000.
fn endpoints(scale: &Scale) -> Result<String> {
    let mut table = String::from(
        "### Endpoints\n\n| models | /health p50 | /health p99 | /health, gzip, p50 | /health, gzip, p99 | /health bytes (gzipped) | /metrics p50 | /metrics p99 | agent RSS |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut verdicts = String::new();
    for models in [10u64, 100, 1000, 10_000] {
        let start = StartFile::new("endpoints");
        let count = models.to_string();
        let mut target = bench_target(&start, &["--models", &count, "--calls", &count]);
        // Every model tracked: past the default --max-models the rest would share one series.
        let tracked = ["--max-models", &count];
        let mut agent =
            Agent::attach(target.pid(), &manifest("bench-target-uretprobe.toml"), free_address(), &tracked);
        start.start();
        let made = target_result(&mut target)?.calls;
        agent.metrics_after(made);
        // A /metrics with 10,000 models takes a fifth of a second: fewer rounds there.
        let requests = if models >= 10_000 { 50 } else { scale.requests_per_endpoint };
        // From connecting to the response's last byte; the response is checked after.
        let mut raw = Vec::with_capacity(64 << 20);
        let mut timings = |path: &str, headers: &[&str]| -> Result<(f64, f64, usize)> {
            let mut millis = Vec::new();
            for _ in 0..requests {
                let began = Instant::now();
                http::get_raw(agent.address, path, headers, &mut raw)?;
                millis.push(began.elapsed().as_secs_f64() * 1000.0);
                if !raw.starts_with(b"HTTP/1.1 200") && !raw.starts_with(b"HTTP/1.1 503") {
                    bail!("GET {path}: {}", String::from_utf8_lossy(&raw[..raw.len().min(200)]));
                }
                // The head only: scanning a 30 MB body between requests would leave the agent
                // cold caches for the next one.
                let gzipped = http::is_gzipped(&raw);
                if gzipped != headers.contains(&http::ACCEPT_GZIP) {
                    bail!("GET {path} with {headers:?}: gzipped {gzipped}");
                }
            }
            millis.sort_by(f64::total_cmp);
            let at =
                |quantile: f64| millis[((quantile * millis.len() as f64) as usize).min(millis.len() - 1)];
            Ok((at(0.5), at(0.99), raw.len()))
        };
        let (health_p50, health_p99, health_bytes) = timings("/health", &[])?;
        // A client that asks for gzip gets it from the next refresh on.
        http::get_accepting_gzip(agent.address, "/health")?;
        thread::sleep(Duration::from_millis(500));
        let (gzip_p50, gzip_p99, gzip_bytes) = timings("/health", &[http::ACCEPT_GZIP])?;
        let (metrics_p50, metrics_p99, _) = timings("/metrics", &[])?;
        let rss_mib = vm_rss_bytes(agent.child.id()) as f64 / (1024.0 * 1024.0);
        stop(&mut agent.child, libc::SIGTERM);
        if models == 1000 {
            verdicts += &format!(
                "\nAt 1,000 models: `/health` p99 < 1 ms: {}; `/metrics` p99 ≤ 5 ms: {} (timed from a \
                 client on the same machine, connection included).",
                verdict(health_p99 < 1.0),
                verdict(metrics_p99 <= 5.0)
            );
        }
        if models == 10_000 {
            verdicts += &format!(
                " At 10,000 models: `/health` p99 ≤ 1 ms: {} to a client that accepts gzip, {} to one \
                 that does not; `/metrics` p99 ≤ 50 ms: {}.\n\n",
                verdict(gzip_p99 <= 1.0),
                verdict(health_p99 <= 1.0),
                verdict(metrics_p99 <= 50.0)
            );
        }
        table += &format!(
            "| {models} | {health_p50:.2} ms | {health_p99:.2} ms | {gzip_p50:.2} ms | {gzip_p99:.2} ms | {} ({}) | {metrics_p50:.2} ms | {metrics_p99:.2} ms | {rss_mib:.0} MiB |\n",
            bytes(health_bytes),
            bytes(gzip_bytes),
        );
    }
    Ok(table + &verdicts)
}

/// A size for people: bytes, kB or MB.
fn bytes(count: usize) -> String {
    match count {
        0..1_000 => format!("{count} B"),
        1_000..1_000_000 => format!("{:.0} kB", count as f64 / 1e3),
        _ => format!("{:.1} MB", count as f64 / 1e6),
    }
}

/// The demo pool's CPU with and without the agent, at its default load (requests that sleep),
/// and as a realistic pool: 1 ms of CPU per request at 500 requests/s.
fn demo_overhead(scale: &Scale) -> Result<String> {
    let default_load = pool_overhead(scale, 200, &[])?;
    let realistic =
        pool_overhead(scale, 500, &["--cpu-us", "1000", "--work-us", "1000", "--max-workers", "4"])?;
    Ok(format!(
        "### Overhead on the demo pool ({} s, {} rounds)\n\n\
         | load | pool CPU without the agent | with it | pool CPU | agent CPU (share of one core) |\n|---|---|---|---|---|\n\
         {}{}\n\
         The realistic pool (1 ms of CPU and 1 ms of waiting per request, 500 requests/s): the pool's CPU \
         +≤ 1%: {}; the agent ≤ 1% of a core: {}. The design this replaces promised under 1%.\n\n",
        scale.overhead_seconds,
        scale.rounds,
        default_load.row("default: 200 requests/s, 5 ms of sleep each"),
        realistic.row("realistic: 500 requests/s, 1 ms of CPU + 1 ms of sleep each"),
        verdict(realistic.pool_increase() <= 1.0),
        verdict(realistic.agent_core <= 1.0),
    ))
}

/// The pool's CPU seconds without and with the agent (medians), and the agent's share of a core.
struct Overhead {
    bare: f64,
    probed: f64,
    agent_core: f64,
}

impl Overhead {
    fn pool_increase(&self) -> f64 {
        100.0 * (self.probed - self.bare) / self.bare
    }

    fn row(&self, load: &str) -> String {
        format!(
            "| {load} | {:.3} s | {:.3} s | **{:+.1}%** | {:.2}% |\n",
            self.bare,
            self.probed,
            self.pool_increase(),
            self.agent_core
        )
    }
}

/// The demo pool at `rate` requests/s with `extra` options, with and without the agent, rounds
/// alternating.
fn pool_overhead(scale: &Scale, rate: u64, extra: &[&str]) -> Result<Overhead> {
    let requests = (rate * scale.overhead_seconds).to_string();
    let rate = rate.to_string();
    let (mut without, mut with, mut agent_core) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..scale.rounds {
        for attached in [round % 2 == 0, round % 2 != 0] {
            let start = StartFile::new("overhead");
            let load = [args(&["--requests", &requests, "--rate", &rate]), args(extra), start.arg().to_vec()];
            let mut pool = Pool::start(&load.concat());
            let mut agent =
                attached.then(|| Agent::attach(pool.pid(), &manifest("demo-pool.toml"), free_address(), &[]));
            let agent_before = agent.as_ref().map_or(0.0, |agent| cpu_seconds(agent.child.id()));
            start.start();
            let began = Instant::now();
            pool.summary();
            let elapsed = began.elapsed().as_secs_f64();
            let pool_cpu = reap_cpu_seconds(&mut pool.child)?;
            if let Some(agent) = agent.as_mut() {
                agent_core.push(100.0 * (cpu_seconds(agent.child.id()) - agent_before) / elapsed);
                stop(&mut agent.child, libc::SIGTERM);
            }
            if attached { with.push(pool_cpu) } else { without.push(pool_cpu) }
        }
    }
    Ok(Overhead { bare: stats(&without).0, probed: stats(&with).0, agent_core: stats(&agent_core).0 })
}

/// Waits for the child and returns the CPU seconds it used, from the kernel's accounting.
fn reap_cpu_seconds(child: &mut Child) -> Result<f64> {
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    if pid <= 0 {
        bail!("waiting for pid {}: {}", child.id(), std::io::Error::last_os_error());
    }
    let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
    Ok(seconds(usage.ru_utime) + seconds(usage.ru_stime))
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

/// What CPU time per model and profiles cost: the context-switch program that keeps threads'
/// CPU clocks (always on), and a profile at 99 Hz (on demand), on `cpu-pool`.
fn cpu_costs(scale: &Scale) -> Result<String> {
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
fn stacks_against_perf(_: &Scale) -> Result<String> {
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
