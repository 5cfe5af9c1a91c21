//! A request future's poll that the optimiser inlined into a caller. The call followed is the
//! caller's, opened at its entry; `probe_poll` fills the future in where the poll starts. A
//! parent that knows the future is unresumed jumps past the poll's read of its state tag on
//! the first poll (to the instance's start, where the debug info puts it), and enters at that
//! read on the others: both are probed. Where the poll ends depends on the caller. A wrapper
//! whose poll returns the future's own `Poll<Output>` returns the poll's value, so its returns
//! are the poll's end. Any other caller (a parent `async fn`, `Timeout`) binds the `Ready`
//! value and goes on: the poll ends, ready, where it binds it (`probe_ready`, found by
//! [`source::ready`]), and a `Pending` poll at the caller's return.

use iced_x86::FlowControl;
use pool_obs_common::probe::{Base, ProbeSpec, Register};

use super::{
    Choice, Program,
    future::{PollSpec, outcome, poll_spec},
    sourced::first_inlined_place,
};
use crate::{
    attach::{
        machine_code::{FunctionCode, Handling, Site, decoder_register},
        source::{
            self, SourceInfo,
            compile::{Scope, Side},
            coroutine::Coroutine,
            location::{Location, Origin},
        },
        symbols::{Symbol, SymbolTable},
    },
    error::Class,
    manifest::Probe,
    outcome::OutcomeRule,
};

/// A poll inlined into a caller, and what it is compiled against.
pub(super) struct InlinedPoll<'a> {
    pub probe: &'a Probe,
    pub source: &'a SourceInfo,
    pub symbols: &'a SymbolTable,
    pub coroutine: &'a Coroutine,
    /// The inlined instance, and the function it is inlined into (its symbol and code).
    pub poll: &'a source::Site,
    pub caller: &'a source::Site,
    pub symbol: &'a Symbol,
    pub code: &'a FunctionCode,
}

/// Why a site cannot be followed: the error class, and one line.
type Problem = (Class, String);

impl InlinedPoll<'_> {
    /// The poll's spec and what `check` shows of it, its probes but the caller's call, and its
    /// outcome rule.
    pub fn compile(&self) -> Result<(PollSpec, Vec<Choice>, OutcomeRule), Problem> {
        let (at, mut compiled) = first_inlined_place(self.poll, self.symbol, self.code, |moved| {
            Scope::new(self.source, moved, Side::Entry)
                .and_then(|scope| poll_spec(self.probe, scope, self.coroutine))
        })?;
        compiled.spec.poll_inlined = 1;
        let call = self.poll.inlined.as_ref().map_or("?", |inlined| inlined.call.as_str());
        let mut choices =
            vec![self.choice(Program::Poll, at.clone(), format!("the poll, inlined at {call}"))?];
        for (entry, how) in self.other_entries(&at, &compiled.spec)? {
            let reason = format!("the poll, inlined at {call}, {how}");
            choices.push(self.choice(Program::Poll, entry, reason)?);
        }
        let source = self.source;
        let rule = if source.type_name(source.return_type(self.caller))
            == source.type_name(self.coroutine.poll_type)
        {
            let scope = Scope::new(source, self.caller, Side::Return)
                .map_err(|problem| (Class::SourceValue, problem))?;
            outcome(self.probe, &scope, "return.Ready.0", &mut compiled)
                .map_err(|problem| (Class::SourceValue, problem))?
        } else {
            let (ready, rule) = self.ready_place(&mut compiled)?;
            choices.push(ready);
            rule
        };
        Ok((compiled, choices, rule))
    }

    /// A probe at `site` of the caller, with the stack offset that names the caller's call there.
    fn choice(&self, program: Program, site: Site, reason: String) -> Result<Choice, Problem> {
        let sp_offset = self
            .symbols
            .entry_sp_offset(self.symbol.address + site.offset)
            .map_err(|problem| (Class::SourceValue, problem.to_string()))?;
        let reason = format!("{reason}, {}", site.handling);
        Ok(Choice::safe(program, Site { sp_offset, ..site }, reason))
    }

    /// The places past the first where the caller enters the poll: each read of the future's
    /// state tag in the instance, and where the caller goes into the instance right after
    /// making the future `Unresumed` (a caller that knows the state jumps past its read on
    /// the first poll). One spec serves them all, so the values must be where they are at the
    /// first.
    fn other_entries(&self, first: &Site, spec: &ProbeSpec) -> Result<Vec<(Site, &'static str)>, Problem> {
        let (symbol, code) = (self.symbol, self.code);
        let ranges: Vec<(u64, u64)> = self
            .source
            .instance_ranges(self.poll)
            .into_iter()
            .map(|(begin, end)| (begin.saturating_sub(symbol.address), end.saturating_sub(symbol.address)))
            .collect();
        let tag_size = usize::from(self.coroutine.tag_size);
        let unresumed = self.coroutine.state("Unresumed").map_err(|problem| (Class::SourceValue, problem))?;
        let mut entries = Vec::new();
        for (load, base, displacement) in code.memory_reads(&ranges, tag_size) {
            // A read of the tag is one whose base is the future's register, where the debug
            // info locates the future (at the read or on the straight line after it).
            let reads_tag = |future: &pool_obs_common::probe::Scalar| {
                future.base() == Some(Base::Register)
                    && future.derefs == 0
                    && Register::from_u8(future.reg).map(decoder_register) == Some(base)
                    && future.addend + self.coroutine.tag.offset as i64 == displacement
            };
            if let Some(entry) = self.entry_near(load, first, spec, reads_tag)? {
                entries.push((entry, "where it reads its state"));
            }
            for into in code.after_stores(unresumed, tag_size, (base, displacement), &ranges) {
                if let Some(entry) = self.entry_near(into, first, spec, |_| true)? {
                    entries.push((entry, "where the caller enters it once it made the future `Unresumed`"));
                }
            }
        }
        entries.sort_by_key(|(entry, _)| entry.offset);
        entries.dedup_by_key(|(entry, _)| entry.offset);
        Ok(entries)
    }

    /// The first place on the straight line from `offset` where the kernel accepts a probe and
    /// the values compile to `spec`'s, if `accept` takes the future there; `None` if the line
    /// passes `first` or no place fits. Values located elsewhere than at `first` are refused.
    fn entry_near(
        &self,
        offset: u64,
        first: &Site,
        spec: &ProbeSpec,
        accept: impl Fn(&pool_obs_common::probe::Scalar) -> bool,
    ) -> Result<Option<Site>, Problem> {
        let symbol = self.symbol;
        let values = |spec: &ProbeSpec| (spec.future, spec.model_ptr, spec.model_len, spec.request_id);
        let places = self.code.inlined_entries(offset);
        if places.iter().any(|place| place.offset == first.offset) {
            return Ok(None);
        }
        for place in places {
            if matches!(place.handling, Handling::Refused(_)) {
                continue;
            }
            let moved = self.poll.at(symbol.address + place.offset);
            let Ok(compiled) = Scope::new(self.source, &moved, Side::Entry)
                .and_then(|scope| poll_spec(self.probe, scope, self.coroutine))
            else {
                continue;
            };
            if !accept(&compiled.spec.future) {
                continue;
            }
            if values(&compiled.spec) != values(spec) {
                return Err((
                    Class::SourceValue,
                    format!(
                        "{} enters the poll at {:#x} and at {:#x}, with its values in other places",
                        symbol.name,
                        symbol.address + first.offset,
                        symbol.address + place.offset
                    ),
                ));
            }
            return Ok(Some(place));
        }
        Ok(None)
    }

    /// Where the caller binds the future's `Ready` value: a `probe_ready` there ends the poll,
    /// and the outcome is read there.
    fn ready_place(&self, compiled: &mut PollSpec) -> Result<(Choice, OutcomeRule), Problem> {
        let source = self.source;
        let binding = match source.ready_binding(self.caller, self.poll, self.coroutine.poll_type) {
            Ok(binding) => binding,
            Err(problem) => return self.ready_call(compiled).map_err(|_| (Class::SourceValue, problem)),
        };
        let mut first_problem = None;
        for start in &binding.starts {
            let placed = first_inlined_place(&self.caller.at(*start), self.symbol, self.code, |moved| {
                let mut trial = PollSpec { spec: compiled.spec, shown: Vec::new() };
                let scope = Scope::of_ready(source, moved, source.bound_at(moved, &binding)?);
                let rule = outcome(self.probe, &scope, "return", &mut trial)?;
                Ok((rule, trial))
            });
            match placed {
                Ok((at, (rule, trial))) => {
                    compiled.spec = trial.spec;
                    compiled.shown.extend(trial.shown);
                    let reason = format!(
                        "where {} binds the poll's `Ready` value (`{}`)",
                        self.caller.function, binding.name
                    );
                    return Ok((self.choice(Program::Ready, at, reason)?, rule));
                }
                Err(problem) => {
                    first_problem.get_or_insert(problem);
                }
            }
        }
        Err(first_problem.unwrap_or((Class::SourceValue, format!("`{}` is never located", binding.name))))
    }

    /// Where the caller hands the `Ready` value straight to a function it calls
    /// (`.into_response()` out of line): the call instruction, with the value where the
    /// callee's debug info puts its first parameter at its entry (the registers are the same
    /// at the call). Only a call to the one function in the caller that takes the future's
    /// output type is taken, and only a value in memory at a register other than rsp.
    fn ready_call(&self, compiled: &mut PollSpec) -> Result<(Choice, OutcomeRule), String> {
        let source = self.source;
        let output = source.output_type_name(self.coroutine.poll_type).ok_or("no `Ready` value type")?;
        let mut calls = Vec::new();
        for op in &self.code.ops {
            if op.instruction.flow_control() != FlowControl::Call {
                continue;
            }
            let Some(callee) = source.function_site(op.instruction.near_branch_target()) else { continue };
            let Some(first) =
                source.parameters(&callee).ok().and_then(|parameters| parameters.into_iter().next())
            else {
                continue;
            };
            if source.type_name(first.ty) == output {
                calls.push((op, callee, first));
            }
        }
        let [(op, callee, parameter)] = calls.as_slice() else {
            return Err(format!(
                "{} calls into {} functions that take `{output}`",
                self.symbol.name,
                calls.len()
            ));
        };
        let in_memory_off_stack = matches!(
            &parameter.location,
            Ok(Location::Memory(address)) if !matches!(address.origin, Origin::General(Register::Rsp))
        );
        if !in_memory_off_stack {
            return Err(format!("{} takes it in {:?}", callee.function, parameter.location));
        }
        let at = Site { offset: op.offset, sp_offset: 0, handling: op.handling(), instruction: op.text() };
        let moved = self.caller.at(self.symbol.address + op.offset);
        let mut trial = PollSpec { spec: compiled.spec, shown: Vec::new() };
        let scope = Scope::of_ready(source, &moved, parameter.clone());
        let rule = outcome(self.probe, &scope, "return", &mut trial)?;
        compiled.spec = trial.spec;
        compiled.shown.extend(trial.shown);
        let reason = format!(
            "where {} calls {} with the poll's `Ready` value (`{}`)",
            self.caller.function, callee.function, parameter.name
        );
        let choice = self.choice(Program::Ready, at, reason).map_err(|problem| problem.1)?;
        Ok((choice, rule))
    }
}
