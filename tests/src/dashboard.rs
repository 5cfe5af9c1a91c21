//! The Grafana dashboard in `deploy/`, as the tests read it: which metrics its queries draw.

use std::{collections::BTreeSet, path::Path};

/// Metrics only an agent following async requests exports: a pool without them has none.
pub const ASYNC_ONLY: [&str; 2] = ["pool_request_polls_total", "pool_request_busy_seconds_total"];

/// Every `pool_…` metric name in the dashboard's queries.
pub fn referenced_metrics() -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/pool-obs.json");
    let dashboard = std::fs::read_to_string(path).expect("the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let mut names = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("a query");
            let mut rest = expr;
            while let Some(at) = rest.find("pool_") {
                let name: String =
                    rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                rest = &rest[at + name.len()..];
                names.insert(name);
            }
        }
    }
    names
}
