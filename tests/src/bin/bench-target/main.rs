//! `bench-target`: the probed function of `cargo xtask bench`, called as fast as it goes (or at
//! a paced rate) on one or more threads, cycling through model names. Prints one JSON line:
//! calls, elapsed nanoseconds, and nanoseconds per call.

use std::{
    hint::black_box,
    path::PathBuf,
    sync::atomic::{AtomicU64, Ordering},
    thread,
    time::{Duration, Instant},
};

use clap::Parser;

#[derive(Parser)]
struct Options {
    /// Calls in all, shared among the threads.
    #[arg(long, default_value_t = 2_000_000)]
    calls: u64,
    /// Distinct model names to cycle through.
    #[arg(long, default_value_t = 4)]
    models: u64,
    /// Pad every model name with dashes to this many bytes, as a hostile registry might.
    #[arg(long, default_value_t = 0)]
    key_bytes: usize,
    /// Busy work inside each call, in nanoseconds.
    #[arg(long, default_value_t = 0)]
    work_ns: u64,
    /// Calls per second per thread; 0 calls as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    #[arg(long, default_value_t = 1)]
    threads: u64,
    /// After the calls and their result line, pause 3 s, then make this many more at 200 a
    /// second: a burst, then a trickle.
    #[arg(long, default_value_t = 0)]
    then_calls: u64,
    /// Wait until this file exists before calling.
    #[arg(long)]
    start_file: Option<PathBuf>,
    /// Announce each call to `begin` and its result to `end`, as a pool with an entry-only probe
    /// set does.
    #[arg(long)]
    entry_only: bool,
    /// Call `begin` and `tally` only: the probe-placement rows, one probing each.
    #[arg(long)]
    leaf: bool,
    /// With `--leaf`, enter `begin` through `begin_at_nop5`.
    #[arg(long, requires = "leaf")]
    through_nop5: bool,
}

/// The function every configuration probes. It cannot panic, so a return probe is safe on it.
#[inline(never)]
pub fn handle_request(model: &str, request_id: u64, work_ns: u64) -> Result<u32, String> {
    if work_ns > 0 {
        let until = Instant::now() + Duration::from_nanos(work_ns);
        while Instant::now() < until {}
    }
    let first = model.as_bytes().first().copied().unwrap_or_default();
    if request_id % 1_000 == 999 {
        return Err(format!("{model} failed request {request_id}"));
    }
    Ok(u32::from(first).wrapping_add(request_id as u32))
}

/// A request starts: for an entry-only probe set. Like a real pool's, it does some work and
/// calls out, so it has an ordinary prologue: a leaf function's first instruction is often a
/// store below the stack pointer, which the kernel must single-step (~10 µs a hit here).
#[inline(never)]
pub fn begin(model: &str, request_id: u64) {
    record(model.len() as u64);
    record(request_id);
}

/// `begin`, entered through the canonical 5-byte `nop` (`0f 1f 44 00 00`), the only `nop` on
/// which Linux 6.18 optimises a uprobe into a call to a trampoline (`-Z patchable-function-entry`
/// puts LLVM's `0f 1f 44 00 08` there instead). A layout trick for the one bench row about
/// exactly that.
#[unsafe(naked)]
pub extern "C" fn begin_at_nop5(model: *const u8, model_len: usize, request_id: u64) {
    core::arch::naked_asm!(".byte 0x0f, 0x1f, 0x44, 0x00, 0x00", "jmp {begin}", begin = sym begin_from_c)
}

extern "C" fn begin_from_c(model: *const u8, model_len: usize, request_id: u64) {
    // SAFETY: `call` passes a `&str`'s pointer and length through `begin_at_nop5` unchanged.
    let model = unsafe { std::str::from_utf8_unchecked(std::slice::from_raw_parts(model, model_len)) };
    begin(model, request_id);
}

/// A request ends with `result`: for an entry-only probe set.
#[inline(never)]
pub fn end(model: &str, request_id: u64, result: &Result<u32, String>) {
    record(request_id ^ model.len() as u64);
    record(u64::from(result.is_ok()));
}

#[inline(never)]
fn record(value: u64) {
    black_box(value);
}

static EVEN: AtomicU64 = AtomicU64::new(0);
static ODD: AtomicU64 = AtomicU64::new(0);

/// A leaf that counts requests: its first instruction is a `test` the kernel single-steps,
/// the branch after it one the kernel emulates, where the agent places an entry probe.
#[inline(never)]
pub fn tally(model: &str, request_id: u64) {
    if request_id & 1 == 0 {
        EVEN.fetch_add(model.len() as u64, Ordering::Relaxed);
    } else {
        ODD.fetch_add(1, Ordering::Relaxed);
    }
}

fn main() {
    let options = Options::parse();
    let models: Vec<String> = (0..options.models).map(|model| model_name(model, options.key_bytes)).collect();
    eprintln!("bench-target: ready, pid {}", std::process::id());
    pool_obs_tests::processes::await_start_file(options.start_file.as_deref());
    let per_thread = options.calls / options.threads.max(1);
    let started = Instant::now();
    thread::scope(|scope| {
        for thread_index in 0..options.threads.max(1) {
            let models = &models;
            let options = &options;
            scope.spawn(move || call(options, models, thread_index * per_thread, per_thread, options.rate));
        }
    });
    let elapsed = started.elapsed().as_nanos() as u64;
    let calls = per_thread * options.threads.max(1);
    println!(
        r#"{{"calls":{calls},"elapsed_ns":{elapsed},"ns_per_call":{},"uprobe_trampoline":{}}}"#,
        elapsed as f64 / calls as f64,
        uprobe_trampoline()
    );
    if options.then_calls > 0 {
        thread::sleep(Duration::from_secs(3));
        call(&options, &models, calls, options.then_calls, 200);
    }
}

/// Whether the kernel mapped a trampoline for optimised uprobes into this process: it does at the
/// first hit of a uprobe on a canonical 5-byte `nop`.
fn uprobe_trampoline() -> bool {
    std::fs::read_to_string("/proc/self/maps").is_ok_and(|maps| maps.contains("[uprobes-trampoline]"))
}

/// `model-N`, padded with dashes to `bytes`.
fn model_name(model: u64, bytes: usize) -> String {
    let mut name = format!("model-{model}");
    let padding = bytes.saturating_sub(name.len());
    name.extend(std::iter::repeat_n('-', padding));
    name
}

/// Makes `calls` calls from request id `first_id` on, `rate` a second (0: as fast as they go).
fn call(options: &Options, models: &[String], first_id: u64, calls: u64, rate: u64) {
    let interval = (rate > 0).then(|| Duration::from_secs_f64(1.0 / rate as f64));
    let mut next = Instant::now();
    for request_id in first_id..first_id + calls {
        let model = &models[(request_id % models.len() as u64) as usize];
        if options.leaf {
            if options.through_nop5 {
                begin_at_nop5(model.as_ptr(), model.len(), request_id);
            } else {
                begin(model, request_id);
            }
            tally(black_box(model), request_id);
        } else if options.entry_only {
            begin(model, request_id);
            let result = handle_request(black_box(model), request_id, options.work_ns);
            end(model, request_id, &result);
        } else {
            let _ = black_box(handle_request(black_box(model), request_id, options.work_ns));
        }
        if let Some(interval) = interval {
            next += interval;
            while Instant::now() < next {
                std::hint::spin_loop();
            }
        }
    }
}
