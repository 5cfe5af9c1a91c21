//! `init`: a starter manifest for the functions a user names, written from their signatures in
//! the debug info, so that a first manifest starts from which register holds which parameter
//! rather than from the calling convention. What it writes parses, and `check` accepts it; the
//! user chooses the events and keeps the values they need.

use anyhow::Result;
use pool_obs_common::probe::Register;

use super::{Slot, describe, register_slots, symbol_table};
use crate::{
    attach::dwarf::{DebugInfo, FunctionInfo, Param, TypeKind},
    cli::{Binary, DebugFile},
    error::{Class, Refusal},
};

pub fn init(binary: &Binary, debug_file: &DebugFile, patterns: &[String]) -> Result<()> {
    let table = symbol_table(binary, debug_file)?;
    let debug = match table.debug_info() {
        Some(path) => DebugInfo::read(path).map_err(|error| Refusal::new(Class::Other, error))?,
        None => None,
    };
    let Some(debug) = debug else {
        let message = "init reads the functions' signatures from the debug info, and the binary has none: \
                       build with `debug = \"full\"` in [profile.release], or give --debug-file";
        return Err(Refusal::new(Class::Other, message).into());
    };
    let mut manifest = String::from(
        "# A pool-obs manifest written by `pool-obs-agent init` from the binary's debug info: one probe\n\
         # per function, each `request_ended` with outcome \"ok\" until you choose. Set each probe's event\n\
         # (worker_spawned, worker_evicted, worker_crashed, request_submitted, request_started,\n\
         # request_ended), keep the values it takes, and run `pool-obs-agent check` on the result.\n",
    );
    for pattern in patterns {
        let copies = table.locate(pattern)?;
        let name = &copies[0].name;
        let function = debug.function_at(copies[0].address);
        manifest += &probe(name, function);
    }
    print!("{manifest}");
    Ok(())
}

/// One commented `[[probe]]` table for `name`.
fn probe(name: &str, function: Option<&FunctionInfo>) -> String {
    let mut text = String::from("\n");
    let Some(function) = function else {
        text += &format!("# {name}: no signature in the debug info\n[[probe]]\nevent = \"request_ended\"\n");
        text += &format!("function = \"{name}\"\noutcome = \"ok\"\n");
        return text;
    };
    let params: Vec<String> =
        function.params.iter().map(|param| format!("{}: {}", param.name, param.ty.name)).collect();
    let returns = function.returns.as_ref().map_or(String::new(), |returns| format!(" -> {}", returns.name));
    text += &format!("# fn {name}({}){returns}\n", params.join(", "));
    let slots = register_slots(function);
    for (register, slot) in slots.iter().enumerate() {
        if register < Register::ARGUMENTS.len() {
            text += &format!("#   arg{register}: {}\n", describe(slot));
        } else {
            text += &format!("#   (on the stack, which a manifest cannot read): {}\n", describe(slot));
        }
    }
    text += &format!("[[probe]]\nevent = \"request_ended\"\nfunction = \"{name}\"\noutcome = \"ok\"\n");
    let values = suggestions(&slots);
    if values.is_empty() {
        text += "# no parameter looks like a model key or an id: add values by hand\n";
    }
    let mut written: Vec<&str> = Vec::new();
    for (key, value, confident) in values {
        // A key once: a second guess for it stays a comment.
        let comment = if confident && !written.contains(&key) { "" } else { "# " };
        if comment.is_empty() {
            written.push(key);
        }
        text += &format!("{comment}{key} = \"{value}\"\n");
    }
    text
}

/// The values a probe could read, guessed from the parameters' types and names: the first
/// string-like parameter as the model key, integers named for requests and workers as ids.
/// A guess from a name alone is commented out.
fn suggestions(slots: &[Slot]) -> Vec<(&'static str, String, bool)> {
    let mut values = Vec::new();
    let string_like = |param: &Param| matches!(param.ty.name.as_str(), "&str" | "&[u8]");
    if let Some(register) =
        slots.iter().position(|slot| matches!(slot, Slot::Half(param, 0) if string_like(param)))
    {
        values.push(("model", format!("str(arg{register}, arg{})", register + 1), true));
    }
    for (register, slot) in slots.iter().enumerate().take(Register::ARGUMENTS.len()) {
        let Slot::Whole(param) = slot else { continue };
        if param.ty.kind != TypeKind::Other || !param.ty.name.starts_with('u') {
            continue;
        }
        let name = param.name.to_lowercase();
        if name.contains("request") {
            values.push(("request_id", format!("arg{register}"), true));
        } else if name.contains("worker") {
            values.push(("worker_id", format!("arg{register}"), true));
        } else if name == "id" || name.ends_with("_id") {
            values.push(("request_id", format!("arg{register}"), false));
        } else if name.contains("mem") {
            // Only `worker_spawned` takes it: a comment until the event is chosen.
            values.push(("memory_bytes", format!("arg{register}"), false));
        }
    }
    values
}
