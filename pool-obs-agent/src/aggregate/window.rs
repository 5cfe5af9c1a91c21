//! A model's statistics over a sliding window: request latency (HDR histograms, ≤1% relative
//! error), the queue's maximum depth, and outcome counts. The window is kept as
//! [`SLICES`] slices; the oldest drops out as time moves on. Times are `CLOCK_MONOTONIC`
//! nanoseconds, the clock of the kernel's event timestamps.

use std::{collections::VecDeque, time::Duration};

use hdrhistogram::Histogram;

use crate::{
    outcome::{ByStatus, Status},
    publish::WindowSummary,
};

pub const SLICES: u32 = 4;
/// Latencies are recorded in microseconds, from 1 µs to 100 s, to two significant digits.
const HIGHEST_MICROS: u64 = 100_000_000;
const SIGNIFICANT_DIGITS: u8 = 2;

pub struct Window {
    slice_ns: u64,
    slices: VecDeque<Slice>,
    /// The queue depth now, which every new slice starts from.
    queue_depth: u64,
}

struct Slice {
    index: u64,
    latency: Option<Histogram<u32>>,
    max_queue_depth: u64,
    outcomes: ByStatus<u64>,
}

impl Window {
    pub fn new(length: Duration) -> Self {
        let slice_ns = (length.as_nanos() as u64 / u64::from(SLICES)).max(1_000_000);
        Self { slice_ns, slices: VecDeque::new(), queue_depth: 0 }
    }

    pub fn record_request(&mut self, now: u64, status: Status, duration: Option<Duration>) {
        let slice = self.slice(now);
        *slice.outcomes.get_mut(status) += 1;
        if let Some(duration) = duration {
            let micros = (duration.as_micros() as u64).clamp(1, HIGHEST_MICROS);
            let latency = slice.latency.get_or_insert_with(new_histogram);
            latency.saturating_record(micros);
        }
    }

    pub fn record_queue_depth(&mut self, now: u64, depth: u64) {
        self.queue_depth = depth;
        let slice = self.slice(now);
        slice.max_queue_depth = slice.max_queue_depth.max(depth);
    }

    /// The window's summary at `now`; `merged` is scratch space reused across models.
    pub fn summarize(&mut self, now: u64, merged: &mut Histogram<u32>) -> WindowSummary {
        self.slice(now);
        merged.reset();
        let mut summary = WindowSummary::default();
        let mut outcomes = ByStatus::<u64>::default();
        for slice in &self.slices {
            if let Some(latency) = &slice.latency {
                merged.add(latency).expect("every slice has the scratch histogram's bounds");
            }
            summary.max_queue_depth = summary.max_queue_depth.max(slice.max_queue_depth);
            outcomes.add(&slice.outcomes);
        }
        summary.requests = outcomes.total();
        if summary.requests > 0 {
            summary.error_rate = outcomes.unsuccessful() as f64 / summary.requests as f64;
        }
        if !merged.is_empty() {
            // The middle of the quantile's bucket, not its top: HDR's buckets are 1/128 of their
            // value wide here, so the middle is within 0.4% either way.
            let quantile =
                |quantile: f64| merged.median_equivalent(merged.value_at_quantile(quantile)) as f64 / 1000.0;
            summary.avg_ms = merged.mean() / 1000.0;
            summary.p50_ms = quantile(0.5);
            summary.p95_ms = quantile(0.95);
            summary.p99_ms = quantile(0.99);
        }
        summary
    }

    /// Which slice `now` falls in: the summary changes when it does, even without events.
    pub fn slice_index(&self, now: u64) -> u64 {
        now / self.slice_ns
    }

    /// The slice `now` falls in, dropping slices that left the window.
    fn slice(&mut self, now: u64) -> &mut Slice {
        let index = self.slice_index(now);
        while self.slices.front().is_some_and(|slice| slice.index + u64::from(SLICES) <= index) {
            self.slices.pop_front();
        }
        if self.slices.back().is_none_or(|slice| slice.index < index) {
            let depth = self.queue_depth;
            self.slices.push_back(Slice {
                index,
                latency: None,
                max_queue_depth: depth,
                outcomes: ByStatus::default(),
            });
        }
        self.slices.back_mut().expect("a slice was just ensured")
    }
}

pub fn new_histogram() -> Histogram<u32> {
    Histogram::new_with_bounds(1, HIGHEST_MICROS, SIGNIFICANT_DIGITS).expect("valid histogram bounds")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn quantiles_are_accurate_not_bucketed() {
        let origin = 5 * SECOND;
        let mut window = Window::new(Duration::from_secs(60));
        for millis in 1..=1000 {
            window.record_request(origin, Status::Ok, Some(Duration::from_millis(millis)));
        }
        let summary = window.summarize(origin, &mut new_histogram());
        assert_eq!(summary.requests, 1000);
        for (got, want) in [(summary.p50_ms, 500.0), (summary.p95_ms, 950.0), (summary.p99_ms, 990.0)] {
            assert!((got - want).abs() / want < 0.01, "{got} vs {want}");
        }
        assert!((summary.avg_ms - 500.5).abs() < 5.0);
    }

    #[test]
    fn old_slices_leave_the_window() {
        let origin = 100 * SECOND;
        let mut window = Window::new(Duration::from_secs(4));
        window.record_request(origin, Status::Failed, Some(Duration::from_secs(1)));
        window.record_queue_depth(origin, 9);
        window.record_queue_depth(origin, 2);
        let later = origin + 2 * SECOND;
        window.record_request(later, Status::Ok, Some(Duration::from_millis(10)));
        let summary = window.summarize(later, &mut new_histogram());
        assert_eq!((summary.requests, summary.max_queue_depth, summary.error_rate), (2, 9, 0.5));
        let much_later = origin + 5 * SECOND;
        let summary = window.summarize(much_later, &mut new_histogram());
        assert_eq!(summary.requests, 1, "the failure left the window");
        assert_eq!(summary.max_queue_depth, 2, "the depth carried into newer slices");
        assert!((summary.p99_ms - 10.0).abs() < 0.1);
    }
}
