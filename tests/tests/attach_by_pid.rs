//! The user's story, on the real kernel: the pool is running first, the agent attaches to its
//! PID, and every counter the agent exports equals what the pool itself says it did.

use std::collections::BTreeMap;

use pool_obs_tests::{
    bpf,
    ground_truth::ModelSummary,
    processes::{Agent, Pool, StartFile, args, free_address, manifest, stop},
};

const REQUESTS: u64 = 24_000;

/// Load shaped so that one run has every outcome: 4 models share a budget of three 16 MiB
/// workers (evictions), requests fail 5% of the time, 1% of clients have already-expired
/// deadlines (timeouts), and a worker crashes on about 1 request in 600.
const POOL: &[&str] = &[
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
];

#[test]
fn counts_equal_the_pools_own_summary_after_attaching_by_pid() {
    let start = StartFile::new("counts");
    let mut pool = Pool::start(&[args(POOL), start.arg().to_vec()].concat());
    let mut agent = Agent::attach(pool.pid(), &manifest("demo-pool.toml"), free_address(), &[]);

    let held = bpf::held_by(agent.child.id());
    let (own_programs, own_links) = bpf::every_agents_own();
    assert_eq!(
        held.programs.len(),
        1 + own_programs,
        "an entry-only manifest needs the entry program alone: {held:?}"
    );
    assert_eq!(held.links.len(), 7 + own_links, "one link per manifest probe: {held:?}");
    let listed = bpf::listed();
    assert!(held.programs.is_subset(&listed.programs) && held.links.is_subset(&listed.links));

    start.start();
    let summary = pool.summary();
    pool.wait_for_exit();
    let metrics = agent.metrics_after(REQUESTS);

    assert_eq!(summary.models.len(), 4);
    let total = |pick: fn(&ModelSummary) -> u64| summary.models.values().map(pick).sum::<u64>();
    assert_eq!(total(|m| m.requests.total()), REQUESTS);
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
        let observed = counter("pool_request_duration_seconds_count", &[]);
        assert_eq!(observed, truth.requests.total(), "{model}: every finished request has a duration");
    }
    assert_eq!(metrics.value("pool_obs_events_lost_total", &[]), Some(0.0));
    // Seen from its first event, the pool's stream is consistent: every anomaly kind stays at 0.
    let end_without_start = [("kind", "request_end_without_start")];
    assert_eq!(metrics.value("pool_obs_anomalies_total", &end_without_start), Some(0.0));
    assert_eq!(metrics.nonzero("pool_obs_anomalies_total", "kind"), BTreeMap::new(), "no anomalies");

    let status = stop(&mut agent.child, libc::SIGTERM);
    assert!(status.success(), "the agent exits 0 on SIGTERM: {status}");
    assert_eq!(bpf::still_listed(&held), bpf::Objects::default(), "programs or links outlived the agent");
}
