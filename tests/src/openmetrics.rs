//! Reads the samples of an OpenMetrics text exposition.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

pub struct Exposition {
    pub samples: Vec<Sample>,
}

/// The anomalies that say a future's life was not all seen: a poll, its end, its first poll, its
/// drop before its address was reused, or events lost while it was open.
pub const UNSEEN_FUTURE_KINDS: [&str; 5] =
    ["poll_not_seen", "ready_not_seen", "first_poll_not_seen", "future_reused", "open_across_lost_events"];

impl Exposition {
    /// After a run whose events the kernel lost for want of room: no model's count under any
    /// status is above the pool's own, and the anomalies that say why some are below. Returns
    /// the events lost and the anomalies by kind.
    pub fn assert_lossy_never_above(
        &self,
        summary: &crate::ground_truth::Summary,
    ) -> (f64, BTreeMap<String, f64>) {
        let lost = self.value("pool_obs_events_lost_total", &[]).unwrap_or(0.0);
        assert!(lost > 0.0, "the buffer overflowed");
        for (model, truth) in &summary.models {
            for (status, count) in truth.requests.by_status() {
                let counted = self.of_model("pool_requests_total", model, &[("status", status)]);
                assert!(counted as u64 <= count, "{model} {status}: {counted} counted of {count}");
            }
        }
        let anomalies = self.nonzero("pool_obs_anomalies_total", "kind");
        let unseen: f64 = UNSEEN_FUTURE_KINDS.iter().filter_map(|kind| anomalies.get(*kind)).sum();
        eprintln!("{lost} events lost; anomalies {anomalies:?}");
        assert!(unseen > 0.0, "missed polls and ends are anomalies: {anomalies:?}");
        (lost, anomalies)
    }

    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .filter_map(parse_sample)
            .collect();
        Self { samples }
    }

    /// The value of the sample with this name whose labels include all of `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|sample| {
                sample.name == name
                    && labels
                        .iter()
                        .all(|(key, value)| sample.labels.get(*key).map(String::as_str) == Some(*value))
            })
            .map(|sample| sample.value)
    }

    /// `model`'s sample with this name and these other labels, 0 when it is not exported.
    pub fn of_model(&self, name: &str, model: &str, labels: &[(&str, &str)]) -> f64 {
        let labels: Vec<_> = [("model", model)].into_iter().chain(labels.iter().copied()).collect();
        self.value(name, &labels).unwrap_or(0.0)
    }

    /// The distinct values of `label` among the samples with this name.
    pub fn label_values(&self, name: &str, label: &str) -> BTreeSet<String> {
        let named = self.samples.iter().filter(|sample| sample.name == name);
        named.filter_map(|sample| sample.labels.get(label).cloned()).collect()
    }

    /// The samples with this name that are not zero, by the value of `label`.
    pub fn nonzero(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let named = self.samples.iter().filter(|sample| sample.name == name && sample.value != 0.0);
        named.map(|sample| (sample.labels.get(label).cloned().unwrap_or_default(), sample.value)).collect()
    }

    /// The sum over every sample with this name.
    pub fn sum(&self, name: &str) -> f64 {
        self.samples.iter().filter(|sample| sample.name == name).map(|sample| sample.value).sum()
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (name, rest) = match line.find('{') {
        Some(brace) => (&line[..brace], &line[brace + 1..]),
        None => line.split_once(' ')?,
    };
    let (labels, value) = if line.contains('{') { parse_labels(rest)? } else { (BTreeMap::new(), rest) };
    let value = value.split_whitespace().next()?.parse().ok()?;
    Some(Sample { name: name.to_string(), labels, value })
}

/// Parses `key="value",...}` and returns the labels and what follows the closing brace.
fn parse_labels(mut rest: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    loop {
        rest = rest.trim_start_matches(',');
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let (key, after_key) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after_key.char_indices();
        let end = loop {
            match chars.next()? {
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (at, '"') => break at,
                (_, other) => value.push(other),
            }
        };
        labels.insert(key.to_string(), value);
        rest = &after_key[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_labels_and_escapes() {
        let text = "# TYPE x counter\nx_total{model=\"a\\\"b\\\\c\\nd\",status=\"ok\"} 3\nup 1\n# EOF\n";
        let exposition = Exposition::parse(text);
        assert_eq!(exposition.value("x_total", &[("model", "a\"b\\c\nd"), ("status", "ok")]), Some(3.0));
        assert_eq!(exposition.value("up", &[]), Some(1.0));
        assert_eq!(exposition.sum("x_total"), 3.0);
    }
}
