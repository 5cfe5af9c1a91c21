//! One agent per node: `--exe` follows every process of the pool's binary, those running when
//! it starts and those that start later, restarts included, each with series of its own, and
//! leaves every other process alone.

use std::{collections::BTreeMap, thread, time::Duration};

use pool_obs_tests::{
    bpf,
    ground_truth::Summary,
    openmetrics::Exposition,
    processes::{Agent, Pool, StartFile, args, binary, manifest, mixed_load_at, stop},
};

/// A replica whose load waits for its start file.
fn replica(name: &str, requests: u64, seed: u64) -> (Pool, StartFile) {
    let start = StartFile::new(name);
    let pool = Pool::start(&[mixed_load_at(requests, 400, seed), start.arg().to_vec()].concat());
    (pool, start)
}

/// What the agent counted for process `pid`, by model and status.
fn counted(metrics: &Exposition, pid: u32) -> BTreeMap<(String, String), u64> {
    let pid = pid.to_string();
    metrics
        .samples
        .iter()
        .filter(|sample| sample.name == "pool_requests_total" && sample.labels.get("pid") == Some(&pid))
        .filter(|sample| sample.value > 0.0)
        .map(|sample| {
            ((sample.labels["model"].clone(), sample.labels["status"].clone()), sample.value as u64)
        })
        .collect()
}

/// The requests the pools answered, all together.
fn requests_of(summaries: &[Summary]) -> u64 {
    summaries.iter().flat_map(|summary| summary.models.values()).map(|model| model.requests.total()).sum()
}

/// The pool's own counts, as [`counted`] keys them.
fn truth(summary: &Summary) -> BTreeMap<(String, String), u64> {
    let mut counts = BTreeMap::new();
    for (model, truth) in &summary.models {
        for (status, count) in [
            ("ok", truth.requests.ok),
            ("failed", truth.requests.failed),
            ("timeout", truth.requests.timeout),
        ] {
            if count > 0 {
                counts.insert((model.clone(), status.to_string()), count);
            }
        }
    }
    counts
}

#[test]
fn one_agent_follows_every_replica_and_restart_of_the_binary_and_no_other_process() {
    // Another binary beside the pools, which must be left alone.
    let mut other = Pool::start_named("kv-pool", &args(&["--requests", "200000", "--rate", "500"]));
    let (mut first, first_start) = replica("replica-0", 2400, 1);
    let agent = Agent::follow(&binary("demo-pool"), &manifest("demo-pool.toml"), &[], "info");
    agent.await_following(first.pid());
    let mut replicas = vec![(first.pid(), first_start)];
    let mut later = Vec::new();
    for nth in 1..=2 {
        let (pool, start) = replica(&format!("replica-{nth}"), 2400, nth);
        agent.await_following(pool.pid());
        replicas.push((pool.pid(), start));
        later.push(pool);
    }
    for (_, start) in &replicas {
        start.start();
    }
    // One more replica, restarted five times under the others' load.
    let mut summaries: Vec<Summary> = Vec::new();
    for restart in 0..5 {
        let (mut pool, start) = replica(&format!("restarted-{restart}"), 300, 10 + restart);
        agent.await_following(pool.pid());
        start.start();
        summaries.push(pool.summary());
        pool.wait_for_exit();
    }
    summaries.push(first.summary());
    first.wait_for_exit();
    for mut pool in later {
        summaries.push(pool.summary());
        pool.wait_for_exit();
    }
    let requests = requests_of(&summaries);
    let metrics = agent.metrics_after(requests);

    assert_eq!(summaries.len(), 8);
    for summary in &summaries {
        assert_eq!(counted(&metrics, summary.pid), truth(summary), "process {}", summary.pid);
    }
    assert_eq!(metrics.sum("pool_requests_total") as u64, requests, "the sum over every pid");
    assert_eq!(metrics.value("pool_obs_events_lost_total", &[]), Some(0.0));
    // The other binary was not followed: no series, no probe.
    let other_pid = other.pid().to_string();
    assert!(
        !metrics.samples.iter().any(|sample| sample.labels.get("pid") == Some(&other_pid)),
        "kv-pool is not followed"
    );
    let pids = metrics.label_values("pool_obs_target_up", "pid");
    assert_eq!(pids.len(), 8, "every process followed, each its own series: {pids:?}");
    assert!(metrics.nonzero("pool_obs_target_up", "pid").is_empty(), "all eight exited");
    // Where each runs: these run in no container, and say so with empty labels.
    let ups = metrics.samples.iter().filter(|sample| sample.name == "pool_obs_target_up");
    for up in ups {
        assert_eq!(
            (up.labels.get("container_id"), up.labels.get("pod_uid")),
            (Some(&String::new()), Some(&String::new()))
        );
    }
    stop(&mut other.child, libc::SIGTERM);

    // Nothing is left in the kernel once the agent stops.
    let held = bpf::held_by(agent.child.id());
    assert!(!held.programs.is_empty());
    let mut agent = agent;
    stop(&mut agent.child, libc::SIGINT);
    assert_eq!(bpf::still_listed(&held), bpf::Objects::default());
}

/// A copy of `demo-pool` in a directory of its own, named `demo-pool` still, as each container
/// of an image has its own: `extra` bytes appended make it another build.
fn copy_of_demo_pool(dir: &str, extra: &[u8]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pool-obs-{dir}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory for the copy");
    let copy = dir.join("demo-pool");
    let mut bytes = std::fs::read(binary("demo-pool")).expect("read demo-pool");
    bytes.extend_from_slice(extra);
    std::fs::write(&copy, bytes).expect("write the copy");
    std::fs::set_permissions(&copy, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    copy
}

#[test]
fn by_name_the_same_bytes_are_followed_another_build_is_not_and_past_max_processes_one_is_refused() {
    let copy = copy_of_demo_pool("same", b"");
    let other_build = copy_of_demo_pool("other", b"another build");
    let idle = |path: &std::path::Path, name: &str| {
        let start = StartFile::new(name);
        (Pool::start_binary(path, &[mixed_load_at(100, 400, 1), start.arg().to_vec()].concat()), start)
    };
    let first = idle(&binary("demo-pool"), "by-name-0");
    let agent = Agent::follow(
        std::path::Path::new("demo-pool"),
        &manifest("demo-pool.toml"),
        &["--max-processes", "2", "--log-format", "json"],
        "warn",
    );
    let copied = idle(&copy, "by-name-1");
    agent.await_following(copied.0.pid());
    let rebuilt = idle(&other_build, "by-name-2");
    let third = idle(&binary("demo-pool"), "by-name-3");
    // The agent looks at /proc at each refresh (200 ms).
    thread::sleep(Duration::from_millis(600));
    let metrics = agent.metrics();
    let followed = metrics.label_values("pool_obs_target_up", "pid");
    let pids = |pools: &[&Pool]| pools.iter().map(|pool| pool.pid().to_string()).collect();
    assert_eq!(followed, pids(&[&first.0, &copied.0]), "the same bytes, by name, two at most");
    assert_eq!(metrics.value("pool_obs_processes_refused_total", &[]), Some(1.0), "the third replica");
    let logs = agent.logs.as_ref().expect("the agent's log");
    let refused = logs.try_iter().find(|line| line.contains("not following the process"));
    let refused: serde_json::Value =
        serde_json::from_str(&refused.expect("a warning for the refused process")).expect("a JSON log line");
    assert_eq!(refused["level"], "WARN", "{refused}");
    assert_eq!(refused["fields"]["pid"], third.0.pid(), "{refused}");
    assert_eq!(
        refused["fields"]["message"], "not following the process: 2 are followed already (--max-processes)",
        "{refused}"
    );
    drop((first, copied, rebuilt, third));
    for path in [copy, other_build] {
        let _ = std::fs::remove_dir_all(path.parent().expect("its directory"));
    }
}

#[test]
fn one_agent_follows_two_executables_each_by_its_own_manifest() {
    let (mut demo, demo_start) = replica("two-executables", 1200, 3);
    let kv_start = StartFile::new("two-executables-kv");
    let mut kv = Pool::start_named(
        "kv-pool",
        &[args(&["--requests", "3000", "--rate", "1500"]), kv_start.arg().to_vec()].concat(),
    );
    let (demo_manifest, kv_manifest) = (manifest("demo-pool.toml"), manifest("kv-pool.toml"));
    let targets = [(binary("demo-pool"), &demo_manifest), (binary("kv-pool"), &kv_manifest)];
    let targets: Vec<(&std::path::Path, &std::path::Path)> =
        targets.iter().map(|(exe, manifest)| (exe.as_path(), manifest.as_path())).collect();
    let agent = Agent::follow_all(&targets, &[], "info");
    agent.await_following(demo.pid());
    agent.await_following(kv.pid());
    demo_start.start();
    kv_start.start();
    let summaries = [demo.summary(), kv.summary()];
    demo.wait_for_exit();
    kv.wait_for_exit();
    let requests = requests_of(&summaries);
    let metrics = agent.metrics_after(requests);
    for summary in &summaries {
        assert_eq!(counted(&metrics, summary.pid), truth(summary), "process {}", summary.pid);
    }
    assert_eq!(metrics.value("pool_obs_read_failures_total", &[]), Some(0.0));
    let (_, health) = agent.health();
    let following = health["following"].as_str().unwrap_or_default();
    assert!(following.contains("demo-pool") && following.contains("kv-pool"), "{health}");
}
