//! pool-obs in the world its users run: scraped by a real Prometheus, drawn by a dashboard
//! whose every metric is exported, deployed from files that the tools reading them accept.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use pool_obs_tests::{
    dashboard, http,
    processes::{Agent, Pool, StartFile, binary, free_address, manifest, mixed_load, stop},
};

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(path)
}

/// A Prometheus server on loopback, scraping the agent every second, stopped when dropped.
struct Prometheus {
    child: Child,
    address: SocketAddr,
    _data: TempDir,
}

impl Prometheus {
    fn scraping(agent: SocketAddr) -> Self {
        let data = TempDir::new("prometheus-data");
        let config = data.0.join("prometheus.yml");
        let text = format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: pool-obs\n    \
             static_configs:\n      - targets: [\"{agent}\"]\n"
        );
        std::fs::write(&config, text).expect("write the Prometheus config");
        let address = free_address();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.0.join("tsdb").display()))
            .arg(format!("--web.listen-address={address}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus (cargo xtask setup installs it)");
        let prometheus = Self { child, address, _data: data };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !http::get(address, "/-/ready").is_ok_and(|response| response.status == 200) {
            assert!(Instant::now() < deadline, "Prometheus did not become ready");
            thread::sleep(Duration::from_millis(100));
        }
        prometheus
    }

    /// The value of an instant query whose result is one sample.
    fn query(&self, promql: &str) -> Option<f64> {
        let response =
            http::get(self.address, &format!("/api/v1/query?query={}", percent_encode(promql))).ok()?;
        let body: serde_json::Value = serde_json::from_str(&response.body).ok()?;
        let results = body["data"]["result"].as_array()?;
        let [result] = results.as_slice() else { return None };
        result["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        stop(&mut self.child, libc::SIGTERM);
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("pool-obs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create a temporary directory");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (byte as char).to_string(),
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

#[test]
fn a_real_prometheus_scrapes_the_agent_and_agrees_with_the_pool() {
    let start = StartFile::new("prometheus");
    let mut pool = Pool::start(&[mixed_load(8000, 13), start.arg().to_vec()].concat());
    let agent = Agent::attach(pool.pid(), &manifest("demo-pool.toml"), free_address(), &[]);
    let prometheus = Prometheus::scraping(agent.address);
    start.start();
    let summary = pool.summary();
    pool.wait_for_exit();
    let metrics = agent.metrics_after(8000);

    // Wait for a scrape of the settled counts.
    let deadline = Instant::now() + Duration::from_secs(20);
    while prometheus.query("sum(pool_requests_total)") != Some(8000.0) {
        assert!(Instant::now() < deadline, "Prometheus never saw all 8000 requests");
        thread::sleep(Duration::from_millis(250));
    }
    for (model, truth) in &summary.models {
        for (status, count) in [
            ("ok", truth.requests.ok),
            ("failed", truth.requests.failed),
            ("timeout", truth.requests.timeout),
        ] {
            let promql = format!("pool_requests_total{{model=\"{model}\",status=\"{status}\"}}");
            assert_eq!(prometheus.query(&promql), Some(count as f64), "{promql}");
        }
        let spawns = prometheus.query(&format!("pool_worker_spawns_total{{model=\"{model}\"}}"));
        assert_eq!(spawns, Some(truth.spawns as f64), "{model} spawns");

        // Prometheus interpolates within buckets (bounds step by 2 to 2.5): near the agent's own
        // p99 means within that factor.
        let promql = format!(
            "histogram_quantile(0.99, sum by (le) (pool_request_duration_seconds_bucket{{model=\"{model}\"}}))"
        );
        let from_buckets = prometheus.query(&promql).expect("a p99 from the histogram");
        let agent_p99 = metrics
            .value("pool_request_duration_quantile_seconds", &[("model", model), ("quantile", "0.99")])
            .expect("the agent's p99");
        let ratio = from_buckets / agent_p99;
        assert!(
            (0.4..=2.5).contains(&ratio),
            "{model}: histogram_quantile {from_buckets} vs agent {agent_p99}"
        );
    }

    // Every metric the dashboard draws is one the agent exports (those of async requests are
    // checked on an async service, in async_requests.rs).
    let exported: BTreeSet<String> = metrics.samples.iter().map(|sample| sample.name.clone()).collect();
    let referenced = dashboard::referenced_metrics();
    assert!(referenced.len() >= 15, "{referenced:?}");
    let missing: Vec<&String> = referenced
        .iter()
        .filter(|name| !exported.contains(*name) && !dashboard::ASYNC_ONLY.contains(&name.as_str()))
        .collect();
    assert!(missing.is_empty(), "the dashboard draws metrics the agent does not export: {missing:?}");
}

#[test]
fn deploy_files_pass_the_tools_that_read_them() {
    let checked = Command::new("promtool")
        .args(["check", "config"])
        .arg(deploy("prometheus/prometheus.yml"))
        .output()
        .expect("run promtool");
    assert!(checked.status.success(), "{}", String::from_utf8_lossy(&checked.stdout));

    let dashboard = std::fs::read_to_string(deploy("grafana/pool-obs.json")).expect("the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "pool-obs");

    let daemonset = std::fs::read_to_string(deploy("kubernetes/daemonset.yaml")).expect("the DaemonSet");
    let documents = yaml_rust2::YamlLoader::load_from_str(&daemonset).expect("the DaemonSet is YAML");
    let kinds: Vec<&str> = documents.iter().filter_map(|document| document["kind"].as_str()).collect();
    assert_eq!(kinds, ["ConfigMap", "DaemonSet"]);
    let pod = &documents[1]["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"].as_bool(), Some(true));
    let agent_args: Vec<&str> =
        pod["containers"][0]["args"].as_vec().expect("args").iter().filter_map(|arg| arg.as_str()).collect();
    assert!(agent_args.contains(&"--exe") && !daemonset.contains("pgrep"), "{agent_args:?}");
    let added: Vec<&str> = pod["containers"][0]["securityContext"]["capabilities"]["add"]
        .as_vec()
        .expect("added capabilities")
        .iter()
        .filter_map(|capability| capability.as_str())
        .collect();
    assert_eq!(added, ["SYS_ADMIN", "BPF", "PERFMON", "SYS_PTRACE"]);
    let mounts: Vec<&str> = pod["containers"][0]["volumeMounts"]
        .as_vec()
        .expect("mounts")
        .iter()
        .filter_map(|mount| mount["mountPath"].as_str())
        .collect();
    for needed in ["/sys/kernel/btf", "/sys/fs/bpf", "/sys/kernel/tracing"] {
        assert!(mounts.contains(&needed), "{needed} is mounted: {mounts:?}");
    }

    // systemd-analyze verifies an instance of the template beside a stand-in for the pool's unit.
    assert!(
        std::fs::read_to_string(deploy("systemd/pool-obs-agent@.service"))
            .expect("the unit")
            .contains("--exe"),
        "the unit follows the pool's executable, not a PID"
    );
    let units = TempDir::new("systemd");
    std::fs::write(
        units.0.join("demo-pool.service"),
        "[Unit]\nDescription=stand-in pool\n[Service]\nExecStart=/bin/true\n",
    )
    .expect("write the stand-in unit");
    // The agent where this build has it, rather than where the unit installs it.
    let unit = std::fs::read_to_string(deploy("systemd/pool-obs-agent@.service")).expect("the agent unit");
    let agent = binary("pool-obs-agent");
    let unit = unit.replace("/usr/local/bin/pool-obs-agent", agent.to_str().expect("a UTF-8 path"));
    std::fs::write(units.0.join("pool-obs-agent@demo-pool.service"), unit).expect("write the agent unit");
    let verified = Command::new("systemd-analyze")
        .arg("verify")
        .arg(units.0.join("demo-pool.service"))
        .arg(units.0.join("pool-obs-agent@demo-pool.service"))
        .current_dir(&units.0)
        .output()
        .expect("run systemd-analyze");
    let said =
        format!("{}{}", String::from_utf8_lossy(&verified.stdout), String::from_utf8_lossy(&verified.stderr));
    assert!(verified.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
}
