//! The README's tables, for the tests that keep them true to the code: flags, metrics,
//! anomalies and exit codes are each defined once, in the code, and listed there.

use std::collections::BTreeSet;

/// The first column of the README's table under `header`, without backquotes.
pub fn first_column(header: &str) -> BTreeSet<String> {
    let readme = include_str!("../../README.md");
    let table = readme.split(header).nth(1).unwrap_or_else(|| panic!("the README has a table `{header}`"));
    table
        .lines()
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .filter_map(|line| Some(line.split('|').nth(1)?.trim().trim_matches('`').to_string()))
        .collect()
}
