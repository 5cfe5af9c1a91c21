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
const PROMETHEUS_ACCEPT: &str = "Accept: application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";

/// Between two scrapes here; the CPU is then stated for Prometheus's usual 15 s.
const INTERVAL: Duration = Duration::from_secs(1);
const USUAL_INTERVAL_SECS: f64 = 15.0;

/// One spell of scrapes with `headers`: the times sorted, the last response's size, and the
/// agent's CPU seconds over the spell.
struct Spell {
    millis: Vec<f64>,
    bytes: usize,
    cpu_seconds: f64,
}

impl Spell {
    fn at(&self, quantile: f64) -> f64 {
        self.millis[((quantile * self.millis.len() as f64) as usize).min(self.millis.len() - 1)]
    }
}

fn spell(agent: &Agent, headers: &[&str], scrapes: u64) -> Result<Spell> {
    let pid = agent.child.id();
    let before = cpu_seconds(pid);
    let mut millis = Vec::new();
    let mut raw = Vec::with_capacity(64 << 20);
    let began = Instant::now();
    for scrape in 0..scrapes {
        thread::sleep((began + INTERVAL * scrape as u32).saturating_duration_since(Instant::now()));
        if headers.is_empty() {
            continue;
        }
        let sent = Instant::now();
        http::get_raw(agent.address, "/metrics", headers, &mut raw)?;
        millis.push(sent.elapsed().as_secs_f64() * 1000.0);
        if !raw.starts_with(b"HTTP/1.1 200") {
            bail!("GET /metrics: {}", String::from_utf8_lossy(&raw[..raw.len().min(200)]));
        }
        if http::is_gzipped(&raw) != headers.contains(&http::ACCEPT_GZIP) {
            bail!("GET /metrics with {headers:?}: gzipped {}", http::is_gzipped(&raw));
        }
    }
    thread::sleep((began + INTERVAL * scrapes as u32).saturating_duration_since(Instant::now()));
    millis.sort_by(f64::total_cmp);
    Ok(Spell { millis, bytes: raw.len(), cpu_seconds: cpu_seconds(pid) - before })
}

pub(super) fn scrapes(scale: &Scale) -> Result<String> {
    let mut table = String::from(
        "### Scrapes as Prometheus makes them (every model served between two scrapes)\n\n| models | scrapes | p50 | p99 | bytes | gzipped: p50 | p99 | bytes | agent CPU per gzipped scrape | at one every 15 s |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut verdicts = String::new();
    for (models, target_ms) in [(1000u64, 5.0), (10_000, 50.0)] {
        let scrapes = scale.paced_seconds.max(10) * 3;
        let count = models.to_string();
        // Each model once a second, through the three spells and the warm-up.
        let calls = (models * (3 * scrapes + 5)).to_string();
        let start = StartFile::new("scrapes");
        let mut target = bench_target(&start, &["--models", &count, "--calls", &calls, "--rate", &count]);
        let tracked = ["--max-models", &count];
        let mut agent =
            Agent::attach(target.pid(), &manifest("bench-target-uretprobe.toml"), free_address(), &tracked);
        start.start();
        thread::sleep(Duration::from_secs(3));
        let plain = spell(&agent, &[PROMETHEUS_ACCEPT], scrapes)?;
        let gzipped = spell(&agent, &[PROMETHEUS_ACCEPT, http::ACCEPT_GZIP], scrapes)?;
        let unscraped = spell(&agent, &[], scrapes)?;
        stop(&mut target.child, libc::SIGKILL);
        stop(&mut agent.child, libc::SIGTERM);
        let per_scrape_ms = (gzipped.cpu_seconds - unscraped.cpu_seconds).max(0.0) / scrapes as f64 * 1000.0;
        let share = per_scrape_ms / 1000.0 / USUAL_INTERVAL_SECS * 100.0;
        table += &format!(
            "| {models} | {scrapes} + {scrapes} | {:.2} ms | {:.2} ms | {:.1} MB | {:.2} ms | {:.2} ms | {:.2} MB | {per_scrape_ms:.1} ms | {share:.2}% of a core |\n",
            plain.at(0.5),
            plain.at(0.99),
            plain.bytes as f64 / 1e6,
            gzipped.at(0.5),
            gzipped.at(0.99),
            gzipped.bytes as f64 / 1e6,
        );
        verdicts += &format!(
            "At {models} models, p99 ≤ {target_ms} ms: {} plain, {} gzipped. ",
            verdict(plain.at(0.99) <= target_ms),
            verdict(gzipped.at(0.99) <= target_ms)
        );
    }
    Ok(table + "\n" + verdicts.trim_end() + "\n\n")
}
