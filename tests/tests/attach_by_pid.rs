//! The user's story, on the real kernel: the pool is running first, the agent attaches to its
//! PID, and every counter the agent exports equals what the pool itself says it did.

use std::{
    collections::BTreeMap,
    thread,
    time::{Duration, Instant},
};

use pool_obs_tests::{
    bpf,
    openmetrics::Exposition,
    processes::{Agent, Pool, free_address, manifest, stop},
};
use serde::Deserialize;

#[derive(Deserialize, Debug)]
struct Summary {
    models: BTreeMap<String, ModelSummary>,
}

#[derive(Deserialize, Debug)]
struct ModelSummary {
    requests: Requests,
    spawns: u64,
    evictions: u64,
    crashes: u64,
}

#[derive(Deserialize, Debug)]
struct Requests {
    ok: u64,
    failed: u64,
    timeout: u64,
}

const REQUESTS: u64 = 24_000;

/// Load shaped so that one run has every outcome: 4 models share a budget of three 16 MiB
/// workers (evictions), requests fail 5% of the time, a short queue deadline makes bursts time
/// out, and a worker crashes on about 1 request in 600.
fn pool_args(start_file: &std::path::Path) -> Vec<String> {
    [
        "--requests",
        "24000",
        "--rate",
        "3000",
        "--work-us",
        "400",
        "--timeout-ms",
        "15",
        "--impatient-rate",
        "0.01",
        "--fail-rate",
        "0.05",
        "--crash-rate",
        "0.0015",
        "--worker-memory-mb",
        "16",
        "--memory-budget-mb",
        "48",
        "--max-workers",
        "2",
        "--seed",
        "7",
    ]
    .iter()
    .map(ToString::to_string)
    .chain(["--start-file".to_string(), start_file.display().to_string()])
    .collect()
}

#[test]
fn counts_equal_the_pools_own_summary_after_attaching_by_pid() {
    let start_file = std::env::temp_dir().join(format!("pool-obs-start-{}", std::process::id()));
    let _ = std::fs::remove_file(&start_file);
    let mut pool = Pool::start(&pool_args(&start_file));
    let mut agent = Agent::attach(pool.pid(), &manifest("demo-pool.toml"), free_address(), &[]);

    let held = bpf::held_by(agent.child.id());
    assert_eq!(held.programs.len(), 2, "the agent holds its entry and return programs: {held:?}");
    assert_eq!(held.links.len(), 7, "one link per manifest probe: {held:?}");
    let listed = bpf::listed();
    assert!(held.programs.is_subset(&listed.programs) && held.links.is_subset(&listed.links));

    std::fs::write(&start_file, b"").expect("create the start file");
    let summary = wait_for_summary(&mut pool);
    let _ = std::fs::remove_file(&start_file);
    let metrics = wait_until_settled(&agent, REQUESTS);

    assert_eq!(summary.models.len(), 4);
    let total = |pick: fn(&ModelSummary) -> u64| summary.models.values().map(pick).sum::<u64>();
    assert_eq!(total(|m| m.requests.ok + m.requests.failed + m.requests.timeout), REQUESTS);
    assert!(total(|m| m.requests.failed) > 0 && total(|m| m.requests.timeout) > 0, "{summary:?}");
    assert!(total(|m| m.evictions) > 0 && total(|m| m.crashes) > 0, "{summary:?}");
    for (model, truth) in &summary.models {
        let counter = |name: &str, extra: &[(&str, &str)]| {
            let labels: Vec<_> =
                [("model", model.as_str())].into_iter().chain(extra.iter().copied()).collect();
            metrics.value(name, &labels).unwrap_or(0.0) as u64
        };
        assert_eq!(counter("pool_requests_total", &[("status", "ok")]), truth.requests.ok, "{model} ok");
        assert_eq!(
            counter("pool_requests_total", &[("status", "failed")]),
            truth.requests.failed,
            "{model} failed"
        );
        assert_eq!(
            counter("pool_requests_total", &[("status", "timeout")]),
            truth.requests.timeout,
            "{model} timeout"
        );
        assert_eq!(counter("pool_worker_spawns_total", &[]), truth.spawns, "{model} spawns");
        assert_eq!(counter("pool_worker_evictions_total", &[]), truth.evictions, "{model} evictions");
        assert_eq!(counter("pool_worker_crashes_total", &[]), truth.crashes, "{model} crashes");
        let observed =
            metrics.value("pool_request_duration_seconds_count", &[("model", model)]).unwrap_or(0.0) as u64;
        let finished = truth.requests.ok + truth.requests.failed + truth.requests.timeout;
        assert_eq!(observed, finished, "{model}: every finished request has a duration");
    }
    assert_eq!(metrics.value("pool_obs_events_lost_total", &[]), Some(0.0));

    let status = stop(&mut agent.child, libc::SIGTERM);
    assert!(status.success(), "the agent exits 0 on SIGTERM: {status}");
    let after = bpf::listed();
    assert!(held.programs.is_disjoint(&after.programs), "programs outlived the agent: {:?}", held.programs);
    assert!(held.links.is_disjoint(&after.links), "links outlived the agent: {:?}", held.links);
}

fn wait_for_summary(pool: &mut Pool) -> Summary {
    let line = pool
        .stdout
        .recv_timeout(Duration::from_secs(120))
        .expect("the pool prints its summary when the load ends");
    let status = pool.child.wait().expect("the pool exits after its load");
    assert!(status.success(), "demo-pool exited with {status}");
    serde_json::from_str(&line).unwrap_or_else(|error| panic!("summary {line:?}: {error}"))
}

/// The agent's metrics once it has drained every event of `requests` finished requests.
fn wait_until_settled(agent: &Agent, requests: u64) -> Exposition {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = Exposition::parse(&agent.get("/metrics").body);
        if metrics.sum("pool_requests_total") as u64 >= requests || Instant::now() > deadline {
            return metrics;
        }
        thread::sleep(Duration::from_millis(50));
    }
}
