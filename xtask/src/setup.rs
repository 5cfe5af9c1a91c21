//! Installs, idempotently, what the build and the tests need beyond the machine image:
//! `rust-src` for the nightly toolchain, `bpf-linker` built against that nightly's own LLVM (in
//! `.tools/`, keyed by the toolchain), and the Debian packages the tests run.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

/// The toolchain that builds the eBPF crate: the machine image's nightly (no other can be
/// fetched here), named by the commit the project's kernel programs were verified with. Another
/// nightly still builds them; the build says so, and the stack test checks what it made.
const EBPF_TOOLCHAIN: &str = "nightly";
const VERIFIED_NIGHTLY: &str = "1.97.0-nightly (e50aa6fba 2026-05-19)";
/// bpf-linker, installed with the lock file it was published with.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Debian packages the test suite runs: bpftool checks that no program outlives the agent;
/// prometheus brings promtool, which checks the exposition.
const DEBIAN_PACKAGES: &[&str] = &["bpftool", "prometheus"];

/// What later steps need from set-up: a PATH that finds bpf-linker.
pub struct Tools {
    path: OsString,
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask sits in the workspace").to_path_buf()
}

pub fn setup() -> Result<Tools> {
    ensure_rust_src()?;
    let linker_bin = ensure_bpf_linker()?;
    ensure_debian_packages(DEBIAN_PACKAGES)?;
    let mut path = OsString::from(linker_bin);
    path.push(":");
    path.push(std::env::var_os("PATH").unwrap_or_default());
    Ok(Tools { path })
}

impl Tools {
    /// A `cargo` command in the workspace, with the tools on PATH.
    pub fn cargo(&self, toolchain: Option<&str>) -> Command {
        let mut command = Command::new("cargo");
        if let Some(toolchain) = toolchain {
            command.arg(format!("+{toolchain}"));
        }
        command.current_dir(workspace_root()).env("PATH", &self.path);
        command
    }

    pub fn build_release(&self) -> Result<()> {
        run(self.cargo(None).args(["build", "--release"]))
    }
}

/// Runs a command to completion, failing with the command line if it fails.
pub fn run(command: &mut Command) -> Result<()> {
    let status = command.status().with_context(|| format!("starting {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}

fn output(command: &mut Command) -> Result<String> {
    let output = command.output().with_context(|| format!("starting {command:?}"))?;
    if !output.status.success() {
        bail!("{command:?} failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn ensure_rust_src() -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        EBPF_TOOLCHAIN,
    ]))
    .context(
        "the eBPF crate needs the nightly toolchain: install it with `rustup toolchain install nightly`",
    )?;
    if installed.lines().any(|line| line.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!("xtask: adding rust-src to the {EBPF_TOOLCHAIN} toolchain");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", EBPF_TOOLCHAIN]))
}

/// The nightly's `rustc -vV`: its commit keys the linker build, its LLVM major picks the
/// linker's LLVM feature.
struct Nightly {
    commit: String,
    /// As `rustc -V` says it: `1.97.0-nightly (e50aa6fba 2026-05-19)`.
    named: String,
    llvm_major: String,
    sysroot_lib: PathBuf,
}

fn nightly() -> Result<Nightly> {
    let version = output(Command::new("rustc").args([&format!("+{EBPF_TOOLCHAIN}"), "-vV"]))?;
    let field = |name: &str| {
        version
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(str::trim)
            .with_context(|| format!("`rustc +{EBPF_TOOLCHAIN} -vV` has no `{name}` line"))
    };
    let commit: String = field("commit-hash:")?.chars().take(12).collect();
    let release = field("release:")?;
    let date = field("commit-date:")?;
    let named = format!("{release} ({} {date})", &commit[..9]);
    let llvm_major = field("LLVM version:")?.split('.').next().unwrap_or_default().to_string();
    let sysroot = output(Command::new("rustc").args([&format!("+{EBPF_TOOLCHAIN}"), "--print", "sysroot"]))?;
    Ok(Nightly { commit, named, llvm_major, sysroot_lib: Path::new(sysroot.trim()).join("lib") })
}

/// bpf-linker must load the same libLLVM as the rustc that emits the eBPF bitcode, so it is
/// built against the nightly's own, and rebuilt whenever the nightly changes.
fn ensure_bpf_linker() -> Result<PathBuf> {
    let nightly = nightly()?;
    let root = workspace_root()
        .join(".tools")
        .join(format!("bpf-linker-{BPF_LINKER_VERSION}-locked-{}", nightly.commit));
    let bin = root.join("bin");
    let used = format!(
        "xtask: kernel programs built with rustc {} (LLVM {}) and bpf-linker {BPF_LINKER_VERSION} (--locked) from {}",
        nightly.named,
        nightly.llvm_major,
        bin.display()
    );
    if nightly.named != VERIFIED_NIGHTLY {
        eprintln!(
            "xtask: warning: the nightly is {}, not the {VERIFIED_NIGHTLY} pool-obs was verified with",
            nightly.named
        );
    }
    if bin.join("bpf-linker").exists() {
        eprintln!("{used}");
        return Ok(bin);
    }
    let llvm_library = std::fs::read_dir(&nightly.sysroot_lib)?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .find(|name| name.starts_with("libLLVM-") && name.ends_with(".so"))
        .with_context(|| format!("no libLLVM-*.so in {}", nightly.sysroot_lib.display()))?;
    let link_name = llvm_library.trim_start_matches("lib").trim_end_matches(".so");
    let lib = nightly.sysroot_lib.display();
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against {llvm_library} (about a minute, once)"
    );
    run(Command::new("cargo")
        .arg(format!("+{EBPF_TOOLCHAIN}"))
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--locked", "--no-default-features"])
        .args(["--features", &format!("llvm-{},no-llvm-linking", nightly.llvm_major)])
        .arg("--root")
        .arg(&root)
        .env("RUSTFLAGS", format!("-L native={lib} -l dylib={link_name} -C link-arg=-Wl,-rpath,{lib}"))
        .current_dir(std::env::temp_dir()))?;
    eprintln!("{used}");
    Ok(bin)
}

pub fn ensure_debian_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> =
        packages.iter().copied().filter(|package| !debian_package_installed(package)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn debian_package_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).contains("install ok installed"))
}
