//! Every way the agent can refuse to run, each with its own exit code, so that scripts can tell
//! them apart. Messages are one line and say how to fix the problem. Each error type says its
//! own class (`Refusal::class`, `ManifestError::class`, `SymbolError::class`); `main` reads the
//! class off the first classified error in a chain, so that this module imports none of them.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Anything not classified below.
    Other = 1,
    FunctionNotFound = 10,
    AmbiguousFunction = 11,
    StrippedBinary = 12,
    InlinedFunction = 13,
    Process = 14,
    Privilege = 15,
    NoUprobes = 16,
    ManifestSyntax = 17,
    ManifestNames = 18,
    /// `check` found a problem in the manifest.
    CheckFailed = 19,
    /// The kernel cannot probe the function as asked (an instruction it refuses, a tail call).
    Unprobeable = 20,
    /// A value named by its source path cannot be read where the function runs: no debug
    /// info, optimised out there, no such parameter, field or variant.
    SourceValue = 21,
    /// `profile` got no profile: no agent answers, or it refused (another profile is being
    /// taken, or it does not follow the PID).
    Profile = 22,
    /// The kernel lacks a facility every probe needs, or refuses a kernel program.
    UnsupportedKernel = 23,
}

impl Class {
    /// Every class, for the test that keeps the docs' table of exit codes true.
    #[cfg(test)]
    pub const ALL: [Class; 15] = [
        Class::Other,
        Class::FunctionNotFound,
        Class::AmbiguousFunction,
        Class::StrippedBinary,
        Class::InlinedFunction,
        Class::Process,
        Class::Privilege,
        Class::NoUprobes,
        Class::ManifestSyntax,
        Class::ManifestNames,
        Class::CheckFailed,
        Class::Unprobeable,
        Class::SourceValue,
        Class::Profile,
        Class::UnsupportedKernel,
    ];
}

/// An error of a known class.
#[derive(Debug)]
pub struct Refusal {
    pub class: Class,
    pub message: String,
}

impl Refusal {
    pub fn new(class: Class, message: impl Into<String>) -> Self {
        Self { class, message: message.into() }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Refusal {}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::Class;

    #[test]
    fn the_docs_list_every_exit_code_and_no_other() {
        let listed: BTreeSet<u8> = crate::docs::first_column("| code | meaning |")
            .iter()
            .filter_map(|code| code.parse().ok())
            .collect();
        let defined: BTreeSet<u8> = Class::ALL.iter().map(|class| *class as u8).collect();
        assert_eq!(listed, defined);
    }
}
