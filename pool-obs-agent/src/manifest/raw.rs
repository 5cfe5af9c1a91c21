//! The manifest as TOML says it, and its compilation into [`Probe`]s: each value parsed in the
//! register syntax or kept as a source path, each problem located at its key or value. Raw
//! tables in, resolved probes out.

use std::ops::Range;

use pool_obs_common::{event::EventKind, probe::Scalar};
use serde::Deserialize;
use toml::Spanned;

use super::{At, Model, Probe, ProbeOutcome, Scaled, Value, VariantArm, value};
use crate::{
    error::Class,
    outcome::{Arm, Condition, OutcomeRule, Status},
};

/// The fields each event takes; the first is required.
fn fields_of(event: EventKind) -> &'static [&'static str] {
    match event {
        EventKind::WorkerSpawned => &["model", "worker_id", "memory_bytes"],
        EventKind::WorkerEvicted | EventKind::WorkerCrashed => &["worker_id", "model"],
        EventKind::RequestSubmitted => &["request_id", "model"],
        EventKind::RequestStarted => &["request_id", "model", "worker_id"],
        EventKind::RequestEnded => &["outcome", "request_id", "model", "worker_id"],
        EventKind::FuturePolled => &["model", "request_id", "outcome"],
        EventKind::FutureDropped | EventKind::CpuSampled | EventKind::HandoffRan => &[],
    }
}

/// A problem found while compiling one probe table.
pub(super) struct Problem {
    pub(super) span: Range<usize>,
    pub(super) class: Class,
    pub(super) message: String,
}

type Located<T> = Result<T, Problem>;

fn syntax(span: Range<usize>, message: String) -> Problem {
    Problem { span, class: Class::ManifestSyntax, message }
}

fn names(span: Range<usize>, message: String) -> Problem {
    Problem { span, class: Class::ManifestNames, message }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawManifest {
    #[serde(default)]
    pub(super) probe: Vec<RawProbe>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProbe {
    event: Spanned<String>,
    function: Spanned<OneOrMany>,
    at: Option<Spanned<String>>,
    model: Option<Spanned<RawModel>>,
    worker_id: Option<Spanned<String>>,
    request_id: Option<Spanned<String>>,
    memory_bytes: Option<Spanned<RawScaled>>,
    outcome: Option<Spanned<RawOutcome>>,
    unsafe_uretprobe: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawModel {
    Read(String),
    Constant { constant: String },
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawScaled {
    Plain(String),
    Scaled { value: String, scale: f64 },
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawOutcome {
    Constant(String),
    /// A rule on a register-syntax value (keys `value`, `ok`, `timeout`, `failed`,
    /// `otherwise`), or arms by variant names (keys `value` and variant patterns).
    Table(std::collections::BTreeMap<String, String>),
}

impl RawProbe {
    /// Whether the table opens requests that a `request_ended` must find again.
    pub(super) fn opens_requests(&self) -> bool {
        matches!(self.event.get_ref().as_str(), "request_started" | "request_submitted")
    }

    /// One probe per function the table names; `requests_opened` says whether another table of
    /// the manifest opens requests.
    pub(super) fn compile(self, requests_opened: bool) -> Located<Vec<Probe>> {
        let event = parse_event(&self.event)?;
        let at = match self.at.as_ref().map(|at| (at.span(), at.get_ref().as_str())) {
            None | Some((_, "entry")) => At::Entry,
            Some((_, "return")) => At::Return,
            Some((span, other)) => {
                return Err(names(span, format!("`at = \"{other}\"`: expected \"entry\" or \"return\"")));
            }
        };
        self.check_fields(event)?;
        // At an entry, an end without the request's id is no call of its own either: it could
        // only land under no request, with no latency, while the request it ends stays open.
        if event == EventKind::RequestEnded && at == At::Entry && self.request_id.is_none() && requests_opened
        {
            return Err(names(
                self.event.span(),
                "request_ended at a function's entry needs `request_id`, the id the request_started or \
                 request_submitted probe reads, to find the request it ends: add it, or probe the return \
                 of the function that serves the request (`at = \"return\"`), where the call is the request"
                    .to_string(),
            ));
        }
        if let Some(at) = self.at.as_ref().filter(|_| event == EventKind::FuturePolled) {
            return Err(names(
                at.span(),
                "`at` does not apply to async_request: a request is its future, from its first poll to the \
                 poll that returns `Ready`, or to its drop"
                    .to_string(),
            ));
        }
        let unsafe_uretprobe = match &self.unsafe_uretprobe {
            Some(flag) if at == At::Entry && *flag.get_ref() => {
                return Err(names(
                    flag.span(),
                    "`unsafe_uretprobe` applies only with `at = \"return\"`".to_string(),
                ));
            }
            Some(flag) => *flag.get_ref(),
            None => false,
        };
        let scalar = |field: &Option<Spanned<String>>| {
            field.as_ref().map(|text| parse_value(text.get_ref(), text.span(), at)).transpose()
        };
        let template = Probe {
            event,
            function: String::new(),
            at,
            model: self.model.as_ref().map(|model| compile_model(model, at)).transpose()?,
            worker_id: scalar(&self.worker_id)?,
            request_id: scalar(&self.request_id)?,
            memory_bytes: self.memory_bytes.as_ref().map(|memory| compile_scaled(memory, at)).transpose()?,
            // An async request's outcome is what its future returns.
            outcome: self
                .outcome
                .as_ref()
                .map(|outcome| {
                    compile_outcome(outcome, if event == EventKind::FuturePolled { At::Return } else { at })
                })
                .transpose()?,
            unsafe_uretprobe,
        };
        let functions = match self.function.get_ref() {
            OneOrMany::One(function) => vec![function.clone()],
            OneOrMany::Many(functions) if !functions.is_empty() => functions.clone(),
            OneOrMany::Many(_) => {
                return Err(names(self.function.span(), "`function` lists no functions".to_string()));
            }
        };
        Ok(functions.into_iter().map(|function| Probe { function, ..template.clone() }).collect())
    }

    fn check_fields(&self, event: EventKind) -> Located<()> {
        let given = [
            ("model", self.model.as_ref().map(Spanned::span)),
            ("worker_id", self.worker_id.as_ref().map(Spanned::span)),
            ("request_id", self.request_id.as_ref().map(Spanned::span)),
            ("memory_bytes", self.memory_bytes.as_ref().map(Spanned::span)),
            ("outcome", self.outcome.as_ref().map(Spanned::span)),
        ];
        let allowed = fields_of(event);
        if let Some((name, Some(span))) =
            given.iter().find(|(name, span)| span.is_some() && !allowed.contains(name))
        {
            let message =
                format!("`{name}` does not apply to {}: it takes {}", event.name(), allowed.join(", "));
            return Err(names(span.clone(), message));
        }
        let required = allowed[0];
        if given.iter().any(|(name, span)| *name == required && span.is_none()) {
            return Err(names(self.event.span(), format!("{} needs `{required}`", event.name())));
        }
        Ok(())
    }
}

fn parse_event(event: &Spanned<String>) -> Located<EventKind> {
    let named = EventKind::ALL.into_iter().filter(|kind| kind.in_manifests());
    named.clone().find(|kind| kind.name() == event.get_ref()).ok_or_else(|| {
        let known: Vec<_> = named.map(|kind| kind.name()).collect();
        names(
            event.span(),
            format!("unknown event `{}`: expected one of {}", event.get_ref(), known.join(", ")),
        )
    })
}

/// A source path: names joined by dots (`job.model`, `return.Ok.0`). Words of the register
/// syntax (`arg1`, `ret`) stay register syntax.
fn is_source_path(text: &str) -> bool {
    let text = text.trim();
    let register_word = |word: &str| {
        word == "ret"
            || (word.starts_with("ret") || word.starts_with("arg"))
                && word.len() > 3
                && word[3..].chars().all(|c| c.is_ascii_digit())
    };
    let first = text.split('.').next().unwrap_or_default();
    !text.is_empty()
        && !register_word(first)
        && first.chars().next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && text
            .split('.')
            .all(|step| !step.is_empty() && step.chars().all(|c| c.is_alphanumeric() || c == '_'))
}

fn parse_value(text: &str, span: Range<usize>, at: At) -> Located<Value> {
    if is_source_path(text) {
        return Ok(Value::Path(text.trim().to_string()));
    }
    Ok(Value::Registers(parse_scalar_at(text, span, at)?))
}

fn parse_scalar_at(text: &str, span: Range<usize>, at: At) -> Located<Scalar> {
    let scalar =
        value::parse_scalar(text).map_err(|error| syntax(span.clone(), format!("`{text}` {error}")))?;
    reject_return_register_at_entry(&scalar, at, text, span)?;
    Ok(scalar)
}

fn reject_return_register_at_entry(scalar: &Scalar, at: At, text: &str, span: Range<usize>) -> Located<()> {
    if at == At::Entry && scalar.reads_return() {
        let message = format!("`{text}` reads a return register, which only exists with `at = \"return\"`");
        return Err(syntax(span, message));
    }
    Ok(())
}

fn compile_model(model: &Spanned<RawModel>, at: At) -> Located<Model> {
    let span = model.span();
    match model.get_ref() {
        RawModel::Constant { constant } => Ok(Model::Constant(constant.clone())),
        RawModel::Read(text) if is_source_path(text) => Ok(Model::Path(text.trim().to_string())),
        RawModel::Read(text) => {
            let parsed =
                value::parse_str(text).map_err(|error| syntax(span.clone(), format!("`{text}` {error}")))?;
            reject_return_register_at_entry(&parsed.ptr, at, text, span.clone())?;
            reject_return_register_at_entry(&parsed.len, at, text, span)?;
            Ok(Model::Read(parsed))
        }
    }
}

fn compile_scaled(memory: &Spanned<RawScaled>, at: At) -> Located<Scaled> {
    let span = memory.span();
    match memory.get_ref() {
        RawScaled::Plain(text) => Ok(Scaled { value: parse_value(text, span, at)?, scale: 1.0 }),
        RawScaled::Scaled { value, scale } if scale.is_finite() && *scale > 0.0 => {
            Ok(Scaled { value: parse_value(value, span, at)?, scale: *scale })
        }
        RawScaled::Scaled { scale, .. } => {
            Err(syntax(span, format!("`scale = {scale}` must be a positive number")))
        }
    }
}

/// The keys of an outcome rule on a register-syntax value.
const RULE_KEYS: [&str; 5] = ["value", "ok", "timeout", "failed", "otherwise"];

fn compile_outcome(outcome: &Spanned<RawOutcome>, at: At) -> Located<ProbeOutcome> {
    let span = outcome.span();
    let status = |text: &str| {
        Status::parse(text).ok_or_else(|| {
            names(
                span.clone(),
                format!("unknown outcome `{text}`: expected ok, failed, timeout or cancelled"),
            )
        })
    };
    let table = match outcome.get_ref() {
        RawOutcome::Constant(text) => return Ok(ProbeOutcome::Constant(status(text)?)),
        RawOutcome::Table(table) => table,
    };
    let value = table.get("value").map(String::as_str);
    // A rule compares a value: on a register-syntax one, or on an integer named in source terms
    // when the table has the rule's `otherwise` (a variant's name is never lowercase).
    let compares = value.is_some_and(|value| !is_source_path(value)) || table.contains_key("otherwise");
    if compares {
        // Every other key is a status.
        if let Some(key) = table.keys().find(|key| !RULE_KEYS.contains(&key.as_str())) {
            return Err(names(
                span,
                format!("unknown key `{key}` in an outcome rule: expected {}", RULE_KEYS.join(", ")),
            ));
        }
        let arms = [(Status::Ok, "ok"), (Status::Timeout, "timeout"), (Status::Failed, "failed")]
            .into_iter()
            .filter_map(|(status, key)| table.get(key).map(|condition| (status, condition)))
            .map(|(status, condition)| {
                let condition = Condition::parse(condition).map_err(|error| syntax(span.clone(), error))?;
                Ok(Arm::on_value(status, condition))
            })
            .collect::<Located<Vec<_>>>()?;
        let otherwise = table
            .get("otherwise")
            .ok_or_else(|| names(span.clone(), "an outcome rule needs `otherwise`".to_string()))?;
        let rule = OutcomeRule { arms, otherwise: status(otherwise)? };
        return match value {
            Some(value) if !is_source_path(value) => {
                Ok(ProbeOutcome::Rule { value: parse_scalar_at(value, span.clone(), at)?, rule })
            }
            Some(path) => Ok(ProbeOutcome::Compared { path: path.trim().to_string(), rule }),
            None if at == At::Return => Ok(ProbeOutcome::Compared { path: "return".to_string(), rule }),
            None => Err(names(span, "an outcome rule needs `value`, what it compares".to_string())),
        };
    }
    let path = match (value, at) {
        (Some(path), _) => path.trim().to_string(),
        (None, At::Return) => "return".to_string(),
        (None, At::Entry) => {
            return Err(names(
                span,
                "an outcome by variants needs `value`, the path of the enum (at a return it is `return`)"
                    .to_string(),
            ));
        }
    };
    let mut arms = Vec::new();
    for (key, target) in table.iter().filter(|(key, _)| key.as_str() != "value") {
        let (variant, inner) = parse_variant_pattern(key).ok_or_else(|| {
            syntax(
                span.clone(),
                format!(
                    "`{key}` is not a variant: expected `Name`, `Name(Inner)`, `Name(Enum::Inner)` or `_`"
                ),
            )
        })?;
        arms.push(VariantArm { variant, inner, status: status(target)? });
    }
    if arms.is_empty() {
        return Err(names(span, "an outcome by variants names no variant".to_string()));
    }
    Ok(ProbeOutcome::Variants { path, arms })
}

/// `Ok`, `Err(Timeout)`, `Err(JobError::Timeout)` or `_`: (variant, inner variant).
fn parse_variant_pattern(key: &str) -> Option<(String, Option<String>)> {
    let identifier = |text: &str| {
        !text.is_empty()
            && text.chars().next().is_some_and(|c| c.is_alphabetic() || c == '_')
            && text.chars().all(|c| c.is_alphanumeric() || c == '_')
    };
    let key = key.trim();
    let Some((outer, rest)) = key.split_once('(') else {
        return identifier(key).then(|| (key.to_string(), None));
    };
    let inner = rest.strip_suffix(')')?.trim();
    let inner = inner.rsplit("::").next().unwrap_or(inner);
    (identifier(outer.trim()) && identifier(inner) && inner != "_")
        .then(|| (outer.trim().to_string(), Some(inner.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outcome_rule_on_a_source_path_compares_the_integer_there() {
        let manifest = crate::manifest::parse(
            "[[probe]]\nevent = \"request_ended\"\nfunction = \"f\"\nat = \"return\"\nmodel = { constant = \"m\" }\n\
             outcome = { value = \"return.status\", ok = \"< 400\", timeout = \"== 504\", otherwise = \"failed\" }",
            "test",
        )
        .expect("a manifest");
        let Some(ProbeOutcome::Compared { path, rule }) = &manifest.probes[0].outcome else {
            panic!("{:?}", manifest.probes[0].outcome)
        };
        assert_eq!(path, "return.status");
        assert_eq!(
            [200, 404, 500, 504].map(|status| rule.classify(status, 0)),
            [Status::Ok, Status::Failed, Status::Failed, Status::Timeout]
        );
    }

    #[test]
    fn variant_patterns() {
        assert_eq!(parse_variant_pattern("Ok"), Some(("Ok".to_string(), None)));
        let timeout = Some(("Err".to_string(), Some("Timeout".to_string())));
        assert_eq!(parse_variant_pattern("Err(JobError::Timeout)"), timeout);
        assert_eq!(parse_variant_pattern("Err(Timeout)"), timeout);
        assert_eq!(parse_variant_pattern("_"), Some(("_".to_string(), None)));
        assert_eq!(parse_variant_pattern("Err(_)"), None);
        assert_eq!(parse_variant_pattern("Err(Timeout"), None);
        assert!(is_source_path("job.model") && is_source_path("return.Ok.0") && is_source_path("self"));
        assert!(!is_source_path("arg1") && !is_source_path("ret") && !is_source_path("*(arg0 + 8)"));
    }
}
