//! Turns the manifest and the pool's symbols into what gets loaded: one [`ProbeSpec`] per
//! attach cookie, and the uprobes to attach.

use pool_obs_common::{
    event::EventKind,
    probe::{AT_ENTRY, AT_RETURN, ProbeSpec, SAVES_NOTHING, Scalar},
};

use super::symbols::SymbolTable;
use crate::{
    manifest::{At, Manifest, Model, Probe},
    outcome::OutcomeRule,
};

pub struct Plan {
    /// Indexed by attach cookie.
    pub specs: Vec<ProbeSpec>,
    /// What user space needs to know of each cookie's events.
    pub probes: Vec<ProbeInfo>,
    pub attachments: Vec<Attachment>,
}

#[derive(Clone, Debug)]
pub struct ProbeInfo {
    pub function: String,
    /// The event the probe reports; `None` for an entry probe that only saves registers for
    /// its return probe.
    pub event: Option<EventKind>,
    pub outcome: Option<OutcomeRule>,
    /// Whether the probe reads the pool's request id; without one, a request is the call itself.
    pub has_request_id: bool,
    /// Whether the probe reads a worker id; without one, the event's worker id means nothing.
    pub has_worker_id: bool,
    /// The manifest's constant model key for this probe's events.
    pub constant_model: Option<String>,
    /// What the memory value read is multiplied by to make bytes.
    pub memory_scale: f64,
}

#[derive(Clone, Debug)]
pub struct Attachment {
    pub function: String,
    pub file_offset: u64,
    pub at: At,
    pub cookie: u32,
}

pub fn plan(manifest: &Manifest, symbols: &SymbolTable) -> anyhow::Result<Plan> {
    let mut plan = Plan { specs: Vec::new(), probes: Vec::new(), attachments: Vec::new() };
    for probe in &manifest.probes {
        let symbol = symbols.locate(&probe.function)?;
        let cookie = plan.push(spec_of(probe), info_of(probe, &symbol.name), symbol.file_offset, probe.at);
        if probe.at == At::Return {
            plan.save_entry_for(cookie);
        }
    }
    Ok(plan)
}

impl Plan {
    fn push(&mut self, mut spec: ProbeSpec, info: ProbeInfo, file_offset: u64, at: At) -> u32 {
        spec.set_function_name(&info.function);
        let cookie = self.specs.len() as u32;
        self.attachments.push(Attachment { function: info.function.clone(), file_offset, at, cookie });
        self.specs.push(spec);
        self.probes.push(info);
        cookie
    }

    /// A return probe reads arguments as they were at entry: an entry probe on the same
    /// function saves them, an existing one if it is free, else one added for the purpose.
    fn save_entry_for(&mut self, return_cookie: u32) {
        let function_offset = self.attachments[return_cookie as usize].file_offset;
        let free_entry = self.attachments.iter().find(|attachment| {
            attachment.at == At::Entry
                && attachment.file_offset == function_offset
                && self.specs[attachment.cookie as usize].saves_for == SAVES_NOTHING
        });
        match free_entry.map(|attachment| attachment.cookie) {
            Some(cookie) => self.specs[cookie as usize].saves_for = return_cookie,
            None => {
                let spec = ProbeSpec { at: AT_ENTRY, saves_for: return_cookie, ..ProbeSpec::default() };
                let info = ProbeInfo {
                    function: self.probes[return_cookie as usize].function.clone(),
                    event: None,
                    outcome: None,
                    has_request_id: false,
                    has_worker_id: false,
                    constant_model: None,
                    memory_scale: 1.0,
                };
                self.push(spec, info, function_offset, At::Entry);
            }
        }
    }
}

fn spec_of(probe: &Probe) -> ProbeSpec {
    let or_absent = |scalar: Option<Scalar>| scalar.unwrap_or_default();
    let read_model = match &probe.model {
        Some(Model::Read(model)) => Some(*model),
        Some(Model::Constant(_)) | None => None,
    };
    ProbeSpec {
        kind: probe.event as u32,
        at: match probe.at {
            At::Entry => AT_ENTRY,
            At::Return => AT_RETURN,
        },
        model_ptr: or_absent(read_model.map(|model| model.ptr)),
        model_len: or_absent(read_model.map(|model| model.len)),
        worker_id: or_absent(probe.worker_id),
        request_id: or_absent(probe.request_id),
        memory_bytes: or_absent(probe.memory_bytes.map(|memory| memory.value)),
        outcome: or_absent(probe.outcome.as_ref().and_then(|outcome| outcome.value)),
        ..ProbeSpec::default()
    }
}

fn info_of(probe: &Probe, function: &str) -> ProbeInfo {
    ProbeInfo {
        function: function.to_string(),
        event: Some(probe.event),
        outcome: probe.outcome.as_ref().map(|outcome| outcome.rule.clone()),
        has_request_id: probe.request_id.is_some(),
        has_worker_id: probe.worker_id.is_some(),
        constant_model: match &probe.model {
            Some(Model::Constant(model)) => Some(model.clone()),
            _ => None,
        },
        memory_scale: probe.memory_bytes.map_or(1.0, |memory| memory.scale),
    }
}
