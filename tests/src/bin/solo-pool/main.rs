//! `solo-pool`: a reference pool with one model, so no function takes a key. A request is one
//! call of `handle`: no request id, timed from entry to return on its thread, its verdict a
//! plain enum returned in a register. Shards (its workers) declare their memory in KiB and are
//! recycled as the load goes on. No instrumentation: its summary is the ground truth.

use std::{
    collections::BTreeMap,
    hint::black_box,
    path::PathBuf,
    sync::{Arc, Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use clap::Parser;
use pool_obs_tests::{
    ground_truth::{Lifecycle, Outcome, Summary, Tally},
    seeded::unit_interval,
};

/// The one model, as the summary names it.
const MODEL: &str = "solo";

#[derive(Parser)]
#[command(about = "A reference pool with a single model and no keys")]
struct Options {
    #[arg(long, default_value_t = 3000)]
    requests: u64,
    /// Requests per second.
    #[arg(long, default_value_t = 3000.0)]
    rate: f64,
    #[arg(long, default_value_t = 3)]
    shards: u64,
    /// A shard is shrunk away and a new one grown after this many requests in all.
    #[arg(long, default_value_t = 400)]
    churn_every: u64,
    #[arg(long, default_value_t = 2048)]
    shard_memory_kib: u64,
    #[arg(long, default_value_t = 0.05)]
    reject_rate: f64,
    #[arg(long, default_value_t = 0.02)]
    expire_rate: f64,
    /// Wait until this file exists before sending load.
    #[arg(long)]
    start_file: Option<PathBuf>,
    #[arg(long, default_value_t = 5)]
    seed: u64,
}

/// How a call of `handle` ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Served,
    Rejected,
    Expired,
}

struct Request {
    id: u64,
    payload: Vec<u8>,
    deadline: Instant,
    submitted: Instant,
}

pub struct Pool {
    reject_rate: f64,
    seed: u64,
    shards: Mutex<BTreeMap<u64, mpsc::Sender<Option<Request>>>>,
    lifecycle: Mutex<Lifecycle>,
}

impl Pool {
    /// Adds a shard holding `memory_kib` of touched memory, serving from its own queue.
    #[inline(never)]
    pub fn grow(
        self: &Arc<Self>,
        shard_id: u64,
        memory_kib: u64,
        done: &mpsc::Sender<(Verdict, u64)>,
    ) -> thread::JoinHandle<()> {
        let (queue, requests) = mpsc::channel::<Option<Request>>();
        self.shards.lock().unwrap().insert(shard_id, queue);
        self.lifecycle.lock().unwrap().spawns += 1;
        let (pool, done) = (self.clone(), done.clone());
        thread::spawn(move || {
            let mut memory = vec![0u8; (memory_kib << 10) as usize];
            memory.iter_mut().step_by(4096).for_each(|byte| *byte = 1);
            while let Ok(Some(request)) = requests.recv() {
                let verdict = pool.handle(&request.payload, request.id, request.deadline);
                let _ = done.send((verdict, request.submitted.elapsed().as_micros() as u64));
            }
            black_box(memory);
        })
    }

    /// Removes a shard: it finishes what it queued, then exits and frees its memory.
    #[inline(never)]
    pub fn shrink(&self, shard_id: u64) {
        if let Some(queue) = self.shards.lock().unwrap().remove(&shard_id) {
            let _ = queue.send(None);
            self.lifecycle.lock().unwrap().evictions += 1;
        }
    }

    /// Answers one request. It cannot panic: no indexing, no unwrapping, wrapping arithmetic.
    #[inline(never)]
    pub fn handle(&self, payload: &[u8], nonce: u64, deadline: Instant) -> Verdict {
        if Instant::now() > deadline {
            return Verdict::Expired;
        }
        let checksum =
            payload.iter().fold(nonce, |sum, byte| sum.wrapping_mul(31).wrapping_add(u64::from(*byte)));
        black_box(checksum);
        if unit_interval(self.seed, nonce, 1) < self.reject_rate {
            Verdict::Rejected
        } else {
            Verdict::Served
        }
    }

    fn send(&self, shard_id: u64, request: Request) {
        if let Some(queue) = self.shards.lock().unwrap().get(&shard_id) {
            let _ = queue.send(Some(request));
        }
    }
}

fn main() {
    let options = Options::parse();
    let pool = Arc::new(Pool {
        reject_rate: options.reject_rate,
        seed: options.seed,
        shards: Mutex::default(),
        lifecycle: Mutex::default(),
    });
    eprintln!("solo-pool: ready, pid {}", std::process::id());
    pool_obs_tests::processes::await_start_file(options.start_file.as_deref());
    let (done, verdicts) = mpsc::channel();
    let mut threads = Vec::new();
    let mut live: Vec<u64> = (1..=options.shards).collect();
    for shard_id in &live {
        threads.push(pool.grow(*shard_id, options.shard_memory_kib, &done));
    }
    let interval = Duration::from_secs_f64(1.0 / options.rate.max(0.001));
    let mut next = Instant::now();
    for id in 1..=options.requests {
        if id % options.churn_every.max(1) == 0 {
            let retired = live.remove(0);
            pool.shrink(retired);
            let grown = live.last().map_or(1, |last| last + 1);
            threads.push(pool.grow(grown, options.shard_memory_kib, &done));
            live.push(grown);
        }
        let now = Instant::now();
        let expired = unit_interval(options.seed, id, 2) < options.expire_rate;
        let deadline = if expired { now } else { now + Duration::from_secs(5) };
        let payload = id.to_le_bytes().repeat(8);
        pool.send(live[id as usize % live.len()], Request { id, payload, deadline, submitted: now });
        next += interval;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
    }
    for shard_id in live {
        pool.shrink(shard_id);
    }
    drop(done);
    let mut tally = Tally::default();
    for (verdict, latency_us) in verdicts {
        let outcome = match verdict {
            Verdict::Served => Outcome::Ok,
            Verdict::Rejected => Outcome::Failed,
            Verdict::Expired => Outcome::Timeout,
        };
        tally.record(outcome, latency_us);
    }
    threads.into_iter().for_each(|thread| thread.join().expect("a shard thread"));
    let lifecycle = *pool.lifecycle.lock().unwrap();
    Summary::print(BTreeMap::from([(MODEL.to_string(), tally.summary(lifecycle))]));
}
