//! `symbols`, `check` and `init`: looking at a pool's binary before attaching to it.

mod init;
mod init_future;

pub use init::init;

use std::{collections::HashMap, path::Path};

use anyhow::Result;
use pool_obs_common::event::EventKind;

use crate::{
    attach::{
        plan,
        source::SourceInfo,
        symbols::{SymbolTable, glob_match},
        verdicts::{register_slots, verdicts},
    },
    cli::{Binary, DebugFile},
    error::{Class, Refusal},
    manifest::{self, At},
    target::Target,
};

/// The symbols of the binary asked for: a running process's, or a file.
fn symbol_table(binary: &Binary, debug: &DebugFile) -> Result<SymbolTable> {
    let explicit = debug.debug_file.as_deref();
    match (binary.pid, &binary.binary) {
        (Some(pid), _) => {
            let target = Target::open(pid)?;
            SymbolTable::open(&target.exe_link, Path::new(&target.exe), &target.shown(), explicit)
        }
        (None, Some(path)) if path.exists() => {
            SymbolTable::open(path, path, &path.display().to_string(), explicit)
        }
        (None, Some(path)) => {
            Err(Refusal::new(Class::Process, format!("no file at {}", path.display())).into())
        }
        (None, None) => unreachable!("clap requires --pid or --binary"),
    }
}

/// Lists probe-able functions: address, size, demangled and mangled name; marks generic
/// instances and names shared by several functions.
pub fn symbols(binary: &Binary, debug: &DebugFile, pattern: Option<&str>) -> Result<()> {
    let table = symbol_table(binary, debug)?;
    // A pattern matches anywhere in the name, so that `axum::handler::Handler*call*` finds
    // `<F as axum::handler::Handler<…>>::call`: trait methods' names start with `<`.
    let glob = match pattern {
        Some(pattern) => format!("*{pattern}*"),
        None => "*".to_string(),
    };
    let found = table.matching(&glob);
    let mut name_counts: HashMap<&str, usize> = HashMap::new();
    for symbol in &found {
        *name_counts.entry(&symbol.name).or_default() += 1;
    }
    for symbol in &found {
        let mut marks = String::new();
        if symbol.name.contains('<') {
            marks.push_str(" [generic]");
        }
        if let Some(count) = name_counts.get(symbol.name.as_str()).filter(|count| **count > 1) {
            marks.push_str(&format!(" [{count} functions share this name]"));
        }
        println!("{:#012x} {:>8}  {}{marks}  {}", symbol.address, symbol.size, symbol.name, symbol.mangled);
    }
    // What the optimiser inlined everywhere has no symbol: the debug info still knows it.
    let debug = table.read_debug_info().map_err(|error| Refusal::new(Class::Other, error))?;
    let inlined: Vec<(&str, usize)> = debug
        .iter()
        .flat_map(SourceInfo::inlined_functions)
        .filter(|(name, instances)| *instances > 0 && glob_match(&glob, name) && !table.has_function(name))
        .collect();
    if !inlined.is_empty() {
        println!("inlined into their callers everywhere, with no symbol of their own:");
        for (name, instances) in &inlined {
            println!("  {name}  [{instances} inlined instances]");
        }
    }
    match (found.len() + inlined.len(), pattern) {
        (0, Some(pattern)) => println!("no function matches `{pattern}`"),
        _ if inlined.is_empty() => println!("{} functions", found.len()),
        _ => println!("{} functions, {} more inlined everywhere", found.len(), inlined.len()),
    }
    Ok(())
}

/// Validates a manifest against a binary without attaching; fails if anything is wrong.
pub fn check(manifest_path: &Path, binary: &Binary, debug_file: &DebugFile) -> Result<()> {
    let manifest = manifest::load(manifest_path)?;
    let table = symbol_table(binary, debug_file)?;
    let source = table.read_debug_info().map_err(|error| Refusal::new(Class::Other, error))?;
    match table.debug_info() {
        None => println!("no debug info found: functions are checked, registers are not"),
        Some(path) => println!("debug info: {}", path.display()),
    }
    let mut problems = 0;
    for probe in &manifest.probes {
        match (probe.event, probe.at) {
            // A request that is a future has no side: its polls and its drop are probed.
            (EventKind::FuturePolled, _) => println!("{} of {}", probe.event.name(), probe.function),
            (_, At::Entry) => println!("{} at entry of {}", probe.event.name(), probe.function),
            (_, At::Return) => println!("{} at return of {}", probe.event.name(), probe.function),
        }
        if probe.reads_source_paths() {
            // Compiled alone, so that every probe's problem shows, not only the first.
            let alone = manifest::Manifest { probes: vec![probe.clone()] };
            match plan::plan(&alone, &table, source.as_ref()) {
                Ok(plan) => show_compiled(&plan),
                Err(error) => {
                    println!("  ✗ {error:#}");
                    problems += 1;
                }
            }
            continue;
        }
        let copies = match table.locate(&probe.function) {
            Ok(copies) => copies,
            Err(error) => {
                println!("  ✗ {error}");
                problems += 1;
                continue;
            }
        };
        for copy in &copies {
            println!("  found {} at {:#x}", copy.name, copy.address);
        }
        if copies.len() > 1 {
            println!(
                "  {} copies of one function (one per codegen unit that uses it): all are probed",
                copies.len()
            );
        }
        let symbol = copies[0];
        let Some(function) = source.as_ref().and_then(|source| source.function_at(symbol.address)) else {
            continue;
        };
        let slots = register_slots(&function);
        for (field, verdict) in verdicts(probe, &slots) {
            match verdict {
                Ok(meaning) => println!("  ✓ {field}: {meaning}"),
                Err(problem) => {
                    println!("  ✗ {field}: {problem}");
                    problems += 1;
                }
            }
        }
    }
    // Where the probes go, decided from the machine code exactly as attaching decides it.
    match plan::plan(&manifest, &table, source.as_ref()) {
        Ok(plan) => {
            println!("probe sites");
            for attachment in &plan.attachments {
                println!(
                    "  {}+{:#x} `{}` ({}): {}",
                    attachment.function,
                    attachment.site.offset,
                    attachment.site.instruction,
                    attachment.program.name(),
                    attachment.reason
                );
            }
        }
        Err(error) if problems == 0 => {
            println!("  ✗ {error:#}");
            problems += 1;
        }
        // The problem was shown above, with its probe.
        Err(_) => {}
    }
    if problems > 0 {
        let message = format!("{problems} problem(s) in {}: see above", manifest_path.display());
        return Err(Refusal::new(Class::CheckFailed, message).into());
    }
    println!("ok: {} probes check out", manifest.probes.len());
    Ok(())
}

/// Each site of a probe compiled from source paths, with its values' expressions.
fn show_compiled(plan: &plan::Plan) {
    let mut site = "";
    for compiled in &plan.compiled {
        if compiled.site != site {
            site = &compiled.site;
            println!("  {site}");
        }
        println!("    ✓ {} = \"{}\": {}", compiled.field, compiled.path, compiled.expression);
    }
}
