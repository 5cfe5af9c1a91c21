//! The process's CPU, split: serving requests (each request's CPU time, added as it ends) and
//! the rest (the kernel's total for the process, less that).

use crate::publish::ProcessCpu;

pub struct CpuSplit {
    metrics: ProcessCpu,
    serving_ns: u64,
    other_ns: u64,
}

impl CpuSplit {
    pub fn new(metrics: ProcessCpu) -> Self {
        Self { metrics, serving_ns: 0, other_ns: 0 }
    }

    /// A request ended that had `cpu_ns` of CPU time.
    pub fn serve(&mut self, cpu_ns: u64) {
        self.serving_ns += cpu_ns;
        self.metrics.serving.inc_by(cpu_ns as f64 / 1e9);
    }

    #[cfg(test)]
    pub fn serving_ns(&self) -> u64 {
        self.serving_ns
    }

    /// The process has had `total_ns` of CPU time since it was followed. A request's time
    /// counts when it ends, and the kernel's total at each context switch, so either may lead
    /// for a moment: the rest only grows.
    pub fn process_total(&mut self, total_ns: u64) {
        let other_ns = total_ns.saturating_sub(self.serving_ns);
        if other_ns > self.other_ns {
            self.metrics.other.inc_by((other_ns - self.other_ns) as f64 / 1e9);
            self.other_ns = other_ns;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::Metrics;

    #[test]
    fn the_rest_is_the_process_total_less_serving_and_only_grows() {
        let metrics = Metrics::new().cpu_for_process(1);
        let mut split = CpuSplit::new(metrics.clone());
        split.process_total(1_000_000_000);
        split.serve(400_000_000);
        // The request's time counted before the kernel's total caught up with it.
        split.serve(700_000_000);
        split.process_total(1_050_000_000);
        assert_eq!((metrics.serving.get(), metrics.other.get()), (1.1, 1.0));
        split.process_total(2_100_000_000);
        assert_eq!(metrics.other.get(), 1.0);
        split.process_total(2_600_000_000);
        assert_eq!(metrics.other.get(), 1.5);
    }
}
