//! The aggregator fed with synthetic events, for sequences that are hard to provoke on demand.

use std::sync::Arc;

use pool_obs_common::event::{
    EventKind, Header, MODEL_ABSENT, MODEL_KEY_CAPACITY, MODEL_PRESENT, ModelKey, RequestEnded,
    RequestStarted, RequestSubmitted, WorkerCrashed, WorkerEvicted, WorkerSpawned,
};

use super::*;
use crate::outcome::{Condition, OutcomeRule};

/// Probe 0 ends requests by rule (`== 0` is ok), probe 1 times them out.
fn aggregator() -> Aggregator {
    let ended = |outcome| ProbeInfo { function: "f".into(), outcome: Some(outcome), has_request_id: true };
    let by_rule = OutcomeRule {
        arms: vec![(Status::Ok, Condition::parse("== 0").unwrap())],
        otherwise: Status::Failed,
    };
    Aggregator::new(
        Arc::new(Metrics::new()),
        vec![ended(by_rule), ended(OutcomeRule::constant(Status::Timeout))],
    )
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
        header: header(EventKind::RequestStarted, 9, ts_ns),
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
