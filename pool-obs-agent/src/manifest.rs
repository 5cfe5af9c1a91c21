//! The probe manifest: which of the pool's functions means which lifecycle event, and where
//! each of the event's values lives. See docs/manifests.md for the format.

mod raw;
pub mod value;

use std::{ops::Range, path::Path};

use pool_obs_common::{event::EventKind, probe::Scalar};

use crate::{
    error::Class,
    outcome::{OutcomeRule, Status},
};
use raw::{RawManifest, RawProbe};
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
    /// By comparing the integer at a source path (an HTTP status: `return.head.status`).
    Compared { path: String, rule: OutcomeRule },
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
            || matches!(self.outcome, Some(ProbeOutcome::Variants { .. } | ProbeOutcome::Compared { .. }))
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
    let requests_opened = raw.probe.iter().any(RawProbe::opens_requests);
    let mut probes = Vec::new();
    for raw_probe in raw.probe {
        let compiled = raw_probe
            .compile(requests_opened)
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
        let (unmatched, class) = error_of(
            "[[probe]]\nevent = \"request_started\"\nfunction = \"s\"\nrequest_id = \"arg1\"\n\
             [[probe]]\nevent = \"request_ended\"\nfunction = \"stats\"\noutcome = \"ok\"\n",
        );
        assert!(
            unmatched.starts_with("m.toml:6:9: request_ended at a function's entry needs `request_id`"),
            "{unmatched}"
        );
        assert_eq!(class, Class::ManifestNames);
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
