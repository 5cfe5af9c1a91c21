//! The `/health` report, rendered from the aggregator's state each refresh so that requests
//! only copy it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use serde::Serialize;

use super::http::RenderedHealth;
use crate::{aggregate::ModelState, target::Target};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Healthy,
    Degraded,
    Unhealthy,
}

#[derive(Serialize)]
pub struct Report<'a> {
    pub status: Status,
    pub timestamp: String,
    pub observing_since: String,
    pub target: TargetReport<'a>,
    pub events_lost: u64,
    pub models: Vec<ModelReport<'a>>,
}

#[derive(Serialize)]
pub struct TargetReport<'a> {
    pub pid: u32,
    pub exe: &'a str,
    pub up: bool,
}

#[derive(Serialize)]
pub struct ModelReport<'a> {
    pub registry_key: &'a str,
    pub status: Status,
    pub workers: Workers,
    pub queue_depth: u64,
    pub requests: Requests,
    pub error_rate: f64,
}

#[derive(Serialize)]
pub struct Workers {
    pub total: u64,
    pub busy: u64,
    pub idle: u64,
    pub crashed: u64,
}

#[derive(Serialize)]
pub struct Requests {
    pub ok: u64,
    pub failed: u64,
    pub timeout: u64,
}

/// A model with no workers cannot serve; one whose workers are all busy is saturated.
pub fn model_report(model: &ModelState) -> ModelReport<'_> {
    let status = if model.workers == 0 {
        Status::Unhealthy
    } else if model.busy == model.workers {
        Status::Degraded
    } else {
        Status::Healthy
    };
    let [ok, failed, timeout] = model.requests;
    let finished = ok + failed + timeout;
    ModelReport {
        registry_key: &model.label,
        status,
        workers: Workers {
            total: model.workers,
            busy: model.busy,
            idle: model.workers - model.busy,
            crashed: model.crashed,
        },
        queue_depth: model.queued,
        requests: Requests { ok, failed, timeout },
        error_rate: if finished == 0 { 0.0 } else { (failed + timeout) as f64 / finished as f64 },
    }
}

/// Unhealthy when the target is gone or any model is; degraded when any model is.
pub fn overall(target_up: bool, models: &[ModelReport]) -> Status {
    if !target_up {
        return Status::Unhealthy;
    }
    models.iter().map(|model| model.status).max().unwrap_or(Status::Healthy)
}

/// Seconds since the epoch as an RFC 3339 UTC timestamp with milliseconds.
pub fn rfc3339(since_epoch: Duration) -> String {
    let seconds = since_epoch.as_secs();
    let (days, day_seconds) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        day_seconds / 3600,
        day_seconds / 60 % 60,
        day_seconds % 60,
        since_epoch.subsec_millis()
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The report as served: HTTP 503 when unhealthy, else 200.
pub fn render(
    models: &[ModelState],
    target: &Target,
    up: bool,
    observing_since: SystemTime,
    events_lost: u64,
) -> RenderedHealth {
    let since_epoch = |time: SystemTime| time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let models: Vec<ModelReport> = models.iter().map(model_report).collect();
    let status = overall(up, &models);
    let report = Report {
        status,
        timestamp: rfc3339(since_epoch(SystemTime::now())),
        observing_since: rfc3339(since_epoch(observing_since)),
        target: TargetReport { pid: target.pid.get(), exe: &target.exe, up },
        events_lost,
        models,
    };
    let code = match status {
        Status::Unhealthy => StatusCode::SERVICE_UNAVAILABLE,
        Status::Healthy | Status::Degraded => StatusCode::OK,
    };
    let body = serde_json::to_string(&report).unwrap_or_else(|error| format!("{{\"error\":\"{error}\"}}"));
    RenderedHealth { code, body: body.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(Duration::from_millis(0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(Duration::from_millis(1_795_744_146_123)), "2026-11-27T01:49:06.123Z");
        assert_eq!(rfc3339(Duration::from_secs(951_782_400)), "2000-02-29T00:00:00.000Z");
    }
}
