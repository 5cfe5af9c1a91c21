//! The workers that left lately. A pool may evict a worker between the moment it takes a
//! request and the moment it starts serving it: the worker then serves that request after its
//! eviction event. Remembering who left tells such a worker from one the agent never saw.

use std::collections::{HashSet, VecDeque};

/// How many departures are remembered; the oldest are forgotten first.
const CAPACITY: usize = 4096;

#[derive(Default)]
pub struct Departed {
    order: VecDeque<u64>,
    ids: HashSet<u64>,
}

impl Departed {
    pub fn insert(&mut self, worker_id: u64) {
        if self.ids.insert(worker_id) {
            self.order.push_back(worker_id);
        }
        if self.order.len() > CAPACITY
            && let Some(oldest) = self.order.pop_front()
        {
            self.ids.remove(&oldest);
        }
    }

    pub fn contains(&self, worker_id: u64) -> bool {
        self.ids.contains(&worker_id)
    }

    /// A new worker under a departed one's id.
    pub fn forget(&mut self, worker_id: u64) {
        self.ids.remove(&worker_id);
    }
}
