//! Which processes run the pool's executable. Given a path, a process runs it when its
//! `/proc/PID/exe` is that file (the same device and inode). Given a name, as an agent per node
//! sees pools in containers whose files it cannot name, a process runs it when its executable
//! has that name and the same bytes as the first one found: each container's copy of an image
//! is the same bytes under an inode of its own, and a different build of the same name would
//! not fit the probes planned from the first.

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hasher},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use crate::error::{Class, Refusal};

pub struct Executable {
    /// As `--exe` gave it.
    pub shown: String,
    /// The file the probes are planned from: the path, or the first process's executable.
    pub file: PathBuf,
    /// The name to look for, when `--exe` gave a name.
    name: Option<String>,
    /// The file's device and inode.
    identity: (u64, u64),
    /// Its length and a hash of its bytes, to compare a copy with.
    contents: (u64, u64),
    /// Executables compared already, by device and inode: whether they are the same bytes.
    compared: HashMap<(u64, u64), bool>,
}

impl Executable {
    /// Whether `--exe` gave a name, to be found as processes run it, rather than a path.
    pub fn is_name(given: &Path) -> bool {
        !given.as_os_str().to_string_lossy().contains('/')
    }

    /// Whether some process runs an executable named `name`.
    pub fn runs_somewhere(name: &Path) -> bool {
        running(&name.display().to_string()).is_some()
    }

    /// The executable `--exe` names: a file by its path, or, by its name, that of a process
    /// running now.
    pub fn locate(given: &Path) -> Result<Self, Refusal> {
        let shown = given.display().to_string();
        let (file, name) = if !Self::is_name(given) {
            (given.to_path_buf(), None)
        } else {
            let pid = running(&shown).ok_or_else(|| {
                Refusal::new(
                    Class::Process,
                    format!(
                        "no process runs an executable named {shown}: start the pool first, or give \
                         the executable's path"
                    ),
                )
            })?;
            (PathBuf::from(format!("/proc/{pid}/exe")), Some(shown.clone()))
        };
        let unreadable = |error: std::io::Error| {
            Refusal::new(
                Class::Process,
                format!("cannot read --exe {shown}: {error}: give the pool's executable"),
            )
        };
        let metadata = std::fs::metadata(&file).map_err(unreadable)?;
        let contents = digest(&file).map_err(unreadable)?;
        Ok(Self {
            shown,
            file,
            name,
            identity: (metadata.dev(), metadata.ino()),
            contents,
            compared: HashMap::new(),
        })
    }

    /// Whether process `pid` runs this executable.
    pub fn runs_in(&mut self, pid: u32) -> bool {
        let exe = PathBuf::from(format!("/proc/{pid}/exe"));
        let Ok(metadata) = std::fs::metadata(&exe) else { return false };
        let identity = (metadata.dev(), metadata.ino());
        if identity == self.identity {
            return true;
        }
        let Some(name) = &self.name else { return false };
        let named = std::fs::read_link(&exe)
            .ok()
            .and_then(|target| target.file_name().map(|file| file.to_string_lossy() == name.as_str()))
            .unwrap_or(false);
        if !named || metadata.len() != self.contents.0 {
            return false;
        }
        let contents = self.contents;
        *self.compared.entry(identity).or_insert_with(|| digest(&exe).is_ok_and(|digest| digest == contents))
    }
}

/// A process running an executable named `name`.
fn running(name: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
        let target = std::fs::read_link(entry.path().join("exe")).ok()?;
        (target.file_name()? == name).then_some(pid)
    })
}

/// A file's length and a hash of its bytes.
fn digest(path: &Path) -> std::io::Result<(u64, u64)> {
    let bytes = std::fs::read(path)?;
    let mut hasher = DefaultHasher::new();
    hasher.write(&bytes);
    Ok((bytes.len() as u64, hasher.finish()))
}
