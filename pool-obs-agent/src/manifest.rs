//! The probe manifest: which of the pool's functions means which lifecycle event, and where
//! each of the event's values lives. See the README's "Writing a manifest" for the format.

pub mod value;

use std::{fmt, ops::Range, path::Path};

use pool_obs_common::{event::EventKind, probe::Scalar};
use serde::Deserialize;
use toml::Spanned;

use crate::outcome::{Condition, OutcomeRule, Status};
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

#[derive(Debug)]
pub struct Probe {
    pub event: EventKind,
    /// A demangled Rust path without the hash; `*` matches any run of characters.
    pub function: String,
    pub at: At,
    pub model: Option<StrValue>,
    pub worker_id: Option<Scalar>,
    pub request_id: Option<Scalar>,
    pub memory_bytes: Option<Scalar>,
    pub outcome: Option<ProbeOutcome>,
}

/// The raw value a request's outcome is decided from (absent for a constant outcome) and the
/// rule that decides it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeOutcome {
    pub value: Option<Scalar>,
    pub rule: OutcomeRule,
}

/// A manifest problem, located as `file:line:column`.
#[derive(Debug)]
pub struct ManifestError {
    pub path: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.path, self.line, self.column, self.message)
    }
}

impl std::error::Error for ManifestError {}

pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| ManifestError {
        path: shown.clone(),
        line: 0,
        column: 0,
        message: format!("cannot read the manifest: {error}"),
    })?;
    parse(&text, &shown)
}

pub fn parse(text: &str, path: &str) -> Result<Manifest, ManifestError> {
    let locate = |span: Option<Range<usize>>, message: String| {
        let (line, column) = span.map_or((0, 0), |span| line_and_column(text, span.start));
        ManifestError { path: path.to_string(), line, column, message }
    };
    let raw: RawManifest =
        toml::from_str(text).map_err(|error| locate(error.span(), error.message().to_string()))?;
    if raw.probe.is_empty() {
        return Err(locate(None, "the manifest has no [[probe]] tables".to_string()));
    }
    if raw.probe.len() > MAX_MANIFEST_PROBES {
        let message = format!(
            "the manifest has {} probes; at most {MAX_MANIFEST_PROBES} are supported",
            raw.probe.len()
        );
        return Err(locate(None, message));
    }
    let probes = raw
        .probe
        .into_iter()
        .map(|probe| probe.compile().map_err(|(span, message)| locate(Some(span), message)))
        .collect::<Result<_, _>>()?;
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
        EventKind::WorkerEvicted | EventKind::WorkerCrashed => &["model", "worker_id"],
        EventKind::RequestSubmitted => &["request_id", "model"],
        EventKind::RequestStarted => &["request_id", "model", "worker_id"],
        EventKind::RequestEnded => &["outcome", "request_id", "model", "worker_id"],
    }
}

type Located<T> = Result<T, (Range<usize>, String)>;

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
    function: Spanned<String>,
    at: Option<Spanned<String>>,
    model: Option<Spanned<String>>,
    worker_id: Option<Spanned<String>>,
    request_id: Option<Spanned<String>>,
    memory_bytes: Option<Spanned<String>>,
    outcome: Option<Spanned<RawOutcome>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawOutcome {
    Constant(String),
    Rule {
        value: String,
        ok: Option<String>,
        timeout: Option<String>,
        failed: Option<String>,
        otherwise: String,
    },
}

impl RawProbe {
    fn compile(self) -> Located<Probe> {
        let event = parse_event(&self.event)?;
        let at = match self.at.as_ref().map(|at| (at.span(), at.get_ref().as_str())) {
            None | Some((_, "entry")) => At::Entry,
            Some((_, "return")) => At::Return,
            Some((span, other)) => {
                return Err((span, format!("`at = \"{other}\"`: expected \"entry\" or \"return\"")));
            }
        };
        self.check_fields(event)?;
        let scalar = |field: &Option<Spanned<String>>| {
            field.as_ref().map(|text| parse_located(text, value::parse_scalar, at)).transpose()
        };
        let model = self
            .model
            .as_ref()
            .map(|text| {
                let parsed = value::parse_str(text.get_ref())
                    .map_err(|error| (text.span(), format!("`{}` {error}", text.get_ref())))?;
                reject_return_register_at_entry(&parsed.ptr, at, text)?;
                reject_return_register_at_entry(&parsed.len, at, text)?;
                Ok(parsed)
            })
            .transpose()?;
        Ok(Probe {
            event,
            function: self.function.get_ref().clone(),
            at,
            model,
            worker_id: scalar(&self.worker_id)?,
            request_id: scalar(&self.request_id)?,
            memory_bytes: scalar(&self.memory_bytes)?,
            outcome: self.outcome.as_ref().map(|outcome| compile_outcome(outcome, at)).transpose()?,
        })
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
            return Err((
                span.clone(),
                format!("`{name}` does not apply to {}: it takes {}", event.name(), allowed.join(", ")),
            ));
        }
        let required = allowed[0];
        if given.iter().any(|(name, span)| *name == required && span.is_none()) {
            return Err((self.event.span(), format!("{} needs `{required}`", event.name())));
        }
        Ok(())
    }
}

fn parse_event(event: &Spanned<String>) -> Located<EventKind> {
    EventKind::ALL.into_iter().find(|kind| kind.name() == event.get_ref()).ok_or_else(|| {
        let names: Vec<_> = EventKind::ALL.iter().map(|kind| kind.name()).collect();
        (event.span(), format!("unknown event `{}`: expected one of {}", event.get_ref(), names.join(", ")))
    })
}

fn parse_located(
    text: &Spanned<String>,
    parse: fn(&str) -> Result<Scalar, value::ValueError>,
    at: At,
) -> Located<Scalar> {
    let scalar =
        parse(text.get_ref()).map_err(|error| (text.span(), format!("`{}` {error}", text.get_ref())))?;
    reject_return_register_at_entry(&scalar, at, text)?;
    Ok(scalar)
}

fn reject_return_register_at_entry(scalar: &Scalar, at: At, text: &Spanned<String>) -> Located<()> {
    if at == At::Entry && value::uses_return_register(scalar) {
        return Err((
            text.span(),
            format!("`{}` reads a return register, which only exists with `at = \"return\"`", text.get_ref()),
        ));
    }
    Ok(())
}

fn compile_outcome(outcome: &Spanned<RawOutcome>, at: At) -> Located<ProbeOutcome> {
    let span = outcome.span();
    let status = |text: &str| {
        Status::parse(text).ok_or_else(|| {
            (span.clone(), format!("unknown outcome `{text}`: expected ok, failed or timeout"))
        })
    };
    match outcome.get_ref() {
        RawOutcome::Constant(text) => {
            Ok(ProbeOutcome { value: None, rule: OutcomeRule::constant(status(text)?) })
        }
        RawOutcome::Rule { value, ok, timeout, failed, otherwise } => {
            let spanned_value = Spanned::new(span.clone(), value.clone());
            let value = parse_located(&spanned_value, value::parse_scalar, at)?;
            let arms = [(Status::Ok, ok), (Status::Timeout, timeout), (Status::Failed, failed)]
                .into_iter()
                .filter_map(|(status, condition)| condition.as_ref().map(|condition| (status, condition)))
                .map(|(status, condition)| {
                    Condition::parse(condition)
                        .map(|condition| (status, condition))
                        .map_err(|error| (span.clone(), error))
                })
                .collect::<Located<Vec<_>>>()?;
            Ok(ProbeOutcome { value: Some(value), rule: OutcomeRule { arms, otherwise: status(otherwise)? } })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEMO: &str = include_str!("../../tests/manifests/demo-pool.toml");

    #[test]
    fn the_demo_manifest_parses() {
        let manifest = parse(DEMO, "demo-pool.toml").unwrap();
        let ended: Vec<_> = manifest.probes.iter().filter(|p| p.event == EventKind::RequestEnded).collect();
        assert_eq!(ended.len(), 2);
        let responded = ended.iter().find(|p| p.function.ends_with("respond")).unwrap();
        let outcome = responded.outcome.as_ref().unwrap();
        assert_eq!(outcome.rule.classify(0x8000_0000_0000_0000), Status::Ok);
        assert_eq!(outcome.rule.classify(7), Status::Failed);
    }

    fn error_of(text: &str) -> String {
        parse(text, "m.toml").unwrap_err().to_string()
    }

    #[test]
    fn errors_say_where_and_what() {
        assert_eq!(
            error_of("[[probe]]\nevent = \"worker_born\"\nfunction = \"f\"\n"),
            "m.toml:2:9: unknown event `worker_born`: expected one of worker_spawned, worker_evicted, \
             worker_crashed, request_submitted, request_started, request_ended"
        );
        assert_eq!(
            error_of("[[probe]]\nevent = \"request_started\"\nfunction = \"f\"\nrequest_id = \"arg9\"\n"),
            "m.toml:4:14: `arg9` at column 1: `arg9` is not a register: arguments are arg0 to arg5"
        );
        assert_eq!(
            error_of("[[probe]]\nevent = \"request_submitted\"\nfunction = \"f\"\nrequest_id = \"ret\"\n"),
            "m.toml:4:14: `ret` reads a return register, which only exists with `at = \"return\"`"
        );
        assert_eq!(
            error_of(
                "[[probe]]\nevent = \"request_started\"\nfunction = \"f\"\nrequest_id = \"arg1\"\nmemory_bytes = \"arg2\"\n"
            ),
            "m.toml:5:16: `memory_bytes` does not apply to request_started: it takes request_id, model, worker_id"
        );
        assert_eq!(
            error_of("[[probe]]\nevent = \"request_ended\"\nfunction = \"f\"\n"),
            "m.toml:2:9: request_ended needs `outcome`"
        );
        assert!(
            error_of("[[probe]]\nevent = \"request_ended\"\nfunction = \"f\"\ncolour = 1\n")
                .starts_with("m.toml:4:1: unknown field `colour`")
        );
        assert!(error_of("[[probe]\n").starts_with("m.toml:1:"));
        assert_eq!(error_of(""), "m.toml:0:0: the manifest has no [[probe]] tables");
    }
}
