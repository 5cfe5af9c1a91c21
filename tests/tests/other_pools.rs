//! Pools we did not write the agent for: two more reference pools, shaped unlike `demo-pool`,
//! each profiled to exact counts from a manifest alone; and `check` telling a right manifest
//! from wrong ones on a binary with debug info.

use std::{collections::BTreeMap, path::Path, process::Command};

use pool_obs_tests::{
    ground_truth::Summary,
    openmetrics::Exposition,
    processes::{Agent, Pool, StartFile, agent_init, args, binary, free_address, manifest},
};

/// Runs `pool` under load with the agent attached by PID and its manifest in source terms;
/// returns what each side counted.
fn profile(pool_name: &str, load: &[&str]) -> (Summary, Exposition) {
    profile_binary(&binary(pool_name), &manifest(&format!("{pool_name}.toml")), load)
}

fn profile_binary(pool_binary: &Path, manifest: &Path, load: &[&str]) -> (Summary, Exposition) {
    // Named for the manifest: tests run side by side, each with a start file of its own.
    let start = StartFile::new(&manifest.file_stem().expect("a manifest file").to_string_lossy());
    let mut pool = Pool::start_binary(pool_binary, &[args(load), start.arg().to_vec()].concat());
    let agent = Agent::attach(pool.pid(), manifest, free_address(), &[]);
    start.start();
    let summary = pool.summary();
    pool.wait_for_exit();
    let requests = summary.models.values().map(|model| model.requests.total()).sum();
    (summary, agent.metrics_after(requests))
}

fn assert_counts_equal(summary: &Summary, metrics: &Exposition) {
    for (model, truth) in &summary.models {
        let value = |name: &str, extra: &[(&str, &str)]| {
            let labels: Vec<_> =
                [("model", model.as_str())].into_iter().chain(extra.iter().copied()).collect();
            metrics.value(name, &labels).unwrap_or(0.0) as u64
        };
        let requests = [
            ("ok", truth.requests.ok),
            ("failed", truth.requests.failed),
            ("timeout", truth.requests.timeout),
        ];
        for (status, count) in requests {
            assert!(count > 0, "{model}: the load has {status} requests");
            assert_eq!(value("pool_requests_total", &[("status", status)]), count, "{model} {status}");
        }
        assert!(truth.spawns > 1 && truth.evictions > 0, "{model}: workers come and go: {truth:?}");
        assert_eq!(value("pool_worker_spawns_total", &[]), truth.spawns, "{model} spawns");
        assert_eq!(value("pool_worker_evictions_total", &[]), truth.evictions, "{model} evictions");
    }
    assert_eq!(metrics.value("pool_obs_events_lost_total", &[]), Some(0.0));
    // Attached before the load: every return had its entry, every worker its spawn, and no
    // call unwound.
    let unwound = [("kind", "unwound")];
    assert_eq!(metrics.value("pool_obs_anomalies_total", &unwound), Some(0.0));
    assert_eq!(metrics.nonzero("pool_obs_anomalies_total", "kind"), BTreeMap::new(), "no anomalies");
}

#[test]
fn a_pool_passing_structs_and_returning_results_is_counted_exactly() {
    let (summary, metrics) = profile("kv-pool", &["--requests", "6000", "--rate", "3000"]);
    assert_eq!(summary.models.len(), 2);
    assert_counts_equal(&summary, &metrics);
    for (model, truth) in &summary.models {
        // No function of this pool sees a request arrive: a request is timed from the moment a
        // worker starts it, and one that expired before any worker started it has no duration.
        let timed = metrics.value("pool_request_duration_seconds_count", &[("model", model)]);
        assert_eq!(timed, Some((truth.requests.ok + truth.requests.failed) as f64), "{model}");
    }
    // Memory is declared in MiB and scaled: every live worker holds 4 MiB, and by the end
    // every worker was retired.
    for model in summary.models.keys() {
        assert_eq!(metrics.value("pool_worker_memory_bytes", &[("model", model)]), Some(0.0));
    }
}

#[test]
fn a_binary_without_debug_info_is_counted_exactly_from_a_manifest_in_registers() {
    let directory = std::env::temp_dir().join(format!("pool-obs-no-dwarf-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&directory);
    std::fs::create_dir_all(&directory).expect("a directory");
    let pool = directory.join("kv-pool");
    std::fs::copy(binary("kv-pool"), &pool).expect("copy the pool");
    let status = Command::new("objcopy").args(["--strip-debug"]).arg(&pool).status().expect("run objcopy");
    assert!(status.success(), "objcopy --strip-debug");
    // Source paths need the debug info, and say so.
    let (code, printed) = check(&pool, &manifest("kv-pool.toml"), &[]);
    assert_eq!(code, 19, "{printed}");
    assert!(printed.contains("which needs the binary's debug info, and none was found"), "{printed}");
    let load = ["--requests", "6000", "--rate", "3000"];
    let (summary, metrics) = profile_binary(&pool, &manifest("kv-pool-registers.toml"), &load);
    assert_counts_equal(&summary, &metrics);
    let _ = std::fs::remove_dir_all(&directory);
}

#[test]
fn a_pool_with_one_model_and_no_keys_is_counted_exactly() {
    let (summary, metrics) = profile("solo-pool", &["--requests", "6000", "--rate", "3000"]);
    assert_eq!(summary.models.keys().collect::<Vec<_>>(), ["solo"]);
    assert_counts_equal(&summary, &metrics);
    // Each call of `handle` is a request, timed from entry to return.
    let timed = metrics.value("pool_request_duration_seconds_count", &[("model", "solo")]);
    assert_eq!(timed, Some(summary.models["solo"].requests.total() as f64));
}

/// Runs `check` on the binary at `pool` with the manifest at `path` and `extra` flags; returns
/// its exit code and what it printed.
fn check(pool: &Path, path: &Path, extra: &[&str]) -> (i32, String) {
    let output = Command::new(binary("pool-obs-agent"))
        .args(["check", "--binary"])
        .arg(pool)
        .arg("--manifest")
        .arg(path)
        .args(extra)
        .output()
        .expect("run pool-obs-agent check");
    let printed =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap_or(-1), printed)
}

/// Runs `check` on the demo pool with `text` as the manifest.
fn check_demo_pool_with(text: &str) -> (i32, String) {
    let path =
        std::env::temp_dir().join(format!("pool-obs-check-{}-{}.toml", std::process::id(), text.len()));
    std::fs::write(&path, text).expect("write the manifest");
    let checked = check(&binary("demo-pool"), &path, &[]);
    let _ = std::fs::remove_file(&path);
    checked
}

/// Runs `check` on the demo pool with its manifest edited by `edit`.
fn check_demo_manifest(edit: impl Fn(String) -> String) -> (i32, String) {
    check_demo_pool_with(&edit(
        std::fs::read_to_string(manifest("demo-pool-registers.toml")).expect("the demo manifest"),
    ))
}

#[test]
fn check_catches_a_wrong_register_and_a_missing_hidden_pointer_shift() {
    let (code, printed) = check_demo_manifest(|text| text);
    assert_eq!(code, 0, "{printed}");
    assert!(printed.contains("ok: 7 probes check out"), "{printed}");

    // `worker_id` one register too early: that is the model's length.
    let (code, printed) = check_demo_manifest(|text| {
        text.replacen(
            "worker_id = \"arg3\"\nmemory_bytes = \"arg4\"",
            "worker_id = \"arg2\"\nmemory_bytes = \"arg4\"",
            1,
        )
    });
    assert_eq!(code, 19, "{printed}");
    assert!(
        printed.contains("✗ worker_id: arg2 is the length of `model: &[u8]`, not a whole integer"),
        "{printed}"
    );
    // Attaching refuses it too, rather than export a length as a worker id.
    let wrong =
        std::fs::read_to_string(manifest("demo-pool-registers.toml")).expect("the demo manifest").replacen(
            "worker_id = \"arg3\"\nmemory_bytes = \"arg4\"",
            "worker_id = \"arg2\"\nmemory_bytes = \"arg4\"",
            1,
        );
    let path = std::env::temp_dir().join(format!("pool-obs-wrong-register-{}.toml", std::process::id()));
    std::fs::write(&path, wrong).expect("write the manifest");
    let start = StartFile::new("wrong-register");
    let pool = Pool::start_named("demo-pool", start.arg().as_ref());
    let output = Command::new(binary("pool-obs-agent"))
        .args(["--pid", &pool.pid().to_string(), "--listen", "127.0.0.1:0", "--manifest"])
        .arg(&path)
        .output()
        .expect("run pool-obs-agent");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(21), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        "pool-obs-agent: error: demo_pool::pool::Pool::spawn_worker: worker_id: arg2 is the length of \
         `model: &[u8]`, not a whole integer (`pool-obs-agent check` shows every value)"
    );
    let _ = std::fs::remove_file(&path);

    // `serve` read as if its 24-byte result did not take arg0.
    let (code, printed) = check_demo_manifest(|text| {
        text.replace(
            "model = \"str(arg2, arg3)\"\nrequest_id = \"arg4\"\nworker_id = \"arg5\"",
            "model = \"str(arg1, arg2)\"\nrequest_id = \"arg3\"\nworker_id = \"arg4\"",
        )
    });
    assert_eq!(code, 19, "{printed}");
    assert!(printed.contains("✗ model: str(arg1, arg2) must be the pointer and length of one value, but arg1 is `self: &demo_pool::pool::Pool`"), "{printed}");
    assert!(
        printed.contains("✗ request_id: arg3 is the length of `model: &[u8]`, not a whole integer"),
        "{printed}"
    );
    assert!(printed.contains("2 problem(s)") || printed.contains("problem(s) in"), "{printed}");
}

#[test]
fn debug_info_shipped_apart_from_the_binary_is_found_as_gdb_finds_it() {
    // A release build as it ships: the DWARF moved out with objcopy, linked by .gnu_debuglink.
    let directory = std::env::temp_dir().join(format!("pool-obs-split-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&directory);
    std::fs::create_dir_all(&directory).expect("a directory");
    let pool = directory.join("kv-pool");
    std::fs::copy(binary("kv-pool"), &pool).expect("copy the pool");
    let objcopy = |args: &[&str]| {
        let status =
            Command::new("objcopy").args(args).current_dir(&directory).status().expect("run objcopy");
        assert!(status.success(), "objcopy {args:?}");
    };
    objcopy(&["--only-keep-debug", "kv-pool", "kv-pool.debug"]);
    objcopy(&["--strip-debug", "kv-pool"]);
    objcopy(&["--add-gnu-debuglink=kv-pool.debug", "kv-pool"]);
    // Beside the binary, by its debuglink: source paths compile, and the registers are checked
    // against the parameters.
    let (code, printed) = check(&pool, &manifest("kv-pool.toml"), &[]);
    assert_eq!(code, 0, "{printed}");
    assert!(printed.contains("✓ model = \"spec.model\": str(*(rsi + 0x8) as u64"), "{printed}");
    let check = |extra: &[&str]| check(&pool, &manifest("kv-pool-registers.toml"), extra);
    let (code, printed) = check(&[]);
    assert_eq!(code, 0, "{printed}");
    assert!(
        printed.contains(&format!("debug info: {}", directory.join("kv-pool.debug").display())),
        "{printed}"
    );
    assert!(printed.contains("✓ model: read through arg1, `spec: &kv_pool::WorkerSpec`"), "{printed}");
    // Moved elsewhere: named with --debug-file.
    let elsewhere = directory.join("elsewhere.debug");
    std::fs::rename(directory.join("kv-pool.debug"), &elsewhere).expect("move the debug info");
    let (_, printed) = check(&[]);
    assert!(printed.contains("no debug info found: functions are checked, registers are not"), "{printed}");
    let (code, printed) = check(&["--debug-file", elsewhere.to_str().unwrap()]);
    assert_eq!(code, 0, "{printed}");
    assert!(printed.contains("✓ model: read through arg1"), "{printed}");
    // Another binary's debug info is refused, not believed.
    let (code, printed) = check(&["--debug-file", binary("panic-pool").to_str().unwrap()]);
    assert_eq!(code, 14, "{printed}");
    assert!(
        printed.contains("is not the debug info of") && printed.contains("its build id differs"),
        "{printed}"
    );
    let _ = std::fs::remove_dir_all(&directory);
}

#[test]
fn init_writes_from_the_signatures_a_manifest_that_check_accepts() {
    let functions = ["demo_pool::pool::Pool::serve", "demo_pool::pool::Pool::spawn_worker"];
    let (code, written) = agent_init("demo-pool", &functions);
    assert_eq!(code, Some(0), "{written}");
    // In the pool's own terms, from the debug info: each value compiled before it is suggested.
    for line in [
        "# fn demo_pool::pool::Pool::serve(self: &demo_pool::pool::Pool, model: &[u8], request_id: u64, \
         worker_id: u64, work_us: u64) -> Result<u64, alloc::string::String>",
        "#   runs in 1 out-of-line copy and 0 inlined instances",
        "model = \"model\"",
        "request_id = \"request_id\"",
        "worker_id = \"worker_id\"",
        "# at = \"return\"",
        "# outcome = { Ok = \"ok\", Err = \"failed\" }",
        "event = \"request_ended\"",
        // Named for spawning: a worker's spawn, with its memory.
        "event = \"worker_spawned\"",
        "memory_bytes = \"memory_bytes\"",
    ] {
        assert!(written.lines().any(|written| written == line), "`{line}` in:\n{written}");
    }
    // `spawn_worker` never uses its `self`.
    assert!(written.contains("#   `self` is optimised out at 0x"), "{written}");
    let (code, printed) = check_demo_pool_with(&written);
    assert_eq!(code, 0, "{printed}");
    assert!(printed.contains("ok: 2 probes check out") && !printed.contains('✗'), "{printed}");
}

#[test]
fn debug_probes_log_a_wrong_offset_with_the_probe_and_field() {
    // The job's id read one pointer hop too far: the id itself is taken for an address.
    let wrong = std::fs::read_to_string(manifest("kv-pool-registers.toml"))
        .expect("the kv-pool manifest")
        .replacen("request_id = \"*(arg2 + 56)\"", "request_id = \"*(*(arg2 + 56))\"", 1);
    let path = std::env::temp_dir().join(format!("pool-obs-wrong-offset-{}.toml", std::process::id()));
    std::fs::write(&path, wrong).expect("write the manifest");
    let start = StartFile::new("debug-probes");
    let mut pool = Pool::start_named(
        "kv-pool",
        &[args(&["--requests", "200", "--rate", "1000"]), start.arg().to_vec()].concat(),
    );
    let mut agent = Agent::attach_logging(pool.pid(), &path, &["--debug-probes"], "warn");
    start.start();
    pool.summary();
    pool.wait_for_exit();
    let metrics = agent.metrics_after(200);
    // The agent says so itself: its view of the pool is not to be trusted. (The pool has exited,
    // so the whole is unhealthy anyway.)
    let (_, health) = agent.health();
    assert_ne!(health["status"].as_str(), Some("healthy"), "{health}");
    let reasons: Vec<&str> =
        health["reasons"].as_array().expect("reasons").iter().filter_map(|r| r.as_str()).collect();
    assert!(
        reasons
            .iter()
            .any(|reason| reason.starts_with("probe 2 (kv_pool::Worker::execute, request_started) failed ")
                && reason.contains("reads the wrong place")),
        "{reasons:?}"
    );
    pool_obs_tests::processes::stop(&mut agent.child, libc::SIGTERM);
    let _ = std::fs::remove_file(&path);

    let logs: Vec<String> = agent.logs.take().expect("captured logs").into_iter().collect();
    let failed_reads: Vec<&String> = logs.iter().filter(|line| line.contains("cannot read")).collect();
    let started = metrics.value("pool_obs_events_total", &[("event", "request_started")]).unwrap();
    assert!(
        started > 0.0 && failed_reads.len() as f64 >= started,
        "{} lines for {started} starts",
        failed_reads.len()
    );
    for line in failed_reads {
        assert!(line.contains("probe 2 (kv_pool::Worker::execute) cannot read request_id at 0x"), "{line}");
        assert!(line.ends_with("error -14"), "EFAULT: {line}");
    }
    let counted = metrics.value("pool_obs_read_failures_total", &[]).unwrap();
    assert!(counted >= started, "every failed read is counted: {counted} for {started} starts");
}
