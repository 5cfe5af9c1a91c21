//! CPU profiles split by model. While a profile is taken, every CPU samples the thread it
//! runs at [`SAMPLE_HZ`] (`pool-obs-ebpf/src/sample.rs`); a sample of a followed process
//! comes through the ring buffer in order with that thread's request events, so the
//! aggregator names the model the thread was serving then (`__idle__` when none). Here the
//! samples are unwound as they come (only their return addresses are kept), and at the end
//! symbolised and written as a pprof profile or a flame graph.

pub mod fetch;
mod flame;
pub mod objects;
mod pprof;
pub mod symbolize;
pub mod unwind;

use std::{collections::HashMap, path::PathBuf, time::SystemTime};

use objects::{AddressSpace, Objects, ProcessCode};
use pool_obs_common::event::CpuSampled;
use symbolize::{Frame, Symbols};
use unwind::{Registers, Stack, Unwinder};

/// Samples per second on each CPU: off the beat of timers that tick at round rates.
pub const SAMPLE_HZ: u64 = 99;

/// The model of a sample whose thread served no request.
pub const IDLE: &str = "__idle__";

/// What a profile is written as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// gzip-compressed protobuf, as pprof, Pyroscope, Grafana and speedscope read it.
    Pprof,
    /// An SVG flame graph, one tower per model.
    FlameGraph,
    /// Folded stacks (one line per stack: frames outermost first, `;`-separated, then the
    /// count), as flame graph tools and scripts read them.
    Folded,
}

impl Format {
    const ALL: [Format; 3] = [Format::Pprof, Format::FlameGraph, Format::Folded];

    /// Its name in `GET /profile?format=`.
    pub const fn name(self) -> &'static str {
        match self {
            Format::Pprof => "pprof",
            Format::FlameGraph => "svg",
            Format::Folded => "folded",
        }
    }

    /// The format of that name.
    pub fn named(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|format| format.name() == name)
    }

    /// From a file name: `.svg` is a flame graph, `.folded` (or `.txt`) folded stacks, anything
    /// else pprof.
    pub fn of_path(path: &std::path::Path) -> Self {
        match path.extension().and_then(|extension| extension.to_str()) {
            Some("txt") => Format::Folded,
            Some(extension) => Self::named(extension).unwrap_or(Format::Pprof),
            None => Format::Pprof,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Pprof => "application/octet-stream",
            Format::FlameGraph => "image/svg+xml",
            Format::Folded => "text/plain; charset=utf-8",
        }
    }
}

/// What to profile.
#[derive(Clone, Debug)]
pub struct Selection {
    pub seconds: u64,
    /// Only this model's samples.
    pub model: Option<String>,
    /// Only this process's samples.
    pub pid: Option<u32>,
    pub format: Format,
}

/// One unwound stack of a process, while serving a model: the sampled instruction, then the
/// calls it is in (each return address less one, so that it falls in the call).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct StackKey {
    pid: u32,
    model: String,
    addresses: Vec<u64>,
}

/// A profile being taken: the samples so far, unwound.
pub struct Collector {
    selection: Selection,
    started: SystemTime,
    spaces: HashMap<u32, AddressSpace>,
    unwinder: Unwinder,
    stacks: HashMap<StackKey, u64>,
    /// Time spent unwinding, with reading the processes' code.
    unwinding: std::time::Duration,
}

impl Collector {
    pub fn new(selection: Selection) -> Self {
        Self {
            selection,
            started: SystemTime::now(),
            spaces: HashMap::new(),
            unwinder: Unwinder::default(),
            stacks: HashMap::new(),
            unwinding: std::time::Duration::ZERO,
        }
    }

    /// Whether samples of process `pid` serving `model` are wanted.
    pub fn wants(&self, pid: u32, model: &str) -> bool {
        self.selection.pid.is_none_or(|wanted| wanted == pid)
            && self.selection.model.as_deref().is_none_or(|wanted| wanted == model)
    }

    /// Adds a sample of a thread serving `model`, with the `stack` the kernel copied, of the
    /// process whose code is `code`; `objects` are the files loaded so far, kept from profile
    /// to profile.
    pub fn add(
        &mut self,
        sample: &CpuSampled,
        model: &str,
        stack: &[u8],
        code: &ProcessCode,
        objects: &mut Objects,
    ) {
        let began = std::time::Instant::now();
        let pid = sample.header.pid;
        let space = self.spaces.entry(pid).or_insert_with(|| objects.address_space(code));
        let registers = Registers { ip: sample.ip, sp: sample.sp, bp: sample.bp };
        let stack = Stack { sp: sample.sp, bytes: stack };
        let mut addresses = unwind::unwind(space, &stack, registers, &mut self.unwinder);
        for address in addresses.iter_mut().skip(1) {
            *address -= 1;
        }
        *self.stacks.entry(StackKey { pid, model: model.to_string(), addresses }).or_default() += 1;
        self.unwinding += began.elapsed();
    }

    /// Symbolises the stacks and writes the profile.
    pub fn finish(self) -> Vec<u8> {
        let duration = self.started.elapsed().unwrap_or_default();
        let symbolising = std::time::Instant::now();
        // Loaded for the objects sampled only, by path.
        let mut symbols: HashMap<PathBuf, Symbols> = HashMap::new();
        let mut symbolized: HashMap<(u32, u64), Vec<Frame>> = HashMap::new();
        for key in self.stacks.keys() {
            for address in &key.addresses {
                symbolized.entry((key.pid, *address)).or_insert_with(|| {
                    let space = self.spaces.get(&key.pid);
                    let Some(module) = space.and_then(|space| space.module(*address)) else {
                        let special = space.and_then(|space| space.special(*address));
                        return vec![unknown(
                            special.map_or_else(|| format!("{address:#x}"), str::to_string),
                        )];
                    };
                    let object = &module.object;
                    let symbols =
                        symbols.entry(object.path.clone()).or_insert_with(|| Symbols::load(object.data()));
                    let frames = symbols.frames(module.object_address(*address));
                    if frames.is_empty() {
                        // A function the object does not name (a library's internals, without
                        // its debug symbols), by where it is, as perf shows it.
                        let file = object.path.file_name().unwrap_or_default().to_string_lossy();
                        return vec![unknown(format!("{file}+{:#x}", module.object_address(*address)))];
                    }
                    frames
                });
            }
        }
        let stacks: Vec<(&StackKey, u64)> = self.stacks.iter().map(|(key, count)| (key, *count)).collect();
        tracing::info!(
            samples = stacks.iter().map(|(_, count)| count).sum::<u64>(),
            stacks = stacks.len(),
            addresses = symbolized.len(),
            unwound_ms = self.unwinding.as_millis() as u64,
            symbolised_ms = symbolising.elapsed().as_millis() as u64,
            "CPU profile taken"
        );
        match self.selection.format {
            Format::Pprof => pprof::encode(&stacks, &symbolized, self.started, duration),
            Format::FlameGraph => flame::render(&stacks, &symbolized),
            Format::Folded => flame::folded(&stacks, &symbolized).join("\n").into_bytes(),
        }
    }
}

/// A frame named only by where its code is.
fn unknown(place: String) -> Frame {
    Frame { function: place, file: String::new(), line: 0 }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::Format;

    #[test]
    fn a_format_is_named_one_way_in_queries_and_found_by_file_name() {
        for format in Format::ALL {
            assert_eq!(Format::named(format.name()), Some(format));
        }
        assert_eq!(Format::named("svgz"), None);
        let of = |path: &str| Format::of_path(Path::new(path));
        assert_eq!(
            [of("cpu.svg"), of("cpu.folded"), of("cpu.txt"), of("cpu.pb.gz"), of("cpu")],
            [Format::FlameGraph, Format::Folded, Format::Folded, Format::Pprof, Format::Pprof]
        );
    }
}
