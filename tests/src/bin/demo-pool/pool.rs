//! The pool itself: per-model queues served by worker threads under a memory budget.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    hint::black_box,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{Receiver, Sender, channel},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use pool_obs_tests::ground_truth::{Lifecycle, thread_cpu};

use crate::{
    Options,
    clock::{self, Bracket},
    load::unit_interval,
    summary::{Outcome, Reply},
};

const PAGE: usize = 4096;

pub struct Pool {
    config: Config,
    state: Mutex<State>,
    /// Held from choosing a worker to evict until it is evicted, and while exited workers are
    /// collected: no worker is evicted after it exited, nor twice, so that every call of
    /// `evict_worker` is an eviction.
    evictions: Mutex<()>,
    next_worker_id: AtomicU64,
}

struct Config {
    idle_eviction: Option<Duration>,
    cpu: Duration,
    fail_rate: f64,
    crash_rate: f64,
    max_workers: usize,
    worker_memory: u64,
    memory_budget: u64,
    seed: u64,
}

#[derive(Default)]
struct State {
    models: HashMap<Vec<u8>, Model>,
    workers: HashMap<u64, Worker>,
    /// Clients waiting for their request's outcome, by request id.
    pending: HashMap<u64, Pending>,
    memory_in_use: u64,
    lifecycle: BTreeMap<Vec<u8>, Lifecycle>,
    clock: u64,
}

#[derive(Default)]
struct Model {
    queue: Arc<Queue>,
    workers: Vec<u64>,
    last_used: u64,
    /// A request expired in the queue since the last spawn: the model needs more workers.
    starved: bool,
}

struct Worker {
    model: Vec<u8>,
    thread: JoinHandle<()>,
    stop: Arc<AtomicBool>,
    memory: u64,
    /// The request the worker is serving, which fails if the worker crashes.
    serving: Option<u64>,
    last_active: Instant,
}

/// A client waiting for its request, and what the pool learned of the request so far.
struct Pending {
    client: Sender<Reply>,
    submitted: Bracket,
    worker: Option<u64>,
    started: Option<Bracket>,
}

pub struct Job {
    request_id: u64,
    work_us: u64,
    submitted: Instant,
    /// How long the client is willing to wait for a worker.
    deadline: Duration,
}

#[derive(Default)]
struct Queue {
    jobs: Mutex<VecDeque<Job>>,
    ready: Condvar,
}

impl Queue {
    /// Queues the job and returns the queue's new length.
    fn push(&self, job: Job) -> usize {
        let mut jobs = self.jobs.lock().unwrap();
        jobs.push_back(job);
        self.ready.notify_one();
        jobs.len()
    }

    fn len(&self) -> usize {
        self.jobs.lock().unwrap().len()
    }

    /// The next job, or `None` once the worker is told to stop.
    fn pop(&self, stop: &AtomicBool) -> Option<Job> {
        let mut jobs = self.jobs.lock().unwrap();
        loop {
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            if let Some(job) = jobs.pop_front() {
                return Some(job);
            }
            jobs = self.ready.wait_timeout(jobs, Duration::from_millis(20)).unwrap().0;
        }
    }
}

impl Pool {
    pub fn new(options: &Options) -> Self {
        const MIB: u64 = 1 << 20;
        Self {
            config: Config {
                idle_eviction: (options.idle_evict_ms > 0)
                    .then(|| Duration::from_millis(options.idle_evict_ms)),
                cpu: Duration::from_micros(options.cpu_us),
                fail_rate: options.fail_rate,
                crash_rate: options.crash_rate,
                max_workers: options.max_workers.max(1),
                worker_memory: options.worker_memory_mb * MIB,
                memory_budget: options.memory_budget_mb * MIB,
                seed: options.seed,
            },
            state: Mutex::default(),
            evictions: Mutex::default(),
            next_worker_id: AtomicU64::new(1),
        }
    }

    pub fn lifecycle(&self) -> BTreeMap<Vec<u8>, Lifecycle> {
        self.state.lock().unwrap().lifecycle.clone()
    }

    /// Queues a request for `model`, starting a worker for it if it needs one.
    pub fn submit(
        self: &Arc<Self>,
        model: &[u8],
        request_id: u64,
        work_us: u64,
        deadline: Duration,
    ) -> Receiver<Reply> {
        let submitted = clock::entered();
        let (client, reply) = channel();
        let pending = Pending { client, submitted, worker: None, started: None };
        let (queue, needs_worker) = self.touch(model, request_id, pending);
        if needs_worker {
            let worker_id = self.next_worker_id.fetch_add(1, Ordering::Relaxed);
            self.spawn_worker(model, worker_id, self.config.worker_memory);
        }
        let depth = queue.push(Job { request_id, work_us, submitted: submitted.after, deadline });
        let mut state = self.state.lock().unwrap();
        let record = state.lifecycle.entry(model.to_vec()).or_default();
        record.max_queue_depth = record.max_queue_depth.max(depth);
        reply
    }

    /// Registers the request's client and marks `model` as just used; says whether the model
    /// should get another worker.
    fn touch(&self, model: &[u8], request_id: u64, pending: Pending) -> (Arc<Queue>, bool) {
        let mut state = self.state.lock().unwrap();
        state.pending.insert(request_id, pending);
        state.clock += 1;
        let clock = state.clock;
        let memory_free = state.memory_in_use + self.config.worker_memory <= self.config.memory_budget;
        let entry = state.models.entry(model.to_vec()).or_default();
        entry.last_used = clock;
        let workers = entry.workers.len();
        let backlog = entry.queue.len() > workers || entry.starved;
        let needs_worker = workers == 0 || (backlog && workers < self.config.max_workers && memory_free);
        if needs_worker {
            entry.starved = false;
        }
        (entry.queue.clone(), needs_worker)
    }

    /// Starts a worker thread for `model` that holds `memory_bytes` of touched memory, evicting
    /// least-recently-used workers first if the budget requires it.
    pub fn spawn_worker(self: &Arc<Self>, model: &[u8], worker_id: u64, memory_bytes: u64) {
        self.make_room(model, memory_bytes);
        let stop = Arc::new(AtomicBool::new(false));
        let mut state = self.state.lock().unwrap();
        let entry = state.models.entry(model.to_vec()).or_default();
        let queue = entry.queue.clone();
        entry.workers.push(worker_id);
        let pool = self.clone();
        let worker_stop = stop.clone();
        let thread = thread::Builder::new()
            .name(format!("worker-{worker_id}"))
            .spawn(move || pool.work(worker_id, memory_bytes, &queue, &worker_stop))
            .expect("spawn a worker thread");
        let worker = Worker {
            model: model.to_vec(),
            thread,
            stop,
            memory: memory_bytes,
            serving: None,
            last_active: Instant::now(),
        };
        state.workers.insert(worker_id, worker);
        state.memory_in_use += memory_bytes;
        state.lifecycle.entry(model.to_vec()).or_default().spawns += 1;
    }

    fn make_room(&self, model: &[u8], needed: u64) {
        let _evicting = self.evictions.lock().unwrap();
        while let Some((victim_model, victim)) = self.eviction_candidate(model, needed) {
            self.evict_worker(&victim_model, victim);
        }
    }

    /// A worker of the least recently used other model with nothing queued, while the budget
    /// cannot fit `needed` more bytes.
    fn eviction_candidate(&self, model: &[u8], needed: u64) -> Option<(Vec<u8>, u64)> {
        let state = self.state.lock().unwrap();
        if state.memory_in_use + needed <= self.config.memory_budget {
            return None;
        }
        state
            .models
            .iter()
            .filter(|(name, entry)| {
                name.as_slice() != model && !entry.workers.is_empty() && entry.queue.len() == 0
            })
            .min_by_key(|(_, entry)| entry.last_used)
            .map(|(name, entry)| (name.clone(), entry.workers[0]))
    }

    /// Retires a worker: it finishes the request it is serving, then exits and frees its memory.
    // A real pool's eviction also unloads the model and flushes caches: never inlined there.
    #[inline(never)]
    pub fn evict_worker(&self, model: &[u8], worker_id: u64) {
        let mut state = self.state.lock().unwrap();
        let Some(worker) = state.workers.get(&worker_id) else {
            return;
        };
        worker.stop.store(true, Ordering::Relaxed);
        let memory = worker.memory;
        state.memory_in_use -= memory;
        if let Some(entry) = state.models.get_mut(model) {
            entry.workers.retain(|id| *id != worker_id);
            entry.queue.ready.notify_all();
        }
        state.lifecycle.entry(model.to_vec()).or_default().evictions += 1;
    }

    /// Watches worker threads: a worker that died by panicking is a crash, and is replaced; a
    /// worker idle for longer than the idle limit is evicted.
    pub fn supervise(pool: &Arc<Self>) {
        let pool = pool.clone();
        thread::spawn(move || {
            loop {
                thread::sleep(Duration::from_millis(5));
                pool.evict_idle_workers();
                for (worker_id, worker) in pool.take_finished_workers() {
                    let evicted = worker.stop.load(Ordering::Relaxed);
                    if worker.thread.join().is_err() {
                        clock::calling();
                        pool.reap_crashed_worker(&worker.model, worker_id, worker.serving, evicted);
                    }
                }
            }
        });
    }

    fn evict_idle_workers(&self) {
        let _evicting = self.evictions.lock().unwrap();
        for (model, worker_id) in self.idle_workers() {
            self.evict_worker(&model, worker_id);
        }
    }

    fn idle_workers(&self) -> Vec<(Vec<u8>, u64)> {
        let Some(limit) = self.config.idle_eviction else {
            return Vec::new();
        };
        let state = self.state.lock().unwrap();
        let idle = |worker: &Worker| {
            worker.serving.is_none()
                && !worker.stop.load(Ordering::Relaxed)
                && worker.last_active.elapsed() > limit
        };
        state
            .workers
            .iter()
            .filter(|(_, worker)| idle(worker))
            .map(|(id, worker)| (worker.model.clone(), *id))
            .collect()
    }

    fn take_finished_workers(&self) -> Vec<(u64, Worker)> {
        let _evicting = self.evictions.lock().unwrap();
        let mut state = self.state.lock().unwrap();
        let finished: Vec<u64> = state
            .workers
            .iter()
            .filter(|(_, worker)| worker.thread.is_finished())
            .map(|(id, _)| *id)
            .collect();
        let finished: Vec<(u64, Worker)> = finished
            .into_iter()
            .filter_map(|id| state.workers.remove(&id).map(|worker| (id, worker)))
            .collect();
        // Under the same lock, so that no eviction picks a worker that has already exited.
        for (worker_id, worker) in &finished {
            if let Some(entry) = state.models.get_mut(&worker.model) {
                entry.workers.retain(|id| id != worker_id);
            }
        }
        finished
    }

    /// Accounts for a worker that panicked, fails the request it was serving, and starts its
    /// replacement unless it had been evicted already.
    pub fn reap_crashed_worker(
        self: &Arc<Self>,
        model: &[u8],
        worker_id: u64,
        lost_request: Option<u64>,
        evicted: bool,
    ) {
        let ended = clock::entered();
        {
            let mut state = self.state.lock().unwrap();
            state.lifecycle.entry(model.to_vec()).or_default().crashes += 1;
            if let Some(pending) = lost_request.and_then(|request_id| state.pending.remove(&request_id)) {
                pending.reply(Outcome::Failed, ended);
            }
            if evicted {
                return;
            }
            state.memory_in_use -= self.config.worker_memory;
            if let Some(entry) = state.models.get_mut(model) {
                entry.workers.retain(|id| *id != worker_id);
            }
        }
        let replacement = self.next_worker_id.fetch_add(1, Ordering::Relaxed);
        self.spawn_worker(model, replacement, self.config.worker_memory);
    }

    /// A worker thread's life: hold the memory, serve the model's queue until told to stop.
    fn work(&self, worker_id: u64, memory_bytes: u64, queue: &Queue, stop: &AtomicBool) {
        let memory = touched_memory(memory_bytes);
        let model = self.model_of(worker_id);
        while let Some(job) = queue.pop(stop) {
            let waited = job.submitted.elapsed();
            if waited > job.deadline {
                clock::calling();
                self.drop_expired(
                    &model,
                    job.request_id,
                    job.deadline.as_micros() as u64,
                    waited.as_micros() as u64,
                );
            } else {
                self.mark_serving(worker_id, job.request_id);
                clock::calling();
                let result = self.serve(&model, job.request_id, worker_id, job.work_us);
                self.mark_served(worker_id, job.request_id, clock::take_kept());
                clock::calling();
                self.respond(&model, job.request_id, result);
            }
        }
        black_box(&memory);
    }

    /// Records that the worker starts serving the request.
    fn mark_serving(&self, worker_id: u64, request_id: u64) {
        let mut state = self.state.lock().unwrap();
        if let Some(pending) = state.pending.get_mut(&request_id) {
            pending.worker = Some(worker_id);
        }
        if let Some(worker) = state.workers.get_mut(&worker_id) {
            worker.serving = Some(request_id);
            worker.last_active = Instant::now();
        }
    }

    /// Records that the worker served the request, which `serve` entered within `started`, and
    /// is idle again.
    fn mark_served(&self, worker_id: u64, request_id: u64, started: Option<Bracket>) {
        let mut state = self.state.lock().unwrap();
        if let Some(pending) = state.pending.get_mut(&request_id) {
            pending.started = started;
        }
        if let Some(worker) = state.workers.get_mut(&worker_id) {
            worker.serving = None;
            worker.last_active = Instant::now();
        }
    }

    fn model_of(&self, worker_id: u64) -> Vec<u8> {
        loop {
            if let Some(worker) = self.state.lock().unwrap().workers.get(&worker_id) {
                return worker.model.clone();
            }
            // The spawner registers the thread right after starting it.
            thread::yield_now();
        }
    }

    /// Serves one request; returns the number of tokens produced.
    // A real pool runs a model here, far too large to inline; the sleep stands in for it.
    #[inline(never)]
    pub fn serve(&self, model: &[u8], request_id: u64, worker_id: u64, work_us: u64) -> Result<u64, String> {
        clock::entered_and_kept();
        if !self.config.cpu.is_zero() {
            std::hint::black_box(forward_pass(model, self.config.cpu));
        }
        thread::sleep(Duration::from_micros(work_us));
        if self.roll(request_id, 1) < self.config.crash_rate {
            panic!(
                "worker {worker_id} of {} crashed on request {request_id}",
                String::from_utf8_lossy(model)
            );
        }
        if self.roll(request_id, 2) < self.config.fail_rate {
            return Err(format!("{} could not serve request {request_id}", String::from_utf8_lossy(model)));
        }
        Ok(16 + request_id % 240)
    }

    /// Sends a served request's result back to its client.
    // A real pool serialises the response and writes it to the client's connection here.
    #[inline(never)]
    pub fn respond(&self, model: &[u8], request_id: u64, result: Result<u64, String>) {
        let ended = clock::entered();
        let Some(pending) = self.state.lock().unwrap().pending.remove(&request_id) else {
            return;
        };
        let outcome = match result {
            Ok(_) => Outcome::Ok,
            Err(message) => {
                if message.len() > 1024 {
                    eprintln!(
                        "demo-pool: {} request {request_id} failed at length",
                        String::from_utf8_lossy(model)
                    );
                }
                Outcome::Failed
            }
        };
        pending.reply(outcome, ended);
    }

    /// Drops a request that waited in the queue past its deadline.
    // A real pool also notifies the client and records the miss: never inlined there.
    #[inline(never)]
    pub fn drop_expired(&self, model: &[u8], request_id: u64, deadline_us: u64, waited_us: u64) {
        let ended = clock::entered();
        let pending = {
            let mut state = self.state.lock().unwrap();
            if let Some(entry) = state.models.get_mut(model) {
                entry.starved = true;
            }
            state.pending.remove(&request_id)
        };
        if let Some(pending) = pending {
            pending.reply(Outcome::Timeout, ended);
        }
        let late_by = waited_us.saturating_sub(deadline_us);
        if late_by > 10 * deadline_us.max(1_000) {
            eprintln!(
                "demo-pool: {} request {request_id} expired {late_by} µs late",
                String::from_utf8_lossy(model)
            );
        }
    }

    fn roll(&self, request_id: u64, salt: u64) -> f64 {
        unit_interval(self.config.seed, request_id, salt)
    }
}

impl Pending {
    /// Answers the client. `ended` brackets the entry of the function that ends the request,
    /// before it waited for the pool's lock: the moment the agent's probe on it sees.
    fn reply(self, outcome: Outcome, ended: Bracket) {
        let reply =
            Reply { outcome, worker: self.worker, submitted: self.submitted, started: self.started, ended };
        let _ = self.client.send(reply);
    }
}

fn touched_memory(bytes: u64) -> Vec<u8> {
    let mut memory = vec![0u8; bytes as usize];
    for page in memory.chunks_mut(PAGE) {
        page[0] = 1;
    }
    memory
}

/// The model's forward pass: arithmetic over a state seeded by the model's key, for `cpu` of
/// this thread's CPU time.
pub fn forward_pass(model: &[u8], cpu: Duration) -> u64 {
    let started = thread_cpu();
    let mut state = model
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x100_0000_01b3));
    while thread_cpu() - started < cpu {
        for _ in 0..2_000 {
            state = (state ^ (state >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9).rotate_left(17);
        }
    }
    state
}
