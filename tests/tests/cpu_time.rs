//! Where the CPU goes, per model, on the real kernel: `cpu-pool` serves `dense` requests that
//! cost three times the CPU of `sparse` ones, both waiting the same time off the CPU, on two
//! worker threads that take either model. The pool measures each request's thread CPU time
//! (`CLOCK_THREAD_CPUTIME_ID`) and wall time itself: its summary is the truth.

mod profiles;

use pool_obs_tests::{
    ground_truth::Summary,
    openmetrics::Exposition,
    processes::{Agent, Pool, StartFile, args, free_address, manifest},
};

/// Runs `cpu-pool` with `requests` of each model, the agent attached from the start.
fn run(requests: u64) -> (Summary, Agent, Exposition) {
    let start = StartFile::new("cpu-pool");
    let load = args(&["--requests", &requests.to_string()]);
    let mut pool = Pool::start_named("cpu-pool", &[load, start.arg().to_vec()].concat());
    let agent = Agent::attach(pool.pid(), &manifest("cpu-pool.toml"), free_address(), &[]);
    start.start();
    let summary = pool.summary();
    pool.wait_for_exit();
    let metrics = agent.metrics_after(requests * 2);
    (summary, agent, metrics)
}

fn within(measured: f64, truth: f64, tolerance: f64) -> bool {
    (measured - truth).abs() <= truth * tolerance
}

#[test]
fn cpu_time_per_model_and_off_cpu_time_per_request_equal_the_pools_own_within_5_percent() {
    let (summary, agent, metrics) = run(300);
    let mut serving = 0.0;
    for (model, truth) in &summary.models {
        let labels = [("model", model.as_str())];
        let requests = truth.requests.total();
        assert_eq!(
            metrics.value("pool_requests_total", &[("model", model), ("status", "ok")]),
            Some(requests as f64)
        );
        let cpu = metrics.value("pool_model_cpu_seconds_total", &labels).expect("CPU time per model");
        let service = metrics.value("pool_request_service_seconds_sum", &labels).expect("service time");
        let off_cpu_per_request = (service - cpu) / requests as f64;
        let truth_off_cpu = truth.offcpu_seconds / requests as f64;
        eprintln!(
            "{model}: CPU {cpu:.4} s, the pool's {:.4} s; off-CPU per request {:.3} ms, the pool's {:.3} ms",
            truth.cpu_seconds,
            off_cpu_per_request * 1e3,
            truth_off_cpu * 1e3
        );
        assert!(within(cpu, truth.cpu_seconds, 0.05), "{model}: CPU {cpu} s against {}", truth.cpu_seconds);
        assert!(
            within(off_cpu_per_request, truth_off_cpu, 0.05),
            "{model}: off-CPU {off_cpu_per_request} s per request against {truth_off_cpu}"
        );
        let per_request = metrics.value("pool_request_cpu_seconds_count", &labels);
        assert_eq!(per_request, Some(requests as f64), "{model}: every request's CPU time is observed");
        serving += cpu;
    }
    let (dense, sparse) = (&summary.models["dense"], &summary.models["sparse"]);
    assert!(dense.cpu_seconds > 2.5 * sparse.cpu_seconds, "the load is as described: {summary:?}");
    let mode = |mode| metrics.value("pool_process_cpu_seconds_total", &[("mode", mode)]).expect(mode);
    assert!(within(mode("serving"), serving, 1e-6), "serving is the sum of the models");
    assert!(mode("other") > 0.0, "the pool's main thread ran outside requests");

    // One request, as `/requests/{id}` shows it: its service time is on and off the CPU.
    let timeline: serde_json::Value =
        serde_json::from_str(&agent.get(&format!("/requests/{}", 2 * 300 - 1)).body).expect("JSON");
    let (cpu_ms, offcpu_ms, service_ms) =
        (timeline["cpu_ms"].as_f64(), timeline["offcpu_ms"].as_f64(), timeline["service_ms"].as_f64());
    let (cpu_ms, offcpu_ms, service_ms) = (cpu_ms.unwrap(), offcpu_ms.unwrap(), service_ms.unwrap());
    assert!(cpu_ms > 0.0 && offcpu_ms >= 4.0, "a sparse request waits 4 ms off the CPU: {timeline}");
    assert!((cpu_ms + offcpu_ms - service_ms).abs() < 1e-6, "{timeline}");
}

#[test]
fn a_five_second_profile_is_pprof_whose_samples_name_their_model_and_its_hot_function() {
    let start = StartFile::new("cpu-pool-profile");
    let load = args(&["--requests", "800"]);
    let mut pool = Pool::start_named("cpu-pool", &[load, start.arg().to_vec()].concat());
    let agent = Agent::attach(pool.pid(), &manifest("cpu-pool.toml"), free_address(), &[]);
    start.start();
    let profile = profiles::take(pool.pid(), &agent, 5);
    let summary = pool.summary();
    pool.wait_for_exit();
    assert_eq!(summary.models["dense"].requests.total(), 800);
    let by_model = profiles::samples_by_model(&profile, &["dense_forward", "sparse_lookup"]);
    eprintln!("{by_model:?}");
    for (model, hot) in [("dense", "dense_forward"), ("sparse", "sparse_lookup")] {
        let (total, hits) = &by_model[model];
        let share = hits.get(hot).copied().unwrap_or(0) as f64 / *total as f64;
        // Two workers on CPU about half of 5 s at 99 Hz: a few hundred samples.
        assert!(*total > 50, "{model}: {total} samples");
        assert!(share >= 0.9, "{model}: {hot} on {:.1}% of its samples", share * 100.0);
    }
    // The dense model burns three times the CPU of the sparse one, and the samples say so.
    let ratio = by_model["dense"].0 as f64 / by_model["sparse"].0 as f64;
    assert!((2.0..4.5).contains(&ratio), "dense/sparse samples {ratio}");
}
