//! The aggregator fed with synthetic events, for sequences that are hard to provoke on demand.

use std::{sync::Arc, time::Duration};

use pool_obs_common::event::{
    EventKind, Header, MODEL_ABSENT, MODEL_KEY_CAPACITY, MODEL_PRESENT, ModelKey, RequestEnded,
    RequestStarted, RequestSubmitted, WorkerCrashed, WorkerEvicted, WorkerSpawned,
};

use super::*;
use crate::{
    clock::WallClock,
    outcome::{Condition, OutcomeRule},
};

/// Probe 0 ends requests by rule (`== 0` is ok), probe 1 times them out, probe 2 starts them
/// on a worker; other probes read neither request nor worker ids.
fn aggregator() -> Aggregator {
    let ended = |outcome| ProbeInfo {
        function: "f".into(),
        outcome: Some(outcome),
        has_request_id: true,
        has_worker_id: false,
        constant_model: None,
        memory_scale: 1.0,
    };
    let by_rule = OutcomeRule {
        arms: vec![(Status::Ok, Condition::parse("== 0").unwrap())],
        otherwise: Status::Failed,
    };
    let settings = Settings {
        window: Duration::from_secs(60),
        slow_request: Duration::from_secs(1),
        recent_requests: 2,
        max_models: 3,
    };
    let started =
        ProbeInfo { outcome: None, has_worker_id: true, ..ended(OutcomeRule::constant(Status::Ok)) };
    let probes = vec![ended(by_rule), ended(OutcomeRule::constant(Status::Timeout)), started];
    Aggregator::new(Arc::new(Metrics::new()), probes, settings)
}

fn header(kind: EventKind, probe: u32, ts_ns: u64) -> Header {
    Header { kind: kind as u32, probe, tid: 1, _reserved: 0, ts_ns }
}

fn model(name: &str) -> ModelKey {
    let mut key = ModelKey {
        len: name.len() as u64,
        state: MODEL_PRESENT,
        captured: 0,
        bytes: [0; MODEL_KEY_CAPACITY],
    };
    let captured = name.len().min(MODEL_KEY_CAPACITY);
    key.bytes[..captured].copy_from_slice(&name.as_bytes()[..captured]);
    key.captured = captured as u32;
    key
}

fn no_model() -> ModelKey {
    ModelKey { len: 0, state: MODEL_ABSENT, captured: 0, bytes: [0; MODEL_KEY_CAPACITY] }
}

fn spawned(name: &str, worker_id: u64) -> Event {
    Event::WorkerSpawned(WorkerSpawned {
        header: header(EventKind::WorkerSpawned, 9, 0),
        model: model(name),
        worker_id,
        memory_bytes: 100,
    })
}

fn evicted(worker_id: u64) -> Event {
    Event::WorkerEvicted(WorkerEvicted {
        header: header(EventKind::WorkerEvicted, 9, 0),
        model: no_model(),
        worker_id,
    })
}

fn crashed(worker_id: u64, ts_ns: u64) -> Event {
    Event::WorkerCrashed(WorkerCrashed {
        header: header(EventKind::WorkerCrashed, 9, ts_ns),
        model: no_model(),
        worker_id,
    })
}

fn submitted(name: &str, request_id: u64, ts_ns: u64) -> Event {
    Event::RequestSubmitted(RequestSubmitted {
        header: header(EventKind::RequestSubmitted, 9, ts_ns),
        model: model(name),
        request_id,
    })
}

fn started(request_id: u64, worker_id: u64, ts_ns: u64) -> Event {
    Event::RequestStarted(RequestStarted {
        header: header(EventKind::RequestStarted, 2, ts_ns),
        model: no_model(),
        request_id,
        worker_id,
    })
}

fn ended(probe: u32, request_id: u64, outcome_value: u64, ts_ns: u64) -> Event {
    Event::RequestEnded(RequestEnded {
        header: header(EventKind::RequestEnded, probe, ts_ns),
        model: no_model(),
        request_id,
        worker_id: 0,
        outcome_value,
        entered_ns: 0,
    })
}

fn feed(aggregator: &mut Aggregator, events: &[Event]) {
    for event in events {
        aggregator.apply(event);
    }
}

fn state<'a>(aggregator: &'a Aggregator, name: &str) -> &'a ModelState {
    aggregator.models().iter().find(|model| model.label == name).unwrap()
}

#[test]
fn a_request_follows_its_id_across_events() {
    let mut aggregator = aggregator();
    feed(&mut aggregator, &[spawned("m", 1), submitted("m", 7, 100), submitted("m", 8, 150)]);
    assert_eq!(state(&aggregator, "m").queued, 2);
    feed(&mut aggregator, &[started(7, 1, 300)]);
    let model = state(&aggregator, "m");
    assert_eq!((model.queued, model.busy, model.workers), (1, 1, 1));
    feed(&mut aggregator, &[ended(0, 7, 0, 1_000), ended(1, 8, 0, 2_000)]);
    let model = state(&aggregator, "m");
    assert_eq!(model.requests, [1, 0, 1]);
    assert_eq!((model.queued, model.busy), (0, 0));
}

#[test]
fn a_crash_fails_the_request_its_worker_was_serving() {
    let mut aggregator = aggregator();
    feed(&mut aggregator, &[spawned("m", 1), submitted("m", 7, 100), started(7, 1, 200), crashed(1, 300)]);
    let model = state(&aggregator, "m");
    assert_eq!(model.requests, [0, 1, 0]);
    assert_eq!((model.workers, model.busy, model.crashed), (0, 0, 1));
}

#[test]
fn a_worker_evicted_while_serving_still_fails_its_request_when_it_crashes() {
    let mut aggregator = aggregator();
    feed(&mut aggregator, &[spawned("m", 1), submitted("m", 7, 100), started(7, 1, 200), evicted(1)]);
    assert_eq!(state(&aggregator, "m").workers, 1, "still finishing its request");
    feed(&mut aggregator, &[crashed(1, 300)]);
    let model = state(&aggregator, "m");
    assert_eq!(model.requests, [0, 1, 0]);
    assert_eq!((model.workers, model.busy), (0, 0));
}

#[test]
fn a_worker_evicted_while_serving_leaves_when_its_request_ends() {
    let mut aggregator = aggregator();
    feed(
        &mut aggregator,
        &[spawned("m", 1), submitted("m", 7, 100), started(7, 1, 200), evicted(1), ended(0, 7, 0, 400)],
    );
    let model = state(&aggregator, "m");
    assert_eq!(model.requests, [1, 0, 0]);
    assert_eq!((model.workers, model.busy, model.memory_bytes), (0, 0, 0));
}

#[test]
fn workers_seen_before_their_spawn_are_discovered_not_negative() {
    let mut aggregator = aggregator();
    // Attached late: the worker and the request predate us.
    feed(&mut aggregator, &[submitted("m", 7, 100), started(7, 42, 200), evicted(42), ended(0, 7, 0, 300)]);
    let model = state(&aggregator, "m");
    assert_eq!((model.workers, model.busy), (0, 0));
    feed(&mut aggregator, &[evicted(42), crashed(42, 400)]);
    assert_eq!(state(&aggregator, "m").workers, 0);
}

#[test]
fn model_labels_escape_bytes_that_are_not_utf8() {
    assert_eq!(model_label(b"llama", false), "llama");
    assert_eq!(model_label(b"a\xffb", false), "a\\xffb");
    assert_eq!(model_label(b"q\"\n\xff", false), "q\\\"\\n\\xff");
    assert_eq!(model_label("\"quoted\"\n".as_bytes(), false), "\"quoted\"\n");
    assert_eq!(model_label(b"abc", true), "abc…");
}

#[test]
fn timelines_cover_requests_in_flight_and_the_recently_completed() {
    let mut aggregator = aggregator();
    let wall = WallClock::now();
    feed(&mut aggregator, &[spawned("m", 1), submitted("m", 7, 1_000_000), started(7, 1, 3_000_000)]);
    let running = aggregator.timeline(7, &wall).unwrap();
    assert_eq!((running.state, running.worker, running.outcome), ("running", Some(1), None));
    assert_eq!(running.queue_ms, Some(2.0));
    feed(&mut aggregator, &[ended(0, 7, 5, 10_000_000)]);
    let done = aggregator.timeline(7, &wall).unwrap();
    assert_eq!(
        (done.state, done.outcome, done.total_ms, done.service_ms),
        ("completed", Some("failed"), Some(9.0), Some(7.0))
    );
    // Only the last two completed requests are remembered.
    for id in [8, 9] {
        feed(&mut aggregator, &[submitted("m", id, 20_000_000), ended(1, id, 0, 30_000_000)]);
    }
    assert!(aggregator.timeline(7, &wall).is_none());
    assert_eq!(aggregator.timeline(9, &wall).unwrap().outcome, Some("timeout"));
}

#[test]
fn refresh_publishes_window_quantiles_and_saturation() {
    let mut aggregator = aggregator();
    feed(&mut aggregator, &[spawned("m", 1)]);
    for id in 1..=100 {
        let start = id * 100_000_000;
        feed(&mut aggregator, &[submitted("m", id, start), ended(0, id, 0, start + id * 1_000_000)]);
    }
    aggregator.refresh(11 * 1_000_000_000);
    let model = state(&aggregator, "m");
    assert!((model.recent.p99_ms - 99.0).abs() < 1.0, "{:?}", model.recent);
    assert_eq!(model.saturated_refreshes, 0);
    assert_eq!(model.workers, 1, "requests that timed out in the queue had no worker");
    feed(&mut aggregator, &[submitted("m", 500, 0), started(500, 1, 0)]);
    aggregator.refresh(100 * 1_000_000_000);
    aggregator.refresh(100 * 1_000_000_000);
    assert_eq!(state(&aggregator, "m").saturated_refreshes, 2);
}

#[test]
fn a_flood_of_model_keys_stops_at_max_models() {
    let mut aggregator = aggregator();
    for id in 0..1000 {
        feed(&mut aggregator, &[submitted(&format!("model-{id}"), id, 10), ended(0, id, 0, 20)]);
    }
    let labels: Vec<&str> = aggregator.models().iter().map(|model| model.label.as_str()).collect();
    assert_eq!(labels, ["model-0", "model-1", "model-2", OTHER_MODELS]);
    assert_eq!(state(&aggregator, OTHER_MODELS).requests, [997, 0, 0]);
    assert_eq!(aggregator.model_ids.len(), 4, "unseen keys are not remembered");
}
