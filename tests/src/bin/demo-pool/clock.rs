//! The pool's own clock readings around the calls the agent probes, for the access log.
//!
//! A probe's timestamp lies between the caller's reading just before a probed call and the
//! callee's first reading inside it, however long the thread was preempted on the way (a uprobe's
//! trap returns to user space through the scheduler, and on two vCPUs that can cost a few
//! milliseconds). One reading on either side could be off by that much; the pair bounds the
//! probe's moment exactly, so the tests compare the agent's times with the pool's without a
//! tolerance for the scheduler.

use std::{cell::Cell, time::Instant};

/// Around a probed call's entry: the probe fired at or after `before` and at or before `after`.
#[derive(Clone, Copy, Debug)]
pub struct Bracket {
    pub before: Instant,
    pub after: Instant,
}

impl Bracket {
    /// One instant, for a moment no probe sees.
    pub fn at(instant: Instant) -> Self {
        Self { before: instant, after: instant }
    }
}

thread_local! {
    static CALLING: Cell<Option<Instant>> = const { Cell::new(None) };
    static KEPT: Cell<Option<Bracket>> = const { Cell::new(None) };
}

/// Read by a caller just before it calls a probed function.
pub fn calling() {
    CALLING.set(Some(Instant::now()));
}

/// Read first thing inside a probed function: the bracket around its entry.
pub fn entered() -> Bracket {
    let after = Instant::now();
    Bracket { before: CALLING.take().unwrap_or(after), after }
}

/// As `entered`, for a probed function whose result cannot carry the bracket: kept for its
/// caller to `take_kept` once the call returns.
pub fn entered_and_kept() {
    KEPT.set(Some(entered()));
}

pub fn take_kept() -> Option<Bracket> {
    KEPT.take()
}
