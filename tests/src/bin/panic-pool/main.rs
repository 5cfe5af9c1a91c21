//! `panic-pool`: a pool whose per-model handlers are trait objects, written as such pools are:
//! a malformed request makes a handler index past its model's layers and panic, and the worker
//! catches it with `catch_unwind`, answers the request as failed and goes on. Built in release
//! with nothing to make probing easy. Its summary is the ground truth: failed requests are the
//! handlers' errors plus their panics. Requests are queued as trait objects too, one type per
//! kind of request, each of which leaves the pool's in-flight count when it is dropped.

use std::{
    collections::BTreeMap,
    hint::black_box,
    panic::{AssertUnwindSafe, catch_unwind},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::Instant,
};

use clap::Parser;
use pool_obs_tests::{
    ground_truth::{Lifecycle, Outcome, Summary, Tally},
    processes::await_start_file,
};

#[derive(Parser)]
#[command(about = "A pool of trait-object handlers, some of whose calls panic")]
struct Options {
    #[arg(long, default_value_t = 20_000)]
    requests: u64,
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Every this many requests (by id) one is malformed and its handler panics.
    #[arg(long, default_value_t = 97)]
    panic_every: u64,
    /// Every this many requests (by id) one is rejected with an error.
    #[arg(long, default_value_t = 23)]
    error_every: u64,
    /// Wait for this file to exist before starting the load.
    #[arg(long)]
    start_file: Option<PathBuf>,
}

/// What every model's handler does with a request.
trait Handler: Send + Sync {
    fn handle(&self, model: &str, request_id: u64) -> Result<u64, String>;
}

/// A model of weighted layers; a request runs through a few of them.
struct Inference {
    layers: Vec<u64>,
    panic_every: u64,
    error_every: u64,
}

impl Handler for Inference {
    fn handle(&self, model: &str, request_id: u64) -> Result<u64, String> {
        // A malformed request names a layer the model does not have.
        let first = if request_id.is_multiple_of(self.panic_every) {
            self.layers.len() + request_id as usize % 3
        } else {
            request_id as usize % self.layers.len()
        };
        let mut activation = self.layers[first];
        for step in 0..64u64 {
            activation =
                activation.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(step ^ model.len() as u64);
        }
        if request_id.is_multiple_of(self.error_every) {
            return Err(format!("{model}: request {request_id} rejected"));
        }
        Ok(black_box(activation))
    }
}

/// A model that looks tokens up in a table.
struct Embedding {
    table: Vec<u32>,
    panic_every: u64,
    error_every: u64,
}

impl Handler for Embedding {
    fn handle(&self, model: &str, request_id: u64) -> Result<u64, String> {
        let token = if request_id.is_multiple_of(self.panic_every) {
            self.table.len()
        } else {
            (request_id as usize * 7) % self.table.len()
        };
        let vector = u64::from(self.table[token]) * model.len() as u64;
        if request_id.is_multiple_of(self.error_every) {
            return Err(format!("{model}: token {token} unknown"));
        }
        Ok(black_box(vector))
    }
}

/// Requests queued or being served, for the pool's own load shedding.
static IN_FLIGHT: AtomicU64 = AtomicU64::new(0);

/// A request as the pool queues it; each kind of request is a type of its own.
trait Job: Send {
    fn model(&self) -> &'static str;
    fn id(&self) -> u64;
    fn submitted(&self) -> Instant;
}

/// A text generation request.
struct Generate {
    model: &'static str,
    id: u64,
    submitted: Instant,
}

/// An embedding request.
struct Embed {
    model: &'static str,
    id: u64,
    submitted: Instant,
}

macro_rules! job {
    ($kind:ident) => {
        impl $kind {
            fn queued(model: &'static str, id: u64) -> Box<dyn Job> {
                IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
                Box::new($kind { model, id, submitted: Instant::now() })
            }
        }

        impl Job for $kind {
            fn model(&self) -> &'static str {
                self.model
            }
            fn id(&self) -> u64 {
                self.id
            }
            fn submitted(&self) -> Instant {
                self.submitted
            }
        }

        impl Drop for $kind {
            fn drop(&mut self) {
                IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
            }
        }
    };
}

job!(Generate);
job!(Embed);

fn main() {
    let options = Options::parse();
    // The pool answers panics itself: keep their messages off stderr.
    std::panic::set_hook(Box::new(|_| {}));
    let mut handlers: BTreeMap<&'static str, Box<dyn Handler>> = BTreeMap::new();
    for (model, layers) in [("llama-7b", 32), ("mistral-7b", 24)] {
        let layers = (1..=layers).map(|layer| layer * 1_000_003).collect();
        let handler =
            Inference { layers, panic_every: options.panic_every, error_every: options.error_every };
        handlers.insert(model, Box::new(handler));
    }
    let table = (0..4096).map(|token| token * 31).collect();
    let handler = Embedding { table, panic_every: options.panic_every, error_every: options.error_every };
    handlers.insert("bge-small", Box::new(handler));
    let handlers = Arc::new(handlers);
    let models: Vec<&'static str> = handlers.keys().copied().collect();

    let (jobs, queue) = mpsc::channel::<Box<dyn Job>>();
    let queue = Arc::new(Mutex::new(queue));
    let tallies: Arc<Mutex<BTreeMap<String, Tally>>> = Arc::default();
    let workers: Vec<_> = (0..options.workers)
        .map(|_| {
            let (queue, handlers, tallies) = (queue.clone(), handlers.clone(), tallies.clone());
            thread::spawn(move || {
                loop {
                    let job = queue.lock().expect("the queue").recv();
                    let Ok(job) = job else { break };
                    let handler = &handlers[job.model()];
                    let answer = catch_unwind(AssertUnwindSafe(|| handler.handle(job.model(), job.id())));
                    let latency_us = job.submitted().elapsed().as_micros() as u64;
                    let model = job.model().to_string();
                    drop(job);
                    let mut tallies = tallies.lock().expect("the tallies");
                    let tally = tallies.entry(model).or_default();
                    match answer {
                        Ok(Ok(_)) => tally.record(Outcome::Ok, latency_us),
                        Ok(Err(_)) => tally.record(Outcome::Failed, latency_us),
                        Err(_) => {
                            tally.panics += 1;
                            tally.record(Outcome::Failed, latency_us);
                        }
                    }
                }
            })
        })
        .collect();

    eprintln!("panic-pool: ready, pid {}", std::process::id());
    await_start_file(options.start_file.as_deref());
    for request_id in 0..options.requests {
        let model = models[request_id as usize % models.len()];
        let job = if model.starts_with("bge") {
            Embed::queued(model, request_id)
        } else {
            Generate::queued(model, request_id)
        };
        jobs.send(job).expect("the workers are there");
    }
    drop(jobs);
    for worker in workers {
        worker.join().expect("workers catch their handlers' panics");
    }
    let mut tallies = tallies.lock().expect("the tallies");
    let summaries =
        tallies.iter_mut().map(|(model, tally)| (model.clone(), tally.summary(Lifecycle::default())));
    Summary::print(summaries.collect());
}
