//! `xtask vm-guest`: the end-to-end smoke inside a kernel of the matrix (`vm.rs` boots it).
//! Every check runs, whatever the one before did, and says `pass` or `fail` in a line of its
//! own in `results.txt`; `done` comes last. Loads are small and deadlines long: the machine is
//! emulated, some twenty times slower than the host.

use std::{
    fs::OpenOptions,
    io::Write,
    panic::{AssertUnwindSafe, catch_unwind},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use pool_obs_tests::{
    bpf,
    ground_truth::Summary,
    openmetrics::Exposition,
    processes::{Agent, Pool, StartFile, args, binary, free_address, manifest, mixed_load_at, stop},
};

/// One check: what it showed, or a panic saying what failed.
type Check = fn(&Path) -> String;

#[derive(clap::Args)]
pub struct Options {
    /// Where to write `results.txt` and the logs (the VM's writable folder).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(options: &Options) -> Result<()> {
    let results = options.out.join("results.txt");
    // virtme-ng brings the loopback interface up on most kernels; make sure.
    let _ = Command::new("ip").args(["link", "set", "lo", "up"]).status();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    record(&results, &format!("kernel {}", release.trim()))?;
    let checks: [(&str, Check); 3] = [
        ("every-program-loads", every_program_loads),
        ("demo-pool-exact", demo_pool_counted_exactly),
        ("async-requests-counted", async_requests_counted),
    ];
    for (name, check) in checks {
        let started = Instant::now();
        let verdict = match catch_unwind(AssertUnwindSafe(|| check(&options.out))) {
            Ok(detail) => format!("pass {name} ({:.0} s): {detail}", started.elapsed().as_secs_f64()),
            Err(panic) => {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(ToString::to_string))
                    .unwrap_or_default();
                format!("fail {name}: {}", why.replace('\n', " "))
            }
        };
        record(&results, &verdict)?;
    }
    record(&results, "done")
}

fn record(results: &Path, line: &str) -> Result<()> {
    let mut file = OpenOptions::new().create(true).append(true).open(results).context("results.txt")?;
    writeln!(file, "{line}")?;
    Ok(())
}

/// `pool-obs-agent kernel`: every program loads with its stack margin.
fn every_program_loads(out: &Path) -> String {
    let output =
        Command::new(binary("pool-obs-agent")).arg("kernel").output().expect("run pool-obs-agent kernel");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    std::fs::write(out.join("kernel.txt"), format!("{text}{}", String::from_utf8_lossy(&output.stderr)))
        .expect("write kernel.txt");
    assert!(
        output.status.success(),
        "pool-obs-agent kernel: {text} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let programs = text.lines().skip_while(|line| !line.starts_with("program")).skip(1);
    programs
        .take_while(|line| !line.starts_with("ok"))
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Runs `pool` to the end of its load with the agent attached; the pool's own count and the
/// agent's, which is stopped after, leaving nothing in the kernel.
fn counted(pool: &str, manifest_name: &str, load: Vec<String>) -> (Summary, Exposition) {
    let start = StartFile::new(pool);
    let mut pool = Pool::start_named(pool, &[load, start.arg().to_vec()].concat());
    let mut agent = Agent::attach(pool.pid(), &manifest(manifest_name), free_address(), &[]);
    let held = bpf::held_by(agent.child.id());
    start.start();
    let summary = pool.summary();
    pool.wait_for_exit();
    let requests = summary.models.values().map(|model| model.requests.total()).sum();
    let metrics = agent.metrics_after_within(requests, Duration::from_secs(60));
    let status = stop(&mut agent.child, libc::SIGTERM);
    assert!(status.success(), "the agent exits cleanly on SIGTERM: {status}");
    let left = bpf::still_listed(&held);
    assert!(left.programs.is_empty() && left.links.is_empty(), "the agent left {left:?} in the kernel");
    (summary, metrics)
}

fn demo_pool_counted_exactly(_out: &Path) -> String {
    let load = [mixed_load_at(1500, 250, 7), args(&["--cpu-us", "300"])].concat();
    let (summary, metrics) = counted("demo-pool", "demo-pool.toml", load);
    let mut cpu_seconds = 0.0;
    for (model, truth) in &summary.models {
        let value = |name: &str, labels: &[(&str, &str)]| metrics.of_model(name, model, labels) as u64;
        for (status, count) in truth.requests.by_status() {
            assert_eq!(value("pool_requests_total", &[("status", status)]), count, "{model} {status}");
        }
        assert_eq!(value("pool_worker_spawns_total", &[]), truth.spawns, "{model} spawns");
        assert_eq!(value("pool_worker_evictions_total", &[]), truth.evictions, "{model} evictions");
        assert_eq!(value("pool_worker_crashes_total", &[]), truth.crashes, "{model} crashes");
        let cpu = metrics.value("pool_model_cpu_seconds_total", &[("model", model)]).unwrap_or(0.0);
        assert!(cpu > 0.0, "{model}: CPU time per model");
        cpu_seconds += cpu;
    }
    let requests: u64 = summary.models.values().map(|model| model.requests.total()).sum();
    format!(
        "{requests} requests of {} models exact; {cpu_seconds:.2} s of CPU by model; nothing left in the kernel",
        summary.models.len()
    )
}

fn async_requests_counted(_out: &Path) -> String {
    let load = args(&["--requests", "400", "--clients", "8"]);
    let (summary, metrics) = counted("async-pool", "async-pool.toml", load);
    for (model, truth) in &summary.models {
        for (status, count) in truth.requests.by_status() {
            let counted = metrics.of_model("pool_requests_total", model, &[("status", status)]);
            assert_eq!(counted as u64, count, "{model} {status}");
        }
    }
    let requests: u64 = summary.models.values().map(|model| model.requests.total()).sum();
    format!("{requests} async requests exact by model and outcome")
}
