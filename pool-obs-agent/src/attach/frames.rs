//! Where a call's entry stack pointer is from any instruction of its function: the call-frame
//! information in `.eh_frame` (which every Rust binary keeps, for unwinding panics) gives the
//! canonical frame address at each address as `rsp + n`, and the entry sp is the CFA less the
//! return address. A probe inside a function (an inlined poll) names its caller's call with it.

use gimli::{BaseAddresses, CfaRule, EhFrame, NativeEndian, UnwindContext, UnwindSection, X86_64};
use object::{Object, ObjectSection};

/// `entry_sp = rsp + offset` at `address`, from the binary's `.eh_frame`.
pub fn entry_sp_offset(binary: &[u8], address: u64) -> Result<i32, String> {
    let file = object::File::parse(binary).map_err(|error| error.to_string())?;
    let section = file.section_by_name(".eh_frame").ok_or("the binary has no .eh_frame")?;
    let data = section.data().map_err(|error| error.to_string())?;
    let mut bases = BaseAddresses::default().set_eh_frame(section.address());
    if let Some(text) = file.section_by_name(".text") {
        bases = bases.set_text(text.address());
    }
    let eh_frame = EhFrame::new(data, NativeEndian);
    let mut context = Box::new(UnwindContext::new());
    let row = eh_frame
        .unwind_info_for_address(&bases, &mut context, address, EhFrame::cie_from_offset)
        .map_err(|error| format!("no call-frame information at {address:#x} ({error})"))?;
    match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } if *register == X86_64::RSP => {
            i32::try_from(offset - 8).map_err(|_| format!("a frame of {offset} bytes at {address:#x}"))
        }
        CfaRule::RegisterAndOffset { register, .. } => Err(format!(
            "at {address:#x} the frame is addressed from {}, not rsp",
            X86_64::register_name(*register).unwrap_or("another register")
        )),
        CfaRule::Expression(_) => Err(format!("at {address:#x} the frame is computed by an expression")),
    }
}
