//! Async request paths: a request is a future, from its first poll to the poll that returns
//! `Ready`, or to its drop (cancelled). `async-pool` is a tokio service built in release as
//! written: its `async fn handle` is polled inside a wrapper future's poll, into which the
//! optimiser inlined it. `async-pool-boxed` is the same service with `handle` returning a
//! `Pin<Box<dyn Future>>`, polled and dropped through the box's vtable.

use std::collections::BTreeMap;

use pool_obs_tests::{
    ground_truth::Summary,
    openmetrics::Exposition,
    processes::{Agent, Pool, StartFile, args, free_address, manifest},
};

/// Runs `pool_name` to its end with the agent attached; what each side counted, and the agent.
fn profile(pool_name: &str) -> (Summary, Exposition, Agent) {
    let start = StartFile::new(pool_name);
    let load = args(&["--requests", "20000", "--clients", "64"]);
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
fn assert_counted_exactly(pool_name: &str) {
    let (summary, metrics, agent) = profile(pool_name);
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
    assert_counted_exactly("async-pool");
}

#[test]
fn a_boxed_future_as_async_trait_makes_them_is_counted_exactly_by_model_and_outcome() {
    assert_counted_exactly("async-pool-boxed");
}
