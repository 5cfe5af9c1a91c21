//! What attaching costs the pool: the demo pool's CPU with and without the agent, at its default
//! load and as a realistic pool; and an axum service's throughput and CPU per request.

use std::{process::Child, time::Instant};

use anyhow::{Result, bail};
use pool_obs_tests::processes::{Agent, Pool, StartFile, args, free_address, manifest, stop};

use super::{Scale, cpu_seconds, stats, verdict};

/// The demo pool's CPU with and without the agent, at its default load (requests that sleep),
/// and as a realistic pool: 1 ms of CPU per request at 500 requests/s.
pub(super) fn demo_overhead(scale: &Scale) -> Result<String> {
    let default_load = pool_overhead(scale, 200, &[])?;
    let realistic =
        pool_overhead(scale, 500, &["--cpu-us", "1000", "--work-us", "1000", "--max-workers", "4"])?;
    let axum = axum_overhead(scale)?;
    Ok(format!(
        "{axum}### Overhead on the demo pool ({} s, {} rounds)\n\n\
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

/// `model-server`, an axum service as written, under 36 closed-loop clients over HTTP, with and
/// without the agent and its natural manifest: throughput and the service's CPU per request.
fn axum_overhead(scale: &Scale) -> Result<String> {
    let requests = (600 * scale.overhead_seconds).to_string();
    let (mut rate, mut cpu) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    for round in 0..scale.rounds {
        for attached in [round % 2 == 0, round % 2 != 0] {
            let start = StartFile::new("axum-overhead");
            let load = [args(&["--requests", &requests, "--clients", "36"]), start.arg().to_vec()];
            let mut pool = Pool::start_named("model-server", &load.concat());
            let mut agent = attached
                .then(|| Agent::attach(pool.pid(), &manifest("model-server.toml"), free_address(), &[]));
            start.start();
            let began = Instant::now();
            let summary = pool.summary();
            let elapsed = began.elapsed().as_secs_f64();
            let answered: u64 = summary.models.values().map(|model| model.requests.total()).sum();
            let pool_cpu = reap_cpu_seconds(&mut pool.child)?;
            if let Some(agent) = agent.as_mut() {
                stop(&mut agent.child, libc::SIGTERM);
            }
            rate[usize::from(attached)].push(answered as f64 / elapsed);
            cpu[usize::from(attached)].push(1e6 * pool_cpu / answered as f64);
        }
    }
    let (bare_rate, probed_rate) = (stats(&rate[0]).0, stats(&rate[1]).0);
    let (bare_cpu, probed_cpu) = (stats(&cpu[0]).0, stats(&cpu[1]).0);
    let change = |bare: f64, probed: f64| 100.0 * (probed - bare) / bare;
    Ok(format!(
        "### Overhead on an axum service ({requests} requests, 36 clients, {} rounds)\n\n\
         | | without the agent | with it | change |\n|---|---|---|---|\n\
         | requests/s | {bare_rate:.0} | {probed_rate:.0} | **{:+.1}%** |\n\
         | service CPU per request | {bare_cpu:.0} µs | {probed_cpu:.0} µs | **{:+.1}%** |\n\n\
         `model-server` with `tests/manifests/model-server.toml` (the handler as an async request, \
         the registry's unloads), built in release as written: its poll and ready sites are \
         single-stepped by the kernel (see `check`). The service's CPU +≤ 1%: {}.\n\n",
        scale.rounds,
        change(bare_rate, probed_rate),
        change(bare_cpu, probed_cpu),
        verdict(change(bare_cpu, probed_cpu) <= 1.0),
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
