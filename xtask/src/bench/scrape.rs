//! `/metrics` as Prometheus scrapes it. Every model serves a request between two scrapes, as
//! every model of a busy pool does within a 15 s interval, so no model's text can be reused
//! from the last scrape; scrapes come at an interval, with Prometheus's own headers, and are
//! timed from connecting to the last byte. The agent's CPU for them is its CPU while scraped
//! less its CPU over as long a spell of the same load unscraped.

use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use pool_obs_tests::{
    http,
    processes::{Agent, StartFile, free_address, manifest, stop},
};

use super::{Scale, bench_target, cpu_seconds, verdict};

/// What Prometheus 2 and 3 send with every scrape.
const PROMETHEUS_HEADERS: [&str; 2] = [
    "Accept: application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
    http::ACCEPT_GZIP,
];

/// Between two scrapes here; the CPU is then stated for Prometheus's usual 15 s.
const INTERVAL: Duration = Duration::from_secs(1);
const USUAL_INTERVAL_SECS: f64 = 15.0;

pub(super) fn scrapes(scale: &Scale) -> Result<String> {
    let mut table = String::from(
        "### Scrapes as Prometheus makes them (every model served between two scrapes)\n\n| models | scrapes | p50 | p99 | bytes | gzipped | agent CPU per scrape | at one scrape every 15 s |\n|---|---|---|---|---|---|---|---|\n",
    );
    let mut verdicts = String::new();
    for (models, target_ms) in [(1000u64, 5.0), (10_000, 50.0)] {
        let scrapes = scale.paced_seconds.max(10) * 3;
        let count = models.to_string();
        // Each model once a second, through both spells and the warm-up.
        let calls = (models * (2 * scrapes + 5)).to_string();
        let start = StartFile::new("scrapes");
        let mut target = bench_target(&start, &["--models", &count, "--calls", &calls, "--rate", &count]);
        let tracked = ["--max-models", &count];
        let mut agent =
            Agent::attach(target.pid(), &manifest("bench-target-uretprobe.toml"), free_address(), &tracked);
        start.start();
        thread::sleep(Duration::from_secs(3));
        let pid = agent.child.id();
        let before = cpu_seconds(pid);
        let mut millis = Vec::new();
        let mut raw = Vec::with_capacity(64 << 20);
        let began = Instant::now();
        for scrape in 0..scrapes {
            let due = began + INTERVAL * scrape as u32;
            thread::sleep(due.saturating_duration_since(Instant::now()));
            let sent = Instant::now();
            http::get_raw(agent.address, "/metrics", &PROMETHEUS_HEADERS, &mut raw)?;
            millis.push(sent.elapsed().as_secs_f64() * 1000.0);
            if !raw.starts_with(b"HTTP/1.1 200") {
                bail!("GET /metrics: {}", String::from_utf8_lossy(&raw[..raw.len().min(200)]));
            }
        }
        let scraped = cpu_seconds(pid) - before;
        let spell = began.elapsed();
        thread::sleep(spell);
        let unscraped = cpu_seconds(pid) - before - scraped;
        let gzipped = http::is_gzipped(&raw);
        stop(&mut target.child, libc::SIGKILL);
        stop(&mut agent.child, libc::SIGTERM);
        millis.sort_by(f64::total_cmp);
        let at = |quantile: f64| millis[((quantile * millis.len() as f64) as usize).min(millis.len() - 1)];
        let per_scrape_ms = (scraped - unscraped).max(0.0) / scrapes as f64 * 1000.0;
        let share = per_scrape_ms / 1000.0 / USUAL_INTERVAL_SECS * 100.0;
        table += &format!(
            "| {models} | {scrapes} | {:.2} ms | {:.2} ms | {:.1} MB | {} | {per_scrape_ms:.1} ms | {share:.2}% of a core |\n",
            at(0.5),
            at(0.99),
            raw.len() as f64 / 1e6,
            if gzipped { "yes" } else { "no: /metrics is not compressed" },
        );
        verdicts +=
            &format!("At {models} models, p99 ≤ {target_ms} ms: {}. ", verdict(at(0.99) <= target_ms));
    }
    Ok(table + "\n" + verdicts.trim_end() + "\n\n")
}
