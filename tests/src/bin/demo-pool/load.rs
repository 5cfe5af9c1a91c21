//! The built-in client: offers requests at a fixed rate and records how each one ended.

use std::{
    sync::{Arc, mpsc},
    thread,
    time::{Duration, Instant},
};

pub use pool_obs_tests::seeded::unit_interval;

use crate::{
    Options, clock,
    pool::Pool,
    summary::{Reply, Report},
};

pub fn run(pool: &Arc<Pool>, options: &Options, models: &[Vec<u8>], report: &Report) {
    let (pending, replies) = mpsc::channel::<(usize, u64, mpsc::Receiver<Reply>)>();
    let collector_models = models.to_vec();
    let collector_report = report.clone();
    let collector = thread::spawn(move || {
        for (model, request_id, reply) in replies {
            let reply = reply.recv().unwrap_or_else(|_| Reply::lost(Instant::now()));
            collector_report.record(&collector_models[model], request_id, &reply);
        }
    });

    let interval = Duration::from_secs_f64(1.0 / options.rate.max(0.001));
    let mut next = Instant::now();
    for request_id in 1.. {
        if options.requests != 0 && request_id > options.requests {
            break;
        }
        let model = pick(options.seed, request_id, models.len());
        let work_us = service_time(options.seed, request_id, options.work_us);
        let impatient = unit_interval(options.seed, request_id, 5) < options.impatient_rate;
        let deadline =
            if impatient { Duration::from_micros(1) } else { Duration::from_millis(options.timeout_ms) };
        clock::calling();
        let reply = pool.submit(&models[model], request_id, work_us, deadline);
        pending.send((model, request_id, reply)).expect("the collector outlives the load");
        next += interval;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
    }
    drop(pending);
    collector.join().expect("the collector does not panic");
}

fn pick(seed: u64, request_id: u64, models: usize) -> usize {
    (unit_interval(seed, request_id, 3) * models as f64) as usize % models
}

/// Exponentially distributed around the mean, capped at ten times it.
fn service_time(seed: u64, request_id: u64, mean_us: u64) -> u64 {
    let u = unit_interval(seed, request_id, 4).max(1e-9);
    ((-u.ln()).min(10.0) * mean_us as f64) as u64
}
