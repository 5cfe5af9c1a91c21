//! A profile as an SVG flame graph (inferno): one tower per model, the model as its root.

use std::collections::HashMap;

use super::{StackKey, symbolize::Frame};

/// The stacks folded, one line each, sorted.
pub(super) fn folded(
    stacks: &[(&StackKey, u64)],
    symbolized: &HashMap<(u32, u64), Vec<Frame>>,
) -> Vec<String> {
    let mut folded: HashMap<String, u64> = HashMap::new();
    for (key, count) in stacks {
        // Outermost first; each address's frames are innermost (inlined) first.
        let mut names = vec![key.model.clone()];
        for address in key.addresses.iter().rev() {
            let frames = symbolized.get(&(key.pid, *address)).map(Vec::as_slice).unwrap_or_default();
            // `;` separates frames in the folded format; Rust writes it in array types.
            names.extend(frames.iter().rev().map(|frame| frame.function.replace(';', ",")));
        }
        *folded.entry(names.join(";")).or_default() += count;
    }
    let mut lines: Vec<String> =
        folded.into_iter().map(|(stack, count)| format!("{stack} {count}")).collect();
    lines.sort();
    lines
}

pub(super) fn render(stacks: &[(&StackKey, u64)], symbolized: &HashMap<(u32, u64), Vec<Frame>>) -> Vec<u8> {
    let lines = folded(stacks, symbolized);
    let mut options = inferno::flamegraph::Options::default();
    options.title = "pool-obs: CPU by model".to_string();
    options.count_name = "samples".to_string();
    let mut svg = Vec::new();
    if inferno::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut svg).is_err() {
        // No samples: inferno refuses an empty graph; an empty SVG says as much.
        svg = br#"<svg xmlns="http://www.w3.org/2000/svg"><text y="20">no samples</text></svg>"#.to_vec();
    }
    svg
}
