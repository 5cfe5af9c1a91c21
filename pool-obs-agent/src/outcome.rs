//! How a request ended, and the manifest rule that maps a raw value read by a probe to it.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    Ok,
    Failed,
    Timeout,
}

impl Status {
    pub const ALL: [Status; 3] = [Status::Ok, Status::Failed, Status::Timeout];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Failed => "failed",
            Status::Timeout => "timeout",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == text)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A comparison of the probe's raw value against a constant, such as `> 0x7fffffffffffffff`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Condition {
    pub op: Op,
    pub operand: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Condition {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (op, operand) =
            [("==", Op::Eq), ("!=", Op::Ne), ("<=", Op::Le), (">=", Op::Ge), ("<", Op::Lt), (">", Op::Gt)]
                .into_iter()
                .find_map(|(symbol, op)| text.strip_prefix(symbol).map(|rest| (op, rest.trim())))
                .ok_or_else(|| {
                    format!("`{text}` is not a condition: expected one of == != < <= > >= and a number")
                })?;
        let operand = crate::manifest::value::parse_integer(operand)
            .ok_or_else(|| format!("`{operand}` is not a number"))?;
        Ok(Self { op, operand })
    }

    pub fn holds(&self, value: u64) -> bool {
        match self.op {
            Op::Eq => value == self.operand,
            Op::Ne => value != self.operand,
            Op::Lt => value < self.operand,
            Op::Le => value <= self.operand,
            Op::Gt => value > self.operand,
            Op::Ge => value >= self.operand,
        }
    }
}

/// Maps a probe's raw outcome value to a [`Status`]: the first arm whose condition holds, else
/// `otherwise`. A constant outcome has no arms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutcomeRule {
    pub arms: Vec<(Status, Condition)>,
    pub otherwise: Status,
}

impl OutcomeRule {
    pub fn constant(status: Status) -> Self {
        Self { arms: Vec::new(), otherwise: status }
    }

    pub fn classify(&self, value: u64) -> Status {
        self.arms
            .iter()
            .find(|(_, condition)| condition.holds(value))
            .map_or(self.otherwise, |(status, _)| *status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_niche_rule() {
        // Result<u64, String> through the hidden pointer: word 0 is the String's capacity for
        // Err, and a value no capacity can take (above isize::MAX) for Ok.
        let rule = OutcomeRule {
            arms: vec![(Status::Ok, Condition::parse("> 0x7fffffffffffffff").unwrap())],
            otherwise: Status::Failed,
        };
        assert_eq!(rule.classify(0x8000_0000_0000_0000), Status::Ok);
        assert_eq!(rule.classify(u64::MAX), Status::Ok);
        assert_eq!(rule.classify(24), Status::Failed);
    }

    #[test]
    fn arms_are_tried_in_order() {
        let rule = OutcomeRule {
            arms: vec![
                (Status::Timeout, Condition::parse("== 2").unwrap()),
                (Status::Failed, Condition::parse(">= 1").unwrap()),
            ],
            otherwise: Status::Ok,
        };
        assert_eq!(rule.classify(2), Status::Timeout);
        assert_eq!(rule.classify(1), Status::Failed);
        assert_eq!(rule.classify(0), Status::Ok);
    }

    #[test]
    fn bad_conditions() {
        assert!(Condition::parse("~ 3").unwrap_err().contains("is not a condition"));
        assert_eq!(Condition::parse("== x").unwrap_err(), "`x` is not a number");
    }
}
