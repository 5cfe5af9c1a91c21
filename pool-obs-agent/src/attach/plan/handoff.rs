//! The hand-offs the agent follows by itself, with no manifest line: the runtimes' own
//! functions where work a request hands to another thread is made, and where it runs, with the
//! register that holds the key both sides share (the task's or job's address). The kernel side
//! is `pool-obs-ebpf/src/handoff.rs`.
//!
//! Followed: tokio's blocking pool (`spawn_blocking`, and what tokio runs there for the request,
//! such as `tokio::fs`); tasks a request `tokio::spawn`s, every poll of them; and rayon's jobs:
//! those injected from a request's thread (`par_iter`, `join`, `scope` and `spawn` called from
//! outside the pool), and the jobs a followed job makes on its own stack (a nested `join`'s
//! second half, stolen by another worker). Not followed: a job a worker pushes onto its deque
//! from the heap (`scope`'s spawns, inlined into the caller), and channels to threads of the
//! pool's own. Their CPU counts for no model.

use pool_obs_common::{
    event::EventKind,
    probe::{ProbeSpec, Register},
};
use prometheus_client::encoding::EncodeLabelValue;

use super::{Choice, Plan, ProbeInfo, Program};
use crate::attach::{
    machine_code::{Site, decoder_register},
    symbols::SymbolTable,
};

/// The runtime a hand-off goes through: the `via` label of its CPU.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types, reason = "label values are lower case")]
pub enum Via {
    /// tokio's blocking pool.
    spawn_blocking,
    /// A task `tokio::spawn` made.
    spawn,
    rayon,
}

/// What an agent's own hand-off probe is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandoffSite {
    /// Where work is made, through this runtime.
    Made(Via),
    /// Where work runs: made through whichever runtime its making site says.
    Ran,
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
    /// Whether its work runs many times (a task polled until it ends), not once.
    runs_many: bool,
    /// Whether its work makes jobs on the running thread's stack that another thread may run.
    jobs_on_stack: bool,
}

/// Every task's poll, through its vtable (`poll(ptr: NonNull<Header>)`): only the tasks made
/// in a request find their key.
const TOKIO_POLL: Known = Known { function: "tokio::runtime::task::raw::poll", key: Key::In(Register::Rdi) };

const RUNTIMES: [Runtime; 3] = [
    Runtime {
        via: Via::spawn_blocking,
        // `spawn_task(&self, task: Task, …)`: the task's header pointer is its first word.
        made: &[Known {
            function: "tokio::runtime::blocking::pool::Spawner::spawn_task",
            key: Key::In(Register::Rsi),
        }],
        ran: &[TOKIO_POLL],
        runs_many: false,
        jobs_on_stack: false,
    },
    Runtime {
        via: Via::spawn,
        // `bind_inner(&self, task: Task<S>, notified: Notified<S>)`: every task a runtime
        // spawns is bound to its list once, on the spawning thread.
        made: &[Known {
            function: "tokio::runtime::task::list::OwnedTasks<S>::bind_inner",
            key: Key::In(Register::Rsi),
        }],
        ran: &[TOKIO_POLL],
        runs_many: true,
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
        runs_many: false,
        // `join_context` makes its second half a `StackJob` on the caller's stack.
        jobs_on_stack: true,
    },
];

/// One function the hand-offs probe, and how.
struct Probed<'a> {
    function: &'a str,
    key: Register,
    site: HandoffSite,
    runs_many: bool,
    jobs_on_stack: bool,
}

impl Plan {
    /// Follows the hand-offs of every runtime the binary holds both sides of. A run site that
    /// several runtimes share (tokio's poll) is probed once.
    pub(super) fn attach_handoffs(&mut self, symbols: &SymbolTable) {
        let mut ran: Vec<&str> = Vec::new();
        for runtime in &RUNTIMES {
            let present =
                |known: &[Known]| known.iter().any(|known| !symbols.matching(known.function).is_empty());
            if !present(runtime.made) || !present(runtime.ran) {
                continue;
            }
            for known in runtime.ran {
                let Key::In(key) = known.key else { continue };
                if ran.contains(&known.function) {
                    continue;
                }
                ran.push(known.function);
                let probed = Probed {
                    function: known.function,
                    key,
                    site: HandoffSite::Ran,
                    runs_many: false,
                    jobs_on_stack: runtime.jobs_on_stack,
                };
                self.attach_handoff(symbols, &probed);
            }
            // Read off rayon's machine code once, for all its making sites.
            let mut job_ref = None;
            for known in runtime.made {
                let key = match known.key {
                    Key::In(key) => Some(key),
                    Key::JobRefPointer => {
                        *job_ref.get_or_insert_with(|| job_ref_pointer(symbols, runtime.ran))
                    }
                };
                // Without its key, work is made unseen: its runs count for no model.
                let Some(key) = key else { continue };
                let probed = Probed {
                    function: known.function,
                    key,
                    site: HandoffSite::Made(runtime.via),
                    runs_many: runtime.runs_many,
                    jobs_on_stack: false,
                };
                self.attach_handoff(symbols, &probed);
            }
        }
    }

    /// One spec for every instance of the function, at each instance's entry, and for a run,
    /// at its return: a uretprobe, since the runtime catches a panic of the work inside the
    /// function (tokio's harness, rayon's jobs), so none unwinds through its trampoline.
    fn attach_handoff(&mut self, symbols: &SymbolTable, probed: &Probed<'_>) {
        let instances = symbols.matching(probed.function);
        if instances.is_empty() {
            return;
        }
        let spec = ProbeSpec {
            kind: EventKind::HandoffRan as u32,
            handoff_key: probed.key as u8,
            jobs_on_stack: u8::from(probed.jobs_on_stack),
            runs_many: u8::from(probed.runs_many),
            ..ProbeSpec::default()
        };
        let info = ProbeInfo {
            function: probed.function.to_string(),
            event: EventKind::HandoffRan,
            outcome: None,
            has_request_id: false,
            has_worker_id: false,
            constant_model: None,
            memory_scale: 1.0,
            future: None,
            handoff: Some(probed.site),
        };
        let probe = self.push(spec, info);
        let (program, what) = match probed.site {
            HandoffSite::Made(via) => {
                (Program::HandoffMade, format!("remembers work a request hands off ({via:?})"))
            }
            HandoffSite::Ran => {
                (Program::HandoffRan, "follows the run of work a request handed off".to_string())
            }
        };
        let mut seen = Vec::new();
        for symbol in instances {
            if seen.contains(&symbol.address) {
                continue;
            }
            seen.push(symbol.address);
            let Ok(site) = symbols.code(symbol).entry_site(&[decoder_register(probed.key)]) else {
                continue;
            };
            self.attach(symbol, probe, Choice::safe(program, site, what.clone()));
            if program == Program::HandoffRan {
                let reason = "the end of the run: the runtime catches a panic of the work inside".to_string();
                self.attach(symbol, probe, Choice::safe(Program::HandoffReturned, Site::uretprobe(), reason));
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
