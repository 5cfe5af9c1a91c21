//! The promise to users: attaching pool-obs cannot break the pool, and whatever pool-obs could
//! not record is counted. Each test runs on the real kernel against a real process.

use std::{thread, time::Duration};

use pool_obs_tests::{
    bpf,
    ground_truth::Summary,
    processes::{Agent, Pool, StartFile, args, capabilities, free_address, manifest, mixed_load, stop},
};

#[test]
fn a_killed_agent_leaves_no_probes_and_the_pool_keeps_serving() {
    let start = StartFile::new("sigkill");
    let mut pool =
        Pool::start(&[args(&["--requests", "6000", "--rate", "2000"]), start.arg().to_vec()].concat());
    let mut agent = Agent::attach(pool.pid(), &manifest("demo-pool.toml"), free_address(), &[]);
    let held = bpf::held_by(agent.child.id());
    let (own_programs, own_links) = bpf::every_agents_own();
    assert_eq!(
        (held.programs.len(), held.links.len()),
        (1 + own_programs, 7 + own_links),
        "entry-only: one program, {held:?}"
    );
    start.start();
    thread::sleep(Duration::from_millis(500));
    stop(&mut agent.child, libc::SIGKILL);

    // The kernel drops the links with the agent's file descriptors: no cleanup code runs.
    assert_eq!(bpf::still_listed(&held), bpf::Objects::default(), "programs or links outlived a SIGKILL");
    let summary = pool.summary();
    pool.wait_for_exit();
    let answered: u64 = summary.models.values().map(|model| model.requests.total()).sum();
    assert_eq!(answered, 6000, "the pool answered every request");
}

#[test]
fn a_full_ring_buffer_loses_events_it_counts_and_recovers() {
    // One event per call, a ring of one page drained once a second: most of a fast burst is
    // lost. After it, the same target pauses, then calls 200 times at 200 a second.
    let start = StartFile::new("overflow");
    let load = args(&["--calls", "200000", "--models", "4", "--then-calls", "200"]);
    let mut target = Pool::start_named("bench-target", &[load, start.arg().to_vec()].concat());
    let tiny = ["--ring-buffer-bytes", "4096", "--drain-interval-ms", "1000"];
    let agent = Agent::attach(target.pid(), &manifest("bench-target.toml"), free_address(), &tiny);
    start.start();
    let _ = target.stdout.recv_timeout(Duration::from_secs(60)).expect("the burst's result");

    let metrics = agent.metrics_accounting_for(200_000);
    let counted = metrics.sum("pool_requests_total");
    let lost = metrics.value("pool_obs_events_lost_total", &[]).unwrap_or(0.0);
    assert!(lost > 0.0, "a one-page ring drained once a second must overflow");
    assert_eq!(counted + lost, 200_000.0, "every call was either counted or counted as lost");
    let (_, health) = agent.health();
    assert_eq!(health["events_lost"].as_f64(), Some(lost), "{health}");

    // The trickle that follows fits the ring: the same agent counts all of it, losing nothing more.
    target.wait_for_exit();
    let metrics = agent.metrics_accounting_for(200_200);
    assert_eq!(metrics.sum("pool_requests_total"), counted + 200.0, "every call of the trickle counted");
    assert_eq!(metrics.value("pool_obs_events_lost_total", &[]), Some(lost), "and none lost");
}

/// The pool's outcomes for a seeded run, with or without the agent coming and going.
fn outcomes(summary: &Summary) -> Vec<(String, u64, u64, u64)> {
    let outcome = |(model, truth): (&String, &pool_obs_tests::ground_truth::ModelSummary)| {
        (model.clone(), truth.requests.ok, truth.requests.failed, truth.requests.timeout)
    };
    summary.models.iter().map(outcome).collect()
}

#[test]
fn attaching_and_detaching_fifty_times_under_load_changes_nothing_the_pool_does() {
    // Light load with generous deadlines, so that only the seeded failures, crashes and
    // impatient clients decide outcomes: a run is repeatable. It lasts a minute, enough for 50
    // attach and detach cycles of about 0.8 s; the run without the agent goes on beside it.
    let load = args(&[
        "--requests",
        "60000",
        "--rate",
        "1000",
        "--work-us",
        "500",
        "--timeout-ms",
        "5000",
        "--seed",
        "21",
    ]);
    let (alone_start, churned_start) = (StartFile::new("alone"), StartFile::new("churned"));
    let mut alone = Pool::start(&[load.clone(), alone_start.arg().to_vec()].concat());
    let mut churned = Pool::start(&[load, churned_start.arg().to_vec()].concat());
    alone_start.start();
    churned_start.start();
    for _ in 0..50 {
        let mut agent = Agent::attach(churned.pid(), &manifest("demo-pool.toml"), free_address(), &[]);
        let status = stop(&mut agent.child, libc::SIGTERM);
        assert!(status.success(), "the agent exits 0: {status}");
    }
    let summary = churned.summary();
    churned.wait_for_exit();
    let expected = outcomes(&alone.summary());
    alone.wait_for_exit();
    assert_eq!(outcomes(&summary), expected, "the same requests succeeded, failed and timed out");
}

/// Counts a short mixed load through `agent`, which must be attached to `pool`, and checks
/// every request was seen.
fn counts_everything(mut pool: Pool, start: StartFile, agent: &Agent) {
    start.start();
    let summary = pool.summary();
    pool.wait_for_exit();
    let answered: u64 = summary.models.values().map(|model| model.requests.total()).sum();
    assert_eq!(agent.metrics_after(answered).sum("pool_requests_total"), answered as f64);
}

#[test]
fn once_attached_the_agent_holds_no_capabilities() {
    // As root, the usual deployment: everything goes, the bounding set included.
    let start = StartFile::new("caps-root");
    let pool = Pool::start(&[mixed_load(2000, 3), start.arg().to_vec()].concat());
    let agent = Agent::attach(pool.pid(), &manifest("demo-pool.toml"), free_address(), &[]);
    for set in ["CapEff", "CapPrm", "CapInh", "CapAmb", "CapBnd"] {
        assert_eq!(capabilities(agent.child.id(), set), 0, "{set} of an agent started as root");
    }
    counts_everything(pool, start, &agent);

    // As nobody with exactly the capabilities it needs to attach: those go too.
    let start = StartFile::new("caps-nobody");
    let pool = Pool::start(&[mixed_load(2000, 4), start.arg().to_vec()].concat());
    let granted = "+sys_admin,+bpf,+perfmon,+sys_ptrace";
    let nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps", granted];
    let launcher = [&nobody[..], &["--ambient-caps", granted]].concat();
    let agent = Agent::attach_launched_by(&launcher, pool.pid(), &manifest("demo-pool.toml"));
    for set in ["CapEff", "CapPrm", "CapInh", "CapAmb"] {
        assert_eq!(capabilities(agent.child.id(), set), 0, "{set} of an agent started as nobody");
    }
    counts_everything(pool, start, &agent);
}
