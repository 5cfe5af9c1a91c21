//! The hand-offs the agent follows by itself, with no manifest line: the runtimes' own
//! functions where work a request hands to another thread is made, and where it runs, with the
//! register that holds the key both sides share (the task's or job's address). The kernel side
//! is `pool-obs-ebpf/src/handoff.rs`.
//!
//! Followed: tokio's blocking pool (`spawn_blocking`, and what tokio runs there for the request,
//! such as `tokio::fs`), and rayon jobs injected from a request's thread or spawned in a
//! followed job (`par_iter`, `join`, `scope` and `spawn` called from outside the pool, and
//! `scope`'s spawns). Not followed: the jobs a rayon worker pushes onto its own deque while it
//! runs a followed job (a nested `join`'s second half, stolen by another worker), `tokio::spawn`,
//! and channels to threads of the pool's own. Their CPU counts for no model.

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

/// A runtime function and the argument register that holds the hand-off's key there.
struct Known {
    function: &'static str,
    key: Register,
}

struct Runtime {
    via: Via,
    made: &'static [Known],
    ran: &'static [Known],
}

const RUNTIMES: [Runtime; 2] = [
    Runtime {
        via: Via::spawn_blocking,
        // `spawn_task(&self, task: Task, …)`: the task's header pointer is its first word.
        made: &[Known {
            function: "tokio::runtime::blocking::pool::Spawner::spawn_task",
            key: Register::Rsi,
        }],
        // Every task's poll, through its vtable (`poll(ptr: NonNull<Header>)`): only the
        // blocking pool's tasks made in a request find their key.
        ran: &[Known { function: "tokio::runtime::task::raw::poll", key: Register::Rdi }],
    },
    Runtime {
        via: Via::rayon,
        // `inject(&self, job: JobRef)`, `inject_or_push(&self, job: JobRef)`: the job's
        // pointer is the `JobRef`'s first word.
        made: &[
            Known { function: "rayon_core::registry::Registry::inject", key: Register::Rsi },
            Known { function: "rayon_core::registry::Registry::inject_or_push", key: Register::Rsi },
        ],
        // `Job::execute(this: *const ())`, through the `JobRef`'s function pointer.
        ran: &[
            Known {
                function: "<rayon_core::job::StackJob<L,F,R> as rayon_core::job::Job>::execute",
                key: Register::Rdi,
            },
            Known {
                function: "<rayon_core::job::HeapJob<BODY> as rayon_core::job::Job>::execute",
                key: Register::Rdi,
            },
        ],
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
            for known in runtime.made {
                self.attach_known(symbols, runtime.via, known, Program::HandoffMade);
            }
            for known in runtime.ran {
                self.attach_known(symbols, runtime.via, known, Program::HandoffRan);
            }
        }
    }

    /// One spec for every instance of `known.function`, at each instance's entry, and for a
    /// run, at its return: a uretprobe, since the runtime catches a panic of the work inside
    /// the function (tokio's harness, rayon's jobs), so none unwinds through its trampoline.
    fn attach_known(&mut self, symbols: &SymbolTable, via: Via, known: &Known, program: Program) {
        let instances = symbols.matching(known.function);
        if instances.is_empty() {
            return;
        }
        let spec = ProbeSpec {
            kind: EventKind::HandoffRan as u32,
            handoff_key: known.key as u8,
            ..ProbeSpec::default()
        };
        let info = ProbeInfo {
            function: known.function.to_string(),
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
            let Ok(site) = symbols.code(symbol).entry_site(&[decoder_register(known.key)]) else {
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
