//! The model registry: models are loaded on first use and unloaded when the registry is full
//! (least recently used) or when a model has been idle too long. Each loaded model has a
//! semaphore that bounds the requests it serves at once.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::Semaphore;

use crate::truth::Truth;

pub struct ModelHandle {
    pub id: u64,
    pub name: String,
    pub permits: Arc<Semaphore>,
    pub weights: Vec<u8>,
    last_used: Mutex<Instant>,
}

pub struct Registry {
    models: Mutex<HashMap<String, Arc<ModelHandle>>>,
    next_id: AtomicU64,
    capacity: usize,
    idle_after: Duration,
    concurrency: usize,
    truth: Arc<Truth>,
}

impl Registry {
    pub fn new(capacity: usize, idle_after: Duration, concurrency: usize, truth: Arc<Truth>) -> Self {
        Registry {
            models: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            capacity,
            idle_after,
            concurrency,
            truth,
        }
    }

    /// The model, loaded if it is not; the least recently used one makes room.
    pub fn get_or_load(&self, name: &str) -> Arc<ModelHandle> {
        let mut models = self.models.lock().unwrap();
        if let Some(handle) = models.get(name) {
            *handle.last_used.lock().unwrap() = Instant::now();
            return handle.clone();
        }
        if models.len() >= self.capacity {
            let oldest = models
                .values()
                .min_by_key(|handle| *handle.last_used.lock().unwrap())
                .map(|handle| handle.name.clone());
            if let Some(handle) = oldest.and_then(|name| models.remove(&name)) {
                self.unload(handle, "lru");
            }
        }
        let handle = Arc::new(self.load(name));
        models.insert(name.to_string(), handle.clone());
        handle
    }

    fn load(&self, name: &str) -> ModelHandle {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let size = 1 << 20 | (name.len() << 12);
        let weights: Vec<u8> = (0..size).map(|byte| (byte as u8).wrapping_mul(31)).collect();
        self.truth.loaded(name);
        ModelHandle {
            id,
            name: name.to_string(),
            permits: Arc::new(Semaphore::new(self.concurrency)),
            weights,
            last_used: Mutex::new(Instant::now()),
        }
    }

    fn unload(&self, handle: Arc<ModelHandle>, reason: &str) {
        log_unload(&handle, reason);
        self.truth.unloaded(&handle.name);
        drop(handle);
    }

    /// Unloads every model idle for longer than the registry keeps one.
    pub fn evict_idle(&self) {
        let mut models = self.models.lock().unwrap();
        let idle: Vec<String> = models
            .values()
            .filter(|handle| handle.last_used.lock().unwrap().elapsed() > self.idle_after)
            .map(|handle| handle.name.clone())
            .collect();
        for name in idle {
            if let Some(handle) = models.remove(&name) {
                self.unload(handle, "idle");
            }
        }
    }
}

/// Where a service would log the unload.
fn log_unload(handle: &ModelHandle, reason: &str) {
    if std::env::var_os("MODEL_SERVER_VERBOSE").is_some() {
        eprintln!("model-server: unloaded {} #{} ({reason})", handle.name, handle.id);
    }
}
