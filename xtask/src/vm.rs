//! The kernels users run, each booted in a virtual machine that runs the end-to-end smoke
//! (`guest.rs`) on this machine's own build.
//!
//! This machine's `/dev/kvm` cannot boot distribution kernels (it is itself a guest), so QEMU
//! emulates (TCG). virtme-ng boots a Debian kernel package unpacked with `dpkg -x`, shares the
//! host's root filesystem read-only (the built binaries run as they are), and writes back only
//! into the folder given with `--rwdir`: the guest leaves its results there. Its `--exec`
//! output reaches only the serial console here (no udev for virtio-serial ports), and it exits
//! 255 whatever the command did, so the results file is what counts.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::setup::{ensure_debian_packages, run, workspace_root};

/// virtme-ng, from PyPI, in a virtual environment of the project's tools.
const VIRTME_NG_VERSION: &str = "1.42";
/// QEMU; `depmod` and busybox, with which virtme-ng packs its initramfs.
const VM_PACKAGES: &[&str] = &["qemu-system-x86", "kmod", "busybox-static"];

/// One kernel of the matrix: a Debian package, pinned so that runs repeat; when the archive no
/// longer has that build, the newest of the same series.
pub struct Kernel {
    pub label: &'static str,
    package: &'static str,
    /// The series' package names: this prefix, a number, this suffix.
    series: (&'static str, &'static str),
}

pub const MATRIX: [Kernel; 2] = [
    Kernel {
        label: "Debian 12 (bookworm) 6.1",
        package: "linux-image-6.1.0-57-amd64",
        series: ("linux-image-6.1.0-", "-amd64"),
    },
    Kernel {
        label: "Debian 12 (bookworm-updates) 6.12",
        package: "linux-image-6.12.118+deb12-amd64",
        series: ("linux-image-6.12.", "+deb12-amd64"),
    },
];

/// The tools a VM run needs, installed (idempotently) by `cargo xtask setup`.
pub struct VmTools {
    vng: PathBuf,
    kernels: Vec<(&'static Kernel, UnpackedKernel)>,
}

struct UnpackedKernel {
    package: String,
    root: PathBuf,
    vmlinuz: PathBuf,
}

pub fn ensure_tools() -> Result<VmTools> {
    ensure_debian_packages(VM_PACKAGES)?;
    let vng = ensure_virtme_ng()?;
    let kernels = MATRIX.iter().map(|kernel| Ok((kernel, ensure_kernel(kernel)?))).collect::<Result<_>>()?;
    Ok(VmTools { vng, kernels })
}

fn tools_dir() -> PathBuf {
    workspace_root().join(".tools")
}

fn ensure_virtme_ng() -> Result<PathBuf> {
    let venv = tools_dir().join(format!("virtme-ng-{VIRTME_NG_VERSION}"));
    let vng = venv.join("bin/vng");
    if vng.exists() {
        return Ok(vng);
    }
    eprintln!("xtask: installing virtme-ng {VIRTME_NG_VERSION} into {}", venv.display());
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(venv.join("bin/pip")).args([
        "install",
        "-q",
        &format!("virtme-ng=={VIRTME_NG_VERSION}"),
    ]))?;
    Ok(vng)
}

/// Downloads and unpacks the kernel's package, once.
fn ensure_kernel(kernel: &Kernel) -> Result<UnpackedKernel> {
    let dir = tools_dir().join("kernels");
    std::fs::create_dir_all(&dir)?;
    let package = match unpacked(&dir, kernel.package) {
        Some(found) => return Ok(found),
        None if available(kernel.package) => kernel.package.to_string(),
        None => newest_of_series(kernel)?,
    };
    if let Some(found) = unpacked(&dir, &package) {
        return Ok(found);
    }
    eprintln!("xtask: downloading {package} for the kernel matrix");
    run(Command::new("apt-get").args(["download", "-q", &package]).current_dir(&dir))?;
    let deb = std::fs::read_dir(&dir)?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with(&format!("{package}_")) && name.ends_with(".deb"))
        })
        .with_context(|| format!("apt-get download left no {package}_*.deb"))?;
    let root = dir.join(&package);
    run(Command::new("dpkg").arg("-x").arg(&deb).arg(&root))?;
    std::fs::remove_file(&deb)?;
    unpacked(&dir, &package).with_context(|| format!("{package} has no boot/vmlinuz-*"))
}

fn unpacked(dir: &Path, package: &str) -> Option<UnpackedKernel> {
    let root = dir.join(package);
    let vmlinuz = std::fs::read_dir(root.join("boot"))
        .ok()?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .find(|path| {
            path.file_name().and_then(|name| name.to_str()).is_some_and(|name| name.starts_with("vmlinuz-"))
        })?;
    Some(UnpackedKernel { package: package.to_string(), root, vmlinuz })
}

fn available(package: &str) -> bool {
    Command::new("apt-cache")
        .args(["show", "--no-all-versions", package])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn newest_of_series(kernel: &Kernel) -> Result<String> {
    let (prefix, suffix) = kernel.series;
    let listed = Command::new("apt-cache").args(["pkgnames", prefix]).output()?;
    let newest = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter_map(|name| {
            let number = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
            Some((number.parse::<u32>().ok()?, name.to_string()))
        })
        .max();
    match newest {
        Some((_, name)) => Ok(name),
        None => {
            bail!("the package archive has no {prefix}N{suffix} for {} (run apt-get update)", kernel.label)
        }
    }
}

/// Boots every kernel of the matrix in turn and runs the guest smoke in it; fails when a check
/// failed, or the guest never said it was done. Each VM's results are printed as it ends.
pub fn run_matrix(tools: &VmTools) -> Result<()> {
    let xtask = std::env::current_exe().context("the xtask binary's path")?;
    let mut failed = Vec::new();
    for (kernel, unpacked) in &tools.kernels {
        let out = workspace_root().join("target/vm").join(&unpacked.package);
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out)?;
        let console = std::fs::File::create(out.join("console.log"))?;
        let command = format!("{} vm-guest --out {}", xtask.display(), out.display());
        eprintln!("xtask: booting {} ({}) under QEMU's emulation", kernel.label, unpacked.package);
        let started = Instant::now();
        // vng exits 255 whatever the command did: the results file says what happened.
        // vng runs its own helpers (virtme-run) from PATH.
        let venv_bin = tools.vng.parent().context("vng's folder")?;
        let path = format!("{}:{}", venv_bin.display(), std::env::var("PATH").unwrap_or_default());
        let _ = Command::new(&tools.vng)
            .env("PATH", path)
            .args(["--disable-kvm", "--verbose", "--cpus", "2", "--memory", "4G"])
            // One host thread for both vCPUs: with a thread each, a vCPU could run a stale
            // translation of kernel text the other was patching (sched_switch's tracepoint,
            // switched on and off as the agent comes and goes), and 6.12 died of an `int3` in
            // `__schedule` in 1 boot of 3; single-threaded, 0 of 4.
            .arg("--qemu-opts=-accel tcg,thread=single")
            .arg("--run")
            .arg(&unpacked.vmlinuz)
            .arg(format!("--rwdir={}", out.display()))
            .args(["--exec", &command])
            .current_dir(&unpacked.root)
            .stdin(Stdio::null())
            .stdout(console.try_clone()?)
            .stderr(console)
            .status()
            .context("running vng")?;
        let results = std::fs::read_to_string(out.join("results.txt")).unwrap_or_default();
        let seconds = started.elapsed().as_secs_f64();
        eprintln!("xtask: {} in {seconds:.0} s:\n{}", kernel.label, results.trim_end());
        if !results.lines().any(|line| line == "done") {
            failed.push(format!(
                "{}: the guest never finished (its console: {})",
                kernel.label,
                out.join("console.log").display()
            ));
        }
        failed.extend(
            results
                .lines()
                .filter(|line| line.starts_with("fail "))
                .map(|line| format!("{}: {line}", kernel.label)),
        );
    }
    if !failed.is_empty() {
        bail!("the kernel matrix failed:\n{}", failed.join("\n"));
    }
    Ok(())
}
