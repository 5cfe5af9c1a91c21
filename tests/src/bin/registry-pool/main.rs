//! `registry-pool`: a synchronous model pool written the way its users write one, built in
//! release with nothing to make probing easy. A registry loads models on first use and unloads
//! the least recently used; each loaded model has a queue and two worker threads. A worker
//! serves requests until its queue closes (the model was unloaded) or a request makes it
//! panic: the panic leaves `Worker::run`, the thread catches it and starts a new worker in its
//! place. The large models batch each request on rayon's pool (`par_iter`), as most model
//! servers compute on a thread pool other than the one that took the request. At the end it
//! prints what it counted: requests by outcome, loads, unloads, crashes, and the CPU time of
//! each model's rayon work, as each batch item measured its own thread's.

use rayon::prelude::*;
use std::{
    collections::BTreeMap,
    panic::{AssertUnwindSafe, catch_unwind},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use clap::Parser;
use pool_obs_tests::{
    ground_truth::{Lifecycle, Outcome, Summary, Tally, thread_cpu},
    processes::await_start_file,
    seeded::unit_interval,
};

#[derive(Parser)]
#[command(about = "A registry of models, each served by worker threads that may crash")]
struct Options {
    #[arg(long, value_delimiter = ',', default_value = "llama-7b,mistral-7b,bge-small,t5-large,phi-2")]
    models: Vec<String>,
    #[arg(long, default_value_t = 6000)]
    requests: u64,
    /// Models loaded at once: one more unloads the least recently used.
    #[arg(long, default_value_t = 3)]
    capacity: usize,
    #[arg(long, default_value_t = 0.01)]
    crash_rate: f64,
    #[arg(long, default_value_t = 0.05)]
    fail_rate: f64,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Models whose requests are batched on rayon.
    #[arg(long, value_delimiter = ',', default_value = "llama-7b,mistral-7b,t5-large")]
    batched: Vec<String>,
    #[arg(long)]
    start_file: Option<PathBuf>,
}

pub struct Job {
    pub id: u64,
    pub model: String,
    pub batched: bool,
    pub crashes: bool,
    pub fails: bool,
    pub reply: mpsc::Sender<Outcome>,
}

/// What the pool counts of itself.
#[derive(Default)]
struct Truth {
    tallies: BTreeMap<String, Tally>,
    lifecycles: BTreeMap<String, Lifecycle>,
    /// CPU time of each model's batch items, in nanoseconds.
    batch_cpu: BTreeMap<String, Arc<AtomicU64>>,
}

type Shared = Arc<Mutex<Truth>>;

pub struct Worker {
    pub id: u64,
    pub model: String,
    queue: Arc<Mutex<mpsc::Receiver<Job>>>,
    batch_cpu: Arc<AtomicU64>,
}

impl Worker {
    /// Serves the model's requests until its queue closes.
    pub fn run(self) {
        loop {
            let next = self.queue.lock().unwrap().recv();
            let Ok(job) = next else { return };
            let outcome = self.serve(&job);
            let _ = job.reply.send(outcome);
        }
    }

    fn serve(&self, job: &Job) -> Outcome {
        let state = if job.batched {
            (0..8u64)
                .into_par_iter()
                .map(|item| {
                    let started = thread_cpu();
                    let state = forward(job.id ^ item, self.id, 150_000);
                    self.batch_cpu.fetch_add((thread_cpu() - started).as_nanos() as u64, Ordering::Relaxed);
                    state
                })
                .reduce(|| 0, u64::wrapping_add)
        } else {
            forward(job.id, self.id, 100_000)
        };
        std::hint::black_box(state);
        if job.crashes {
            panic!("worker {} of {} lost its device on request {}", self.id, self.model, job.id);
        }
        if job.fails { Outcome::Failed } else { Outcome::Ok }
    }
}

/// A model's forward pass, as far as the CPU can tell.
fn forward(seed: u64, salt: u64, rounds: u64) -> u64 {
    let mut state = seed;
    for round in 0..rounds {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(round ^ salt);
    }
    state
}

/// A loaded model: its queue, and its worker threads.
struct Loaded {
    queue: mpsc::Sender<Job>,
    threads: Vec<thread::JoinHandle<()>>,
}

struct Registry {
    loaded: BTreeMap<String, (Loaded, Instant)>,
    capacity: usize,
    next_worker: Arc<AtomicU64>,
    truth: Shared,
}

impl Registry {
    fn queue_for(&mut self, model: &str) -> mpsc::Sender<Job> {
        if let Some((loaded, used)) = self.loaded.get_mut(model) {
            *used = Instant::now();
            return loaded.queue.clone();
        }
        if self.loaded.len() >= self.capacity {
            let oldest = self.loaded.iter().min_by_key(|(_, (_, used))| *used).map(|(name, _)| name.clone());
            if let Some((loaded, _)) = oldest.and_then(|name| self.loaded.remove(&name)) {
                unload(loaded);
            }
        }
        let loaded = self.load(model);
        let queue = loaded.queue.clone();
        self.loaded.insert(model.to_string(), (loaded, Instant::now()));
        queue
    }

    fn load(&self, model: &str) -> Loaded {
        let (queue, jobs) = mpsc::channel::<Job>();
        let jobs = Arc::new(Mutex::new(jobs));
        let batch_cpu = self.truth.lock().unwrap().batch_cpu.entry(model.to_string()).or_default().clone();
        let threads = (0..2)
            .map(|_| {
                let (jobs, model, next_worker, truth) =
                    (jobs.clone(), model.to_string(), self.next_worker.clone(), self.truth.clone());
                let batch_cpu = batch_cpu.clone();
                thread::spawn(move || {
                    loop {
                        let id = next_worker.fetch_add(1, Ordering::Relaxed);
                        lifecycle(&truth, &model, |lifecycle| lifecycle.spawns += 1);
                        let worker = Worker {
                            id,
                            model: model.clone(),
                            queue: jobs.clone(),
                            batch_cpu: batch_cpu.clone(),
                        };
                        match catch_unwind(AssertUnwindSafe(|| worker.run())) {
                            Ok(()) => {
                                lifecycle(&truth, &model, |lifecycle| lifecycle.evictions += 1);
                                return;
                            }
                            Err(_) => lifecycle(&truth, &model, |lifecycle| lifecycle.crashes += 1),
                        }
                    }
                })
            })
            .collect();
        Loaded { queue, threads }
    }
}

/// Closes the model's queue: its workers finish what is queued and leave.
fn unload(loaded: Loaded) {
    drop(loaded.queue);
    for thread in loaded.threads {
        let _ = thread.join();
    }
}

fn lifecycle(truth: &Shared, model: &str, change: impl FnOnce(&mut Lifecycle)) {
    change(truth.lock().unwrap().lifecycles.entry(model.to_string()).or_default());
}

fn main() {
    let options = Options::parse();
    // A crash is expected here: one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| eprintln!("registry-pool: {info}")));
    let truth: Shared = Arc::default();
    let mut registry = Registry {
        loaded: BTreeMap::new(),
        capacity: options.capacity,
        next_worker: Arc::new(AtomicU64::new(1)),
        truth: truth.clone(),
    };
    eprintln!("registry-pool: ready, pid {}", std::process::id());
    await_start_file(options.start_file.as_deref());
    // Requests in bursts of one model at a time, so that the registry loads and unloads.
    let mut pending = BTreeMap::new();
    for id in 0..options.requests {
        let burst = id / 40;
        let model = options.models[(unit_interval(options.seed, burst, 1) * options.models.len() as f64)
            as usize
            % options.models.len()]
        .clone();
        let (reply, outcome) = mpsc::channel();
        let job = Job {
            id,
            model: model.clone(),
            batched: options.batched.contains(&model),
            crashes: unit_interval(options.seed, id, 2) < options.crash_rate,
            fails: unit_interval(options.seed, id, 3) < options.fail_rate,
            reply,
        };
        let started = Instant::now();
        registry.queue_for(&model).send(job).expect("a loaded model's queue");
        pending.insert(id, (model, started, outcome));
        if pending.len() >= 8 {
            let (_, (model, started, outcome)) = pending.pop_first().expect("a pending request");
            settle(&truth, &model, started, &outcome);
        }
    }
    for (model, started, outcome) in pending.into_values() {
        settle(&truth, &model, started, &outcome);
    }
    for (_, (loaded, _)) in std::mem::take(&mut registry.loaded) {
        unload(loaded);
    }
    let mut truth = truth.lock().unwrap();
    let (lifecycles, batch_cpu) = (truth.lifecycles.clone(), truth.batch_cpu.clone());
    let summaries = truth
        .tallies
        .iter_mut()
        .map(|(model, tally)| {
            let mut summary = tally.summary(lifecycles.get(model).copied().unwrap_or_default());
            let batched_ns = batch_cpu.get(model).map_or(0, |cpu| cpu.load(Ordering::Relaxed));
            summary.cpu_seconds = batched_ns as f64 / 1e9;
            (model.clone(), summary)
        })
        .collect();
    Summary::print(summaries);
}

/// A request's answer: its outcome, or failed when its worker crashed serving it.
fn settle(truth: &Shared, model: &str, started: Instant, outcome: &mpsc::Receiver<Outcome>) {
    let outcome = outcome.recv_timeout(Duration::from_secs(10)).unwrap_or(Outcome::Failed);
    let latency = started.elapsed().as_micros() as u64;
    truth.lock().unwrap().tallies.entry(model.to_string()).or_default().record(outcome, latency);
}
