//! Asks bpf-linker to let LLVM expand small `memset`s inline.
//!
//! By default bpf-linker passes `--bpf-expand-memcpy-in-order`, which also makes LLVM call
//! `memset` for every zeroed array or struct, however small, and compiler_builtins' `memset`
//! on BPF is a byte loop: five instructions a byte. A call's entry zeroed 112 bytes that way.
fn main() {
    println!("cargo:rustc-link-arg=--disable-expand-memcpy-in-order");
}
