//! Turns the manifest and the pool's binary into what gets loaded: one [`ProbeSpec`] per probe
//! (per site, for values named by source paths: [`sourced`]), and the probe sites to attach, each chosen from the function's machine code so that no probe
//! can harm the pool: return probes never put a uretprobe where a panic could unwind through
//! it, and entry probes move off instructions the kernel refuses or single-steps.

use pool_obs_common::{
    event::EventKind,
    probe::{Base, Cookie, MAX_PROBES, ProbeSpec, Register, Scalar},
};

mod future;
mod handoff;
mod inlined_poll;
mod sourced;

use super::{
    machine_code::{FunctionCode, Handling, Site, Unprobeable, decoder_register},
    source::SourceInfo,
    symbols::{Symbol, SymbolTable},
    verdicts,
};
pub use future::FutureStates;
pub use handoff::{HandoffSite, Via};
pub use sourced::Compiled;

use crate::{
    error::{Class, Refusal},
    manifest::{At, Manifest, Model, Probe, ProbeOutcome, Value},
    outcome::OutcomeRule,
};

/// The symbol of the Rust runtime's function that takes a caught panic's payload: every
/// `catch_unwind` (and the catch around every thread's main) calls it.
const PANIC_CATCH: &str = "*__rust_panic_cleanup";

#[derive(Default)]
pub struct Plan {
    /// Indexed by the cookie's probe index.
    pub specs: Vec<ProbeSpec>,
    /// What user space needs to know of each spec's events.
    pub probes: Vec<ProbeInfo>,
    pub attachments: Vec<Attachment>,
    /// Each source-path value as compiled at each site.
    pub compiled: Vec<Compiled>,
}

#[derive(Clone, Debug)]
pub struct ProbeInfo {
    pub function: String,
    /// The event the probe reports.
    pub event: EventKind,
    pub outcome: Option<OutcomeRule>,
    /// Whether the probe reads the pool's request id; without one, a request is the call itself.
    pub has_request_id: bool,
    /// Whether the probe reads a worker id; without one, the event's worker id means nothing.
    pub has_worker_id: bool,
    /// The manifest's constant model key for this probe's events.
    pub constant_model: Option<String>,
    /// What the memory value read is multiplied by to make bytes.
    pub memory_scale: f64,
    /// For a request future's polls and drop: the states that tell them apart.
    pub future: Option<FutureStates>,
    /// For the agent's own probes of a runtime's hand-offs: what the probe is.
    pub handoff: Option<HandoffSite>,
}

/// The kernel program a site runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    /// `probe_entry`: a uprobe at or near the function's entry.
    Entry,
    /// `probe_call`: at the same site, opens the call a return probe closes.
    Call,
    /// `probe_return`: a uretprobe.
    Return,
    /// `probe_exit`: a uprobe on one return instruction.
    Exit,
    /// `probe_unwind_caught`: a uprobe on the runtime's catch of a panic.
    UnwindCaught,
    /// `probe_poll`: a uprobe on a request future's poll inlined into a caller, which fills the
    /// future in to the caller's call.
    Poll,
    /// `probe_ready`: a uprobe where the caller of an inlined poll binds the future's `Ready`
    /// value, when that caller's return is not the poll's.
    Ready,
    /// `handoff_made`: where a runtime makes work a request hands to another thread.
    HandoffMade,
    /// `handoff_ran`: where a runtime starts to run such work.
    HandoffRan,
    /// `handoff_returned`: a uretprobe where the run ends.
    HandoffReturned,
}

impl Program {
    pub const ALL: [Program; 10] = [
        Program::Entry,
        Program::Call,
        Program::Return,
        Program::Exit,
        Program::UnwindCaught,
        Program::Poll,
        Program::Ready,
        Program::HandoffMade,
        Program::HandoffRan,
        Program::HandoffReturned,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Program::Entry => "probe_entry",
            Program::Call => "probe_call",
            Program::Return => "probe_return",
            Program::Exit => "probe_exit",
            Program::UnwindCaught => "probe_unwind_caught",
            Program::Poll => "probe_poll",
            Program::Ready => "probe_ready",
            Program::HandoffMade => "handoff_made",
            Program::HandoffRan => "handoff_ran",
            Program::HandoffReturned => "handoff_returned",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Attachment {
    /// Which of the agent's executables it is for (0 but in a [`Plan::merge`]d plan).
    pub target: usize,
    pub function: String,
    pub program: Program,
    /// Where the site's instruction sits in the file: what the uprobe attaches to.
    pub file_offset: u64,
    pub cookie: Cookie,
    pub site: Site,
    /// Why this site, for `check` and the attach log.
    pub reason: String,
    /// What the user risks with it, warned of at attach.
    pub caution: Option<&'static str>,
}

/// One probe site chosen for a probe, before it is placed in the file.
struct Choice {
    program: Program,
    site: Site,
    reason: String,
    caution: Option<&'static str>,
}

impl Choice {
    fn safe(program: Program, site: Site, reason: String) -> Self {
        Self { program, site, reason, caution: None }
    }
}

pub fn plan(manifest: &Manifest, symbols: &SymbolTable, source: Option<&SourceInfo>) -> anyhow::Result<Plan> {
    let mut plan = Plan::default();
    for probe in &manifest.probes {
        if probe.event == EventKind::FuturePolled {
            let source = source.ok_or_else(|| {
                Refusal::new(
                    Class::SourceValue,
                    format!(
                        "the async_request probe on {} follows a future by the debug info, and the binary \
                         has none: build with `debug = \"line-tables-only\"` or more, or give --debug-file",
                        probe.function
                    ),
                )
            })?;
            plan.async_probe(probe, symbols, source)?;
            continue;
        }
        if probe.reads_source_paths() {
            let source = source.ok_or_else(|| {
                Refusal::new(
                    Class::SourceValue,
                    format!(
                        "the probe on {} names values by their source paths, which needs the binary's \
                         debug info, and none was found: build with `debug = \"line-tables-only\"` or more, \
                         give --debug-file, or use the register syntax",
                        probe.function
                    ),
                )
            })?;
            plan.source_probe(probe, symbols, source)?;
            continue;
        }
        let copies = symbols.locate(&probe.function)?;
        if let Some(function) = source.and_then(|source| source.function_at(copies[0].address)) {
            let slots = verdicts::register_slots(&function);
            if let Some((field, problem)) = verdicts::verdicts(probe, &slots)
                .into_iter()
                .find_map(|(field, verdict)| verdict.err().map(|problem| (field, problem)))
            {
                let message = format!(
                    "{}: {field}: {problem} (`pool-obs-agent check` shows every value)",
                    copies[0].name
                );
                return Err(Refusal::new(Class::SourceValue, message).into());
            }
        }
        let rule = match &probe.outcome {
            Some(ProbeOutcome::Constant(status)) => Some(OutcomeRule::constant(*status)),
            Some(ProbeOutcome::Rule { rule, .. }) => Some(rule.clone()),
            Some(ProbeOutcome::Variants { .. } | ProbeOutcome::Compared { .. }) | None => None,
        };
        let cookie = plan.push(register_spec(probe), info_of(probe, &copies[0].name, rule));
        for symbol in copies {
            let code = symbols.code(symbol);
            let spec = plan.specs[cookie as usize];
            let sites = out_of_line_sites(probe, &spec, &code, symbols)
                .map_err(|problem| unprobeable(&symbol.name, probe.at, problem))?;
            for choice in sites {
                plan.attach(symbol, cookie, choice);
            }
        }
    }
    if plan.attachments.iter().any(|attachment| attachment.program == Program::Exit) {
        plan.attach_panic_catch(symbols);
    }
    // Work is handed off from inside an open call: a request's, a poll's, a worker's run.
    let opens_calls = |probe: &ProbeInfo| {
        matches!(probe.event, EventKind::RequestEnded | EventKind::FuturePolled | EventKind::WorkerEvicted)
    };
    if plan.probes.iter().any(opens_calls) {
        plan.attach_handoffs(symbols);
    }
    Ok(plan)
}

/// The sites of an out-of-line copy: its entry, and its returns for a return probe.
fn out_of_line_sites(
    probe: &Probe,
    spec: &ProbeSpec,
    code: &FunctionCode,
    symbols: &SymbolTable,
) -> Result<Sites, Unprobeable> {
    match probe.at {
        At::Entry => entry_site(Program::Entry, spec, code),
        // The call is opened at entry, where the values the return probe takes from the
        // arguments are read.
        At::Return => entry_site(Program::Call, spec, code).and_then(|mut sites| {
            sites.extend(return_sites(probe.unsafe_uretprobe, code, symbols)?);
            Ok(sites)
        }),
    }
}

type Sites = Vec<Choice>;

impl Plan {
    /// Several executables' plans as one, for one agent that follows them all: each plan's
    /// specs follow the previous one's, its cookies shift with them, and its attachments say
    /// which executable they are for.
    pub fn merge(plans: Vec<Plan>) -> anyhow::Result<Plan> {
        let mut merged = Plan::default();
        for (target, plan) in plans.into_iter().enumerate() {
            let offset = merged.specs.len() as u32;
            merged.specs.extend(plan.specs);
            merged.probes.extend(plan.probes);
            merged.compiled.extend(plan.compiled);
            merged.attachments.extend(plan.attachments.into_iter().map(|mut attachment| {
                attachment.cookie.probe += offset;
                attachment.target = target;
                attachment
            }));
        }
        if merged.specs.len() > MAX_PROBES as usize {
            return Err(Refusal::new(
                Class::ManifestNames,
                format!(
                    "the manifests need {} probe specs together, and the kernel programs hold {MAX_PROBES}: \
                     run one agent for some of the executables",
                    merged.specs.len()
                ),
            )
            .into());
        }
        Ok(merged)
    }

    /// What each probe is, by index, for people: its function and event.
    pub fn probe_names(&self) -> Vec<String> {
        self.probes.iter().map(|probe| format!("{}, {}", probe.function, probe.event.name())).collect()
    }

    fn push(&mut self, spec: ProbeSpec, info: ProbeInfo) -> u32 {
        self.specs.push(spec);
        self.probes.push(info);
        (self.specs.len() - 1) as u32
    }

    fn attach(&mut self, symbol: &Symbol, probe: u32, choice: Choice) {
        let Choice { program, site, reason, caution } = choice;
        self.attachments.push(Attachment {
            target: 0,
            function: symbol.name.clone(),
            program,
            file_offset: symbol.file_offset + site.offset,
            cookie: Cookie { probe, sp_offset: site.sp_offset },
            site,
            reason,
            caution,
        });
    }

    /// The runtime's catch of a panic closes the calls it unwound through at once; without it
    /// (a binary built with `panic = "abort"`, or stripped of it) they close at the thread's
    /// next probed call or at its exit.
    fn attach_panic_catch(&mut self, symbols: &SymbolTable) {
        let Ok(copies) = symbols.resolve(PANIC_CATCH) else { return };
        for symbol in copies {
            if let Ok(site) = symbols.code(symbol).entry_site(&[]) {
                let reason = "closes the calls a caught panic unwound through".to_string();
                self.attach(symbol, 0, Choice::safe(Program::UnwindCaught, site, reason));
            }
        }
    }
}

/// The entry site keeps intact every argument register that the spec reads.
fn entry_site(program: Program, spec: &ProbeSpec, code: &FunctionCode) -> Result<Sites, Unprobeable> {
    let site = code.entry_site(&registers_read(spec))?;
    let reason = match (site.offset, site.handling) {
        (0, Handling::Emulated) => "the first instruction".to_string(),
        (0, handling) => {
            format!("the first instruction, {handling}: no later one of the entry block is emulated")
        }
        (offset, handling) => format!(
            "+{offset:#x}, {handling}: the first instruction, `{}`, is {}, and the values read are intact here",
            code.ops[0].text(),
            code.ops[0].handling()
        ),
    };
    Ok(vec![Choice::safe(program, site, reason)])
}

/// A uretprobe replaces the return address, and a panic cannot unwind through the kernel's
/// trampoline: the pool aborts. So a return probe is a uprobe on every return instruction,
/// unless the function provably cannot unwind (it calls nothing) or the manifest says
/// `unsafe_uretprobe`. A last jump to a deallocation is a return instruction too.
fn return_sites(
    unsafe_uretprobe: bool,
    code: &FunctionCode,
    symbols: &SymbolTable,
) -> Result<Sites, Unprobeable> {
    let uretprobe = |reason: &str, caution| {
        Ok(vec![Choice {
            program: Program::Return,
            site: Site::uretprobe(),
            reason: reason.to_string(),
            caution,
        }])
    };
    if unsafe_uretprobe {
        return uretprobe(
            "uretprobe, as `unsafe_uretprobe` asks",
            Some("unsafe_uretprobe: a panic unwinding through this function aborts the pool"),
        );
    }
    let Some(call) = code.may_unwind_by() else {
        return uretprobe("uretprobe: the function calls nothing, so no panic can unwind through it", None);
    };
    let exits = code.exits(|jump| symbols.frees_only(jump))?;
    let count = exits.len();
    let jumps = exits.iter().filter(|exit| !exit.instruction.starts_with("ret")).count();
    let what = match jumps {
        0 => "return instructions".to_string(),
        _ => format!("return instructions ({jumps} a last jump to a deallocation, the result written)"),
    };
    let reason = format!(
        "a panic may unwind through `{}` at +{:#x}: a probe on each of its {count} {what}, {}",
        call.text(),
        call.offset,
        exits[0].handling
    );
    Ok(exits.into_iter().map(|site| Choice::safe(Program::Exit, site, reason.clone())).collect())
}

fn unprobeable(function: &str, at: At, problem: Unprobeable) -> anyhow::Error {
    let at = match at {
        At::Entry => "entry",
        At::Return => "return",
    };
    Refusal::new(Class::Unprobeable, format!("cannot probe {function} at {at}: {problem}")).into()
}

/// The registers a spec reads, but the stack pointer: an entry probe moved past pushes knows
/// by how much it moved.
fn registers_read(spec: &ProbeSpec) -> Vec<iced_x86::Register> {
    spec.scalars()
        .iter()
        .filter(|scalar| scalar.base() == Some(Base::Register))
        .filter_map(|scalar| Register::from_u8(scalar.reg))
        .filter(|register| *register != Register::Rsp)
        .map(decoder_register)
        .collect()
}

/// The spec of a probe whose values are all in the register syntax.
fn register_spec(probe: &Probe) -> ProbeSpec {
    let scalar = |value: &Option<Value>| match value {
        Some(Value::Registers(scalar)) => *scalar,
        _ => Scalar::default(),
    };
    let read_model = match &probe.model {
        Some(Model::Read(model)) => Some(*model),
        _ => None,
    };
    ProbeSpec {
        kind: probe.event as u32,
        model_ptr: read_model.map(|model| model.ptr).unwrap_or_default(),
        model_len: read_model.map(|model| model.len).unwrap_or_default(),
        worker_id: scalar(&probe.worker_id),
        request_id: scalar(&probe.request_id),
        memory_bytes: scalar(&probe.memory_bytes.as_ref().map(|memory| memory.value.clone())),
        outcome: match &probe.outcome {
            Some(ProbeOutcome::Rule { value, .. }) => *value,
            _ => Scalar::default(),
        },
        ..ProbeSpec::default()
    }
}

fn info_of(probe: &Probe, function: &str, outcome: Option<OutcomeRule>) -> ProbeInfo {
    ProbeInfo {
        function: function.to_string(),
        event: probe.event,
        outcome,
        has_request_id: probe.request_id.is_some(),
        has_worker_id: probe.worker_id.is_some(),
        constant_model: match &probe.model {
            Some(Model::Constant(model)) => Some(model.clone()),
            _ => None,
        },
        memory_scale: probe.memory_bytes.as_ref().map_or(1.0, |memory| memory.scale),
        future: None,
        handoff: None,
    }
}
