//! `init`: a starter manifest for the functions a user names, written in the pool's own terms
//! from their signatures in the debug info: parameters and their types, the return type and
//! its variants, where the function runs. Every value it suggests is one the compiler kept,
//! compiled as attaching would compile it, so `check` accepts what it writes; the user chooses
//! the events and keeps the values they need.

use anyhow::Result;

use super::symbol_table;
use crate::{
    attach::source::{
        Site, SourceInfo,
        compile::{Scope, Side},
    },
    cli::{Binary, DebugFile},
    error::{Class, Refusal},
};

pub fn init(binary: &Binary, debug_file: &DebugFile, patterns: &[String]) -> Result<()> {
    let table = symbol_table(binary, debug_file)?;
    let source = table.read_debug_info().map_err(|error| Refusal::new(Class::Other, error))?;
    let Some(source) = source else {
        let message = "init reads the functions' signatures from the debug info, and the binary has none: \
                       build with `debug = \"full\"` in [profile.release], or give --debug-file";
        return Err(Refusal::new(Class::Other, message).into());
    };
    let mut manifest = String::from(
        "# A pool-obs manifest written by `pool-obs-agent init` from the binary's debug info: one probe\n\
         # per function, its event guessed from its name (`request_ended` with outcome \"ok\" unless it\n\
         # loads or unloads; an `async fn`: an `async_request`). Set each probe's event (worker_spawned,\n\
         # worker_evicted, worker_crashed, request_submitted, request_started, request_ended), keep the\n\
         # values it takes, and run `pool-obs-agent check` on the result.\n",
    );
    for pattern in patterns {
        // An `async fn`: its requests are its futures.
        if let Ok(coroutine) = source.coroutine(pattern) {
            manifest += &super::init_future::probe(&source, &table, pattern, &coroutine);
            continue;
        }
        let sites =
            source.sites(pattern).map_err(|problem| Refusal::new(problem.class(), problem.to_string()))?;
        manifest += &probe(&source, &sites).map_err(|problem| Refusal::new(Class::SourceValue, problem))?;
    }
    print!("{manifest}");
    Ok(())
}

/// One commented `[[probe]]` table for the function the sites run.
fn probe(source: &SourceInfo, sites: &[Site]) -> Result<String, String> {
    let site = &sites[0];
    let name = &site.function;
    let scope = Scope::new(source, site, Side::Entry)?;
    let parameters = source.parameters(site)?;
    let shown: Vec<String> = parameters
        .iter()
        .map(|parameter| format!("{}: {}", parameter.name, source.type_name(parameter.ty)))
        .collect();
    let returns = source.return_type(site);
    let arrow = returns.map_or(String::new(), |ty| format!(" -> {}", source.type_name(Some(ty))));
    let mut text = format!("\n# fn {name}({}){arrow}\n", shown.join(", "));
    let inlined = sites.iter().filter(|site| site.inlined.is_some()).count();
    let count = |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    text += &format!(
        "#   runs in {} and {}\n",
        count(sites.len() - inlined, "out-of-line copy", "out-of-line copies"),
        count(inlined, "inlined instance", "inlined instances")
    );
    for parameter in &parameters {
        if let Err(why) = &parameter.location {
            text += &format!("#   `{}` is {why} at {:#x}\n", parameter.name, site.address);
        }
    }
    let event = event_named_for(name);
    text += &format!("[[probe]]\nevent = \"{event}\"\nfunction = \"{name}\"\n");
    if event == "request_ended" {
        text += "outcome = \"ok\"\n";
    }
    let mut written: Vec<&str> = Vec::new();
    for (key, path, confident) in suggestions(&scope, &parameters) {
        // A worker's event takes its id as the worker's, not a request's.
        let (key, confident) = match key {
            "request_id" if event != "request_ended" => ("worker_id", true),
            "memory_bytes" => (key, event == "worker_spawned"),
            other => (other, confident),
        };
        // A key once: a second guess for it stays a comment.
        let comment = if confident && !written.contains(&key) { "" } else { "# " };
        if comment.is_empty() {
            written.push(key);
        }
        text += &format!("{comment}{key} = \"{path}\"\n");
    }
    if written.is_empty() {
        text += "# no parameter looks like a model key or an id: add values by hand\n";
    }
    // Outcomes by variant: of a parameter, or of the result at a return.
    for parameter in parameters.iter().filter(|parameter| parameter.location.is_ok()) {
        if let Some(variants) = scope.variant_names(&parameter.name) {
            text += &format!("# outcome = {{ value = \"{}\", {} }}\n", parameter.name, arms(&variants));
        }
    }
    if inlined == 0 && returns.is_some() {
        let at_return = Scope::new(source, site, Side::Return)?;
        if let Some(variants) = at_return.variant_names("return") {
            text += &format!("# at = \"return\"\n# outcome = {{ {} }}\n", arms(&variants));
        }
    }
    Ok(text)
}

/// The event a function's name suggests: a worker's loading or unloading, else a request's end.
fn event_named_for(function: &str) -> &'static str {
    let last = function.rsplit("::").next().unwrap_or(function).to_lowercase();
    if ["unload", "evict", "retire", "shutdown"].iter().any(|word| last.contains(word)) {
        "worker_evicted"
    } else if ["load", "spawn"].iter().any(|word| last.contains(word)) {
        "worker_spawned"
    } else {
        "request_ended"
    }
}

/// An arm per variant: `Ok` is ok, a variant named like a timeout is one, the rest failed.
fn arms(variants: &[String]) -> String {
    variants
        .iter()
        .map(|variant| format!("{variant} = \"{}\"", status_named_for(variant)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The status a variant's name suggests: `Ok` is ok, a variant named like a timeout is one,
/// the rest failed.
pub(super) fn status_named_for(variant: &str) -> &'static str {
    let lower = variant.to_lowercase();
    if lower == "ok" || lower == "some" || lower == "served" {
        "ok"
    } else if lower.contains("timeout") || lower.contains("expired") {
        "timeout"
    } else {
        "failed"
    }
}

/// The values a probe could read, guessed from names and types and compiled to be sure they
/// can be read: the first string parameter (or string field of one) as the model key, integers
/// named for requests, workers and memory as those. A guess from a name alone is commented.
fn suggestions(
    scope: &Scope,
    parameters: &[crate::attach::source::Parameter],
) -> Vec<(&'static str, String, bool)> {
    let mut paths = Vec::new();
    for parameter in parameters.iter().filter(|parameter| parameter.location.is_ok()) {
        paths.push(parameter.name.clone());
        for field in scope.field_names(&parameter.name) {
            paths.push(format!("{}.{field}", parameter.name));
        }
        // Behind an `Arc` or `Box` the fields are not listed, but a path reads through it.
        for field in ["model", "name", "key", "id", "worker_id", "request_id"] {
            let path = format!("{}.{field}", parameter.name);
            if !paths.contains(&path) && scope.value_type(&path).is_some() {
                paths.push(path);
            }
        }
    }
    let mut values = Vec::new();
    // A string named for a model first (`handle.name` before `reason`), then any string
    // parameter.
    let last = |path: &String| path.rsplit('.').next().unwrap_or(path).to_lowercase();
    let named = paths.iter().filter(|path| ["model", "name", "key"].contains(&last(path).as_str()));
    let top_level = paths.iter().filter(|path| !path.contains('.'));
    if let Some(model) = named.chain(top_level).find(|path| scope.string(path).is_ok()) {
        values.push(("model", model.clone(), true));
    }
    // Integers by how sure their names make the guess: named for a request, a worker or memory,
    // then `id`, then any other `…_id` (an `AtomicU64` counter such as `next_id` comes last).
    let integers: Vec<(&String, String)> = paths
        .iter()
        .filter(|path| scope.integer(path).is_ok())
        .map(|path| (path, path.rsplit('.').next().unwrap_or(path).to_lowercase()))
        .collect();
    for (path, last) in &integers {
        if last.contains("request") {
            values.push(("request_id", (*path).clone(), true));
        } else if last.contains("worker") {
            values.push(("worker_id", (*path).clone(), true));
        } else if last.contains("mem") {
            // Only `worker_spawned` takes it.
            values.push(("memory_bytes", (*path).clone(), false));
        }
    }
    for (path, _) in integers.iter().filter(|(_, last)| last == "id") {
        values.push(("request_id", (*path).clone(), false));
    }
    let other_id = |last: &str| {
        last != "id" && last.ends_with("_id") && !last.contains("request") && !last.contains("worker")
    };
    for (path, _) in integers.iter().filter(|(_, last)| other_id(last)) {
        values.push(("request_id", (*path).clone(), false));
    }
    values
}
