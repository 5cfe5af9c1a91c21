//! The per-model series, which are most of an exposition: each model's values are atomics the
//! aggregator writes, and its text is encoded by hand and kept while its values stay. A
//! scrape then re-encodes only the models that changed since the last one, and copies the
//! rest: at 1,000 models most are idle between two scrapes.

use std::{
    fmt::Write,
    sync::{
        Arc, Mutex, OnceLock, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use prometheus_client::metrics::{counter::Counter, gauge::Gauge};

use super::{
    DurationSummary, Format, LATENCY_BUCKETS, ModelCpu, ModelMetrics, PollMetrics, QUANTILES, cpu::HandedOff,
    escape_label_value, name,
};
use crate::outcome::{ByStatus, Status};

/// A latency histogram with the fixed [`LATENCY_BUCKETS`]: written by the aggregator alone.
#[derive(Default)]
pub struct Latencies {
    /// Observations at or below each bound and above the one before; the last is above all.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// Seconds, as `f64` bits.
    sum: AtomicU64,
}

impl Latencies {
    pub fn observe(&self, seconds: f64) {
        let bucket =
            LATENCY_BUCKETS.iter().position(|bound| seconds <= *bound).unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let sum = f64::from_bits(self.sum.load(Ordering::Relaxed)) + seconds;
        self.sum.store(sum.to_bits(), Ordering::Relaxed);
    }

    fn values(&self, values: &mut Vec<u64>) {
        values.extend(self.buckets.iter().map(|bucket| bucket.load(Ordering::Relaxed)));
        values.push(self.sum.load(Ordering::Relaxed));
    }
}

/// Which latency histograms are written with their buckets. The others are written with their
/// `+Inf` bucket, sum and count alone: a dashboard's means and rates need no more, and buckets
/// are most of a scrape's bytes (16 lines a model each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bucketed {
    pub duration: bool,
    pub queue: bool,
    pub service: bool,
    pub cpu: bool,
}

impl Default for Bucketed {
    /// The request duration's, whose p99 a dashboard plots.
    fn default() -> Self {
        Self { duration: true, queue: false, service: false, cpu: false }
    }
}

/// What a family is, for its header.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
    Summary,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
            Kind::Summary => "summary",
        }
    }
}

/// The per-model families, in the order they are written.
const FAMILIES: [(&str, Kind, &str); 18] = [
    (name::REQUESTS, Kind::Counter, "Requests the pool finished, by outcome"),
    (name::REQUEST_DURATION, Kind::Histogram, "Request time from submission to end"),
    (name::REQUEST_QUEUE, Kind::Histogram, "Request time from submission to a worker starting it"),
    (name::REQUEST_SERVICE, Kind::Histogram, "Request time from a worker starting it to its end"),
    (name::REQUEST_POLLS, Kind::Counter, "Polls of the futures of async requests that ended"),
    (
        name::REQUEST_BUSY,
        Kind::Counter,
        "Time inside the polls of async requests that ended: busy on the executor, not waiting",
    ),
    (
        name::REQUEST_CANCELLED,
        Kind::Counter,
        "Time async requests ran from their first poll until they were cancelled, apart from the durations \
         of those that finished",
    ),
    (
        name::MODEL_CPU,
        Kind::Counter,
        "CPU time of the pool's threads while they serve a request of the model, exact to the context switch",
    ),
    (
        name::MODEL_HANDOFF_CPU,
        Kind::Counter,
        "Of the model's CPU time, the time of work its requests handed to other threads, by the runtime it went \
         through",
    ),
    (name::REQUEST_CPU, Kind::Histogram, "CPU time of each request, on the threads that served it"),
    (
        name::REQUEST_DURATION_QUANTILE,
        Kind::Summary,
        "Request duration quantiles over the sliding window (HDR histogram, within 1%), with the sum and count \
         of every request since attaching",
    ),
    (name::QUEUE_DEPTH, Kind::Gauge, "Requests submitted and not yet started"),
    (name::QUEUE_DEPTH_MAX, Kind::Gauge, "Largest queue depth over the sliding window"),
    (name::WORKERS, Kind::Gauge, "Live workers, busy or idle"),
    (name::WORKER_SPAWNS, Kind::Counter, "Workers spawned"),
    (name::WORKER_EVICTIONS, Kind::Counter, "Workers evicted"),
    (name::WORKER_CRASHES, Kind::Counter, "Workers that crashed"),
    (name::WORKER_MEMORY, Kind::Gauge, "Memory declared at spawn by the live workers"),
];

/// One model of one process: its series, and their text as last encoded.
struct Entry {
    pid: u32,
    model: String,
    /// `model="…",pid="…"`, escaped once.
    labels: String,
    metrics: ModelMetrics,
    /// Made when the model's first async request ends.
    polls: OnceLock<PollMetrics>,
    cache: Mutex<Cache>,
}

/// A model's text by family, and the values it was encoded from.
#[derive(Default)]
struct Cache {
    values: Vec<u64>,
    families: Vec<String>,
}

/// Every model's series.
pub struct ModelSeries {
    entries: RwLock<Vec<Arc<Entry>>>,
    bucketed: Bucketed,
}

impl ModelSeries {
    pub fn new(bucketed: Bucketed) -> Self {
        Self { entries: RwLock::default(), bucketed }
    }

    /// The series of `model` of process `pid`, made now.
    pub fn create(&self, pid: u32, model: &str) -> ModelMetrics {
        let metrics = ModelMetrics {
            requests: ByStatus::from_fn(|_| Counter::default()),
            request_duration: Arc::default(),
            request_queue: Arc::default(),
            request_service: Arc::default(),
            request_duration_quantiles: Arc::default(),
            queue_depth: Gauge::default(),
            queue_depth_max: Gauge::default(),
            workers_busy: Gauge::default(),
            workers_idle: Gauge::default(),
            worker_spawns: Counter::default(),
            worker_evictions: Counter::default(),
            worker_crashes: Counter::default(),
            worker_memory: Gauge::default(),
            cpu: ModelCpu {
                seconds: Counter::default(),
                per_request: Arc::default(),
                handed_off: HandedOff::default(),
            },
        };
        let labels = format!("model=\"{}\",pid=\"{pid}\"", escape_label_value(model));
        let entry = Entry {
            pid,
            model: model.to_string(),
            labels,
            metrics: metrics.clone(),
            polls: OnceLock::new(),
            cache: Mutex::default(),
        };
        self.write().push(Arc::new(entry));
        metrics
    }

    /// The async-request series of `model` of process `pid`, made at the first call.
    pub fn polls(&self, pid: u32, model: &str) -> PollMetrics {
        let entries = self.entries.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = entries.iter().rev().find(|entry| entry.pid == pid && entry.model == model);
        match entry {
            Some(entry) => entry.polls.get_or_init(PollMetrics::default).clone(),
            // Not a model of ours: its series go nowhere.
            None => PollMetrics::default(),
        }
    }

    /// Removes every model of process `pid`.
    pub fn forget_process(&self, pid: u32) {
        self.write().retain(|entry| entry.pid != pid);
    }

    /// Appends every per-model family to `text`.
    pub fn encode(&self, text: &mut String, format: Format) {
        let entries: Vec<Arc<Entry>> =
            self.entries.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        // Each cache stays locked until its text is copied: two scrapes lock them in one order.
        let caches: Vec<_> = entries.iter().map(|entry| entry.fresh_cache(self.bucketed)).collect();
        let bytes: usize = caches.iter().flat_map(|cache| &cache.families).map(String::len).sum();
        text.reserve(bytes + FAMILIES.len() * 200);
        for (index, (name, kind, help)) in FAMILIES.iter().enumerate() {
            let counter = *kind == Kind::Counter && format == Format::PrometheusText;
            let shown = if counter { format!("{name}_total") } else { name.to_string() };
            let _ = writeln!(text, "# HELP {shown} {help}.\n# TYPE {shown} {}", kind.as_str());
            for cache in &caches {
                text.push_str(&cache.families[index]);
            }
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Arc<Entry>>> {
        self.entries.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Entry {
    /// Its cache, encoded again if a value changed since.
    fn fresh_cache(&self, bucketed: Bucketed) -> std::sync::MutexGuard<'_, Cache> {
        let mut cache = self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut values = Vec::with_capacity(cache.values.len());
        self.values(&mut values);
        if cache.families.is_empty() || values != cache.values {
            cache.families = self.encode(bucketed);
            cache.values = values;
        }
        cache
    }

    fn values(&self, values: &mut Vec<u64>) {
        let metrics = &self.metrics;
        values.extend(Status::ALL.map(|status| metrics.requests.get(status).get()));
        for latencies in [&metrics.request_duration, &metrics.request_queue, &metrics.request_service] {
            latencies.values(values);
        }
        match self.polls.get() {
            Some(polls) => values.extend([
                1,
                polls.polls.get(),
                polls.busy_seconds.get().to_bits(),
                polls.cancelled_seconds.get().to_bits(),
            ]),
            None => values.push(0),
        }
        values.push(metrics.cpu.seconds.get().to_bits());
        values.extend(HandedOff::VIAS.map(|via| metrics.cpu.handed_off.via(via).get().to_bits()));
        metrics.cpu.per_request.values(values);
        metrics.request_duration_quantiles.values(values);
        let gauges = [
            &metrics.queue_depth,
            &metrics.queue_depth_max,
            &metrics.workers_busy,
            &metrics.workers_idle,
            &metrics.worker_memory,
        ];
        values.extend(gauges.map(|gauge| gauge.get() as u64));
        values.extend(
            [&metrics.worker_spawns, &metrics.worker_evictions, &metrics.worker_crashes].map(Counter::get),
        );
    }

    /// Its text, one string per family of [`FAMILIES`].
    fn encode(&self, bucketed: Bucketed) -> Vec<String> {
        let (labels, metrics) = (&self.labels, &self.metrics);
        let counter = |name: &str, value: u64| format!("{name}_total{{{labels}}} {value}\n");
        let seconds = |name: &str, value: f64| format!("{name}_total{{{labels}}} {value}\n");
        let gauge = |name: &str, gauge: &Gauge| format!("{name}{{{labels}}} {}\n", gauge.get());
        let mut requests = String::new();
        for status in Status::ALL {
            let count = metrics.requests.get(status).get();
            let _ = writeln!(
                requests,
                "{}_total{{{labels},status=\"{}\"}} {count}",
                name::REQUESTS,
                status.as_str()
            );
        }
        let (polls, busy, cancelled) = match self.polls.get() {
            Some(polls) => (
                counter(name::REQUEST_POLLS, polls.polls.get()),
                seconds(name::REQUEST_BUSY, polls.busy_seconds.get()),
                seconds(name::REQUEST_CANCELLED, polls.cancelled_seconds.get()),
            ),
            None => (String::new(), String::new(), String::new()),
        };
        let workers = format!(
            "{name}{{{labels},state=\"busy\"}} {}\n{name}{{{labels},state=\"idle\"}} {}\n",
            metrics.workers_busy.get(),
            metrics.workers_idle.get(),
            name = name::WORKERS
        );
        vec![
            requests,
            histogram(name::REQUEST_DURATION, labels, &metrics.request_duration, bucketed.duration),
            histogram(name::REQUEST_QUEUE, labels, &metrics.request_queue, bucketed.queue),
            histogram(name::REQUEST_SERVICE, labels, &metrics.request_service, bucketed.service),
            polls,
            busy,
            cancelled,
            seconds(name::MODEL_CPU, metrics.cpu.seconds.get()),
            handed_off(labels, &metrics.cpu.handed_off),
            histogram(name::REQUEST_CPU, labels, &metrics.cpu.per_request, bucketed.cpu),
            summary(labels, &metrics.request_duration_quantiles),
            gauge(name::QUEUE_DEPTH, &metrics.queue_depth),
            gauge(name::QUEUE_DEPTH_MAX, &metrics.queue_depth_max),
            workers,
            counter(name::WORKER_SPAWNS, metrics.worker_spawns.get()),
            counter(name::WORKER_EVICTIONS, metrics.worker_evictions.get()),
            counter(name::WORKER_CRASHES, metrics.worker_crashes.get()),
            gauge(name::WORKER_MEMORY, &metrics.worker_memory),
        ]
    }
}

/// A line for each runtime that work was handed off through: none for a model that hands none off.
fn handed_off(labels: &str, handed_off: &HandedOff) -> String {
    let mut text = String::new();
    for via in HandedOff::VIAS {
        let seconds = handed_off.via(via).get();
        if seconds > 0.0 {
            let _ = writeln!(text, "{}_total{{{labels},via=\"{via:?}\"}} {seconds}", name::MODEL_HANDOFF_CPU);
        }
    }
    text
}

/// A histogram's lines: every bucket if `bucketed`, else the `+Inf` one alone.
fn histogram(name: &str, labels: &str, latencies: &Latencies, bucketed: bool) -> String {
    let mut text = String::with_capacity(if bucketed { 1200 } else { 200 });
    let mut cumulative = 0;
    for (index, bucket) in latencies.buckets.iter().enumerate() {
        cumulative += bucket.load(Ordering::Relaxed);
        let _ = match LATENCY_BUCKETS.get(index) {
            Some(bound) if bucketed => {
                writeln!(text, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}")
            }
            Some(_) => Ok(()),
            None => writeln!(text, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}"),
        };
    }
    let sum = f64::from_bits(latencies.sum.load(Ordering::Relaxed));
    let _ = writeln!(text, "{name}_sum{{{labels}}} {sum}\n{name}_count{{{labels}}} {cumulative}");
    text
}

fn summary(labels: &str, summary: &DurationSummary) -> String {
    let name = name::REQUEST_DURATION_QUANTILE;
    let mut text = String::new();
    let (quantiles, sum, count) = summary.read();
    for (quantile, seconds) in QUANTILES.iter().zip(quantiles) {
        let _ = writeln!(text, "{name}{{{labels},quantile=\"{quantile}\"}} {seconds}");
    }
    let _ = writeln!(text, "{name}_sum{{{labels}}} {sum}\n{name}_count{{{labels}}} {count}");
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::Metrics;

    #[test]
    fn a_models_text_follows_its_values_and_is_reused_while_they_stay() {
        let metrics = Metrics::new();
        let (busy, idle) = (metrics.for_model(7, "busy"), metrics.for_model(7, "idle"));
        idle.worker_spawns.inc();
        busy.request_duration.observe(0.003);
        let first = metrics.encode(Format::OpenMetrics);
        assert!(
            first
                .contains("pool_request_duration_seconds_bucket{model=\"busy\",pid=\"7\",le=\"0.0025\"} 0\n")
        );
        assert!(
            first.contains("pool_request_duration_seconds_bucket{model=\"busy\",pid=\"7\",le=\"0.005\"} 1\n")
        );
        assert!(
            first.contains("pool_request_duration_seconds_bucket{model=\"busy\",pid=\"7\",le=\"+Inf\"} 1\n")
        );
        assert!(first.contains("pool_request_duration_seconds_sum{model=\"busy\",pid=\"7\"} 0.003\n"));
        assert_eq!(metrics.encode(Format::OpenMetrics), first, "nothing changed, nothing differs");
        busy.requests(Status::Timeout).inc();
        let second = metrics.encode(Format::OpenMetrics);
        assert!(second.contains("pool_requests_total{model=\"busy\",pid=\"7\",status=\"timeout\"} 1\n"));
        assert!(second.contains("pool_worker_spawns_total{model=\"idle\",pid=\"7\"} 1\n"));
        // A model's async series appear with its first async request.
        assert!(!second.contains("pool_request_polls_total{"));
        metrics.polls_for(7, "idle").polls.inc_by(3);
        assert!(
            metrics
                .encode(Format::OpenMetrics)
                .contains("pool_request_polls_total{model=\"idle\",pid=\"7\"} 3\n")
        );
    }

    #[test]
    fn a_histogram_without_its_buckets_keeps_its_inf_bucket_sum_and_count() {
        let metrics = Metrics::with_buckets(Bucketed { duration: false, ..Bucketed::default() });
        metrics.for_model(7, "m").request_duration.observe(0.003);
        let text = metrics.encode(Format::OpenMetrics);
        let lines: Vec<&str> =
            text.lines().filter(|line| line.starts_with("pool_request_duration_seconds")).collect();
        assert_eq!(
            lines,
            [
                "pool_request_duration_seconds_bucket{model=\"m\",pid=\"7\",le=\"+Inf\"} 1",
                "pool_request_duration_seconds_sum{model=\"m\",pid=\"7\"} 0.003",
                "pool_request_duration_seconds_count{model=\"m\",pid=\"7\"} 1",
            ]
        );
    }

    #[test]
    fn each_family_has_one_header_in_either_format() {
        let metrics = Metrics::new();
        metrics.for_model(7, "a");
        metrics.for_model(8, "b");
        let open_metrics = metrics.encode(Format::OpenMetrics);
        assert_eq!(open_metrics.matches("# TYPE pool_requests counter\n").count(), 1);
        let text = metrics.encode(Format::PrometheusText);
        assert_eq!(text.matches("# TYPE pool_requests_total counter\n").count(), 1);
        assert_eq!(text.matches("# TYPE pool_request_duration_seconds histogram\n").count(), 1);
        assert!(text.contains("pool_requests_total{model=\"b\",pid=\"8\",status=\"ok\"} 0\n"));
    }
}
