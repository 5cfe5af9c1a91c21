//! Async request paths: a request is a future, from its first poll to the poll that returns
//! `Ready`, or to its drop (cancelled). `async-pool` is a tokio service built in release as
//! written: its `async fn handle` is polled inside a wrapper future's poll, into which the
//! optimiser inlined it. With `--awaited` its clients await it in an async block of their own
//! task under `tokio::time::timeout`: the optimiser inlines the poll into the block's, and that
//! into `Timeout`'s, which goes on after it. `async-pool-boxed` is the same service with `handle`
//! returning a `Pin<Box<dyn Future>>`, polled and dropped through the box's vtable.

use std::collections::BTreeMap;

use pool_obs_tests::{
    dashboard,
    ground_truth::Summary,
    openmetrics::Exposition,
    processes::{Agent, Pool, StartFile, agent_check, args, free_address, manifest},
};

/// Runs `pool_name` to its end with the agent attached; what each side counted, and the agent.
fn profile(pool_name: &str, options: &[&str]) -> (Summary, Exposition, Agent) {
    let start = StartFile::new(pool_name);
    let load = args(&[&["--requests", "20000", "--clients", "64"], options].concat());
    let mut pool = Pool::start_named(pool_name, &[load, start.arg().to_vec()].concat());
    let agent = Agent::attach(pool.pid(), &manifest(&format!("{pool_name}.toml")), free_address(), &[]);
    start.start();
    let summary = pool.summary();
    pool.wait_for_exit();
    let requests = summary.models.values().map(|model| model.requests.total()).sum();
    let metrics = agent.metrics_after(requests);
    (summary, metrics, agent)
}

/// Every model's outcomes, cancellations and polls exactly as the service counted them, and
/// its latency quantiles within 1%.
fn assert_counted_exactly(pool_name: &str, options: &[&str]) {
    let (summary, metrics, agent) = profile(pool_name, options);
    assert_eq!(summary.models.len(), 3);
    for (model, truth) in &summary.models {
        let value = |name: &str, extra: &[(&str, &str)]| {
            let labels: Vec<_> =
                [("model", model.as_str())].into_iter().chain(extra.iter().copied()).collect();
            metrics.value(name, &labels).unwrap_or(0.0)
        };
        for (status, count) in [
            ("ok", truth.requests.ok),
            ("failed", truth.requests.failed),
            ("timeout", truth.requests.timeout),
            ("cancelled", truth.requests.cancelled),
        ] {
            assert!(count > 0, "{model}: the load has {status} requests");
            assert_eq!(value("pool_requests_total", &[("status", status)]) as u64, count, "{model} {status}");
        }
        assert_eq!(value("pool_request_polls_total", &[]) as u64, truth.polls, "{model}: polls");
        // Cancelled requests' time is apart from the latencies of those that finished.
        assert!(value("pool_request_cancelled_seconds_total", &[]) > 0.0, "{model}: time to cancellation");
        let busy = value("pool_request_busy_seconds_total", &[]);
        let total = value("pool_request_duration_seconds_sum", &[]);
        assert!(busy > 0.0 && busy < total, "{model}: {busy} s inside polls of {total} s in all");
        for (quantile, expected) in [("0.5", truth.p50_ms), ("0.99", truth.p99_ms)] {
            let measured =
                value("pool_request_duration_quantile_seconds", &[("quantile", quantile)]) * 1000.0;
            eprintln!("{pool_name} {model}: p{quantile} {measured:.4} ms, the service's {expected:.4} ms");
            assert!(
                (measured - expected).abs() <= 0.01 * expected,
                "{model}: p{quantile} {measured} ms, the service's {expected} ms"
            );
        }
    }
    assert_eq!(metrics.value("pool_obs_events_lost_total", &[]), Some(0.0));
    assert_eq!(metrics.value("pool_obs_read_failures_total", &[]), Some(0.0));
    assert_eq!(metrics.nonzero("pool_obs_anomalies_total", "kind"), BTreeMap::new(), "no anomalies");
    // The dashboard's panel of async requests draws what the agent exports for them.
    let referenced = dashboard::referenced_metrics();
    for name in dashboard::ASYNC_ONLY {
        assert!(referenced.contains(name), "the dashboard draws {name}");
        assert!(metrics.samples.iter().any(|sample| sample.name == name), "{name} is exported");
    }
    // The last request: its polls and the time inside them.
    let response = agent.get("/requests/19999");
    assert_eq!(response.status, 200, "{}", response.body);
    let timeline: serde_json::Value = serde_json::from_str(&response.body).expect("a timeline");
    let polls = timeline["polls"].as_u64().expect("polls");
    let busy_ms = timeline["busy_ms"].as_f64().expect("busy_ms");
    let total_ms = timeline["total_ms"].as_f64().expect("total_ms");
    assert!(polls >= 1 && busy_ms > 0.0 && busy_ms < total_ms, "{timeline}");
}

#[test]
fn an_async_fn_inlined_into_a_wrapper_future_is_counted_exactly_by_model_and_outcome() {
    assert_counted_exactly("async-pool", &[]);
}

#[test]
fn an_async_fn_awaited_in_a_parent_future_is_counted_exactly_where_the_parent_binds_its_value() {
    // The build as written: the poll is inlined into the client's async block, itself inlined
    // into `Timeout`'s poll, whose return is not the request's: the agent ends each poll where
    // the block binds the `Ready` value, and finds the poll's second entry (past its state read).
    let (code, text) = check("awaited", &std::fs::read_to_string(manifest("async-pool.toml")).unwrap());
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("(probe_ready): where <tokio::time::timeout::Timeout<T>"), "{text}");
    assert_counted_exactly("async-pool", &["--awaited"]);
}

#[test]
fn a_boxed_future_as_async_trait_makes_them_is_counted_exactly_by_model_and_outcome() {
    assert_counted_exactly("async-pool-boxed", &[]);
}

/// `check` on async-pool with a manifest: its exit code and what it printed.
fn check(name: &str, manifest: &str) -> (i32, String) {
    let path = std::env::temp_dir().join(format!("pool-obs-async-{name}-{}.toml", std::process::id()));
    std::fs::write(&path, manifest).expect("write the manifest");
    let (code, text) = agent_check("async-pool", &path);
    let _ = std::fs::remove_file(&path);
    (code.unwrap_or(-1), text)
}

#[test]
fn a_function_that_is_not_async_is_refused_as_an_async_request() {
    let (code, text) = check(
        "not-async",
        "[[probe]]\nevent = \"async_request\"\nfunction = \"async_pool::service::infer\"\nmodel = { constant = \"m\" }",
    );
    assert_eq!(code, 19, "{text}");
    assert!(
        text.contains(
            "async_pool::service::infer is neither an `async fn` nor a function whose body is one async block"
        ),
        "{text}"
    );
}

#[test]
fn an_async_request_takes_its_values_from_the_fn_arguments_and_refuses_others_by_name() {
    let (code, text) = check(
        "misnamed",
        "[[probe]]\nevent = \"async_request\"\nfunction = \"async_pool::Service::handle\"\nmodel = \"request.model\"",
    );
    assert_eq!(code, 19, "{text}");
    assert!(text.contains("has no parameter `request`: it has `self`, `req`"), "{text}");
}

/// A ring buffer of one page under the service's full load: the kernel drops the events it has
/// no room for (counted), so the agent misses polls and ends for real. Whatever it counts under
/// a status is never more than the service's own count; what it could not see shows as
/// anomalies, and `/health` names the probe whose requests it cannot vouch for.
#[test]
fn polls_and_ends_the_agent_missed_are_anomalies_named_in_health_never_wrong_counts() {
    let start = StartFile::new("lossy");
    let load = args(&["--requests", "20000", "--clients", "64"]);
    let mut pool = Pool::start_named("async-pool", &[load, start.arg().to_vec()].concat());
    let lossy = ["--ring-buffer-bytes", "4096", "--drain-interval-ms", "1000"];
    let agent = Agent::attach(pool.pid(), &manifest("async-pool.toml"), free_address(), &lossy);
    start.start();
    let summary = pool.summary();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let metrics = agent.metrics();
    let (_, health) = agent.health();
    pool.wait_for_exit();

    metrics.assert_lossy_never_above(&summary);
    let reasons = health["reasons"].to_string();
    assert!(
        reasons.contains("async_pool::Service::handle") && reasons.contains("contradict the life"),
        "/health names the probe: {reasons}"
    );
}
