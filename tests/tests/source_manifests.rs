//! Manifests in the pool's own terms: `job.model`, `spec.mem_bytes`, outcomes by variant
//! names, compiled from the binary's DWARF at every place the function runs. `job-pool` is
//! built in release as written, and every function its manifest names was inlined away.

use std::{collections::BTreeMap, process::Command};

use pool_obs_tests::{
    ground_truth::Summary,
    openmetrics::Exposition,
    processes::{Agent, Pool, StartFile, agent_check, args, binary, free_address, manifest},
};

/// The functions `job-pool.toml` probes.
const PROBED: [&str; 5] = [
    "job_pool::Registry::spawn",
    "job_pool::Registry::evict",
    "job_pool::Pool::submit",
    "job_pool::serve",
    "job_pool::finish",
];

#[test]
fn every_function_the_manifest_names_was_inlined_and_has_no_symbol() {
    let output = Command::new(binary("pool-obs-agent"))
        .args(["symbols", "--binary", binary("job-pool").to_str().unwrap(), "job_pool::"])
        .output()
        .expect("run pool-obs-agent symbols");
    let listing = String::from_utf8_lossy(&output.stdout);
    let (with_symbols, inlined) =
        listing.split_once("inlined into their callers everywhere").expect("an inlined section");
    for function in PROBED {
        assert!(
            inlined.contains(&format!("  {function}  [")),
            "{function} is inlined everywhere:\n{listing}"
        );
        assert!(!with_symbols.contains(&format!(" {function} ")), "{function} has no symbol:\n{listing}");
    }
}

/// Runs `pool` under load with the agent attached by its manifest; what each side counted.
fn profile(pool_name: &str, load: &[&str]) -> (Summary, Exposition) {
    let start = StartFile::new(pool_name);
    let mut pool = Pool::start_named(pool_name, &[args(load), start.arg().to_vec()].concat());
    let agent = Agent::attach(pool.pid(), &manifest(&format!("{pool_name}.toml")), free_address(), &[]);
    start.start();
    let summary = pool.summary();
    pool.wait_for_exit();
    let requests = summary.models.values().map(|model| model.requests.total()).sum();
    (summary, agent.metrics_after(requests))
}

#[test]
fn a_pool_whose_functions_are_all_inlined_is_counted_exactly_from_its_own_terms() {
    let (summary, metrics) = profile("job-pool", &["--requests", "2500", "--rate", "250"]);

    assert_eq!(summary.models.len(), 3);
    for (model, truth) in &summary.models {
        let value = |name: &str, extra: &[(&str, &str)]| {
            let labels: Vec<_> =
                [("model", model.as_str())].into_iter().chain(extra.iter().copied()).collect();
            metrics.value(name, &labels).unwrap_or(0.0) as u64
        };
        for (status, count) in [
            ("ok", truth.requests.ok),
            ("failed", truth.requests.failed),
            ("timeout", truth.requests.timeout),
        ] {
            assert!(count > 0, "{model}: the load has {status} requests");
            assert_eq!(value("pool_requests_total", &[("status", status)]), count, "{model} {status}");
        }
        assert!(truth.spawns > 1 && truth.evictions > 0, "{model}: workers come and go: {truth:?}");
        assert_eq!(value("pool_worker_spawns_total", &[]), truth.spawns, "{model} spawns");
        assert_eq!(value("pool_worker_evictions_total", &[]), truth.evictions, "{model} evictions");
        // Submission to reply, as the pool measured it where the probes sit.
        let p99_ms = metrics
            .value("pool_request_duration_quantile_seconds", &[("model", model), ("quantile", "0.99")])
            .expect("a p99")
            * 1000.0;
        eprintln!("{model}: p99 {p99_ms:.4} ms, the pool's {:.4} ms", truth.p99_ms);
        assert!(
            (p99_ms - truth.p99_ms).abs() <= 0.01 * truth.p99_ms,
            "{model}: p99 {p99_ms} ms, the pool's {} ms",
            truth.p99_ms
        );
    }
    assert_eq!(metrics.value("pool_obs_events_lost_total", &[]), Some(0.0));
    assert_eq!(metrics.value("pool_obs_read_failures_total", &[]), Some(0.0));
    assert_eq!(metrics.nonzero("pool_obs_anomalies_total", "kind"), BTreeMap::new(), "no anomalies");
}

#[test]
fn a_pool_of_boxed_closures_is_counted_by_what_each_closure_captured() {
    let (summary, metrics) = profile("closure-pool", &["--requests", "2000", "--rate", "1000"]);
    assert_eq!(summary.models.len(), 2);
    for (model, truth) in &summary.models {
        // The model label comes from the closure's captured `model`, joined to the reply by the
        // captured `id`.
        for (status, count) in [("ok", truth.requests.ok), ("failed", truth.requests.failed)] {
            assert!(count > 0, "{model}: the load has {status} requests");
            let counted = metrics.value("pool_requests_total", &[("model", model), ("status", status)]);
            assert_eq!(counted, Some(count as f64), "{model} {status}");
        }
    }
    assert_eq!(metrics.value("pool_obs_read_failures_total", &[]), Some(0.0));
    assert_eq!(metrics.nonzero("pool_obs_anomalies_total", "kind"), BTreeMap::new(), "no anomalies");
}

/// A manifest of one probe, in a file of its own.
fn one_probe(probe: &str) -> std::path::PathBuf {
    static MANIFESTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let nth = MANIFESTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("pool-obs-source-{}-{nth}.toml", std::process::id()));
    std::fs::write(&path, format!("[[probe]]\n{probe}\n")).expect("write the manifest");
    path
}

/// `check` on job-pool with one probe: its exit code and what it printed.
fn check(probe: &str) -> (i32, String) {
    let (code, text) = agent_check("job-pool", &one_probe(probe));
    (code.unwrap_or(-1), text)
}

#[test]
fn check_shows_each_site_and_the_expression_each_value_compiles_to() {
    let (code, text) = check(
        "event = \"request_ended\"\nfunction = \"job_pool::finish\"\nrequest_id = \"job.id\"\nmodel = \"job.model\"\n\
         outcome = { value = \"result\", Ok = \"ok\", \"Err(JobError::Timeout)\" = \"timeout\", Err = \"failed\" }",
    );
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("job_pool::finish (inlined into job_pool::Pool::run at main.rs:"), "{text}");
    assert!(text.contains("✓ request_id = \"job.id\": *(rsp + 0x"), "{text}");
    assert!(text.contains("✓ model = \"job.model\": str(*(rsp + 0x"), "{text}");
    // Err(JobError::Timeout) reads the Result's tag, then the JobError's niche inside Err.
    assert!(text.contains("✓ outcome = \"result\": variant of *(rsp + 0x"), "{text}");
    assert!(text.contains(", inner variant of *(rsp + 0x"), "{text}");
}

#[test]
fn a_value_the_compiler_did_not_keep_is_refused_naming_what_is_there() {
    // `finish` reads its `served_by` only in a debug assertion: a release build drops it.
    let probe = "event = \"request_ended\"\nfunction = \"job_pool::finish\"\nrequest_id = \"served_by\"\noutcome = \"ok\"";
    let (code, text) = check(probe);
    assert_eq!(code, 19, "{text}");
    assert!(text.contains("`served_by` is optimised out at 0x"), "{text}");
    assert!(text.contains("available here: `job`, `result`"), "{text}");

    // Attaching refuses it too, with the line `check` printed.
    let start = StartFile::new("job-pool-refused");
    let pool = Pool::start_named("job-pool", start.arg().as_ref());
    let output = Command::new(binary("pool-obs-agent"))
        .args(["--pid", &pool.pid().to_string(), "--listen", "127.0.0.1:0", "--manifest"])
        .arg(one_probe(probe))
        .output()
        .expect("run pool-obs-agent");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(21), "{stderr}");
    let line = text.lines().find(|line| line.contains("is optimised out")).expect("check's line").trim();
    let refused = line.trim_start_matches("✗ ");
    assert_eq!(stderr.trim_end(), format!("pool-obs-agent: error: {refused}"));
}

#[test]
fn a_name_several_functions_share_is_refused_with_their_mangled_names() {
    let (code, text) =
        check("event = \"request_started\"\nfunction = \"job_pool::main::{{closure}}\"\nrequest_id = \"id\"");
    assert_eq!(code, 19, "{text}");
    assert!(text.contains("matches 4 functions, name one by its mangled name"), "{text}");
    assert!(text.contains("(mangled _ZN8job_pool4main28_$u7b$$u7b$closure$u7d$$u7d$17h"), "{text}");
}

#[test]
fn a_misspelt_key_or_field_is_an_error_not_ignored() {
    let (code, text) = check(
        "event = \"request_ended\"\nfunction = \"job_pool::finish\"\n\
         outcome = { value = \"*arg0\", ok = \"== 1\", otherwise = \"failed\", timout = \"== 2\" }",
    );
    assert_eq!(code, 18, "{text}");
    assert!(text.contains("unknown key `timout` in an outcome rule"), "{text}");
    let (code, text) =
        check("event = \"request_started\"\nfunction = \"job_pool::serve\"\nrequest_id = \"job.idd\"");
    assert_eq!(code, 19, "{text}");
    assert!(text.contains("`Job` has no field `idd`; it has `id`, `model`"), "{text}");
}

#[test]
fn an_unknown_or_missing_variant_is_an_error() {
    let (code, text) = check(
        "event = \"request_ended\"\nfunction = \"job_pool::finish\"\n\
         outcome = { value = \"result\", Ok = \"ok\", Errr = \"failed\" }",
    );
    assert_eq!(code, 19, "{text}");
    assert!(text.contains("has no variant `Errr`: it has Ok, Err"), "{text}");
    let (code, text) = check(
        "event = \"request_ended\"\nfunction = \"job_pool::finish\"\noutcome = { value = \"result\", Ok = \"ok\" }",
    );
    assert_eq!(code, 19, "{text}");
    assert!(text.contains("no arm for `Err`"), "{text}");
}

#[test]
fn the_return_of_an_inlined_function_is_refused_with_what_to_probe_instead() {
    let (code, text) = check(
        "event = \"request_ended\"\nfunction = \"job_pool::serve\"\nat = \"return\"\n\
         outcome = { Ok = \"ok\", Err = \"failed\" }",
    );
    assert_eq!(code, 19, "{text}");
    assert!(text.contains("an inlined call has no return of its own"), "{text}");
}
