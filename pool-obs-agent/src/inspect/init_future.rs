//! `init` for an `async fn`: an `async_request` probe, whose values are the fn's arguments and
//! the names its patterns bind (`Path(model)`), and whose outcome is by the variants of what it
//! returns. Each value is suggested only once the plan `check` runs accepts it, so what `init`
//! writes checks out; a value it cannot vouch for stays a comment, with the reason.

use super::init::status_named_for;
use crate::{
    attach::{
        plan,
        source::{
            SourceInfo,
            coroutine::Coroutine,
            types::{Shape, TypeId},
        },
        symbols::SymbolTable,
    },
    manifest,
};

/// The commented `[[probe]]` table for the async fn `function`.
pub fn probe(source: &SourceInfo, table: &SymbolTable, function: &str, coroutine: &Coroutine) -> String {
    let named =
        coroutine.arguments.iter().chain(&coroutine.bindings).filter(|member| !member.name.starts_with("__"));
    let mut paths = Vec::new();
    let mut shown = Vec::new();
    for member in named {
        shown.push(format!("{}: {}", member.name, source.type_name(Some(member.ty))));
        paths.push(member.name.clone());
        paths.extend(fields(source, member.ty).into_iter().map(|field| format!("{}.{field}", member.name)));
    }
    let mut text = format!(
        "\n# async fn {function}, taking {}\n# A request is its future: from its first poll to the poll that is `Ready`, or to its drop (cancelled).\n",
        shown.join(", ")
    );
    let base = format!("[[probe]]\nevent = \"async_request\"\nfunction = \"{function}\"\n");
    text += &base;
    // Each value is tried alone, with a constant model when it is not the model.
    let accepts = |line: &str| -> Result<(), String> {
        let model = if line.starts_with("model") { "" } else { "model = { constant = \"m\" }\n" };
        let text = format!("{base}{model}{line}\n");
        let parsed = manifest::parse(&text, "init").map_err(|error| error.to_string())?;
        plan::plan(&parsed, table, Some(source)).map(|_| ()).map_err(|error| format!("{error:#}"))
    };
    if let Err(problem) = accepts("") {
        return text + &format!("# pool-obs cannot follow it: {problem}\n");
    }
    let last = |path: &str| path.rsplit('.').next().unwrap_or(path).to_lowercase();
    let mut models: Vec<&String> =
        paths.iter().filter(|path| ["model", "name", "key"].contains(&last(path).as_str())).collect();
    models.extend(paths.iter().filter(|path| !path.contains('.')));
    match models.into_iter().find(|path| accepts(&format!("model = \"{path}\"")).is_ok()) {
        Some(path) => text += &format!("model = \"{path}\"\n"),
        None => text += "# no argument reads as a model key here: set `model` by hand\n",
    }
    let ids = paths.iter().filter(|path| {
        let last = last(path);
        last.contains("request") || last == "id" || (last.ends_with("_id") && !last.contains("worker"))
    });
    if let Some(path) = ids.into_iter().find(|path| accepts(&format!("request_id = \"{path}\"")).is_ok()) {
        text += &format!("request_id = \"{path}\"\n");
    }
    if let Some(arms) = outcome_arms(source, coroutine) {
        let line = format!("outcome = {{ {arms} }}");
        match accepts(&line) {
            Ok(()) => text += &format!("{line}\n"),
            Err(problem) => text += &format!("# {line}\n#   (not here: {problem})\n"),
        }
    }
    text
}

/// The fields of a struct, or of the struct a reference points at.
fn fields(source: &SourceInfo, ty: TypeId) -> Vec<String> {
    let units = source.units();
    let Ok(mut shape) = units.type_of(ty) else { return Vec::new() };
    if let Shape::Pointer(Some(target)) = shape.shape {
        let Ok(pointee) = units.type_of(target) else { return Vec::new() };
        shape = pointee;
    }
    match shape.shape {
        Shape::Struct { members, variants: None } => members
            .into_iter()
            .map(|member| member.name)
            .filter(|name| !name.starts_with("__") && !name.is_empty())
            .collect(),
        _ => Vec::new(),
    }
}

/// Arms by the variants of the future's output: `Ok` ok, an error variant named like a
/// timeout one, the rest failed.
fn outcome_arms(source: &SourceInfo, coroutine: &Coroutine) -> Option<String> {
    let output = variants(source, coroutine.poll_type?)
        .into_iter()
        .find(|(name, _)| name == "Ready")
        .and_then(|(_, data)| data)?;
    let outcomes = variants(source, output);
    if outcomes.is_empty() {
        return None;
    }
    let mut arms = Vec::new();
    for (variant, data) in &outcomes {
        let inner =
            data.map(|data| (source.type_name(Some(data)), variants(source, data))).unwrap_or_default();
        let short = inner.0.rsplit("::").next().unwrap_or(&inner.0).to_string();
        // An arm for an inner variant only where it says more than its outer one.
        for (name, _) in inner.1.iter().filter(|(name, _)| status_named_for(name) == "timeout") {
            arms.push(format!("\"{variant}({short}::{name})\" = \"timeout\""));
        }
        arms.push(format!("\"{variant}\" = \"{}\"", status_named_for(variant)));
    }
    Some(arms.join(", "))
}

/// An enum's variants, each with the type of its first field.
fn variants(source: &SourceInfo, ty: TypeId) -> Vec<(String, Option<TypeId>)> {
    let units = source.units();
    let Ok(found) = units.type_of(ty) else { return Vec::new() };
    match found.shape {
        Shape::Struct { variants: Some(variants), .. } => variants
            .variants
            .iter()
            .map(|variant| {
                let data = units.type_of(variant.member.ty).ok();
                let first = data.and_then(|data| match data.shape {
                    Shape::Struct { members, .. } => members.first().map(|member| member.ty),
                    _ => None,
                });
                (variant.name.clone(), first)
            })
            .collect(),
        Shape::Enumeration(values) => values.into_iter().map(|(name, _)| (name, None)).collect(),
        _ => Vec::new(),
    }
}
