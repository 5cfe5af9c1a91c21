//! Where the kernel can take a probe. It refuses a uprobe on a LOCK-prefixed instruction, and
//! a return probe cannot be placed on a function that leaves by a tail call: the agent places
//! the first on a later instruction and counts exactly, and refuses the second, with one line
//! and the same exit code in `check` and at attach.

use std::process::{Command, Output};

use pool_obs_tests::processes::{
    Agent, Pool, StartFile, args, binary, free_address, manifest, watch_bench_target,
};

fn check(manifest: &std::path::Path, pool: &str) -> Output {
    Command::new(binary("pool-obs-agent"))
        .args(["check", "--binary"])
        .arg(binary(pool))
        .arg("--manifest")
        .arg(manifest)
        .output()
        .expect("run pool-obs-agent check")
}

/// Runs `check`, which must pass and print each of `shown`: the site it chose and why.
fn assert_check_shows(manifest: &std::path::Path, pool: &str, shown: &[&str]) {
    let checked = check(manifest, pool);
    let printed = String::from_utf8_lossy(&checked.stdout);
    assert_eq!(checked.status.code(), Some(0), "{printed}");
    for text in shown {
        assert!(printed.contains(text), "check shows `{text}`: {printed}");
    }
}

#[test]
fn a_function_whose_first_instruction_is_lock_prefixed_is_probed_past_it_and_counted_exactly() {
    let jobs = manifest("panic-pool-jobs.toml");
    assert_check_shows(
        &jobs,
        "panic-pool",
        &[
            "core::ptr::drop_in_place<panic_pool::Embed>+0x8 `ret` (probe_entry): +0x8, single-stepped",
            "is refused by the kernel (LOCK prefix)",
        ],
    );

    let start = StartFile::new("lock-prefix");
    let mut pool =
        Pool::start_named("panic-pool", &[args(&["--requests", "6000"]), start.arg().to_vec()].concat());
    let agent = Agent::attach(pool.pid(), &jobs, free_address(), &[]);
    start.start();
    let summary = pool.summary();
    pool.wait_for_exit();
    let requests: u64 = summary.models.values().map(|model| model.requests.total()).sum();
    let metrics = agent.metrics_after(requests);
    // Every request's job was dropped once: both kinds, through the one merged function.
    assert_eq!(
        metrics.value("pool_requests_total", &[("model", "jobs"), ("status", "ok")]),
        Some(requests as f64)
    );
}

#[test]
fn a_leaf_whose_first_instruction_is_single_stepped_is_probed_on_the_branch_after_it_and_counted_exactly() {
    // `tally` starts with `test sil, 1`, which the kernel single-steps (about 15 µs a hit here),
    // then branches; `cargo xtask bench` shows the placed probe costs what one on a `push` does.
    assert_check_shows(
        &manifest("bench-target-entry-tally.toml"),
        "bench-target",
        &["emulated by the kernel: the first instruction, `test ", "is single-stepped by the kernel"],
    );

    let calls = 200_000;
    let agent =
        watch_bench_target("leaf", "bench-target-entry-tally.toml", &["--calls", "200000", "--leaf"], &[]);
    let metrics = agent.metrics_after(calls);
    assert_eq!(
        metrics.value("pool_requests_total", &[("model", "bench"), ("status", "ok")]),
        Some(calls as f64)
    );
}

#[test]
fn a_return_probe_on_a_function_that_leaves_by_a_tail_call_is_refused_by_check_and_at_attach() {
    // `bench_target::begin` ends with `jmp record`: its result is computed after its last instruction.
    let text = "[[probe]]\nevent = \"request_ended\"\nfunction = \"bench_target::begin\"\nat = \"return\"\noutcome = \"ok\"\n";
    let path = std::env::temp_dir().join(format!("pool-obs-tail-call-{}.toml", std::process::id()));
    std::fs::write(&path, text).expect("write the manifest");
    let refusal = "cannot probe bench_target::begin at return: it leaves by a tail call (`jmp ";
    let advice = "where its result is not yet known: probe the function it jumps to at return, or the function \
                  that receives the result";

    let checked = check(&path, "bench-target");
    let printed = String::from_utf8_lossy(&checked.stdout);
    assert_eq!(checked.status.code(), Some(19), "{printed}");
    assert!(printed.contains(refusal) && printed.contains(advice), "{printed}");

    let start = StartFile::new("tail-call");
    let pool = Pool::start_named("bench-target", &args(&start.arg().each_ref().map(String::as_str)));
    let attached = Command::new(binary("pool-obs-agent"))
        .args(["--pid", &pool.pid().to_string(), "--listen", "127.0.0.1:0", "--manifest"])
        .arg(&path)
        .output()
        .expect("run pool-obs-agent");
    let stderr = String::from_utf8_lossy(&attached.stderr);
    assert_eq!(attached.status.code(), Some(20), "{stderr}");
    let line = stderr.trim_end();
    assert!(
        line.lines().count() == 1 && line.starts_with(&format!("pool-obs-agent: error: {refusal}")),
        "{line}"
    );
    assert!(line.ends_with(advice), "{line}");
    let _ = std::fs::remove_file(&path);
}
