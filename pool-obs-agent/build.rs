//! Builds the kernel programs (`pool-obs-ebpf`) for the BPF target and leaves the object in
//! OUT_DIR for `attach.rs` to embed. Needs the nightly toolchain and `bpf-linker` on PATH, which
//! `cargo xtask setup` provides.

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = format!("{manifest_dir}/../pool-obs-ebpf");
    println!("cargo:rerun-if-changed={manifest_dir}/../pool-obs-common");
    let package = aya_build::Package { name: "pool-obs-ebpf", root_dir: &ebpf_dir, ..Default::default() };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}
