//! `job-pool`: a pool written the way its users write one, and built in release with nothing
//! to make probing easy. Its lifecycle and request functions are small, so the optimiser
//! inlines them into their callers and none has a symbol of its own: only a manifest in the
//! pool's own terms, compiled from the debug info, can probe it. A request's result is a
//! `Result<String, JobError>`, the model runs behind a `Result<String, String>`, and the reply
//! goes back to the client over the job's channel. What the client receives is the ground
//! truth the tests compare with; the pool logs each result, by reference, as it goes.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    hint::black_box,
    path::PathBuf,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use clap::Parser;
use pool_obs_tests::{
    ground_truth::{Lifecycle, Outcome, Summary, Tally},
    processes::await_start_file,
    seeded::unit_interval,
};

#[derive(Parser)]
#[command(about = "A pool whose lifecycle and request functions are all inlined")]
struct Options {
    #[arg(long, value_delimiter = ',', default_value = "llama-7b,mistral-7b,bge-small")]
    models: Vec<String>,
    #[arg(long, default_value_t = 2500)]
    requests: u64,
    /// Requests per second.
    #[arg(long, default_value_t = 250.0)]
    rate: f64,
    /// A model's worker is replaced after serving this many requests.
    #[arg(long, default_value_t = 150)]
    recycle_after: u64,
    #[arg(long, default_value_t = 0.05)]
    fail_rate: f64,
    /// Probability that a request's deadline is already past when a worker takes it.
    #[arg(long, default_value_t = 0.03)]
    expire_rate: f64,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Wait for this file to exist before starting the load.
    #[arg(long)]
    start_file: Option<PathBuf>,
}

/// What a worker is started from.
pub struct WorkerSpec {
    pub model: String,
    pub id: u64,
    pub mem_bytes: u64,
}

pub struct Worker {
    /// Shared with the pool's bookkeeping.
    pub spec: Arc<WorkerSpec>,
    weights: Vec<u8>,
    served: u64,
}

pub struct Job {
    pub id: u64,
    pub model: String,
    pub prompt: Vec<u32>,
    pub deadline: Instant,
    submitted: Instant,
    fails: bool,
    reply: mpsc::Sender<Reply>,
}

/// What the client gets back.
pub struct Reply {
    pub model: String,
    /// From the job's submission to its reply, measured by the pool as it replies.
    pub latency: Duration,
    pub result: Result<String, JobError>,
}

#[derive(Debug)]
pub enum JobError {
    Timeout { waited: Duration },
    Model(String),
}

/// Worker ids, unique across the pool's threads.
static NEXT_WORKER: AtomicU64 = AtomicU64::new(1);

/// The models' workers, by model key.
#[derive(Default)]
pub struct Registry {
    workers: HashMap<String, Worker>,
}

impl Registry {
    pub fn spawn(&mut self, spec: WorkerSpec) {
        let weights = vec![spec.id as u8; spec.mem_bytes as usize];
        self.workers.insert(spec.model.clone(), Worker { spec: Arc::new(spec), weights, served: 0 });
    }

    pub fn evict(&mut self, worker: Worker) {
        black_box(&worker.weights);
        drop(worker);
    }

    /// The model's worker, started if it has none.
    fn worker(&mut self, model: &str, lifecycle: &mut Lifecycle) -> &mut Worker {
        if !self.workers.contains_key(model) {
            let id = NEXT_WORKER.fetch_add(1, Ordering::Relaxed);
            let mem_bytes = (4 + model.len() as u64) << 20;
            self.spawn(WorkerSpec { model: model.to_string(), id, mem_bytes });
            lifecycle.spawns += 1;
        }
        self.workers.get_mut(model).expect("just spawned")
    }
}

/// The model itself: a few passes over the prompt and the weights, then the wait for the
/// accelerator, longer for a longer prompt.
pub fn infer(weights: &[u8], prompt: &[u32], fails: bool) -> Result<String, String> {
    let mut state = 0u64;
    for pass in 0..40u64 {
        for token in prompt {
            let weight = weights[(*token as usize * 4099 + pass as usize) % weights.len()];
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(u64::from(weight) ^ pass);
        }
    }
    thread::sleep(Duration::from_micros(100 * prompt.len() as u64));
    if fails { Err(format!("model diverged at state {state:x}")) } else { Ok(format!("{state:016x}")) }
}

pub fn serve(worker: &mut Worker, job: &Job) -> Result<String, JobError> {
    let now = Instant::now();
    if now > job.deadline {
        return Err(JobError::Timeout { waited: now - job.submitted });
    }
    worker.served += 1;
    infer(&worker.weights, &job.prompt, job.fails).map_err(JobError::Model)
}

/// Sends the result to the client. `served_by` is for debug builds' checks only.
pub fn finish(job: Job, result: Result<String, JobError>, served_by: u64) {
    let latency = job.submitted.elapsed();
    debug_assert!(served_by > 0 || result.is_err(), "a result comes from a worker");
    log_result(&job, &result);
    let _ = job.reply.send(Reply { model: job.model, latency, result });
}

/// The pool's own log: failures only, and quietly.
pub fn log_result(job: &Job, result: &Result<String, JobError>) {
    if let Err(error) = result {
        black_box((job.id, error));
    }
}

/// Jobs waiting, by model, and the load's end.
#[derive(Default)]
struct Queues {
    jobs: BTreeMap<String, VecDeque<Job>>,
    closed: bool,
}

struct Pool {
    queues: Mutex<Queues>,
    ready: Condvar,
    lifecycles: Mutex<BTreeMap<String, Lifecycle>>,
}

impl Pool {
    pub fn submit(&self, job: Job) {
        let mut queues = self.queues.lock().expect("the queues");
        queues.jobs.entry(job.model.clone()).or_default().push_back(job);
        self.ready.notify_one();
    }

    fn next_job(&self) -> Option<Job> {
        let mut queues = self.queues.lock().expect("the queues");
        loop {
            if let Some(job) = queues.jobs.values_mut().find_map(VecDeque::pop_front) {
                return Some(job);
            }
            if queues.closed {
                return None;
            }
            queues = self.ready.wait(queues).expect("the queues");
        }
    }

    /// One worker thread: it serves every model, keeping a worker per model and replacing it
    /// after `recycle_after` requests.
    fn run(&self, recycle_after: u64) {
        let mut registry = Registry::default();
        let mut lifecycles: BTreeMap<String, Lifecycle> = BTreeMap::new();
        while let Some(job) = self.next_job() {
            let lifecycle = lifecycles.entry(job.model.clone()).or_default();
            let worker = registry.worker(&job.model, lifecycle);
            let result = serve(worker, &job);
            let retire = worker.served >= recycle_after;
            let model = job.model.clone();
            let served_by = worker.spec.id;
            finish(job, result, served_by);
            if retire && let Some(worker) = registry.workers.remove(&model) {
                registry.evict(worker);
                lifecycle.evictions += 1;
            }
        }
        for (model, worker) in registry.workers.drain() {
            registry_drop(worker);
            lifecycles.entry(model).or_default();
        }
        let mut totals = self.lifecycles.lock().expect("the lifecycles");
        for (model, lifecycle) in lifecycles {
            let total = totals.entry(model).or_default();
            total.spawns += lifecycle.spawns;
            total.evictions += lifecycle.evictions;
        }
    }
}

/// Workers still running when the pool stops are not evictions.
fn registry_drop(worker: Worker) {
    black_box(worker.spec.id);
}

fn main() {
    let options = Options::parse();
    let pool =
        Arc::new(Pool { queues: Mutex::default(), ready: Condvar::new(), lifecycles: Mutex::default() });
    let (replies, received) = mpsc::channel::<Reply>();
    let client = thread::spawn(move || {
        let mut tallies: BTreeMap<String, Tally> = BTreeMap::new();
        for reply in received {
            let outcome = match reply.result {
                Ok(_) => Outcome::Ok,
                Err(JobError::Timeout { .. }) => Outcome::Timeout,
                Err(JobError::Model(_)) => Outcome::Failed,
            };
            tallies.entry(reply.model).or_default().record(outcome, reply.latency.as_micros() as u64);
        }
        tallies
    });
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let pool = pool.clone();
            let recycle_after = options.recycle_after;
            thread::spawn(move || pool.run(recycle_after))
        })
        .collect();
    eprintln!("job-pool: ready, pid {}", std::process::id());
    await_start_file(options.start_file.as_deref());
    let started = Instant::now();
    for id in 0..options.requests {
        let due = started + Duration::from_secs_f64(id as f64 / options.rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        let model = options.models[(id as usize * 7 + id as usize / 3) % options.models.len()].clone();
        let expired = unit_interval(options.seed, id, 1) < options.expire_rate;
        let now = Instant::now();
        let deadline = if expired { now } else { now + Duration::from_secs(60) };
        let prompt = (0..16 + id % 48).map(|token| (token * 31 + id) as u32).collect();
        let fails = unit_interval(options.seed, id, 2) < options.fail_rate;
        pool.submit(Job { id, model, prompt, deadline, submitted: now, fails, reply: replies.clone() });
    }
    pool.queues.lock().expect("the queues").closed = true;
    pool.ready.notify_all();
    drop(replies);
    for thread in threads {
        thread.join().expect("a worker thread");
    }
    let mut tallies = client.join().expect("the client");
    let lifecycles = pool.lifecycles.lock().expect("the lifecycles");
    let summaries = tallies.iter_mut().map(|(model, tally)| {
        let lifecycle = lifecycles.get(model).copied().unwrap_or_default();
        (model.clone(), tally.summary(lifecycle))
    });
    Summary::print(summaries.collect());
}
