//! `kv-pool`: a reference pool shaped unlike `demo-pool`. Its functions take their data in
//! structs passed by reference — the model key is a `String` inside them — and a request's
//! result comes back as a `Result` through the hidden result pointer. Each model has one worker
//! thread, recycled after a number of requests. No instrumentation: its summary is the ground
//! truth the tests compare with.

use std::{
    collections::BTreeMap,
    hint::black_box,
    path::PathBuf,
    sync::{Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use clap::Parser;
use pool_obs_tests::{
    ground_truth::{Lifecycle, ModelSummary, Outcome, Summary, Tally},
    seeded::unit_interval,
};

#[derive(Parser)]
#[command(about = "A reference pool whose functions take structs and return Results")]
struct Options {
    /// Model names, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "embed-small,embed-large")]
    models: Vec<String>,
    #[arg(long, default_value_t = 3000)]
    requests: u64,
    /// Requests per second.
    #[arg(long, default_value_t = 3000.0)]
    rate: f64,
    /// Probability that a request fails.
    #[arg(long, default_value_t = 0.05)]
    fail_rate: f64,
    /// Probability that a request arrives with its deadline already past.
    #[arg(long, default_value_t = 0.02)]
    expire_rate: f64,
    /// A worker is retired and replaced after serving this many requests.
    #[arg(long, default_value_t = 250)]
    recycle_after: u64,
    #[arg(long, default_value_t = 4)]
    worker_memory_mb: u64,
    /// Wait until this file exists before sending load.
    #[arg(long)]
    start_file: Option<PathBuf>,
    #[arg(long, default_value_t = 3)]
    seed: u64,
}

pub struct WorkerSpec {
    pub model: String,
    pub id: u64,
    pub memory_mb: u64,
}

pub struct Job {
    pub model: String,
    pub id: u64,
    pub deadline: Instant,
    pub submitted: Instant,
}

pub struct Reply {
    pub tokens: u64,
    pub worker: u64,
}

pub struct Worker {
    pub spec: WorkerSpec,
    memory: Vec<u8>,
    served: u64,
    fail_rate: f64,
    seed: u64,
}

/// Starts and retires workers, and keeps the record of it.
struct Registry {
    next_worker: Mutex<u64>,
    lifecycle: Mutex<BTreeMap<String, Lifecycle>>,
    fail_rate: f64,
    seed: u64,
}

impl Registry {
    #[inline(never)]
    pub fn start_worker(&self, spec: &WorkerSpec) -> Box<Worker> {
        let mut memory = vec![0u8; (spec.memory_mb << 20) as usize];
        memory.iter_mut().step_by(4096).for_each(|byte| *byte = 1);
        self.lifecycle.lock().unwrap().entry(spec.model.clone()).or_default().spawns += 1;
        let spec = WorkerSpec { model: spec.model.clone(), id: spec.id, memory_mb: spec.memory_mb };
        Box::new(Worker { spec, memory, served: 0, fail_rate: self.fail_rate, seed: self.seed })
    }

    #[inline(never)]
    pub fn retire(&self, spec: &WorkerSpec) {
        self.lifecycle.lock().unwrap().entry(spec.model.clone()).or_default().evictions += 1;
    }

    fn next_spec(&self, model: &str, memory_mb: u64) -> WorkerSpec {
        let mut next = self.next_worker.lock().unwrap();
        *next += 1;
        WorkerSpec { model: model.to_string(), id: *next, memory_mb }
    }
}

impl Worker {
    /// Serves a job. It cannot panic: no indexing, no unwrapping, wrapping arithmetic.
    #[inline(never)]
    pub fn execute(&self, job: &Job) -> Result<Reply, String> {
        let roll = unit_interval(self.seed, job.id, 1);
        let mut tokens = job.id;
        for round in 0..200u64 {
            tokens = tokens.wrapping_mul(6364136223846793005).wrapping_add(round);
        }
        black_box(&self.memory);
        if roll < self.fail_rate {
            return Err(format!("{} could not embed job {}", job.model, job.id));
        }
        Ok(Reply { tokens: tokens % 512, worker: self.spec.id })
    }

    /// Drops a job whose deadline passed before the worker got to it.
    #[inline(never)]
    pub fn expire(&self, job: &Job) -> Duration {
        black_box(self.spec.id);
        job.submitted.saturating_duration_since(job.deadline)
    }
}

fn main() {
    let options = Options::parse();
    let registry = Registry {
        next_worker: Mutex::new(0),
        lifecycle: Mutex::default(),
        fail_rate: options.fail_rate,
        seed: options.seed,
    };
    eprintln!("kv-pool: ready, pid {}", std::process::id());
    pool_obs_tests::processes::await_start_file(options.start_file.as_deref());
    let tallies = thread::scope(|scope| {
        let mut queues = Vec::new();
        let mut workers = Vec::new();
        for model in &options.models {
            let (queue, jobs) = mpsc::channel::<Job>();
            queues.push(queue);
            let registry = &registry;
            let options = &options;
            workers.push(scope.spawn(move || serve_model(registry, options, model, jobs)));
        }
        offer_load(&options, &queues);
        drop(queues);
        workers.into_iter().map(|worker| worker.join().expect("a model thread")).collect::<Vec<_>>()
    });
    let lifecycle = registry.lifecycle.lock().unwrap();
    let models: BTreeMap<String, ModelSummary> = options
        .models
        .iter()
        .zip(tallies)
        .map(|(model, mut tally)| {
            (model.clone(), tally.summary(lifecycle.get(model).copied().unwrap_or_default()))
        })
        .collect();
    Summary::print(models);
}

/// One model's thread: its worker serves the model's jobs and is recycled along the way.
fn serve_model(registry: &Registry, options: &Options, model: &str, jobs: mpsc::Receiver<Job>) -> Tally {
    let mut tally = Tally::default();
    let mut worker: Option<Box<Worker>> = None;
    for job in jobs {
        if let Some(tired) = worker.take_if(|worker| worker.served >= options.recycle_after) {
            registry.retire(&tired.spec);
        }
        let current = worker.get_or_insert_with(|| {
            registry.start_worker(&registry.next_spec(model, options.worker_memory_mb))
        });
        let outcome = if Instant::now() > job.deadline {
            current.expire(&job);
            Outcome::Timeout
        } else {
            current.served += 1;
            match current.execute(&job) {
                Ok(_) => Outcome::Ok,
                Err(_) => Outcome::Failed,
            }
        };
        tally.record(outcome, job.submitted.elapsed().as_micros() as u64);
    }
    if let Some(last) = worker {
        registry.retire(&last.spec);
    }
    tally
}

fn offer_load(options: &Options, queues: &[mpsc::Sender<Job>]) {
    let interval = Duration::from_secs_f64(1.0 / options.rate.max(0.001));
    let mut next = Instant::now();
    for id in 1..=options.requests {
        let index = (unit_interval(options.seed, id, 2) * queues.len() as f64) as usize % queues.len();
        let now = Instant::now();
        let expired = unit_interval(options.seed, id, 3) < options.expire_rate;
        let deadline = if expired { now } else { now + Duration::from_secs(5) };
        let job = Job { model: options.models[index].clone(), id, deadline, submitted: now };
        queues[index].send(job).expect("model threads outlive the load");
        next += interval;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
    }
}
