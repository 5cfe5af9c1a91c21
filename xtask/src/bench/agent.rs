//! What the agent itself costs and sustains: its CPU under a steady load, the events it loses at
//! the highest rate the target reaches, and its endpoints' latency with many models.

use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use pool_obs_tests::{
    http,
    processes::{Agent, StartFile, free_address, manifest, stop, vm_rss_bytes},
};

use super::{Scale, TargetResult, bench_target, cpu_seconds, stats, target_result, verdict};

/// The agent's CPU while the target makes 100k calls a second.
pub(super) fn agent_cpu(scale: &Scale) -> Result<String> {
    let rate = 100_000u64;
    let mut shares = Vec::new();
    for _ in 0..scale.rounds {
        let start = StartFile::new("cpu");
        let calls = (rate * scale.paced_seconds).to_string();
        let mut target = bench_target(&start, &["--calls", &calls, "--rate", &rate.to_string()]);
        let mut agent =
            Agent::attach(target.pid(), &manifest("bench-target-uretprobe.toml"), free_address(), &[]);
        let before = cpu_seconds(agent.child.id());
        start.start();
        let began = Instant::now();
        let made = target_result(&mut target)?.calls;
        agent.metrics_after(made);
        let seconds = began.elapsed().as_secs_f64();
        shares.push(100.0 * (cpu_seconds(agent.child.id()) - before) / seconds);
        stop(&mut agent.child, libc::SIGTERM);
    }
    let (m, low, high) = stats(&shares);
    Ok(format!(
        "### Agent CPU\n\nThis section, the next two and their targets measure the agent, so the target runs \
         under `bench-target-uretprobe.toml`: return-instruction probes would not let it make 100k calls a \
         second.\n\nAt 100k events/s for {} s: **{m:.1}% of one core** ({low:.1}–{high:.1}), draining, \
         decoding and aggregating every event (the time includes settling after the load).\n\n",
        scale.paced_seconds
    ))
}

/// Lost events at the highest rate the target reaches on two threads, for a few ring-buffer
/// sizes and drain intervals.
pub(super) fn loss(scale: &Scale) -> Result<String> {
    let mut table = format!(
        "### Lost events ({} calls on 2 threads, as fast as the probes let them go)\n\n\
         | ring buffer | drain every | events/s reached | lost |\n|---|---|---|---|\n",
        scale.loss_calls
    );
    let mut best_lossless: f64 = 0.0;
    for ring in [64u32 << 10, 1 << 20, 4 << 20] {
        for drain_ms in [10u64, 100] {
            let start = StartFile::new("loss");
            let calls = scale.loss_calls.to_string();
            let mut target = bench_target(&start, &["--calls", &calls, "--threads", "2"]);
            let settings =
                ["--ring-buffer-bytes", &ring.to_string(), "--drain-interval-ms", &drain_ms.to_string()];
            let mut agent = Agent::attach(
                target.pid(),
                &manifest("bench-target-uretprobe.toml"),
                free_address(),
                &settings,
            );
            start.start();
            let TargetResult { ns_per_call, calls: made, .. } = target_result(&mut target)?;
            let metrics = agent.metrics_accounting_for(made);
            stop(&mut agent.child, libc::SIGTERM);
            let lost = metrics.value("pool_obs_events_lost_total", &[]).unwrap_or(0.0);
            // ns_per_call is the run's elapsed time over all calls, of both threads.
            let rate = 1e9 / ns_per_call;
            if lost == 0.0 {
                best_lossless = best_lossless.max(rate);
            }
            table += &format!(
                "| {} KiB | {drain_ms} ms | {:.0}k | {lost:.0} ({:.2}%) |\n",
                ring >> 10,
                rate / 1000.0,
                100.0 * lost / made as f64
            );
        }
    }
    table += &format!(
        "\nHighest rate with zero lost events: **{:.0}k events/s** (target: zero lost at 500k: {}); \
         the target cannot call faster with the probes in place on this machine's two cores.\n\n",
        best_lossless / 1000.0,
        verdict(best_lossless >= 500_000.0)
    );
    Ok(table)
}

/// `/health` and `/metrics` latency with many models, and the agent's memory at 10,000.
pub(super) fn endpoints(scale: &Scale) -> Result<String> {
    let mut table = String::from(
        "### Endpoints\n\n| models | /health p50 | /health p99 | /health, gzip, p50 | /health, gzip, p99 | /health bytes (gzipped) | /metrics p50 | /metrics p99 | agent RSS |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut verdicts = String::new();
    for models in [10u64, 100, 1000, 10_000] {
        let start = StartFile::new("endpoints");
        let count = models.to_string();
        let mut target = bench_target(&start, &["--models", &count, "--calls", &count]);
        // Every model tracked: past the default --max-models the rest would share one series.
        let tracked = ["--max-models", &count];
        let mut agent =
            Agent::attach(target.pid(), &manifest("bench-target-uretprobe.toml"), free_address(), &tracked);
        start.start();
        let made = target_result(&mut target)?.calls;
        agent.metrics_after(made);
        // A /metrics with 10,000 models takes a fifth of a second: fewer rounds there.
        let requests = if models >= 10_000 { 50 } else { scale.requests_per_endpoint };
        // From connecting to the response's last byte; the response is checked after.
        let mut raw = Vec::with_capacity(64 << 20);
        let mut timings = |path: &str, headers: &[&str]| -> Result<(f64, f64, usize)> {
            let mut millis = Vec::new();
            for _ in 0..requests {
                let began = Instant::now();
                http::get_raw(agent.address, path, headers, &mut raw)?;
                millis.push(began.elapsed().as_secs_f64() * 1000.0);
                if !raw.starts_with(b"HTTP/1.1 200") && !raw.starts_with(b"HTTP/1.1 503") {
                    bail!("GET {path}: {}", String::from_utf8_lossy(&raw[..raw.len().min(200)]));
                }
                // The head only: scanning a 30 MB body between requests would leave the agent
                // cold caches for the next one.
                let gzipped = http::is_gzipped(&raw);
                if gzipped != headers.contains(&http::ACCEPT_GZIP) {
                    bail!("GET {path} with {headers:?}: gzipped {gzipped}");
                }
            }
            millis.sort_by(f64::total_cmp);
            let at =
                |quantile: f64| millis[((quantile * millis.len() as f64) as usize).min(millis.len() - 1)];
            Ok((at(0.5), at(0.99), raw.len()))
        };
        let (health_p50, health_p99, health_bytes) = timings("/health", &[])?;
        // A client that asks for gzip gets it from the next refresh on.
        http::get_accepting_gzip(agent.address, "/health")?;
        thread::sleep(Duration::from_millis(500));
        let (gzip_p50, gzip_p99, gzip_bytes) = timings("/health", &[http::ACCEPT_GZIP])?;
        let (metrics_p50, metrics_p99, _) = timings("/metrics", &[])?;
        let rss_mib = vm_rss_bytes(agent.child.id()) as f64 / (1024.0 * 1024.0);
        stop(&mut agent.child, libc::SIGTERM);
        if models == 1000 {
            verdicts += &format!(
                "\nAt 1,000 models: `/health` p99 < 1 ms: {}; `/metrics` p99 ≤ 5 ms: {} (timed from a \
                 client on the same machine, connection included).",
                verdict(health_p99 < 1.0),
                verdict(metrics_p99 <= 5.0)
            );
        }
        if models == 10_000 {
            verdicts += &format!(
                " At 10,000 models: `/health` p99 ≤ 1 ms: {} to a client that accepts gzip, {} to one \
                 that does not; `/metrics` p99 ≤ 50 ms: {}.\n\n",
                verdict(gzip_p99 <= 1.0),
                verdict(health_p99 <= 1.0),
                verdict(metrics_p99 <= 50.0)
            );
        }
        table += &format!(
            "| {models} | {health_p50:.2} ms | {health_p99:.2} ms | {gzip_p50:.2} ms | {gzip_p99:.2} ms | {} ({}) | {metrics_p50:.2} ms | {metrics_p99:.2} ms | {rss_mib:.0} MiB |\n",
            bytes(health_bytes),
            bytes(gzip_bytes),
        );
    }
    Ok(table + &verdicts)
}

/// A size for people: bytes, kB or MB.
fn bytes(count: usize) -> String {
    match count {
        0..1_000 => format!("{count} B"),
        1_000..1_000_000 => format!("{:.0} kB", count as f64 / 1e3),
        _ => format!("{:.1} MB", count as f64 / 1e6),
    }
}
