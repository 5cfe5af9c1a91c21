//! What the aggregator publishes: every metric, its name, help and labels, defined here and
//! nowhere else. The aggregator writes it; `export` renders it. Counter names get `_total`
//! appended by the OpenMetrics encoder. The per-model series, which are most of a scrape, are
//! encoded by hand and cached ([`models`]); the rest by prometheus-client.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use pool_obs_common::event::EventKind;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{
    anomaly::Anomaly,
    outcome::{ByStatus, Status},
};

mod cpu;
mod models;
mod view;
pub use cpu::{ModelCpu, ProcessCpu};
pub use models::{Bucketed, Latencies};
pub use view::{ModelView, Timeline, WindowSummary, WorkerCounts};

pub mod name {
    pub const REQUESTS: &str = "pool_requests";
    pub const REQUEST_DURATION: &str = "pool_request_duration_seconds";
    pub const REQUEST_QUEUE: &str = "pool_request_queue_seconds";
    pub const REQUEST_SERVICE: &str = "pool_request_service_seconds";
    pub const REQUEST_DURATION_QUANTILE: &str = "pool_request_duration_quantile_seconds";
    pub const REQUEST_POLLS: &str = "pool_request_polls";
    pub const REQUEST_BUSY: &str = "pool_request_busy_seconds";
    pub const REQUEST_CANCELLED: &str = "pool_request_cancelled_seconds";
    pub const REQUEST_CPU: &str = "pool_request_cpu_seconds";
    pub const MODEL_CPU: &str = "pool_model_cpu_seconds";
    pub const MODEL_HANDOFF_CPU: &str = "pool_model_handoff_cpu_seconds";
    pub const PROCESS_CPU: &str = "pool_process_cpu_seconds";
    pub const QUEUE_DEPTH: &str = "pool_queue_depth";
    pub const QUEUE_DEPTH_MAX: &str = "pool_queue_depth_max";
    pub const WORKERS: &str = "pool_workers";
    pub const WORKER_SPAWNS: &str = "pool_worker_spawns";
    pub const WORKER_EVICTIONS: &str = "pool_worker_evictions";
    pub const WORKER_CRASHES: &str = "pool_worker_crashes";
    pub const WORKER_MEMORY: &str = "pool_worker_memory_bytes";
    pub const PROCESS_MEMORY: &str = "pool_process_resident_memory_bytes";
    pub const PROCESS_MEMORY_PEAK: &str = "pool_process_resident_memory_peak_bytes";
    pub const SYSTEM_MEMORY: &str = "pool_system_memory_bytes";
    pub const EVENTS: &str = "pool_obs_events";
    pub const EVENTS_LOST: &str = "pool_obs_events_lost";
    pub const READ_FAILURES: &str = "pool_obs_read_failures";
    pub const ANOMALIES: &str = "pool_obs_anomalies";
    pub const TARGET_UP: &str = "pool_obs_target_up";
    pub const PROBES_ATTACHED: &str = "pool_obs_probes_attached";
    pub const PROCESSES_REFUSED: &str = "pool_obs_processes_refused";
    pub const SAMPLES_DROPPED: &str = "pool_obs_samples_dropped";
    pub const BUILD_INFO: &str = "pool_obs_build_info";
}

/// Request latency buckets, in seconds: 100 µs to 10 s.
const LATENCY_BUCKETS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProcessLabels {
    pid: u32,
}

/// A process, and where it runs: its container's id and its pod's UID, empty when it has none.
/// Only `pool_obs_target_up` carries these: join on `pid` for the rest.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProcessInfoLabels {
    pid: u32,
    container_id: String,
    pod_uid: String,
}

/// The quantiles `pool_request_duration_quantile_seconds` reports.
pub const QUANTILES: [&str; 3] = ["0.5", "0.95", "0.99"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AnomalyLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

pub struct Metrics {
    /// Every family but the per-model ones, encoded by prometheus-client.
    registry: Registry,
    /// The per-model families, encoded by hand (see [`models`]).
    models: models::ModelSeries,
    cpu: cpu::CpuFamilies,
    events: Family<EventLabels, Counter>,
    process_memory: Family<ProcessLabels, Gauge>,
    process_memory_peak: Family<ProcessLabels, Gauge>,
    pub system_memory: Gauge,
    pub events_lost: Counter,
    pub read_failures: Counter,
    pub anomalies: AnomalyCounters,
    target_up: Family<ProcessInfoLabels, Gauge>,
    pub probes_attached: Gauge,
    pub processes_refused: Counter,
    pub samples_dropped: Counter,
}

/// One process's own series.
#[derive(Clone)]
pub struct ProcessMetrics {
    pub memory: Gauge,
    pub memory_peak: Gauge,
    pub up: Gauge,
    info: ProcessInfoLabels,
}

/// One model's series, looked up once so that each event costs an atomic add.
#[derive(Clone)]
pub struct ModelMetrics {
    requests: ByStatus<Counter>,
    pub request_duration: Arc<Latencies>,
    pub request_queue: Arc<Latencies>,
    pub request_service: Arc<Latencies>,
    /// In the order of [`QUANTILES`].
    pub request_duration_quantiles: Arc<DurationSummary>,
    pub queue_depth: Gauge,
    pub queue_depth_max: Gauge,
    pub workers_busy: Gauge,
    pub workers_idle: Gauge,
    pub worker_spawns: Counter,
    pub worker_evictions: Counter,
    pub worker_crashes: Counter,
    pub worker_memory: Gauge,
    pub cpu: ModelCpu,
}

impl ModelMetrics {
    pub fn requests(&self, status: Status) -> &Counter {
        self.requests.get(status)
    }
}

/// One model's series of async requests, made when its first one ends: a pool without async
/// requests has none.
#[derive(Clone, Default)]
pub struct PollMetrics {
    pub polls: Counter,
    pub busy_seconds: Counter<f64, AtomicU64>,
    /// Time from the first poll to the drop, of the requests cancelled: apart from the
    /// latencies of those that finished.
    pub cancelled_seconds: Counter<f64, AtomicU64>,
}

impl Metrics {
    /// The metrics, with the request duration's buckets alone: the tests' metrics.
    #[cfg(test)]
    pub fn new() -> Self {
        Self::with_buckets(Bucketed::default())
    }

    /// The metrics, with the buckets of the latency histograms in `bucketed`.
    pub fn with_buckets(bucketed: Bucketed) -> Self {
        let mut registry = Registry::default();
        let metrics = Self {
            registry: Registry::default(),
            models: models::ModelSeries::new(bucketed),
            cpu: cpu::CpuFamilies::new(),
            events: Family::default(),
            process_memory: Family::default(),
            process_memory_peak: Family::default(),
            system_memory: Gauge::default(),
            events_lost: Counter::default(),
            read_failures: Counter::default(),
            anomalies: AnomalyCounters::default(),
            target_up: Family::default(),
            probes_attached: Gauge::default(),
            processes_refused: Counter::default(),
            samples_dropped: Counter::default(),
        };
        let build_info = Family::<VersionLabels, Gauge>::default();
        build_info.get_or_create(&VersionLabels { version: env!("CARGO_PKG_VERSION") }).set(1);
        metrics.cpu.register(&mut registry);
        registry.register(
            name::EVENTS,
            "Events received from the kernel programs, by kind",
            metrics.events.clone(),
        );
        registry.register(
            name::EVENTS_LOST,
            "Events the kernel could not write because the ring buffer was full",
            metrics.events_lost.clone(),
        );
        registry.register(
            name::READ_FAILURES,
            "Values the kernel programs could not read from the target (see --debug-probes)",
            metrics.read_failures.clone(),
        );
        registry.register(
            name::ANOMALIES,
            "Events that contradict what the agent knew of the pool, by kind (see docs/metrics.md)",
            metrics.anomalies.family.clone(),
        );
        registry.register(name::TARGET_UP, "1 while the process runs, by pid", metrics.target_up.clone());
        registry.register(
            name::PROBES_ATTACHED,
            "Uprobes attached, to every process followed",
            metrics.probes_attached.clone(),
        );
        registry.register(
            name::PROCESSES_REFUSED,
            "Processes of the executable not followed, past --max-processes",
            metrics.processes_refused.clone(),
        );
        registry.register(
            name::SAMPLES_DROPPED,
            "CPU samples missing from profiles: the ring buffer was half full, or a thread's registers unreadable",
            metrics.samples_dropped.clone(),
        );
        registry.register(
            name::PROCESS_MEMORY,
            "Resident memory of the pool process and its descendants, sampled from procfs",
            metrics.process_memory.clone(),
        );
        registry.register(
            name::PROCESS_MEMORY_PEAK,
            "Largest sampled resident memory of the pool process and its descendants",
            metrics.process_memory_peak.clone(),
        );
        registry.register(name::SYSTEM_MEMORY, "Memory of the whole machine", metrics.system_memory.clone());
        registry.register(name::BUILD_INFO, "pool-obs agent build", build_info);
        Self { registry, ..metrics }
    }

    /// The series of `model` of process `pid`, made now.
    pub fn for_model(&self, pid: u32, model: &str) -> ModelMetrics {
        self.models.create(pid, model)
    }

    /// The async-request series of `model` of process `pid`.
    pub fn polls_for(&self, pid: u32, model: &str) -> PollMetrics {
        self.models.polls(pid, model)
    }

    /// One process's CPU, serving requests and not.
    pub fn cpu_for_process(&self, pid: u32) -> ProcessCpu {
        self.cpu.for_process(pid)
    }

    pub fn event_counter(&self, kind: EventKind) -> Counter {
        self.events.get_or_create(&EventLabels { event: kind.name() }).clone()
    }

    /// One process's series of its own: its memory and whether it runs, with the container and
    /// pod it runs in (empty when none).
    pub fn for_process(&self, pid: u32, container_id: &str, pod_uid: &str) -> ProcessMetrics {
        let labels = ProcessLabels { pid };
        let info =
            ProcessInfoLabels { pid, container_id: container_id.to_string(), pod_uid: pod_uid.to_string() };
        ProcessMetrics {
            memory: self.process_memory.get_or_create(&labels).clone(),
            memory_peak: self.process_memory_peak.get_or_create(&labels).clone(),
            up: self.target_up.get_or_create(&info).clone(),
            info,
        }
    }

    /// Removes every series of `process`: it exited long enough ago that the last scrapes saw
    /// its final counts.
    pub fn forget_process(&self, process: &ProcessMetrics) {
        let pid = process.info.pid;
        let labels = ProcessLabels { pid };
        self.process_memory.remove(&labels);
        self.process_memory_peak.remove(&labels);
        self.target_up.remove(&process.info);
        self.cpu.forget_process(pid);
        self.models.forget_process(pid);
    }

    /// The exposition in `format`.
    pub fn encode(&self, format: Format) -> String {
        let mut open_metrics = String::new();
        encode(&mut open_metrics, &self.registry).expect("writing to a String cannot fail");
        let body = open_metrics.strip_suffix("# EOF\n").unwrap_or(&open_metrics);
        let mut text = match format {
            Format::OpenMetrics => body.to_string(),
            Format::PrometheusText => prometheus_text(body),
        };
        self.models.encode(&mut text, format);
        if format == Format::OpenMetrics {
            text.push_str("# EOF\n");
        }
        text
    }
}

/// The two text expositions: OpenMetrics for scrapers that ask for it, the Prometheus text
/// format (0.0.4) for everything else, as Prometheus's own client libraries do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    PrometheusText,
}

impl Format {
    pub fn from_accept(accept: &str) -> Self {
        if accept.contains("application/openmetrics-text") {
            Format::OpenMetrics
        } else {
            Format::PrometheusText
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::PrometheusText => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// OpenMetrics names a counter family without `_total` and its samples with it; the Prometheus
/// text format names both with it, and has no `# UNIT` lines.
fn prometheus_text(open_metrics: &str) -> String {
    let counters: Vec<&str> = open_metrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines().filter(|line| !line.starts_with("# UNIT ")) {
        let header = ["# HELP ", "# TYPE "].into_iter().find_map(|prefix| {
            let (family, tail) = line.strip_prefix(prefix)?.split_once(' ')?;
            counters.contains(&family).then(|| format!("{prefix}{family}_total {tail}"))
        });
        text.push_str(header.as_deref().unwrap_or(line));
        text.push('\n');
    }
    text
}

/// A label value as both text formats want it: backslash, double quote and newline escaped.
fn escape_label_value(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// `pool_obs_anomalies_total`, every kind present from the start so that zero is visible.
pub struct AnomalyCounters {
    family: Family<AnomalyLabels, Counter>,
    by_kind: [Counter; Anomaly::ALL.len()],
}

impl Default for AnomalyCounters {
    fn default() -> Self {
        let family = Family::<AnomalyLabels, Counter>::default();
        let by_kind =
            Anomaly::ALL.map(|kind| family.get_or_create(&AnomalyLabels { kind: kind.name() }).clone());
        Self { family, by_kind }
    }
}

impl AnomalyCounters {
    pub fn add(&self, kind: Anomaly, count: u64) {
        self.by_kind[kind as usize].inc_by(count);
    }

    /// The kinds counted at least once, with their counts.
    pub fn counted(&self) -> Vec<(Anomaly, u64)> {
        let counts = Anomaly::ALL.into_iter().zip(self.by_kind.iter().map(Counter::get));
        counts.filter(|(_, count)| *count > 0).collect()
    }
}

/// One model's `pool_request_duration_quantile_seconds`: quantiles over the window, set at each
/// refresh; sum and count of every request since attaching. Written by the aggregator alone.
#[derive(Default)]
pub struct DurationSummary {
    quantiles: [AtomicU64; 3],
    sum: AtomicU64,
    count: AtomicU64,
}

impl DurationSummary {
    pub fn observe(&self, seconds: f64) {
        let sum = f64::from_bits(self.sum.load(Ordering::Relaxed)) + seconds;
        self.sum.store(sum.to_bits(), Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Seconds, in the order of [`QUANTILES`].
    pub fn set_quantiles(&self, seconds: [f64; 3]) {
        for (slot, value) in self.quantiles.iter().zip(seconds) {
            slot.store(value.to_bits(), Ordering::Relaxed);
        }
    }

    /// The quantiles, the sum and the count.
    fn read(&self) -> ([f64; 3], f64, u64) {
        let load = |value: &AtomicU64| f64::from_bits(value.load(Ordering::Relaxed));
        (self.quantiles.each_ref().map(load), load(&self.sum), self.count.load(Ordering::Relaxed))
    }

    fn values(&self, values: &mut Vec<u64>) {
        values.extend(self.quantiles.iter().map(|value| value.load(Ordering::Relaxed)));
        values.extend([self.sum.load(Ordering::Relaxed), self.count.load(Ordering::Relaxed)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_names_counter_families_with_total() {
        let open_metrics = "# HELP pool_requests Requests.\n# TYPE pool_requests counter\n\
                            pool_requests_total{model=\"m\"} 3\n# TYPE up gauge\nup 1\n";
        assert_eq!(
            prometheus_text(open_metrics),
            "# HELP pool_requests_total Requests.\n# TYPE pool_requests_total counter\n\
             pool_requests_total{model=\"m\"} 3\n# TYPE up gauge\nup 1\n"
        );
    }

    #[test]
    fn the_docs_list_every_metric_and_no_other() {
        let metrics = Metrics::new();
        let model = metrics.for_model(7, "m");
        let process = metrics.for_process(7, "", "");
        process.up.set(1);
        model.request_duration_quantiles.observe(0.1);
        metrics.polls_for(7, "m").polls.inc();
        metrics.cpu_for_process(7).serving.inc();
        metrics.event_counter(EventKind::RequestEnded).inc();
        let text = metrics.encode(Format::OpenMetrics);
        let exported: std::collections::BTreeSet<String> = text
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|line| match line.split_once(' ')? {
                (name, "counter") => Some(format!("{name}_total")),
                (name, _) => Some(name.to_string()),
            })
            .collect();
        assert_eq!(crate::docs::first_column("| metric | labels | meaning |"), exported);
    }

    #[test]
    fn the_docs_list_every_anomaly_and_no_other() {
        let defined = Anomaly::ALL.iter().map(|anomaly| anomaly.name().to_string()).collect();
        assert_eq!(crate::docs::first_column("| kind | meaning |"), defined);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn summaries_render_in_both_formats() {
        let metrics = Metrics::new();
        let summary = metrics.for_model(7, "m\"x").request_duration_quantiles;
        summary.observe(0.5);
        summary.set_quantiles([0.1, 0.2, 0.3]);
        let text = metrics.encode(Format::OpenMetrics);
        assert!(text.ends_with("# EOF\n"));
        assert!(text.contains("# TYPE pool_request_duration_quantile_seconds summary\n"));
        assert!(text.contains(
            "pool_request_duration_quantile_seconds{model=\"m\\\"x\",pid=\"7\",quantile=\"0.99\"} 0.3\n"
        ));
        assert!(
            text.contains("pool_request_duration_quantile_seconds_count{model=\"m\\\"x\",pid=\"7\"} 1\n")
        );
        let text = metrics.encode(Format::PrometheusText);
        assert!(!text.contains("# EOF") && text.contains("# TYPE pool_requests_total counter"));
        // A process's series go once it is forgotten.
        metrics.forget_process(&metrics.for_process(7, "", ""));
        assert!(!metrics.encode(Format::OpenMetrics).contains("pid=\"7\""));
    }
}
