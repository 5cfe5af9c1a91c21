//! The plan of an `async_request` probe. A request is a future: it starts at its first poll
//! (its state is then `Unresumed`, and the async fn's arguments are where the debug info puts
//! them), ends at the poll that leaves it `Returned` (its outcome decoded from the `Ready`
//! value), or is cancelled when it is dropped before that. Each poll is followed as a call:
//! opened at the poll function's entry and closed at its returns. When the optimiser inlined
//! the poll into a caller, the call is the caller's ([`super::inlined_poll`]).

use pool_obs_common::{
    event::EventKind,
    probe::{ProbeSpec, Register},
};

use super::{Choice, Plan, Program, entry_site, info_of, return_sites, unprobeable};
use crate::{
    attach::{
        machine_code::{FunctionCode, Site},
        source::{
            self, SourceInfo,
            compile::{Scope, Side},
            coroutine::Coroutine,
            location::Location,
            place::{read, rebase_stack, show},
        },
        symbols::{Symbol, SymbolTable},
    },
    error::{Class, Refusal},
    manifest::{At, Model, Probe, ProbeOutcome, Value},
    outcome::OutcomeRule,
};

use super::{
    inlined_poll::InlinedPoll,
    sourced::{Shown, first_inlined_place},
};

/// The states user space tells a future's polls apart by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FutureStates {
    pub unresumed: u64,
    pub returned: u64,
    pub panicked: u64,
    /// The poll ends `Ready` where its caller binds the value (`probe_ready`), not at the
    /// caller's return: a future left `Returned` there passed by that place unseen.
    pub ready_bound: bool,
}

impl Plan {
    pub(super) fn async_probe(
        &mut self,
        probe: &Probe,
        symbols: &SymbolTable,
        source: &SourceInfo,
    ) -> anyhow::Result<()> {
        let refuse = |message: String| anyhow::Error::from(Refusal::new(Class::SourceValue, message));
        let coroutine = source
            .coroutine(&probe.function)
            .map_err(|problem| Refusal::new(problem.class(), problem.to_string()))?;
        let state = |name| coroutine.state(name).map_err(refuse);
        let states = FutureStates {
            unresumed: state("Unresumed")?,
            returned: state("Returned")?,
            panicked: state("Panicked")?,
            ready_bound: false,
        };
        let mut callers: Vec<u64> = Vec::new();
        let mut placed = 0;
        for site in &coroutine.polls {
            let Some(symbol) = symbols.containing(site.address) else { continue };
            let shown = match &site.inlined {
                Some(inlined) => {
                    format!("{} (inlined into {} at {})", coroutine.key, symbol.name, inlined.call)
                }
                None => coroutine.key.clone(),
            };
            let code = symbols.code(symbol);
            let caller = source
                .function_site(symbol.address)
                .ok_or_else(|| refuse(format!("{shown}: {} has no debug info", symbol.name)))?;
            let (mut spec, shown_values, mut choices, rule) = if site.inlined.is_some() {
                if callers.contains(&symbol.address) {
                    return Err(refuse(format!(
                        "{shown}: {} polls the future at two places, and pool-obs follows one poll per call",
                        symbol.name
                    )));
                }
                callers.push(symbol.address);
                let inlined = InlinedPoll {
                    probe,
                    source,
                    symbols,
                    coroutine: &coroutine,
                    poll: site,
                    caller: &caller,
                    symbol,
                    code: &code,
                };
                let (compiled, choices, rule) = inlined
                    .compile()
                    .map_err(|problem| Refusal::new(problem.0, format!("{shown}: {}", problem.1)))?;
                (compiled.spec, compiled.shown, choices, rule)
            } else {
                let scope = Scope::new(source, site, Side::Entry).map_err(refuse)?;
                let mut compiled = poll_spec(probe, scope, &coroutine)
                    .map_err(|problem| refuse(format!("{shown}: {problem}")))?;
                let returned = Scope::new(source, site, Side::Return).map_err(refuse)?;
                let rule = outcome(probe, &returned, "return.Ready.0", &mut compiled)
                    .map_err(|problem| refuse(format!("{shown}: {problem}")))?;
                (compiled.spec, compiled.shown, Vec::new(), rule)
            };
            // The call: opened at the entry of the poll function or of its caller, closed at its
            // returns.
            let opened = entry_site(Program::Call, &spec, &code)
                .and_then(|mut sites| {
                    sites.extend(return_sites(false, &code, symbols)?);
                    Ok(sites)
                })
                .map_err(|problem| unprobeable(&symbol.name, At::Return, problem))?;
            if site.inlined.is_none() {
                for scalar in spec.scalars_mut() {
                    rebase_stack(scalar, opened[0].site.sp_offset);
                }
            }
            choices.extend(opened);
            let mut info = info_of(probe, &shown, Some(rule));
            let ready_bound = choices.iter().any(|choice| choice.program == Program::Ready);
            info.future = Some(FutureStates { ready_bound, ..states.clone() });
            let shown_site = format!("{shown} at {:#x}", site.address);
            placed += self.add_site(symbol, spec, info, &shown_site, shown_values, choices);
        }
        if placed == 0 {
            return Err(refuse(format!("{} is never polled in the binary", coroutine.key)));
        }
        self.future_drops(probe, symbols, source, &coroutine, &states)
    }

    /// Where the future's state is dropped: a request still open there was cancelled.
    fn future_drops(
        &mut self,
        probe: &Probe,
        symbols: &SymbolTable,
        source: &SourceInfo,
        coroutine: &Coroutine,
        states: &FutureStates,
    ) -> anyhow::Result<()> {
        let drops = source.drops(coroutine);
        if drops.is_empty() {
            return Err(Refusal::new(
                Class::SourceValue,
                format!(
                    "{}: the debug info shows no drop of its state `{}`, so cancelled requests could not be told apart",
                    coroutine.key, coroutine.state_type
                ),
            )
            .into());
        }
        for site in &drops {
            let Some(symbol) = symbols.containing(site.address) else { continue };
            let code = symbols.code(symbol);
            let shown = format!("the drop of {}", coroutine.key);
            let (at, future) = drop_site(source, site, symbol, &code, coroutine).map_err(|problem| {
                Refusal::new(problem.0, format!("{shown} at {:#x}: {}", site.address, problem.1))
            })?;
            let spec = ProbeSpec {
                kind: EventKind::FutureDropped as u32,
                state_offset: coroutine.tag.offset as u32,
                state_size: coroutine.tag_size,
                future,
                ..ProbeSpec::default()
            };
            let mut info = info_of(probe, &shown, None);
            info.event = EventKind::FutureDropped;
            info.future = Some(states.clone());
            let reason = "a request whose future is dropped before it is ready is cancelled".to_string();
            let shown_site = format!("{shown} at {:#x}", site.address);
            let future_shown = vec![("future", "the dropped future".to_string(), show(&future))];
            let choices = vec![Choice::safe(Program::Entry, at, reason)];
            self.add_site(symbol, spec, info, &shown_site, future_shown, choices);
        }
        Ok(())
    }
}

/// Where the drop glue of a future's state is probed, and the future's address there: its
/// entry (the glue's argument), or an inlined instance's first place the kernel accepts (the
/// state, from where the glue's variables are in it).
fn drop_site(
    source: &SourceInfo,
    site: &source::Site,
    symbol: &Symbol,
    code: &FunctionCode,
    coroutine: &Coroutine,
) -> Result<(Site, pool_obs_common::probe::Scalar), (Class, String)> {
    let future_at = |site: &source::Site| {
        source.dropped_state(site, coroutine).and_then(|state| read(&state, 8, "the future"))
    };
    if site.inlined.is_none() {
        // `drop_in_place::<T>(*mut T)`: the state's address is the first argument, in rdi.
        let future = read(&Location::register(Register::Rdi), 8, "the future")
            .map_err(|problem| (Class::SourceValue, problem))?;
        let spec = ProbeSpec { future, ..ProbeSpec::default() };
        let choice = entry_site(Program::Entry, &spec, code)
            .map_err(|problem| (Class::Unprobeable, problem.to_string()))?
            .remove(0);
        return Ok((choice.site, future));
    }
    first_inlined_place(site, symbol, code, future_at)
}

/// A poll's spec as compiled at its site, and what `check` shows of it.
pub(super) struct PollSpec {
    pub(super) spec: ProbeSpec,
    pub(super) shown: Shown,
}

/// The spec of a poll at a site whose scope is `scope`: the future, its state, and the values
/// read from its arguments at its first poll.
pub(super) fn poll_spec(probe: &Probe, scope: Scope, coroutine: &Coroutine) -> Result<PollSpec, String> {
    let (scope, future) = scope.of_future(coroutine.arguments.iter().chain(&coroutine.bindings))?;
    let mut spec = ProbeSpec {
        kind: EventKind::FuturePolled as u32,
        state_offset: coroutine.tag.offset as u32,
        state_size: coroutine.tag_size,
        unresumed: coroutine.state("Unresumed")? as u32,
        future: read(&future, 8, "the future")?,
        ..ProbeSpec::default()
    };
    let mut shown: Shown = vec![("future", "the polled future".to_string(), show(&spec.future))];
    if let Some(Value::Path(path)) = &probe.request_id {
        spec.request_id = scope.integer(path)?;
        shown.push(("request_id", path.clone(), show(&spec.request_id)));
    }
    if let Some(Model::Path(path)) = &probe.model {
        let model = scope.string(path)?;
        spec.model_ptr = model.ptr;
        spec.model_len = model.len;
        shown.push(("model", path.clone(), format!("str({}, {})", show(&model.ptr), show(&model.len))));
    }
    Ok(PollSpec { spec, shown })
}

/// The outcome rule, and the values it reads in `scope`, where `output` names the future's
/// output: `return.Ready.0` at a return of its poll, `return` where a caller binds it.
pub(super) fn outcome(
    probe: &Probe,
    scope: &Scope,
    output: &str,
    compiled: &mut PollSpec,
) -> Result<OutcomeRule, String> {
    let (path, arms) = match &probe.outcome {
        None => return Ok(OutcomeRule::constant(crate::outcome::Status::Ok)),
        Some(ProbeOutcome::Constant(status)) => return Ok(OutcomeRule::constant(*status)),
        Some(ProbeOutcome::Rule { .. }) => {
            return Err(
                "an async request's outcome is by what it returns, in source terms (`return`)".to_string()
            );
        }
        Some(ProbeOutcome::Compared { path, rule }) => {
            let rest = returned_part(path)?;
            compiled.spec.outcome = scope.integer(&format!("{output}{rest}"))?;
            compiled.shown.push((
                "outcome",
                path.clone(),
                format!("compared: {}", show(&compiled.spec.outcome)),
            ));
            return Ok(rule.clone());
        }
        Some(ProbeOutcome::Variants { path, arms }) => (path, arms),
    };
    let rest = returned_part(path)?;
    let (value, detail, rule) = scope.variants(&format!("{output}{rest}"), arms)?;
    compiled.spec.outcome = value;
    let mut expression = format!("variant of {}", show(&value));
    if let Some(detail) = detail {
        compiled.spec.outcome_detail = detail;
        expression += &format!(", inner variant of {}", show(&detail));
    }
    compiled.shown.push(("outcome", path.clone(), expression));
    Ok(rule)
}

/// What follows `return` in an async request's outcome path: the outcome is read from what the
/// future returns.
fn returned_part(path: &str) -> Result<&str, String> {
    path.strip_prefix("return")
        .filter(|rest| rest.is_empty() || rest.starts_with('.'))
        .ok_or_else(|| format!("`{path}`: an async request's outcome is read from what it returns, `return`"))
}
