//! Where a binary's DWARF is. Release builds often ship without it and keep it apart (`objcopy
//! --only-keep-debug`, Debian's `-dbgsym` packages): the agent looks where gdb looks.

use std::path::{Path, PathBuf};

use object::Object;

/// The global debug directory of gdb and the distributions.
const GLOBAL_DEBUG_DIR: &str = "/usr/lib/debug";

/// The file that holds the DWARF of `binary` (whose bytes are `data`), in this order: `explicit` (`--debug-file`); the binary
/// itself; the file its `.gnu_debuglink` names, beside `executable` (the binary's real path:
/// `binary` may be `/proc/PID/exe`), in its `.debug/` or under `/usr/lib/debug`; the file its
/// build id names under `/usr/lib/debug/.build-id/`. A separate file must carry the binary's
/// build id when the binary has one, so that a stale file is not taken for the right one.
pub fn find(
    data: &[u8],
    binary: &Path,
    executable: &Path,
    explicit: Option<&Path>,
) -> Result<Option<PathBuf>, String> {
    let file = object::File::parse(data).map_err(|error| error.to_string())?;
    let build_id = file.build_id().ok().flatten().map(<[u8]>::to_vec);
    if let Some(explicit) = explicit {
        return match matches(explicit, build_id.as_deref()) {
            Ok(true) => Ok(Some(explicit.to_path_buf())),
            Ok(false) => Err(format!(
                "{} is not the debug info of {}: its build id differs",
                explicit.display(),
                executable.display()
            )),
            Err(error) => Err(error),
        };
    }
    if file.section_by_name(".debug_info").is_some() {
        return Ok(Some(binary.to_path_buf()));
    }
    let linked =
        file.gnu_debuglink().ok().flatten().map(|(name, _crc)| String::from_utf8_lossy(name).into_owned());
    let directory = executable.parent().unwrap_or(Path::new("/"));
    let mut candidates = Vec::new();
    if let Some(name) = linked {
        candidates.push(directory.join(&name));
        candidates.push(directory.join(".debug").join(&name));
        candidates.push(
            Path::new(GLOBAL_DEBUG_DIR).join(directory.strip_prefix("/").unwrap_or(directory)).join(&name),
        );
    }
    if let Some(id) = build_id.as_deref().filter(|id| id.len() > 1) {
        let hex: String = id.iter().map(|byte| format!("{byte:02x}")).collect();
        candidates.push(
            Path::new(GLOBAL_DEBUG_DIR)
                .join(".build-id")
                .join(&hex[..2])
                .join(format!("{}.debug", &hex[2..])),
        );
    }
    Ok(candidates.into_iter().find(|candidate| matches(candidate, build_id.as_deref()).unwrap_or(false)))
}

/// Whether `candidate` holds DWARF for the binary with `build_id`.
fn matches(candidate: &Path, build_id: Option<&[u8]>) -> Result<bool, String> {
    let data =
        std::fs::read(candidate).map_err(|error| format!("cannot read {}: {error}", candidate.display()))?;
    let file = object::File::parse(&*data).map_err(|error| format!("{}: {error}", candidate.display()))?;
    let same_build = match (build_id, file.build_id().ok().flatten()) {
        (Some(wanted), Some(found)) => wanted == found,
        _ => true,
    };
    Ok(same_build && file.section_by_name(".debug_info").is_some())
}
