//! The hand-offs the agent follows by itself, with no manifest line: the runtimes' own
//! functions where work a request hands to another thread is made, and where it runs, with the
//! register that holds the key both sides share (the task's or job's address). The kernel side
//! is `pool-obs-ebpf/src/handoff.rs`.
//!
//! Followed: tokio's blocking pool (`spawn_blocking`, and what tokio runs there for the request,
//! such as `tokio::fs`), and rayon's jobs: those injected from a request's thread (`par_iter`,
//! `join`, `scope` and `spawn` called from outside the pool), and the jobs a followed job makes
//! on its own stack (a nested `join`'s second half, stolen by another worker). Not followed:
//! `tokio::spawn`, a job a worker pushes onto its deque from the heap (`scope`'s spawns, inlined
//! into the caller), and channels to threads of the pool's own. Their CPU counts for no model.

use pool_obs_common::{
    event::EventKind,
    probe::{ProbeSpec, Register},
};
use prometheus_client::encoding::EncodeLabelValue;

use super::{Choice, Plan, ProbeInfo, Program};
use crate::attach::{
    machine_code::{Handling, Site, decoder_register},
    symbols::SymbolTable,
};

/// The runtime a hand-off goes through: the `via` label of its CPU.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types, reason = "label values are lower case")]
pub enum Via {
    spawn_blocking,
    rayon,
}

/// A runtime function and where the hand-off's key is there.
struct Known {
    function: &'static str,
    key: Key,
}

/// Where a hand-off's key is at a runtime function's entry.
#[derive(Clone, Copy)]
enum Key {
    /// In this argument register, in every build.
    In(Register),
    /// The pointer of rayon's `JobRef { pointer, execute_fn }`, passed after `&self`: in `rsi`
    /// or `rdx`, as rustc laid the struct out in this build (it puts either field first).
    JobRefPointer,
}

struct Runtime {
    via: Via,
    made: &'static [Known],
    ran: &'static [Known],
    /// Whether its work makes jobs on the running thread's stack that another thread may run.
    jobs_on_stack: bool,
}

const RUNTIMES: [Runtime; 2] = [
    Runtime {
        via: Via::spawn_blocking,
        // `spawn_task(&self, task: Task, …)`: the task's header pointer is its first word.
        made: &[Known {
            function: "tokio::runtime::blocking::pool::Spawner::spawn_task",
            key: Key::In(Register::Rsi),
        }],
        // Every task's poll, through its vtable (`poll(ptr: NonNull<Header>)`): only the
        // blocking pool's tasks made in a request find their key.
        ran: &[Known { function: "tokio::runtime::task::raw::poll", key: Key::In(Register::Rdi) }],
        jobs_on_stack: false,
    },
    Runtime {
        via: Via::rayon,
        // `inject(&self, job: JobRef)`, `inject_or_push(&self, job: JobRef)`.
        made: &[
            Known { function: "rayon_core::registry::Registry::inject", key: Key::JobRefPointer },
            Known { function: "rayon_core::registry::Registry::inject_or_push", key: Key::JobRefPointer },
        ],
        // `Job::execute(this: *const ())`, through the `JobRef`'s function pointer.
        ran: &[
            Known {
                function: "<rayon_core::job::StackJob<L,F,R> as rayon_core::job::Job>::execute",
                key: Key::In(Register::Rdi),
            },
            Known {
                function: "<rayon_core::job::HeapJob<BODY> as rayon_core::job::Job>::execute",
                key: Key::In(Register::Rdi),
            },
        ],
        // `join_context` makes its second half a `StackJob` on the caller's stack.
        jobs_on_stack: true,
    },
];

impl Plan {
    /// Follows the hand-offs of every runtime the binary holds both sides of.
    pub(super) fn attach_handoffs(&mut self, symbols: &SymbolTable) {
        for runtime in &RUNTIMES {
            let present =
                |known: &[Known]| known.iter().any(|known| !symbols.matching(known.function).is_empty());
            if !present(runtime.made) || !present(runtime.ran) {
                continue;
            }
            for known in runtime.ran {
                if let Key::In(key) = known.key {
                    self.attach_known(symbols, runtime, known.function, key, Program::HandoffRan);
                }
            }
            for known in runtime.made {
                let key = match known.key {
                    Key::In(key) => Some(key),
                    Key::JobRefPointer => job_ref_pointer(symbols, runtime.ran),
                };
                // Without its key, work is made unseen: its runs count for no model.
                if let Some(key) = key {
                    self.attach_known(symbols, runtime, known.function, key, Program::HandoffMade);
                }
            }
        }
    }

    /// One spec for every instance of `known.function`, at each instance's entry, and for a
    /// run, at its return: a uretprobe, since the runtime catches a panic of the work inside
    /// the function (tokio's harness, rayon's jobs), so none unwinds through its trampoline.
    fn attach_known(
        &mut self,
        symbols: &SymbolTable,
        runtime: &Runtime,
        function: &str,
        key: Register,
        program: Program,
    ) {
        let via = runtime.via;
        let instances = symbols.matching(function);
        if instances.is_empty() {
            return;
        }
        let spec = ProbeSpec {
            kind: EventKind::HandoffRan as u32,
            handoff_key: key as u8,
            jobs_on_stack: u8::from(runtime.jobs_on_stack && program == Program::HandoffRan),
            ..ProbeSpec::default()
        };
        let info = ProbeInfo {
            function: function.to_string(),
            event: EventKind::HandoffRan,
            outcome: None,
            has_request_id: false,
            has_worker_id: false,
            constant_model: None,
            memory_scale: 1.0,
            future: None,
            handoff: Some(via),
        };
        let probe = self.push(spec, info);
        let mut seen = Vec::new();
        for symbol in instances {
            if seen.contains(&symbol.address) {
                continue;
            }
            seen.push(symbol.address);
            let Ok(site) = symbols.code(symbol).entry_site(&[decoder_register(key)]) else {
                continue;
            };
            let what = match program {
                Program::HandoffMade => "remembers work a request hands off",
                _ => "follows the run of work a request handed off",
            };
            self.attach(symbol, probe, Choice::safe(program, site, format!("{what} ({via:?})")));
            if program == Program::HandoffRan {
                let site = Site {
                    offset: 0,
                    sp_offset: -8,
                    handling: Handling::Emulated,
                    instruction: "uretprobe".into(),
                };
                let reason = format!("the end of the run: {via:?} catches a panic of the work inside");
                self.attach(symbol, probe, Choice::safe(Program::HandoffReturned, site, reason));
            }
        }
    }
}

/// Where this build passes a `JobRef`'s pointer: rayon's own code builds each `JobRef` in the
/// argument registers of the call that takes it, loading `execute_fn` (the address of a job's
/// `execute`) with a `lea`; the pointer is in the other register of the pair.
fn job_ref_pointer(symbols: &SymbolTable, ran: &[Known]) -> Option<Register> {
    let executes: Vec<u64> =
        ran.iter().flat_map(|known| symbols.matching(known.function)).map(|symbol| symbol.address).collect();
    let rayon = symbols.matching("rayon_core::*").into_iter().chain(symbols.matching("<rayon_core::*"));
    let loads: Vec<iced_x86::Register> =
        rayon.flat_map(|symbol| symbols.code(symbol).address_loads(&executes)).collect();
    let (rsi, rdx) = (decoder_register(Register::Rsi), decoder_register(Register::Rdx));
    match (loads.contains(&rsi), loads.contains(&rdx)) {
        (true, false) => Some(Register::Rdx),
        (false, true) => Some(Register::Rsi),
        _ => None,
    }
}
