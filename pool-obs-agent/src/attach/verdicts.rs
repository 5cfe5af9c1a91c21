//! The register syntax checked against the debug info: which parameter really sits in the
//! register a value names, by the x86-64 Rust ABI and the function's signature, so that a wrong
//! register, a forgotten `&self` or a forgotten shift for the hidden result pointer is refused
//! by `check` and at attach alike.

use pool_obs_common::probe::{Base, Register, Scalar};

use super::source::signature::{FunctionInfo, Param, TypeKind};
use crate::manifest::{Model, Probe, ProbeOutcome, Value};

/// What an integer argument register holds at entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Slot<'a> {
    /// The caller's result slot, for a return value larger than two registers.
    HiddenResult(u64),
    Whole(&'a Param),
    /// One register of a two-register value such as a `&str`: 0 is its pointer, 1 its length.
    Half(&'a Param, u8),
    /// A value too large for registers, passed by pointer.
    ByPointer(&'a Param),
}

/// The x86-64 Rust ABI, as far as integer registers go: a result over 16 bytes comes back
/// through a hidden pointer in the first register; values up to 8 bytes take one register,
/// up to 16 two, larger ones are passed by pointer; floats and empty values take none.
pub fn register_slots(function: &FunctionInfo) -> Vec<Slot<'_>> {
    let mut slots = Vec::new();
    if let Some(returns) = function.returns.as_ref().filter(|returns| returns.size > 16) {
        slots.push(Slot::HiddenResult(returns.size));
    }
    for param in &function.params {
        match (param.ty.size, &param.ty.kind) {
            (0, _) | (_, TypeKind::Float) => {}
            (1..=8, _) => slots.push(Slot::Whole(param)),
            (9..=16, _) => slots.extend([Slot::Half(param, 0), Slot::Half(param, 1)]),
            _ => slots.push(Slot::ByPointer(param)),
        }
    }
    slots
}

pub fn describe(slot: &Slot) -> String {
    match slot {
        Slot::HiddenResult(size) => format!("the hidden pointer to the {size}-byte result"),
        Slot::Whole(param) => format!("`{}: {}`", param.name, param.ty.name),
        Slot::Half(param, 0) => format!("the pointer of `{}: {}`", param.name, param.ty.name),
        Slot::Half(param, _) => format!("the length of `{}: {}`", param.name, param.ty.name),
        Slot::ByPointer(param) => format!("a pointer to `{}: {}`", param.name, param.ty.name),
    }
}

pub type Verdict = Result<String, String>;

/// For each value the probe reads, what its register holds, or why it cannot be right.
pub fn verdicts(probe: &Probe, slots: &[Slot]) -> Vec<(&'static str, Verdict)> {
    let mut verdicts = Vec::new();
    if let Some(Model::Read(model)) = &probe.model {
        verdicts.push(("model", string_verdict(&model.ptr, &model.len, slots)));
    }
    // Source paths are checked by compiling them, with the plan.
    let registers = |value: Option<&Value>| match value {
        Some(Value::Registers(scalar)) => Some(*scalar),
        _ => None,
    };
    let integers = [
        ("worker_id", registers(probe.worker_id.as_ref())),
        ("request_id", registers(probe.request_id.as_ref())),
        ("memory_bytes", registers(probe.memory_bytes.as_ref().map(|memory| &memory.value))),
        (
            "outcome",
            match &probe.outcome {
                Some(ProbeOutcome::Rule { value, .. }) => Some(*value),
                _ => None,
            },
        ),
    ];
    for (field, scalar) in integers {
        if let Some(scalar) = scalar {
            verdicts.push((field, integer_verdict(&scalar, slots)));
        }
    }
    verdicts
}

/// The argument a register-syntax value starts from: `argN` is N.
fn argument(scalar: &Scalar) -> usize {
    Register::from_u8(scalar.reg).and_then(Register::argument_index).unwrap_or(usize::MAX)
}

fn slot_of<'s, 'a>(scalar: &Scalar, slots: &'s [Slot<'a>]) -> Result<&'s Slot<'a>, String> {
    let index = argument(scalar);
    slots.get(index).ok_or_else(|| {
        format!("arg{index} is past the function's last register argument (it has {})", slots.len())
    })
}

/// A plain register must hold a whole integer; a dereferenced one must hold a pointer.
fn integer_verdict(scalar: &Scalar, slots: &[Slot]) -> Verdict {
    match scalar.base() {
        Some(Base::Register) => {}
        Some(Base::Return) => return Ok("the return value".to_string()),
        _ => return Ok("a constant".to_string()),
    }
    let slot = slot_of(scalar, slots)?;
    let index = argument(scalar);
    let holds = describe(slot);
    let pointer = matches!(slot, Slot::HiddenResult(_) | Slot::ByPointer(_))
        || matches!(slot, Slot::Whole(param) if param.ty.kind == TypeKind::Pointer);
    match (scalar.derefs, pointer, slot) {
        (0, false, Slot::Whole(_)) => Ok(format!("arg{} is {holds}", index)),
        (0, true, _) => {
            Err(format!("arg{} is {holds}, a pointer: read through it with *(arg{} + offset)", index, index))
        }
        (0, false, _) => Err(format!("arg{} is {holds}, not a whole integer", index)),
        (_, true, _) => Ok(format!("read through arg{}, {holds}", index)),
        (_, false, _) => Err(format!("arg{} is {holds}, which is not a pointer to read through", index)),
    }
}

/// `str(argN, argM)` must name the two halves of one (pointer, length) value; a string read
/// through pointers must start from one.
fn string_verdict(ptr: &Scalar, len: &Scalar, slots: &[Slot]) -> Verdict {
    let register = Base::Register as u8;
    if ptr.base != register || len.base != register {
        return Ok("read from the return registers".to_string());
    }
    if ptr.derefs > 0 || len.derefs > 0 {
        return integer_verdict(ptr, slots).and_then(|_| integer_verdict(len, slots));
    }
    let (pointer, length) = (slot_of(ptr, slots)?, slot_of(len, slots)?);
    let (ptr_index, len_index) = (argument(ptr), argument(len));
    match (pointer, length) {
        (Slot::Half(first, 0), Slot::Half(second, 1)) if first == second => {
            Ok(format!("arg{} and arg{} are `{}: {}`", ptr_index, len_index, first.name, first.ty.name))
        }
        _ => Err(format!(
            "str(arg{}, arg{}) must be the pointer and length of one value, but arg{} is {} and arg{} is {}",
            ptr_index,
            len_index,
            ptr_index,
            describe(pointer),
            len_index,
            describe(length)
        )),
    }
}

#[cfg(test)]
mod tests {
    use pool_obs_common::event::EventKind;

    use super::*;
    use crate::{
        attach::source::signature::TypeInfo,
        manifest::{At, value::parse_scalar},
    };

    fn param(name: &str, ty: &str, size: u64, kind: TypeKind) -> Param {
        Param { name: name.to_string(), ty: TypeInfo { name: ty.to_string(), size, kind } }
    }

    /// `fn serve(&self, model: &str, request_id: u64, worker_id: u64) -> Result<u64, String>`
    fn serve() -> FunctionInfo {
        FunctionInfo {
            address: 0x1000,
            params: vec![
                param("self", "&Pool", 8, TypeKind::Pointer),
                param("model", "&str", 16, TypeKind::Other),
                param("request_id", "u64", 8, TypeKind::Other),
                param("worker_id", "u64", 8, TypeKind::Other),
            ],
            returns: Some(TypeInfo {
                name: "Result<u64, String>".to_string(),
                size: 24,
                kind: TypeKind::Other,
            }),
        }
    }

    fn scalar(text: &str) -> Scalar {
        parse_scalar(text).unwrap()
    }

    #[test]
    fn the_hidden_result_pointer_shifts_every_argument() {
        let function = serve();
        let slots = register_slots(&function);
        assert_eq!(integer_verdict(&scalar("arg4"), &slots), Ok("arg4 is `request_id: u64`".to_string()));
        assert_eq!(
            string_verdict(&scalar("arg2"), &scalar("arg3"), &slots),
            Ok("arg2 and arg3 are `model: &str`".to_string())
        );
        // Forgetting the shift lands on the model's length and on `self`.
        assert_eq!(
            integer_verdict(&scalar("arg3"), &slots),
            Err("arg3 is the length of `model: &str`, not a whole integer".to_string())
        );
        assert!(
            string_verdict(&scalar("arg1"), &scalar("arg2"), &slots)
                .unwrap_err()
                .contains("arg1 is `self: &Pool`")
        );
        assert!(
            integer_verdict(&scalar("*arg0"), &slots)
                .unwrap()
                .contains("hidden pointer to the 24-byte result")
        );
        let mut without_worker = serve();
        without_worker.params.pop();
        let fewer = register_slots(&without_worker);
        assert!(integer_verdict(&scalar("arg5"), &fewer).unwrap_err().contains("past the function's last"));
    }

    #[test]
    fn pointers_must_be_read_through() {
        let function = serve();
        let slots = register_slots(&function);
        assert!(integer_verdict(&scalar("arg1"), &slots).unwrap_err().contains("a pointer: read through it"));
        assert!(integer_verdict(&scalar("*(arg1 + 8)"), &slots).is_ok());
        assert!(integer_verdict(&scalar("*arg4"), &slots).unwrap_err().contains("not a pointer"));
    }

    #[test]
    fn verdicts_cover_every_value_read() {
        let function = serve();
        let probe = Probe {
            event: EventKind::RequestStarted,
            function: "serve".to_string(),
            at: At::Entry,
            model: Some(Model::Read(crate::manifest::value::parse_str("str(arg2, arg3)").unwrap())),
            worker_id: Some(Value::Registers(scalar("arg5"))),
            request_id: Some(Value::Registers(scalar("arg4"))),
            memory_bytes: None,
            outcome: None,
            unsafe_uretprobe: false,
        };
        let slots = register_slots(&function);
        let fields: Vec<_> =
            verdicts(&probe, &slots).into_iter().map(|(field, verdict)| (field, verdict.is_ok())).collect();
        assert_eq!(fields, [("model", true), ("worker_id", true), ("request_id", true)]);
    }
}
