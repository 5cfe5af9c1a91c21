//! The probe manifest: which of the pool's functions means which lifecycle event, and where
//! each of the event's values lives. See the README's "Writing a manifest" for the format.

pub mod value;

use std::{ops::Range, path::Path};

use pool_obs_common::{event::EventKind, probe::Scalar};
use serde::Deserialize;
use toml::Spanned;

use crate::{
    error::Class,
    outcome::{Arm, Condition, OutcomeRule, Status},
};
use value::StrValue;

/// Each probe takes one kernel table slot, and a return probe may need a second to save its
/// entry arguments.
pub const MAX_MANIFEST_PROBES: usize = pool_obs_common::probe::MAX_PROBES as usize / 2;

#[derive(Debug)]
pub struct Manifest {
    pub probes: Vec<Probe>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum At {
    Entry,
    Return,
}

#[derive(Clone, Debug)]
pub struct Probe {
    pub event: EventKind,
    /// A demangled Rust path without the hash; `*` matches any run of characters.
    pub function: String,
    pub at: At,
    pub model: Option<Model>,
    pub worker_id: Option<Value>,
    pub request_id: Option<Value>,
    pub memory_bytes: Option<Scaled>,
    pub outcome: Option<ProbeOutcome>,
    /// `unsafe_uretprobe = true`: a uretprobe even where a panic could unwind through it, which
    /// aborts the pool. Without it, a return probe is a uprobe on every return instruction,
    /// unless the agent shows that the function cannot unwind.
    pub unsafe_uretprobe: bool,
}

/// A value as the manifest names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// By its source path (`job.id`), compiled from the debug info at each probe site.
    Path(String),
    /// In the register syntax (`*(arg1 + 8)`): the same at every site.
    Registers(Scalar),
}

/// Where a probe's model key comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Model {
    /// A string by its source path.
    Path(String),
    /// Read from registers and memory, in the register syntax.
    Read(StrValue),
    /// Always this key: for a pool with one model, or functions that do not see it.
    Constant(String),
}

/// A value read from the target, then multiplied by `scale` (say, MiB to bytes).
#[derive(Clone, Debug, PartialEq)]
pub struct Scaled {
    pub value: Value,
    pub scale: f64,
}

/// How a request's outcome is decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// Always this status.
    Constant(Status),
    /// By comparing a value in the register syntax.
    Rule { value: Scalar, rule: OutcomeRule },
    /// By the variant of the enum at a source path (`return`, `result`).
    Variants { path: String, arms: Vec<VariantArm> },
}

/// One arm of an outcome by variant names: `"Err(JobError::Timeout)" = "timeout"` is variant
/// `Err`, inner variant `Timeout`; `"_"` is every variant no other arm names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VariantArm {
    pub variant: String,
    pub inner: Option<String>,
    pub status: Status,
}

impl Probe {
    /// Whether the probe needs the debug info: a value is named by a source path, or the
    /// request is a future.
    pub fn reads_source_paths(&self) -> bool {
        let path = |value: &Option<Value>| matches!(value, Some(Value::Path(_)));
        self.event == EventKind::FuturePolled
            || matches!(self.model, Some(Model::Path(_)))
            || path(&self.worker_id)
            || path(&self.request_id)
            || matches!(&self.memory_bytes, Some(Scaled { value: Value::Path(_), .. }))
            || matches!(self.outcome, Some(ProbeOutcome::Variants { .. }))
    }
}

/// A manifest problem, located as `file:line:column`.
#[derive(Debug, thiserror::Error)]
#[error("{path}:{line}:{column}: {message}")]
pub struct ManifestError {
    pub path: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
    /// [`Class::ManifestSyntax`] or [`Class::ManifestNames`].
    pub class: Class,
}

pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| ManifestError {
        path: shown.clone(),
        line: 0,
        column: 0,
        message: format!("cannot read the manifest: {error}"),
        class: Class::Other,
    })?;
    parse(&text, &shown)
}

pub fn parse(text: &str, path: &str) -> Result<Manifest, ManifestError> {
    let locate = |span: Option<Range<usize>>, class: Class, message: String| {
        let (line, column) = span.map_or((0, 0), |span| line_and_column(text, span.start));
        ManifestError { path: path.to_string(), line, column, message, class }
    };
    let raw: RawManifest = toml::from_str(text).map_err(|error| {
        let message = error.message().to_string();
        // serde's words for a key or value it does not know, as opposed to broken TOML.
        let names = message.starts_with("unknown field") || message.starts_with("unknown variant");
        let class = if names { Class::ManifestNames } else { Class::ManifestSyntax };
        locate(error.span(), class, message)
    })?;
    if raw.probe.is_empty() {
        return Err(locate(None, Class::ManifestNames, "the manifest has no [[probe]] tables".to_string()));
    }
    let mut probes = Vec::new();
    for raw_probe in raw.probe {
        let compiled = raw_probe
            .compile()
            .map_err(|problem| locate(Some(problem.span), problem.class, problem.message))?;
        probes.extend(compiled);
    }
    if probes.len() > MAX_MANIFEST_PROBES {
        let message =
            format!("the manifest has {} probes; at most {MAX_MANIFEST_PROBES} are supported", probes.len());
        return Err(locate(None, Class::ManifestNames, message));
    }
    Ok(Manifest { probes })
}

fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |newline| newline + 1) + 1;
    (line, column)
}

/// The fields each event takes; the first is required.
fn fields_of(event: EventKind) -> &'static [&'static str] {
    match event {
        EventKind::WorkerSpawned => &["model", "worker_id", "memory_bytes"],
        EventKind::WorkerEvicted | EventKind::WorkerCrashed => &["worker_id", "model"],
        EventKind::RequestSubmitted => &["request_id", "model"],
        EventKind::RequestStarted => &["request_id", "model", "worker_id"],
        EventKind::RequestEnded => &["outcome", "request_id", "model", "worker_id"],
        EventKind::FuturePolled => &["model", "request_id", "outcome"],
        EventKind::FutureDropped | EventKind::CpuSampled => &[],
    }
}

/// A problem found while compiling one probe table.
struct Problem {
    span: Range<usize>,
    class: Class,
    message: String,
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
struct RawManifest {
    #[serde(default)]
    probe: Vec<RawProbe>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
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
    /// One probe per function the table names.
    fn compile(self) -> Located<Vec<Probe>> {
        let event = parse_event(&self.event)?;
        let at = match self.at.as_ref().map(|at| (at.span(), at.get_ref().as_str())) {
            None | Some((_, "entry")) => At::Entry,
            Some((_, "return")) => At::Return,
            Some((span, other)) => {
                return Err(names(span, format!("`at = \"{other}\"`: expected \"entry\" or \"return\"")));
            }
        };
        self.check_fields(event)?;
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
    if let Some(value) = value.filter(|value| !is_source_path(value)) {
        // A rule on a register-syntax value: every other key is a status.
        if let Some(key) = table.keys().find(|key| !RULE_KEYS.contains(&key.as_str())) {
            return Err(names(
                span,
                format!("unknown key `{key}` in an outcome rule: expected {}", RULE_KEYS.join(", ")),
            ));
        }
        let value = parse_scalar_at(value, span.clone(), at)?;
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
        return Ok(ProbeOutcome::Rule { value, rule: OutcomeRule { arms, otherwise: status(otherwise)? } });
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

    const DEMO: &str = include_str!("../../tests/manifests/demo-pool.toml");
    const DEMO_REGISTERS: &str = include_str!("../../tests/manifests/demo-pool-registers.toml");

    fn responded(text: &str) -> Probe {
        let manifest = parse(text, "demo-pool.toml").unwrap();
        let ended: Vec<_> = manifest.probes.iter().filter(|p| p.event == EventKind::RequestEnded).collect();
        assert_eq!(ended.len(), 2);
        ended.iter().find(|p| p.function.ends_with("respond")).map(|probe| (*probe).clone()).unwrap()
    }

    #[test]
    fn the_demo_manifest_parses_in_source_terms() {
        let responded = responded(DEMO);
        assert_eq!(responded.model, Some(Model::Path("model".to_string())));
        assert_eq!(responded.request_id, Some(Value::Path("request_id".to_string())));
        let Some(ProbeOutcome::Variants { path, arms }) = responded.outcome else {
            panic!("an outcome by variants")
        };
        assert_eq!(path, "result");
        let arms: Vec<_> = arms.iter().map(|arm| (arm.variant.as_str(), arm.status)).collect();
        assert_eq!(arms, [("Err", Status::Failed), ("Ok", Status::Ok)]);
    }

    #[test]
    fn the_demo_manifest_parses_in_registers() {
        let responded = responded(DEMO_REGISTERS);
        let Some(ProbeOutcome::Rule { rule, .. }) = responded.outcome.as_ref() else {
            panic!("a rule on a register value")
        };
        assert_eq!(rule.classify(0x8000_0000_0000_0000, 0), Status::Ok);
        assert_eq!(rule.classify(7, 0), Status::Failed);
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

    #[test]
    fn several_functions_a_constant_model_and_a_scale() {
        let text = "[[probe]]\nevent = \"worker_spawned\"\nfunction = [\"a::spawn\", \"a::respawn\"]\n\
                    model = { constant = \"solo\" }\nmemory_bytes = { value = \"arg2\", scale = 1048576 }\n";
        let manifest = parse(text, "m.toml").unwrap();
        let functions: Vec<_> = manifest.probes.iter().map(|probe| probe.function.as_str()).collect();
        assert_eq!(functions, ["a::spawn", "a::respawn"]);
        assert_eq!(manifest.probes[1].model, Some(Model::Constant("solo".to_string())));
        assert_eq!(manifest.probes[0].memory_bytes.as_ref().unwrap().scale, 1_048_576.0);
    }

    fn error_of(text: &str) -> (String, Class) {
        let error = parse(text, "m.toml").unwrap_err();
        (error.to_string(), error.class)
    }

    #[test]
    fn an_async_request_has_no_side_to_probe() {
        let text = "[[probe]]\nevent = \"async_request\"\nfunction = \"f\"\nmodel = \"req.model\"\nat = \"return\"\n";
        let (message, class) = error_of(text);
        assert!(message.starts_with("m.toml:5:6: `at` does not apply to async_request"), "{message}");
        assert_eq!(class, Class::ManifestNames);
    }

    #[test]
    fn errors_say_where_and_what() {
        assert_eq!(
            error_of("[[probe]]\nevent = \"worker_born\"\nfunction = \"f\"\n"),
            (
                "m.toml:2:9: unknown event `worker_born`: expected one of worker_spawned, worker_evicted, \
                 worker_crashed, request_submitted, request_started, request_ended, async_request"
                    .to_string(),
                Class::ManifestNames
            )
        );
        assert_eq!(
            error_of("[[probe]]\nevent = \"request_started\"\nfunction = \"f\"\nrequest_id = \"arg9\"\n"),
            (
                "m.toml:4:14: `arg9` at column 1: `arg9` is not a register: arguments are arg0 to arg5"
                    .to_string(),
                Class::ManifestSyntax
            )
        );
        assert_eq!(
            error_of("[[probe]]\nevent = \"request_submitted\"\nfunction = \"f\"\nrequest_id = \"ret\"\n").0,
            "m.toml:4:14: `ret` reads a return register, which only exists with `at = \"return\"`"
        );
        assert_eq!(
            error_of(
                "[[probe]]\nevent = \"request_started\"\nfunction = \"f\"\nrequest_id = \"arg1\"\nmemory_bytes = \"arg2\"\n"
            ),
            (
                "m.toml:5:16: `memory_bytes` does not apply to request_started: it takes request_id, model, worker_id"
                    .to_string(),
                Class::ManifestNames
            )
        );
        assert_eq!(
            error_of("[[probe]]\nevent = \"request_ended\"\nfunction = \"f\"\n").0,
            "m.toml:2:9: request_ended needs `outcome`"
        );
        let (unknown, class) =
            error_of("[[probe]]\nevent = \"request_ended\"\nfunction = \"f\"\ncolour = 1\n");
        assert!(unknown.starts_with("m.toml:4:1: unknown field `colour`"), "{unknown}");
        assert_eq!(class, Class::ManifestNames);
        let (broken, class) = error_of("[[probe]\n");
        assert!(broken.starts_with("m.toml:1:"), "{broken}");
        assert_eq!(class, Class::ManifestSyntax);
        assert_eq!(error_of("").0, "m.toml:0:0: the manifest has no [[probe]] tables");
    }
}
