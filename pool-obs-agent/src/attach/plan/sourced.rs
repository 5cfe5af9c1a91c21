//! The plan of a probe whose values are source paths: one spec per site where the function
//! runs (out-of-line copies and inlined instances), each compiled against the debug info at
//! the address its probe sits on.

use pool_obs_common::probe::{ProbeSpec, Scalar};

use super::{Choice, Plan, ProbeInfo, Program, info_of, out_of_line_sites, register_spec, unprobeable};
use crate::{
    attach::{
        machine_code::{FunctionCode, Handling, Site},
        source::{
            self, SourceInfo,
            compile::{Scope, Side},
            place::{rebase_stack, show},
        },
        symbols::{Symbol, SymbolTable},
    },
    error::{Class, Refusal},
    manifest::{At, Model, Probe, ProbeOutcome, Value},
    outcome::OutcomeRule,
};

/// One value of a probe compiled at one site, for `check` to show.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// The site: the function, and where it runs.
    pub site: String,
    pub field: &'static str,
    pub path: String,
    pub expression: String,
}

impl Plan {
    /// A probe whose values are source paths: one spec per site, each compiled against the
    /// debug info at the site's address, for every out-of-line copy and inlined instance.
    pub(super) fn source_probe(
        &mut self,
        probe: &Probe,
        symbols: &SymbolTable,
        source: &SourceInfo,
    ) -> anyhow::Result<()> {
        let refuse = |message: String| anyhow::Error::from(Refusal::new(Class::SourceValue, message));
        let sites = source
            .sites(&probe.function)
            .map_err(|problem| Refusal::new(problem.class(), problem.to_string()))?;
        let mut placed = 0;
        for site in &sites {
            // Code the linker dropped, or outside any function with a symbol.
            let Some(symbol) = symbols.containing(site.address) else { continue };
            let shown = match &site.inlined {
                Some(inlined) => {
                    format!("{} (inlined into {} at {})", site.key, symbol.name, inlined.call)
                }
                None => site.key.clone(),
            };
            if site.inlined.is_some() && probe.at == At::Return {
                return Err(refuse(format!(
                    "cannot probe the return of {shown}: an inlined call has no return of its own; \
                     use an entry-side event on the function that receives its result"
                )));
            }
            let side = if probe.at == At::Return { Side::Return } else { Side::Entry };
            let code = symbols.code(symbol);
            let (address, SiteSpec { mut spec, rule, shown: compiled }, choices) = match &site.inlined {
                None => {
                    let scope = Scope::new(source, site, side).map_err(refuse)?;
                    let compiled = source_spec(probe, &scope)
                        .map_err(|problem| refuse(format!("{shown}: {problem}")))?;
                    let choices = out_of_line_sites(probe, &compiled.spec, &code, symbols)
                        .map_err(|problem| unprobeable(&site.function, probe.at, problem))?;
                    (site.address, compiled, choices)
                }
                Some(inlined) => {
                    let (at, compiled) = first_inlined_place(site, symbol, &code, |moved| {
                        Scope::new(source, moved, Side::Entry).and_then(|scope| source_spec(probe, &scope))
                    })
                    .map_err(|problem| Refusal::new(problem.0, format!("{shown}: {}", problem.1)))?;
                    let reason = format!("inlined at {}, {}", inlined.call, at.handling);
                    let address = symbol.address + at.offset;
                    (address, compiled, vec![Choice::safe(Program::Entry, at, reason)])
                }
            };
            // Values relative to the stack pointer at entry follow an entry probe moved past pushes.
            if let Some(entry) =
                choices.first().filter(|choice| matches!(choice.program, Program::Entry | Program::Call))
            {
                for scalar in spec.scalars_mut() {
                    rebase_stack(scalar, entry.site.sp_offset);
                }
            }
            let site = format!("{shown} at {address:#x}");
            placed += self.add_site(symbol, spec, info_of(probe, &shown, rule), &site, compiled, choices);
        }
        if placed == 0 {
            return Err(refuse(format!("{} has no code in the binary to probe", probe.function)));
        }
        Ok(())
    }
}

impl Plan {
    /// One site's spec, what `check` shows of its values, and its probes; how many probes.
    pub(super) fn add_site(
        &mut self,
        symbol: &Symbol,
        spec: ProbeSpec,
        info: ProbeInfo,
        site: &str,
        shown: Shown,
        choices: Vec<Choice>,
    ) -> usize {
        let cookie = self.push(spec, info);
        self.compiled.extend(shown.into_iter().map(|(field, path, expression)| Compiled {
            site: site.to_string(),
            field,
            path,
            expression,
        }));
        let placed = choices.len();
        for choice in choices {
            self.attach(symbol, cookie, choice);
        }
        placed
    }
}

/// Where a probe on an inlined instance sits, and what `compile` made of the site there: the
/// first place of [`FunctionCode::inlined_entries`] that the kernel accepts and where
/// `compile` succeeds. The refusal is the first place's that the kernel accepts, else the
/// kernel's own.
pub(super) fn first_inlined_place<T>(
    site: &source::Site,
    symbol: &Symbol,
    code: &FunctionCode,
    compile: impl Fn(&source::Site) -> Result<T, String>,
) -> Result<(Site, T), (Class, String)> {
    // The instruction the kernel refuses (a LOCK prefix) is passed over; if no place fits, what
    // the values lack says more than that refusal, which no change to the manifest can help.
    let (mut refused, mut lacking) = (None, None);
    for at in code.inlined_entries(site.address - symbol.address) {
        match at.handling {
            Handling::Refused(why) => {
                refused.get_or_insert((
                    Class::Unprobeable,
                    format!("the kernel refuses `{}` ({why})", at.instruction),
                ));
            }
            _ => match compile(&site.at(symbol.address + at.offset)) {
                Ok(compiled) => return Ok((at, compiled)),
                Err(problem) => {
                    lacking.get_or_insert((Class::SourceValue, problem));
                }
            },
        }
    }
    Err(lacking
        .or(refused)
        .unwrap_or((Class::SourceValue, format!("no instruction starts at {:#x}", site.address))))
}

/// (field, path, compiled expression) for `check`.
pub(super) type Shown = Vec<(&'static str, String, String)>;

/// A probe compiled at one site: its spec, its outcome rule there (variant values differ from
/// one enum to another, not from one site to another, but the rule is compiled with the rest),
/// and each value's expression for `check`.
struct SiteSpec {
    spec: ProbeSpec,
    rule: Option<OutcomeRule>,
    shown: Shown,
}

/// A probe whose values are source paths, compiled at one site.
fn source_spec(probe: &Probe, scope: &Scope) -> Result<SiteSpec, String> {
    let mut spec = register_spec(probe);
    let mut shown: Shown = Vec::new();
    let mut integer = |field: &'static str, value: &Option<Value>, into: &mut Scalar| -> Result<(), String> {
        if let Some(Value::Path(path)) = value {
            *into = scope.integer(path)?;
            shown.push((field, path.clone(), show(into)));
        }
        Ok(())
    };
    integer("worker_id", &probe.worker_id, &mut spec.worker_id)?;
    integer("request_id", &probe.request_id, &mut spec.request_id)?;
    let memory = probe.memory_bytes.as_ref().map(|memory| memory.value.clone());
    integer("memory_bytes", &memory, &mut spec.memory_bytes)?;
    if let Some(Model::Path(path)) = &probe.model {
        let model = scope.string(path)?;
        spec.model_ptr = model.ptr;
        spec.model_len = model.len;
        shown.push(("model", path.clone(), format!("str({}, {})", show(&model.ptr), show(&model.len))));
    }
    let rule = match &probe.outcome {
        Some(ProbeOutcome::Constant(status)) => Some(OutcomeRule::constant(*status)),
        Some(ProbeOutcome::Rule { rule, .. }) => Some(rule.clone()),
        Some(ProbeOutcome::Compared { path, rule }) => {
            spec.outcome = scope.integer(path)?;
            shown.push(("outcome", path.clone(), format!("compared: {}", show(&spec.outcome))));
            Some(rule.clone())
        }
        Some(ProbeOutcome::Variants { path, arms }) => {
            let (value, detail, rule) = scope.variants(path, arms)?;
            spec.outcome = value;
            let mut expression = format!("variant of {}", show(&value));
            if let Some(detail) = detail {
                spec.outcome_detail = detail;
                expression += &format!(", inner variant of {}", show(&detail));
            }
            shown.push(("outcome", path.clone(), expression));
            Some(rule)
        }
        None => None,
    };
    Ok(SiteSpec { spec, rule, shown })
}
