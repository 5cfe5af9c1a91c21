//! A profile in pprof's format (`profile.proto`, gzip-compressed), as pprof, Pyroscope,
//! Grafana and speedscope read it. Each sample carries the labels `model` and `pid`; an
//! address's inlined functions are the lines of its location, innermost first.

use std::{
    collections::HashMap,
    io::Write,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use flate2::{Compression, write::GzEncoder};
use libdd_profiling_protobuf::prost_impls::{
    Function, Label, Line, Location, Message, Profile, Sample, ValueType,
};

use super::{SAMPLE_HZ, StackKey, symbolize::Frame};

/// Index of each string in the profile's string table; the empty string is first.
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Self {
        Self { table: vec![String::new()], index: HashMap::from([(String::new(), 0)]) }
    }

    fn of(&mut self, text: &str) -> i64 {
        if let Some(index) = self.index.get(text) {
            return *index;
        }
        let index = self.table.len() as i64;
        self.table.push(text.to_string());
        self.index.insert(text.to_string(), index);
        index
    }
}

pub(super) fn encode(
    stacks: &[(&StackKey, u64)],
    symbolized: &HashMap<(u32, u64), Vec<Frame>>,
    started: SystemTime,
    duration: Duration,
) -> Vec<u8> {
    let period = 1_000_000_000 / SAMPLE_HZ as i64;
    let mut strings = Strings::new();
    let mut functions: HashMap<(String, String), u64> = HashMap::new();
    let mut profile = Profile {
        sample_types: vec![
            ValueType { r#type: strings.of("samples"), unit: strings.of("count") },
            ValueType { r#type: strings.of("cpu"), unit: strings.of("nanoseconds") },
        ],
        period_type: Some(ValueType { r#type: strings.of("cpu"), unit: strings.of("nanoseconds") }),
        period,
        time_nanos: started.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as i64,
        duration_nanos: duration.as_nanos() as i64,
        ..Profile::default()
    };
    let mut locations: HashMap<(u32, u64), u64> = HashMap::new();
    for (key, count) in stacks {
        let mut location_ids = Vec::with_capacity(key.addresses.len());
        for address in &key.addresses {
            let next_id = locations.len() as u64 + 1;
            let id = *locations.entry((key.pid, *address)).or_insert_with(|| {
                let frames = symbolized.get(&(key.pid, *address)).map(Vec::as_slice).unwrap_or_default();
                let lines = frames
                    .iter()
                    .map(|frame| {
                        let next_function = functions.len() as u64 + 1;
                        let function_id = *functions
                            .entry((frame.function.clone(), frame.file.clone()))
                            .or_insert_with(|| {
                                let name = strings.of(&frame.function);
                                profile.functions.push(Function {
                                    id: next_function,
                                    name,
                                    system_name: name,
                                    filename: strings.of(&frame.file),
                                });
                                next_function
                            });
                        Line { function_id, line: i64::from(frame.line) }
                    })
                    .collect();
                profile.locations.push(Location {
                    id: next_id,
                    mapping_id: 0,
                    address: *address,
                    lines,
                    is_folded: false,
                });
                next_id
            });
            location_ids.push(id);
        }
        let count = *count as i64;
        profile.samples.push(Sample {
            location_ids,
            values: vec![count, count * period],
            labels: vec![
                Label { key: strings.of("model"), str: strings.of(&key.model), num: 0, num_unit: 0 },
                Label { key: strings.of("pid"), str: 0, num: i64::from(key.pid), num_unit: 0 },
            ],
        });
    }
    profile.string_table = strings.table;
    let mut gzip = GzEncoder::new(Vec::new(), Compression::default());
    gzip.write_all(&profile.encode_to_vec()).expect("writing to a Vec cannot fail");
    gzip.finish().expect("writing to a Vec cannot fail")
}
