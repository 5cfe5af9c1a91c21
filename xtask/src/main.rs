//! `cargo xtask`: everything a fresh machine needs to build, demo and test pool-obs.

mod bench;
mod demo;
mod guest;
mod setup;
mod soak;
mod test;
mod vm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "pool-obs developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent): rust-src, bpf-linker, Debian
    /// packages, and the kernel matrix's QEMU, virtme-ng and Debian kernels.
    Setup,
    /// Set up, then build every binary in release mode.
    Build,
    /// Start the reference pool under load, attach the agent to its PID, serve until Ctrl-C.
    Demo(demo::Options),
    /// Set up, then run the whole suite: fmt, clippy (host and eBPF), unit and end-to-end tests.
    Test,
    /// Measure pool-obs side by side with the kernel's floor and bpftrace; prints a markdown report.
    Bench(bench::Options),
    /// Set up, build, then boot each kernel of the matrix (Debian 12's 6.1 and 6.12) in a
    /// virtual machine and run the end-to-end smoke there.
    Vms,
    /// Inside a virtual machine of the matrix: the end-to-end smoke (run by `vms`).
    #[command(hide = true)]
    VmGuest(guest::Options),
    /// Ten minutes of the demo's load under the agent: memory flat, nothing lost, every request counted.
    Soak(soak::Options),
}

fn main() -> ExitCode {
    let result = match Cli::parse().task {
        Task::Setup => setup::setup().and_then(|_| vm::ensure_tools()).map(drop),
        Task::Build => setup::setup().and_then(|tools| tools.build_release()),
        Task::Demo(options) => demo::run(&options),
        Task::Test => test::run_suite(),
        Task::Vms => test::run_vms(),
        Task::VmGuest(options) => guest::run(&options),
        Task::Bench(options) => bench::run(&options),
        Task::Soak(options) => soak::run(&options),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
