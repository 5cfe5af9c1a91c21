//! How a request ended, and the manifest rule that maps a raw value read by a probe to it.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    Ok,
    Failed,
    Timeout,
    /// Its client gave up: an async request whose future was dropped before it was ready.
    Cancelled,
}

impl Status {
    pub const ALL: [Status; 4] = [Status::Ok, Status::Failed, Status::Timeout, Status::Cancelled];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Failed => "failed",
            Status::Timeout => "timeout",
            Status::Cancelled => "cancelled",
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

/// One of something per status: requests counted, or the counters that export them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ByStatus<T> {
    pub ok: T,
    pub failed: T,
    pub timeout: T,
    pub cancelled: T,
}

impl<T> ByStatus<T> {
    /// One per status, made by `make`.
    pub fn from_fn(mut make: impl FnMut(Status) -> T) -> Self {
        Self {
            ok: make(Status::Ok),
            failed: make(Status::Failed),
            timeout: make(Status::Timeout),
            cancelled: make(Status::Cancelled),
        }
    }

    pub fn get(&self, status: Status) -> &T {
        match status {
            Status::Ok => &self.ok,
            Status::Failed => &self.failed,
            Status::Timeout => &self.timeout,
            Status::Cancelled => &self.cancelled,
        }
    }

    pub fn get_mut(&mut self, status: Status) -> &mut T {
        match status {
            Status::Ok => &mut self.ok,
            Status::Failed => &mut self.failed,
            Status::Timeout => &mut self.timeout,
            Status::Cancelled => &mut self.cancelled,
        }
    }
}

impl ByStatus<u64> {
    pub fn total(&self) -> u64 {
        self.ok + self.failed + self.timeout + self.cancelled
    }

    /// Requests that failed or timed out (a cancelled one is its client's choice).
    pub fn unsuccessful(&self) -> u64 {
        self.failed + self.timeout
    }

    pub fn add(&mut self, other: &Self) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.timeout += other.timeout;
        self.cancelled += other.cancelled;
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

/// Maps a probe's raw outcome values to a [`Status`]: the first arm that matches, else
/// `otherwise`. A constant outcome has no arms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutcomeRule {
    pub arms: Vec<Arm>,
    pub otherwise: Status,
}

/// One arm: a test of the outcome value and, for a variant inside a variant, of the detail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arm {
    pub status: Status,
    pub value: Test,
    pub detail: Option<Test>,
}

impl Arm {
    /// An arm on the value alone, as the register syntax writes it.
    pub fn on_value(status: Status, condition: Condition) -> Self {
        Self { status, value: Test::Compare(condition), detail: None }
    }

    fn matches(&self, value: u64, detail: u64) -> bool {
        self.value.holds(value) && self.detail.as_ref().is_none_or(|test| test.holds(detail))
    }
}

/// What a raw value must be for an arm to match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Test {
    Compare(Condition),
    /// One of these: a variant's discriminant values.
    OneOf(Vec<u64>),
    /// None of these: the variant whose data holds the niche, which is every value that
    /// names no other variant.
    NoneOf(Vec<u64>),
}

impl Test {
    pub fn holds(&self, value: u64) -> bool {
        match self {
            Test::Compare(condition) => condition.holds(value),
            Test::OneOf(values) => values.contains(&value),
            Test::NoneOf(values) => !values.contains(&value),
        }
    }
}

impl OutcomeRule {
    pub fn constant(status: Status) -> Self {
        Self { arms: Vec::new(), otherwise: status }
    }

    pub fn classify(&self, value: u64, detail: u64) -> Status {
        self.arms.iter().find(|arm| arm.matches(value, detail)).map_or(self.otherwise, |arm| arm.status)
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
            arms: vec![Arm::on_value(Status::Ok, Condition::parse("> 0x7fffffffffffffff").unwrap())],
            otherwise: Status::Failed,
        };
        assert_eq!(rule.classify(0x8000_0000_0000_0000, 0), Status::Ok);
        assert_eq!(rule.classify(u64::MAX, 0), Status::Ok);
        assert_eq!(rule.classify(24, 0), Status::Failed);
    }

    #[test]
    fn arms_are_tried_in_order() {
        let rule = OutcomeRule {
            arms: vec![
                Arm::on_value(Status::Timeout, Condition::parse("== 2").unwrap()),
                Arm::on_value(Status::Failed, Condition::parse(">= 1").unwrap()),
            ],
            otherwise: Status::Ok,
        };
        assert_eq!(rule.classify(2, 0), Status::Timeout);
        assert_eq!(rule.classify(1, 0), Status::Failed);
        assert_eq!(rule.classify(0, 0), Status::Ok);
    }

    #[test]
    fn a_variant_inside_a_variant_tests_the_detail() {
        // Err(JobError::Timeout) where Err is tag 1 and Timeout the inner niche value 7.
        let rule = OutcomeRule {
            arms: vec![
                Arm {
                    status: Status::Timeout,
                    value: Test::OneOf(vec![1]),
                    detail: Some(Test::OneOf(vec![7])),
                },
                Arm { status: Status::Failed, value: Test::OneOf(vec![1]), detail: None },
                Arm { status: Status::Ok, value: Test::NoneOf(vec![1]), detail: None },
            ],
            otherwise: Status::Failed,
        };
        assert_eq!(rule.classify(1, 7), Status::Timeout);
        assert_eq!(rule.classify(1, 8), Status::Failed);
        assert_eq!(rule.classify(0, 7), Status::Ok);
    }

    #[test]
    fn bad_conditions() {
        assert!(Condition::parse("~ 3").unwrap_err().contains("is not a condition"));
        assert_eq!(Condition::parse("== x").unwrap_err(), "`x` is not a number");
    }
}
