//! CPU profiles as the tests read them: taken with `pool-obs-agent profile` from a running
//! agent, decoded from pprof, and their samples counted by model.

use std::{collections::BTreeMap, io::Read, process::Command};

use libdd_profiling_protobuf::prost_impls::{Message, Profile};
use pool_obs_tests::processes::{Agent, binary};

/// A profile of process `pid` over `seconds`, from `agent`.
pub fn take(pid: u32, agent: &Agent, seconds: u32) -> Profile {
    let path = std::env::temp_dir().join(format!("pool-obs-profile-{pid}.pb.gz"));
    let taken = Command::new(binary("pool-obs-agent"))
        .args(["profile", "--pid", &pid.to_string(), "--seconds", &seconds.to_string(), "-o"])
        .arg(&path)
        .args(["--agent", &agent.address.to_string()])
        .output()
        .expect("run pool-obs-agent profile");
    assert!(taken.status.success(), "{}", String::from_utf8_lossy(&taken.stderr));
    let mut encoded = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&path).expect("the profile"))
        .read_to_end(&mut encoded)
        .expect("gzip");
    std::fs::remove_file(&path).ok();
    Profile::decode(encoded.as_slice()).expect("a pprof profile")
}

/// What a profile's samples show, by model: how many, and how many have a frame of each
/// function named in `functions` on their stack.
pub fn samples_by_model(
    profile: &Profile,
    functions: &[&str],
) -> BTreeMap<String, (i64, BTreeMap<String, i64>)> {
    let text = |index: i64| profile.string_table[index as usize].as_str();
    let names_at = |location_id: u64| -> Vec<&str> {
        let location =
            profile.locations.iter().find(|location| location.id == location_id).expect("a location");
        location
            .lines
            .iter()
            .map(|line| {
                let function = profile.functions.iter().find(|function| function.id == line.function_id);
                text(function.expect("a function").name)
            })
            .collect()
    };
    let mut by_model: BTreeMap<String, (i64, BTreeMap<String, i64>)> = BTreeMap::new();
    for sample in &profile.samples {
        let model = sample.labels.iter().find(|label| text(label.key) == "model");
        let model = text(model.expect("every sample has a model label").str).to_string();
        let count = sample.values[0];
        let names: Vec<&str> = sample.location_ids.iter().flat_map(|id| names_at(*id)).collect();
        let (total, hits) = by_model.entry(model).or_default();
        *total += count;
        for function in functions {
            if names.iter().any(|name| name.ends_with(function)) {
                *hits.entry(function.to_string()).or_default() += count;
            }
        }
    }
    by_model
}
