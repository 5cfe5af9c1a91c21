//! The aggregator fed with synthetic events, for sequences that are hard to provoke on demand.

use std::{sync::Arc, time::Duration};

use pool_obs_common::event::{
    CallEnding, CpuSampled, EventKind, FutureDropped, FuturePolled, HandoffRan, Header, MODEL_KEY_CAPACITY,
    MODEL_PRESENT, ModelKey, NOT_IN_CALL, RequestEnded, RequestStarted, RequestSubmitted, WorkerCrashed,
    WorkerEvicted, WorkerSpawned,
};

use super::{models::model_label, *};
use crate::{
    attach::plan::{FutureStates, HandoffSite, Via},
    clock::WallClock,
    outcome::{Arm, ByStatus, Condition, OutcomeRule, Status},
};

/// Probe 0 ends requests by rule (`== 0` is ok), probe 1 times them out, probe 2 starts them
/// on a worker; probes 3 to 6 submit requests and spawn, evict and crash workers; probe 7 polls
/// async requests (outcome `== 0` is ok) and probe 8 drops their futures; probe 9 polls them
/// inlined; probes 10 and 11 make and run work handed to tokio's blocking pool.
fn aggregator() -> Aggregator {
    let ended = |outcome| ProbeInfo {
        function: "f".into(),
        event: EventKind::RequestEnded,
        outcome: Some(outcome),
        has_request_id: true,
        has_worker_id: false,
        constant_model: None,
        memory_scale: 1.0,
        future: None,
        handoff: None,
    };
    let by_rule = OutcomeRule {
        arms: vec![Arm::on_value(Status::Ok, Condition::parse("== 0").unwrap())],
        otherwise: Status::Failed,
    };
    let settings = Settings {
        window: Duration::from_secs(60),
        slow_request: Duration::from_secs(1),
        recent_requests: 2,
        max_models: 3,
        max_in_flight: 12,
        request_expiry: Duration::from_secs(1000),
    };
    let started = ProbeInfo {
        event: EventKind::RequestStarted,
        outcome: None,
        has_worker_id: true,
        ..ended(OutcomeRule::constant(Status::Ok))
    };
    let other = |event| ProbeInfo { event, outcome: None, ..ended(OutcomeRule::constant(Status::Ok)) };
    let future = |event, outcome, ready_bound| ProbeInfo {
        event,
        outcome,
        future: Some(FutureStates {
            unresumed: UNRESUMED,
            returned: RETURNED,
            panicked: PANICKED,
            ready_bound,
        }),
        ..ended(OutcomeRule::constant(Status::Ok))
    };
    let probes = vec![
        ended(by_rule.clone()),
        ended(OutcomeRule::constant(Status::Timeout)),
        started,
        other(EventKind::RequestSubmitted),
        other(EventKind::WorkerSpawned),
        other(EventKind::WorkerEvicted),
        other(EventKind::WorkerCrashed),
        future(EventKind::FuturePolled, Some(by_rule.clone()), false),
        future(EventKind::FutureDropped, None, false),
        // A poll inlined into a caller that goes on after it: it ends where the value is bound.
        future(EventKind::FuturePolled, Some(by_rule), true),
        // Where tokio's blocking pool is handed work, and where the work runs.
        ProbeInfo { handoff: Some(HandoffSite::Made(Via::spawn_blocking)), ..other(EventKind::HandoffRan) },
        ProbeInfo { handoff: Some(HandoffSite::Ran), ..other(EventKind::HandoffRan) },
    ];
    Aggregator::new(1, Arc::new(Metrics::new()), probes, settings)
}

/// A future's states, as rustc numbers them: `Suspend0` is the first `.await`.
const UNRESUMED: u64 = 0;
const RETURNED: u64 = 1;
const PANICKED: u64 = 2;
const SUSPENDED: u64 = 3;

/// One poll of the future at `future`, from `entered_ns` to `ts_ns`, taking it from state
/// `before` to `after`; the model and request id are read at the first poll only.
fn polled(future: u64, (before, after): (u64, u64), (entered_ns, ts_ns): (u64, u64), outcome: u64) -> Event {
    let first = before == UNRESUMED;
    Event::FuturePolled(FuturePolled {
        header: header(EventKind::FuturePolled, 7, ts_ns),
        model: if first { model("m") } else { no_model() },
        request_id: if first { future / 0x10 } else { 0 },
        future,
        state_before: before,
        state_after: after,
        outcome_value: outcome,
        outcome_detail: 0,
        entered_ns,
        entered_cpu_ns: cpu_clock(entered_ns),
        cpu_ns: cpu_clock(ts_ns),
        ending: CallEnding::Returned as u8,
        _reserved: [0; 7],
    })
}

/// The events' thread's CPU clock at `ts_ns`: it is on the CPU half the time.
fn cpu_clock(ts_ns: u64) -> u64 {
    ts_ns / 2
}

fn dropped(future: u64, state: u64, ts_ns: u64) -> Event {
    Event::FutureDropped(FutureDropped { header: header(EventKind::FutureDropped, 8, ts_ns), future, state })
}

fn header(kind: EventKind, probe: u32, ts_ns: u64) -> Header {
    Header { kind: kind as u32, probe, tid: 1, pid: 1, ts_ns, lost_before: 0 }
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
    ModelKey::ABSENT
}

fn spawned(name: &str, worker_id: u64) -> Event {
    Event::WorkerSpawned(WorkerSpawned {
        header: header(EventKind::WorkerSpawned, 4, 0),
        model: model(name),
        worker_id,
        memory_bytes: 100,
    })
}

fn evicted(worker_id: u64) -> Event {
    Event::WorkerEvicted(WorkerEvicted {
        header: header(EventKind::WorkerEvicted, 5, 0),
        model: no_model(),
        worker_id,
    })
}

fn crashed(worker_id: u64, ts_ns: u64) -> Event {
    Event::WorkerCrashed(WorkerCrashed {
        header: header(EventKind::WorkerCrashed, 6, ts_ns),
        model: no_model(),
        worker_id,
    })
}

fn submitted(name: &str, request_id: u64, ts_ns: u64) -> Event {
    Event::RequestSubmitted(RequestSubmitted {
        header: header(EventKind::RequestSubmitted, 3, ts_ns),
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
        cpu_ns: cpu_clock(ts_ns),
    })
}

fn ended(probe: u32, request_id: u64, outcome_value: u64, ts_ns: u64) -> Event {
    Event::RequestEnded(RequestEnded {
        header: header(EventKind::RequestEnded, probe, ts_ns),
        model: no_model(),
        request_id,
        worker_id: 0,
        outcome_value,
        outcome_detail: 0,
        entered_ns: 0,
        entered_cpu_ns: 0,
        cpu_ns: cpu_clock(ts_ns),
        ending: CallEnding::Returned as u8,
        _reserved: [0; 7],
    })
}

/// The end the kernel writes for a call a panic unwound through, noticed at `ts_ns`.
fn unwound(probe: u32, request_id: u64, ts_ns: u64) -> Event {
    let Event::RequestEnded(returned) = ended(probe, request_id, 0, ts_ns) else { unreachable!() };
    Event::RequestEnded(RequestEnded { ending: CallEnding::Unwound as u8, ..returned })
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
    assert_eq!(model.requests, ByStatus { ok: 1, failed: 0, timeout: 1, cancelled: 0 });
    assert_eq!((model.queued, model.busy), (0, 0));
}

#[test]
fn a_request_a_panic_unwound_through_failed_whatever_its_outcome_value_and_has_no_latency() {
    let mut aggregator = aggregator();
    // Outcome value 0 is ok by probe 0's rule; unwound, it is not read at all.
    feed(&mut aggregator, &[spawned("m", 1), submitted("m", 7, 100), started(7, 1, 200), unwound(0, 7, 900)]);
    let model = state(&aggregator, "m");
    assert_eq!(model.requests, ByStatus { ok: 0, failed: 1, timeout: 0, cancelled: 0 });
    assert_eq!((model.queued, model.busy), (0, 0));
    let timeline = aggregator.timeline(7, &WallClock::now()).expect("recently completed");
    assert_eq!((timeline.outcome, timeline.total_ms, timeline.service_ms), (Some("failed"), None, None));
}

#[test]
fn a_crash_fails_the_request_its_worker_was_serving() {
    let mut aggregator = aggregator();
    feed(&mut aggregator, &[spawned("m", 1), submitted("m", 7, 100), started(7, 1, 200), crashed(1, 300)]);
    let model = state(&aggregator, "m");
    assert_eq!(model.requests, ByStatus { ok: 0, failed: 1, timeout: 0, cancelled: 0 });
    assert_eq!((model.workers, model.busy, model.crashed), (0, 0, 1));
}

#[test]
fn a_worker_evicted_while_serving_still_fails_its_request_when_it_crashes() {
    let mut aggregator = aggregator();
    feed(&mut aggregator, &[spawned("m", 1), submitted("m", 7, 100), started(7, 1, 200), evicted(1)]);
    assert_eq!(state(&aggregator, "m").workers, 1, "still finishing its request");
    feed(&mut aggregator, &[crashed(1, 300)]);
    let model = state(&aggregator, "m");
    assert_eq!(model.requests, ByStatus { ok: 0, failed: 1, timeout: 0, cancelled: 0 });
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
    assert_eq!(model.requests, ByStatus { ok: 1, failed: 0, timeout: 0, cancelled: 0 });
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
    assert_eq!(
        state(&aggregator, OTHER_MODELS).requests,
        ByStatus { ok: 997, failed: 0, timeout: 0, cancelled: 0 }
    );
    assert_eq!(aggregator.model_ids.len(), 4, "unseen keys are not remembered");
}

fn anomalies(aggregator: &Aggregator) -> Vec<(Anomaly, u64)> {
    aggregator.metrics.anomalies.counted()
}

#[test]
fn each_inconsistency_is_counted_by_kind_and_leaves_the_gauges_whole() {
    let mut aggregator = aggregator();
    feed(&mut aggregator, &[ended(0, 99, 0, 10), spawned("m", 1), submitted("m", 7, 20), started(98, 5, 30)]);
    feed(&mut aggregator, &[submitted("m", 7, 40), spawned("m", 1), evicted(1), crashed(1, 50)]);
    assert_eq!(
        anomalies(&aggregator),
        [
            (Anomaly::RequestEndWithoutStart, 1),
            (Anomaly::RequestStartWithoutSubmit, 1),
            (Anomaly::RequestIdReused, 1),
            // Worker 5, never spawned, and worker 1, crashed after its eviction.
            (Anomaly::WorkerNotSpawned, 2),
            (Anomaly::WorkerIdReused, 1),
        ]
    );
    let model = state(&aggregator, "m");
    assert_eq!((model.queued, model.workers, model.busy, model.memory_bytes), (1, 0, 0, 0));
    let unknown = state(&aggregator, UNKNOWN_MODEL);
    assert_eq!((unknown.workers, unknown.busy), (1, 1), "worker 5 is discovered serving request 98");
}

#[test]
fn an_end_that_nothing_names_a_model_for_is_counted_as_unknown_and_says_so() {
    let mut aggregator = aggregator();
    // A `request_ended` that reads neither a model nor a request id, nor a worker.
    aggregator.probes[0].has_request_id = false;
    feed(&mut aggregator, &[ended(0, 0, 0, 10)]);
    assert_eq!(state(&aggregator, UNKNOWN_MODEL).requests.ok, 1);
    assert_eq!(anomalies(&aggregator), [(Anomaly::RequestUnattributed, 1)]);
    assert_eq!(aggregator.by_probe().contradictions[..2], [1, 0], "probe 0 is named");
}

#[test]
fn a_consistent_stream_has_no_anomalies() {
    let mut aggregator = aggregator();
    feed(
        &mut aggregator,
        &[spawned("m", 1), submitted("m", 7, 100), started(7, 1, 200), ended(0, 7, 0, 300)],
    );
    feed(&mut aggregator, &[evicted(1), submitted("m", 7, 400), ended(1, 7, 0, 500)]);
    assert_eq!(anomalies(&aggregator), []);
}

/// A small, seeded generator: the same stream on every run.
struct SplitMix(u64);

impl SplitMix {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % bound
    }
}

#[test]
fn random_streams_of_events_never_break_the_books() {
    // Few ids, so that every disorder happens often: ends before starts, workers crashing twice,
    // ids reused while in flight. Arithmetic overflow panics in this (debug) build.
    let mut aggregator = aggregator();
    let mut random = SplitMix(6);
    let models = ["a", "b", "c"];
    for ts in 1..=200_000 {
        let (worker, request) = (random.below(8), random.below(16));
        let model = models[random.below(3) as usize];
        let event = match random.below(6) {
            0 => spawned(model, worker),
            1 => evicted(worker),
            2 => crashed(worker, ts),
            3 => submitted(model, request, ts),
            4 => started(request, worker, ts),
            _ => ended(random.below(2) as u32, request, random.below(2), ts),
        };
        aggregator.apply(&event);
    }
    aggregator.refresh(200_000);
    for (id, model) in aggregator.models().iter().enumerate() {
        let live: Vec<&Worker> = aggregator.workers.values().filter(|worker| worker.model == id).collect();
        let busy = live.iter().filter(|worker| worker.serving.is_some()).count();
        let memory: u64 = live.iter().map(|worker| worker.memory_bytes).sum();
        let queued = aggregator
            .requests
            .values()
            .filter(|request| request.model == id && request.started_ns.is_none())
            .count();
        assert_eq!(
            (model.workers, model.busy, model.memory_bytes, model.queued),
            (live.len() as u64, busy as u64, memory, queued as u64),
            "{}",
            model.label
        );
    }
    let kinds: Vec<Anomaly> = anomalies(&aggregator).into_iter().map(|(kind, _)| kind).collect();
    assert_eq!(kinds.len(), 6, "every kind the aggregator can see was seen: {kinds:?}");
}

#[test]
fn requests_whose_end_never_comes_expire_and_release_queue_and_worker() {
    let mut aggregator = aggregator();
    feed(&mut aggregator, &[spawned("m", 1), submitted("m", 7, 0), submitted("m", 8, 0), started(8, 1, 0)]);
    aggregator.refresh(999 * 1_000_000_000);
    assert_eq!((state(&aggregator, "m").queued, state(&aggregator, "m").busy), (1, 1));
    aggregator.refresh(1001 * 1_000_000_000);
    let model = state(&aggregator, "m");
    assert_eq!((model.queued, model.busy, model.workers), (0, 0, 1));
    assert_eq!(anomalies(&aggregator), [(Anomaly::RequestExpired, 2)]);
}

#[test]
fn requests_past_max_in_flight_are_counted_not_followed() {
    let mut aggregator = aggregator();
    for id in 0..20 {
        feed(&mut aggregator, &[submitted("m", id, 10)]);
    }
    assert_eq!(state(&aggregator, "m").queued, 12);
    assert_eq!(anomalies(&aggregator), [(Anomaly::RequestUntracked, 8)]);
    feed(&mut aggregator, &[ended(0, 0, 0, 20), submitted("m", 100, 30)]);
    assert_eq!(state(&aggregator, "m").queued, 12, "an end makes room again");
}

#[test]
fn a_worker_evicted_before_starting_the_request_it_took_serves_it_then_leaves() {
    let mut aggregator = aggregator();
    feed(&mut aggregator, &[spawned("m", 1), submitted("m", 7, 100), evicted(1), started(7, 1, 200)]);
    let model = state(&aggregator, "m");
    assert_eq!((model.workers, model.busy), (1, 1), "serving its last request");
    feed(&mut aggregator, &[ended(0, 7, 0, 300)]);
    let model = state(&aggregator, "m");
    assert_eq!(
        (model.workers, model.busy, model.requests),
        (0, 0, ByStatus { ok: 1, failed: 0, timeout: 0, cancelled: 0 })
    );
    assert_eq!(anomalies(&aggregator), []);
}

#[test]
fn an_async_request_runs_from_its_first_poll_to_the_poll_that_leaves_it_returned_its_cpu_time_in_its_polls() {
    let mut aggregator = aggregator();
    feed(
        &mut aggregator,
        &[
            polled(0x70, (UNRESUMED, SUSPENDED), (1_000, 1_500), 0),
            polled(0x70, (SUSPENDED, SUSPENDED), (4_000, 4_200), 0),
            polled(0x70, (SUSPENDED, RETURNED), (9_000, 10_000), 0),
            // Dropped once it is ready: nothing more happens.
            dropped(0x70, RETURNED, 12_000),
        ],
    );
    let model = state(&aggregator, "m");
    assert_eq!(model.requests, ByStatus { ok: 1, failed: 0, timeout: 0, cancelled: 0 });
    let timeline = aggregator.timeline(7, &WallClock::now()).expect("recently completed");
    let micros = |millis: Option<f64>| millis.map(|millis| (millis * 1000.0).round() as u64);
    assert_eq!((timeline.outcome, micros(timeline.total_ms), timeline.polls), (Some("ok"), Some(9), Some(3)));
    // 0.5 + 0.2 + 1 µs inside the polls.
    assert_eq!(timeline.busy_ms.map(|millis| (millis * 10_000.0).round() as u64), Some(17));
    // Half of that on the CPU; the rest of the 9 µs off it.
    let nanos = |millis: Option<f64>| millis.map(|millis| (millis * 1e6).round() as u64);
    assert_eq!((nanos(timeline.cpu_ms), nanos(timeline.offcpu_ms)), (Some(850), Some(8_150)));
}

#[test]
fn a_future_dropped_before_it_is_ready_is_a_cancelled_request() {
    let mut aggregator = aggregator();
    feed(
        &mut aggregator,
        &[
            polled(0x70, (UNRESUMED, SUSPENDED), (1_000, 1_500), 0),
            dropped(0x70, SUSPENDED, 3_000),
            // The address is reused by the next request.
            polled(0x70, (UNRESUMED, RETURNED), (4_000, 5_000), 9),
        ],
    );
    aggregator.refresh(6_000);
    let model = state(&aggregator, "m");
    assert_eq!(model.requests, ByStatus { ok: 0, failed: 1, timeout: 0, cancelled: 1 });
    let timeline = aggregator.timeline(7, &WallClock::now()).expect("recently completed");
    assert_eq!((timeline.outcome, timeline.polls), (Some("failed"), Some(1)));
    // The cancelled request's 2 µs are apart from the latencies of the one that finished.
    let cancelled = aggregator.metrics.polls_for(1, "m").cancelled_seconds.get();
    assert!((cancelled - 2e-6).abs() < 1e-12, "{cancelled}");
    assert_eq!(model.recent.p50_ms, 0.001, "only the 1 µs of the finished request");
}

#[test]
fn a_future_its_caller_drops_as_soon_as_it_is_ready_is_counted_by_the_end_of_that_poll() {
    // axum's handler future: ready in its first or a later poll, dropped `Returned` by its
    // caller during that poll, before the place where the caller binds the value.
    let mut aggregator = aggregator();
    feed(
        &mut aggregator,
        &[
            dropped(0x70, RETURNED, 1_400),
            polled(0x70, (UNRESUMED, RETURNED), (1_000, 1_500), 0),
            polled(0x80, (UNRESUMED, SUSPENDED), (2_000, 2_500), 0),
            dropped(0x80, RETURNED, 3_400),
            polled(0x80, (SUSPENDED, RETURNED), (3_000, 3_500), 9),
        ],
    );
    aggregator.refresh(3_000 + 1_000_000_001);
    assert_eq!(state(&aggregator, "m").requests, ByStatus { ok: 1, failed: 1, timeout: 0, cancelled: 0 });
    assert_eq!(anomalies(&aggregator), []);
}

#[test]
fn a_future_dropped_returned_whose_ready_poll_no_probe_saw_counts_under_no_status_but_as_an_anomaly() {
    let mut aggregator = aggregator();
    feed(
        &mut aggregator,
        &[polled(0x70, (UNRESUMED, SUSPENDED), (1_000, 1_500), 0), dropped(0x70, RETURNED, 3_000)],
    );
    // The end of a poll it was dropped in may still come; a second later, it has not.
    aggregator.refresh(3_000 + 1_000_000_001);
    assert_eq!(state(&aggregator, "m").requests, ByStatus::default());
    assert_eq!(anomalies(&aggregator), [(Anomaly::ReadyNotSeen, 1)]);
    assert_eq!(aggregator.by_probe().contradictions[8], 1, "the drop probe showed it");
}

#[test]
fn a_poll_no_probe_saw_shows_in_the_state_the_next_poll_or_the_drop_finds() {
    const SUSPENDED_AGAIN: u64 = SUSPENDED + 1;
    let mut aggregator = aggregator();
    feed(
        &mut aggregator,
        &[
            // Suspended at its first `.await`, then polled unseen to its second.
            polled(0x70, (UNRESUMED, SUSPENDED), (1_000, 1_500), 0),
            polled(0x70, (SUSPENDED_AGAIN, RETURNED), (4_000, 5_000), 0),
            polled(0x80, (UNRESUMED, SUSPENDED), (1_000, 1_500), 0),
            dropped(0x80, SUSPENDED_AGAIN, 6_000),
            // Polled and suspended, its first poll unseen, then dropped.
            dropped(0x90, SUSPENDED, 7_000),
            // Dropped before any poll: nothing to contradict.
            dropped(0xa0, UNRESUMED, 8_000),
        ],
    );
    assert_eq!(state(&aggregator, "m").requests, ByStatus { ok: 1, failed: 0, timeout: 0, cancelled: 1 });
    assert_eq!(anomalies(&aggregator), [(Anomaly::PollNotSeen, 2), (Anomaly::FirstPollNotSeen, 1)]);
    assert_eq!(aggregator.by_probe().contradictions[7..=8], [1, 2]);
}

#[test]
fn a_future_open_when_the_kernel_lost_events_ends_under_no_status_and_one_first_polled_after_counts() {
    let after_loss = |event| match event {
        Event::FuturePolled(polled) => {
            Event::FuturePolled(FuturePolled { header: Header { lost_before: 3, ..polled.header }, ..polled })
        }
        other => other,
    };
    let mut aggregator = aggregator();
    feed(
        &mut aggregator,
        &[
            polled(0x70, (UNRESUMED, SUSPENDED), (1_000, 1_500), 0),
            // Three events lost in between: perhaps this future's drop and another's first
            // poll at the same address.
            after_loss(polled(0x70, (SUSPENDED, RETURNED), (4_000, 5_000), 0)),
            after_loss(polled(0x80, (UNRESUMED, RETURNED), (6_000, 7_000), 0)),
        ],
    );
    assert_eq!(state(&aggregator, "m").requests, ByStatus { ok: 1, failed: 0, timeout: 0, cancelled: 0 });
    assert_eq!(anomalies(&aggregator), [(Anomaly::OpenAcrossLostEvents, 1)]);
}

#[test]
fn futures_polled_to_their_end_where_no_probe_is_show_at_their_drops_not_as_silence() {
    let mut aggregator = aggregator();
    feed(
        &mut aggregator,
        &[
            // Counted, then dropped: as it should be.
            polled(0x70, (UNRESUMED, RETURNED), (1_000, 1_500), 0),
            dropped(0x70, RETURNED, 2_000),
            // Never seen polled, dropped ready: a request counted nowhere.
            dropped(0x80, RETURNED, 3_000),
            dropped(0x90, RETURNED, 4_000),
        ],
    );
    // Once the ends of the polls they might have been dropped in are overdue.
    aggregator.refresh(4_000 + 1_000_000_001);
    assert_eq!(state(&aggregator, "m").requests, ByStatus { ok: 1, failed: 0, timeout: 0, cancelled: 0 });
    assert_eq!(anomalies(&aggregator), [(Anomaly::FirstPollNotSeen, 2)]);
    assert_eq!(aggregator.by_probe().contradictions[8], 2, "the drop probe says so");
}

#[test]
fn a_future_polled_and_dropped_where_the_probes_are_has_no_anomaly() {
    let mut aggregator = aggregator();
    feed(
        &mut aggregator,
        &[
            polled(0x70, (UNRESUMED, SUSPENDED), (1_000, 1_500), 0),
            polled(0x70, (SUSPENDED, RETURNED), (2_000, 2_500), 0),
            dropped(0x70, RETURNED, 2_600),
            polled(0x80, (UNRESUMED, SUSPENDED), (1_000, 1_500), 0),
            dropped(0x80, SUSPENDED, 3_000),
        ],
    );
    assert_eq!(state(&aggregator, "m").requests, ByStatus { ok: 1, failed: 0, timeout: 0, cancelled: 1 });
    assert_eq!(anomalies(&aggregator), []);
}

#[test]
fn a_poll_seen_ready_where_its_caller_binds_the_value_ends_its_request_whatever_the_state_reads() {
    let mut aggregator = aggregator();
    // The caller of an inlined poll bound the `Ready` value before the state tag was written.
    let Event::FuturePolled(bound) = polled(0x70, (SUSPENDED, SUSPENDED), (2_000, 2_500), 9) else {
        unreachable!()
    };
    feed(
        &mut aggregator,
        &[
            polled(0x70, (UNRESUMED, SUSPENDED), (1_000, 1_500), 0),
            Event::FuturePolled(FuturePolled { ending: CallEnding::Ready as u8, ..bound }),
        ],
    );
    assert_eq!(state(&aggregator, "m").requests, ByStatus { ok: 0, failed: 1, timeout: 0, cancelled: 0 });
    let timeline = aggregator.timeline(7, &WallClock::now()).expect("recently completed");
    assert_eq!((timeline.outcome, timeline.polls), (Some("failed"), Some(2)));
}

#[test]
fn a_future_left_returned_past_the_place_its_value_is_bound_fails_with_an_anomaly() {
    let mut aggregator = aggregator();
    let at_bound_site = |event| match event {
        Event::FuturePolled(polled) => {
            Event::FuturePolled(FuturePolled { header: Header { probe: 9, ..polled.header }, ..polled })
        }
        other => other,
    };
    feed(
        &mut aggregator,
        &[
            at_bound_site(polled(0x70, (UNRESUMED, SUSPENDED), (1_000, 1_500), 0)),
            // Seen at the caller's return, not at the binding: its outcome was never read.
            at_bound_site(polled(0x70, (SUSPENDED, RETURNED), (2_000, 2_500), 0)),
        ],
    );
    assert_eq!(state(&aggregator, "m").requests, ByStatus { ok: 0, failed: 1, timeout: 0, cancelled: 0 });
    assert_eq!(anomalies(&aggregator), [(Anomaly::ReadyNotBound, 1)]);
}

#[test]
fn a_poll_that_panics_fails_its_request_and_a_future_seen_only_later_is_not_followed() {
    let mut aggregator = aggregator();
    let Event::FuturePolled(panicking) = polled(0x90, (SUSPENDED, PANICKED), (3_000, 4_000), 0) else {
        unreachable!()
    };
    let unwound = Event::FuturePolled(FuturePolled { ending: CallEnding::Unwound as u8, ..panicking });
    feed(
        &mut aggregator,
        &[
            polled(0x70, (UNRESUMED, SUSPENDED), (1_000, 1_500), 0),
            polled(0x70, (SUSPENDED, PANICKED), (2_000, 2_500), 0),
            polled(0x80, (UNRESUMED, SUSPENDED), (1_000, 1_500), 0),
            unwound,
            polled(0x90, (UNRESUMED, SUSPENDED), (5_000, 5_500), 0),
            Event::FuturePolled(FuturePolled {
                ending: CallEnding::Unwound as u8,
                future: 0x90,
                ..panicking
            }),
            // First polled before the agent attached.
            polled(0xa0, (SUSPENDED, RETURNED), (1_000, 2_000), 0),
            dropped(0xb0, SUSPENDED, 2_000),
        ],
    );
    assert_eq!(state(&aggregator, "m").requests, ByStatus { ok: 0, failed: 2, timeout: 0, cancelled: 0 });
}

#[test]
fn a_first_poll_where_an_open_future_was_forgets_the_old_one_under_no_status() {
    let mut aggregator = aggregator();
    feed(
        &mut aggregator,
        &[
            polled(0x70, (UNRESUMED, SUSPENDED), (1_000, 1_500), 0),
            polled(0x70, (UNRESUMED, RETURNED), (4_000, 5_000), 0),
        ],
    );
    // Its drop was not seen, nor whether it was ready first.
    assert_eq!(state(&aggregator, "m").requests, ByStatus { ok: 1, failed: 0, timeout: 0, cancelled: 0 });
    assert!(aggregator.metrics.anomalies.counted().contains(&(Anomaly::FutureReused, 1)));
}

#[test]
fn a_requests_cpu_time_is_its_threads_clock_from_start_to_end_and_the_rest_of_its_service_is_off_cpu() {
    let mut aggregator = aggregator();
    let Event::RequestEnded(elsewhere) = ended(0, 8, 0, 3_000) else { unreachable!() };
    let elsewhere = RequestEnded { header: Header { tid: 2, ..elsewhere.header }, ..elsewhere };
    feed(
        &mut aggregator,
        &[
            spawned("m", 1),
            submitted("m", 7, 100),
            started(7, 1, 300),
            ended(0, 7, 0, 1_000),
            submitted("m", 8, 1_100),
            started(8, 1, 1_200),
            Event::RequestEnded(elsewhere),
        ],
    );
    let nanos = |millis: Option<f64>| millis.map(|millis| (millis * 1e6).round() as u64);
    let timeline = aggregator.timeline(7, &WallClock::now()).expect("recently completed");
    // 700 ns of service, half of it on the CPU.
    assert_eq!((nanos(timeline.cpu_ms), nanos(timeline.offcpu_ms)), (Some(350), Some(350)));
    // Started on one thread and ended on another: the clocks are not comparable.
    let timeline = aggregator.timeline(8, &WallClock::now()).expect("recently completed");
    assert_eq!((timeline.cpu_ms, timeline.offcpu_ms), (None, None));
    assert_eq!(aggregator.cpu.serving_ns(), 350);
}

/// A run of work handed off to tokio's blocking pool (made at probe 10, run at probe 11) by a
/// poll of the request future at `future`, from `entered_ns` with `cpu_ns` of CPU.
fn handed_off(future: u64, entered_ns: u64, cpu_ns: u64) -> Event {
    Event::HandoffRan(HandoffRan {
        header: Header { tid: 2, ..header(EventKind::HandoffRan, 11, entered_ns + 2 * cpu_ns) },
        request_probe: 7,
        made_by: 10,
        ending: CallEnding::Returned as u8,
        _reserved: [0; 7],
        model: no_model(),
        request_id: 0,
        future,
        entered_ns,
        entered_cpu_ns: 1_000,
        cpu_ns: 1_000 + cpu_ns,
    })
}

#[test]
fn work_a_request_hands_off_counts_for_its_model_once_whether_it_ends_before_the_request_or_after() {
    let mut aggregator = aggregator();
    feed(
        &mut aggregator,
        &[
            polled(0x100, (UNRESUMED, SUSPENDED), (0, 100), 0),
            // Run on another thread while the request waits: counted with the request.
            handed_off(0x100, 120, 40),
            polled(0x100, (SUSPENDED, RETURNED), (200, 300), 0),
            // A run the request did not wait for, ending after it: counted for its model alone.
            handed_off(0x100, 250, 30),
            // Made in no request the agent knows: counted for no model.
            handed_off(0x900, 400, 20),
        ],
    );
    let model = &aggregator.models()[0];
    let seconds = |value: f64| (value * 1e9).round() as u64;
    // Two polls of 50 ns on the CPU, and the two runs.
    assert_eq!(seconds(model.metrics.cpu.seconds.get()), 50 + 50 + 40 + 30);
    assert_eq!(seconds(model.metrics.cpu.handed_off.via(Via::spawn_blocking).get()), 70);
    assert_eq!(aggregator.cpu.serving_ns(), 170);
    let timeline = aggregator.timeline(0x10, &WallClock::now()).expect("recently completed");
    assert_eq!(timeline.cpu_ms.map(|millis| (millis * 1e6).round() as u64), Some(170));
}

/// A CPU sample of thread `tid`, in the call of probe `probe` (with what its entry read), or
/// in none.
fn sampled(tid: u32, call: Option<(u32, ModelKey, u64, u64)>) -> CpuSampled {
    let (probe, model, request_id, future) = call.unwrap_or((NOT_IN_CALL, no_model(), 0, 0));
    CpuSampled {
        header: Header { tid, ..header(EventKind::CpuSampled, probe, 0) },
        model,
        request_id,
        future,
        ip: 0,
        sp: 0,
        bp: 0,
        stack_len: 0,
    }
}

#[test]
fn a_sample_is_labelled_with_the_model_of_the_request_its_thread_serves() {
    let mut aggregator = aggregator();
    feed(&mut aggregator, &[spawned("m", 1), submitted("m", 7, 100), started(7, 1, 300)]);
    let label = |aggregator: &mut Aggregator, sample| aggregator.label_sample(&sample);
    // Thread 1 started request 7 at an entry probe; thread 2 serves nothing.
    assert_eq!(label(&mut aggregator, sampled(1, None)).as_deref(), Some("m"));
    assert_eq!(label(&mut aggregator, sampled(2, None)), None);
    // In a call whose entry read its model.
    assert_eq!(label(&mut aggregator, sampled(2, Some((0, model("x"), 0, 0)))).as_deref(), Some("x"));
    // In a poll of a future followed since its first poll, which named its model.
    feed(&mut aggregator, &[polled(0x70, (UNRESUMED, SUSPENDED), (1_000, 1_500), 0)]);
    let in_poll = sampled(3, Some((7, no_model(), 0, 0x70)));
    assert_eq!(label(&mut aggregator, in_poll).as_deref(), Some("m"));
    // Once request 7 ended, its thread serves nothing.
    feed(&mut aggregator, &[ended(0, 7, 0, 2_000)]);
    assert_eq!(label(&mut aggregator, sampled(1, None)), None);
}
