//! The documentation's tables, for the tests that keep them true to the code: flags, metrics,
//! anomalies and exit codes are each defined once, in the code, and listed in `docs/`.

use std::collections::BTreeSet;

/// Every page a table can be on.
const PAGES: [&str; 4] = [
    include_str!("../../README.md"),
    include_str!("../../docs/usage.md"),
    include_str!("../../docs/metrics.md"),
    include_str!("../../docs/profiles.md"),
];

/// The first column of the table under `header`, without backquotes.
pub fn first_column(header: &str) -> BTreeSet<String> {
    let table = PAGES
        .iter()
        .find_map(|page| page.split(header).nth(1))
        .unwrap_or_else(|| panic!("the docs have a table `{header}`"));
    table
        .lines()
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .filter_map(|line| Some(line.split('|').nth(1)?.trim().trim_matches('`').to_string()))
        .collect()
}
