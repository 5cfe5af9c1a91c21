//! Evaluates a probe spec's value sources against the registers and the target's memory.

use core::cell::Cell;

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_probe_read_user, bpf_probe_read_user_buf},
};
use aya_log_ebpf::warn;
use pool_obs_common::{
    event::{MODEL_ABSENT, MODEL_KEY_CAPACITY, MODEL_PRESENT, MODEL_UNREADABLE, ModelKey},
    probe::{Base, MAX_DEREFS, ProbeSpec, Scalar},
};

use crate::{DEBUG_PROBES, count_read_failure, registers::Registers};

/// A read of the target's memory that failed: where, and the helper's error.
#[derive(Clone, Copy)]
struct Failure {
    address: u64,
    error: i64,
}

/// The values a probe reads, by index, named as in the manifest for `--debug-probes` logs.
pub const WORKER_ID: usize = 3;
pub const REQUEST_ID: usize = 4;
pub const MEMORY_BYTES: usize = 5;
pub const OUTCOME: usize = 6;
pub const FUTURE: usize = 7;
const STATE: usize = 8;
const MODEL_POINTER: usize = 0;
const MODEL_LENGTH: usize = 1;
const MODEL: usize = 2;

/// `EINVAL`, for a spec that names no register the program has.
const INVALID: i64 = -22;

/// Reads the values of one probe hit, remembering the first read that failed.
pub struct Reader<'a, C: EbpfContext> {
    ctx: &'a C,
    registers: &'a Registers<'a>,
    spec: &'a ProbeSpec,
    probe: u32,
    first_failure: Cell<Option<(usize, Failure)>>,
}

impl<'a, C: EbpfContext> Reader<'a, C> {
    pub fn new(ctx: &'a C, registers: &'a Registers<'a>, spec: &'a ProbeSpec, probe: u32) -> Self {
        Self { ctx, registers, spec, probe, first_failure: Cell::new(None) }
    }

    pub fn spec(&self) -> &'a ProbeSpec {
        self.spec
    }

    /// The value `source` describes, or 0 when it is absent or unreadable (counted, and logged
    /// under `--debug-probes`).
    pub fn value(&self, source: &Scalar, field: usize) -> u64 {
        match try_value(source, self.registers) {
            Ok(value) => value,
            Err(failure) => {
                self.record(field, failure);
                0
            }
        }
    }

    /// Writes the model key the spec points at into `key`, truncated to [`MODEL_KEY_CAPACITY`]
    /// bytes. `key` may be uninitialised (a reserved event): every field is written, through
    /// the pointer, so that no copy of the key is built on the stack.
    ///
    /// # Safety
    /// `key` is valid for writes.
    pub unsafe fn model_into(&self, key: *mut ModelKey) {
        let spec = self.spec;
        // SAFETY: the caller's promise; each field is written before it is read.
        let key = unsafe { &mut *key };
        // Only the first `captured` bytes are ever read.
        key.len = 0;
        key.captured = 0;
        if spec.model_ptr.base == Base::Absent as u8 {
            key.state = MODEL_ABSENT;
            return;
        }
        key.state = MODEL_UNREADABLE;
        let ptr = match try_value(&spec.model_ptr, self.registers) {
            Ok(ptr) => ptr,
            Err(failure) => return self.record(MODEL_POINTER, failure),
        };
        let len = match try_value(&spec.model_len, self.registers) {
            Ok(len) => len,
            Err(failure) => return self.record(MODEL_LENGTH, failure),
        };
        let captured = core::cmp::min(len, MODEL_KEY_CAPACITY as u64) as usize;
        if let Err(error) = unsafe { bpf_probe_read_user_buf(ptr as *const u8, &mut key.bytes[..captured]) } {
            return self.record(MODEL, Failure { address: ptr, error: error.into() });
        }
        key.len = len;
        key.captured = captured as u32;
        key.state = MODEL_PRESENT;
    }

    /// The state tag of the future at `future`; 0 when the spec reads none or it is unreadable.
    pub fn state(&self, future: u64) -> u64 {
        let spec = self.spec;
        if spec.state_size == 0 || future == 0 {
            return 0;
        }
        let address = future.wrapping_add(u64::from(spec.state_offset));
        let read = unsafe {
            match spec.state_size {
                1 => bpf_probe_read_user(address as *const u8).map(u64::from),
                2 => bpf_probe_read_user(address as *const u16).map(u64::from),
                4 => bpf_probe_read_user(address as *const u32).map(u64::from),
                _ => bpf_probe_read_user(address as *const u64),
            }
        };
        read.unwrap_or_else(|error| {
            self.record(STATE, Failure { address, error: error.into() });
            0
        })
    }

    fn record(&self, field: usize, failure: Failure) {
        count_read_failure(self.probe);
        if self.first_failure.get().is_none() {
            self.first_failure.set(Some((field, failure)));
        }
    }

    /// Under `--debug-probes`, logs the first read that failed. One log call per probe hit,
    /// after all the reads, keeps the verifier's work linear in the number of reads.
    pub fn report_failure(&self) {
        if DEBUG_PROBES.load() == 0 {
            return;
        }
        if let Some((field, failure)) = self.first_failure.get() {
            let field = field_name(field);
            // The agent adds the probe's function: copying a name of variable length here
            // costs the verifier more than a program may.
            warn!(
                self.ctx,
                "probe {} cannot read {} at 0x{:x}: error {}",
                self.probe,
                field,
                failure.address,
                failure.error
            );
        }
    }
}

/// A `match`, not a table: BPF cannot relocate pointers stored inside data, but it can each
/// literal loaded directly.
fn field_name(field: usize) -> &'static str {
    match field {
        MODEL_POINTER => "model pointer",
        MODEL_LENGTH => "model length",
        MODEL => "model",
        WORKER_ID => "worker_id",
        REQUEST_ID => "request_id",
        MEMORY_BYTES => "memory_bytes",
        OUTCOME => "outcome",
        FUTURE => "future",
        STATE => "future state",
        _ => "?",
    }
}

fn try_value(source: &Scalar, registers: &Registers) -> Result<u64, Failure> {
    let invalid = Failure { address: 0, error: INVALID };
    let mut value = match source.base() {
        Some(Base::Absent) => return Ok(0),
        Some(Base::Constant) => return Ok(source.constant),
        Some(Base::Register) => *registers.general.get(source.reg as usize).ok_or(invalid)?,
        Some(Base::Return) => *registers.ret.get(source.reg as usize).ok_or(invalid)?,
        None => return Err(invalid),
    };
    for hop in 0..MAX_DEREFS {
        if hop >= source.derefs as usize {
            break;
        }
        let address = value.wrapping_add(source.offsets[hop] as u64);
        value = unsafe { bpf_probe_read_user(address as *const u64) }
            .map_err(|error| Failure { address, error: error.into() })?;
    }
    value = value.wrapping_add(source.addend as u64);
    // A shift of 64 or more is undefined in BPF as in Rust; specs only hold 0 to 56.
    Ok(truncate(value >> (source.shift & 63), source.size))
}

fn truncate(value: u64, size: u8) -> u64 {
    match size {
        1 => value & 0xff,
        2 => value & 0xffff,
        4 => value & 0xffff_ffff,
        _ => value,
    }
}
