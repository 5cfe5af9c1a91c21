//! The probes' cost per call: pool-obs's configurations beside the kernel's floor and bpftrace's
//! scripts on the same function, rounds alternating, with each program's own run time from
//! `bpf_stats`.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use pool_obs_tests::{
    bpf,
    processes::{Agent, StartFile, binary, free_address, manifest, stop},
};

use super::{BpfStats, Scale, TargetResult, bench_target_at, stats, target_result, verdict};
use crate::setup::{self, Tools, workspace_root};

/// One row of the probe-cost table: what probes `bench-target`, and how.
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
                "12. pool-obs as 9, `begin` entered through the canonical 5-byte `nop`, the one Linux 6.18 optimises into a call to a trampoline"
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
pub(super) fn build_patchable_target(tools: &Tools) -> Result<()> {
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

/// Table 1: nanoseconds per call of the probed function under each configuration.
pub(super) fn probe_costs(scale: &Scale) -> Result<String> {
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
