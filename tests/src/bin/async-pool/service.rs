//! The tokio service of `async-pool` and `async-pool-boxed`, which differ only in how
//! `Service::handle` returns its future. Its request path waits its turn (a sleep), hands the
//! work to a blocking worker over a channel, and awaits the reply on a oneshot under a timeout.
//! 64 client tasks call it; some give up early and drop the request. Each client counts what it
//! saw, and how often it polled the request: the ground truth the tests compare with.

use std::{
    collections::BTreeMap,
    future::Future,
    path::PathBuf,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use clap::Parser;
use pool_obs_tests::{
    ground_truth::{Lifecycle, Outcome, Summary, Tally},
    processes::await_start_file,
    seeded::unit_interval,
};
use tokio::sync::{mpsc, oneshot};

use crate::Service;

#[derive(Parser)]
#[command(about = "A tokio service whose request path is an async fn")]
pub struct Options {
    #[arg(long, value_delimiter = ',', default_value = "llama-7b,mistral-7b,bge-small")]
    models: Vec<String>,
    #[arg(long, default_value_t = 4000)]
    requests: u64,
    #[arg(long, default_value_t = 64)]
    clients: u64,
    #[arg(long, default_value_t = 0.05)]
    fail_rate: f64,
    /// Probability that the worker is too slow for the request's deadline.
    #[arg(long, default_value_t = 0.04)]
    slow_rate: f64,
    /// Probability that the client gives up before the reply and drops the request.
    #[arg(long, default_value_t = 0.04)]
    drop_rate: f64,
    #[arg(long, default_value_t = 11)]
    seed: u64,
    /// Clients await the request in their own task, under a timeout, rather than through the
    /// `Counted` wrapper; the task counts its polls.
    #[arg(long)]
    awaited: bool,
    /// Wait for this file to exist before starting the load.
    #[arg(long)]
    start_file: Option<PathBuf>,
}

pub struct Request {
    pub id: u64,
    pub model: String,
    pub prompt: Vec<u32>,
    /// How long the reply may take once the work is handed over.
    pub deadline: Duration,
    fails: bool,
    slow: bool,
}

pub struct Reply {
    pub id: u64,
    pub model: String,
    pub text: String,
}

#[derive(Debug)]
pub enum ServeError {
    Timeout { after: Duration },
    Model(String),
    Closed,
}

/// Work for the blocking worker, and where its answer goes.
pub struct Work {
    prompt: Vec<u32>,
    fails: bool,
    slow: bool,
    answer: oneshot::Sender<Result<String, String>>,
}

impl Service {
    pub async fn serve(&self, req: &Request) -> Result<Reply, ServeError> {
        // Admission: a short wait, longer for a longer prompt.
        tokio::time::sleep(Duration::from_micros(6_000 + 100 * req.prompt.len() as u64)).await;
        let (answer, answered) = oneshot::channel();
        let work = Work { prompt: req.prompt.clone(), fails: req.fails, slow: req.slow, answer };
        self.work.send(work).await.map_err(|_| ServeError::Closed)?;
        match tokio::time::timeout(req.deadline, answered).await {
            Err(_) => Err(ServeError::Timeout { after: req.deadline }),
            Ok(Err(_)) => Err(ServeError::Closed),
            Ok(Ok(text)) => {
                let text = text.map_err(ServeError::Model)?;
                Ok(Reply { id: req.id, model: req.model.clone(), text })
            }
        }
    }
}

/// The model, on a blocking thread: a few passes over the prompt, then the accelerator's wait.
fn infer(work: &Work) -> Result<String, String> {
    let mut state = 0u64;
    for pass in 0..20u64 {
        for token in &work.prompt {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(u64::from(*token) ^ pass);
        }
    }
    let wait = if work.slow { 20_000 } else { 1_000 + 40 * work.prompt.len() as u64 };
    std::thread::sleep(Duration::from_micros(wait));
    if work.fails { Err(format!("model diverged at state {state:x}")) } else { Ok(format!("{state:016x}")) }
}

/// A future, how many times it was polled and for how long it ran: the client's own measure,
/// as a tower layer would take it.
struct Counted<F> {
    inner: F,
    polls: u64,
    first_poll: Option<Instant>,
    ready: Option<Instant>,
}

impl<F> Counted<F> {
    fn new(inner: F) -> Self {
        Counted { inner, polls: 0, first_poll: None, ready: None }
    }

    /// From the first poll to `Ready`, or to now when it is not ready.
    fn latency(&self) -> Duration {
        let first_poll = self.first_poll.unwrap_or_else(Instant::now);
        self.ready.unwrap_or_else(Instant::now) - first_poll
    }
}

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: `inner` is never moved out of a pinned `Counted` (pin-project's projection).
        let this = unsafe { self.get_unchecked_mut() };
        this.polls += 1;
        this.first_poll.get_or_insert_with(Instant::now);
        let inner = unsafe { Pin::new_unchecked(&mut this.inner) };
        let poll = inner.poll(cx);
        if poll.is_ready() {
            this.ready = Some(Instant::now());
        }
        poll
    }
}

/// What the clients saw, by model: outcomes, latencies, and polls per request.
#[derive(Default)]
struct Truth {
    tallies: BTreeMap<String, Tally>,
    polls: BTreeMap<String, u64>,
}

/// What a client saw of one request: its answer (`None`: it gave up and dropped it), how long
/// from its first poll to `Ready`, and how many polls.
type Seen = (Option<Result<Reply, ServeError>>, Duration, u64);

/// The request through the `Counted` wrapper, under a timeout; it is dropped at the end,
/// answered or not.
async fn wrapped(service: &Service, req: &Request, patience: Option<Duration>) -> Seen {
    let request = Counted::new(service.handle(req));
    tokio::pin!(request);
    let answer = tokio::time::timeout(patience.unwrap_or(Duration::from_secs(60)), &mut request).await.ok();
    (answer, request.latency(), request.polls)
}

/// The request awaited in an async block of the client's own task, under a timeout: the
/// optimiser inlines its poll into the block's, and that into `Timeout`'s. The task counts
/// its own polls (`TaskPolls`); it polls the request at each while it awaits it, from the poll
/// that creates it to the one it is ready or given up in.
async fn awaited(service: &Service, req: &Request, patience: Option<Duration>, task: &AtomicU64) -> Seen {
    let polled_before = task.load(Ordering::Relaxed);
    let first_poll = Instant::now();
    let patience = patience.unwrap_or(Duration::from_secs(60));
    let answered = async {
        let answer = service.handle(req).await;
        (answer, first_poll.elapsed())
    };
    let (answer, latency) = match tokio::time::timeout(patience, answered).await {
        Ok((answer, latency)) => (Some(answer), latency),
        Err(_) => (None, first_poll.elapsed()),
    };
    (answer, latency, task.load(Ordering::Relaxed) - polled_before + 1)
}

/// A task's future, and how many times the runtime polled it.
struct TaskPolls<F> {
    inner: F,
    polls: Arc<AtomicU64>,
}

impl<F: Future> Future for TaskPolls<F> {
    type Output = F::Output;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: `inner` is never moved out of a pinned `TaskPolls` (pin-project's projection).
        let this = unsafe { self.get_unchecked_mut() };
        this.polls.fetch_add(1, Ordering::Relaxed);
        unsafe { Pin::new_unchecked(&mut this.inner) }.poll(cx)
    }
}

async fn client(
    service: Arc<Service>,
    truth: Arc<Mutex<Truth>>,
    options: Arc<Options>,
    nth: u64,
    task: Arc<AtomicU64>,
) {
    let mut id = nth;
    while id < options.requests {
        let model = options.models[(id as usize * 7 + id as usize / 3) % options.models.len()].clone();
        let prompt = (0..8 + id % 24).map(|token| (token * 31 + id) as u32).collect();
        let fails = unit_interval(options.seed, id, 2) < options.fail_rate;
        let slow = unit_interval(options.seed, id, 3) < options.slow_rate;
        let drops = unit_interval(options.seed, id, 4) < options.drop_rate;
        let req = Request { id, model, prompt, deadline: Duration::from_millis(10), fails, slow };
        // A client that gives up drops the request after 100 µs, before the worker can answer.
        let patience = drops.then_some(Duration::from_micros(100));
        let (answer, latency, polls) = if options.awaited {
            awaited(&service, &req, patience, &task).await
        } else {
            wrapped(&service, &req, patience).await
        };
        let outcome = match answer {
            None => Outcome::Cancelled,
            Some(Ok(reply)) => {
                assert_eq!((reply.id, &reply.model), (req.id, &req.model));
                std::hint::black_box(reply.text);
                Outcome::Ok
            }
            Some(Err(ServeError::Timeout { after })) => {
                std::hint::black_box(after);
                Outcome::Timeout
            }
            Some(Err(ServeError::Model(why))) => {
                std::hint::black_box(why);
                Outcome::Failed
            }
            Some(Err(ServeError::Closed)) => Outcome::Failed,
        };
        let mut truth = truth.lock().expect("the truth");
        truth.tallies.entry(req.model.clone()).or_default().record(outcome, latency.as_micros() as u64);
        *truth.polls.entry(req.model).or_default() += polls;
        id += options.clients;
    }
}

pub fn main() {
    let options = Arc::new(Options::parse());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("a tokio runtime");
    let (work, queued) = mpsc::channel::<Work>(256);
    let service = Arc::new(Service { work });
    let queued = Arc::new(Mutex::new(queued));
    let workers: Vec<_> = (0..32)
        .map(|_| {
            let queued = queued.clone();
            runtime.spawn_blocking(move || {
                loop {
                    // The queue's lock is held while waiting, not while working.
                    let next = queued.lock().expect("the work queue").blocking_recv();
                    let Some(work) = next else { break };
                    let answer = infer(&work);
                    let _ = work.answer.send(answer);
                }
            })
        })
        .collect();
    eprintln!("async-pool: ready, pid {}", std::process::id());
    await_start_file(options.start_file.as_deref());
    let truth = Arc::new(Mutex::new(Truth::default()));
    runtime.block_on(async {
        let clients: Vec<_> = (0..options.clients)
            .map(|nth| {
                let polls = Arc::new(AtomicU64::new(0));
                let client = client(service.clone(), truth.clone(), options.clone(), nth, polls.clone());
                tokio::spawn(TaskPolls { inner: client, polls })
            })
            .collect();
        for client in clients {
            client.await.expect("a client task");
        }
    });
    drop(service);
    for worker in workers {
        runtime.block_on(worker).expect("a blocking worker");
    }
    let mut truth = truth.lock().expect("the truth");
    let polls = truth.polls.clone();
    let summaries = truth.tallies.iter_mut().map(|(model, tally)| {
        let mut summary = tally.summary(Lifecycle::default());
        summary.polls = polls.get(model).copied().unwrap_or_default();
        (model.clone(), summary)
    });
    Summary::print(summaries.collect());
}
