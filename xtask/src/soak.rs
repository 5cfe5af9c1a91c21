//! `cargo xtask soak`: the demo pool under its default load for ten minutes with the agent
//! attached. Passes when the agent's resident memory stays within ±10% of where it settled
//! after warm-up, nothing was lost, no event contradicted another, and every request the pool
//! answered was counted.

use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail, ensure};
use pool_obs_tests::{
    openmetrics::Exposition,
    processes::{Agent, Pool, StartFile, args, free_address, manifest, stop, vm_rss_bytes},
};

use crate::setup::setup;

#[derive(clap::Args)]
pub struct Options {
    /// How long to run, in minutes (at least 3: warm-up alone takes 90 seconds).
    #[arg(long, default_value_t = 10)]
    minutes: u64,
}

/// The demo's default load, `demo-pool` with no arguments.
const DEMO_RATE: u64 = 200;
/// The sliding window (60 s) fills, and the allocator settles, before memory is judged.
const WARM_UP: Duration = Duration::from_secs(90);
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
const RSS_TOLERANCE: f64 = 0.10;

struct Sample {
    at: Duration,
    rss_bytes: u64,
    requests: f64,
    lost: f64,
}

pub fn run(options: &Options) -> Result<()> {
    ensure!(options.minutes >= 3, "--minutes must be at least 3");
    setup()?.build_release()?;
    let duration = Duration::from_secs(options.minutes * 60);
    let requests = DEMO_RATE * duration.as_secs();
    // The load waits for the agent, so that every request is seen from its submission.
    let start = StartFile::new("soak");
    let mut pool =
        Pool::start(&[args(&["--requests", &requests.to_string()]), start.arg().to_vec()].concat());
    let mut agent = Agent::attach(pool.pid(), &manifest("demo-pool.toml"), free_address(), &[]);
    start.start();
    println!("soak: {requests} requests over {} minutes; a sample every {SAMPLE_EVERY:?}", options.minutes);
    println!("| time | agent RSS (MiB) | requests counted | events lost |\n|---:|---:|---:|---:|");
    let samples = sample_until_done(&mut pool, &agent, duration);

    let summary = pool.summary();
    pool.wait_for_exit();
    let answered: u64 = summary.models.values().map(|model| model.requests.total()).sum();
    let metrics = agent.metrics_after(answered);
    stop(&mut agent.child, libc::SIGTERM);
    judge(&samples, &metrics, answered)
}

fn sample_until_done(pool: &mut Pool, agent: &Agent, duration: Duration) -> Vec<Sample> {
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < duration + SAMPLE_EVERY && matches!(pool.child.try_wait(), Ok(None)) {
        thread::sleep(SAMPLE_EVERY);
        let metrics = agent.metrics();
        let sample = Sample {
            at: started.elapsed(),
            rss_bytes: vm_rss_bytes(agent.child.id()),
            requests: metrics.sum("pool_requests_total"),
            lost: metrics.value("pool_obs_events_lost_total", &[]).unwrap_or(0.0),
        };
        println!(
            "| {:.0} s | {:.1} | {} | {} |",
            sample.at.as_secs_f64(),
            mib(sample.rss_bytes),
            sample.requests,
            sample.lost
        );
        samples.push(sample);
    }
    samples
}

fn judge(samples: &[Sample], metrics: &Exposition, answered: u64) -> Result<()> {
    let settled: Vec<&Sample> = samples.iter().filter(|sample| sample.at >= WARM_UP).collect();
    let Some(baseline) = settled.first().map(|sample| sample.rss_bytes as f64) else {
        bail!("the pool finished before the warm-up did");
    };
    let worst =
        settled.iter().map(|sample| (sample.rss_bytes as f64 / baseline - 1.0).abs()).fold(0.0, f64::max);
    let counted = metrics.sum("pool_requests_total");
    let lost = metrics.value("pool_obs_events_lost_total", &[]).unwrap_or(0.0);
    let anomalies = metrics.nonzero("pool_obs_anomalies_total", "kind");
    println!(
        "\nagent RSS after warm-up: {:.1} MiB, furthest sample {:+.1}% from it (allowed ±{:.0}%)",
        mib(baseline as u64),
        worst * 100.0,
        RSS_TOLERANCE * 100.0
    );
    println!(
        "requests: pool answered {answered}, agent counted {counted}; events lost {lost}; anomalies {anomalies:?}"
    );
    ensure!(worst <= RSS_TOLERANCE, "the agent's memory drifted {:.1}% from its settled size", worst * 100.0);
    ensure!(lost == 0.0 && anomalies.is_empty(), "{lost} events lost and anomalies {anomalies:?}");
    ensure!(counted == answered as f64, "the agent counted {counted} of {answered} requests");
    println!("soak passed");
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
