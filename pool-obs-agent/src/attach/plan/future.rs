//! The plan of an `async_request` probe. A request is a future: it starts at its first poll
//! (its state is then `Unresumed`, and the async fn's arguments are where the debug info puts
//! them), ends at the poll that leaves it `Returned` (its outcome decoded from the `Ready`
//! value), or is cancelled when it is dropped before that. Each poll is followed as a call:
//! opened at the poll function's entry and closed at its returns. When the optimiser inlined
//! the poll into a caller, the call is the caller's: opened at its entry, filled in with the
//! future at the inlined poll (`probe_poll`), closed at the caller's returns. A caller that
//! returns the same `Poll<Output>` (a wrapper future's poll) returns the poll's value; any
//! other (a parent `async fn`, `Timeout`) binds the `Ready` value and goes on, and the poll
//! ends, ready, where it binds it (`probe_ready`, [`source::ready`]).

use pool_obs_common::{
    event::EventKind,
    probe::{Base, ProbeSpec, Register},
};

use super::{Choice, Plan, Program, entry_site, info_of, return_sites, unprobeable};
use crate::{
    attach::{
        machine_code::{FunctionCode, Handling, Site, decoder_register},
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

use super::sourced::{Shown, first_inlined_place};

/// The states user space tells a future's polls apart by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FutureStates {
    pub unresumed: u64,
    pub returned: u64,
    pub panicked: u64,
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
                let (at, mut compiled) = first_inlined_place(site, symbol, &code, |moved| {
                    Scope::new(source, moved, Side::Entry)
                        .and_then(|scope| poll_spec(probe, scope, &coroutine))
                })
                .map_err(|problem| Refusal::new(problem.0, format!("{shown}: {}", problem.1)))?;
                let sp_offset = symbols
                    .entry_sp_offset(symbol.address + at.offset)
                    .map_err(|problem| refuse(format!("{shown}: {problem}")))?;
                compiled.spec.poll_inlined = 1;
                let call = site.inlined.as_ref().map_or("?", |inlined| inlined.call.as_str());
                let reason = format!("the poll, inlined at {call}, {}", at.handling);
                let others =
                    other_poll_entries(probe, source, site, symbol, &code, &coroutine, &at, &compiled.spec)
                        .map_err(|problem| refuse(format!("{shown}: {problem}")))?;
                let mut choices = vec![Choice::safe(Program::Poll, Site { sp_offset, ..at }, reason)];
                for entry in others {
                    let sp_offset = symbols
                        .entry_sp_offset(symbol.address + entry.offset)
                        .map_err(|problem| refuse(format!("{shown}: {problem}")))?;
                    let reason =
                        format!("the poll, inlined at {call}, where it reads its state, {}", entry.handling);
                    choices.push(Choice::safe(Program::Poll, Site { sp_offset, ..entry }, reason));
                }
                let rule = if source.type_name(source.return_type(&caller))
                    == source.type_name(coroutine.poll_type)
                {
                    // A wrapper's poll that returns the future's own `Poll<Output>`: its return is
                    // the poll's end.
                    let scope = Scope::new(source, &caller, Side::Return).map_err(refuse)?;
                    outcome(probe, &scope, "return.Ready.0", &mut compiled)
                        .map_err(|problem| refuse(format!("{shown}: {problem}")))?
                } else {
                    let (ready, rule) =
                        ready_place(probe, source, symbols, &caller, site, &coroutine, &mut compiled)
                            .map_err(|problem| Refusal::new(problem.0, format!("{shown}: {}", problem.1)))?;
                    choices.push(ready);
                    rule
                };
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
                    sites.extend(return_sites(false, &code)?);
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
            info.future = Some(states.clone());
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
struct PollSpec {
    spec: ProbeSpec,
    shown: Shown,
}

/// The spec of a poll at a site whose scope is `scope`: the future, its state, and the values
/// read from its arguments at its first poll.
fn poll_spec(probe: &Probe, scope: Scope, coroutine: &Coroutine) -> Result<PollSpec, String> {
    let (scope, future) = scope.of_future(&coroutine.arguments)?;
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

/// The other places a caller enters a poll inlined into it. A parent coroutine that knows the
/// future is unresumed jumps past the poll's read of its state tag on the first poll (at the
/// instance's start, where the debug info puts it), and enters at that read on the others.
/// Each read of the future's tag in the instance is such a place; one spec serves them all, so
/// the values must be where they are at the first.
#[allow(clippy::too_many_arguments)]
fn other_poll_entries(
    probe: &Probe,
    source: &SourceInfo,
    poll: &source::Site,
    symbol: &Symbol,
    code: &FunctionCode,
    coroutine: &Coroutine,
    first: &Site,
    spec: &ProbeSpec,
) -> Result<Vec<Site>, String> {
    let ranges: Vec<(u64, u64)> = source
        .instance_ranges(poll)
        .into_iter()
        .map(|(begin, end)| (begin.saturating_sub(symbol.address), end.saturating_sub(symbol.address)))
        .collect();
    let values = |spec: &ProbeSpec| (spec.future, spec.model_ptr, spec.model_len, spec.request_id);
    let mut entries = Vec::new();
    for (load, base, displacement) in code.memory_reads(&ranges, usize::from(coroutine.tag_size)) {
        let places = code.inlined_entries(load);
        if places.iter().any(|place| place.offset == first.offset) {
            continue;
        }
        // The read's base is the future's register there, or it reads something else.
        for place in places {
            if matches!(place.handling, Handling::Refused(_)) {
                continue;
            }
            let moved = poll.at(symbol.address + place.offset);
            let Ok(compiled) =
                Scope::new(source, &moved, Side::Entry).and_then(|scope| poll_spec(probe, scope, coroutine))
            else {
                continue;
            };
            let future = compiled.spec.future;
            let reads_tag = future.base() == Some(Base::Register)
                && future.derefs == 0
                && Register::from_u8(future.reg).map(decoder_register) == Some(base)
                && future.addend + coroutine.tag.offset as i64 == displacement;
            if !reads_tag {
                continue;
            }
            if values(&compiled.spec) != values(spec) {
                return Err(format!(
                    "{} enters the poll at {:#x} and at {:#x}, with its values in other places",
                    symbol.name,
                    symbol.address + first.offset,
                    symbol.address + place.offset
                ));
            }
            entries.push(place);
            break;
        }
    }
    Ok(entries)
}

/// Where the caller of a poll inlined into it binds the future's `Ready` value (see
/// [`source::ready`]): a `probe_ready` there ends the poll, and the outcome is read there.
fn ready_place(
    probe: &Probe,
    source: &SourceInfo,
    symbols: &SymbolTable,
    caller: &source::Site,
    poll: &source::Site,
    coroutine: &Coroutine,
    compiled: &mut PollSpec,
) -> Result<(Choice, OutcomeRule), (Class, String)> {
    let symbol = symbols.containing(caller.address).ok_or((Class::SourceValue, "no symbol".to_string()))?;
    let code = symbols.code(symbol);
    let binding = source
        .ready_binding(caller, poll, coroutine.poll_type)
        .map_err(|problem| (Class::SourceValue, problem))?;
    let mut first_problem = None;
    for start in &binding.starts {
        let placed = first_inlined_place(&caller.at(*start), symbol, &code, |moved| {
            let mut trial = PollSpec { spec: compiled.spec, shown: Vec::new() };
            let scope = Scope::of_ready(source, moved, source.bound_at(moved, &binding)?);
            let rule = outcome(probe, &scope, "return", &mut trial)?;
            Ok((rule, trial))
        });
        let (at, (rule, trial)) = match placed {
            Ok(placed) => placed,
            Err(problem) => {
                first_problem.get_or_insert(problem);
                continue;
            }
        };
        let sp_offset = symbols
            .entry_sp_offset(symbol.address + at.offset)
            .map_err(|problem| (Class::SourceValue, problem.to_string()))?;
        compiled.spec = trial.spec;
        compiled.shown.extend(trial.shown);
        let reason = format!(
            "where {} binds the poll's `Ready` value (`{}`), {}",
            caller.function, binding.name, at.handling
        );
        return Ok((Choice::safe(Program::Ready, Site { sp_offset, ..at }, reason), rule));
    }
    Err(first_problem.unwrap_or((Class::SourceValue, format!("`{}` is never located", binding.name))))
}

/// The outcome rule, and the values it reads in `scope`, where `output` names the future's
/// output: `return.Ready.0` at a return of its poll, `return` where a caller binds it.
fn outcome(
    probe: &Probe,
    scope: &Scope,
    output: &str,
    compiled: &mut PollSpec,
) -> Result<OutcomeRule, String> {
    let (path, arms) = match &probe.outcome {
        None => return Ok(OutcomeRule::constant(crate::outcome::Status::Ok)),
        Some(ProbeOutcome::Constant(status)) => return Ok(OutcomeRule::constant(*status)),
        Some(ProbeOutcome::Rule { .. }) => {
            return Err("an async request's outcome is by the variants of what it returns".to_string());
        }
        Some(ProbeOutcome::Variants { path, arms }) => (path, arms),
    };
    let rest =
        path.strip_prefix("return").filter(|rest| rest.is_empty() || rest.starts_with('.')).ok_or_else(
            || format!("`{path}`: an async request's outcome is read from what it returns, `return`"),
        )?;
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
