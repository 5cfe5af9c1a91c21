//! `cargo xtask test`: the whole suite, in the order that fails fastest.

use anyhow::Result;

use crate::{
    setup::{run, setup},
    vm,
};

pub fn run_suite() -> Result<()> {
    let tools = setup()?;
    let vm_tools = vm::ensure_tools()?;
    run(tools.cargo(None).args(["fmt", "--all", "--", "--check"]))?;
    // Host crates: the workspace's default members, which leave out the eBPF crate.
    run(tools.cargo(None).args(["clippy", "--release", "--all-targets", "--", "-D", "warnings"]))?;
    run(tools.cargo(Some("nightly")).args([
        "clippy",
        "--package",
        "pool-obs-ebpf",
        "--release",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--target-dir",
        "target/ebpf-clippy",
        "--",
        "-D",
        "warnings",
    ]))?;
    tools.build_release()?;
    // The end-to-end tests attach to real processes and load the machine: one at a time.
    run(tools.cargo(None).args(["test", "--release", "--", "--test-threads=1"]))?;
    // The same build on the other kernels users run.
    vm::run_matrix(&vm_tools)
}

/// `cargo xtask vms`: the kernel matrix alone, on a fresh build.
pub fn run_vms() -> Result<()> {
    let tools = setup()?;
    let vm_tools = vm::ensure_tools()?;
    tools.build_release()?;
    vm::run_matrix(&vm_tools)
}
