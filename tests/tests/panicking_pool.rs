//! A return probe must not harm a pool whose probed function panics. A uretprobe would: the
//! kernel's trampoline replaces the return address, a panic cannot unwind through it, and the
//! pool aborts at its first panic ("failed to initiate panic, error 5"). pool-obs probes the
//! function's return instructions instead, and counts a call a panic unwound through as failed.

use pool_obs_tests::{
    bpf,
    processes::{Agent, Pool, StartFile, args, free_address, manifest, stop},
};

#[test]
fn a_pool_whose_probed_function_panics_keeps_running_and_its_panics_count_as_failed() {
    let start = StartFile::new("panicking-pool");
    let load = args(&["--requests", "20000", "--workers", "2"]);
    let mut pool = Pool::start_named("panic-pool", &[load, start.arg().to_vec()].concat());
    let mut agent = Agent::attach(pool.pid(), &manifest("panic-pool.toml"), free_address(), &[]);
    // probe_call and probe_exit on the two handlers (one entry and two returns each), and the
    // catch of panics; and what every agent holds.
    let held = bpf::held_by(agent.child.id());
    let (own_programs, own_links) = bpf::every_agents_own();
    assert_eq!((held.programs.len(), held.links.len()), (3 + own_programs, 7 + own_links), "{held:?}");
    start.start();
    let summary = pool.summary();
    // Exits 0: every panic was caught where the pool catches it, none aborted the process.
    pool.wait_for_exit();
    let requests = summary.models.values().map(|model| model.requests.total()).sum();
    let metrics = agent.metrics_after(requests);
    assert!(agent.child.try_wait().expect("the agent's status").is_none(), "the agent keeps running");

    assert_eq!(summary.models.len(), 3);
    let mut panics = 0;
    for (model, truth) in &summary.models {
        let count = |status: &str| {
            metrics.value("pool_requests_total", &[("model", model), ("status", status)]).unwrap_or(0.0)
                as u64
        };
        assert!(
            truth.panics > 0 && truth.requests.failed > truth.panics,
            "{model}: errors and panics: {truth:?}"
        );
        assert_eq!(count("ok"), truth.requests.ok, "{model} ok");
        // The pool's failures are its handlers' errors plus their panics.
        assert_eq!(count("failed"), truth.requests.failed, "{model} failed = errors + panics");
        panics += truth.panics;
    }
    assert_eq!(metrics.value("pool_obs_anomalies_total", &[("kind", "unwound")]), Some(panics as f64));
    assert_eq!(metrics.value("pool_obs_anomalies_total", &[("kind", "return_without_entry")]), Some(0.0));
    assert_eq!(metrics.value("pool_obs_events_lost_total", &[]), Some(0.0));

    stop(&mut agent.child, libc::SIGTERM);
    assert_eq!(
        bpf::still_listed(&held),
        bpf::Objects::default(),
        "the agent's programs and links outlive it"
    );
}
