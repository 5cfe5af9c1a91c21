//! An axum model server as its users write one (`model-server`): handlers with `State`, `Path`
//! and `Json` extractors, a registry that loads models on first use and unloads the least
//! recently used and the idle ones, a semaphore per model, inference on tokio's blocking pool
//! under a timeout, and clients that drop their connection. Built in release as written, in two
//! builds that differ by one handler never called (`model-server-more`). The manifest names the
//! handler, `infer`, and its values by the names its patterns bind (`Path(model)`).

use std::{collections::BTreeMap, sync::Mutex, time::Duration};

use pool_obs_tests::processes::{
    Agent, Pool, StartFile, agent_check, agent_init, args, free_address, manifest,
};

static ALONE: Mutex<()> = Mutex::new(());

/// The manifest for `pool_name`: model-server's, with the crate's name in its functions.
fn manifest_for(pool_name: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(manifest("model-server.toml")).expect("the manifest");
    let crate_name = pool_name.replace('-', "_");
    let path = std::env::temp_dir().join(format!("pool-obs-{pool_name}-{}.toml", std::process::id()));
    std::fs::write(&path, text.replace("model_server::", &format!("{crate_name}::"))).expect("write it");
    path
}

/// Every model's outcomes and unloads exactly as the service counted them, p99 within 1%, the
/// CPU of its inference on `spawn_blocking` and of the tokenizing tasks it spawns within 5%, no
/// anomaly, and `/health` 200 throughout, while the registry unloads models that go idle.
fn assert_counted_exactly(pool_name: &str) {
    // One service at a time on the machine's two cores: p99 is measured to 1%.
    let _alone = ALONE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let start = StartFile::new(pool_name);
    let mut pool = Pool::start_named(
        pool_name,
        &[args(&["--requests", "12000", "--clients", "6"]), start.arg().to_vec()].concat(),
    );
    let agent = Agent::attach(pool.pid(), &manifest_for(pool_name), free_address(), &[]);
    start.start();
    let (summary, health) = agent.health_while(|| pool.summary());
    pool.wait_for_exit();
    let requests = summary.models.values().map(|model| model.requests.total()).sum();
    let metrics = agent.metrics_after(requests);

    assert_eq!(summary.models.len(), 6);
    for (model, truth) in &summary.models {
        for (status, count) in truth.requests.by_status() {
            assert!(count > 0, "{model}: the load has {status} requests");
            let counted = metrics.of_model("pool_requests_total", model, &[("status", status)]);
            assert_eq!(counted as u64, count, "{model} {status}");
        }
        assert!(truth.evictions > 1, "{model}: the registry unloads it: {truth:?}");
        assert_eq!(
            metrics.of_model("pool_worker_evictions_total", model, &[]) as u64,
            truth.evictions,
            "{model}"
        );
        let p99 =
            metrics.of_model("pool_request_duration_quantile_seconds", model, &[("quantile", "0.99")]) * 1e3;
        eprintln!("{pool_name} {model}: p99 {p99:.3} ms, the service's {:.3} ms", truth.p99_ms);
        assert!(
            (p99 - truth.p99_ms).abs() <= 0.01 * truth.p99_ms,
            "{model}: p99 {p99} ms, the service's {}",
            truth.p99_ms
        );
        // The inference runs on tokio's blocking pool; the tokenizing is a task the handler
        // `tokio::spawn`s, polled twice. Both are handed off by the handler's poll.
        let mut handed_off = 0.0;
        for (via, measured, what) in [
            ("spawn_blocking", truth.cpu_seconds, "inference"),
            ("spawn", truth.spawned_cpu_seconds, "tokenizing"),
        ] {
            let cpu = metrics.of_model("pool_model_handoff_cpu_seconds_total", model, &[("via", via)]);
            eprintln!("{pool_name} {model}: CPU handed off via {via} {cpu:.3} s, {what} {measured:.3} s");
            assert!(
                (cpu - measured).abs() <= 0.05 * measured,
                "{model}: CPU handed off via {via} {cpu} s, the service's {what} {measured} s"
            );
            handed_off += cpu;
        }
        assert!(metrics.of_model("pool_model_cpu_seconds_total", model, &[]) > handed_off);
    }
    assert_eq!(metrics.value("pool_obs_events_lost_total", &[]), Some(0.0));
    assert_eq!(metrics.nonzero("pool_obs_anomalies_total", "kind"), BTreeMap::new(), "no anomalies");
    assert!(health.len() >= 3, "/health was asked while the service ran: {health:?}");
    assert!(health.iter().all(|(status, _)| *status == 200), "/health 200 through the unloads: {health:?}");
}

#[test]
fn an_axum_handler_is_counted_exactly_by_model_and_outcome_through_its_extractors() {
    assert_counted_exactly("model-server");
}

#[test]
fn one_more_handler_in_the_build_changes_nothing_that_is_counted() {
    assert_counted_exactly("model-server-more");
}

#[test]
fn a_return_probe_goes_where_a_function_ends_by_jumping_to_a_deallocation_after_its_result() {
    // `Truth::inferred` sends a record; where the send fails it drops the record, and its last
    // act is a tail call to `__rust_dealloc` through the global offset table. Its result, `()`,
    // is complete by then: the jump is where the call ends.
    let text = "[[probe]]\nevent = \"request_ended\"\nfunction = \"model_server::truth::Truth::inferred\"\n\
                at = \"return\"\nmodel = \"model\"\noutcome = \"ok\"\n";
    let path = std::env::temp_dir().join(format!("pool-obs-dealloc-{}.toml", std::process::id()));
    std::fs::write(&path, text).expect("write the manifest");
    let (code, text) = agent_check("model-server", &path);
    let _ = std::fs::remove_file(&path);
    assert_eq!(code, Some(0), "{text}");
    let exits: Vec<&str> = text.lines().filter(|line| line.contains("(probe_exit)")).collect();
    assert!(exits.iter().any(|line| line.contains("`ret`")), "{text}");
    assert!(exits.iter().any(|line| line.contains("`jmp qword ptr [")), "{text}");
    assert!(text.contains("a last jump to a deallocation, the result written"), "{text}");
}

#[test]
fn check_names_the_binding_of_a_path_extractor_and_the_call_that_takes_the_ready_value() {
    let (code, text) = agent_check("model-server", &manifest("model-server.toml"));
    assert_eq!(code, Some(0), "{text}");
    // `Path(model)` is `__arg1.0` in the future's unresumed state; `req` is `__arg2.0`.
    assert!(text.contains("✓ model = \"model\": str("), "{text}");
    assert!(text.contains("✓ request_id = \"req.id\": *("), "{text}");
    // axum's `Handler::call` hands the value straight to `.into_response()`, inlined or not
    // (the same source builds either way, with the workspace's features or the crate's alone).
    let inlined = text.contains("binds the poll's `Ready` value (`self` of `into_response`)");
    let called = text.contains("IntoResponse>::into_response with the poll's `Ready` value (`self`)");
    assert!(inlined || called, "{text}");
    // The first poll, which axum enters past the future's read of its state.
    assert!(text.contains("where the caller enters it once it made the future `Unresumed`"), "{text}");
}

#[test]
fn init_writes_the_async_handler_and_the_unload_as_check_accepts_them() {
    let functions = ["model_server::server::infer", "model_server::registry::Registry::unload"];
    let (code, written) = agent_init("model-server", &functions);
    assert_eq!(code, Some(0), "{written}");
    // The handler is an async request whose values are its patterns' bindings; the unload is a
    // worker's, its model the handle's name rather than the `reason` string.
    for line in [
        "event = \"async_request\"",
        "model = \"model\"",
        "request_id = \"req.id\"",
        "outcome = { \"Ok\" = \"ok\", \"Err(AppError::Timeout)\" = \"timeout\", \"Err\" = \"failed\" }",
        "event = \"worker_evicted\"",
        "model = \"handle.name\"",
        "worker_id = \"handle.id\"",
    ] {
        assert!(written.lines().any(|written| written == line), "`{line}` in:\n{written}");
    }
    let path = std::env::temp_dir().join(format!("pool-obs-init-axum-{}.toml", std::process::id()));
    std::fs::write(&path, &written).expect("write the manifest");
    let (code, printed) = agent_check("model-server", &path);
    assert_eq!(code, Some(0), "{printed}");
    assert!(printed.contains("ok: 2 probes check out"), "{printed}");
}

/// A ring buffer of one page under the service's load: the kernel drops events for want of
/// room, so the agent misses first polls, ends and drops for real. No status is ever counted
/// above the service's own count; what it missed shows as anomalies and in `/health`, naming
/// the handler. (The drop of a ready future waits a second for the end of its poll.)
#[test]
fn ends_the_agent_missed_on_an_axum_service_are_anomalies_named_in_health() {
    let _alone = ALONE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let start = StartFile::new("model-server-lossy");
    let load = args(&["--requests", "12000", "--clients", "36"]);
    let mut pool = Pool::start_named("model-server", &[load, start.arg().to_vec()].concat());
    let lossy = ["--ring-buffer-bytes", "4096", "--drain-interval-ms", "1000"];
    let agent = Agent::attach(pool.pid(), &manifest("model-server.toml"), free_address(), &lossy);
    start.start();
    let (summary, health) = agent.health_while(|| pool.summary());
    // Past the second a dropped-ready future waits for its poll's end.
    std::thread::sleep(Duration::from_secs(2));
    let metrics = agent.metrics();
    pool.wait_for_exit();

    metrics.assert_lossy_never_above(&summary);
    // While the service ran, `/health` said which probe's requests it could not vouch for.
    assert!(
        health.iter().any(|(_, body)| body.contains("\"status\":\"degraded\"")
            && body.contains("model_server::server::infer")),
        "/health names the handler: {health:?}"
    );
}

#[test]
fn a_middleware_counts_requests_by_the_http_status_it_answers() {
    let _alone = ALONE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let start = StartFile::new("model-server-status");
    let load = args(&["--requests", "6000", "--clients", "6"]);
    let mut pool = Pool::start_named("model-server", &[load, start.arg().to_vec()].concat());
    let agent = Agent::attach(pool.pid(), &manifest("model-server-status.toml"), free_address(), &[]);
    start.start();
    let summary = pool.summary();
    pool.wait_for_exit();
    let requests: u64 = summary.models.values().map(|model| model.requests.total()).sum();
    let metrics = agent.metrics_after(requests);
    // Every answer's status, 200, 500, 503 or 504, or no answer at all, as the service counted it.
    for status in ["ok", "failed", "timeout", "cancelled"] {
        let truth: u64 = summary
            .models
            .values()
            .flat_map(|model| model.requests.by_status())
            .filter(|(name, _)| *name == status)
            .map(|(_, count)| count)
            .sum();
        assert!(truth > 0, "the load has {status} requests");
        assert_eq!(
            metrics.of_model("pool_requests_total", "all", &[("status", status)]) as u64,
            truth,
            "{status}"
        );
    }
    assert_eq!(metrics.nonzero("pool_obs_anomalies_total", "kind"), BTreeMap::new(), "no anomalies");
}
