//! `closure-pool`: a thread pool of boxed closures, as `threadpool` and `rayon::spawn` users
//! write one: each request is a `move` closure that captures its model (a `Cow<str>`, borrowed
//! from the configuration or owned) and its id, queued as a
//! `Box<dyn FnOnce() + Send>` and run by whichever worker takes it. Built in release as
//! written: the closure is inlined into the shim that calls it, and its captures are what a
//! manifest names. What the client receives is the ground truth the tests compare with.

use std::{
    borrow::Cow,
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
    processes::await_start_file,
    seeded::unit_interval,
};

#[derive(Parser)]
#[command(about = "A pool of boxed closures, each capturing its request")]
struct Options {
    #[arg(long, value_delimiter = ',', default_value = "whisper-small,clip-vit")]
    models: Vec<String>,
    #[arg(long, default_value_t = 2000)]
    requests: u64,
    /// Requests per second.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    #[arg(long, default_value_t = 0.1)]
    fail_rate: f64,
    #[arg(long, default_value_t = 3)]
    workers: usize,
    #[arg(long, default_value_t = 11)]
    seed: u64,
    /// Wait for this file to exist before starting the load.
    #[arg(long)]
    start_file: Option<PathBuf>,
}

type Task = Box<dyn FnOnce() + Send>;

/// A fixed set of threads running queued closures.
pub struct ThreadPool {
    queue: mpsc::Sender<Task>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl ThreadPool {
    pub fn new(size: usize) -> Self {
        let (queue, tasks) = mpsc::channel::<Task>();
        let tasks = Arc::new(Mutex::new(tasks));
        let threads = (0..size)
            .map(|_| {
                let tasks = tasks.clone();
                thread::spawn(move || {
                    loop {
                        let task = tasks.lock().expect("the queue").recv();
                        let Ok(task) = task else { break };
                        task();
                    }
                })
            })
            .collect();
        Self { queue, threads }
    }

    pub fn execute(&self, task: impl FnOnce() + Send + 'static) {
        self.queue.send(Box::new(task)).expect("the workers run");
    }

    pub fn join(self) {
        drop(self.queue);
        for thread in self.threads {
            thread.join().expect("a worker");
        }
    }
}

#[derive(Debug)]
pub enum ModelError {
    Overloaded,
    Diverged(u64),
}

/// What the client gets back.
pub struct Reply {
    pub model: String,
    pub latency: Duration,
    pub result: Result<u64, ModelError>,
}

pub fn run_model(model: &str, id: u64, fails: bool) -> Result<u64, ModelError> {
    let mut state = id;
    for round in 0..2000u64 {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(round ^ model.len() as u64);
    }
    match (fails, state % 2) {
        (true, 0) => Err(ModelError::Overloaded),
        (true, _) => Err(ModelError::Diverged(state)),
        (false, _) => Ok(black_box(state)),
    }
}

/// Hands a request's result back to its client.
pub fn respond(
    replies: &mpsc::Sender<Reply>,
    model: Cow<'static, str>,
    id: u64,
    submitted: Instant,
    result: Result<u64, ModelError>,
) {
    let latency = submitted.elapsed();
    black_box(id);
    let _ = replies.send(Reply { model: model.into_owned(), latency, result });
}

fn main() {
    let options = Options::parse();
    // The configured models' names live as long as the pool.
    let models: Vec<&'static str> =
        options.models.iter().map(|model| &*Box::leak(model.clone().into_boxed_str())).collect();
    let pool = ThreadPool::new(options.workers);
    let (replies, received) = mpsc::channel::<Reply>();
    let client = thread::spawn(move || {
        let mut tallies: BTreeMap<String, Tally> = BTreeMap::new();
        for reply in received {
            let outcome = if reply.result.is_ok() { Outcome::Ok } else { Outcome::Failed };
            tallies.entry(reply.model).or_default().record(outcome, reply.latency.as_micros() as u64);
        }
        tallies
    });
    eprintln!("closure-pool: ready, pid {}", std::process::id());
    await_start_file(options.start_file.as_deref());
    let started = Instant::now();
    for id in 0..options.requests {
        let due = started + Duration::from_secs_f64(id as f64 / options.rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        // A request names its model by the configured name, or (one in four) by its own copy.
        let name = models[id as usize % models.len()];
        let model: Cow<'static, str> =
            if id % 4 == 0 { Cow::Owned(name.to_string()) } else { Cow::Borrowed(name) };
        let fails = unit_interval(options.seed, id, 1) < options.fail_rate;
        let replies = replies.clone();
        let submitted = Instant::now();
        pool.execute(move || {
            let result = run_model(&model, id, fails);
            respond(&replies, model, id, submitted, result);
        });
    }
    drop(replies);
    pool.join();
    let mut tallies = client.join().expect("the client");
    let summaries =
        tallies.iter_mut().map(|(model, tally)| (model.clone(), tally.summary(Lifecycle::default())));
    Summary::print(summaries.collect());
}
