//! Model keys as a careless or hostile registry makes them: huge, and without end in number.
//! The pool's own keys, read by the real kernel programs; the agent stays small and exact.

use pool_obs_tests::processes::{Agent, status_bytes, watch_bench_target};

/// Runs `bench-target` with `load` under an agent and returns the agent, its work done.
fn profile(name: &str, load: &[&str], calls: u64) -> Agent {
    let agent = watch_bench_target(name, "bench-target.toml", load, &[]);
    let metrics = agent.metrics_accounting_for(calls);
    assert_eq!(metrics.value("pool_obs_events_lost_total", &[]), Some(0.0), "paced to lose nothing");
    agent
}

#[test]
fn a_one_megabyte_key_is_cut_to_what_the_probe_reads() {
    let agent = profile("long-key", &["--calls", "1000", "--models", "2", "--key-bytes", "1048576"], 1000);
    let metrics = agent.metrics();
    // The kernel reads 64 bytes of the key; the label says with `…` that there was more.
    // Calls alternate between the keys; call 999, which fails, is model-1's.
    for (model, expected) in [(0, (500.0, 0.0)), (1, (499.0, 1.0))] {
        let label = format!("{:-<64}…", format!("model-{model}"));
        let count = |status| metrics.value("pool_requests_total", &[("model", &label), ("status", status)]);
        assert_eq!((count("ok"), count("failed")), (Some(expected.0), Some(expected.1)), "{label}");
    }
}

/// What the agent may hold after any flood of keys at `--max-models` 1,000 (the default): a
/// thousand models' series and windows, plus the runtime, and a scrape of their 43,000 series
/// (built as text twice). Measured: 62.9 MiB before every series carried its `pid`, 64.6 MiB
/// after.
const MEMORY_BOUND_BYTES: u64 = 72 << 20;

#[test]
fn a_million_distinct_keys_stop_at_max_models_and_the_agent_stays_bounded() {
    // 200,000 calls a second on each of 2 threads: fast, and within what the agent drains.
    let flood = ["--calls", "1000000", "--models", "1000000", "--threads", "2", "--rate", "100000"];
    let agent = profile("key-flood", &flood, 1_000_000);
    let metrics = agent.metrics();
    let models = metrics.label_values("pool_requests_total", "model");
    assert_eq!(models.len(), 1001, "1,000 keys of their own and __other__");
    let anomalies = metrics.nonzero("pool_obs_anomalies_total", "kind");
    assert_eq!(metrics.sum("pool_requests_total"), 1_000_000.0, "every call counted ({anomalies:?})");
    let other = |status| metrics.value("pool_requests_total", &[("model", "__other__"), ("status", status)]);
    // Each tracked key was called once; every other call counts under __other__.
    assert_eq!(other("ok").unwrap_or(0.0) + other("failed").unwrap_or(0.0), 999_000.0);
    let peak = status_bytes(agent.child.id(), "VmHWM");
    assert!(peak < MEMORY_BOUND_BYTES, "the agent's peak resident memory {peak} B is over the bound");
}
