//! Whether the probes themselves work. A manifest that reads the wrong places shows as failed
//! reads and as anomalies rather than as wrong numbers alone; over the sliding window, `/health`
//! names the probe and says so, instead of reporting the pool healthy on garbage.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

/// Fewer failed reads or anomalies than this in a window are not a pattern.
const AT_LEAST: u64 = 10;

/// The counts one refresh saw, since attaching.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProbeTotals {
    /// Events written, by probe index.
    pub events: Vec<u64>,
    /// Reads of the target's memory that failed, by probe index.
    pub read_failures: Vec<u64>,
    /// Events that contradicted the life of what the probe follows, by probe index.
    pub contradictions: Vec<u64>,
    /// Anomalies of every kind.
    pub anomalies: u64,
}

pub struct ProbeWindow {
    window: Duration,
    /// What each probe is, for people: its function and event.
    names: Vec<String>,
    samples: VecDeque<(Instant, ProbeTotals)>,
}

impl ProbeWindow {
    pub fn new(window: Duration, names: Vec<String>) -> Self {
        Self { window, names, samples: VecDeque::new() }
    }

    /// Takes the totals as of `now`; returns why the probes look wrong over the window, if they
    /// do: a probe failing at least half as many reads as it wrote events, or anomalies in more
    /// than 1% of all events.
    pub fn observe(&mut self, now: Instant, totals: ProbeTotals) -> Vec<String> {
        while self.samples.len() > 1 && self.samples.front().is_some_and(|(at, _)| now - *at > self.window) {
            self.samples.pop_front();
        }
        let oldest = self.samples.front().map(|(_, totals)| totals.clone()).unwrap_or_default();
        self.samples.push_back((now, totals.clone()));
        let since = |now: &[u64], then: &[u64], index: usize| {
            now.get(index).copied().unwrap_or(0).saturating_sub(then.get(index).copied().unwrap_or(0))
        };
        let mut reasons = Vec::new();
        for (probe, name) in self.names.iter().enumerate() {
            let failed = since(&totals.read_failures, &oldest.read_failures, probe);
            let events = since(&totals.events, &oldest.events, probe);
            if failed >= AT_LEAST && failed * 2 >= events {
                reasons.push(format!(
                    "probe {probe} ({name}) failed {failed} reads in its last {events} events: the manifest \
                     reads the wrong place (see `pool-obs-agent check`, or attach with --debug-probes)"
                ));
            }
            let contradicted = since(&totals.contradictions, &oldest.contradictions, probe);
            if contradicted >= AT_LEAST && contradicted * 100 > events {
                reasons.push(format!(
                    "probe {probe} ({name}): {contradicted} of its last {events} events contradict the life of \
                     a request's future (polls or ends that no probe saw): its requests cannot be vouched for \
                     (see pool_obs_anomalies_total)"
                ));
            }
        }
        let events: u64 =
            (0..self.names.len()).map(|probe| since(&totals.events, &oldest.events, probe)).sum();
        let anomalies = totals.anomalies.saturating_sub(oldest.anomalies);
        if anomalies >= AT_LEAST && anomalies * 100 > events {
            reasons.push(format!(
                "{anomalies} anomalies in the last {events} events: the manifest may read the wrong values \
                 (see pool_obs_anomalies_total)"
            ));
        }
        reasons
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(events: [u64; 2], read_failures: [u64; 2], anomalies: u64) -> ProbeTotals {
        ProbeTotals {
            events: events.to_vec(),
            read_failures: read_failures.to_vec(),
            contradictions: vec![0; 2],
            anomalies,
        }
    }

    #[test]
    fn a_probe_whose_reads_mostly_fail_is_named_and_recovers_once_the_window_has_passed() {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let mut window = ProbeWindow::new(Duration::from_secs(60), vec!["a".into(), "b".into()]);
        assert!(window.observe(start, totals([0, 0], [0, 0], 0)).is_empty());
        let reasons = window.observe(start + second, totals([100, 100], [0, 60], 0));
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(reasons[0].starts_with("probe 1 (b) failed 60 reads in its last 100 events"), "{reasons:?}");
        // A minute with no new failures: the window no longer holds them.
        window.observe(start + 61 * second, totals([200, 200], [0, 60], 0));
        assert!(window.observe(start + 62 * second, totals([300, 300], [0, 60], 0)).is_empty());
    }

    #[test]
    fn a_few_failures_or_anomalies_are_no_pattern_and_a_flow_of_anomalies_is() {
        let start = Instant::now();
        let mut window = ProbeWindow::new(Duration::from_secs(60), vec!["a".into(), "b".into()]);
        window.observe(start, ProbeTotals::default());
        let later = start + Duration::from_secs(1);
        assert!(window.observe(later, totals([4, 4], [4, 0], 5)).is_empty());
        let reasons = window.observe(later, totals([500, 500], [4, 0], 40));
        assert_eq!(
            reasons,
            ["40 anomalies in the last 1000 events: the manifest may read the wrong values \
                              (see pool_obs_anomalies_total)"]
        );
    }

    #[test]
    fn a_probe_whose_events_contradict_its_futures_life_is_named() {
        let start = Instant::now();
        let mut window = ProbeWindow::new(Duration::from_secs(60), vec!["a".into(), "b".into()]);
        window.observe(start, ProbeTotals::default());
        let later = start + Duration::from_secs(1);
        let with = |contradictions: [u64; 2]| ProbeTotals {
            contradictions: contradictions.to_vec(),
            ..totals([1000, 1000], [0, 0], contradictions.iter().sum())
        };
        // Ten in a thousand events is 1%: not a flow.
        assert!(window.observe(later, with([0, 10])).is_empty());
        let reasons = window.observe(later, with([0, 11]));
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(reasons[0].starts_with("probe 1 (b): 11 of its last 1000 events contradict"), "{reasons:?}");
    }
}
