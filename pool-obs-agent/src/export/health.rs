//! The `/health` report, rendered from the aggregator's state at each refresh so that serving
//! it only copies it.

mod probes;

pub use probes::{ProbeTotals, ProbeWindow};

use std::{collections::BTreeMap, time::SystemTime};

use axum::http::StatusCode;
use serde::Serialize;

use super::http::RenderedHealth;
use crate::{
    anomaly::Anomaly, clock::rfc3339, memory::MemorySample, outcome::ByStatus, publish::ModelView,
    target::Target,
};

/// Refreshes in a row with every worker busy before a model counts as saturated.
pub const SATURATED_REFRESHES: u32 = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Healthy,
    Degraded,
    Unhealthy,
}

/// Limits past which a model is degraded; `None` checks nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct Thresholds {
    pub max_queue_depth: Option<u64>,
    pub max_error_rate: Option<f64>,
    pub max_p99_ms: Option<f64>,
}

#[derive(Serialize)]
struct Report<'a> {
    status: Status,
    /// Why the agent's own view is not to be trusted (probes that read the wrong place), or why
    /// nothing is followed.
    reasons: Vec<String>,
    timestamp: String,
    observing_since: String,
    /// What the agent follows: a PID, or every process of an executable.
    following: &'a str,
    events_lost: u64,
    /// Events that contradicted what the agent knew, by kind (`pool_obs_anomalies_total`).
    anomalies: BTreeMap<&'static str, u64>,
    /// What this kernel (or its settings) keeps the agent from doing, one line each.
    features_off: &'a [String],
    /// With one process followed, its report is also here, at the top.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    only: Option<OnlyProcess<'a>>,
    processes: &'a [ProcessReport<'a>],
}

/// A process, with each model's verdict: its numbers are in the top-level `models` (with one
/// process) and in `/metrics`, not twice here.
#[derive(Serialize)]
struct ProcessReport<'a> {
    status: Status,
    target: TargetReport<'a>,
    memory: MemoryReport,
    models: Vec<ModelStatus<'a>>,
}

/// A model's verdict alone.
#[derive(Serialize)]
struct ModelStatus<'a> {
    registry_key: &'a str,
    status: Status,
    reasons: &'a [String],
}

/// The one process followed, at the top of the report with each model's numbers, as before
/// there could be several.
#[derive(Serialize)]
struct OnlyProcess<'a> {
    target: &'a TargetReport<'a>,
    memory: &'a MemoryReport,
    models: &'a [ModelReport<'a>],
}

#[derive(Serialize)]
struct TargetReport<'a> {
    pid: u32,
    exe: &'a str,
    up: bool,
}

#[derive(Serialize)]
struct MemoryReport {
    used_mb: f64,
    total_mb: f64,
    percentage: f64,
    peak_mb: f64,
}

#[derive(Serialize)]
struct ModelReport<'a> {
    registry_key: &'a str,
    status: Status,
    /// Why the model is not healthy.
    reasons: Vec<String>,
    workers: Workers,
    queue_depth: u64,
    avg_latency_ms: f64,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    /// Failed and timed-out requests over all requests in the window.
    error_rate: f64,
    requests: ByStatus<u64>,
}

#[derive(Serialize)]
struct Workers {
    total: u64,
    busy: u64,
    idle: u64,
    crashed: u64,
}

/// What the model's state says of its health, and why.
fn assess(model: &ModelView<'_>, thresholds: &Thresholds) -> (Status, Vec<String>) {
    // A registry that unloads idle models on purpose leaves them without workers, and loads
    // them again on demand: only requests waiting with nothing to serve them are a fault.
    if model.workers_seen && model.workers.total == 0 && model.queued > 0 {
        return (Status::Unhealthy, vec![format!("no workers, {} queued", model.queued)]);
    }
    let recent = &model.recent;
    let reasons: Vec<String> = [
        (model.saturated_refreshes >= SATURATED_REFRESHES).then(|| "all workers busy".to_string()),
        thresholds
            .max_queue_depth
            .filter(|limit| model.queued > *limit)
            .map(|limit| format!("queue depth {} over {limit}", model.queued)),
        thresholds
            .max_error_rate
            .filter(|limit| recent.error_rate > *limit)
            .map(|limit| format!("error rate {:.3} over {limit}", recent.error_rate)),
        thresholds
            .max_p99_ms
            .filter(|limit| recent.p99_ms > *limit)
            .map(|limit| format!("p99 {:.1} ms over {limit} ms", recent.p99_ms)),
    ]
    .into_iter()
    .flatten()
    .collect();
    let status = if reasons.is_empty() { Status::Healthy } else { Status::Degraded };
    (status, reasons)
}

fn model_report<'a>(model: &ModelView<'a>, thresholds: &Thresholds) -> ModelReport<'a> {
    let (status, reasons) = assess(model, thresholds);
    let recent = &model.recent;
    ModelReport {
        registry_key: model.label,
        status,
        reasons,
        workers: Workers {
            total: model.workers.total,
            busy: model.workers.busy,
            idle: model.workers.total - model.workers.busy,
            crashed: model.workers.crashed,
        },
        queue_depth: model.queued,
        avg_latency_ms: recent.avg_ms,
        p50_ms: recent.p50_ms,
        p95_ms: recent.p95_ms,
        p99_ms: recent.p99_ms,
        error_rate: recent.error_rate,
        requests: model.requests,
    }
}

/// One process, as of one refresh.
pub struct ProcessInputs<'a> {
    pub target: &'a Target,
    pub up: bool,
    pub memory: MemorySample,
    pub models: Vec<ModelView<'a>>,
}

/// Everything the report is made of, as of one refresh.
pub struct Inputs<'a> {
    /// What the agent follows, for people.
    pub following: &'a str,
    pub processes: Vec<ProcessInputs<'a>>,
    pub thresholds: &'a Thresholds,
    pub observing_since: SystemTime,
    pub events_lost: u64,
    pub anomalies: Vec<(Anomaly, u64)>,
    /// From [`ProbeWindow::observe`].
    pub probe_reasons: &'a [String],
    /// Features off on this kernel, as the log said them at start.
    pub features_off: &'a [String],
}

/// A process's models, each with its numbers and verdict.
fn model_reports<'a>(process: &ProcessInputs<'a>, thresholds: &Thresholds) -> Vec<ModelReport<'a>> {
    process
        .models
        .iter()
        // The catch-all buckets are not models with workers of their own.
        .filter(|model| !model.catch_all)
        .map(|model| model_report(model, thresholds))
        .collect()
}

/// A process's report: unhealthy when it is gone, else as its worst model.
fn process_report<'a>(process: &'a ProcessInputs, models: &'a [ModelReport<'a>]) -> ProcessReport<'a> {
    let worst_model = models.iter().map(|model| model.status).max().unwrap_or(Status::Healthy);
    const MB: f64 = 1024.0 * 1024.0;
    let memory = &process.memory;
    ProcessReport {
        target: TargetReport { pid: process.target.pid.get(), exe: &process.target.exe, up: process.up },
        status: if process.up { worst_model } else { Status::Unhealthy },
        memory: MemoryReport {
            used_mb: memory.resident_bytes as f64 / MB,
            total_mb: memory.system_bytes as f64 / MB,
            percentage: if memory.system_bytes == 0 {
                0.0
            } else {
                100.0 * memory.resident_bytes as f64 / memory.system_bytes as f64
            },
            peak_mb: memory.peak_resident_bytes as f64 / MB,
        },
        models: models
            .iter()
            .map(|model| ModelStatus {
                registry_key: model.registry_key,
                status: model.status,
                reasons: &model.reasons,
            })
            .collect(),
    }
}

/// The report as served: HTTP 503 when unhealthy, else 200. Unhealthy when no process followed
/// runs, or a running one is; degraded when one is, or the probes read the wrong places. A
/// process that exited is reported, and counts only when it was the one named by `--pid`.
pub fn render(inputs: &Inputs) -> RenderedHealth {
    let models: Vec<Vec<ModelReport>> =
        inputs.processes.iter().map(|process| model_reports(process, inputs.thresholds)).collect();
    let processes: Vec<ProcessReport> = inputs
        .processes
        .iter()
        .zip(&models)
        .map(|(process, models)| process_report(process, models))
        .collect();
    let running = processes.iter().filter(|process| process.target.up);
    let mut reasons = inputs.probe_reasons.to_vec();
    let worst = match running.map(|process| process.status).max() {
        Some(worst) => worst,
        None => {
            if processes.is_empty() {
                reasons.push(format!("no process to follow: {}", inputs.following));
            }
            Status::Unhealthy
        }
    };
    let probes = if inputs.probe_reasons.is_empty() { Status::Healthy } else { Status::Degraded };
    let status = worst.max(probes);
    let report = Report {
        status,
        reasons,
        timestamp: rfc3339(SystemTime::now()),
        observing_since: rfc3339(inputs.observing_since),
        following: inputs.following,
        events_lost: inputs.events_lost,
        anomalies: inputs.anomalies.iter().map(|(kind, count)| (kind.name(), *count)).collect(),
        features_off: inputs.features_off,
        only: match (processes.as_slice(), models.as_slice()) {
            ([only], [models]) => Some(OnlyProcess { target: &only.target, memory: &only.memory, models }),
            _ => None,
        },
        processes: &processes,
    };
    let code = match status {
        Status::Unhealthy => StatusCode::SERVICE_UNAVAILABLE,
        Status::Healthy | Status::Degraded => StatusCode::OK,
    };
    let body = serde_json::to_string(&report).unwrap_or_else(|error| format!("{{\"error\":\"{error}\"}}"));
    RenderedHealth { code, body: body.into(), gzipped: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_that_read_the_wrong_place_degrade_an_otherwise_healthy_report() {
        let target = Target::open(std::process::id()).expect("this process");
        let render_with = |probe_reasons: &[String]| {
            render(&Inputs {
                following: "PID 1",
                processes: vec![ProcessInputs {
                    target: &target,
                    up: true,
                    memory: MemorySample::default(),
                    models: Vec::new(),
                }],
                thresholds: &Thresholds::default(),
                observing_since: SystemTime::now(),
                events_lost: 0,
                anomalies: Vec::new(),
                probe_reasons,
                features_off: &[],
            })
        };
        let text = |rendered: &RenderedHealth| String::from_utf8(rendered.body.to_vec()).expect("JSON");
        let healthy = text(&render_with(&[]));
        assert!(healthy.contains(r#""status":"healthy","reasons":[]"#), "{healthy}");
        let reason = "probe 0 (f, request_ended) failed 10 reads in its last 10 events".to_string();
        let degraded = render_with(std::slice::from_ref(&reason));
        assert_eq!(degraded.code, StatusCode::OK);
        let degraded = text(&degraded);
        assert!(degraded.contains(&format!(r#""status":"degraded","reasons":["{reason}"]"#)), "{degraded}");
    }

    #[test]
    fn each_processs_models_carry_their_verdicts_and_the_numbers_are_said_once_at_the_top() {
        let target = Target::open(std::process::id()).expect("this process");
        let model = ModelView {
            label: "m",
            catch_all: false,
            workers_seen: true,
            workers: crate::publish::WorkerCounts::default(),
            queued: 2,
            recent: crate::publish::WindowSummary::default(),
            requests: ByStatus::default(),
            saturated_refreshes: 0,
        };
        let rendered = render(&Inputs {
            following: "PID 1",
            processes: vec![ProcessInputs {
                target: &target,
                up: true,
                memory: MemorySample::default(),
                models: vec![model],
            }],
            thresholds: &Thresholds::default(),
            observing_since: SystemTime::now(),
            events_lost: 0,
            anomalies: Vec::new(),
            probe_reasons: &[],
            features_off: &[],
        });
        let report: serde_json::Value = serde_json::from_slice(&rendered.body).expect("JSON");
        assert_eq!(report["models"][0]["queue_depth"], 2, "{report}");
        assert_eq!(
            report["processes"][0]["models"],
            serde_json::json!([{"registry_key": "m", "status": "unhealthy", "reasons": ["no workers, 2 queued"]}])
        );
    }

    #[test]
    fn a_model_without_workers_is_unhealthy_only_where_workers_are_seen_and_requests_wait() {
        let model = |workers_seen, queued| ModelView {
            label: "m",
            catch_all: false,
            workers_seen,
            workers: crate::publish::WorkerCounts::default(),
            queued,
            recent: crate::publish::WindowSummary::default(),
            requests: ByStatus::default(),
            saturated_refreshes: 0,
        };
        let thresholds = Thresholds::default();
        assert_eq!(
            assess(&model(true, 3), &thresholds),
            (Status::Unhealthy, vec!["no workers, 3 queued".to_string()])
        );
        // A registry unloaded the model on purpose: nothing waits for it.
        assert_eq!(assess(&model(true, 0), &thresholds), (Status::Healthy, Vec::new()));
        // An async service's requests are futures, served by no worker the manifest names.
        assert_eq!(assess(&model(false, 3), &thresholds), (Status::Healthy, Vec::new()));
    }
}
