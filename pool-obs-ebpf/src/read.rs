//! Evaluates a probe spec's value sources against the registers and the target's memory.

use aya_ebpf::helpers::{bpf_probe_read_user, bpf_probe_read_user_buf};
use pool_obs_common::{
    counters,
    event::{MODEL_ABSENT, MODEL_KEY_CAPACITY, MODEL_PRESENT, MODEL_UNREADABLE, ModelKey},
    probe::{BASE_ABSENT, BASE_ARG, BASE_CONSTANT, BASE_RET, MAX_DEREFS, ProbeSpec, Scalar},
};

use crate::{count, registers::Registers};

/// The value `source` describes, or 0 when it is absent or unreadable (counted).
pub fn value(source: &Scalar, registers: &Registers) -> u64 {
    match try_value(source, registers) {
        Some(value) => value,
        None => {
            count(counters::READ_FAILURES);
            0
        }
    }
}

fn try_value(source: &Scalar, registers: &Registers) -> Option<u64> {
    let mut value = match source.base {
        BASE_ABSENT => return Some(0),
        BASE_CONSTANT => return Some(source.constant),
        BASE_ARG => *registers.args.get(source.reg as usize)?,
        BASE_RET => *registers.ret.get(source.reg as usize)?,
        _ => return None,
    };
    for hop in 0..MAX_DEREFS {
        if hop >= source.derefs as usize {
            break;
        }
        let address = value.wrapping_add(source.offsets[hop] as u64);
        value = unsafe { bpf_probe_read_user(address as *const u64) }.ok()?;
    }
    Some(truncate(value, source.size))
}

fn truncate(value: u64, size: u8) -> u64 {
    match size {
        1 => value & 0xff,
        2 => value & 0xffff,
        4 => value & 0xffff_ffff,
        _ => value,
    }
}

/// The model key the spec points at, truncated to [`MODEL_KEY_CAPACITY`] bytes.
pub fn model(spec: &ProbeSpec, registers: &Registers) -> ModelKey {
    let mut key = ModelKey { len: 0, state: MODEL_ABSENT, captured: 0, bytes: [0; MODEL_KEY_CAPACITY] };
    if spec.model_ptr.base == BASE_ABSENT {
        return key;
    }
    key.state = MODEL_UNREADABLE;
    let (Some(ptr), Some(len)) =
        (try_value(&spec.model_ptr, registers), try_value(&spec.model_len, registers))
    else {
        count(counters::READ_FAILURES);
        return key;
    };
    let captured = core::cmp::min(len, MODEL_KEY_CAPACITY as u64) as usize;
    if unsafe { bpf_probe_read_user_buf(ptr as *const u8, &mut key.bytes[..captured]) }.is_err() {
        count(counters::READ_FAILURES);
        return key;
    }
    key.len = len;
    key.captured = captured as u32;
    key.state = MODEL_PRESENT;
    key
}
