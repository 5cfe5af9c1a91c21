//! `cpu-pool`: a pool whose two models cost different CPU. A `dense` request runs its layers
//! for three times the CPU of a `sparse` request's lookups, and both then wait the same time
//! off the CPU (for a downstream store, here a sleep). Two worker threads take requests of
//! either model from one queue, so a thread's CPU belongs to the request it serves, not to the
//! thread. Built in release as written. Each worker measures its own thread's CPU time
//! (`CLOCK_THREAD_CPUTIME_ID`) and wall time around every request: the summary's `cpu_seconds`
//! and `offcpu_seconds` are the ground truth the tests compare with.

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
    ground_truth::{Lifecycle, ModelSummary, Outcome, Summary, Tally, thread_cpu},
    processes::await_start_file,
};

#[derive(Parser)]
#[command(about = "A pool whose models cost different CPU per request")]
struct Options {
    /// Requests of each model.
    #[arg(long, default_value_t = 300)]
    requests: u64,
    /// Rounds of work in a `sparse` request; a `dense` one does three times as many.
    #[arg(long, default_value_t = 40)]
    rounds: u64,
    /// How long every request waits off the CPU, in milliseconds.
    #[arg(long, default_value_t = 4)]
    wait_ms: u64,
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Wait for this file to exist before starting the load.
    #[arg(long)]
    start_file: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Model {
    Dense,
    Sparse,
}

impl Model {
    fn key(self) -> &'static str {
        match self {
            Model::Dense => "dense",
            Model::Sparse => "sparse",
        }
    }
}

pub struct Job {
    pub id: u64,
    pub model: String,
    pub input: Vec<f32>,
}

#[derive(Debug)]
pub enum ServeError {
    Unknown(String),
}

/// What a worker measured of one request: its thread's CPU time and its wall time.
struct Measured {
    id: u64,
    model: String,
    cpu: Duration,
    wall: Duration,
}

/// The dense model's forward pass: every weight against every input, `rounds` times.
pub fn dense_forward(weights: &[f32], input: &[f32], rounds: u64) -> f32 {
    let mut activation = 0.0f32;
    for round in 0..rounds {
        let mut sum = 0.0f32;
        for (weight, x) in weights.iter().zip(input.iter().cycle()) {
            sum = (sum + weight * x).sin();
        }
        activation += sum * round as f32;
    }
    activation
}

/// The sparse model's embedding lookups: 4096 rows at strided places, `rounds` times.
pub fn sparse_lookup(table: &[f32], input: &[f32], rounds: u64) -> f32 {
    let mut score = 0.0f32;
    for round in 0..rounds {
        for (index, x) in (0..4096).zip(input.iter().cycle()) {
            let row = (index * 7919 + round as usize * 31) % table.len();
            score = (score + table[row] * x).cos();
        }
    }
    score
}

pub struct Weights {
    dense: Vec<f32>,
    sparse: Vec<f32>,
    rounds: u64,
    wait: Duration,
}

/// Serves one request: the model's CPU work, then the wait for the downstream store.
pub fn serve(weights: &Weights, job: &Job) -> Result<f32, ServeError> {
    let value = match job.model.as_str() {
        "dense" => dense_forward(&weights.dense, &job.input, weights.rounds * 3),
        "sparse" => sparse_lookup(&weights.sparse, &job.input, weights.rounds),
        other => return Err(ServeError::Unknown(other.to_string())),
    };
    thread::sleep(weights.wait);
    Ok(value)
}

/// Hands the result back to the client.
pub fn finish(job: Job, result: Result<f32, ServeError>, replies: &mpsc::Sender<Reply>) {
    let outcome = match result {
        Ok(value) => {
            black_box(value);
            Outcome::Ok
        }
        Err(_) => Outcome::Failed,
    };
    let _ = replies.send(Reply { id: job.id, outcome });
}

/// What the client gets back.
pub struct Reply {
    pub id: u64,
    pub outcome: Outcome,
}

fn next_job(jobs: &Mutex<mpsc::Receiver<Job>>) -> Option<Job> {
    jobs.lock().expect("the queue").recv().ok()
}

fn worker(
    weights: Arc<Weights>,
    jobs: Arc<Mutex<mpsc::Receiver<Job>>>,
    replies: mpsc::Sender<Reply>,
    measured: mpsc::Sender<Measured>,
) {
    while let Some(job) = next_job(&jobs) {
        let (cpu_before, wall_before) = (thread_cpu(), Instant::now());
        let result = serve(&weights, &job);
        let (cpu, wall) = (thread_cpu() - cpu_before, wall_before.elapsed());
        let (id, model) = (job.id, job.model.clone());
        finish(job, result, &replies);
        let _ = measured.send(Measured { id, model, cpu, wall });
    }
}

fn main() {
    let options = Options::parse();
    let weights = Arc::new(Weights {
        dense: (0..4096).map(|i| (i as f32 * 0.001).sin()).collect(),
        sparse: (0..65_536).map(|i| (i as f32 * 0.002).cos()).collect(),
        rounds: options.rounds,
        wait: Duration::from_millis(options.wait_ms),
    });
    eprintln!("cpu-pool: ready, pid {}", std::process::id());
    await_start_file(options.start_file.as_deref());
    let (submit, jobs) = mpsc::channel();
    let jobs = Arc::new(Mutex::new(jobs));
    let (measured, results) = mpsc::channel();
    let (replies, answered) = mpsc::channel();
    let workers: Vec<_> = (0..options.workers)
        .map(|_| {
            let (weights, jobs) = (weights.clone(), jobs.clone());
            let (replies, measured) = (replies.clone(), measured.clone());
            thread::spawn(move || worker(weights, jobs, replies, measured))
        })
        .collect();
    drop((measured, replies));
    for id in 0..options.requests * 2 {
        let model = if id % 2 == 0 { Model::Dense } else { Model::Sparse };
        let input = (0..256).map(|i| ((id + i) % 17) as f32 / 17.0).collect();
        let _ = submit.send(Job { id, model: model.key().to_string(), input });
    }
    drop(submit);
    let mut tallies: BTreeMap<String, (Tally, Duration, Duration)> = BTreeMap::new();
    let outcomes: BTreeMap<u64, Outcome> =
        answered.into_iter().map(|reply| (reply.id, reply.outcome)).collect();
    for result in results {
        let (tally, cpu, off_cpu) = tallies.entry(result.model).or_default();
        tally.record(outcomes[&result.id], result.wall.as_micros() as u64);
        *cpu += result.cpu;
        *off_cpu += result.wall.saturating_sub(result.cpu);
    }
    workers.into_iter().for_each(|worker| worker.join().expect("a worker"));
    let summaries = tallies.into_iter().map(|(model, (mut tally, cpu, off_cpu))| {
        let summary = ModelSummary {
            cpu_seconds: cpu.as_secs_f64(),
            offcpu_seconds: off_cpu.as_secs_f64(),
            ..tally.summary(Lifecycle::default())
        };
        (model, summary)
    });
    Summary::print(summaries.collect());
}
