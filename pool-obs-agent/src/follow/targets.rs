//! What the agent follows, as the flags or a targets file say: each pool by its PID or its
//! executable, with its manifest. One form for both, so that the rest reads one list.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Class, Refusal};

/// One pool to follow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Pid(u32),
    Exe(PathBuf),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    target: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    exe: Option<PathBuf>,
    pid: Option<u32>,
    manifest: PathBuf,
}

/// The pools the flags name, each with its manifest: `--pid` or `--exe`, repeated, and as many
/// `--manifest`, in the same order.
pub fn from_flags(
    pids: &[u32],
    exes: &[PathBuf],
    manifests: &[PathBuf],
) -> Result<Vec<(Target, PathBuf)>, Refusal> {
    let targets: Vec<Target> = pids
        .iter()
        .map(|pid| Target::Pid(*pid))
        .chain(exes.iter().map(|exe| Target::Exe(exe.clone())))
        .collect();
    if targets.is_empty() || targets.len() != manifests.len() {
        return Err(Refusal::new(
            Class::Other,
            "give --pid or --exe, each with its --manifest in the same order, or --targets FILE: see --help",
        ));
    }
    Ok(targets.into_iter().zip(manifests.iter().cloned()).collect())
}

/// The pools a targets file names, with their manifests relative to the file.
pub fn from_file(path: &Path) -> Result<Vec<(Target, PathBuf)>, Refusal> {
    let refuse =
        |message: String| Refusal::new(Class::ManifestSyntax, format!("{}: {message}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|error| refuse(error.to_string()))?;
    let file: File = toml::from_str(&text).map_err(|error| refuse(error.message().to_string()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut targets = Vec::new();
    for entry in file.target {
        let target = match (entry.pid, entry.exe) {
            (Some(pid), None) => Target::Pid(pid),
            (None, Some(exe)) => Target::Exe(exe),
            _ => return Err(refuse("each [[target]] has `exe` or `pid`, one of them".to_string())),
        };
        targets.push((target, base.join(entry.manifest)));
    }
    if targets.is_empty() {
        return Err(refuse("no [[target]]".to_string()));
    }
    if targets.iter().any(|(target, _)| matches!(target, Target::Pid(_)))
        && targets.iter().any(|(target, _)| matches!(target, Target::Exe(_)))
    {
        return Err(refuse("targets are all by `pid` or all by `exe`".to_string()));
    }
    Ok(targets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_targets_file_names_each_pool_with_its_manifest_beside_the_file() {
        let dir = std::env::temp_dir().join(format!("pool-obs-targets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("targets.toml");
        std::fs::write(
            &path,
            "[[target]]\nexe = \"my-pool\"\nmanifest = \"my-pool.toml\"\n\n\
             [[target]]\nexe = \"/srv/kv/kv-pool\"\nmanifest = \"/etc/kv.toml\"\n",
        )
        .unwrap();
        assert_eq!(
            from_file(&path).unwrap(),
            [
                (Target::Exe("my-pool".into()), dir.join("my-pool.toml")),
                (Target::Exe("/srv/kv/kv-pool".into()), PathBuf::from("/etc/kv.toml")),
            ]
        );
        std::fs::write(&path, "[[target]]\npid = 1\nexe = \"x\"\nmanifest = \"m.toml\"\n").unwrap();
        assert!(from_file(&path).unwrap_err().message.contains("each [[target]] has `exe` or `pid`"));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(from_flags(&[1], &[], &[]).is_err());
    }
}
